//! Idempotent-producer sequence checks on a real `PartitionLog`: duplicates
//! answered with the original offsets (and nothing appended), gaps and
//! stale epochs refused, and the state rebuilt from the log after a clean
//! close, a crash and a power loss, so that a producer's retry after a
//! broker restart is still recognised.

mod storage_util;

use bytes::BytesMut;
use ringmq_shards::{
    cache::TailCache,
    io::{faulty::SeedGuard, FaultyStorage},
    log::{
        partition::PRODUCER_STATE_SCAN_BYTES, Acks, AppendResult, LogConfig, LogError, PartitionLog,
    },
};
use ringmq_wire::batch::header::store_crc;
use std::path::{Path, PathBuf};
use storage_util::*;

const RERUN: &str = "cargo test -p ringmq-shards --test producer_state";
const PID: i64 = 4242;

/// A valid batch of an idempotent producer: `records` records, sequences
/// `base_sequence..base_sequence + records`.
fn idem_batch(pid: i64, epoch: i16, base_sequence: i32, records: i32) -> BytesMut {
    let mut b = make_batch(records, 40, 1_000 + base_sequence as i64).to_vec();
    b[43..51].copy_from_slice(&pid.to_be_bytes());
    b[51..53].copy_from_slice(&epoch.to_be_bytes());
    b[53..57].copy_from_slice(&base_sequence.to_be_bytes());
    store_crc(&mut b);
    BytesMut::from(&b[..])
}

/// A data directory under target/test-tmp (a real disk, so O_DIRECT is
/// exercised), or under `RINGMQ_TEST_TMP`.
fn test_dir() -> tempfile::TempDir {
    let root = match std::env::var("RINGMQ_TEST_TMP") {
        Ok(dir) => PathBuf::from(dir),
        Err(_) => {
            let exe = std::env::current_exe().unwrap();
            // target/<profile>/deps/<test> → target/test-tmp
            exe.ancestors().nth(3).unwrap().join("test-tmp")
        }
    };
    std::fs::create_dir_all(&root).unwrap();
    tempfile::Builder::new()
        .prefix("ringmq-producer-state-")
        .tempdir_in(root)
        .unwrap()
}

async fn append_ok(log: &PartitionLog, batch: BytesMut) -> (i64, i64) {
    let r = log.append(batch, Acks::Fsync).expect("append");
    assert!(!r.duplicate, "a new batch is appended");
    let offsets = (r.base_offset, r.last_offset);
    r.durable.await.expect("durable");
    offsets
}

/// Appends a retry and checks it is answered as a duplicate of `original`
/// without touching the log.
async fn assert_duplicate(log: &PartitionLog, batch: BytesMut, original: (i64, i64)) {
    let end = log.log_end_offset();
    let r: AppendResult = log.append(batch, Acks::Fsync).expect("a retry is answered");
    assert!(r.duplicate, "the retry is recognised as a duplicate");
    assert_eq!((r.base_offset, r.last_offset), original, "original offsets");
    r.durable.await.expect("the original is durable");
    assert_eq!(log.log_end_offset(), end, "nothing appended");
}

fn assert_out_of_order(result: Result<AppendResult, LogError>, expected: i32) {
    match result {
        Err(e @ LogError::OutOfOrderSequence { .. }) => {
            let LogError::OutOfOrderSequence {
                expected_sequence, ..
            } = e
            else {
                unreachable!()
            };
            assert_eq!(expected_sequence, expected, "{e}");
            assert!(e.to_string().contains("expects sequence"), "{e}");
        }
        Err(e) => panic!("expected OutOfOrderSequence, got {e:?}"),
        Ok(r) => panic!(
            "expected OutOfOrderSequence, got an append at {} (duplicate: {})",
            r.base_offset, r.duplicate
        ),
    }
}

/// Offsets 0..=2, 3..=4 (a native batch at 5), 6..=6; the producer's next
/// sequence is 6.
async fn produce_three(log: &PartitionLog) -> [(i64, i64); 3] {
    let a = append_ok(log, idem_batch(PID, 0, 0, 3)).await;
    let b = append_ok(log, idem_batch(PID, 0, 3, 2)).await;
    append_ok(log, make_batch(1, 40, 7)).await;
    let c = append_ok(log, idem_batch(PID, 0, 5, 1)).await;
    assert_eq!([a, b, c], [(0, 2), (3, 4), (6, 6)]);
    [a, b, c]
}

