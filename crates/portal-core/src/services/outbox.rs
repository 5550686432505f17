//! Delivery of the transactional outbox: claim due messages (several instances may run this),
//! send each through the `Notifier`, mark it sent, and retry failures with exponential backoff
//! up to a bound, after which the message is parked as a dead letter for an operator.
//!
//! A message is never lost: it leaves the queue only when the notifier accepted it or when it
//! is parked (and parked messages can be requeued). A crash after the SMTP server accepted a
//! message but before it was marked sent redelivers it when the lease runs out; the notifier
//! uses a Message-ID derived from the outbox id, so the copy is recognisably the same message.

use crate::ports::{Clock, Notifier, NotifyError, Outbox, OutboxMessage, StoreError};
use chrono::Duration;
use std::sync::Arc;

/// Retry and lease settings.
#[derive(Debug, Clone)]
pub struct DeliveryPolicy {
    /// Attempts before a message is parked.
    pub max_attempts: u32,
    /// Delay before the first retry; doubles after each failure.
    pub first_retry: Duration,
    /// Longest delay between retries.
    pub max_retry: Duration,
    /// How long a claimed batch belongs to this instance.
    pub lease: Duration,
    /// Messages claimed at a time.
    pub batch: u32,
    /// The longest one delivery may take (the notifier gives up after it). A message of a
    /// batch is sent only while this much of the batch's lease is left: a slow mail server
    /// never lets the lease run out under a message being sent, which would let another
    /// instance claim and send it again. What is left waits for the lease to end.
    pub send_budget: Duration,
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            first_retry: Duration::minutes(1),
            max_retry: Duration::hours(2),
            lease: Duration::minutes(5),
            batch: 50,
            send_budget: Duration::minutes(1),
        }
    }
}

impl DeliveryPolicy {
    /// The delay after the `attempts`-th failed attempt.
    pub fn backoff(&self, attempts: u32) -> Duration {
        let factor = 2i32.saturating_pow(attempts.saturating_sub(1).min(20));
        let delay = self.first_retry * factor;
        if delay > self.max_retry {
            self.max_retry
        } else {
            delay
        }
    }
}

/// What one delivery run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    /// Delivered.
    pub sent: u64,
    /// Failed for now; scheduled again.
    pub retried: u64,
    /// Parked as dead letters.
    pub parked: u64,
}

/// Sends the outbox.
pub struct OutboxWorker {
    outbox: Arc<dyn Outbox>,
    notifier: Arc<dyn Notifier>,
    clock: Arc<dyn Clock>,
    policy: DeliveryPolicy,
    worker_id: String,
}

impl std::fmt::Debug for OutboxWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxWorker")
            .field("worker_id", &self.worker_id)
            .finish_non_exhaustive()
    }
}

impl OutboxWorker {
    /// A worker over the outbox and a notifier.
    pub fn new(
        outbox: Arc<dyn Outbox>,
        notifier: Arc<dyn Notifier>,
        clock: Arc<dyn Clock>,
        policy: DeliveryPolicy,
        worker_id: impl Into<String>,
    ) -> Self {
        Self {
            outbox,
            notifier,
            clock,
            policy,
            worker_id: worker_id.into(),
        }
    }

    /// Delivers every message that is due now, batch by batch.
    pub async fn run_once(&self) -> Result<DeliveryReport, StoreError> {
        let mut report = DeliveryReport::default();
        loop {
            let now = self.clock.now();
            let lease_until = now + self.policy.lease;
            let batch = self
                .outbox
                .claim_messages(self.worker_id.clone(), self.policy.batch, now, lease_until)
                .await?;
            if batch.is_empty() {
                return Ok(report);
            }
            for message in batch {
                if self.clock.now() + self.policy.send_budget > lease_until {
                    // Too little of the lease is left to send another one safely.
                    break;
                }
                self.deliver(message, &mut report).await?;
            }
        }
    }

