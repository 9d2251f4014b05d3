//! The hub's shared state: one value per node, held by every handler, stream body and the
//! ticker, behind a narrow API.
//!
//! Hosts that embed the hub (`tidings demo`) get what they need to live beside it (identify a
//! request, the session cookie's name, publish an activity, revoke a session) and nothing
//! else; the organs (engine, fan-out, authenticator, metrics) are reached only from inside
//! the crate, so they can change shape (a reloadable auth table, a swappable mapping) without
//! touching a host. It does not serve HTTP or run timers: see `http.rs` and the ticker.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use http::{HeaderMap, Uri};
use tidings_protocol::frame::activity_payload;
use tidings_protocol::resolver::{Resolution, Resolver, resource_type};
use tidings_protocol::{Audience, CloseReason, EventId};
use tokio_util::sync::CancellationToken;

use crate::auth::{AuthError, Authenticator, CredentialSource, Identity};
use crate::config::Config;
use crate::engine::{Accepted, Engine, EngineError, NewEvent};
use crate::error::ApiError;
use crate::fanout::Fanout;
use crate::metrics::Metrics;
use crate::origin::{CrossSite, OriginPolicy, request_authority};

/// Distinct unresolved activity types logged; past this, only the counter grows.
const UNRESOLVED_TYPES_LOGGED_MAX: usize = 1_000;

/// Everything a request handler needs, shared by all of them.
#[derive(Debug)]
pub struct HubState {
    config: Config,
    auth: Authenticator,
    fanout: Arc<Fanout>,
    engine: Arc<dyn Engine>,
    resolver: Resolver,
    /// The mapping in its JSON form, served at `GET /mapping` for browser-side resolution.
    mapping_json: Arc<str>,
    metrics: Arc<Metrics>,
    /// Which origins may use the session cookie (`auth.cookie_origin_check`, `cors.allowed_origins`).
    origin: OriginPolicy,
    /// Cancelled once, when shutdown starts: new streams get 503, `/readyz` turns unready and
    /// kept-alive connections end after their current response. Never reset.
    draining: CancellationToken,
    unresolved_logged: Mutex<HashSet<String>>,
}

/// The organs [`HubState::new`] assembles; built by [`crate::Hub::new`].
#[derive(Debug)]
pub(crate) struct Parts {
    pub config: Config,
    pub auth: Authenticator,
    pub fanout: Arc<Fanout>,
    pub engine: Arc<dyn Engine>,
    pub resolver: Resolver,
    pub metrics: Arc<Metrics>,
}

impl HubState {
    pub(crate) fn new(p: Parts) -> Self {
        let mapping_json = p.resolver.mapping().to_json_pretty().into();
        let origin = OriginPolicy::new(p.config.auth.cookie_origin_check, &p.config.cors.allowed_origins);
        Self {
            config: p.config,
            auth: p.auth,
            fanout: p.fanout,
            engine: p.engine,
            resolver: p.resolver,
            mapping_json,
            metrics: p.metrics,
            origin,
            draining: CancellationToken::new(),
            unresolved_logged: Mutex::default(),
        }
    }

    /// Who sent this request, read from its `Authorization` header or session cookie exactly
    /// as a stream request is (the query-string token is not looked at), with the same refusal
    /// of a cookie sent from another origin. For a host's own API beside the hub, so the page
    /// and its stream always agree on who is signed in.
    pub async fn identify(&self, uri: &Uri, headers: &HeaderMap) -> Result<Identity, ApiError> {
        self.identify_request(uri, headers, None).await
    }

    /// The identity behind a request's credential (`Authorization` header, session cookie or,
    /// when enabled, `access_token`). A cookie on a request that a browser says comes from
    /// another origin is refused (`403` `cross_site`) before any provider or the session sees
    /// it: such a request must not open, supersede or act on the user's stream.
    pub(crate) async fn identify_request(&self, uri: &Uri, headers: &HeaderMap, query_token: Option<&str>) -> Result<Identity, ApiError> {
        let (token, source) = self.auth.stream_credential(headers, query_token).ok_or(AuthError::Missing)?;
        if source == CredentialSource::Cookie {
            self.check_origin(uri, headers)?;
        }
        Ok(self.auth.identify(token, source).await?)
    }

    /// Whether a browser request may act with the user's ambient credentials: from the hub's
    /// own origin or a trusted one (see `origin.rs`). Hosts apply it to their own routes that a
    /// cookie authenticates or that a page could reach cross-site (a sign-in).
    pub fn check_origin(&self, uri: &Uri, headers: &HeaderMap) -> Result<(), CrossSite> {
        self.origin.check(headers, request_authority(uri, headers))
    }

