//! The index of idempotency keys behind [`History`](super::history::History): per account,
//! which keys name retained events, and the seq each one got.
//!
//! A key is remembered exactly as long as the event it named is retained in the account's
//! history: when history is trimmed through a seq (by count or by age), every key whose event
//! is at or below it is forgotten too ([`KeyMemory::forget_through`]). So memory is bounded by
//! the history bounds (at most one key per retained event), and "a duplicate" always means
//! "an event a resuming client can still be replayed". A key sent again after its event left
//! the window is a new publish: it is stored and delivered again.
//!
//! Only `History` uses it: the rule (what is a duplicate, when a key is forgotten) is written
//! there once for the memory and durable engines; the Redis engine keeps the same rule inside
//! its publish script (the memory has to be shared by every node there). This module does no
//! I/O and knows nothing about frames or windows.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Keys of every account, each with the seq its event got.
#[derive(Debug, Default)]
pub(crate) struct KeyMemory {
    accounts: HashMap<Arc<str>, AccountKeys>,
}

#[derive(Debug, Default)]
struct AccountKeys {
    seqs: HashMap<Arc<str>, u64>,
    /// The same keys in seq order, so trimming forgets from the front.
    order: VecDeque<(u64, Arc<str>)>,
}

impl KeyMemory {
    /// The seq the event named `key` got in `account`, if it is still remembered.
    pub fn get(&self, account: &str, key: &str) -> Option<u64> {
        self.accounts.get(account)?.seqs.get(key).copied()
    }

    /// Remembers that `key` named the event `seq` of `account` (replacing an older event of
    /// the same key that has left the window). Seqs are recorded in increasing order per
    /// account (the engines assign them so).
    pub fn insert(&mut self, account: &Arc<str>, key: &Arc<str>, seq: u64) {
        let keys = self.accounts.entry(account.clone()).or_default();
        keys.seqs.insert(key.clone(), seq);
        keys.order.push_back((seq, key.clone()));
    }

    /// Forgets every key of `account` whose event has a seq at or below `through` (the
    /// account's history was trimmed that far).
    pub fn forget_through(&mut self, account: &str, through: u64) {
        let Some(keys) = self.accounts.get_mut(account) else { return };
        while keys.order.front().is_some_and(|(seq, _)| *seq <= through) {
            if let Some((seq, key)) = keys.order.pop_front() {
                // The key may name a later event by now (sent again after this one aged out).
                if keys.seqs.get(&key) == Some(&seq) {
                    keys.seqs.remove(&key);
                }
            }
        }
        if keys.order.is_empty() {
            self.accounts.remove(account);
        }
    }

    /// Gives back the map's room once most of it is empty, as `History::shrink` does for its
    /// own: a map keeps its capacity, and one that held the keys of 300,000 accounts would
    /// keep about 50 MiB of table (2^19 slots of about 100 bytes) after every key was forgotten.
    pub fn shrink(&mut self) {
        if self.accounts.capacity() > 4 * self.accounts.len().max(1_024) {
            self.accounts.shrink_to_fit();
        }
    }

    /// How many keys are remembered, over all accounts.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.accounts.values().map(|k| k.seqs.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_per_account_and_forgotten_with_their_events() {
        let mut m = KeyMemory::default();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        m.insert(&a, &"k1".into(), 1);
        m.insert(&a, &"k2".into(), 3);
        m.insert(&b, &"k1".into(), 2);
        assert_eq!((m.get("a", "k1"), m.get("b", "k1"), m.get("a", "k3")), (Some(1), Some(2), None));
        m.forget_through("a", 2);
        assert_eq!((m.get("a", "k1"), m.get("a", "k2"), m.get("b", "k1")), (None, Some(3), Some(2)));
        m.forget_through("a", 3);
        m.forget_through("b", 1);
        assert_eq!(m.len(), 1);
        m.forget_through("b", 2);
        assert_eq!(m.len(), 0);
        assert!(m.accounts.is_empty(), "an account without keys takes no room");
    }

    #[test]
    fn an_emptied_map_gives_its_room_back() {
        let mut m = KeyMemory::default();
        let k: Arc<str> = "k".into();
        let accounts: Vec<Arc<str>> = (0..10_000).map(|i| format!("a{i}").into()).collect();
        for a in &accounts {
            m.insert(a, &k, 1);
        }
        for a in &accounts[..9_990] {
            m.forget_through(a, 1);
        }
        m.shrink();
        assert!(m.accounts.capacity() < 4 * 1_024, "capacity {} for {} accounts", m.accounts.capacity(), m.accounts.len());
    }

    #[test]
    fn a_key_sent_again_after_its_window_names_the_new_event() {
        let mut m = KeyMemory::default();
        let (a, k): (Arc<str>, Arc<str>) = ("a".into(), "k".into());
        m.insert(&a, &k, 1);
        // Its event aged out before upkeep trimmed it; the engine stored the key again.
        m.insert(&a, &k, 4);
        m.forget_through("a", 1);
        assert_eq!(m.get("a", "k"), Some(4), "trimming the old event keeps the new one's key");
        m.forget_through("a", 4);
        assert_eq!(m.get("a", "k"), None);
    }
}
