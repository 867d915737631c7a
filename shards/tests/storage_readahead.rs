//! Sequential read-ahead of cold reads: exact data after a restart, hits
//! counted, shard and partition bounds, invalidation when the log changes
//! under it (deletion, ENOSPC rollback, fence), damaged bytes still reported.

mod storage_util;

use bytes::Bytes;
use ringmq_shards::{
    cache::TailCache,
    io::{faulty::SyncFault, FaultHandle, FaultyStorage, StorageRef},
    log::{readahead::ReadAheadSettings, Acks, LogConfig, LogError, PartitionLog},
};
use std::path::{Path, PathBuf};
use storage_util::*;

/// Small bounds so that a few hundred KiB of log exercise everything: 8 KiB
/// reads, 32 KiB per partition, 64 KiB per shard.
fn settings() -> ReadAheadSettings {
    ReadAheadSettings {
        partition_bytes: 32 << 10,
        shard_bytes: 64 << 10,
        chunk_bytes: 8 << 10,
    }
}

/// No tail cache: every read is cold.
fn cold_cache(readahead: ReadAheadSettings) -> TailCache {
    TailCache::with_readahead(0, readahead)
}

/// Batches of exactly 2000 bytes (32 per 64 KiB segment), so positions are
/// known: batch `i` lies at `(i % 32) * 2000` of segment `i / 32`.
const BATCH_BYTES: u64 = 2000;
const PER_SEGMENT: i64 = 32;
/// A read of this many bytes returns two batches.
const READ_BYTES: usize = 4000;

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 64 << 10,
        ..small_config()
    }
}

/// Writes `count` fixed-size batches, closes the log, returns the stored
/// batches as read back with read-ahead disabled.
async fn write_base(dir: &Path, count: i64) -> Vec<Bytes> {
    let log = open(dir, config()).await;
    let mut last = None;
    for i in 0..count {
        last = Some(
            log.append(make_batch(1, (BATCH_BYTES - 61) as usize, i), Acks::Fsync)
                .unwrap(),
        );
    }
    last.unwrap().durable.await.unwrap();
    log.close().await.unwrap();
    let log = open_with(
        storage(),
        dir,
        config(),
        cold_cache(ReadAheadSettings::disabled()),
    )
    .await;
    let reference = read_all_by(&log, 0, READ_BYTES).await;
    assert_eq!(
        log.readahead_stats().reads,
        0,
        "disabled read-ahead reads nothing"
    );
    log.close().await.unwrap();
    assert_eq!(reference.len() as i64, count);
    reference
}

async fn read_all_by(log: &PartitionLog, from: i64, max_bytes: usize) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut next = from;
    loop {
        let data = log.read(next, max_bytes).await.expect("read");
        if data.chunks.is_empty() {
            return out;
        }
        for c in data.chunks {
            next = header(&c).next_offset();
            out.push(c);
        }
    }
}

fn segment_path(dir: &Path, segment: i64) -> PathBuf {
    dir.join(format!("{:020}.log", segment * PER_SEGMENT))
}

