//! The transactional outbox relay for PostgreSQL.
//!
//! A backend inserts one row per activity into an outbox table in the same transaction as the
//! change it describes (schema: [`schema::sql`]). The relay publishes committed rows to the
//! hub in id order, in bounded batches, each row with a key derived from the row, and deletes
//! them once the hub has answered `202`. What that buys, and why it never skips a committed
//! row, is in [`postgres`]; how rows become items, in [`rows`].
//!
//! The loop: connect; wait for the table's consumer lock (a standby retries every
//! [`LOCK_RETRY_INTERVAL`]); `LISTEN`; then read a batch, publish it (retrying while the hub is
//! unavailable, rows untouched), delete it, and when the table is empty wait for a `NOTIFY`
//! or [`RelayConfig::poll_interval`], whichever comes first. Any database error drops the
//! connection (and with it the lock) and starts over after a jittered delay.
//!
//! What it does not do: TLS to PostgreSQL (connect through a local socket, a private network
//! or a TLS-terminating proxy such as pgbouncer), several tables per process (run one relay per
//! table), or ordering across relays of different tables.

pub mod metrics;
pub mod postgres;
pub mod rows;
pub mod schema;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tidings_client::{Backoff, PublishError, Publisher, Receipt, RetryPolicy};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use metrics::Metrics;
use postgres::{ConnectError, DbError, Outbox};
use rows::{Failure, OutboxRow};
pub use schema::TableName;

/// How often a standby relay asks for the consumer lock: the longest a dead relay's table
/// waits for a new consumer (after PostgreSQL has ended the dead relay's session).
pub const LOCK_RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// Default rows per publish: half the hub's batch limit (1,000 items).
pub const BATCH_ROWS_DEFAULT: usize = 500;
/// Most rows per publish: the hub refuses larger batches.
pub const BATCH_ROWS_MAX: usize = 1_000;
/// Default bytes of row data per publish (beyond the first row): half the hub's default body
/// limit (`limits.publish_body_bytes`, 1 MiB), leaving room for keys and framing. Also what
/// bounds the relay's memory: one batch in flight.
pub const BATCH_BYTES_DEFAULT: usize = 512 * 1024;
/// Default time between reads when no `NOTIFY` arrives.
pub const POLL_INTERVAL_DEFAULT: Duration = Duration::from_secs(1);
/// How long one publish retries (with the publisher's backoff) before the relay re-reads the
/// batch and tries again; bounds how stale a retried batch gets and how late shutdown is seen.
const HUB_RETRY_WINDOW: Duration = Duration::from_secs(10);
/// Pause after a publish failed with the hub unavailable, before the batch is read again.
const HUB_PAUSE: Duration = Duration::from_secs(1);
/// Delays between reconnects to the database: full jitter, doubling up to the cap.
const RECONNECT_BACKOFF: Backoff = Backoff { base: Duration::from_millis(200), cap: Duration::from_secs(5) };

/// A relay's settings, validated by [`RelayConfig::validate`].
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// `postgres://user:password@host:port/db` (libpq URL or key=value form).
    pub database_url: String,
    /// The hub's base URL.
    pub hub_url: String,
    pub publisher_key: String,
    pub table: TableName,
    pub batch_rows: usize,
    pub batch_bytes: usize,
    /// Reads happen at least this often, whether or not a `NOTIFY` arrives.
    pub poll_interval: Duration,
    /// Apply [`schema::sql`] at connect (idempotent).
    pub create_schema: bool,
}

impl RelayConfig {
    pub fn new(database_url: impl Into<String>, hub_url: impl Into<String>, publisher_key: impl Into<String>) -> Self {
        Self {
            database_url: database_url.into(),
            hub_url: hub_url.into(),
            publisher_key: publisher_key.into(),
            table: TableName::parse(schema::TABLE_DEFAULT).expect("the default name is valid"),
            batch_rows: BATCH_ROWS_DEFAULT,
            batch_bytes: BATCH_BYTES_DEFAULT,
            poll_interval: POLL_INTERVAL_DEFAULT,
            create_schema: false,
        }
    }

    /// Checks what can be checked before connecting; [`run`] does it first.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=BATCH_ROWS_MAX).contains(&self.batch_rows) {
            return Err(ConfigError::BatchRows(self.batch_rows));
        }
        if self.batch_bytes == 0 {
            return Err(ConfigError::BatchBytes);
        }
        if self.poll_interval.is_zero() {
            return Err(ConfigError::PollInterval);
        }
        self.database_url.parse::<tokio_postgres::Config>().map_err(|e| ConfigError::DatabaseUrl(e.to_string()))?;
        Ok(())
    }
}

