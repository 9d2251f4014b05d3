//! Typed hub configuration: parsed from TOML once at the edge, validated before a port is bound.
//!
//! Every field has a default that makes sense on one developer machine; the binary layers
//! environment variables and flags over the file and then hands this struct down. Nothing in
//! the hub reads configuration from anywhere else.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Default heartbeat: below the common 60 s idle timeout of proxies and load balancers.
pub const HEARTBEAT_DEFAULT: Duration = Duration::from_secs(15);
/// Shortest heartbeat accepted; anything faster is a configuration mistake that burns CPU.
pub const HEARTBEAT_MIN: Duration = Duration::from_millis(100);
/// Default reconnect hint sent as `retry:`.
pub const RETRY_HINT_DEFAULT: Duration = Duration::from_secs(2);
/// Default address: loopback, so a hub started without a configuration exposes nothing.
pub const LISTEN_DEFAULT: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080));
/// Default name of the session cookie (the original console's).
pub const COOKIE_NAME_DEFAULT: &str = "tidings_session";
/// Shortest publisher key accepted: anything shorter is guessable, or a placeholder.
pub const PUBLISHER_KEY_CHARS_MIN: usize = 8;

/// Default JWT claims naming the account, the user and the session.
pub const JWT_ACCOUNT_CLAIM_DEFAULT: &str = "account";
pub const JWT_USER_CLAIM_DEFAULT: &str = "sub";
pub const JWT_SESSION_CLAIM_DEFAULT: &str = "sid";
/// Default clock skew tolerated on `exp` and `nbf`: covers unsynchronised clocks, not stale
/// tokens.
pub const JWT_LEEWAY_DEFAULT: Duration = Duration::from_secs(5);

/// Default time an introspection answer is reused: a revoked token keeps streaming at most
/// this long, and the host application sees one request per token per period.
pub const INTROSPECTION_CACHE_TTL_DEFAULT: Duration = Duration::from_secs(30);
/// Default wait for the introspection endpoint before the stream request gets 503.
pub const INTROSPECTION_TIMEOUT_DEFAULT: Duration = Duration::from_secs(2);

/// Default streams per node: what one node of a few cores holds comfortably (about 3 KiB
/// each); lowered at start to fit the open files limit.
pub const STREAMS_PER_NODE_DEFAULT: usize = 100_000;
/// Default streams per account on one node: one tenant cannot take the whole node.
pub const STREAMS_PER_ACCOUNT_DEFAULT: usize = 10_000;
/// Default frames queued per stream before it is closed as a slow consumer: minutes of a busy
/// account's events, while a stuck client costs at most this many shared frames.
pub const STREAM_QUEUE_FRAMES_DEFAULT: usize = 1_024;
/// Fewest queued frames accepted: with one, any two frames in a row (a ping beside an
/// activity) would close a stream as a slow consumer.
pub const STREAM_QUEUE_FRAMES_MIN: usize = 2;
/// Default largest publish body: a batch of a thousand ordinary activities.
pub const PUBLISH_BODY_BYTES_DEFAULT: usize = 1024 * 1024;
/// Smallest publish body limit accepted: one ordinary activity must fit.
pub const PUBLISH_BODY_BYTES_MIN: usize = 256;
/// Default time shutdown waits for streams to flush their `closed` frame: well inside the
/// usual 30 s an orchestrator allows between SIGTERM and SIGKILL.
pub const SHUTDOWN_GRACE_DEFAULT: Duration = Duration::from_secs(10);

/// Default events kept per account: minutes of a busy account's activity, small enough to
/// replay in one write (about 1 MiB at 1 KiB per event).
pub const HISTORY_EVENTS_DEFAULT: usize = 1_000;
/// Default age of the oldest event kept; a client away longer resyncs.
pub const HISTORY_AGE_DEFAULT: Duration = Duration::from_secs(3_600);
/// Default replay budget of one resume (see [`HistoryConfig::replay_max_bytes`]).
pub const REPLAY_BYTES_DEFAULT: usize = 8 * 1024 * 1024;
/// Default bytes of retained events per account: the default replay budget, since retaining
/// more serves no resume (a client behind by more gets `replay_too_large` anyway).
pub const HISTORY_BYTES_DEFAULT: usize = REPLAY_BYTES_DEFAULT;
/// Default bytes of retained events of the whole node, all accounts together.
pub const HISTORY_NODE_BYTES_DEFAULT: usize = 256 * 1024 * 1024;

/// Default Redis server: a local one.
pub const REDIS_URL_DEFAULT: &str = "redis://127.0.0.1:6379";
/// Default prefix of every Redis key the hub writes.
pub const REDIS_KEY_PREFIX_DEFAULT: &str = "tidings:";
/// Default wait for a TCP connection to Redis.
pub const REDIS_CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(2);
/// Default wait for one Redis command; a publish that takes longer gets 503.
pub const REDIS_COMMAND_TIMEOUT_DEFAULT: Duration = Duration::from_secs(1);
/// Default entries kept in the shared feed: at 1,000 publishes/s, 100 s of outage a node can
/// catch up on without resyncing its streams.
pub const FEED_EVENTS_DEFAULT: usize = 100_000;
/// Default wait for `min_replicas` to confirm a publish (`WAIT`); past it the publish gets 503.
pub const REDIS_REPLICA_TIMEOUT_DEFAULT: Duration = Duration::from_secs(1);
/// Fewest feed entries accepted: a shorter feed is outrun by any burst of publishes between
/// two reads of a node, which then resyncs all its streams.
pub const FEED_EVENTS_MIN: usize = 100;

/// The whole hub configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to bind; the `--listen` flag overrides it.
    pub listen: SocketAddr,
    /// Ping interval.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// Reconnect hint sent as `retry:` at the start of each stream.
    #[serde(with = "humantime_serde")]
    pub retry: Duration,
    pub auth: AuthConfig,
    pub limits: Limits,
    pub history: HistoryConfig,
    pub engine: EngineConfig,
    pub mapping: MappingConfig,
    pub cors: CorsConfig,
    /// Proxies whose `X-Forwarded-For` is believed: addresses (`"10.0.0.7"`) or networks
    /// (`"10.0.0.0/8"`). A request whose peer is one of them is logged with the address the
    /// proxies recorded, read right to left past every trusted hop; from anyone else the header
    /// is ignored. Empty (the default): the socket's peer is the client.
    pub trusted_proxies: Vec<TrustedProxy>,
    /// The admin page and its API (`/admin/`); off without this section.
    pub admin: Option<AdminConfig>,
}

