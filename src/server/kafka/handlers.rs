//! Decodes one Kafka request, runs it on the shard as our own request, and
//! encodes the answer in Kafka's shape.
//!
//! Every request becomes a `ringmq_wire::envelope::Request` handed to
//! `Shard::submit`, the same entry point the native port uses, so routing,
//! forwarding, durability, groups and metrics are shared. The submit of each
//! request is awaited here, before the connection reads the next frame:
//! that is the ordered phase that gives a pipelining producer its offsets in
//! send order. The returned future (run as a task) awaits the rest and
//! encodes the response; `None` means "send nothing" (produce with acks=0).

use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use futures_lite::future::{self, BoxedLocal};
use kafka_protocol::messages::{self as km, ApiKey as KafkaApi, RequestHeader};
use kafka_protocol::protocol::{Decodable, Encodable};
use ringmq_shards::shard::Reply;
use ringmq_wire::envelope::{
    Acks, FetchPartition, FetchRequest, FetchTopic, ListOffsetsPartition, ListOffsetsRequest,
    ListOffsetsTopic, PayloadRange, ProducePartition, ProduceRequest, ProduceTopic, Request,
    RequestBody, ResponseBody,
};
use ringmq_wire::error::{ApiError, ErrorCode};

use super::codec::{
    encode_response, error_code, error_message, kafka_code, peek_header, str_bytes,
    supported_range, RawHeader,
};
use super::{admin, groups, KafkaContext};

pub type Completion = BoxedLocal<Option<Bytes>>;

/// What a handler needs besides its decoded body.
pub struct Call {
    pub ctx: Rc<KafkaContext>,
    pub api: KafkaApi,
    pub version: i16,
    pub correlation_id: i32,
    pub client_id: String,
}

impl Call {
    /// Encodes `body` as this call's response.
    pub fn respond<R: Encodable>(&self, body: &R) -> Option<Bytes> {
        match encode_response(self.api, self.version, self.correlation_id, body) {
            Ok(bytes) => Some(bytes),
            Err(err) => {
                // Only a bug gets here (our own response does not fit the
                // version the client asked for); the client times out.
                tracing::error!(error = %err, "dropping a kafka response");
                None
            }
        }
    }

    /// Runs `body` on the shard as our own request.
    pub async fn submit(&self, body: RequestBody, payload: BytesMut) -> BoxedLocal<Reply> {
        let request = Request {
            version: 0,
            correlation_id: self.correlation_id as u32 as u64,
            client_id: self.client_id.clone(),
            body,
        };
        self.ctx.shard.submit(request, payload).await
    }

    /// Submits and waits for the whole answer.
    pub async fn call(&self, body: RequestBody) -> Result<ResponseBody, ApiError> {
        self.submit(body, BytesMut::new()).await.await.body
    }
}

/// Decodes `frame` and runs its ordered phase. `Err` means the stream
/// cannot go on (the request header itself is unreadable).
pub async fn handle(ctx: &Rc<KafkaContext>, frame: BytesMut) -> Result<Completion, String> {
    let Some(raw) = peek_header(&frame) else {
        return Err(format!(
            "a {}-byte request is shorter than any Kafka request header",
            frame.len()
        ));
    };
    let Ok(api) = KafkaApi::try_from(raw.api_key) else {
        return Err(format!(
            "unknown Kafka api key {} (correlation id {}): no response shape exists for it, so the connection closes",
            raw.api_key, raw.correlation_id
        ));
    };
    let call = |client_id: String| Call {
        ctx: ctx.clone(),
        api,
        version: raw.api_version,
        correlation_id: raw.correlation_id,
        client_id,
    };
    let in_range =
        supported_range(api).is_some_and(|(min, max)| (min..=max).contains(&raw.api_version));
    if !in_range {
        return Ok(ready(unsupported(&call(String::new()), raw)));
    }
    let frame = frame.freeze();
    let mut cursor = frame.clone();
    let header =
        match RequestHeader::decode(&mut cursor, api.request_header_version(raw.api_version)) {
            Ok(header) => header,
            Err(err) => return Err(format!("unreadable {api:?} request header: {err}")),
        };
    let client_id = header
        .client_id
        .as_ref()
        .map(|c| c.as_str().to_string())
        .unwrap_or_default();
    let call = call(client_id);
    Ok(dispatch(call, frame, cursor).await)
}

