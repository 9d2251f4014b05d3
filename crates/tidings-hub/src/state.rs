//! The hub's shared state: one value per node, held by every handler, stream body and the
//! ticker, behind a narrow API.
//!
//! Hosts that embed the hub (`tidings demo`) get what they need to live beside it (identify a
//! request, the session cookie's name, publish an activity, revoke a session, reload the
//! configuration) and nothing else; the organs (engine, fan-out, authenticator, metrics) are
//! reached only from inside the crate. What a reload replaces lives in one value ([`Live`],
//! swapped whole, see `live.rs`); the rest is fixed for the life of the process. It does not
//! serve HTTP or run timers: see `http.rs` and the ticker.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use http::{HeaderMap, Uri};
use tidings_protocol::frame::activity_payload;
use tidings_protocol::resolver::{Resolution, Resolver, resource_type};
use tidings_protocol::{Audience, CloseReason, EventId};
use tokio_util::sync::CancellationToken;

use crate::admin::Admin;
use crate::auth::{AuthError, Authenticator, CredentialSource, Identity};
use crate::config::{Config, ConfigError};
use crate::engine::{Accepted, Engine, EngineError, NewEvent};
use crate::error::ApiError;
use crate::fanout::Fanout;
use crate::live::{Live, describe_changes, pin_restart_only};
use crate::metrics::Metrics;
use crate::origin::{CrossSite, request_authority};

/// The name activities published by a host through [`HubState::publish`] go by on the admin
/// page.
const HOST_PUBLISHER: &str = "host";

/// Everything a request handler needs, shared by all of them.
#[derive(Debug)]
pub struct HubState {
    /// What a reload replaces; loaded once per request (see `live.rs`).
    live: ArcSwap<Live>,
    /// Incremented by every reload, right after the swap: a stream request that authenticated
    /// with an older [`Live`] checks its credential again once registered (see
    /// [`HubState::still_vouched`]).
    generation: AtomicU64,
    /// Held by a reload from its validation to its last step: one reload at a time.
    reloading: Mutex<Option<SystemTime>>,
    fanout: Arc<Fanout>,
    engine: Arc<dyn Engine>,
    metrics: Arc<Metrics>,
    /// Cancelled once, when shutdown starts: new streams get 503, `/readyz` turns unready and
    /// kept-alive connections end after their current response. Never reset.
    draining: CancellationToken,
    /// What the admin page shows (and the unresolved types, logged once each).
    admin: Admin,
}

/// The organs [`HubState::new`] assembles; built by [`crate::Hub::new`].
#[derive(Debug)]
pub(crate) struct Parts {
    pub live: Live,
    pub fanout: Arc<Fanout>,
    pub engine: Arc<dyn Engine>,
    pub metrics: Arc<Metrics>,
}

/// What a reload did, as [`HubState::reload`] logged it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reloaded {
    /// One phrase per changed setting; never a secret.
    pub changes: Vec<String>,
    /// Settings that differ in the new configuration but only take effect at a restart.
    pub restart_needed: Vec<&'static str>,
    /// Streams closed with `revoked` because their credential is gone.
    pub revoked: usize,
}

impl HubState {
    pub(crate) fn new(p: Parts) -> Self {
        Self {
            live: ArcSwap::from_pointee(p.live),
            generation: AtomicU64::new(0),
            reloading: Mutex::new(None),
            fanout: p.fanout,
            engine: p.engine,
            metrics: p.metrics,
            draining: CancellationToken::new(),
            admin: Admin::default(),
        }
    }

