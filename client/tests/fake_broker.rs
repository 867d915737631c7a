//! End-to-end tests of producer, consumer and admin against a small fake
//! broker on real sockets: two "shards", each its own listener, partition p
//! owned by shard p % 2. The fake counts requests that reach the wrong shard,
//! so the tests also check shard-aware routing.
//!
//! For the group consumer the fake also coordinates one single-member
//! group (on shard 1): joins complete at once with every partition of the
//! subscribed topics; the tests force a rebalance or make the coordinator
//! forget the member, and check what the client does about it.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use flatbuffers::FlatBufferBuilder;
use ringmq_client::{
    Acks, Client, ClientConfig, Compression, Consumer, ConsumerConfig, GroupConfig, GroupConsumer,
    Producer, ProducerConfig, ProducerRecord, RebalanceListener, RecordRef, SentRange, StartFrom,
};
use ringmq_wire::batch::header::set_base_offset;
use ringmq_wire::batch::BatchSplitter;
use ringmq_wire::envelope::*;
use ringmq_wire::error::{ApiError, ErrorCode};
use ringmq_wire::frame::{encode_frame_head, FrameDecoder, DEFAULT_MAX_FRAME_BYTES};

#[derive(Default)]
struct Log {
    batches: Vec<(i64, Bytes)>, // (base offset, batch)
    next_offset: i64,
}

#[derive(Default)]
struct Store {
    topics: HashMap<String, u32>,
    logs: HashMap<(String, u32), Log>,
}

/// The fake's one consumer group, with at most one member.
#[derive(Default)]
struct FakeGroup {
    generation: i32,
    member: Option<String>,
    members_created: u32,
    /// Set by a test: heartbeats answer `rebalance_in_progress` until the
    /// member rejoins.
    rebalancing: bool,
    offsets: HashMap<(String, u32), i64>,
    /// (generation, topic, partition, offset) of every accepted commit.
    commits: Vec<(i32, String, u32, i64)>,
    leaves: u32,
    /// Group requests that reached shard 0 instead of the coordinator.
    misrouted: u32,
}

struct Fake {
    ports: [u16; 2],
    store: Mutex<Store>,
    misrouted: AtomicU64,
    produce_requests: AtomicU64,
    group: Mutex<FakeGroup>,
}

fn start() -> Arc<Fake> {
    let listeners = [
        TcpListener::bind("127.0.0.1:0").unwrap(),
        TcpListener::bind("127.0.0.1:0").unwrap(),
    ];
    let ports = [
        listeners[0].local_addr().unwrap().port(),
        listeners[1].local_addr().unwrap().port(),
    ];
    let fake = Arc::new(Fake {
        ports,
        store: Mutex::new(Store::default()),
        misrouted: AtomicU64::new(0),
        produce_requests: AtomicU64::new(0),
        group: Mutex::new(FakeGroup::default()),
    });
    for (shard, listener) in listeners.into_iter().enumerate() {
        let fake = fake.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let fake = fake.clone();
                std::thread::spawn(move || serve(&fake, shard as u16, stream.unwrap()));
            }
        });
    }
    fake
}

