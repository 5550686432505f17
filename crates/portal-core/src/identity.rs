//! Personal data of a member, valid by construction: SSN, names, date of birth, email,
//! username, preferred language and marketplace account numbers.

use chrono::{Datelike, NaiveDate};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Declares an input error enum with its field and codes.
macro_rules! input_error {
    ($name:ident, $field:literal, { $($variant:ident => ($code:literal, $msg:literal)),+ $(,)? }) => {
        #[doc = concat!("Why a `", $field, "` was rejected.")]
        #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
        pub enum $name {
            $(
                #[doc = $msg]
                #[error($msg)]
                $variant,
            )+
        }
        impl $crate::error::InputError for $name {
            fn field(&self) -> &'static str { $field }
            fn code(&self) -> &'static str {
                match self { $(Self::$variant => $code,)+ }
            }
        }
    };
}
pub(crate) use input_error;

input_error!(SsnError, "ssn", {
    Empty => ("required", "enter your Social Security number"),
    Format => ("format", "enter 9 digits, for example 123-45-6789"),
    InvalidArea => ("invalid_area", "this is not a valid Social Security number (the first three digits cannot be 000, 666 or 900-999)"),
    InvalidGroup => ("invalid_group", "this is not a valid Social Security number (the middle two digits cannot be 00)"),
    InvalidSerial => ("invalid_serial", "this is not a valid Social Security number (the last four digits cannot be 0000)"),
});

/// A Social Security number in a valid format. `Debug` and `Display` show it masked.
#[derive(Clone, PartialEq, Eq)]
pub struct Ssn([u8; 9]);

impl Ssn {
    /// Parses `123-45-6789`, `123 45 6789` or `123456789`.
    pub fn parse(input: &str) -> Result<Ssn, SsnError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(SsnError::Empty);
        }
        let grouped = s.len() == 11
            && matches!(s.as_bytes().get(3), Some(b'-' | b' '))
            && s.as_bytes().get(3) == s.as_bytes().get(6);
        let compact: Vec<u8> = if grouped {
            s.bytes().filter(|b| *b != b'-' && *b != b' ').collect()
        } else {
            s.bytes().collect()
        };
        let digits: [u8; 9] = compact.try_into().map_err(|_| SsnError::Format)?;
        if !digits.iter().all(u8::is_ascii_digit) {
            return Err(SsnError::Format);
        }
        let num = |r: std::ops::Range<usize>| {
            digits.get(r).map_or(0u32, |d| {
                d.iter().fold(0, |a, b| a * 10 + u32::from(b - b'0'))
            })
        };
        let (area, group, serial) = (num(0..3), num(3..5), num(5..9));
        if area == 0 || area == 666 || area >= 900 {
            return Err(SsnError::InvalidArea);
        }
        if group == 0 {
            return Err(SsnError::InvalidGroup);
        }
        if serial == 0 {
            return Err(SsnError::InvalidSerial);
        }
        Ok(Ssn(digits))
    }

    /// The last four digits, which may be shown.
    pub fn last4(&self) -> String {
        self.0
            .get(5..)
            .map(|d| String::from_utf8_lossy(d).into_owned())
            .unwrap_or_default()
    }

    /// The nine digits, for sealing and keyed hashing only. Never log or display this.
    pub fn expose_digits(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }

    /// The masked form shown to people: `***-**-1234`.
    pub fn masked(&self) -> String {
        format!("***-**-{}", self.last4())
    }
}

impl fmt::Debug for Ssn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ssn({})", self.masked())
    }
}

impl fmt::Display for Ssn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

input_error!(NameError, "name", {
    Empty => ("required", "enter a name"),
    TooLong => ("too_long", "a name can have at most 100 characters"),
    InvalidCharacters => ("invalid_characters", "a name can contain letters, spaces, hyphens, apostrophes and periods only"),
});

/// A person's first or last name: letters of any script, spaces, hyphens, apostrophes, periods.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PersonName(String);

