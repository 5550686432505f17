//! Log in (throttled, with lockout), sessions (idle and absolute expiry, rotated at login),
//! log out, and password reset by a single-use emailed link.

use super::{Portal, ServiceError};
use crate::account::{LoginThrottle, Principal, ResetToken, Session, TokenDigest};
use crate::audit::Actor;
use crate::error::{FieldError, ValidationErrors};
use crate::identity::Email;
use crate::ids::AccountId;
use crate::notice::NoticeBody;
use crate::password::Password;
use crate::ports::{AccountLookup, Changes};
use chrono::{DateTime, Utc};

/// A new session: the token goes to the client once (cookie or bearer).
#[derive(Debug, Clone)]
pub struct SessionGrant {
    /// The session token.
    pub token: crate::account::SecretToken,
    /// Who.
    pub principal: Principal,
    /// Absolute expiry.
    pub expires_at: DateTime<Utc>,
}

/// The result of a successful login.
#[derive(Debug, Clone)]
pub enum LoginOutcome {
    /// Logged in.
    LoggedIn(SessionGrant),
}

/// Longest username key considered, so junk input cannot create huge throttle keys.
const MAX_KEY: usize = 64;

impl Portal {
    /// Checks a password for a login key under the throttle: the same answers and the same
    /// work whether or not the login exists. `Ok` only for the right password.
    async fn check_password(
        &self,
        key: &str,
        hash: Option<crate::account::PasswordHash>,
        password: &str,
        account: Option<&crate::account::Account>,
    ) -> Result<Option<LoginThrottle>, ServiceError> {
        let now = self.now();
        let store = &self.deps.store;
        let policy = &self.config.auth;
        let throttle = store.login_throttle(key.to_owned()).await?;
        if let Some(until) = throttle
            .as_ref()
            .and_then(|t| t.locked_until)
            .filter(|u| *u > now)
        {
            return Err(ServiceError::Locked { until });
        }
        let known = hash.is_some();
        let ok = self.deps.hasher.verify(password, hash).await? && known;
        if ok {
            return Ok(throttle);
        }
        let mut t = throttle.unwrap_or(LoginThrottle {
            key: key.to_owned(),
            failures: 0,
            window_started_at: now,
            locked_until: None,
        });
        if now - t.window_started_at > policy.failure_window || t.locked_until.is_some() {
            t.failures = 0;
            t.window_started_at = now;
            t.locked_until = None;
        }
        t.failures += 1;
        let locked = t.failures >= policy.max_failures;
        if locked {
            t.locked_until = Some(now + policy.lockout);
        }
        let until = t.locked_until;
        let mut changes = Changes::default();
        changes.put_throttles.push(t);
        if let Some(a) = account {
            changes.audit.push(a.audit(
                now,
                Actor::Member,
                "account",
                if locked {
                    "login.locked"
                } else {
                    "login.failed"
                },
                "",
            ));
        }
        store.commit(changes).await?;
        Err(match until {
            Some(until) => ServiceError::Locked { until },
            None => ServiceError::InvalidCredentials,
        })
    }

