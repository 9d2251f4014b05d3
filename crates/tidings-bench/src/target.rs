//! The hubs under test: started, restarted and stopped by the harness itself, so it knows
//! their processes, plus an adapter for each one's subscribe and publish APIs.
//!
//! The peer configurations are the files under `crates/tidings-bench/peers/`, compiled in
//! and filled in here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use crate::identity::{self, Identity, Introspection};
use crate::procfs;
use crate::wire;

const TIDINGS_CONF: &str = include_str!("../peers/tidings/hub.toml");
const NCHAN_CONF: &str = include_str!("../peers/nchan/nginx.conf");
const PUSHPIN_CONF: &str = include_str!("../peers/pushpin/pushpin.conf");
const PUSHPIN_ROUTES: &str = include_str!("../peers/pushpin/routes");
/// Longest wait for a target's RSS to stop falling: allocators give freed pages back on their
/// own schedule (the hub's glibc build trims every 2 s, jemalloc decays them over 10 s by
/// default, mimalloc purges on later calls), and a read at a fixed moment would catch some of
/// them half-way.
const RETURN_WAIT_MAX: Duration = Duration::from_secs(15);
/// The RSS is taken as settled once it has not fallen by [`RETURN_STEP_MIN_KIB`] for this long.
const RETURN_QUIET: Duration = Duration::from_secs(3);
/// A fall smaller than this (the hub's own upkeep moves its RSS by a few pages) is not a return.
const RETURN_STEP_MIN_KIB: u64 = 256;

/// The publisher key the generated Tidings configuration accepts.
pub const PUBLISHER_KEY: &str = "bench-publisher-key-0123456789";

/// Which hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Tidings,
    Nchan,
    Pushpin,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Tidings => "tidings",
            Kind::Nchan => "nchan",
            Kind::Pushpin => "pushpin",
        }
    }
}

/// Where and how to open a stream: all a load-generating process needs to know.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Endpoint {
    pub kind: Kind,
    pub addr: SocketAddr,
    /// How Tidings streams authenticate.
    #[serde(default)]
    pub identity: Identity,
    /// Expiry (Unix seconds) of the JWTs the streams present.
    #[serde(default)]
    pub exp: u64,
}

impl Endpoint {
    pub fn account(&self, n: usize) -> String {
        format!("a{n}")
    }

    /// The credential of stream `idx` (Tidings; one session per stream).
    pub fn token(&self, idx: usize, account: &str) -> String {
        match self.identity {
            Identity::Jwt => identity::jwt(idx, account, self.exp),
            Identity::Static | Identity::Introspection => identity::opaque(idx),
        }
    }

    /// The HTTP/1.1 request that opens stream `idx`.
    pub fn subscribe_request(&self, idx: usize, account: &str, last_event_id: &str) -> String {
        let resume = if last_event_id.is_empty() { String::new() } else { format!("Last-Event-ID: {last_event_id}\r\n") };
        let (path, auth) = match self.kind {
            Kind::Tidings => ("/events/stream".to_owned(), format!("Authorization: Bearer {}\r\n", self.token(idx, account))),
            Kind::Nchan | Kind::Pushpin => (format!("/sub/{account}"), String::new()),
        };
        format!("GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n{auth}{resume}\r\n", self.addr)
    }
}

/// What a target is started with.
#[derive(Debug, Clone)]
pub struct TargetOptions {
    /// The `tidings` binary serving the hub.
    pub tidings_bin: PathBuf,
    /// Streams the generated Tidings tokens file must cover.
    pub max_streams: usize,
    /// Accounts the streams are spread over.
    pub accounts: usize,
    /// Tidings: the durable (SQLite) engine instead of the in-memory one.
    pub durable: bool,
    /// Tidings: how streams authenticate.
    pub identity: Identity,
    /// Tidings: the Redis engine on these servers (`redis://…`), sharing them with other
    /// nodes; more than one are the engine's shards. Empty: not the Redis engine.
    pub redis_urls: Vec<String>,
    /// File descriptors a peer may open (nginx `worker_rlimit_nofile`).
    pub nofile: u64,
    /// Tidings: lines added to the `[history]` table (e.g. `max_age = "3s"`).
    pub history: String,
}