/// One entry of `trusted_proxies`: an address or a network, in CIDR notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct TrustedProxy(pub ipnet::IpNet);

impl TryFrom<String> for TrustedProxy {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let net = match text.parse::<ipnet::IpNet>() {
            Ok(net) => net.trunc(),
            Err(_) => ipnet::IpNet::from(
                text.parse::<std::net::IpAddr>()
                    .map_err(|_| format!("trusted_proxies: {text:?} is neither an IP address nor a network like 10.0.0.0/8"))?,
            ),
        };
        Ok(Self(net))
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: LISTEN_DEFAULT,
            heartbeat: HEARTBEAT_DEFAULT,
            retry: RETRY_HINT_DEFAULT,
            auth: AuthConfig::default(),
            limits: Limits::default(),
            history: HistoryConfig::default(),
            engine: EngineConfig::default(),
            mapping: MappingConfig::default(),
            cors: CorsConfig::default(),
            trusted_proxies: Vec::new(),
            admin: None,
        }
    }
}

/// Identity providers and publisher keys.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Name of the session cookie that carries the same tokens as the `Authorization` header.
    pub cookie: String,
    /// Accept `?access_token=` on the stream URL. Off by default: query strings end up in logs.
    pub query_token: bool,
    /// Refuse cookie-authenticated requests that a browser says come from another origin
    /// (`Origin` other than the hub's own or `cors.allowed_origins`, or `Sec-Fetch-Site:
    /// cross-site`) with 403 before they touch the session. On by default; see SECURITY.md.
    pub cookie_origin_check: bool,
    /// Static user tokens.
    pub tokens: Vec<StaticToken>,
    /// A TOML file with more `[[tokens]]` entries, read at start-up.
    pub tokens_file: Option<PathBuf>,
    /// Keys that may publish; never accepted on the stream endpoint.
    pub publishers: Vec<PublisherKey>,
    pub jwt: Option<JwtConfig>,
    pub introspection: Option<IntrospectionConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            cookie: COOKIE_NAME_DEFAULT.into(),
            query_token: false,
            cookie_origin_check: true,
            tokens: Vec::new(),
            tokens_file: None,
            publishers: Vec::new(),
            jwt: None,
            introspection: None,
        }
    }
}

/// One static identity.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticToken {
    pub token: String,
    pub account: String,
    pub user: String,
    pub session: String,
    /// What this identity may see inside its account, besides the implicit `user:<user>`
    /// and `session:<session>` (see SECURITY.md, audience).
    #[serde(default)]
    pub grants: Vec<String>,
}

/// One publisher key.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublisherKey {
    pub key: String,
    /// A name for logs and metrics; never the key itself.
    #[serde(default)]
    pub name: Option<String>,
}

/// The admin page (`/admin/`) and its JSON API (`/admin/api/`), for the people who run the hub.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// The admin credential, sent as `Authorization: Bearer <key>` to `/admin/api/`. At least
    /// [`ADMIN_KEY_CHARS_MIN`] characters, and never a user token, a publisher key or the JWT
    /// secret: whoever holds it sees every account's activity and can revoke any session.
    pub key: String,
    /// A listener of its own (`"127.0.0.1:9090"`, an internal address): the admin page, its API
    /// and `/metrics` are then served there and no longer on `listen`. Without it they share
    /// `listen`.
    pub listen: Option<SocketAddr>,
}

/// The key stays out of debug output.
impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig").field("listen", &self.listen).finish_non_exhaustive()
    }
}

/// Shortest admin key accepted: the admin API reads every account's activity, so its key must
/// be as hard to guess as a 64-bit random value written in hex.
pub const ADMIN_KEY_CHARS_MIN: usize = 16;

/// JWT verification.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// `HS256`, `RS256` or `ES256`.
    pub algorithm: String,
    /// Shared secret for HS256.
    pub secret: Option<String>,
    /// PEM public key for RS256/ES256, inline.
    pub public_key_pem: Option<String>,
    /// PEM public key for RS256/ES256, from a file.
    pub public_key_file: Option<PathBuf>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    #[serde(default = "default_account_claim")]
    pub account_claim: String,
    #[serde(default = "default_user_claim")]
    pub user_claim: String,
    #[serde(default = "default_session_claim")]
    pub session_claim: String,
    /// The claim holding the identity's grants: an array of strings, or one string of grants
    /// separated by spaces (as OAuth's `scope`). None: tokens carry no grants.
    #[serde(default)]
    pub grants_claim: Option<String>,
    /// Clock skew tolerated on `exp`/`nbf`.
    #[serde(default = "default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
}

fn default_account_claim() -> String {
    JWT_ACCOUNT_CLAIM_DEFAULT.into()
}
fn default_user_claim() -> String {
    JWT_USER_CLAIM_DEFAULT.into()
}
fn default_session_claim() -> String {
    JWT_SESSION_CLAIM_DEFAULT.into()
}
fn default_leeway() -> Duration {
    JWT_LEEWAY_DEFAULT
}

/// Asking the host application who a token or cookie belongs to.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionConfig {
    /// `POST`ed `{"token": "...", "source": "header"|"cookie"|"query"}`; see the README.
    pub url: String,
    /// How long an answer (positive or negative) is reused.
    #[serde(default = "default_introspection_ttl", with = "humantime_serde")]
    pub cache_ttl: Duration,
    #[serde(default = "default_introspection_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_introspection_ttl() -> Duration {
    INTROSPECTION_CACHE_TTL_DEFAULT
}
fn default_introspection_timeout() -> Duration {
    INTROSPECTION_TIMEOUT_DEFAULT
}

/// Bounds on what one node holds.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Open streams per node; beyond it new streams get 503 with `Retry-After`.
    pub streams_per_node: usize,
    /// Open streams per account on this node; beyond it 429 with `Retry-After`.
    pub streams_per_account: usize,
    /// Frames queued for one stream before it is closed as a slow consumer.
    pub stream_queue_frames: usize,
    /// Largest publish body, in bytes (413 beyond).
    pub publish_body_bytes: usize,
    /// Maximum stream lifetime; each stream gets up to 10% less, at random, so they do not
    /// all reconnect together.
    #[serde(with = "humantime_serde")]
    pub stream_lifetime: Option<Duration>,
    /// How long shutdown waits for streams to flush their `closed` frame.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Longest time to receive a whole request body (publish, revoke, any route that takes
    /// one), counted from its request head; beyond it: 408 and the connection closed.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Longest time a client may take to read a response other than an event stream (streams
    /// have their own bound: a full queue closes them as `slow_consumer`); beyond it the
    /// connection is closed. On connections served by hyper (requests with bodies, HTTP/1.0,
    /// h2c) it bounds each wait for the client to take more bytes.
    #[serde(with = "humantime_serde")]
    pub response_write_timeout: Duration,
}

