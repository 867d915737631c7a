//! The membership state machine of one consumer group (DESIGN.md 3.5).
//!
//! Pure: time comes in as `now_ms`, nothing here does I/O or waits. The
//! shard glue (`shard/group.rs`) persists, notifies waiting joins and
//! syncs, and pushes fences; unit tests drive this directly.
//!
//! The protocol is the eager one of Kafka's classic groups. A group is one
//! of two kinds, fixed while it has members:
//!
//! * **server-assigned** (native consumers): the assignment is computed
//!   here and every JoinGroup response carries the member's partitions.
//! * **client-assigned** (the join names a `protocol_type`, e.g. Kafka's
//!   "consumer"): the coordinator chooses a protocol all members support,
//!   elects a leader and hands it every member's metadata; the leader
//!   computes the assignment and sends it in its SyncGroup, which the
//!   coordinator relays to the other members' SyncGroups.
//!
//! ```text
//!            join / leave / expiry / partition-count change
//!   Empty ──────────────▶ PreparingRebalance ──(all members rejoined, or
//!   Stable ─────────────▶        │             the rebalance deadline passed)
//!     ▲                          ▼  generation + 1
//!     │  server-assigned: assignment computed here
//!     ├──────────────────────────┤
//!     │  client-assigned:        ▼
//!     └── leader's SyncGroup ── CompletingRebalance (members wait in SyncGroup)
//! ```
//!
//! A member learns of a rebalance from its heartbeat (RebalanceInProgress);
//! it then gives up everything it owns (committing first) and rejoins. The
//! rebalance completes only once every member has rejoined or been dropped,
//! so two members of one generation never own the same partition (for a
//! client-assigned group: as long as its leader's assignor says so), and a
//! member that was dropped is fenced: its generation is gone.
//!
//! CompletingRebalance is bounded like Kafka bounds it: the leader's session
//! keeps expiring while it does not sync, and members that have not sent
//! SyncGroup within the rebalance timeout of the generation's start are
//! dropped (Kafka's "pending sync" timeout), which starts a new rebalance.

use std::collections::BTreeMap;

use ringmq_wire::error::{ApiError, ErrorCode};
use ringmq_wire::group_api::{
    Assignor, GroupMode, GroupProtocol, JoinGroupMember, JoinGroupRequest, JoinGroupResponse,
    MemberAssignment, SyncGroupRequest, SyncGroupResponse, TopicPartitions,
};

use super::assignor::{self, MemberInput};
use super::offsets::{Committed, GroupMeta, OffsetKey, MAX_GROUP_STRING_BYTES};

/// Most protocols one member of a client-assigned group may offer.
pub const MAX_PROTOCOLS_PER_MEMBER: usize = 64;
/// Largest protocol metadata or assignment the coordinator keeps for one
/// member (bytes). Kafka's consumer metadata is its topic list plus user
/// data; 1 MiB leaves room for thousands of topics while bounding what a
/// group of `max_members` members can hold.
pub const MAX_PROTOCOL_BYTES: usize = 1 << 20;

/// Bounds and defaults of group sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupSettings {
    pub min_session_timeout_ms: u32,
    pub max_session_timeout_ms: u32,
    /// Upper bound on how long a rebalance waits for members to rejoin.
    pub max_rebalance_timeout_ms: u32,
    /// Most members one group may have.
    pub max_members: usize,
}

