//! Partition log: append/read at each durability level, rolls, retention,
//! reads, timestamps, backpressure, group commit, tmpfs and buffered I/O.

mod storage_util;

use bytes::Bytes;
use ringmq_shards::{
    cache::TailCache,
    io::GlommioStorage,
    log::{Acks, LogConfig, LogError},
};
use std::rc::Rc;
use storage_util::*;

#[test]
fn append_and_read_back_at_each_acks_level() {
    run(|| async {
        let dir = tempdir();
        let log = open(dir.path(), small_config()).await;
        let mut expected: Vec<(i64, i64)> = Vec::new();
        let mut next = 0;
        for acks in [Acks::None, Acks::Leader, Acks::Fsync] {
            for n in 1..=5 {
                let r = log
                    .append(make_batch(n, 100 * n as usize, 1_000 + n as i64), acks)
                    .unwrap();
                assert_eq!(r.base_offset, next);
                assert_eq!(r.last_offset, next + n as i64 - 1);
                expected.push((r.base_offset, r.last_offset));
                next = r.last_offset + 1;
                r.durable.await.unwrap();
                if acks == Acks::Fsync {
                    assert!(log.high_watermark() >= next, "fsync ack implies visibility");
                }
            }
        }
        log.wait_for_high_watermark(next - 1).await.unwrap();
        assert_eq!(log.log_end_offset(), next);
        assert_eq!(log.high_watermark(), next);
        let chunks = read_all(&log, 0).await;
        assert_eq!(offsets(&chunks), expected);
        for c in &chunks {
            ringmq_wire::batch::header::validate_batch(c).expect("stored batch valid");
        }
        log.close().await.unwrap();
    });
}

#[test]
fn offsets_follow_call_order_with_many_in_flight() {
    run(|| async {
        let dir = tempdir();
        let log = open(dir.path(), small_config()).await;
        let results: Vec<_> = (0..200)
            .map(|i| {
                log.append(make_batch(1 + i % 3, 300, i as i64), Acks::Fsync)
                    .unwrap()
            })
            .collect();
        let mut next = 0;
        let mut acks = Vec::new();
        for r in results {
            assert_eq!(r.base_offset, next);
            next = r.last_offset + 1;
            acks.push(r.durable);
        }
        for a in acks {
            a.await.unwrap();
        }
        let stats = log.stats();
        assert_eq!(stats.appends, 200);
        // Group commit: one fdatasync covers many appends.
        assert!(
            stats.fdatasyncs * 4 < stats.appends,
            "expected far fewer fdatasyncs than appends: {stats:?}"
        );
        assert!(
            stats.writes < stats.appends,
            "many batches per write: {stats:?}"
        );
        assert_eq!(read_all(&log, 0).await.len(), 200);
        log.close().await.unwrap();
    });
}

