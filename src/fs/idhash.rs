//! A fast hash for the tables keyed by numbers: node ids and file handles (which the daemon
//! hands out in sequence), host (device, inode) pairs and lookup hints (whose name part is
//! already a hash).
//!
//! std's default, SipHash-1-3 with random keys, is built to resist keys chosen by an attacker.
//! None of these keys are: the guest cannot pick a node id, a handle or an inode number, and a
//! name enters a hint only through its own hash. SipHash was 7% of the daemon's user-space
//! instructions per request on a replayed `ls -lR` (callgrind); this is a multiply and a final
//! mix, enough to spread sequential ids over hashbrown's buckets and its 7-bit tags (which
//! come from the hash's top bits).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Multiplier of the golden ratio (as in Fibonacci hashing): odd, bits well spread.
const K: u64 = 0x9e37_79b9_7f4a_7c15;

#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Not used by the keys above (they hash as integers); correct for any key anyway.
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(26) ^ n).wrapping_mul(K);
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_i32(&mut self, n: i32) {
        self.write_u64(u64::from(n as u32));
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn finish(&self) -> u64 {
        // The low bits of a product depend only on the low bits of its factors: fold the high
        // half down so that bucket indices (low bits) see every bit of the key.
        let h = self.0;
        h ^ (h >> 29) ^ (h >> 47)
    }
}

/// A `HashMap` hashed with [`IdHasher`].
pub type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::hash::{BuildHasher, Hash};

    fn hash<T: Hash>(v: T) -> u64 {
        BuildHasherDefault::<IdHasher>::default().hash_one(v)
    }

    #[test]
    fn sequential_ids_spread_over_buckets_and_tags() {
        // 4096 consecutive ids into 4096 buckets (low 12 bits) and over the 7-bit tags (top
        // bits): a poor spread would put many in few.
        let n = 4096u64;
        let buckets: HashSet<u64> = (1..=n).map(|i| hash(i) & (n - 1)).collect();
        assert!(
            buckets.len() > (n as usize) / 2,
            "{} buckets used",
            buckets.len()
        );
        let tags: HashSet<u64> = (1..=n).map(|i| hash(i) >> 57).collect();
        assert_eq!(tags.len(), 128);
    }

    #[test]
    fn pairs_differ_by_order() {
        assert_ne!(hash((1u64, 2u64)), hash((2u64, 1u64)));
        assert_ne!(hash((0u64, 5u64)), hash((5u64, 0u64)));
    }
}
