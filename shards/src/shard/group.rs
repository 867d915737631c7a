//! Consumer-group requests on a shard (DESIGN.md 3.5).
//!
//! A group lives on the shard owning its `__consumer_offsets` partition.
//! Any shard accepts group requests and forwards them over the mesh to the
//! coordinator shard; FindCoordinator lets clients go there directly.
//!
//! What this glue adds to the pure state machine (`group::coordinator`):
//! * joins wait (a long poll) until their rebalance completes, and the
//!   SyncGroups of client-assigned groups until their leader's arrives;
//! * commits and generations are appended to the offsets partition, and a
//!   commit is acknowledged only once an fdatasync covers it;
//! * a ticker expires sessions and ends overdue rebalances;
//! * every new generation is pushed to all shards as a [`Fence`], so a
//!   fetch from a fenced member is refused wherever it lands;
//! * snapshot compaction: when an offsets partition has grown well past its
//!   live data, the live state is rewritten at the end of the log and the
//!   whole segments below it are deleted.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use event_listener::Event;
use futures_lite::FutureExt;
use ringmq_wire::batch::{BatchBuilder, BatchSplitter, Compression, RecordIter};
use ringmq_wire::envelope::{RequestBody, ResponseBody};
use ringmq_wire::error::{ApiError, ErrorCode};
use ringmq_wire::group_api::{
    CommittedOffset, DescribeGroupResponse, FindCoordinatorResponse, GroupListing, GroupMember,
    JoinGroupRequest, ListGroupsResponse, OffsetCommitPartitionResult, OffsetCommitRequest,
    OffsetCommitResponse, OffsetCommitTopicResult, OffsetFetchRequest, OffsetFetchResponse,
    SyncGroupRequest,
};

use super::{log_error_to_api, now_ms, Shard};
use crate::group::offsets::{apply_record, Committed, OffsetKey, OffsetsRecord, ReplayedGroup};
use crate::group::{offsets_partition, validate_group_id, Fence, Group, GroupState, OFFSETS_TOPIC};
use crate::log::{Acks, PartitionLog};
use crate::mesh::{ShardRequest, ShardResponse};

/// How often sessions and rebalance deadlines are checked.
const GROUP_TICK_MS: u64 = 50;
/// Records per batch when writing a compaction snapshot.
const SNAPSHOT_BATCH_RECORDS: usize = 1_000;
/// A join waits at most this long past its rebalance timeout, and a
/// SyncGroup past the broker's largest rebalance timeout (the coordinator
/// ends a CompletingRebalance by then; this only bounds the wait if not).
const JOIN_GRACE_MS: u64 = 5_000;

/// The groups this shard coordinates, and the fences of every group.
#[derive(Default)]
pub(crate) struct GroupHost {
    groups: RefCell<HashMap<String, GroupSlot>>,
    fences: RefCell<HashMap<String, Rc<Fence>>>,
    /// Offsets partitions replayed and ready to serve.
    loaded: RefCell<HashSet<u32>>,
    compacting: RefCell<HashSet<u32>>,
    /// Partition size after its last compaction (the live data, roughly).
    compacted_size: RefCell<HashMap<u32, u64>>,
    next_member: Cell<u64>,
}

struct GroupSlot {
    group: Group,
    /// Notified whenever the group's state or generation changes: a
    /// rebalance starts or completes, or a leader's assignment arrives.
    /// Waiting joins and syncs then look again.
    changed: Rc<Event>,
}

impl GroupSlot {
    fn new(group: Group) -> GroupSlot {
        GroupSlot {
            group,
            changed: Rc::new(Event::new()),
        }
    }

    /// Runs `f` on the group and wakes the waiters if it changed state or
    /// generation. Every mutation goes through here, so no transition can
    /// leave a waiter asleep (every one that answers a waiter changes one
    /// of the two).
    fn update<T>(&mut self, f: impl FnOnce(&mut Group) -> T) -> T {
        let before = (self.group.state, self.group.generation);
        let out = f(&mut self.group);
        if (self.group.state, self.group.generation) != before {
            self.changed.notify(usize::MAX);
        }
        out
    }
}

type GroupResult = Result<ResponseBody, ApiError>;

