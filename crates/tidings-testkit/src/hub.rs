//! Starting a `tidings` process and finding where it listens: the binary prints a line
//! containing `listening on http://<addr:port>` once it accepts connections.
//!
//! The caller builds the command (binary, subcommand, config, environment) and spawns it with
//! the pipes it wants read; [`wait_listening`] reads every piped stream line by line for the
//! whole life of the process (so the hub never blocks on a full pipe), keeps the lines for
//! failure messages and log assertions, and answers the address. It does not kill the process:
//! spawn it with `kill_on_drop(true)`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Child;

/// What the hub prints once it is ready, followed by its bound address.
pub const LISTENING_MARKER: &str = "listening on http://";

/// Every line the process printed so far, stdout and stderr interleaved in arrival order.
pub type Output = Arc<Mutex<Vec<String>>>;

/// A process that printed its address.
#[derive(Debug, Clone)]
pub struct Listening {
    /// `host:port`, as printed (the real bound address, even for `--listen 127.0.0.1:0`).
    pub addr: String,
    /// Kept filling for as long as the process lives.
    pub output: Output,
}

/// Why a process never said where it listens.
#[derive(Debug)]
pub enum NotListening {
    /// It closed its output (exited) first; what it printed.
    Exited(Vec<String>),
    /// It printed nothing of the kind within the time given; what it printed.
    TimedOut(Vec<String>),
}

impl std::fmt::Display for NotListening {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exited(lines) => write!(f, "the process exited before listening; it printed:\n{}", lines.join("\n")),
            Self::TimedOut(lines) => write!(f, "the process did not start listening in time; it printed:\n{}", lines.join("\n")),
        }
    }
}

/// The address in a line that announces it, if the line does.
pub fn listening_addr(line: &str) -> Option<&str> {
    line.split(LISTENING_MARKER).nth(1)?.split_whitespace().next()
}

/// Reads the child's piped stdout and stderr until one announces the address, for at most
/// `within`. Pipes the caller did not set up (inherited, null) are left alone.
pub async fn wait_listening(child: &mut Child, within: Duration) -> Result<Listening, NotListening> {
    let output = Output::default();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let stdout = child.stdout.take().map(|p| Box::new(p) as Box<dyn AsyncRead + Unpin + Send>);
    let stderr = child.stderr.take().map(|p| Box::new(p) as Box<dyn AsyncRead + Unpin + Send>);
    for pipe in stdout.into_iter().chain(stderr) {
        let output = output.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(pipe).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                output.lock().expect("output lock").push(line.clone());
                // Nobody listens once the address is known: the lines are still kept.
                let _ = tx.send(line);
            }
        });
    }
    drop(tx);
    let found = tokio::time::timeout(within, async {
        while let Some(line) = rx.recv().await {
            if let Some(addr) = listening_addr(&line) {
                return Some(addr.to_owned());
            }
        }
        None
    })
    .await;
    let printed = || output.lock().expect("output lock").clone();
    match found {
        Ok(Some(addr)) => Ok(Listening { addr, output }),
        Ok(None) => Err(NotListening::Exited(printed())),
        Err(_) => Err(NotListening::TimedOut(printed())),
    }
}

#[cfg(test)]
mod tests {
    use std::process::Stdio;

    use tokio::process::Command;

    use super::*;

    #[test]
    fn the_address_is_the_word_after_the_marker() {
        assert_eq!(listening_addr("tidings 0.1.0 listening on http://127.0.0.1:4242 (engine: memory)"), Some("127.0.0.1:4242"));
        assert_eq!(listening_addr("tidings 0.1.0 demo listening on http://[::1]:80"), Some("[::1]:80"));
        assert_eq!(listening_addr("not listening yet"), None);
    }

    fn shell(script: &str) -> Child {
        Command::new("sh").args(["-c", script]).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true).spawn().unwrap()
    }

    #[tokio::test]
    async fn finds_the_address_on_either_stream_and_keeps_reading() {
        let mut child = shell("echo starting >&2; echo 'x listening on http://127.0.0.1:9 (engine: memory)'; sleep 0.2; echo later >&2");
        let l = wait_listening(&mut child, Duration::from_secs(10)).await.unwrap();
        assert_eq!(l.addr, "127.0.0.1:9");
        child.wait().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(l.output.lock().unwrap().iter().any(|line| line == "later"), "{:?}", l.output);
    }

    #[tokio::test]
    async fn an_exit_before_listening_is_reported_with_the_output() {
        let mut child = shell("echo 'error: port taken' >&2; exit 1");
        match wait_listening(&mut child, Duration::from_secs(10)).await {
            Err(NotListening::Exited(lines)) => assert_eq!(lines, ["error: port taken"]),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn silence_times_out() {
        let mut child = shell("sleep 5");
        assert!(matches!(wait_listening(&mut child, Duration::from_millis(100)).await, Err(NotListening::TimedOut(_))));
    }
}
