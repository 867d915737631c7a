//! Idempotent producers through a real broker: batches carrying a producer
//! id, epoch and base sequence (as Kafka clients with
//! `enable.idempotence=true` send them) are sequence-checked per partition.
//! A retry gets the original offsets and appends nothing, a gap gets
//! `out_of_order_sequence_number`, a stale epoch `invalid_producer_epoch`,
//! and all of it survives a SIGKILL of the broker: the retry of a batch
//! written before the kill is still recognised after the restart.

mod common;

use bytes::Bytes;
use common::{Broker, RawConn};
use ringmq_wire::batch::{BatchBuilder, BatchSplitter, Compression, RecordIter};
use ringmq_wire::envelope::*;
use ringmq_wire::error::ErrorCode;
use std::time::{Duration, Instant};

const TOPIC: &str = "idem";
const PID: i64 = 90_001;

/// One batch of `records` records of producer `PID`, sequences
/// `base_sequence..base_sequence + records`; values are `"seq-<n>"`.
fn batch(epoch: i16, base_sequence: i32, records: i32) -> Vec<u8> {
    let mut builder =
        BatchBuilder::new(Compression::None, 1_000).with_producer(PID, epoch, base_sequence);
    for i in 0..records {
        let value = format!("seq-{}", base_sequence + i);
        builder
            .append(1_000, None, Some(value.as_bytes()), &[])
            .unwrap();
    }
    builder.build().unwrap().to_vec()
}

fn produce_body(partition: u32, len: usize) -> RequestBody {
    RequestBody::Produce(ProduceRequest {
        acks: Acks::Fsync,
        timeout_ms: 10_000,
        topics: vec![ProduceTopic {
            name: TOPIC.into(),
            partitions: vec![ProducePartition {
                partition,
                payload: PayloadRange {
                    offset: 0,
                    length: len as u32,
                },
            }],
        }],
    })
}

fn partition_result(response: &Response) -> ProducePartitionResult {
    assert!(response.error.is_none(), "{:?}", response.error);
    match &response.body {
        ResponseBody::Produce(p) => p.topics[0].partitions[0].clone(),
        other => panic!("unexpected {other:?}"),
    }
}

/// Produces one batch (acks=fsync) and returns the partition's answer.
fn produce(conn: &mut RawConn, id: u64, partition: u32, b: &[u8]) -> ProducePartitionResult {
    let (r, _) = conn.call(id, produce_body(partition, b.len()), b);
    partition_result(&r)
}

/// Produces and expects success: (base offset, last offset).
fn produce_ok(conn: &mut RawConn, id: u64, partition: u32, b: &[u8]) -> (i64, i64) {
    let r = produce(conn, id, partition, b);
    assert!(r.error.is_none(), "{:?}", r.error);
    (r.base_offset, r.last_offset)
}

fn produce_err(conn: &mut RawConn, id: u64, partition: u32, b: &[u8]) -> (ErrorCode, String) {
    let r = produce(conn, id, partition, b);
    let e = r.error.unwrap_or_else(|| {
        panic!(
            "expected an error, got offsets {}..={}",
            r.base_offset, r.last_offset
        )
    });
    (e.code, e.message)
}

