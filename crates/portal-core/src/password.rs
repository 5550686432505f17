//! The password policy of OWASP ASVS 2.1: length, not truncated, any Unicode, no composition
//! rules, and not a commonly used password.

use crate::identity::input_error;
use secrecy::{ExposeSecret, SecretString};
use std::collections::HashSet;
use std::fmt;
use std::sync::OnceLock;

/// Fewest characters a password may have.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// Most characters a password may have (ASVS requires at least 64 to be allowed).
pub const MAX_PASSWORD_CHARS: usize = 128;

/// Common passwords (lower-cased), from Django's `common-passwords.txt` (BSD-3-Clause).
static COMMON_PASSWORDS_TEXT: &str = include_str!("data/common-passwords.txt");

fn common_passwords() -> &'static HashSet<&'static str> {
    static SET: OnceLock<HashSet<&'static str>> = OnceLock::new();
    SET.get_or_init(|| {
        COMMON_PASSWORDS_TEXT
            .lines()
            .filter(|l| !l.is_empty())
            .collect()
    })
}

/// How many entries the shipped common-password list has.
pub fn common_password_count() -> usize {
    common_passwords().len()
}

input_error!(PasswordError, "password", {
    Empty => ("required", "choose a password"),
    TooShort => ("too_short", "use at least 12 characters; a short phrase of several words is easy to remember"),
    TooLong => ("too_long", "a password can have at most 128 characters"),
    Common => ("common", "this password is too common; choose something others are unlikely to guess"),
    ContainsPersonalData => ("personal", "do not use your username or email address in your password"),
    Control => ("control_characters", "a password cannot contain control characters"),
    Repetitive => ("repetitive", "this password repeats or runs in sequence; choose something others are unlikely to guess"),
    Direction => ("direction_characters", "a password cannot contain characters that change the text direction"),
});

/// Characters that reorder how text is shown (bidirectional overrides, embeddings, isolates
/// and marks): a password holding them looks different from what it is.
fn changes_direction(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}')
}

/// Whether the (lower-cased) password is one short piece repeated (`aaaaaaaaaaaa`,
/// `passwordpassword`, twelve spaces), or a run along the alphabet, the digits (wrapping
/// from 9 to 0) or a keyboard row, either way.
fn is_repetitive(lower: &str) -> bool {
    let chars: Vec<char> = lower.chars().collect();
    let n = chars.len();
    let repeated = (1..=n / 2).any(|period| {
        chars
            .iter()
            .zip(chars.iter().skip(period))
            .all(|(a, b)| a == b)
    });
    if repeated {
        return true;
    }
    const RUNS: [&str; 5] = [
        "abcdefghijklmnopqrstuvwxyz",
        "0123456789",
        "qwertyuiop",
        "asdfghjkl",
        "zxcvbnm",
    ];
    RUNS.iter().any(|run| {
        // Long enough to hold any allowed password, wrapping around.
        let forward = run.repeat(MAX_PASSWORD_CHARS / run.len() + 2);
        let backward: String = forward.chars().rev().collect();
        forward.contains(lower) || backward.contains(lower)
    })
}

/// A new password that satisfies the policy. `Debug` never shows it.
pub struct Password(SecretString);

impl Password {
    /// Checks a new password; `personal` holds the username and email, which it may not contain.
    pub fn new(raw: &str, personal: &[&str]) -> Result<Password, PasswordError> {
        if raw.is_empty() {
            return Err(PasswordError::Empty);
        }
        let n = raw.chars().count();
        if n < MIN_PASSWORD_CHARS {
            return Err(PasswordError::TooShort);
        }
        if n > MAX_PASSWORD_CHARS {
            return Err(PasswordError::TooLong);
        }
        if raw.chars().any(char::is_control) {
            return Err(PasswordError::Control);
        }
        if raw.chars().any(changes_direction) {
            return Err(PasswordError::Direction);
        }
        let lower = raw.to_lowercase();
        if common_passwords().contains(lower.as_str()) {
            return Err(PasswordError::Common);
        }
        // A password built from one common password repeated or padded with digits is just as weak.
        let core = lower.trim_end_matches(|c: char| c.is_ascii_digit() || "!.?".contains(c));
        if core.chars().count() >= 4 && common_passwords().contains(core) {
            return Err(PasswordError::Common);
        }
        if is_repetitive(&lower) {
            return Err(PasswordError::Repetitive);
        }
        for p in personal {
            let p = p.trim().to_lowercase();
            let local = p.split('@').next().unwrap_or("");
            if local.chars().count() >= 4 && lower.contains(local) {
                return Err(PasswordError::ContainsPersonalData);
            }
        }
        Ok(Password(SecretString::from(raw.to_owned())))
    }

    /// The password, for hashing only.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// Feedback for the live strength meter: the policy verdict and a 0-4 strength hint.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PasswordFeedback {
    /// Whether the password would be accepted.
    pub acceptable: bool,
    /// 0 (unacceptable) to 4 (strong), from length and variety; a hint, not a rule.
    pub score: u8,
    /// The reason it would be rejected, if it would.
    pub problem: Option<String>,
}

