//! Publishing activities from a backend service: `POST /events` with a publisher key.
//!
//! Every item carries an idempotency key (the caller's, or one generated here), and a failed
//! attempt that may have reached the hub is retried with the same keys: connection errors,
//! timeouts, `408`, `429` and `503` (waiting at least their `Retry-After`) and other `5xx`,
//! with capped full-jitter backoff, until [`RetryPolicy::give_up_after`] has passed. The hub
//! stores a key once, so a publish that timed out after the hub stored it is not delivered
//! twice. Other `4xx` answers are final at once: repeating the same request cannot succeed.

use std::time::{Duration, Instant};

use reqwest::header::{AUTHORIZATION, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::backoff::{Backoff, Hints};

/// A publish attempt that does not answer in this time has failed (and is retried); the hub
/// answers in milliseconds.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`RetryPolicy::give_up_after`]: long enough to ride out a hub restart or a Redis
/// fail-over, short enough that a request handler calling the publisher still answers.
pub const GIVE_UP_AFTER_DEFAULT: Duration = Duration::from_secs(30);
/// Default backoff between attempts: the first retry waits up to 100 ms, the ceiling doubles
/// up to 5 s.
pub const RETRY_BACKOFF_DEFAULT: Backoff = Backoff { base: Duration::from_millis(100), cap: Duration::from_secs(5) };

/// Publishes activities to a hub.
#[derive(Debug, Clone)]
pub struct Publisher {
    http: reqwest::Client,
    /// `POST /events` under the base URL, or why the base URL was unusable.
    url: Result<Url, String>,
    key: String,
    retry: RetryPolicy,
}

/// How long and how a publisher retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// No attempt starts later than this after the first one; then the publish fails with
    /// [`PublishError::GaveUp`]. `Duration::ZERO` makes one attempt only.
    pub give_up_after: Duration,
    /// The delays between attempts (full jitter; a `Retry-After` is a floor).
    pub backoff: Backoff,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { give_up_after: GIVE_UP_AFTER_DEFAULT, backoff: RETRY_BACKOFF_DEFAULT }
    }
}

impl RetryPolicy {
    /// One attempt, no retry.
    pub fn never() -> Self {
        Self { give_up_after: Duration::ZERO, ..Self::default() }
    }
}

/// One activity for one account, as in a batch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PublishItem {
    pub account: String,
    /// The activity object; every field reaches subscribers unchanged.
    pub data: Value,
    /// Who in the account may see it: only streams whose identity holds one of these grants
    /// (`user:<user>` and `session:<session>` included) receive it. `None`: the whole account
    /// (or what the hub's mapping derives). `Some` must hold 1 to 64 grants, or the hub
    /// refuses the publish with 422.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<Vec<String>>,
    /// The idempotency key: within the account, the hub stores an item with a key it has
    /// already accepted only once. `None` gets a random key for the publish (so its own
    /// retries are safe); give one derived from your data (a row id, an operation id) to make
    /// retries of your own safe too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl PublishItem {
    /// An item for the whole account, without a key of its own.
    pub fn new(account: impl Into<String>, data: Value) -> Self {
        Self { account: account.into(), data, audience: None, key: None }
    }

    /// The same item for the holders of any of these grants only.
    pub fn with_audience<I: IntoIterator<Item = S>, S: Into<String>>(mut self, grants: I) -> Self {
        self.audience = Some(grants.into_iter().map(Into::into).collect());
        self
    }

    /// The same item with this idempotency key.
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }
}

/// What the hub answered to an accepted publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// One id per item, in order; a duplicate's is the id its key got the first time.
    pub ids: Vec<String>,
    /// Positions of the items whose key the hub had already accepted: not stored again.
    pub duplicates: Vec<usize>,
    /// The key each item was sent with (generated where the item had none).
    pub keys: Vec<String>,
    /// Attempts made, 1 when the first one succeeded.
    pub attempts: u32,
}

/// Why a publish failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The hub refused the request and said why (for a batch, nothing was published).
    #[error("hub refused the publish ({status} {code}{}): {message}", field.as_deref().map(|f| format!(" at {f}")).unwrap_or_default())]
    Hub {
        status: u16,
        /// Machine-readable code, such as `invalid_field`.
        code: String,
        /// The offending field, such as `data.activity_type` or `[2].account`.
        field: Option<String>,
        message: String,
    },
    /// A non-success status without the hub's JSON error (a proxy in between, ...).
    #[error("publish failed with status {status}: {body}")]
    Status { status: u16, body: String },
    /// The request could not be made or its answer not read.
    #[error("publish request failed: {0}")]
    Network(String),
    /// A success status with a body that is not `{"ids": [...]}`.
    #[error("unexpected publish response: {0}")]
    UnexpectedResponse(String),
    /// The base URL given to [`Publisher::new`] is unusable.
    #[error("invalid base url: {0}")]
    InvalidUrl(String),
    /// Every attempt failed in a way worth retrying, until the retry policy's time was up.
    /// The publish may or may not have been stored; sending the same items with the same keys
    /// later is safe while the hub remembers the keys.
    #[error("publish gave up after {attempts} attempts in {elapsed:?}: {last}")]
    GaveUp {
        attempts: u32,
        elapsed: Duration,
        /// The last attempt's failure.
        last: Box<PublishError>,
    },
}

impl PublishError {
    /// Whether the same request may succeed later: a network failure, `408`, `429` or a
    /// `5xx`. Everything else is final.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Network(_) => true,
            Self::Hub { status, .. } | Self::Status { status, .. } => is_retryable_status(*status),
            Self::GaveUp { .. } | Self::UnexpectedResponse(_) | Self::InvalidUrl(_) => false,
        }
    }
}

