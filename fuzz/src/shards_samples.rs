//! Valid index and checkpoint files to seed the fuzz corpus and to mutate
//! in `shards/tests/decoder_props.rs` (which includes this file by path).

use ringmq_shards::log::checkpoint::Checkpoint;
use ringmq_shards::log::index::{IndexTrailer, OffsetIndex};
use ringmq_shards::log::timeindex::TimeIndex;

fn trailer(segment_bytes: u64) -> IndexTrailer {
    IndexTrailer {
        entry_count: 0,
        segment_bytes,
        next_offset: 1_000,
        max_timestamp: 1_700_000_000_000,
    }
}

/// Offset index files: empty, one entry, several.
pub fn offset_index_files() -> Vec<Vec<u8>> {
    [0usize, 1, 7]
        .into_iter()
        .map(|n| {
            let mut index = OffsetIndex::new();
            for i in 0..n as u32 {
                index.push(i * 13 + 1, i * 4096 + 61);
            }
            index.encode(&trailer(u64::from(n as u32) * 4096 + 100))
        })
        .collect()
}

/// Time index files: empty, one entry, several (offsets repeat).
pub fn time_index_files() -> Vec<Vec<u8>> {
    [0usize, 1, 7]
        .into_iter()
        .map(|n| {
            let mut index = TimeIndex::new();
            for i in 0..n {
                index.maybe_push(1_700_000_000_000 + i as i64 * 1000, (i / 2) as u32 * 10);
            }
            index.encode(&trailer(1 << 20))
        })
        .collect()
}

pub fn checkpoint_files() -> Vec<Vec<u8>> {
    [(0, 0), (1_000, 10), (i64::MAX, -1)]
        .into_iter()
        .map(|(durable_offset, log_start_offset)| {
            Checkpoint {
                durable_offset,
                log_start_offset,
            }
            .encode()
            .to_vec()
        })
        .collect()
}
