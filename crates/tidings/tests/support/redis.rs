//! A real `redis-server` for the Redis engine tests, on a free port in a temp dir. No mock: if
//! `redis-server` is missing the tests that use it fail and say so.
//!
//! [`Transport::Tls`] serves the hub over TLS only (`rediss://`, certificates made here with
//! `openssl`, client certificates required) as the ACL user [`ACL_USER`], who may run only
//! what the engine needs ([`ACL_RULE`], the rule docs/redis.md documents). The test itself
//! keeps a plaintext port on loopback, as the `default` user, for FLUSHALL and the like.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

/// How the hub reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `redis://`, no user.
    Plain,
    /// `rediss://` with a CA file, a client certificate and the ACL user's password in a file.
    Tls,
}

/// The engine's ACL user in TLS mode.
pub const ACL_USER: &str = "tidings";
/// Its password (written to a file the hub config names; never in the URL).
pub const ACL_PASSWORD: &str = "s3cret-redis-pass-9c1f";
/// Everything the engine runs, on its keys only (`~t:*`, the tests' `key_prefix`), and no
/// channels. Scripts are checked command by command, so the commands they call are listed too.
pub const ACL_RULE: &str = "resetkeys ~t:* resetchannels -@all +evalsha +eval +script|load +xread +wait +info +get +set +del +incrby \
     +xadd +xrange +xrevrange +xlen +xtrim +hget +hset +hincrby +hdel +zadd +zrem +zrangebyscore +zscore +zremrangebyscore +pexpire";

/// A `redis-server` of our own, without persistence (a restart wipes it, like a cache node).
pub struct Redis {
    /// The port the hub uses (the TLS port in TLS mode).
    pub port: u16,
    /// Plaintext port for the test's own commands (the same as `port` in plain mode).
    pub admin_port: u16,
    pub transport: Transport,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Append-only file with fsync on every write: a restart keeps everything acknowledged.
    durable: bool,
    /// Extra `redis-server` arguments (replication).
    extra: Vec<String>,
}

impl Redis {
    pub async fn start() -> Redis {
        Self::start_on(Transport::Plain).await
    }

    pub async fn start_on(transport: Transport) -> Redis {
        Self::start_full(transport, false, Vec::new()).await
    }

    pub async fn start_with(durable: bool) -> Redis {
        Self::start_full(Transport::Plain, durable, Vec::new()).await
    }

    pub async fn start_durable(transport: Transport) -> Redis {
        Self::start_full(transport, true, Vec::new()).await
    }

    /// A server with extra arguments, e.g. `["--replicaof", "127.0.0.1", "6379"]`.
    pub async fn start_full(transport: Transport, durable: bool, extra: Vec<String>) -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let admin_port = free_port();
        let port = if transport == Transport::Tls {
            tidings_testkit::tls::make_certificates(dir.path());
            std::fs::write(dir.path().join("redis-password"), format!("{ACL_PASSWORD}\n")).unwrap();
            free_port()
        } else {
            admin_port
        };
        let mut r = Redis { port, admin_port, transport, dir, child: None, durable, extra };
        r.spawn().await;
        r
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub async fn spawn(&mut self) {
        let aof: &[&str] = if self.durable { &["--appendonly", "yes", "--appendfsync", "always"] } else { &["--appendonly", "no"] };
        let mut command = Command::new("redis-server");
        command.args(["--port", &self.admin_port.to_string(), "--bind", "127.0.0.1", "--save", ""]).args(aof).args(&self.extra);
        if self.transport == Transport::Tls {
            let d = self.dir.path();
            let file = |name: &str| d.join(name).display().to_string();
            command
                .args(["--tls-port", &self.port.to_string()])
                .args(["--tls-cert-file", &file("server.crt"), "--tls-key-file", &file("server.key"), "--tls-ca-cert-file", &file("ca.crt")])
                .args(["--tls-auth-clients", "yes"])
                // One argument per ACL word: redis-server quotes each argument as one token.
                .args(["--user", ACL_USER, "on", &format!(">{ACL_PASSWORD}")])
                .args(ACL_RULE.split_whitespace());
        }
        let child = command
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}): the Redis engine tests need a real Redis server; install it (Debian: apt-get install redis-server)")
            });
        self.child = Some(child);
        for _ in 0..100 {
            if self.command("PING").await.is_some_and(|r| r.starts_with("+PONG")) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("redis-server did not answer PING on port {}", self.admin_port);
    }

    /// Kills the server (as a crash would) and starts a new, empty one on the same port.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.spawn().await;
    }

    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().await.unwrap();
        }
    }

    pub fn set_extra(&mut self, extra: Vec<String>) {
        self.extra = extra;
    }

    /// Sends one inline command on the plaintext port; returns the raw reply, or None when the
    /// server is not there.
    pub async fn command(&self, cmd: &str) -> Option<String> {
        inline_command(self.admin_port, cmd).await
    }

    /// The `[engine]` table for this server: plaintext, or TLS with the CA, a client
    /// certificate and the ACL user (password from a file).
    pub fn engine_toml(&self) -> String {
        match self.transport {
            Transport::Plain => format!("[engine]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:{}\"\nkey_prefix = \"t:\"\n", self.port),
            Transport::Tls => {
                let file = |name: &str| toml_path(&self.dir.path().join(name));
                format!(
                    "[engine]\nkind = \"redis\"\nurl = \"rediss://127.0.0.1:{}\"\nkey_prefix = \"t:\"\nusername = \"{ACL_USER}\"\npassword_file = {}\ntls_ca_file = {}\ntls_cert_file = {}\ntls_key_file = {}\n",
                    self.port,
                    file("redis-password"),
                    file("ca.crt"),
                    file("client.crt"),
                    file("client.key"),
                )
            }
        }
    }
}

