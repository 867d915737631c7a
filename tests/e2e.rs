//! End to end through the Rust client against a real broker process:
//! produce at every durability level, consume back, restart cleanly and
//! after SIGKILL, and check that nothing is lost, duplicated, reordered or
//! renumbered.
//!
//! Every check compares the log against a model: per partition, the values
//! in the order they were sent (one sending thread, keys hashed with murmur2
//! as the client does), so the record at offset `i` of partition `p` must be
//! `model[p][i]`, and every acknowledged offset must be the record's index.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::Broker;
use ringmq_client::{
    Acks, Client, ClientConfig, Consumer, ConsumerConfig, Producer, ProducerConfig, ProducerRecord,
    StartFrom,
};
use ringmq_wire::murmur2::partition_for_key;

const PARTITIONS: u32 = 4;
const MESSAGES: usize = 100_000;
const VALUE_LEN: usize = 100;
const KEYS: usize = 97;

/// One topic per durability level.
const LEVELS: [(&str, Acks); 3] = [
    ("e2e-none", Acks::None),
    ("e2e-leader", Acks::Leader),
    ("e2e-fsync", Acks::Fsync),
];

/// Per partition, the values expected at offsets 0, 1, 2, ...
type Model = Vec<Vec<Bytes>>;

fn connect(broker: &Broker) -> Client {
    Client::connect(ClientConfig::new(broker.addr())).expect("connect")
}

fn key_of(seq: usize) -> String {
    format!("key-{}", seq % KEYS)
}

/// `TAG|SEQ|` padded to VALUE_LEN bytes.
fn value_of(tag: &str, seq: usize) -> Bytes {
    let mut v = format!("{tag}|{seq:09}|").into_bytes();
    v.resize(VALUE_LEN, b'x');
    Bytes::from(v)
}

/// Sends `seqs` to `topic` at `acks` (keys spread over the partitions) and
/// records them in the model. Acknowledged offsets are checked against the
/// model (so they continue exactly where the log stopped). For `Acks::None`
/// it then sends one fsync barrier per partition on the same connections,
/// so everything before it is appended (and durable) once it is
/// acknowledged.
fn produce_phase(
    client: &Client,
    topic: &str,
    acks: Acks,
    seqs: std::ops::Range<usize>,
    model: &mut Model,
) {
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            acks,
            ..ProducerConfig::default()
        },
    )
    .expect("producer");
    let mut pending = Vec::with_capacity(seqs.len());
    for seq in seqs {
        let key = key_of(seq);
        let value = value_of(topic, seq);
        let partition = partition_for_key(key.as_bytes(), PARTITIONS);
        let expected_offset = model[partition as usize].len() as i64;
        model[partition as usize].push(value.clone());
        let record = ProducerRecord::new(topic, value).with_key(key);
        pending.push((seq, partition, expected_offset, producer.send(record)));
    }
    producer.flush();
    for (seq, partition, expected_offset, future) in pending {
        let meta = future
            .wait()
            .unwrap_or_else(|e| panic!("{topic}: message {seq} failed: {e}"));
        assert_eq!(meta.topic, topic);
        assert_eq!(
            meta.partition, partition,
            "{topic}: message {seq} went to the wrong partition"
        );
        if acks == Acks::None {
            assert_eq!(meta.offset, -1, "acks=none reports no offset");
        } else {
            assert_eq!(
                meta.offset, expected_offset,
                "{topic}: message {seq} acknowledged at the wrong offset"
            );
        }
    }
    producer.close();
    if acks == Acks::None {
        let barrier = Producer::new(client.clone(), ProducerConfig::default()).expect("producer");
        let futures: Vec<_> = (0..PARTITIONS)
            .map(|p| {
                let value = Bytes::from(format!("barrier|{topic}|{}", model[p as usize].len()));
                model[p as usize].push(value.clone());
                (
                    p,
                    model[p as usize].len() as i64 - 1,
                    barrier.send(ProducerRecord::new(topic, value).with_partition(p)),
                )
            })
            .collect();
        for (p, expected_offset, future) in futures {
            let meta = future.wait().expect("barrier acknowledged");
            assert_eq!((meta.partition, meta.offset), (p, expected_offset),
                "{topic}: the fsync barrier must land after every acks=none message sent before it on the same connection");
        }
        barrier.close();
    }
}