    /// Logs a member in. Every failure answers `InvalidCredentials` or `Locked`, the same for
    /// unknown usernames, so the response never tells whether a username exists.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
    ) -> Result<LoginOutcome, ServiceError> {
        let now = self.now();
        let key: String = username
            .trim()
            .to_ascii_lowercase()
            .chars()
            .take(MAX_KEY)
            .collect();
        let store = &self.deps.store;
        let account_id = store
            .find_account(AccountLookup::Username(key.clone()))
            .await?;
        let account = match account_id {
            Some(id) => store.load_account(id).await?,
            None => None,
        };
        let hash = account
            .as_ref()
            .and_then(|a| a.member.as_ref())
            .map(|m| m.password_hash.clone());
        let throttle = self
            .check_password(&key, hash, password, account.as_ref())
            .await?;
        let Some(account) = account else {
            return Err(ServiceError::InvalidCredentials);
        };
        if account
            .member
            .as_ref()
            .is_some_and(|m| m.email_verified_at.is_none())
        {
            return Err(ServiceError::EmailNotVerified {
                account_id: account.id,
            });
        }
        let mut changes = Changes::default();
        if throttle.is_some() {
            changes.put_throttles.push(LoginThrottle {
                key,
                failures: 0,
                window_started_at: now,
                locked_until: None,
            });
        }
        changes
            .audit
            .push(account.audit(now, Actor::Member, "account", "login.succeeded", ""));
        let grant = self.new_session(
            Principal::Member {
                account_id: account.id,
            },
            &mut changes,
        );
        store.commit(changes).await?;
        Ok(LoginOutcome::LoggedIn(grant))
    }

    /// Logs a support agent in, with the same throttling and lockout as members.
    pub async fn agent_login(
        &self,
        username: &str,
        password: &str,
    ) -> Result<SessionGrant, ServiceError> {
        let name: String = username
            .trim()
            .to_ascii_lowercase()
            .chars()
            .take(MAX_KEY)
            .collect();
        let agent = self.deps.agents.agent(name.clone()).await?;
        let key = format!("agent:{name}");
        let throttle = self
            .check_password(
                &key,
                agent.as_ref().map(|a| a.password_hash.clone()),
                password,
                None,
            )
            .await?;
        let Some(agent) = agent else {
            return Err(ServiceError::InvalidCredentials);
        };
        let mut changes = Changes::default();
        if throttle.is_some() {
            changes.put_throttles.push(LoginThrottle {
                key,
                failures: 0,
                window_started_at: self.now(),
                locked_until: None,
            });
        }
        let grant = self.new_session(Principal::Agent { agent_id: agent.id }, &mut changes);
        self.deps.store.commit(changes).await?;
        Ok(grant)
    }

    fn new_session(&self, principal: Principal, changes: &mut Changes) -> SessionGrant {
        let now = self.now();
        let token = self.deps.ids.secret_token();
        changes.put_sessions.push(Session {
            id: self.new_id(),
            digest: token.digest(),
            principal: principal.clone(),
            created_at: now,
            last_seen_at: now,
        });
        SessionGrant {
            token,
            principal,
            expires_at: now + self.config.auth.session_absolute,
        }
    }

    /// Starts a session for a principal (after registration, or for a support agent whose
    /// credentials an external identity provider checked).
    pub async fn start_session(&self, principal: Principal) -> Result<SessionGrant, ServiceError> {
        let mut changes = Changes::default();
        let grant = self.new_session(principal, &mut changes);
        self.deps.store.commit(changes).await?;
        Ok(grant)
    }

    /// Resolves a session token; ends sessions past their idle or absolute limit.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, ServiceError> {
        let now = self.now();
        let digest = TokenDigest::of(token);
        let Some(mut session) = self.deps.store.session(digest.clone()).await? else {
            return Err(ServiceError::Unauthenticated);
        };
        let policy = &self.config.auth;
        if now - session.last_seen_at > policy.session_idle
            || now - session.created_at > policy.session_absolute
        {
            let mut changes = Changes::default();
            changes.delete_sessions.push(digest);
            self.deps.store.commit(changes).await?;
            return Err(ServiceError::Unauthenticated);
        }
        // Touch at most once a minute to keep writes off the hot path.
        if now - session.last_seen_at > chrono::Duration::minutes(1) {
            session.last_seen_at = now;
            let principal = session.principal.clone();
            let mut changes = Changes::default();
            changes.put_sessions.push(session);
            self.deps.store.commit(changes).await?;
            return Ok(principal);
        }
        Ok(session.principal)
    }

    /// Ends a session.
    pub async fn logout(&self, token: &str) -> Result<(), ServiceError> {
        let mut changes = Changes::default();
        changes.delete_sessions.push(TokenDigest::of(token));
        self.deps.store.commit(changes).await?;
        Ok(())
    }

    /// Emails a single-use reset link if `identifier` (username or email) belongs to a member.
    /// Answers the same whether or not it does.
    pub async fn request_password_reset(&self, identifier: &str) -> Result<(), ServiceError> {
        let id = identifier.trim();
        let store = &self.deps.store;
        let account_id = if id.contains('@') {
            match Email::parse(id) {
                Ok(e) => store.find_account(AccountLookup::Email(e.key())).await?,
                Err(_) => None,
            }
        } else {
            let key: String = id.to_ascii_lowercase().chars().take(MAX_KEY).collect();
            store.find_account(AccountLookup::Username(key)).await?
        };
        let Some(account_id) = account_id else {
            return Ok(());
        };
        let Some(account) = store.load_account(account_id).await? else {
            return Ok(());
        };
        let Some(member) = &account.member else {
            return Ok(());
        };
        let now = self.now();
        let token = self.deps.ids.secret_token();
        let expires_at = now + self.config.auth.reset_ttl;
        let mut changes = Changes::default();
        changes.put_reset_tokens.push(ResetToken {
            digest: token.digest(),
            account_id,
            expires_at,
            used_at: None,
        });
        // The reset goes to the login's address even before it was confirmed.
        changes.outbox.push(crate::notice::Notice {
            kind: crate::notice::NoticeKind::PasswordReset,
            account_id,
            to: member.email.clone(),
            name: account.holder.first_name.to_string(),
            language: member.language,
            dedupe_key: format!("password-reset:{}", token.digest().0),
            body: NoticeBody::PasswordReset {
                token: token.expose().to_owned(),
                expires_at,
            },
        });
        changes.audit.push(account.audit(
            now,
            Actor::Member,
            "account",
            "password.reset_requested",
            "",
        ));
        store.commit(changes).await?;
        Ok(())
    }

    /// Sets a new password with a reset token; the token is used up and every session ends.
    pub async fn complete_password_reset(
        &self,
        token: &str,
        new_password: &str,
    ) -> Result<(), ServiceError> {
        let now = self.now();
        let digest = TokenDigest::of(token.trim());
        let store = &self.deps.store;
        let Some(reset) = store.reset_token(digest).await? else {
            return Err(ServiceError::InvalidToken);
        };
        if reset.used_at.is_some() || reset.expires_at < now {
            return Err(ServiceError::InvalidToken);
        }
        let account = self.account(reset.account_id).await?;
        let member = account.member.as_ref().ok_or(ServiceError::InvalidToken)?;
        let password = Password::new(
            new_password,
            &[member.username.as_ref(), member.email.as_ref()],
        )
        .map_err(|e| ValidationErrors::one(FieldError::from(e).at("password")))?;
        let hash = self.deps.hasher.hash(&password).await?;
        let username_key = member.username.key();
        let account_id = account.id;
        let result = self
            .update_account(account_id, |account, changes| {
                let Some(member) = account.member.as_mut() else {
                    return Err(ServiceError::InvalidToken);
                };
                member.password_hash = hash.clone();
                member.password_changed_at = now;
                // Following the emailed link proves control of the address.
                if member.email_verified_at.is_none() {
                    member.email_verified_at = Some(now);
                    member.email_code = None;
                }
                changes.consume_reset_token = Some((reset.digest.clone(), now));
                // Every other link already emailed ends with this one.
                changes.end_reset_tokens_of = Some((account_id, now));
                changes.delete_all_sessions_of = Some(account_id);
                changes.put_throttles.push(LoginThrottle {
                    key: username_key.clone(),
                    failures: 0,
                    window_started_at: now,
                    locked_until: None,
                });
                changes.notify([account.notice(
                    format!("password-changed:{}:{}", account.id, now.timestamp()),
                    NoticeBody::PasswordChanged { changed_at: now },
                )]);
                changes.audit.push(account.audit(
                    now,
                    Actor::Member,
                    "account",
                    "password.changed",
                    "via reset link",
                ));
                Ok(Some(()))
            })
            .await;
        match result {
            Err(ServiceError::Invalid(e)) if e.has("reset_token") => {
                Err(ServiceError::InvalidToken)
            }
            other => other,
        }
    }

    /// The account a member principal may act on; agents are refused here.
    pub fn member_account(principal: &Principal) -> Result<AccountId, ServiceError> {
        match principal {
            Principal::Member { account_id } => Ok(*account_id),
            Principal::Agent { .. } => Err(ServiceError::NotFound("account")),
        }
    }
}
