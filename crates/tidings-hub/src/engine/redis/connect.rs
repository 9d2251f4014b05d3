//! How the engine reaches Redis: one server named by `url`, or the primary that Sentinel
//! names; plaintext or TLS (rustls), with an ACL user. It does not decide anything about
//! history: the init script checks that the server it reached is a primary.
//!
//! Sentinel discovery is written here rather than taken from `redis::sentinel`: that module
//! checks the primary over connections it opens itself, with fixed timeouts and the address
//! Sentinel reported as the TLS server name, so it can honour neither `connect_timeout` nor
//! `tls_server_name`. What is needed is small: ask each sentinel in turn for the primary's
//! address (`SENTINEL GET-MASTER-ADDR-BY-NAME`), then connect there like to any server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::io::AsyncDNSResolver;
use redis::{AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisFuture, TlsCertificates};

use crate::config::{ConfigError, RedisConfig};

/// The connections of one session with a primary.
pub(super) struct Connections {
    /// Open (stream opens), upkeep, claims, and publishes when no replica must confirm them.
    pub commands: MultiplexedConnection,
    /// `XREAD BLOCK` on the feed; nothing else, so a blocked read delays no command.
    pub feed: MultiplexedConnection,
    /// Publishes followed by `WAIT` when `min_replicas` > 0: `WAIT` blocks the connection it
    /// runs on, so it gets its own and opens never queue behind it.
    pub acknowledged: Option<MultiplexedConnection>,
}

/// Everything needed to (re)connect, built once from the configuration.
pub(super) struct Connector {
    /// User, password and db for the data nodes; with Sentinel, the address is replaced.
    server: ConnectionInfo,
    tls: Option<TlsCertificates>,
    server_name: Option<String>,
    sentinels: Vec<ConnectionInfo>,
    master_name: String,
    /// The sentinel that answered last: asked first next time.
    preferred: usize,
    connect_timeout: Duration,
    command_timeout: Duration,
    /// Replies to `XREAD BLOCK` arrive after up to this much by design.
    feed_block: Duration,
    replica_wait: Option<Duration>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector").field("sentinels", &self.sentinels.len()).field("master_name", &self.master_name).finish_non_exhaustive()
    }
}

impl Connector {
    /// Reads the secrets and certificates the configuration names and checks that they parse;
    /// nothing is connected yet. Errors name the setting, never a secret.
    pub fn new(config: &RedisConfig, feed_block: Duration) -> Result<Self, ConfigError> {
        let invalid = |m: String| ConfigError::Invalid(m);
        let mut server = config.url().into_connection_info().map_err(|e| invalid(format!("engine.url is not a Redis URL ({:?})", e.kind())))?;
        let mut settings = server.redis_settings().clone();
        if let Some(user) = &config.username {
            settings = settings.set_username(user);
        }
        if let Some(password) = config.password()? {
            settings = settings.set_password(password);
        }
        server = server.set_redis_settings(settings);
        let tls = if config.tls() {
            // One process-wide provider; a second install (another engine, a test) is a no-op.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let read = |p: &std::path::Path| std::fs::read(p).map_err(|source| ConfigError::Read { path: p.into(), source });
            let client_tls = match (&config.tls_cert_file, &config.tls_key_file) {
                (Some(cert), Some(key)) => Some(redis::ClientTlsConfig { client_cert: read(cert)?, client_key: read(key)? }),
                _ => None,
            };
            let root_cert = config.tls_ca_file.as_deref().map(read).transpose()?;
            if let (Some(pem), Some(path)) = (&root_cert, &config.tls_ca_file) {
                use rustls::pki_types::CertificateDer;
                use rustls::pki_types::pem::PemObject;
                if !CertificateDer::pem_slice_iter(pem).any(|c| c.is_ok()) {
                    return Err(invalid(format!("engine.tls_ca_file: {} holds no PEM certificate", path.display())));
                }
            }
            let certs = TlsCertificates { client_tls, root_cert };
            // Parses the PEM files now, so a bad one is a start-up error, not a reconnect loop.
            Client::build_with_tls(server.clone(), certs.clone()).map_err(|e| invalid(format!("engine TLS files: {e}")))?;
            Some(certs)
        } else {
            None
        };
        let mut sentinel_settings = redis::RedisConnectionInfo::default();
        if let Some(user) = &config.sentinel_username {
            sentinel_settings = sentinel_settings.set_username(user);
        }
        if let Some(password) = config.sentinel_password()? {
            sentinel_settings = sentinel_settings.set_password(password);
        }
        let sentinels = config
            .sentinels
            .iter()
            .map(|s| {
                let (host, port) = s.rsplit_once(':').expect("validated host:port");
                let port = port.parse().expect("validated port");
                let info = address(host, port, tls.is_some()).into_connection_info().map_err(|e| invalid(format!("engine.sentinels: {s:?} ({:?})", e.kind())))?;
                Ok(info.set_redis_settings(sentinel_settings.clone()))
            })
            .collect::<Result<_, ConfigError>>()?;
        Ok(Self {
            server,
            tls,
            server_name: config.tls_server_name.clone(),
            sentinels,
            master_name: config.master_name.clone().unwrap_or_default(),
            preferred: 0,
            connect_timeout: config.connect_timeout,
            command_timeout: config.command_timeout,
            feed_block,
            replica_wait: (config.min_replicas > 0).then_some(config.replica_timeout),
        })
    }