/// Reads every partition of `topic` from the earliest offset and checks it
/// against the model: same values at the same offsets, contiguous from 0,
/// nothing missing, nothing more.
fn verify_log(client: &Client, topic: &str, model: &Model) {
    let expected: usize = model.iter().map(Vec::len).sum();
    let mut consumer = Consumer::new(client.clone(), ConsumerConfig::default());
    consumer
        .assign(topic, None, StartFrom::Earliest)
        .expect("assign");
    let mut got: Vec<Vec<(i64, Bytes)>> = vec![Vec::new(); model.len()];
    let mut count = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while count < expected {
        assert!(
            Instant::now() < deadline,
            "{topic}: consumed only {count} of {expected} messages within 60 s"
        );
        for record in consumer.poll(Duration::from_millis(500)).expect("poll") {
            assert_eq!(&*record.topic, topic);
            got[record.partition as usize].push((record.offset, record.value.expect("a value")));
            count += 1;
        }
    }
    // Nothing beyond the model turns up.
    let extra = consumer.poll(Duration::from_millis(300)).expect("poll");
    assert!(
        extra.is_empty(),
        "{topic}: {} unexpected extra records, first {:?}",
        extra.len(),
        extra.first()
    );
    for (p, (records, want)) in got.iter().zip(model).enumerate() {
        assert_eq!(
            records.len(),
            want.len(),
            "{topic}/{p}: record count differs from what was sent"
        );
        for (i, ((offset, value), want)) in records.iter().zip(want).enumerate() {
            assert_eq!(
                *offset, i as i64,
                "{topic}/{p}: offsets must be contiguous from 0"
            );
            assert_eq!(
                value,
                want,
                "{topic}/{p} offset {offset}: got {:?}, expected {:?} (lost, duplicated or reordered)",
                String::from_utf8_lossy(value),
                String::from_utf8_lossy(want)
            );
        }
    }
}

fn verify_all(broker: &Broker, models: &BTreeMap<&str, Model>) {
    let client = connect(broker);
    for (topic, model) in models {
        verify_log(&client, topic, model);
    }
}

#[test]
fn produce_consume_restart_and_crash_lose_nothing() {
    let started = Instant::now();
    let mut broker = Broker::start(2);
    let client = connect(&broker);
    let mut models: BTreeMap<&str, Model> = BTreeMap::new();
    for (topic, _) in LEVELS {
        client
            .admin()
            .create_topic(topic, PARTITIONS, &[])
            .expect("create topic");
        models.insert(topic, vec![Vec::new(); PARTITIONS as usize]);
    }
    // The keys really spread over every partition (and so over both shards).
    let shards: std::collections::BTreeSet<u16> = client
        .admin()
        .describe_topic(LEVELS[0].0)
        .unwrap()
        .partitions
        .iter()
        .map(|p| p.shard)
        .collect();
    assert_eq!(shards.len(), 2, "4 partitions spread over both shards");

    // 1. 100,000 messages at each durability level, then read them all back.
    for (topic, acks) in LEVELS {
        produce_phase(
            &client,
            topic,
            acks,
            0..MESSAGES,
            models.get_mut(topic).unwrap(),
        );
        for p in &models[topic] {
            assert!(
                p.len() > MESSAGES / 8,
                "{topic}: keys spread over partitions"
            );
        }
    }
    eprintln!("produced 3 x {MESSAGES} at {:?}", started.elapsed());
    for (topic, _) in LEVELS {
        verify_log(&client, topic, &models[topic]);
    }
    eprintln!("verified at {:?}", started.elapsed());
    drop(client);

    // 2. Clean restart: SIGTERM exits 0, everything is there at the same
    //    offsets, and new messages continue the offsets.
    let status = broker.terminate();
    assert!(status.success(), "SIGTERM must exit cleanly, got {status}");
    broker.restart();
    verify_all(&broker, &models);
    let client = connect(&broker);
    for (topic, acks) in LEVELS {
        produce_phase(
            &client,
            topic,
            acks,
            MESSAGES..MESSAGES + 2_000,
            models.get_mut(topic).unwrap(),
        );
    }
    verify_all(&broker, &models);
    eprintln!("clean restart verified at {:?}", started.elapsed());

    // 3. SIGKILL right after the last acknowledgement: everything
    //    acknowledged at leader or fsync (and everything an fsync barrier
    //    covered) survives at the same offsets; offsets continue after it.
    //    Leader goes last, so nothing fsynced after it covers it.
    for (topic, acks) in [LEVELS[2], LEVELS[0], LEVELS[1]] {
        produce_phase(
            &client,
            topic,
            acks,
            MESSAGES + 2_000..MESSAGES + 12_000,
            models.get_mut(topic).unwrap(),
        );
    }
    broker.kill9();
    drop(client);
    broker.restart();
    verify_all(&broker, &models);
    let client = connect(&broker);
    for (topic, acks) in LEVELS {
        produce_phase(
            &client,
            topic,
            acks,
            MESSAGES + 12_000..MESSAGES + 13_000,
            models.get_mut(topic).unwrap(),
        );
    }
    verify_all(&broker, &models);
    let status = broker.terminate();
    assert!(status.success(), "SIGTERM must exit cleanly, got {status}");
    eprintln!("crash restart verified at {:?}", started.elapsed());
}