    /// Replaces what can change while the hub runs with what `config` says: static tokens and
    /// the tokens file, publisher keys, the admin key, JWT and introspection settings, the
    /// mapping, cookie and CORS settings, `retry`, `trusted_proxies` and `limits.*` (caps and
    /// queue sizes apply to new streams). Everything is built and checked first: on an error
    /// nothing changes. Open streams stay open, except those whose credential the new
    /// configuration no longer accepts (a removed or changed static token, a JWT key that is
    /// gone, introspection turned off): they get `closed` `revoked`. Settings that need a
    /// restart (`listen`, `admin.listen`, `heartbeat`, `engine`, `history`) keep their running
    /// values and are named in the answer. Logs what changed, never a secret.
    pub fn reload(&self, config: Config) -> Result<Reloaded, ConfigError> {
        let mut reloading = self.reloading.lock().expect("reload lock");
        config.validate()?;
        let old = self.live.load_full();
        let (config, restart_needed) = pin_restart_only(&old.config, config);
        let live = Live::build(config, Some(&old))?;
        let changes = describe_changes(&old, &live);
        let l = &live.config.limits;
        let streams_per_node = crate::streams_within_open_files(l.streams_per_node, false);
        self.fanout.set_limits(streams_per_node, l.streams_per_account, l.stream_queue_frames);
        self.metrics.streams_max.set(i64::try_from(streams_per_node).unwrap_or(i64::MAX));
        let mapping_changed = old.mapping_json != live.mapping_json;
        let live = Arc::new(live);
        self.live.store(live.clone());
        self.generation.fetch_add(1, Ordering::SeqCst);
        // After the swap: a stream registered from here on checks its credential against the
        // new table itself (see `still_vouched`); one registered before is found here.
        let revoked = self.fanout.close_where(CloseReason::Revoked, |s| !live.auth.vouches_for(s.credential));
        if mapping_changed {
            self.admin.mapping_changed(&live.resolver);
        }
        *reloading = Some(SystemTime::now());
        if !restart_needed.is_empty() {
            tracing::warn!(settings = %restart_needed.join(", "), "reload: these settings changed in the file but only take effect at a restart; running with the old values");
        }
        let said = if changes.is_empty() { "nothing".to_owned() } else { changes.join("; ") };
        tracing::info!(changes = %said, revoked, "configuration reloaded");
        Ok(Reloaded { changes, restart_needed, revoked })
    }

    /// Takes the admin page's sample of the node's counters (the ticker calls it every
    /// [`crate::admin::SAMPLE_INTERVAL`]); nothing while the page is off.
    pub(crate) fn sample_for_admin(&self) {
        let mut series = self.admin.series.lock().expect("series lock");
        if self.live.load().config.admin.is_none() {
            series.pause();
            return;
        }
        let gauges = crate::admin::Gauges { streams: self.fanout.len(), accounts: self.fanout.accounts_len(), sessions: self.fanout.sessions_len() };
        series.sample(SystemTime::now(), gauges, &self.metrics);
    }

    /// How many reloads succeeded, and when the last one did.
    pub(crate) fn reloads(&self) -> (u64, Option<SystemTime>) {
        let last = *self.reloading.lock().expect("reload lock");
        (self.generation.load(Ordering::SeqCst), last)
    }

    /// The reload generation, read before a stream request authenticates.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Whether a stream registered after authenticating at generation `since` may stay: if a
    /// reload happened meanwhile, its credential must be accepted by the new configuration
    /// (the reload's own sweep may have run before the stream was registered).
    pub(crate) fn still_vouched(&self, since: u64, credential: crate::auth::Credential) -> bool {
        self.generation() == since || self.live.load().auth.vouches_for(credential)
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
        let live = self.live.load_full();
        let (token, source) = live.auth.stream_credential(headers, query_token).ok_or(AuthError::Missing)?;
        if source == CredentialSource::Cookie {
            live.origin.check(headers, request_authority(uri, headers))?;
        }
        Ok(live.auth.identify(token, source).await?)
    }

    /// Whether a browser request may act with the user's ambient credentials: from the hub's
    /// own origin or a trusted one (see `origin.rs`). Hosts apply it to their own routes that a
    /// cookie authenticates or that a page could reach cross-site (a sign-in).
    pub fn check_origin(&self, uri: &Uri, headers: &HeaderMap) -> Result<(), CrossSite> {
        self.live.load().origin.check(headers, request_authority(uri, headers))
    }

    /// The name of the session cookie that carries the same credentials as the header.
    pub fn cookie_name(&self) -> String {
        self.live.load().config.auth.cookie.clone()
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
        self.publish_as(account, data, None, HOST_PUBLISHER).await
    }