/// Rates a candidate password for live feedback while the member types.
pub fn password_feedback(raw: &str, personal: &[&str]) -> PasswordFeedback {
    match Password::new(raw, personal) {
        Err(e) => PasswordFeedback {
            acceptable: false,
            score: 0,
            problem: Some(e.to_string()),
        },
        Ok(_) => {
            let n = raw.chars().count();
            let classes = [
                raw.chars().any(char::is_lowercase),
                raw.chars().any(char::is_uppercase),
                raw.chars().any(|c| c.is_ascii_digit()),
                raw.chars().any(|c| !c.is_alphanumeric()),
            ]
            .iter()
            .filter(|b| **b)
            .count();
            let distinct = raw.chars().collect::<HashSet<_>>().len();
            let score = if distinct < 5 {
                1
            } else if n >= 20 || (n >= 16 && classes >= 3) {
                4
            } else if n >= 14 || classes >= 3 {
                3
            } else {
                2
            };
            PasswordFeedback {
                acceptable: true,
                score,
                problem: None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ships_a_large_common_password_list() {
        assert!(
            common_password_count() >= 3000,
            "{}",
            common_password_count()
        );
    }

    #[test]
    fn policy() {
        assert!(Password::new("correct horse battery", &[]).is_ok());
        assert!(
            Password::new("контрольная фраза", &[]).is_ok(),
            "any Unicode"
        );
        assert!(
            Password::new("ALLUPPERCASEWORDS", &[]).is_ok(),
            "no composition rules"
        );
        assert_eq!(Password::new("", &[]).unwrap_err(), PasswordError::Empty);
        assert_eq!(
            Password::new("short pass1", &[]).unwrap_err(),
            PasswordError::TooShort
        );
        assert_eq!(
            Password::new(&"x".repeat(129), &[]).unwrap_err(),
            PasswordError::TooLong
        );
        assert_eq!(
            Password::new("tab\there is bad", &[]).unwrap_err(),
            PasswordError::Control
        );
        for weak in [
            "aaaaaaaaaaaa",
            "123456789012",
            "passwordpassword",
            "            ",
            "abcabcabcabc",
            "abcdefghijklmn",
            "zyxwvutsrqpo",
            "987654321098",
            "qwertyuiopqw",
            "ASDFGHJKLASD",
        ] {
            assert_eq!(
                Password::new(weak, &[]).unwrap_err(),
                PasswordError::Repetitive,
                "{weak:?}"
            );
        }
        for fine in [
            "correct horse battery",
            "abcdefghijk horse",
            "aaaaaaaaaaab",
            "1234 my own words",
        ] {
            assert!(Password::new(fine, &[]).is_ok(), "{fine:?}");
        }
        for direction in ['\u{202E}', '\u{2067}', '\u{200F}'] {
            assert_eq!(
                Password::new(&format!("correct{direction}horse battery"), &[]).unwrap_err(),
                PasswordError::Direction
            );
        }
        assert_eq!(
            Password::new("maria.lopez rocks", &["maria.lopez", "m@example.com"]).unwrap_err(),
            PasswordError::ContainsPersonalData
        );
    }

    #[test]
    fn sixty_four_and_more_characters_are_kept_whole() {
        // A hundred and more characters, not ASCII, and not one piece repeated.
        let long: String = (0..25).map(|i| format!("é{i:02} ")).collect();
        let p = Password::new(&long, &[]).unwrap();
        assert_eq!(p.expose(), long, "never truncated");
    }

    #[test]
    fn common_passwords_are_rejected_whatever_the_case() {
        // Long entries of the list, which the length rule alone would let through.
        let long_common: Vec<&str> = COMMON_PASSWORDS_TEXT
            .lines()
            .filter(|l| {
                l.chars().count() >= MIN_PASSWORD_CHARS && l.chars().count() <= MAX_PASSWORD_CHARS
            })
            .take(20)
            .collect();
        assert!(!long_common.is_empty());
        for p in long_common {
            assert_eq!(
                Password::new(p, &[]).unwrap_err(),
                PasswordError::Common,
                "{p}"
            );
            assert_eq!(
                Password::new(&p.to_uppercase(), &[]).unwrap_err(),
                PasswordError::Common,
                "{p}"
            );
        }
        assert_eq!(
            Password::new("password12345678", &[]).unwrap_err(),
            PasswordError::Common
        );
    }

    #[test]
    fn debug_redacts() {
        let p = Password::new("correct horse battery", &[]).unwrap();
        assert!(!format!("{p:?}").contains("horse"));
    }

    #[test]
    fn feedback_scores() {
        assert!(!password_feedback("password", &[]).acceptable);
        let weak = password_feedback("aaaaaaaaaaaab", &[]);
        assert_eq!(weak.score, 1);
        let strong = password_feedback("three little kittens lost mittens", &[]);
        assert_eq!(strong.score, 4);
    }
}
