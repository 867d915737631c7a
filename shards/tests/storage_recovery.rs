//! Recovery: torn tails at every byte, zero-filled tails (preallocated
//! space), index rebuilds, corruption below the durable checkpoint.

mod storage_util;

use ringmq_shards::log::{verify::verify_dir, Acks, LogConfig, LogError, PartitionLog};
use std::path::Path;
use storage_util::*;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn set_len(path: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

fn flip_bit(path: &Path, position: u64) {
    let mut data = std::fs::read(path).unwrap();
    data[position as usize] ^= 0x10;
    std::fs::write(path, data).unwrap();
}

/// Appends batches (fsync) and drops the log without closing it: a crash
/// after every append was acknowledged. Returns the batch end positions.
async fn build_and_crash(dir: &Path, config: LogConfig, sizes: &[usize]) -> Vec<u64> {
    let log = open(dir, config.clone()).await;
    let mut ends = Vec::new();
    let mut pos = 0u64;
    let mut last = None;
    for (i, &s) in sizes.iter().enumerate() {
        last = Some(
            log.append(
                make_batch(1 + (i as i32 % 3), s, 1000 + i as i64),
                Acks::Fsync,
            )
            .unwrap(),
        );
        pos += (61 + s) as u64;
        ends.push(pos);
    }
    last.unwrap().durable.await.unwrap();
    // The segment is preallocated beside the writes: crash once that is done
    // too, so that the file has its zero tail.
    wait_allocator_idle(&log).await;
    drop(log);
    ends
}

fn record_counts(sizes: &[usize]) -> Vec<i64> {
    (0..sizes.len()).map(|i| 1 + (i as i64 % 3)).collect()
}

#[test]
fn torn_tail_at_every_byte_of_the_last_batch() {
    run(|| async {
        let root = tempdir();
        let base = root.path().join("base");
        let sizes = [100, 50, 3000, 120, 300];
        let ends = build_and_crash(&base, small_config(), &sizes).await;
        let counts = record_counts(&sizes);
        let full_end: i64 = counts.iter().sum();
        let prev_end: i64 = full_end - counts[counts.len() - 1];
        let log_file = segment_files(&base, "log").remove(0);
        let original = std::fs::read(&log_file).unwrap();
        let file_len = original.len() as u64;
        assert_eq!(file_len % 4096, 0, "O_DIRECT writes pad to the block");
        let last_start = ends[ends.len() - 2];
        let last_end = ends[ends.len() - 1];
        assert!(
            file_len > 4096 * (last_end / 4096 + 1),
            "the segment is preallocated past its last block: {file_len}"
        );
        // Every byte of the last batch, then a sample of the padding.
        let cuts: Vec<u64> = (last_start..last_end)
            .chain((last_end..=file_len).step_by(509))
            .chain([file_len])
            .collect();
        for (n, cut) in cuts.into_iter().enumerate() {
            let dir = root.path().join(format!("cut-{n}"));
            copy_dir(&base, &dir);
            set_len(&dir.join(log_file.file_name().unwrap()), cut);
            let log = open(&dir, small_config()).await;
            let (want_end, want_size) = if cut >= last_end {
                (full_end, last_end)
            } else {
                (prev_end, last_start)
            };
            assert_eq!(log.log_end_offset(), want_end, "cut at {cut}");
            assert_eq!(log.high_watermark(), want_end);
            assert_eq!(log.size_bytes(), want_size);
            let report = log.recovery_report().clone();
            // A stub of the batch header that holds only the zero high
            // bytes of its base offset reads as zeros, like padding.
            let zero_stub = original[last_start as usize..cut.min(last_end) as usize]
                .iter()
                .all(|&b| b == 0);
            if cut >= last_end || zero_stub {
                // Padding and preallocated space: zeros, a clean end.
                assert_eq!(report.zero_tail_bytes, cut - want_size, "cut at {cut}");
                assert_eq!(report.truncated_bytes, 0, "cut at {cut}");
                assert!(report.torn_tail.is_none(), "cut at {cut}: {report:?}");
            } else {
                // Part of a batch: torn.
                assert_eq!(report.truncated_bytes, cut - want_size, "cut at {cut}");
                assert_eq!(report.zero_tail_bytes, 0, "cut at {cut}");
                assert!(report.torn_tail.is_some(), "cut at {cut}");
            }
            // Appends continue with the right offsets.
            let r = log.append(make_batch(2, 77, 5), Acks::Fsync).unwrap();
            assert_eq!(r.base_offset, want_end);
            r.durable.await.unwrap();
            let chunks = read_all(&log, 0).await;
            let expect_batches = if cut >= last_end {
                sizes.len() + 1
            } else {
                sizes.len()
            };
            assert_eq!(chunks.len(), expect_batches);
            assert_eq!(header(chunks.last().unwrap()).base_offset, want_end);
            drop(log);
            std::fs::remove_dir_all(&dir).unwrap();
        }
    });
}

#[test]
fn zero_filled_tail_is_a_clean_end_and_is_trimmed() {
    run(|| async {
        let dir = tempdir();
        let sizes = [500, 500, 500];
        let ends = build_and_crash(dir.path(), small_config(), &sizes).await;
        let log_file = segment_files(dir.path(), "log").remove(0);
        let len = std::fs::metadata(&log_file).unwrap().len();
        set_len(&log_file, len + 3 * 4096);
        let log = open(dir.path(), small_config()).await;
        assert_eq!(log.log_end_offset(), 6);
        let report = log.recovery_report().clone();
        assert!(report.torn_tail.is_none(), "{report:?}");
        assert_eq!(report.truncated_bytes, 0);
        assert_eq!(report.zero_tail_bytes, len + 3 * 4096 - ends[2]);
        assert_eq!(std::fs::metadata(&log_file).unwrap().len(), ends[2]);
        assert_eq!(read_all(&log, 0).await.len(), 3);
        log.close().await.unwrap();
    });
}

#[test]
fn missing_and_damaged_indexes_are_rebuilt() {
    run(|| async {
        let dir = tempdir();
        let config = LogConfig {
            segment_bytes: 8192,
            index_interval_bytes: 700,
            ..small_config()
        };
        let log = open(dir.path(), config.clone()).await;
        let mut last = None;
        for i in 0..40 {
            last = Some(
                log.append(make_batch(1, 600, 100 + i), Acks::Leader)
                    .unwrap(),
            );
        }
        last.unwrap().durable.await.unwrap();
        log.close().await.unwrap();
        let indexes = segment_files(dir.path(), "index");
        let timeindexes = segment_files(dir.path(), "timeindex");
        assert!(indexes.len() >= 4);
        std::fs::remove_file(&indexes[0]).unwrap();
        flip_bit(&timeindexes[1], 3);
        let len = std::fs::metadata(&indexes[2]).unwrap().len();
        set_len(&indexes[2], len - 3);
        let log = open(dir.path(), config.clone()).await;
        let rebuilt = &log.recovery_report().indexes_rebuilt;
        assert_eq!(rebuilt.len(), 3, "{rebuilt:?}");
        for off in 0..40 {
            let d = log.read(off, 1).await.unwrap();
            assert_eq!(header(&d.chunks[0]).base_offset, off);
        }
        assert_eq!(
            log.offset_for_timestamp(120).await.unwrap(),
            Some((20, 120))
        );
        log.close().await.unwrap();
        let report = verify_dir(dir.path());
        assert!(report.is_ok() && report.warnings() == 0, "{report}");
        // A second open finds everything in order.
        let log = open(dir.path(), config).await;
        assert!(log.recovery_report().indexes_rebuilt.is_empty());
        assert!(log.recovery_report().clean_shutdown);
        log.close().await.unwrap();
    });
}

#[test]
fn bit_flip_below_the_checkpoint_is_corruption_not_a_torn_tail() {
    run(|| async {
        let root = tempdir();
        let base = root.path().join("base");
        let sizes = [200; 10];
        let log = open(&base, small_config()).await;
        let mut last = None;
        for (i, &s) in sizes.iter().enumerate() {
            last = Some(log.append(make_batch(1, s, i as i64), Acks::Fsync).unwrap());
        }
        last.unwrap().durable.await.unwrap();
        log.checkpoint().await.unwrap();
        drop(log); // crash
        let log_name = segment_files(&base, "log")
            .remove(0)
            .file_name()
            .unwrap()
            .to_owned();
        let batch3 = 3 * 261u64;

        // With the checkpoint: corruption is reported with file and position.
        let dir = root.path().join("with-checkpoint");
        copy_dir(&base, &dir);
        flip_bit(&dir.join(&log_name), batch3 + 100);
        let err = PartitionLog::open(storage(), &dir, small_config(), Default::default())
            .await
            .unwrap_err();
        match &err {
            LogError::Corrupt {
                segment,
                position,
                offset,
                ..
            } => {
                assert_eq!(segment, &dir.join(&log_name));
                assert_eq!(*position, batch3);
                assert_eq!(*offset, 3);
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
        assert!(err.to_string().contains("corrupt"), "{err}");
        // Nothing was truncated.
        assert_eq!(
            std::fs::metadata(dir.join(&log_name)).unwrap().len(),
            std::fs::metadata(base.join(&log_name)).unwrap().len()
        );

        // Without a checkpoint the same damage looks like a torn tail.
        let dir = root.path().join("without-checkpoint");
        copy_dir(&base, &dir);
        std::fs::remove_file(dir.join("durable.checkpoint")).unwrap();
        flip_bit(&dir.join(&log_name), batch3 + 100);
        let log = open(&dir, small_config()).await;
        assert_eq!(log.log_end_offset(), 3);
        drop(log);

        // A log shorter than the checkpoint lost acknowledged data.
        let dir = root.path().join("short");
        copy_dir(&base, &dir);
        set_len(&dir.join(&log_name), 5 * 261);
        let err = PartitionLog::open(storage(), &dir, small_config(), Default::default())
            .await
            .unwrap_err();
        assert!(
            matches!(err, LogError::Corrupt { offset: 5, .. }),
            "{err:?}"
        );
    });
}

#[test]
fn corruption_in_a_sealed_segment_is_reported() {
    run(|| async {
        let dir = tempdir();
        let config = LogConfig {
            segment_bytes: 4096,
            ..small_config()
        };
        let log = open(dir.path(), config.clone()).await;
        let mut last = None;
        for i in 0..10 {
            last = Some(log.append(make_batch(1, 1000, i), Acks::Fsync).unwrap());
        }
        last.unwrap().durable.await.unwrap();
        log.close().await.unwrap();
        let logs = segment_files(dir.path(), "log");
        assert!(logs.len() >= 3);
        flip_bit(&logs[0], 1061 + 500);
        std::fs::remove_file(segment_files(dir.path(), "index").remove(0)).unwrap();
        let err = PartitionLog::open(storage(), dir.path(), config, Default::default())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, LogError::Corrupt { segment, position: 1061, offset: 1, .. } if segment == &logs[0]),
            "{err:?}"
        );
        let report = verify_dir(dir.path());
        assert!(!report.is_ok());
        assert!(report.to_string().contains("CRC"), "{report}");
    });
}

#[test]
fn crash_after_a_clean_restart_scans_from_the_last_index_entry() {
    run(|| async {
        let dir = tempdir();
        let config = LogConfig {
            index_interval_bytes: 1024,
            segment_bytes: 1 << 20,
            ..small_config()
        };
        let log = open(dir.path(), config.clone()).await;
        let mut last = None;
        for i in 0..100 {
            last = Some(log.append(make_batch(1, 400, i), Acks::Leader).unwrap());
        }
        last.unwrap().durable.await.unwrap();
        log.close().await.unwrap();
        let log = open(dir.path(), config.clone()).await;
        assert!(log.recovery_report().clean_shutdown);
        assert_eq!(log.recovery_report().scanned_bytes, 0);
        let mut last = None;
        for i in 0..50 {
            last = Some(
                log.append(make_batch(2, 400, 1000 + i), Acks::Fsync)
                    .unwrap(),
            );
        }
        last.unwrap().durable.await.unwrap();
        drop(log); // crash
        let log = open(dir.path(), config).await;
        let report = log.recovery_report().clone();
        assert!(!report.clean_shutdown);
        assert!(report.zero_tail_bytes > 0, "padding cut: {report:?}");
        assert!(report.torn_tail.is_none(), "no torn batch: {report:?}");
        assert!(
            report.scanned_bytes < 60 * 461,
            "scanned only from the last trusted index entry: {report:?}"
        );
        assert_eq!(log.log_end_offset(), 200);
        let chunks = read_all(&log, 0).await;
        assert_eq!(chunks.len(), 150);
        assert_eq!(
            log.offset_for_timestamp(1010).await.unwrap(),
            Some((120, 1010))
        );
        log.close().await.unwrap();
        let report = verify_dir(dir.path());
        assert!(report.is_ok() && report.warnings() == 0, "{report}");
    });
}

#[test]
fn crash_with_several_segments_recovers_all() {
    run(|| async {
        let dir = tempdir();
        let config = LogConfig {
            segment_bytes: 4096,
            ..small_config()
        };
        let sizes: Vec<usize> = (0..30).map(|i| 200 + 37 * i).collect();
        build_and_crash(dir.path(), config.clone(), &sizes).await;
        let log = open(dir.path(), config).await;
        let total: i64 = record_counts(&sizes).iter().sum();
        assert_eq!(log.log_end_offset(), total);
        assert!(log.segment_count() > 3);
        assert_eq!(read_all(&log, 0).await.len(), 30);
        log.close().await.unwrap();
        assert!(verify_dir(dir.path()).is_ok());
    });
}

/// The active segment is preallocated ahead of the writes; a crash leaves
/// the zeros past the last batch, which recovery takes as the end of the
/// log: nothing acknowledged is lost, the file is trimmed, and new appends
/// go right after the last batch.
#[test]
fn crash_in_a_preallocated_segment_ends_the_log_at_its_last_batch() {
    run(|| async {
        let dir = tempdir();
        let config = LogConfig {
            segment_bytes: 1 << 20,
            preallocate_bytes: 256 << 10,
            ..small_config()
        };
        let log = open(dir.path(), config.clone()).await;
        let mut sent = Vec::new();
        let mut last = None;
        for i in 0..20 {
            let b = make_batch(2, 1000, 100 + i);
            sent.push(b.clone());
            last = Some(log.append(b, Acks::Fsync).unwrap());
        }
        last.unwrap().durable.await.unwrap();
        wait_preallocations(&log, 1).await;
        let logical = log.size_bytes();
        assert_eq!(logical, 20 * 1061);
        let log_file = segment_files(dir.path(), "log").remove(0);
        let preallocated = file_len(&log_file);
        assert!(
            preallocated >= 256 << 10,
            "the file is preallocated ahead of the {logical} bytes written: {preallocated}"
        );
        let on_disk = std::fs::read(&log_file).unwrap();
        assert!(on_disk[logical as usize..].iter().all(|&b| b == 0));
        drop(log); // crash

        let log = open(dir.path(), config.clone()).await;
        let report = log.recovery_report().clone();
        assert_eq!(log.log_end_offset(), 40);
        assert_eq!(log.size_bytes(), logical);
        assert!(report.torn_tail.is_none(), "{report:?}");
        assert_eq!(report.truncated_bytes, 0, "{report:?}");
        assert_eq!(report.zero_tail_bytes, preallocated - logical, "{report:?}");
        assert_eq!(file_len(&log_file), logical, "the zero tail is trimmed");
        // Nothing lost or changed (base offsets are assigned on append).
        let chunks = read_all(&log, 0).await;
        assert_eq!(chunks.len(), 20);
        for (i, c) in chunks.iter().enumerate() {
            assert_eq!(header(c).base_offset, 2 * i as i64);
            assert_eq!(&c[12..], &sent[i][12..], "batch {i}");
        }
        // The next append goes right after the last batch, in the file too.
        let next = make_batch(3, 500, 999);
        let r = log.append(next.clone(), Acks::Fsync).unwrap();
        assert_eq!(r.base_offset, 40);
        r.durable.await.unwrap();
        wait_preallocations(&log, 1).await;
        assert!(file_len(&log_file) > logical + 561, "preallocated again");
        log.close().await.unwrap();
        assert_eq!(
            file_len(&log_file),
            logical + 561,
            "closing trims the slack"
        );
        let on_disk = std::fs::read(&log_file).unwrap();
        assert_eq!(&on_disk[logical as usize + 12..], &next[12..]);
        let report = verify_dir(dir.path());
        assert!(report.is_ok() && report.warnings() == 0, "{report}");
        assert_eq!(report.partitions[0].zero_tail_bytes, 0);
        let log = open(dir.path(), config).await;
        assert!(log.recovery_report().clean_shutdown);
        assert_eq!(log.log_end_offset(), 43);
        log.close().await.unwrap();
    });
}

/// Sealed segments are trimmed to their last batch when the next one is
/// created; only the active one carries preallocated zeros (which the
/// verifier counts but does not flag), and closing trims it too.
#[test]
fn sealed_and_closed_segments_carry_no_preallocated_slack() {
    run(|| async {
        let dir = tempdir();
        let config = LogConfig {
            segment_bytes: 64 << 10,
            ..small_config()
        };
        let log = open(dir.path(), config.clone()).await;
        // One write per append: each segment is preallocated after its
        // first write, then written into.
        for i in 0..100 {
            let r = log.append(make_batch(1, 2000, i), Acks::Fsync).unwrap();
            r.durable.await.unwrap();
        }
        assert!(log.segment_count() >= 3);
        wait_allocator_idle(&log).await;
        let before = log.stats().preallocations;
        assert!(before >= log.segment_count() as u64, "{:?}", log.stats());
        let logs = segment_files(dir.path(), "log");
        let (active, sealed) = logs.split_last().unwrap();
        for path in sealed {
            assert_eq!(file_len(path) % 2061, 0, "{} has slack", path.display());
        }
        assert_ne!(
            file_len(active) % 2061,
            0,
            "the active segment is preallocated"
        );
        let live = verify_dir(dir.path());
        assert!(live.is_ok() && live.warnings() == 0, "{live}");
        assert!(live.partitions[0].zero_tail_bytes > 0, "{live}");
        assert_eq!(live.partitions[0].batches, 100);
        log.close().await.unwrap();
        for path in &logs {
            assert_eq!(file_len(path) % 2061, 0, "{} has slack", path.display());
        }
        let closed = verify_dir(dir.path());
        assert!(closed.is_ok() && closed.warnings() == 0, "{closed}");
        assert_eq!(closed.partitions[0].zero_tail_bytes, 0);
    });
}

/// A crash between the roll's trim and its fdatasync could leave a sealed
/// segment with preallocated zeros: recovery trims them (the offsets still
/// chain), but zeros that hide a sealed segment's last batch are an offset
/// gap, refused as corruption.
#[test]
fn zeros_after_a_sealed_segment_are_trimmed_but_a_gap_is_refused() {
    run(|| async {
        let root = tempdir();
        let base = root.path().join("base");
        let config = LogConfig {
            segment_bytes: 8192,
            ..small_config()
        };
        let log = open(&base, config.clone()).await;
        let mut last = None;
        for i in 0..10 {
            last = Some(log.append(make_batch(1, 2000, i), Acks::Fsync).unwrap());
        }
        last.unwrap().durable.await.unwrap();
        log.close().await.unwrap();
        let logs = segment_files(&base, "log");
        assert!(logs.len() >= 3);
        let first = logs[0].file_name().unwrap().to_owned();
        let len = file_len(&logs[0]);

        let dir = root.path().join("slack");
        copy_dir(&base, &dir);
        set_len(&dir.join(&first), len + 64 * 1024);
        let log = open(&dir, config.clone()).await;
        assert_eq!(log.log_end_offset(), 10);
        assert_eq!(read_all(&log, 0).await.len(), 10);
        assert_eq!(file_len(&dir.join(&first)), len, "trimmed");
        log.close().await.unwrap();
        let report = verify_dir(&dir);
        assert!(report.is_ok() && report.warnings() == 0, "{report}");

        // The verifier flags the untrimmed slack as a warning only.
        let dir = root.path().join("slack-verify");
        copy_dir(&base, &dir);
        set_len(&dir.join(&first), len + 4096);
        let report = verify_dir(&dir);
        assert!(report.is_ok() && report.warnings() == 1, "{report}");

        // The last batch of the sealed segment zeroed: a gap, not an end.
        let dir = root.path().join("gap");
        copy_dir(&base, &dir);
        let mut data = std::fs::read(dir.join(&first)).unwrap();
        let n = data.len();
        data[n - 2061..].fill(0);
        std::fs::write(dir.join(&first), data).unwrap();
        std::fs::remove_file(dir.join(&first).with_extension("index")).unwrap();
        let err = PartitionLog::open(storage(), &dir, config, Default::default())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, LogError::Corrupt { reason, offset: 2, .. } if reason.contains("gap")),
            "{err:?}"
        );
        assert_eq!(file_len(&dir.join(&first)), len, "nothing was cut");
        assert!(!verify_dir(&dir).is_ok());
    });
}