fn serve(fake: &Fake, shard: u16, mut stream: TcpStream) {
    let decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
    let mut buf = BytesMut::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut fbb = FlatBufferBuilder::new();
    loop {
        while let Some(frame) = decoder.decode(&mut buf).unwrap() {
            let request = Request::decode(&frame.envelope).unwrap();
            let payload = frame.payload.freeze();
            if let Some((response, out_payload)) = fake.handle(shard, request, payload) {
                let envelope = response.encode(&mut fbb);
                let mut out = BytesMut::new();
                encode_frame_head(&mut out, envelope, out_payload.len());
                out.extend_from_slice(&out_payload);
                if stream.write_all(&out).is_err() {
                    return;
                }
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

impl Fake {
    fn owner(partition: u32) -> u16 {
        (partition % 2) as u16
    }

    fn check_route(&self, shard: u16, partition: u32) {
        if Fake::owner(partition) != shard {
            self.misrouted.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn handle(&self, shard: u16, request: Request, payload: Bytes) -> Option<(Response, Bytes)> {
        let id = request.correlation_id;
        let api = request.body.api();
        let body = match request.body {
            RequestBody::ApiVersions => ResponseBody::ApiVersions(ApiVersionsResponse {
                apis: vec![],
                broker_version: "fake".into(),
                max_frame_bytes: DEFAULT_MAX_FRAME_BYTES as u32,
            }),
            RequestBody::Metadata(m) => ResponseBody::Metadata(self.metadata(m)),
            RequestBody::CreateTopics(c) => {
                let mut store = self.store.lock().unwrap();
                for t in &c.topics {
                    store.topics.insert(t.name.clone(), t.partitions);
                }
                ResponseBody::CreateTopics(TopicResults {
                    results: c
                        .topics
                        .iter()
                        .map(|t| TopicResult {
                            name: t.name.clone(),
                            error: None,
                        })
                        .collect(),
                })
            }
            RequestBody::Produce(p) => {
                self.produce_requests.fetch_add(1, Ordering::Relaxed);
                let response = self.produce(shard, &p, &payload);
                if p.acks == Acks::None {
                    return None;
                }
                ResponseBody::Produce(response)
            }
            RequestBody::Fetch(f) => return Some(self.fetch(shard, id, &f)),
            RequestBody::ListOffsets(l) => {
                let store = self.store.lock().unwrap();
                ResponseBody::ListOffsets(ListOffsetsResponse {
                    topics: l
                        .topics
                        .iter()
                        .map(|t| ListOffsetsTopicResult {
                            name: t.name.clone(),
                            partitions: t
                                .partitions
                                .iter()
                                .map(|p| {
                                    self.check_route(shard, p.partition);
                                    let end = store
                                        .logs
                                        .get(&(t.name.clone(), p.partition))
                                        .map_or(0, |l| l.next_offset);
                                    ListOffsetsPartitionResult {
                                        partition: p.partition,
                                        error: None,
                                        offset: if p.timestamp == LIST_OFFSETS_EARLIEST {
                                            0
                                        } else {
                                            end
                                        },
                                        timestamp: -1,
                                    }
                                })
                                .collect(),
                        })
                        .collect(),
                })
            }
            RequestBody::FindCoordinator(_)
            | RequestBody::JoinGroup(_)
            | RequestBody::Heartbeat(_)
            | RequestBody::LeaveGroup(_)
            | RequestBody::OffsetCommit(_)
            | RequestBody::OffsetFetch(_) => match self.group_api(shard, request.body) {
                Ok(body) => body,
                Err(error) => return Some((Response::error(api, id, error), Bytes::new())),
            },
            // The tests never delete nor administer groups; answer like a
            // broker without those APIs.
            _ => {
                let error = ringmq_wire::error::ApiError::new(
                    ringmq_wire::error::ErrorCode::UnknownApi,
                    format!("the fake broker does not serve {}", api.name()),
                );
                return Some((Response::error(api, id, error), Bytes::new()));
            }
        };
        Some((Response::ok(api, id, body), Bytes::new()))
    }

    fn metadata(&self, m: MetadataRequest) -> MetadataResponse {
        let store = self.store.lock().unwrap();
        let names: Vec<String> = m
            .topics
            .unwrap_or_else(|| store.topics.keys().cloned().collect());
        MetadataResponse {
            shards: (0..2)
                .map(|s| ShardEndpoint {
                    shard: s,
                    host: "0.0.0.0".into(),
                    port: self.ports[s as usize],
                })
                .collect(),
            topics: names
                .into_iter()
                .map(|name| match store.topics.get(&name) {
                    Some(&n) => TopicMetadata {
                        name,
                        error: None,
                        partitions: (0..n)
                            .map(|p| PartitionMetadata {
                                partition: p,
                                shard: Fake::owner(p),
                                error: None,
                            })
                            .collect(),
                        configs: vec![],
                    },
                    None => TopicMetadata {
                        name,
                        error: Some(ringmq_wire::error::ApiError::new(
                            ringmq_wire::error::ErrorCode::UnknownTopicOrPartition,
                            "no such topic",
                        )),
                        partitions: vec![],
                        configs: vec![],
                    },
                })
                .collect(),
        }
    }

    fn produce(&self, shard: u16, p: &ProduceRequest, payload: &Bytes) -> ProduceResponse {
        let mut store = self.store.lock().unwrap();
        let topics = p
            .topics
            .iter()
            .map(|t| ProduceTopicResult {
                name: t.name.clone(),
                partitions: t
                    .partitions
                    .iter()
                    .map(|pp| {
                        self.check_route(shard, pp.partition);
                        let bytes = payload.slice(pp.payload.offset as usize..pp.payload.end());
                        let log = store
                            .logs
                            .entry((t.name.clone(), pp.partition))
                            .or_default();
                        let base = log.next_offset;
                        for split in BatchSplitter::new(&bytes) {
                            let split = split.expect("client sent a valid batch");
                            let mut batch =
                                BytesMut::from(&bytes[split.position..split.position + split.size]);
                            set_base_offset(&mut batch, log.next_offset);
                            log.batches.push((log.next_offset, batch.freeze()));
                            log.next_offset += i64::from(split.header.record_count);
                        }
                        ProducePartitionResult {
                            partition: pp.partition,
                            error: None,
                            base_offset: base,
                            last_offset: log.next_offset - 1,
                            log_append_time_ms: -1,
                            log_start_offset: 0,
                        }
                    })
                    .collect(),
            })
            .collect();
        ProduceResponse { topics }
    }

    fn group_api(&self, shard: u16, body: RequestBody) -> Result<ResponseBody, ApiError> {
        let partition_counts = self.store.lock().unwrap().topics.clone();
        let mut group = self.group.lock().unwrap();
        if shard != 1 && !matches!(body, RequestBody::FindCoordinator(_)) {
            group.misrouted += 1;
        }
        Ok(match body {
            RequestBody::FindCoordinator(_) => {
                ResponseBody::FindCoordinator(FindCoordinatorResponse {
                    shard: 1,
                    host: "0.0.0.0".into(),
                    port: self.ports[1],
                    offsets_partition: 0,
                })
            }
            RequestBody::JoinGroup(j) => {
                ResponseBody::JoinGroup(group.join(&j, &partition_counts)?)
            }
            RequestBody::Heartbeat(h) => {
                group.check(&h.member_id, h.generation)?;
                if group.rebalancing {
                    return Err(ApiError::new(ErrorCode::RebalanceInProgress, "rebalancing"));
                }
                ResponseBody::Heartbeat
            }
            RequestBody::LeaveGroup(l) => {
                group.check(&l.member_id, group.generation)?;
                group.member = None;
                group.leaves += 1;
                ResponseBody::LeaveGroup
            }
            RequestBody::OffsetCommit(c) => {
                group.check(&c.member_id, c.generation)?;
                ResponseBody::OffsetCommit(group.commit(&c))
            }
            RequestBody::OffsetFetch(f) => ResponseBody::OffsetFetch(OffsetFetchResponse {
                offsets: group
                    .offsets
                    .iter()
                    .filter(|((t, _), _)| f.topics.as_ref().is_none_or(|ts| ts.contains(t)))
                    .map(|((topic, partition), offset)| CommittedOffset {
                        topic: topic.clone(),
                        partition: *partition,
                        offset: *offset,
                        metadata: String::new(),
                        commit_time_ms: 0,
                        instance_id: String::new(),
                    })
                    .collect(),
            }),
            _ => unreachable!("not a group request"),
        })
    }

    /// Returns whole batches whose last offset >= the fetch offset (so the
    /// first may start before it), or waits a little when there are none.
    fn fetch(&self, shard: u16, id: u64, f: &FetchRequest) -> (Response, Bytes) {
        if let Some(fence) = &f.fence {
            let group = self.group.lock().unwrap();
            if let Err(error) = group.check(&fence.member_id, fence.generation) {
                return (Response::error(ApiKey::Fetch, id, error), Bytes::new());
            }
        }
        for attempt in 0..2 {
            let store = self.store.lock().unwrap();
            let mut payload = BytesMut::new();
            let mut topics = Vec::new();
            for t in &f.topics {
                let mut partitions = Vec::new();
                for fp in &t.partitions {
                    self.check_route(shard, fp.partition);
                    let start = payload.len();
                    if let Some(log) = store.logs.get(&(t.name.clone(), fp.partition)) {
                        for (base, batch) in &log.batches {
                            let records = ringmq_wire::batch::BatchHeader::parse(batch)
                                .unwrap()
                                .record_count;
                            let in_range = base + i64::from(records) > fp.fetch_offset;
                            if in_range && payload.len() - start < fp.partition_max_bytes as usize {
                                payload.extend_from_slice(batch);
                            }
                        }
                    }
                    partitions.push(FetchPartitionResult {
                        partition: fp.partition,
                        error: None,
                        high_watermark: store
                            .logs
                            .get(&(t.name.clone(), fp.partition))
                            .map_or(0, |l| l.next_offset),
                        log_start_offset: 0,
                        payload: PayloadRange {
                            offset: start as u32,
                            length: (payload.len() - start) as u32,
                        },
                    });
                }
                topics.push(FetchTopicResult {
                    name: t.name.clone(),
                    partitions,
                });
            }
            if !payload.is_empty() || attempt == 1 {
                let body = ResponseBody::Fetch(FetchResponse { topics });
                return (Response::ok(ApiKey::Fetch, id, body), payload.freeze());
            }
            drop(store);
            std::thread::sleep(Duration::from_millis(f.max_wait_ms.min(50) as u64));
        }
        unreachable!()
    }
}

impl FakeGroup {
    /// The member must be the current one, in the current generation.
    fn check(&self, member_id: &str, generation: i32) -> Result<(), ApiError> {
        if self.member.as_deref() != Some(member_id) {
            return Err(ApiError::new(ErrorCode::UnknownMemberId, "unknown member"));
        }
        if generation != self.generation {
            return Err(ApiError::new(
                ErrorCode::IllegalGeneration,
                "generation over",
            ));
        }
        Ok(())
    }

    fn join(
        &mut self,
        j: &JoinGroupRequest,
        partition_counts: &HashMap<String, u32>,
    ) -> Result<JoinGroupResponse, ApiError> {
        let member_id = if j.member_id.is_empty() {
            self.members_created += 1;
            format!("m-{}", self.members_created)
        } else if self.member.as_deref() == Some(j.member_id.as_str()) {
            j.member_id.clone()
        } else {
            return Err(ApiError::new(ErrorCode::UnknownMemberId, "unknown member"));
        };
        self.member = Some(member_id.clone());
        self.generation += 1;
        self.rebalancing = false;
        let assignment = j
            .topics
            .iter()
            .filter_map(|t| {
                partition_counts.get(t).map(|&n| TopicPartitions {
                    topic: t.clone(),
                    partitions: (0..n).collect(),
                })
            })
            .collect();
        Ok(JoinGroupResponse {
            member_id,
            generation: self.generation,
            mode: j.mode,
            assignor: j.assignor,
            assignment,
            heartbeat_interval_ms: 50,
            session_timeout_ms: j.session_timeout_ms,
            member_count: 1,
            ..Default::default()
        })
    }

    fn commit(&mut self, c: &OffsetCommitRequest) -> OffsetCommitResponse {
        let mut topics = Vec::new();
        for topic in &c.topics {
            let mut partitions = Vec::new();
            for p in &topic.partitions {
                self.offsets
                    .insert((topic.name.clone(), p.partition), p.offset);
                self.commits
                    .push((c.generation, topic.name.clone(), p.partition, p.offset));
                partitions.push(OffsetCommitPartitionResult {
                    partition: p.partition,
                    error: None,
                });
            }
            topics.push(OffsetCommitTopicResult {
                name: topic.name.clone(),
                partitions,
            });
        }
        OffsetCommitResponse { topics }
    }
}

fn client(fake: &Fake) -> Client {
    Client::connect(ClientConfig::new(format!("127.0.0.1:{}", fake.ports[0]))).unwrap()
}

fn consume_all(
    client: &Client,
    topic: &str,
    expected: usize,
) -> Vec<ringmq_client::ConsumerRecord> {
    let mut consumer = Consumer::new(client.clone(), ConsumerConfig::default());
    consumer.assign(topic, None, StartFrom::Earliest).unwrap();
    let mut records = Vec::new();
    for _ in 0..200 {
        records.extend(consumer.poll(Duration::from_millis(100)).unwrap());
        if records.len() >= expected {
            break;
        }
    }
    records
}

#[test]
fn produce_then_consume_keeps_per_partition_order_and_routes_to_owners() {
    let fake = start();
    let client = client(&fake);
    client.admin().create_topic("orders", 4, &[]).unwrap();
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            batch_bytes: 4096,
            linger_ms: 2,
            compression: Compression::Zstd,
            ..ProducerConfig::default()
        },
    )
    .unwrap();
    let mut futures = Vec::new();
    for i in 0..2000u32 {
        let record =
            ProducerRecord::new("orders", format!("v{i}")).with_key(format!("k{}", i % 13));
        futures.push((i, producer.send(record)));
    }
    let mut last_offset: HashMap<u32, i64> = HashMap::new();
    let mut by_partition: HashMap<u32, Vec<String>> = HashMap::new();
    for (i, fut) in futures {
        let meta = fut.wait().unwrap();
        let key = format!("k{}", i % 13);
        assert_eq!(
            meta.partition,
            ringmq_wire::murmur2::partition_for_key(key.as_bytes(), 4)
        );
        let prev = last_offset
            .insert(meta.partition, meta.offset)
            .unwrap_or(-1);
        assert_eq!(
            meta.offset,
            prev + 1,
            "offsets follow send order within a partition"
        );
        by_partition
            .entry(meta.partition)
            .or_default()
            .push(format!("v{i}"));
    }
    assert!(
        fake.produce_requests.load(Ordering::Relaxed) < 2000,
        "records must be batched"
    );
    let records = consume_all(&client, "orders", 2000);
    assert_eq!(records.len(), 2000);
    let mut consumed: HashMap<u32, Vec<String>> = HashMap::new();
    for r in &records {
        consumed
            .entry(r.partition)
            .or_default()
            .push(String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap());
    }
    assert_eq!(consumed, by_partition);
    assert_eq!(
        fake.misrouted.load(Ordering::Relaxed),
        0,
        "partition requests must go to the owning shard"
    );
    producer.close();
}

#[test]
fn oneway_callbacks_and_acks_none_are_all_delivered_after_flush() {
    let fake = start();
    let client = client(&fake);
    client.admin().create_topic("events", 3, &[]).unwrap();
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            acks: Acks::None,
            ..ProducerConfig::default()
        },
    )
    .unwrap();
    let called = Arc::new(AtomicU64::new(0));
    for i in 0..300u32 {
        let record = ProducerRecord::new("events", format!("e{i}"));
        if i % 2 == 0 {
            producer.send_oneway(record).unwrap();
        } else {
            let called = called.clone();
            producer.send_with_callback(record, move |r| {
                assert_eq!(r.unwrap().offset, -1);
                called.fetch_add(1, Ordering::Relaxed);
            });
        }
    }
    producer.flush();
    assert_eq!(called.load(Ordering::Relaxed), 150);
    assert_eq!(producer.buffered_bytes(), 0);
    // Acks::None gets no answer; wait until the fake has stored everything.
    let records = consume_all(&client, "events", 300);
    assert_eq!(records.len(), 300);
    // Keyless records stick to one partition per batch, then move.
    let partitions: std::collections::HashSet<u32> = records.iter().map(|r| r.partition).collect();
    assert!(!partitions.is_empty());
}

#[test]
fn explicit_partition_sync_send_and_seek() {
    let fake = start();
    let client = client(&fake);
    client.admin().create_topic("t", 2, &[]).unwrap();
    let producer = Producer::new(client.clone(), ProducerConfig::default()).unwrap();
    for i in 0..10 {
        let meta = producer
            .send_sync(
                ProducerRecord::new("t", format!("{i}"))
                    .with_partition(1)
                    .with_header("h", "x"),
            )
            .unwrap();
        assert_eq!((meta.partition, meta.offset), (1, i));
    }
    let err = producer
        .send_sync(ProducerRecord::new("t", "x").with_partition(5))
        .unwrap_err();
    assert!(err.to_string().contains("unknown partition 5"), "{err}");
    let err = producer
        .send_sync(ProducerRecord::new("nope", "x"))
        .unwrap_err();
    assert!(
        matches!(err, ringmq_client::ClientError::UnknownTopic { .. }),
        "{err}"
    );

    let mut consumer = Consumer::new(client.clone(), ConsumerConfig::default());
    consumer
        .assign("t", Some(vec![1]), StartFrom::Offset(7))
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 3 {
        got.extend(consumer.poll(Duration::from_millis(200)).unwrap());
    }
    assert_eq!(
        got.iter().map(|r| r.offset).collect::<Vec<_>>(),
        vec![7, 8, 9]
    );
    assert_eq!(&got[0].headers[0].key[..], b"h");
    assert_eq!(consumer.position("t", 1), Some(10));
    consumer.seek("t", 1, 2).unwrap();
    let mut again = Vec::new();
    while again.len() < 8 {
        again.extend(consumer.poll(Duration::from_millis(200)).unwrap());
    }
    assert_eq!(again[0].offset, 2);
    assert!(
        consumer
            .assign("t", Some(vec![1]), StartFrom::Offset(11))
            .is_err(),
        "beyond the end"
    );
    let info = client.admin().describe_topic("t").unwrap();
    assert_eq!(info.partitions[1].shard, 1);
    assert_eq!(
        info.partitions[1].endpoint,
        format!("127.0.0.1:{}", fake.ports[1])
    );
}

#[test]
fn send_many_delivers_every_record_offset_in_order() {
    let fake = start();
    let client = client(&fake);
    client.admin().create_topic("many", 4, &[]).unwrap();
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            // Small batches: a call spreads over many batches and requests.
            batch_bytes: 2048,
            linger_ms: 1,
            ..ProducerConfig::default()
        },
    )
    .unwrap();
    let values: Vec<String> = (0..3000).map(|i| format!("value-{i}")).collect();
    let keys: Vec<String> = (0..3000).map(|i| format!("k{}", i % 7)).collect();
    let too_big = vec![0u8; 4096];
    let records: Vec<RecordRef<'_>> = (0..3000)
        .map(|i| {
            let record = RecordRef::new(values[i].as_bytes());
            match i % 4 {
                0 => record,                                // sticky
                1 => record.with_key(keys[i].as_bytes()),   // by key
                2 => record.with_partition((i % 4) as u32), // explicit
                _ if i == 1003 => RecordRef::new(&too_big), // cannot fit a batch
                _ if i == 2007 => record.with_partition(9), // no such partition
                _ => record.with_partition(3),
            }
        })
        .collect();
    let result = producer.send_many("many", records).wait().unwrap();
    assert_eq!(result.len(), 3000);
    let results: Vec<_> = result.results().collect();
    assert_eq!(results.len(), 3000);
    let mut expected_by_partition: HashMap<u32, Vec<(i64, String)>> = HashMap::new();
    for (i, r) in results.iter().enumerate() {
        match i {
            1003 => assert!(
                r.as_ref().unwrap_err().to_string().contains("does not fit"),
                "{r:?}"
            ),
            2007 => assert!(
                r.as_ref()
                    .unwrap_err()
                    .to_string()
                    .contains("unknown partition 9"),
                "{r:?}"
            ),
            _ => {
                let position = r.as_ref().unwrap();
                if i % 4 == 1 {
                    assert_eq!(
                        position.partition,
                        ringmq_wire::murmur2::partition_for_key(keys[i].as_bytes(), 4)
                    );
                }
                if i % 4 == 2 {
                    assert_eq!(position.partition, 2);
                }
                expected_by_partition
                    .entry(position.partition)
                    .or_default()
                    .push((position.offset, values[i].clone()));
            }
        }
    }
    // Within a partition, offsets follow the order of the call, densely.
    for (partition, list) in &expected_by_partition {
        for (n, (offset, _)) in list.iter().enumerate() {
            assert_eq!(*offset, n as i64, "partition {partition}");
        }
    }
    assert!(result.first_error().is_some());
    // What the broker stored is what the offsets say.
    let consumed = consume_all(&client, "many", 2998);
    assert_eq!(consumed.len(), 2998);
    for r in consumed {
        let want = &expected_by_partition[&r.partition][r.offset as usize];
        assert_eq!(r.value.as_deref(), Some(want.1.as_bytes()));
    }
    producer.close();
}