    /// The name of the session cookie that carries the same credentials as the header.
    pub fn cookie_name(&self) -> &str {
        &self.config.auth.cookie
    }

    /// The engine's short name, for start-up banners and logs.
    pub fn engine_name(&self) -> &'static str {
        self.engine.name()
    }

    /// Publishes one activity to `account` from inside the process, exactly as an accepted
    /// `POST /events` item without an `audience` would be (keys resolved, the mapping's
    /// audience derived, stored, fanned out, counted). For hosts that embed the hub next to
    /// their own API, such as `tidings demo`; there is no publisher key to check because the
    /// caller is the host itself.
    pub async fn publish(&self, account: &str, data: &serde_json::Value) -> Result<EventId, EngineError> {
        self.publish_to(account, data, None).await
    }

    /// [`HubState::publish`] for the streams of `account` whose identity holds one of the
    /// `audience`'s grants (`None`: as the mapping says, else the whole account).
    pub async fn publish_to(&self, account: &str, data: &serde_json::Value, audience: Option<Audience>) -> Result<EventId, EngineError> {
        let started = Instant::now();
        let keys = self.resolve(data);
        let raw = serde_json::value::to_raw_value(data).expect("a JSON value always serialises");
        let payload = activity_payload(&raw, &keys.invalidate, &keys.remove);
        let audience = self.audience(audience, data);
        let accepted = self.store(vec![NewEvent { account: account.into(), payload: payload.into(), audience, key: None }]).await?;
        self.metrics.publish_latency.observe(started.elapsed().as_secs_f64());
        Ok(accepted.into_iter().next().expect("one id per published event").id)
    }

    /// Closes the open streams of one session on this node (or, without a session, every
    /// stream of the account) with `closed` `revoked`; returns how many were closed.
    pub fn revoke(&self, account: &str, session: Option<&str>) -> usize {
        self.fanout.close_matching(account, session, CloseReason::Revoked)
    }

    /// Resolves an activity's keys, logging each unresolved type once and counting it.
    pub(crate) fn resolve(&self, activity: &serde_json::Value) -> Resolution {
        let r = self.resolver.resolve(activity);
        if r.tier.is_none() {
            self.metrics.unresolved_events.inc();
            let kind = resource_type(activity).unwrap_or_default();
            let mut logged = self.unresolved_logged.lock().expect("unresolved lock");
            if logged.len() < UNRESOLVED_TYPES_LOGGED_MAX && logged.insert(kind.clone()) {
                tracing::warn!(resource_type = %kind, "no invalidation keys for this activity type (logged once per type)");
            }
        }
        r
    }

    /// Who may see an activity: the publisher's audience, else the one the mapping derives,
    /// else (`None`) the whole account.
    pub(crate) fn audience(&self, given: Option<Audience>, activity: &serde_json::Value) -> Option<Arc<Audience>> {
        given.map(Arc::new).or_else(|| self.resolver.audience(activity).cloned())
    }

    /// Stores a batch of encoded activities through the engine (which fans them out) and
    /// counts them: new events as published, items whose key was already accepted as
    /// duplicates.
    pub(crate) async fn store(&self, batch: Vec<NewEvent>) -> Result<Vec<Accepted>, EngineError> {
        let accepted = self.engine.publish(batch).await?;
        let duplicates = accepted.iter().filter(|a| a.duplicate).count() as u64;
        self.metrics.events_published.inc_by(accepted.len() as u64 - duplicates);
        self.metrics.publish_duplicates.inc_by(duplicates);
        Ok(accepted)
    }

    /// Starts draining: readiness off, new streams refused, every open stream told to close.
    pub(crate) fn begin_drain(&self) {
        self.draining.cancel();
        self.fanout.close_all(CloseReason::Shutdown);
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// The drain signal itself, for connection tasks that wait on it.
    pub(crate) fn draining(&self) -> &CancellationToken {
        &self.draining
    }

    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    pub(crate) fn auth(&self) -> &Authenticator {
        &self.auth
    }

    pub(crate) fn fanout(&self) -> &Arc<Fanout> {
        &self.fanout
    }

    pub(crate) fn engine(&self) -> &dyn Engine {
        &*self.engine
    }

    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub(crate) fn mapping_json(&self) -> &Arc<str> {
        &self.mapping_json
    }
}
