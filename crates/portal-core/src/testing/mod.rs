//! In-memory fakes of every port, for stateful tests here and in adapter crates (feature
//! `testing`). Not for production: the sealer and hasher are deliberately weak and fast.

use crate::account::{
    Account, IdempotencyRecord, LoginThrottle, LookupDigest, PasswordHash, ResetToken,
    SealedSecret, SecretToken, Session, TokenDigest,
};
use crate::audit::AuditEvent;
use crate::ids::{AccountId, MessageId, PaymentId};
use crate::instrument::{GatewayToken, MethodDetails};
use crate::money::Money;
use crate::notice::Notice;
use crate::password::Password;
use crate::payment::DeclineReason;
use crate::ports::{
    AccountLookup, Changes, ChargeOutcome, ChargeRequest, ChargeStatus, Clock, GatewayError,
    HashError, IdGenerator, IssuedBills, JobRun, Outbox, OutboxMessage, PasswordHasher,
    PaymentGateway, PaymentLookup, RefundRequest, SealError, SecretSealer, Store, StoreError,
    Unique, WorkChunk, WorkQueue,
};
use crate::reference::PaymentReference;
use async_trait::async_trait;
use chrono::{DateTime, Duration, NaiveDate, Utc};
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use uuid::Uuid;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[derive(Default)]
struct State {
    accounts: BTreeMap<AccountId, Account>,
    sessions: HashMap<TokenDigest, Session>,
    reset_tokens: HashMap<TokenDigest, ResetToken>,
    throttles: HashMap<String, LoginThrottle>,
    idempotency: HashMap<(String, String), IdempotencyRecord>,
    audit: Vec<AuditEvent>,
    outbox: Vec<QueuedMessage>,
    dedupe: HashSet<String>,
    next_message: u128,
    work: BTreeMap<(String, String, AccountId), WorkItem>,
    planned: HashSet<(String, String)>,
}

struct QueuedMessage {
    message: OutboxMessage,
    due_at: Option<DateTime<Utc>>,
    leased_until: Option<DateTime<Utc>>,
    sent: Option<String>,
    dead: bool,
}

#[derive(Default)]
struct WorkItem {
    last: Option<AccountId>,
    leased_until: Option<DateTime<Utc>>,
    finished: bool,
}

/// A store in memory with the same rules as the real ones: optimistic versions, uniqueness,
/// all-or-nothing commits, append-only audit, de-duplicated outbox.
#[derive(Default)]
pub struct InMemoryStore {
    state: Mutex<State>,
    load_latency: Mutex<Option<std::time::Duration>>,
}

impl std::fmt::Debug for InMemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InMemoryStore")
    }
}

impl InMemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every account load block for `latency`, so concurrent writers load the same
    /// version and race to commit (use with a multi-threaded test runtime).
    pub fn set_load_latency(&self, latency: std::time::Duration) {
        *lock(&self.load_latency) = Some(latency);
    }

    /// Every queued notice, oldest first.
    pub fn outbox(&self) -> Vec<Notice> {
        lock(&self.state)
            .outbox
            .iter()
            .map(|m| m.message.notice.clone())
            .collect()
    }

    /// The whole audit log.
    pub fn audit(&self) -> Vec<AuditEvent> {
        lock(&self.state).audit.clone()
    }

    /// Number of sessions stored.
    pub fn session_count(&self) -> usize {
        lock(&self.state).sessions.len()
    }
}

/// Queues a notice unless one with its dedupe key was queued before.
fn enqueue(s: &mut State, n: Notice) {
    if s.dedupe.insert(n.dedupe_key.clone()) {
        s.next_message += 1;
        let id = MessageId(Uuid::from_u128(s.next_message));
        let created_at = DateTime::<Utc>::UNIX_EPOCH;
        s.outbox.push(QueuedMessage {
            message: OutboxMessage {
                id,
                notice: n,
                created_at,
                attempts: 0,
            },
            due_at: None,
            leased_until: None,
            sent: None,
            dead: false,
        });
    }
}

