//! `StripeGateway`: the core's `PaymentGateway` over HTTP in the Stripe API dialect. Point it at
//! the sandbox (`portal-sandbox`) or, with a Stripe test key, at Stripe itself.
//!
//! Every POST carries an `Idempotency-Key`. A network error, a timeout, a 409, 429 or 5xx is
//! retried with exponential backoff under the same key; other 4xx answers are final. When the
//! retries run out the outcome is reported as `GatewayError::Unknown`, never as failed or
//! succeeded: the payment stays pending and is reconciled by `lookup`.

pub mod webhook;
pub mod wire;

use async_trait::async_trait;
use portal_core::instrument::{GatewayToken, MethodDetails};
use portal_core::ports::{
    ChargeOutcome, ChargeRequest, ChargeStatus, GatewayError, GatewayEvent, PaymentGateway,
    RefundRequest,
};
use secrecy::{ExposeSecret, SecretString};
use std::time::Duration;

pub use webhook::WebhookError;

/// Gateway client configuration.
#[derive(Debug, Clone)]
pub struct StripeConfig {
    /// `https://api.stripe.com` or the sandbox's URL, without a trailing slash.
    pub base_url: String,
    /// Secret API key.
    pub secret_key: SecretString,
    /// Webhook signing secret.
    pub webhook_secret: SecretString,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Whole-request timeout.
    pub request_timeout: Duration,
    /// Attempts per request (1 = no retries).
    pub max_attempts: u32,
    /// First retry delay; doubles each retry.
    pub retry_base: Duration,
    /// Days a bank transfer is expected to take to settle.
    pub settlement_days: u64,
    /// How old a webhook may be, in seconds.
    pub webhook_tolerance_secs: i64,
}

impl StripeConfig {
    /// Defaults for `base_url` with the given keys: 5 s connect, 20 s request, 3 attempts.
    pub fn new(
        base_url: impl Into<String>,
        secret_key: impl Into<String>,
        webhook_secret: impl Into<String>,
    ) -> Self {
        Self {
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            secret_key: SecretString::from(secret_key.into()),
            webhook_secret: SecretString::from(webhook_secret.into()),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(20),
            max_attempts: 3,
            retry_base: Duration::from_millis(250),
            settlement_days: 4,
            webhook_tolerance_secs: 300,
        }
    }
}

/// The gateway client.
#[derive(Debug, Clone)]
pub struct StripeGateway {
    http: reqwest::Client,
    config: StripeConfig,
}

/// One answer from the gateway, after retries.
enum Reply {
    /// A final HTTP answer.
    Answer(u16, String),
    /// Retries ran out without a final answer.
    NoAnswer(String),
}

impl StripeGateway {
    /// A client with the configured timeouts.
    pub fn new(config: StripeConfig) -> Result<Self, GatewayError> {
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .user_agent("health-connector-portal")
            .build()
            .map_err(|e| GatewayError::Protocol(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self { http, config })
    }

    /// Verifies a webhook's signature and parses it into the event the core applies.
    pub fn verify_webhook(
        &self,
        signature: Option<&str>,
        payload: &[u8],
    ) -> Result<GatewayEvent, WebhookError> {
        webhook::verify(
            signature,
            payload,
            self.config.webhook_secret.expose_secret(),
            chrono::Utc::now().timestamp(),
            self.config.webhook_tolerance_secs,
        )?;
        webhook::parse(payload, self.config.settlement_days)
    }

    async fn send(&self, post: Option<(String, &str)>, path: &str) -> Reply {
        let url = format!("{}{path}", self.config.base_url);
        let mut delay = self.config.retry_base;
        let mut last = String::new();
        for attempt in 1..=self.config.max_attempts.max(1) {
            let req = match &post {
                Some((body, key)) => self
                    .http
                    .post(&url)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .header("idempotency-key", *key)
                    .body(body.clone()),
                None => self.http.get(&url),
            };
            let sent = req
                .bearer_auth(self.config.secret_key.expose_secret())
                .send()
                .await;
            match sent {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    match resp.text().await {
                        Ok(body) if !(status == 409 || status == 429 || status >= 500) => {
                            return Reply::Answer(status, body);
                        }
                        Ok(_) => last = format!("HTTP {status}"),
                        Err(e) => last = format!("reading the answer failed: {e}"),
                    }
                }
                Err(e) => {
                    last = if e.is_timeout() {
                        "timed out".into()
                    } else {
                        format!("request failed: {e}")
                    }
                }
            }
            if attempt < self.config.max_attempts {
                tokio::time::sleep(delay).await;
                delay = delay.saturating_mul(2);
            }
        }
        Reply::NoAnswer(last)
    }