impl PersonName {
    /// Trims and checks a name.
    pub fn parse(input: &str) -> Result<PersonName, NameError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.chars().count() > 100 {
            return Err(NameError::TooLong);
        }
        let ok = s.chars().all(|c| {
            c.is_alphabetic()
                || matches!(c, ' ' | '-' | '\'' | '.' | '\u{2019}')
                || is_combining_mark(c)
        });
        let starts_with_letter = s.chars().next().is_some_and(char::is_alphabetic);
        if !ok || !starts_with_letter {
            return Err(NameError::InvalidCharacters);
        }
        let collapsed = s.split_whitespace().collect::<Vec<_>>().join(" ");
        Ok(PersonName(collapsed))
    }

    /// Case- and accent-insensitive comparison key used to match a name against a record.
    pub fn match_key(&self) -> String {
        self.0
            .chars()
            .filter(|c| c.is_alphabetic())
            .flat_map(char::to_lowercase)
            .map(fold_latin)
            .collect()
    }
}

/// Folds the accented Latin letters common in names to their base letter, so "María" and
/// "MARIA" match a record either way.
fn fold_latin(c: char) -> char {
    match c {
        'á' | 'à' | 'â' | 'ä' | 'ã' | 'å' | 'ā' | 'ă' | 'ą' => 'a',
        'é' | 'è' | 'ê' | 'ë' | 'ē' | 'ė' | 'ę' | 'ě' => 'e',
        'í' | 'ì' | 'î' | 'ï' | 'ī' | 'į' => 'i',
        'ó' | 'ò' | 'ô' | 'ö' | 'õ' | 'ø' | 'ō' | 'ő' => 'o',
        'ú' | 'ù' | 'û' | 'ü' | 'ū' | 'ů' | 'ű' | 'ų' => 'u',
        'ý' | 'ÿ' => 'y',
        'ñ' | 'ń' | 'ň' => 'n',
        'ç' | 'ć' | 'č' => 'c',
        'š' | 'ś' | 'ş' => 's',
        'ž' | 'ź' | 'ż' => 'z',
        'ł' => 'l',
        'ř' => 'r',
        'ğ' => 'g',
        'đ' | 'ď' => 'd',
        'ť' => 't',
        other => other,
    }
}

fn is_combining_mark(c: char) -> bool {
    matches!(c as u32, 0x0300..=0x036F | 0x1AB0..=0x1AFF | 0x1DC0..=0x1DFF | 0x20D0..=0x20FF | 0xFE20..=0xFE2F)
}

impl AsRef<str> for PersonName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}
impl fmt::Display for PersonName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for PersonName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PersonName({:?})", self.0)
    }
}
impl TryFrom<String> for PersonName {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        PersonName::parse(&s)
    }
}
impl From<PersonName> for String {
    fn from(n: PersonName) -> String {
        n.0
    }
}

input_error!(DateOfBirthError, "date_of_birth", {
    InFuture => ("in_future", "the date of birth cannot be in the future"),
    NotAdult => ("not_adult", "the account holder must be at least 18 years old"),
    TooOld => ("too_old", "check the year of the date of birth"),
    Format => ("format", "enter the date as YYYY-MM-DD"),
});

/// The date of birth of an adult account holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DateOfBirth(NaiveDate);

impl DateOfBirth {
    /// Checks that the person is 18 or older on `today` and born within the last 130 years.
    pub fn new(date: NaiveDate, today: NaiveDate) -> Result<DateOfBirth, DateOfBirthError> {
        if date > today {
            return Err(DateOfBirthError::InFuture);
        }
        let age = age_on(date, today);
        if age < 18 {
            return Err(DateOfBirthError::NotAdult);
        }
        if age > 130 {
            return Err(DateOfBirthError::TooOld);
        }
        Ok(DateOfBirth(date))
    }

    /// Parses `YYYY-MM-DD` and checks it like [`DateOfBirth::new`].
    pub fn parse(input: &str, today: NaiveDate) -> Result<DateOfBirth, DateOfBirthError> {
        let d = NaiveDate::parse_from_str(input.trim(), "%Y-%m-%d")
            .map_err(|_| DateOfBirthError::Format)?;
        DateOfBirth::new(d, today)
    }

