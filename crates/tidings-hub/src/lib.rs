//! The Tidings hub: one SSE stream per signed-in session, fed by an engine, fanned out per
//! account, with resume, limits, metrics and graceful shutdown.
//!
//! [`Hub::run`] takes a bound listener and a cancellation token; it never installs signal
//! handlers (the binary maps SIGINT/SIGTERM to the token) and never reads configuration from
//! the environment (the binary parses it once into [`Config`]).

use std::collections::HashSet;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tidings_protocol::frame::{activity_payload, encode_ping};
use tidings_protocol::{CloseReason, EventId};
use tidings_protocol::resolver::{Resolution, Resolver, resource_type};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub mod auth;
pub mod config;
pub mod engine;
pub mod error;
pub mod fanout;
pub mod http;
pub mod metrics;
mod h1;
mod serve;
pub mod stream;

pub use config::Config;

use crate::auth::Authenticator;
use crate::config::{ConfigError, EngineConfig};
use crate::engine::durable::DurableEngine;
use crate::engine::{Engine, EngineError, NewEvent};
use crate::engine::memory::MemoryEngine;
use crate::engine::redis::RedisEngine;
use crate::fanout::Fanout;
use crate::metrics::Metrics;

/// How often deadlines (token expiry, lifetime) and stuck closing streams are checked.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// How often engines trim history by age when no publish does it for them.
const MAINTAIN_INTERVAL: Duration = Duration::from_secs(10);
/// Distinct unresolved activity types logged; past this, only the counter grows.
const UNRESOLVED_TYPES_LOGGED_MAX: usize = 1_000;
/// Pending connections the kernel may hold for the accept loop (see [`Hub::bind`]).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Everything a request handler needs, shared by all of them.
#[derive(Debug)]
pub struct HubState {
    pub config: Config,
    pub auth: Authenticator,
    pub fanout: Arc<Fanout>,
    pub engine: Arc<dyn Engine>,
    pub resolver: Resolver,
    /// The mapping in its JSON form, served at `GET /mapping` for browser-side resolution.
    pub mapping_json: Arc<str>,
    pub metrics: Arc<Metrics>,
    /// Set once shutdown starts: new streams get 503 and `/readyz` turns unready.
    pub draining: AtomicBool,
    unresolved_logged: Mutex<HashSet<String>>,
}

impl HubState {
    /// Resolves an activity's keys, logging each unresolved type once and counting it.
    pub fn resolve(&self, activity: &serde_json::Value) -> Resolution {
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

    /// Publishes one activity to `account` from inside the process, exactly as an accepted
    /// `POST /events` item would be (keys resolved, stored, fanned out, counted). For hosts that
    /// embed the hub next to their own API, such as `tidings demo`; there is no publisher key
    /// to check because the caller is the host itself.
    pub async fn publish(&self, account: &str, data: &serde_json::Value) -> Result<EventId, EngineError> {
        let started = Instant::now();
        let keys = self.resolve(data);
        let raw = serde_json::value::to_raw_value(data).expect("a JSON value always serialises");
        let payload = activity_payload(&raw, &keys.invalidate, &keys.remove);
        let accepted = self.engine.publish(vec![NewEvent { account: account.into(), payload: payload.into(), key: None }]).await?;
        self.metrics.publish_latency.observe(started.elapsed().as_secs_f64());
        self.metrics.events_published.inc();
        Ok(accepted.into_iter().next().expect("one id per published event").id)
    }
}

/// File descriptors a node keeps for what is not an event stream (publishers, health checks
/// and scrapes, engine connections, the data file) out of `open_files`: a node holding its
/// maximum of streams must still accept a publish and answer `503` to the next stream.
fn open_files_reserve(open_files: u64) -> u64 {
    (open_files / 16).clamp(64, 1024)
}

/// `limits.streams_per_node`, lowered when the process may not open that many files (each
/// stream holds one socket) plus [`open_files_reserve`]. Without this, a node at its file
/// limit can accept nothing at all: new streams, publishes and health checks all hang.
fn streams_within_open_files(configured: usize) -> usize {
    let Ok((soft, _)) = rlimit::getrlimit(rlimit::Resource::NOFILE) else { return configured };
    if soft == rlimit::INFINITY {
        return configured;
    }
    let fit = usize::try_from(soft.saturating_sub(open_files_reserve(soft))).unwrap_or(usize::MAX).max(1);
    if fit < configured {
        tracing::warn!(
            configured,
            streams_per_node = fit,
            open_files_limit = soft,
            reserved = open_files_reserve(soft),
            "limits.streams_per_node lowered to fit the open files limit; raise the limit (ulimit -n, LimitNOFILE=) to hold more streams"
        );
    }
    fit.min(configured)
}

/// A configured hub, ready to run on a listener.
#[derive(Debug)]
pub struct Hub {
    state: Arc<HubState>,
}

impl Hub {
    /// Builds the hub from a validated configuration (nothing is bound yet).
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        config.validate()?;
        let metrics = Arc::new(Metrics::new());
        let l = &config.limits;
        let streams_per_node = streams_within_open_files(l.streams_per_node);
        let fanout = Arc::new(Fanout::new(streams_per_node, l.streams_per_account, l.stream_queue_frames, metrics.clone()));
        let auth = Authenticator::new(&config.auth)?;
        let resolver = config.mapping.resolver()?;
        // Last: everything that only reads configuration has been checked before the engine
        // opens files or starts threads.
        let engine: Arc<dyn Engine> = match &config.engine {
            EngineConfig::Memory => Arc::new(MemoryEngine::new(&config.history, fanout.clone())),
            EngineConfig::Durable { data_dir, fsync } => Arc::new(
                DurableEngine::open(data_dir, *fsync, &config.history, fanout.clone()).map_err(|e| ConfigError::Engine(e.to_string()))?,
            ),
            EngineConfig::Redis(redis) => Arc::new(RedisEngine::start(redis, &config.history, fanout.clone()).map_err(ConfigError::Invalid)?),
        };
        let mapping_json = resolver.mapping().to_json_pretty().into();
        let state = HubState {
            auth,
            config,
            fanout,
            engine,
            resolver,
            mapping_json,
            metrics,
            draining: AtomicBool::new(false),
            unresolved_logged: Mutex::default(),
        };
        Ok(Self { state: Arc::new(state) })
    }

