//! Keeps a `moka` cache fresh from a Tidings stream, with prefix invalidation.
//!
//! ```sh
//! TIDINGS_URL=http://127.0.0.1:8080 TIDINGS_TOKEN=tok-alice cargo run -p tidings-client --example moka_cache
//! ```
//!
//! Entries are keyed by their query key (a JSON array, each element kept as its JSON text so
//! `42` and `"42"` stay distinct, as TanStack Query keeps them). Invalidating `["domain"]`
//! evicts `["domain"]`, `["domain", 7]` and everything else under it; the next read refetches.

use std::sync::Arc;

use serde_json::Value;
use tidings_client::{Cache, Client, Event, Key, Resolver, TypeSpelling};

/// A query key in a hashable form: the JSON text of each element.
type CacheKey = Vec<String>;

fn cache_key(key: &Key) -> CacheKey {
    key.iter().map(Value::to_string).collect()
}

/// A read-through cache of query results, invalidated by the stream.
#[derive(Clone)]
struct QueryCache {
    inner: moka::sync::Cache<CacheKey, Value>,
}

impl QueryCache {
    fn new() -> Self {
        // Prefix invalidation needs `invalidate_entries_if`, which moka enables per cache.
        let inner = moka::sync::Cache::builder().max_capacity(10_000).support_invalidation_closures().build();
        Self { inner }
    }

    fn evict_prefix(&self, key: &Key) {
        let prefix = cache_key(key);
        // Only fails when closures are not enabled, which `new` does.
        self.inner
            .invalidate_entries_if(move |k, _| k.starts_with(&prefix))
            .expect("invalidation closures are enabled");
        // Closures run lazily; apply them now so the next read sees the eviction.
        self.inner.run_pending_tasks();
    }
}

impl Cache for QueryCache {
    fn invalidate(&self, key: &Key) {
        self.evict_prefix(key);
    }

    fn remove(&self, key: &Key) {
        self.evict_prefix(key);
    }

    fn invalidate_all(&self) {
        self.inner.invalidate_all();
    }
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let url = std::env::var("TIDINGS_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
    let token = std::env::var("TIDINGS_TOKEN").expect("set TIDINGS_TOKEN");
    let cache = QueryCache::new();
    let mut sub = Client::builder(url)
        .token_provider(move || {
            let token = token.clone();
            async move { Ok(token) }
        })
        .cache(Arc::new(cache.clone()))
        .resolver(Resolver::generic(TypeSpelling::KebabCase))
        .subscribe()
        .expect("valid configuration");
    while let Some(item) = sub.next().await {
        match item {
            Ok(Event::Activity { id, invalidate, remove, .. }) => {
                println!("activity {id:?}: invalidated {invalidate:?}, removed {remove:?}; {} entries left", cache.inner.entry_count());
            }
            Ok(event) => println!("{event:?}"),
            Err(error) => {
                eprintln!("stopped: {error}");
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prefix_invalidation_keeps_siblings_and_id_types_apart() {
        let cache = QueryCache::new();
        for key in [json!(["domain"]), json!(["domain", 7]), json!(["domain", "7"]), json!(["domains"]), json!(["user", 1])] {
            let key: Key = serde_json::from_value(key).unwrap();
            cache.inner.insert(cache_key(&key), json!("cached"));
        }
        cache.invalidate(&vec![json!("domain"), json!(7)]);
        assert!(cache.inner.contains_key(&cache_key(&vec![json!("domain"), json!("7")])));
        assert!(!cache.inner.contains_key(&cache_key(&vec![json!("domain"), json!(7)])));
        cache.invalidate(&vec![json!("domain")]);
        let left: Vec<_> = cache.inner.iter().map(|(k, _)| (*k).clone()).collect();
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(!cache.inner.contains_key(&cache_key(&vec![json!("domain"), json!("7")])));
        assert!(cache.inner.contains_key(&cache_key(&vec![json!("domains")])));
        cache.invalidate_all();
        cache.inner.run_pending_tasks();
        assert_eq!(cache.inner.iter().count(), 0);
    }
}
