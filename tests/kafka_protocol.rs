//! The Kafka listener frame by frame: version negotiation, errors Kafka
//! clients expect, bad input, and batches passing through untouched. The
//! real clients (kcat, librdkafka, kafka-python) are in kafka_clients.rs.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{self as km, ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use ringmq_wire::batch::{BatchBuilder, Compression};

/// A raw Kafka-protocol connection.
struct KafkaConn {
    stream: TcpStream,
    next_correlation_id: i32,
}

impl KafkaConn {
    fn connect(addr: &str) -> KafkaConn {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        KafkaConn {
            stream,
            next_correlation_id: 1,
        }
    }

    fn send_frame(&mut self, body: &[u8]) {
        let mut frame = (body.len() as i32).to_be_bytes().to_vec();
        frame.extend_from_slice(body);
        self.stream.write_all(&frame).unwrap();
    }

    /// Sends `request` at `version`; returns its correlation id.
    fn send<R: Encodable>(&mut self, api: ApiKey, version: i16, request: &R) -> i32 {
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id += 1;
        let header = RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("kafka-protocol-test")));
        let mut buf = BytesMut::new();
        header
            .encode(&mut buf, api.request_header_version(version))
            .unwrap();
        request.encode(&mut buf, version).unwrap();
        self.send_frame(&buf);
        correlation_id
    }

    /// Reads one response frame; `None` when the broker closed the stream.
    fn recv_frame(&mut self) -> Option<Bytes> {
        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size).ok()?;
        let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
        self.stream.read_exact(&mut body).ok()?;
        Some(Bytes::from(body))
    }

    fn recv<R: Decodable>(&mut self, api: ApiKey, version: i16, correlation_id: i32) -> R {
        let mut frame = self.recv_frame().expect("a response");
        let header =
            ResponseHeader::decode(&mut frame, api.response_header_version(version)).unwrap();
        assert_eq!(
            header.correlation_id, correlation_id,
            "responses come in order"
        );
        R::decode(&mut frame, version).unwrap()
    }

    fn call<Q: Encodable, R: Decodable>(&mut self, api: ApiKey, version: i16, request: &Q) -> R {
        let id = self.send(api, version, request);
        self.recv(api, version, id)
    }
}

fn topic_name(name: &str) -> km::TopicName {
    StrBytes::from_string(name.to_string()).into()
}

const TIMESTAMP_MS: i64 = 1_700_000_000_000;

fn batch(values: &[&str], compression: Compression) -> Bytes {
    let mut builder = BatchBuilder::new(compression, TIMESTAMP_MS);
    for v in values {
        builder
            .append(TIMESTAMP_MS, Some(b"k".as_slice()), Some(v.as_bytes()), &[])
            .unwrap();
    }
    builder.build().unwrap()
}

fn produce(topic: &str, partition: i32, records: Bytes, acks: i16) -> km::ProduceRequest {
    km::ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![km::produce_request::TopicProduceData::default()
            .with_name(topic_name(topic))
            .with_partition_data(vec![
                km::produce_request::PartitionProduceData::default()
                    .with_index(partition)
                    .with_records(Some(records)),
            ])])
}

fn fetch(topic: &str, partition: i32, offset: i64) -> km::FetchRequest {
    km::FetchRequest::default()
        .with_max_wait_ms(100)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_topics(vec![km::fetch_request::FetchTopic::default()
            .with_topic(topic_name(topic))
            .with_partitions(vec![km::fetch_request::FetchPartition::default()
                .with_partition(partition)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(1 << 20)])])
}

