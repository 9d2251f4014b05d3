//! The outbox's SQL: the table a backend inserts into, the table refused rows are moved to,
//! and the trigger that wakes the relay. Text only; applying it is the caller's business
//! (`tidings relay postgres --print-schema`, or `--create-schema` at start).

/// The default outbox table (and `LISTEN` channel) name.
pub const TABLE_DEFAULT: &str = "tidings_outbox";
/// Longest table name accepted: PostgreSQL truncates identifiers at 63 bytes, and the
/// rejected table and trigger names add a suffix of up to 9 bytes.
pub const TABLE_NAME_LEN_MAX: usize = 54;

/// A table name the relay can put in SQL text as it is: lowercase ASCII letters, digits and
/// `_`, starting with a letter or `_`, optionally qualified by one schema (`app.outbox`).
/// Quoting would let any name through, but then every query, the trigger and the user's own
/// inserts would need the same quoting; a plain name is what people write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName(String);

impl TableName {
    pub fn parse(name: &str) -> Result<Self, crate::ConfigError> {
        let part_ok = |p: &str| {
            !p.is_empty()
                && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                && !p.as_bytes()[0].is_ascii_digit()
        };
        let parts: Vec<&str> = name.split('.').collect();
        if parts.len() > 2 || !parts.iter().all(|p| part_ok(p)) || parts.last().is_some_and(|t| t.len() > TABLE_NAME_LEN_MAX) {
            return Err(crate::ConfigError::TableName(name.to_owned()));
        }
        Ok(Self(name.to_owned()))
    }

    /// The name as written in SQL.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The unqualified table name: the `LISTEN` channel, and the stem of the other names.
    pub fn bare(&self) -> &str {
        self.0.rsplit('.').next().unwrap_or(&self.0)
    }

    /// Where rows the hub refused are moved.
    pub fn rejected(&self) -> String {
        format!("{}_rejected", self.0)
    }

    /// The advisory lock key that lets one relay of this table consume at a time: a stable
    /// hash of the qualified name (FNV-1a, so it is the same in every build and process).
    pub fn lock_key(&self) -> i64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in format!("tidings-relay:{}", self.0).bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h as i64
    }
}

/// The schema for `table`: idempotent (it can be applied again, and by several relays at
/// once, under a transaction-level advisory lock taken by the caller).
pub fn sql(table: &TableName) -> String {
    let t = table.as_str();
    let bare = table.bare();
    let rejected = table.rejected();
    format!(
        r#"-- The outbox: insert one row per activity in the same transaction as the change it
-- describes. The relay publishes committed rows to the hub, then deletes them.
CREATE TABLE IF NOT EXISTS {t} (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account    text        NOT NULL CHECK (account <> '' AND octet_length(account) <= 128),
    data       jsonb       NOT NULL CHECK (jsonb_typeof(data) = 'object'),
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Rows the hub refused as invalid (422, 413, 400), moved here with its answer so that one
-- bad row never blocks the rows behind it, and nothing is lost.
CREATE TABLE IF NOT EXISTS {rejected} (
    id          bigint      PRIMARY KEY,
    account     text        NOT NULL,
    data        jsonb       NOT NULL,
    created_at  timestamptz NOT NULL,
    rejected_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    error       text        NOT NULL
);

-- Wakes the relay at commit (NOTIFY is delivered when the inserting transaction commits,
-- and not at all when it rolls back); the relay also polls, so a missed wake-up only delays.
CREATE OR REPLACE FUNCTION {bare}_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{bare}', '');
    RETURN NULL;
END
$$;
DO $$
BEGIN
    -- Created only when missing: replacing it would lock the table against inserts.
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = '{bare}_notify' AND tgrelid = '{t}'::regclass) THEN
        CREATE TRIGGER {bare}_notify AFTER INSERT ON {t}
            FOR EACH STATEMENT EXECUTE FUNCTION {bare}_notify();
    END IF;
END
$$;
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_plain_identifiers() {
        for ok in ["tidings_outbox", "app.outbox_2", "_x"] {
            assert!(TableName::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Outbox", "a;drop table x", "a.b.c", "1abc", "a b", "\"q\"", &"x".repeat(TABLE_NAME_LEN_MAX + 1)] {
            assert!(TableName::parse(bad).is_err(), "{bad}");
        }
        let t = TableName::parse("app.outbox").unwrap();
        assert_eq!((t.bare(), t.rejected().as_str()), ("outbox", "app.outbox_rejected"));
    }

    #[test]
    fn lock_keys_are_stable_and_per_table() {
        let a = TableName::parse("tidings_outbox").unwrap();
        assert_eq!(a.lock_key(), TableName::parse("tidings_outbox").unwrap().lock_key());
        assert_ne!(a.lock_key(), TableName::parse("other_outbox").unwrap().lock_key());
    }
}