fn ready(response: Option<Bytes>) -> Completion {
    Box::pin(future::ready(response))
}

/// Decodes a body of type `T`, or answers the decode failure.
macro_rules! decode_or_answer {
    ($call:expr, $ty:ty, $bytes:expr) => {
        match <$ty>::decode(&mut $bytes, $call.version) {
            Ok(body) => body,
            Err(err) => return malformed(&$call, &err.to_string()),
        }
    };
}

/// `frame` is the whole request; `bytes` is a view of it past the header.
async fn dispatch(call: Call, frame: Bytes, mut bytes: Bytes) -> Completion {
    match call.api {
        KafkaApi::Produce => {
            let body = decode_or_answer!(call, km::ProduceRequest, bytes);
            drop(bytes);
            produce(call, body, frame).await
        }
        KafkaApi::Fetch => {
            let body = decode_or_answer!(call, km::FetchRequest, bytes);
            fetch(call, body).await
        }
        KafkaApi::ListOffsets => {
            let body = decode_or_answer!(call, km::ListOffsetsRequest, bytes);
            list_offsets(call, body).await
        }
        KafkaApi::ApiVersions => ready(admin::api_versions(&call, 0)),
        KafkaApi::Metadata => {
            let body = decode_or_answer!(call, km::MetadataRequest, bytes);
            Box::pin(admin::metadata(call, body))
        }
        KafkaApi::CreateTopics => {
            let body = decode_or_answer!(call, km::CreateTopicsRequest, bytes);
            Box::pin(admin::create_topics(call, body))
        }
        KafkaApi::DeleteTopics => {
            let body = decode_or_answer!(call, km::DeleteTopicsRequest, bytes);
            Box::pin(admin::delete_topics(call, body))
        }
        KafkaApi::CreatePartitions => {
            let body = decode_or_answer!(call, km::CreatePartitionsRequest, bytes);
            Box::pin(admin::create_partitions(call, body))
        }
        KafkaApi::DescribeConfigs => {
            let body = decode_or_answer!(call, km::DescribeConfigsRequest, bytes);
            Box::pin(admin::describe_configs(call, body))
        }
        KafkaApi::InitProducerId => {
            let body = decode_or_answer!(call, km::InitProducerIdRequest, bytes);
            ready(admin::init_producer_id(&call, body))
        }
        KafkaApi::FindCoordinator => {
            let body = decode_or_answer!(call, km::FindCoordinatorRequest, bytes);
            Box::pin(groups::find_coordinator(call, body))
        }
        KafkaApi::JoinGroup => {
            let body = decode_or_answer!(call, km::JoinGroupRequest, bytes);
            Box::pin(groups::join_group(call, body))
        }
        KafkaApi::SyncGroup => {
            let body = decode_or_answer!(call, km::SyncGroupRequest, bytes);
            Box::pin(groups::sync_group(call, body))
        }
        KafkaApi::Heartbeat => {
            let body = decode_or_answer!(call, km::HeartbeatRequest, bytes);
            Box::pin(groups::heartbeat(call, body))
        }
        KafkaApi::LeaveGroup => {
            let body = decode_or_answer!(call, km::LeaveGroupRequest, bytes);
            Box::pin(groups::leave_group(call, body))
        }
        KafkaApi::OffsetCommit => {
            let body = decode_or_answer!(call, km::OffsetCommitRequest, bytes);
            Box::pin(groups::offset_commit(call, body))
        }
        KafkaApi::OffsetFetch => {
            let body = decode_or_answer!(call, km::OffsetFetchRequest, bytes);
            Box::pin(groups::offset_fetch(call, body))
        }
        KafkaApi::ListGroups => {
            let body = decode_or_answer!(call, km::ListGroupsRequest, bytes);
            Box::pin(groups::list_groups(call, body))
        }
        KafkaApi::DescribeGroups => {
            let body = decode_or_answer!(call, km::DescribeGroupsRequest, bytes);
            Box::pin(groups::describe_groups(call, body))
        }
        KafkaApi::DeleteGroups => {
            let body = decode_or_answer!(call, km::DeleteGroupsRequest, bytes);
            Box::pin(groups::delete_groups(call, body))
        }
        // Every API in codec::SUPPORTED has an arm above; answer rather
        // than panic if one is ever missed.
        _ => ready(error_response(
            &call,
            kafka_code(ErrorCode::UnsupportedVersion),
        )),
    }
}