    /// A date of birth taken from a trusted record (an enrollment), without the age rules.
    pub fn from_record(date: NaiveDate) -> DateOfBirth {
        DateOfBirth(date)
    }

    /// The date.
    pub fn date(self) -> NaiveDate {
        self.0
    }
}

/// Whole years between `born` and `on`.
pub fn age_on(born: NaiveDate, on: NaiveDate) -> i32 {
    let mut age = on.year() - born.year();
    if (on.month(), on.day()) < (born.month(), born.day()) {
        age -= 1;
    }
    age
}

input_error!(EmailError, "email", {
    Empty => ("required", "enter an email address"),
    TooLong => ("too_long", "an email address can have at most 254 characters"),
    Format => ("format", "enter an email address like name@example.com"),
});

/// An email address in the common `local@domain.tld` form. The domain is kept lower-case.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Email(String);

impl Email {
    /// The address as shown to someone not yet signed in: `m***@example.com`.
    pub fn masked(&self) -> String {
        match self.0.split_once('@') {
            Some((local, domain)) => {
                let first: String = local.chars().take(1).collect();
                format!("{first}***@{domain}")
            }
            None => "***".into(),
        }
    }

    /// Checks an address.
    pub fn parse(input: &str) -> Result<Email, EmailError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(EmailError::Empty);
        }
        if s.len() > 254 {
            return Err(EmailError::TooLong);
        }
        let (local, domain) = s.rsplit_once('@').ok_or(EmailError::Format)?;
        let local_ok = !local.is_empty()
            && local.len() <= 64
            && !local.starts_with('.')
            && !local.ends_with('.')
            && !local.contains("..")
            && local
                .chars()
                .all(|c| c.is_alphanumeric() || "!#$%&'*+/=?^_`{|}~.-".contains(c));
        let labels: Vec<&str> = domain.split('.').collect();
        let domain_ok = labels.len() >= 2
            && labels.iter().all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.chars().all(|c| c.is_alphanumeric() || c == '-')
            })
            && labels
                .last()
                .is_some_and(|tld| tld.chars().all(char::is_alphabetic) && tld.len() >= 2);
        if !local_ok || !domain_ok {
            return Err(EmailError::Format);
        }
        Ok(Email(format!("{local}@{}", domain.to_lowercase())))
    }

    /// The lower-cased address, used to find an account by email.
    pub fn key(&self) -> String {
        self.0.to_lowercase()
    }
}

impl AsRef<str> for Email {
    fn as_ref(&self) -> &str {
        &self.0
    }
}
impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Email({:?})", self.0)
    }
}
impl TryFrom<String> for Email {
    type Error = EmailError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Email::parse(&s)
    }
}
impl From<Email> for String {
    fn from(e: Email) -> String {
        e.0
    }
}

input_error!(UsernameError, "username", {
    Empty => ("required", "choose a username"),
    TooShort => ("too_short", "a username needs at least 3 characters"),
    TooLong => ("too_long", "a username can have at most 32 characters"),
    InvalidCharacters => ("invalid_characters", "a username can contain letters, digits, periods, hyphens and underscores, and must start with a letter or digit"),
});

/// A login name: 3-32 ASCII letters, digits, `.`, `-`, `_`; unique regardless of case.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Username(String);

impl Username {
    /// Checks a username.
    pub fn parse(input: &str) -> Result<Username, UsernameError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(UsernameError::Empty);
        }
        let n = s.chars().count();
        if n < 3 {
            return Err(UsernameError::TooShort);
        }
        if n > 32 {
            return Err(UsernameError::TooLong);
        }
        let first_ok = s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
        if !first_ok
            || !s
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        {
            return Err(UsernameError::InvalidCharacters);
        }
        Ok(Username(s.to_owned()))
    }

    /// The lower-cased form under which usernames are unique.
    pub fn key(&self) -> String {
        self.0.to_ascii_lowercase()
    }
}

impl AsRef<str> for Username {
    fn as_ref(&self) -> &str {
        &self.0
    }
}
impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Username({:?})", self.0)
    }
}
impl TryFrom<String> for Username {
    type Error = UsernameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Username::parse(&s)
    }
}
impl From<Username> for String {
    fn from(u: Username) -> String {
        u.0
    }
}