/// Default `limits.body_timeout`. Publishers are backend services next to the hub: a 1 MiB
/// body (the default `publish_body_bytes`) arrives within it at 100 KiB/s.
pub const BODY_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// Default `limits.response_write_timeout`: the largest answers (the mapping, the demo's
/// script) are a few hundred KiB, seconds even on a slow link.
pub const RESPONSE_WRITE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

impl Default for Limits {
    fn default() -> Self {
        Self {
            streams_per_node: STREAMS_PER_NODE_DEFAULT,
            streams_per_account: STREAMS_PER_ACCOUNT_DEFAULT,
            stream_queue_frames: STREAM_QUEUE_FRAMES_DEFAULT,
            publish_body_bytes: PUBLISH_BODY_BYTES_DEFAULT,
            stream_lifetime: None,
            shutdown_grace: SHUTDOWN_GRACE_DEFAULT,
            body_timeout: BODY_TIMEOUT_DEFAULT,
            response_write_timeout: RESPONSE_WRITE_TIMEOUT_DEFAULT,
        }
    }
}

/// Bounds on per-account history.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Events kept per account.
    pub max_events: usize,
    /// Oldest event kept.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Most bytes of retained events replayed to one resuming stream (events counted by their
    /// encoded size). A client further behind gets `resync` `replay_too_large` instead:
    /// refetching is cheaper than replaying megabytes, and neither the hub nor Redis has to
    /// hold or ship the whole gap at once.
    pub replay_max_bytes: usize,
    /// Bytes of retained events kept per account (encoded size), oldest trimmed first; a
    /// resume from before the cut gets `resync` `history_trimmed`. An event larger than this
    /// is delivered live but not retained.
    pub max_bytes: usize,
    /// Bytes of retained events kept by the whole node, across accounts (memory and durable
    /// engines; the Redis engine bounds each account with `max_bytes` and Redis itself with
    /// its own `maxmemory`). Past it the oldest events of the node go first, whatever their
    /// account.
    pub node_max_bytes: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            max_events: HISTORY_EVENTS_DEFAULT,
            max_age: HISTORY_AGE_DEFAULT,
            replay_max_bytes: REPLAY_BYTES_DEFAULT,
            max_bytes: HISTORY_BYTES_DEFAULT,
            node_max_bytes: HISTORY_NODE_BYTES_DEFAULT,
        }
    }
}

/// Which engine holds history and carries events between publish and delivery.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
pub enum EngineConfig {
    /// In this process only; ids change epoch on restart.
    #[default]
    Memory,
    /// One node, history in a data file: ids and history survive restarts and crashes.
    Durable {
        /// Directory of the data file (`tidings.db`); created if missing. Relative paths are
        /// relative to the configuration file.
        data_dir: PathBuf,
        /// When a publish counts as stored; see [`FsyncPolicy`].
        #[serde(default)]
        fsync: FsyncPolicy,
    },
    /// A Redis server shared by every hub node: one ordered history per account.
    Redis(Box<RedisConfig>),
}

/// When the durable engine answers a publish: the trade-off between latency and what a
/// power loss can take away.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// Every group commit is flushed to the disk (`fsync`) before any publish in it gets its
    /// 202: nothing acknowledged is lost, even on power loss. Concurrent publishes share one
    /// flush, so throughput holds up; a lone publisher pays one flush per request.
    #[default]
    Always,
    /// Commits are handed to the operating system, which writes them out on its own schedule.
    /// A crash or `SIGKILL` of the hub loses nothing; a power loss or kernel crash may lose
    /// the last acknowledged publishes (the history then starts a new epoch, so clients
    /// resync rather than resume past a hole).
    Never,
}

/// Where the Redis engine keeps its history, how it reaches Redis (TLS, ACL user, Sentinel),
/// and how long it waits for Redis.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://` or `rediss://` (TLS) `[user:password@]host:port[/db]`. With `sentinels`, the
    /// primary's address comes from Sentinel and only the scheme, user, password and db of the
    /// URL are used. `None`: [`REDIS_URL_DEFAULT`] (read it with [`RedisConfig::url`]); not
    /// given with `shards`, where each shard names its own.
    pub url: Option<String>,
    /// ACL user, when not given in `url`.
    pub username: Option<String>,
    /// A file holding the password (one line; a trailing newline is ignored), when not in `url`.
    /// Relative paths are relative to the configuration file.
    pub password_file: Option<PathBuf>,
    /// An environment variable holding the password, when not in `url`.
    pub password_env: Option<String>,
    /// PEM CA certificate(s) to trust for `rediss://` instead of the system's roots.
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) for servers that require one (`tls-auth-clients yes`).
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// The name the server's certificate must carry, when it differs from the host connected to
    /// (an address from Sentinel, a tunnel, a private endpoint).
    pub tls_server_name: Option<String>,
    /// Sentinels (`host:port`) that know the primary; with `master_name`. Without them, `url`
    /// names the server.
    pub sentinels: Vec<String>,
    /// The name the sentinels monitor the primary under.
    pub master_name: Option<String>,
    /// ACL user for the sentinels, when they require one.
    pub sentinel_username: Option<String>,
    /// A file holding the sentinels' password.
    pub sentinel_password_file: Option<PathBuf>,
    /// An environment variable holding the sentinels' password.
    pub sentinel_password_env: Option<String>,
    /// A publish is answered `202` only once this many replicas confirmed its write (`WAIT`);
    /// otherwise `503`. 0: once the primary stored it. Give every node the same value.
    pub min_replicas: u32,
    /// Longest wait for `min_replicas` confirmations.
    #[serde(with = "humantime_serde")]
    pub replica_timeout: Duration,
    /// Prepended to every key, so several hubs (or other applications) can share a server.
    pub key_prefix: String,
    /// Longest wait for a TCP connection to Redis.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest wait for one command; a publish that takes longer fails with 503.
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// Entries kept in the shared feed that carries events to every node. A node that falls
    /// further behind than this (a long disconnect) cannot prove it missed nothing, and sends
    /// its streams `resync`. Publishing nodes trim the feed: give every node the same value.
    pub feed_max_events: usize,
    /// `[[engine.shards]]`: the accounts are split over these Redis primaries (see
    /// [`RedisConfig::shard_configs`]); every other setting is shared. `None`: one shard, the
    /// server `url`/`sentinels` name. The order matters: shard `i` is the `i`-th entry.
    pub shards: Option<Vec<RedisShardConfig>>,
}