#[test]
fn api_versions_negotiate_and_unknown_versions_get_the_ranges() {
    let broker = common::Broker::start(2);
    let mut conn = KafkaConn::connect(&broker.kafka_addr());
    for version in [0, 3] {
        let r: km::ApiVersionsResponse = conn.call(
            ApiKey::ApiVersions,
            version,
            &km::ApiVersionsRequest::default()
                .with_client_software_name(StrBytes::from_static_str("test"))
                .with_client_software_version(StrBytes::from_static_str("1")),
        );
        assert_eq!(r.error_code, 0);
        let produce = r
            .api_keys
            .iter()
            .find(|k| k.api_key == ApiKey::Produce as i16)
            .expect("produce advertised");
        assert_eq!((produce.min_version, produce.max_version), (3, 9));
        for api in [
            ApiKey::SyncGroup,
            ApiKey::InitProducerId,
            ApiKey::DescribeConfigs,
        ] {
            assert!(
                r.api_keys.iter().any(|k| k.api_key == api as i16),
                "{api:?}"
            );
        }
    }
    // KIP-511: a version newer than ours is answered in v0 with
    // UNSUPPORTED_VERSION (35) and our ranges, on the same connection.
    let id = conn.send(ApiKey::ApiVersions, 4, &km::ApiVersionsRequest::default());
    let r: km::ApiVersionsResponse = conn.recv(ApiKey::ApiVersions, 0, id);
    assert_eq!(r.error_code, 35);
    assert!(!r.api_keys.is_empty());
    let again: km::ApiVersionsResponse =
        conn.call(ApiKey::ApiVersions, 0, &km::ApiVersionsRequest::default());
    assert_eq!(again.error_code, 0);
}

#[test]
fn metadata_advertises_every_shard_as_a_broker_leading_its_partitions() {
    let broker = common::Broker::start(2);
    let mut native = common::RawConn::connect(&broker.addr());
    native.create_topic("meta", 4);
    let mut conn = KafkaConn::connect(&broker.kafka_addr());
    let r: km::MetadataResponse = conn.call(
        ApiKey::Metadata,
        9,
        &km::MetadataRequest::default().with_topics(Some(vec![
            km::metadata_request::MetadataRequestTopic::default()
                .with_name(Some(topic_name("meta"))),
            km::metadata_request::MetadataRequestTopic::default()
                .with_name(Some(topic_name("missing"))),
        ])),
    );
    let mut node_ids: Vec<i32> = r.brokers.iter().map(|b| b.node_id.0).collect();
    node_ids.sort_unstable();
    assert_eq!(node_ids, vec![0, 1]);
    let meta = r
        .topics
        .iter()
        .find(|t| t.name.as_ref().map(|n| n.as_str()) == Some("meta"))
        .unwrap();
    assert_eq!(meta.error_code, 0);
    assert_eq!(meta.partitions.len(), 4);
    for p in &meta.partitions {
        let owner = ringmq_shards::catalog::owner_shard("meta", p.partition_index as u32, 2);
        assert_eq!(
            p.leader_id.0, owner as i32,
            "partition {}",
            p.partition_index
        );
    }
    let missing = r
        .topics
        .iter()
        .find(|t| t.name.as_ref().map(|n| n.as_str()) == Some("missing"))
        .unwrap();
    assert_eq!(missing.error_code, 3, "UNKNOWN_TOPIC_OR_PARTITION");
    // Each advertised broker answers on its own port.
    for b in &r.brokers {
        let mut direct = KafkaConn::connect(&format!("{}:{}", b.host.as_str(), b.port));
        let v: km::ApiVersionsResponse =
            direct.call(ApiKey::ApiVersions, 3, &km::ApiVersionsRequest::default());
        assert_eq!(v.error_code, 0);
    }
}

