//! The subscription: one SSE connection at a time over `reqwest`, with its own reconnect loop.
//!
//! A spawned task owns the connection, the parser and the resume position; the application
//! holds a [`Subscription`] that receives typed items through a bounded channel. Dropping or
//! stopping the subscription aborts the task, which drops the connection and any pending
//! timer: nothing is left running. This module does not parse bytes (see [`crate::sse`]) or
//! compute delays (see [`crate::backoff`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use reqwest::header::{ACCEPT, AUTHORIZATION};
use reqwest::{Response, Url};
use tidings_protocol::CloseReason;
use tidings_protocol::frame::ServerMessage;
use tidings_protocol::resolver::Resolver;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};

use crate::backoff::{Backoff, Hints};
use crate::cache::{self, Cache};
use crate::event::{Disconnect, Error, Event, TokenError};
use crate::response::{Check, check_response, error_chain, read_error_body};
use crate::sse::SseParser;

/// Items buffered between the connection task and the application. When full, the task stops
/// reading the socket (backpressure); a hub that cannot send then ends the stream as a slow
/// consumer and the client resumes from its last id, so nothing is lost or held unbounded.
pub const ITEMS_BUFFERED_MAX: usize = 256;

/// Heartbeat assumed until a `connected` frame states the hub's (the hub's default; docs/protocol.md C8).
pub const HEARTBEAT_DEFAULT: Duration = Duration::from_secs(15);

/// A connection that stays silent this many half-heartbeats (2.5 heartbeats, as the browser
/// SDK's `WATCHDOG_HEARTBEATS`) is dead: a half-open TCP connection or a stuck proxy. Two
/// missed pings and then some, so one late ping on a busy hub is not taken for a dead link.
pub const WATCHDOG_HALF_HEARTBEATS: u32 = 5;

/// How long a connection may stay silent, given the hub's heartbeat.
fn watchdog(heartbeat: Duration) -> Duration {
    heartbeat.saturating_mul(WATCHDOG_HALF_HEARTBEATS) / 2
}

/// How long to wait for response headers. A hub that accepts the TCP connection but never
/// answers is as dead as one that refuses it.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// A stream that lasted this long counts as healthy: the next failure starts the backoff over.
/// Shorter streams keep growing the delay, so a hub that accepts and then dies at once is not
/// hammered.
pub const STABLE_STREAM_MIN: Duration = Duration::from_secs(5);

type TokenFuture = Pin<Box<dyn Future<Output = Result<String, TokenError>> + Send>>;
type TokenProvider = Arc<dyn Fn() -> TokenFuture + Send + Sync>;
type Item = Result<Event, Error>;

/// How the token is presented in `Authorization`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AuthScheme {
    /// `Authorization: Bearer <token>`.
    #[default]
    Bearer,
    /// `Authorization: Token <token>` (the original console's form).
    Token,
}

/// Entry point: `Client::builder(base_url)`.
#[derive(Debug)]
pub struct Client;

impl Client {
    pub fn builder(base_url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            base_url: base_url.into(),
            token: None,
            scheme: AuthScheme::default(),
            backoff: Backoff::default(),
            http: None,
            last_event_id: None,
            cache: None,
            resolver: None,
            heartbeat: HEARTBEAT_DEFAULT,
        }
    }
}

/// Why a subscription could not be started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The base URL does not parse or cannot be a base.
    #[error("invalid base url: {0}")]
    InvalidUrl(String),
    /// No token provider was set.
    #[error("a token provider is required")]
    NoTokenProvider,
}

/// Configures a subscription.
pub struct ClientBuilder {
    base_url: String,
    token: Option<TokenProvider>,
    scheme: AuthScheme,
    backoff: Backoff,
    http: Option<reqwest::Client>,
    last_event_id: Option<String>,
    cache: Option<Arc<dyn Cache>>,
    resolver: Option<Resolver>,
    heartbeat: Duration,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("base_url", &self.base_url)
            .field("scheme", &self.scheme)
            .field("backoff", &self.backoff)
            .field("last_event_id", &self.last_event_id)
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// Called on every (re)connect for the current token, so it can be refreshed.
    pub fn token_provider<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, TokenError>> + Send + 'static,
    {
        self.token = Some(Arc::new(move || Box::pin(f()) as TokenFuture));
        self
    }

