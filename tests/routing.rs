//! Routing between shards: forwarding from whichever shard a connection
//! lands on, shard-aware clients, pipelining and long polls on one
//! connection, deterministic placement.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{metric_by_shard, metric_sum, Broker, RawConn};
use ringmq_client::{
    Client, ClientConfig, Consumer, ConsumerConfig, Producer, ProducerConfig, ProducerRecord,
    StartFrom,
};
use ringmq_wire::batch::{BatchBuilder, BatchSplitter, Compression, RecordIter};
use ringmq_wire::envelope::*;

fn metadata(conn: &mut RawConn, topics: Option<Vec<String>>) -> MetadataResponse {
    let (r, _) = conn.call(1, RequestBody::Metadata(MetadataRequest { topics }), &[]);
    assert!(r.error.is_none(), "{:?}", r.error);
    match r.body {
        ResponseBody::Metadata(m) => m,
        other => panic!("unexpected {other:?}"),
    }
}

/// partition -> owning shard.
fn placement(meta: &MetadataResponse, topic: &str) -> BTreeMap<u32, u16> {
    let t = meta
        .topics
        .iter()
        .find(|t| t.name == topic)
        .unwrap_or_else(|| panic!("{topic} in metadata"));
    assert!(t.error.is_none(), "{:?}", t.error);
    t.partitions
        .iter()
        .map(|p| (p.partition, p.shard))
        .collect()
}

/// shard -> `host:port` of its own listener.
fn shard_endpoints(meta: &MetadataResponse) -> BTreeMap<u16, String> {
    meta.shards
        .iter()
        .map(|s| (s.shard, format!("{}:{}", s.host, s.port)))
        .collect()
}

fn batch(values: &[String]) -> Vec<u8> {
    let mut builder = BatchBuilder::new(Compression::None, 1_000);
    for v in values {
        builder
            .append(1_000, None, Some(v.as_bytes()), &[])
            .unwrap();
    }
    builder.build().unwrap().to_vec()
}