input_error!(LanguageError, "language", {
    Unsupported => ("unsupported", "choose English (en) or Spanish (es)"),
});

/// The member's preferred language for pages and notices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    /// English.
    #[default]
    En,
    /// Spanish.
    Es,
}

impl Language {
    /// Every language the portal speaks.
    pub const ALL: [Language; 2] = [Language::En, Language::Es];

    /// Parses `en` or `es` (any case).
    pub fn parse(input: &str) -> Result<Language, LanguageError> {
        match input.trim().to_ascii_lowercase().as_str() {
            "en" | "english" => Ok(Language::En),
            "es" | "spanish" | "español" => Ok(Language::Es),
            _ => Err(LanguageError::Unsupported),
        }
    }

    /// The ISO 639-1 code.
    pub fn code(self) -> &'static str {
        match self {
            Language::En => "en",
            Language::Es => "es",
        }
    }
}

input_error!(AccountNumberError, "account_number", {
    Empty => ("required", "enter your account number"),
    Format => ("format", "an account number has 6 to 20 letters and digits"),
});

/// A marketplace enrollment or billing account number, as printed on the member's invoice.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AccountNumber(String);

impl AccountNumber {
    /// Upper-cases, drops spaces and hyphens, and checks the result.
    pub fn parse(input: &str) -> Result<AccountNumber, AccountNumberError> {
        let s: String = input
            .chars()
            .filter(|c| !matches!(c, ' ' | '-'))
            .map(|c| c.to_ascii_uppercase())
            .collect();
        if s.is_empty() {
            return Err(AccountNumberError::Empty);
        }
        if !(6..=20).contains(&s.len()) || !s.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(AccountNumberError::Format);
        }
        Ok(AccountNumber(s))
    }
}

impl AsRef<str> for AccountNumber {
    fn as_ref(&self) -> &str {
        &self.0
    }
}
impl fmt::Display for AccountNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for AccountNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccountNumber({})", self.0)
    }
}
impl TryFrom<String> for AccountNumber {
    type Error = AccountNumberError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        AccountNumber::parse(&s)
    }
}
impl From<AccountNumber> for String {
    fn from(a: AccountNumber) -> String {
        a.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::FieldError;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    #[test]
    fn ssn_rules() {
        assert!(Ssn::parse("123-45-6789").is_ok());
        assert!(Ssn::parse("123456789").is_ok());
        assert!(Ssn::parse("123 45 6789").is_ok());
        assert_eq!(Ssn::parse(""), Err(SsnError::Empty));
        assert_eq!(Ssn::parse("12-345-6789"), Err(SsnError::Format));
        assert_eq!(Ssn::parse("123-45-678"), Err(SsnError::Format));
        assert_eq!(Ssn::parse("12a456789"), Err(SsnError::Format));
        assert_eq!(Ssn::parse("000-12-3456"), Err(SsnError::InvalidArea));
        assert_eq!(Ssn::parse("666-12-3456"), Err(SsnError::InvalidArea));
        assert_eq!(Ssn::parse("900-12-3456"), Err(SsnError::InvalidArea));
        assert_eq!(Ssn::parse("999-12-3456"), Err(SsnError::InvalidArea));
        assert_eq!(Ssn::parse("123-00-3456"), Err(SsnError::InvalidGroup));
        assert_eq!(Ssn::parse("123-45-0000"), Err(SsnError::InvalidSerial));
        assert_eq!(Ssn::parse("１２３４５６７８９"), Err(SsnError::Format));
    }

    #[test]
    fn ssn_is_masked_in_debug_and_display() {
        let s = Ssn::parse("123-45-6789").unwrap();
        assert_eq!(s.to_string(), "***-**-6789");
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("12345") && !dbg.contains("123-45"), "{dbg}");
        assert_eq!(s.expose_digits(), "123456789");
    }

