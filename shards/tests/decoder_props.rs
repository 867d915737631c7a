//! Property tests of the on-disk index and checkpoint decoders against
//! hostile files: arbitrary bytes, and valid files with bit flips and
//! truncations, raw (the CRC32 must refuse them) and resealed (the entry
//! checks must refuse them, or they decode to an index that re-encodes to
//! the same bytes and whose lookups are monotonic). The invariants are the
//! `index` fuzz target's own (`fuzz/src/shards_checks.rs`, included by
//! path).

#[path = "../../fuzz/src/shards_checks.rs"]
mod shards_checks;
#[path = "../../fuzz/src/shards_samples.rs"]
mod shards_samples;

use proptest::prelude::*;
use ringmq_shards::log::checkpoint::Checkpoint;
use ringmq_shards::log::index::OffsetIndex;
use ringmq_shards::log::timeindex::TimeIndex;

fn mutate(
    mut bytes: Vec<u8>,
    flips: &[(prop::sample::Index, u8)],
    keep: Option<prop::sample::Index>,
) -> Vec<u8> {
    if !bytes.is_empty() {
        for (position, mask) in flips {
            let at = position.index(bytes.len());
            bytes[at] ^= mask;
        }
    }
    if let Some(keep) = keep {
        bytes.truncate(keep.index(bytes.len() + 1));
    }
    bytes
}

/// Every sample file with the mode byte of its format.
fn samples() -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    out.extend(
        shards_samples::offset_index_files()
            .into_iter()
            .map(|f| (0, f)),
    );
    out.extend(
        shards_samples::time_index_files()
            .into_iter()
            .map(|f| (1, f)),
    );
    out.extend(
        shards_samples::checkpoint_files()
            .into_iter()
            .map(|f| (2, f)),
    );
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = OffsetIndex::decode(&data);
        let _ = TimeIndex::decode(&data);
        let _ = Checkpoint::decode(&data);
        shards_checks::index(&data);
    }

    #[test]
    fn damaged_files_are_refused_or_re_encode_identically(
        which in any::<prop::sample::Index>(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 0..4),
        keep in prop::option::of(any::<prop::sample::Index>()),
        seal in any::<bool>(),
        monotonic in any::<bool>(),
    ) {
        let samples = samples();
        let (format, file) = samples[which.index(samples.len())].clone();
        let damaged = mutate(file.clone(), &flips, keep);
        if !seal && damaged != file {
            // Unsealed damage must be caught by the length, magic or CRC32
            // checks (a 32-bit CRC misses no burst of 32 bits or less).
            let refused = match format {
                0 => OffsetIndex::decode(&damaged).is_err(),
                1 => TimeIndex::decode(&damaged).is_err(),
                _ => Checkpoint::decode(&damaged).is_err(),
            };
            prop_assert!(refused, "damage went unnoticed");
        }
        let mode = format | if seal { 0x80 } else { 0 } | if monotonic { 0x40 } else { 0 };
        let mut input = vec![mode];
        input.extend(damaged);
        shards_checks::index(&input);
    }
}