    /// A fixed token (tools, tests); prefer [`ClientBuilder::token_provider`] in applications.
    pub fn token(self, token: impl Into<String>) -> Self {
        let token = token.into();
        self.token_provider(move || std::future::ready(Ok(token.clone())))
    }

    pub fn auth_scheme(mut self, scheme: AuthScheme) -> Self {
        self.scheme = scheme;
        self
    }

    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Use this `reqwest` client (TLS, proxies, timeouts of the application's choosing). It
    /// must not set a total request timeout: the stream is meant to stay open.
    pub fn http_client(mut self, http: reqwest::Client) -> Self {
        self.http = Some(http);
        self
    }

    /// Resume from this position on the first connect (for example one saved across runs).
    pub fn last_event_id(mut self, id: impl Into<String>) -> Self {
        self.last_event_id = Some(id.into()).filter(|id| !id.is_empty());
        self
    }

    /// Drive this cache from the stream's keys and resyncs.
    pub fn cache(mut self, cache: Arc<dyn Cache>) -> Self {
        self.cache = Some(cache);
        self
    }

    /// Resolve keys locally for activities the hub sent without any.
    pub fn resolver(mut self, resolver: Resolver) -> Self {
        self.resolver = Some(resolver);
        self
    }

    /// The heartbeat assumed before the hub states its own.
    pub fn heartbeat(mut self, heartbeat: Duration) -> Self {
        self.heartbeat = heartbeat;
        self
    }

    /// Starts the subscription task. Must be called inside a tokio runtime.
    pub fn subscribe(self) -> Result<Subscription, BuildError> {
        let token = self.token.ok_or(BuildError::NoTokenProvider)?;
        let url = stream_url(&self.base_url)?;
        let (tx, rx) = mpsc::channel(ITEMS_BUFFERED_MAX);
        let task = Task {
            url,
            token,
            scheme: self.scheme,
            backoff: self.backoff,
            http: self.http.unwrap_or_default(),
            cache: self.cache,
            resolver: self.resolver,
            heartbeat: self.heartbeat,
            last_id: self.last_event_id,
            retry: None,
            tx,
        };
        Ok(Subscription { rx, task: Some(tokio::spawn(task.run())) })
    }
}

fn stream_url(base: &str) -> Result<Url, BuildError> {
    let mut url = Url::parse(base).map_err(|e| BuildError::InvalidUrl(e.to_string()))?;
    url.path_segments_mut()
        .map_err(|()| BuildError::InvalidUrl(format!("{base} cannot be a base")))?
        .pop_if_empty()
        .extend(["events", "stream"]);
    Ok(url)
}

/// A running subscription. Yields events in stream order; an `Err` is terminal and is the
/// last item. Dropping it, or [`Subscription::stop`], ends the connection and every timer.
#[derive(Debug)]
pub struct Subscription {
    /// Receives from the task. When this is dropped the task's sends fail and it ends; the
    /// task is also aborted explicitly so it does not linger until its next send.
    rx: mpsc::Receiver<Item>,
    task: Option<JoinHandle<()>>,
}

impl Subscription {
    /// The next item; `None` after the terminal error or [`Subscription::stop`].
    pub async fn next(&mut self) -> Option<Item> {
        self.rx.recv().await
    }

    /// Stops now: when this returns, the connection is dropped and no reconnect is pending.
    pub async fn stop(mut self) {
        self.rx.close();
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl futures_core::Stream for Subscription {
    type Item = Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        self.rx.poll_recv(cx)
    }
}

/// How one connection ended.
enum Outcome {
    /// Try again after a delay of at least `floor`.
    Retry { cause: Disconnect, floor: Option<Duration>, stable: bool },
    /// Stop for good with this error.
    Stop(Error),
    /// The application dropped the subscription.
    Gone,
}

/// The connection task's state; lives as long as the subscription.
struct Task {
    url: Url,
    token: TokenProvider,
    scheme: AuthScheme,
    backoff: Backoff,
    http: reqwest::Client,
    cache: Option<Arc<dyn Cache>>,
    resolver: Option<Resolver>,
    heartbeat: Duration,
    /// The last event id seen (including `connected`'s), sent as `Last-Event-ID`.
    last_id: Option<String>,
    /// The stream's last `retry:`, the base of the backoff.
    retry: Option<Duration>,
    /// Items to the application. Dropped with the task; its `closed()` tells the task the
    /// application is gone.
    tx: mpsc::Sender<Item>,
}

impl Task {
    async fn run(mut self) {
        let mut attempt: u32 = 0;
        let mut was_connected = false;
        loop {
            let outcome = self.connect_once(&mut was_connected).await;
            let (cause, floor) = match outcome {
                Outcome::Gone => return,
                Outcome::Stop(error) => {
                    tracing::warn!(%error, "subscription stopped");
                    let _ = self.tx.send(Err(error)).await;
                    return;
                }
                Outcome::Retry { cause, floor, stable } => {
                    if stable {
                        attempt = 0;
                    }
                    (cause, floor)
                }
            };
            let delay = self.backoff.delay(attempt, Hints { retry: self.retry, floor }, rand::random());
            attempt = attempt.saturating_add(1);
            tracing::info!(attempt, ?delay, ?cause, "reconnecting");
            if self.tx.send(Ok(Event::Reconnecting { attempt, delay, cause })).await.is_err() {
                return;
            }
            tokio::select! {
                () = sleep(delay) => {}
                () = self.tx.closed() => return,
            }
        }
    }