/// Relay settings that cannot work: found before anything connects, and never retried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The table name is not a plain lowercase name ([`TableName::parse`]).
    #[error(
        "table name {0:?} must be lowercase letters, digits and _ (at most {max} bytes), optionally schema-qualified",
        max = schema::TABLE_NAME_LEN_MAX
    )]
    TableName(String),
    /// [`RelayConfig::batch_rows`] is 0 or above what the hub accepts in one publish.
    #[error("batch rows must be 1 to {BATCH_ROWS_MAX} (the hub's batch limit), not {0}")]
    BatchRows(usize),
    /// [`RelayConfig::batch_bytes`] is 0.
    #[error("batch bytes must be more than 0")]
    BatchBytes,
    /// [`RelayConfig::poll_interval`] is 0.
    #[error("the poll interval must be more than 0")]
    PollInterval,
    /// The database URL does not parse (the parser's reason; the URL itself is not repeated,
    /// since it may hold a password).
    #[error("invalid database url: {0}")]
    DatabaseUrl(String),
}

/// Runs the relay until `shutdown` is cancelled. Returns an error only for what retrying
/// cannot fix (settings that cannot work); everything else is logged, counted and retried.
pub async fn run(config: RelayConfig, metrics: Arc<Metrics>, shutdown: CancellationToken) -> Result<(), ConfigError> {
    config.validate()?;
    let publisher = Publisher::new(&config.hub_url, config.publisher_key.clone())
        .with_retry(RetryPolicy { give_up_after: HUB_RETRY_WINDOW, ..RetryPolicy::default() });
    let wake = Arc::new(Notify::new());
    let mut failures = 0u32;
    while !shutdown.is_cancelled() {
        let result = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = session(&config, &publisher, &metrics, &wake, &shutdown) => r,
        };
        metrics.active.set(0);
        metrics.database_up.set(0);
        match result {
            Ok(()) => break,
            Err(ConnectError::Url(e)) => return Err(ConfigError::DatabaseUrl(e)),
            Err(e) => {
                failures += 1;
                let delay = RECONNECT_BACKOFF.delay(failures.min(16) - 1, Default::default(), rand::random());
                tracing::warn!(error = %e, ?delay, "database unavailable; connecting again");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    metrics.stopping.store(true, std::sync::atomic::Ordering::Release);
    metrics.active.set(0);
    Ok(())
}

/// One database session: connect, wait for the lock, relay. Returns `Ok` on shutdown.
async fn session(config: &RelayConfig, publisher: &Publisher, metrics: &Metrics, wake: &Arc<Notify>, shutdown: &CancellationToken) -> Result<(), ConnectError> {
    let mut outbox = Outbox::connect(&config.database_url, &config.table, wake.clone(), config.create_schema).await?;
    metrics.database_up.set(1);
    let mut waiting_logged = false;
    while !outbox.try_lock().await.map_err(ConnectError::Db)? {
        if !waiting_logged {
            tracing::info!(table = config.table.as_str(), "another relay consumes this outbox; standing by");
            waiting_logged = true;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(LOCK_RETRY_INTERVAL) => {}
        }
    }
    outbox.listen().await.map_err(ConnectError::Db)?;
    metrics.active.set(1);
    tracing::info!(table = config.table.as_str(), hub = %config.hub_url, "relaying the outbox");
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        let batch = outbox.fetch(config.batch_rows, config.batch_bytes).await.map_err(ConnectError::Db)?;
        metrics.oldest_pending.set(batch.first().map_or(0.0, |r| r.age.as_secs_f64()));
        if batch.is_empty() {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = wake.notified() => {}
                _ = tokio::time::sleep(config.poll_interval) => {}
            }
            // A closed connection (the wake-up says so too) fails the next read.
            continue;
        }
        relay_batch(config, publisher, metrics, &mut outbox, batch, shutdown).await.map_err(ConnectError::Db)?;
        if let Some(age) = outbox.oldest_age().await.map_err(ConnectError::Db)? {
            metrics.oldest_pending.set(age.as_secs_f64());
        } else {
            metrics.oldest_pending.set(0.0);
        }
    }
}

