//! The invalidation resolver: from an activity to the query keys a cache must invalidate.
//!
//! Tiers, each falling through to the next when it yields nothing: parent → resource →
//! description. Keys are de-duplicated and a key covered by a shorter prefix key is dropped
//! (TanStack Query matches by prefix). What maps to what is data: a TOML profile loaded into a
//! [`Mapping`] (see `docs/mapping.md`). This module is pure: it neither logs nor counts nor
//! reads files; the caller sees which tier answered (or that none did) and reports it.

mod load;
mod mapping;
mod resolve;
mod suggest;

use serde::Serialize;
use serde_json::Value;

pub use load::{MappingError, MappingErrorKind};
pub use mapping::{
    AudienceRules, DescriptionEntry, GenericDefault, IdType, MAPPING_FORMAT, Mapping, PLACEHOLDER_ID, PLACEHOLDER_PARENT_ID,
    ParentEntry, ResourceEntry,
};
pub use resolve::{Explanation, Resolver};
pub use suggest::{Suggestion, suggest_entry};

/// A query key: a JSON array, matched by prefix.
pub type Key = Vec<Value>;

/// Which tier produced the keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    Parent,
    Resource,
    Description,
}

/// The keys for one activity. Clients apply `remove` before `invalidate`: a removed detail
/// key is usually covered by an invalidated list key, and must not be refetched first.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Resolution {
    /// Keys to invalidate (refetch when active).
    pub invalidate: Vec<Key>,
    /// Detail keys of deleted resources: remove from the cache rather than refetch (a refetch
    /// would hit a 404).
    pub remove: Vec<Key>,
    /// The tier that answered; `None` when no tier resolved the activity.
    pub tier: Option<Tier>,
}

impl Resolution {
    /// Whether some tier answered. An unresolved activity is the caller's to log and count.
    pub fn is_resolved(&self) -> bool {
        self.tier.is_some()
    }
}

/// How the generic default spells a type in a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TypeSpelling {
    /// Exactly as published (`edge_application`).
    AsPublished,
    /// Normalised to kebab-case (`edge-application`), as the original console's example did.
    #[default]
    KebabCase,
}

/// `created`, `edited` (or `updated`) and `deleted`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActivityKind {
    Created,
    Edited,
    Deleted,
}

impl ActivityKind {
    /// Missing or unknown values count as `edited`: refetching is the safe answer.
    pub fn of(activity: &Value) -> Self {
        let t = activity.get("activity_type").and_then(Value::as_str).map(str::trim).unwrap_or("");
        if t.eq_ignore_ascii_case("created") {
            Self::Created
        } else if t.eq_ignore_ascii_case("deleted") {
            Self::Deleted
        } else {
            Self::Edited
        }
    }
}

/// One spelling for every way a type is written: lower case, words separated by one space
/// (`Edge Application`, `edge-application` and `edge_application` are one type).
pub fn normalize_type(t: &str) -> String {
    let mut out = String::with_capacity(t.len());
    normalize_type_into(t, &mut out);
    out
}

/// [`normalize_type`] into a caller's buffer (cleared first), to spare an allocation per call.
pub fn normalize_type_into(t: &str, out: &mut String) {
    out.clear();
    let mut gap = false;
    for c in t.chars() {
        if c.is_whitespace() || c == '-' || c == '_' {
            gap = true;
            continue;
        }
        if gap && !out.is_empty() {
            out.push(' ');
        }
        gap = false;
        if c.is_ascii() {
            out.push(c.to_ascii_lowercase());
        } else {
            out.extend(c.to_lowercase());
        }
    }
}

/// The parent as `data.parent` or `data.resource.parent`, when it has a usable type and id.
pub fn parent(activity: &Value) -> Option<(&str, &Value)> {
    let (t, id) = parent_parts(activity)?;
    Some((t, id?))
}

/// The parent's type (trimmed; empty and `-` mean no parent) and its id when not null.
pub(crate) fn parent_parts(activity: &Value) -> Option<(&str, Option<&Value>)> {
    let p = activity.get("parent").filter(|p| p.is_object()).or_else(|| field(activity, "resource", "parent"))?;
    let t = usable_type(p.get("type"))?;
    Some((t, p.get("id").filter(|id| !id.is_null())))
}