    /// Makes one connection and reads it until it ends.
    async fn connect_once(&mut self, was_connected: &mut bool) -> Outcome {
        let token = match (self.token)().await {
            Ok(token) => token,
            Err(TokenError::SignedOut) => return Outcome::Stop(Error::SignedOut),
            Err(TokenError::Unavailable(why)) => return retry(Disconnect::Token(why)),
        };
        if *was_connected && self.last_id.is_none() {
            // Events during the gap cannot be replayed without a position.
            if let Some(cache) = &self.cache {
                cache.invalidate_all();
            }
        }
        let scheme = match self.scheme {
            AuthScheme::Bearer => "Bearer",
            AuthScheme::Token => "Token",
        };
        let mut request = self
            .http
            .get(self.url.clone())
            .header(ACCEPT, "text/event-stream")
            .header(AUTHORIZATION, format!("{scheme} {token}"));
        if let Some(id) = &self.last_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = tokio::select! {
            r = timeout(RESPONSE_TIMEOUT, request.send()) => r,
            () = self.tx.closed() => return Outcome::Gone,
        };
        let response = match response {
            Err(_) => return retry(Disconnect::Stalled(RESPONSE_TIMEOUT)),
            Ok(Err(e)) => return retry(Disconnect::Network(error_chain(&e))),
            Ok(Ok(response)) => response,
        };
        if let Some(outcome) = check_response(&response) {
            return match outcome {
                Check::Stop(refusal) => Outcome::Stop(refusal.into_error(read_error_body(response).await)),
                Check::Retry(cause, floor) => Outcome::Retry { cause, floor, stable: false },
            };
        }
        self.read(response, was_connected).await
    }

    async fn read(&mut self, mut response: Response, was_connected: &mut bool) -> Outcome {
        let mut parser = SseParser::new().with_last_event_id(self.last_id.as_deref().unwrap_or(""));
        let mut watchdog = watchdog(self.heartbeat);
        let mut connected_at: Option<Instant> = None;
        let stable = |at: Option<Instant>| at.is_some_and(|t| t.elapsed() >= STABLE_STREAM_MIN);
        loop {
            let chunk = tokio::select! {
                r = timeout(watchdog, response.chunk()) => r,
                () = self.tx.closed() => return Outcome::Gone,
            };
            let cause = match chunk {
                Ok(Ok(Some(bytes))) => {
                    parser.feed(&bytes);
                    None
                }
                Ok(Ok(None)) => Some(Disconnect::Ended),
                Ok(Err(e)) => Some(Disconnect::Network(error_chain(&e))),
                Err(_) => Some(Disconnect::Stalled(watchdog)),
            };
            if let Some(cause) = cause {
                return Outcome::Retry { cause, floor: None, stable: stable(connected_at) };
            }
            while let Some(item) = parser.next() {
                self.note_retry(&parser);
                let event = match item {
                    Ok(event) => event,
                    Err(error) => {
                        tracing::warn!(%error, "oversized event skipped");
                        continue;
                    }
                };
                self.last_id = Some(event.id.clone()).filter(|id| !id.is_empty());
                if event.event != "message" {
                    tracing::debug!(event = %event.event, "event of another type ignored");
                    continue;
                }
                let message = match ServerMessage::parse(&event.data) {
                    Ok(message) => message,
                    Err(error) => {
                        tracing::warn!(%error, data_len = event.data.len(), "invalid frame skipped");
                        continue;
                    }
                };
                let id = Some(event.id).filter(|id| !id.is_empty());
                let step = self.on_message(message, id, &mut watchdog);
                if matches!(step, Step::Emit(Event::Connected { .. })) {
                    connected_at = Some(Instant::now());
                    *was_connected = true;
                }
                let outcome = match step {
                    Step::Skip => continue,
                    Step::Emit(event) => {
                        if self.tx.send(Ok(event)).await.is_err() {
                            return Outcome::Gone;
                        }
                        continue;
                    }
                    Step::End(event, outcome) => {
                        if self.tx.send(Ok(event)).await.is_err() {
                            return Outcome::Gone;
                        }
                        outcome
                    }
                };
                return match outcome {
                    Outcome::Retry { cause, floor, .. } => Outcome::Retry { cause, floor, stable: stable(connected_at) },
                    other => other,
                };
            }
            self.note_retry(&parser);
            self.last_id = Some(parser.last_event_id().to_owned()).filter(|id| !id.is_empty());
        }
    }

