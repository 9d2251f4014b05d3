//! The real hub binary (`tidings serve`), started on 127.0.0.1 with a config written for the
//! test. The binary is built once per test run from this workspace.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use tidings_testkit::hub::wait_listening;
use tokio::process::{Child, Command};

use super::WAIT;

/// Identities the config defines. Alice has two tokens for one session (supersede tests).
pub const ALICE: &str = "tok-alice";
pub const ALICE_AGAIN: &str = "tok-alice-again";
pub const BOB: &str = "tok-bob";
pub const ACCOUNT: &str = "acme";
pub const PUBLISHER_KEY: &str = "pub-secret";
/// A grant Bob holds and Alice does not.
pub const BOB_GRANT: &str = "role:admin";

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Builds `tidings` once and returns its path.
fn binary() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "--quiet", "-p", "tidings", "--bin", "tidings"])
            .current_dir(workspace_root())
            .status()
            .expect("running cargo build for the hub");
        assert!(status.success(), "building the hub failed");
        let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace_root().join("target"), PathBuf::from);
        target.join("debug").join("tidings")
    })
}

pub struct Hub {
    /// Killed on drop (`kill_on_drop`), so a failing test leaves no hub behind.
    child: Child,
    pub addr: SocketAddr,
    config: PathBuf,
}

impl Hub {
    /// Starts a hub with this ping interval, on a free port.
    pub async fn start(heartbeat: &str) -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), heartbeat).await
    }

    pub async fn start_on(listen: SocketAddr, heartbeat: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let config = std::env::temp_dir().join(format!(
            "tidings-client-test-{}-{}.toml",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&config, config_toml(heartbeat)).unwrap();
        let mut child = Command::new(binary())
            .args(["serve", "--listen", &listen.to_string(), "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("starting the hub");
        let started = wait_listening(&mut child, WAIT * 3).await.unwrap_or_else(|e| panic!("{e}"));
        Self { child, addr: started.addr.parse().unwrap(), config }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// SIGKILL: no `closed` frame, no goodbye, like a crash.
    pub async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }

    /// SIGTERM: the graceful path.
    pub async fn terminate(mut self) {
        let pid = self.child.id().unwrap().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().await.unwrap();
        assert!(status.success());
        let exited = tokio::time::timeout(WAIT, self.child.wait()).await.expect("the hub did not exit on SIGTERM");
        assert!(exited.unwrap().success());
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
    }
}

fn config_toml(heartbeat: &str) -> String {
    format!(
        r#"
heartbeat = "{heartbeat}"
retry = "50ms"

[[auth.tokens]]
token = "{ALICE}"
account = "{ACCOUNT}"
user = "alice@example.com"
session = "s-alice"

[[auth.tokens]]
token = "{ALICE_AGAIN}"
account = "{ACCOUNT}"
user = "alice@example.com"
session = "s-alice"

[[auth.tokens]]
token = "{BOB}"
account = "{ACCOUNT}"
user = "bob@example.com"
session = "s-bob"
grants = ["{BOB_GRANT}"]

[[auth.publishers]]
key = "{PUBLISHER_KEY}"
"#
    )
}