/// Where ports of servers started by tests are chosen: below the kernel's ephemeral range
/// (32768 and up by default), which every outgoing connection of the tests running in
/// parallel draws from. A server that a test stops and starts again keeps its port (the hub's
/// configuration names it); a port the kernel picked could meanwhile be handed to another
/// test's connection or server, and the restart would fail.
const SERVER_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A port nothing listens on, reserved for this test process: each test process runs in its
/// own process, so the reservation is a file named after the port in a shared directory,
/// holding the reserving process's id (a file whose process has ended is taken over).
pub fn free_port() -> u16 {
    let dir = std::env::temp_dir().join("tidings-test-ports");
    std::fs::create_dir_all(&dir).unwrap();
    let me = std::process::id();
    for _ in 0..1_000 {
        let port = rand::random_range(SERVER_PORTS);
        let marker = dir.join(port.to_string());
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&marker) {
            Ok(mut file) => std::io::Write::write_all(&mut file, me.to_string().as_bytes()).unwrap(),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                // Only a file naming a process that has ended is taken over; an empty one is
                // being written by its owner right now.
                let holder = std::fs::read_to_string(&marker).ok().and_then(|t| t.trim().parse::<u32>().ok());
                if holder.is_some_and(|pid| pid != me && !Path::new(&format!("/proc/{pid}")).exists()) {
                    let _ = std::fs::remove_file(&marker);
                }
                continue;
            }
            Err(e) => panic!("cannot reserve a port in {}: {e}", dir.display()),
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {SERVER_PORTS:?} after 1,000 tries");
}

/// One inline command to a plaintext port on loopback.
pub async fn inline_command(port: u16, cmd: &str) -> Option<String> {
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    sock.write_all(format!("{cmd}\r\n").as_bytes()).await.ok()?;
    let mut buf = [0u8; 4096];
    let n = sock.read(&mut buf).await.ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

pub fn toml_path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// The servers of one Redis engine: one (the engine without `shards`, configured exactly as
/// before sharding existed) or several, one per `[[engine.shards]]` entry, in order.
pub struct RedisShards {
    pub servers: Vec<Redis>,
}

impl RedisShards {
    /// `count` servers of this transport, started side by side. Several only in plain mode:
    /// each TLS server makes its own CA, and the shards share `tls_ca_file`.
    pub async fn start(transport: Transport, count: usize) -> RedisShards {
        Self::start_full(transport, false, count).await
    }

    /// Like [`RedisShards::start`], with servers that keep what they acknowledged across a
    /// restart (see [`Redis::start_durable`]).
    pub async fn start_durable(transport: Transport, count: usize) -> RedisShards {
        Self::start_full(transport, true, count).await
    }

    async fn start_full(transport: Transport, durable: bool, count: usize) -> RedisShards {
        assert!(count == 1 || transport == Transport::Plain, "sharded test sets are plaintext");
        let servers = futures_util::future::join_all((0..count).map(|_| Redis::start_full(transport, durable, Vec::new()))).await;
        RedisShards { servers }
    }

}

/// Servers a hub can be configured on: one [`Redis`] or a [`RedisShards`] set.
pub trait EngineServers {
    /// The config tables of a hub on these servers, with `tables` (more `[engine]` keys, then
    /// other tables) in between: `[engine]`, `tables`, then any `[[engine.shards]]` entries,
    /// which must come last so that `tables`' keys stay `[engine]`'s.
    fn toml(&self, tables: &str) -> String;
}

impl EngineServers for Redis {
    fn toml(&self, tables: &str) -> String {
        format!("{}{tables}", self.engine_toml())
    }
}

impl EngineServers for RedisShards {
    fn toml(&self, tables: &str) -> String {
        if self.servers.len() == 1 {
            return format!("{}{tables}", self.servers[0].engine_toml());
        }
        // The shared settings of the first server's table, less its url.
        let head: String = self.servers[0].engine_toml().lines().filter(|l| !l.starts_with("url =")).map(|l| format!("{l}\n")).collect();
        let shards: String = self
            .servers
            .iter()
            .map(|r| {
                let url = r.engine_toml().lines().find(|l| l.starts_with("url =")).expect("a url").to_owned();
                format!("[[engine.shards]]\n{url}\n")
            })
            .collect();
        format!("{head}{tables}{shards}")
    }
}

impl RedisShards {
    /// The server holding `account` (the engine's documented hash: FNV-1a 64 mod count).
    pub fn holding(&self, account: &str) -> &Redis {
        &self.servers[shard_of(account, self.servers.len())]
    }

    pub fn holding_mut(&mut self, account: &str) -> &mut Redis {
        let i = shard_of(account, self.servers.len());
        &mut self.servers[i]
    }

    pub async fn kill(&mut self) {
        for r in &mut self.servers {
            r.kill().await;
        }
    }

    pub async fn spawn(&mut self) {
        for r in &mut self.servers {
            r.spawn().await;
        }
    }

    pub async fn restart(&mut self) {
        for r in &mut self.servers {
            r.restart().await;
        }
    }

    /// Runs `cmd` on every server; the replies in order.
    pub async fn command_all(&self, cmd: &str) -> Vec<Option<String>> {
        let mut replies = Vec::new();
        for r in &self.servers {
            replies.push(r.command(cmd).await);
        }
        replies
    }
}

/// The shard of `account` among `count`, as docs/redis.md documents it: FNV-1a (64 bits) of the
/// name's bytes, modulo the count. Written out here so the tests check the documented rule.
pub fn shard_of(account: &str, count: usize) -> usize {
    let hash = account.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3));
    (hash % count as u64) as usize
}
