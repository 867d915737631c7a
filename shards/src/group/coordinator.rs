//! The membership state machine of one consumer group (DESIGN.md 3.5).
//!
//! Pure: time comes in as `now_ms`, nothing here does I/O or waits. The
//! shard glue (`shard/group.rs`) persists, notifies waiting joins and
//! pushes fences; unit tests drive this directly.
//!
//! The protocol is the eager one of Kafka's classic groups with the
//! assignment computed here, server-side:
//!
//! ```text
//!            join / leave / expiry / partition-count change
//!   Empty ──────────────▶ PreparingRebalance ──(all members rejoined, or
//!   Stable ─────────────▶        │             the rebalance deadline passed)
//!     ▲                          ▼
//!     └──────────── assignment computed, generation + 1
//! ```
//!
//! A member learns of a rebalance from its heartbeat (RebalanceInProgress);
//! it then gives up everything it owns (committing first) and rejoins. The
//! rebalance completes only once every member has rejoined or been dropped,
//! so two members of one generation never own the same partition, and a
//! member that was dropped is fenced: its generation is gone.

use std::collections::BTreeMap;

use ringmq_wire::error::{ApiError, ErrorCode};
use ringmq_wire::group_api::{Assignor, GroupMode, JoinGroupRequest, TopicPartitions};

use super::assignor::{self, MemberInput};
use super::offsets::{Committed, GroupMeta, OffsetKey};

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
    /// Every member has its assignment for the current generation.
    Stable,
}

impl GroupState {
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "empty",
            GroupState::PreparingRebalance => "preparing_rebalance",
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
    /// Sorted; owned in the current generation.
    pub assignment: Vec<(String, u32)>,
}

impl Member {
    pub fn assignment_by_topic(&self) -> Vec<TopicPartitions> {
        group_by_topic(&self.assignment)
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
    rebalance_deadline_ms: i64,
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
            rebalance_deadline_ms: 0,
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

    /// Registers a (re)join and starts a rebalance if none is in progress.
    /// The caller then calls [`Group::try_complete`] and, until the member
    /// is no longer `awaiting_join`, waits for a completion.
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
        }
        let mut topics = request.topics.clone();
        topics.sort();
        topics.dedup();
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
            });
        member.instance_id = request.instance_id.clone();
        member.client_id = request.client_id.clone();
        member.topics = topics;
        member.session_timeout_ms = session;
        member.rebalance_timeout_ms = rebalance_timeout_ms;
        member.last_seen_ms = now_ms;
        member.awaiting_join = true;
        self.prepare_rebalance(now_ms);
        Ok(Joined { member_id })
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
            return true;
        }
        self.assign(partition_counts);
        for member in self.members.values_mut() {
            member.awaiting_join = false;
            member.last_seen_ms = now_ms;
        }
        self.state = GroupState::Stable;
        true
    }

    fn assign(&mut self, partition_counts: &BTreeMap<String, u32>) {
        let subscribed: BTreeMap<String, u32> = partition_counts
            .iter()
            .filter(|(t, _)| self.members.values().any(|m| m.topics.contains(t)))
            .map(|(t, c)| (t.clone(), *c))
            .collect();
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
    fn assert_exclusive(&self) {
        if self.mode != GroupMode::Clustering {
            return;
        }
        let mut seen = std::collections::HashSet::new();
        for member in self.members.values() {
            for tp in &member.assignment {
                assert!(seen.insert(tp), "partition {tp:?} assigned twice");
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
        let Some(member) = self.members.get_mut(member_id) else {
            return Err(self.unknown_member(member_id));
        };
        member.last_seen_ms = now_ms;
        if state == GroupState::PreparingRebalance {
            return Err(err(
                ErrorCode::RebalanceInProgress,
                format!(
                    "group {name:?} is rebalancing; commit, give up your partitions and rejoin"
                ),
            ));
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
    /// the rebalance deadline bounds them). Returns how many were dropped.
    pub fn expire(&mut self, now_ms: i64) -> usize {
        let before = self.members.len();
        self.members.retain(|_, m| {
            m.awaiting_join || now_ms - m.last_seen_ms <= i64::from(m.session_timeout_ms)
        });
        let dropped = before - self.members.len();
        if dropped > 0 {
            self.prepare_rebalance(now_ms);
        }
        dropped
    }

    /// Starts a rebalance when a subscribed topic's partition count changed
    /// (created, grown or deleted) since the assignment was made.
    pub fn on_partition_counts(
        &mut self,
        partition_counts: &BTreeMap<String, u32>,
        now_ms: i64,
    ) -> bool {
        if self.state != GroupState::Stable {
            return false;
        }
        let now: BTreeMap<&String, u32> = partition_counts
            .iter()
            .filter(|(t, _)| self.members.values().any(|m| m.topics.contains(t)))
            .map(|(t, c)| (t, *c))
            .collect();
        let then: BTreeMap<&String, u32> =
            self.assigned_counts.iter().map(|(t, c)| (t, *c)).collect();
        if now == then {
            return false;
        }
        self.prepare_rebalance(now_ms);
        true
    }

    /// Checks a commit and returns the instance id its offsets go under.
    /// A member commits under its own instance (broadcasting) or the
    /// group's (clustering), only in the current generation; an
    /// administrative commit (no member) only while the group is empty.
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
        let owners = match self.mode {
            GroupMode::Broadcasting => BTreeMap::new(),
            GroupMode::Clustering => self
                .members
                .values()
                .flat_map(|m| {
                    m.assignment
                        .iter()
                        .map(|tp| (tp.clone(), m.member_id.clone()))
                })
                .collect(),
        };
        Fence {
            generation: self.generation,
            mode: self.mode,
            owners,
            members: self.members.keys().cloned().collect(),
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
    /// Clustering: the owner of each assigned partition.
    pub owners: BTreeMap<(String, u32), String>,
    pub members: Vec<String>,
}

impl Fence {
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
        if self.mode == GroupMode::Clustering {
            let owner = self.owners.get(&(topic.to_string(), partition));
            if owner.map(String::as_str) != Some(member_id) {
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
}