#[test]
fn batches_pass_through_untouched_and_errors_have_kafka_codes() {
    let broker = common::Broker::start(2);
    let mut native = common::RawConn::connect(&broker.addr());
    native.create_topic("pass", 2);
    let mut conn = KafkaConn::connect(&broker.kafka_addr());
    let sent = batch(&["a", "bb", "ccc"], Compression::Zstd);
    for partition in 0..2 {
        let r: km::ProduceResponse = conn.call(
            ApiKey::Produce,
            9,
            &produce("pass", partition, sent.clone(), -1),
        );
        let p = &r.responses[0].partition_responses[0];
        assert_eq!((p.error_code, p.base_offset), (0, 0), "{p:?}");
    }
    let r: km::FetchResponse = conn.call(ApiKey::Fetch, 12, &fetch("pass", 1, 0));
    let p = &r.responses[0].partitions[0];
    assert_eq!(p.error_code, 0);
    assert_eq!(p.high_watermark, 3);
    let fetched = p.records.clone().unwrap();
    // Byte for byte what was sent, except the base offset the broker
    // assigns (bytes 0..8, outside the CRC) — here 0, as sent.
    assert_eq!(fetched, sent, "the compressed batch comes back untouched");

    // Unknown partition, corrupt batch (CRC), offset out of range.
    let r: km::ProduceResponse =
        conn.call(ApiKey::Produce, 9, &produce("pass", 7, sent.clone(), -1));
    assert_eq!(r.responses[0].partition_responses[0].error_code, 3);
    let mut corrupt = BytesMut::from(&sent[..]);
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    let r: km::ProduceResponse = conn.call(
        ApiKey::Produce,
        9,
        &produce("pass", 0, corrupt.freeze(), -1),
    );
    assert_eq!(
        r.responses[0].partition_responses[0].error_code, 2,
        "CORRUPT_MESSAGE"
    );
    let r: km::FetchResponse = conn.call(ApiKey::Fetch, 12, &fetch("pass", 0, 99));
    assert_eq!(
        r.responses[0].partitions[0].error_code, 1,
        "OFFSET_OUT_OF_RANGE"
    );

    // acks=0 gets no response: the next response is the next request's.
    let _ = conn.send(ApiKey::Produce, 9, &produce("pass", 0, sent.clone(), 0));
    let r: km::ListOffsetsResponse = conn.call(
        ApiKey::ListOffsets,
        7,
        &km::ListOffsetsRequest::default().with_topics(vec![
            km::list_offsets_request::ListOffsetsTopic::default()
                .with_name(topic_name("pass"))
                .with_partitions(vec![
                    km::list_offsets_request::ListOffsetsPartition::default()
                        .with_partition_index(0)
                        .with_timestamp(-1),
                ]),
        ]),
    );
    assert_eq!(
        r.topics[0].partitions[0].offset, 6,
        "acks=0 batch was appended"
    );
}

#[test]
fn idempotent_sequences_through_the_kafka_port() {
    let broker = common::Broker::start(1);
    let mut native = common::RawConn::connect(&broker.addr());
    native.create_topic("idem", 1);
    let mut conn = KafkaConn::connect(&broker.kafka_addr());
    let init: km::InitProducerIdResponse = conn.call(
        ApiKey::InitProducerId,
        4,
        &km::InitProducerIdRequest::default()
            .with_transaction_timeout_ms(60_000)
            .with_producer_id(km::ProducerId(-1))
            .with_producer_epoch(-1),
    );
    assert_eq!(init.error_code, 0);
    assert!(init.producer_id.0 >= 0);
    let with_seq = |seq: i32| {
        let mut builder = BatchBuilder::new(Compression::None, TIMESTAMP_MS).with_producer(
            init.producer_id.0,
            init.producer_epoch,
            seq,
        );
        builder
            .append(TIMESTAMP_MS, None, Some(b"v".as_slice()), &[])
            .unwrap();
        builder.build().unwrap()
    };
    let send = |conn: &mut KafkaConn, seq: i32| -> km::produce_response::PartitionProduceResponse {
        let r: km::ProduceResponse =
            conn.call(ApiKey::Produce, 9, &produce("idem", 0, with_seq(seq), -1));
        r.responses[0].partition_responses[0].clone()
    };
    assert_eq!(send(&mut conn, 0).base_offset, 0);
    assert_eq!(send(&mut conn, 1).base_offset, 1);
    let dup = send(&mut conn, 1);
    assert_eq!(
        (dup.error_code, dup.base_offset),
        (0, 1),
        "a retry gets its original offset"
    );
    let gap = send(&mut conn, 5);
    assert_eq!(gap.error_code, 45, "OUT_OF_ORDER_SEQUENCE_NUMBER");
    // KIP-360: the same producer asking again gets the next epoch.
    let bumped: km::InitProducerIdResponse = conn.call(
        ApiKey::InitProducerId,
        4,
        &km::InitProducerIdRequest::default()
            .with_producer_id(init.producer_id)
            .with_producer_epoch(init.producer_epoch),
    );
    assert_eq!(bumped.producer_id, init.producer_id);
    assert_eq!(bumped.producer_epoch, init.producer_epoch + 1);
}

