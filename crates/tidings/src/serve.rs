//! `tidings serve`: configuration from file, environment and flags, validated before binding.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use tidings_hub::config::{PublisherKey, StaticToken};
use tidings_hub::{Config, Hub};
use tokio_util::sync::CancellationToken;

/// Runs the hub until SIGINT or SIGTERM.
pub async fn run(listen: Option<SocketAddr>, config_path: Option<PathBuf>) -> Result<()> {
    let (mut config, dev) = match &config_path {
        Some(path) => (Config::from_file(path).with_context(|| format!("loading {}", path.display()))?, None),
        None => {
            let (config, dev) = embedded_defaults();
            (config, Some(dev))
        }
    };
    if let Some(listen) = listen {
        config.listen = listen;
    }
    let hub = Hub::new(config.clone()).context("cannot start the hub")?;
    let listener = Hub::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    crate::signals::spawn(shutdown.clone());
    let engine = hub.state().engine_name();
    print_banner(|out| {
        writeln!(out, "tidings {} listening on http://{addr} (engine: {engine})", env!("CARGO_PKG_VERSION"))?;
        match &dev {
            Some(dev) => print_dev_banner(out, addr, dev),
            None => Ok(()),
        }
    });
    hub.run(listener, shutdown).await.context("serving")?;
    tracing::info!("stopped");
    Ok(())
}

/// Dev credentials generated for the embedded defaults.
struct DevCredentials {
    token: String,
    account: String,
    publisher_key: String,
}

/// In-memory engine, loopback, one dev user and one dev publisher key, fresh each start.
fn embedded_defaults() -> (Config, DevCredentials) {
    let dev = DevCredentials {
        token: format!("dev-user-{:016x}", rand::random::<u64>()),
        account: "dev-account".into(),
        publisher_key: format!("dev-pub-{:016x}", rand::random::<u64>()),
    };
    let mut config = Config::default();
    config.auth.tokens.push(StaticToken {
        token: dev.token.clone(),
        account: dev.account.clone(),
        user: "dev@example.com".into(),
        session: "dev-session".into(),
        grants: Vec::new(),
    });
    config.auth.publishers.push(PublisherKey { key: dev.publisher_key.clone(), name: Some("dev".into()) });
    (config, dev)
}

fn print_dev_banner(out: &mut impl Write, addr: SocketAddr, dev: &DevCredentials) -> std::io::Result<()> {
    let DevCredentials { token, account, publisher_key } = dev;
    writeln!(
        out,
        r#"
No --config given: embedded defaults (in-memory engine, loopback only).
  dev user token : {token}   (account {account})
  publisher key  : {publisher_key}

Subscribe (leave it running):
  curl -N -H 'Authorization: Bearer {token}' http://{addr}/events/stream

Publish (in another terminal):
  curl -X POST http://{addr}/events -H 'Authorization: Bearer {publisher_key}' -H 'Content-Type: application/json' \
    -d '{{"account":"{account}","data":{{"activity_type":"created","resource":{{"type":"edge_application","name":"App"}},"description":"App was created","metadata":{{"id":1}}}}}}'
"#
    )
}

/// Writes the start-up lines to stdout. A failure (stdout closed, `tidings serve | head -1`
/// after `head` left) is logged and changes nothing else: the hub serves all the same.
pub(crate) fn print_banner(write: impl FnOnce(&mut std::io::StdoutLock<'static>) -> std::io::Result<()>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = write(&mut out).and_then(|()| out.flush()) {
        tracing::warn!(error = %e, "could not write the start-up lines to stdout; serving anyway");
    }
}
