//! The relay's one PostgreSQL connection: the consumer lock, wake-ups, reading committed rows
//! in bounded batches, deleting relayed ones and moving refused ones aside.
//!
//! **Why no cursor.** A relay that remembers "relayed up to id N" skips a transaction that
//! took id N-1 but committed after N was read (ids are handed out at insert, rows become
//! visible at commit, in another order). This relay keeps no position: every read takes the
//! lowest ids among the rows committed *now*, and a row leaves the table only when the hub
//! has answered `202` for it. A late commit is simply found by the next read. Centrifugo's
//! PostgreSQL outbox consumer works the same way (select, publish, delete).
//!
//! **One consumer at a time.** The connection takes a session-level advisory lock on the
//! table's key before it reads anything, so several relays (for availability) never interleave
//! batches, which keeps each account's events in commit order. The lock goes with the session:
//! when a relay dies, PostgreSQL ends its session and a waiting relay takes the lock on its
//! next try (every [`crate::LOCK_RETRY_INTERVAL`]); a relay whose host vanished without closing
//! the socket is noticed by the server's keepalives ([`SERVER_KEEPALIVE_SQL`]). If two relays
//! ever did send the same row, its key makes the hub store it once.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, Client, NoTls, Statement};

use crate::rows::OutboxRow;
use crate::schema::{self, TableName};

/// A connection attempt that takes longer has failed (and is retried).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Settings for the server's side of this session: it probes an idle relay after 5 s, every
/// 2 s, and drops it (releasing its lock) after 3 missed probes, so a relay whose host
/// vanished is replaced within about 11 s rather than the kernel's default two hours.
const SERVER_KEEPALIVE_SQL: &str = "SET tcp_keepalives_idle = 5; SET tcp_keepalives_interval = 2; SET tcp_keepalives_count = 3";

/// A database failure; the relay drops the connection and connects again.
pub type DbError = tokio_postgres::Error;

/// An open connection to the outbox's database.
#[derive(Debug)]
pub struct Outbox {
    client: Client,
    table: TableName,
    fetch: Statement,
    delete: Statement,
    oldest: Statement,
    /// Ends the task that drives the connection (and forwards notifications) when dropped.
    _driver: tokio_util::sync::DropGuard,
}