/// A running target.
#[derive(Debug)]
pub struct Target {
    pub kind: Kind,
    pub endpoint: Endpoint,
    /// Engine or storage that holds messages between publish and delivery.
    pub engine: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
    command: Vec<String>,
    publish_url: String,
    /// The port that must accept before the target counts as ready to publish to.
    control: SocketAddr,
    /// Pushpin's GRIP backend; lives as long as the target.
    _grip: Option<crate::grip::Backend>,
    /// Tidings with introspection: the host application's endpoint; lives as long as the target.
    _introspection: Option<Introspection>,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn fill(template: &str, vars: &[(&str, String)]) -> String {
    let mut out = template.to_owned();
    for (k, v) in vars {
        out = out.replace(&format!("{{{{{k}}}}}"), v);
    }
    out
}

/// The `[engine]` table of the Redis engine on `urls`: one server is `url = …`; several are
/// one `[[engine.shards]]` table each, every other setting shared.
fn redis_engine(urls: &[String]) -> String {
    let mut out = "[engine]\nkind = \"redis\"\n".to_owned();
    if let [url] = urls {
        out.push_str(&format!("url = \"{url}\"\nkey_prefix = \"bench:\"\n"));
        return out;
    }
    out.push_str("key_prefix = \"bench:\"\n");
    for url in urls {
        out.push_str(&format!("\n[[engine.shards]]\nurl = \"{url}\"\n"));
    }
    out
}

/// The nchan module as Debian installs it.
fn nchan_module() -> Result<String> {
    for p in ["/usr/lib/nginx/modules/ngx_nchan_module.so", "/usr/share/nginx/modules/ngx_nchan_module.so"] {
        if Path::new(p).exists() {
            return Ok(p.into());
        }
    }
    bail!("ngx_nchan_module.so not found; install libnginx-mod-nchan")
}

impl Target {
    /// Writes the configuration into a new directory, starts the target and waits until it
    /// accepts streams and publishes.
    pub async fn start(kind: Kind, opts: &TargetOptions) -> Result<Self> {
        // BENCH_KEEP_DIRS=1 leaves the generated configuration and logs behind for a look.
        let keep = std::env::var_os("BENCH_KEEP_DIRS").is_some();
        let dir = tempfile::Builder::new().prefix(&format!("tidings-bench-{}-", kind.name())).disable_cleanup(keep).tempdir()?;
        let d = dir.path().display().to_string();
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut grip = None;
        let mut introspection = None;
        let exp = identity::expiry_from_now();
        let (command, publish_url, control, engine) = match kind {
            Kind::Tidings => {
                let engine = match (opts.redis_urls.is_empty(), opts.durable) {
                    (false, _) => redis_engine(&opts.redis_urls),
                    (true, true) => "[engine]\nkind = \"durable\"\ndata_dir = \"data\"\nfsync = \"never\"\n".to_owned(),
                    (true, false) => "[engine]\nkind = \"memory\"\n".to_owned(),
                };
                if opts.identity == Identity::Introspection {
                    introspection = Some(Introspection::start(opts.accounts, exp).await?);
                }
                let auth = identity::hub_section(opts.identity, introspection.as_ref().map(|i| i.addr));
                let conf = fill(TIDINGS_CONF, &[("PORT", port.to_string()), ("PUBLISHER_KEY", PUBLISHER_KEY.into()), ("ENGINE", engine), ("IDENTITY", auth), ("HISTORY", opts.history.clone())]);
                std::fs::write(dir.path().join("hub.toml"), conf)?;
                if opts.identity == Identity::Static {
                    let mut tokens = String::with_capacity(opts.max_streams * 100);
                    for i in 0..opts.max_streams {
                        // Half the streams hold each grant (the audience scenario's split).
                        let grant = if i % 2 == 0 { crate::scenario::GRANT_EVEN } else { crate::scenario::GRANT_ODD };
                        tokens.push_str(&format!(
                            "[[tokens]]\ntoken = \"{}\"\naccount = \"a{}\"\nuser = \"u{i}\"\nsession = \"s{i}\"\ngrants = [\"{grant}\"]\n",
                            identity::opaque(i),
                            i % opts.accounts.max(1)
                        ));
                    }
                    std::fs::write(dir.path().join("tokens.toml"), tokens)?;
                }
                let bin = opts.tidings_bin.display().to_string();
                let cmd = vec![bin, "serve".into(), "--log".into(), "warn".into(), "--config".into(), format!("{d}/hub.toml")];
                let engine = match (opts.redis_urls.len(), opts.durable) {
                    (0, true) => "durable (SQLite, fsync never)".to_owned(),
                    (0, false) => "memory".to_owned(),
                    (1, _) => "redis".to_owned(),
                    (n, _) => format!("redis, {n} shards"),
                };
                (cmd, format!("http://{addr}/events"), addr, engine)
            }
            Kind::Nchan => {
                for t in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
                    std::fs::create_dir_all(dir.path().join("tmp").join(t))?;
                }
                let conf = fill(NCHAN_CONF, &[("DIR", d.clone()), ("MODULE", nchan_module()?), ("PORT", port.to_string()), ("NOFILE", opts.nofile.to_string())]);
                std::fs::write(dir.path().join("nginx.conf"), conf)?;
                let cmd = vec!["nginx".into(), "-p".into(), d.clone(), "-c".into(), format!("{d}/nginx.conf"), "-e".into(), format!("{d}/error.log")];
                (cmd, format!("http://{addr}/pub/"), addr, "memory (nchan message buffer)".to_owned())
            }
            Kind::Pushpin => {
                let backend = crate::grip::Backend::start().await?;
                let control_port = free_port()?;
                let conf = fill(
                    PUSHPIN_CONF,
                    &[
                        ("DIR", d.clone()),
                        ("PORT", port.to_string()),
                        ("CONTROL_PORT", control_port.to_string()),
                        ("PUSH_PORT", free_port()?.to_string()),
                        ("SUB_PORT", free_port()?.to_string()),
                        ("COMMAND_PORT", free_port()?.to_string()),
                    ],
                );
                std::fs::write(dir.path().join("pushpin.conf"), conf)?;
                std::fs::write(dir.path().join("routes"), fill(PUSHPIN_ROUTES, &[("BACKEND_PORT", backend.addr.port().to_string())]))?;
                std::fs::create_dir_all(dir.path().join("run"))?;
                std::fs::create_dir_all(dir.path().join("log"))?;
                grip = Some(backend);
                let cmd = vec!["pushpin".into(), "--config".into(), format!("{d}/pushpin.conf")];
                let control = SocketAddr::from(([127, 0, 0, 1], control_port));
                (cmd, format!("http://{control}/publish/"), control, "none (no history)".to_owned())
            }
        };
        let mut target = Target { kind, endpoint: Endpoint { kind, addr, identity: opts.identity, exp }, engine, dir, child: None, command, publish_url, control, _grip: grip, _introspection: introspection };
        target.spawn().await?;
        Ok(target)
    }