fn member_conflict(state: &State, a: &Account) -> Option<Unique> {
    let m = a.member.as_ref()?;
    for other in state.accounts.values().filter(|o| o.id != a.id) {
        if let Some(om) = &other.member {
            if om.username.key() == m.username.key() {
                return Some(Unique::Username);
            }
            if om.email.key() == m.email.key() {
                return Some(Unique::Email);
            }
            if om.ssn_digest == m.ssn_digest {
                return Some(Unique::Ssn);
            }
        }
    }
    None
}

#[async_trait]
impl Store for InMemoryStore {
    async fn load_account(&self, id: AccountId) -> Result<Option<Account>, StoreError> {
        let latency = *lock(&self.load_latency);
        let account = lock(&self.state).accounts.get(&id).cloned();
        if let Some(l) = latency {
            std::thread::sleep(l);
        }
        Ok(account)
    }

    async fn find_account(&self, by: AccountLookup) -> Result<Option<AccountId>, StoreError> {
        let s = lock(&self.state);
        Ok(s.accounts
            .values()
            .find(|a| match &by {
                AccountLookup::Number(n) => &a.number == n,
                AccountLookup::Username(k) => {
                    a.member.as_ref().is_some_and(|m| &m.username.key() == k)
                }
                AccountLookup::Email(k) => a.member.as_ref().is_some_and(|m| &m.email.key() == k),
                AccountLookup::MemberSsn(d) => {
                    a.member.as_ref().is_some_and(|m| &m.ssn_digest == d)
                }
            })
            .map(|a| a.id))
    }

    async fn find_payment(
        &self,
        by: PaymentLookup,
    ) -> Result<Option<(AccountId, PaymentId)>, StoreError> {
        let s = lock(&self.state);
        for a in s.accounts.values() {
            if let Some(p) = a.ledger.payments.iter().find(|p| match &by {
                PaymentLookup::Reference(r) => &p.reference == r,
                PaymentLookup::GatewayId(g) => p.gateway_id.as_ref() == Some(g),
                PaymentLookup::Id(id) => &p.id == id,
            }) {
                return Ok(Some((a.id, p.id)));
            }
        }
        Ok(None)
    }

    async fn idempotency_record(
        &self,
        scope: String,
        key: String,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        Ok(lock(&self.state).idempotency.get(&(scope, key)).cloned())
    }

    async fn session(&self, digest: TokenDigest) -> Result<Option<Session>, StoreError> {
        Ok(lock(&self.state).sessions.get(&digest).cloned())
    }

    async fn reset_token(&self, digest: TokenDigest) -> Result<Option<ResetToken>, StoreError> {
        Ok(lock(&self.state).reset_tokens.get(&digest).cloned())
    }

    async fn login_throttle(&self, key: String) -> Result<Option<LoginThrottle>, StoreError> {
        Ok(lock(&self.state).throttles.get(&key).cloned())
    }