fn is_retryable_status(status: u16) -> bool {
    status == 408 || status == 429 || (500..600).contains(&status)
}

#[derive(Deserialize)]
struct Accepted {
    ids: Vec<String>,
    #[serde(default)]
    duplicates: Vec<usize>,
}

#[derive(Deserialize)]
struct HubError {
    error: HubErrorBody,
}

#[derive(Deserialize)]
struct HubErrorBody {
    code: String,
    #[serde(default)]
    field: Option<String>,
    message: String,
}

/// One failed attempt: the error, and the least the server asked us to wait.
struct Failed {
    error: PublishError,
    retry_after: Option<Duration>,
}

impl From<PublishError> for Failed {
    fn from(error: PublishError) -> Self {
        Self { error, retry_after: None }
    }
}

impl Publisher {
    /// A publisher for the hub at `base_url` with publisher `key`, retrying by
    /// [`RetryPolicy::default`]. An unusable URL is reported by the first publish, so
    /// construction chains.
    pub fn new(base_url: &str, key: impl Into<String>) -> Self {
        let url = Url::parse(base_url).map_err(|e| e.to_string()).and_then(|mut url| {
            url.path_segments_mut()
                .map_err(|()| format!("{base_url} cannot be a base"))?
                .pop_if_empty()
                .push("events");
            Ok(url)
        });
        Self { http: reqwest::Client::new(), url, key: key.into(), retry: RetryPolicy::default() }
    }

    /// Use this `reqwest` client (TLS, proxies).
    pub fn with_client(mut self, http: reqwest::Client) -> Self {
        self.http = http;
        self
    }

    /// Retry by this policy ([`RetryPolicy::never`] for a single attempt).
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Publishes one activity to `account` (with a generated key); returns its event id.
    pub async fn publish(&self, account: &str, activity: &Value) -> Result<String, PublishError> {
        let receipt = self.submit(&[PublishItem::new(account, activity.clone())]).await?;
        match <[String; 1]>::try_from(receipt.ids) {
            Ok([id]) => Ok(id),
            Err(ids) => Err(PublishError::UnexpectedResponse(format!("{} ids for one activity", ids.len()))),
        }
    }

    /// Publishes a batch atomically (all or nothing); returns the ids in batch order.
    pub async fn publish_batch(&self, items: &[PublishItem]) -> Result<Vec<String>, PublishError> {
        Ok(self.submit(items).await?.ids)
    }

    /// Publishes a batch atomically (all or nothing), retrying by the policy with the same
    /// keys; returns the ids, which items were duplicates, and the keys used.
    pub async fn submit(&self, items: &[PublishItem]) -> Result<Receipt, PublishError> {
        let items: Vec<PublishItem> = items
            .iter()
            .map(|item| match item.key {
                Some(_) => item.clone(),
                None => item.clone().with_key(generated_key()),
            })
            .collect();
        let started = Instant::now();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let failed = match self.post(&items).await {
                Ok(accepted) => return receipt(&items, accepted, attempt),
                Err(f) if f.error.is_retryable() => f,
                Err(f) => return Err(f.error),
            };
            let hints = Hints { retry: None, floor: failed.retry_after };
            let delay = self.retry.backoff.delay(attempt - 1, hints, rand::random::<f64>());
            let elapsed = started.elapsed();
            if elapsed + delay > self.retry.give_up_after {
                return Err(PublishError::GaveUp { attempts: attempt, elapsed, last: Box::new(failed.error) });
            }
            tracing::debug!(attempt, error = %failed.error, ?delay, "publish failed; retrying with the same keys");
            tokio::time::sleep(delay).await;
        }
    }

    async fn post(&self, items: &[PublishItem]) -> Result<Accepted, Failed> {
        let url = self.url.clone().map_err(PublishError::InvalidUrl)?;
        let response = self
            .http
            .post(url)
            .header(AUTHORIZATION, format!("Bearer {}", self.key))
            .timeout(PUBLISH_TIMEOUT)
            .json(items)
            .send()
            .await
            .map_err(|e| PublishError::Network(crate::response::error_chain(&e)))?;
        let status = response.status();
        let retry_after = match status {
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs),
            _ => None,
        };
        let bytes = response.bytes().await.map_err(|e| PublishError::Network(crate::response::error_chain(&e)))?;
        if status.is_success() {
            return serde_json::from_slice::<Accepted>(&bytes).map_err(|e| PublishError::UnexpectedResponse(e.to_string()).into());
        }
        let error = match serde_json::from_slice::<HubError>(&bytes) {
            Ok(HubError { error: e }) => PublishError::Hub { status: status.as_u16(), code: e.code, field: e.field, message: e.message },
            Err(_) => PublishError::Status { status: status.as_u16(), body: String::from_utf8_lossy(&bytes).chars().take(1024).collect() },
        };
        Err(Failed { error, retry_after })
    }
}

fn receipt(items: &[PublishItem], accepted: Accepted, attempts: u32) -> Result<Receipt, PublishError> {
    if accepted.ids.len() != items.len() {
        return Err(PublishError::UnexpectedResponse(format!("{} ids for {} activities", accepted.ids.len(), items.len())));
    }
    if let Some(bad) = accepted.duplicates.iter().find(|&&i| i >= items.len()) {
        return Err(PublishError::UnexpectedResponse(format!("duplicate position {bad} in a batch of {}", items.len())));
    }
    let keys = items.iter().map(|i| i.key.clone().unwrap_or_default()).collect();
    Ok(Receipt { ids: accepted.ids, duplicates: accepted.duplicates, keys, attempts })
}

/// A random key for an item the caller gave none: 128 bits, so two publishes never share one.
fn generated_key() -> String {
    format!("{:032x}", rand::random::<u128>())
}
