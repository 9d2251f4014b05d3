//! Grants as credentials carry them, and one shared set per distinct set of grants.
//!
//! A credential's grants come from a static token's `grants`, a JWT claim (an array of
//! strings, or one space-separated string as OAuth's `scope`), or an introspection answer's
//! `grants` array; [`from_claim`] reads the last two. The rules of a grant and the check of an
//! audience are `tidings_protocol::audience`; this module only reads and shares.
//!
//! **Sharing.** Thousands of streams of one role hold the same grants. [`GrantSets::share`]
//! hands every identity with an equal set the same `Arc`, so a stream costs one pointer
//! whatever its grants, however its credential was verified. The table holds weak
//! references: a set lives as long as some identity holds it, and dead entries are dropped
//! as the table grows.
//!
//! What it does not do: log. Grants say what someone may see and are never logged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use serde_json::Value;
use tidings_protocol::Grants;
use tidings_protocol::audience::{GrantError, IDENTITY_GRANTS_MAX};

/// Entries the table may reach before dead ones are swept; after a sweep the next one comes
/// at twice the live entries, so sweeping costs O(1) per insert whatever the churn.
const SWEEP_ENTRIES_MIN: usize = 1_024;

/// Why a credential's grants cannot be used (the message never repeats a grant).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClaimError {
    /// Neither an array of strings nor one string.
    #[error("grants must be an array of strings or one space-separated string")]
    Shape,
    /// A grant breaks a rule (length, characters, a reserved form) or there are too many.
    #[error(transparent)]
    Grant(#[from] GrantError),
}

/// The grants in a JWT claim or an introspection answer: an array of strings, or one string
/// of grants separated by whitespace. `None` (no claim) and `null` are no grants.
pub fn from_claim(value: Option<&Value>) -> Result<Grants, ClaimError> {
    match value {
        None | Some(Value::Null) => Ok(Grants::none()),
        Some(Value::String(s)) => {
            // Counted before collecting: a huge string is refused without building a huge set.
            if s.split_whitespace().nth(IDENTITY_GRANTS_MAX).is_some() {
                return Err(GrantError::TooMany(IDENTITY_GRANTS_MAX).into());
            }
            Ok(Grants::new(s.split_whitespace())?)
        }
        Some(Value::Array(items)) => {
            if items.len() > IDENTITY_GRANTS_MAX {
                return Err(GrantError::TooMany(IDENTITY_GRANTS_MAX).into());
            }
            let names: Option<Vec<&str>> = items.iter().map(Value::as_str).collect();
            Ok(Grants::new(names.ok_or(ClaimError::Shape)?)?)
        }
        Some(_) => Err(ClaimError::Shape),
    }
}

/// One `Arc` per distinct set of grants among the live identities.
#[derive(Debug)]
pub struct GrantSets {
    table: Mutex<Table>,
    /// The empty set, the most common one, handed out without taking the lock.
    empty: Arc<Grants>,
}

#[derive(Debug)]
struct Table {
    sets: HashMap<Grants, Weak<Grants>>,
    sweep_at: usize,
}

impl Default for GrantSets {
    fn default() -> Self {
        Self { table: Mutex::new(Table { sets: HashMap::new(), sweep_at: SWEEP_ENTRIES_MIN }), empty: Arc::new(Grants::none()) }
    }
}

impl GrantSets {
    /// The shared set equal to `grants`.
    pub fn share(&self, grants: Grants) -> Arc<Grants> {
        if grants.is_empty() {
            return self.empty.clone();
        }
        let mut t = self.table.lock().expect("grant sets lock");
        if let Some(shared) = t.sets.get(&grants).and_then(Weak::upgrade) {
            return shared;
        }
        if t.sets.len() >= t.sweep_at {
            t.sets.retain(|_, w| w.strong_count() > 0);
            t.sweep_at = (t.sets.len() * 2).max(SWEEP_ENTRIES_MIN);
        }
        let shared = Arc::new(grants.clone());
        t.sets.insert(grants, Arc::downgrade(&shared));
        shared
    }

    /// Distinct sets in the table, live or awaiting a sweep.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.lock().expect("grant sets lock").sets.len()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn claims_are_arrays_or_space_separated_strings() {
        let read = |v: Value| from_claim(Some(&v)).map(|g| g.iter().map(str::to_owned).collect::<Vec<_>>());
        assert_eq!(read(json!(["b:read", "a:read"])), Ok(vec!["a:read".into(), "b:read".into()]));
        assert_eq!(read(json!("a:read  b:read\tc")), Ok(vec!["a:read".into(), "b:read".into(), "c".into()]));
        assert_eq!(read(json!("")), Ok(vec![]));
        assert_eq!(read(json!(null)), Ok(vec![]));
        assert_eq!(from_claim(None), Ok(Grants::none()));
        for bad in [json!(7), json!({"a": 1}), json!(["a", 1]), json!([null])] {
            assert_eq!(read(bad.clone()), Err(ClaimError::Shape), "{bad}");
        }
        assert_eq!(read(json!(["user:eve"])), Err(ClaimError::Grant(GrantError::Reserved)));
        let many: Vec<String> = (0..=IDENTITY_GRANTS_MAX).map(|i| format!("g{i}")).collect();
        assert_eq!(read(json!(many)), Err(ClaimError::Grant(GrantError::TooMany(IDENTITY_GRANTS_MAX))));
        assert_eq!(read(json!(many.join(" "))), Err(ClaimError::Grant(GrantError::TooMany(IDENTITY_GRANTS_MAX))));
    }

    #[test]
    fn equal_sets_are_one_allocation_and_dead_ones_are_swept() {
        let sets = GrantSets::default();
        let a = sets.share(Grants::new(["x", "y"]).unwrap());
        let b = sets.share(Grants::new(["y", "x", "y"]).unwrap());
        assert!(Arc::ptr_eq(&a, &b));
        assert!(Arc::ptr_eq(&sets.share(Grants::none()), &sets.share(Grants::none())));
        drop((a, b));
        for i in 0..SWEEP_ENTRIES_MIN * 3 {
            drop(sets.share(Grants::new([format!("g{i}").as_str()]).unwrap()));
        }
        assert!(sets.len() <= SWEEP_ENTRIES_MIN + 1, "dead sets are swept: {}", sets.len());
        let kept: Vec<_> = (0..10).map(|i| sets.share(Grants::new([format!("k{i}").as_str()]).unwrap())).collect();
        for i in 0..SWEEP_ENTRIES_MIN * 3 {
            drop(sets.share(Grants::new([format!("h{i}").as_str()]).unwrap()));
        }
        let again = sets.share(Grants::new(["k3"]).unwrap());
        assert!(Arc::ptr_eq(&again, &kept[3]), "live sets survive sweeps");
    }
}