    /// Like an event source's reconnection time, a `retry:` outlives the connection that
    /// sent it: a new connection that has not sent one yet does not reset it.
    fn note_retry(&mut self, parser: &SseParser) {
        if let Some(ms) = parser.retry() {
            self.retry = Some(Duration::from_millis(ms));
        }
    }

    fn on_message(&self, message: ServerMessage, id: Option<String>, watchdog: &mut Duration) -> Step {
        match message {
            ServerMessage::Connected { client_id, session_id, resumed, heartbeat_ms, .. } => {
                let heartbeat = heartbeat_ms.filter(|&ms| ms > 0).map(Duration::from_millis);
                *watchdog = self::watchdog(heartbeat.unwrap_or(self.heartbeat));
                Step::Emit(Event::Connected { client_id, session_id, resumed, heartbeat, id })
            }
            ServerMessage::Activity { data, invalidate, remove } => {
                let (invalidate, remove) = cache::keys_for(&data, invalidate, remove, self.resolver.as_ref());
                if let Some(c) = &self.cache {
                    cache::apply(c.as_ref(), &invalidate, &remove);
                }
                Step::Emit(Event::Activity { id, data, invalidate, remove })
            }
            ServerMessage::Ping { .. } => Step::Emit(Event::Ping),
            ServerMessage::Resync { reason } => {
                tracing::info!(%reason, "resync: all cached data is stale");
                if let Some(c) = &self.cache {
                    c.invalidate_all();
                }
                Step::Emit(Event::Resync { reason, id })
            }
            ServerMessage::Closed { reason, retry_ms } => {
                let event = Event::Closed { reason: reason.clone(), retry_ms };
                let known: Option<CloseReason> = serde_json::from_value(serde_json::Value::String(reason.clone())).ok();
                let outcome = match known {
                    Some(r) if !r.allows_reconnect() => Outcome::Stop(Error::Closed { reason: r }),
                    // Unknown reasons are treated as reconnectable: forward compatible and safe,
                    // since the backoff still applies.
                    _ => Outcome::Retry {
                        cause: Disconnect::Closed(reason),
                        floor: retry_ms.map(Duration::from_millis),
                        stable: false,
                    },
                };
                Step::End(event, outcome)
            }
            other => {
                tracing::debug!(?other, "message of an unknown type ignored");
                Step::Skip
            }
        }
    }
}

/// What one message does to the stream.
enum Step {
    Skip,
    Emit(Event),
    /// Yield the event, then end this connection.
    End(Event, Outcome),
}

fn retry(cause: Disconnect) -> Outcome {
    Outcome::Retry { cause, floor: None, stable: false }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_url_appends_the_path() {
        for (base, want) in [
            ("http://h:1", "http://h:1/events/stream"),
            ("http://h:1/", "http://h:1/events/stream"),
            ("http://h:1/api", "http://h:1/api/events/stream"),
            ("http://h:1/api/", "http://h:1/api/events/stream"),
        ] {
            assert_eq!(stream_url(base).unwrap().as_str(), want);
        }
        assert!(matches!(stream_url("not a url"), Err(BuildError::InvalidUrl(_))));
        assert!(matches!(stream_url("mailto:x@y"), Err(BuildError::InvalidUrl(_))));
    }
}