/// The group a request names, if any.
fn group_of(body: &RequestBody) -> Option<&str> {
    Some(match body {
        RequestBody::FindCoordinator(r) => &r.group,
        RequestBody::JoinGroup(r) => &r.group,
        RequestBody::SyncGroup(r) => &r.group,
        RequestBody::Heartbeat(r) => &r.group,
        RequestBody::LeaveGroup(r) => &r.group,
        RequestBody::OffsetCommit(r) => &r.group,
        RequestBody::OffsetFetch(r) => &r.group,
        RequestBody::DescribeGroup(r) => &r.group,
        RequestBody::DeleteGroup(r) => &r.group,
        _ => return None,
    })
}

fn bounded(what: &str, value: &str) -> Result<(), ApiError> {
    if value.len() > crate::group::offsets::MAX_GROUP_STRING_BYTES {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("{what} is longer than 1024 bytes"),
        ));
    }
    Ok(())
}

impl Shard {
    /// Entry point for every group API on this shard.
    pub(super) async fn group_request(self: Rc<Self>, body: RequestBody) -> GroupResult {
        let Some(group) = group_of(&body) else {
            return match body {
                RequestBody::ListGroups => Ok(self.list_groups().await),
                other => unreachable!("not a group request: {:?}", other.api()),
            };
        };
        validate_group_id(group)?;
        let (partition, coordinator) = self.coordinator_of(group)?;
        if let RequestBody::FindCoordinator(_) = body {
            let endpoint = &self.config.endpoints[coordinator];
            return Ok(ResponseBody::FindCoordinator(FindCoordinatorResponse {
                shard: coordinator as u16,
                host: endpoint.host.clone(),
                port: endpoint.port,
                offsets_partition: partition,
            }));
        }
        if coordinator == self.id() {
            return self.coordinate(body, partition).await;
        }
        self.metrics
            .forwards_out
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match self.mesh.call(coordinator, ShardRequest::Group(body)).await {
            Ok(ShardResponse::Group(result)) => result,
            _ => Err(ApiError::new(
                ErrorCode::NotCoordinator,
                format!("coordinator shard {coordinator} is unavailable; retry"),
            )),
        }
    }

    /// A group request forwarded from another shard.
    pub(super) async fn group_call(self: Rc<Self>, body: RequestBody) -> GroupResult {
        let Some(group) = group_of(&body) else {
            return Ok(self.local_group_listings());
        };
        validate_group_id(group)?;
        let (partition, coordinator) = self.coordinator_of(group)?;
        if coordinator != self.id() {
            return Err(ApiError::new(
                ErrorCode::NotCoordinator,
                format!(
                    "shard {} does not coordinate group {group:?}; ask FindCoordinator",
                    self.id()
                ),
            ));
        }
        self.coordinate(body, partition).await
    }

    fn coordinator_of(&self, group: &str) -> Result<(u32, usize), ApiError> {
        let catalog = self.catalog();
        let entry = catalog.topic(OFFSETS_TOPIC).ok_or_else(|| {
            ApiError::new(
                ErrorCode::CoordinatorLoading,
                "the offsets topic is not ready yet; retry",
            )
        })?;
        let partition = offsets_partition(group, entry.partitions);
        Ok((partition, self.owner(OFFSETS_TOPIC, partition)))
    }

    async fn coordinate(self: Rc<Self>, body: RequestBody, partition: u32) -> GroupResult {
        if !self.groups.loaded.borrow().contains(&partition) {
            return Err(ApiError::new(
                ErrorCode::CoordinatorLoading,
                "this group's coordinator is still loading its offsets; retry shortly",
            ));
        }
        match body {
            RequestBody::JoinGroup(r) => self.join_group(r).await,
            RequestBody::SyncGroup(r) => self.sync_group(r).await,
            RequestBody::Heartbeat(r) => {
                self.with_group(&r.group, |g| {
                    g.heartbeat(&r.member_id, r.generation, now_ms())
                })?;
                Ok(ResponseBody::Heartbeat)
            }
            RequestBody::LeaveGroup(r) => {
                self.with_group(&r.group, |g| g.leave(&r.member_id, now_ms()))?;
                self.try_complete(&r.group);
                Ok(ResponseBody::LeaveGroup)
            }
            RequestBody::OffsetCommit(r) => {
                let log = self.local_log(OFFSETS_TOPIC, partition)?;
                self.offset_commit(r, partition, log).await
            }
            RequestBody::OffsetFetch(r) => self.offset_fetch(r),
            RequestBody::DescribeGroup(r) => self.describe_group(&r.group),
            RequestBody::DeleteGroup(r) => self.delete_group(&r.group).await,
            other => unreachable!("not a coordinator request: {:?}", other.api()),
        }
    }