impl Default for GroupSettings {
    fn default() -> GroupSettings {
        GroupSettings {
            min_session_timeout_ms: 1_000,
            max_session_timeout_ms: 300_000,
            max_rebalance_timeout_ms: 300_000,
            max_members: 1_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    /// No members; offsets may still be stored.
    Empty,
    /// Waiting for members to rejoin.
    PreparingRebalance,
    /// Client-assigned groups only: a new generation began and the members
    /// wait for the leader's assignment (SyncGroup).
    CompletingRebalance,
    /// Every member has its assignment for the current generation.
    Stable,
}

impl GroupState {
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "empty",
            GroupState::PreparingRebalance => "preparing_rebalance",
            GroupState::CompletingRebalance => "completing_rebalance",
            GroupState::Stable => "stable",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Member {
    pub member_id: String,
    pub instance_id: String,
    pub client_id: String,
    /// Sorted, without duplicates.
    pub topics: Vec<String>,
    pub session_timeout_ms: u32,
    pub rebalance_timeout_ms: u32,
    pub last_seen_ms: i64,
    /// Has (re)joined the rebalance in progress and waits for its outcome.
    pub awaiting_join: bool,
    /// Sorted; owned in the current generation. Client-assigned groups:
    /// the decoded form of `assignment_bytes`, as the leader sent it.
    pub assignment: Vec<(String, u32)>,
    /// Client-assigned groups: the protocols this member supports, in its
    /// order of preference, names unique.
    pub protocols: Vec<GroupProtocol>,
    /// Client-assigned groups: the leader's opaque assignment for it.
    pub assignment_bytes: Vec<u8>,
    /// Client-assigned groups: sent SyncGroup during CompletingRebalance and
    /// waits for the leader's. Like one waiting in a join, it is kept alive.
    pub awaiting_sync: bool,
    /// Client-assigned groups: has not sent SyncGroup yet in the current
    /// generation; dropped if still so at the group's sync deadline.
    pub sync_pending: bool,
}

impl Member {
    pub fn assignment_by_topic(&self) -> Vec<TopicPartitions> {
        group_by_topic(&self.assignment)
    }

    /// Its metadata for `protocol` (empty if it does not support it).
    pub fn metadata_for(&self, protocol: &str) -> &[u8] {
        self.protocols
            .iter()
            .find(|p| p.name == protocol)
            .map(|p| p.metadata.as_slice())
            .unwrap_or_default()
    }

    fn supports(&self, protocol: &str) -> bool {
        self.protocols.iter().any(|p| p.name == protocol)
    }
}

/// Groups sorted (topic, partition) pairs by topic.
pub fn group_by_topic(pairs: &[(String, u32)]) -> Vec<TopicPartitions> {
    let mut out: Vec<TopicPartitions> = Vec::new();
    for (topic, partition) in pairs {
        match out.last_mut() {
            Some(last) if &last.topic == topic => last.partitions.push(*partition),
            _ => out.push(TopicPartitions {
                topic: topic.clone(),
                partitions: vec![*partition],
            }),
        }
    }
    out
}

/// Sorted, duplicate-free (topic, partition) pairs of `by_topic`.
fn flatten(by_topic: &[TopicPartitions]) -> Vec<(String, u32)> {
    let mut pairs: Vec<(String, u32)> = by_topic
        .iter()
        .flat_map(|t| t.partitions.iter().map(move |p| (t.topic.clone(), *p)))
        .collect();
    pairs.sort();
    pairs.dedup();
    pairs
}

#[derive(Debug, Clone)]
pub struct Group {
    pub name: String,
    pub mode: GroupMode,
    pub assignor: Assignor,
    pub state: GroupState,
    pub generation: i32,
    pub members: BTreeMap<String, Member>,
    /// Committed offsets, durable in `__consumer_offsets`.
    pub offsets: BTreeMap<OffsetKey, Committed>,
    /// Empty: server-assigned. Otherwise the members assign partitions
    /// themselves (e.g. Kafka's "consumer"). Set by the first member to
    /// join an empty group and kept while empty, for describe (not
    /// persisted: after a restart no member is left to be inconsistent with).
    pub protocol_type: String,
    /// Client-assigned: the protocol chosen for the current generation
    /// ("" while the group has no generation with members).
    pub protocol_name: String,
    /// Client-assigned: the member that computes the assignment ("" when
    /// none).
    pub leader_id: String,
    rebalance_deadline_ms: i64,
    /// Client-assigned: members still `sync_pending` at this time are
    /// dropped (CompletingRebalance and Stable).
    sync_deadline_ms: i64,
    /// Partition counts of the subscribed topics the assignment was made for.
    assigned_counts: BTreeMap<String, u32>,
}

/// What `join` tells the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    pub member_id: String,
}

fn err(code: ErrorCode, message: String) -> ApiError {
    ApiError::new(code, message)
}

fn invalid(message: String) -> ApiError {
    err(ErrorCode::InvalidRequest, message)
}

fn rebalance_in_progress(group: &str) -> ApiError {
    err(
        ErrorCode::RebalanceInProgress,
        format!("group {group:?} is rebalancing; commit, give up your partitions and rejoin"),
    )
}

impl Group {
    pub fn new(name: String, meta: Option<GroupMeta>) -> Group {
        let meta = meta.unwrap_or(GroupMeta {
            generation: 0,
            mode: GroupMode::Clustering,
            assignor: Assignor::Sticky,
        });
        Group {
            name,
            mode: meta.mode,
            assignor: meta.assignor,
            state: GroupState::Empty,
            generation: meta.generation,
            members: BTreeMap::new(),
            offsets: BTreeMap::new(),
            protocol_type: String::new(),
            protocol_name: String::new(),
            leader_id: String::new(),
            rebalance_deadline_ms: 0,
            sync_deadline_ms: 0,
            assigned_counts: BTreeMap::new(),
        }
    }

    pub fn meta(&self) -> GroupMeta {
        GroupMeta {
            generation: self.generation,
            mode: self.mode,
            assignor: self.assignor,
        }
    }

    /// Whether the members assign partitions themselves (SyncGroup).
    pub fn is_client_assigned(&self) -> bool {
        !self.protocol_type.is_empty()
    }

    /// Registers a (re)join and starts a rebalance if none is in progress.
    /// The caller then calls [`Group::try_complete`] and, until
    /// [`Group::join_outcome`] has one, waits for a completion.
    ///
    /// A known member of a client-assigned group that rejoins with the
    /// protocols it joined with gets the current generation back without a
    /// rebalance (during CompletingRebalance, and in Stable unless it is the
    /// leader), as Kafka does: that is how a client retries a JoinGroup
    /// whose answer it lost. A leader rejoining a stable group asks for a
    /// new assignment (Kafka's leader does so when it sees metadata change).
    pub fn join(
        &mut self,
        request: &JoinGroupRequest,
        settings: &GroupSettings,
        new_member_id: impl FnOnce() -> String,
        now_ms: i64,
    ) -> Result<Joined, ApiError> {
        let session = request.session_timeout_ms;
        if session < settings.min_session_timeout_ms || session > settings.max_session_timeout_ms {
            return Err(err(
                ErrorCode::InvalidSessionTimeout,
                format!(
                    "session timeout {session} ms is outside the broker's bounds {}..={} ms",
                    settings.min_session_timeout_ms, settings.max_session_timeout_ms
                ),
            ));
        }
        let protocols = self.check_protocols(request)?;
        if !self.members.is_empty() && request.mode != self.mode {
            return Err(err(
                ErrorCode::InconsistentGroupMode,
                format!(
                    "group {:?} is consuming in {} mode; a member cannot join it in {} mode (use another group name)",
                    self.name,
                    self.mode.name(),
                    request.mode.name()
                ),
            ));
        }
        let member_id = if request.member_id.is_empty() {
            if self.members.len() >= settings.max_members {
                return Err(err(
                    ErrorCode::InvalidRequest,
                    format!(
                        "group {:?} already has {} members, the most one group may have",
                        self.name, settings.max_members
                    ),
                ));
            }
            new_member_id()
        } else if self.members.contains_key(&request.member_id) {
            request.member_id.clone()
        } else {
            return Err(self.unknown_member(&request.member_id));
        };
        if self.members.is_empty() {
            self.mode = request.mode;
            self.assignor = request.assignor;
            self.protocol_type = request.protocol_type.clone();
        }
        assert_eq!(self.protocol_type, request.protocol_type);
        let mut topics = request.topics.clone();
        topics.sort();
        topics.dedup();
        if let Some(member) = self.members.get_mut(&member_id) {
            let settled = matches!(
                self.state,
                GroupState::CompletingRebalance | GroupState::Stable
            );
            let is_leader = member_id == self.leader_id;
            let unchanged = member.protocols == protocols && member.topics == topics;
            if !protocols.is_empty()
                && settled
                && unchanged
                && !(self.state == GroupState::Stable && is_leader)
            {
                member.last_seen_ms = now_ms;
                return Ok(Joined { member_id });
            }
        }
        let rebalance_timeout_ms = request
            .rebalance_timeout_ms
            .clamp(1, settings.max_rebalance_timeout_ms);
        let member = self
            .members
            .entry(member_id.clone())
            .or_insert_with(|| Member {
                member_id: member_id.clone(),
                instance_id: String::new(),
                client_id: String::new(),
                topics: Vec::new(),
                session_timeout_ms: session,
                rebalance_timeout_ms,
                last_seen_ms: now_ms,
                awaiting_join: false,
                assignment: Vec::new(),
                protocols: Vec::new(),
                assignment_bytes: Vec::new(),
                awaiting_sync: false,
                sync_pending: false,
            });
        member.instance_id = request.instance_id.clone();
        member.client_id = request.client_id.clone();
        member.topics = topics;
        member.protocols = protocols;
        member.session_timeout_ms = session;
        member.rebalance_timeout_ms = rebalance_timeout_ms;
        member.last_seen_ms = now_ms;
        member.awaiting_join = true;
        self.prepare_rebalance(now_ms);
        Ok(Joined { member_id })
    }

    /// Checks that a join is of this group's kind and, for a client-assigned
    /// one, that it shares a protocol with every other member. Returns its
    /// protocols (names unique, first occurrence kept; empty for a
    /// server-assigned join).
    fn check_protocols(&self, request: &JoinGroupRequest) -> Result<Vec<GroupProtocol>, ApiError> {
        let name = &self.name;
        if !self.members.is_empty() && request.protocol_type != self.protocol_type {
            let message = match (self.is_client_assigned(), request.is_client_assigned()) {
                (false, _) => format!(
                    "group {name:?} has native consumers (partitions assigned by the broker); a member with protocol type {:?} cannot join it: use another group id, or stop those consumers first",
                    request.protocol_type
                ),
                (true, false) => format!(
                    "group {name:?} has members that assign partitions themselves (protocol type {:?}, e.g. Kafka consumers); a native consumer cannot join it: use another group id, or stop those members first",
                    self.protocol_type
                ),
                (true, true) => format!(
                    "group {name:?} has members of protocol type {:?}; a member of protocol type {:?} cannot join it: use another group id",
                    self.protocol_type, request.protocol_type
                ),
            };
            return Err(err(ErrorCode::InconsistentGroupProtocol, message));
        }
        if !request.is_client_assigned() {
            return Ok(Vec::new());
        }
        if request.protocol_type.len() > MAX_GROUP_STRING_BYTES {
            return Err(invalid("protocol type is longer than 1024 bytes".into()));
        }
        if request.mode != GroupMode::Clustering {
            return Err(invalid(format!(
                "a member with protocol type {:?} assigns partitions itself, so it cannot ask for {} mode; leave the mode at clustering",
                request.protocol_type,
                request.mode.name()
            )));
        }
        if request.protocols.len() > MAX_PROTOCOLS_PER_MEMBER {
            return Err(invalid(format!(
                "a member offers {} protocols; at most {MAX_PROTOCOLS_PER_MEMBER} are accepted",
                request.protocols.len()
            )));
        }
        let mut protocols: Vec<GroupProtocol> = Vec::with_capacity(request.protocols.len());
        for protocol in &request.protocols {
            if protocol.name.is_empty() || protocol.name.len() > MAX_GROUP_STRING_BYTES {
                return Err(invalid(
                    "protocol names must be 1..=1024 bytes long".to_string(),
                ));
            }
            if protocol.metadata.len() > MAX_PROTOCOL_BYTES {
                return Err(invalid(format!(
                    "metadata of protocol {:?} is {} bytes; at most {MAX_PROTOCOL_BYTES} are accepted",
                    protocol.name,
                    protocol.metadata.len()
                )));
            }
            // Kafka keys protocols by name; a repeated name adds nothing.
            if !protocols.iter().any(|p| p.name == protocol.name) {
                protocols.push(protocol.clone());
            }
        }
        if protocols.is_empty() {
            return Err(err(
                ErrorCode::InconsistentGroupProtocol,
                format!(
                    "a member of protocol type {:?} must offer at least one protocol (e.g. an assignor name)",
                    request.protocol_type
                ),
            ));
        }
        // Protocols every other member supports: the joiner must support
        // one of them, so the whole group always shares at least one.
        let others = self
            .members
            .values()
            .filter(|m| m.member_id != request.member_id);
        let other_count = others.clone().count();
        if other_count == 0 {
            return Ok(protocols);
        }
        let mut support: BTreeMap<&str, usize> = BTreeMap::new();
        for member in others {
            for protocol in &member.protocols {
                *support.entry(&protocol.name).or_default() += 1;
            }
        }
        let common: Vec<&str> = support
            .iter()
            .filter(|(_, n)| **n == other_count)
            .map(|(name, _)| *name)
            .collect();
        assert!(!common.is_empty(), "joins keep a protocol common to all");
        if !protocols.iter().any(|p| common.contains(&p.name.as_str())) {
            let offered: Vec<&str> = protocols.iter().map(|p| p.name.as_str()).collect();
            return Err(err(
                ErrorCode::InconsistentGroupProtocol,
                format!(
                    "group {name:?}: this member offers protocols {offered:?}, but the members of the group all support only {common:?}; configure a common assignor (e.g. partition.assignment.strategy) or use another group id"
                ),
            ));
        }
        Ok(protocols)
    }

    fn unknown_member(&self, member_id: &str) -> ApiError {
        err(
            ErrorCode::UnknownMemberId,
            format!(
                "member {member_id:?} is not in group {:?} (it left, or its session expired); rejoin with an empty member id",
                self.name
            ),
        )
    }

    fn prepare_rebalance(&mut self, now_ms: i64) {
        if self.state == GroupState::PreparingRebalance {
            return;
        }
        let timeout_ms = self
            .members
            .values()
            .map(|m| m.rebalance_timeout_ms)
            .max()
            .unwrap_or(0);
        self.state = GroupState::PreparingRebalance;
        self.rebalance_deadline_ms = now_ms + i64::from(timeout_ms);
        // Waiting SyncGroups are answered RebalanceInProgress (the glue
        // sees the state change); they are no longer kept alive for it.
        for member in self.members.values_mut() {
            member.awaiting_sync = false;
        }
        self.assert_invariants();
    }

    /// Completes the rebalance in progress if every member has rejoined or
    /// the deadline has passed (dropping the members that did not rejoin).
    /// Returns true when a new generation began.
    pub fn try_complete(&mut self, now_ms: i64, partition_counts: &BTreeMap<String, u32>) -> bool {
        if self.state != GroupState::PreparingRebalance {
            return false;
        }
        let all_joined = self.members.values().all(|m| m.awaiting_join);
        if !all_joined && now_ms < self.rebalance_deadline_ms {
            return false;
        }
        self.members.retain(|_, m| m.awaiting_join);
        self.generation = self.generation.checked_add(1).unwrap_or(1);
        if self.members.is_empty() {
            self.state = GroupState::Empty;
            self.assigned_counts.clear();
            self.protocol_name.clear();
            self.leader_id.clear();
            self.assert_invariants();
            return true;
        }
        if self.is_client_assigned() {
            self.begin_client_generation(now_ms, partition_counts);
        } else {
            self.assign(partition_counts);
            for member in self.members.values_mut() {
                member.awaiting_join = false;
                member.last_seen_ms = now_ms;
            }
            self.state = GroupState::Stable;
        }
        self.assert_invariants();
        true
    }

    /// Client-assigned: elects the leader, chooses the protocol and waits
    /// for the leader's assignment.
    fn begin_client_generation(&mut self, now_ms: i64, partition_counts: &BTreeMap<String, u32>) {
        assert!(!self.members.is_empty());
        if !self.members.contains_key(&self.leader_id) {
            // Kafka keeps a leader for as long as it is a member; the first
            // member (ids sort) keeps the choice deterministic otherwise.
            self.leader_id = self.members.keys().next().expect("not empty").clone();
        }
        self.protocol_name = self.select_protocol();
        let mut sync_timeout_ms = 0;
        for member in self.members.values_mut() {
            member.awaiting_join = false;
            member.last_seen_ms = now_ms;
            member.assignment.clear();
            member.assignment_bytes.clear();
            member.awaiting_sync = false;
            member.sync_pending = true;
            sync_timeout_ms = sync_timeout_ms.max(member.rebalance_timeout_ms);
        }
        self.sync_deadline_ms = now_ms + i64::from(sync_timeout_ms);
        self.assigned_counts = self.subscribed_counts(partition_counts);
        self.state = GroupState::CompletingRebalance;
    }

    /// Kafka's choice: every member votes for its most preferred protocol
    /// among those all members support; the most votes win. Ties go to the
    /// one the leader prefers (it runs the assignment).
    fn select_protocol(&self) -> String {
        let mut support: BTreeMap<&str, usize> = BTreeMap::new();
        for member in self.members.values() {
            for protocol in &member.protocols {
                *support.entry(&protocol.name).or_default() += 1;
            }
        }
        let all = self.members.len();
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for member in self.members.values() {
            let vote = member
                .protocols
                .iter()
                .find(|p| support.get(p.name.as_str()) == Some(&all))
                .expect("joins keep a protocol common to all members");
            *votes.entry(&vote.name).or_default() += 1;
        }
        let leader = &self.members[&self.leader_id];
        let rank = |name: &str| {
            leader
                .protocols
                .iter()
                .position(|p| p.name == name)
                .expect("supported by all members, so by the leader")
        };
        let (chosen, _) = votes
            .into_iter()
            .max_by(|(a, a_votes), (b, b_votes)| {
                a_votes.cmp(b_votes).then_with(|| rank(b).cmp(&rank(a)))
            })
            .expect("a non-empty group votes");
        chosen.to_string()
    }

    /// Partition counts of the topics some member subscribes to.
    fn subscribed_counts(&self, partition_counts: &BTreeMap<String, u32>) -> BTreeMap<String, u32> {
        partition_counts
            .iter()
            .filter(|(t, _)| self.members.values().any(|m| m.topics.contains(t)))
            .map(|(t, c)| (t.clone(), *c))
            .collect()
    }

    fn assign(&mut self, partition_counts: &BTreeMap<String, u32>) {
        assert!(!self.is_client_assigned());
        let subscribed = self.subscribed_counts(partition_counts);
        let assignment = match self.mode {
            GroupMode::Broadcasting => self
                .members
                .values()
                .map(|m| (m.member_id.clone(), all_partitions(&m.topics, &subscribed)))
                .collect(),
            GroupMode::Clustering => {
                let inputs: Vec<MemberInput<'_>> = self
                    .members
                    .values()
                    .map(|m| MemberInput {
                        member_id: &m.member_id,
                        topics: &m.topics,
                        previous: &m.assignment,
                    })
                    .collect();
                assignor::assign(self.assignor, &inputs, &subscribed)
            }
        };
        for member in self.members.values_mut() {
            member.assignment = assignment
                .get(&member.member_id)
                .cloned()
                .unwrap_or_default();
        }
        self.assigned_counts = subscribed;
        self.assert_exclusive();
    }

    /// In clustering mode no partition has two owners in one generation.
    /// (Not checked for client-assigned groups: Kafka lets an assignor
    /// share a partition, and the broker must not fail on a client's plan.)
    fn assert_exclusive(&self) {
        if self.mode != GroupMode::Clustering || self.is_client_assigned() {
            return;
        }
        let mut seen = std::collections::HashSet::new();
        for member in self.members.values() {
            for tp in &member.assignment {
                assert!(seen.insert(tp), "partition {tp:?} assigned twice");
            }
        }
    }

    /// The states and flags that must hold between operations. Linear in
    /// the members: called after state changes, not per heartbeat.
    fn assert_invariants(&self) {
        if self.state == GroupState::Empty {
            assert!(self.members.is_empty());
        }
        if self.members.is_empty() {
            // Between the last member leaving and `try_complete`.
            assert!(matches!(
                self.state,
                GroupState::Empty | GroupState::PreparingRebalance
            ));
        }
        let settled = matches!(
            self.state,
            GroupState::CompletingRebalance | GroupState::Stable
        );
        if self.is_client_assigned() {
            if settled {
                assert!(
                    self.members.contains_key(&self.leader_id),
                    "leader is a member"
                );
                assert!(self
                    .members
                    .values()
                    .all(|m| m.supports(&self.protocol_name)));
            }
        } else {
            assert_ne!(self.state, GroupState::CompletingRebalance);
            assert!(self.leader_id.is_empty() && self.protocol_name.is_empty());
        }
        for member in self.members.values() {
            assert!(!member.awaiting_join || self.state == GroupState::PreparingRebalance);
            assert!(!member.awaiting_sync || self.state == GroupState::CompletingRebalance);
            assert!(!(member.awaiting_sync && member.sync_pending));
            assert_eq!(member.protocols.is_empty(), !self.is_client_assigned());
        }
    }

    /// What a member's join gets once its rebalance is over; `None` while
    /// it still waits. The leader of a client-assigned group also gets
    /// every member with its metadata for the chosen protocol.
    pub fn join_outcome(&self, member_id: &str) -> Option<Result<JoinGroupResponse, ApiError>> {
        let Some(member) = self.members.get(member_id) else {
            return Some(Err(err(
                ErrorCode::UnknownMemberId,
                format!(
                    "member {member_id:?} was dropped from group {:?} during the rebalance; rejoin",
                    self.name
                ),
            )));
        };
        if member.awaiting_join {
            return None;
        }
        // The state may already be PreparingRebalance again (another join
        // ran between the completion and this waiter's turn): the member
        // still gets the generation it joined, and learns of the new
        // rebalance from its next heartbeat or SyncGroup.
        let members = if self.is_client_assigned() && member_id == self.leader_id {
            self.members
                .values()
                .map(|m| JoinGroupMember {
                    member_id: m.member_id.clone(),
                    instance_id: m.instance_id.clone(),
                    metadata: m.metadata_for(&self.protocol_name).to_vec(),
                })
                .collect()
        } else {
            Vec::new()
        };
        Some(Ok(JoinGroupResponse {
            member_id: member_id.to_string(),
            generation: self.generation,
            mode: self.mode,
            assignor: self.assignor,
            assignment: member.assignment_by_topic(),
            heartbeat_interval_ms: (member.session_timeout_ms / 3).max(100),
            session_timeout_ms: member.session_timeout_ms,
            member_count: self.members.len() as u32,
            protocol_name: self.protocol_name.clone(),
            leader_id: self.leader_id.clone(),
            members,
        }))
    }

    /// A SyncGroup (client-assigned groups). The leader's, during
    /// CompletingRebalance, stores every member's assignment and makes the
    /// group Stable: returns true then (a new fence is due). Afterwards the
    /// caller waits until [`Group::sync_outcome`] has an answer.
    pub fn sync(&mut self, request: &SyncGroupRequest, now_ms: i64) -> Result<bool, ApiError> {
        if !self.members.contains_key(&request.member_id) {
            return Err(self.unknown_member(&request.member_id));
        }
        if !self.is_client_assigned() {
            return Err(err(
                ErrorCode::InconsistentGroupProtocol,
                format!(
                    "group {:?} is assigned by the broker: the JoinGroup response already carries each member's partitions, and SyncGroup is only for members that joined with a protocol type",
                    self.name
                ),
            ));
        }
        if request.generation != self.generation {
            return Err(illegal_generation(
                &self.name,
                request.generation,
                self.generation,
            ));
        }
        let is_leader = request.member_id == self.leader_id;
        let state = self.state;
        let member = self
            .members
            .get_mut(&request.member_id)
            .expect("checked above");
        member.last_seen_ms = now_ms;
        match state {
            GroupState::Empty => unreachable!("an empty group has no members"),
            GroupState::PreparingRebalance => Err(rebalance_in_progress(&self.name)),
            // Kafka answers a repeated SyncGroup with the stored assignment
            // and ignores what a leader sends again.
            GroupState::Stable => {
                member.sync_pending = false;
                Ok(false)
            }
            GroupState::CompletingRebalance if !is_leader => {
                member.sync_pending = false;
                member.awaiting_sync = true;
                Ok(false)
            }
            GroupState::CompletingRebalance => {
                self.store_assignments(&request.assignments, now_ms)?;
                Ok(true)
            }
        }
    }

    /// The leader's assignment: validated whole, then stored. Members it
    /// does not name get an empty assignment and ids that are not members
    /// are ignored, as in Kafka.
    fn store_assignments(
        &mut self,
        assignments: &[MemberAssignment],
        now_ms: i64,
    ) -> Result<(), ApiError> {
        assert_eq!(self.state, GroupState::CompletingRebalance);
        let mut by_member: BTreeMap<&str, &MemberAssignment> = BTreeMap::new();
        for assignment in assignments {
            if assignment.assignment.len() > MAX_PROTOCOL_BYTES {
                return Err(invalid(format!(
                    "the assignment of member {:?} is {} bytes; at most {MAX_PROTOCOL_BYTES} are accepted",
                    assignment.member_id,
                    assignment.assignment.len()
                )));
            }
            if by_member
                .insert(&assignment.member_id, assignment)
                .is_some()
            {
                return Err(invalid(format!(
                    "the leader's SyncGroup assigns member {:?} twice; send one assignment per member",
                    assignment.member_id
                )));
            }
        }
        for member in self.members.values_mut() {
            match by_member.get(member.member_id.as_str()) {
                Some(assignment) => {
                    member.assignment_bytes = assignment.assignment.clone();
                    member.assignment = flatten(&assignment.partitions);
                }
                None => {
                    member.assignment_bytes.clear();
                    member.assignment.clear();
                }
            }
            if member.awaiting_sync {
                // It gets its answer now: its session restarts from here.
                member.awaiting_sync = false;
                member.last_seen_ms = now_ms;
            }
        }
        let leader = self
            .members
            .get_mut(&self.leader_id)
            .expect("the leader is a member");
        leader.sync_pending = false;
        self.state = GroupState::Stable;
        self.assert_invariants();
        Ok(())
    }

    /// What a member's SyncGroup of `generation` gets now; `None` while the
    /// group still waits for its leader's.
    pub fn sync_outcome(
        &self,
        member_id: &str,
        generation: i32,
    ) -> Option<Result<SyncGroupResponse, ApiError>> {
        let Some(member) = self.members.get(member_id) else {
            return Some(Err(err(
                ErrorCode::UnknownMemberId,
                format!(
                    "member {member_id:?} was dropped from group {:?} while it waited for its assignment; rejoin",
                    self.name
                ),
            )));
        };
        if generation != self.generation || self.state == GroupState::PreparingRebalance {
            // A rebalance began while it waited (Kafka answers the waiting
            // SyncGroups so when the rebalance starts).
            return Some(Err(rebalance_in_progress(&self.name)));
        }
        match self.state {
            GroupState::CompletingRebalance => None,
            GroupState::Stable => Some(Ok(SyncGroupResponse {
                protocol_name: self.protocol_name.clone(),
                assignment: member.assignment_bytes.clone(),
            })),
            GroupState::Empty | GroupState::PreparingRebalance => {
                unreachable!("a member exists and no rebalance is in progress")
            }
        }
    }

    pub fn heartbeat(
        &mut self,
        member_id: &str,
        generation: i32,
        now_ms: i64,
    ) -> Result<(), ApiError> {
        let name = self.name.clone();
        let current = self.generation;
        let state = self.state;
        let client_assigned = self.is_client_assigned();
        let Some(member) = self.members.get_mut(member_id) else {
            return Err(self.unknown_member(member_id));
        };
        if client_assigned {
            // Kafka's order: the generation first, and only a heartbeat of
            // the current generation keeps the session alive. Members may
            // heartbeat while waiting for the leader's assignment.
            if generation != current {
                return Err(illegal_generation(&name, generation, current));
            }
            member.last_seen_ms = now_ms;
            return match state {
                GroupState::PreparingRebalance => Err(rebalance_in_progress(&name)),
                GroupState::CompletingRebalance | GroupState::Stable => Ok(()),
                GroupState::Empty => unreachable!("an empty group has no members"),
            };
        }
        member.last_seen_ms = now_ms;
        if state == GroupState::PreparingRebalance {
            return Err(rebalance_in_progress(&name));
        }
        if generation != current {
            return Err(illegal_generation(&name, generation, current));
        }
        Ok(())
    }

    /// Removes a member; the others rebalance.
    pub fn leave(&mut self, member_id: &str, now_ms: i64) -> Result<(), ApiError> {
        if self.members.remove(member_id).is_none() {
            return Err(self.unknown_member(member_id));
        }
        self.prepare_rebalance(now_ms);
        Ok(())
    }

    /// Drops members whose session expired (not those waiting in a join:
    /// the rebalance deadline bounds them; nor those waiting in a sync: the
    /// leader's session and the sync deadline bound them), and, past the
    /// sync deadline, members of a client-assigned group that never sent
    /// SyncGroup. Returns how many were dropped.
    pub fn expire(&mut self, now_ms: i64) -> usize {
        let sync_overdue = self.is_client_assigned()
            && matches!(
                self.state,
                GroupState::CompletingRebalance | GroupState::Stable
            )
            && now_ms >= self.sync_deadline_ms;
        let before = self.members.len();
        self.members.retain(|_, m| {
            if sync_overdue && m.sync_pending {
                return false;
            }
            m.awaiting_join
                || m.awaiting_sync
                || now_ms - m.last_seen_ms <= i64::from(m.session_timeout_ms)
        });
        let dropped = before - self.members.len();
        if dropped > 0 {
            self.prepare_rebalance(now_ms);
        }
        dropped
    }

    /// Starts a rebalance when a subscribed topic's partition count changed
    /// (created, grown or deleted) since the generation began.
    pub fn on_partition_counts(
        &mut self,
        partition_counts: &BTreeMap<String, u32>,
        now_ms: i64,
    ) -> bool {
        if !matches!(
            self.state,
            GroupState::CompletingRebalance | GroupState::Stable
        ) {
            return false;
        }
        if self.subscribed_counts(partition_counts) == self.assigned_counts {
            return false;
        }
        self.prepare_rebalance(now_ms);
        true
    }

    /// Checks a commit and returns the instance id its offsets go under.
    /// A member commits under its own instance (broadcasting) or the
    /// group's (clustering and client-assigned groups, so a native and a
    /// Kafka group of one name share offsets), only in the current
    /// generation and, as in Kafka, not while the members wait for the
    /// leader's assignment; an administrative commit (no member) only while
    /// the group is empty.
    pub fn authorize_commit(
        &self,
        member_id: &str,
        generation: i32,
        admin_instance_id: &str,
    ) -> Result<String, ApiError> {
        if member_id.is_empty() {
            if !self.members.is_empty() {
                return Err(err(
                    ErrorCode::GroupNotEmpty,
                    format!(
                        "group {:?} has {} live member(s); stop its consumers before changing its offsets",
                        self.name,
                        self.members.len()
                    ),
                ));
            }
            return Ok(admin_instance_id.to_string());
        }
        let Some(member) = self.members.get(member_id) else {
            return Err(self.unknown_member(member_id));
        };
        if generation != self.generation {
            return Err(illegal_generation(&self.name, generation, self.generation));
        }
        if self.state == GroupState::CompletingRebalance {
            return Err(err(
                ErrorCode::RebalanceInProgress,
                format!(
                    "group {:?} is waiting for its leader's assignment of generation {}; commit after SyncGroup",
                    self.name, self.generation
                ),
            ));
        }
        Ok(match self.mode {
            GroupMode::Clustering => String::new(),
            GroupMode::Broadcasting => member.instance_id.clone(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Who may fetch what in the current generation.
    pub fn fence(&self) -> Fence {
        let mut owners: BTreeMap<(String, u32), Vec<String>> = BTreeMap::new();
        if self.mode == GroupMode::Clustering {
            for member in self.members.values() {
                for tp in &member.assignment {
                    owners
                        .entry(tp.clone())
                        .or_default()
                        .push(member.member_id.clone());
                }
            }
        }
        // Only a client's assignor may share a partition (see assert_exclusive).
        assert!(self.is_client_assigned() || owners.values().all(|o| o.len() == 1));
        Fence {
            generation: self.generation,
            mode: self.mode,
            owners,
            members: self.members.keys().cloned().collect(),
            awaiting_assignment: self.state == GroupState::CompletingRebalance,
        }
    }
}

fn illegal_generation(group: &str, generation: i32, current: i32) -> ApiError {
    err(
        ErrorCode::IllegalGeneration,
        format!(
            "generation {generation} of group {group:?} is over (the group is at generation {current}): this member was fenced; rejoin"
        ),
    )
}

fn all_partitions(topics: &[String], counts: &BTreeMap<String, u32>) -> Vec<(String, u32)> {
    topics
        .iter()
        .filter_map(|t| counts.get(t).map(|c| (t, *c)))
        .flat_map(|(t, c)| (0..c).map(move |p| (t.clone(), p)))
        .collect()
}

/// What every shard knows of a group's current generation, to refuse
/// fetches from fenced members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub generation: i32,
    pub mode: GroupMode,
    /// Clustering: the owners of each assigned partition (sorted): exactly
    /// one for a server-assigned group; a client-side assignor may share.
    pub owners: BTreeMap<(String, u32), Vec<String>>,
    pub members: Vec<String>,
    /// Client-assigned group whose leader has not sent the generation's
    /// assignment yet: nobody owns anything.
    pub awaiting_assignment: bool,
}

impl Fence {
    /// Whether `self` describes a later point of the group than `other`:
    /// a later generation, or the same one with its assignment known.
    /// Fences travel to other shards in the background and may arrive out
    /// of order; an older one must not replace a newer one.
    pub fn is_newer_than(&self, other: &Fence) -> bool {
        (self.generation, !self.awaiting_assignment)
            > (other.generation, !other.awaiting_assignment)
    }

    /// Checks a fetch of `topic`/`partition` by `member_id` of `generation`.
    pub fn check(
        &self,
        group: &str,
        member_id: &str,
        generation: i32,
        topic: &str,
        partition: u32,
    ) -> Result<(), ApiError> {
        // A newer generation than ours means this shard's fence is stale
        // (fences are pushed in the background): let the fetch through
        // rather than make a freshly joined member rebalance again.
        if generation > self.generation {
            return Ok(());
        }
        if generation < self.generation {
            return Err(illegal_generation(group, generation, self.generation));
        }
        if !self.members.iter().any(|m| m == member_id) {
            return Err(err(
                ErrorCode::UnknownMemberId,
                format!("member {member_id:?} is not in group {group:?}; rejoin"),
            ));
        }
        if self.awaiting_assignment {
            return Err(err(
                ErrorCode::RebalanceInProgress,
                format!(
                    "the leader of group {group:?} has not sent the assignment of generation {generation} yet; fetch after SyncGroup"
                ),
            ));
        }
        if self.mode == GroupMode::Clustering {
            let owners = self.owners.get(&(topic.to_string(), partition));
            if !owners.is_some_and(|o| o.iter().any(|m| m == member_id)) {
                return Err(err(
                    ErrorCode::IllegalGeneration,
                    format!(
                        "{topic}/{partition} is not assigned to member {member_id:?} in generation {generation} of group {group:?}"
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
        pairs.iter().map(|(t, c)| (t.to_string(), *c)).collect()
    }

    fn join_req(member_id: &str, topics: &[&str]) -> JoinGroupRequest {
        JoinGroupRequest {
            group: "g".into(),
            member_id: member_id.into(),
            instance_id: String::new(),
            client_id: "test".into(),
            mode: GroupMode::Clustering,
            assignor: Assignor::Sticky,
            topics: topics.iter().map(|t| t.to_string()).collect(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 5_000,
            ..Default::default()
        }
    }

    fn join(group: &mut Group, id: &str, now: i64) -> String {
        let settings = GroupSettings::default();
        let fresh = id.to_string();
        group
            .join(&join_req("", &["t"]), &settings, move || fresh, now)
            .unwrap()
            .member_id
    }

    fn rejoin(group: &mut Group, id: &str, now: i64) {
        group
            .join(
                &join_req(id, &["t"]),
                &GroupSettings::default(),
                || unreachable!(),
                now,
            )
            .unwrap();
    }

    #[test]
    fn first_member_gets_everything_then_a_second_forces_a_rebalance() {
        let c = counts(&[("t", 6)]);
        let mut g = Group::new("g".into(), None);
        let a = join(&mut g, "a", 0);
        assert!(g.try_complete(0, &c));
        assert_eq!(g.state, GroupState::Stable);
        assert_eq!(g.generation, 1);
        assert_eq!(g.members[&a].assignment.len(), 6);

        let b = join(&mut g, "b", 10);
        assert!(!g.try_complete(10, &c), "a has not rejoined");
        let e = g.heartbeat(&a, 1, 20).unwrap_err();
        assert_eq!(e.code, ErrorCode::RebalanceInProgress);
        rejoin(&mut g, &a, 30);
        assert!(g.try_complete(30, &c));
        assert_eq!(g.generation, 2);
        assert_eq!(g.members[&a].assignment.len(), 3);
        assert_eq!(g.members[&b].assignment.len(), 3);
        g.heartbeat(&a, 2, 40).unwrap();
        // A commit of the old generation is fenced.
        let e = g.authorize_commit(&a, 1, "").unwrap_err();
        assert_eq!(e.code, ErrorCode::IllegalGeneration);
        assert_eq!(g.authorize_commit(&a, 2, "").unwrap(), "");
        // Administrative commits wait for an empty group.
        assert_eq!(
            g.authorize_commit("", -1, "").unwrap_err().code,
            ErrorCode::GroupNotEmpty
        );
    }

    #[test]
    fn a_silent_member_expires_and_one_that_does_not_rejoin_is_dropped() {
        let c = counts(&[("t", 4)]);
        let mut g = Group::new("g".into(), None);
        let a = join(&mut g, "a", 0);
        let b = join(&mut g, "b", 0);
        assert!(g.try_complete(0, &c));
        // b heartbeats, a goes silent past its 10 s session.
        g.heartbeat(&b, g.generation, 9_000).unwrap();
        assert_eq!(g.expire(10_001), 1);
        assert!(!g.members.contains_key(&a));
        assert_eq!(g.state, GroupState::PreparingRebalance);
        // b never rejoins: at the rebalance deadline it is dropped too.
        assert!(!g.try_complete(10_002, &c));
        assert!(g.try_complete(10_001 + 5_000, &c));
        assert_eq!(g.state, GroupState::Empty);
        assert!(g.is_empty());
        assert_eq!(g.authorize_commit("", -1, "").unwrap(), "");
        assert_eq!(
            g.heartbeat(&b, 1, 0).unwrap_err().code,
            ErrorCode::UnknownMemberId
        );
    }

    #[test]
    fn leave_and_partition_growth_rebalance() {
        let mut g = Group::new("g".into(), None);
        let a = join(&mut g, "a", 0);
        let b = join(&mut g, "b", 0);
        assert!(g.try_complete(0, &counts(&[("t", 2)])));
        assert!(g.on_partition_counts(&counts(&[("t", 4)]), 1));
        rejoin(&mut g, &a, 2);
        rejoin(&mut g, &b, 2);
        assert!(g.try_complete(2, &counts(&[("t", 4)])));
        assert_eq!(g.members[&a].assignment.len(), 2);
        assert!(!g.on_partition_counts(&counts(&[("t", 4), ("other", 3)]), 3));
        g.leave(&a, 4).unwrap();
        rejoin(&mut g, &b, 5);
        assert!(g.try_complete(5, &counts(&[("t", 4)])));
        assert_eq!(g.members[&b].assignment.len(), 4);
        let fence = g.fence();
        fence.check("g", &b, g.generation, "t", 3).unwrap();
        assert!(fence.check("g", &a, g.generation, "t", 3).is_err());
        assert!(fence.check("g", &b, g.generation - 1, "t", 3).is_err());
        // A stale fence lets a newer generation through.
        fence.check("g", &a, g.generation + 1, "t", 3).unwrap();
    }

    #[test]
    fn broadcasting_gives_everyone_everything_and_commits_per_instance() {
        let c = counts(&[("t", 3)]);
        let mut g = Group::new("g".into(), None);
        let settings = GroupSettings::default();
        let mut ids = Vec::new();
        for instance in ["x", "y"] {
            let mut req = join_req("", &["t"]);
            req.mode = GroupMode::Broadcasting;
            req.instance_id = instance.into();
            let id = format!("m-{instance}");
            ids.push(g.join(&req, &settings, || id, 0).unwrap().member_id);
        }
        assert!(g.try_complete(0, &c));
        for id in &ids {
            assert_eq!(g.members[id].assignment.len(), 3);
        }
        assert_eq!(g.authorize_commit(&ids[1], g.generation, "").unwrap(), "y");
        let e = g
            .join(&join_req("", &["t"]), &settings, || "z".into(), 1)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InconsistentGroupMode);
    }

    #[test]
    fn session_timeout_bounds_are_enforced() {
        let mut g = Group::new("g".into(), None);
        let mut req = join_req("", &["t"]);
        req.session_timeout_ms = 10;
        let e = g
            .join(&req, &GroupSettings::default(), || "a".into(), 0)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidSessionTimeout);
    }

    // ------------------------------------------- client-side assignment

    fn kafka_req(member_id: &str, protocols: &[(&str, &str)]) -> JoinGroupRequest {
        JoinGroupRequest {
            protocol_type: "consumer".into(),
            protocols: protocols
                .iter()
                .map(|(name, metadata)| GroupProtocol {
                    name: name.to_string(),
                    metadata: metadata.as_bytes().to_vec(),
                })
                .collect(),
            ..join_req(member_id, &["t"])
        }
    }

    /// A fresh member `id` joins with `protocols`.
    fn kafka_join(g: &mut Group, id: &str, protocols: &[(&str, &str)], now: i64) -> String {
        let fresh = id.to_string();
        g.join(
            &kafka_req("", protocols),
            &GroupSettings::default(),
            move || fresh,
            now,
        )
        .unwrap()
        .member_id
    }

    fn kafka_rejoin(g: &mut Group, id: &str, protocols: &[(&str, &str)], now: i64) {
        g.join(
            &kafka_req(id, protocols),
            &GroupSettings::default(),
            || unreachable!(),
            now,
        )
        .unwrap();
    }

    const RANGE: (&str, &str) = ("range", "range-meta");
    const RR: (&str, &str) = ("roundrobin", "rr-meta");

    fn sync_req(member_id: &str, generation: i32, plan: &[(&str, &[u32])]) -> SyncGroupRequest {
        SyncGroupRequest {
            group: "g".into(),
            member_id: member_id.into(),
            generation,
            assignments: plan
                .iter()
                .map(|(member, partitions)| MemberAssignment {
                    member_id: member.to_string(),
                    assignment: format!("bytes-for-{member}").into_bytes(),
                    partitions: vec![TopicPartitions {
                        topic: "t".into(),
                        partitions: partitions.to_vec(),
                    }],
                })
                .collect(),
        }
    }

    fn outcome_code(g: &Group, member: &str, generation: i32) -> Option<ErrorCode> {
        g.sync_outcome(member, generation)
            .expect("answered")
            .err()
            .map(|e| e.code)
    }

    #[test]
    fn client_groups_elect_a_leader_and_choose_the_most_voted_protocol() {
        let c = counts(&[("t", 4)]);
        let mut g = Group::new("g".into(), None);
        // a prefers range; b and c prefer roundrobin: roundrobin wins 2-1.
        let a = kafka_join(&mut g, "a", &[RANGE, RR], 0);
        let b = kafka_join(&mut g, "b", &[RR, RANGE], 0);
        let c_id = kafka_join(&mut g, "c", &[RR, RANGE], 0);
        assert!(g.try_complete(0, &c));
        assert_eq!(g.state, GroupState::CompletingRebalance);
        assert_eq!(g.generation, 1);
        assert_eq!(g.protocol_name, "roundrobin");
        assert_eq!(g.leader_id, a, "the first member leads");
        let leader = g.join_outcome(&a).unwrap().unwrap();
        assert_eq!(leader.leader_id, a);
        assert_eq!(leader.protocol_name, "roundrobin");
        assert!(leader.assignment.is_empty(), "no server-side assignment");
        let seen: Vec<(&str, &[u8])> = leader
            .members
            .iter()
            .map(|m| (m.member_id.as_str(), m.metadata.as_slice()))
            .collect();
        assert_eq!(
            seen,
            [
                (a.as_str(), &b"rr-meta"[..]),
                (b.as_str(), b"rr-meta"),
                (c_id.as_str(), b"rr-meta")
            ]
        );
        let follower = g.join_outcome(&b).unwrap().unwrap();
        assert_eq!(follower.leader_id, a);
        assert_eq!(follower.protocol_name, "roundrobin");
        assert!(follower.members.is_empty(), "only the leader sees members");
        assert_eq!(follower.generation, 1);

        // A new member with a smaller id joins: the leader stays a, and a
        // tie (range 2 : roundrobin 2) goes to the leader's preference.
        let zero = kafka_join(&mut g, "0", &[RANGE, RR], 1);
        kafka_rejoin(&mut g, &a, &[RANGE, RR], 1);
        kafka_rejoin(&mut g, &b, &[RR, RANGE], 1);
        kafka_rejoin(&mut g, &c_id, &[RR, RANGE], 1);
        assert!(g.try_complete(1, &c));
        assert_eq!(g.leader_id, a);
        assert_eq!(g.generation, 2);
        assert_eq!(g.protocol_name, "range");
        assert_eq!(
            g.join_outcome(&zero).unwrap().unwrap().protocol_name,
            "range"
        );

        // Only protocols every member supports are candidates: d supports
        // roundrobin alone, so everyone's vote goes there.
        kafka_join(&mut g, "d", &[RR], 2);
        kafka_rejoin(&mut g, &a, &[RANGE, RR], 2);
        kafka_rejoin(&mut g, &b, &[RR, RANGE], 2);
        kafka_rejoin(&mut g, &c_id, &[RR, RANGE], 2);
        kafka_rejoin(&mut g, &zero, &[RANGE, RR], 2);
        assert!(g.try_complete(2, &c));
        assert_eq!(g.protocol_name, "roundrobin");
    }

    #[test]
    fn a_follower_waits_until_the_leaders_sync_completes_everyone() {
        let mut g = Group::new("g".into(), None);
        let a = kafka_join(&mut g, "a", &[RANGE], 0);
        let b = kafka_join(&mut g, "b", &[RANGE], 0);
        assert!(g.try_complete(0, &counts(&[("t", 4)])));
        let fence = g.fence();
        assert!(fence.awaiting_assignment);
        assert_eq!(
            fence.check("g", &a, 1, "t", 0).unwrap_err().code,
            ErrorCode::RebalanceInProgress
        );

        // The follower syncs first: it waits.
        assert!(!g.sync(&sync_req(&b, 1, &[]), 10).unwrap());
        assert!(g.sync_outcome(&b, 1).is_none());
        assert!(g.members[&b].awaiting_sync);
        // The leader's sync stores everything and answers both.
        let plan: &[(&str, &[u32])] = &[(&a, &[0, 1]), (&b, &[3, 2, 3])];
        assert!(g.sync(&sync_req(&a, 1, plan), 20).unwrap());
        assert_eq!(g.state, GroupState::Stable);
        let mine = g.sync_outcome(&a, 1).unwrap().unwrap();
        assert_eq!(mine.assignment, format!("bytes-for-{a}").into_bytes());
        assert_eq!(mine.protocol_name, "range");
        let theirs = g.sync_outcome(&b, 1).unwrap().unwrap();
        assert_eq!(theirs.assignment, format!("bytes-for-{b}").into_bytes());
        assert!(!g.members[&b].awaiting_sync);
        assert_eq!(g.members[&b].last_seen_ms, 20, "answered: session restarts");
        // The decoded form is kept sorted and unique, for describe and fences.
        assert_eq!(
            g.members[&b].assignment,
            [("t".to_string(), 2), ("t".to_string(), 3)]
        );
        let fence = g.fence();
        assert!(g.fence().is_newer_than(&{
            let mut f = fence.clone();
            f.awaiting_assignment = true;
            f
        }));
        fence.check("g", &b, 1, "t", 3).unwrap();
        assert!(fence.check("g", &a, 1, "t", 3).is_err());
        // In Stable a sync is answered at once, and a leader's repeated
        // plan is ignored.
        assert!(!g
            .sync(&sync_req(&a, 1, &[(&a, &[0, 1, 2, 3])]), 30)
            .unwrap());
        assert_eq!(g.members[&b].assignment.len(), 2);
        assert_eq!(
            g.sync_outcome(&b, 1).unwrap().unwrap().assignment,
            theirs.assignment
        );
    }

    #[test]
    fn a_client_assignor_may_share_a_partition_and_unknown_ids_are_ignored() {
        let mut g = Group::new("g".into(), None);
        let a = kafka_join(&mut g, "a", &[RANGE], 0);
        let b = kafka_join(&mut g, "b", &[RANGE], 0);
        assert!(g.try_complete(0, &counts(&[("t", 4)])));
        let plan: &[(&str, &[u32])] = &[(&a, &[0]), (&b, &[0]), ("ghost", &[1])];
        assert!(g.sync(&sync_req(&a, 1, plan), 1).unwrap());
        let fence = g.fence();
        assert_eq!(fence.owners[&("t".to_string(), 0)], [a.clone(), b.clone()]);
        fence.check("g", &a, 1, "t", 0).unwrap();
        fence.check("g", &b, 1, "t", 0).unwrap();
        assert!(fence.check("g", &a, 1, "t", 1).is_err());
    }

    #[test]
    fn sync_checks_member_generation_state_and_plan() {
        let mut g = Group::new("g".into(), None);
        let a = kafka_join(&mut g, "a", &[RANGE], 0);
        // During the rebalance.
        assert_eq!(
            g.sync(&sync_req(&a, 0, &[]), 1).unwrap_err().code,
            ErrorCode::RebalanceInProgress
        );
        let b = kafka_join(&mut g, "b", &[RANGE], 0);
        assert!(g.try_complete(2, &counts(&[("t", 4)])));
        assert_eq!(
            g.sync(&sync_req("nobody", 1, &[]), 3).unwrap_err().code,
            ErrorCode::UnknownMemberId
        );
        assert_eq!(
            g.sync(&sync_req(&b, 0, &[]), 3).unwrap_err().code,
            ErrorCode::IllegalGeneration
        );
        let twice: &[(&str, &[u32])] = &[(&b, &[0]), (&b, &[1])];
        let e = g.sync(&sync_req(&a, 1, twice), 3).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        assert!(e.message.contains("twice"), "{e}");
        assert_eq!(g.state, GroupState::CompletingRebalance, "nothing stored");
        assert!(g.members[&a].sync_pending, "an invalid plan is no sync");
        // A waiting follower learns of a new rebalance.
        assert!(!g.sync(&sync_req(&b, 1, &[]), 4).unwrap());
        kafka_join(&mut g, "c", &[RANGE], 5);
        assert_eq!(g.state, GroupState::PreparingRebalance);
        assert!(!g.members[&b].awaiting_sync);
        assert_eq!(
            outcome_code(&g, &b, 1),
            Some(ErrorCode::RebalanceInProgress)
        );
        assert_eq!(
            g.sync(&sync_req(&a, 1, &[]), 6).unwrap_err().code,
            ErrorCode::RebalanceInProgress
        );
        // SyncGroup makes no sense for a server-assigned group.
        let mut native = Group::new("n".into(), None);
        let m = join(&mut native, "m", 0);
        assert!(native.try_complete(0, &counts(&[("t", 1)])));
        assert_eq!(
            native.sync(&sync_req(&m, 1, &[]), 1).unwrap_err().code,
            ErrorCode::InconsistentGroupProtocol
        );
    }

    #[test]
    fn heartbeats_of_client_groups_follow_kafka() {
        let mut g = Group::new("g".into(), None);
        let a = kafka_join(&mut g, "a", &[RANGE], 0);
        assert_eq!(
            g.heartbeat(&a, 0, 1).unwrap_err().code,
            ErrorCode::RebalanceInProgress
        );
        assert!(g.try_complete(1, &counts(&[("t", 2)])));
        assert_eq!(g.state, GroupState::CompletingRebalance);
        g.heartbeat(&a, 1, 2).unwrap();
        assert_eq!(g.members[&a].last_seen_ms, 2);
        assert_eq!(
            g.heartbeat(&a, 0, 3).unwrap_err().code,
            ErrorCode::IllegalGeneration
        );
        assert_eq!(
            g.members[&a].last_seen_ms, 2,
            "a stale heartbeat keeps nothing alive"
        );
        assert!(g.sync(&sync_req(&a, 1, &[(&a, &[0, 1])]), 4).unwrap());
        g.heartbeat(&a, 1, 5).unwrap();
        kafka_join(&mut g, "b", &[RANGE], 6);
        assert_eq!(
            g.heartbeat(&a, 1, 7).unwrap_err().code,
            ErrorCode::RebalanceInProgress
        );
    }

    #[test]
    fn inconsistent_protocols_are_refused_with_advice() {
        let settings = GroupSettings::default();
        // A Kafka member cannot join a group of native members...
        let mut native = Group::new("g".into(), None);
        join(&mut native, "n", 0);
        let e = native
            .join(&kafka_req("", &[RANGE]), &settings, || "k".into(), 0)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InconsistentGroupProtocol);
        assert!(e.message.contains("another group id"), "{e}");
        // ...nor a native member a group of Kafka members...
        let mut kafka = Group::new("g".into(), None);
        let a = kafka_join(&mut kafka, "a", &[RANGE, RR], 0);
        let e = kafka
            .join(&join_req("", &["t"]), &settings, || "n".into(), 0)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InconsistentGroupProtocol);
        assert!(e.message.contains("native consumer"), "{e}");
        // ...nor one of another protocol type.
        let mut connect = kafka_req("", &[RANGE]);
        connect.protocol_type = "connect".into();
        let e = kafka
            .join(&connect, &settings, || "x".into(), 0)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InconsistentGroupProtocol);
        // Protocols shared with no current member, or none at all.
        let e = kafka
            .join(
                &kafka_req("", &[("sticky", "")]),
                &settings,
                || "s".into(),
                0,
            )
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InconsistentGroupProtocol);
        assert!(e.message.contains("[\"range\", \"roundrobin\"]"), "{e}");
        let e = kafka
            .join(&kafka_req("", &[]), &settings, || "s".into(), 0)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InconsistentGroupProtocol);
        // A sole member may change its own protocols; and one sharing one.
        kafka_rejoin(&mut kafka, &a, &[("sticky", "")], 1);
        kafka_join(&mut kafka, "b", &[RR, ("sticky", "")], 1);
        assert!(kafka.try_complete(1, &counts(&[("t", 1)])));
        assert_eq!(kafka.protocol_name, "sticky");
        // Once the group is empty, any kind may take it over.
        for id in kafka.members.keys().cloned().collect::<Vec<_>>() {
            kafka.leave(&id, 2).unwrap();
        }
        assert!(kafka.try_complete(2, &counts(&[("t", 1)])));
        assert_eq!(kafka.state, GroupState::Empty);
        assert_eq!(kafka.protocol_type, "consumer", "kept for describe");
        assert!(kafka.leader_id.is_empty() && kafka.protocol_name.is_empty());
        join(&mut kafka, "n", 3);
        assert!(kafka.try_complete(3, &counts(&[("t", 1)])));
        assert!(!kafka.is_client_assigned());
        assert_eq!(kafka.state, GroupState::Stable);
    }

    #[test]
    fn commits_are_refused_while_completing_and_accepted_when_stable() {
        let mut g = Group::new("g".into(), None);
        let a = kafka_join(&mut g, "a", &[RANGE], 0);
        assert!(g.try_complete(0, &counts(&[("t", 2)])));
        let e = g.authorize_commit(&a, 1, "").unwrap_err();
        assert_eq!(e.code, ErrorCode::RebalanceInProgress);
        assert!(e.message.contains("SyncGroup"), "{e}");
        assert!(g.sync(&sync_req(&a, 1, &[(&a, &[0, 1])]), 1).unwrap());
        // Offsets go under instance "" whatever the member's instance id,
        // so a native group of this name sees them.
        assert_eq!(g.authorize_commit(&a, 1, "other").unwrap(), "");
        assert_eq!(
            g.authorize_commit(&a, 0, "").unwrap_err().code,
            ErrorCode::IllegalGeneration
        );
        // During the next rebalance the current generation may still commit.
        kafka_join(&mut g, "b", &[RANGE], 2);
        assert_eq!(g.authorize_commit(&a, 1, "").unwrap(), "");
        assert_eq!(
            g.authorize_commit("", -1, "").unwrap_err().code,
            ErrorCode::GroupNotEmpty
        );
    }

    #[test]
    fn the_leader_leaving_during_completing_rebalance_rebalances() {
        let c = counts(&[("t", 2)]);
        let mut g = Group::new("g".into(), None);
        let a = kafka_join(&mut g, "a", &[RANGE], 0);
        let b = kafka_join(&mut g, "b", &[RANGE], 0);
        assert!(g.try_complete(0, &c));
        assert_eq!(g.leader_id, a);
        assert!(!g.sync(&sync_req(&b, 1, &[]), 1).unwrap());
        g.leave(&a, 2).unwrap();
        assert_eq!(g.state, GroupState::PreparingRebalance);
        assert_eq!(
            outcome_code(&g, &b, 1),
            Some(ErrorCode::RebalanceInProgress)
        );
        kafka_rejoin(&mut g, &b, &[RANGE], 3);
        assert!(g.try_complete(3, &c));
        assert_eq!(g.generation, 2);
        assert_eq!(g.leader_id, b, "a new leader among the members");
        assert_eq!(g.join_outcome(&b).unwrap().unwrap().members.len(), 1);
    }

    #[test]
    fn a_leader_that_never_syncs_is_dropped_and_followers_stay() {
        let c = counts(&[("t", 2)]);
        let mut g = Group::new("g".into(), None);
        let a = kafka_join(&mut g, "a", &[RANGE], 0);
        let b = kafka_join(&mut g, "b", &[RANGE], 0);
        assert!(g.try_complete(0, &c));
        // b waits in its sync (kept alive); a falls silent past its 10 s.
        assert!(!g.sync(&sync_req(&b, 1, &[]), 1).unwrap());
        assert_eq!(g.expire(10_001), 1);
        assert!(!g.members.contains_key(&a));
        assert_eq!(g.state, GroupState::PreparingRebalance);
        assert_eq!(
            outcome_code(&g, &b, 1),
            Some(ErrorCode::RebalanceInProgress)
        );

        // A leader that heartbeats but never syncs is dropped at the sync
        // deadline (the rebalance timeout, 5 s), with any member that never
        // synced; members that did sync stay.
        kafka_rejoin(&mut g, &b, &[RANGE], 10_002);
        let c_id = kafka_join(&mut g, "c", &[RANGE], 10_002);
        let d = kafka_join(&mut g, "d", &[RANGE], 10_002);
        assert!(g.try_complete(10_002, &c));
        assert_eq!(g.leader_id, b);
        assert!(!g.sync(&sync_req(&c_id, g.generation, &[]), 10_003).unwrap());
        for now in [12_000, 14_000, 15_001] {
            g.heartbeat(&b, g.generation, now).unwrap();
            g.heartbeat(&d, g.generation, now).unwrap();
            assert_eq!(g.expire(now), 0);
        }
        assert_eq!(g.expire(15_002), 2);
        assert_eq!(g.members.keys().collect::<Vec<_>>(), [&c_id]);
        assert_eq!(g.state, GroupState::PreparingRebalance);
    }

    #[test]
    fn a_rejoin_with_the_same_protocols_gets_the_current_generation() {
        let c = counts(&[("t", 2)]);
        let mut g = Group::new("g".into(), None);
        let a = kafka_join(&mut g, "a", &[RANGE], 0);
        let b = kafka_join(&mut g, "b", &[RANGE], 0);
        assert!(g.try_complete(0, &c));
        // A follower retrying its join: answered at once, no rebalance.
        kafka_rejoin(&mut g, &b, &[RANGE], 1);
        assert_eq!(g.state, GroupState::CompletingRebalance);
        assert_eq!(g.join_outcome(&b).unwrap().unwrap().generation, 1);
        // So is the leader, with the members again.
        kafka_rejoin(&mut g, &a, &[RANGE], 1);
        assert_eq!(g.join_outcome(&a).unwrap().unwrap().members.len(), 2);
        assert!(g
            .sync(&sync_req(&a, 1, &[(&a, &[0]), (&b, &[1])]), 2)
            .unwrap());
        kafka_rejoin(&mut g, &b, &[RANGE], 3);
        assert_eq!(g.state, GroupState::Stable);
        // Changed metadata, or the leader in a stable group: a rebalance.
        kafka_rejoin(&mut g, &b, &[("range", "other topics")], 4);
        assert_eq!(g.state, GroupState::PreparingRebalance);
        kafka_rejoin(&mut g, &a, &[RANGE], 5);
        assert!(g.try_complete(5, &c));
        assert!(g
            .sync(&sync_req(&a, 2, &[(&a, &[0]), (&b, &[1])]), 6)
            .unwrap());
        kafka_rejoin(&mut g, &a, &[RANGE], 7);
        assert_eq!(g.state, GroupState::PreparingRebalance);
    }

    #[test]
    fn partition_growth_rebalances_client_groups_too() {
        let mut g = Group::new("g".into(), None);
        let a = kafka_join(&mut g, "a", &[RANGE], 0);
        assert!(g.try_complete(0, &counts(&[("t", 2)])));
        assert!(!g.on_partition_counts(&counts(&[("t", 2), ("other", 1)]), 1));
        // Even before the leader's sync: its plan would be for old counts.
        assert!(g.on_partition_counts(&counts(&[("t", 3)]), 1));
        kafka_rejoin(&mut g, &a, &[RANGE], 2);
        assert!(g.try_complete(2, &counts(&[("t", 3)])));
        assert!(g.sync(&sync_req(&a, 2, &[(&a, &[0, 1, 2])]), 3).unwrap());
        assert!(g.on_partition_counts(&counts(&[("t", 4)]), 4));
    }

    #[test]
    fn client_join_arguments_are_bounded() {
        let settings = GroupSettings::default();
        let mut g = Group::new("g".into(), None);
        let mut req = kafka_req("", &[RANGE]);
        req.mode = GroupMode::Broadcasting;
        assert_eq!(
            g.join(&req, &settings, || "a".into(), 0).unwrap_err().code,
            ErrorCode::InvalidRequest
        );
        let mut req = kafka_req("", &[RANGE]);
        req.protocols[0].metadata = vec![0; MAX_PROTOCOL_BYTES + 1];
        assert_eq!(
            g.join(&req, &settings, || "a".into(), 0).unwrap_err().code,
            ErrorCode::InvalidRequest
        );
        let many: Vec<(String, String)> = (0..=MAX_PROTOCOLS_PER_MEMBER)
            .map(|i| (format!("p{i}"), String::new()))
            .collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert_eq!(
            g.join(&kafka_req("", &many), &settings, || "a".into(), 0)
                .unwrap_err()
                .code,
            ErrorCode::InvalidRequest
        );
        // A repeated name keeps its first metadata.
        let a = kafka_join(&mut g, "a", &[RANGE, ("range", "second"), RR], 0);
        assert_eq!(g.members[&a].protocols.len(), 2);
        assert_eq!(g.members[&a].metadata_for("range"), b"range-meta");
    }
}
