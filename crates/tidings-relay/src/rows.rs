//! Outbox rows as publish items, and what a publish failure means for them. No I/O.

use std::time::Duration;

use tidings_client::{PublishError, PublishItem};

use crate::schema::TableName;

/// One committed outbox row, as read.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    pub id: i64,
    pub account: String,
    /// The activity as JSON text (`jsonb` rendered by PostgreSQL).
    pub data: String,
    /// `created_at` in microseconds since the Unix epoch: part of the row's key.
    pub created_us: i64,
    /// How long ago the row was committed (or inserted, without `track_commit_timestamp`),
    /// by the database's clock, when it was read.
    pub age: Duration,
}

impl OutboxRow {
    /// The idempotency key of this row: the table, the id and the creation time. The same row
    /// always gets the same key, so a relay that crashed between the hub's `202` and the
    /// delete (or two relays that both sent it) is answered "duplicate" and nothing is
    /// delivered twice; the time keeps a reused id (a reset identity) from looking like an old
    /// row.
    pub fn key(&self, table: &TableName) -> String {
        format!("{}:{}:{}", table.bare(), self.id, self.created_us)
    }

    /// The row as a publish item, or why its data is not JSON (never with the schema's `jsonb`
    /// column; a table made by hand may hold anything).
    pub fn item(&self, table: &TableName) -> Result<PublishItem, serde_json::Error> {
        let data = serde_json::from_str(&self.data)?;
        Ok(PublishItem::new(self.account.clone(), data).with_key(self.key(table)))
    }
}

/// What a failed publish means for the rows in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The hub refused the content (400, 413, 422): some row of the batch can never be
    /// published as it is. One row alone is moved to the rejected table; a batch is split.
    RowsRefused,
    /// The hub cannot be reached, is unavailable, or refuses the relay itself (401, 403, a
    /// misconfigured URL): the rows stay, and the relay tries again later.
    HubUnavailable,
}

pub fn classify(e: &PublishError) -> Failure {
    match e {
        PublishError::Hub { status: 400 | 413 | 422, .. } | PublishError::Status { status: 413, .. } => Failure::RowsRefused,
        _ => Failure::HubUnavailable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, data: &str) -> OutboxRow {
        OutboxRow { id, account: "acme".into(), data: data.into(), created_us: 1_700_000_000_000_001, age: Duration::ZERO }
    }

    #[test]
    fn the_key_is_derived_from_the_row_alone() {
        let t = TableName::parse("app.outbox").unwrap();
        assert_eq!(row(42, "{}").key(&t), "outbox:42:1700000000000001");
        let item = row(42, r#"{"activity_type":"created"}"#).item(&t).unwrap();
        assert_eq!((item.account.as_str(), item.key.as_deref()), ("acme", Some("outbox:42:1700000000000001")));
        assert!(row(1, "{").item(&t).is_err());
        let longest = TableName::parse(&"t".repeat(crate::schema::TABLE_NAME_LEN_MAX)).unwrap();
        let key = OutboxRow { id: i64::MAX, created_us: i64::MIN, ..row(0, "{}") }.key(&longest);
        assert!(key.len() <= 128, "fits the hub's key limit: {}", key.len());
    }

    #[test]
    fn only_content_refusals_move_rows_aside() {
        let hub = |status| PublishError::Hub { status, code: "x".into(), field: None, message: "m".into() };
        assert_eq!(classify(&hub(422)), Failure::RowsRefused);
        assert_eq!(classify(&hub(413)), Failure::RowsRefused);
        assert_eq!(classify(&hub(401)), Failure::HubUnavailable, "a wrong publisher key is the relay's problem, not the rows'");
        assert_eq!(classify(&PublishError::Network("refused".into())), Failure::HubUnavailable);
    }
}