impl Outbox {
    /// Connects; `wake` is notified on every `NOTIFY` on the table's channel (once `listen`
    /// has been called) and when the connection ends.
    pub async fn connect(url: &str, table: &TableName, wake: Arc<Notify>, create_schema: bool) -> Result<Self, ConnectError> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|e: DbError| ConnectError::Url(e.to_string()))?;
        config.application_name("tidings-relay").connect_timeout(CONNECT_TIMEOUT).keepalives(true).keepalives_idle(Duration::from_secs(5));
        let (client, mut connection) = config.connect(NoTls).await.map_err(ConnectError::Db)?;
        let stop = tokio_util::sync::CancellationToken::new();
        let driver_stop = stop.clone();
        tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            loop {
                tokio::select! {
                    _ = driver_stop.cancelled() => break,
                    m = messages.next() => match m {
                        Some(Ok(AsyncMessage::Notification(_))) => wake.notify_one(),
                        Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            tracing::debug!(error = %e, "database connection ended");
                            break;
                        }
                        None => break,
                    }
                }
            }
            // Whoever waits for rows finds out at once that the connection is gone.
            wake.notify_one();
        });
        client.batch_execute(SERVER_KEEPALIVE_SQL).await.map_err(ConnectError::Db)?;
        if create_schema {
            apply_schema(&client, table).await.map_err(ConnectError::Db)?;
        }
        let commit_ts: String = client.query_one("SHOW track_commit_timestamp", &[]).await.map_err(ConnectError::Db)?.get(0);
        let t = table.as_str();
        // The time a row's age is measured from: its transaction's commit when the server
        // records commit times, else its insert (never later than the commit).
        let since = if commit_ts == "on" { "coalesce(pg_xact_commit_timestamp(w.xmin), w.created_at)" } else { "w.created_at" };
        let fetch = client
            .prepare(&format!(
                "SELECT w.id, w.account, w.data::text, (extract(epoch FROM w.created_at) * 1000000)::bigint,
                        extract(epoch FROM clock_timestamp() - {since})::float8
                 FROM (SELECT h.*, sum(octet_length(h.data::text)) OVER (ORDER BY h.id) AS running, octet_length(h.data::text) AS size
                       FROM (SELECT id, account, data, created_at, xmin FROM {t} ORDER BY id LIMIT $1) h) w
                 WHERE w.running - w.size < $2
                 ORDER BY w.id"
            ))
            .await
            .map_err(|e| ConnectError::missing_table(e, table))?;
        let delete = client.prepare(&format!("DELETE FROM {t} WHERE id = ANY($1)")).await.map_err(ConnectError::Db)?;
        let oldest = client
            .prepare(&format!("SELECT extract(epoch FROM clock_timestamp() - created_at)::float8 FROM {t} ORDER BY id LIMIT 1"))
            .await
            .map_err(ConnectError::Db)?;
        Ok(Self { client, table: table.clone(), fetch, delete, oldest, _driver: stop.drop_guard() })
    }

    /// Takes the table's consumer lock if no other session holds it.
    pub async fn try_lock(&self) -> Result<bool, DbError> {
        Ok(self.client.query_one("SELECT pg_try_advisory_lock($1)", &[&self.table.lock_key()]).await?.get(0))
    }

    /// Subscribes this session to the table's wake-up channel.
    pub async fn listen(&self) -> Result<(), DbError> {
        self.client.batch_execute(&format!("LISTEN {}", self.table.bare())).await
    }

    /// The committed rows with the lowest ids: at most `rows`, and no more than `bytes` of
    /// data past the first row (the first is always returned, whatever its size, so a large
    /// row is relayed alone or refused by the hub, never stuck).
    pub async fn fetch(&self, rows: usize, bytes: usize) -> Result<Vec<OutboxRow>, DbError> {
        let found = self.client.query(&self.fetch, &[&(rows as i64), &(bytes as i64)]).await?;
        Ok(found
            .iter()
            .map(|r| OutboxRow {
                id: r.get(0),
                account: r.get(1),
                data: r.get(2),
                created_us: r.get(3),
                age: Duration::try_from_secs_f64(r.get::<_, f64>(4)).unwrap_or(Duration::ZERO),
            })
            .collect())
    }

    /// Deletes relayed rows.
    pub async fn delete(&self, ids: &[i64]) -> Result<u64, DbError> {
        self.client.execute(&self.delete, &[&ids]).await
    }

    /// Moves a row the hub refused to the rejected table, with the hub's answer.
    pub async fn reject(&mut self, id: i64, error: &str) -> Result<(), DbError> {
        let (t, rejected) = (self.table.as_str(), self.table.rejected());
        let tx = self.client.transaction().await?;
        tx.execute(
            &format!(
                "INSERT INTO {rejected} (id, account, data, created_at, error) SELECT id, account, data, created_at, $2 FROM {t} WHERE id = $1
                 ON CONFLICT (id) DO NOTHING"
            ),
            &[&id, &error],
        )
        .await?;
        tx.execute(&format!("DELETE FROM {t} WHERE id = $1"), &[&id]).await?;
        tx.commit().await
    }

    /// Age of the pending row with the lowest id, by the database's clock; `None` when the
    /// table is empty.
    pub async fn oldest_age(&self) -> Result<Option<Duration>, DbError> {
        let row = self.client.query_opt(&self.oldest, &[]).await?;
        Ok(row.map(|r| Duration::try_from_secs_f64(r.get::<_, f64>(0)).unwrap_or(Duration::ZERO)))
    }

    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }
}

/// Applies the schema under a transaction-level advisory lock, so relays starting together
/// do not race on `CREATE`.
async fn apply_schema(client: &Client, table: &TableName) -> Result<(), DbError> {
    let sql = format!("BEGIN; SELECT pg_advisory_xact_lock({}); {} COMMIT;", table.lock_key().wrapping_add(1), schema::sql(table));
    client.batch_execute(&sql).await
}

/// Why connecting failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The database URL cannot be parsed; retrying cannot help.
    #[error("invalid database url: {0}")]
    Url(String),
    /// The outbox table does not exist; retrying will help once it is created.
    #[error("the outbox table {0} does not exist: create it (tidings relay postgres --print-schema) or start with --create-schema")]
    MissingTable(String),
    /// The server is unreachable, refused the login, or failed a query.
    #[error("database: {}", chain(.0))]
    Db(DbError),
}

impl ConnectError {
    fn missing_table(e: DbError, table: &TableName) -> Self {
        if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) {
            Self::MissingTable(table.as_str().to_owned())
        } else {
            Self::Db(e)
        }
    }
}

/// A database error with its source (where tokio-postgres puts the server's message).
pub fn chain(e: &DbError) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
