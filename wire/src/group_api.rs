//! Owned request/response types of the consumer-group APIs (DESIGN.md 3.5).
//!
//! Group-level failures (illegal generation, unknown member, rebalance in
//! progress, not empty...) travel as the response header's error, so the
//! bodies here carry only what a successful call returns; per-partition
//! commit results carry their own error.

use flatbuffers::{ForwardsUOffset, Vector, WIPOffset};

use crate::envelope::{dec_error, dec_strings, enc_error, enc_strings, EnvelopeError, Fbb};
use crate::error::ApiError;
use crate::generated as fb;

/// How a group shares its topics' partitions among members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum GroupMode {
    /// Each partition is owned by one member at a time; offsets per group.
    #[default]
    Clustering,
    /// Every member receives every partition and keeps its own offsets.
    Broadcasting,
}

impl GroupMode {
    pub fn name(self) -> &'static str {
        match self {
            GroupMode::Clustering => "clustering",
            GroupMode::Broadcasting => "broadcasting",
        }
    }
}

impl GroupMode {
    pub fn to_fb(self) -> fb::GroupMode {
        match self {
            GroupMode::Clustering => fb::GroupMode::Clustering,
            GroupMode::Broadcasting => fb::GroupMode::Broadcasting,
        }
    }

    pub fn from_fb(mode: fb::GroupMode) -> Option<GroupMode> {
        match mode {
            fb::GroupMode::Clustering => Some(GroupMode::Clustering),
            fb::GroupMode::Broadcasting => Some(GroupMode::Broadcasting),
            _ => None,
        }
    }
}

impl std::fmt::Display for GroupMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for GroupMode {
    type Err = String;
    fn from_str(s: &str) -> Result<GroupMode, String> {
        match s {
            "clustering" => Ok(GroupMode::Clustering),
            "broadcasting" => Ok(GroupMode::Broadcasting),
            other => Err(format!(
                "unknown group mode {other:?}: use clustering or broadcasting"
            )),
        }
    }
}

/// Server-side partition assignment strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Assignor {
    /// Balanced, and moves as few partitions as possible between generations.
    #[default]
    Sticky,
    /// Per topic, contiguous ranges of partitions to members in id order.
    Range,
    /// All subscribed partitions dealt round-robin over members in id order.
    RoundRobin,
}

impl Assignor {
    pub fn name(self) -> &'static str {
        match self {
            Assignor::Sticky => "sticky",
            Assignor::Range => "range",
            Assignor::RoundRobin => "roundrobin",
        }
    }
}

impl Assignor {
    pub fn to_fb(self) -> fb::Assignor {
        match self {
            Assignor::Sticky => fb::Assignor::Sticky,
            Assignor::Range => fb::Assignor::Range,
            Assignor::RoundRobin => fb::Assignor::RoundRobin,
        }
    }

    pub fn from_fb(assignor: fb::Assignor) -> Option<Assignor> {
        match assignor {
            fb::Assignor::Sticky => Some(Assignor::Sticky),
            fb::Assignor::Range => Some(Assignor::Range),
            fb::Assignor::RoundRobin => Some(Assignor::RoundRobin),
            _ => None,
        }
    }
}

impl std::fmt::Display for Assignor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Assignor {
    type Err = String;
    fn from_str(s: &str) -> Result<Assignor, String> {
        match s {
            "sticky" => Ok(Assignor::Sticky),
            "range" => Ok(Assignor::Range),
            "roundrobin" | "round-robin" => Ok(Assignor::RoundRobin),
            other => Err(format!(
                "unknown assignor {other:?}: use sticky, range or roundrobin"
            )),
        }
    }
}