    /// Connects to the server, or to the primary Sentinel names now.
    pub async fn connect(&mut self) -> Result<Connections, String> {
        let info = if self.sentinels.is_empty() { self.server.clone() } else { self.discover().await? };
        let (client, resolver) = self.client(info).map_err(|e| e.to_string())?;
        let config = |response: Duration| {
            let c = AsyncConnectionConfig::new().set_connection_timeout(Some(self.connect_timeout)).set_response_timeout(Some(response));
            match &resolver {
                Some(r) => c.set_dns_resolver(r.clone()),
                None => c,
            }
        };
        let open = async |response: Duration| client.get_multiplexed_async_connection_with_config(&config(response)).await.map_err(|e| e.to_string());
        let commands = open(self.command_timeout).await?;
        let feed = open(self.feed_block + self.command_timeout).await?;
        let acknowledged = match self.replica_wait {
            Some(wait) => Some(open(self.command_timeout + wait).await?),
            None => None,
        };
        Ok(Connections { commands, feed, acknowledged })
    }

    /// A client for `info` with the TLS files, and with `tls_server_name` as the name
    /// connected to (the certificate is checked against it) while a resolver pins the real
    /// host: the one way redis-rs lets the server name differ from the address.
    fn client(&self, info: ConnectionInfo) -> redis::RedisResult<(Client, Option<PinnedHost>)> {
        let client = match &self.tls {
            Some(certs) => Client::build_with_tls(info, certs.clone())?,
            None => Client::open(info)?,
        };
        let Some(name) = &self.server_name else { return Ok((client, None)) };
        let info = client.get_connection_info().clone();
        let ConnectionAddr::TcpTls { host, port, insecure, tls_params } = info.addr().clone() else { return Ok((client, None)) };
        let renamed = info.set_addr(ConnectionAddr::TcpTls { host: name.clone(), port, insecure, tls_params });
        Ok((Client::open(renamed)?, Some(PinnedHost(Arc::from(host)))))
    }

    /// Asks the sentinels, the last one that answered first, where the primary is.
    async fn discover(&mut self) -> Result<ConnectionInfo, String> {
        let mut last_error = String::new();
        for i in 0..self.sentinels.len() {
            let at = (self.preferred + i) % self.sentinels.len();
            match self.ask(&self.sentinels[at]).await {
                Ok(Some((host, port))) => {
                    self.preferred = at;
                    return Ok(self.server.clone().set_addr(address(&host, port, self.tls.is_some())));
                }
                Ok(None) => last_error = format!("sentinel {at} does not know master {:?}", self.master_name),
                Err(e) => last_error = format!("sentinel {at}: {e}"),
            }
        }
        Err(format!("no sentinel named a primary: {last_error}"))
    }

    async fn ask(&self, sentinel: &ConnectionInfo) -> Result<Option<(String, u16)>, String> {
        let (client, resolver) = self.client(sentinel.clone()).map_err(|e| e.to_string())?;
        let mut config = AsyncConnectionConfig::new().set_connection_timeout(Some(self.connect_timeout)).set_response_timeout(Some(self.command_timeout));
        if let Some(r) = resolver {
            config = config.set_dns_resolver(r);
        }
        let mut conn = client.get_multiplexed_async_connection_with_config(&config).await.map_err(|e| e.to_string())?;
        let reply: Option<(String, String)> =
            redis::cmd("SENTINEL").arg("GET-MASTER-ADDR-BY-NAME").arg(&self.master_name).query_async(&mut conn).await.map_err(|e| e.to_string())?;
        Ok(reply.and_then(|(host, port)| Some((host, port.parse().ok()?))))
    }
}

fn address(host: &str, port: u16, tls: bool) -> ConnectionAddr {
    if tls { ConnectionAddr::TcpTls { host: host.to_owned(), port, insecure: false, tls_params: None } } else { ConnectionAddr::Tcp(host.to_owned(), port) }
}

/// Resolves whatever name is connected to as this host (see [`Connector::client`]).
#[derive(Debug, Clone)]
struct PinnedHost(Arc<str>);

impl AsyncDNSResolver for PinnedHost {
    fn resolve<'a, 'b: 'a>(&'a self, _name: &'b str, port: u16) -> RedisFuture<'a, Box<dyn Iterator<Item = SocketAddr> + Send + 'a>> {
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((&*self.0, port)).await?;
            Ok(Box::new(addrs) as Box<dyn Iterator<Item = SocketAddr> + Send>)
        })
    }
}
