//! Kafka's key hash: `org.apache.kafka.common.utils.Utils.murmur2`, so that
//! a key lands on the same partition from ringmq clients as from Kafka's
//! default partitioner (DESIGN.md 3.6).

const SEED: u32 = 0x9747_b28c;
const M: u32 = 0x5bd1_e995;
const R: u32 = 24;

/// Kafka's murmur2 (MurmurHash2, 32-bit, seed 0x9747b28c), bit for bit,
/// including the signed result Java returns.
pub fn murmur2(data: &[u8]) -> i32 {
    // Java takes the length as an int; Kafka keys are far below 2 GiB.
    let length = data.len() as u32;
    let mut h = SEED ^ length;
    let mut words = data.chunks_exact(4);
    for word in &mut words {
        let mut k = u32::from_le_bytes(word.try_into().expect("chunks of 4"));
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    // Java's switch falls through from 3 to 2 to 1.
    let tail = words.remainder();
    if tail.len() == 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// Kafka's `Utils.toPositive`: clears the sign bit (not `abs`, which
/// overflows on `i32::MIN`).
pub fn to_positive(number: i32) -> i32 {
    number & 0x7fff_ffff
}

/// The partition Kafka's default partitioner picks for a non-null key:
/// `toPositive(murmur2(key)) % partition_count`.
///
/// Panics if `partition_count` is 0: a topic has at least one partition.
pub fn partition_for_key(key: &[u8], partition_count: u32) -> u32 {
    assert!(partition_count > 0, "a topic has at least one partition");
    let hash = u32::try_from(to_positive(murmur2(key))).expect("sign bit cleared");
    hash % partition_count
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_kafka_utils_test() {
        // org.apache.kafka.common.utils.UtilsTest#testMurmur2
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            (b"abc", 479470107),
        ];
        for (key, expected) in cases {
            assert_eq!(murmur2(key), expected, "{}", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn every_tail_length_is_hashed() {
        // Lengths 0..8 cover every remainder with and without full words;
        // each must differ from its neighbours (the tail bytes are mixed in).
        let data = b"abcdefgh";
        let hashes: Vec<i32> = (0..=data.len()).map(|n| murmur2(&data[..n])).collect();
        for pair in hashes.windows(2) {
            assert_ne!(pair[0], pair[1]);
        }
    }

    #[test]
    fn to_positive_clears_only_the_sign_bit() {
        assert_eq!(to_positive(i32::MIN), 0);
        assert_eq!(to_positive(-1), i32::MAX);
        assert_eq!(to_positive(5), 5);
    }

    #[test]
    fn partition_is_positive_hash_modulo_count() {
        // toPositive(-973932308) = 1173551340; 1173551340 % 10 = 0, % 7 = 5.
        assert_eq!(to_positive(-973932308), 1173551340);
        assert_eq!(partition_for_key(b"21", 10), 0);
        assert_eq!(partition_for_key(b"21", 7), 1173551340 % 7);
        for count in 1..50 {
            assert!(partition_for_key(b"foobar", count) < count);
        }
    }

    #[test]
    #[should_panic(expected = "at least one partition")]
    fn zero_partitions_is_a_bug() {
        partition_for_key(b"k", 0);
    }
}