    fn rejected(status: u16, body: &str) -> GatewayError {
        let msg = wire::parse_error(body)
            .map(|e| {
                format!(
                    "{} ({})",
                    e.message.unwrap_or_default(),
                    e.code.unwrap_or(e.kind)
                )
            })
            .unwrap_or_else(|| format!("HTTP {status}"));
        GatewayError::Rejected(msg)
    }
}

#[async_trait]
impl PaymentGateway for StripeGateway {
    async fn describe_method(&self, token: GatewayToken) -> Result<MethodDetails, GatewayError> {
        match self
            .send(None, &format!("/v1/payment_methods/{}", token.as_ref()))
            .await
        {
            Reply::Answer(200, body) => wire::parse_method(&body),
            Reply::Answer(status, body) => Err(Self::rejected(status, &body)),
            Reply::NoAnswer(why) => Err(GatewayError::Unknown(why)),
        }
    }

    async fn charge(&self, request: ChargeRequest) -> Result<ChargeOutcome, GatewayError> {
        let body = wire::encode_form(&wire::charge_form(&request)?);
        match self
            .send(
                Some((body, &request.idempotency_key)),
                "/v1/payment_intents",
            )
            .await
        {
            // A success whose body cannot be read may still have charged: unknown, reconciled later.
            Reply::Answer(200, body) => wire::parse_intent(&body)
                .and_then(|pi| wire::outcome(&pi, self.config.settlement_days))
                .map_err(|e| GatewayError::Unknown(e.to_string())),
            Reply::Answer(402, body) => {
                let err = wire::parse_error(&body)
                    .ok_or_else(|| GatewayError::Unknown("unreadable card error".into()))?;
                let gateway_id = err
                    .payment_intent
                    .as_ref()
                    .map(|pi| pi.id.clone())
                    .unwrap_or_default();
                Ok(ChargeOutcome {
                    gateway_id,
                    status: ChargeStatus::Declined {
                        reason: wire::decline_reason(
                            err.code.as_deref(),
                            err.decline_code.as_deref(),
                        ),
                    },
                })
            }
            Reply::Answer(status, body) => Err(Self::rejected(status, &body)),
            Reply::NoAnswer(why) => Err(GatewayError::Unknown(why)),
        }
    }

    async fn refund(&self, request: RefundRequest) -> Result<(), GatewayError> {
        let body = wire::encode_form(&wire::refund_form(&request)?);
        match self
            .send(Some((body, &request.idempotency_key)), "/v1/refunds")
            .await
        {
            Reply::Answer(200, _) => Ok(()),
            Reply::Answer(status, body) => Err(Self::rejected(status, &body)),
            Reply::NoAnswer(why) => Err(GatewayError::Unknown(why)),
        }
    }

    async fn lookup(&self, idempotency_key: String) -> Result<Option<ChargeOutcome>, GatewayError> {
        let query: String = wire::lookup_query(&idempotency_key)
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                other => format!("%{other:02X}"),
            })
            .collect();
        match self
            .send(None, &format!("/v1/payment_intents/search?query={query}"))
            .await
        {
            Reply::Answer(200, body) => match wire::parse_search(&body)? {
                Some(pi) => wire::outcome(&pi, self.config.settlement_days).map(Some),
                None => Ok(None),
            },
            Reply::Answer(status, body) => Err(Self::rejected(status, &body)),
            Reply::NoAnswer(why) => Err(GatewayError::Unknown(why)),
        }
    }
}