    /// Runs a member operation; a group unknown here (e.g. after a broker
    /// restart: members are not persisted) means the member is unknown.
    fn with_group<T>(
        &self,
        group: &str,
        f: impl FnOnce(&mut Group) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let mut groups = self.groups.groups.borrow_mut();
        match groups.get_mut(group) {
            Some(slot) => slot.update(f),
            None => Err(ApiError::new(
                ErrorCode::UnknownMemberId,
                format!("group {group:?} has no members here (the broker may have restarted); rejoin with an empty member id"),
            )),
        }
    }

    /// Partition counts of every topic, for assignment.
    fn partition_counts(&self) -> BTreeMap<String, u32> {
        self.catalog()
            .topics
            .values()
            .filter(|t| !crate::catalog::is_internal_topic(&t.name))
            .map(|t| (t.name.clone(), t.partitions))
            .collect()
    }

    // ------------------------------------------------------------ membership

    async fn join_group(self: Rc<Self>, request: JoinGroupRequest) -> GroupResult {
        bounded("instance id", &request.instance_id)?;
        bounded("client id", &request.client_id)?;
        for topic in &request.topics {
            crate::catalog::validate_topic_name(topic)
                .map_err(|e| ApiError::new(ErrorCode::InvalidTopic, e.to_string()))?;
        }
        for protocol in &request.protocols {
            bounded("protocol name", &protocol.name)?;
        }
        let (member_id, changed) = {
            let seq = self.groups.next_member.get() + 1;
            self.groups.next_member.set(seq);
            let prefix = if request.client_id.is_empty() {
                "member"
            } else {
                &request.client_id
            };
            let fresh = format!("{prefix}-{}-{}-{seq}", self.id(), now_ms());
            let mut groups = self.groups.groups.borrow_mut();
            let slot = groups
                .entry(request.group.clone())
                .or_insert_with(|| GroupSlot::new(Group::new(request.group.clone(), None)));
            let settings = self.config.group_settings;
            let joined = slot.update(|g| g.join(&request, &settings, || fresh, now_ms()))?;
            (joined.member_id, slot.changed.clone())
        };
        self.try_complete(&request.group);
        let wait_ms = u64::from(request.rebalance_timeout_ms).min(u64::from(
            self.config.group_settings.max_rebalance_timeout_ms,
        )) + JOIN_GRACE_MS;
        let deadline = std::time::Instant::now() + Duration::from_millis(wait_ms);
        loop {
            let listener = changed.listen();
            if let Some(outcome) = self.join_outcome(&request.group, &member_id) {
                return outcome;
            }
            let shutdown = self.shutdown_listener();
            let remaining = deadline.saturating_duration_since(std::time::Instant::now());
            if self.is_shutting_down() || remaining.is_zero() {
                return Err(ApiError::new(
                    ErrorCode::RequestTimedOut,
                    "the rebalance did not complete in time; rejoin",
                ));
            }
            listener
                .or(shutdown)
                .or(async {
                    glommio::timer::sleep(remaining).await;
                })
                .await;
        }
    }

    /// `None` while the member still waits for its rebalance.
    fn join_outcome(&self, group: &str, member_id: &str) -> Option<GroupResult> {
        let groups = self.groups.groups.borrow();
        let Some(slot) = groups.get(group) else {
            return Some(Err(group_not_found(group)));
        };
        let outcome = slot.group.join_outcome(member_id)?;
        Some(outcome.map(ResponseBody::JoinGroup))
    }