/// The partition's high watermark (ListOffsets latest).
fn log_end(conn: &mut RawConn, partition: u32) -> i64 {
    let body = RequestBody::ListOffsets(ListOffsetsRequest {
        topics: vec![ListOffsetsTopic {
            name: TOPIC.into(),
            partitions: vec![ListOffsetsPartition {
                partition,
                timestamp: LIST_OFFSETS_LATEST,
            }],
        }],
    });
    let (r, _) = conn.call(77, body, &[]);
    assert!(r.error.is_none(), "{:?}", r.error);
    match r.body {
        ResponseBody::ListOffsets(l) => {
            let p = &l.topics[0].partitions[0];
            assert!(p.error.is_none(), "{:?}", p.error);
            p.offset
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// Every record value of the partition, in offset order.
fn values(conn: &mut RawConn, partition: u32) -> Vec<(i64, String)> {
    let body = RequestBody::Fetch(FetchRequest {
        max_wait_ms: 0,
        min_bytes: 1,
        max_bytes: 8 << 20,
        topics: vec![FetchTopic {
            name: TOPIC.into(),
            partitions: vec![FetchPartition {
                partition,
                fetch_offset: 0,
                partition_max_bytes: 8 << 20,
            }],
        }],
        fence: None,
    });
    let (r, payload) = conn.call(78, body, &[]);
    assert!(r.error.is_none(), "{:?}", r.error);
    let part = match &r.body {
        ResponseBody::Fetch(f) => f.topics[0].partitions[0].clone(),
        other => panic!("unexpected {other:?}"),
    };
    assert!(part.error.is_none(), "{:?}", part.error);
    let raw: Bytes = payload.slice(part.payload.offset as usize..part.payload.end());
    let mut out = Vec::new();
    for b in BatchSplitter::new(&raw) {
        let b = b.expect("valid batch");
        let bytes = raw.slice(b.position..b.position + b.size);
        for r in RecordIter::new(bytes).expect("valid batch") {
            let r = r.expect("valid record");
            let value = String::from_utf8(r.value.expect("a value").to_vec()).unwrap();
            out.push((r.offset, value));
        }
    }
    out
}

#[test]
fn duplicates_gaps_and_epochs_survive_a_sigkill() {
    // Two shards: whichever shard the connection lands on, one of the two
    // partitions is forwarded to the other shard.
    let mut broker = Broker::start(2);
    let mut conn = RawConn::connect(&broker.addr());
    conn.create_topic(TOPIC, 2);
    let mut id = 100u64;
    let mut next_id = || {
        id += 1;
        id
    };

    for partition in 0..2u32 {
        let a = produce_ok(&mut conn, next_id(), partition, &batch(0, 0, 3));
        let b = produce_ok(&mut conn, next_id(), partition, &batch(0, 3, 2));
        assert_eq!((a, b), ((0, 2), (3, 4)), "partition {partition}");
        // Retries (the answer was "lost"): original offsets, nothing added.
        assert_eq!(
            produce_ok(&mut conn, next_id(), partition, &batch(0, 3, 2)),
            b
        );
        assert_eq!(
            produce_ok(&mut conn, next_id(), partition, &batch(0, 0, 3)),
            a
        );
        assert_eq!(log_end(&mut conn, partition), 5);
        // A gap: sequence 6 when 5 is expected.
        let (code, message) = produce_err(&mut conn, next_id(), partition, &batch(0, 6, 1));
        assert_eq!(code, ErrorCode::OutOfOrderSequenceNumber, "{message}");
        assert!(message.contains("expects sequence 5"), "{message}");
        assert_eq!(log_end(&mut conn, partition), 5);
        // In order again.
        assert_eq!(
            produce_ok(&mut conn, next_id(), partition, &batch(0, 5, 1)),
            (5, 5)
        );
    }
    // Partition 1: an epoch bump fences the old epoch.
    assert_eq!(produce_ok(&mut conn, next_id(), 1, &batch(1, 0, 1)), (6, 6));
    let (code, message) = produce_err(&mut conn, next_id(), 1, &batch(0, 6, 1));
    assert_eq!(code, ErrorCode::InvalidProducerEpoch, "{message}");

    // Partition 0: five more batches, the most a Kafka producer has in
    // flight per partition, then SIGKILL.
    let recent: Vec<Vec<u8>> = (0..5).map(|i| batch(0, 6 + i * 2, 2)).collect();
    for (i, b) in recent.iter().enumerate() {
        let base = 6 + 2 * i as i64;
        assert_eq!(produce_ok(&mut conn, next_id(), 0, b), (base, base + 1));
    }
    broker.kill9();
    broker.restart();

    let mut conn = RawConn::connect(&broker.addr());
    let end_0 = log_end(&mut conn, 0);
    let end_1 = log_end(&mut conn, 1);
    assert_eq!((end_0, end_1), (16, 7), "everything acknowledged survived");
    // The last batch of each partition, retried after the restart: the
    // original offsets, and the log does not grow.
    assert_eq!(produce_ok(&mut conn, next_id(), 0, &recent[4]), (14, 15));
    assert_eq!(produce_ok(&mut conn, next_id(), 1, &batch(1, 0, 1)), (6, 6));
    // And every one of the last five (librdkafka retries every unanswered
    // batch it had in flight).
    for (i, b) in recent.iter().enumerate() {
        let base = 6 + 2 * i as i64;
        assert_eq!(produce_ok(&mut conn, next_id(), 0, b), (base, base + 1));
    }
    assert_eq!(log_end(&mut conn, 0), end_0);
    assert_eq!(log_end(&mut conn, 1), end_1);
    // The state came back, not just "unknown producer": a gap is refused
    // and a stale epoch is still fenced.
    let (code, message) = produce_err(&mut conn, next_id(), 0, &batch(0, 17, 1));
    assert_eq!(code, ErrorCode::OutOfOrderSequenceNumber, "{message}");
    assert!(message.contains("expects sequence 16"), "{message}");
    let (code, _) = produce_err(&mut conn, next_id(), 1, &batch(0, 6, 1));
    assert_eq!(code, ErrorCode::InvalidProducerEpoch);
    assert_eq!(
        produce_ok(&mut conn, next_id(), 0, &batch(0, 16, 1)),
        (16, 16)
    );

    // Exactly once: every sequence once, in order.
    let expected: Vec<(i64, String)> = (0..17).map(|s| (s, format!("seq-{s}"))).collect();
    assert_eq!(values(&mut conn, 0), expected);
}

#[test]
fn unanswered_batches_written_before_a_sigkill_are_not_stored_twice() {
    let mut broker = Broker::start(1);
    let mut conn = RawConn::connect(&broker.addr());
    conn.create_topic(TOPIC, 1);
    let mut id = 1_000u64;
    // Five batches (librdkafka's limit of requests in flight per partition
    // with idempotence), pipelined; the producer never reads the answers.
    let batches: Vec<Vec<u8>> = (0..5).map(|i| batch(0, i * 3, 3)).collect();
    for b in &batches {
        id += 1;
        conn.send(id, produce_body(0, b.len()), b);
    }
    // Another connection sees them land in the log; then the broker dies
    // before the producer has read a single answer.
    let mut observer = RawConn::connect(&broker.addr());
    let deadline = Instant::now() + Duration::from_secs(30);
    while log_end(&mut observer, 0) < 15 {
        assert!(
            Instant::now() < deadline,
            "the batches never became durable"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    broker.kill9();
    broker.restart();
    let mut conn = RawConn::connect(&broker.addr());
    assert_eq!(log_end(&mut conn, 0), 15);
    // The producer retries all of them, in order: each is recognised and
    // answered with the offsets it got before the kill.
    for (i, b) in batches.iter().enumerate() {
        id += 1;
        let base = 3 * i as i64;
        assert_eq!(
            produce_ok(&mut conn, id, 0, b),
            (base, base + 2),
            "batch {i}"
        );
    }
    assert_eq!(log_end(&mut conn, 0), 15, "nothing stored twice");
    let expected: Vec<(i64, String)> = (0..15).map(|s| (s, format!("seq-{s}"))).collect();
    assert_eq!(values(&mut conn, 0), expected);
    // The next batch follows on.
    id += 1;
    assert_eq!(produce_ok(&mut conn, id, 0, &batch(0, 15, 1)), (15, 15));
}
