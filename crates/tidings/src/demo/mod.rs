//! `tidings demo`: the hub with a small console beside it, in one process.
//!
//! One listener serves the hub (in-memory engine, session tokens signed by the demo), the
//! demo API (`api.rs`) that publishes every change through the hub, the page (`assets.rs`),
//! and optionally a teammate that edits something every few seconds so there is always
//! something moving. Nothing here is configuration for production: see `tidings serve`.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use tidings_hub::config::{AdminConfig, JwtConfig, PublisherKey};
use tidings_hub::{Config, Hub};
use tokio_util::sync::CancellationToken;

mod api;
mod assets;
mod store;
mod users;

use api::Demo;
use store::{Changes, Editor, RULE_ACTIONS, RuleChanges, STATUSES, Store};

/// The HS256 secret of demo sessions. Fixed, not random, so signed-in pages survive a restart
/// of the demo (the point of the restart scenario); it protects nothing, and the demo binds
/// loopback by default.
const DEMO_JWT_SECRET: &str = "tidings-demo-secret-not-for-production";

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Address to bind (`127.0.0.1:0` picks a free port). Loopback only, unless
    /// `--unsafe-expose` is given.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Listen on a non-loopback address anyway. Unsafe: demo sessions are signed with a fixed
    /// secret that is public (it is in the source), so anyone who can reach the port can sign
    /// in as anyone, read every account's events and change its data.
    #[arg(long)]
    unsafe_expose: bool,
    /// How often the teammate edits an application in each account.
    #[arg(long, default_value = "4s", value_parser = humantime::parse_duration)]
    teammate_every: Duration,
    /// No teammate: only what signed-in users do changes anything (for tests).
    #[arg(long)]
    no_teammate: bool,
    /// Ping interval of the hub's streams.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    heartbeat: Duration,
    /// Accept `POST /events` with this publisher key, for scripts and tests that publish
    /// activities of their own. Without it the demo's own changes are the only publisher.
    #[arg(long)]
    publisher_key: Option<String>,
    /// Turn the admin page on at `/admin/`, signed in with this key (at least 16 characters,
    /// e.g. `openssl rand -hex 16`).
    #[arg(long)]
    admin_key: Option<String>,
}

pub async fn run(args: DemoArgs) -> Result<()> {
    check_exposure(args.listen, args.unsafe_expose)?;
    let mut config = Config { listen: args.listen, heartbeat: args.heartbeat, ..Config::default() };
    config.auth.jwt = Some(JwtConfig {
        algorithm: "HS256".into(),
        secret: Some(DEMO_JWT_SECRET.into()),
        public_key_pem: None,
        public_key_file: None,
        issuer: None,
        audience: None,
        account_claim: "account".into(),
        user_claim: "sub".into(),
        session_claim: "sid".into(),
        grants_claim: Some("grants".into()),
        leeway: Duration::from_secs(5),
    });
    if let Some(key) = args.publisher_key {
        config.auth.publishers.push(PublisherKey { key, name: Some("demo".into()) });
    }
    config.admin = args.admin_key.map(|key| AdminConfig { key, listen: None });
    config.limits.shutdown_grace = Duration::from_secs(2);
    let admin = config.admin.is_some();
    let hub = Hub::new(config).context("demo configuration")?;
    let listener = Hub::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    let accounts: Vec<&str> = users::TEAMMATES.iter().map(|t| t.0).collect();
    let demo = Demo { hub: hub.state().clone(), store: Arc::new(Mutex::new(Store::seeded(&accounts))), jwt_secret: DEMO_JWT_SECRET.into() };
    let shutdown = CancellationToken::new();
    crate::signals::spawn(shutdown.clone(), || {
        tracing::warn!("SIGHUP: the demo has no configuration file to reload; it keeps running as it is");
    });
    if !args.no_teammate {
        tokio::spawn(teammate(demo.clone(), args.teammate_every, shutdown.clone()));
    }
    crate::serve::print_banner(|out| {
        writeln!(out, "tidings {} demo listening on http://{addr}", env!("CARGO_PKG_VERSION"))?;
        writeln!(out, "\nOpen http://{addr}/ in two browsers (or a private window) and sign in as different users.")?;
        writeln!(out, "alice, bob and dave share the account acme; carol is in globex.")?;
        writeln!(out, "dave does not hold firewall:read: firewall rules and their changes never reach his screen.")?;
        if admin {
            writeln!(out, "admin page: http://{addr}/admin/ (sign in with the --admin-key)")?;
        }
        Ok(())
    });
    let extra = api::router(demo).merge(assets::router());
    hub.run_with_routes(listener, shutdown, extra).await.context("serving")?;
    tracing::info!("stopped");
    Ok(())
}

/// Refuses a non-loopback address unless `--unsafe-expose` says the exposure is intended.
fn check_exposure(listen: SocketAddr, unsafe_expose: bool) -> Result<()> {
    if listen.ip().to_canonical().is_loopback() {
        return Ok(());
    }
    if !unsafe_expose {
        anyhow::bail!(
            "refusing to listen on {listen}: it is not a loopback address, and the demo signs its sessions with a fixed, \
             public secret, so anyone who can reach it could sign in as any user, read every account's events and \
             change its data. Use 127.0.0.1 or [::1], or pass --unsafe-expose to listen there anyway on a network \
             you control. For anything real, run `tidings serve` with your own configuration."
        );
    }
    tracing::warn!(%listen, "--unsafe-expose: the demo listens on a non-loopback address; anyone who can reach it can sign in as anyone");
    Ok(())
}

/// Every `every`, edits one application and one firewall rule in each account as that
/// account's teammate.
async fn teammate(demo: Demo, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        for (account, email, name) in users::TEAMMATES {
            let by = Editor { email: (*email).into(), name: (*name).into() };
            let edited = {
                let mut store = demo.store.lock().expect("store lock");
                store.pick(account, |n| rand::random_range(0..n)).and_then(|app| {
                    let next = STATUSES.iter().position(|s| *s == app.status).map_or(0, |i| (i + 1) % STATUSES.len());
                    let changes = Changes { status: Some(STATUSES[next].into()), ..Changes::default() };
                    store.edit(account, app.id, &by, changes).ok()
                })
            };
            if let Some((_, activity)) = edited {
                api::publish(&demo, account, &activity).await;
            }
            let rule_edited = {
                let mut store = demo.store.lock().expect("store lock");
                store.pick_rule(account, |n| rand::random_range(0..n)).and_then(|rule| {
                    let next = RULE_ACTIONS.iter().position(|a| *a == rule.action).map_or(0, |i| (i + 1) % RULE_ACTIONS.len());
                    store.edit_rule(account, rule.id, &by, RuleChanges { action: Some(RULE_ACTIONS[next].into()) }).ok()
                })
            };
            if let Some((_, activity)) = rule_edited {
                api::publish_rule(&demo, account, &activity).await;
            }
        }
    }
}
