//! Sorting an HTTP response to a stream request: a usable stream, a refusal that must stop
//! the subscription, or a failure to retry (with the server's minimum delay). Reads nothing
//! of a usable stream's body.

use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Response, StatusCode};
use tokio::time::timeout;

use crate::event::{Disconnect, Error};

/// Error bodies read before a stream (401, 403, ...) are cut to this many bytes.
const ERROR_BODY_BYTES_MAX: usize = 4096;

pub(crate) enum Check {
    /// Stop; the error is built from the response body.
    Stop(Refusal),
    Retry(Disconnect, Option<Duration>),
}

/// A status after which retrying the same request cannot succeed.
#[derive(Clone, Copy)]
pub(crate) enum Refusal {
    Unauthorized,
    Forbidden,
    Other(u16),
}

impl Refusal {
    pub(crate) fn into_error(self, body: String) -> Error {
        match self {
            Self::Unauthorized => Error::Unauthorized { body },
            Self::Forbidden => Error::Forbidden { body },
            Self::Other(status) => Error::Rejected { status, body },
        }
    }
}

/// Sorts a response that is not a usable stream; `None` when it is one.
pub(crate) fn check_response(response: &Response) -> Option<Check> {
    let status = response.status();
    let check = match status {
        StatusCode::OK => {
            let is_sse = response
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("text/event-stream"));
            if is_sse {
                return None;
            }
            // A captive portal or a misrouted proxy: may clear up, so retry with backoff.
            Check::Retry(Disconnect::Network("200 response is not text/event-stream".into()), None)
        }
        StatusCode::UNAUTHORIZED => Check::Stop(Refusal::Unauthorized),
        StatusCode::FORBIDDEN => Check::Stop(Refusal::Forbidden),
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
            let after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            Check::Retry(Disconnect::Status(status.as_u16()), after)
        }
        s if s == StatusCode::REQUEST_TIMEOUT || s.is_server_error() => Check::Retry(Disconnect::Status(s.as_u16()), None),
        s if s.is_client_error() => Check::Stop(Refusal::Other(s.as_u16())),
        s => Check::Retry(Disconnect::Status(s.as_u16()), None),
    };
    Some(check)
}

pub(crate) async fn read_error_body(mut response: Response) -> String {
    let mut body = Vec::new();
    while body.len() < ERROR_BODY_BYTES_MAX {
        match timeout(Duration::from_secs(5), response.chunk()).await {
            Ok(Ok(Some(chunk))) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    body.truncate(ERROR_BODY_BYTES_MAX);
    String::from_utf8_lossy(&body).into_owned()
}

/// The error with its sources, which is where reqwest puts the useful part.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