    /// [`HubState::publish`] for the streams of `account` whose identity holds one of the
    /// `audience`'s grants (`None`: as the mapping says, else the whole account).
    pub async fn publish_to(&self, account: &str, data: &serde_json::Value, audience: Option<Audience>) -> Result<EventId, EngineError> {
        self.publish_as(account, data, audience, HOST_PUBLISHER).await
    }

    /// [`HubState::publish_to`], shown on the admin page as published by `publisher`.
    pub(crate) async fn publish_as(&self, account: &str, data: &serde_json::Value, audience: Option<Audience>, publisher: &str) -> Result<EventId, EngineError> {
        let started = Instant::now();
        let keys = self.resolve(data);
        let raw = serde_json::value::to_raw_value(data).expect("a JSON value always serialises");
        let payload = activity_payload(&raw, &keys.invalidate, &keys.remove);
        let audience = self.audience(audience, data);
        let accepted = self.store(vec![NewEvent { account: account.into(), payload: payload.into(), audience, key: None }]).await?;
        self.metrics.publish_latency.observe(started.elapsed().as_secs_f64());
        let id = accepted.into_iter().next().expect("one id per published event").id;
        self.published(&[(account, data)], &[id], &publisher.into());
        Ok(id)
    }

    /// Whether the admin page is on (what it shows is recorded only then).
    pub(crate) fn admin_enabled(&self) -> bool {
        self.live.load().config.admin.is_some()
    }

    /// Shows published activities on the admin page (nothing while it is off).
    pub(crate) fn published(&self, items: &[(&str, &serde_json::Value)], ids: &[EventId], publisher: &Arc<str>) {
        let live = self.live.load();
        if live.config.admin.is_some() {
            self.admin.published(items, ids, publisher, &live.resolver);
        }
    }

    /// Closes the open streams of one session on this node (or, without a session, every
    /// stream of the account) with `closed` `revoked`; returns how many were closed.
    pub fn revoke(&self, account: &str, session: Option<&str>) -> usize {
        self.fanout.close_matching(account, session, CloseReason::Revoked)
    }

    /// Resolves an activity's keys, logging each unresolved type once and counting it.
    pub(crate) fn resolve(&self, activity: &serde_json::Value) -> Resolution {
        let r = self.live.load().resolver.resolve(activity);
        if r.tier.is_none() {
            self.metrics.unresolved_events.inc();
            if self.admin.unresolved(activity) {
                let kind = resource_type(activity).unwrap_or_default();
                tracing::warn!(resource_type = %kind, "no invalidation keys for this activity type (logged once per type)");
            }
        }
        r
    }

    /// Who may see an activity: the publisher's audience, else the one the mapping derives,
    /// else (`None`) the whole account.
    pub(crate) fn audience(&self, given: Option<Audience>, activity: &serde_json::Value) -> Option<Arc<Audience>> {
        given.map(Arc::new).or_else(|| self.live.load().resolver.audience(activity).cloned())
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

    /// The configuration in effect (see [`HubState::reload`]). Hold it briefly: a reload
    /// meanwhile is not seen through it.
    pub(crate) fn config(&self) -> LiveConfig {
        LiveConfig(self.live.load())
    }

    /// Everything a reload replaces, as one consistent value.
    pub(crate) fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    pub(crate) fn auth(&self) -> Arc<Authenticator> {
        self.live.load().auth.clone()
    }

    pub(crate) fn resolver(&self) -> Arc<Resolver> {
        self.live.load().resolver.clone()
    }

    pub(crate) fn admin(&self) -> &Admin {
        &self.admin
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

    pub(crate) fn mapping_json(&self) -> Arc<str> {
        self.live.load().mapping_json.clone()
    }
}

/// The configuration in effect, read through the live state (see [`HubState::config`]).
pub(crate) struct LiveConfig(arc_swap::Guard<Arc<Live>>);

impl std::ops::Deref for LiveConfig {
    type Target = Config;

    fn deref(&self) -> &Config {
        &self.0.config
    }
}
