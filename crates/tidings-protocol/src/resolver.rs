//! The invalidation resolver: from an activity to the query keys a cache must invalidate.
//!
//! Tiers, each falling through to the next when it yields nothing: parent → resource →
//! description. Keys are de-duplicated and a key covered by a shorter prefix key is dropped
//! (TanStack Query matches by prefix). This module is pure: it neither logs nor counts; the
//! caller sees which tier answered (or that none did) and reports it.

use serde::Serialize;
use serde_json::Value;

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

/// The keys for one activity.
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

/// How the generic default spells a type in a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TypeSpelling {
    /// Exactly as published (`edge_application`).
    AsPublished,
    /// Normalised to kebab-case (`edge-application`), as the original console's example did.
    #[default]
    KebabCase,
}

/// Resolves activities to keys.
#[derive(Debug, Clone, Default)]
pub struct Resolver {
    spelling: TypeSpelling,
}

impl Resolver {
    /// The generic default: `[type]` for lists, `[type, metadata.id]` for details and
    /// `[parent.type, parent.id]` for a parent.
    pub fn generic(spelling: TypeSpelling) -> Self {
        Self { spelling }
    }

    pub fn resolve(&self, activity: &Value) -> Resolution {
        let kind = ActivityKind::of(activity);
        if let Some((ptype, pid)) = parent(activity) {
            let key = vec![Value::String(self.spell(ptype)), pid.clone()];
            return finish(vec![key], Vec::new(), Tier::Parent);
        }
        if let Some(rtype) = activity.pointer("/resource/type").and_then(Value::as_str).filter(|t| !t.trim().is_empty()) {
            let list = vec![Value::String(self.spell(rtype))];
            let mut invalidate = vec![list.clone()];
            let mut remove = Vec::new();
            if let Some(id) = resource_id(activity) {
                let mut detail = list;
                detail.push(id.clone());
                match kind {
                    ActivityKind::Deleted => remove.push(detail),
                    ActivityKind::Edited => invalidate.push(detail),
                    ActivityKind::Created => {}
                }
            }
            return finish(invalidate, remove, Tier::Resource);
        }
        Resolution::default()
    }

    fn spell(&self, t: &str) -> String {
        match self.spelling {
            TypeSpelling::AsPublished => t.to_owned(),
            TypeSpelling::KebabCase => normalize_type(t).replace(' ', "-"),
        }
    }
}

/// `created`, `edited` (or `updated`) and `deleted`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivityKind {
    Created,
    Edited,
    Deleted,
}

impl ActivityKind {
    pub fn of(activity: &Value) -> Self {
        match activity.get("activity_type").and_then(Value::as_str).map(str::to_ascii_lowercase).as_deref() {
            Some("created") => Self::Created,
            Some("deleted") => Self::Deleted,
            _ => Self::Edited,
        }
    }
}

/// One spelling for every way a type is written: lower case, words separated by one space
/// (`Edge Application`, `edge-application` and `edge_application` are one type).
pub fn normalize_type(t: &str) -> String {
    t.split(|c: char| c.is_whitespace() || c == '-' || c == '_')
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The parent as `data.parent` or `data.resource.parent`, when it has a usable type and id.
pub fn parent(activity: &Value) -> Option<(&str, &Value)> {
    let p = activity.get("parent").filter(|p| p.is_object()).or_else(|| activity.pointer("/resource/parent"))?;
    let t = p.get("type").and_then(Value::as_str).map(str::trim).filter(|t| !t.is_empty() && *t != "-")?;
    let id = p.get("id").filter(|id| !id.is_null())?;
    Some((t, id))
}

/// The resource's id: `metadata.id`, else `resource.id`.
pub fn resource_id(activity: &Value) -> Option<&Value> {
    [activity.pointer("/metadata/id"), activity.pointer("/resource/id")]
        .into_iter()
        .flatten()
        .find(|v| !v.is_null())
}

fn finish(invalidate: Vec<Key>, remove: Vec<Key>, tier: Tier) -> Resolution {
    Resolution { invalidate: dedupe_prefixes(invalidate), remove: dedupe_prefixes(remove), tier: Some(tier) }
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
}