/// A request whose body does not decode: answered with CORRUPT_MESSAGE where
/// the API's response has an error field to carry it, so one bad request
/// never costs the client its connection.
fn malformed(call: &Call, reason: &str) -> Completion {
    tracing::debug!(api = ?call.api, version = call.version, reason, "malformed kafka request");
    let code = kafka_code(ErrorCode::CorruptMessage);
    ready(error_response(call, code))
}

/// A request for an API or version ringmq does not serve.
fn unsupported(call: &Call, raw: RawHeader) -> Option<Bytes> {
    tracing::debug!(
        api = raw.api_key,
        version = raw.api_version,
        "unsupported kafka api or version"
    );
    let code = kafka_code(ErrorCode::UnsupportedVersion);
    if call.api == KafkaApi::ApiVersions {
        // KIP-511: answer in v0 with the error and our ranges, so that a
        // newer client can retry with a version we know.
        let v0 = Call {
            version: 0,
            ctx: call.ctx.clone(),
            api: call.api,
            correlation_id: call.correlation_id,
            client_id: String::new(),
        };
        return admin::api_versions(&v0, code);
    }
    error_response(call, code)
}

/// The response of `call.api` carrying `code` in its top-level error field,
/// for the APIs whose response has one; `None` (no answer) for the others,
/// which no client sends without first seeing them in ApiVersions.
fn error_response(call: &Call, code: i16) -> Option<Bytes> {
    macro_rules! with_error {
        ($ty:ty) => {{
            let mut r = <$ty>::default();
            r.error_code = code;
            call.respond(&r)
        }};
    }
    let valid = call.api.valid_versions();
    if call.version < valid.min || call.version > valid.max {
        return None;
    }
    match call.api {
        KafkaApi::ApiVersions => with_error!(km::ApiVersionsResponse),
        KafkaApi::Heartbeat => with_error!(km::HeartbeatResponse),
        KafkaApi::JoinGroup => with_error!(km::JoinGroupResponse),
        KafkaApi::SyncGroup => with_error!(km::SyncGroupResponse),
        KafkaApi::LeaveGroup => with_error!(km::LeaveGroupResponse),
        KafkaApi::ListGroups => with_error!(km::ListGroupsResponse),
        KafkaApi::FindCoordinator => with_error!(km::FindCoordinatorResponse),
        KafkaApi::InitProducerId => with_error!(km::InitProducerIdResponse),
        KafkaApi::OffsetFetch => with_error!(km::OffsetFetchResponse),
        KafkaApi::Fetch => with_error!(km::FetchResponse),
        KafkaApi::Metadata => with_error!(km::MetadataResponse),
        KafkaApi::SaslHandshake => with_error!(km::SaslHandshakeResponse),
        KafkaApi::SaslAuthenticate => with_error!(km::SaslAuthenticateResponse),
        KafkaApi::DescribeCluster => with_error!(km::DescribeClusterResponse),
        KafkaApi::DescribeAcls => with_error!(km::DescribeAclsResponse),
        KafkaApi::EndTxn => with_error!(km::EndTxnResponse),
        KafkaApi::AddOffsetsToTxn => with_error!(km::AddOffsetsToTxnResponse),
        KafkaApi::ListTransactions => with_error!(km::ListTransactionsResponse),
        KafkaApi::DescribeClientQuotas => with_error!(km::DescribeClientQuotasResponse),
        KafkaApi::ElectLeaders => with_error!(km::ElectLeadersResponse),
        KafkaApi::ConsumerGroupHeartbeat => with_error!(km::ConsumerGroupHeartbeatResponse),
        KafkaApi::DescribeUserScramCredentials => {
            with_error!(km::DescribeUserScramCredentialsResponse)
        }
        _ => None,
    }
}