#[test]
fn concurrent_fsync_producers_share_fdatasyncs() {
    run(|| async {
        let dir = tempdir();
        let log = open(dir.path(), small_config()).await;
        let mut tasks = Vec::new();
        for p in 0..8 {
            let log = log.clone();
            tasks.push(glommio::spawn_local(async move {
                for i in 0..25 {
                    let r = log
                        .append(make_batch(1, 2000, p * 100 + i), Acks::Fsync)
                        .unwrap();
                    r.durable.await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await;
        }
        let stats = log.stats();
        assert_eq!(stats.appends, 200);
        assert!(stats.fdatasyncs < stats.appends / 2, "{stats:?}");
        log.close().await.unwrap();
    });
}

#[test]
fn roll_by_size_and_read_across_segments() {
    run(|| async {
        let dir = tempdir();
        let config = LogConfig {
            segment_bytes: 8192,
            index_interval_bytes: 512,
            ..small_config()
        };
        let log = open(dir.path(), config.clone()).await;
        let mut last = None;
        for i in 0..60 {
            last = Some(log.append(make_batch(2, 900, i), Acks::Leader).unwrap());
        }
        last.unwrap().durable.await.unwrap();
        log.wait_for_high_watermark(119).await.unwrap();
        assert!(
            log.segment_count() >= 7,
            "segments: {:?}",
            log.segment_bases()
        );
        let bases = log.segment_bases();
        assert_eq!(bases[0], 0);
        // Every offset reads back as the batch containing it.
        for off in 0..120 {
            let data = log.read(off, 1).await.unwrap();
            assert_eq!(data.chunks.len(), 1);
            let h = header(&data.chunks[0]);
            assert!(h.base_offset <= off && off <= h.last_offset());
        }
        assert_eq!(read_all(&log, 0).await.len(), 60);
        log.close().await.unwrap();
        // Sealed segments were trimmed to their logical size.
        for p in segment_files(dir.path(), "log") {
            let len = std::fs::metadata(&p).unwrap().len();
            assert!(
                len <= 8192 && len % (61 + 900) as u64 == 0,
                "{p:?} is {len} bytes"
            );
        }
        assert_eq!(segment_files(dir.path(), "index").len(), bases.len());
        // Reopen: cold reads through the loaded indexes.
        let log = open(dir.path(), config).await;
        assert!(log.recovery_report().clean_shutdown);
        assert!(log.recovery_report().indexes_rebuilt.is_empty());
        assert_eq!(log.segment_bases(), bases);
        assert_eq!(log.log_end_offset(), 120);
        for off in [0, 1, 17, 63, 119] {
            let data = log.read(off, 1).await.unwrap();
            let h = header(&data.chunks[0]);
            assert!(h.base_offset <= off && off <= h.last_offset());
        }
        let r = log.append(make_batch(1, 10, 0), Acks::Fsync).unwrap();
        assert_eq!(r.base_offset, 120);
        r.durable.await.unwrap();
        log.close().await.unwrap();
    });
}

#[test]
fn roll_by_age() {
    run(|| async {
        let dir = tempdir();
        let config = LogConfig {
            segment_ms: 1_000,
            ..small_config()
        };
        let log = open(dir.path(), config).await;
        let t0 = 1_700_000_000_000;
        log.append_at(make_batch(1, 10, t0), Acks::Leader, t0)
            .unwrap();
        log.append_at(make_batch(1, 10, t0), Acks::Leader, t0 + 999)
            .unwrap();
        assert_eq!(log.segment_count(), 1);
        let r = log
            .append_at(make_batch(1, 10, t0), Acks::Fsync, t0 + 1_000)
            .unwrap();
        assert_eq!(log.segment_bases(), vec![0, 2]);
        r.durable.await.unwrap();
        assert_eq!(
            offsets(&read_all(&log, 0).await),
            vec![(0, 0), (1, 1), (2, 2)]
        );
        log.close().await.unwrap();
    });
}

#[test]
fn retention_by_time() {
    run(|| async {
        let dir = tempdir();
        let config = LogConfig {
            segment_bytes: 4096,
            retention_ms: 10_000,
            ..small_config()
        };
        let log = open(dir.path(), config).await;
        let t0 = 1_700_000_000_000;
        // Old data: timestamps t0; newer data: t0 + 100 s.
        for i in 0..10 {
            log.append_at(make_batch(1, 1500, t0), Acks::Leader, t0 + i)
                .unwrap();
        }
        let mut last = None;
        for i in 0..10 {
            last = Some(
                log.append_at(make_batch(1, 1500, t0 + 100_000), Acks::Fsync, t0 + i)
                    .unwrap(),
            );
        }
        last.unwrap().durable.await.unwrap();
        let segments_before = log.segment_count();
        assert!(segments_before >= 8);
        // Nothing is old enough yet.
        assert_eq!(log.enforce_retention(t0 + 5_000).await.unwrap(), 0);
        let deleted = log.enforce_retention(t0 + 50_000).await.unwrap();
        assert!(deleted >= 4, "deleted {deleted}");
        let start = log.log_start_offset();
        assert!(start > 0 && start <= 10, "log start {start}");
        assert_eq!(log.segment_bases()[0], start);
        assert!(matches!(
            log.read(start - 1, 1000).await,
            Err(LogError::OffsetOutOfRange { .. })
        ));
        assert_eq!(
            header(&log.read(start, 10).await.unwrap().chunks[0]).base_offset,
            start
        );
        // Everything expires, but the active segment stays.
        log.enforce_retention(t0 + 10_000_000).await.unwrap();
        assert_eq!(log.segment_count(), 1);
        assert_eq!(segment_files(dir.path(), "log").len(), 1);
        log.close().await.unwrap();
    });
}

#[test]
fn retention_by_size() {
    run(|| async {
        let dir = tempdir();
        let config = LogConfig {
            segment_bytes: 4096,
            retention_bytes: 8192,
            ..small_config()
        };
        let log = open(dir.path(), config).await;
        let mut last = None;
        for i in 0..20 {
            last = Some(log.append(make_batch(1, 1900, i), Acks::Fsync).unwrap());
        }
        last.unwrap().durable.await.unwrap();
        let before = log.size_bytes();
        assert!(before > 16384);
        let deleted = log.enforce_retention(0).await.unwrap();
        assert!(deleted > 0);
        assert!(log.size_bytes() >= 8192 && log.size_bytes() < before);
        assert!(log.log_start_offset() > 0);
        assert!(matches!(
            log.read(0, 1000).await,
            Err(LogError::OffsetOutOfRange { .. })
        ));
        let chunks = read_all(&log, log.log_start_offset()).await;
        assert_eq!(header(chunks.last().unwrap()).base_offset, 19);
        log.close().await.unwrap();
    });
}

#[test]
fn read_semantics() {
    run(|| async {
        let dir = tempdir();
        let log = open(dir.path(), small_config()).await;
        let r1 = log.append(make_batch(10, 2000, 5), Acks::Fsync).unwrap();
        let r2 = log.append(make_batch(10, 2000, 6), Acks::Fsync).unwrap();
        r1.durable.await.unwrap();
        r2.durable.await.unwrap();
        // An offset inside a batch returns the whole batch.
        let d = log.read(5, 1).await.unwrap();
        assert_eq!(offsets(&d.chunks), vec![(0, 9)]);
        // max_bytes smaller than a batch still returns one whole batch.
        let d = log.read(10, 100).await.unwrap();
        assert_eq!(offsets(&d.chunks), vec![(10, 19)]);
        // Big enough for both.
        let d = log.read(0, 1 << 20).await.unwrap();
        assert_eq!(offsets(&d.chunks), vec![(0, 9), (10, 19)]);
        assert_eq!(d.high_watermark, 20);
        // At the high watermark: empty; past it: out of range.
        assert!(log.read(20, 100).await.unwrap().chunks.is_empty());
        assert!(matches!(
            log.read(21, 100).await,
            Err(LogError::OffsetOutOfRange { .. })
        ));
        assert!(matches!(
            log.read(-1, 100).await,
            Err(LogError::OffsetOutOfRange { .. })
        ));
        // Invalid input is refused without assigning offsets.
        let mut bad = make_batch(1, 10, 0);
        bad.truncate(bad.len() - 1);
        assert!(matches!(
            log.append(bad, Acks::Fsync),
            Err(LogError::InvalidBatch { .. })
        ));
        assert_eq!(log.log_end_offset(), 20);
        // Several batches in one append.
        let r = log
            .append(
                concat(&[make_batch(1, 10, 7), make_batch(3, 10, 8)]),
                Acks::Fsync,
            )
            .unwrap();
        assert_eq!((r.base_offset, r.last_offset), (20, 23));
        r.durable.await.unwrap();
        assert_eq!(
            offsets(&log.read(20, 1 << 20).await.unwrap().chunks),
            vec![(20, 20), (21, 23)]
        );
        log.close().await.unwrap();
        assert!(matches!(
            log.append(make_batch(1, 1, 1), Acks::Fsync),
            Err(LogError::Closed { .. })
        ));
    });
}

#[test]
fn offset_for_timestamp_finds_first_batch_at_or_after() {
    run(|| async {
        let dir = tempdir();
        let config = LogConfig {
            segment_bytes: 16 << 10,
            index_interval_bytes: 1024,
            ..small_config()
        };
        let log = open(dir.path(), config.clone()).await;
        let mut last = None;
        for i in 0..100i64 {
            // Timestamps 1000, 1010, ... with a dip every 7th batch.
            let ts = if i % 7 == 3 { 5 } else { 1000 + 10 * i };
            last = Some(log.append(make_batch(1, 500, ts), Acks::Fsync).unwrap());
        }
        last.unwrap().durable.await.unwrap();
        let check = |log: ringmq_shards::PartitionLog| async move {
            assert_eq!(log.offset_for_timestamp(0).await.unwrap(), Some((0, 1000)));
            assert_eq!(
                log.offset_for_timestamp(1000).await.unwrap(),
                Some((0, 1000))
            );
            assert_eq!(
                log.offset_for_timestamp(1001).await.unwrap(),
                Some((1, 1010))
            );
            assert_eq!(
                log.offset_for_timestamp(1500).await.unwrap(),
                Some((50, 1500))
            );
            // 1030 is batch 3, which dipped: the next one at or after is 4.
            assert_eq!(
                log.offset_for_timestamp(1025).await.unwrap(),
                Some((4, 1040))
            );
            assert_eq!(
                log.offset_for_timestamp(1990).await.unwrap(),
                Some((99, 1990))
            );
            assert_eq!(log.offset_for_timestamp(1991).await.unwrap(), None);
            log
        };
        let log = check(log).await;
        log.close().await.unwrap();
        let log = open(dir.path(), config).await;
        let log = check(log).await;
        log.close().await.unwrap();
    });
}

#[test]
fn backpressure_bounds_queued_bytes() {
    run(|| async {
        let dir = tempdir();
        let config = LogConfig {
            max_queued_bytes: 64 << 10,
            ..small_config()
        };
        let log = open(dir.path(), config).await;
        let r = log
            .append(make_batch(1, 60 << 10, 0), Acks::Leader)
            .unwrap();
        let err = log.append(make_batch(1, 10 << 10, 0), Acks::Leader);
        assert!(matches!(err, Err(LogError::QueueFull { .. })));
        log.reserve(10 << 10).await.unwrap();
        let r2 = log
            .append(make_batch(1, 10 << 10, 0), Acks::Leader)
            .unwrap();
        r.durable.await.unwrap();
        r2.durable.await.unwrap();
        // Many producers behind reserve all get through.
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let log = log.clone();
            tasks.push(glommio::spawn_local(async move {
                for _ in 0..10 {
                    log.reserve(30 << 10).await.unwrap();
                    let r = log.append(make_batch(1, 30 << 10, 0), Acks::Fsync).unwrap();
                    r.durable.await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await;
        }
        assert_eq!(log.log_end_offset(), 42);
        log.close().await.unwrap();
    });
}

#[test]
fn long_poll_wakes_when_high_watermark_advances() {
    run(|| async {
        let dir = tempdir();
        let log = open(dir.path(), small_config()).await;
        let waiter = {
            let log = log.clone();
            glommio::spawn_local(async move { log.wait_for_high_watermark(0).await })
        };
        glommio::yield_if_needed().await;
        let listener = log.watch();
        assert_eq!(log.high_watermark(), 0);
        log.append(make_batch(1, 10, 0), Acks::None).unwrap();
        listener.await;
        assert_eq!(waiter.await.unwrap(), 1);
        log.close().await.unwrap();
    });
}

#[test]
fn tail_cache_serves_tailing_reads_and_misses_after_eviction() {
    run(|| async {
        let dir = tempdir();
        let cache = TailCache::new(64 << 10);
        let log = open_with(storage(), dir.path(), small_config(), cache.clone()).await;
        let r = log.append(make_batch(1, 1000, 0), Acks::Fsync).unwrap();
        r.durable.await.unwrap();
        let before = cache.stats();
        let d = log.read(0, 1 << 20).await.unwrap();
        assert_eq!(offsets(&d.chunks), vec![(0, 0)]);
        let after = cache.stats();
        assert_eq!(after.hits, before.hits + 1);
        assert_eq!(log.stats().cold_reads, 0);
        // Push 0 out of the cache.
        let mut last = None;
        for _ in 0..40 {
            last = Some(log.append(make_batch(1, 4000, 0), Acks::Fsync).unwrap());
        }
        last.unwrap().durable.await.unwrap();
        assert!(cache.stats().evicted_batches > 0);
        assert!(cache.stats().used_bytes <= 64 << 10);
        let d = log.read(0, 1).await.unwrap();
        assert_eq!(offsets(&d.chunks), vec![(0, 0)]);
        assert_eq!(cache.stats().misses, after.misses + 1);
        assert_eq!(log.stats().cold_reads, 1);
        // The tail is still served from memory.
        let d = log.read(40, 1 << 20).await.unwrap();
        assert_eq!(offsets(&d.chunks), vec![(40, 40)]);
        assert_eq!(log.stats().cold_reads, 1);
        log.close().await.unwrap();
    });
}

fn tmpfs_dir() -> Option<tempfile::TempDir> {
    let shm = std::path::Path::new("/dev/shm");
    shm.is_dir()
        .then(|| {
            tempfile::Builder::new()
                .prefix("ringmq-tmpfs-")
                .tempdir_in(shm)
                .ok()
        })
        .flatten()
}

#[test]
fn works_on_tmpfs() {
    let Some(dir) = tmpfs_dir() else {
        eprintln!("no /dev/shm: skipped");
        return;
    };
    run(move || async move {
        let log = open(dir.path(), small_config()).await;
        let r = log.append(make_batch(3, 5000, 1), Acks::Fsync).unwrap();
        r.durable.await.unwrap();
        log.close().await.unwrap();
        let log = open(dir.path(), small_config()).await;
        assert_eq!(offsets(&read_all(&log, 0).await), vec![(0, 2)]);
        log.close().await.unwrap();
    });
}

#[test]
fn buffered_io_fallback_path_works() {
    let Some(dir) = tmpfs_dir() else {
        eprintln!("no /dev/shm: skipped");
        return;
    };
    run(move || async move {
        let storage = GlommioStorage::buffered();
        let log = open_with(
            storage.clone(),
            dir.path(),
            small_config(),
            TailCache::new(0),
        )
        .await;
        let mut last = None;
        for i in 0..50 {
            last = Some(log.append(make_batch(1, 333, i), Acks::Fsync).unwrap());
        }
        last.unwrap().durable.await.unwrap();
        assert!(storage.buffered_opens() > 0);
        assert_eq!(read_all(&log, 0).await.len(), 50);
        // Crash (no close) and recover.
        drop(log);
        let log = open_with(storage, dir.path(), small_config(), TailCache::new(0)).await;
        assert_eq!(log.log_end_offset(), 50);
        assert_eq!(read_all(&log, 0).await.len(), 50);
        log.close().await.unwrap();
    });
}

#[test]
fn delete_removes_the_partition() {
    run(|| async {
        let dir = tempdir();
        let path = dir.path().join("topic-0");
        let log = open(&path, small_config()).await;
        log.append(make_batch(1, 10, 0), Acks::Fsync)
            .unwrap()
            .durable
            .await
            .unwrap();
        log.delete().await.unwrap();
        assert!(!path.exists());
    });
}

#[test]
fn read_data_is_zero_copy_from_the_append() {
    run(|| async {
        let dir = tempdir();
        let log = open(dir.path(), small_config()).await;
        let r = log.append(make_batch(1, 100, 0), Acks::Fsync).unwrap();
        r.durable.await.unwrap();
        let a: Bytes = log.read(0, 1000).await.unwrap().chunks.remove(0);
        let b: Bytes = log.read(0, 1000).await.unwrap().chunks.remove(0);
        assert_eq!(
            a.as_ptr(),
            b.as_ptr(),
            "both served from the same cached Bytes"
        );
        let _keep = Rc::new(());
        log.close().await.unwrap();
    });
}

/// Large write buffers go back to the shard's pool when their write
/// completes and serve the next write of the same length: no fresh memory
/// (and no page faults on first touch) per write.
#[test]
fn large_write_buffers_are_reused() {
    run(|| async {
        use ringmq_shards::io::{GlommioStorage, OpenMode, POOLED_WRITE_MIN_BYTES};
        let dir = tempdir();
        let storage = GlommioStorage::new();
        let file = ringmq_shards::io::Storage::open(
            &*storage,
            &dir.path().join("f.log"),
            OpenMode::CreateTruncate,
        )
        .await
        .unwrap();
        if !file.is_direct() {
            eprintln!("no O_DIRECT here: the pool is for DMA buffers only");
            return;
        }
        let len = POOLED_WRITE_MIN_BYTES + (64 << 10);
        for i in 0..4u64 {
            let mut buf = file.alloc_buf(len);
            buf.as_mut_slice().fill(i as u8 + 1);
            assert_eq!(file.write_at(buf, i * len as u64).await.unwrap(), len);
        }
        // A smaller write does not take a pooled buffer (and is not pooled).
        let small = file.alloc_buf(4096);
        assert_eq!(file.write_at(small, 4 * len as u64).await.unwrap(), 4096);
        assert_eq!(storage.write_buffer_reuse(), (3, 1));
        let data = file.read_at(0, 4 * len).await.unwrap();
        for i in 0..4 {
            assert!(data[i * len..(i + 1) * len]
                .iter()
                .all(|&b| b == i as u8 + 1));
        }
        file.close().await.unwrap();
    });
}
