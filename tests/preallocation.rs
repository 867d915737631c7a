//! Segment preallocation through a real broker process on a real disk: the
//! active segment is preallocated (its file is longer than its batches, the
//! rest zeros), every fsync-acknowledged message survives a SIGKILL taken
//! with that zero tail in place, recovery ends the log at the last batch
//! (offsets continue right after it), and a clean shutdown trims the file
//! to its batches.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::Broker;
use ringmq_client::{
    Acks, Client, ClientConfig, Consumer, ConsumerConfig, Producer, ProducerConfig, ProducerRecord,
    StartFrom,
};
use ringmq_shards::log::verify::{verify_dir, PartitionReport};

const TOPIC: &str = "prealloc";

fn connect(broker: &Broker) -> Client {
    Client::connect(ClientConfig::new(broker.addr())).expect("connect")
}

fn value_of(seq: usize) -> Bytes {
    let mut v = format!("prealloc|{seq:09}|").into_bytes();
    v.resize(300, b'p');
    Bytes::from(v)
}

/// Sends `seqs` at fsync to partition 0; each must be acknowledged at the
/// offset equal to its sequence number.
fn produce(client: &Client, seqs: std::ops::Range<usize>) {
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            acks: Acks::Fsync,
            ..ProducerConfig::default()
        },
    )
    .expect("producer");
    let pending: Vec<_> = seqs
        .map(|seq| {
            let record = ProducerRecord::new(TOPIC, value_of(seq)).with_partition(0);
            (seq, producer.send(record))
        })
        .collect();
    producer.flush();
    for (seq, future) in pending {
        let meta = future
            .wait()
            .unwrap_or_else(|e| panic!("message {seq}: {e}"));
        assert_eq!(meta.offset, seq as i64, "message {seq} acknowledged at");
    }
    producer.close();
}

/// Consumes partition 0 from the start: exactly `count` messages, in order.
fn check(client: &Client, count: usize) {
    let mut consumer = Consumer::new(client.clone(), ConsumerConfig::default());
    consumer
        .assign(TOPIC, None, StartFrom::Earliest)
        .expect("assign");
    let mut next = 0usize;
    let deadline = Instant::now() + Duration::from_secs(60);
    while next < count {
        assert!(Instant::now() < deadline, "consumed {next} of {count}");
        for r in consumer.poll(Duration::from_millis(500)).expect("poll") {
            assert_eq!(r.offset, next as i64);
            assert_eq!(
                r.value.as_deref(),
                Some(&value_of(next)[..]),
                "offset {next}"
            );
            next += 1;
        }
    }
    let extra = consumer.poll(Duration::from_millis(300)).expect("poll");
    assert!(extra.is_empty(), "{} records past the end", extra.len());
}

fn partition_report(data_dir: &Path) -> PartitionReport {
    let dir = data_dir.join("topics").join(TOPIC).join("0");
    let report = verify_dir(&dir);
    assert!(report.is_ok() && report.warnings() == 0, "{report}");
    assert_eq!(report.partitions.len(), 1, "{report}");
    report.partitions[0].clone()
}

#[test]
fn sigkill_with_a_preallocated_tail_loses_no_fsync_ack() {
    let mut broker = Broker::start(1);
    let client = connect(&broker);
    client.admin().create_topic(TOPIC, 1, &[]).expect("create");
    produce(&client, 0..20_000);
    // The preallocation runs beside the writes: wait for it (bounded).
    let deadline = Instant::now() + Duration::from_secs(30);
    let live = loop {
        let p = partition_report(&broker.data_dir);
        if p.zero_tail_bytes > 0 || Instant::now() > deadline {
            break p;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(live.next_offset, Some(20_000));
    assert!(
        live.zero_tail_bytes > 0,
        "the active segment is preallocated past its batches: {live:?}"
    );
    drop(client);

    broker.kill9();
    broker.restart();
    let client = connect(&broker);
    check(&client, 20_000);
    produce(&client, 20_000..25_000);
    check(&client, 25_000);
    drop(client);

    let status = broker.terminate();
    assert!(status.success(), "{status}");
    let closed = partition_report(&broker.data_dir);
    assert_eq!(closed.next_offset, Some(25_000));
    assert_eq!(
        closed.zero_tail_bytes, 0,
        "a clean shutdown trims: {closed:?}"
    );
    broker.restart();
    check(&connect(&broker), 25_000);
}