#[test]
fn send_many_callback_covers_each_record_once_with_few_callbacks() {
    let fake = start();
    let client = client(&fake);
    client.admin().create_topic("ranges", 2, &[]).unwrap();
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            batch_bytes: 64 * 1024,
            ..ProducerConfig::default()
        },
    )
    .unwrap();
    let ranges: Arc<Mutex<Vec<SentRange>>> = Arc::default();
    let value = [b'x'; 100];
    for _ in 0..5 {
        let sink = ranges.clone();
        let records = (0..400).map(|i| {
            // Alternate partitions in runs of 50: several ranges per call.
            RecordRef::new(&value).with_partition(((i / 50) % 2) as u32)
        });
        producer.send_many_with_callback("ranges", records, move |range| {
            assert_eq!(&*range.topic, "ranges");
            sink.lock().unwrap().push(range);
        });
    }
    producer.flush();
    let ranges = ranges.lock().unwrap();
    // 5 calls × 8 runs of 50; a run may split where a batch fills.
    assert!(ranges.len() >= 40 && ranges.len() < 100, "{}", ranges.len());
    let mut covered = vec![0u32; 400];
    for range in ranges.iter() {
        let ack = range.result.as_ref().unwrap();
        let partition = range.partition.unwrap();
        for i in range.indices.clone() {
            covered[i] += 1;
            assert_eq!(partition, ((i / 50) % 2) as u32);
            assert_eq!(
                range.offset_of(i),
                Some(ack.base_offset + (i - range.indices.start) as i64)
            );
        }
    }
    assert!(covered.iter().all(|&n| n == 5), "each record once per call");
    // Offsets per partition: 1000 records each, every offset exactly once.
    for partition in 0..2u32 {
        let mut offsets: Vec<i64> = ranges
            .iter()
            .filter(|r| r.partition == Some(partition))
            .flat_map(|r| {
                let base = r.result.as_ref().unwrap().base_offset;
                (0..r.indices.len() as i64).map(move |k| base + k)
            })
            .collect();
        offsets.sort_unstable();
        assert_eq!(offsets, (0..1000).collect::<Vec<i64>>());
    }
    assert_eq!(producer.buffered_bytes(), 0);
    producer.close();
    // A closed producer reports the whole call as failed, on this thread.
    let failed: Arc<Mutex<Vec<SentRange>>> = Arc::default();
    let sink = failed.clone();
    producer.send_many_with_callback(
        "ranges",
        (0..3).map(|_| RecordRef::new(b"late")),
        move |r| sink.lock().unwrap().push(r),
    );
    let failed = failed.lock().unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].indices, 0..3);
    assert!(matches!(
        failed[0].result,
        Err(ringmq_client::ClientError::Closed(_))
    ));
}

