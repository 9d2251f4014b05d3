//! A real PostgreSQL server for the outbox tests, initialised into a temp dir and listening on
//! a free loopback port, and the `tidings relay postgres` process. No mock: when the server's
//! binaries are missing the tests that use them fail and say how to install them.
//!
//! PostgreSQL refuses to run as root, so when the tests run as root the server runs as the
//! `postgres` user (which the Debian package creates) through `runuser`, in a directory that
//! user owns.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tidings_testkit::hub::{Listening, Output, wait_listening};
use tokio::process::{Child, Command};

/// Where Debian installs the server; `TIDINGS_PG_BIN` points elsewhere.
const PG_LIB_DIR: &str = "/usr/lib/postgresql";
const INSTALL_HINT: &str =
    "the outbox tests start their own PostgreSQL server; install it (Debian: apt-get install postgresql) or set TIDINGS_PG_BIN to the directory holding initdb and postgres";

/// A PostgreSQL server of our own.
pub struct Postgres {
    pub port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// `runuser` (as root) or the postmaster itself.
    child: Option<std::process::Child>,
}

impl Postgres {
    /// Initialises a cluster and starts the server.
    pub async fn start() -> Postgres {
        let bin = bin_dir();
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let pg = Postgres { port, dir, bin, child: None };
        std::fs::write(pg.dir.path().join("server.log"), "").unwrap();
        pg.hand_to_server_user(pg.dir.path());
        let out = pg
            .command("initdb")
            .args(["-D", &pg.data().display().to_string(), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run initdb ({e}): {INSTALL_HINT}"));
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        let mut pg = pg;
        pg.spawn().await;
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A command for one of the server's programs, run as the `postgres` user when we are root.
    fn command(&self, program: &str) -> std::process::Command {
        let path = self.bin.join(program);
        if is_root() {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            std::process::Command::new(path)
        }
    }

    fn hand_to_server_user(&self, path: &Path) {
        if is_root() {
            let out = std::process::Command::new("chown").args(["-R", "postgres:postgres"]).arg(path).output().unwrap();
            assert!(out.status.success(), "chown to postgres failed (is the postgresql package installed?): {}", String::from_utf8_lossy(&out.stderr));
        }
    }

    /// Starts the server on the existing cluster (after a kill: crash recovery) and waits
    /// until it answers. A start right after a kill can be refused while the old backends
    /// still hold the shared memory; it is tried again.
    pub async fn spawn(&mut self) {
        for _ in 0..50 {
            let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("server.log")).unwrap();
            let mut child = self
                .command("postgres")
                .args(["-D", &self.data().display().to_string(), "-p", &self.port.to_string(), "-k", &self.dir.path().display().to_string()])
                .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "track_commit_timestamp=on", "-c", "max_connections=200"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start postgres ({e}): {INSTALL_HINT}"));
            for _ in 0..300 {
                if self.client().await.is_some() {
                    self.child = Some(child);
                    return;
                }
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("postgres did not accept connections on port {}: {}", self.port, self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// A new connection, or None while the server is not answering.
    pub async fn client(&self) -> Option<tokio_postgres::Client> {
        let (client, connection) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls).await.ok()?;
        tokio::spawn(connection);
        client.simple_query("SELECT 1").await.ok()?;
        Some(client)
    }

    /// Kills the server as a crash would (SIGKILL to the postmaster; its backends follow).
    pub async fn kill(&mut self) {
        if let Some(pid) = std::fs::read_to_string(self.data().join("postmaster.pid")).ok().and_then(|s| s.lines().next().map(str::to_owned)) {
            let _ = std::process::Command::new("kill").args(["-KILL", &pid]).status();
            for _ in 0..200 {
                if !Path::new(&format!("/proc/{pid}")).exists() || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z ")) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub async fn restart(&mut self) {
        self.kill().await;
        self.spawn().await;
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(pid) = std::fs::read_to_string(self.data().join("postmaster.pid")).ok().and_then(|s| s.lines().next().map(str::to_owned)) {
            let _ = std::process::Command::new("kill").args(["-KILL", &pid]).status();
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn is_root() -> bool {
    std::process::Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// The directory holding `initdb` and `postgres`: `TIDINGS_PG_BIN`, or the newest version
/// under `/usr/lib/postgresql`.
fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("TIDINGS_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(PG_LIB_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin): &(u32, PathBuf)| bin.join("initdb").exists() && bin.join("postgres").exists())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).unwrap_or_else(|| panic!("no PostgreSQL server under {PG_LIB_DIR}: {INSTALL_HINT}"))
}

/// A running `tidings relay postgres`; killed on drop.
pub struct Relay {
    pub child: Child,
    /// Its metrics and readiness address.
    pub addr: String,
    pub output: Output,
    args: Vec<String>,
}

impl Relay {
    /// Starts a relay of the default table (creating the schema) with `extra` flags.
    pub async fn start(database_url: &str, hub_url: &str, publisher_key: &str, extra: &[&str]) -> Relay {
        let mut args: Vec<String> = ["relay", "postgres", "--database-url", database_url, "--url", hub_url, "--key", publisher_key]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(["--create-schema", "--poll-interval", "200ms", "--listen", "127.0.0.1:0"].map(String::from));
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::launch(args).await
    }

    async fn launch(args: Vec<String>) -> Relay {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tidings"))
            .args(&args)
            .env("TIDINGS_LOG", "info,tidings_relay=debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn tidings relay");
        let Listening { addr, output } = wait_listening(&mut child, Duration::from_secs(30)).await.unwrap_or_else(|e| panic!("relay did not start: {e}"));
        Relay { child, addr, output, args }
    }

    /// SIGKILLs the relay and starts another with the same flags.
    pub async fn restart(&mut self) {
        self.kill().await;
        *self = Self::launch(self.args.clone()).await;
    }

    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    pub fn logs(&self) -> String {
        self.output.lock().unwrap().join("\n")
    }

    pub async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(format!("http://{}/metrics", self.addr)).await.unwrap().text().await.unwrap();
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The `/readyz` answer: status and body.
    pub async fn readyz(&self) -> (u16, serde_json::Value) {
        let r = reqwest::get(format!("http://{}/readyz", self.addr)).await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or_default())
    }

    /// Waits until the relay reports `role` ("active" or "standby") and ready.
    pub async fn wait_role(&self, role: &str) {
        for _ in 0..400 {
            let (status, body) = self.readyz().await;
            if status == 200 && body["role"] == role {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("relay never became a ready {role}: {:?}\n{}", self.readyz().await, self.logs());
    }
}
