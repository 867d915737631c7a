//! The checks behind the `index` fuzz target: the sparse offset index, the
//! time index and the durable-end checkpoint. Plain functions over `&[u8]`
//! that panic on a broken invariant; `shards/tests/fuzz_regressions.rs`
//! includes this file by path to replay the committed corpus and crash
//! inputs in `cargo test`. Depends on `ringmq-shards` and `crc32fast` only.

use ringmq_shards::log::checkpoint::{
    Checkpoint, CHECKPOINT_MAGIC, CHECKPOINT_SIZE, CHECKPOINT_VERSION,
};
use ringmq_shards::log::index::{
    OffsetIndex, INDEX_ENTRY_SIZE, INDEX_MAGIC, INDEX_VERSION, TIMEINDEX_MAGIC, TRAILER_SIZE,
};
use ringmq_shards::log::timeindex::{TimeIndex, TIMEINDEX_ENTRY_SIZE};

/// Rewrites the trailer of an index file so that it passes the checks a
/// fuzzer cannot guess (magic, version, entry size, entry count, CRC32),
/// keeping the fuzzer's segment size, next offset and max timestamp. With
/// `monotonic`, the entries are first turned into strictly increasing ones
/// (cumulative sums of small steps), so that lookups see real indexes.
fn seal_index(bytes: &[u8], magic: u32, entry_size: usize, monotonic: bool) -> Vec<u8> {
    let mut file = bytes.to_vec();
    if file.len() < TRAILER_SIZE {
        file.resize(TRAILER_SIZE, 0);
    }
    let trailer_at = file.len() - TRAILER_SIZE;
    let count = trailer_at / entry_size;
    let mut trailer = file.split_off(trailer_at);
    file.truncate(count * entry_size);
    if monotonic {
        let (mut a, mut b) = (0u64, 0u64);
        for entry in file.chunks_exact_mut(entry_size) {
            // Steps of 1..=256 from the low bytes of each field.
            let (first, second) = entry.split_at_mut(entry_size - 4);
            a += u64::from(first[first.len() - 1]) + 1;
            b += u64::from(second[3]) + 1;
            let a_bytes = a.to_be_bytes();
            first.copy_from_slice(&a_bytes[8 - first.len()..]);
            second.copy_from_slice(&(b as u32).to_be_bytes());
        }
        if magic == INDEX_MAGIC {
            // Positions must lie inside the segment.
            let segment_bytes = a + 1 + u64::from(trailer[12]);
            trailer[12..20].copy_from_slice(&segment_bytes.to_be_bytes());
        }
    }
    trailer[0..4].copy_from_slice(&magic.to_be_bytes());
    trailer[4..6].copy_from_slice(&INDEX_VERSION.to_be_bytes());
    trailer[6..8].copy_from_slice(&(entry_size as u16).to_be_bytes());
    trailer[8..12].copy_from_slice(&(count as u32).to_be_bytes());
    file.extend_from_slice(&trailer);
    let crc_at = file.len() - 4;
    let crc = crc32fast::hash(&file[..crc_at]);
    file[crc_at..].copy_from_slice(&crc.to_be_bytes());
    file
}

/// Lookup targets: around every entry, the extremes, and a few from the file.
fn targets(keys: impl Iterator<Item = u64>, bytes: &[u8], max: u64) -> Vec<u64> {
    let mut targets = vec![0, max, max / 2];
    for key in keys {
        targets.extend([key.saturating_sub(1), key, key.saturating_add(1).min(max)]);
    }
    for chunk in bytes.chunks_exact(8).take(8) {
        targets.push(u64::from_be_bytes(chunk.try_into().unwrap()) % max.saturating_add(1).max(1));
    }
    targets.sort_unstable();
    targets
}

fn check_offset_index(file: &[u8]) {
    let Ok((index, trailer)) = OffsetIndex::decode(file) else {
        return;
    };
    let entries = index.entries();
    assert_eq!(entries.len(), trailer.entry_count as usize);
    for pair in entries.windows(2) {
        assert!(pair[0].relative_offset < pair[1].relative_offset);
        assert!(pair[0].position < pair[1].position);
    }
    for e in entries {
        assert!(u64::from(e.position) < trailer.segment_bytes);
    }
    assert_eq!(
        index.encode(&trailer),
        file,
        "decode-encode changed the file"
    );
    let mut last = None;
    for target in targets(
        entries.iter().map(|e| u64::from(e.relative_offset)),
        file,
        u64::from(u32::MAX),
    ) {
        let target = u32::try_from(target).expect("capped at u32::MAX");
        let found = index.lookup(target);
        match found {
            None => assert!(entries.first().is_none_or(|e| e.relative_offset > target)),
            Some(e) => {
                assert!(e.relative_offset <= target);
                let i = entries.iter().position(|x| *x == e).expect("an entry");
                assert!(entries
                    .get(i + 1)
                    .is_none_or(|n| n.relative_offset > target));
            }
        }
        assert!(
            found.map(|e| e.relative_offset) >= last,
            "lookup is not monotonic"
        );
        last = found.map(|e| e.relative_offset);
    }
    for target in targets(
        entries.iter().map(|e| u64::from(e.position)),
        file,
        u64::from(u32::MAX) + 1,
    ) {
        let mut cut = index.clone();
        cut.truncate_to_position(target);
        assert_eq!(
            cut.entries(),
            &entries[..cut.len()],
            "truncation keeps a prefix"
        );
        assert!(cut.entries().iter().all(|e| u64::from(e.position) < target));
        assert!(entries[cut.len()..]
            .iter()
            .all(|e| u64::from(e.position) >= target));
    }
}