#[test]
fn duplicate_returns_the_original_offsets_and_appends_nothing() {
    run(|| async {
        let dir = test_dir();
        let log = open(dir.path(), small_config()).await;
        let [a, b, c] = produce_three(&log).await;
        let chunks_before = read_all(&log, 0).await;
        for (batch, original) in [
            (idem_batch(PID, 0, 5, 1), c),
            (idem_batch(PID, 0, 3, 2), b),
            (idem_batch(PID, 0, 0, 3), a),
        ] {
            assert_duplicate(&log, batch, original).await;
        }
        assert_eq!(read_all(&log, 0).await, chunks_before, "log unchanged");
        assert_eq!(log.stats().duplicate_appends, 3);
        // The producer goes on where it was.
        assert_eq!(append_ok(&log, idem_batch(PID, 0, 6, 2)).await, (7, 8));
        // Another producer is independent of the first.
        assert_eq!(append_ok(&log, idem_batch(PID + 1, 0, 0, 1)).await, (9, 9));
        log.close().await.unwrap();
    });
}

#[test]
fn gaps_and_stale_epochs_are_refused_and_change_nothing() {
    run(|| async {
        let dir = test_dir();
        let log = open(dir.path(), small_config()).await;
        produce_three(&log).await;
        let end = log.log_end_offset();
        // A gap: sequence 7 when 6 is expected.
        assert_out_of_order(log.append(idem_batch(PID, 0, 7, 1), Acks::Fsync), 6);
        // Overlapping a cached batch without being equal to it.
        assert_out_of_order(log.append(idem_batch(PID, 0, 4, 2), Acks::Fsync), 6);
        // A new epoch must start at 0.
        assert_out_of_order(log.append(idem_batch(PID, 1, 6, 1), Acks::Fsync), 0);
        assert_eq!(log.log_end_offset(), end, "nothing appended");
        // The epoch bump at 0 is accepted; the old epoch is fenced after it.
        assert_eq!(append_ok(&log, idem_batch(PID, 1, 0, 1)).await, (7, 7));
        match log.append(idem_batch(PID, 0, 6, 1), Acks::Fsync) {
            Err(e @ LogError::InvalidProducerEpoch { .. }) => {
                assert!(e.to_string().contains("fenced"), "{e}")
            }
            Err(e) => panic!("expected InvalidProducerEpoch, got {e:?}"),
            Ok(r) => panic!("stale epoch appended at {}", r.base_offset),
        }
        assert_eq!(log.log_end_offset(), 8);
        log.close().await.unwrap();
    });
}

#[test]
fn a_retry_while_the_original_is_in_flight_waits_for_it() {
    run(|| async {
        let dir = test_dir();
        let log = open(dir.path(), small_config()).await;
        // Pipelined like librdkafka: no await between the appends.
        let first = log.append(idem_batch(PID, 0, 0, 2), Acks::Fsync).unwrap();
        let second = log.append(idem_batch(PID, 0, 2, 2), Acks::Fsync).unwrap();
        let retry = log.append(idem_batch(PID, 0, 0, 2), Acks::Fsync).unwrap();
        let gap = log.append(idem_batch(PID, 0, 5, 1), Acks::Fsync);
        assert_out_of_order(gap, 4);
        assert!(retry.duplicate);
        assert_eq!((retry.base_offset, retry.last_offset), (0, 1));
        assert!(
            retry.durable.try_result().is_none(),
            "not acknowledged before the original is durable"
        );
        retry.durable.await.unwrap();
        assert!(log.high_watermark() >= 2, "acked only once the original is");
        first.durable.await.unwrap();
        second.durable.await.unwrap();
        assert_eq!(log.log_end_offset(), 4);
        log.close().await.unwrap();
    });
}

