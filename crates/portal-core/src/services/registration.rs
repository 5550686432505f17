//! Registration: personal details, username and password, identity verification against the
//! enrollment on record, then an emailed one-time code.

use super::{Portal, ServiceError, SessionGrant};
use crate::account::{EmailCode, Member};
use crate::audit::Actor;
use crate::error::{FieldError, ValidationErrors, Validator};
use crate::identity::{AccountNumber, DateOfBirth, Email, Language, PersonName, Ssn, Username};
use crate::ids::AccountId;
use crate::notice::{Notice, NoticeBody};
use crate::password::Password;
use crate::ports::{AccountLookup, IdentityClaim, IdentityOutcome};

/// The registration form as submitted (raw strings); `parse` checks every field.
#[derive(Clone, Default)]
pub struct RegistrationForm {
    /// Enrollment or billing account number.
    pub account_number: String,
    /// First name.
    pub first_name: String,
    /// Last name.
    pub last_name: String,
    /// Date of birth, `YYYY-MM-DD`.
    pub date_of_birth: String,
    /// SSN.
    pub ssn: String,
    /// Email.
    pub email: String,
    /// Username.
    pub username: String,
    /// Password.
    pub password: String,
    /// `en` or `es`.
    pub language: String,
}

impl std::fmt::Debug for RegistrationForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistrationForm")
            .field("account_number", &self.account_number)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

struct Registration {
    account_number: AccountNumber,
    first_name: PersonName,
    last_name: PersonName,
    date_of_birth: DateOfBirth,
    ssn: Ssn,
    email: Email,
    username: Username,
    password: Password,
    language: Language,
}

impl RegistrationForm {
    fn parse(&self, today: chrono::NaiveDate) -> Result<Registration, ValidationErrors> {
        let mut v = Validator::new();
        let account_number = v.check("account_number", AccountNumber::parse(&self.account_number));
        let first_name = v.check("first_name", PersonName::parse(&self.first_name));
        let last_name = v.check("last_name", PersonName::parse(&self.last_name));
        let date_of_birth = v.check(
            "date_of_birth",
            DateOfBirth::parse(&self.date_of_birth, today),
        );
        let ssn = v.check("ssn", Ssn::parse(&self.ssn));
        let email = v.check("email", Email::parse(&self.email));
        let username = v.check("username", Username::parse(&self.username));
        let password = v.check(
            "password",
            Password::new(
                &self.password,
                &[self.username.as_str(), self.email.as_str()],
            ),
        );
        let language = if self.language.trim().is_empty() {
            Some(Language::En)
        } else {
            v.check("language", Language::parse(&self.language))
        };
        let all = (|| {
            Some(Registration {
                account_number: account_number?,
                first_name: first_name?,
                last_name: last_name?,
                date_of_birth: date_of_birth?,
                ssn: ssn?,
                email: email?,
                username: username?,
                password: password?,
                language: language?,
            })
        })();
        v.finish(all)
    }
}

/// A registration waiting for its email code.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PendingRegistration {
    /// The account, to confirm the code against.
    pub account_id: Option<AccountId>,
    /// Where the code went, masked (`a***@example.com`).
    pub email_masked: String,
}

