//! Typed requests and responses over the generated flatbuffers code.
//!
//! Envelopes are small (names, offsets, byte ranges); record batches travel in
//! the frame's raw payload and are referenced here by [`PayloadRange`]. So
//! decoding an envelope into these owned types costs a few small allocations
//! per *request*, never per message, and keeps generated code out of the
//! broker and client.

use flatbuffers::{FlatBufferBuilder, ForwardsUOffset, Vector, WIPOffset};

use crate::error::{ApiError, ErrorCode};
use crate::frame::{verify_request, verify_response, FrameError};
use crate::generated as fb;
pub use crate::group_api::*;

/// Current version of every API. Bumped per API when its shape changes.
pub const API_VERSION: u16 = 0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiKey {
    ApiVersions,
    Metadata,
    CreateTopics,
    DeleteTopics,
    Produce,
    Fetch,
    ListOffsets,
    FindCoordinator,
    JoinGroup,
    Heartbeat,
    LeaveGroup,
    OffsetCommit,
    OffsetFetch,
    ListGroups,
    DescribeGroup,
    DeleteGroup,
    SyncGroup,
    CreatePartitions,
}

impl ApiKey {
    pub const ALL: [ApiKey; 18] = [
        ApiKey::ApiVersions,
        ApiKey::Metadata,
        ApiKey::CreateTopics,
        ApiKey::DeleteTopics,
        ApiKey::Produce,
        ApiKey::Fetch,
        ApiKey::ListOffsets,
        ApiKey::FindCoordinator,
        ApiKey::JoinGroup,
        ApiKey::Heartbeat,
        ApiKey::LeaveGroup,
        ApiKey::OffsetCommit,
        ApiKey::OffsetFetch,
        ApiKey::ListGroups,
        ApiKey::DescribeGroup,
        ApiKey::DeleteGroup,
        ApiKey::SyncGroup,
        ApiKey::CreatePartitions,
    ];

    pub fn to_fb(self) -> fb::ApiKey {
        match self {
            ApiKey::ApiVersions => fb::ApiKey::ApiVersions,
            ApiKey::Metadata => fb::ApiKey::Metadata,
            ApiKey::CreateTopics => fb::ApiKey::CreateTopics,
            ApiKey::DeleteTopics => fb::ApiKey::DeleteTopics,
            ApiKey::Produce => fb::ApiKey::Produce,
            ApiKey::Fetch => fb::ApiKey::Fetch,
            ApiKey::ListOffsets => fb::ApiKey::ListOffsets,
            ApiKey::FindCoordinator => fb::ApiKey::FindCoordinator,
            ApiKey::JoinGroup => fb::ApiKey::JoinGroup,
            ApiKey::Heartbeat => fb::ApiKey::Heartbeat,
            ApiKey::LeaveGroup => fb::ApiKey::LeaveGroup,
            ApiKey::OffsetCommit => fb::ApiKey::OffsetCommit,
            ApiKey::OffsetFetch => fb::ApiKey::OffsetFetch,
            ApiKey::ListGroups => fb::ApiKey::ListGroups,
            ApiKey::DescribeGroup => fb::ApiKey::DescribeGroup,
            ApiKey::DeleteGroup => fb::ApiKey::DeleteGroup,
            ApiKey::SyncGroup => fb::ApiKey::SyncGroup,
            ApiKey::CreatePartitions => fb::ApiKey::CreatePartitions,
        }
    }

    pub fn from_fb(api: fb::ApiKey) -> Option<ApiKey> {
        ApiKey::ALL.into_iter().find(|a| a.to_fb() == api)
    }

    /// snake_case name used in metrics labels and logs.
    pub fn name(self) -> &'static str {
        match self {
            ApiKey::ApiVersions => "api_versions",
            ApiKey::Metadata => "metadata",
            ApiKey::CreateTopics => "create_topics",
            ApiKey::DeleteTopics => "delete_topics",
            ApiKey::Produce => "produce",
            ApiKey::Fetch => "fetch",
            ApiKey::ListOffsets => "list_offsets",
            ApiKey::FindCoordinator => "find_coordinator",
            ApiKey::JoinGroup => "join_group",
            ApiKey::Heartbeat => "heartbeat",
            ApiKey::LeaveGroup => "leave_group",
            ApiKey::OffsetCommit => "offset_commit",
            ApiKey::OffsetFetch => "offset_fetch",
            ApiKey::ListGroups => "list_groups",
            ApiKey::DescribeGroup => "describe_group",
            ApiKey::DeleteGroup => "delete_group",
            ApiKey::SyncGroup => "sync_group",
            ApiKey::CreatePartitions => "create_partitions",
        }
    }
}

/// Durability a producer asks for (DESIGN.md 3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Acks {
    /// No response at all: fire and forget.
    None,
    /// Acknowledged once written to the log file: survives a process crash.
    Leader,
    /// Acknowledged once an fdatasync covers it: survives a power loss.
    #[default]
    Fsync,
}

impl Acks {
    pub fn to_fb(self) -> fb::Acks {
        match self {
            Acks::None => fb::Acks::None,
            Acks::Leader => fb::Acks::Leader,
            Acks::Fsync => fb::Acks::Fsync,
        }
    }

    pub fn from_fb(acks: fb::Acks) -> Option<Acks> {
        match acks {
            fb::Acks::None => Some(Acks::None),
            fb::Acks::Leader => Some(Acks::Leader),
            fb::Acks::Fsync => Some(Acks::Fsync),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Acks::None => "none",
            Acks::Leader => "leader",
            Acks::Fsync => "fsync",
        }
    }
}

impl std::str::FromStr for Acks {
    type Err = String;
    fn from_str(s: &str) -> Result<Acks, String> {
        match s {
            "none" | "0" => Ok(Acks::None),
            "leader" | "1" => Ok(Acks::Leader),
            "fsync" | "all" | "-1" => Ok(Acks::Fsync),
            other => Err(format!(
                "unknown acks level {other:?}: use none, leader or fsync"
            )),
        }
    }
}

impl std::fmt::Display for Acks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A byte range of the frame's raw payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PayloadRange {
    pub offset: u32,
    pub length: u32,
}

impl PayloadRange {
    pub fn end(&self) -> usize {
        self.offset as usize + self.length as usize
    }
}

/// Special timestamps for [`ListOffsetsRequest`].
pub const LIST_OFFSETS_EARLIEST: i64 = -2;
pub const LIST_OFFSETS_LATEST: i64 = -1;

// ---------------------------------------------------------------- requests

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub version: u16,
    pub correlation_id: u64,
    pub client_id: String,
    pub body: RequestBody,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestBody {
    ApiVersions,
    Metadata(MetadataRequest),
    CreateTopics(CreateTopicsRequest),
    DeleteTopics(DeleteTopicsRequest),
    Produce(ProduceRequest),
    Fetch(FetchRequest),
    ListOffsets(ListOffsetsRequest),
    FindCoordinator(FindCoordinatorRequest),
    JoinGroup(JoinGroupRequest),
    Heartbeat(HeartbeatRequest),
    LeaveGroup(LeaveGroupRequest),
    OffsetCommit(OffsetCommitRequest),
    OffsetFetch(OffsetFetchRequest),
    ListGroups,
    DescribeGroup(DescribeGroupRequest),
    DeleteGroup(DeleteGroupRequest),
    SyncGroup(SyncGroupRequest),
    CreatePartitions(CreatePartitionsRequest),
}