#[test]
fn several_batches_in_one_append_are_checked_in_order() {
    run(|| async {
        let dir = test_dir();
        let log = open(dir.path(), small_config()).await;
        let part = concat(&[idem_batch(PID, 0, 0, 2), idem_batch(PID, 0, 2, 3)]);
        assert_eq!(append_ok(&log, part).await, (0, 4));
        // Retrying the whole append is one duplicate with its offsets.
        let part = concat(&[idem_batch(PID, 0, 0, 2), idem_batch(PID, 0, 2, 3)]);
        assert_duplicate(&log, part, (0, 4)).await;
        // A retry mixed with a new batch is refused whole.
        let part = concat(&[idem_batch(PID, 0, 2, 3), idem_batch(PID, 0, 5, 1)]);
        assert_out_of_order(log.append(part, Acks::Fsync), 5);
        // A gap between two batches of one append is refused whole.
        let part = concat(&[idem_batch(PID, 0, 5, 1), idem_batch(PID, 0, 7, 1)]);
        assert_out_of_order(log.append(part, Acks::Fsync), 6);
        assert_eq!(log.log_end_offset(), 5);
        log.close().await.unwrap();
    });
}

/// Reopens `dir` and checks that the producer's state came back: retries
/// are duplicates with their original offsets, a gap is refused, and the
/// next batch is accepted.
async fn check_state_recovered(dir: &Path, config: LogConfig, originals: [(i64, i64); 3]) {
    let log = open(dir, config).await;
    let report = log.recovery_report();
    assert_eq!(report.producers_recovered, 1, "{report:?}");
    let end = log.log_end_offset();
    assert_eq!(end, 7);
    assert_duplicate(&log, idem_batch(PID, 0, 5, 1), originals[2]).await;
    assert_duplicate(&log, idem_batch(PID, 0, 3, 2), originals[1]).await;
    assert_out_of_order(log.append(idem_batch(PID, 0, 8, 1), Acks::Fsync), 6);
    assert_eq!(append_ok(&log, idem_batch(PID, 0, 6, 1)).await, (7, 7));
    log.close().await.unwrap();
}

#[test]
fn state_is_rebuilt_after_a_clean_close() {
    run(|| async {
        let dir = test_dir();
        let log = open(dir.path(), small_config()).await;
        let originals = produce_three(&log).await;
        log.close().await.unwrap();
        drop(log);
        check_state_recovered(dir.path(), small_config(), originals).await;
    });
}

#[test]
fn state_is_rebuilt_after_a_crash_without_close() {
    run(|| async {
        let dir = test_dir();
        // Small segments: the producer's batches span several of them.
        let config = LogConfig {
            segment_bytes: 4096,
            ..small_config()
        };
        let log = open(dir.path(), config.clone()).await;
        let filler = append_ok(&log, make_batch(1, 4000, 1)).await;
        assert_eq!(filler, (0, 0));
        let a = append_ok(&log, idem_batch(PID, 0, 0, 3)).await;
        let b = append_ok(&log, make_batch(1, 4000, 2)).await;
        let c = append_ok(&log, idem_batch(PID, 0, 3, 2)).await;
        // The last batch is written but its producer never got the answer:
        // the crash comes first.
        let last = log.append(idem_batch(PID, 0, 5, 1), Acks::Fsync).unwrap();
        let originals = [(last.base_offset, last.last_offset), a, c];
        last.durable.await.unwrap();
        assert_eq!((a, b, c), ((1, 3), (4, 4), (5, 6)));
        assert!(log.segment_count() > 2, "the producer spans segments");
        drop(log); // no close: a process crash
        let log = open(dir.path(), config.clone()).await;
        assert!(!log.recovery_report().clean_shutdown);
        assert_eq!(log.recovery_report().producers_recovered, 1);
        for (batch, original) in [
            (idem_batch(PID, 0, 5, 1), originals[0]),
            (idem_batch(PID, 0, 0, 3), originals[1]),
            (idem_batch(PID, 0, 3, 2), originals[2]),
        ] {
            assert_duplicate(&log, batch, original).await;
        }
        assert_out_of_order(log.append(idem_batch(PID, 0, 7, 1), Acks::Fsync), 6);
        assert_eq!(append_ok(&log, idem_batch(PID, 0, 6, 1)).await, (8, 8));
        // Crash again right after: that batch is found too.
        drop(log);
        let log = open(dir.path(), config).await;
        assert_duplicate(&log, idem_batch(PID, 0, 6, 1), (8, 8)).await;
        log.close().await.unwrap();
    });
}