/// The per-server settings of one shard; the rest comes from `[engine]`.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisShardConfig {
    /// As `engine.url`, for this shard's server (with `sentinels`: scheme, user and db only).
    pub url: String,
    /// As `engine.sentinels`, for this shard's primary.
    #[serde(default)]
    pub sentinels: Vec<String>,
    /// As `engine.master_name`.
    pub master_name: Option<String>,
    /// As `engine.tls_server_name`.
    pub tls_server_name: Option<String>,
}

/// Never shows a password (see [`redact_url`]).
impl std::fmt::Debug for RedisShardConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisShardConfig")
            .field("url", &redact_url(&self.url))
            .field("sentinels", &self.sentinels)
            .field("master_name", &self.master_name)
            .field("tls_server_name", &self.tls_server_name)
            .finish()
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: None,
            username: None,
            password_file: None,
            password_env: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_server_name: None,
            sentinels: Vec::new(),
            master_name: None,
            sentinel_username: None,
            sentinel_password_file: None,
            sentinel_password_env: None,
            min_replicas: 0,
            replica_timeout: REDIS_REPLICA_TIMEOUT_DEFAULT,
            key_prefix: REDIS_KEY_PREFIX_DEFAULT.into(),
            connect_timeout: REDIS_CONNECT_TIMEOUT_DEFAULT,
            command_timeout: REDIS_COMMAND_TIMEOUT_DEFAULT,
            feed_max_events: FEED_EVENTS_DEFAULT,
            shards: None,
        }
    }
}

/// Never shows a password: the URL's is masked and the others are only named by where they
/// are read from.
impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.url.as_deref().map(redact_url))
            .field("username", &self.username)
            .field("password_file", &self.password_file)
            .field("password_env", &self.password_env)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .field("tls_server_name", &self.tls_server_name)
            .field("sentinels", &self.sentinels)
            .field("master_name", &self.master_name)
            .field("sentinel_username", &self.sentinel_username)
            .field("sentinel_password_file", &self.sentinel_password_file)
            .field("sentinel_password_env", &self.sentinel_password_env)
            .field("min_replicas", &self.min_replicas)
            .field("replica_timeout", &self.replica_timeout)
            .field("key_prefix", &self.key_prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("feed_max_events", &self.feed_max_events)
            .field("shards", &self.shards)
            .finish()
    }
}

/// `url` with the password of its user info replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let user = rest[..at].split_once(':').map_or(&rest[..at], |(user, _)| user);
            format!("{scheme}://{user}:***@{}", &rest[at + 1..])
        }
        None => url.to_owned(),
    }
}

/// Most entries of `[[engine.shards]]`: each is a Redis primary every node holds two or three
/// connections to and one feed reader for; beyond this the per-node connections and readers
/// cost more than another shard saves (ARCHITECTURE.md, "The arithmetic").
pub const REDIS_SHARDS_MAX: usize = 64;

impl RedisConfig {
    /// The server URL: `url`, or [`REDIS_URL_DEFAULT`] when not given.
    pub fn url(&self) -> &str {
        self.url.as_deref().unwrap_or(REDIS_URL_DEFAULT)
    }

    /// Whether the URL asks for TLS.
    pub fn tls(&self) -> bool {
        self.url().starts_with("rediss://")
    }

    /// One configuration per shard, in order: without `shards`, this one (exactly today's
    /// single server); with them, this one with each shard's url, sentinels, master name and
    /// TLS server name, and no `shards`. Never empty once validated.
    pub fn shard_configs(&self) -> Vec<RedisConfig> {
        match &self.shards {
            None => vec![self.clone()],
            Some(shards) => shards
                .iter()
                .map(|s| RedisConfig {
                    url: Some(s.url.clone()),
                    sentinels: s.sentinels.clone(),
                    master_name: s.master_name.clone(),
                    tls_server_name: s.tls_server_name.clone(),
                    shards: None,
                    ..self.clone()
                })
                .collect(),
        }
    }

    /// Checks `shards` against the single-server keys, then every shard's settings; errors
    /// about one shard name it (`engine.shards[1]: …`).
    fn validate(&self) -> Result<(), String> {
        let Some(shards) = &self.shards else { return self.validate_server() };
        if shards.is_empty() {
            return Err("engine.shards is empty; give at least one [[engine.shards]] with a url, or drop shards and set engine.url".into());
        }
        if shards.len() > REDIS_SHARDS_MAX {
            return Err(format!("engine.shards: {} shards, at most {REDIS_SHARDS_MAX}", shards.len()));
        }
        let per_server = [
            ("url", self.url.is_some()),
            ("sentinels", !self.sentinels.is_empty()),
            ("master_name", self.master_name.is_some()),
            ("tls_server_name", self.tls_server_name.is_some()),
        ];
        if let Some((key, _)) = per_server.iter().find(|(_, set)| *set) {
            return Err(format!("engine.{key} and engine.shards do not go together: with shards, give {key} in each [[engine.shards]]"));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, shard) in self.shard_configs().iter().enumerate() {
            shard.validate_server().map_err(|e| format!("engine.shards[{i}]: {e}"))?;
            // Two shards on one server would share one seq counter and one feed: every
            // event would be delivered twice. The same Sentinel master counts as one server.
            let server = if shard.sentinels.is_empty() { shard.url().to_owned() } else { format!("{:?}/{:?}", shard.sentinels, shard.master_name) };
            if !seen.insert(server) {
                return Err(format!("engine.shards[{i}] names the same server as an earlier shard; each shard needs its own Redis primary"));
            }
        }
        Ok(())
    }

    /// The password for the Redis servers from `password_file` or `password_env`, if set.
    /// Read when the engine starts, never logged.
    pub fn password(&self) -> Result<Option<String>, ConfigError> {
        read_secret("engine.password", self.password_file.as_deref(), self.password_env.as_deref())
    }

