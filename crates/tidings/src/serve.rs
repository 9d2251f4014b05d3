//! `tidings serve`: configuration from file, environment and flags, validated before binding,
//! and read again on SIGHUP.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tidings_hub::config::{PublisherKey, StaticToken};
use tidings_hub::{Config, Hub, HubState};
use tokio_util::sync::CancellationToken;

/// Runs the hub until SIGINT or SIGTERM; SIGHUP reloads the configuration file.
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
    let mut hub = Hub::new(config.clone()).context("cannot start the hub")?;
    let listener = Hub::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    let admin_addr = match config.admin.as_ref().and_then(|a| a.listen) {
        Some(admin) => {
            let admin_listener = Hub::bind(admin).await.with_context(|| format!("binding admin.listen {admin}"))?;
            let admin_addr = admin_listener.local_addr()?;
            hub.serve_admin_on(admin_listener);
            Some(admin_addr)
        }
        None => None,
    };
    let shutdown = CancellationToken::new();
    let state = hub.state().clone();
    crate::signals::spawn(shutdown.clone(), move || reload(&state, config_path.as_deref(), listen));
    crate::trim::spawn(shutdown.clone());
    let engine = hub.state().engine_name();
    print_banner(|out| {
        writeln!(out, "tidings {} listening on http://{addr} (engine: {engine})", env!("CARGO_PKG_VERSION"))?;
        if config.admin.is_some() {
            let on = admin_addr.unwrap_or(addr);
            let metrics = if admin_addr.is_some() { " and /metrics, on this address only" } else { "" };
            writeln!(out, "admin page: http://{on}/admin/ (sign in with admin.key{metrics})")?;
        }
        match &dev {
            Some(dev) => print_dev_banner(out, addr, dev),
            None => Ok(()),
        }
    });
    hub.run(listener, shutdown).await.context("serving")?;
    tracing::info!("stopped");
    Ok(())
}

/// SIGHUP: reads the configuration file again and hands it to the hub, which applies what can
/// change live or, when anything is wrong with it, keeps running as it was. `listen` is the
/// `--listen` flag, which overrides the file now as it did at start.
fn reload(hub: &HubState, path: Option<&Path>, listen: Option<SocketAddr>) {
    let Some(path) = path else {
        tracing::warn!("SIGHUP: started without --config, so there is nothing to reload; the hub keeps running as it is");
        return;
    };
    tracing::info!(file = %path.display(), "SIGHUP: reloading the configuration");
    let result = Config::from_file(path).and_then(|mut config| {
        if let Some(listen) = listen {
            config.listen = listen;
        }
        hub.reload(config)
    });
    if let Err(e) = result {
        tracing::error!(error = %e, "reload refused; the hub keeps running with its previous configuration");
    }
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