fn produce_body(topic: &str, partition: u32, acks: Acks, len: usize) -> RequestBody {
    RequestBody::Produce(ProduceRequest {
        acks,
        timeout_ms: 10_000,
        topics: vec![ProduceTopic {
            name: topic.into(),
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

/// The one partition result of a produce answer; panics on an error.
fn produce_result(response: &Response) -> &ProducePartitionResult {
    assert!(response.error.is_none(), "{:?}", response.error);
    match &response.body {
        ResponseBody::Produce(p) => {
            let part = &p.topics[0].partitions[0];
            assert!(part.error.is_none(), "{:?}", part.error);
            part
        }
        other => panic!("unexpected {other:?}"),
    }
}

fn produce(conn: &mut RawConn, id: u64, topic: &str, partition: u32, values: &[String]) -> i64 {
    let b = batch(values);
    let (r, _) = conn.call(id, produce_body(topic, partition, Acks::Fsync, b.len()), &b);
    let part = produce_result(&r);
    assert_eq!(part.last_offset - part.base_offset + 1, values.len() as i64);
    part.base_offset
}

fn fetch_body(topic: &str, partition: u32, offset: i64, max_wait_ms: u32) -> RequestBody {
    RequestBody::Fetch(FetchRequest {
        max_wait_ms,
        min_bytes: 1,
        max_bytes: 8 << 20,
        topics: vec![FetchTopic {
            name: topic.into(),
            partitions: vec![FetchPartition {
                partition,
                fetch_offset: offset,
                partition_max_bytes: 8 << 20,
            }],
        }],
        fence: None,
    })
}

/// What one partition's fetch answer says, for comparison across endpoints.
#[derive(Debug, PartialEq, Eq)]
struct Fetched {
    high_watermark: i64,
    log_start_offset: i64,
    /// The raw batch bytes as the broker sent them.
    raw: Bytes,
    records: Vec<(i64, String)>,
}

fn fetched(response: &Response, payload: &Bytes) -> Fetched {
    assert!(response.error.is_none(), "{:?}", response.error);
    let part = match &response.body {
        ResponseBody::Fetch(f) => f.topics[0].partitions[0].clone(),
        other => panic!("unexpected {other:?}"),
    };
    assert!(part.error.is_none(), "{:?}", part.error);
    let raw = payload.slice(part.payload.offset as usize..part.payload.end());
    let mut records = Vec::new();
    for b in BatchSplitter::new(&raw) {
        let Ok(b) = b else { break };
        let bytes = raw.slice(b.position..b.position + b.size);
        for r in RecordIter::new(bytes).expect("valid batch") {
            let r = r.expect("valid record");
            records.push((
                r.offset,
                String::from_utf8(r.value.unwrap().to_vec()).unwrap(),
            ));
        }
    }
    Fetched {
        high_watermark: part.high_watermark,
        log_start_offset: part.log_start_offset,
        raw,
        records,
    }
}

fn fetch(conn: &mut RawConn, id: u64, topic: &str, partition: u32, offset: i64) -> Fetched {
    let (r, payload) = conn.call(id, fetch_body(topic, partition, offset, 0), &[]);
    fetched(&r, &payload)
}

#[test]
fn requests_on_any_shard_are_forwarded_to_the_owner() {
    let broker = Broker::start(2);
    let mut public = RawConn::connect(&broker.addr());
    public.create_topic("fwd", 6);
    let meta = metadata(&mut public, None);
    let owners = placement(&meta, "fwd");
    let shards = shard_endpoints(&meta);
    assert_eq!(shards.len(), 2, "{shards:?}");
    assert_eq!(
        owners.values().collect::<BTreeSet<_>>().len(),
        2,
        "6 partitions spread over both shards: {owners:?}"
    );
    let before = metric_by_shard(broker.http_port, "ringmq_forwards_out_total");
    assert_eq!(before.len(), 2, "per-shard forwards_out in /metrics");

    // Endpoints: the public port (several connections, so that both shards
    // accept some) and each shard's own port.
    let mut endpoints: Vec<(String, RawConn)> = (0..4)
        .map(|i| (format!("public#{i}"), RawConn::connect(&broker.addr())))
        .collect();
    for (shard, addr) in &shards {
        endpoints.push((format!("shard{shard}"), RawConn::connect(addr)));
    }

    // Produce to every partition through every endpoint.
    let mut expected: BTreeMap<u32, Vec<(i64, String)>> = BTreeMap::new();
    let mut id = 10;
    for (name, conn) in endpoints.iter_mut() {
        for &p in owners.keys() {
            let values: Vec<String> = (0..3).map(|i| format!("{name}/p{p}/{i}")).collect();
            id += 1;
            let base = produce(conn, id, "fwd", p, &values);
            let log = expected.entry(p).or_default();
            assert_eq!(base, log.len() as i64, "{name}: partition {p} base offset");
            log.extend(
                values
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| (base + i as i64, v)),
            );
        }
    }
    // Fetch every partition back through every endpoint: identical answers.
    for (&p, log) in &expected {
        let mut answers = Vec::new();
        for (name, conn) in endpoints.iter_mut() {
            id += 1;
            let f = fetch(conn, id, "fwd", p, 0);
            assert_eq!(&f.records, log, "{name}: partition {p}");
            assert_eq!(f.high_watermark, log.len() as i64, "{name}: partition {p}");
            assert_eq!(f.log_start_offset, 0);
            answers.push((name.clone(), f));
        }
        for (name, f) in &answers[1..] {
            assert_eq!(
                f, &answers[0].1,
                "{name} vs {}: partition {p}",
                answers[0].0
            );
        }
        // From the middle of a batch (batches hold 3 records): the answer
        // starts at the batch holding offset 4, and goes to the end.
        for (name, conn) in endpoints.iter_mut() {
            id += 1;
            let f = fetch(conn, id, "fwd", p, 4);
            let from4: Vec<(i64, String)> =
                f.records.iter().filter(|(o, _)| *o >= 4).cloned().collect();
            assert_eq!(from4, log[4..], "{name}: partition {p} from offset 4");
            assert!(
                f.records.iter().all(|(o, _)| *o >= 3),
                "{name}: partition {p} from offset 4 starts too early: {:?}",
                f.records
            );
        }
    }
    // ListOffsets through every endpoint.
    for (name, conn) in endpoints.iter_mut() {
        id += 1;
        let (r, _) = conn.call(
            id,
            RequestBody::ListOffsets(ListOffsetsRequest {
                topics: vec![ListOffsetsTopic {
                    name: "fwd".into(),
                    partitions: owners
                        .keys()
                        .map(|&p| ListOffsetsPartition {
                            partition: p,
                            timestamp: LIST_OFFSETS_LATEST,
                        })
                        .collect(),
                }],
            }),
            &[],
        );
        assert!(r.error.is_none(), "{name}: {:?}", r.error);
        let ResponseBody::ListOffsets(l) = r.body else {
            panic!("{name}: {:?}", r.body)
        };
        for res in &l.topics[0].partitions {
            assert!(res.error.is_none(), "{name}: {:?}", res.error);
            assert_eq!(res.offset, expected[&res.partition].len() as i64, "{name}");
        }
    }

    // Each shard port served partitions of the other shard: both forwarded.
    let after = metric_by_shard(broker.http_port, "ringmq_forwards_out_total");
    let before: BTreeMap<u16, i64> = before.into_iter().collect();
    for (shard, value) in after {
        assert!(
            value > before[&shard],
            "shard {shard} forwarded nothing (forwards_out {value}) though its port got requests for the other shard's partitions"
        );
    }
    assert!(metric_sum(broker.http_port, "ringmq_forwards_in_total") > 0);
}

#[test]
fn shard_aware_client_produces_and_fetches_without_forwarding() {
    let broker = Broker::start(2);
    let client = Client::connect(ClientConfig::new(broker.addr())).unwrap();
    client.admin().create_topic("direct", 8, &[]).unwrap();
    let forwards = || metric_sum(broker.http_port, "ringmq_forwards_out_total");

    let before = forwards();
    let producer =
        Producer::connect(ClientConfig::new(broker.addr()), ProducerConfig::default()).unwrap();
    let futures: Vec<_> = (0..5_000)
        .map(|i| {
            producer.send(ProducerRecord::new("direct", format!("v{i}")).with_key(format!("k{i}")))
        })
        .collect();
    producer.flush();
    let mut partitions = BTreeSet::new();
    for f in futures {
        partitions.insert(f.wait().expect("acknowledged").partition);
    }
    producer.close();
    assert_eq!(partitions.len(), 8, "keys spread over all partitions");
    let after_produce = forwards();
    assert_eq!(
        after_produce, before,
        "the client's produce requests should go straight to the owning shards (forwards_out grew by {})",
        after_produce - before
    );

    let mut consumer = Consumer::new(client.clone(), ConsumerConfig::default());
    consumer
        .assign("direct", None, StartFrom::Earliest)
        .unwrap();
    let mut got = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while got < 5_000 {
        assert!(Instant::now() < deadline, "consumed {got} of 5000");
        got += consumer.poll(Duration::from_millis(500)).unwrap().len();
    }
    assert_eq!(got, 5_000);
    let after_fetch = forwards();
    assert_eq!(
        after_fetch, after_produce,
        "the client's list-offsets and fetch requests should go straight to the owning shards (forwards_out grew by {})",
        after_fetch - after_produce
    );
}

/// On ONE connection: a long-poll fetch at the high watermark, then metadata
/// and api-versions requests. The latter are answered while the fetch
/// waits; the fetch returns once another connection produces, well before
/// its max_wait. Checked on the owner's port and on the other shard's port
/// (where the long poll is forwarded).
#[test]
fn long_poll_does_not_block_the_connection() {
    let broker = Broker::start(2);
    let mut admin = RawConn::connect(&broker.addr());
    admin.create_topic("lp", 2);
    let meta = metadata(&mut admin, None);
    let owners = placement(&meta, "lp");
    let shards = shard_endpoints(&meta);
    let owner = owners[&0];
    let other = *shards.keys().find(|s| **s != owner).unwrap();
    let mut next = 0i64;
    produce(&mut admin, 3, "lp", 0, &["first".to_string()]);
    next += 1;

    for (what, addr) in [
        ("owner's port", shards[&owner].clone()),
        ("non-owner's port (forwarded)", shards[&other].clone()),
        ("public port", broker.addr()),
    ] {
        let mut conn = RawConn::connect(&addr);
        let sent = Instant::now();
        conn.send(100, fetch_body("lp", 0, next, 3_000), &[]);
        conn.send(
            101,
            RequestBody::Metadata(MetadataRequest { topics: None }),
            &[],
        );
        conn.send(102, RequestBody::ApiVersions, &[]);
        let mut early = BTreeSet::new();
        for _ in 0..2 {
            let (r, _) = conn.recv().expect("a response");
            assert_ne!(
                r.correlation_id, 100,
                "{what}: the fetch was answered before the requests sent after it: the long poll blocked the connection"
            );
            assert!(r.error.is_none(), "{what}: {:?}", r.error);
            early.insert(r.correlation_id);
        }
        assert_eq!(early, BTreeSet::from([101, 102]), "{what}");
        assert!(
            sent.elapsed() < Duration::from_millis(3_000),
            "{what}: metadata waited for the long poll"
        );

        let value = format!("wake-{next}");
        let mut producer_conn = RawConn::connect(&broker.addr());
        let base = produce(&mut producer_conn, 5, "lp", 0, std::slice::from_ref(&value));
        assert_eq!(base, next);
        let (r, payload) = conn.recv().expect("the fetch answer");
        let waited = sent.elapsed();
        assert_eq!(r.correlation_id, 100);
        let f = fetched(&r, &payload);
        assert_eq!(f.records, [(next, value)], "{what}");
        assert!(
            waited < Duration::from_millis(3_000),
            "{what}: the fetch answered only after its max_wait ({waited:?}): produce did not wake the long poll"
        );
        next += 1;
    }
}

/// Many produce requests in flight on one connection: applied in send
/// order. On the owner's port and on the other shard's port (forwarded),
/// at leader and fsync durability.
#[test]
fn pipelined_produces_keep_their_order() {
    let broker = Broker::start(2);
    let mut admin = RawConn::connect(&broker.addr());
    admin.create_topic("pipe", 2);
    let meta = metadata(&mut admin, None);
    let owners = placement(&meta, "pipe");
    let shards = shard_endpoints(&meta);
    let owner = owners[&1];
    let other = *shards.keys().find(|s| **s != owner).unwrap();
    const REQUESTS: u64 = 50;
    const PER_BATCH: usize = 4;
    let mut next = 0i64;
    let mut expected = Vec::new();
    for (what, addr, acks) in [
        ("owner/leader", shards[&owner].clone(), Acks::Leader),
        ("owner/fsync", shards[&owner].clone(), Acks::Fsync),
        ("forwarded/leader", shards[&other].clone(), Acks::Leader),
        ("forwarded/fsync", shards[&other].clone(), Acks::Fsync),
        ("public/fsync", broker.addr(), Acks::Fsync),
    ] {
        let mut conn = RawConn::connect(&addr);
        for id in 0..REQUESTS {
            let values: Vec<String> = (0..PER_BATCH).map(|i| format!("{what}/{id}/{i}")).collect();
            let b = batch(&values);
            conn.send(id, produce_body("pipe", 1, acks, b.len()), &b);
            expected.extend(values);
        }
        let mut bases = BTreeMap::new();
        for _ in 0..REQUESTS {
            let (r, _) = conn.recv().expect("a response");
            let base = produce_result(&r).base_offset;
            assert!(
                bases.insert(r.correlation_id, base).is_none(),
                "{what}: duplicate answer"
            );
        }
        let in_send_order: Vec<i64> = bases.values().copied().collect();
        let want: Vec<i64> = (0..REQUESTS as i64)
            .map(|i| next + i * PER_BATCH as i64)
            .collect();
        assert_eq!(
            in_send_order, want,
            "{what}: base offsets must increase in send order"
        );
        next += REQUESTS as i64 * PER_BATCH as i64;
    }
    // And the log holds them in that order.
    let mut conn = RawConn::connect(&shards[&owner]);
    let mut got = Vec::new();
    while (got.len() as i64) < next {
        let f = fetch(&mut conn, 9, "pipe", 1, got.len() as i64);
        assert!(!f.records.is_empty());
        for (o, v) in f.records {
            if o >= got.len() as i64 {
                assert_eq!(o, got.len() as i64);
                got.push(v);
            }
        }
    }
    assert_eq!(got, expected);
}

#[test]
fn partition_placement_survives_restarts() {
    let mut broker = Broker::start(2);
    let mut conn = RawConn::connect(&broker.addr());
    let topics = [("a", 1), ("b", 2), ("c", 5), ("d", 8), ("e", 3)];
    for (name, n) in topics {
        conn.create_topic(name, n);
    }
    let names: Vec<String> = topics.iter().map(|(n, _)| n.to_string()).collect();
    let snapshot = |conn: &mut RawConn| -> BTreeMap<String, BTreeMap<u32, u16>> {
        let meta = metadata(conn, Some(names.clone()));
        names
            .iter()
            .map(|n| (n.clone(), placement(&meta, n)))
            .collect()
    };
    let first = snapshot(&mut conn);
    for (name, n) in topics {
        assert_eq!(first[name].len(), n as usize);
    }
    let used: BTreeSet<u16> = first.values().flat_map(|m| m.values().copied()).collect();
    assert_eq!(used.len(), 2, "partitions placed on both shards");
    drop(conn);

    let status = broker.terminate();
    assert!(status.success(), "{status}");
    broker.restart();
    let mut conn = RawConn::connect(&broker.addr());
    assert_eq!(snapshot(&mut conn), first, "after a clean restart");
    drop(conn);

    broker.kill9();
    broker.restart();
    let mut conn = RawConn::connect(&broker.addr());
    assert_eq!(snapshot(&mut conn), first, "after SIGKILL");
}

/// ListOffsets by timestamp answers the first *record* at or after the time,
/// not the start of the batch that holds it.
#[test]
fn list_offsets_by_timestamp_is_exact_to_the_record() {
    use ringmq_wire::batch::{BatchBuilder, Compression};
    use ringmq_wire::envelope::*;
    let broker = common::Broker::start(1);
    let mut conn = common::RawConn::connect(&broker.addr());
    let (r, _) = conn.call(
        1,
        RequestBody::CreateTopics(CreateTopicsRequest {
            topics: vec![NewTopic {
                name: "ts".into(),
                partitions: 1,
                configs: vec![],
            }],
            timeout_ms: 10_000,
        }),
        &[],
    );
    assert!(matches!(r.body, ResponseBody::CreateTopics(ref t) if t.results[0].error.is_none()));
    for (correlation_id, codec) in [(2u64, Compression::None), (3, Compression::Lz4)] {
        let mut builder = BatchBuilder::new(codec, 1_000);
        for (i, ts) in [1_000i64, 2_000, 3_000, 4_000].iter().enumerate() {
            builder
                .append(
                    *ts + correlation_id as i64 * 10_000,
                    None,
                    Some(format!("v{i}").as_bytes()),
                    &[],
                )
                .unwrap();
        }
        let batch = builder.build().unwrap();
        let body = RequestBody::Produce(ProduceRequest {
            acks: Acks::Fsync,
            timeout_ms: 10_000,
            topics: vec![ProduceTopic {
                name: "ts".into(),
                partitions: vec![ProducePartition {
                    partition: 0,
                    payload: PayloadRange {
                        offset: 0,
                        length: batch.len() as u32,
                    },
                }],
            }],
        });
        let (r, _) = conn.call(correlation_id, body, &batch);
        assert!(r.error.is_none(), "{:?}", r.error);
    }
    // Batch 1 holds offsets 0..4 at 21000..24000, batch 2 offsets 4..8 at 31000..34000.
    for (timestamp, expected) in [
        (0i64, 0i64),
        (21_500, 1),
        (23_000, 2),
        (24_001, 4),
        (32_500, 6),
        (34_000, 7),
        (40_000, 8),
    ] {
        let (r, _) = conn.call(
            9,
            RequestBody::ListOffsets(ListOffsetsRequest {
                topics: vec![ListOffsetsTopic {
                    name: "ts".into(),
                    partitions: vec![ListOffsetsPartition {
                        partition: 0,
                        timestamp,
                    }],
                }],
            }),
            &[],
        );
        let ResponseBody::ListOffsets(l) = r.body else {
            panic!("{r:?}")
        };
        assert_eq!(
            l.topics[0].partitions[0].offset, expected,
            "timestamp {timestamp}"
        );
    }
}

/// Two brokers never share a data directory.
#[test]
fn a_second_broker_on_the_same_data_dir_is_refused() {
    let broker = common::Broker::start(1);
    let output = std::process::Command::new(common::bin_path("ringmq"))
        .args(["serve", "--data-dir"])
        .arg(&broker.data_dir)
        .args(["--listen", &format!("127.0.0.1:{}", common::free_port())])
        .args(["--http", &format!("127.0.0.1:{}", common::free_port())])
        .args(["--shard-port-base", "0", "--shards", "1"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("in use by another ringmq process"),
        "{stderr}"
    );
}

/// Two queries for the same partition in one ListOffsets call (earliest and
/// latest) each get their own answer, in query order.
#[test]
fn list_offsets_answers_repeated_partitions_in_order() {
    let broker = common::Broker::start(1);
    let out = broker.ringctl(&["topic", "create", "lo", "--partitions", "1"], None);
    assert!(out.status.success());
    let out = broker.ringctl(&["produce", "lo"], Some(b"a\nb\nc\n"));
    assert!(out.status.success());
    let client =
        ringmq_client::Client::connect(ringmq_client::ClientConfig::new(broker.addr())).unwrap();
    let answers = client
        .list_offsets(
            "lo",
            &[
                (0, ringmq_wire::envelope::LIST_OFFSETS_EARLIEST),
                (0, ringmq_wire::envelope::LIST_OFFSETS_LATEST),
            ],
        )
        .unwrap();
    assert_eq!(
        answers.iter().map(|a| a.offset).collect::<Vec<_>>(),
        vec![0, 3]
    );
}