#[test]
fn consumer_checks_crcs_by_default_and_can_opt_out() {
    let fake = start();
    let client = client(&fake);
    client.admin().create_topic("crc", 1, &[]).unwrap();
    let producer = Producer::new(client.clone(), ProducerConfig::default()).unwrap();
    let result = producer
        .send_many("crc", [RecordRef::new(b"abc"), RecordRef::new(b"def")])
        .wait()
        .unwrap();
    assert!(result.first_error().is_none());
    producer.close();
    // Corrupt the stored batch: flip a byte of the last value (the very
    // last byte is the record's header count), keeping its structure.
    {
        let mut store = fake.store.lock().unwrap();
        let log = store.logs.get_mut(&("crc".to_string(), 0)).unwrap();
        let mut batch = BytesMut::from(&log.batches[0].1[..]);
        let at = batch.len() - 2;
        batch[at] ^= 0x20;
        log.batches[0].1 = batch.freeze();
    }
    let mut checked = Consumer::new(client.clone(), ConsumerConfig::default());
    checked.assign("crc", None, StartFrom::Earliest).unwrap();
    let err = checked.poll(Duration::from_secs(5)).unwrap_err();
    assert!(err.to_string().contains("CRC32C mismatch"), "{err}");
    assert_eq!(checked.position("crc", 0), Some(0), "nothing handed out");

    let mut unchecked = Consumer::new(
        client.clone(),
        ConsumerConfig {
            check_crcs: false,
            ..ConsumerConfig::default()
        },
    );
    unchecked.assign("crc", None, StartFrom::Earliest).unwrap();
    let mut batches = Vec::new();
    for _ in 0..50 {
        batches.extend(unchecked.poll_batches(Duration::from_millis(100)).unwrap());
        if !batches.is_empty() {
            break;
        }
    }
    let values: Vec<&[u8]> = batches
        .iter()
        .flat_map(|b| b.iter().map(|r| r.value.unwrap()))
        .collect();
    assert_eq!(values, vec![&b"abc"[..], &b"deF"[..]]);
    assert_eq!(unchecked.position("crc", 0), Some(2));
}