#[test]
fn topics_and_configs_persist_across_restarts() {
    let mut broker = Broker::start(2);
    let describe = |broker: &Broker, name: &str| connect(broker).admin().describe_topic(name);
    let client = connect(&broker);
    client
        .admin()
        .create_topic(
            "with-config",
            3,
            &[("retention.ms".to_string(), "123456".to_string())],
        )
        .expect("create");
    client
        .admin()
        .create_topic("plain", 5, &[])
        .expect("create");
    drop(client);
    let check = |broker: &Broker, when: &str| {
        let t = describe(broker, "with-config").expect("describe");
        assert_eq!(t.partitions.len(), 3, "{when}");
        assert!(
            t.configs
                .iter()
                .any(|(k, v)| k == "retention.ms" && v == "123456"),
            "{when}: retention.ms=123456 in {:?}",
            t.configs
        );
        let t = describe(broker, "plain").expect("describe");
        assert_eq!(t.partitions.len(), 5, "{when}");
        let names: Vec<String> = connect(broker)
            .admin()
            .list_topics()
            .unwrap()
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(names, ["plain", "with-config"], "{when}");
    };
    check(&broker, "after create");
    let status = broker.terminate();
    assert!(status.success(), "{status}");
    broker.restart();
    check(&broker, "after a clean restart");
    broker.kill9();
    broker.restart();
    check(&broker, "after SIGKILL");
    // A deleted topic stays deleted.
    connect(&broker)
        .admin()
        .delete_topic("plain")
        .expect("delete");
    let status = broker.terminate();
    assert!(status.success(), "{status}");
    broker.restart();
    assert!(describe(&broker, "plain").is_err(), "deleted topic is back");
    assert!(describe(&broker, "with-config").is_ok());
}

/// tmpfs has no O_DIRECT: the broker must fall back to buffered I/O.
#[test]
fn data_dir_on_tmpfs_works() {
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        eprintln!("no /dev/shm here: skipping");
        return;
    }
    let temp = tempfile::Builder::new()
        .prefix("ringmq-tmpfs-test")
        .tempdir_in(shm)
        .expect("tempdir in /dev/shm");
    let data_dir = temp.path().join("data");
    let mut broker = Broker::start_in(&data_dir, 2, &[]);
    let client = connect(&broker);
    let topic = "e2e-fsync";
    client.admin().create_topic(topic, PARTITIONS, &[]).unwrap();
    let mut model: Model = vec![Vec::new(); PARTITIONS as usize];
    produce_phase(&client, topic, Acks::Fsync, 0..5_000, &mut model);
    produce_phase(&client, topic, Acks::Leader, 5_000..6_000, &mut model);
    verify_log(&client, topic, &model);
    drop(client);
    let status = broker.terminate();
    assert!(status.success(), "{status}");
    broker.restart();
    let client = connect(&broker);
    verify_log(&client, topic, &model);
    produce_phase(&client, topic, Acks::Fsync, 6_000..7_000, &mut model);
    broker.kill9();
    broker.restart();
    let client = connect(&broker);
    verify_log(&client, topic, &model);
}

/// Leader acknowledgements (appended, not yet fsynced) survive a SIGKILL
/// that follows them at once, round after round; offsets continue after
/// each crash.
#[test]
fn leader_acks_survive_repeated_sigkill() {
    let mut broker = Broker::start(2);
    let topic = "e2e-leader";
    connect(&broker)
        .admin()
        .create_topic(topic, PARTITIONS, &[])
        .unwrap();
    let mut model: Model = vec![Vec::new(); PARTITIONS as usize];
    let mut next = 0;
    for round in 0..4 {
        let client = connect(&broker);
        verify_log(&client, topic, &model);
        let n = 500 + round * 1_500;
        produce_phase(&client, topic, Acks::Leader, next..next + n, &mut model);
        next += n;
        broker.kill9();
        drop(client);
        broker.restart();
    }
    verify_log(&connect(&broker), topic, &model);
}
