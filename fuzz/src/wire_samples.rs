//! Valid protocol values to seed the fuzz corpora (`examples/gen_corpus.rs`)
//! and to mutate in the property tests (`wire/tests/decoder_props.rs`
//! includes this file by path). Depends on `ringmq-wire` and `bytes` only.

use bytes::{BufMut, Bytes, BytesMut};
use flatbuffers::FlatBufferBuilder;
use ringmq_wire::batch::header::{set_base_offset, store_crc, ATTR_TIMESTAMP_TYPE_LOG_APPEND};
use ringmq_wire::batch::{BatchBuilder, Compression};
use ringmq_wire::envelope::*;
use ringmq_wire::error::{ApiError, ErrorCode};
use ringmq_wire::frame::encode_frame_head;

/// One request of every api, with the optional parts both set and unset.
pub fn requests() -> Vec<Request> {
    let bodies = vec![
        RequestBody::ApiVersions,
        RequestBody::Metadata(MetadataRequest { topics: None }),
        RequestBody::Metadata(MetadataRequest {
            topics: Some(vec!["orders".into(), String::new(), "é".into()]),
        }),
        RequestBody::CreateTopics(CreateTopicsRequest {
            topics: vec![
                NewTopic {
                    name: "orders".into(),
                    partitions: 3,
                    configs: vec![
                        ("retention.ms".into(), "1000".into()),
                        ("segment.bytes".into(), "1048576".into()),
                    ],
                },
                NewTopic {
                    name: "t".into(),
                    partitions: 0,
                    configs: vec![],
                },
            ],
            timeout_ms: 5000,
        }),
        RequestBody::DeleteTopics(DeleteTopicsRequest {
            names: vec!["orders".into(), "t".into()],
            timeout_ms: 10,
        }),
        RequestBody::Produce(ProduceRequest {
            acks: Acks::Fsync,
            timeout_ms: 30_000,
            topics: vec![ProduceTopic {
                name: "orders".into(),
                partitions: vec![
                    ProducePartition {
                        partition: 0,
                        payload: PayloadRange {
                            offset: 0,
                            length: 100,
                        },
                    },
                    ProducePartition {
                        partition: 7,
                        payload: PayloadRange {
                            offset: 100,
                            length: u32::MAX,
                        },
                    },
                ],
            }],
        }),
        RequestBody::Fetch(FetchRequest {
            max_wait_ms: 500,
            min_bytes: 1,
            max_bytes: 1 << 20,
            topics: vec![FetchTopic {
                name: "orders".into(),
                partitions: vec![FetchPartition {
                    partition: 2,
                    fetch_offset: -1,
                    partition_max_bytes: 1 << 20,
                }],
            }],
            fence: None,
        }),
        RequestBody::ListOffsets(ListOffsetsRequest {
            topics: vec![ListOffsetsTopic {
                name: "orders".into(),
                partitions: vec![
                    ListOffsetsPartition {
                        partition: 0,
                        timestamp: LIST_OFFSETS_EARLIEST,
                    },
                    ListOffsetsPartition {
                        partition: 1,
                        timestamp: i64::MAX,
                    },
                ],
            }],
        }),
        RequestBody::JoinGroup(JoinGroupRequest {
            group: "billing".into(),
            member_id: String::new(),
            instance_id: "host-a".into(),
            client_id: "fuzz".into(),
            mode: GroupMode::Broadcasting,
            assignor: Assignor::RoundRobin,
            topics: vec!["orders".into(), "refunds".into()],
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: u32::MAX,
            protocol_type: String::new(),
            protocols: Vec::new(),
        }),
        RequestBody::JoinGroup(JoinGroupRequest {
            group: "billing".into(),
            topics: vec!["orders".into()],
            session_timeout_ms: 45_000,
            protocol_type: "consumer".into(),
            protocols: vec![GroupProtocol {
                name: "range".into(),
                metadata: vec![0, 3, 0, 0],
            }],
            ..Default::default()
        }),
        RequestBody::SyncGroup(SyncGroupRequest {
            group: "billing".into(),
            member_id: "m-1".into(),
            generation: 2,
            assignments: vec![MemberAssignment {
                member_id: "m-1".into(),
                assignment: vec![1, 2, 3],
                partitions: vec![TopicPartitions {
                    topic: "orders".into(),
                    partitions: vec![0],
                }],
            }],
        }),
        RequestBody::CreatePartitions(CreatePartitionsRequest {
            topics: vec![NewPartitions {
                name: "orders".into(),
                count: u32::MAX,
            }],
            timeout_ms: 0,
        }),
        RequestBody::Heartbeat(HeartbeatRequest {
            group: "billing".into(),
            member_id: "m-1".into(),
            generation: i32::MIN,
        }),
        RequestBody::OffsetCommit(OffsetCommitRequest {
            group: "billing".into(),
            member_id: "m-1".into(),
            generation: 3,
            instance_id: String::new(),
            topics: vec![OffsetCommitTopic {
                name: "orders".into(),
                partitions: vec![OffsetCommitPartition {
                    partition: 1,
                    offset: -5,
                    metadata: "m".into(),
                }],
            }],
        }),
        RequestBody::OffsetFetch(OffsetFetchRequest {
            group: "billing".into(),
            instance_id: "host-a".into(),
            topics: None,
        }),
        RequestBody::Fetch(FetchRequest {
            max_wait_ms: 0,
            min_bytes: 0,
            max_bytes: 0,
            topics: vec![],
            fence: Some(FetchFence {
                group: "billing".into(),
                member_id: "m-1".into(),
                generation: 2,
            }),
        }),
        RequestBody::ListGroups,
    ];
    bodies
        .into_iter()
        .enumerate()
        .map(|(i, body)| Request {
            version: API_VERSION,
            correlation_id: i as u64 * 0x0101_0101_0101,
            client_id: if i % 2 == 0 {
                "fuzz".into()
            } else {
                String::new()
            },
            body,
        })
        .collect()
}