    async fn deliver(
        &self,
        message: OutboxMessage,
        report: &mut DeliveryReport,
    ) -> Result<(), StoreError> {
        let id = message.id;
        let attempts = message.attempts + 1;
        let result = self.notifier.deliver(message).await;
        let now = self.clock.now();
        match result {
            Ok(message_id) => {
                self.outbox.mark_sent(id, message_id, now).await?;
                report.sent += 1;
            }
            Err(NotifyError::Temporary(why)) if attempts < self.policy.max_attempts => {
                let retry_at = now + self.policy.backoff(attempts);
                self.outbox
                    .mark_failed(id, why, Some(retry_at), now)
                    .await?;
                report.retried += 1;
            }
            Err(NotifyError::Temporary(why) | NotifyError::Permanent(why)) => {
                self.outbox.mark_failed(id, why, None, now).await?;
                report.parked += 1;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::{Changes, Store};
    use crate::testing::conformance::bare_account;
    use crate::testing::{FixedClock, InMemoryStore, RecordingNotifier};
    use chrono::NaiveDate;

    async fn setup(
        n: usize,
    ) -> (
        Arc<InMemoryStore>,
        Arc<RecordingNotifier>,
        Arc<FixedClock>,
        OutboxWorker,
    ) {
        let store = Arc::new(InMemoryStore::new());
        let account = bare_account(1);
        let mut c = Changes::account(account.clone());
        for i in 0..n {
            c.notify([account.notice(
                format!("n{i}"),
                crate::notice::NoticeBody::PasswordChanged {
                    changed_at: chrono::DateTime::UNIX_EPOCH,
                },
            )]);
        }
        store.commit(c).await.unwrap();
        let notifier = Arc::new(RecordingNotifier::default());
        let clock = Arc::new(FixedClock::at(NaiveDate::from_ymd_opt(2027, 1, 5).unwrap()));
        let worker = OutboxWorker::new(
            store.clone(),
            notifier.clone(),
            clock.clone(),
            DeliveryPolicy::default(),
            "w1",
        );
        (store, notifier, clock, worker)
    }

    #[tokio::test]
    async fn delivers_each_message_once() {
        let (store, notifier, _, worker) = setup(3).await;
        assert_eq!(
            worker.run_once().await.unwrap(),
            DeliveryReport {
                sent: 3,
                retried: 0,
                parked: 0
            }
        );
        assert_eq!(worker.run_once().await.unwrap(), DeliveryReport::default());
        assert_eq!(notifier.delivered().len(), 3);
        assert!(store.pending_messages(10).await.unwrap().is_empty());
    }

    /// A notifier that takes seven seconds a message (on the test clock) and records when each
    /// send ended.
    struct SlowNotifier {
        clock: Arc<FixedClock>,
        ended: std::sync::Mutex<Vec<chrono::DateTime<chrono::Utc>>>,
    }

    #[async_trait::async_trait]
    impl Notifier for SlowNotifier {
        async fn deliver(&self, message: OutboxMessage) -> Result<String, NotifyError> {
            self.clock.advance(Duration::seconds(7));
            if let Ok(mut ended) = self.ended.lock() {
                ended.push(self.clock.now());
            }
            Ok(format!("<{}@test>", message.id))
        }
    }

    #[tokio::test]
    async fn a_slow_mail_server_never_outlasts_the_lease() {
        let (store, _, clock, _) = setup(50).await;
        let slow = Arc::new(SlowNotifier {
            clock: clock.clone(),
            ended: std::sync::Mutex::new(Vec::new()),
        });
        let policy = DeliveryPolicy::default();
        let worker = OutboxWorker::new(
            store.clone(),
            slow.clone(),
            clock.clone(),
            policy.clone(),
            "w1",
        );
        let lease_until = clock.now() + policy.lease;
        let first = worker.run_once().await.unwrap();
        let ended = slow.ended.lock().map(|e| e.clone()).unwrap_or_default();
        assert!(first.sent > 0 && first.sent < 50, "{first:?}");
        assert!(
            ended.iter().all(|t| *t <= lease_until),
            "every send ended while the lease held"
        );
        // What was left is another instance's once the lease ends: each message once.
        clock.set_date(NaiveDate::from_ymd_opt(2027, 1, 6).unwrap());
        let other = OutboxWorker::new(store.clone(), slow.clone(), clock.clone(), policy, "w2");
        let second = other.run_once().await.unwrap();
        assert_eq!(first.sent + second.sent, 50);
        assert!(store.pending_messages(100).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_server_that_is_down_delays_but_never_loses_a_message() {
        let (store, notifier, clock, worker) = setup(1).await;
        notifier.fail_next(3, NotifyError::Temporary("connection refused".into()));
        assert_eq!(worker.run_once().await.unwrap().retried, 1);
        assert_eq!(
            worker.run_once().await.unwrap(),
            DeliveryReport::default(),
            "not before its retry time"
        );
        for minutes in [1, 2, 4] {
            clock.advance(Duration::minutes(minutes));
            worker.run_once().await.unwrap();
        }
        assert_eq!(notifier.delivered().len(), 1);
        assert!(store.dead_letters(10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn permanent_failures_and_exhausted_retries_are_parked_and_can_be_requeued() {
        let (store, notifier, clock, worker) = setup(2).await;
        notifier.fail_next(1, NotifyError::Permanent("550 5.1.1 no such user".into()));
        let r = worker.run_once().await.unwrap();
        assert_eq!(
            (r.sent, r.parked),
            (1, 1),
            "the bad one does not block the other"
        );
        let dead = store.dead_letters(10).await.unwrap();
        assert_eq!(dead.len(), 1);
        assert!(store.requeue(dead[0].id, clock.now()).await.unwrap());
        notifier.fail_next(8, NotifyError::Temporary("451 try later".into()));
        for _ in 0..10 {
            worker.run_once().await.unwrap();
            clock.advance(Duration::hours(3));
        }
        assert_eq!(
            store.dead_letters(10).await.unwrap().len(),
            1,
            "parked after the last attempt"
        );
        assert_eq!(notifier.attempts(), 1 + 1 + 8, "bounded");
    }

    #[test]
    fn backoff_doubles_to_a_cap() {
        let p = DeliveryPolicy::default();
        assert_eq!(p.backoff(1), Duration::minutes(1));
        assert_eq!(p.backoff(3), Duration::minutes(4));
        assert_eq!(p.backoff(30), Duration::hours(2));
    }
}