fn check_time_index(file: &[u8]) {
    let Ok((index, trailer)) = TimeIndex::decode(file) else {
        return;
    };
    let entries = index.entries();
    assert_eq!(entries.len(), trailer.entry_count as usize);
    for pair in entries.windows(2) {
        assert!(pair[0].timestamp < pair[1].timestamp);
        assert!(pair[0].relative_offset <= pair[1].relative_offset);
    }
    assert_eq!(
        index.encode(&trailer),
        file,
        "decode-encode changed the file"
    );
    // Timestamps are i64: shift to u64 order for the target helper.
    let to_u = |t: i64| (t as u64) ^ (1 << 63);
    let to_i = |u: u64| (u ^ (1 << 63)) as i64;
    let mut last = None;
    for target in targets(entries.iter().map(|e| to_u(e.timestamp)), file, u64::MAX) {
        let target = to_i(target);
        let found = index.lookup(target);
        match found {
            None => assert!(entries.first().is_none_or(|e| e.timestamp > target)),
            Some(e) => {
                assert!(e.timestamp <= target);
                let i = entries.iter().position(|x| *x == e).expect("an entry");
                assert!(entries.get(i + 1).is_none_or(|n| n.timestamp > target));
            }
        }
        assert!(
            found.map(|e| e.timestamp) >= last,
            "lookup is not monotonic"
        );
        last = found.map(|e| e.timestamp);
    }
    for target in targets(
        entries.iter().map(|e| u64::from(e.relative_offset)),
        file,
        u64::from(u32::MAX),
    ) {
        let target = u32::try_from(target).expect("capped at u32::MAX");
        let mut cut = index.clone();
        cut.truncate_to_offset(target);
        assert_eq!(
            cut.entries(),
            &entries[..cut.len()],
            "truncation keeps a prefix"
        );
        assert!(cut.entries().iter().all(|e| e.relative_offset < target));
        assert!(entries[cut.len()..]
            .iter()
            .all(|e| e.relative_offset >= target));
    }
}

fn check_checkpoint(file: &[u8]) {
    if let Ok(checkpoint) = Checkpoint::decode(file) {
        assert_eq!(
            &checkpoint.encode()[..],
            &file[..CHECKPOINT_SIZE],
            "decode-encode changed the checkpoint"
        );
    }
}

/// Input: `[mode byte][file]`. `mode & 3` picks the format (0 offset
/// index, 1 time index, 2 and 3 checkpoint); bit 7 seals the file first (trailer / header
/// and CRC fixed up, see [`seal_index`]); bit 6 (with bit 7, indexes only)
/// makes the entries monotonic.
pub fn index(data: &[u8]) {
    let Some((&mode, bytes)) = data.split_first() else {
        return;
    };
    let seal = mode & 0x80 != 0;
    let monotonic = mode & 0x40 != 0;
    match mode & 3 {
        0 if seal => {
            check_offset_index(&seal_index(bytes, INDEX_MAGIC, INDEX_ENTRY_SIZE, monotonic))
        }
        0 => check_offset_index(bytes),
        1 if seal => check_time_index(&seal_index(
            bytes,
            TIMEINDEX_MAGIC,
            TIMEINDEX_ENTRY_SIZE,
            monotonic,
        )),
        1 => check_time_index(bytes),
        _ if seal => {
            let mut file = bytes.to_vec();
            file.resize(file.len().max(CHECKPOINT_SIZE), 0);
            file[0..4].copy_from_slice(&CHECKPOINT_MAGIC.to_be_bytes());
            file[4..8].copy_from_slice(&CHECKPOINT_VERSION.to_be_bytes());
            let crc = crc32fast::hash(&file[0..24]);
            file[24..28].copy_from_slice(&crc.to_be_bytes());
            check_checkpoint(&file);
        }
        _ => check_checkpoint(bytes),
    }
}