/// Records rebalance events as `assigned 1 t:0,t:1` strings.
struct Recorder(Arc<Mutex<Vec<String>>>);

impl Recorder {
    fn push(&self, event: &str, generation: i32, partitions: &[(String, u32)]) {
        let parts: Vec<String> = partitions.iter().map(|(t, p)| format!("{t}:{p}")).collect();
        self.0
            .lock()
            .unwrap()
            .push(format!("{event} {generation} {}", parts.join(",")));
    }
}

impl RebalanceListener for Recorder {
    fn on_assigned(&mut self, generation: i32, partitions: &[(String, u32)]) {
        self.push("assigned", generation, partitions);
    }
    fn on_revoked(&mut self, generation: i32, partitions: &[(String, u32)]) {
        self.push("revoked", generation, partitions);
    }
    fn on_lost(&mut self, generation: i32, partitions: &[(String, u32)]) {
        self.push("lost", generation, partitions);
    }
}

fn produce_values(client: &Client, topic: &str, values: std::ops::Range<u32>) {
    let producer = Producer::new(client.clone(), ProducerConfig::default()).unwrap();
    for i in values {
        producer
            .send_sync(ProducerRecord::new(topic, format!("v{i}")).with_key(format!("k{i}")))
            .unwrap();
    }
    producer.close();
}

