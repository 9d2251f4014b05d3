//! Which shard holds an account: a fixed hash of its name, modulo the number of shards.
//!
//! Every node must compute the same answer, today and after any upgrade, or two nodes would
//! store one account's events on two servers; so the hash is spelled out here (FNV-1a, 64
//! bits, over the name's UTF-8 bytes) rather than taken from `std`, whose hasher is seeded at
//! random per process. It does not balance load by traffic: accounts spread evenly by count,
//! and one very busy account stays on one shard (its events need one order).

/// FNV-1a's 64-bit offset basis and prime (the published constants).
const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a (64 bits) of `bytes`.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET_BASIS, |h, &b| (h ^ u64::from(b)).wrapping_mul(FNV_PRIME))
}

/// The shard of `account` among `shards` (> 0): `fnv1a64(account) mod shards`. With one
/// shard, always 0.
pub fn shard_of(account: &str, shards: usize) -> usize {
    assert!(shards > 0, "an engine has at least one shard");
    (fnv1a64(account.as_bytes()) % shards as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pinned: changing any of these moves accounts between shards, which is a migration
    /// (docs/redis.md), never a refactoring.
    #[test]
    fn the_account_hash_never_changes() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
        let pinned = [("acme", 3, 2), ("globex", 3, 2), ("initech", 3, 0), ("acme", 2, 1), ("globex", 2, 0), ("4242", 2, 1), ("tenant-7", 5, 2), ("anything", 1, 0)];
        for (account, shards, expected) in pinned {
            assert_eq!(shard_of(account, shards), expected, "{account} of {shards}");
        }
    }

    #[test]
    fn accounts_spread_over_the_shards() {
        let mut counts = [0usize; 4];
        for i in 0..4_000 {
            counts[shard_of(&format!("tenant-{i}"), 4)] += 1;
        }
        assert!(counts.iter().all(|&c| (800..1_200).contains(&c)), "{counts:?}");
    }
}