    #[test]
    fn names_accept_any_script_and_reject_symbols() {
        assert_eq!(
            PersonName::parse("  José  María ").unwrap().as_ref(),
            "José María"
        );
        assert!(PersonName::parse("O'Brien-Núñez").is_ok());
        assert!(PersonName::parse("Zoë").is_ok());
        assert!(PersonName::parse("李").is_ok());
        assert_eq!(PersonName::parse(""), Err(NameError::Empty));
        assert_eq!(
            PersonName::parse("Robert'); DROP TABLE"),
            Err(NameError::InvalidCharacters)
        );
        assert_eq!(
            PersonName::parse("<script>"),
            Err(NameError::InvalidCharacters)
        );
        assert_eq!(PersonName::parse("R2D2"), Err(NameError::InvalidCharacters));
        assert_eq!(PersonName::parse(&"a".repeat(101)), Err(NameError::TooLong));
        assert_eq!(
            PersonName::parse("José").unwrap().match_key(),
            PersonName::parse("JOSÉ").unwrap().match_key()
        );
        assert_eq!(
            PersonName::parse("Núñez-López").unwrap().match_key(),
            PersonName::parse("NUNEZ LOPEZ").unwrap().match_key()
        );
    }

    #[test]
    fn date_of_birth_rules() {
        let today = d(2026, 11, 27);
        assert!(DateOfBirth::new(d(1980, 1, 1), today).is_ok());
        assert!(DateOfBirth::new(d(2008, 11, 27), today).is_ok());
        assert_eq!(
            DateOfBirth::new(d(2008, 11, 28), today),
            Err(DateOfBirthError::NotAdult)
        );
        assert_eq!(
            DateOfBirth::new(d(2027, 1, 1), today),
            Err(DateOfBirthError::InFuture)
        );
        assert_eq!(
            DateOfBirth::new(d(1890, 1, 1), today),
            Err(DateOfBirthError::TooOld)
        );
        assert_eq!(
            DateOfBirth::parse("1980-13-01", today),
            Err(DateOfBirthError::Format)
        );
        assert_eq!(age_on(d(2000, 2, 29), d(2018, 2, 28)), 17);
        assert_eq!(age_on(d(2000, 2, 29), d(2018, 3, 1)), 18);
    }

    #[test]
    fn email_rules() {
        assert_eq!(
            Email::parse("Ana@Example.COM").unwrap().as_ref(),
            "Ana@example.com"
        );
        assert!(Email::parse("a.b+tag@mail.example.org").is_ok());
        for bad in [
            "",
            "plain",
            "a@b",
            "@example.com",
            "a@.com",
            "a..b@example.com",
            "a b@example.com",
            "a@exa mple.com",
            "a@-x.com",
            "a@example.c0m",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(
            Email::parse(&format!("{}@example.com", "a".repeat(250))),
            Err(EmailError::TooLong)
        );
    }

    #[test]
    fn usernames_are_case_insensitive_keys() {
        let u = Username::parse("Maria.Lopez_1").unwrap();
        assert_eq!(u.key(), "maria.lopez_1");
        assert_eq!(Username::parse("ab"), Err(UsernameError::TooShort));
        assert_eq!(
            Username::parse(&"a".repeat(33)),
            Err(UsernameError::TooLong)
        );
        assert_eq!(
            Username::parse("_maria"),
            Err(UsernameError::InvalidCharacters)
        );
        assert_eq!(
            Username::parse("maría"),
            Err(UsernameError::InvalidCharacters)
        );
        assert_eq!(
            Username::parse("a' OR 1=1"),
            Err(UsernameError::InvalidCharacters)
        );
    }

    #[test]
    fn errors_name_their_field() {
        let e: FieldError = SsnError::InvalidArea.into();
        assert_eq!((e.field.as_str(), e.code.as_str()), ("ssn", "invalid_area"));
        let e: FieldError = EmailError::Format.into();
        assert_eq!(e.field, "email");
        let e: FieldError = LanguageError::Unsupported.into();
        assert_eq!(e.field, "language");
        assert_eq!(Language::parse("ES"), Ok(Language::Es));
        let a = AccountNumber::parse("hc-1234 5678").unwrap();
        assert_eq!(a.as_ref(), "HC12345678");
        assert_eq!(AccountNumber::parse("12"), Err(AccountNumberError::Format));
    }
}