impl RequestBody {
    pub fn api(&self) -> ApiKey {
        match self {
            RequestBody::ApiVersions => ApiKey::ApiVersions,
            RequestBody::Metadata(_) => ApiKey::Metadata,
            RequestBody::CreateTopics(_) => ApiKey::CreateTopics,
            RequestBody::DeleteTopics(_) => ApiKey::DeleteTopics,
            RequestBody::Produce(_) => ApiKey::Produce,
            RequestBody::Fetch(_) => ApiKey::Fetch,
            RequestBody::ListOffsets(_) => ApiKey::ListOffsets,
            RequestBody::FindCoordinator(_) => ApiKey::FindCoordinator,
            RequestBody::JoinGroup(_) => ApiKey::JoinGroup,
            RequestBody::Heartbeat(_) => ApiKey::Heartbeat,
            RequestBody::LeaveGroup(_) => ApiKey::LeaveGroup,
            RequestBody::OffsetCommit(_) => ApiKey::OffsetCommit,
            RequestBody::OffsetFetch(_) => ApiKey::OffsetFetch,
            RequestBody::ListGroups => ApiKey::ListGroups,
            RequestBody::DescribeGroup(_) => ApiKey::DescribeGroup,
            RequestBody::DeleteGroup(_) => ApiKey::DeleteGroup,
            RequestBody::SyncGroup(_) => ApiKey::SyncGroup,
            RequestBody::CreatePartitions(_) => ApiKey::CreatePartitions,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MetadataRequest {
    /// `None`: every topic.
    pub topics: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTopic {
    pub name: String,
    pub partitions: u32,
    pub configs: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateTopicsRequest {
    pub topics: Vec<NewTopic>,
    pub timeout_ms: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteTopicsRequest {
    pub names: Vec<String>,
    pub timeout_ms: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPartitions {
    pub name: String,
    /// The topic's new partition count (partitions only grow).
    pub count: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatePartitionsRequest {
    pub topics: Vec<NewPartitions>,
    pub timeout_ms: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducePartition {
    pub partition: u32,
    pub payload: PayloadRange,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProduceTopic {
    pub name: String,
    pub partitions: Vec<ProducePartition>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProduceRequest {
    pub acks: Acks,
    pub timeout_ms: u32,
    pub topics: Vec<ProduceTopic>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchPartition {
    pub partition: u32,
    pub fetch_offset: i64,
    pub partition_max_bytes: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchTopic {
    pub name: String,
    pub partitions: Vec<FetchPartition>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchRequest {
    pub max_wait_ms: u32,
    pub min_bytes: u32,
    pub max_bytes: u32,
    pub topics: Vec<FetchTopic>,
    /// Set by group consumers so that fetches from fenced members are refused.
    pub fence: Option<FetchFence>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListOffsetsPartition {
    pub partition: u32,
    /// [`LIST_OFFSETS_EARLIEST`], [`LIST_OFFSETS_LATEST`] or a timestamp in ms.
    pub timestamp: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListOffsetsTopic {
    pub name: String,
    pub partitions: Vec<ListOffsetsPartition>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListOffsetsRequest {
    pub topics: Vec<ListOffsetsTopic>,
}

// --------------------------------------------------------------- responses

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub api: ApiKey,
    pub version: u16,
    pub correlation_id: u64,
    /// Set when the whole request failed; the body is then `None`.
    pub error: Option<ApiError>,
    pub body: ResponseBody,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseBody {
    None,
    ApiVersions(ApiVersionsResponse),
    Metadata(MetadataResponse),
    CreateTopics(TopicResults),
    DeleteTopics(TopicResults),
    Produce(ProduceResponse),
    Fetch(FetchResponse),
    ListOffsets(ListOffsetsResponse),
    FindCoordinator(FindCoordinatorResponse),
    JoinGroup(JoinGroupResponse),
    Heartbeat,
    LeaveGroup,
    OffsetCommit(OffsetCommitResponse),
    OffsetFetch(OffsetFetchResponse),
    ListGroups(ListGroupsResponse),
    DescribeGroup(DescribeGroupResponse),
    DeleteGroup,
    SyncGroup(SyncGroupResponse),
    CreatePartitions(TopicResults),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiVersionRange {
    pub api: ApiKey,
    pub min_version: u16,
    pub max_version: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiVersionsResponse {
    pub apis: Vec<ApiVersionRange>,
    pub broker_version: String,
    pub max_frame_bytes: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardEndpoint {
    pub shard: u16,
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionMetadata {
    pub partition: u32,
    pub shard: u16,
    pub error: Option<ApiError>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMetadata {
    pub name: String,
    pub error: Option<ApiError>,
    pub partitions: Vec<PartitionMetadata>,
    pub configs: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataResponse {
    pub shards: Vec<ShardEndpoint>,
    pub topics: Vec<TopicMetadata>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicResult {
    pub name: String,
    pub error: Option<ApiError>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicResults {
    pub results: Vec<TopicResult>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducePartitionResult {
    pub partition: u32,
    pub error: Option<ApiError>,
    pub base_offset: i64,
    pub last_offset: i64,
    pub log_append_time_ms: i64,
    pub log_start_offset: i64,
}

impl ProducePartitionResult {
    pub fn failed(partition: u32, error: ApiError) -> ProducePartitionResult {
        ProducePartitionResult {
            partition,
            error: Some(error),
            base_offset: -1,
            last_offset: -1,
            log_append_time_ms: -1,
            log_start_offset: -1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProduceTopicResult {
    pub name: String,
    pub partitions: Vec<ProducePartitionResult>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProduceResponse {
    pub topics: Vec<ProduceTopicResult>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchPartitionResult {
    pub partition: u32,
    pub error: Option<ApiError>,
    pub high_watermark: i64,
    pub log_start_offset: i64,
    pub payload: PayloadRange,
}

impl FetchPartitionResult {
    pub fn failed(partition: u32, error: ApiError) -> FetchPartitionResult {
        FetchPartitionResult {
            partition,
            error: Some(error),
            high_watermark: -1,
            log_start_offset: -1,
            payload: PayloadRange::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchTopicResult {
    pub name: String,
    pub partitions: Vec<FetchPartitionResult>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchResponse {
    pub topics: Vec<FetchTopicResult>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListOffsetsPartitionResult {
    pub partition: u32,
    pub error: Option<ApiError>,
    pub offset: i64,
    pub timestamp: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListOffsetsTopicResult {
    pub name: String,
    pub partitions: Vec<ListOffsetsPartitionResult>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListOffsetsResponse {
    pub topics: Vec<ListOffsetsTopicResult>,
}

// ------------------------------------------------------------------ errors

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("envelope is missing {0}")]
    Missing(&'static str),
    #[error("unknown api {0}")]
    UnknownApi(u16),
    #[error(
        "unsupported version {version} of api {api}: this broker speaks version {API_VERSION}"
    )]
    UnsupportedVersion { api: &'static str, version: u16 },
    #[error("invalid field {field}: {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
}

impl EnvelopeError {
    pub fn code(&self) -> ErrorCode {
        match self {
            EnvelopeError::Frame(_) => ErrorCode::MalformedFrame,
            EnvelopeError::UnknownApi(_) => ErrorCode::UnknownApi,
            EnvelopeError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            EnvelopeError::Missing(_) | EnvelopeError::Invalid { .. } => ErrorCode::InvalidRequest,
        }
    }

    pub fn to_api_error(&self) -> ApiError {
        ApiError::new(self.code(), self.to_string())
    }
}

// ---------------------------------------------------------------- encoding

pub(crate) type Fbb = FlatBufferBuilder<'static>;

pub(crate) fn enc_error(
    fbb: &mut Fbb,
    error: &Option<ApiError>,
) -> Option<WIPOffset<fb::Error<'static>>> {
    let error = error.as_ref()?;
    let message = fbb.create_string(&error.message);
    Some(fb::Error::create(
        fbb,
        &fb::ErrorArgs {
            code: error.code.to_fb(),
            message: Some(message),
        },
    ))
}

pub(crate) fn enc_strings(
    fbb: &mut Fbb,
    items: &[String],
) -> WIPOffset<Vector<'static, ForwardsUOffset<&'static str>>> {
    let offsets: Vec<_> = items.iter().map(|s| fbb.create_string(s)).collect();
    fbb.create_vector(&offsets)
}

fn enc_configs(
    fbb: &mut Fbb,
    configs: &[(String, String)],
) -> WIPOffset<Vector<'static, ForwardsUOffset<fb::KeyValue<'static>>>> {
    let offsets: Vec<_> = configs
        .iter()
        .map(|(k, v)| {
            let key = fbb.create_string(k);
            let value = fbb.create_string(v);
            fb::KeyValue::create(
                fbb,
                &fb::KeyValueArgs {
                    key: Some(key),
                    value: Some(value),
                },
            )
        })
        .collect();
    fbb.create_vector(&offsets)
}

fn enc_topic_results(
    fbb: &mut Fbb,
    results: &TopicResults,
) -> WIPOffset<Vector<'static, ForwardsUOffset<fb::TopicResult<'static>>>> {
    let offsets: Vec<_> = results
        .results
        .iter()
        .map(|r| {
            let name = fbb.create_string(&r.name);
            let error = enc_error(fbb, &r.error);
            fb::TopicResult::create(
                fbb,
                &fb::TopicResultArgs {
                    name: Some(name),
                    error,
                },
            )
        })
        .collect();
    fbb.create_vector(&offsets)
}

impl Request {
    pub fn new(correlation_id: u64, body: RequestBody) -> Request {
        Request {
            version: API_VERSION,
            correlation_id,
            client_id: String::new(),
            body,
        }
    }

    /// Encodes the envelope into `fbb` (reset first) and returns its bytes.
    pub fn encode<'a>(&self, fbb: &'a mut Fbb) -> &'a [u8] {
        fbb.reset();
        let client_id = (!self.client_id.is_empty()).then(|| fbb.create_string(&self.client_id));
        let header = fb::RequestHeader::create(
            fbb,
            &fb::RequestHeaderArgs {
                api: self.body.api().to_fb(),
                version: self.version,
                correlation_id: self.correlation_id,
                client_id,
            },
        );
        let (body_type, body) = self.encode_body(fbb);
        let root = fb::Request::create(
            fbb,
            &fb::RequestArgs {
                header: Some(header),
                body_type,
                body: Some(body),
            },
        );
        fbb.finish(root, None);
        fbb.finished_data()
    }

    fn encode_body(
        &self,
        fbb: &mut Fbb,
    ) -> (fb::RequestBody, WIPOffset<flatbuffers::UnionWIPOffset>) {
        match &self.body {
            RequestBody::ApiVersions => {
                let t = fb::ApiVersionsRequest::create(fbb, &fb::ApiVersionsRequestArgs {});
                (fb::RequestBody::ApiVersionsRequest, t.as_union_value())
            }
            RequestBody::Metadata(m) => {
                let topics = m.topics.as_ref().map(|t| enc_strings(fbb, t));
                let t = fb::MetadataRequest::create(fbb, &fb::MetadataRequestArgs { topics });
                (fb::RequestBody::MetadataRequest, t.as_union_value())
            }
            RequestBody::CreateTopics(c) => {
                let topics: Vec<_> = c
                    .topics
                    .iter()
                    .map(|t| {
                        let name = fbb.create_string(&t.name);
                        let configs = enc_configs(fbb, &t.configs);
                        fb::NewTopic::create(
                            fbb,
                            &fb::NewTopicArgs {
                                name: Some(name),
                                partitions: t.partitions,
                                configs: Some(configs),
                            },
                        )
                    })
                    .collect();
                let topics = fbb.create_vector(&topics);
                let t = fb::CreateTopicsRequest::create(
                    fbb,
                    &fb::CreateTopicsRequestArgs {
                        topics: Some(topics),
                        timeout_ms: c.timeout_ms,
                    },
                );
                (fb::RequestBody::CreateTopicsRequest, t.as_union_value())
            }
            RequestBody::DeleteTopics(d) => {
                let names = enc_strings(fbb, &d.names);
                let t = fb::DeleteTopicsRequest::create(
                    fbb,
                    &fb::DeleteTopicsRequestArgs {
                        names: Some(names),
                        timeout_ms: d.timeout_ms,
                    },
                );
                (fb::RequestBody::DeleteTopicsRequest, t.as_union_value())
            }
            RequestBody::Produce(p) => {
                let topics: Vec<_> = p
                    .topics
                    .iter()
                    .map(|topic| {
                        let name = fbb.create_string(&topic.name);
                        let parts: Vec<_> = topic
                            .partitions
                            .iter()
                            .map(|pp| {
                                fb::ProducePartition::create(
                                    fbb,
                                    &fb::ProducePartitionArgs {
                                        partition: pp.partition,
                                        payload_offset: pp.payload.offset,
                                        payload_length: pp.payload.length,
                                    },
                                )
                            })
                            .collect();
                        let parts = fbb.create_vector(&parts);
                        fb::ProduceTopic::create(
                            fbb,
                            &fb::ProduceTopicArgs {
                                name: Some(name),
                                partitions: Some(parts),
                            },
                        )
                    })
                    .collect();
                let topics = fbb.create_vector(&topics);
                let t = fb::ProduceRequest::create(
                    fbb,
                    &fb::ProduceRequestArgs {
                        acks: p.acks.to_fb(),
                        timeout_ms: p.timeout_ms,
                        topics: Some(topics),
                    },
                );
                (fb::RequestBody::ProduceRequest, t.as_union_value())
            }
            RequestBody::Fetch(f) => {
                let topics: Vec<_> = f
                    .topics
                    .iter()
                    .map(|topic| {
                        let name = fbb.create_string(&topic.name);
                        let parts: Vec<_> = topic
                            .partitions
                            .iter()
                            .map(|fp| {
                                fb::FetchPartition::create(
                                    fbb,
                                    &fb::FetchPartitionArgs {
                                        partition: fp.partition,
                                        fetch_offset: fp.fetch_offset,
                                        partition_max_bytes: fp.partition_max_bytes,
                                    },
                                )
                            })
                            .collect();
                        let parts = fbb.create_vector(&parts);
                        fb::FetchTopic::create(
                            fbb,
                            &fb::FetchTopicArgs {
                                name: Some(name),
                                partitions: Some(parts),
                            },
                        )
                    })
                    .collect();
                let topics = fbb.create_vector(&topics);
                let (group, member_id, generation) = encode_fetch_fence(fbb, &f.fence);
                let t = fb::FetchRequest::create(
                    fbb,
                    &fb::FetchRequestArgs {
                        max_wait_ms: f.max_wait_ms,
                        min_bytes: f.min_bytes,
                        max_bytes: f.max_bytes,
                        topics: Some(topics),
                        group,
                        member_id,
                        generation,
                    },
                );
                (fb::RequestBody::FetchRequest, t.as_union_value())
            }
            RequestBody::ListOffsets(l) => {
                let topics: Vec<_> = l
                    .topics
                    .iter()
                    .map(|topic| {
                        let name = fbb.create_string(&topic.name);
                        let parts: Vec<_> = topic
                            .partitions
                            .iter()
                            .map(|lp| {
                                fb::ListOffsetsPartition::create(
                                    fbb,
                                    &fb::ListOffsetsPartitionArgs {
                                        partition: lp.partition,
                                        timestamp: lp.timestamp,
                                    },
                                )
                            })
                            .collect();
                        let parts = fbb.create_vector(&parts);
                        fb::ListOffsetsTopic::create(
                            fbb,
                            &fb::ListOffsetsTopicArgs {
                                name: Some(name),
                                partitions: Some(parts),
                            },
                        )
                    })
                    .collect();
                let topics = fbb.create_vector(&topics);
                let t = fb::ListOffsetsRequest::create(
                    fbb,
                    &fb::ListOffsetsRequestArgs {
                        topics: Some(topics),
                    },
                );
                (fb::RequestBody::ListOffsetsRequest, t.as_union_value())
            }
            RequestBody::FindCoordinator(r) => {
                let t = encode_find_coordinator_request(fbb, r);
                (fb::RequestBody::FindCoordinatorRequest, t.as_union_value())
            }
            RequestBody::JoinGroup(r) => {
                let t = encode_join_group_request(fbb, r);
                (fb::RequestBody::JoinGroupRequest, t.as_union_value())
            }
            RequestBody::Heartbeat(r) => {
                let t = encode_heartbeat_request(fbb, r);
                (fb::RequestBody::HeartbeatRequest, t.as_union_value())
            }
            RequestBody::LeaveGroup(r) => {
                let t = encode_leave_group_request(fbb, r);
                (fb::RequestBody::LeaveGroupRequest, t.as_union_value())
            }
            RequestBody::OffsetCommit(r) => {
                let t = encode_offset_commit_request(fbb, r);
                (fb::RequestBody::OffsetCommitRequest, t.as_union_value())
            }
            RequestBody::OffsetFetch(r) => {
                let t = encode_offset_fetch_request(fbb, r);
                (fb::RequestBody::OffsetFetchRequest, t.as_union_value())
            }
            RequestBody::ListGroups => {
                let t = fb::ListGroupsRequest::create(fbb, &fb::ListGroupsRequestArgs {});
                (fb::RequestBody::ListGroupsRequest, t.as_union_value())
            }
            RequestBody::DescribeGroup(r) => {
                let t = encode_describe_group_request(fbb, r);
                (fb::RequestBody::DescribeGroupRequest, t.as_union_value())
            }
            RequestBody::SyncGroup(r) => {
                let t = encode_sync_group_request(fbb, r);
                (fb::RequestBody::SyncGroupRequest, t.as_union_value())
            }
            RequestBody::CreatePartitions(c) => {
                let topics: Vec<_> = c
                    .topics
                    .iter()
                    .map(|t| {
                        let name = fbb.create_string(&t.name);
                        fb::NewPartitions::create(
                            fbb,
                            &fb::NewPartitionsArgs {
                                name: Some(name),
                                count: t.count,
                            },
                        )
                    })
                    .collect();
                let topics = fbb.create_vector(&topics);
                let t = fb::CreatePartitionsRequest::create(
                    fbb,
                    &fb::CreatePartitionsRequestArgs {
                        topics: Some(topics),
                        timeout_ms: c.timeout_ms,
                    },
                );
                (fb::RequestBody::CreatePartitionsRequest, t.as_union_value())
            }
            RequestBody::DeleteGroup(r) => {
                let t = encode_delete_group_request(fbb, r);
                (fb::RequestBody::DeleteGroupRequest, t.as_union_value())
            }
        }
    }

    /// Verifies and decodes a request envelope. On failure the error carries
    /// what a response needs (code + message); `peek_correlation_id` recovers
    /// the correlation id where the header itself is intact.
    pub fn decode(envelope: &[u8]) -> Result<Request, EnvelopeError> {
        let root = verify_request(envelope)?;
        let header = root.header();
        let api = ApiKey::from_fb(header.api()).ok_or(EnvelopeError::UnknownApi(header.api().0))?;
        if header.version() != API_VERSION {
            return Err(EnvelopeError::UnsupportedVersion {
                api: api.name(),
                version: header.version(),
            });
        }
        let body = decode_request_body(api, &root)?;
        Ok(Request {
            version: header.version(),
            correlation_id: header.correlation_id(),
            client_id: header.client_id().unwrap_or("").to_string(),
            body,
        })
    }
}

/// The correlation id and api of a request whose envelope verifies, even if
/// the body is unusable: lets the broker answer a bad request by id.
pub fn peek_request_header(envelope: &[u8]) -> Option<(u64, u16)> {
    let root = verify_request(envelope).ok()?;
    Some((root.header().correlation_id(), root.header().api().0))
}

pub(crate) fn dec_strings(v: Option<Vector<'_, ForwardsUOffset<&str>>>) -> Vec<String> {
    v.map(|v| v.iter().map(str::to_string).collect())
        .unwrap_or_default()
}

fn dec_configs(v: Option<Vector<'_, ForwardsUOffset<fb::KeyValue<'_>>>>) -> Vec<(String, String)> {
    v.map(|v| {
        v.iter()
            .map(|kv| (kv.key().to_string(), kv.value().to_string()))
            .collect()
    })
    .unwrap_or_default()
}

pub(crate) fn dec_error(e: Option<fb::Error<'_>>) -> Option<ApiError> {
    let e = e?;
    let code = ErrorCode::from_fb(e.code());
    if code == ErrorCode::None {
        return None;
    }
    Some(ApiError::new(code, e.message().unwrap_or("")))
}

fn dec_topic_results(v: Option<Vector<'_, ForwardsUOffset<fb::TopicResult<'_>>>>) -> TopicResults {
    TopicResults {
        results: v
            .map(|v| {
                v.iter()
                    .map(|r| TopicResult {
                        name: r.name().unwrap_or("").to_string(),
                        error: dec_error(r.error()),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

fn decode_request_body(api: ApiKey, root: &fb::Request<'_>) -> Result<RequestBody, EnvelopeError> {
    let missing = EnvelopeError::Missing("a request body matching its api");
    Ok(match api {
        ApiKey::ApiVersions => RequestBody::ApiVersions,
        ApiKey::Metadata => {
            let m = root.body_as_metadata_request().ok_or(missing)?;
            RequestBody::Metadata(MetadataRequest {
                topics: m.topics().map(|t| t.iter().map(str::to_string).collect()),
            })
        }
        ApiKey::CreateTopics => {
            let c = root.body_as_create_topics_request().ok_or(missing)?;
            let topics = c
                .topics()
                .map(|v| {
                    v.iter()
                        .map(|t| NewTopic {
                            name: t.name().to_string(),
                            partitions: t.partitions(),
                            configs: dec_configs(t.configs()),
                        })
                        .collect()
                })
                .unwrap_or_default();
            RequestBody::CreateTopics(CreateTopicsRequest {
                topics,
                timeout_ms: c.timeout_ms(),
            })
        }
        ApiKey::DeleteTopics => {
            let d = root.body_as_delete_topics_request().ok_or(missing)?;
            RequestBody::DeleteTopics(DeleteTopicsRequest {
                names: dec_strings(d.names()),
                timeout_ms: d.timeout_ms(),
            })
        }
        ApiKey::Produce => {
            let p = root.body_as_produce_request().ok_or(missing)?;
            let acks = Acks::from_fb(p.acks()).ok_or(EnvelopeError::Invalid {
                field: "acks",
                reason: "must be none, leader or fsync",
            })?;
            let topics = p
                .topics()
                .map(|v| {
                    v.iter()
                        .map(|t| ProduceTopic {
                            name: t.name().to_string(),
                            partitions: t
                                .partitions()
                                .map(|ps| {
                                    ps.iter()
                                        .map(|pp| ProducePartition {
                                            partition: pp.partition(),
                                            payload: PayloadRange {
                                                offset: pp.payload_offset(),
                                                length: pp.payload_length(),
                                            },
                                        })
                                        .collect()
                                })
                                .unwrap_or_default(),
                        })
                        .collect()
                })
                .unwrap_or_default();
            RequestBody::Produce(ProduceRequest {
                acks,
                timeout_ms: p.timeout_ms(),
                topics,
            })
        }
        ApiKey::Fetch => {
            let f = root.body_as_fetch_request().ok_or(missing)?;
            let topics = f
                .topics()
                .map(|v| {
                    v.iter()
                        .map(|t| FetchTopic {
                            name: t.name().to_string(),
                            partitions: t
                                .partitions()
                                .map(|ps| {
                                    ps.iter()
                                        .map(|fp| FetchPartition {
                                            partition: fp.partition(),
                                            fetch_offset: fp.fetch_offset(),
                                            partition_max_bytes: fp.partition_max_bytes(),
                                        })
                                        .collect()
                                })
                                .unwrap_or_default(),
                        })
                        .collect()
                })
                .unwrap_or_default();
            RequestBody::Fetch(FetchRequest {
                max_wait_ms: f.max_wait_ms(),
                min_bytes: f.min_bytes(),
                max_bytes: f.max_bytes(),
                topics,
                fence: decode_fetch_fence(&f),
            })
        }
        ApiKey::ListOffsets => {
            let l = root.body_as_list_offsets_request().ok_or(missing)?;
            let topics = l
                .topics()
                .map(|v| {
                    v.iter()
                        .map(|t| ListOffsetsTopic {
                            name: t.name().to_string(),
                            partitions: t
                                .partitions()
                                .map(|ps| {
                                    ps.iter()
                                        .map(|lp| ListOffsetsPartition {
                                            partition: lp.partition(),
                                            timestamp: lp.timestamp(),
                                        })
                                        .collect()
                                })
                                .unwrap_or_default(),
                        })
                        .collect()
                })
                .unwrap_or_default();
            RequestBody::ListOffsets(ListOffsetsRequest { topics })
        }
        ApiKey::FindCoordinator => RequestBody::FindCoordinator(decode_find_coordinator_request(
            root.body_as_find_coordinator_request().ok_or(missing)?,
        )?),
        ApiKey::JoinGroup => RequestBody::JoinGroup(decode_join_group_request(
            root.body_as_join_group_request().ok_or(missing)?,
        )?),
        ApiKey::Heartbeat => RequestBody::Heartbeat(decode_heartbeat_request(
            root.body_as_heartbeat_request().ok_or(missing)?,
        )?),
        ApiKey::LeaveGroup => RequestBody::LeaveGroup(decode_leave_group_request(
            root.body_as_leave_group_request().ok_or(missing)?,
        )?),
        ApiKey::OffsetCommit => RequestBody::OffsetCommit(decode_offset_commit_request(
            root.body_as_offset_commit_request().ok_or(missing)?,
        )?),
        ApiKey::OffsetFetch => RequestBody::OffsetFetch(decode_offset_fetch_request(
            root.body_as_offset_fetch_request().ok_or(missing)?,
        )?),
        ApiKey::ListGroups => RequestBody::ListGroups,
        ApiKey::DescribeGroup => RequestBody::DescribeGroup(decode_describe_group_request(
            root.body_as_describe_group_request().ok_or(missing)?,
        )?),
        ApiKey::DeleteGroup => RequestBody::DeleteGroup(decode_delete_group_request(
            root.body_as_delete_group_request().ok_or(missing)?,
        )?),
        ApiKey::SyncGroup => RequestBody::SyncGroup(decode_sync_group_request(
            root.body_as_sync_group_request().ok_or(missing)?,
        )?),
        ApiKey::CreatePartitions => {
            let c = root.body_as_create_partitions_request().ok_or(missing)?;
            let topics = c
                .topics()
                .map(|v| {
                    v.iter()
                        .map(|t| NewPartitions {
                            name: t.name().to_string(),
                            count: t.count(),
                        })
                        .collect()
                })
                .unwrap_or_default();
            RequestBody::CreatePartitions(CreatePartitionsRequest {
                topics,
                timeout_ms: c.timeout_ms(),
            })
        }
    })
}

impl Response {
    /// A response that failed as a whole.
    pub fn error(api: ApiKey, correlation_id: u64, error: ApiError) -> Response {
        Response {
            api,
            version: API_VERSION,
            correlation_id,
            error: Some(error),
            body: ResponseBody::None,
        }
    }

    pub fn ok(api: ApiKey, correlation_id: u64, body: ResponseBody) -> Response {
        Response {
            api,
            version: API_VERSION,
            correlation_id,
            error: None,
            body,
        }
    }

    pub fn encode<'a>(&self, fbb: &'a mut Fbb) -> &'a [u8] {
        fbb.reset();
        let error = enc_error(fbb, &self.error);
        let header = fb::ResponseHeader::create(
            fbb,
            &fb::ResponseHeaderArgs {
                api: self.api.to_fb(),
                version: self.version,
                correlation_id: self.correlation_id,
                error,
            },
        );
        let (body_type, body) = self.encode_body(fbb);
        let root = fb::Response::create(
            fbb,
            &fb::ResponseArgs {
                header: Some(header),
                body_type,
                body,
            },
        );
        fbb.finish(root, None);
        fbb.finished_data()
    }

    fn encode_body(
        &self,
        fbb: &mut Fbb,
    ) -> (
        fb::ResponseBody,
        Option<WIPOffset<flatbuffers::UnionWIPOffset>>,
    ) {
        match &self.body {
            ResponseBody::None => (fb::ResponseBody::NONE, None),
            ResponseBody::ApiVersions(a) => {
                let apis: Vec<_> = a
                    .apis
                    .iter()
                    .map(|r| {
                        fb::ApiVersionRange::create(
                            fbb,
                            &fb::ApiVersionRangeArgs {
                                api: r.api.to_fb(),
                                min_version: r.min_version,
                                max_version: r.max_version,
                            },
                        )
                    })
                    .collect();
                let apis = fbb.create_vector(&apis);
                let broker_version = fbb.create_string(&a.broker_version);
                let t = fb::ApiVersionsResponse::create(
                    fbb,
                    &fb::ApiVersionsResponseArgs {
                        apis: Some(apis),
                        broker_version: Some(broker_version),
                        max_frame_bytes: a.max_frame_bytes,
                    },
                );
                (
                    fb::ResponseBody::ApiVersionsResponse,
                    Some(t.as_union_value()),
                )
            }
            ResponseBody::Metadata(m) => {
                let shards: Vec<_> = m
                    .shards
                    .iter()
                    .map(|s| {
                        let host = fbb.create_string(&s.host);
                        fb::ShardEndpoint::create(
                            fbb,
                            &fb::ShardEndpointArgs {
                                shard: s.shard,
                                host: Some(host),
                                port: s.port,
                            },
                        )
                    })
                    .collect();
                let shards = fbb.create_vector(&shards);
                let topics: Vec<_> = m
                    .topics
                    .iter()
                    .map(|t| {
                        let name = fbb.create_string(&t.name);
                        let error = enc_error(fbb, &t.error);
                        let parts: Vec<_> = t
                            .partitions
                            .iter()
                            .map(|p| {
                                let error = enc_error(fbb, &p.error);
                                fb::PartitionMetadata::create(
                                    fbb,
                                    &fb::PartitionMetadataArgs {
                                        partition: p.partition,
                                        shard: p.shard,
                                        error,
                                    },
                                )
                            })
                            .collect();
                        let parts = fbb.create_vector(&parts);
                        let configs = enc_configs(fbb, &t.configs);
                        fb::TopicMetadata::create(
                            fbb,
                            &fb::TopicMetadataArgs {
                                name: Some(name),
                                error,
                                partitions: Some(parts),
                                configs: Some(configs),
                            },
                        )
                    })
                    .collect();
                let topics = fbb.create_vector(&topics);
                let t = fb::MetadataResponse::create(
                    fbb,
                    &fb::MetadataResponseArgs {
                        shards: Some(shards),
                        topics: Some(topics),
                    },
                );
                (fb::ResponseBody::MetadataResponse, Some(t.as_union_value()))
            }
            ResponseBody::CreateTopics(r) => {
                let results = enc_topic_results(fbb, r);
                let t = fb::CreateTopicsResponse::create(
                    fbb,
                    &fb::CreateTopicsResponseArgs {
                        results: Some(results),
                    },
                );
                (
                    fb::ResponseBody::CreateTopicsResponse,
                    Some(t.as_union_value()),
                )
            }
            ResponseBody::DeleteTopics(r) => {
                let results = enc_topic_results(fbb, r);
                let t = fb::DeleteTopicsResponse::create(
                    fbb,
                    &fb::DeleteTopicsResponseArgs {
                        results: Some(results),
                    },
                );
                (
                    fb::ResponseBody::DeleteTopicsResponse,
                    Some(t.as_union_value()),
                )
            }
            ResponseBody::Produce(p) => {
                let topics: Vec<_> = p
                    .topics
                    .iter()
                    .map(|t| {
                        let name = fbb.create_string(&t.name);
                        let parts: Vec<_> = t
                            .partitions
                            .iter()
                            .map(|r| {
                                let error = enc_error(fbb, &r.error);
                                fb::ProducePartitionResult::create(
                                    fbb,
                                    &fb::ProducePartitionResultArgs {
                                        partition: r.partition,
                                        error,
                                        base_offset: r.base_offset,
                                        last_offset: r.last_offset,
                                        log_append_time_ms: r.log_append_time_ms,
                                        log_start_offset: r.log_start_offset,
                                    },
                                )
                            })
                            .collect();
                        let parts = fbb.create_vector(&parts);
                        fb::ProduceTopicResult::create(
                            fbb,
                            &fb::ProduceTopicResultArgs {
                                name: Some(name),
                                partitions: Some(parts),
                            },
                        )
                    })
                    .collect();
                let topics = fbb.create_vector(&topics);
                let t = fb::ProduceResponse::create(
                    fbb,
                    &fb::ProduceResponseArgs {
                        topics: Some(topics),
                    },
                );
                (fb::ResponseBody::ProduceResponse, Some(t.as_union_value()))
            }
            ResponseBody::Fetch(f) => {
                let topics: Vec<_> = f
                    .topics
                    .iter()
                    .map(|t| {
                        let name = fbb.create_string(&t.name);
                        let parts: Vec<_> = t
                            .partitions
                            .iter()
                            .map(|r| {
                                let error = enc_error(fbb, &r.error);
                                fb::FetchPartitionResult::create(
                                    fbb,
                                    &fb::FetchPartitionResultArgs {
                                        partition: r.partition,
                                        error,
                                        high_watermark: r.high_watermark,
                                        log_start_offset: r.log_start_offset,
                                        payload_offset: r.payload.offset,
                                        payload_length: r.payload.length,
                                    },
                                )
                            })
                            .collect();
                        let parts = fbb.create_vector(&parts);
                        fb::FetchTopicResult::create(
                            fbb,
                            &fb::FetchTopicResultArgs {
                                name: Some(name),
                                partitions: Some(parts),
                            },
                        )
                    })
                    .collect();
                let topics = fbb.create_vector(&topics);
                let t = fb::FetchResponse::create(
                    fbb,
                    &fb::FetchResponseArgs {
                        topics: Some(topics),
                    },
                );
                (fb::ResponseBody::FetchResponse, Some(t.as_union_value()))
            }
            ResponseBody::ListOffsets(l) => {
                let topics: Vec<_> = l
                    .topics
                    .iter()
                    .map(|t| {
                        let name = fbb.create_string(&t.name);
                        let parts: Vec<_> = t
                            .partitions
                            .iter()
                            .map(|r| {
                                let error = enc_error(fbb, &r.error);
                                fb::ListOffsetsPartitionResult::create(
                                    fbb,
                                    &fb::ListOffsetsPartitionResultArgs {
                                        partition: r.partition,
                                        error,
                                        offset: r.offset,
                                        timestamp: r.timestamp,
                                    },
                                )
                            })
                            .collect();
                        let parts = fbb.create_vector(&parts);
                        fb::ListOffsetsTopicResult::create(
                            fbb,
                            &fb::ListOffsetsTopicResultArgs {
                                name: Some(name),
                                partitions: Some(parts),
                            },
                        )
                    })
                    .collect();
                let topics = fbb.create_vector(&topics);
                let t = fb::ListOffsetsResponse::create(
                    fbb,
                    &fb::ListOffsetsResponseArgs {
                        topics: Some(topics),
                    },
                );
                (
                    fb::ResponseBody::ListOffsetsResponse,
                    Some(t.as_union_value()),
                )
            }
            ResponseBody::FindCoordinator(r) => {
                let t = encode_find_coordinator_response(fbb, r);
                (
                    fb::ResponseBody::FindCoordinatorResponse,
                    Some(t.as_union_value()),
                )
            }
            ResponseBody::JoinGroup(r) => {
                let t = encode_join_group_response(fbb, r);
                (
                    fb::ResponseBody::JoinGroupResponse,
                    Some(t.as_union_value()),
                )
            }
            ResponseBody::Heartbeat => {
                let t = fb::HeartbeatResponse::create(fbb, &fb::HeartbeatResponseArgs {});
                (
                    fb::ResponseBody::HeartbeatResponse,
                    Some(t.as_union_value()),
                )
            }
            ResponseBody::LeaveGroup => {
                let t = fb::LeaveGroupResponse::create(fbb, &fb::LeaveGroupResponseArgs {});
                (
                    fb::ResponseBody::LeaveGroupResponse,
                    Some(t.as_union_value()),
                )
            }
            ResponseBody::OffsetCommit(r) => {
                let t = encode_offset_commit_response(fbb, r);
                (
                    fb::ResponseBody::OffsetCommitResponse,
                    Some(t.as_union_value()),
                )
            }
            ResponseBody::OffsetFetch(r) => {
                let t = encode_offset_fetch_response(fbb, r);
                (
                    fb::ResponseBody::OffsetFetchResponse,
                    Some(t.as_union_value()),
                )
            }
            ResponseBody::ListGroups(r) => {
                let t = encode_list_groups_response(fbb, r);
                (
                    fb::ResponseBody::ListGroupsResponse,
                    Some(t.as_union_value()),
                )
            }
            ResponseBody::DescribeGroup(r) => {
                let t = encode_describe_group_response(fbb, r);
                (
                    fb::ResponseBody::DescribeGroupResponse,
                    Some(t.as_union_value()),
                )
            }
            ResponseBody::DeleteGroup => {
                let t = fb::DeleteGroupResponse::create(fbb, &fb::DeleteGroupResponseArgs {});
                (
                    fb::ResponseBody::DeleteGroupResponse,
                    Some(t.as_union_value()),
                )
            }
            ResponseBody::SyncGroup(r) => {
                let t = encode_sync_group_response(fbb, r);
                (
                    fb::ResponseBody::SyncGroupResponse,
                    Some(t.as_union_value()),
                )
            }
            ResponseBody::CreatePartitions(r) => {
                let results = enc_topic_results(fbb, r);
                let t = fb::CreatePartitionsResponse::create(
                    fbb,
                    &fb::CreatePartitionsResponseArgs {
                        results: Some(results),
                    },
                );
                (
                    fb::ResponseBody::CreatePartitionsResponse,
                    Some(t.as_union_value()),
                )
            }
        }
    }

    pub fn decode(envelope: &[u8]) -> Result<Response, EnvelopeError> {
        let root = verify_response(envelope)?;
        let header = root.header();
        let api = ApiKey::from_fb(header.api()).ok_or(EnvelopeError::UnknownApi(header.api().0))?;
        let error = dec_error(header.error());
        let body = decode_response_body(&root)?;
        Ok(Response {
            api,
            version: header.version(),
            correlation_id: header.correlation_id(),
            error,
            body,
        })
    }
}

fn decode_response_body(root: &fb::Response<'_>) -> Result<ResponseBody, EnvelopeError> {
    Ok(match root.body_type() {
        fb::ResponseBody::ApiVersionsResponse => {
            let a = root
                .body_as_api_versions_response()
                .ok_or(EnvelopeError::Missing("body"))?;
            ResponseBody::ApiVersions(ApiVersionsResponse {
                apis: a
                    .apis()
                    .map(|v| {
                        v.iter()
                            .filter_map(|r| {
                                Some(ApiVersionRange {
                                    api: ApiKey::from_fb(r.api())?,
                                    min_version: r.min_version(),
                                    max_version: r.max_version(),
                                })
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                broker_version: a.broker_version().unwrap_or("").to_string(),
                max_frame_bytes: a.max_frame_bytes(),
            })
        }
        fb::ResponseBody::MetadataResponse => {
            let m = root
                .body_as_metadata_response()
                .ok_or(EnvelopeError::Missing("body"))?;
            ResponseBody::Metadata(MetadataResponse {
                shards: m
                    .shards()
                    .map(|v| {
                        v.iter()
                            .map(|s| ShardEndpoint {
                                shard: s.shard(),
                                host: s.host().unwrap_or("").to_string(),
                                port: s.port(),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                topics: m
                    .topics()
                    .map(|v| {
                        v.iter()
                            .map(|t| TopicMetadata {
                                name: t.name().unwrap_or("").to_string(),
                                error: dec_error(t.error()),
                                partitions: t
                                    .partitions()
                                    .map(|ps| {
                                        ps.iter()
                                            .map(|p| PartitionMetadata {
                                                partition: p.partition(),
                                                shard: p.shard(),
                                                error: dec_error(p.error()),
                                            })
                                            .collect()
                                    })
                                    .unwrap_or_default(),
                                configs: dec_configs(t.configs()),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        }
        fb::ResponseBody::CreateTopicsResponse => {
            let c = root
                .body_as_create_topics_response()
                .ok_or(EnvelopeError::Missing("body"))?;
            ResponseBody::CreateTopics(dec_topic_results(c.results()))
        }
        fb::ResponseBody::DeleteTopicsResponse => {
            let d = root
                .body_as_delete_topics_response()
                .ok_or(EnvelopeError::Missing("body"))?;
            ResponseBody::DeleteTopics(dec_topic_results(d.results()))
        }
        fb::ResponseBody::ProduceResponse => {
            let p = root
                .body_as_produce_response()
                .ok_or(EnvelopeError::Missing("body"))?;
            ResponseBody::Produce(ProduceResponse {
                topics: p
                    .topics()
                    .map(|v| {
                        v.iter()
                            .map(|t| ProduceTopicResult {
                                name: t.name().unwrap_or("").to_string(),
                                partitions: t
                                    .partitions()
                                    .map(|ps| {
                                        ps.iter()
                                            .map(|r| ProducePartitionResult {
                                                partition: r.partition(),
                                                error: dec_error(r.error()),
                                                base_offset: r.base_offset(),
                                                last_offset: r.last_offset(),
                                                log_append_time_ms: r.log_append_time_ms(),
                                                log_start_offset: r.log_start_offset(),
                                            })
                                            .collect()
                                    })
                                    .unwrap_or_default(),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        }
        fb::ResponseBody::FetchResponse => {
            let f = root
                .body_as_fetch_response()
                .ok_or(EnvelopeError::Missing("body"))?;
            ResponseBody::Fetch(FetchResponse {
                topics: f
                    .topics()
                    .map(|v| {
                        v.iter()
                            .map(|t| FetchTopicResult {
                                name: t.name().unwrap_or("").to_string(),
                                partitions: t
                                    .partitions()
                                    .map(|ps| {
                                        ps.iter()
                                            .map(|r| FetchPartitionResult {
                                                partition: r.partition(),
                                                error: dec_error(r.error()),
                                                high_watermark: r.high_watermark(),
                                                log_start_offset: r.log_start_offset(),
                                                payload: PayloadRange {
                                                    offset: r.payload_offset(),
                                                    length: r.payload_length(),
                                                },
                                            })
                                            .collect()
                                    })
                                    .unwrap_or_default(),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        }
        fb::ResponseBody::ListOffsetsResponse => {
            let l = root
                .body_as_list_offsets_response()
                .ok_or(EnvelopeError::Missing("body"))?;
            ResponseBody::ListOffsets(ListOffsetsResponse {
                topics: l
                    .topics()
                    .map(|v| {
                        v.iter()
                            .map(|t| ListOffsetsTopicResult {
                                name: t.name().unwrap_or("").to_string(),
                                partitions: t
                                    .partitions()
                                    .map(|ps| {
                                        ps.iter()
                                            .map(|r| ListOffsetsPartitionResult {
                                                partition: r.partition(),
                                                error: dec_error(r.error()),
                                                offset: r.offset(),
                                                timestamp: r.timestamp(),
                                            })
                                            .collect()
                                    })
                                    .unwrap_or_default(),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        }
        fb::ResponseBody::FindCoordinatorResponse => {
            ResponseBody::FindCoordinator(decode_find_coordinator_response(
                root.body_as_find_coordinator_response()
                    .ok_or(EnvelopeError::Missing("body"))?,
            )?)
        }
        fb::ResponseBody::JoinGroupResponse => ResponseBody::JoinGroup(decode_join_group_response(
            root.body_as_join_group_response()
                .ok_or(EnvelopeError::Missing("body"))?,
        )?),
        fb::ResponseBody::HeartbeatResponse => {
            root.body_as_heartbeat_response()
                .ok_or(EnvelopeError::Missing("body"))?;
            ResponseBody::Heartbeat
        }
        fb::ResponseBody::LeaveGroupResponse => {
            root.body_as_leave_group_response()
                .ok_or(EnvelopeError::Missing("body"))?;
            ResponseBody::LeaveGroup
        }
        fb::ResponseBody::OffsetCommitResponse => {
            ResponseBody::OffsetCommit(decode_offset_commit_response(
                root.body_as_offset_commit_response()
                    .ok_or(EnvelopeError::Missing("body"))?,
            )?)
        }
        fb::ResponseBody::OffsetFetchResponse => {
            ResponseBody::OffsetFetch(decode_offset_fetch_response(
                root.body_as_offset_fetch_response()
                    .ok_or(EnvelopeError::Missing("body"))?,
            )?)
        }
        fb::ResponseBody::ListGroupsResponse => {
            ResponseBody::ListGroups(decode_list_groups_response(
                root.body_as_list_groups_response()
                    .ok_or(EnvelopeError::Missing("body"))?,
            )?)
        }
        fb::ResponseBody::DescribeGroupResponse => {
            ResponseBody::DescribeGroup(decode_describe_group_response(
                root.body_as_describe_group_response()
                    .ok_or(EnvelopeError::Missing("body"))?,
            )?)
        }
        fb::ResponseBody::DeleteGroupResponse => {
            root.body_as_delete_group_response()
                .ok_or(EnvelopeError::Missing("body"))?;
            ResponseBody::DeleteGroup
        }
        fb::ResponseBody::SyncGroupResponse => ResponseBody::SyncGroup(decode_sync_group_response(
            root.body_as_sync_group_response()
                .ok_or(EnvelopeError::Missing("body"))?,
        )),
        fb::ResponseBody::CreatePartitionsResponse => {
            let c = root
                .body_as_create_partitions_response()
                .ok_or(EnvelopeError::Missing("body"))?;
            ResponseBody::CreatePartitions(dec_topic_results(c.results()))
        }
        _ => ResponseBody::None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip_request(body: RequestBody) {
        let mut fbb = FlatBufferBuilder::new();
        let req = Request {
            version: API_VERSION,
            correlation_id: 42,
            client_id: "test".into(),
            body,
        };
        let bytes = req.encode(&mut fbb).to_vec();
        assert_eq!(Request::decode(&bytes).unwrap(), req);
        assert_eq!(peek_request_header(&bytes).map(|h| h.0), Some(42));
    }

    #[test]
    fn requests_round_trip() {
        round_trip_request(RequestBody::ApiVersions);
        round_trip_request(RequestBody::Metadata(MetadataRequest { topics: None }));
        round_trip_request(RequestBody::Metadata(MetadataRequest {
            topics: Some(vec!["a".into(), "b".into()]),
        }));
        round_trip_request(RequestBody::CreateTopics(CreateTopicsRequest {
            topics: vec![NewTopic {
                name: "t".into(),
                partitions: 3,
                configs: vec![("retention.ms".into(), "1000".into())],
            }],
            timeout_ms: 5000,
        }));
        round_trip_request(RequestBody::DeleteTopics(DeleteTopicsRequest {
            names: vec!["t".into()],
            timeout_ms: 10,
        }));
        round_trip_request(RequestBody::Produce(ProduceRequest {
            acks: Acks::Leader,
            timeout_ms: 30_000,
            topics: vec![ProduceTopic {
                name: "t".into(),
                partitions: vec![ProducePartition {
                    partition: 1,
                    payload: PayloadRange {
                        offset: 0,
                        length: 100,
                    },
                }],
            }],
        }));
        round_trip_request(RequestBody::Fetch(FetchRequest {
            max_wait_ms: 500,
            min_bytes: 1,
            max_bytes: 1 << 20,
            topics: vec![FetchTopic {
                name: "t".into(),
                partitions: vec![FetchPartition {
                    partition: 0,
                    fetch_offset: 7,
                    partition_max_bytes: 1 << 20,
                }],
            }],
            fence: None,
        }));
        round_trip_request(RequestBody::Fetch(FetchRequest {
            max_wait_ms: 250,
            min_bytes: 16,
            max_bytes: 4096,
            topics: vec![FetchTopic {
                name: "orders".into(),
                partitions: vec![FetchPartition {
                    partition: 3,
                    fetch_offset: 99,
                    partition_max_bytes: 2048,
                }],
            }],
            fence: Some(FetchFence {
                group: "billing".into(),
                member_id: "billing-1-abc".into(),
                generation: 4,
            }),
        }));
        round_trip_request(RequestBody::ListOffsets(ListOffsetsRequest {
            topics: vec![ListOffsetsTopic {
                name: "t".into(),
                partitions: vec![ListOffsetsPartition {
                    partition: 0,
                    timestamp: LIST_OFFSETS_EARLIEST,
                }],
            }],
        }));
        round_trip_request(RequestBody::FindCoordinator(FindCoordinatorRequest {
            group: "billing".into(),
        }));
        round_trip_request(RequestBody::JoinGroup(JoinGroupRequest {
            group: "billing".into(),
            member_id: "billing-1-abc".into(),
            instance_id: "host-a".into(),
            client_id: "svc".into(),
            mode: GroupMode::Broadcasting,
            assignor: Assignor::RoundRobin,
            topics: vec!["orders".into(), "refunds".into()],
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 30_000,
            protocol_type: String::new(),
            protocols: Vec::new(),
        }));
        // Client-side assignment (Kafka's classic protocol).
        round_trip_request(RequestBody::JoinGroup(JoinGroupRequest {
            group: "billing".into(),
            client_id: "rdkafka".into(),
            topics: vec!["orders".into()],
            session_timeout_ms: 45_000,
            rebalance_timeout_ms: 300_000,
            protocol_type: "consumer".into(),
            protocols: vec![
                GroupProtocol {
                    name: "range".into(),
                    metadata: vec![0, 1, 2, 3],
                },
                GroupProtocol {
                    name: "roundrobin".into(),
                    metadata: Vec::new(),
                },
            ],
            ..Default::default()
        }));
        round_trip_request(RequestBody::SyncGroup(SyncGroupRequest {
            group: "billing".into(),
            member_id: "rdkafka-1".into(),
            generation: 3,
            assignments: vec![MemberAssignment {
                member_id: "rdkafka-1".into(),
                assignment: vec![9, 8, 7],
                partitions: vec![TopicPartitions {
                    topic: "orders".into(),
                    partitions: vec![0, 1],
                }],
            }],
        }));
        round_trip_request(RequestBody::CreatePartitions(CreatePartitionsRequest {
            topics: vec![NewPartitions {
                name: "orders".into(),
                count: 12,
            }],
            timeout_ms: 5_000,
        }));
        // A first join: no member id, clustering, the default assignor.
        round_trip_request(RequestBody::JoinGroup(JoinGroupRequest {
            group: "billing".into(),
            member_id: String::new(),
            instance_id: String::new(),
            client_id: String::new(),
            mode: GroupMode::Clustering,
            assignor: Assignor::Range,
            topics: vec!["orders".into()],
            session_timeout_ms: 6_000,
            rebalance_timeout_ms: 9_000,
            protocol_type: String::new(),
            protocols: Vec::new(),
        }));
        round_trip_request(RequestBody::Heartbeat(HeartbeatRequest {
            group: "billing".into(),
            member_id: "billing-1-abc".into(),
            generation: 7,
        }));
        round_trip_request(RequestBody::LeaveGroup(LeaveGroupRequest {
            group: "billing".into(),
            member_id: "billing-1-abc".into(),
        }));
        round_trip_request(RequestBody::OffsetCommit(OffsetCommitRequest {
            group: "billing".into(),
            member_id: "billing-1-abc".into(),
            generation: 7,
            instance_id: "host-a".into(),
            topics: vec![OffsetCommitTopic {
                name: "orders".into(),
                partitions: vec![
                    OffsetCommitPartition {
                        partition: 2,
                        offset: 1234,
                        metadata: "ckpt".into(),
                    },
                    OffsetCommitPartition {
                        partition: 5,
                        offset: 0,
                        metadata: String::new(),
                    },
                ],
            }],
        }));
        round_trip_request(RequestBody::OffsetFetch(OffsetFetchRequest {
            group: "billing".into(),
            instance_id: "host-a".into(),
            topics: Some(vec!["orders".into(), "refunds".into()]),
        }));
        round_trip_request(RequestBody::OffsetFetch(OffsetFetchRequest {
            group: "billing".into(),
            instance_id: String::new(),
            topics: None,
        }));
        round_trip_request(RequestBody::ListGroups);
        round_trip_request(RequestBody::DescribeGroup(DescribeGroupRequest {
            group: "billing".into(),
        }));
        round_trip_request(RequestBody::DeleteGroup(DeleteGroupRequest {
            group: "billing".into(),
        }));
    }

    #[test]
    fn responses_round_trip() {
        let mut fbb = FlatBufferBuilder::new();
        let responses = vec![
            Response::error(
                ApiKey::Fetch,
                9,
                ApiError::new(ErrorCode::UnknownApi, "nope"),
            ),
            Response::ok(
                ApiKey::Metadata,
                1,
                ResponseBody::Metadata(MetadataResponse {
                    shards: vec![ShardEndpoint {
                        shard: 0,
                        host: "127.0.0.1".into(),
                        port: 7072,
                    }],
                    topics: vec![TopicMetadata {
                        name: "t".into(),
                        error: None,
                        partitions: vec![PartitionMetadata {
                            partition: 0,
                            shard: 0,
                            error: None,
                        }],
                        configs: vec![("k".into(), "v".into())],
                    }],
                }),
            ),
            Response::ok(
                ApiKey::Produce,
                2,
                ResponseBody::Produce(ProduceResponse {
                    topics: vec![ProduceTopicResult {
                        name: "t".into(),
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
                3,
                ResponseBody::Fetch(FetchResponse {
                    topics: vec![FetchTopicResult {
                        name: "t".into(),
                        partitions: vec![FetchPartitionResult {
                            partition: 0,
                            error: None,
                            high_watermark: 5,
                            log_start_offset: 0,
                            payload: PayloadRange {
                                offset: 0,
                                length: 61,
                            },
                        }],
                    }],
                }),
            ),
            Response::ok(
                ApiKey::CreateTopics,
                4,
                ResponseBody::CreateTopics(TopicResults {
                    results: vec![TopicResult {
                        name: "t".into(),
                        error: Some(ApiError::new(ErrorCode::TopicAlreadyExists, "exists")),
                    }],
                }),
            ),
            Response::error(
                ApiKey::Heartbeat,
                5,
                ApiError::new(ErrorCode::RebalanceInProgress, "rebalancing"),
            ),
            // A header error next to a (empty) body: both travel.
            Response {
                error: Some(ApiError::new(
                    ErrorCode::IllegalGeneration,
                    "generation 3 < 4",
                )),
                ..Response::ok(ApiKey::LeaveGroup, 6, ResponseBody::LeaveGroup)
            },
            Response::ok(
                ApiKey::FindCoordinator,
                7,
                ResponseBody::FindCoordinator(FindCoordinatorResponse {
                    shard: 3,
                    host: "10.0.0.7".into(),
                    port: 7075,
                    offsets_partition: 17,
                }),
            ),
            Response::ok(
                ApiKey::JoinGroup,
                8,
                ResponseBody::JoinGroup(JoinGroupResponse {
                    member_id: "billing-1-abc".into(),
                    generation: 4,
                    mode: GroupMode::Broadcasting,
                    assignor: Assignor::Range,
                    assignment: vec![
                        TopicPartitions {
                            topic: "orders".into(),
                            partitions: vec![0, 2, 5],
                        },
                        TopicPartitions {
                            topic: "refunds".into(),
                            partitions: vec![1],
                        },
                    ],
                    heartbeat_interval_ms: 3_000,
                    session_timeout_ms: 10_000,
                    member_count: 3,
                    protocol_name: "range".into(),
                    leader_id: "billing-1-abc".into(),
                    members: vec![JoinGroupMember {
                        member_id: "billing-1-abc".into(),
                        instance_id: String::new(),
                        metadata: vec![1, 2],
                    }],
                }),
            ),
            Response::ok(ApiKey::Heartbeat, 9, ResponseBody::Heartbeat),
            Response::ok(ApiKey::LeaveGroup, 10, ResponseBody::LeaveGroup),
            Response::ok(
                ApiKey::OffsetCommit,
                11,
                ResponseBody::OffsetCommit(OffsetCommitResponse {
                    topics: vec![OffsetCommitTopicResult {
                        name: "orders".into(),
                        partitions: vec![
                            OffsetCommitPartitionResult {
                                partition: 2,
                                error: None,
                            },
                            OffsetCommitPartitionResult {
                                partition: 9,
                                error: Some(ApiError::new(
                                    ErrorCode::UnknownTopicOrPartition,
                                    "no partition 9",
                                )),
                            },
                        ],
                    }],
                }),
            ),
            Response::ok(
                ApiKey::OffsetFetch,
                12,
                ResponseBody::OffsetFetch(OffsetFetchResponse {
                    offsets: vec![CommittedOffset {
                        topic: "orders".into(),
                        partition: 2,
                        offset: 1234,
                        metadata: "ckpt".into(),
                        commit_time_ms: 1_700_000_000_000,
                        instance_id: "host-a".into(),
                    }],
                }),
            ),
            Response::ok(
                ApiKey::ListGroups,
                13,
                ResponseBody::ListGroups(ListGroupsResponse {
                    groups: vec![
                        GroupListing {
                            group: "billing".into(),
                            state: "stable".into(),
                            mode: GroupMode::Broadcasting,
                            generation: 4,
                            members: 3,
                            coordinator_shard: 2,
                        },
                        GroupListing {
                            group: "audit".into(),
                            state: "empty".into(),
                            mode: GroupMode::Clustering,
                            generation: 1,
                            members: 0,
                            coordinator_shard: 5,
                        },
                    ],
                }),
            ),
            Response::ok(
                ApiKey::DescribeGroup,
                14,
                ResponseBody::DescribeGroup(DescribeGroupResponse {
                    group: "billing".into(),
                    state: "stable".into(),
                    mode: GroupMode::Broadcasting,
                    assignor: Assignor::RoundRobin,
                    generation: 4,
                    coordinator_shard: 2,
                    members: vec![GroupMember {
                        member_id: "billing-1-abc".into(),
                        instance_id: "host-a".into(),
                        client_id: "svc".into(),
                        topics: vec!["orders".into(), "refunds".into()],
                        assignment: vec![TopicPartitions {
                            topic: "orders".into(),
                            partitions: vec![0, 1],
                        }],
                        since_heartbeat_ms: 250,
                        metadata: vec![4],
                        assignment_bytes: vec![5, 6],
                    }],
                    offsets: vec![CommittedOffset {
                        topic: "refunds".into(),
                        partition: 1,
                        offset: 77,
                        metadata: "m".into(),
                        commit_time_ms: 1_700_000_000_001,
                        instance_id: "host-a".into(),
                    }],
                    protocol_type: "consumer".into(),
                    protocol_name: "range".into(),
                }),
            ),
            Response::ok(ApiKey::DeleteGroup, 15, ResponseBody::DeleteGroup),
            Response::ok(
                ApiKey::SyncGroup,
                16,
                ResponseBody::SyncGroup(SyncGroupResponse {
                    protocol_name: "range".into(),
                    assignment: vec![0, 1, 0, 0],
                }),
            ),
            Response::ok(
                ApiKey::CreatePartitions,
                17,
                ResponseBody::CreatePartitions(TopicResults {
                    results: vec![TopicResult {
                        name: "orders".into(),
                        error: None,
                    }],
                }),
            ),
        ];
        for resp in responses {
            let bytes = resp.encode(&mut fbb).to_vec();
            assert_eq!(Response::decode(&bytes).unwrap(), resp);
        }
    }

    /// Builds a request envelope whose body is `body`, as `api`.
    fn raw_request(
        fbb: &mut Fbb,
        api: ApiKey,
        body_type: fb::RequestBody,
        body: WIPOffset<flatbuffers::UnionWIPOffset>,
    ) -> Vec<u8> {
        let header = fb::RequestHeader::create(
            fbb,
            &fb::RequestHeaderArgs {
                api: api.to_fb(),
                version: API_VERSION,
                correlation_id: 1,
                client_id: None,
            },
        );
        let root = fb::Request::create(
            fbb,
            &fb::RequestArgs {
                header: Some(header),
                body_type,
                body: Some(body),
            },
        );
        fbb.finish(root, None);
        fbb.finished_data().to_vec()
    }

    #[test]
    fn unknown_group_enums_are_invalid() {
        let mut fbb = FlatBufferBuilder::new();
        let group = fbb.create_string("g");
        let t = fb::JoinGroupRequest::create(
            &mut fbb,
            &fb::JoinGroupRequestArgs {
                group: Some(group),
                mode: fb::GroupMode(9),
                ..Default::default()
            },
        );
        let bytes = raw_request(
            &mut fbb,
            ApiKey::JoinGroup,
            fb::RequestBody::JoinGroupRequest,
            t.as_union_value(),
        );
        let err = Request::decode(&bytes).unwrap_err();
        assert!(matches!(err, EnvelopeError::Invalid { field: "mode", .. }));
        assert_eq!(err.code(), ErrorCode::InvalidRequest);

        let mut fbb = FlatBufferBuilder::new();
        let group = fbb.create_string("g");
        let t = fb::JoinGroupRequest::create(
            &mut fbb,
            &fb::JoinGroupRequestArgs {
                group: Some(group),
                assignor: fb::Assignor(-3),
                ..Default::default()
            },
        );
        let bytes = raw_request(
            &mut fbb,
            ApiKey::JoinGroup,
            fb::RequestBody::JoinGroupRequest,
            t.as_union_value(),
        );
        let err = Request::decode(&bytes).unwrap_err();
        assert!(matches!(
            err,
            EnvelopeError::Invalid {
                field: "assignor",
                ..
            }
        ));
    }

    #[test]
    fn group_request_without_required_group_is_refused() {
        // An empty table where a FindCoordinatorRequest (group required) belongs.
        let mut fbb = FlatBufferBuilder::new();
        let start = fbb.start_table();
        let t = fbb.end_table(start);
        let bytes = raw_request(
            &mut fbb,
            ApiKey::FindCoordinator,
            fb::RequestBody::FindCoordinatorRequest,
            t.as_union_value(),
        );
        // `(required)` strings are enforced by the verifier: such an envelope
        // never reaches the body decoders.
        assert!(matches!(
            Request::decode(&bytes).unwrap_err(),
            EnvelopeError::Frame(FrameError::InvalidEnvelope(_))
        ));
    }

    #[test]
    fn group_request_with_mismatched_body_is_missing() {
        let mut fbb = FlatBufferBuilder::new();
        let t = fb::ListGroupsRequest::create(&mut fbb, &fb::ListGroupsRequestArgs {});
        let bytes = raw_request(
            &mut fbb,
            ApiKey::Heartbeat,
            fb::RequestBody::ListGroupsRequest,
            t.as_union_value(),
        );
        assert!(matches!(
            Request::decode(&bytes).unwrap_err(),
            EnvelopeError::Missing(_)
        ));
    }

    #[test]
    fn fetch_fence_needs_a_group() {
        let mut fbb = FlatBufferBuilder::new();
        let req = Request::new(
            3,
            RequestBody::Fetch(FetchRequest {
                max_wait_ms: 1,
                min_bytes: 1,
                max_bytes: 1,
                topics: vec![],
                fence: Some(FetchFence {
                    group: String::new(),
                    member_id: "m".into(),
                    generation: 2,
                }),
            }),
        );
        let bytes = req.encode(&mut fbb).to_vec();
        match Request::decode(&bytes).unwrap().body {
            RequestBody::Fetch(f) => assert_eq!(f.fence, None),
            other => panic!("decoded {other:?}"),
        }
    }

    #[test]
    fn group_enums_map_to_fb() {
        for mode in [GroupMode::Clustering, GroupMode::Broadcasting] {
            assert_eq!(GroupMode::from_fb(mode.to_fb()), Some(mode));
            assert_eq!(mode.name().parse::<GroupMode>(), Ok(mode));
        }
        for assignor in [Assignor::Sticky, Assignor::Range, Assignor::RoundRobin] {
            assert_eq!(Assignor::from_fb(assignor.to_fb()), Some(assignor));
            assert_eq!(assignor.name().parse::<Assignor>(), Ok(assignor));
        }
        // Every value the schema defines has an owned counterpart.
        for &mode in fb::GroupMode::ENUM_VALUES {
            assert!(GroupMode::from_fb(mode).is_some(), "{mode:?}");
        }
        for &assignor in fb::Assignor::ENUM_VALUES {
            assert!(Assignor::from_fb(assignor).is_some(), "{assignor:?}");
        }
    }

    #[test]
    fn unknown_api_is_reported() {
        let mut fbb = FlatBufferBuilder::new();
        let header = fb::RequestHeader::create(
            &mut fbb,
            &fb::RequestHeaderArgs {
                api: fb::ApiKey(999),
                version: 0,
                correlation_id: 5,
                client_id: None,
            },
        );
        let root = fb::Request::create(
            &mut fbb,
            &fb::RequestArgs {
                header: Some(header),
                ..Default::default()
            },
        );
        fbb.finish(root, None);
        let err = Request::decode(fbb.finished_data()).unwrap_err();
        assert_eq!(err.code(), ErrorCode::UnknownApi);
        assert_eq!(peek_request_header(fbb.finished_data()), Some((5, 999)));
    }
}