// ------------------------------------------------------------- produce

fn kafka_acks(acks: i16) -> Result<Acks, String> {
    match acks {
        0 => Ok(Acks::None),
        1 => Ok(Acks::Leader),
        // ringmq has one copy: "all in-sync replicas" is the fdatasync.
        -1 => Ok(Acks::Fsync),
        other => Err(format!("acks {other} is not 0, 1 or -1 (all)")),
    }
}

/// Hands the record batches to the shard where they lie in the frame: the
/// batches are never re-encoded, decompressed or copied. The decoded
/// request only yields their positions in `frame` (its records are views of
/// it); once the request is dropped the frame is ours alone again and
/// becomes the payload.
async fn produce(call: Call, body: km::ProduceRequest, frame: Bytes) -> Completion {
    let silent = body.acks == 0;
    let reject = |code: ErrorCode, message: String| {
        let error = Some(ApiError::new(code, message));
        let response = produce_error_response(call.version, &body, &error);
        ready(if silent {
            None
        } else {
            call.respond(&response)
        })
    };
    if body
        .transactional_id
        .as_ref()
        .is_some_and(|t| !t.is_empty())
    {
        return reject(
            ErrorCode::InvalidRequest,
            "transactional producers are not supported by ringmq; unset transactional.id".into(),
        );
    }
    let acks = match kafka_acks(body.acks) {
        Ok(acks) => acks,
        Err(message) => return reject(ErrorCode::InvalidRequest, message),
    };
    let topics = match produce_ranges(&body, &frame) {
        Ok(topics) => topics,
        Err(message) => return reject(ErrorCode::CorruptMessage, message),
    };
    let request = ProduceRequest {
        acks,
        timeout_ms: body.timeout_ms.max(0) as u32,
        topics,
    };
    let shape = produce_error_response(call.version, &body, &None);
    drop(body);
    let payload = match frame.try_into_mut() {
        Ok(payload) => payload,
        Err(shared) => {
            // Not expected (take_frame gives every frame its own buffer);
            // correct anyway, at the cost of one copy.
            tracing::debug!("kafka produce frame was shared; copying it");
            BytesMut::from(&shared[..])
        }
    };
    let completion = call.submit(RequestBody::Produce(request), payload).await;
    Box::pin(async move {
        let reply = completion.await;
        if silent {
            return None;
        }
        call.respond(&produce_response(call.version, reply, shape))
    })
}

/// Our produce request for `body`: each partition's records as a byte range
/// of `frame`.
fn produce_ranges(body: &km::ProduceRequest, frame: &Bytes) -> Result<Vec<ProduceTopic>, String> {
    let base = frame.as_ptr() as usize;
    let mut topics = Vec::with_capacity(body.topic_data.len());
    for topic in &body.topic_data {
        let mut partitions = Vec::with_capacity(topic.partition_data.len());
        for p in &topic.partition_data {
            let records = p.records.as_ref().ok_or_else(|| {
                format!(
                    "partition {} of topic {:?} has null records",
                    p.index,
                    topic.name.as_str()
                )
            })?;
            let offset = (records.as_ptr() as usize).wrapping_sub(base);
            let in_frame = offset
                .checked_add(records.len())
                .is_some_and(|end| end <= frame.len());
            // The decoder slices `Bytes` without copying; anything else is a
            // change in kafka-protocol that this code must learn about.
            debug_assert!(records.is_empty() || in_frame, "records outside the frame");
            if !records.is_empty() && !in_frame {
                return Err("decoded records are not a view of the request frame".into());
            }
            let offset = if records.is_empty() { 0 } else { offset };
            partitions.push(ProducePartition {
                partition: u32::try_from(p.index)
                    .map_err(|_| format!("negative partition {}", p.index))?,
                payload: PayloadRange {
                    offset: offset as u32,
                    length: records.len() as u32,
                },
            });
        }
        topics.push(ProduceTopic {
            name: topic.name.as_str().to_string(),
            partitions,
        });
    }
    Ok(topics)
}