/// A topic and some of its partitions (ascending).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TopicPartitions {
    pub topic: String,
    pub partitions: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FindCoordinatorRequest {
    pub group: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FindCoordinatorResponse {
    pub shard: u16,
    pub host: String,
    pub port: u16,
    pub offsets_partition: u32,
}

/// One protocol a member of a client-side assignment group supports, with
/// its (opaque to the broker) metadata.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupProtocol {
    pub name: String,
    pub metadata: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JoinGroupRequest {
    pub group: String,
    /// Empty on the first join.
    pub member_id: String,
    /// Broadcasting: the stable name this consumer's offsets are kept under.
    pub instance_id: String,
    pub client_id: String,
    pub mode: GroupMode,
    pub assignor: Assignor,
    pub topics: Vec<String>,
    pub session_timeout_ms: u32,
    pub rebalance_timeout_ms: u32,
    /// Client-side assignment (Kafka's classic protocol) when not empty:
    /// the coordinator elects a leader and relays its assignment through
    /// SyncGroup instead of assigning partitions itself.
    pub protocol_type: String,
    /// In order of preference (client-side assignment only).
    pub protocols: Vec<GroupProtocol>,
}

impl JoinGroupRequest {
    pub fn is_client_assigned(&self) -> bool {
        !self.protocol_type.is_empty()
    }
}

/// A member as the leader of a client-side assignment group sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JoinGroupMember {
    pub member_id: String,
    pub instance_id: String,
    /// Its metadata for the chosen protocol.
    pub metadata: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JoinGroupResponse {
    pub member_id: String,
    pub generation: i32,
    pub mode: GroupMode,
    pub assignor: Assignor,
    pub assignment: Vec<TopicPartitions>,
    pub heartbeat_interval_ms: u32,
    pub session_timeout_ms: u32,
    pub member_count: u32,
    /// Client-side assignment only: the protocol chosen for this generation.
    pub protocol_name: String,
    pub leader_id: String,
    /// Filled for the leader only.
    pub members: Vec<JoinGroupMember>,
}

/// The leader's assignment for one member (client-side assignment).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MemberAssignment {
    pub member_id: String,
    /// Relayed to the member as is.
    pub assignment: Vec<u8>,
    /// The same assignment decoded, where the sender understands the
    /// protocol (Kafka's "consumer"): for describe, lag and fencing.
    pub partitions: Vec<TopicPartitions>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SyncGroupRequest {
    pub group: String,
    pub member_id: String,
    pub generation: i32,
    /// From the leader only.
    pub assignments: Vec<MemberAssignment>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SyncGroupResponse {
    pub protocol_name: String,
    pub assignment: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatRequest {
    pub group: String,
    pub member_id: String,
    pub generation: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaveGroupRequest {
    pub group: String,
    pub member_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetCommitPartition {
    pub partition: u32,
    pub offset: i64,
    pub metadata: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetCommitTopic {
    pub name: String,
    pub partitions: Vec<OffsetCommitPartition>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetCommitRequest {
    pub group: String,
    /// Empty with generation -1: an administrative commit (group must be empty).
    pub member_id: String,
    pub generation: i32,
    /// Broadcasting, administrative commits only: whose offsets.
    pub instance_id: String,
    pub topics: Vec<OffsetCommitTopic>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetCommitPartitionResult {
    pub partition: u32,
    pub error: Option<ApiError>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetCommitTopicResult {
    pub name: String,
    pub partitions: Vec<OffsetCommitPartitionResult>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OffsetCommitResponse {
    pub topics: Vec<OffsetCommitTopicResult>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    pub topic: String,
    pub partition: u32,
    pub offset: i64,
    pub metadata: String,
    pub commit_time_ms: i64,
    /// Empty for clustering groups.
    pub instance_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetFetchRequest {
    pub group: String,
    pub instance_id: String,
    /// `None`: every topic the group has offsets for.
    pub topics: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OffsetFetchResponse {
    pub offsets: Vec<CommittedOffset>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupListing {
    pub group: String,
    pub state: String,
    pub mode: GroupMode,
    pub generation: i32,
    pub members: u32,
    pub coordinator_shard: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListGroupsResponse {
    pub groups: Vec<GroupListing>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescribeGroupRequest {
    pub group: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupMember {
    pub member_id: String,
    pub instance_id: String,
    pub client_id: String,
    pub topics: Vec<String>,
    pub assignment: Vec<TopicPartitions>,
    pub since_heartbeat_ms: u32,
    /// Client-side assignment groups: protocol metadata and the opaque
    /// assignment.
    pub metadata: Vec<u8>,
    pub assignment_bytes: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DescribeGroupResponse {
    pub group: String,
    pub state: String,
    pub mode: GroupMode,
    pub assignor: Assignor,
    pub generation: i32,
    pub coordinator_shard: u16,
    pub members: Vec<GroupMember>,
    pub offsets: Vec<CommittedOffset>,
    /// Empty for server-side assignment groups.
    pub protocol_type: String,
    pub protocol_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteGroupRequest {
    pub group: String,
}

/// Fencing fields a group consumer adds to its fetches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchFence {
    pub group: String,
    pub member_id: String,
    pub generation: i32,
}

// ------------------------------------------------------- envelope codec
//
// Owned types <-> generated flatbuffers types, called from the match arms of
// `envelope.rs`. Strings the schema marks `(required)` are checked by the
// verifier before any of this runs (an envelope without them never decodes),
// so their accessors return `&str`; optional strings decode to "" when absent
// and are left out of the envelope when empty.

/// `FetchRequest.generation` when the fetch carries no fence (schema default).
const NO_GENERATION: i32 = -1;

fn enc_opt_string(fbb: &mut Fbb, s: &str) -> Option<WIPOffset<&'static str>> {
    (!s.is_empty()).then(|| fbb.create_string(s))
}

fn dec_mode(mode: fb::GroupMode) -> Result<GroupMode, EnvelopeError> {
    GroupMode::from_fb(mode).ok_or(EnvelopeError::Invalid {
        field: "mode",
        reason: "must be clustering or broadcasting",
    })
}

fn dec_assignor(assignor: fb::Assignor) -> Result<Assignor, EnvelopeError> {
    Assignor::from_fb(assignor).ok_or(EnvelopeError::Invalid {
        field: "assignor",
        reason: "must be sticky, range or roundrobin",
    })
}

fn enc_topic_partitions(
    fbb: &mut Fbb,
    items: &[TopicPartitions],
) -> WIPOffset<Vector<'static, ForwardsUOffset<fb::TopicPartitions<'static>>>> {
    let offsets: Vec<_> = items
        .iter()
        .map(|tp| {
            let topic = fbb.create_string(&tp.topic);
            let partitions = fbb.create_vector(&tp.partitions);
            fb::TopicPartitions::create(
                fbb,
                &fb::TopicPartitionsArgs {
                    topic: Some(topic),
                    partitions: Some(partitions),
                },
            )
        })
        .collect();
    fbb.create_vector(&offsets)
}

fn dec_topic_partitions(
    v: Option<Vector<'_, ForwardsUOffset<fb::TopicPartitions<'_>>>>,
) -> Vec<TopicPartitions> {
    v.map(|v| {
        v.iter()
            .map(|tp| TopicPartitions {
                topic: tp.topic().to_string(),
                partitions: tp
                    .partitions()
                    .map(|p| p.iter().collect())
                    .unwrap_or_default(),
            })
            .collect()
    })
    .unwrap_or_default()
}

fn enc_committed_offsets(
    fbb: &mut Fbb,
    items: &[CommittedOffset],
) -> WIPOffset<Vector<'static, ForwardsUOffset<fb::CommittedOffset<'static>>>> {
    let offsets: Vec<_> = items
        .iter()
        .map(|c| {
            let topic = fbb.create_string(&c.topic);
            let metadata = enc_opt_string(fbb, &c.metadata);
            let instance_id = enc_opt_string(fbb, &c.instance_id);
            fb::CommittedOffset::create(
                fbb,
                &fb::CommittedOffsetArgs {
                    topic: Some(topic),
                    partition: c.partition,
                    offset: c.offset,
                    metadata,
                    commit_time_ms: c.commit_time_ms,
                    instance_id,
                },
            )
        })
        .collect();
    fbb.create_vector(&offsets)
}

fn dec_committed_offsets(
    v: Option<Vector<'_, ForwardsUOffset<fb::CommittedOffset<'_>>>>,
) -> Vec<CommittedOffset> {
    v.map(|v| {
        v.iter()
            .map(|c| CommittedOffset {
                topic: c.topic().to_string(),
                partition: c.partition(),
                offset: c.offset(),
                metadata: c.metadata().unwrap_or("").to_string(),
                commit_time_ms: c.commit_time_ms(),
                instance_id: c.instance_id().unwrap_or("").to_string(),
            })
            .collect()
    })
    .unwrap_or_default()
}

// ---- Fetch fencing

/// The `group`, `member_id` and `generation` fields of a `FetchRequest`.
pub(crate) type FetchFenceFields = (
    Option<WIPOffset<&'static str>>,
    Option<WIPOffset<&'static str>>,
    i32,
);

pub(crate) fn encode_fetch_fence(fbb: &mut Fbb, fence: &Option<FetchFence>) -> FetchFenceFields {
    match fence {
        Some(f) => (
            Some(fbb.create_string(&f.group)),
            Some(fbb.create_string(&f.member_id)),
            f.generation,
        ),
        None => (None, None, NO_GENERATION),
    }
}

/// `Some` iff the fetch names a (non-empty) group.
pub(crate) fn decode_fetch_fence(f: &fb::FetchRequest<'_>) -> Option<FetchFence> {
    let group = f.group().filter(|g| !g.is_empty())?;
    Some(FetchFence {
        group: group.to_string(),
        member_id: f.member_id().unwrap_or("").to_string(),
        generation: f.generation(),
    })
}

// ---- FindCoordinator

pub(crate) fn encode_find_coordinator_request(
    fbb: &mut Fbb,
    r: &FindCoordinatorRequest,
) -> WIPOffset<fb::FindCoordinatorRequest<'static>> {
    let group = fbb.create_string(&r.group);
    fb::FindCoordinatorRequest::create(fbb, &fb::FindCoordinatorRequestArgs { group: Some(group) })
}

pub(crate) fn decode_find_coordinator_request(
    r: fb::FindCoordinatorRequest<'_>,
) -> Result<FindCoordinatorRequest, EnvelopeError> {
    Ok(FindCoordinatorRequest {
        group: r.group().to_string(),
    })
}

pub(crate) fn encode_find_coordinator_response(
    fbb: &mut Fbb,
    r: &FindCoordinatorResponse,
) -> WIPOffset<fb::FindCoordinatorResponse<'static>> {
    let host = fbb.create_string(&r.host);
    fb::FindCoordinatorResponse::create(
        fbb,
        &fb::FindCoordinatorResponseArgs {
            shard: r.shard,
            host: Some(host),
            port: r.port,
            offsets_partition: r.offsets_partition,
        },
    )
}

pub(crate) fn decode_find_coordinator_response(
    r: fb::FindCoordinatorResponse<'_>,
) -> Result<FindCoordinatorResponse, EnvelopeError> {
    Ok(FindCoordinatorResponse {
        shard: r.shard(),
        host: r.host().unwrap_or("").to_string(),
        port: r.port(),
        offsets_partition: r.offsets_partition(),
    })
}

// ---- JoinGroup

pub(crate) fn encode_join_group_request(
    fbb: &mut Fbb,
    r: &JoinGroupRequest,
) -> WIPOffset<fb::JoinGroupRequest<'static>> {
    let group = fbb.create_string(&r.group);
    let member_id = enc_opt_string(fbb, &r.member_id);
    let instance_id = enc_opt_string(fbb, &r.instance_id);
    let client_id = enc_opt_string(fbb, &r.client_id);
    let topics = enc_strings(fbb, &r.topics);
    let protocol_type = enc_opt_string(fbb, &r.protocol_type);
    let protocols: Vec<_> = r
        .protocols
        .iter()
        .map(|p| {
            let name = fbb.create_string(&p.name);
            let metadata = fbb.create_vector(&p.metadata);
            fb::GroupProtocol::create(
                fbb,
                &fb::GroupProtocolArgs {
                    name: Some(name),
                    metadata: Some(metadata),
                },
            )
        })
        .collect();
    let protocols = (!protocols.is_empty()).then(|| fbb.create_vector(&protocols));
    fb::JoinGroupRequest::create(
        fbb,
        &fb::JoinGroupRequestArgs {
            group: Some(group),
            member_id,
            instance_id,
            client_id,
            mode: r.mode.to_fb(),
            assignor: r.assignor.to_fb(),
            topics: Some(topics),
            session_timeout_ms: r.session_timeout_ms,
            rebalance_timeout_ms: r.rebalance_timeout_ms,
            protocol_type,
            protocols,
        },
    )
}

pub(crate) fn decode_join_group_request(
    r: fb::JoinGroupRequest<'_>,
) -> Result<JoinGroupRequest, EnvelopeError> {
    Ok(JoinGroupRequest {
        group: r.group().to_string(),
        member_id: r.member_id().unwrap_or("").to_string(),
        instance_id: r.instance_id().unwrap_or("").to_string(),
        client_id: r.client_id().unwrap_or("").to_string(),
        mode: dec_mode(r.mode())?,
        assignor: dec_assignor(r.assignor())?,
        topics: dec_strings(r.topics()),
        session_timeout_ms: r.session_timeout_ms(),
        rebalance_timeout_ms: r.rebalance_timeout_ms(),
        protocol_type: r.protocol_type().unwrap_or("").to_string(),
        protocols: r
            .protocols()
            .map(|v| {
                v.iter()
                    .map(|p| GroupProtocol {
                        name: p.name().to_string(),
                        metadata: dec_bytes(p.metadata()),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    })
}

pub(crate) fn encode_join_group_response(
    fbb: &mut Fbb,
    r: &JoinGroupResponse,
) -> WIPOffset<fb::JoinGroupResponse<'static>> {
    let member_id = fbb.create_string(&r.member_id);
    let assignment = enc_topic_partitions(fbb, &r.assignment);
    let protocol_name = enc_opt_string(fbb, &r.protocol_name);
    let leader_id = enc_opt_string(fbb, &r.leader_id);
    let members: Vec<_> = r
        .members
        .iter()
        .map(|m| {
            let member_id = fbb.create_string(&m.member_id);
            let instance_id = enc_opt_string(fbb, &m.instance_id);
            let metadata = fbb.create_vector(&m.metadata);
            fb::JoinGroupMember::create(
                fbb,
                &fb::JoinGroupMemberArgs {
                    member_id: Some(member_id),
                    instance_id,
                    metadata: Some(metadata),
                },
            )
        })
        .collect();
    let members = (!members.is_empty()).then(|| fbb.create_vector(&members));
    fb::JoinGroupResponse::create(
        fbb,
        &fb::JoinGroupResponseArgs {
            member_id: Some(member_id),
            generation: r.generation,
            mode: r.mode.to_fb(),
            assignor: r.assignor.to_fb(),
            assignment: Some(assignment),
            heartbeat_interval_ms: r.heartbeat_interval_ms,
            session_timeout_ms: r.session_timeout_ms,
            member_count: r.member_count,
            protocol_name,
            leader_id,
            members,
        },
    )
}

pub(crate) fn decode_join_group_response(
    r: fb::JoinGroupResponse<'_>,
) -> Result<JoinGroupResponse, EnvelopeError> {
    Ok(JoinGroupResponse {
        member_id: r.member_id().unwrap_or("").to_string(),
        generation: r.generation(),
        mode: dec_mode(r.mode())?,
        assignor: dec_assignor(r.assignor())?,
        assignment: dec_topic_partitions(r.assignment()),
        heartbeat_interval_ms: r.heartbeat_interval_ms(),
        session_timeout_ms: r.session_timeout_ms(),
        member_count: r.member_count(),
        protocol_name: r.protocol_name().unwrap_or("").to_string(),
        leader_id: r.leader_id().unwrap_or("").to_string(),
        members: r
            .members()
            .map(|v| {
                v.iter()
                    .map(|m| JoinGroupMember {
                        member_id: m.member_id().to_string(),
                        instance_id: m.instance_id().unwrap_or("").to_string(),
                        metadata: dec_bytes(m.metadata()),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    })
}

// ---- Heartbeat, LeaveGroup (their responses are empty tables)

pub(crate) fn encode_heartbeat_request(
    fbb: &mut Fbb,
    r: &HeartbeatRequest,
) -> WIPOffset<fb::HeartbeatRequest<'static>> {
    let group = fbb.create_string(&r.group);
    let member_id = fbb.create_string(&r.member_id);
    fb::HeartbeatRequest::create(
        fbb,
        &fb::HeartbeatRequestArgs {
            group: Some(group),
            member_id: Some(member_id),
            generation: r.generation,
        },
    )
}

pub(crate) fn decode_heartbeat_request(
    r: fb::HeartbeatRequest<'_>,
) -> Result<HeartbeatRequest, EnvelopeError> {
    Ok(HeartbeatRequest {
        group: r.group().to_string(),
        member_id: r.member_id().to_string(),
        generation: r.generation(),
    })
}

pub(crate) fn encode_leave_group_request(
    fbb: &mut Fbb,
    r: &LeaveGroupRequest,
) -> WIPOffset<fb::LeaveGroupRequest<'static>> {
    let group = fbb.create_string(&r.group);
    let member_id = fbb.create_string(&r.member_id);
    fb::LeaveGroupRequest::create(
        fbb,
        &fb::LeaveGroupRequestArgs {
            group: Some(group),
            member_id: Some(member_id),
        },
    )
}

pub(crate) fn decode_leave_group_request(
    r: fb::LeaveGroupRequest<'_>,
) -> Result<LeaveGroupRequest, EnvelopeError> {
    Ok(LeaveGroupRequest {
        group: r.group().to_string(),
        member_id: r.member_id().to_string(),
    })
}

// ---- OffsetCommit

pub(crate) fn encode_offset_commit_request(
    fbb: &mut Fbb,
    r: &OffsetCommitRequest,
) -> WIPOffset<fb::OffsetCommitRequest<'static>> {
    let group = fbb.create_string(&r.group);
    let member_id = enc_opt_string(fbb, &r.member_id);
    let instance_id = enc_opt_string(fbb, &r.instance_id);
    let topics: Vec<_> = r
        .topics
        .iter()
        .map(|t| {
            let name = fbb.create_string(&t.name);
            let parts: Vec<_> = t
                .partitions
                .iter()
                .map(|p| {
                    let metadata = enc_opt_string(fbb, &p.metadata);
                    fb::OffsetCommitPartition::create(
                        fbb,
                        &fb::OffsetCommitPartitionArgs {
                            partition: p.partition,
                            offset: p.offset,
                            metadata,
                        },
                    )
                })
                .collect();
            let parts = fbb.create_vector(&parts);
            fb::OffsetCommitTopic::create(
                fbb,
                &fb::OffsetCommitTopicArgs {
                    name: Some(name),
                    partitions: Some(parts),
                },
            )
        })
        .collect();
    let topics = fbb.create_vector(&topics);
    fb::OffsetCommitRequest::create(
        fbb,
        &fb::OffsetCommitRequestArgs {
            group: Some(group),
            member_id,
            generation: r.generation,
            instance_id,
            topics: Some(topics),
        },
    )
}

pub(crate) fn decode_offset_commit_request(
    r: fb::OffsetCommitRequest<'_>,
) -> Result<OffsetCommitRequest, EnvelopeError> {
    let topics = r
        .topics()
        .map(|v| {
            v.iter()
                .map(|t| OffsetCommitTopic {
                    name: t.name().to_string(),
                    partitions: t
                        .partitions()
                        .map(|ps| {
                            ps.iter()
                                .map(|p| OffsetCommitPartition {
                                    partition: p.partition(),
                                    offset: p.offset(),
                                    metadata: p.metadata().unwrap_or("").to_string(),
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(OffsetCommitRequest {
        group: r.group().to_string(),
        member_id: r.member_id().unwrap_or("").to_string(),
        generation: r.generation(),
        instance_id: r.instance_id().unwrap_or("").to_string(),
        topics,
    })
}

pub(crate) fn encode_offset_commit_response(
    fbb: &mut Fbb,
    r: &OffsetCommitResponse,
) -> WIPOffset<fb::OffsetCommitResponse<'static>> {
    let topics: Vec<_> = r
        .topics
        .iter()
        .map(|t| {
            let name = fbb.create_string(&t.name);
            let parts: Vec<_> = t
                .partitions
                .iter()
                .map(|p| {
                    let error = enc_error(fbb, &p.error);
                    fb::OffsetCommitPartitionResult::create(
                        fbb,
                        &fb::OffsetCommitPartitionResultArgs {
                            partition: p.partition,
                            error,
                        },
                    )
                })
                .collect();
            let parts = fbb.create_vector(&parts);
            fb::OffsetCommitTopicResult::create(
                fbb,
                &fb::OffsetCommitTopicResultArgs {
                    name: Some(name),
                    partitions: Some(parts),
                },
            )
        })
        .collect();
    let topics = fbb.create_vector(&topics);
    fb::OffsetCommitResponse::create(
        fbb,
        &fb::OffsetCommitResponseArgs {
            topics: Some(topics),
        },
    )
}

pub(crate) fn decode_offset_commit_response(
    r: fb::OffsetCommitResponse<'_>,
) -> Result<OffsetCommitResponse, EnvelopeError> {
    Ok(OffsetCommitResponse {
        topics: r
            .topics()
            .map(|v| {
                v.iter()
                    .map(|t| OffsetCommitTopicResult {
                        name: t.name().unwrap_or("").to_string(),
                        partitions: t
                            .partitions()
                            .map(|ps| {
                                ps.iter()
                                    .map(|p| OffsetCommitPartitionResult {
                                        partition: p.partition(),
                                        error: dec_error(p.error()),
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

// ---- OffsetFetch

pub(crate) fn encode_offset_fetch_request(
    fbb: &mut Fbb,
    r: &OffsetFetchRequest,
) -> WIPOffset<fb::OffsetFetchRequest<'static>> {
    let group = fbb.create_string(&r.group);
    let instance_id = enc_opt_string(fbb, &r.instance_id);
    let topics = r.topics.as_ref().map(|t| enc_strings(fbb, t));
    fb::OffsetFetchRequest::create(
        fbb,
        &fb::OffsetFetchRequestArgs {
            group: Some(group),
            instance_id,
            topics,
        },
    )
}

pub(crate) fn decode_offset_fetch_request(
    r: fb::OffsetFetchRequest<'_>,
) -> Result<OffsetFetchRequest, EnvelopeError> {
    Ok(OffsetFetchRequest {
        group: r.group().to_string(),
        instance_id: r.instance_id().unwrap_or("").to_string(),
        topics: r.topics().map(|t| t.iter().map(str::to_string).collect()),
    })
}

pub(crate) fn encode_offset_fetch_response(
    fbb: &mut Fbb,
    r: &OffsetFetchResponse,
) -> WIPOffset<fb::OffsetFetchResponse<'static>> {
    let offsets = enc_committed_offsets(fbb, &r.offsets);
    fb::OffsetFetchResponse::create(
        fbb,
        &fb::OffsetFetchResponseArgs {
            offsets: Some(offsets),
        },
    )
}

pub(crate) fn decode_offset_fetch_response(
    r: fb::OffsetFetchResponse<'_>,
) -> Result<OffsetFetchResponse, EnvelopeError> {
    Ok(OffsetFetchResponse {
        offsets: dec_committed_offsets(r.offsets()),
    })
}

// ---- ListGroups (the request is an empty table)

pub(crate) fn encode_list_groups_response(
    fbb: &mut Fbb,
    r: &ListGroupsResponse,
) -> WIPOffset<fb::ListGroupsResponse<'static>> {
    let groups: Vec<_> = r
        .groups
        .iter()
        .map(|g| {
            let group = fbb.create_string(&g.group);
            let state = fbb.create_string(&g.state);
            fb::GroupListing::create(
                fbb,
                &fb::GroupListingArgs {
                    group: Some(group),
                    state: Some(state),
                    mode: g.mode.to_fb(),
                    generation: g.generation,
                    members: g.members,
                    coordinator_shard: g.coordinator_shard,
                },
            )
        })
        .collect();
    let groups = fbb.create_vector(&groups);
    fb::ListGroupsResponse::create(
        fbb,
        &fb::ListGroupsResponseArgs {
            groups: Some(groups),
        },
    )
}

pub(crate) fn decode_list_groups_response(
    r: fb::ListGroupsResponse<'_>,
) -> Result<ListGroupsResponse, EnvelopeError> {
    let groups = r
        .groups()
        .map(|v| {
            v.iter()
                .map(|g| {
                    Ok(GroupListing {
                        group: g.group().to_string(),
                        state: g.state().unwrap_or("").to_string(),
                        mode: dec_mode(g.mode())?,
                        generation: g.generation(),
                        members: g.members(),
                        coordinator_shard: g.coordinator_shard(),
                    })
                })
                .collect::<Result<Vec<_>, EnvelopeError>>()
        })
        .transpose()?
        .unwrap_or_default();
    Ok(ListGroupsResponse { groups })
}

// ---- DescribeGroup

pub(crate) fn encode_describe_group_request(
    fbb: &mut Fbb,
    r: &DescribeGroupRequest,
) -> WIPOffset<fb::DescribeGroupRequest<'static>> {
    let group = fbb.create_string(&r.group);
    fb::DescribeGroupRequest::create(fbb, &fb::DescribeGroupRequestArgs { group: Some(group) })
}

pub(crate) fn decode_describe_group_request(
    r: fb::DescribeGroupRequest<'_>,
) -> Result<DescribeGroupRequest, EnvelopeError> {
    Ok(DescribeGroupRequest {
        group: r.group().to_string(),
    })
}

pub(crate) fn encode_describe_group_response(
    fbb: &mut Fbb,
    r: &DescribeGroupResponse,
) -> WIPOffset<fb::DescribeGroupResponse<'static>> {
    let group = fbb.create_string(&r.group);
    let state = fbb.create_string(&r.state);
    let members: Vec<_> = r
        .members
        .iter()
        .map(|m| {
            let member_id = fbb.create_string(&m.member_id);
            let instance_id = enc_opt_string(fbb, &m.instance_id);
            let client_id = enc_opt_string(fbb, &m.client_id);
            let topics = enc_strings(fbb, &m.topics);
            let assignment = enc_topic_partitions(fbb, &m.assignment);
            let metadata = (!m.metadata.is_empty()).then(|| fbb.create_vector(&m.metadata));
            let assignment_bytes =
                (!m.assignment_bytes.is_empty()).then(|| fbb.create_vector(&m.assignment_bytes));
            fb::GroupMember::create(
                fbb,
                &fb::GroupMemberArgs {
                    member_id: Some(member_id),
                    instance_id,
                    client_id,
                    topics: Some(topics),
                    assignment: Some(assignment),
                    since_heartbeat_ms: m.since_heartbeat_ms,
                    metadata,
                    assignment_bytes,
                },
            )
        })
        .collect();
    let members = fbb.create_vector(&members);
    let offsets = enc_committed_offsets(fbb, &r.offsets);
    let protocol_type = enc_opt_string(fbb, &r.protocol_type);
    let protocol_name = enc_opt_string(fbb, &r.protocol_name);
    fb::DescribeGroupResponse::create(
        fbb,
        &fb::DescribeGroupResponseArgs {
            group: Some(group),
            state: Some(state),
            mode: r.mode.to_fb(),
            assignor: r.assignor.to_fb(),
            generation: r.generation,
            coordinator_shard: r.coordinator_shard,
            members: Some(members),
            offsets: Some(offsets),
            protocol_type,
            protocol_name,
        },
    )
}

pub(crate) fn decode_describe_group_response(
    r: fb::DescribeGroupResponse<'_>,
) -> Result<DescribeGroupResponse, EnvelopeError> {
    let members = r
        .members()
        .map(|v| {
            v.iter()
                .map(|m| GroupMember {
                    member_id: m.member_id().to_string(),
                    instance_id: m.instance_id().unwrap_or("").to_string(),
                    client_id: m.client_id().unwrap_or("").to_string(),
                    topics: dec_strings(m.topics()),
                    assignment: dec_topic_partitions(m.assignment()),
                    since_heartbeat_ms: m.since_heartbeat_ms(),
                    metadata: dec_bytes(m.metadata()),
                    assignment_bytes: dec_bytes(m.assignment_bytes()),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(DescribeGroupResponse {
        group: r.group().to_string(),
        state: r.state().unwrap_or("").to_string(),
        mode: dec_mode(r.mode())?,
        assignor: dec_assignor(r.assignor())?,
        generation: r.generation(),
        coordinator_shard: r.coordinator_shard(),
        members,
        offsets: dec_committed_offsets(r.offsets()),
        protocol_type: r.protocol_type().unwrap_or("").to_string(),
        protocol_name: r.protocol_name().unwrap_or("").to_string(),
    })
}

// ---- DeleteGroup (the response is an empty table)

pub(crate) fn encode_delete_group_request(
    fbb: &mut Fbb,
    r: &DeleteGroupRequest,
) -> WIPOffset<fb::DeleteGroupRequest<'static>> {
    let group = fbb.create_string(&r.group);
    fb::DeleteGroupRequest::create(fbb, &fb::DeleteGroupRequestArgs { group: Some(group) })
}

pub(crate) fn decode_delete_group_request(
    r: fb::DeleteGroupRequest<'_>,
) -> Result<DeleteGroupRequest, EnvelopeError> {
    Ok(DeleteGroupRequest {
        group: r.group().to_string(),
    })
}

// ---- SyncGroup (client-side assignment)

fn dec_bytes(v: Option<Vector<'_, u8>>) -> Vec<u8> {
    v.map(|v| v.bytes().to_vec()).unwrap_or_default()
}

pub(crate) fn encode_sync_group_request(
    fbb: &mut Fbb,
    r: &SyncGroupRequest,
) -> WIPOffset<fb::SyncGroupRequest<'static>> {
    let group = fbb.create_string(&r.group);
    let member_id = fbb.create_string(&r.member_id);
    let assignments: Vec<_> = r
        .assignments
        .iter()
        .map(|a| {
            let member_id = fbb.create_string(&a.member_id);
            let assignment = fbb.create_vector(&a.assignment);
            let partitions = enc_topic_partitions(fbb, &a.partitions);
            fb::MemberAssignment::create(
                fbb,
                &fb::MemberAssignmentArgs {
                    member_id: Some(member_id),
                    assignment: Some(assignment),
                    partitions: Some(partitions),
                },
            )
        })
        .collect();
    let assignments = fbb.create_vector(&assignments);
    fb::SyncGroupRequest::create(
        fbb,
        &fb::SyncGroupRequestArgs {
            group: Some(group),
            member_id: Some(member_id),
            generation: r.generation,
            assignments: Some(assignments),
        },
    )
}

pub(crate) fn decode_sync_group_request(
    r: fb::SyncGroupRequest<'_>,
) -> Result<SyncGroupRequest, EnvelopeError> {
    Ok(SyncGroupRequest {
        group: r.group().to_string(),
        member_id: r.member_id().to_string(),
        generation: r.generation(),
        assignments: r
            .assignments()
            .map(|v| {
                v.iter()
                    .map(|a| MemberAssignment {
                        member_id: a.member_id().to_string(),
                        assignment: dec_bytes(a.assignment()),
                        partitions: dec_topic_partitions(a.partitions()),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    })
}

pub(crate) fn encode_sync_group_response(
    fbb: &mut Fbb,
    r: &SyncGroupResponse,
) -> WIPOffset<fb::SyncGroupResponse<'static>> {
    let protocol_name = enc_opt_string(fbb, &r.protocol_name);
    let assignment = fbb.create_vector(&r.assignment);
    fb::SyncGroupResponse::create(
        fbb,
        &fb::SyncGroupResponseArgs {
            protocol_name,
            assignment: Some(assignment),
        },
    )
}

pub(crate) fn decode_sync_group_response(r: fb::SyncGroupResponse<'_>) -> SyncGroupResponse {
    SyncGroupResponse {
        protocol_name: r.protocol_name().unwrap_or("").to_string(),
        assignment: dec_bytes(r.assignment()),
    }
}
