//! The cache hook: how a subscription tells an application cache what went stale.
//!
//! Keys are matched by prefix, as TanStack Query does: invalidating `["edge-application"]`
//! covers `["edge-application", 42]`. This module only routes keys; it holds no cache itself.

use serde_json::Value;
use tidings_protocol::resolver::{Key, Resolver};

/// An application cache driven by the stream. Calls are made from the subscription's task,
/// in stream order, before the matching [`crate::Event`] is yielded; keep them quick (mark
/// stale, schedule a refetch) rather than refetching inline.
pub trait Cache: Send + Sync {
    /// Every entry whose key starts with `key` is stale: refetch when next needed.
    fn invalidate(&self, key: &Key);
    /// Every entry whose key starts with `key` is gone (a deleted resource): drop it, do not
    /// refetch (that would hit a 404).
    fn remove(&self, key: &Key);
    /// Continuity was lost (`resync`, or a reconnect with no position to resume from):
    /// everything cached for the account is stale.
    fn invalidate_all(&self);
}

/// The keys of one activity: the hub's when it sent any, else the local resolver's.
pub(crate) fn keys_for(
    data: &Value,
    invalidate: Vec<Key>,
    remove: Vec<Key>,
    resolver: Option<&Resolver>,
) -> (Vec<Key>, Vec<Key>) {
    if !invalidate.is_empty() || !remove.is_empty() {
        return (invalidate, remove);
    }
    match resolver {
        Some(r) => {
            let res = r.resolve(data);
            if res.tier.is_none() {
                let kind = data.pointer("/resource/type").and_then(Value::as_str).unwrap_or("-");
                tracing::info!(resource_type = kind, "activity resolved to no keys");
            }
            (res.invalidate, res.remove)
        }
        None => (invalidate, remove),
    }
}

pub(crate) fn apply(cache: &dyn Cache, invalidate: &[Key], remove: &[Key]) {
    for key in remove {
        cache.remove(key);
    }
    for key in invalidate {
        cache.invalidate(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tidings_protocol::resolver::TypeSpelling;

    #[test]
    fn hub_keys_win_over_the_resolver() {
        let r = Resolver::generic(TypeSpelling::KebabCase);
        let data = json!({"activity_type":"edited","resource":{"type":"domain"},"metadata":{"id":1}});
        let hub = vec![vec![json!("custom")]];
        assert_eq!(keys_for(&data, hub.clone(), vec![], Some(&r)), (hub, vec![]));
    }

    #[test]
    fn resolver_fills_in_when_the_hub_sent_none() {
        let r = Resolver::generic(TypeSpelling::KebabCase);
        let data = json!({"activity_type":"deleted","resource":{"type":"edge_application","id":9}});
        let (inv, rem) = keys_for(&data, vec![], vec![], Some(&r));
        assert_eq!(inv, vec![vec![json!("edge-application")]]);
        assert_eq!(rem, vec![vec![json!("edge-application"), json!(9)]]);
        assert_eq!(keys_for(&data, vec![], vec![], None), (vec![], vec![]));
    }
}