fn produce_error_response(
    version: i16,
    body: &km::ProduceRequest,
    error: &Option<ApiError>,
) -> km::ProduceResponse {
    let responses = body
        .topic_data
        .iter()
        .map(|t| {
            km::produce_response::TopicProduceResponse::default()
                .with_name(t.name.clone())
                .with_partition_responses(
                    t.partition_data
                        .iter()
                        .map(|p| {
                            km::produce_response::PartitionProduceResponse::default()
                                .with_index(p.index)
                                .with_error_code(error_code(error))
                                .with_error_message(if version >= 8 {
                                    error_message(error)
                                } else {
                                    None
                                })
                                .with_base_offset(-1)
                        })
                        .collect(),
                )
        })
        .collect();
    km::ProduceResponse::default().with_responses(responses)
}

/// `shape` is the request's topics and partitions, answered with the
/// request-wide error when there is one.
fn produce_response(
    version: i16,
    reply: Reply,
    mut shape: km::ProduceResponse,
) -> km::ProduceResponse {
    let topics = match reply.body {
        Ok(ResponseBody::Produce(p)) => p.topics,
        other => {
            let error = match other {
                Err(err) => err,
                Ok(_) => ApiError::new(ErrorCode::Unknown, "unexpected reply to a produce"),
            };
            for p in shape
                .responses
                .iter_mut()
                .flat_map(|t| t.partition_responses.iter_mut())
            {
                p.error_code = kafka_code(error.code);
                if version >= 8 {
                    p.error_message = Some(str_bytes(&error.message));
                }
            }
            return shape;
        }
    };
    let responses = topics
        .into_iter()
        .map(|t| {
            km::produce_response::TopicProduceResponse::default()
                .with_name(str_bytes(&t.name).into())
                .with_partition_responses(
                    t.partitions
                        .into_iter()
                        .map(|p| {
                            // kafka-protocol refuses to encode a field the
                            // version lacks unless it holds its default.
                            km::produce_response::PartitionProduceResponse::default()
                                .with_index(p.partition as i32)
                                .with_error_code(error_code(&p.error))
                                .with_error_message(if version >= 8 {
                                    error_message(&p.error)
                                } else {
                                    None
                                })
                                .with_base_offset(p.base_offset)
                                .with_log_append_time_ms(p.log_append_time_ms)
                                .with_log_start_offset(if version >= 5 {
                                    p.log_start_offset
                                } else {
                                    -1
                                })
                        })
                        .collect(),
                )
        })
        .collect();
    km::ProduceResponse::default().with_responses(responses)
}

// --------------------------------------------------------------- fetch

async fn fetch(call: Call, body: km::FetchRequest) -> Completion {
    let topics: Vec<FetchTopic> = body
        .topics
        .iter()
        .map(|t| FetchTopic {
            name: t.topic.as_str().to_string(),
            partitions: t
                .partitions
                .iter()
                .map(|p| FetchPartition {
                    partition: p.partition.max(0) as u32,
                    fetch_offset: p.fetch_offset,
                    partition_max_bytes: p.partition_max_bytes.max(0) as u32,
                })
                .collect(),
        })
        .collect();
    let request = FetchRequest {
        max_wait_ms: body.max_wait_ms.max(0) as u32,
        min_bytes: body.min_bytes.max(0) as u32,
        // v0-2 had no request-wide limit.
        max_bytes: if body.max_bytes > 0 {
            body.max_bytes as u32
        } else {
            u32::MAX
        },
        topics,
        fence: None,
    };
    let completion = call
        .submit(RequestBody::Fetch(request), BytesMut::new())
        .await;
    Box::pin(async move {
        let reply = completion.await;
        call.respond(&fetch_response(call.version, reply))
    })
}