    async fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("target.log"))?;
        let child = Command::new(&self.command[0])
            .args(&self.command[1..])
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.command.join(" ")))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("{} exited at start ({status}); log: {}", self.kind.name(), self.log_tail());
            }
            let a = tokio::net::TcpStream::connect(self.endpoint.addr).await.is_ok();
            let b = tokio::net::TcpStream::connect(self.control).await.is_ok();
            if a && b {
                break;
            }
            if Instant::now() > deadline {
                bail!("{} did not start listening within 30 s; log: {}", self.kind.name(), self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Pushpin's proxy and handler come up after condure accepts: give them a moment.
        if self.kind == Kind::Pushpin {
            tokio::time::sleep(Duration::from_millis(1_500)).await;
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("target.log")).unwrap_or_default();
        let err = std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default();
        let all = format!("{text}{err}");
        all.chars().rev().take(1500).collect::<Vec<_>>().into_iter().rev().collect()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Summed resident memory of the target's processes (the GRIP backend, which runs in the
    /// harness, is not one of them), in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.pid().map(|p| procfs::tree_rss_kib(p, &[])).unwrap_or(0)
    }

    /// The target's RSS once it has stopped falling (see [`RETURN_WAIT_MAX`]), in KiB.
    pub async fn settled_rss_kib(&self) -> u64 {
        let started = Instant::now();
        let mut low = self.rss_kib();
        let mut last_fall = Instant::now();
        while started.elapsed() < RETURN_WAIT_MAX && last_fall.elapsed() < RETURN_QUIET {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let rss = self.rss_kib();
            if rss + RETURN_STEP_MIN_KIB <= low {
                low = rss;
                last_fall = Instant::now();
            }
        }
        self.rss_kib()
    }

    /// CPU seconds used so far by the target's processes.
    pub fn cpu_secs(&self) -> f64 {
        self.pid().map(procfs::tree_cpu_secs).unwrap_or(0.0)
    }

    /// Names of the target's processes.
    pub fn processes(&self) -> Vec<String> {
        self.pid().map(procfs::tree_names).unwrap_or_default()
    }

    /// SIGTERM, then waits for the process tree to exit (SIGKILL after 15 s).
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let pids = procfs::tree(child.id());
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if child.try_wait().ok().flatten().is_some() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Children of a runner (pushpin's condure, zurl, ...) may outlive it by a moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        while pids.iter().any(|p| Path::new(&format!("/proc/{p}")).exists() && procfs::rss_kib(*p).is_some()) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops and starts the target with the same configuration; returns how long it took
    /// until it accepted connections again.
    pub async fn restart(&mut self) -> Result<Duration> {
        let t0 = Instant::now();
        self.stop().await;
        self.spawn().await?;
        Ok(t0.elapsed())
    }

    /// How to publish to this target.
    pub fn publish_api(&self) -> PublishApi {
        PublishApi { kind: self.kind, url: self.publish_url.clone(), audience: None }
    }

    /// Directory holding the generated configuration and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// A target's publish API; usable from any runtime with a client made there.
#[derive(Debug, Clone)]
pub struct PublishApi {
    pub kind: Kind,
    url: String,
    /// Tidings: every event is addressed to the streams holding this grant.
    audience: Option<String>,
}

impl PublishApi {
    /// Every event published through it carries `"audience": [grant]` (Tidings only).
    pub fn with_audience(mut self, grant: &str) -> Self {
        self.audience = Some(grant.to_owned());
        self
    }

    /// A client suited to publishing (keep-alive, bounded waits).
    pub fn client() -> reqwest::Client {
        reqwest::Client::builder().pool_max_idle_per_host(256).timeout(Duration::from_secs(10)).build().expect("static client config")
    }

    /// Publishes one event per `(account, seq)`; each carries the bench marker with the time
    /// it was sent. Returns, per event, `None` when it was accepted or the failure (status or
    /// error kind).
    pub async fn publish(&self, http: &reqwest::Client, events: &[(usize, u64)]) -> Vec<Option<String>> {
        let all = |r: std::result::Result<(), String>| vec![r.err(); events.len()];
        match self.kind {
            Kind::Tidings => {
                let ts = wire::now_ns();
                let items: Vec<serde_json::Value> = events
                    .iter()
                    .map(|(a, seq)| {
                        let mut item = serde_json::json!({
                            "account": format!("a{a}"),
                            "data": {
                                "activity_type": "edited",
                                "resource": {"type": "bench", "name": "b"},
                                "description": "bench event",
                                "metadata": {"id": seq, "bench": format!("{seq}:{ts}")}
                            }
                        });
                        if let Some(grant) = &self.audience {
                            item["audience"] = serde_json::json!([grant]);
                        }
                        item
                    })
                    .collect();
                let body = serde_json::to_vec(&items).unwrap_or_default();
                all(post(http, &self.url, body, Some(PUBLISHER_KEY)).await)
            }
            Kind::Pushpin => {
                let ts = wire::now_ns();
                let items: Vec<serde_json::Value> = events
                    .iter()
                    .map(|(a, seq)| {
                        let content = format!("id: {seq}\ndata: {{{}}}\n\n", wire::marker(*seq, ts));
                        serde_json::json!({"channel": format!("a{a}"), "formats": {"http-stream": {"content": content}}})
                    })
                    .collect();
                let body = serde_json::to_vec(&serde_json::json!({ "items": items })).unwrap_or_default();
                all(post(http, &self.url, body, None).await)
            }
            Kind::Nchan => {
                // One message per request; events of one account go in order, accounts in
                // parallel.
                let mut by_account: std::collections::BTreeMap<usize, Vec<(usize, u64)>> = Default::default();
                for (i, (a, seq)) in events.iter().enumerate() {
                    by_account.entry(*a).or_default().push((i, *seq));
                }
                let mut set = tokio::task::JoinSet::new();
                for (a, seqs) in by_account {
                    let http = http.clone();
                    let url = format!("{}a{a}", self.url);
                    set.spawn(async move {
                        let mut out = Vec::with_capacity(seqs.len());
                        for (i, seq) in seqs {
                            let body = format!("{{{}}}", wire::marker(seq, wire::now_ns()));
                            out.push((i, post(&http, &url, body.into_bytes(), None).await.err()));
                        }
                        out
                    });
                }
                let mut result = vec![Some("lost task".to_owned()); events.len()];
                while let Some(r) = set.join_next().await {
                    for (i, r) in r.unwrap_or_default() {
                        result[i] = r;
                    }
                }
                result
            }
        }
    }
}

async fn post(http: &reqwest::Client, url: &str, body: Vec<u8>, bearer: Option<&str>) -> std::result::Result<(), String> {
    let mut req = http.post(url).header("Content-Type", "application/json").body(body);
    if let Some(key) = bearer {
        req = req.bearer_auth(key);
    }
    let resp = req.send().await.map_err(|e| if e.is_connect() { "connect".to_owned() } else if e.is_timeout() { "timeout".to_owned() } else { "io".to_owned() })?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(resp.status().as_u16().to_string())
    }
}

/// Version strings of the peers as installed, for the report.
pub fn versions(tidings_bin: &Path) -> Vec<(String, String)> {
    let run = |cmd: &str, args: &[&str]| -> String {
        Command::new(cmd)
            .args(args)
            .output()
            .map(|o| format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)).lines().next().unwrap_or("").trim().to_owned())
            .unwrap_or_else(|_| "not installed".into())
    };
    let dpkg = |pkg: &str| run("dpkg-query", &["-W", "-f=${Version}", pkg]);
    vec![
        ("tidings".into(), run(&tidings_bin.display().to_string(), &["--version"])),
        ("nginx".into(), dpkg("nginx")),
        ("libnginx-mod-nchan".into(), dpkg("libnginx-mod-nchan")),
        ("pushpin".into(), dpkg("pushpin")),
        ("condure".into(), dpkg("condure")),
        ("zurl".into(), dpkg("zurl")),
    ]
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }
}

/// Fails unless every `kind` can be started here.
pub fn check_installed(kinds: &[Kind]) -> Result<()> {
    for k in kinds {
        let bin = match k {
            Kind::Tidings => continue,
            Kind::Nchan => {
                nchan_module()?;
                "nginx"
            }
            Kind::Pushpin => "pushpin",
        };
        if Command::new("which").arg(bin).stdout(Stdio::null()).status().map(|s| !s.success()).unwrap_or(true) {
            return Err(anyhow!("{bin} is not installed (bench/run.sh installs it)"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_redis_is_a_url_and_several_are_shard_tables() {
        let one = redis_engine(&["redis://127.0.0.1:7000".into()]);
        assert_eq!(one, "[engine]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:7000\"\nkey_prefix = \"bench:\"\n");
        let two = redis_engine(&["redis://127.0.0.1:7000".into(), "redis://127.0.0.1:7001".into()]);
        assert_eq!(
            two,
            "[engine]\nkind = \"redis\"\nkey_prefix = \"bench:\"\n\n[[engine.shards]]\nurl = \"redis://127.0.0.1:7000\"\n\n[[engine.shards]]\nurl = \"redis://127.0.0.1:7001\"\n"
        );
    }
}