    /// SyncGroup of a client-assigned group: the leader's stores the
    /// generation's assignment; a follower's waits (a long poll) until the
    /// leader's arrives, a rebalance starts or the member is dropped.
    async fn sync_group(self: Rc<Self>, request: SyncGroupRequest) -> GroupResult {
        bounded("member id", &request.member_id)?;
        let (changed, fence) = {
            let mut groups = self.groups.groups.borrow_mut();
            let Some(slot) = groups.get_mut(&request.group) else {
                return Err(ApiError::new(
                    ErrorCode::UnknownMemberId,
                    format!("group {:?} has no members here (the broker may have restarted); rejoin with an empty member id", request.group),
                ));
            };
            let assigned = slot.update(|g| g.sync(&request, now_ms()))?;
            (
                slot.changed.clone(),
                assigned.then(|| Rc::new(slot.group.fence())),
            )
        };
        if let Some(fence) = fence {
            tracing::info!(
                group = %request.group,
                generation = fence.generation,
                members = fence.members.len(),
                "leader's assignment stored"
            );
            self.publish_fence(request.group.clone(), Some(fence));
        }
        let wait_ms =
            u64::from(self.config.group_settings.max_rebalance_timeout_ms) + JOIN_GRACE_MS;
        let deadline = std::time::Instant::now() + Duration::from_millis(wait_ms);
        loop {
            let listener = changed.listen();
            let outcome = {
                let groups = self.groups.groups.borrow();
                match groups.get(&request.group) {
                    None => Some(Err(group_not_found(&request.group))),
                    Some(slot) => slot
                        .group
                        .sync_outcome(&request.member_id, request.generation),
                }
            };
            if let Some(outcome) = outcome {
                return outcome.map(ResponseBody::SyncGroup);
            }
            let shutdown = self.shutdown_listener();
            let remaining = deadline.saturating_duration_since(std::time::Instant::now());
            if self.is_shutting_down() || remaining.is_zero() {
                return Err(ApiError::new(
                    ErrorCode::RebalanceInProgress,
                    "the group's leader did not send its assignment in time; rejoin",
                ));
            }
            listener
                .or(shutdown)
                .or(async {
                    glommio::timer::sleep(remaining).await;
                })
                .await;
        }
    }

    /// Completes `group`'s rebalance if it can; on a new generation wakes
    /// the waiting joins, records the generation and pushes the fence.
    fn try_complete(self: &Rc<Self>, group: &str) {
        let counts = self.partition_counts();
        let completed = {
            let mut groups = self.groups.groups.borrow_mut();
            let Some(slot) = groups.get_mut(group) else {
                return;
            };
            if !slot.update(|g| g.try_complete(now_ms(), &counts)) {
                return;
            }
            (slot.group.meta(), Rc::new(slot.group.fence()))
        };
        let (meta, fence) = completed;
        tracing::info!(
            group,
            generation = meta.generation,
            members = fence.members.len(),
            "rebalance completed"
        );
        // The generation is recorded without waiting: members are not
        // persisted, so after a crash they rejoin anyway; the record only
        // keeps generations increasing across restarts.
        let record = OffsetsRecord::Group {
            group: group.to_string(),
            meta: Some(meta),
        };
        if let Err(err) = self.append_offsets_records(group, &[record], Acks::Leader) {
            tracing::warn!(group, error = %err, "could not record the group generation");
        }
        self.publish_fence(group.to_string(), Some(fence));
    }

    /// Installs `fence` here and on every other shard (in the background).
    fn publish_fence(self: &Rc<Self>, group: String, fence: Option<Rc<Fence>>) {
        self.install_fence(&group, fence.as_deref().cloned());
        let shard = self.clone();
        glommio::spawn_local(async move {
            for peer in 0..shard.config.shard_count {
                if peer == shard.id() {
                    continue;
                }
                let call = ShardRequest::GroupFence {
                    group: group.clone(),
                    fence: fence.as_deref().cloned(),
                };
                if let Err(err) = shard.mesh.call(peer, call).await {
                    tracing::debug!(peer, error = %err, "fence not delivered");
                }
            }
        })
        .detach();
    }

    pub(super) fn install_fence(&self, group: &str, fence: Option<Fence>) {
        let mut fences = self.groups.fences.borrow_mut();
        match fence {
            Some(fence) => {
                let stale = fences
                    .get(group)
                    .is_some_and(|old| old.is_newer_than(&fence));
                if !stale {
                    fences.insert(group.to_string(), Rc::new(fence));
                }
            }
            None => {
                fences.remove(group);
            }
        }
    }

    /// Refuses a fetch by a member the group's current generation fenced.
    pub(super) fn check_fetch_fence(
        &self,
        fence: &ringmq_wire::group_api::FetchFence,
        topic: &str,
        partition: u32,
    ) -> Result<(), ApiError> {
        match self.groups.fences.borrow().get(&fence.group) {
            // Unknown here (e.g. just after a restart): nothing to check against.
            None => Ok(()),
            Some(current) => current.check(
                &fence.group,
                &fence.member_id,
                fence.generation,
                topic,
                partition,
            ),
        }
    }