    /// The password for the sentinels, if set.
    pub fn sentinel_password(&self) -> Result<Option<String>, ConfigError> {
        read_secret("engine.sentinel_password", self.sentinel_password_file.as_deref(), self.sentinel_password_env.as_deref())
    }

    fn validate_server(&self) -> Result<(), String> {
        let url_password = self.url().split_once("://").and_then(|(_, rest)| rest.split('/').next()?.rsplit_once('@')).is_some_and(|(info, _)| info.contains(':'));
        if !self.url().starts_with("redis://") && !self.tls() {
            return Err(format!("engine.url {:?} must start with redis:// or rediss:// (TLS)", redact_url(self.url())));
        }
        if self.connect_timeout.is_zero() || self.command_timeout.is_zero() || self.feed_max_events < FEED_EVENTS_MIN {
            return Err(format!("engine: connect_timeout and command_timeout must be > 0, feed_max_events >= {FEED_EVENTS_MIN}"));
        }
        let tls_settings = [&self.tls_ca_file, &self.tls_cert_file, &self.tls_key_file].iter().any(|f| f.is_some()) || self.tls_server_name.is_some();
        if tls_settings && !self.tls() {
            return Err("engine: tls_ca_file, tls_cert_file, tls_key_file and tls_server_name need a rediss:// url".into());
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err("engine: give tls_cert_file and tls_key_file together".into());
        }
        if self.password_file.is_some() && self.password_env.is_some() {
            return Err("engine: give password_file or password_env, not both".into());
        }
        if url_password && (self.password_file.is_some() || self.password_env.is_some()) {
            return Err("engine: the url already has a password; drop it or password_file/password_env".into());
        }
        if self.sentinels.is_empty() != self.master_name.is_none() {
            return Err("engine: sentinels and master_name go together".into());
        }
        for s in &self.sentinels {
            if !s.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)) {
                return Err(format!("engine.sentinels: {s:?} is not host:port"));
            }
        }
        let sentinel_secret = self.sentinel_username.is_some() || self.sentinel_password_file.is_some() || self.sentinel_password_env.is_some();
        if sentinel_secret && self.sentinels.is_empty() {
            return Err("engine: sentinel_username and sentinel_password_* need sentinels".into());
        }
        if self.sentinel_password_file.is_some() && self.sentinel_password_env.is_some() {
            return Err("engine: give sentinel_password_file or sentinel_password_env, not both".into());
        }
        if self.min_replicas > 0 && self.replica_timeout.is_zero() {
            return Err("engine: replica_timeout must be > 0 with min_replicas".into());
        }
        Ok(())
    }
}

/// A secret from a file (one line) or an environment variable; `what` names it in errors,
/// which never contain the value.
fn read_secret(what: &str, file: Option<&Path>, env: Option<&str>) -> Result<Option<String>, ConfigError> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let value = text.strip_suffix('\n').unwrap_or(&text);
        let value = value.strip_suffix('\r').unwrap_or(value);
        if value.is_empty() {
            return Err(ConfigError::Invalid(format!("{what}: {} is empty", path.display())));
        }
        return Ok(Some(value.to_owned()));
    }
    if let Some(name) = env {
        return match std::env::var(name) {
            Ok(v) if !v.is_empty() => Ok(Some(v)),
            _ => Err(ConfigError::Invalid(format!("{what}: the environment variable {name} is not set"))),
        };
    }
    Ok(None)
}

/// Where invalidation keys come from: a mapping file, a shipped profile, or the generic
/// default (`[type]`, `[type, id]`, `[parent-type, parent-id]`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MappingConfig {
    /// A mapping file (TOML, see docs/mapping.md).
    pub file: Option<PathBuf>,
    /// A shipped profile by name (`azion-console`, `generic-kebab`, `generic-as-published`).
    pub profile: Option<String>,
    /// How the generic default spells types: `kebab` (default) or `as_published`.
    pub type_spelling: TypeSpellingConfig,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TypeSpellingConfig {
    #[default]
    Kebab,
    AsPublished,
}

/// Cross-origin access for browser consoles served from another origin.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    /// Exact origins allowed (credentials are allowed for these). `*` is refused: a wildcard
    /// with credentials would let any site read a signed-in user's stream.
    pub allowed_origins: Vec<String>,
}

/// A configuration that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// The TOML is malformed or has unknown or mistyped keys.
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// Values that parse but do not make sense together.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// The mapping file or profile does not load; the message names file, line and entry.
    #[error("{0}")]
    Mapping(#[from] tidings_protocol::resolver::MappingError),
    /// The engine could not start (for example a damaged data file); the message names it.
    #[error(transparent)]
    Engine(#[from] crate::engine::StartError),
}

impl MappingConfig {
    /// Loads the configured resolver: the file, the named profile, or the generic default.
    pub fn resolver(&self) -> Result<tidings_protocol::resolver::Resolver, ConfigError> {
        use tidings_protocol::resolver::{Resolver, TypeSpelling};
        if let Some(path) = &self.file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
            return Ok(Resolver::from_toml_str(&text, &path.display().to_string())?);
        }
        if let Some(name) = &self.profile {
            let text = tidings_protocol::profiles::builtin(name)
                .ok_or_else(|| ConfigError::Invalid(format!("mapping.profile {name:?} is not a shipped profile")))?;
            return Ok(Resolver::from_toml_str(text, &format!("profile {name}"))?);
        }
        Ok(Resolver::generic(match self.type_spelling {
            TypeSpellingConfig::Kebab => TypeSpelling::KebabCase,
            TypeSpellingConfig::AsPublished => TypeSpelling::AsPublished,
        }))
    }
}

