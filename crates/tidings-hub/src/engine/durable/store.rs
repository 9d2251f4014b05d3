//! The data file: one SQLite database (WAL journal) holding the epoch, the head, every
//! retained event (with its idempotency key, if it had one) and, per account, how far history
//! was trimmed.
//!
//! Only the engine's writer thread touches it after start-up, through one connection that
//! holds the file's lock for the life of the process, so a second hub on the same data
//! directory fails at start instead of handing out the same ids. It knows nothing about
//! frames, streams or the fan-out.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, params};

use tidings_protocol::Audience;

use crate::config::FsyncPolicy;
use crate::engine::history::floor_bucket;

/// The data file inside `data_dir`.
pub const DATA_FILE_NAME: &str = "tidings.db";
/// Layout of the tables below; a file with another number is refused, not guessed at.
/// Format 1 had no `key` column, format 2 no `audience` column; they are upgraded in place at
/// start-up ([`MIGRATIONS`]; their events keep no key or audience). An upgraded file is then
/// refused by an older hub rather than have it replay audience-restricted events to the whole
/// account.
const FORMAT_VERSION: i64 = 3;
/// `(from format, SQL to the next format)`, applied in order in one transaction.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, "ALTER TABLE events ADD COLUMN key TEXT; UPDATE meta SET value = 2 WHERE key = 'format';"),
    (2, "ALTER TABLE events ADD COLUMN audience TEXT; UPDATE meta SET value = 3 WHERE key = 'format';"),
];
/// WAL pages between automatic checkpoints (SQLite's default is 1,000). A checkpoint runs on
/// the writer thread and holds up the publishes behind it; every commit rewrites the same few
/// hot pages, so checkpointing less often copies barely more per checkpoint and costs less
/// per publish. 16 MiB of WAL at 4 KiB pages.
const WAL_AUTOCHECKPOINT_PAGES: i64 = 4_096;
/// The WAL is truncated back to this after a checkpoint, so a burst does not leave a large
/// journal file behind for good.
const WAL_SIZE_LIMIT_BYTES: i64 = 64 * 1024 * 1024;

const SCHEMA: &str = "
CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE events (
    account TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    payload TEXT NOT NULL,
    key TEXT,
    audience TEXT,
    PRIMARY KEY (account, seq)
) WITHOUT ROWID;
CREATE TABLE accounts (account TEXT PRIMARY KEY, trimmed_through INTEGER NOT NULL) WITHOUT ROWID;
";

/// Why the data file cannot be used. Both variants name the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The directory or file cannot be created, opened or locked (permissions, disk full,
    /// another hub holding it).
    #[error("cannot open data file {path}: {detail}")]
    Open { path: PathBuf, detail: String },
    /// The file is not a Tidings data file, or it is damaged; serving from it could hand out
    /// wrong ids, so the hub refuses to start.
    #[error(
        "data file {path} is damaged or is not a Tidings data file: {detail}; restore it from a backup, or move it away to start a new history (clients will resync)"
    )]
    Damaged { path: PathBuf, detail: String },
}

/// One event as stored.
#[derive(Debug)]
pub struct Row {
    pub account: std::sync::Arc<str>,
    pub seq: u64,
    pub at_ms: u64,
    pub payload: std::sync::Arc<str>,
    /// The idempotency key the event was published with.
    pub key: Option<std::sync::Arc<str>>,
    /// Stored in [`Audience::to_stored`]'s form; NULL for the whole account.
    pub audience: Option<std::sync::Arc<Audience>>,
}

/// What the file holds at start-up.
#[derive(Debug)]
pub struct Loaded {
    pub epoch: u64,
    pub head: u64,
    /// `(account, trimmed_through)`.
    pub trims: Vec<(String, u64)>,
    /// `(bucket, floor)` of the buckets where accounts were forgotten (meta `floor:<bucket>`).
    pub floors: Vec<(usize, u64)>,
    /// Every retained event, ordered by account then seq.
    pub events: Vec<Row>,
}

/// The open data file.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: PathBuf,
    fsync: FsyncPolicy,
}

