//! Helpers shared by the storage tests.
#![allow(dead_code)]

use bytes::{Bytes, BytesMut};
use glommio::{LocalExecutorBuilder, Placement};
use ringmq_shards::{
    cache::TailCache,
    io::{GlommioStorage, StorageRef},
    log::{LogConfig, PartitionLog},
};
use ringmq_wire::batch::header::{store_crc, BatchHeader, HEADER_SIZE};
use std::{future::Future, path::Path, time::Duration};

/// Runs `f` on a fresh glommio executor with a small io_memory (memlock is
/// 8 MiB on the CI box and tests run in parallel).
pub fn run<G, F>(f: G)
where
    G: FnOnce() -> F + Send + 'static,
    F: Future<Output = ()> + 'static,
{
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(1 << 20)
        .spawn(f)
        .expect("executor starts")
        .join()
        .expect("test executor panicked");
}

/// A valid v2 batch of `records` records, `payload` bytes of record data
/// (opaque filler: the log never parses records) and the given max timestamp.
pub fn make_batch(records: i32, payload: usize, max_ts: i64) -> BytesMut {
    assert!(records >= 1);
    let total = HEADER_SIZE + payload;
    let mut b = vec![0u8; total];
    b[8..12].copy_from_slice(&((total - 12) as i32).to_be_bytes());
    b[16] = 2;
    b[23..27].copy_from_slice(&(records - 1).to_be_bytes());
    b[27..35].copy_from_slice(&max_ts.to_be_bytes());
    b[35..43].copy_from_slice(&max_ts.to_be_bytes());
    b[43..51].copy_from_slice(&(-1i64).to_be_bytes());
    b[51..53].copy_from_slice(&(-1i16).to_be_bytes());
    b[53..57].copy_from_slice(&(-1i32).to_be_bytes());
    b[57..61].copy_from_slice(&records.to_be_bytes());
    for (i, x) in b[HEADER_SIZE..].iter_mut().enumerate() {
        *x = (i as u8).wrapping_mul(31).wrapping_add(records as u8);
    }
    store_crc(&mut b);
    BytesMut::from(&b[..])
}

/// Concatenation of several batches (one append call).
pub fn concat(batches: &[BytesMut]) -> BytesMut {
    let mut out = BytesMut::new();
    for b in batches {
        out.extend_from_slice(b);
    }
    out
}

pub fn header(b: &[u8]) -> BatchHeader {
    BatchHeader::parse(b).expect("header")
}

/// Splits read chunks into (base_offset, last_offset) pairs.
pub fn offsets(chunks: &[Bytes]) -> Vec<(i64, i64)> {
    chunks
        .iter()
        .map(|c| {
            let h = header(c);
            (h.base_offset, h.last_offset())
        })
        .collect()
}

pub fn storage() -> StorageRef {
    GlommioStorage::new()
}

pub fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 64 << 10,
        max_write_bytes: 256 << 10,
        max_queued_bytes: 8 << 20,
        ..LogConfig::default()
    }
}

pub async fn open(dir: &Path, config: LogConfig) -> PartitionLog {
    PartitionLog::open(storage(), dir, config, TailCache::new(4 << 20))
        .await
        .expect("open log")
}

pub async fn open_with(
    storage: StorageRef,
    dir: &Path,
    config: LogConfig,
    cache: TailCache,
) -> PartitionLog {
    PartitionLog::open(storage, dir, config, cache)
        .await
        .expect("open log")
}

/// Reads everything from `from` up to the high watermark.
pub async fn read_all(log: &PartitionLog, from: i64) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut next = from;
    loop {
        let data = log.read(next, 64 << 10).await.expect("read");
        if data.chunks.is_empty() {
            return out;
        }
        for c in data.chunks {
            let h = header(&c);
            assert!(h.last_offset() >= next, "read went backwards");
            next = h.next_offset();
            out.push(c);
        }
    }
}

/// A temporary directory on the real disk (ext4 under /tmp here).
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("ringmq-storage-")
        .tempdir()
        .expect("tempdir")
}

pub fn segment_files(dir: &Path, ext: &str) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

/// Waits until the log has done at least `n` preallocations. The allocator
/// runs beside the writes, so a test that looks at file sizes waits for it
/// (polling; gives up after about 10 s, a bound on a hung test, not a
/// timing check).
pub async fn wait_preallocations(log: &PartitionLog, n: u64) {
    for _ in 0..10_000 {
        if log.stats().preallocations >= n {
            return;
        }
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    panic!("fewer than {n} preallocations: {:?}", log.stats());
}

/// Waits until no preallocation is in flight (polling, up to about 10 s).
pub async fn wait_allocator_idle(log: &PartitionLog) {
    for _ in 0..10_000 {
        if !log.preallocation_in_flight() {
            return;
        }
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    panic!("a preallocation still in flight after 10 s");
}

pub fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}
