//! The one HTTP error type: a status, a stable code, a message and (for bad input) the field.
//!
//! Every refusal the hub makes before a stream starts, and every publish error, goes through
//! here, so clients always get JSON of one shape and never internal details.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode};
use serde::Serialize;

use crate::auth::AuthError;

/// Seconds a client is asked to wait (`Retry-After`) when the node or account is full or the
/// hub drains: long enough for a storm to spread out.
pub(crate) const RETRY_AFTER_BUSY_SECS: u64 = 5;
/// Seconds a client is asked to wait when a service the hub needs (the engine, the identity
/// provider) is unavailable: short, since such outages are usually blips.
pub(crate) const RETRY_AFTER_UNAVAILABLE_SECS: u64 = 2;

/// An error answered as `{"error": {"code", "message", "field"?}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    /// Seconds, sent as `Retry-After` (with 429 and 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), field: None, retry_after: None }
    }

    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// 503 with `Retry-After`: the hub cannot serve this now, try again later.
    pub fn unavailable(code: &'static str, message: impl Into<String>, retry_after: u64) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message).retry_after(retry_after)
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Missing => Self::new(StatusCode::UNAUTHORIZED, "missing_credentials", e.to_string()),
            AuthError::Invalid => Self::new(StatusCode::UNAUTHORIZED, "invalid_credentials", e.to_string()),
            AuthError::Expired => Self::new(StatusCode::UNAUTHORIZED, "expired_credentials", e.to_string()),
            AuthError::Forbidden(why) => Self::new(StatusCode::FORBIDDEN, "forbidden", why),
            AuthError::Unavailable => Self::unavailable("identity_provider_unavailable", e.to_string(), RETRY_AFTER_UNAVAILABLE_SECS),
        }
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body { error: Inner { code: self.code, message: &self.message, field: self.field.as_deref() } };
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(http::header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}