    /// Expires sessions and ends overdue rebalances, forever. Spawn once.
    pub async fn group_loop(self: Rc<Self>) {
        let period = Duration::from_millis(GROUP_TICK_MS);
        while !self.is_shutting_down() {
            glommio::timer::sleep(period).await;
            let now = now_ms();
            let names: Vec<String> = {
                let mut groups = self.groups.groups.borrow_mut();
                groups
                    .iter_mut()
                    .filter_map(|(name, slot)| {
                        let dropped = slot.update(|g| g.expire(now));
                        if dropped > 0 {
                            tracing::info!(group = %name, dropped, "member sessions expired");
                        }
                        (slot.group.state == GroupState::PreparingRebalance).then(|| name.clone())
                    })
                    .collect()
            };
            for name in names {
                self.try_complete(&name);
            }
        }
    }

    /// After a catalog change: rebalance groups whose topics changed shape.
    pub(super) fn groups_on_catalog(&self) {
        let counts = self.partition_counts();
        let now = now_ms();
        for (name, slot) in self.groups.groups.borrow_mut().iter_mut() {
            if slot.update(|g| g.on_partition_counts(&counts, now)) {
                tracing::info!(group = %name, "subscribed topics changed; rebalancing");
            }
        }
    }

    // --------------------------------------------------------------- offsets

    async fn offset_commit(
        self: Rc<Self>,
        request: OffsetCommitRequest,
        partition: u32,
        log: Rc<PartitionLog>,
    ) -> GroupResult {
        bounded("instance id", &request.instance_id)?;
        let catalog = self.catalog();
        let now = now_ms();
        let mut results = Vec::with_capacity(request.topics.len());
        let mut records = Vec::new();
        let mut accepted: Vec<(OffsetKey, Committed)> = Vec::new();
        let instance = {
            let groups = self.groups.groups.borrow();
            match groups.get(&request.group) {
                Some(slot) => slot.group.authorize_commit(
                    &request.member_id,
                    request.generation,
                    &request.instance_id,
                )?,
                // A group nobody joined yet: an administrative commit creates it.
                None if request.member_id.is_empty() => request.instance_id.clone(),
                None => return Err(group_not_found(&request.group)),
            }
        };
        for topic in &request.topics {
            let count = catalog
                .topic(&topic.name)
                .map(|t| t.partitions)
                .unwrap_or(0);
            let mut parts = Vec::with_capacity(topic.partitions.len());
            for p in &topic.partitions {
                let error = if p.partition >= count {
                    Some(super::unknown_partition(&topic.name, p.partition))
                } else if p.offset < 0 {
                    Some(ApiError::new(
                        ErrorCode::InvalidRequest,
                        format!("offset {} is negative", p.offset),
                    ))
                } else if p.metadata.len() > crate::group::offsets::MAX_GROUP_STRING_BYTES {
                    Some(ApiError::new(
                        ErrorCode::InvalidRequest,
                        "commit metadata is longer than 1024 bytes",
                    ))
                } else {
                    let key = OffsetKey {
                        instance_id: instance.clone(),
                        topic: topic.name.clone(),
                        partition: p.partition,
                    };
                    let value = Committed {
                        offset: p.offset,
                        metadata: p.metadata.clone(),
                        commit_time_ms: now,
                    };
                    records.push(OffsetsRecord::Offset {
                        group: request.group.clone(),
                        key: key.clone(),
                        value: Some(value.clone()),
                    });
                    accepted.push((key, value));
                    None
                };
                parts.push(OffsetCommitPartitionResult {
                    partition: p.partition,
                    error,
                });
            }
            results.push(OffsetCommitTopicResult {
                name: topic.name.clone(),
                partitions: parts,
            });
        }
        if !records.is_empty() {
            let outcome = match self.append_offsets_records(&request.group, &records, Acks::Fsync) {
                Ok(durable) => {
                    // Applied in append order, before durability: a later
                    // commit must see this one (the log orders them the same
                    // way), and a failed fdatasync fences the partition.
                    self.apply_commits(&request.group, accepted);
                    durable.await.map_err(|e| log_error_to_api(&e))
                }
                Err(err) => Err(err),
            };
            if let Err(err) = outcome {
                for part in results.iter_mut().flat_map(|t| t.partitions.iter_mut()) {
                    part.error.get_or_insert_with(|| err.clone());
                }
            }
            self.maybe_compact(partition, log);
        }
        Ok(ResponseBody::OffsetCommit(OffsetCommitResponse {
            topics: results,
        }))
    }