#[test]
fn validate_only_checks_without_creating() {
    let broker = common::Broker::start(1);
    let mut native = common::RawConn::connect(&broker.addr());
    native.create_topic("exists", 1);
    let mut conn = KafkaConn::connect(&broker.kafka_addr());
    let create = |name: &str, partitions: i32| {
        km::create_topics_request::CreatableTopic::default()
            .with_name(topic_name(name))
            .with_num_partitions(partitions)
            .with_replication_factor(1)
    };
    let r: km::CreateTopicsResponse = conn.call(
        ApiKey::CreateTopics,
        5,
        &km::CreateTopicsRequest::default()
            .with_validate_only(true)
            .with_topics(vec![
                create("exists", 1),
                create("fresh", 2),
                create("zero", 0),
            ]),
    );
    let code = |name: &str| {
        r.topics
            .iter()
            .find(|t| t.name.as_str() == name)
            .unwrap()
            .error_code
    };
    assert_eq!(code("exists"), 36, "TOPIC_ALREADY_EXISTS");
    assert_eq!(code("fresh"), 0);
    assert_eq!(code("zero"), 37, "INVALID_PARTITIONS");
    let m: km::MetadataResponse = conn.call(
        ApiKey::Metadata,
        9,
        &km::MetadataRequest::default().with_topics(Some(vec![
            km::metadata_request::MetadataRequestTopic::default()
                .with_name(Some(topic_name("fresh"))),
        ])),
    );
    assert_eq!(m.topics[0].error_code, 3, "validate_only created nothing");
}

#[test]
fn bad_input_gets_an_answer_or_a_close_and_other_connections_go_on() {
    let broker = common::Broker::start(1);
    let mut healthy = KafkaConn::connect(&broker.kafka_addr());

    // A body that does not decode: CORRUPT_MESSAGE, same connection goes on.
    let mut conn = KafkaConn::connect(&broker.kafka_addr());
    let header = RequestHeader::default()
        .with_request_api_key(ApiKey::Heartbeat as i16)
        .with_request_api_version(0)
        .with_correlation_id(41);
    let mut buf = BytesMut::new();
    header.encode(&mut buf, 1).unwrap();
    buf.put_u8(0); // a truncated group id
    conn.send_frame(&buf);
    let r: km::HeartbeatResponse = conn.recv(ApiKey::Heartbeat, 0, 41);
    assert_eq!(r.error_code, 2);
    let ok: km::ApiVersionsResponse =
        conn.call(ApiKey::ApiVersions, 0, &km::ApiVersionsRequest::default());
    assert_eq!(ok.error_code, 0);

    // An API ringmq does not serve: its Kafka error, not a hang-up.
    let r: km::DescribeClusterResponse = conn.call(
        ApiKey::DescribeCluster,
        0,
        &km::DescribeClusterRequest::default(),
    );
    assert_eq!(r.error_code, 35, "UNSUPPORTED_VERSION");

    // Unframeable: a negative size closes that connection only.
    let mut bad = KafkaConn::connect(&broker.kafka_addr());
    bad.stream.write_all(&(-5i32).to_be_bytes()).unwrap();
    assert!(bad.recv_frame().is_none(), "closed");
    // An unknown api key has no response shape: closed.
    let mut unknown = KafkaConn::connect(&broker.kafka_addr());
    let mut raw = BytesMut::new();
    raw.put_i16(9_999);
    raw.put_i16(0);
    raw.put_i32(7);
    raw.put_i16(-1);
    unknown.send_frame(&raw);
    assert!(unknown.recv_frame().is_none(), "closed");
    // Oversize frame: refused before reading it.
    let mut big = KafkaConn::connect(&broker.kafka_addr());
    big.stream.write_all(&(i32::MAX).to_be_bytes()).unwrap();
    assert!(big.recv_frame().is_none(), "closed");

    let v: km::ApiVersionsResponse =
        healthy.call(ApiKey::ApiVersions, 3, &km::ApiVersionsRequest::default());
    assert_eq!(v.error_code, 0, "other connections keep working");
}