impl Config {
    /// Reads and validates a TOML configuration file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let mut config = Self::from_toml_str(&text, path)?;
        config.resolve_relative_paths(path.parent().unwrap_or(Path::new(".")));
        config.load_tokens_file()?;
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text; `path` only names the source in errors.
    pub fn from_toml_str(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })
    }

    fn resolve_relative_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(p) = self.auth.tokens_file.as_mut() {
            fix(p);
        }
        if let Some(p) = self.auth.jwt.as_mut().and_then(|j| j.public_key_file.as_mut()) {
            fix(p);
        }
        if let Some(p) = self.mapping.file.as_mut() {
            fix(p);
        }
        if let EngineConfig::Durable { data_dir, .. } = &mut self.engine {
            fix(data_dir);
        }
        if let EngineConfig::Redis(r) = &mut self.engine {
            for p in [&mut r.password_file, &mut r.tls_ca_file, &mut r.tls_cert_file, &mut r.tls_key_file, &mut r.sentinel_password_file] {
                if let Some(p) = p.as_mut() {
                    fix(p);
                }
            }
        }
    }

    fn load_tokens_file(&mut self) -> Result<(), ConfigError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct TokensFile {
            tokens: Vec<StaticToken>,
        }
        let Some(path) = self.auth.tokens_file.clone() else { return Ok(()) };
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
        let file: TokensFile = toml::from_str(&text).map_err(|e| ConfigError::Parse { path, message: e.to_string() })?;
        self.auth.tokens.extend(file.tokens);
        Ok(())
    }

    /// Checks values that parse but cannot work. Called by [`Config::from_file`]; call it
    /// yourself after changing a config in code.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.heartbeat < HEARTBEAT_MIN {
            return invalid(format!("heartbeat must be at least {HEARTBEAT_MIN:?}"));
        }
        if self.auth.cookie.is_empty() || !self.auth.cookie.bytes().all(|b| b.is_ascii_graphic() && b != b'=' && b != b';') {
            return invalid(format!("auth.cookie {:?} is not a valid cookie name", self.auth.cookie));
        }
        let l = &self.limits;
        if l.streams_per_node == 0
            || l.streams_per_account == 0
            || l.stream_queue_frames < STREAM_QUEUE_FRAMES_MIN
            || l.publish_body_bytes < PUBLISH_BODY_BYTES_MIN
        {
            return invalid(format!(
                "limits: streams_per_node and streams_per_account must be > 0, stream_queue_frames >= {STREAM_QUEUE_FRAMES_MIN}, publish_body_bytes >= {PUBLISH_BODY_BYTES_MIN}"
            ));
        }
        if l.body_timeout.is_zero() || l.response_write_timeout.is_zero() {
            return invalid("limits: body_timeout and response_write_timeout must be > 0".into());
        }
        if self.history.max_events == 0 {
            return invalid("history.max_events must be > 0".into());
        }
        if self.history.replay_max_bytes == 0 {
            return invalid("history.replay_max_bytes must be > 0".into());
        }
        if self.history.max_bytes == 0 || self.history.node_max_bytes < self.history.max_bytes {
            return invalid("history: max_bytes must be > 0 and node_max_bytes >= max_bytes".into());
        }
        let mut seen = std::collections::HashSet::new();
        for t in &self.auth.tokens {
            if t.token.is_empty() || t.account.is_empty() || t.session.is_empty() {
                return invalid(format!("auth.tokens: entry for user {:?} needs a token, an account and a session", t.user));
            }
            if !seen.insert(t.token.as_str()) {
                return invalid(format!("auth.tokens: token of user {:?} appears twice", t.user));
            }
            if let Err(e) = tidings_protocol::Grants::new(t.grants.iter().map(String::as_str)) {
                return invalid(format!("auth.tokens: grants of the token of user {:?}: {e}", t.user));
            }
        }
        for p in &self.auth.publishers {
            if p.key.len() < PUBLISHER_KEY_CHARS_MIN {
                return invalid(format!("auth.publishers: a publisher key must be at least {PUBLISHER_KEY_CHARS_MIN} characters"));
            }
            if seen.contains(p.key.as_str()) {
                return invalid("auth.publishers: a publisher key is also a user token".into());
            }
        }
        if let Some(admin) = &self.admin {
            self.validate_admin(admin, &seen)?;
        }
        if self.mapping.file.is_some() && self.mapping.profile.is_some() {
            return invalid("mapping: give either file or profile, not both".into());
        }
        if let Some(p) = self.mapping.profile.as_deref().filter(|p| tidings_protocol::profiles::builtin(p).is_none()) {
            let names: Vec<_> = tidings_protocol::profiles::BUILTIN.iter().map(|(n, _)| *n).collect();
            return invalid(format!("mapping.profile {p:?} is not one of {}", names.join(", ")));
        }
        if matches!(&self.engine, EngineConfig::Durable { data_dir, .. } if data_dir.as_os_str().is_empty()) {
            return invalid("engine.data_dir must name a directory".into());
        }
        if let EngineConfig::Redis(r) = &self.engine {
            r.validate().map_err(ConfigError::Invalid)?;
        }
        if self.cors.allowed_origins.iter().any(|o| o == "*") {
            return invalid("cors.allowed_origins: \"*\" is refused (credentials are allowed); list exact origins".into());
        }
        if let Some(o) = self.cors.allowed_origins.iter().find(|o| !is_origin(o)) {
            return invalid(format!(
                "cors.allowed_origins: {o:?} is not an origin; write scheme://host[:port] as the browser sends it, e.g. \"https://console.example.com\""
            ));
        }
        Ok(())
    }
}

impl Config {
    /// The admin key is a credential of its own: long enough, and never one that also opens
    /// streams, publishes or signs sessions (whoever holds those must not become an admin, and
    /// the admin key must never travel where they go, such as an introspection endpoint).
    /// `tokens` are the static user tokens. Errors never contain the key.
    fn validate_admin(&self, admin: &AdminConfig, tokens: &std::collections::HashSet<&str>) -> Result<(), ConfigError> {
        let invalid = |m: &str| Err(ConfigError::Invalid(format!("admin.key: {m}")));
        if admin.key.trim() != admin.key || admin.key.chars().any(char::is_control) {
            return invalid("must not contain spaces at either end or control characters");
        }
        if admin.key.chars().count() < ADMIN_KEY_CHARS_MIN {
            return invalid(&format!("must be at least {ADMIN_KEY_CHARS_MIN} characters (e.g. `openssl rand -hex 16`)"));
        }
        if tokens.contains(admin.key.as_str()) {
            return invalid("is also a user token (auth.tokens or auth.tokens_file); the admin key must be a credential of its own");
        }
        if self.auth.publishers.iter().any(|p| p.key == admin.key) {
            return invalid("is also a publisher key; the admin key must be a credential of its own");
        }
        if self.auth.jwt.as_ref().and_then(|j| j.secret.as_deref()) == Some(admin.key.as_str()) {
            return invalid("is also the JWT secret; the admin key must be a credential of its own");
        }
        if admin.listen.is_some_and(|a| a == self.listen && a.port() != 0) {
            return Err(ConfigError::Invalid(format!("admin.listen {} is also listen: give the admin listener an address of its own, or leave admin.listen out to share listen", self.listen)));
        }
        Ok(())
    }
}