    fn apply_commits(&self, group: &str, accepted: Vec<(OffsetKey, Committed)>) {
        let mut groups = self.groups.groups.borrow_mut();
        let slot = groups
            .entry(group.to_string())
            .or_insert_with(|| GroupSlot::new(Group::new(group.to_string(), None)));
        slot.group.offsets.extend(accepted);
    }

    fn offset_fetch(&self, request: OffsetFetchRequest) -> GroupResult {
        let groups = self.groups.groups.borrow();
        let offsets = match groups.get(&request.group) {
            None => Vec::new(),
            Some(slot) => slot
                .group
                .offsets
                .iter()
                .filter(|(k, _)| k.instance_id == request.instance_id)
                .filter(|(k, _)| match &request.topics {
                    Some(topics) => topics.contains(&k.topic),
                    None => true,
                })
                .map(|(k, c)| committed_offset(k, c))
                .collect(),
        };
        Ok(ResponseBody::OffsetFetch(OffsetFetchResponse { offsets }))
    }

    /// Appends records of `group` to its offsets partition; the future
    /// resolves at the requested durability.
    fn append_offsets_records(
        &self,
        group: &str,
        records: &[OffsetsRecord],
        acks: Acks,
    ) -> Result<crate::log::partition::AckFuture, ApiError> {
        let (partition, _) = self.coordinator_of(group)?;
        let log = self.local_log(OFFSETS_TOPIC, partition)?;
        let batch = build_offsets_batch(records)?;
        let appended = log
            .append(BytesMut::from(batch), acks)
            .map_err(|e| log_error_to_api(&e))?;
        Ok(appended.durable)
    }

    // ----------------------------------------------------------------- admin

    fn describe_group(&self, group: &str) -> GroupResult {
        let groups = self.groups.groups.borrow();
        let slot = groups.get(group).ok_or_else(|| group_not_found(group))?;
        let g = &slot.group;
        let now = now_ms();
        let members = g
            .members
            .values()
            .map(|m| GroupMember {
                member_id: m.member_id.clone(),
                instance_id: m.instance_id.clone(),
                client_id: m.client_id.clone(),
                topics: m.topics.clone(),
                assignment: m.assignment_by_topic(),
                since_heartbeat_ms: (now - m.last_seen_ms).clamp(0, u32::MAX as i64) as u32,
                metadata: m.metadata_for(&g.protocol_name).to_vec(),
                assignment_bytes: m.assignment_bytes.clone(),
            })
            .collect();
        Ok(ResponseBody::DescribeGroup(DescribeGroupResponse {
            group: group.to_string(),
            state: g.state.name().to_string(),
            mode: g.mode,
            assignor: g.assignor,
            generation: g.generation,
            coordinator_shard: self.id() as u16,
            members,
            offsets: g
                .offsets
                .iter()
                .map(|(k, c)| committed_offset(k, c))
                .collect(),
            protocol_type: g.protocol_type.clone(),
            protocol_name: g.protocol_name.clone(),
        }))
    }

    async fn delete_group(self: Rc<Self>, group: &str) -> GroupResult {
        {
            let groups = self.groups.groups.borrow();
            let slot = groups.get(group).ok_or_else(|| group_not_found(group))?;
            if !slot.group.is_empty() {
                return Err(ApiError::new(
                    ErrorCode::GroupNotEmpty,
                    format!(
                        "group {group:?} has {} live member(s); stop its consumers before deleting it",
                        slot.group.members.len()
                    ),
                ));
            }
        }
        let tombstone = OffsetsRecord::Group {
            group: group.to_string(),
            meta: None,
        };
        let durable = self.append_offsets_records(group, &[tombstone], Acks::Fsync)?;
        self.groups.groups.borrow_mut().remove(group);
        durable.await.map_err(|e| log_error_to_api(&e))?;
        self.publish_fence(group.to_string(), None);
        Ok(ResponseBody::DeleteGroup)
    }

    fn local_group_listings(&self) -> ResponseBody {
        let groups = self
            .groups
            .groups
            .borrow()
            .values()
            .map(|slot| GroupListing {
                group: slot.group.name.clone(),
                state: slot.group.state.name().to_string(),
                mode: slot.group.mode,
                generation: slot.group.generation,
                members: slot.group.members.len() as u32,
                coordinator_shard: self.id() as u16,
            })
            .collect();
        ResponseBody::ListGroups(ListGroupsResponse { groups })
    }