fn fetch_response(version: i16, reply: Reply) -> km::FetchResponse {
    let payload = Payload::new(reply.payload);
    let topics = match reply.body {
        Ok(ResponseBody::Fetch(f)) => f.topics,
        Ok(_) => Vec::new(),
        Err(err) => {
            let mut r = km::FetchResponse::default();
            r.error_code = kafka_code(err.code);
            return r;
        }
    };
    let responses = topics
        .into_iter()
        .map(|t| {
            km::fetch_response::FetchableTopicResponse::default()
                .with_topic(str_bytes(&t.name).into())
                .with_partitions(
                    t.partitions
                        .into_iter()
                        .map(|p| {
                            let records = payload.range(p.payload);
                            km::fetch_response::PartitionData::default()
                                .with_partition_index(p.partition as i32)
                                .with_error_code(error_code(&p.error))
                                .with_high_watermark(p.high_watermark)
                                .with_last_stable_offset(p.high_watermark)
                                .with_log_start_offset(if version >= 5 {
                                    p.log_start_offset
                                } else {
                                    -1
                                })
                                .with_aborted_transactions(Some(Vec::new()))
                                .with_preferred_read_replica(km::BrokerId(-1))
                                .with_records(Some(records))
                        })
                        .collect(),
                )
        })
        .collect();
    km::FetchResponse::default().with_responses(responses)
}

/// The concatenated payload chunks of a reply, sliced by range. A range
/// inside one chunk is a view of it (no copy); one that spans chunks is
/// gathered into one buffer.
struct Payload {
    chunks: Vec<Bytes>,
}

impl Payload {
    fn new(chunks: Vec<Bytes>) -> Payload {
        Payload { chunks }
    }

    fn range(&self, range: PayloadRange) -> Bytes {
        let (mut start, len) = (range.offset as usize, range.length as usize);
        if len == 0 {
            return Bytes::new();
        }
        let mut gathered: Option<BytesMut> = None;
        let mut remaining = len;
        for chunk in &self.chunks {
            if start >= chunk.len() {
                start -= chunk.len();
                continue;
            }
            let take = remaining.min(chunk.len() - start);
            let piece = chunk.slice(start..start + take);
            start = 0;
            remaining -= take;
            match (&mut gathered, remaining) {
                (None, 0) => return piece,
                (None, _) => {
                    let mut buf = BytesMut::with_capacity(len);
                    buf.extend_from_slice(&piece);
                    gathered = Some(buf);
                }
                (Some(buf), _) => buf.extend_from_slice(&piece),
            }
            if remaining == 0 {
                break;
            }
        }
        assert_eq!(
            remaining, 0,
            "fetch payload range beyond the reply's payload"
        );
        gathered.map(BytesMut::freeze).unwrap_or_default()
    }
}

// --------------------------------------------------------- list offsets

async fn list_offsets(call: Call, body: km::ListOffsetsRequest) -> Completion {
    let request = ListOffsetsRequest {
        topics: body
            .topics
            .iter()
            .map(|t| ListOffsetsTopic {
                name: t.name.as_str().to_string(),
                partitions: t
                    .partitions
                    .iter()
                    .map(|p| ListOffsetsPartition {
                        partition: p.partition_index.max(0) as u32,
                        timestamp: p.timestamp,
                    })
                    .collect(),
            })
            .collect(),
    };
    let completion = call
        .submit(RequestBody::ListOffsets(request), BytesMut::new())
        .await;
    Box::pin(async move {
        let reply = completion.await;
        let topics = match reply.body {
            Ok(ResponseBody::ListOffsets(l)) => l.topics,
            _ => Vec::new(),
        };
        let response = km::ListOffsetsResponse::default().with_topics(
            topics
                .into_iter()
                .map(|t| {
                    km::list_offsets_response::ListOffsetsTopicResponse::default()
                        .with_name(str_bytes(&t.name).into())
                        .with_partitions(
                            t.partitions
                                .into_iter()
                                .map(|p| {
                                    km::list_offsets_response::ListOffsetsPartitionResponse::default()
                                        .with_partition_index(p.partition as i32)
                                        .with_error_code(error_code(&p.error))
                                        .with_timestamp(p.timestamp)
                                        .with_offset(p.offset)
                                })
                                .collect(),
                        )
                })
                .collect(),
        );
        call.respond(&response)
    })
}