    async fn load_accounts(&self, ids: Vec<AccountId>) -> Result<Vec<Account>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(a) = self.load_account(id).await? {
                out.push(a);
            }
        }
        out.sort_by_key(|a| a.id);
        Ok(out)
    }

    async fn load_chunk(&self, chunk: WorkChunk) -> Result<Vec<Account>, StoreError> {
        let ids: Vec<AccountId> = lock(&self.state)
            .accounts
            .range(chunk.first..=chunk.last)
            .map(|(id, _)| *id)
            .collect();
        self.load_accounts(ids).await
    }

    async fn issue_bills(&self, batch: Vec<IssuedBills>) -> Result<(), StoreError> {
        let mut s = lock(&self.state);
        for b in &batch {
            let Some(stored) = s.accounts.get(&b.account) else {
                return Err(StoreError::Conflict);
            };
            if stored.version != b.version {
                return Err(StoreError::Conflict);
            }
            for (_, bill) in &b.bills {
                if bill.kind.is_premium()
                    && stored.ledger.bills.iter().any(|o| {
                        o.kind.is_premium()
                            && o.enrollment_id == bill.enrollment_id
                            && o.coverage_month == bill.coverage_month
                    })
                {
                    return Err(StoreError::Duplicate(Unique::Bill));
                }
            }
        }
        for b in batch {
            if let Some(a) = s.accounts.get_mut(&b.account) {
                // Written as they are, as a database would: the job applied any credit.
                a.ledger
                    .bills
                    .extend(b.bills.into_iter().map(|(_, bill)| bill));
                a.version += 1;
            }
            s.audit.extend(b.audit);
            for n in b.outbox {
                enqueue(&mut s, n);
            }
        }
        Ok(())
    }

    async fn account_ids(
        &self,
        after: Option<AccountId>,
        limit: u32,
    ) -> Result<Vec<AccountId>, StoreError> {
        let s = lock(&self.state);
        Ok(s.accounts
            .keys()
            .filter(|id| after.is_none_or(|a| **id > a))
            .take(limit as usize)
            .copied()
            .collect())
    }

    async fn search_accounts(
        &self,
        query: String,
        limit: u32,
    ) -> Result<Vec<AccountId>, StoreError> {
        let q = query.to_lowercase();
        let s = lock(&self.state);
        Ok(s.accounts
            .values()
            .filter(|a| {
                a.holder.full_name().to_lowercase().contains(&q)
                    || a.member.as_ref().is_some_and(|m| {
                        m.email.key().contains(&q) || m.username.key().contains(&q)
                    })
            })
            .take(limit as usize)
            .map(|a| a.id)
            .collect())
    }

    async fn audit_trail(&self, account: AccountId) -> Result<Vec<AuditEvent>, StoreError> {
        Ok(lock(&self.state)
            .audit
            .iter()
            .filter(|e| e.account_id == account)
            .cloned()
            .collect())
    }

    async fn commit(&self, changes: Changes) -> Result<(), StoreError> {
        let mut s = lock(&self.state);
        // Check every rule before writing anything: all or nothing.
        if let Some(a) = &changes.account {
            match s.accounts.get(&a.id) {
                None if a.version != 0 => return Err(StoreError::Conflict),
                Some(stored) if stored.version != a.version || a.version == 0 => {
                    return Err(StoreError::Conflict);
                }
                _ => {}
            }
            if a.version == 0 && s.accounts.values().any(|o| o.number == a.number) {
                return Err(StoreError::Duplicate(Unique::AccountNumber));
            }
            if let Some(u) = member_conflict(&s, a) {
                return Err(StoreError::Duplicate(u));
            }
            let mut months = HashSet::new();
            for b in a.ledger.bills.iter().filter(|b| b.kind.is_premium()) {
                if !months.insert((b.enrollment_id, b.coverage_month)) {
                    return Err(StoreError::Duplicate(Unique::Bill));
                }
            }
            let refs: HashSet<&PaymentReference> =
                a.ledger.payments.iter().map(|p| &p.reference).collect();
            if s.accounts.values().filter(|o| o.id != a.id).any(|o| {
                o.ledger
                    .payments
                    .iter()
                    .any(|p| refs.contains(&p.reference))
            }) {
                return Err(StoreError::Duplicate(Unique::PaymentReference));
            }
        }
        for r in &changes.idempotency {
            if s.idempotency
                .contains_key(&(r.scope.clone(), r.key.clone()))
            {
                return Err(StoreError::Duplicate(Unique::IdempotencyKey));
            }
        }
        if let Some((d, _)) = &changes.consume_reset_token {
            if s.reset_tokens.get(d).is_none_or(|t| t.used_at.is_some()) {
                return Err(StoreError::Duplicate(Unique::ResetTokenUse));
            }
        }
        if let Some(mut a) = changes.account {
            a.version += 1;
            a.ledger.clear_changes();
            s.accounts.insert(a.id, a);
        }
        for x in changes.put_sessions {
            s.sessions.insert(x.digest.clone(), x);
        }
        for d in changes.delete_sessions {
            s.sessions.remove(&d);
        }
        if let Some(acc) = changes.delete_all_sessions_of {
            s.sessions.retain(|_, v| {
                v.principal != crate::account::Principal::Member { account_id: acc }
            });
        }
        for t in changes.put_reset_tokens {
            s.reset_tokens.insert(t.digest.clone(), t);
        }
        if let Some((d, at)) = changes.consume_reset_token {
            if let Some(t) = s.reset_tokens.get_mut(&d) {
                t.used_at = Some(at);
            }
        }
        if let Some((acc, at)) = changes.end_reset_tokens_of {
            for t in s.reset_tokens.values_mut() {
                if t.account_id == acc && t.used_at.is_none() {
                    t.used_at = Some(at);
                }
            }
        }
        for t in changes.put_throttles {
            s.throttles.insert(t.key.clone(), t);
        }
        for r in changes.idempotency {
            s.idempotency.insert((r.scope.clone(), r.key.clone()), r);
        }
        s.audit.extend(changes.audit);
        for n in changes.outbox {
            enqueue(&mut s, n);
        }
        Ok(())
    }
}

