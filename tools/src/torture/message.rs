//! The self-describing message value: who sent it, its sequence number and
//! a checksum, so that what is read back can be matched to the history.
//!
//! `[producer u64 BE][seq u64 BE][crc32 u32 BE][padding]`: the CRC32 (IEEE,
//! crc32fast) covers the first 16 bytes and the padding; the padding is a
//! pseudo-random function of (producer, seq), so it differs per message.

use super::rng::mix;

/// Bytes before the padding.
pub const HEADER_LEN: usize = 20;

/// The value of message `seq` of `producer`, `size` bytes long (at least
/// [`HEADER_LEN`]).
pub fn encode(producer: u64, seq: u64, size: usize) -> Vec<u8> {
    let size = size.max(HEADER_LEN);
    let mut out = vec![0u8; size];
    out[0..8].copy_from_slice(&producer.to_be_bytes());
    out[8..16].copy_from_slice(&seq.to_be_bytes());
    let mut state = mix(producer.rotate_left(40) ^ seq ^ 0xD6E8_FEB8_6659_FD93);
    for chunk in out[HEADER_LEN..].chunks_mut(8) {
        state = mix(state.wrapping_add(0x9E37_79B9_7F4A_7C15));
        chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
    }
    let crc = checksum(&out);
    out[16..20].copy_from_slice(&crc.to_be_bytes());
    out
}

fn checksum(value: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&value[0..16]);
    hasher.update(&value[HEADER_LEN..]);
    hasher.finalize()
}

/// `(producer, seq)` of a value, or why it is not one of ours.
pub fn decode(value: &[u8]) -> Result<(u64, u64), String> {
    if value.len() < HEADER_LEN {
        return Err(format!(
            "value of {} bytes is shorter than the {HEADER_LEN}-byte header",
            value.len()
        ));
    }
    let producer = u64::from_be_bytes(value[0..8].try_into().expect("8 bytes"));
    let seq = u64::from_be_bytes(value[8..16].try_into().expect("8 bytes"));
    let stored = u32::from_be_bytes(value[16..20].try_into().expect("4 bytes"));
    let actual = checksum(value);
    if stored != actual {
        return Err(format!(
            "checksum mismatch for producer {producer} seq {seq}: stored {stored:08x}, computed {actual:08x}"
        ));
    }
    Ok((producer, seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        for size in [0, 20, 21, 64, 1000] {
            let v = encode(3, 77, size);
            assert_eq!(v.len(), size.max(HEADER_LEN));
            assert_eq!(decode(&v).unwrap(), (3, 77));
            if v.len() > HEADER_LEN {
                let mut bad = v.clone();
                bad[HEADER_LEN] ^= 1;
                assert!(decode(&bad).is_err());
            }
            let mut bad = v.clone();
            bad[9] ^= 0x10;
            assert!(decode(&bad).is_err());
        }
        assert_ne!(encode(1, 2, 64), encode(1, 3, 64));
        assert!(decode(b"short").is_err());
    }
}