/// A large write inside preallocated space is rounded up to its length
/// class with zeros (so write buffers can be reused): what reaches the file
/// past the last batch is zeros, and recovery still ends the log there.
#[test]
fn large_writes_padded_with_zeros_recover_to_the_last_batch() {
    run(|| async {
        let dir = tempdir();
        let config = LogConfig {
            segment_bytes: 16 << 20,
            max_write_bytes: 4 << 20,
            ..small_config()
        };
        let log = open(dir.path(), config.clone()).await;
        // The first write preallocates; the next ones are padded.
        let first = make_batch(1, 1000, 1);
        log.append(first, Acks::Fsync)
            .unwrap()
            .durable
            .await
            .unwrap();
        wait_allocator_idle(&log).await;
        let before = log.stats().bytes_written;
        let big = make_batch(5, 300_000, 2);
        let r = log.append(big.clone(), Acks::Fsync).unwrap();
        r.durable.await.unwrap();
        let written = log.stats().bytes_written - before;
        assert_eq!(written % (64 << 10), 0, "rounded to its class: {written}");
        let logical = log.size_bytes();
        assert!(written > logical - 1061 + 1, "{written} {logical}");
        wait_allocator_idle(&log).await;
        let log_file = segment_files(dir.path(), "log").remove(0);
        let on_disk = std::fs::read(&log_file).unwrap();
        assert!(on_disk[logical as usize..].iter().all(|&b| b == 0));
        drop(log); // crash
        let log = open(dir.path(), config).await;
        assert_eq!(log.log_end_offset(), 6);
        assert_eq!(log.size_bytes(), logical);
        assert!(log.recovery_report().torn_tail.is_none());
        let chunks = read_all(&log, 0).await;
        assert_eq!(&chunks[1][12..], &big[12..]);
        log.close().await.unwrap();
        assert_eq!(file_len(&log_file), logical);
    });
}
