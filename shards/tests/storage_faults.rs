//! Error paths through `FaultyStorage` (shards/src/io/faulty.rs) around the
//! real storage, each with a negative control that shows the check can fail:
//! * ENOSPC: producers get `DiskFull`, reads keep working, writes resume
//!   once space is freed, offsets stay contiguous, nothing acked is lost;
//! * EIO from fdatasync or write: no acknowledgement for the covered
//!   batches, the partition is fenced; a storage that swallows the EIO lets
//!   acks out (and loses them at the next power loss);
//! * torn tails at every byte of the last batch and zero-filled tails;
//! * bit flips and misplaced blocks below the durable checkpoint are
//!   corruption (recovery refuses), the same damage above it is a torn tail;
//! * cold reads verify CRC32C and offsets, so damage in a sealed segment
//!   that recovery trusts without a scan is reported, not served;
//! * preallocated segments: fsync-acked writes into preallocated space
//!   survive a power loss, the zeros after them are a clean end; without
//!   fallocate support (or with the disk full) the log works as before.

mod storage_util;

use bytes::Bytes;
use ringmq_shards::{
    cache::TailCache,
    io::{
        faulty::{FaultHandle, SeedGuard, SyncFault, WriteFault},
        FaultyStorage, StorageRef,
    },
    log::{Acks, LogConfig, LogError, PartitionLog},
};
use std::path::{Path, PathBuf};
use storage_util::*;

const RERUN: &str = "cargo test -p ringmq-shards --test storage_faults";

fn faulty(seed: u64) -> (StorageRef, FaultHandle) {
    FaultyStorage::wrap(storage(), seed)
}

async fn reopen(faults: &FaultHandle, dir: &Path, config: LogConfig) -> PartitionLog {
    open_with(faults.storage(), dir, config, TailCache::new(1 << 20)).await
}