/// Publishes one batch and deletes (or moves aside) its rows. Rows stay in the table while
/// the hub is unavailable; on shutdown the batch is left for the next relay (its keys make a
/// second send harmless).
async fn relay_batch(
    config: &RelayConfig,
    publisher: &Publisher,
    metrics: &Metrics,
    outbox: &mut Outbox,
    batch: Vec<OutboxRow>,
    shutdown: &CancellationToken,
) -> Result<(), DbError> {
    let read_at = Instant::now();
    let mut items = Vec::with_capacity(batch.len());
    for row in &batch {
        match row.item(&config.table) {
            Ok(item) => items.push(item),
            Err(e) => return reject(outbox, metrics, row, &format!("data is not JSON: {e}")).await,
        }
    }
    let result = tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        r = publisher.submit(&items) => r,
    };
    match result {
        Ok(receipt) => accepted(outbox, metrics, &batch, &receipt, read_at).await,
        Err(e) => match rows::classify(&e) {
            Failure::RowsRefused if batch.len() == 1 => reject(outbox, metrics, &batch[0], &e.to_string()).await,
            Failure::RowsRefused => {
                // Some row is bad and the hub refused the whole batch: one at a time, so
                // every good row still goes and only the bad ones are moved aside.
                for row in batch {
                    Box::pin(relay_batch(config, publisher, metrics, outbox, vec![row], shutdown)).await?;
                }
                Ok(())
            }
            Failure::HubUnavailable => {
                hub_unavailable(metrics, &e);
                // A final refusal (a wrong publisher key) returns at once: do not hammer.
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(HUB_PAUSE) => {}
                }
                Ok(())
            }
        },
    }
}

async fn accepted(outbox: &Outbox, metrics: &Metrics, batch: &[OutboxRow], receipt: &Receipt, read_at: Instant) -> Result<(), DbError> {
    let ids: Vec<i64> = batch.iter().map(|r| r.id).collect();
    outbox.delete(&ids).await?;
    let since_read = read_at.elapsed();
    for row in batch {
        metrics.lag.observe((row.age + since_read).as_secs_f64());
    }
    metrics.rows_relayed.inc_by(batch.len() as u64);
    metrics.rows_duplicate.inc_by(receipt.duplicates.len() as u64);
    if metrics.hub_up.get() == 0 {
        tracing::info!("the hub accepts publishes again");
    }
    metrics.hub_up.set(1);
    tracing::debug!(rows = batch.len(), duplicates = receipt.duplicates.len(), attempts = receipt.attempts, "relayed");
    Ok(())
}

async fn reject(outbox: &mut Outbox, metrics: &Metrics, row: &OutboxRow, error: &str) -> Result<(), DbError> {
    tracing::error!(id = row.id, account = %row.account, error, "the hub refused an outbox row; moved to the rejected table");
    outbox.reject(row.id, error).await?;
    metrics.rows_rejected.inc();
    Ok(())
}

fn hub_unavailable(metrics: &Metrics, e: &PublishError) {
    metrics.publish_failures.inc();
    if metrics.hub_up.get() == 1 {
        tracing::warn!(error = %e, "cannot publish to the hub; the rows stay in the outbox and are sent again");
    }
    metrics.hub_up.set(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_that_cannot_work_are_named_before_connecting() {
        let ok = RelayConfig::new("postgres://app@127.0.0.1:5432/app", "http://127.0.0.1:8080", "k");
        assert_eq!(ok.validate(), Ok(()));
        let cases = [
            (RelayConfig { batch_rows: 0, ..ok.clone() }, ConfigError::BatchRows(0)),
            (RelayConfig { batch_rows: BATCH_ROWS_MAX + 1, ..ok.clone() }, ConfigError::BatchRows(BATCH_ROWS_MAX + 1)),
            (RelayConfig { batch_bytes: 0, ..ok.clone() }, ConfigError::BatchBytes),
            (RelayConfig { poll_interval: Duration::ZERO, ..ok.clone() }, ConfigError::PollInterval),
        ];
        for (config, expected) in cases {
            assert_eq!(config.validate(), Err(expected));
        }
        let url = RelayConfig { database_url: "postgres://app:secret@127.0.0.1:notaport/app".into(), ..ok.clone() }.validate();
        let Err(e @ ConfigError::DatabaseUrl(_)) = url else { panic!("{url:?}") };
        assert!(!e.to_string().contains("secret"), "the password stays out of the message: {e}");
        assert!(TableName::parse("Bad;Name").unwrap_err().to_string().contains("\"Bad;Name\""));
    }
}