/// Polls until `count` records arrived (or a few seconds passed).
fn poll_values(consumer: &mut GroupConsumer, count: usize) -> Vec<String> {
    let mut values = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while values.len() < count && std::time::Instant::now() < deadline {
        for record in consumer.poll(Duration::from_millis(100)).unwrap() {
            values.push(String::from_utf8(record.value.unwrap().to_vec()).unwrap());
        }
    }
    values
}

fn group_consumer(client: &Client, events: &Arc<Mutex<Vec<String>>>) -> GroupConsumer {
    let config = GroupConfig {
        session_timeout_ms: 300,
        // Commits only on rebalance and close, so the test sees exactly those.
        auto_commit_interval_ms: 60_000,
        ..GroupConfig::new("g")
    };
    let mut consumer = GroupConsumer::new(client.clone(), config).unwrap();
    consumer.subscribe(&["gt".to_string()]);
    consumer.set_rebalance_listener(Box::new(Recorder(events.clone())));
    consumer
}

#[test]
fn group_consumer_commits_before_a_rebalance_and_resumes_from_the_commit() {
    let fake = start();
    let client = client(&fake);
    client.admin().create_topic("gt", 2, &[]).unwrap();
    produce_values(&client, "gt", 0..20);
    let events = Arc::new(Mutex::new(Vec::new()));
    let mut consumer = group_consumer(&client, &events);

    let first = poll_values(&mut consumer, 20);
    assert_eq!(first.len(), 20);
    assert_eq!(consumer.member_id(), "m-1");
    assert_eq!(consumer.generation(), 1);
    assert_eq!(
        consumer.assignment(),
        vec![("gt".to_string(), 0), ("gt".to_string(), 1)]
    );
    let ends: Vec<Option<i64>> = (0..2).map(|p| consumer.position("gt", p)).collect();

    // The coordinator starts a rebalance; the heartbeat thread notices.
    fake.group.lock().unwrap().rebalancing = true;
    produce_values(&client, "gt", 20..28);
    let second = poll_values(&mut consumer, 8);
    let mut expected: Vec<String> = (20..28).map(|i| format!("v{i}")).collect();
    let mut got = second.clone();
    expected.sort();
    got.sort();
    assert_eq!(got, expected, "resumed exactly at the committed offsets");
    assert_eq!(consumer.generation(), 2);
    assert_eq!(
        *events.lock().unwrap(),
        vec![
            "assigned 1 gt:0,gt:1",
            "revoked 1 gt:0,gt:1",
            "assigned 2 gt:0,gt:1"
        ]
    );
    {
        let group = fake.group.lock().unwrap();
        let before_rebalance: Vec<(u32, i64)> = group
            .commits
            .iter()
            .filter(|c| c.0 == 1)
            .map(|c| (c.2, c.3))
            .collect();
        let expected: Vec<(u32, i64)> = (0..2).map(|p| (p, ends[p as usize].unwrap())).collect();
        assert_eq!(
            before_rebalance, expected,
            "generation 1 committed its positions"
        );
    }
    assert_eq!(consumer.committed("gt", 0).unwrap(), ends[0]);

    consumer.close().unwrap();
    let group = fake.group.lock().unwrap();
    assert_eq!(group.leaves, 1);
    assert_eq!(group.member, None);
    let total: i64 = (0..2).map(|p| group.offsets[&("gt".to_string(), p)]).sum();
    assert_eq!(total, 28, "close committed everything consumed");
    assert_eq!(group.misrouted, 0, "group requests go to the coordinator");
    assert_eq!(
        events.lock().unwrap().last().unwrap(),
        "revoked 2 gt:0,gt:1"
    );
}