    pub fn state(&self) -> &Arc<HubState> {
        &self.state
    }

    /// Binds a listener for [`Hub::run`]: `SO_REUSEADDR` (a restarted hub gets its port back
    /// at once) and a backlog of [`LISTEN_BACKLOG`] (tokio's `bind` asks for 1,024, and a storm
    /// of reconnects after a restart overflows that: dropped SYNs cost clients a second or
    /// more each). The kernel caps the backlog at `net.core.somaxconn`.
    pub async fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
        let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    }

    /// Serves until `shutdown` is cancelled, then closes every stream with `closed`
    /// `shutdown`, and once connections have finished or the grace period is over, closes the
    /// engine (a durable one flushes its data file) and returns.
    pub async fn run(self, listener: TcpListener, shutdown: CancellationToken) -> std::io::Result<()> {
        self.run_with_routes(listener, shutdown, axum::Router::new()).await
    }

    /// [`Hub::run`] with the host's own routes served next to the hub's, on the same listener
    /// and the same shutdown (a host API and its page, as `tidings demo` does). The hub's routes
    /// win: `extra` must not define any of them (axum panics at start on an overlap, a bug in
    /// the host). Nothing about the hub's behaviour changes.
    pub async fn run_with_routes(self, listener: TcpListener, shutdown: CancellationToken, extra: axum::Router) -> std::io::Result<()> {
        let ticker_stop = CancellationToken::new();
        let ticker = tokio::spawn(ticker(self.state.clone(), ticker_stop.clone()));
        let router = http::router(self.state.clone()).merge(extra);
        let result = serve::serve(self.state.clone(), router, listener, shutdown).await;
        ticker_stop.cancel();
        let _ = ticker.await;
        self.state.engine.close().await;
        result
    }
}

/// Heartbeats, deadlines, stuck-stream sweeps and engine upkeep: one task per node, not one
/// timer per stream.
async fn ticker(hub: Arc<HubState>, stop: CancellationToken) {
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL.min(hub.config.heartbeat));
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + hub.config.heartbeat, hub.config.heartbeat);
    let mut maintain = tokio::time::interval(MAINTAIN_INTERVAL);
    for i in [&mut sweep, &mut heartbeat, &mut maintain] {
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = sweep.tick() => hub.fanout.tick(Instant::now()),
            _ = heartbeat.tick() => {
                let ping = Bytes::from(encode_ping(&humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string()));
                hub.fanout.broadcast(&ping);
            }
            _ = maintain.tick() => hub.engine.maintain(),
        }
    }
}

/// Starts draining: readiness off, new streams refused, every open stream told to close.
pub(crate) fn begin_drain(hub: &HubState) {
    hub.draining.store(true, std::sync::atomic::Ordering::Release);
    hub.fanout.close_all(CloseReason::Shutdown);
}
