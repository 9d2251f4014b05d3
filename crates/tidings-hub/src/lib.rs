//! The Tidings hub: one SSE stream per signed-in session, fed by an engine, fanned out per
//! account, with resume, limits, metrics and graceful shutdown.
//!
//! [`Hub::run`] takes a bound listener and a cancellation token; it never installs signal
//! handlers (the binary maps SIGINT/SIGTERM to the token and SIGHUP to [`HubState::reload`])
//! and never reads configuration from the environment (the binary parses it once into
//! [`Config`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tidings_protocol::frame::encode_ping;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

mod admin;
pub mod auth;
pub mod client_addr;
pub mod config;
pub mod engine;
pub mod error;
pub mod fanout;
pub mod grants;
pub mod http;
pub mod metrics;
pub mod origin;
mod h1;
mod live;
mod serve;
mod state;
pub mod stream;
mod timeouts;

pub use config::Config;
pub use state::{HubState, Reloaded};

use crate::config::{ConfigError, EngineConfig};
use crate::engine::durable::DurableEngine;
use crate::engine::Engine;
use crate::engine::memory::MemoryEngine;
use crate::engine::redis::RedisEngine;
use crate::fanout::Fanout;
use crate::live::Live;
use crate::metrics::Metrics;

/// How often deadlines (token expiry, lifetime) and stuck closing streams are checked.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// How often engines trim history by age when no publish does it for them, and forget idle
/// accounts: at most this, and a quarter of `history.max_age` when that is shorter, so memory
/// follows a short history closely.
const MAINTAIN_INTERVAL: Duration = Duration::from_secs(10);
/// The shortest upkeep interval, whatever `history.max_age`.
const MAINTAIN_INTERVAL_MIN: Duration = Duration::from_millis(250);
/// Pending connections the kernel may hold for the accept loop (see [`Hub::bind`]).
pub const LISTEN_BACKLOG: u32 = 4096;
/// Share of the open files limit kept for what is not a stream (see [`open_files_reserve`]):
/// one descriptor in this many.
const OPEN_FILES_RESERVE_DIVISOR: u64 = 16;
/// Fewest descriptors kept in reserve: a handful of publishers, probes and engine
/// connections, even under a small limit.
const OPEN_FILES_RESERVE_MIN: u64 = 64;
/// Most descriptors kept in reserve: past this, a larger limit goes to streams.
const OPEN_FILES_RESERVE_MAX: u64 = 1024;

/// File descriptors a node keeps for what is not an event stream (publishers, health checks
/// and scrapes, engine connections, the data file) out of `open_files`: a node holding its
/// maximum of streams must still accept a publish and answer `503` to the next stream.
fn open_files_reserve(open_files: u64) -> u64 {
    (open_files / OPEN_FILES_RESERVE_DIVISOR).clamp(OPEN_FILES_RESERVE_MIN, OPEN_FILES_RESERVE_MAX)
}

/// `limits.streams_per_node`, lowered when the process may not open that many files (each
/// stream holds one socket) plus [`open_files_reserve`]. Without this, a node at its file
/// limit can accept nothing at all: new streams, publishes and health checks all hang. `warn`:
/// log a lowered value (at start; a reload says what changed itself).
pub(crate) fn streams_within_open_files(configured: usize, warn: bool) -> usize {
    let Ok((soft, _)) = rlimit::getrlimit(rlimit::Resource::NOFILE) else { return configured };
    if soft == rlimit::INFINITY {
        return configured;
    }
    let fit = usize::try_from(soft.saturating_sub(open_files_reserve(soft))).unwrap_or(usize::MAX).max(1);
    if fit < configured && warn {
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
    /// `[admin] listen`, once bound ([`Hub::serve_admin_on`]).
    admin_listener: Option<TcpListener>,
}

impl Hub {
    /// Builds the hub from a validated configuration (nothing is bound yet).
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        config.validate()?;
        let metrics = Arc::new(Metrics::new());
        let l = &config.limits;
        let streams_per_node = streams_within_open_files(l.streams_per_node, true);
        metrics.streams_max.set(i64::try_from(streams_per_node).unwrap_or(i64::MAX));
        let fanout = Arc::new(Fanout::new(streams_per_node, l.streams_per_account, l.stream_queue_frames, metrics.clone()));
        let live = Live::build(config.clone(), None)?;
        // Last: everything that only reads configuration has been checked before the engine
        // opens files or starts threads.
        let engine: Arc<dyn Engine> = match &config.engine {
            EngineConfig::Memory => Arc::new(MemoryEngine::new(&config.history, fanout.clone())),
            EngineConfig::Durable { data_dir, fsync } => Arc::new(
                DurableEngine::open(data_dir, *fsync, &config.history, fanout.clone()).map_err(engine::StartError::from)?,
            ),
            EngineConfig::Redis(redis) => Arc::new(RedisEngine::start(redis, &config.history, fanout.clone()).map_err(engine::StartError::from)?),
        };
        let state = HubState::new(state::Parts { live, fanout, engine, metrics });
        Ok(Self { state: Arc::new(state), admin_listener: None })
    }

    /// Serves the admin page, its API and `/metrics` on `listener` (bound from
    /// `[admin] listen`) instead of the main listener, which then serves neither.
    pub fn serve_admin_on(&mut self, listener: TcpListener) {
        self.admin_listener = Some(listener);
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
        let hub = &self.state;
        // Around every route, the host's and the admin's too.
        let bounded = |router: axum::Router| {
            router
                .layer(axum::middleware::from_fn_with_state(hub.clone(), timeouts::bound_request_body))
                .layer(axum::middleware::from_fn_with_state(hub.clone(), client_addr::record_client))
        };
        let own_admin_listener = self.admin_listener.is_some();
        let public = http::router(hub.clone(), !own_admin_listener).merge(extra);
        let mut endpoints = Vec::new();
        match self.admin_listener {
            None => endpoints.push((listener, bounded(public.merge(admin::router(hub.clone()))))),
            Some(admin_listener) => {
                endpoints.push((listener, bounded(public)));
                endpoints.push((admin_listener, bounded(http::operations_router(hub.clone()).merge(admin::router(hub.clone())))));
            }
        }
        let result = serve::serve(self.state.clone(), endpoints, shutdown).await;
        ticker_stop.cancel();
        let _ = ticker.await;
        self.state.engine().close().await;
        result
    }
}

/// Heartbeats, deadlines, stuck-stream sweeps and engine upkeep: one task per node, not one
/// timer per stream.
async fn ticker(hub: Arc<HubState>, stop: CancellationToken) {
    let every = hub.config().heartbeat;
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL.min(every));
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let mut maintain = tokio::time::interval((hub.config().history.max_age / 4).clamp(MAINTAIN_INTERVAL_MIN, MAINTAIN_INTERVAL));
    let mut sample = tokio::time::interval(admin::SAMPLE_INTERVAL);
    for i in [&mut sweep, &mut heartbeat, &mut maintain, &mut sample] {
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = sweep.tick() => hub.fanout().tick(Instant::now()),
            _ = heartbeat.tick() => {
                let ping = Bytes::from(encode_ping(&humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string()));
                hub.fanout().heartbeat(ping);
            }
            _ = maintain.tick() => {
                hub.engine().maintain();
                hub.auth().sweep();
                if let Some(r) = hub.engine().retained() {
                    let m = hub.metrics();
                    m.history_accounts.set(r.accounts as i64);
                    m.history_retained_events.set(r.events as i64);
                    m.history_retained_bytes.set(r.bytes as i64);
                }
            }
            _ = sample.tick() => hub.sample_for_admin(),
        }
    }
}
