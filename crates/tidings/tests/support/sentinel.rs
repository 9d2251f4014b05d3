//! A replicated Redis behind Sentinel, for real: a primary and a replica (Debian's
//! `redis-server`, without persistence) and three sentinels (Debian's `redis-sentinel`,
//! quorum 2), all on loopback on free ports, in temp dirs. The test kills the primary with
//! SIGKILL, waits for the sentinels to promote the replica, and brings the old primary back as
//! a replica of the new one, as an operator (or an orchestrator) would.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::time::Instant;

use super::redis::{Redis, Transport, free_port, inline_command};

/// The name the sentinels monitor the primary under.
pub const MASTER_NAME: &str = "tidings";
/// How long a sentinel waits before it considers an unanswering primary down.
const DOWN_AFTER: Duration = Duration::from_millis(1000);

pub struct SentinelSet {
    /// The two data servers; `primary` indexes the current primary.
    pub servers: [Redis; 2],
    pub primary: usize,
    sentinels: Vec<(u16, Child, tempfile::TempDir)>,
}

impl SentinelSet {
    pub async fn start() -> SentinelSet {
        let primary = Redis::start_on(Transport::Plain).await;
        let replica = Redis::start_full(Transport::Plain, false, replica_of(primary.port)).await;
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            sentinels.push(start_sentinel(primary.port).await);
        }
        let mut set = SentinelSet { servers: [primary, replica], primary: 0, sentinels };
        set.wait_settled().await;
        set
    }

    /// `host:port` of every sentinel, for `[engine] sentinels`.
    pub fn addresses(&self) -> Vec<String> {
        self.sentinels.iter().map(|(port, _, _)| format!("127.0.0.1:{port}")).collect()
    }

    /// The `[engine]` table of a hub that finds the primary through these sentinels.
    pub fn engine_toml(&self, extra: &str) -> String {
        let list: Vec<String> = self.addresses().iter().map(|a| format!("\"{a}\"")).collect();
        format!("[engine]\nkind = \"redis\"\nkey_prefix = \"t:\"\nsentinels = [{}]\nmaster_name = \"{MASTER_NAME}\"\n{extra}", list.join(", "))
    }

    /// The port of the primary according to the first sentinel that answers.
    pub async fn primary_port_by_sentinel(&self) -> Option<u16> {
        for (port, _, _) in &self.sentinels {
            let Some(reply) = inline_command(*port, &format!("SENTINEL get-master-addr-by-name {MASTER_NAME}")).await else { continue };
            if let Some(p) = reply.lines().nth(4).and_then(|l| l.trim().parse().ok()) {
                return Some(p);
            }
        }
        None
    }

    /// Waits until every sentinel knows the replica and two other sentinels, so that a
    /// failover can be agreed on, and the replica follows the primary. The primary is the one
    /// the sentinels name: on a starved machine they may fail over on their own (a primary
    /// that did not answer within [`DOWN_AFTER`]), and the set follows them as a hub does.
    async fn wait_settled(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        'poll: loop {
            if Instant::now() >= deadline {
                let mut seen = Vec::new();
                for (port, _, _) in &self.sentinels {
                    let master = inline_command(*port, &format!("SENTINEL master {MASTER_NAME}")).await.unwrap_or_default();
                    seen.push(format!("{port}: {}", master.lines().map(str::trim_end).collect::<Vec<_>>().join(" ")));
                }
                let replication = self.servers[1 - self.primary].command("INFO replication").await.unwrap_or_default();
                panic!("the sentinels did not discover each other and the replica within 60 s:\n{}\nreplica: {replication}", seen.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            for (port, _, _) in &self.sentinels {
                let master = inline_command(*port, &format!("SENTINEL master {MASTER_NAME}")).await.unwrap_or_default();
                let field = |name: &str| -> Option<u32> {
                    let lines: Vec<&str> = master.lines().collect();
                    let i = lines.iter().position(|l| *l == name)?;
                    lines.get(i + 2)?.trim().parse().ok()
                };
                if field("num-slaves") != Some(1) || field("num-other-sentinels") != Some(2) {
                    continue 'poll;
                }
            }
            let Some(named) = self.primary_port_by_sentinel().await else { continue };
            let Some(primary) = self.servers.iter().position(|r| r.port == named) else { continue };
            self.primary = primary;
            let replica = &self.servers[1 - self.primary];
            if replica.command("INFO replication").await.is_some_and(|i| i.contains("master_link_status:up")) {
                return;
            }
        }
    }

    /// SIGKILLs the primary, waits until the sentinels have promoted the replica, and starts
    /// the old primary again (empty) as a replica of the new one. Returns how long the
    /// promotion took after the kill.
    pub async fn fail_over(&mut self) -> Duration {
        let old = self.primary;
        let old_port = self.servers[old].port;
        let new_port = self.servers[1 - old].port;
        self.servers[old].kill().await;
        let killed = Instant::now();
        let deadline = killed + Duration::from_secs(30);
        loop {
            assert!(Instant::now() < deadline, "no promotion within 30 s of killing the primary on {old_port}");
            if self.primary_port_by_sentinel().await == Some(new_port)
                && self.servers[1 - old].command("ROLE").await.is_some_and(|r| r.contains("master"))
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let took = killed.elapsed();
        self.primary = 1 - old;
        self.servers[old].set_extra(replica_of(new_port));
        self.servers[old].spawn().await;
        self.wait_settled().await;
        took
    }
}

fn replica_of(port: u16) -> Vec<String> {
    vec!["--replicaof".into(), "127.0.0.1".into(), port.to_string()]
}

/// Starts one sentinel monitoring the primary on `primary_port`, on a free port, and waits
/// until it answers. A port another test took between choosing and binding makes the sentinel
/// exit at once: then it starts again on another port.
async fn start_sentinel(primary_port: u16) -> (u16, Child, tempfile::TempDir) {
    for _ in 0..5 {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let conf = format!(
            "port {port}\nbind 127.0.0.1\ndaemonize no\nsentinel monitor {MASTER_NAME} 127.0.0.1 {primary_port} 2\nsentinel down-after-milliseconds {MASTER_NAME} {}\nsentinel failover-timeout {MASTER_NAME} 5000\nsentinel parallel-syncs {MASTER_NAME} 1\n",
            DOWN_AFTER.as_millis()
        );
        let path = dir.path().join("sentinel.conf");
        std::fs::write(&path, conf).unwrap();
        let mut child = Command::new("redis-sentinel")
            .arg(&path)
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-sentinel ({e}): the failover tests need it; install it (Debian: apt-get install redis-sentinel)"));
        for _ in 0..100 {
            if inline_command(port, "PING").await.is_some_and(|r| r.starts_with("+PONG")) {
                return (port, child, dir);
            }
            if child.try_wait().ok().flatten().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill().await;
    }
    panic!("redis-sentinel did not start on a free port in 5 attempts");
}