#[test]
fn state_is_rebuilt_after_a_power_loss() {
    run(|| async {
        let _g = SeedGuard::new(11, RERUN);
        let dir = test_dir();
        let (storage, faults) = FaultyStorage::wrap(storage(), 11);
        let log = open_with(storage, dir.path(), small_config(), TailCache::new(1 << 20)).await;
        let originals = produce_three(&log).await;
        faults.power_loss().await;
        drop(log);
        let log = open_with(
            faults.storage(),
            dir.path(),
            small_config(),
            TailCache::new(1 << 20),
        )
        .await;
        assert_duplicate(&log, idem_batch(PID, 0, 5, 1), originals[2]).await;
        log.close().await.unwrap();
    });
}

#[test]
fn a_rolled_back_batch_is_appended_again_on_retry() {
    run(|| async {
        let _g = SeedGuard::new(12, RERUN);
        let dir = test_dir();
        let (storage, faults) = FaultyStorage::wrap(storage(), 12);
        let log = open_with(storage, dir.path(), small_config(), TailCache::new(1 << 20)).await;
        assert_eq!(append_ok(&log, idem_batch(PID, 0, 0, 1)).await, (0, 0));
        faults.fill_disk();
        let lost = log.append(idem_batch(PID, 0, 1, 2), Acks::Fsync).unwrap();
        // A retry right away is a duplicate if the failed write has not
        // been rolled back yet (it may fail inside `append`), and then it
        // fails with the original: its answer never claims offsets the log
        // lost. Either way nothing is acknowledged while the disk is full.
        let early_retry = log.append(idem_batch(PID, 0, 1, 2), Acks::Fsync).unwrap();
        if early_retry.duplicate {
            assert_eq!((early_retry.base_offset, early_retry.last_offset), (1, 2));
        }
        let err = lost.durable.await.unwrap_err();
        assert!(matches!(err, LogError::DiskFull { .. }), "{err:?}");
        let err = early_retry.durable.await.unwrap_err();
        assert!(matches!(err, LogError::DiskFull { .. }), "{err:?}");
        assert_eq!(log.log_end_offset(), 1, "rolled back");
        faults.free_space();
        // The retry is appended, not taken for a duplicate of lost offsets.
        assert_eq!(append_ok(&log, idem_batch(PID, 0, 1, 2)).await, (1, 2));
        assert_duplicate(&log, idem_batch(PID, 0, 1, 2), (1, 2)).await;
        assert_eq!(offsets(&read_all(&log, 0).await), vec![(0, 0), (1, 2)]);
        log.close().await.unwrap();
    });
}

#[test]
fn recovery_scan_is_bounded_to_the_tail() {
    run(|| async {
        let dir = test_dir();
        let config = LogConfig {
            segment_bytes: 1 << 20,
            ..small_config()
        };
        let log = open(dir.path(), config.clone()).await;
        let old_pid = 1;
        append_ok(&log, idem_batch(old_pid, 0, 0, 1)).await;
        // More than the scan window of another producer's data after it.
        let batch_bytes = 256 << 10;
        let batches = (PRODUCER_STATE_SCAN_BYTES / batch_bytes) as i32 + 8;
        for seq in 0..batches {
            let mut b = make_batch(1, batch_bytes as usize - 61, 5).to_vec();
            b[43..51].copy_from_slice(&PID.to_be_bytes());
            b[51..53].copy_from_slice(&0i16.to_be_bytes());
            b[53..57].copy_from_slice(&seq.to_be_bytes());
            store_crc(&mut b);
            let r = log.append(BytesMut::from(&b[..]), Acks::Leader).unwrap();
            r.durable.await.unwrap();
        }
        log.close().await.unwrap();
        drop(log);
        let log = open(dir.path(), config).await;
        let report = log.recovery_report().clone();
        assert!(
            report.producer_state_scanned_bytes <= PRODUCER_STATE_SCAN_BYTES + 2 * batch_bytes,
            "scanned {} bytes",
            report.producer_state_scanned_bytes
        );
        assert!(report.producer_state_scanned_bytes >= PRODUCER_STATE_SCAN_BYTES - batch_bytes);
        assert_eq!(report.producers_recovered, 1, "only the recent producer");
        // The recent producer is known: a gap is refused.
        assert_out_of_order(
            log.append(idem_batch(PID, 0, batches + 1, 1), Acks::Fsync),
            batches,
        );
        // The old one is unknown again: any sequence is accepted.
        let r = log
            .append(idem_batch(old_pid, 0, 17, 1), Acks::Fsync)
            .unwrap();
        assert!(!r.duplicate);
        r.durable.await.unwrap();
        log.close().await.unwrap();
    });
}