impl Portal {
    /// Registers a member: checks every field, verifies identity against the enrollment on
    /// record, checks uniqueness, and emails a one-time code. The account is usable once the
    /// code is confirmed with [`Portal::confirm_email`].
    pub async fn register(
        &self,
        form: &RegistrationForm,
    ) -> Result<PendingRegistration, ServiceError> {
        let reg = form.parse(self.today())?;
        let outcome = self
            .deps
            .identity
            .verify(IdentityClaim {
                account_number: reg.account_number.clone(),
                first_name: reg.first_name.clone(),
                last_name: reg.last_name.clone(),
                date_of_birth: reg.date_of_birth.date(),
                ssn: reg.ssn.clone(),
            })
            .await?;
        let IdentityOutcome::Matched(account_id) = outcome else {
            return Err(ServiceError::NoMatch);
        };
        let store = &self.deps.store;
        let ssn_digest = self.deps.sealer.lookup_digest(&reg.ssn.expose_digits());
        let mut errors = Vec::new();
        if store
            .find_account(AccountLookup::Username(reg.username.key()))
            .await?
            .is_some()
        {
            errors.push(FieldError::new(
                "username",
                "taken",
                "this username is taken; choose another",
            ));
        }
        if store
            .find_account(AccountLookup::Email(reg.email.key()))
            .await?
            .is_some()
        {
            errors.push(FieldError::new(
                "email",
                "taken",
                "this email address is used by another online account",
            ));
        }
        if store
            .find_account(AccountLookup::MemberSsn(ssn_digest.clone()))
            .await?
            .is_some()
        {
            errors.push(FieldError::new(
                "ssn",
                "already_registered",
                "an online account already exists for this Social Security number; log in or reset your password",
            ));
        }
        if !errors.is_empty() {
            return Err(ValidationErrors(errors).into());
        }
        let password_hash = self.deps.hasher.hash(&reg.password).await?;
        let ssn_sealed = self.deps.sealer.seal(&reg.ssn.expose_digits())?;
        let now = self.now();
        let code = self.deps.ids.numeric_code(6);
        let expires_at = now + self.config.auth.email_code_ttl;
        let pending = PendingRegistration {
            account_id: Some(account_id),
            email_masked: reg.email.masked(),
        };
        self.update_account(account_id, |account, changes| {
            if account.member.as_ref().is_some_and(|m| m.email_verified_at.is_some()) {
                return Err(ServiceError::Conflict(
                    "an online account already exists for this enrollment; log in or reset your password".into(),
                ));
            }
            account.member = Some(Member {
                username: reg.username.clone(),
                email: reg.email.clone(),
                email_verified_at: None,
                email_code: Some(EmailCode {
                    digest: code.digest(),
                    expires_at,
                    failed_attempts: 0,
                }),
                password_hash: password_hash.clone(),
                password_changed_at: now,
                language: reg.language,
                ssn_sealed: ssn_sealed.clone(),
                ssn_digest: ssn_digest.clone(),
                created_at: now,
            });
            changes.outbox.push(Notice {
                kind: crate::notice::NoticeKind::EmailVerification,
                account_id: account.id,
                to: reg.email.clone(),
                name: account.holder.first_name.to_string(),
                language: reg.language,
                dedupe_key: format!("email-code:{}:{}", account.id, code.digest().0),
                body: NoticeBody::EmailVerification {
                    code: code.expose().to_owned(),
                    expires_at,
                },
            });
            changes.audit.push(account.audit(
                now,
                Actor::Member,
                "account",
                "member.registered",
                format!("username {}; email code sent", reg.username),
            ));
            Ok(Some(()))
        })
        .await?;
        Ok(pending)
    }

    /// Sends a new email code for an unfinished registration.
    pub async fn resend_email_code(&self, account_id: AccountId) -> Result<(), ServiceError> {
        let now = self.now();
        let code = self.deps.ids.numeric_code(6);
        let expires_at = now + self.config.auth.email_code_ttl;
        self.update_account(account_id, |account, changes| {
            let Some(member) = account.member.as_mut() else {
                return Err(ServiceError::NotFound("registration"));
            };
            if member.email_verified_at.is_some() {
                return Ok(None);
            }
            member.email_code = Some(EmailCode {
                digest: code.digest(),
                expires_at,
                failed_attempts: 0,
            });
            let (to, language) = (member.email.clone(), member.language);
            changes.outbox.push(Notice {
                kind: crate::notice::NoticeKind::EmailVerification,
                account_id: account.id,
                to,
                name: account.holder.first_name.to_string(),
                language,
                dedupe_key: format!("email-code:{}:{}", account.id, code.digest().0),
                body: NoticeBody::EmailVerification {
                    code: code.expose().to_owned(),
                    expires_at,
                },
            });
            Ok(Some(()))
        })
        .await
    }

    /// Confirms the emailed code: the account is created and the member is logged in.
    pub async fn confirm_email(
        &self,
        account_id: AccountId,
        code: &str,
    ) -> Result<SessionGrant, ServiceError> {
        let now = self.now();
        let presented = crate::account::TokenDigest::of(code.trim());
        let attempts_allowed = self.config.auth.email_code_attempts;
        let confirmed: Option<bool> = self
            .update_account(account_id, |account, changes| {
                let Some(member) = account.member.as_mut() else {
                    return Err(ServiceError::InvalidToken);
                };
                if member.email_verified_at.is_some() {
                    return Err(ServiceError::InvalidToken);
                }
                let Some(pending) = member.email_code.as_mut() else {
                    return Err(ServiceError::InvalidToken);
                };
                if pending.expires_at < now || pending.failed_attempts >= attempts_allowed {
                    return Err(ServiceError::InvalidToken);
                }
                if pending.digest != presented {
                    pending.failed_attempts += 1;
                    return Ok(Some(Some(false)));
                }
                member.email_verified_at = Some(now);
                member.email_code = None;
                let username = member.username.to_string();
                changes.notify([account.notice(
                    format!("account-created:{}", account.id),
                    NoticeBody::AccountCreated { username },
                )]);
                changes.audit.push(account.audit(
                    now,
                    Actor::Member,
                    "account",
                    "member.email_confirmed",
                    "",
                ));
                Ok(Some(Some(true)))
            })
            .await?;
        if confirmed != Some(true) {
            return Err(ValidationErrors::one(FieldError::new(
                "code",
                "incorrect",
                "the code is not correct; check the latest email we sent",
            ))
            .into());
        }
        self.start_session(crate::account::Principal::Member { account_id })
            .await
    }
}
