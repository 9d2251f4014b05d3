//! `tidings relay postgres`: relays a PostgreSQL outbox table to a hub (see the
//! `tidings_relay` crate for how), serving its metrics and readiness over HTTP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tidings_relay::{Metrics, RelayConfig, TableName};
use tokio_util::sync::CancellationToken;

#[derive(Debug, clap::Args)]
pub struct RelayArgs {
    #[command(subcommand)]
    source: Source,
}

#[derive(Debug, clap::Subcommand)]
enum Source {
    /// Relay a PostgreSQL transactional outbox table to a hub.
    ///
    /// Your backend inserts one row per activity (account, data) into the outbox table in the
    /// same transaction as the change it describes. This command publishes committed rows to
    /// the hub's POST /events in id order and in batches, each with an idempotency key derived
    /// from the row, and deletes them once the hub answered 202, so an activity is published
    /// exactly when its transaction commits, even if the hub, the relay or the database
    /// restarts in between. Rows the hub refuses as invalid are moved to <table>_rejected.
    ///
    /// Wakes on LISTEN/NOTIFY (a trigger in the schema), and polls every --poll-interval too.
    /// Several relays may run at once: one consumes (it holds an advisory lock), the others
    /// stand by and take over within about a second after it dies. Print the schema with
    /// --print-schema, or apply it at start with --create-schema.
    #[command(long_about)]
    Postgres(PostgresArgs),
}

#[derive(Debug, clap::Args)]
struct PostgresArgs {
    /// PostgreSQL connection URL (postgres://user:password@host:port/db) or key=value string.
    #[arg(long, env = "TIDINGS_DATABASE_URL", required_unless_present = "print_schema")]
    database_url: Option<String>,
    /// Hub base URL.
    #[arg(long, env = "TIDINGS_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Publisher key for the hub.
    #[arg(long, env = "TIDINGS_PUBLISHER_KEY", required_unless_present = "print_schema")]
    key: Option<String>,
    /// The outbox table (optionally schema-qualified); also the NOTIFY channel.
    #[arg(long, default_value = tidings_relay::schema::TABLE_DEFAULT)]
    table: String,
    /// Most rows per publish (at most 1,000, the hub's batch limit).
    #[arg(long, default_value_t = tidings_relay::BATCH_ROWS_DEFAULT)]
    batch_rows: usize,
    /// Most bytes of row data per publish beyond the first row; keep it below the hub's
    /// limits.publish_body_bytes.
    #[arg(long, default_value_t = tidings_relay::BATCH_BYTES_DEFAULT)]
    batch_bytes: usize,
    /// Read the table at least this often, even without a NOTIFY.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    poll_interval: Duration,
    /// Create the outbox tables and trigger at start if missing (idempotent).
    #[arg(long)]
    create_schema: bool,
    /// Print the schema's SQL and exit.
    #[arg(long)]
    print_schema: bool,
    /// Serve /metrics, /readyz and /healthz on this address (127.0.0.1:0 picks a port).
    #[arg(long, env = "TIDINGS_RELAY_LISTEN")]
    listen: Option<SocketAddr>,
}

pub async fn run(args: RelayArgs) -> Result<()> {
    let Source::Postgres(args) = args.source;
    let table = TableName::parse(&args.table).context("--table")?;
    if args.print_schema {
        print!("{}", tidings_relay::schema::sql(&table));
        return Ok(());
    }
    let (Some(database_url), Some(key)) = (args.database_url, args.key) else { bail!("--database-url and --key are required") };
    let config = RelayConfig {
        table,
        batch_rows: args.batch_rows,
        batch_bytes: args.batch_bytes,
        poll_interval: args.poll_interval,
        create_schema: args.create_schema,
        ..RelayConfig::new(database_url, args.url, key)
    };
    config.validate().context("invalid relay settings")?;
    let metrics = Arc::new(Metrics::new());
    let shutdown = CancellationToken::new();
    crate::signals::spawn(shutdown.clone(), || {
        tracing::warn!("SIGHUP: the relay takes its settings from flags and the environment; restart it to change them");
    });
    if let Some(addr) = args.listen {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        println!("tidings relay listening on http://{} (metrics, readiness)", listener.local_addr()?);
        let router = tidings_relay::metrics::router(metrics.clone());
        let stop = shutdown.clone();
        tokio::spawn(async move { axum::serve(listener, router).with_graceful_shutdown(stop.cancelled_owned()).await });
    }
    tidings_relay::run(config, metrics, shutdown).await?;
    tracing::info!("relay stopped");
    Ok(())
}