/// The resource's type, trimmed, when it names one.
pub(crate) fn resource_type_raw(activity: &Value) -> Option<&str> {
    usable_type(activity.get("resource").and_then(|r| r.get("type")))
}

fn usable_type(t: Option<&Value>) -> Option<&str> {
    t.and_then(Value::as_str).map(str::trim).filter(|t| !t.is_empty() && *t != "-")
}

/// The resource's type in normalised form, for logging and counting unresolved activities.
pub fn resource_type(activity: &Value) -> Option<String> {
    resource_type_raw(activity).map(normalize_type)
}

/// The resource's id: `metadata.id`, else `resource.id`.
pub fn resource_id(activity: &Value) -> Option<&Value> {
    let not_null = |v: &&Value| !v.is_null();
    field(activity, "metadata", "id").filter(not_null).or_else(|| field(activity, "resource", "id").filter(not_null))
}

/// `value[outer][inner]`. Not `Value::pointer`, which allocates for every path segment.
fn field<'a>(value: &'a Value, outer: &str, inner: &str) -> Option<&'a Value> {
    value.get(outer)?.get(inner)
}

/// Removes duplicates and every key that has a shorter key as its prefix, keeping the first
/// occurrence order.
pub fn dedupe_prefixes(keys: Vec<Key>) -> Vec<Key> {
    let mut out: Vec<Key> = Vec::with_capacity(keys.len());
    for key in keys {
        if out.iter().any(|k| key.starts_with(k)) {
            continue;
        }
        out.retain(|k| !k.starts_with(&key));
        out.push(key);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn generic_rule() {
        let r = Resolver::generic(TypeSpelling::KebabCase);
        let nested = json!({"activity_type":"created","resource":{"type":"rule_engine","parent":{"type":"edge_application","id":12345}}});
        assert_eq!(r.resolve(&nested).invalidate, vec![vec![json!("edge-application"), json!(12345)]]);
        let edited = json!({"activity_type":"edited","resource":{"type":"Edge Application"},"metadata":{"id":"7"}});
        assert_eq!(r.resolve(&edited).invalidate, vec![vec![json!("edge-application")]]);
        let deleted = json!({"activity_type":"deleted","resource":{"type":"edge_application","id":9}});
        let res = r.resolve(&deleted);
        assert_eq!(res.invalidate, vec![vec![json!("edge-application")]]);
        assert_eq!(res.remove, vec![vec![json!("edge-application"), json!(9)]]);
        assert_eq!(r.resolve(&json!({"activity_type":"edited"})).tier, None);
        let as_published = Resolver::generic(TypeSpelling::AsPublished);
        assert_eq!(as_published.resolve(&edited).invalidate, vec![vec![json!("Edge Application")]]);
    }

    #[test]
    fn prefix_dedupe() {
        let keys = vec![vec![json!("a"), json!(1)], vec![json!("b")], vec![json!("a")], vec![json!("b")]];
        assert_eq!(dedupe_prefixes(keys), vec![vec![json!("b")], vec![json!("a")]]);
    }

    #[test]
    fn normalisation() {
        for t in
            ["Edge Application", "edge-application", "edge_application", "  EDGE__application ", "edge - application"]
        {
            assert_eq!(normalize_type(t), "edge application", "{t:?}");
        }
        assert_eq!(normalize_type("Ünïcode_Type"), "ünïcode type");
        assert_eq!(normalize_type(" -_ "), "");
    }

    #[test]
    fn activity_kind() {
        let kind = |t: Value| ActivityKind::of(&json!({ "activity_type": t }));
        assert_eq!(kind(json!("Deleted")), ActivityKind::Deleted);
        assert_eq!(kind(json!("created")), ActivityKind::Created);
        assert_eq!(kind(json!("updated")), ActivityKind::Edited);
        assert_eq!(kind(json!(null)), ActivityKind::Edited);
    }
}