    async fn list_groups(&self) -> ResponseBody {
        let ResponseBody::ListGroups(mut all) = self.local_group_listings() else {
            unreachable!()
        };
        for peer in 0..self.config.shard_count {
            if peer == self.id() {
                continue;
            }
            if let Ok(ShardResponse::Group(Ok(ResponseBody::ListGroups(theirs)))) = self
                .mesh
                .call(peer, ShardRequest::Group(RequestBody::ListGroups))
                .await
            {
                all.groups.extend(theirs.groups);
            }
        }
        all.groups.sort_by(|a, b| a.group.cmp(&b.group));
        ResponseBody::ListGroups(all)
    }

    /// Committed offsets of the groups this shard coordinates (for lag).
    pub fn local_committed_offsets(&self) -> Vec<(String, CommittedOffset)> {
        let groups = self.groups.groups.borrow();
        groups
            .values()
            .flat_map(|slot| {
                slot.group
                    .offsets
                    .iter()
                    .map(|(k, c)| (slot.group.name.clone(), committed_offset(k, c)))
            })
            .collect()
    }

    /// Committed offsets of every group on every shard (for /metrics).
    pub async fn cluster_committed_offsets(&self) -> Vec<(String, CommittedOffset)> {
        let mut all = self.local_committed_offsets();
        for peer in 0..self.config.shard_count {
            if peer == self.id() {
                continue;
            }
            if let Ok(ShardResponse::CommittedOffsets(theirs)) =
                self.mesh.call(peer, ShardRequest::CommittedOffsets).await
            {
                all.extend(theirs);
            }
        }
        all
    }

    // ------------------------------------------------- replay and compaction

    /// Rebuilds the groups of one offsets partition from its log.
    pub(super) async fn load_offsets_partition(&self, partition: u32) {
        let log = match self.local_log(OFFSETS_TOPIC, partition) {
            Ok(log) => log,
            Err(err) => {
                tracing::error!(partition, error = %err, "offsets partition unavailable; its groups cannot be served");
                return;
            }
        };
        let mut state: BTreeMap<String, ReplayedGroup> = BTreeMap::new();
        let mut offset = log.log_start_offset();
        let mut records = 0u64;
        while offset < log.high_watermark() {
            let data = match log.read(offset, 1 << 20).await {
                Ok(data) => data,
                Err(err) => {
                    tracing::error!(partition, offset, error = %err, "cannot replay the offsets partition; its groups cannot be served");
                    return;
                }
            };
            if data.chunks.is_empty() {
                break;
            }
            for chunk in &data.chunks {
                offset = replay_chunk(chunk, &mut state, &mut records).max(offset);
            }
        }
        let mut groups = self.groups.groups.borrow_mut();
        for (name, replayed) in state {
            let mut group = Group::new(name.clone(), replayed.meta);
            group.offsets = replayed.offsets;
            groups.insert(name, GroupSlot::new(group));
        }
        self.groups.loaded.borrow_mut().insert(partition);
        self.groups
            .compacted_size
            .borrow_mut()
            .insert(partition, log.size_bytes());
        tracing::debug!(
            shard = self.id(),
            partition,
            records,
            "offsets partition loaded"
        );
    }

    /// Starts a snapshot compaction of `partition` when it has grown to
    /// twice its live size and past two segments.
    fn maybe_compact(self: &Rc<Self>, partition: u32, log: Rc<PartitionLog>) {
        let size = log.size_bytes();
        let live = self
            .groups
            .compacted_size
            .borrow()
            .get(&partition)
            .copied()
            .unwrap_or(0);
        let threshold = (2 * log.config().segment_bytes).max(2 * live);
        if size < threshold || !self.groups.compacting.borrow_mut().insert(partition) {
            return;
        }
        let shard = self.clone();
        glommio::spawn_local(async move {
            if let Err(err) = shard.compact_offsets(partition, &log).await {
                tracing::warn!(partition, error = %err, "offsets compaction failed; will retry");
            }
            shard.groups.compacting.borrow_mut().remove(&partition);
        })
        .detach();
    }

