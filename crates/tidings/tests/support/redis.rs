//! A real `redis-server` for the Redis engine tests, on a free port in a temp dir. No mock: if
//! `redis-server` is missing the tests that use it fail and say so.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

/// A `redis-server` of our own, without persistence (a restart wipes it, like a cache node).
pub struct Redis {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Append-only file with fsync on every write: a restart keeps everything acknowledged.
    durable: bool,
}

impl Redis {
    pub async fn start() -> Redis {
        Self::start_with(false).await
    }

    pub async fn start_with(durable: bool) -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut r = Redis { port, dir: tempfile::tempdir().unwrap(), child: None, durable };
        r.spawn().await;
        r
    }

    pub async fn spawn(&mut self) {
        let aof: &[&str] = if self.durable { &["--appendonly", "yes", "--appendfsync", "always"] } else { &["--appendonly", "no"] };
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(aof)
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
        panic!("redis-server did not answer PING on port {}", self.port);
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

    /// Sends one inline command; returns the raw reply, or None when the server is not there.
    pub async fn command(&self, cmd: &str) -> Option<String> {
        let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.ok()?;
        sock.write_all(format!("{cmd}\r\n").as_bytes()).await.ok()?;
        let mut buf = [0u8; 256];
        let n = sock.read(&mut buf).await.ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    pub fn engine_toml(&self) -> String {
        format!("[engine]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:{}\"\nkey_prefix = \"t:\"\n", self.port)
    }
}