#[test]
fn a_member_the_coordinator_forgot_is_lost_and_rejoins_afresh() {
    let fake = start();
    let client = client(&fake);
    client.admin().create_topic("gt", 2, &[]).unwrap();
    produce_values(&client, "gt", 0..4);
    let events = Arc::new(Mutex::new(Vec::new()));
    let mut consumer = group_consumer(&client, &events);
    assert_eq!(poll_values(&mut consumer, 4).len(), 4);
    consumer.commit_sync().unwrap();

    // The member's session "expired": heartbeats and fetches are refused.
    fake.group.lock().unwrap().member = None;
    produce_values(&client, "gt", 4..6);
    let again = poll_values(&mut consumer, 2);
    assert_eq!(again.len(), 2, "{again:?}");
    assert_eq!(
        consumer.member_id(),
        "m-2",
        "rejoined with a fresh member id"
    );
    assert_eq!(
        *events.lock().unwrap(),
        vec![
            "assigned 1 gt:0,gt:1",
            "lost 1 gt:0,gt:1",
            "assigned 2 gt:0,gt:1"
        ]
    );
    // A lost member cannot commit: nothing of generation 1 after the first.
    let gen1_commits = fake
        .group
        .lock()
        .unwrap()
        .commits
        .iter()
        .filter(|c| c.0 == 1)
        .count();
    assert_eq!(gen1_commits, 2);
    consumer.close().unwrap();
}