    /// Rewrites the live state of `partition` at the end of its log, then
    /// deletes the whole segments below where the rewrite began: every
    /// record there is superseded (the state in memory reflects every
    /// record appended before `start`, since commits update it at append).
    async fn compact_offsets(&self, partition: u32, log: &PartitionLog) -> Result<(), ApiError> {
        let (start, snapshot) = {
            let groups = self.groups.groups.borrow();
            let records: Vec<OffsetsRecord> = groups
                .values()
                .filter(|slot| {
                    self.coordinator_of(&slot.group.name).map(|(p, _)| p) == Ok(partition)
                })
                .flat_map(|slot| snapshot_records(&slot.group))
                .collect();
            (log.log_end_offset(), records)
        };
        let mut last = None;
        for chunk in snapshot.chunks(SNAPSHOT_BATCH_RECORDS) {
            let batch = build_offsets_batch(chunk)?;
            let appended = log
                .append(BytesMut::from(batch), Acks::Fsync)
                .map_err(|e| log_error_to_api(&e))?;
            last = Some(appended.durable);
        }
        if let Some(durable) = last {
            durable.await.map_err(|e| log_error_to_api(&e))?;
        }
        let deleted = log
            .delete_segments_before(start)
            .await
            .map_err(|e| log_error_to_api(&e))?;
        let size = log.size_bytes();
        self.groups
            .compacted_size
            .borrow_mut()
            .insert(partition, size);
        tracing::info!(
            partition,
            records = snapshot.len(),
            deleted,
            size_bytes = size,
            "offsets partition compacted"
        );
        Ok(())
    }
}

fn snapshot_records(group: &Group) -> Vec<OffsetsRecord> {
    let mut records = vec![OffsetsRecord::Group {
        group: group.name.clone(),
        meta: Some(group.meta()),
    }];
    records.extend(group.offsets.iter().map(|(k, c)| OffsetsRecord::Offset {
        group: group.name.clone(),
        key: k.clone(),
        value: Some(c.clone()),
    }));
    records
}

/// Applies every record of `chunk` (whole batches); returns the offset
/// after the last batch. Unreadable records are skipped with a warning:
/// one bad record must not make a whole partition's groups unservable.
fn replay_chunk(
    chunk: &Bytes,
    state: &mut BTreeMap<String, ReplayedGroup>,
    records: &mut u64,
) -> i64 {
    let mut next = -1;
    for batch in BatchSplitter::new(chunk) {
        let batch = match batch {
            Ok(b) => b,
            Err(err) => {
                tracing::warn!(error = %err, "skipping an unreadable offsets batch");
                break;
            }
        };
        next = batch.header.next_offset();
        let bytes = chunk.slice(batch.position..batch.position + batch.size);
        let iter = match RecordIter::new(bytes) {
            Ok(iter) => iter,
            Err(err) => {
                tracing::warn!(error = %err, "skipping an unreadable offsets batch");
                continue;
            }
        };
        for record in iter {
            let Ok(record) = record else { break };
            let key = record.key.as_deref().unwrap_or_default();
            match OffsetsRecord::decode(key, record.value.as_deref()) {
                Ok(decoded) => {
                    apply_record(state, decoded);
                    *records += 1;
                }
                Err(err) => {
                    tracing::warn!(offset = record.offset, error = %err, "skipping a record")
                }
            }
        }
    }
    next
}

fn build_offsets_batch(records: &[OffsetsRecord]) -> Result<Bytes, ApiError> {
    assert!(!records.is_empty());
    let now = now_ms();
    let mut builder = BatchBuilder::new(Compression::None, now);
    for record in records {
        let key = record.key_bytes();
        let value = record.value_bytes();
        builder
            .append(now, Some(&key), value.as_deref(), &[])
            .map_err(|e| {
                ApiError::new(
                    ErrorCode::MessageTooLarge,
                    format!("offset commit too large: {e}"),
                )
            })?;
    }
    builder.build().map_err(|e| {
        ApiError::new(
            ErrorCode::MessageTooLarge,
            format!("offset commit too large: {e}"),
        )
    })
}

fn committed_offset(key: &OffsetKey, committed: &Committed) -> CommittedOffset {
    CommittedOffset {
        topic: key.topic.clone(),
        partition: key.partition,
        offset: committed.offset,
        metadata: committed.metadata.clone(),
        commit_time_ms: committed.commit_time_ms,
        instance_id: key.instance_id.clone(),
    }
}

fn group_not_found(group: &str) -> ApiError {
    ApiError::new(
        ErrorCode::GroupNotFound,
        format!("group {group:?} does not exist here (no member joined it and it has no offsets)"),
    )
}