/// One response of every api, plus whole-request and per-item errors.
pub fn responses() -> Vec<Response> {
    let error = |code| Some(ApiError::new(code, "message"));
    vec![
        Response::error(
            ApiKey::Fetch,
            9,
            ApiError::new(ErrorCode::UnknownApi, "nope"),
        ),
        Response::ok(
            ApiKey::ApiVersions,
            1,
            ResponseBody::ApiVersions(ApiVersionsResponse {
                apis: ApiKey::ALL
                    .iter()
                    .map(|&api| ApiVersionRange {
                        api,
                        min_version: 0,
                        max_version: 0,
                    })
                    .collect(),
                broker_version: "0.1.0".into(),
                max_frame_bytes: 64 << 20,
            }),
        ),
        Response::ok(
            ApiKey::Metadata,
            2,
            ResponseBody::Metadata(MetadataResponse {
                shards: vec![ShardEndpoint {
                    shard: 0,
                    host: "127.0.0.1".into(),
                    port: 7072,
                }],
                topics: vec![TopicMetadata {
                    name: "orders".into(),
                    error: None,
                    partitions: vec![
                        PartitionMetadata {
                            partition: 0,
                            shard: 0,
                            error: None,
                        },
                        PartitionMetadata {
                            partition: 1,
                            shard: 1,
                            error: error(ErrorCode::UnknownTopicOrPartition),
                        },
                    ],
                    configs: vec![("k".into(), "v".into())],
                }],
            }),
        ),
        Response::ok(
            ApiKey::CreateTopics,
            3,
            ResponseBody::CreateTopics(TopicResults {
                results: vec![TopicResult {
                    name: "orders".into(),
                    error: error(ErrorCode::TopicAlreadyExists),
                }],
            }),
        ),
        Response::ok(
            ApiKey::DeleteTopics,
            4,
            ResponseBody::DeleteTopics(TopicResults {
                results: vec![TopicResult {
                    name: "orders".into(),
                    error: None,
                }],
            }),
        ),
        Response::ok(
            ApiKey::Produce,
            5,
            ResponseBody::Produce(ProduceResponse {
                topics: vec![ProduceTopicResult {
                    name: "orders".into(),
                    partitions: vec![
                        ProducePartitionResult {
                            partition: 0,
                            error: None,
                            base_offset: 10,
                            last_offset: 19,
                            log_append_time_ms: 1,
                            log_start_offset: 0,
                        },
                        ProducePartitionResult::failed(
                            1,
                            ApiError::new(ErrorCode::CorruptMessage, "crc"),
                        ),
                    ],
                }],
            }),
        ),
        Response::ok(
            ApiKey::Fetch,
            6,
            ResponseBody::Fetch(FetchResponse {
                topics: vec![FetchTopicResult {
                    name: "orders".into(),
                    partitions: vec![
                        FetchPartitionResult {
                            partition: 0,
                            error: None,
                            high_watermark: 5,
                            log_start_offset: 0,
                            payload: PayloadRange {
                                offset: 0,
                                length: 61,
                            },
                        },
                        FetchPartitionResult::failed(3, ApiError::new(ErrorCode::Unknown, "")),
                    ],
                }],
            }),
        ),
        Response::ok(
            ApiKey::ListOffsets,
            7,
            ResponseBody::ListOffsets(ListOffsetsResponse {
                topics: vec![ListOffsetsTopicResult {
                    name: "orders".into(),
                    partitions: vec![ListOffsetsPartitionResult {
                        partition: 0,
                        error: None,
                        offset: 42,
                        timestamp: -1,
                    }],
                }],
            }),
        ),
    ]
}