impl Store {
    /// Opens (or creates) the data file in `dir`, checks it, and reads everything retained.
    pub fn open(dir: &Path, fsync: FsyncPolicy) -> Result<(Store, Loaded), StoreError> {
        let path = dir.join(DATA_FILE_NAME);
        let open_err = |detail: String| StoreError::Open { path: path.clone(), detail };
        std::fs::create_dir_all(dir).map_err(|e| open_err(format!("cannot create {}: {e}", dir.display())))?;
        // SQLite writes nothing until the first commit: an empty file never held a history.
        let is_new = std::fs::metadata(&path).map_or(true, |m| m.len() == 0);
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&path, flags).map_err(|e| open_err(e.to_string()))?;
        let mut store = Store { conn, path: path.clone(), fsync };
        store.prepare(is_new).map_err(|e| store.classify(e))?;
        let loaded = store.load().map_err(|e| store.classify(e))?;
        Ok((store, loaded))
    }

    /// Turns an SQLite error at start-up into "damaged" or "cannot open".
    fn classify(&self, e: Failure) -> StoreError {
        let path = self.path.clone();
        match e {
            Failure::Damaged(detail) => StoreError::Damaged { path, detail },
            Failure::Sql(e) if matches!(e.sqlite_error_code(), Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt)) => {
                StoreError::Damaged { path, detail: e.to_string() }
            }
            Failure::Sql(e) => StoreError::Open { path, detail: e.to_string() },
        }
    }

    fn prepare(&mut self, is_new: bool) -> Result<(), Failure> {
        let c = &self.conn;
        // Exclusive: the lock is taken by the first write below and held until the process
        // ends, so two hubs cannot share one history. It also lets WAL work without a
        // shared-memory file.
        c.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
        c.busy_timeout(std::time::Duration::ZERO)?;
        if is_new {
            // Must precede the first table: lets trimmed space go back to the file system.
            c.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
        }
        let mode: String = c.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Failure::Damaged(format!("cannot use the WAL journal (got {mode})")));
        }
        c.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT_BYTES)?;
        c.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)?;
        // Start-up writes are always flushed, whatever the policy: they decide the epoch.
        c.pragma_update(None, "synchronous", "FULL")?;
        if is_new {
            let tx = self.conn.transaction()?;
            tx.execute_batch(SCHEMA)?;
            tx.execute("INSERT INTO meta (key, value) VALUES ('format', ?1), ('epoch', ?2), ('head', 0)", params![FORMAT_VERSION, new_epoch()])?;
            tx.commit()?;
        } else {
            let check: Vec<String> = c.prepare("PRAGMA quick_check")?.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
            if check != ["ok"] {
                return Err(Failure::Damaged(format!("integrity check failed: {}", check.join("; "))));
            }
        }
        let dirty_boot: Option<String> = self.meta_text("unsynced_boot")?;
        let boot = boot_id();
        let tx = self.conn.transaction()?;
        if dirty_boot.is_some_and(|b| b != boot) {
            // The last run acknowledged publishes without flushing them and the machine has
            // restarted since: the tail of the history may be gone, and its seqs would be
            // handed out again. A new epoch makes every client resync instead of resuming
            // past a hole.
            let epoch = new_epoch();
            tracing::warn!(path = %self.path.display(), epoch = format_args!("{epoch:x}"), "unflushed publishes may have been lost in a machine restart; starting a new epoch");
            tx.execute("UPDATE meta SET value = ?1 WHERE key = 'epoch'", [epoch])?;
        }
        match self.fsync {
            FsyncPolicy::Always => tx.execute("DELETE FROM meta WHERE key = 'unsynced_boot'", [])?,
            FsyncPolicy::Never => tx.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('unsynced_boot', ?1)", [&boot])?,
        };
        tx.commit()?;
        if self.fsync == FsyncPolicy::Never {
            self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        }
        Ok(())
    }

    fn meta_int(&self, key: &str) -> Result<Option<i64>, Failure> {
        let v = self.conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get::<_, i64>(0)).optional();
        v.map_err(|e| match e {
            rusqlite::Error::InvalidColumnType(..) => Failure::Damaged(format!("meta {key} is not a number")),
            e => Failure::Sql(e),
        })
    }

    fn meta_text(&self, key: &str) -> Result<Option<String>, Failure> {
        Ok(self.conn.query_row("SELECT CAST(value AS TEXT) FROM meta WHERE key = ?1", [key], |r| r.get(0)).optional()?)
    }

    /// Brings a file written by an older hub to [`FORMAT_VERSION`], in one transaction.
    fn migrate(&mut self) -> Result<(), Failure> {
        let Some(mut format) = self.meta_int("format")? else { return Ok(()) };
        if format >= FORMAT_VERSION {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        for (from, sql) in MIGRATIONS {
            if *from == format {
                tx.execute_batch(sql)?;
                format += 1;
            }
        }
        tx.commit()?;
        tracing::info!(path = %self.path.display(), format, "data file upgraded");
        Ok(())
    }

    fn load(&mut self) -> Result<Loaded, Failure> {
        self.migrate()?;
        let missing = |k: &str| Failure::Damaged(format!("no {k} recorded"));
        let format = self.meta_int("format")?.ok_or_else(|| missing("format"))?;
        if format != FORMAT_VERSION {
            return Err(Failure::Damaged(format!("format {format}, this hub reads format {FORMAT_VERSION}")));
        }
        let epoch = self.meta_int("epoch")?.ok_or_else(|| missing("epoch"))?;
        let head = self.meta_int("head")?.ok_or_else(|| missing("head"))?;
        if epoch <= 0 || head < 0 {
            return Err(Failure::Damaged(format!("epoch {epoch} or head {head} out of range")));
        }
        let trims = self
            .conn
            .prepare("SELECT account, trimmed_through FROM accounts")?
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))?
            .collect::<Result<Vec<_>, _>>()?;
        let floors = self
            .conn
            .prepare("SELECT CAST(substr(key, 7) AS INTEGER), value FROM meta WHERE key LIKE 'floor:%'")?
            .query_map([], |r| Ok((r.get::<_, i64>(0)? as usize, r.get::<_, i64>(1)? as u64)))?
            .collect::<Result<Vec<_>, _>>()?;
        let mut events = Vec::new();
        let mut stmt = self.conn.prepare("SELECT account, seq, at_ms, payload, key, audience FROM events ORDER BY account, seq")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let seq = r.get::<_, i64>(1)?;
            if seq <= 0 || seq > head {
                return Err(Failure::Damaged(format!("an event has seq {seq}, outside 1..={head}")));
            }
            let account: String = r.get(0)?;
            let payload: String = r.get(3)?;
            let key: Option<String> = r.get(4)?;
            let audience = match r.get::<_, Option<String>>(5)? {
                None => None,
                Some(text) => Some(Audience::from_stored(&text).map_err(|e| Failure::Damaged(format!("event {seq} has an unreadable audience: {e}")))?.into()),
            };
            let at_ms = r.get::<_, i64>(2)? as u64;
            events.push(Row { account: account.into(), seq: seq as u64, at_ms, payload: payload.into(), key: key.map(Into::into), audience });
        }
        Ok(Loaded { epoch: epoch as u64, head: head as u64, trims, floors, events })
    }

    /// Stores new events, applies trims (`(account, trimmed_through)`: every event of the
    /// account at or below it is deleted) and records the head, in one transaction. Returns
    /// once the commit is as durable as the fsync policy promises.
    pub fn commit(&mut self, head: u64, rows: &[Row], trims: &[(std::sync::Arc<str>, u64)]) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut insert = tx.prepare_cached("INSERT INTO events (account, seq, at_ms, payload, key, audience) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?;
            for r in rows {
                let audience = r.audience.as_deref().map(Audience::to_stored);
                insert.execute(params![&*r.account, r.seq as i64, r.at_ms as i64, &*r.payload, r.key.as_deref(), audience])?;
            }
            let mut delete = tx.prepare_cached("DELETE FROM events WHERE account = ?1 AND seq <= ?2")?;
            let mut mark = tx.prepare_cached(
                "INSERT INTO accounts (account, trimmed_through) VALUES (?1, ?2)
                 ON CONFLICT (account) DO UPDATE SET trimmed_through = max(trimmed_through, excluded.trimmed_through)",
            )?;
            for (account, through) in trims {
                delete.execute(params![&**account, *through as i64])?;
                mark.execute(params![&**account, *through as i64])?;
            }
            tx.prepare_cached("UPDATE meta SET value = ?1 WHERE key = 'head'")?.execute([head as i64])?;
        }
        tx.commit()
    }

    /// Forgets accounts (`(account, trimmed_through)`) that retain no event, raising the floor
    /// of each one's bucket to its `trimmed_through`, in one transaction.
    pub fn forget(&mut self, forgotten: &[(std::sync::Arc<str>, u64)]) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        {
            // Events too: the window may have trimmed further than the file (see
            // `History::trim_node`) when committing that cut failed.
            let mut events = tx.prepare_cached("DELETE FROM events WHERE account = ?1")?;
            let mut account = tx.prepare_cached("DELETE FROM accounts WHERE account = ?1")?;
            let mut floor = tx.prepare_cached(
                "INSERT INTO meta (key, value) VALUES ('floor:' || ?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)",
            )?;
            for (name, through) in forgotten {
                events.execute([&**name])?;
                account.execute([&**name])?;
                floor.execute(params![floor_bucket(name) as i64, *through as i64])?;
            }
        }
        tx.commit()
    }

    /// Gives pages freed by trimming back to the file system (the file shrinks). Pages not
    /// given back are reused by later writes anyway; this keeps the file near the size of
    /// what is retained after a burst.
    pub fn reclaim(&self) -> rusqlite::Result<()> {
        self.conn.execute_batch("PRAGMA incremental_vacuum")
    }

    /// Flushes everything, folds the WAL back into the file and records a clean stop.
    pub fn close(self) -> rusqlite::Result<()> {
        self.conn.pragma_update(None, "synchronous", "FULL")?;
        self.conn.execute("DELETE FROM meta WHERE key = 'unsynced_boot'", [])?;
        self.conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        self.conn.close().map_err(|(_, e)| e)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A start-up failure before it is tied to the file's path.
#[derive(Debug)]
enum Failure {
    Sql(rusqlite::Error),
    Damaged(String),
}

impl From<rusqlite::Error> for Failure {
    fn from(e: rusqlite::Error) -> Self {
        Failure::Sql(e)
    }
}

/// A fresh epoch, as SQLite stores it (epochs fit in 32 bits).
fn new_epoch() -> i64 {
    crate::engine::history::new_epoch() as i64
}

/// Identifies the current boot of the machine, to tell a hub crash (the OS still holds every
/// unflushed write) from a machine restart (it may not). Where unknown, every start looks
/// like a new boot, which errs on the side of a new epoch.
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| format!("unknown-{:016x}", rand::random::<u64>()))
}