async fn reopen_err(faults: &FaultHandle, dir: &Path, config: LogConfig) -> LogError {
    PartitionLog::open(faults.storage(), dir, config, TailCache::new(1 << 20))
        .await
        .expect_err("recovery must refuse the log")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn only_log(dir: &Path) -> PathBuf {
    let mut logs = segment_files(dir, "log");
    assert_eq!(logs.len(), 1);
    logs.remove(0)
}

#[test]
fn disk_full_fails_the_pending_appends_reads_work_and_writes_resume() {
    run(|| async {
        let _g = SeedGuard::new(1, RERUN);
        let dir = tempdir();
        let (storage, faults) = faulty(1);
        let log = open_with(storage, dir.path(), small_config(), TailCache::new(1 << 20)).await;
        let ok = log.append(make_batch(1, 100, 0), Acks::Fsync).unwrap();
        ok.durable.await.unwrap();
        faults.fill_disk();
        let a = log.append(make_batch(2, 100, 0), Acks::Fsync).unwrap();
        let b = log.append(make_batch(1, 100, 0), Acks::Leader).unwrap();
        // The first write of an idle partition starts inside `append`; here
        // it fails at once, so `b` reuses the offsets given back by `a`.
        assert_eq!(a.base_offset, 1);
        assert!(b.base_offset == 1 || b.base_offset == 3);
        let ea = a.durable.await.unwrap_err();
        let eb = b.durable.await.unwrap_err();
        assert!(matches!(ea, LogError::DiskFull { .. }), "{ea:?}");
        assert!(matches!(eb, LogError::DiskFull { .. }));
        assert!(ea.to_string().contains("free space"), "{ea}");
        assert!(faults.stats().injected_enospc > 0);
        // The offsets were given back; nothing became visible.
        assert_eq!(log.log_end_offset(), 1);
        assert_eq!(log.high_watermark(), 1);
        assert!(log.fenced().is_none(), "ENOSPC does not fence");
        // Reads keep working while the disk is full (cache and cold).
        assert_eq!(offsets(&read_all(&log, 0).await), vec![(0, 0)]);
        // Still full: a retry fails the same way.
        let again = log.append(make_batch(1, 100, 0), Acks::Fsync).unwrap();
        assert!(matches!(
            again.durable.await,
            Err(LogError::DiskFull { .. })
        ));
        faults.free_space();
        let c = log.append(make_batch(1, 100, 0), Acks::Fsync).unwrap();
        assert_eq!(c.base_offset, 1, "offsets stay contiguous");
        c.durable.await.unwrap();
        let d = log.append(make_batch(3, 100, 0), Acks::Fsync).unwrap();
        d.durable.await.unwrap();
        assert_eq!(
            offsets(&read_all(&log, 0).await),
            vec![(0, 0), (1, 1), (2, 4)]
        );
        // A power loss now loses nothing that was acknowledged.
        faults.power_loss().await;
        drop(log);
        let log = reopen(&faults, dir.path(), small_config()).await;
        assert_eq!(
            offsets(&read_all(&log, 0).await),
            vec![(0, 0), (1, 1), (2, 4)]
        );
        log.close().await.unwrap();
    });
}

#[test]
fn disk_full_during_a_roll_rolls_back_and_resumes() {
    run(|| async {
        let _g = SeedGuard::new(2, RERUN);
        let dir = tempdir();
        let (storage, faults) = faulty(2);
        let config = LogConfig {
            segment_bytes: 4096,
            ..small_config()
        };
        let log = open_with(storage, dir.path(), config.clone(), TailCache::new(1 << 20)).await;
        let mut acked = Vec::new();
        for i in 0..6 {
            let r = log.append(make_batch(1, 1500, i), Acks::Fsync).unwrap();
            r.durable.await.unwrap();
            acked.push(i);
            if i == 2 {
                faults.fill_disk();
                let r = log.append(make_batch(1, 1500, 99), Acks::Fsync).unwrap();
                assert!(matches!(r.durable.await, Err(LogError::DiskFull { .. })));
                assert_eq!(read_all(&log, 0).await.len(), 3, "reads work");
                faults.free_space();
            }
        }
        let chunks = read_all(&log, 0).await;
        assert_eq!(offsets(&chunks), (0..6).map(|i| (i, i)).collect::<Vec<_>>());
        assert!(log.segment_count() > 1);
        faults.power_loss().await;
        drop(log);
        let log = reopen(&faults, dir.path(), config).await;
        assert_eq!(read_all(&log, 0).await, chunks);
        log.close().await.unwrap();
    });
}

#[test]
fn fdatasync_error_fails_every_covered_ack_and_fences_the_partition() {
    run(|| async {
        let _g = SeedGuard::new(3, RERUN);
        let dir = tempdir();
        let (storage, faults) = faulty(3);
        let log = open_with(storage, dir.path(), small_config(), TailCache::new(1 << 20)).await;
        log.append(make_batch(1, 100, 0), Acks::Fsync)
            .unwrap()
            .durable
            .await
            .unwrap();
        faults.set_sync_fault(SyncFault::Eio);
        let pending: Vec<_> = (0..5)
            .map(|i| {
                let acks = if i % 2 == 0 {
                    Acks::Fsync
                } else {
                    Acks::Leader
                };
                (acks, log.append(make_batch(1, 100, 0), acks).unwrap())
            })
            .collect();
        let mut fsync_failed = 0;
        for (acks, r) in pending {
            let result = r.durable.await;
            if acks == Acks::Fsync {
                let err = result.expect_err("no ack for a batch whose fdatasync failed");
                assert!(
                    matches!(
                        err,
                        LogError::Io {
                            op: "fdatasync",
                            ..
                        } | LogError::Fenced { .. }
                    ),
                    "{err:?}"
                );
                fsync_failed += 1;
            }
        }
        assert_eq!(fsync_failed, 3);
        assert!(faults.stats().injected_sync_eio >= 1);
        let fenced = log.fenced().expect("fenced");
        assert!(fenced.to_string().contains("fenced"), "{fenced}");
        assert_eq!(
            log.high_watermark(),
            1,
            "never visible without a good fdatasync"
        );
        // Never retry-and-ack: healing the disk does not unfence.
        faults.heal();
        let refused = log.append(make_batch(1, 100, 0), Acks::Fsync);
        assert!(matches!(refused, Err(LogError::Fenced { .. })));
        assert!(refused.err().unwrap().to_string().contains("restart"));
        // Reads of durable data still work.
        assert_eq!(
            offsets(&log.read(0, 1000).await.unwrap().chunks),
            vec![(0, 0)]
        );
        assert!(log.close().await.is_err());
        // A restart recovers; the acked batch is there, offsets contiguous.
        let log = reopen(&faults, dir.path(), small_config()).await;
        let chunks = read_all(&log, 0).await;
        assert_eq!(offsets(&chunks)[0], (0, 0));
        for (i, (b, l)) in offsets(&chunks).into_iter().enumerate() {
            assert_eq!((b, l), (i as i64, i as i64));
        }
        log.close().await.unwrap();
    });
}

#[test]
fn write_eio_fences_the_partition() {
    run(|| async {
        let _g = SeedGuard::new(4, RERUN);
        let dir = tempdir();
        let (storage, faults) = faulty(4);
        let log = open_with(storage, dir.path(), small_config(), TailCache::new(1 << 20)).await;
        log.append(make_batch(1, 100, 0), Acks::Fsync)
            .unwrap()
            .durable
            .await
            .unwrap();
        faults.set_write_fault(WriteFault::Eio);
        let a = log.append(make_batch(1, 100, 0), Acks::Leader).unwrap();
        assert!(matches!(
            a.durable.await,
            Err(LogError::Io { op: "write", .. })
        ));
        assert!(faults.stats().injected_write_eio > 0);
        assert!(log.fenced().is_some());
        assert!(matches!(
            log.append(make_batch(1, 100, 0), Acks::Fsync),
            Err(LogError::Fenced { .. })
        ));
        assert_eq!(log.high_watermark(), 1);
    });
}

#[test]
fn negative_control_a_storage_that_swallows_eio_lets_acks_out_and_loses_them() {
    run(|| async {
        // The checker sees acks: with the EIO swallowed, fsync acks resolve
        // Ok although nothing is durable, and a power loss takes them back.
        let mut acked = 0;
        let mut lost = 0;
        for seed in 0..20u64 {
            let _g = SeedGuard::new(seed, RERUN);
            let dir = tempdir();
            let (storage, faults) = faulty(seed);
            let log = open_with(storage, dir.path(), small_config(), TailCache::new(1 << 20)).await;
            log.append(make_batch(1, 100, 0), Acks::Fsync)
                .unwrap()
                .durable
                .await
                .unwrap();
            faults.set_sync_fault(SyncFault::SwallowedEio);
            let mut want = vec![(0, 0)];
            for i in 1..6 {
                let r = log.append(make_batch(1, 300, 0), Acks::Fsync).unwrap();
                r.durable.await.expect("the lie gets the ack out");
                want.push((i, i));
                acked += 1;
            }
            assert!(log.fenced().is_none());
            assert!(faults.stats().swallowed_sync_eio > 0);
            faults.power_loss().await;
            drop(log);
            match PartitionLog::open(
                faults.storage(),
                dir.path(),
                small_config(),
                TailCache::new(1 << 20),
            )
            .await
            {
                Ok(log) => {
                    let got = offsets(&read_all(&log, 0).await);
                    lost += want.len() - got.len().min(want.len());
                }
                // The checkpoint vouched for data the disk never got.
                Err(LogError::Corrupt { .. }) => lost += want.len(),
                Err(e) => panic!("{e}"),
            }
        }
        println!("negative control (swallowed EIO): acked {acked}, lost after power loss {lost}");
        assert_eq!(acked, 100);
        assert!(lost > 0, "a lying fdatasync must show losses");
    });
}

/// Appends `count` batches of `payload` bytes at fsync, writes the
/// checkpoint after the first `checkpointed` of them, and cuts the power
/// (everything was fsync'd, so nothing is lost). Returns batch end
/// positions.
async fn build(
    dir: &Path,
    faults: &FaultHandle,
    config: LogConfig,
    sizes: &[usize],
    checkpointed: usize,
) -> Vec<u64> {
    let log = reopen(faults, dir, config).await;
    let mut ends = Vec::new();
    let mut pos = 0;
    for (i, &s) in sizes.iter().enumerate() {
        log.append(make_batch(1, s, i as i64), Acks::Fsync)
            .unwrap()
            .durable
            .await
            .unwrap();
        pos += 61 + s as u64;
        ends.push(pos);
        if i + 1 == checkpointed {
            log.checkpoint().await.unwrap();
        }
    }
    faults.power_loss().await;
    drop(log);
    ends
}

fn no_checkpoint_interval() -> LogConfig {
    LogConfig {
        checkpoint_interval_ms: 1 << 40,
        ..small_config()
    }
}

#[test]
fn torn_tail_at_every_byte_of_the_last_batch_and_zero_filled_tails() {
    run(|| async {
        let _g = SeedGuard::new(5, RERUN);
        let root = tempdir();
        let base = root.path().join("base");
        let (_, faults) = faulty(5);
        let sizes = [100, 50, 3000, 120, 300];
        // Checkpoint after batch 4 of 5: the last batch is above it.
        let ends = build(&base, &faults, no_checkpoint_interval(), &sizes, 4).await;
        let log_name = only_log(&base).file_name().unwrap().to_owned();
        let (last_start, last_end) = (ends[3], ends[4]);
        let mut cuts: Vec<u64> = (last_start..last_end).collect();
        cuts.push(last_end);
        let original = std::fs::read(base.join(&log_name)).unwrap();
        let mut checked = 0;
        for (n, cut) in cuts.into_iter().enumerate() {
            let dir = root.path().join(format!("cut-{n}"));
            copy_dir(&base, &dir);
            let (_, f) = faulty(5);
            f.truncate_file(&dir.join(&log_name), cut).unwrap();
            if n % 2 == 1 {
                // The size reached the disk, the data did not.
                f.append_zeros(&dir.join(&log_name), 4096).unwrap();
            }
            let log = reopen(&f, &dir, no_checkpoint_interval()).await;
            let want = if cut == last_end { 5 } else { 4 };
            assert_eq!(log.log_end_offset(), want, "cut at {cut}");
            let chunks = read_all(&log, 0).await;
            assert_eq!(chunks.len(), want as usize);
            // No loss, no change of fsync-acked data below the checkpoint.
            let mut pos = 0;
            for c in &chunks {
                assert_eq!(&c[..], &original[pos..pos + c.len()]);
                pos += c.len();
            }
            checked += 1;
            drop(log);
            std::fs::remove_dir_all(&dir).unwrap();
        }
        assert_eq!(checked, sizes[4] + 61 + 1);

        // Negative control: the same tear one batch earlier is below the
        // checkpoint, so it is reported as lost acknowledged data.
        let dir = root.path().join("below");
        copy_dir(&base, &dir);
        let (_, f) = faulty(5);
        f.truncate_file(&dir.join(&log_name), ends[3] - 10).unwrap();
        let err = reopen_err(&f, &dir, no_checkpoint_interval()).await;
        assert!(matches!(err, LogError::Corrupt { .. }), "{err:?}");
    });
}

#[test]
fn bit_flip_and_misplaced_block_below_the_checkpoint_are_refused() {
    run(|| async {
        let _g = SeedGuard::new(6, RERUN);
        let root = tempdir();
        let base = root.path().join("base");
        let (_, faults) = faulty(6);
        let sizes = [1000; 12];
        // Checkpoint after 10 of 12 batches.
        let ends = build(&base, &faults, no_checkpoint_interval(), &sizes, 10).await;
        let log_name = only_log(&base).file_name().unwrap().to_owned();
        let len = std::fs::metadata(base.join(&log_name)).unwrap().len();

        // A bit flip in the middle of the segment (batch 5).
        let dir = root.path().join("flip");
        copy_dir(&base, &dir);
        let (_, f) = faulty(6);
        f.flip_bit(&dir.join(&log_name), ends[4] + 500, 0x04)
            .unwrap();
        let err = reopen_err(&f, &dir, no_checkpoint_interval()).await;
        assert!(
            matches!(&err, LogError::Corrupt { position, offset: 5, .. } if *position == ends[4]),
            "{err:?}"
        );
        assert_eq!(
            std::fs::metadata(dir.join(&log_name)).unwrap().len(),
            len,
            "nothing was truncated"
        );

        // A misplaced block: block 0 also written over block 1.
        let dir = root.path().join("misplaced");
        copy_dir(&base, &dir);
        let (_, f) = faulty(6);
        f.copy_block(&dir.join(&log_name), 0, 4096, 4096).unwrap();
        let err = reopen_err(&f, &dir, no_checkpoint_interval()).await;
        assert!(matches!(err, LogError::Corrupt { .. }), "{err:?}");
        assert_eq!(std::fs::metadata(dir.join(&log_name)).unwrap().len(), len);

        // Negative control: the same kind of flip above the checkpoint
        // (batch 11) is a torn tail: cut off, the log ends at 10.
        let dir = root.path().join("above");
        copy_dir(&base, &dir);
        let (_, f) = faulty(6);
        f.flip_bit(&dir.join(&log_name), ends[10] + 500, 0x04)
            .unwrap();
        let log = reopen(&f, &dir, no_checkpoint_interval()).await;
        assert_eq!(log.log_end_offset(), 11);
        assert!(log.recovery_report().torn_tail.is_some());
        drop(log);
    });
}

#[test]
fn cold_reads_of_damaged_sealed_segments_are_reported() {
    run(|| async {
        let _g = SeedGuard::new(7, RERUN);
        let root = tempdir();
        let base = root.path().join("base");
        let config = LogConfig {
            segment_bytes: 16 << 10,
            index_interval_bytes: 2048,
            ..small_config()
        };
        let log = open(&base, config.clone()).await;
        let mut last = None;
        for i in 0..40 {
            last = Some(log.append(make_batch(1, 939, i), Acks::Fsync).unwrap());
        }
        last.unwrap().durable.await.unwrap();
        log.close().await.unwrap();
        let logs = segment_files(&base, "log");
        assert!(logs.len() >= 3);
        let first = logs[0].file_name().unwrap().to_owned();
        let reference: Vec<Bytes> = {
            let log = open(&base, config.clone()).await;
            let r = read_all(&log, 0).await;
            log.close().await.unwrap();
            r
        };
        assert_eq!(reference.len(), 40);

        for (name, damage) in [
            ("flip", 0usize),
            ("misplaced", 1),
            ("flip-in-skipped-batch", 2),
        ] {
            let dir = root.path().join(name);
            copy_dir(&base, &dir);
            let (_, f) = faulty(7);
            let path = dir.join(&first);
            match damage {
                // Batch 5's payload.
                0 => f.flip_bit(&path, 5 * 1000 + 700, 0x01).unwrap(),
                // Block 0 duplicated over block 1 (batches 4..8).
                1 => f.copy_block(&path, 0, 4096, 4096).unwrap(),
                // Batch 4, which a read at offset 5 walks over.
                _ => f.flip_bit(&path, 4 * 1000 + 300, 0x80).unwrap(),
            }
            // The segment was closed cleanly: recovery trusts its index and
            // does not scan it.
            let log = reopen(&f, &dir, config.clone()).await;
            assert!(log.recovery_report().clean_shutdown);
            assert_eq!(log.recovery_report().scanned_bytes, 0);
            let err = log.read(5, 1).await.unwrap_err();
            assert!(
                matches!(&err, LogError::Corrupt { segment, .. } if segment == &path),
                "{name}: {err:?}"
            );
            assert!(err.to_string().contains("cold read"), "{err}");
            // Undamaged parts still read back exactly.
            let d = log.read(0, 1).await.unwrap();
            assert_eq!(d.chunks[0], reference[0]);
            let tail = read_all(&log, 20).await;
            assert_eq!(&tail[..], &reference[20..]);
            log.close().await.unwrap();
        }
        // Control: the undamaged copy serves offset 5.
        let log = open(&base, config).await;
        assert_eq!(log.read(5, 1).await.unwrap().chunks[0], reference[5]);
        log.close().await.unwrap();
    });
}

#[test]
fn a_misdirected_write_is_detected_not_served() {
    run(|| async {
        let _g = SeedGuard::new(8, RERUN);
        let dir = tempdir();
        let (storage, faults) = faulty(8);
        let config = no_checkpoint_interval();
        let log = open_with(storage, dir.path(), config.clone(), TailCache::new(1 << 20)).await;
        // Batches of 3061 bytes: the fourth write starts in block 2.
        for i in 0..3 {
            log.append(make_batch(1, 3000, i), Acks::Fsync)
                .unwrap()
                .durable
                .await
                .unwrap();
        }
        log.checkpoint().await.unwrap();
        // The next write lands two blocks early, over batch 0, and the disk
        // reports success: the ack goes out (the lie is the disk's).
        faults.misdirect_next_write(-8192);
        log.append(make_batch(1, 3000, 3), Acks::Fsync)
            .unwrap()
            .durable
            .await
            .unwrap();
        assert_eq!(faults.stats().misdirected_writes, 1);
        log.checkpoint().await.unwrap();
        // The tail cache holds what was appended; the disk does not.
        faults.power_loss().await;
        drop(log);
        let err = reopen_err(&faults, dir.path(), config).await;
        assert!(
            matches!(
                &err,
                LogError::Corrupt {
                    position: 0,
                    offset: 0,
                    ..
                }
            ),
            "{err:?}"
        );
    });
}

/// Power loss in a preallocated segment: the preallocation is durable with
/// the first fdatasync after it, fsync-acked writes into the preallocated
/// space survive, unsynced ones read back as zeros (the model of unwritten
/// extents), which recovery takes as the end of the log; appends continue
/// right after the last batch.
#[test]
fn power_loss_in_a_preallocated_segment_keeps_fsync_acks() {
    run(|| async {
        let _g = SeedGuard::new(11, RERUN);
        let dir = tempdir();
        let (_, faults) = faulty(11);
        faults.set_tear_mode(ringmq_shards::io::faulty::TearMode::None);
        let config = LogConfig {
            segment_bytes: 1 << 20,
            preallocate_bytes: 128 << 10,
            ..no_checkpoint_interval()
        };
        let log = reopen(&faults, dir.path(), config.clone()).await;
        let mut acked = Vec::new();
        for i in 0..30 {
            let r = log.append(make_batch(1, 900, i), Acks::Fsync).unwrap();
            r.durable.await.unwrap();
            acked.push(i);
        }
        wait_allocator_idle(&log).await;
        assert!(faults.stats().allocations >= 1, "{:?}", faults.stats());
        // One more fdatasync covers the preallocation, then unsynced writes.
        log.append(make_batch(1, 900, 30), Acks::Fsync)
            .unwrap()
            .durable
            .await
            .unwrap();
        for i in 31..40 {
            let _ = log.append(make_batch(1, 900, i), Acks::Leader).unwrap();
        }
        faults.power_loss().await;
        drop(log);
        let path = only_log(dir.path());
        let image = std::fs::read(&path).unwrap();
        let synced_end = 31 * 961;
        assert!(
            image.len() as u64 > align_up_4k(synced_end),
            "the durable preallocation is in the crash image: {} bytes",
            image.len()
        );
        let log = reopen(&faults, dir.path(), config).await;
        let end = log.log_end_offset();
        assert!((31..=40).contains(&end), "log end {end}");
        let report = log.recovery_report().clone();
        assert!(report.torn_tail.is_none(), "{report:?}");
        let chunks = read_all(&log, 0).await;
        assert_eq!(chunks.len() as i64, end);
        for (i, c) in chunks.iter().enumerate() {
            assert_eq!(&c[12..], &make_batch(1, 900, i as i64)[12..], "batch {i}");
        }
        let r = log.append(make_batch(1, 10, 99), Acks::Fsync).unwrap();
        assert_eq!(r.base_offset, end);
        r.durable.await.unwrap();
        log.close().await.unwrap();
        assert_eq!(file_len(&path), end as u64 * 961 + 71);
    });
}

fn align_up_4k(v: u64) -> u64 {
    v.div_ceil(4096) * 4096
}

/// A filesystem without fallocate (or a full disk when preallocating): the
/// log carries on without preallocation, the file ends at its last block.
#[test]
fn without_preallocation_the_log_works_as_before() {
    run(|| async {
        let _g = SeedGuard::new(12, RERUN);
        for refuse in [true, false] {
            let dir = tempdir();
            let (_, faults) = faulty(12);
            if refuse {
                faults.refuse_allocate();
            } else {
                faults.fill_disk();
            }
            let log = reopen(&faults, dir.path(), small_config()).await;
            // With the disk "full" the first append fails (and rolls back);
            // space comes back, preallocation stays skipped for that step.
            if !refuse {
                let r = log.append(make_batch(1, 100, 0), Acks::Fsync).unwrap();
                assert!(r.durable.await.is_err());
                wait_allocator_idle(&log).await;
                faults.free_space();
            }
            for i in 0..10 {
                let r = log.append(make_batch(1, 1000, i), Acks::Fsync).unwrap();
                r.durable.await.unwrap();
            }
            wait_allocator_idle(&log).await;
            let path = only_log(dir.path());
            if refuse {
                assert_eq!(log.stats().preallocations, 0);
                assert_eq!(faults.stats().allocations, 0);
                assert_eq!(file_len(&path), align_up_4k(10 * 1061));
            }
            assert_eq!(read_all(&log, 0).await.len(), 10);
            faults.power_loss().await;
            drop(log);
            let log = reopen(&faults, dir.path(), small_config()).await;
            assert_eq!(log.log_end_offset(), 10);
            log.close().await.unwrap();
            assert_eq!(file_len(&path), 10 * 1061);
        }
    });
}