pub fn encode_request(request: &Request) -> Vec<u8> {
    let mut fbb = FlatBufferBuilder::new();
    request.encode(&mut fbb).to_vec()
}

pub fn encode_response(response: &Response) -> Vec<u8> {
    let mut fbb = FlatBufferBuilder::new();
    response.encode(&mut fbb).to_vec()
}

/// Every sample request and response envelope.
pub fn envelopes() -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = requests().iter().map(encode_request).collect();
    out.extend(responses().iter().map(encode_response));
    out
}

/// A frame: prefix, envelope, payload.
pub fn frame(envelope: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_frame_head(&mut out, envelope, payload.len());
    out.put_slice(payload);
    out.to_vec()
}

/// A batch of `count` records in `codec`: keys, null keys, values, null
/// values and headers mixed.
pub fn batch(codec: Compression, count: usize) -> Bytes {
    let base_timestamp_ms = 1_700_000_000_000;
    let mut builder = BatchBuilder::new(codec, base_timestamp_ms);
    for i in 0..count {
        let key = format!("key-{i}");
        let value = format!("value-{i}-").repeat(1 + i % 3);
        let header_value = [i as u8; 3];
        let headers: Vec<(&str, Option<&[u8]>)> = match i % 3 {
            0 => vec![],
            1 => vec![("h", Some(&header_value[..]))],
            _ => vec![("trace", None), ("", Some(&b""[..]))],
        };
        builder
            .append(
                base_timestamp_ms + i as i64 * 7 - 3,
                (i % 4 != 1).then_some(key.as_bytes()),
                (i % 5 != 2).then_some(value.as_bytes()),
                &headers,
            )
            .expect("append");
    }
    builder.build().expect("build")
}

/// Sample batches: every codec, one and several records, a patched base
/// offset and a log-append-time batch.
pub fn batches() -> Vec<Bytes> {
    let mut out = Vec::new();
    for codec in Compression::ALL {
        out.push(batch(codec, 1));
        out.push(batch(codec, 5));
    }
    let mut patched = batch(Compression::None, 3).to_vec();
    set_base_offset(&mut patched, 1_000_000);
    out.push(Bytes::from(patched));
    let mut log_append = batch(Compression::None, 2).to_vec();
    log_append[22] |= ATTR_TIMESTAMP_TYPE_LOG_APPEND as u8;
    store_crc(&mut log_append);
    out.push(Bytes::from(log_append));
    out
}
