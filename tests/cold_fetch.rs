//! Cold consumption through a real broker: after a restart (empty tail
//! cache) a consumer reads everything back from disk, exactly, with the
//! broker's sequential read-ahead serving the fetches (counted on
//! /metrics), and exactly the same with read-ahead turned off.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{metric_sum, Broker};
use ringmq_client::{
    Acks, Client, ClientConfig, Consumer, ConsumerConfig, Producer, ProducerConfig, ProducerRecord,
    StartFrom,
};

const TOPIC: &str = "cold";
const PARTITIONS: u32 = 2;
/// 2 x 12 MB: each partition takes several 2 MiB fetches and spans more
/// than one 4 MiB segment.
const PER_PARTITION: usize = 12_000;
const VALUE_LEN: usize = 1000;

fn value_of(partition: u32, seq: usize) -> Bytes {
    let mut v = format!("{partition}|{seq:09}|").into_bytes();
    v.resize(VALUE_LEN, b'0' + (seq % 10) as u8);
    Bytes::from(v)
}

fn produce(broker: &Broker) {
    let client = Client::connect(ClientConfig::new(broker.addr())).expect("connect");
    let out = broker.ringctl(
        &[
            "topic",
            "create",
            TOPIC,
            "--partitions",
            &PARTITIONS.to_string(),
            "--config",
            &format!("segment.bytes={}", 4u64 << 20),
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let producer = Producer::new(
        client,
        ProducerConfig {
            acks: Acks::Fsync,
            ..ProducerConfig::default()
        },
    )
    .expect("producer");
    let mut pending = Vec::new();
    for seq in 0..PER_PARTITION {
        for p in 0..PARTITIONS {
            let record = ProducerRecord::new(TOPIC, value_of(p, seq)).with_partition(p);
            pending.push(producer.send(record));
        }
    }
    producer.flush();
    for f in pending {
        f.wait().expect("acknowledged");
    }
    producer.close();
}

/// Consumes every partition from the start and checks each record.
fn consume_all(broker: &Broker) {
    let client = Client::connect(ClientConfig::new(broker.addr())).expect("connect");
    let mut consumer = Consumer::new(client, ConsumerConfig::default());
    consumer
        .assign(TOPIC, None, StartFrom::Earliest)
        .expect("assign");
    let mut next = [0usize; PARTITIONS as usize];
    let deadline = Instant::now() + Duration::from_secs(120);
    while next.iter().any(|&n| n < PER_PARTITION) {
        assert!(Instant::now() < deadline, "consumed only {next:?}");
        for r in consumer.poll(Duration::from_millis(500)).expect("poll") {
            let p = r.partition as usize;
            assert_eq!(r.offset, next[p] as i64, "partition {p}: offsets in order");
            assert_eq!(
                r.value.as_ref(),
                Some(&value_of(r.partition, next[p])),
                "partition {p} offset {}",
                r.offset
            );
            next[p] += 1;
        }
    }
    assert!(
        consumer
            .poll(Duration::from_millis(200))
            .expect("poll")
            .is_empty(),
        "nothing beyond what was produced"
    );
}

fn cold_consume(extra_args: &[&str]) -> (i64, i64) {
    let mut broker = Broker::start_with(2, extra_args);
    produce(&broker);
    broker.terminate();
    broker.restart();
    consume_all(&broker);
    (
        metric_sum(broker.http_port, "ringmq_readahead_hits_total"),
        metric_sum(broker.http_port, "ringmq_readahead_misses_total"),
    )
}

#[test]
fn cold_consumption_after_restart_is_exact_and_read_ahead() {
    let (hits, misses) = cold_consume(&[]);
    // ~6 fetches of 2 MiB per partition; the first two of each are misses
    // (a stream starts, then is confirmed sequential).
    assert!(misses >= 2, "misses {misses}");
    assert!(
        hits >= 2 * PARTITIONS as i64,
        "cold fetches were served from read-ahead: hits {hits}, misses {misses}"
    );
    assert!(
        hits > misses,
        "most cold fetches hit: hits {hits}, misses {misses}"
    );
}

#[test]
fn cold_consumption_without_read_ahead_is_exact_too() {
    let (hits, misses) = cold_consume(&["--readahead-mb", "0"]);
    assert_eq!(hits, 0);
    assert!(misses > 0, "cold fetches went to disk");
}
