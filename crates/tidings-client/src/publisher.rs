//! Publishing activities from a backend service: `POST /events` with a publisher key.
//!
//! One request per call, no retries: whether a failed publish may be repeated (and risk a
//! duplicate activity) is the caller's decision.

use std::time::Duration;

use reqwest::Url;
use reqwest::header::AUTHORIZATION;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A publish that does not answer in this time has failed; the hub answers in milliseconds.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// Publishes activities to a hub.
#[derive(Debug, Clone)]
pub struct Publisher {
    http: reqwest::Client,
    /// `POST /events` under the base URL, or why the base URL was unusable.
    url: Result<Url, String>,
    key: String,
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
}

impl PublishItem {
    /// An item for the whole account.
    pub fn new(account: impl Into<String>, data: Value) -> Self {
        Self { account: account.into(), data, audience: None }
    }

    /// The same item for the holders of any of these grants only.
    pub fn with_audience<I: IntoIterator<Item = S>, S: Into<String>>(mut self, grants: I) -> Self {
        self.audience = Some(grants.into_iter().map(Into::into).collect());
        self
    }
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
}

#[derive(Deserialize)]
struct Accepted {
    ids: Vec<String>,
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

impl Publisher {
    /// A publisher for the hub at `base_url` with publisher `key`. An unusable URL is
    /// reported by the first publish, so construction chains.
    pub fn new(base_url: &str, key: impl Into<String>) -> Self {
        let url = Url::parse(base_url).map_err(|e| e.to_string()).and_then(|mut url| {
            url.path_segments_mut()
                .map_err(|()| format!("{base_url} cannot be a base"))?
                .pop_if_empty()
                .push("events");
            Ok(url)
        });
        Self { http: reqwest::Client::new(), url, key: key.into() }
    }

    /// Use this `reqwest` client (TLS, proxies).
    pub fn with_client(mut self, http: reqwest::Client) -> Self {
        self.http = http;
        self
    }

    /// Publishes one activity to `account`; returns its event id.
    pub async fn publish(&self, account: &str, activity: &Value) -> Result<String, PublishError> {
        #[derive(Serialize)]
        struct One<'a> {
            account: &'a str,
            data: &'a Value,
        }
        let ids = self.post(&One { account, data: activity }).await?;
        match <[String; 1]>::try_from(ids) {
            Ok([id]) => Ok(id),
            Err(ids) => Err(PublishError::UnexpectedResponse(format!("{} ids for one activity", ids.len()))),
        }
    }

    /// Publishes a batch atomically (all or nothing); returns the ids in batch order.
    pub async fn publish_batch(&self, items: &[PublishItem]) -> Result<Vec<String>, PublishError> {
        let ids = self.post(items).await?;
        if ids.len() != items.len() {
            return Err(PublishError::UnexpectedResponse(format!("{} ids for {} activities", ids.len(), items.len())));
        }
        Ok(ids)
    }

    async fn post<B: Serialize + ?Sized>(&self, body: &B) -> Result<Vec<String>, PublishError> {
        let url = self.url.clone().map_err(PublishError::InvalidUrl)?;
        let response = self
            .http
            .post(url)
            .header(AUTHORIZATION, format!("Bearer {}", self.key))
            .timeout(PUBLISH_TIMEOUT)
            .json(body)
            .send()
            .await
            .map_err(|e| PublishError::Network(e.to_string()))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| PublishError::Network(e.to_string()))?;
        if status.is_success() {
            return serde_json::from_slice::<Accepted>(&bytes)
                .map(|a| a.ids)
                .map_err(|e| PublishError::UnexpectedResponse(e.to_string()));
        }
        Err(match serde_json::from_slice::<HubError>(&bytes) {
            Ok(HubError { error: e }) => {
                PublishError::Hub { status: status.as_u16(), code: e.code, field: e.field, message: e.message }
            }
            Err(_) => PublishError::Status {
                status: status.as_u16(),
                body: String::from_utf8_lossy(&bytes).chars().take(1024).collect(),
            },
        })
    }
}