#[async_trait]
impl WorkQueue for InMemoryStore {
    async fn plan_run(&self, run: JobRun, chunk_size: u32) -> Result<u64, StoreError> {
        let mut s = lock(&self.state);
        if !s.planned.insert((run.job.clone(), run.period.clone())) {
            return Ok(0);
        }
        let ids: Vec<AccountId> = s.accounts.keys().copied().collect();
        let mut added = 0;
        for chunk in ids.chunks(chunk_size.max(1) as usize) {
            if let (Some(first), Some(last)) = (chunk.first(), chunk.last()) {
                s.work.insert(
                    (run.job.clone(), run.period.clone(), *first),
                    WorkItem {
                        last: Some(*last),
                        ..WorkItem::default()
                    },
                );
                added += 1;
            }
        }
        Ok(added)
    }

    async fn claim(
        &self,
        run: JobRun,
        _worker: String,
        limit: u32,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Vec<WorkChunk>, StoreError> {
        let mut s = lock(&self.state);
        let mut out = Vec::new();
        for ((job, period, first), item) in s.work.iter_mut() {
            if out.len() >= limit as usize {
                break;
            }
            if *job == run.job
                && *period == run.period
                && !item.finished
                && item.leased_until.is_none_or(|u| u <= now)
            {
                item.leased_until = Some(lease_until);
                out.push(WorkChunk {
                    first: *first,
                    last: item.last.unwrap_or(*first),
                });
            }
        }
        Ok(out)
    }

    async fn left(&self, run: JobRun) -> Result<crate::ports::WorkLeft, StoreError> {
        let s = lock(&self.state);
        let mut left = crate::ports::WorkLeft::default();
        for ((job, period, _), item) in &s.work {
            if *job == run.job && *period == run.period && !item.finished {
                left.chunks += 1;
                left.leased_until = left.leased_until.max(item.leased_until);
            }
        }
        Ok(left)
    }

    async fn finish(
        &self,
        run: JobRun,
        chunks: Vec<WorkChunk>,
        _now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut s = lock(&self.state);
        for c in chunks {
            if let Some(item) = s
                .work
                .get_mut(&(run.job.clone(), run.period.clone(), c.first))
            {
                item.finished = true;
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Outbox for InMemoryStore {
    async fn claim_messages(
        &self,
        _worker: String,
        limit: u32,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Vec<OutboxMessage>, StoreError> {
        let mut s = lock(&self.state);
        let mut out = Vec::new();
        for m in s.outbox.iter_mut() {
            if out.len() >= limit as usize {
                break;
            }
            let due = m.sent.is_none()
                && !m.dead
                && m.due_at.is_none_or(|d| d <= now)
                && m.leased_until.is_none_or(|u| u <= now);
            if due {
                m.leased_until = Some(lease_until);
                out.push(m.message.clone());
            }
        }
        Ok(out)
    }

    async fn mark_sent(
        &self,
        id: MessageId,
        message_id: String,
        _now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut s = lock(&self.state);
        if let Some(m) = s.outbox.iter_mut().find(|m| m.message.id == id) {
            m.sent = Some(message_id);
            m.message.attempts += 1;
            m.leased_until = None;
        }
        Ok(())
    }

    async fn mark_failed(
        &self,
        id: MessageId,
        _error: String,
        retry_at: Option<DateTime<Utc>>,
        _now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut s = lock(&self.state);
        if let Some(m) = s.outbox.iter_mut().find(|m| m.message.id == id) {
            m.message.attempts += 1;
            m.leased_until = None;
            match retry_at {
                Some(at) => m.due_at = Some(at),
                None => m.dead = true,
            }
        }
        Ok(())
    }

    async fn dead_letters(&self, limit: u32) -> Result<Vec<OutboxMessage>, StoreError> {
        Ok(lock(&self.state)
            .outbox
            .iter()
            .filter(|m| m.dead)
            .take(limit as usize)
            .map(|m| m.message.clone())
            .collect())
    }

    async fn requeue(&self, id: MessageId, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let mut s = lock(&self.state);
        match s.outbox.iter_mut().find(|m| m.message.id == id && m.dead) {
            Some(m) => {
                m.dead = false;
                m.due_at = Some(now);
                m.message.attempts = 0;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn pending_messages(&self, limit: u32) -> Result<Vec<OutboxMessage>, StoreError> {
        Ok(lock(&self.state)
            .outbox
            .iter()
            .filter(|m| m.sent.is_none() && !m.dead)
            .take(limit as usize)
            .map(|m| m.message.clone())
            .collect())
    }
}

/// A fixed list of support agents.
#[derive(Debug, Default)]
pub struct StaticAgents(pub Vec<crate::ports::AgentRecord>);

#[async_trait]
impl crate::ports::AgentDirectory for StaticAgents {
    async fn agent(
        &self,
        username: String,
    ) -> Result<Option<crate::ports::AgentRecord>, StoreError> {
        Ok(self
            .0
            .iter()
            .find(|a| a.username.eq_ignore_ascii_case(&username))
            .cloned())
    }
}

/// A notifier that records deliveries and fails on request.
#[derive(Default)]
pub struct RecordingNotifier {
    state: Mutex<(Vec<OutboxMessage>, Vec<crate::ports::NotifyError>, u64)>,
}

impl std::fmt::Debug for RecordingNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecordingNotifier")
    }
}

impl RecordingNotifier {
    /// The next `n` deliveries fail with `error`.
    pub fn fail_next(&self, n: usize, error: crate::ports::NotifyError) {
        let mut s = lock(&self.state);
        s.1.extend(std::iter::repeat_n(error, n));
    }

    /// Messages delivered.
    pub fn delivered(&self) -> Vec<OutboxMessage> {
        lock(&self.state).0.clone()
    }

    /// Delivery attempts, failed ones included.
    pub fn attempts(&self) -> u64 {
        lock(&self.state).2
    }
}

#[async_trait]
impl crate::ports::Notifier for RecordingNotifier {
    async fn deliver(&self, message: OutboxMessage) -> Result<String, crate::ports::NotifyError> {
        let mut s = lock(&self.state);
        s.2 += 1;
        if !s.1.is_empty() {
            return Err(s.1.remove(0));
        }
        let id = format!("<{}@test>", message.id);
        s.0.push(message);
        Ok(id)
    }
}

/// A clock that stands still until moved.
#[derive(Debug)]
pub struct FixedClock(Mutex<DateTime<Utc>>);

impl FixedClock {
    /// A clock at noon UTC of `date`.
    pub fn at(date: NaiveDate) -> Self {
        let noon = date.and_hms_opt(12, 0, 0).unwrap_or_default().and_utc();
        Self(Mutex::new(noon))
    }

    /// Moves to noon of `date`.
    pub fn set_date(&self, date: NaiveDate) {
        *lock(&self.0) = date.and_hms_opt(12, 0, 0).unwrap_or_default().and_utc();
    }

    /// Moves forward.
    pub fn advance(&self, by: Duration) {
        let mut t = lock(&self.0);
        *t += by;
    }
}

impl Clock for FixedClock {
    fn now(&self) -> DateTime<Utc> {
        *lock(&self.0)
    }
    fn today(&self) -> NaiveDate {
        lock(&self.0).date_naive()
    }
}

impl crate::ports::ClockControl for FixedClock {
    fn advance_days(&self, days: u32) {
        self.advance(Duration::days(i64::from(days)));
    }
}

/// Sequential ids and predictable tokens.
#[derive(Debug, Default)]
pub struct SeqIds(AtomicU64);

impl SeqIds {
    /// Ids counting on from `n` (a namespace of their own).
    pub fn starting_at(n: u64) -> Self {
        Self(AtomicU64::new(n))
    }

    fn next(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed) + 1
    }
}

impl IdGenerator for SeqIds {
    fn new_id(&self) -> Uuid {
        Uuid::from_u128(u128::from(self.next()))
    }
    fn payment_reference(&self) -> PaymentReference {
        let mut n = self.next();
        let mut values = [0u8; crate::reference::REFERENCE_DATA_LEN];
        for v in values.iter_mut().rev() {
            *v = u8::try_from(n % 31).unwrap_or(0);
            n /= 31;
        }
        PaymentReference::from_values(values)
    }
    fn secret_token(&self) -> SecretToken {
        SecretToken::new(format!("tok{:020}x", self.next()))
    }
    fn numeric_code(&self, digits: u32) -> SecretToken {
        let n = self.next() % 10u64.pow(digits.min(9));
        SecretToken::new(format!("{n:0width$}", width = digits as usize))
    }
}

/// A reversible, keyless "sealer" for tests only.
#[derive(Debug, Default)]
pub struct TestSealer;

impl SecretSealer for TestSealer {
    fn seal(&self, plaintext: &str) -> Result<SealedSecret, SealError> {
        Ok(SealedSecret(
            plaintext.bytes().rev().map(|b| b ^ 0x5a).collect(),
        ))
    }
    fn unseal(&self, sealed: &SealedSecret) -> Result<String, SealError> {
        String::from_utf8(sealed.0.iter().rev().map(|b| b ^ 0x5a).collect())
            .map_err(|e| SealError(e.to_string()))
    }
    fn lookup_digest(&self, value: &str) -> LookupDigest {
        LookupDigest(hex(&Sha256::digest(format!("test-key:{value}").as_bytes())))
    }
}

/// A fast unsalted hasher for tests only.
#[derive(Debug, Default)]
pub struct TestHasher;

#[async_trait]
impl PasswordHasher for TestHasher {
    async fn hash(&self, password: &Password) -> Result<PasswordHash, HashError> {
        Ok(PasswordHash(format!(
            "test${}",
            hex(&Sha256::digest(password.expose().as_bytes()))
        )))
    }
    async fn verify(&self, candidate: &str, hash: Option<PasswordHash>) -> Result<bool, HashError> {
        let computed = format!("test${}", hex(&Sha256::digest(candidate.as_bytes())));
        Ok(hash.is_some_and(|h| h.0 == computed))
    }
}

/// How the fake gateway answers a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behaviour {
    /// Cards: succeeds at once.
    Succeed,
    /// Bank accounts: processing, settling on the given date.
    Process(NaiveDate),
    /// Declined.
    Decline(DeclineReason),
    /// Charges, then the answer is lost (timeout after the fact).
    LoseAnswerAfterCharging,
    /// The request never arrives.
    Unreachable,
}

#[derive(Default)]
struct GatewayState {
    methods: HashMap<String, (MethodDetails, Behaviour)>,
    charges: BTreeMap<String, (ChargeOutcome, Money)>,
    refunds: BTreeMap<String, Money>,
    calls: u64,
}

/// A scripted gateway that keeps its own record of charges by idempotency key, like a real
/// one: the same key never charges twice.
#[derive(Default)]
pub struct FakeGateway {
    state: Mutex<GatewayState>,
}

impl std::fmt::Debug for FakeGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FakeGateway")
    }
}

impl FakeGateway {
    /// A gateway that knows no tokens yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a token.
    pub fn add(&self, token: &str, details: MethodDetails, behaviour: Behaviour) {
        lock(&self.state)
            .methods
            .insert(token.to_owned(), (details, behaviour));
    }

    /// Changes a token's behaviour.
    pub fn set_behaviour(&self, token: &str, behaviour: Behaviour) {
        if let Some(m) = lock(&self.state).methods.get_mut(token) {
            m.1 = behaviour;
        }
    }

    /// Distinct charges taken (by idempotency key), excluding declines.
    pub fn charges(&self) -> usize {
        lock(&self.state)
            .charges
            .values()
            .filter(|(o, _)| !matches!(o.status, ChargeStatus::Declined { .. }))
            .count()
    }

    /// Total charged minus refunded.
    pub fn net_collected(&self) -> Money {
        let s = lock(&self.state);
        let charged = Money::sum(
            s.charges
                .values()
                .filter(|(o, _)| !matches!(o.status, ChargeStatus::Declined { .. }))
                .map(|(_, m)| *m),
        )
        .unwrap_or(Money::ZERO);
        let refunded = Money::sum(s.refunds.values().copied()).unwrap_or(Money::ZERO);
        charged.saturating_sub(refunded)
    }

    /// Charge calls received (including repeats).
    pub fn calls(&self) -> u64 {
        lock(&self.state).calls
    }
}

#[async_trait]
impl PaymentGateway for FakeGateway {
    async fn describe_method(&self, token: GatewayToken) -> Result<MethodDetails, GatewayError> {
        lock(&self.state)
            .methods
            .get(token.as_ref())
            .map(|m| m.0.clone())
            .ok_or_else(|| GatewayError::Rejected("no such payment method".into()))
    }

    async fn charge(&self, request: ChargeRequest) -> Result<ChargeOutcome, GatewayError> {
        let mut s = lock(&self.state);
        s.calls += 1;
        if let Some((o, _)) = s.charges.get(&request.idempotency_key) {
            return Ok(o.clone());
        }
        let Some((_, behaviour)) = s.methods.get(request.token.as_ref()).cloned() else {
            return Err(GatewayError::Rejected("no such payment method".into()));
        };
        let gateway_id = format!("pi_{}", s.charges.len() + 1);
        let status = match behaviour {
            Behaviour::Succeed | Behaviour::LoseAnswerAfterCharging => ChargeStatus::Succeeded,
            Behaviour::Process(d) => ChargeStatus::Processing {
                expected_settlement: d,
            },
            Behaviour::Decline(reason) => ChargeStatus::Declined { reason },
            Behaviour::Unreachable => {
                return Err(GatewayError::Unknown("connection refused".into()));
            }
        };
        let outcome = ChargeOutcome { gateway_id, status };
        s.charges
            .insert(request.idempotency_key, (outcome.clone(), request.amount));
        if behaviour == Behaviour::LoseAnswerAfterCharging {
            return Err(GatewayError::Unknown("timed out".into()));
        }
        Ok(outcome)
    }

    async fn refund(&self, request: RefundRequest) -> Result<(), GatewayError> {
        lock(&self.state)
            .refunds
            .insert(request.idempotency_key, request.amount);
        Ok(())
    }

    async fn lookup(&self, idempotency_key: String) -> Result<Option<ChargeOutcome>, GatewayError> {
        Ok(lock(&self.state)
            .charges
            .get(&idempotency_key)
            .map(|c| c.0.clone()))
    }
}

pub mod conformance;
pub mod races;