/// Position of a byte inside batch `offset`'s payload, in its segment file.
fn payload_position(offset: i64) -> u64 {
    (offset % PER_SEGMENT) as u64 * BATCH_BYTES + 1000
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn sequential_cold_read_after_restart_is_exact_and_served_from_readahead() {
    run(|| async {
        let dir = tempdir();
        // Batches of varied sizes: read-ahead chunk boundaries fall anywhere
        // inside batches.
        let log = open(dir.path(), config()).await;
        let mut last = None;
        for i in 0..400i64 {
            let size = 300 + (i as usize * 977) % 5000;
            last = Some(
                log.append(make_batch(1 + (i % 4) as i32, size, i), Acks::Fsync)
                    .unwrap(),
            );
        }
        last.unwrap().durable.await.unwrap();
        log.close().await.unwrap();
        assert!(
            segment_files(dir.path(), "log").len() >= 5,
            "several segments"
        );

        let reference = {
            let log = open_with(
                storage(),
                dir.path(),
                config(),
                cold_cache(ReadAheadSettings::disabled()),
            )
            .await;
            let r = read_all_by(&log, 0, READ_BYTES).await;
            log.close().await.unwrap();
            r
        };

        // Restart: a fresh log and cache; every read is cold.
        let cache = cold_cache(settings());
        let log = open_with(storage(), dir.path(), config(), cache.clone()).await;
        let mut got = Vec::new();
        let mut next = 0;
        loop {
            let data = log.read(next, READ_BYTES).await.unwrap();
            let held = cache.readahead().stats().held_bytes;
            assert!(held <= settings().shard_bytes as u64, "{held} bytes held");
            if data.chunks.is_empty() {
                break;
            }
            for c in data.chunks {
                next = header(&c).next_offset();
                got.push(c);
            }
        }
        assert_eq!(
            got, reference,
            "read-ahead returns exactly the stored batches"
        );
        let stats = log.stats();
        // The first cold read starts a stream, the second confirms it is
        // sequential and starts reading ahead; every later one is a hit,
        // across segment boundaries too.
        assert_eq!(stats.readahead_misses, 2, "{stats:?}");
        assert_eq!(stats.readahead_hits, stats.cold_reads - 2, "{stats:?}");
        let ra = log.readahead_stats();
        assert!(
            ra.read_bytes > 0 && ra.hits == stats.readahead_hits,
            "{ra:?}"
        );
        log.readahead_settled().await;
        log.close().await.unwrap();
        assert_eq!(
            cache.readahead().stats().held_bytes,
            0,
            "closing releases everything read ahead"
        );
    });
}

#[test]
fn readahead_respects_the_shard_bound_across_partitions() {
    run(|| async {
        let root = tempdir();
        let a = root.path().join("a");
        let b = root.path().join("b");
        let reference = write_base(&a, 200).await;
        copy_dir(&a, &b);
        // Room for one and a half partitions' worth.
        let bounds = ReadAheadSettings {
            shard_bytes: 48 << 10,
            ..settings()
        };
        let cache = cold_cache(bounds);
        let la = open_with(storage(), &a, config(), cache.clone()).await;
        let lb = open_with(storage(), &b, config(), cache.clone()).await;
        let (mut na, mut nb) = (0i64, 0i64);
        let (mut ga, mut gb) = (Vec::new(), Vec::new());
        let mut peak = 0;
        while na < 200 || nb < 200 {
            for (log, next, got) in [(&la, &mut na, &mut ga), (&lb, &mut nb, &mut gb)] {
                if *next >= 200 {
                    continue;
                }
                let data = log.read(*next, READ_BYTES).await.unwrap();
                for c in data.chunks {
                    *next = header(&c).next_offset();
                    got.push(c);
                }
                let held = cache.readahead().stats().held_bytes;
                assert!(held <= bounds.shard_bytes as u64, "{held} bytes held");
                peak = peak.max(held);
            }
        }
        assert_eq!(ga, reference);
        assert_eq!(gb, reference);
        assert!(
            peak > bounds.partition_bytes as u64 / 2,
            "read-ahead ran: peak {peak}"
        );
        assert!(la.stats().readahead_hits > 0 && lb.stats().readahead_hits > 0);
        la.close().await.unwrap();
        lb.close().await.unwrap();
    });
}

#[test]
fn interleaved_and_concurrent_readers_get_exact_batches() {
    run(|| async {
        let dir = tempdir();
        let reference = write_base(dir.path(), 160).await;
        let log = open_with(storage(), dir.path(), config(), cold_cache(settings())).await;
        // Two readers far apart, alternating: each keeps replacing the
        // other's stream; both must still get exact data.
        let (mut x, mut y) = (0i64, 80i64);
        while x < 80 || y < 160 {
            for (next, end) in [(&mut x, 80), (&mut y, 160)] {
                if *next >= end {
                    continue;
                }
                let data = log.read(*next, READ_BYTES).await.unwrap();
                for c in data.chunks {
                    assert_eq!(c, reference[*next as usize]);
                    *next = header(&c).next_offset();
                }
            }
        }
        // Concurrent reads of the same sequential positions (two consumers
        // in step), with reads in flight when they start.
        let mut next = 0i64;
        while next < 160 {
            let t1 = glommio::spawn_local({
                let log = log.clone();
                async move { log.read(next, READ_BYTES).await.unwrap() }
            });
            let t2 = glommio::spawn_local({
                let log = log.clone();
                async move { log.read(next, READ_BYTES * 2).await.unwrap() }
            });
            let (d1, d2) = (t1.await, t2.await);
            for (i, c) in d1.chunks.iter().enumerate() {
                assert_eq!(c, &reference[next as usize + i]);
            }
            for (i, c) in d2.chunks.iter().enumerate() {
                assert_eq!(c, &reference[next as usize + i]);
            }
            next += d1.chunks.len() as i64;
        }
        log.close().await.unwrap();
    });
}

#[test]
fn a_reader_that_reaches_the_tail_cache_releases_its_readahead() {
    run(|| async {
        let dir = tempdir();
        let cache = TailCache::with_readahead(64 << 10, settings());
        let log = open_with(storage(), dir.path(), config(), cache.clone()).await;
        let mut last = None;
        for i in 0..200 {
            last = Some(log.append(make_batch(1, 1939, i), Acks::Fsync).unwrap());
        }
        last.unwrap().durable.await.unwrap();
        let got = read_all_by(&log, 0, READ_BYTES).await;
        assert_eq!(got.len(), 200);
        let stats = log.stats();
        assert!(
            stats.cache_reads > 0 && stats.readahead_hits > 0,
            "{stats:?}"
        );
        log.readahead_settled().await;
        assert_eq!(
            log.readahead_stats().held_bytes,
            0,
            "nothing stays read ahead once the tail cache serves the reader"
        );
        log.close().await.unwrap();
    });
}

#[derive(Debug, Clone, Copy)]
enum Change {
    /// Older segments deleted (retention, offsets compaction).
    DeleteSegments,
    /// A write failed with ENOSPC: unwritten appends rolled back.
    Rollback,
    /// An fdatasync failed: the partition is fenced.
    Fence,
}

async fn apply(change: Change, log: &PartitionLog, faults: &FaultHandle) {
    match change {
        Change::DeleteSegments => {
            assert_eq!(
                log.delete_segments_before(2 * PER_SEGMENT).await.unwrap(),
                2
            );
        }
        Change::Rollback => {
            faults.fill_disk();
            let r = log.append(make_batch(1, 100, 0), Acks::Fsync).unwrap();
            assert!(matches!(r.durable.await, Err(LogError::DiskFull { .. })));
            assert!(faults.stats().injected_enospc > 0);
            faults.free_space();
        }
        Change::Fence => {
            faults.set_sync_fault(SyncFault::Eio);
            let r = log.append(make_batch(1, 100, 0), Acks::Fsync).unwrap();
            assert!(r.durable.await.is_err());
            assert!(log.fenced().is_some());
        }
    }
}

/// Read-ahead holds bytes of segment 2; the file's bytes then change behind
/// the log's back (two batches damaged). Until the log itself changes, the
/// held (checked, undamaged) copy is served; after a change that
/// invalidates read-ahead, reads go to the file again and report the damage
/// instead of serving the stale copy.
#[test]
fn readahead_is_never_served_after_the_log_changes_under_it() {
    run(|| async {
        let root = tempdir();
        let base = root.path().join("base");
        let reference = write_base(&base, 10 * PER_SEGMENT).await;
        for change in [Change::DeleteSegments, Change::Rollback, Change::Fence] {
            let dir = root.path().join(format!("{change:?}"));
            copy_dir(&base, &dir);
            let (storage, faults): (StorageRef, FaultHandle) = FaultyStorage::wrap(storage(), 11);
            let log = open_with(storage, &dir, config(), cold_cache(settings())).await;
            // Three sequential reads in segment 2: offsets 64..70.
            let mut next = 2 * PER_SEGMENT;
            for _ in 0..3 {
                let data = log.read(next, READ_BYTES).await.unwrap();
                for c in data.chunks {
                    assert_eq!(c, reference[next as usize]);
                    next = header(&c).next_offset();
                }
            }
            assert_eq!(next, 70);
            log.readahead_settled().await;
            assert!(log.readahead_stats().held_bytes >= 16 << 10, "{change:?}");
            // Damage batches 72 and 80, both inside what is read ahead.
            let path = segment_path(&dir, 2);
            faults.flip_bit(&path, payload_position(72), 0x10).unwrap();
            faults.flip_bit(&path, payload_position(80), 0x10).unwrap();
            // Control: read-ahead serves its copy of 70..74 (read before
            // the damage, checked when served).
            let hits = log.stats().readahead_hits;
            for _ in 0..2 {
                let data = log.read(next, READ_BYTES).await.unwrap();
                for c in data.chunks {
                    assert_eq!(c, reference[next as usize], "{change:?}");
                    next = header(&c).next_offset();
                }
            }
            assert_eq!(next, 74);
            assert_eq!(log.stats().readahead_hits, hits + 2, "{change:?}");

            let invalidations = log.readahead_stats().invalidations;
            apply(change, &log, &faults).await;
            assert_eq!(
                log.readahead_stats().invalidations,
                invalidations + 1,
                "{change:?}"
            );
            // From here on, batch 80 must come from the file: reported.
            let err = loop {
                match log.read(next, READ_BYTES).await {
                    Ok(data) => {
                        assert!(!data.chunks.is_empty(), "{change:?}: read past 80");
                        for c in data.chunks {
                            assert_eq!(c, reference[next as usize], "{change:?}");
                            next = header(&c).next_offset();
                        }
                    }
                    Err(e) => break e,
                }
            };
            assert_eq!(next, 80, "{change:?}");
            assert!(
                matches!(&err, LogError::Corrupt { segment, offset: 80, .. } if *segment == path),
                "{change:?}: {err:?}"
            );
            drop(log);
        }
    });
}

/// Damage already on disk when read-ahead reads it is reported by the read
/// that reaches it, exactly like a plain cold read.
#[test]
fn damaged_bytes_read_ahead_are_reported_not_served() {
    run(|| async {
        let root = tempdir();
        let base = root.path().join("base");
        let reference = write_base(&base, 6 * PER_SEGMENT).await;
        for (name, offset) in [("first-in-read", 100i64), ("second-in-read", 131)] {
            let dir = root.path().join(name);
            copy_dir(&base, &dir);
            let (storage, faults) = FaultyStorage::wrap(storage(), 12);
            let path = segment_path(&dir, offset / PER_SEGMENT);
            faults
                .flip_bit(&path, payload_position(offset), 0x01)
                .unwrap();
            let log = open_with(storage, &dir, config(), cold_cache(settings())).await;
            assert!(log.recovery_report().clean_shutdown);
            let mut next = 0i64;
            let err = loop {
                match log.read(next, READ_BYTES).await {
                    Ok(data) => {
                        assert!(!data.chunks.is_empty(), "{name}: damage not reported");
                        for c in data.chunks {
                            assert_eq!(c, reference[next as usize], "{name}");
                            next = header(&c).next_offset();
                        }
                    }
                    Err(e) => break e,
                }
            };
            assert_eq!(
                next, offset,
                "{name}: everything before the damage is served"
            );
            assert!(
                matches!(&err, LogError::Corrupt { segment, offset: o, .. } if *segment == path && *o == offset),
                "{name}: {err:?}"
            );
            assert!(err.to_string().contains("cold read"), "{err}");
            // The reads up to the damage were served from read-ahead (the
            // failed read itself is in neither count).
            let stats = log.stats();
            assert_eq!(stats.readahead_misses, 2, "{name}: {stats:?}");
            assert_eq!(
                stats.readahead_hits + 3,
                stats.cold_reads,
                "{name}: {stats:?}"
            );
            log.close().await.unwrap();
        }
    });
}