#[test]
fn commit_async_callbacks_run_on_the_polling_thread() {
    let fake = start();
    let client = client(&fake);
    client.admin().create_topic("gt", 2, &[]).unwrap();
    produce_values(&client, "gt", 0..6);
    let events = Arc::new(Mutex::new(Vec::new()));
    let mut consumer = group_consumer(&client, &events);
    assert_eq!(poll_values(&mut consumer, 6).len(), 6);
    let outcome = Arc::new(Mutex::new(None));
    let polling_thread = std::thread::current().id();
    {
        let outcome = outcome.clone();
        consumer.commit_async(Some(Box::new(move |result| {
            assert_eq!(std::thread::current().id(), polling_thread);
            *outcome.lock().unwrap() = Some(result.is_ok());
        })));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while outcome.lock().unwrap().is_none() && std::time::Instant::now() < deadline {
        consumer.poll(Duration::from_millis(50)).unwrap();
    }
    assert_eq!(*outcome.lock().unwrap(), Some(true));
    let committed: i64 = (0..2)
        .map(|p| consumer.committed("gt", p).unwrap().unwrap())
        .sum();
    assert_eq!(committed, 6);
    drop(consumer); // closes: leaves the group
    assert_eq!(fake.group.lock().unwrap().leaves, 1);
}