/// Whether `text` is a serialised origin as a browser sends it in `Origin`: `http` or
/// `https`, a host, an optional port, and nothing else (no path, not even `/`). Anything else
/// could never match a request, so a console listed that way would be refused in silence.
fn is_origin(text: &str) -> bool {
    let Ok(uri) = text.parse::<http::Uri>() else { return false };
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else { return false };
    matches!(scheme, "http" | "https")
        && text == format!("{scheme}://{authority}")
        && !authority.as_str().contains('@')
        && http::HeaderValue::from_str(text).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_example_parses() {
        let text = r#"
heartbeat = "500ms"
[auth]
cookie = "tidings_session"
[[auth.tokens]]
token = "tok-alice"
account = "acme"
user = "alice@example.com"
session = "s-alice"
[[auth.publishers]]
key = "pub-secret"
"#;
        let c = Config::from_toml_str(text, Path::new("t.toml")).unwrap();
        c.validate().unwrap();
        assert_eq!(c.heartbeat, Duration::from_millis(500));
        assert_eq!(c.auth.tokens[0].account, "acme");
    }

    #[test]
    fn token_grants_are_checked_at_start_without_naming_the_token() {
        let parse = |grants: &str| {
            let text = format!("[[auth.tokens]]\ntoken = \"tok-secret-1\"\naccount = \"acme\"\nuser = \"dana\"\nsession = \"s-d\"\ngrants = {grants}\n");
            Config::from_toml_str(&text, Path::new("t.toml")).unwrap().validate().map_err(|e| e.to_string())
        };
        assert!(parse("[\"billing:read\", \"role:admin\"]").is_ok());
        for (bad, why) in [("[\"user:bob\"]", "implied"), ("[\"\"]", "empty"), ("[\"a\\u0000\"]", "control")] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains("\"dana\"") && e.contains(why) && !e.contains("tok-secret"), "{bad}: {e}");
        }
        let many = format!("[{}]", (0..=tidings_protocol::audience::IDENTITY_GRANTS_MAX).map(|i| format!("\"g{i}\"")).collect::<Vec<_>>().join(","));
        assert!(parse(&many).unwrap_err().contains("at most 256"));
        let e = Config::from_toml_str("[[auth.tokens]]\ntoken = \"t\"\naccount = \"a\"\nuser = \"u\"\nsession = \"s\"\ngrants = [1]\n", Path::new("t.toml")).unwrap_err();
        assert!(e.to_string().contains("t.toml"), "{e}");
    }

    #[test]
    fn redis_engine_parses_with_defaults_and_is_validated() {
        let c = Config::from_toml_str("[engine]\nkind = \"redis\"\nurl = \"redis://10.0.0.5:6380/2\"\ncommand_timeout = \"250ms\"\n", Path::new("t.toml")).unwrap();
        c.validate().unwrap();
        let EngineConfig::Redis(r) = &c.engine else { panic!("not redis: {:?}", c.engine) };
        assert_eq!((r.url(), r.key_prefix.as_str(), r.command_timeout), ("redis://10.0.0.5:6380/2", "tidings:", Duration::from_millis(250)));
        let e = Config::from_toml_str("[engine]\nkind = \"redis\"\nurll = \"x\"\n", Path::new("t.toml")).unwrap_err().to_string();
        assert!(e.contains("urll"), "{e}");
        let c = Config::from_toml_str("[engine]\nkind = \"redis\"\nurl = \"http://x\"\n", Path::new("t.toml")).unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("engine.url"));
    }

    #[test]
    fn time_bounds_parse_default_and_refuse_zero() {
        let c = Config::default();
        assert_eq!((c.limits.body_timeout, c.limits.response_write_timeout), (BODY_TIMEOUT_DEFAULT, RESPONSE_WRITE_TIMEOUT_DEFAULT));
        let c = Config::from_toml_str("[limits]\nbody_timeout = \"2s\"\nresponse_write_timeout = \"750ms\"\n", Path::new("t.toml")).unwrap();
        c.validate().unwrap();
        assert_eq!((c.limits.body_timeout, c.limits.response_write_timeout), (Duration::from_secs(2), Duration::from_millis(750)));
        let c = Config::from_toml_str("[limits]\nbody_timeout = \"0s\"\n", Path::new("t.toml")).unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("body_timeout"));
    }

    #[test]
    fn trusted_proxies_take_addresses_and_networks() {
        let c = Config::from_toml_str("trusted_proxies = [\"127.0.0.1\", \"10.1.2.3/8\", \"::1\", \"fd00::/8\"]\n", Path::new("t.toml")).unwrap();
        let shown: Vec<String> = c.trusted_proxies.iter().map(|p| p.0.to_string()).collect();
        assert_eq!(shown, ["127.0.0.1/32", "10.0.0.0/8", "::1/128", "fd00::/8"]);
        let e = Config::from_toml_str("trusted_proxies = [\"10.0.0.0/33\"]\n", Path::new("hub.toml")).unwrap_err().to_string();
        assert!(e.contains("hub.toml") && e.contains("10.0.0.0/33") && e.contains("line 1"), "{e}");
    }

    #[test]
    fn redis_tls_sentinel_and_replica_settings_are_checked() {
        let parse = |engine: &str| Config::from_toml_str(&format!("[engine]\nkind = \"redis\"\n{engine}"), Path::new("t.toml")).unwrap();
        let ok = parse("url = \"rediss://u:pw@r.example:6380/1\"\ntls_ca_file = \"ca.pem\"\ntls_server_name = \"r.internal\"\nsentinels = [\"10.0.0.1:26379\", \"s2:26379\"]\nmaster_name = \"m\"\nmin_replicas = 1\nreplica_timeout = \"250ms\"\n");
        ok.validate().unwrap();
        let EngineConfig::Redis(r) = &ok.engine else { panic!("not redis") };
        assert!(r.tls());
        assert_eq!((r.min_replicas, r.replica_timeout), (1, Duration::from_millis(250)));
        assert!(!format!("{r:?}").contains("pw@"), "Debug masks the password: {r:?}");
        for (engine, expected) in [
            ("url = \"redis://h:1\"\ntls_ca_file = \"ca.pem\"\n", "rediss://"),
            ("url = \"rediss://h:1\"\ntls_cert_file = \"c.pem\"\n", "together"),
            ("sentinels = [\"h:1\"]\n", "master_name"),
            ("master_name = \"m\"\n", "master_name"),
            ("sentinels = [\"h\"]\nmaster_name = \"m\"\n", "host:port"),
            ("sentinels = [\"h:0\"]\nmaster_name = \"m\"\n", "host:port"),
            ("url = \"redis://u:pw@h:1\"\npassword_file = \"p\"\n", "already has a password"),
            ("password_file = \"p\"\npassword_env = \"P\"\n", "not both"),
            ("sentinel_username = \"s\"\n", "need sentinels"),
            ("min_replicas = 1\nreplica_timeout = \"0s\"\n", "replica_timeout"),
        ] {
            let e = parse(engine).validate().unwrap_err().to_string();
            assert!(e.contains(expected), "{engine:?}: {e}");
        }
    }

    #[test]
    fn redis_shards_share_engine_settings_and_refuse_the_single_server_keys() {
        let parse = |engine: &str| Config::from_toml_str(&format!("[engine]\nkind = \"redis\"\nkey_prefix = \"x:\"\nmin_replicas = 1\n{engine}"), Path::new("t.toml")).unwrap();
        // Without shards: one shard, the server of [engine] itself (today's configuration).
        let one = parse("url = \"redis://a:1\"\n");
        one.validate().unwrap();
        let EngineConfig::Redis(r) = &one.engine else { panic!("not redis") };
        assert_eq!(r.shard_configs(), vec![(**r).clone()]);
        let default = parse("");
        let EngineConfig::Redis(r) = &default.engine else { panic!("not redis") };
        assert_eq!(r.shard_configs()[0].url(), REDIS_URL_DEFAULT);

        let two = parse(
            "[[engine.shards]]\nurl = \"redis://a:1\"\n[[engine.shards]]\nurl = \"rediss://u:pw@b:2\"\ntls_server_name = \"b.internal\"\n[[engine.shards]]\nurl = \"redis://c\"\nsentinels = [\"s:26379\"]\nmaster_name = \"m\"\n",
        );
        two.validate().unwrap();
        let EngineConfig::Redis(r) = &two.engine else { panic!("not redis") };
        let shards = r.shard_configs();
        assert_eq!(shards.iter().map(RedisConfig::url).collect::<Vec<_>>(), ["redis://a:1", "rediss://u:pw@b:2", "redis://c"]);
        assert!(shards.iter().all(|s| s.key_prefix == "x:" && s.min_replicas == 1 && s.shards.is_none()), "the rest is shared");
        assert_eq!((shards[1].tls_server_name.as_deref(), shards[2].master_name.as_deref()), (Some("b.internal"), Some("m")));
        assert_eq!(shards[2].sentinels, ["s:26379"]);
        assert!(!format!("{r:?}").contains("pw@"), "Debug masks the shards' passwords: {r:?}");

        let shard = "[[engine.shards]]\nurl = \"redis://a:1\"\n";
        for (engine, expected) in [
            (format!("url = \"redis://a:1\"\n{shard}"), "engine.url and engine.shards"),
            (format!("sentinels = [\"s:1\"]\nmaster_name = \"m\"\n{shard}"), "engine.sentinels and engine.shards"),
            (format!("master_name = \"m\"\n{shard}"), "engine.master_name and engine.shards"),
            ("shards = []\n".to_owned(), "engine.shards is empty"),
            (format!("{shard}{shard}"), "engine.shards[1] names the same server"),
            (format!("{shard}[[engine.shards]]\nurl = \"http://b\"\n"), "engine.shards[1]: engine.url"),
            (format!("{shard}[[engine.shards]]\nurl = \"redis://b\"\nsentinels = [\"s:1\"]\n"), "engine.shards[1]: engine: sentinels and master_name"),
            (format!("tls_ca_file = \"ca.pem\"\n{shard}"), "engine.shards[0]: engine: tls_ca_file"),
        ] {
            let e = parse(&engine).validate().unwrap_err().to_string();
            assert!(e.contains(expected), "{engine:?}: {e}");
        }
        let e = Config::from_toml_str("[engine]\nkind = \"redis\"\n[[engine.shards]]\nurl = \"redis://a\"\nkey_prefix = \"y:\"\n", Path::new("t.toml")).unwrap_err().to_string();
        assert!(e.contains("key_prefix"), "shared settings are not per shard: {e}");
        let e = Config::from_toml_str("[engine]\nkind = \"redis\"\n[[engine.shards]]\nsentinels = []\n", Path::new("t.toml")).unwrap_err().to_string();
        assert!(e.contains("url"), "a shard needs its url: {e}");
    }

    #[test]
    fn redact_url_masks_only_the_password() {
        assert_eq!(redact_url("rediss://tidings:s3cret@r:6380/2"), "rediss://tidings:***@r:6380/2");
        assert_eq!(redact_url("redis://:s3cret@r"), "redis://:***@r");
        assert_eq!(redact_url("redis://r:6379"), "redis://r:6379");
        assert_eq!(redact_url("redis://r/x@y"), "redis://r/x@y");
    }

    #[test]
    fn errors_name_the_file_and_key() {
        let e = Config::from_toml_str("hartbeat = \"1s\"", Path::new("hub.toml")).unwrap_err().to_string();
        assert!(e.contains("hub.toml") && e.contains("hartbeat"), "{e}");
        let e = Config::from_toml_str("heartbeat = \"soon\"", Path::new("hub.toml")).unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
        let mut c = Config::default();
        c.cors.allowed_origins = vec!["*".into()];
        assert!(c.validate().is_err());
    }

    #[test]
    fn cors_origins_that_cannot_match_are_refused_at_start() {
        let check = |origin: &str| {
            let mut c = Config::default();
            c.cors.allowed_origins = vec!["https://console.example.com".into(), origin.into()];
            c.validate().map_err(|e| e.to_string())
        };
        for good in ["http://127.0.0.1:5173", "https://console.example.com:8443", "https://[::1]:8080"] {
            assert!(check(good).is_ok(), "{good}");
        }
        for bad in ["console.example.com", "https://console.example.com/", "https://console.example.com/app", "ftp://x.example", "https://a b", "https://user@x.example", ""] {
            let e = check(bad).unwrap_err();
            assert!(e.contains("cors.allowed_origins") && e.contains(&format!("{bad:?}")), "{bad}: {e}");
        }
    }
}
