//! A small, fast, non-cryptographic hasher for maps keyed by names the
//! client itself controls (topic names of the producer's accumulator).
//!
//! std's SipHash resists hash flooding, which matters for maps filled from
//! untrusted input; here the keys are the application's own topic names and
//! the lookup runs once per `send`, where SipHash showed up in profiles.
//! This is the multiply-rotate scheme of rustc's FxHasher.

use std::hash::{BuildHasherDefault, Hasher};

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher {
    hash: u64,
}

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.add(u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

pub(crate) type FxBuildHasher = BuildHasherDefault<FxHasher>;
pub(crate) type FxHashMap<K, V> = std::collections::HashMap<K, V, FxBuildHasher>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn equal_strings_hash_equal_and_different_ones_differ() {
        let h = FxBuildHasher::default();
        assert_eq!(h.hash_one("orders"), h.hash_one(String::from("orders")));
        // Same prefix, lengths around the 8-byte word boundary.
        let names = [
            "",
            "a",
            "orders",
            "orders-1",
            "orders-12",
            "orders-123456789",
        ];
        let hashes: std::collections::HashSet<u64> = names.iter().map(|n| h.hash_one(n)).collect();
        assert_eq!(hashes.len(), names.len());
    }
}
