//! Group-managed consumption: [`GroupConsumer`].
//!
//! The broker assigns partitions (server-side assignors) and runs the eager
//! rebalance protocol of Kafka's classic groups:
//!
//! 1. `poll` joins the group (JoinGroup, a long poll that returns once the
//!    rebalance completes) and gets a generation and an assignment;
//! 2. it tells the [`RebalanceListener`] (`on_assigned`), reads the
//!    committed offsets (OffsetFetch) and starts each partition there, or
//!    at the reset policy when there is none;
//! 3. a heartbeat thread keeps the session alive; when the broker answers
//!    `rebalance_in_progress`, the next `poll` commits (with auto-commit),
//!    calls `on_revoked` with everything, stops fetching and rejoins. A
//!    member whose generation is over (`illegal_generation`) or that the
//!    broker dropped (`unknown_member_id`) gets `on_lost` instead (it can
//!    no longer commit) and rejoins;
//! 4. fetches carry a fence (group, member, generation), so the broker
//!    refuses them once this member's generation is over;
//! 5. `close` (or drop) commits, revokes, leaves the group and stops the
//!    heartbeat thread.
//!
//! Everything application-visible (listener calls, commit callbacks,
//! records) happens on the thread that calls `poll`. `poll` never blocks
//! much past its timeout: a join in flight is waited for in `poll`'s time
//! slices, not all at once.
//!
//! Offsets follow Kafka's convention: the committed offset is the next one
//! to read. Auto-commit commits positions, i.e. everything `poll` returned
//! before; it runs at the interval from `poll`, before a rebalance and on
//! close. That gives at-least-once delivery as long as the application has
//! processed what one `poll` returned before calling `poll` again.

mod coordinator;
mod heartbeat;
pub(crate) mod offsets;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel as channel;
pub use ringmq_wire::envelope::{Assignor, GroupMode};
use ringmq_wire::envelope::{
    FetchFence, HeartbeatRequest, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest, RequestBody, ResponseBody,
};
use ringmq_wire::error::ErrorCode;

use crate::connection::{ReplyResult, JOIN_GRACE_MS};
use crate::consumer::{Consumer, ConsumerConfig, ConsumerRecord, StartFrom};
use crate::error::{ClientError, Result};
use crate::Client;
use coordinator::Coordinator;
use heartbeat::{Shared, Signal};
use offsets::{
    commit_outcome, commit_topics, flatten_assignment, offsets_to_commit, split_by_committed,
    topics_of, CommittedMap, TopicPartition,
};

/// Longest one wait inside `poll` lasts, so that heartbeat signals and
/// commit answers are acted on promptly even under a long `poll` timeout.
const POLL_SLICE: Duration = Duration::from_millis(100);

/// How long fetches may keep being refused by a shard whose fence is
/// behind the coordinator before the member rejoins (which makes the
/// coordinator push a fresh fence to every shard).
const STALE_FENCE_LIMIT: Duration = Duration::from_secs(2);

/// How a [`GroupConsumer`] joins its group and manages offsets.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// The group's name.
    pub group: String,
    /// Clustering: each partition to one member. Broadcasting: every
    /// member reads every partition and keeps its own offsets.
    pub mode: GroupMode,
    /// How the broker assigns partitions (clustering). The first member to
    /// join an empty group decides for the group.
    pub assignor: Assignor,
    /// Broadcasting: the stable name this consumer's offsets are kept
    /// under. Give the same id after a restart to resume where it stopped;
    /// when `None`, a fresh id is generated, so a restarted consumer starts
    /// every partition at `reset`. Clustering: only shown by describe.
    pub instance_id: Option<String>,
    /// The broker drops a member it has not heard from for this long.
    pub session_timeout_ms: u32,
    /// How long a rebalance waits for members to rejoin (and so the
    /// longest a join can take, plus the broker's 5 s grace).
    pub rebalance_timeout_ms: u32,
    /// Commit positions every `auto_commit_interval_ms`, before giving
    /// partitions up in a rebalance, and on close.
    pub auto_commit: bool,
    pub auto_commit_interval_ms: u64,
    /// Where a partition without a committed offset (or whose committed
    /// offset fell out of the log) starts: `Earliest` or `Latest`.
    pub reset: StartFrom,
    /// Fetch settings of the underlying [`Consumer`].
    pub consumer: ConsumerConfig,
}

impl GroupConfig {
    /// The defaults for `group`.
    pub fn new(group: impl Into<String>) -> GroupConfig {
        GroupConfig {
            group: group.into(),
            ..GroupConfig::default()
        }
    }
}

impl Default for GroupConfig {
    /// Every default but the group name, which must be set.
    fn default() -> Self {
        GroupConfig {
            group: String::new(),
            mode: GroupMode::Clustering,
            assignor: Assignor::Sticky,
            instance_id: None,
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 30_000,
            auto_commit: true,
            auto_commit_interval_ms: 5_000,
            reset: StartFrom::Earliest,
            consumer: ConsumerConfig::default(),
        }
    }
}

/// Told when this member's partitions change. Called on the thread that
/// calls [`GroupConsumer::poll`] (or `close`), never concurrently.
pub trait RebalanceListener {
    /// The member owns `partitions` in `generation` (sorted; possibly
    /// none). Called before their committed offsets are read.
    fn on_assigned(&mut self, generation: i32, partitions: &[(String, u32)]);

    /// The member gives up `partitions` of `generation` cleanly: a
    /// rebalance or close. With auto-commit, their positions were just
    /// committed; commit anything else of yours here.
    fn on_revoked(&mut self, generation: i32, partitions: &[(String, u32)]);

    /// The member lost `partitions` without being able to commit: its
    /// generation is over or the broker dropped it, and others may already
    /// own them. Defaults to [`RebalanceListener::on_revoked`].
    fn on_lost(&mut self, generation: i32, partitions: &[(String, u32)]) {
        self.on_revoked(generation, partitions);
    }
}

/// Runs with the outcome of [`GroupConsumer::commit_async`].
pub type CommitCallback = Box<dyn FnOnce(Result<()>) + Send>;

/// A read-only view of a consumer's membership that other threads (and
/// rebalance listeners) may hold: it reflects the latest completed join.
#[derive(Clone)]
pub struct Membership {
    shared: Arc<Shared>,
}

impl Membership {
    /// The broker-assigned member id ("" before the first join).
    pub fn member_id(&self) -> String {
        self.shared.member_id()
    }

    /// The current generation (-1 before the first join).
    pub fn generation(&self) -> i32 {
        self.shared.generation()
    }
}

enum Phase {
    /// Not in a generation; join at `retry_at`.
    Unjoined { retry_at: Instant },
    /// A JoinGroup is in flight.
    Joining,
    /// Owns `owned` in the current generation.
    Stable,
}

/// An asynchronous commit's answer, queued for the poll thread.
struct AsyncCommit {
    offsets: Vec<(String, u32, i64)>,
    generation: i32,
    answer: Result<ResponseBody>,
    callback: Option<CommitCallback>,
}

/// A consumer whose partitions are assigned by a consumer group. See the
/// module docs for the protocol; `poll` drives all of it.
pub struct GroupConsumer {
    client: Client,
    config: GroupConfig,
    /// Sent with joins; broadcasting offsets are kept under it.
    instance_id: String,
    topics: Vec<String>,
    /// The topics of the last join: a different subscription rejoins.
    joined_topics: Vec<String>,
    consumer: Consumer,
    coordinator: Arc<Coordinator>,
    shared: Arc<Shared>,
    heartbeat: Option<std::thread::JoinHandle<()>>,
    listener: Option<Box<dyn RebalanceListener + Send>>,
    phase: Phase,
    member_id: String,
    generation: i32,
    /// Assigned in the current generation, sorted.
    owned: Vec<TopicPartition>,
    /// Owned partitions still waiting for their start position.
    unpositioned: Vec<TopicPartition>,
    /// What the broker acknowledged, per owned partition.
    last_committed: CommittedMap,
    next_auto_commit: Instant,
    /// Since when shards have refused fetches that the coordinator says
    /// are this member's to make (their fence lags behind).
    stale_fence_since: Option<Instant>,
    commits_tx: channel::Sender<AsyncCommit>,
    commits_rx: channel::Receiver<AsyncCommit>,
    async_commits_in_flight: usize,
    closed: bool,
}

impl GroupConsumer {
    /// Creates the consumer and its heartbeat thread. Nothing is sent
    /// until the first [`GroupConsumer::poll`].
    pub fn new(client: Client, config: GroupConfig) -> Result<GroupConsumer> {
        validate(&config)?;
        let instance_id = match (&config.instance_id, config.mode) {
            (Some(id), _) => id.clone(),
            (None, GroupMode::Broadcasting) => generated_instance_id(&client.config().client_id),
            (None, GroupMode::Clustering) => String::new(),
        };
        let coordinator = Arc::new(Coordinator::new(client.clone(), config.group.clone()));
        let shared = Arc::new(Shared::new());
        let heartbeat = heartbeat::spawn(shared.clone(), coordinator.clone(), config.group.clone())
            .map_err(|e| ClientError::Io {
                endpoint: "localhost".into(),
                message: format!("cannot start the heartbeat thread: {e}"),
            })?;
        let (commits_tx, commits_rx) = channel::unbounded();
        Ok(GroupConsumer {
            consumer: Consumer::new(client.clone(), config.consumer.clone()),
            client,
            instance_id,
            topics: Vec::new(),
            joined_topics: Vec::new(),
            coordinator,
            shared,
            heartbeat: Some(heartbeat),
            listener: None,
            phase: Phase::Unjoined {
                retry_at: Instant::now(),
            },
            member_id: String::new(),
            generation: -1,
            owned: Vec::new(),
            unpositioned: Vec::new(),
            last_committed: CommittedMap::new(),
            next_auto_commit: Instant::now(),
            stale_fence_since: None,
            commits_tx,
            commits_rx,
            async_commits_in_flight: 0,
            closed: false,
            config,
        })
    }

    /// Sets the topics to consume. Takes effect at the next `poll`: a
    /// member already in the group rejoins with the new subscription.
    pub fn subscribe(&mut self, topics: &[String]) {
        let mut topics = topics.to_vec();
        topics.sort();
        topics.dedup();
        self.topics = topics;
    }

    /// Replaces the listener told about assignment changes.
    pub fn set_rebalance_listener(&mut self, listener: Box<dyn RebalanceListener + Send>) {
        self.listener = Some(listener);
    }

    /// A handle on the membership that other threads and listeners can
    /// read (e.g. to log the member id from `on_assigned`).
    pub fn membership(&self) -> Membership {
        Membership {
            shared: self.shared.clone(),
        }
    }

    /// Returns the records available within `timeout` (possibly none),
    /// joining the group, handling rebalances and auto-committing on the
    /// way. Each partition's records come in offset order.
    pub fn poll(&mut self, timeout: Duration) -> Result<Vec<ConsumerRecord>> {
        if self.topics.is_empty() {
            return Err(ClientError::InvalidArgument(
                "subscribe to at least one topic before polling".into(),
            ));
        }
        let deadline = Instant::now() + timeout;
        loop {
            self.run_commit_callbacks();
            self.handle_signal();
            let records = self.poll_step(deadline)?;
            if !records.is_empty() || Instant::now() >= deadline {
                return Ok(records);
            }
        }
    }

    /// One pass: make sure the member is in a generation with positioned
    /// partitions, auto-commit if due, fetch for at most one slice.
    fn poll_step(&mut self, deadline: Instant) -> Result<Vec<ConsumerRecord>> {
        if !self.ensure_member(deadline)? || !self.ensure_positions(deadline)? {
            return Ok(Vec::new());
        }
        self.maybe_auto_commit();
        self.fetch(deadline)
    }

    /// Commits the positions of every owned partition and waits for the
    /// answer (after any asynchronous commits still in flight).
    pub fn commit_sync(&mut self) -> Result<()> {
        let offsets = self.positions_to_commit(false);
        self.commit_sync_offsets(&offsets)
    }

    /// Commits explicit (topic, partition, next offset to read) triples and
    /// waits for the answer.
    pub fn commit_sync_offsets(&mut self, offsets: &[(String, u32, i64)]) -> Result<()> {
        if offsets.is_empty() {
            return Ok(());
        }
        self.require_member()?;
        self.wait_async_commits();
        let body = self.commit_request(offsets);
        let answer = self.coordinator.call("offset_commit", body);
        self.commit_answer(answer, offsets, self.generation)
    }

    /// Commits the positions of every owned partition without waiting.
    /// `callback` runs with the outcome on the thread that calls `poll`,
    /// during the first `poll` (or `commit_sync`, or `close`) after the
    /// broker answered; never on an I/O thread.
    pub fn commit_async(&mut self, callback: Option<CommitCallback>) {
        let offsets = self.positions_to_commit(false);
        self.send_async_commit(offsets, callback);
    }

    /// Moves an owned partition to `offset`: the next `poll` returns
    /// records from there, and the next commit commits from there.
    pub fn seek(&mut self, topic: &str, partition: u32, offset: i64) -> Result<()> {
        if !self.owns(topic, partition) {
            return Err(ClientError::InvalidArgument(format!(
                "{topic}/{partition} is not assigned to this member of group {}",
                self.config.group
            )));
        }
        let pending = self
            .unpositioned
            .iter()
            .position(|(t, p)| t == topic && *p == partition);
        match pending {
            Some(index) => {
                self.consumer
                    .assign_positions(vec![(topic.to_string(), partition, offset)])?;
                self.unpositioned.remove(index);
                Ok(())
            }
            None => self.consumer.seek(topic, partition, offset),
        }
    }

    /// The next offset `poll` returns for an owned, positioned partition.
    pub fn position(&self, topic: &str, partition: u32) -> Option<i64> {
        self.consumer.position(topic, partition)
    }

    /// The partitions owned in the current generation, sorted.
    pub fn assignment(&self) -> Vec<(String, u32)> {
        self.owned.clone()
    }

    /// The current generation (-1 before the first join).
    pub fn generation(&self) -> i32 {
        self.generation
    }

    /// The broker-assigned member id ("" before the first join).
    pub fn member_id(&self) -> &str {
        &self.member_id
    }

    /// This consumer's committed offset of a partition (the next offset to
    /// read), as the broker has it now.
    pub fn committed(&self, topic: &str, partition: u32) -> Result<Option<i64>> {
        let offsets = self.fetch_committed(vec![topic.to_string()])?;
        Ok(offsets
            .iter()
            .find(|c| c.topic == topic && c.partition == partition)
            .map(|c| c.offset))
    }

    /// Commits (with auto-commit), revokes, leaves the group and stops the
    /// heartbeat thread. Returns the first failure, after doing all of it.
    /// A first join still in flight is waited for, so that the member it
    /// creates can leave (the join completes within the rebalance timeout).
    pub fn close(mut self) -> Result<()> {
        self.shutdown()
    }

    // ------------------------------------------------------------ membership

    /// Acts on a signal from the heartbeat thread (or from a fenced fetch
    /// or commit), and on a changed subscription.
    fn handle_signal(&mut self) {
        if !matches!(self.phase, Phase::Stable) {
            return;
        }
        let resubscribed = self.topics != self.joined_topics;
        match self.shared.take_signal() {
            Some(Signal::Fenced(code)) => self.lose_and_rejoin(code),
            Some(Signal::Rebalance) => self.revoke_and_rejoin("the group is rebalancing"),
            None if resubscribed => self.revoke_and_rejoin("the subscription changed"),
            None => {}
        }
    }

    fn revoke_and_rejoin(&mut self, why: &str) {
        tracing::info!(group = %self.config.group, generation = self.generation, why, "giving up partitions to rejoin");
        if self.config.auto_commit {
            if let Err(e) = self.commit_sync() {
                tracing::warn!(group = %self.config.group, error = %e, "commit before the rebalance failed");
            }
        }
        if let Some(listener) = self.listener.as_mut() {
            listener.on_revoked(self.generation, &self.owned);
        }
        self.give_up_assignment();
    }

    fn lose_and_rejoin(&mut self, code: ErrorCode) {
        tracing::info!(group = %self.config.group, generation = self.generation, %code, "fenced; rejoining");
        if let Some(listener) = self.listener.as_mut() {
            listener.on_lost(self.generation, &self.owned);
        }
        self.give_up_assignment();
        if code == ErrorCode::UnknownMemberId {
            self.member_id.clear();
            self.shared.forget_member();
        }
    }

    fn give_up_assignment(&mut self) {
        self.consumer.unassign_all();
        self.consumer.set_fence(None);
        self.owned.clear();
        self.unpositioned.clear();
        self.last_committed.clear();
        self.phase = Phase::Unjoined {
            retry_at: Instant::now(),
        };
    }

    /// Joins (or keeps waiting for the join) until `deadline`; true once
    /// the member is in a generation.
    fn ensure_member(&mut self, deadline: Instant) -> Result<bool> {
        loop {
            match self.phase {
                Phase::Stable => return Ok(true),
                Phase::Joining => match self.shared.wait_join_answer(deadline) {
                    Some(answer) => self.on_join_answer(answer)?,
                    None => return Ok(false),
                },
                Phase::Unjoined { retry_at } => {
                    let wake = retry_at.min(deadline);
                    let now = Instant::now();
                    if wake > now {
                        std::thread::sleep(wake - now);
                    }
                    if Instant::now() < retry_at {
                        return Ok(false);
                    }
                    self.send_join();
                }
            }
        }
    }

    fn send_join(&mut self) {
        self.shared.begin_join();
        self.joined_topics = self.topics.clone();
        let body = RequestBody::JoinGroup(JoinGroupRequest {
            group: self.config.group.clone(),
            member_id: self.member_id.clone(),
            instance_id: self.instance_id.clone(),
            client_id: self.client.config().client_id.clone(),
            mode: self.config.mode,
            assignor: self.config.assignor,
            topics: self.topics.clone(),
            session_timeout_ms: self.config.session_timeout_ms,
            rebalance_timeout_ms: self.config.rebalance_timeout_ms,
            ..Default::default()
        });
        let shared = self.shared.clone();
        self.coordinator
            .request_with_callback(body, move |answer| shared.deliver_join(answer));
        self.phase = Phase::Joining;
    }

    fn on_join_answer(&mut self, answer: ReplyResult) -> Result<()> {
        let error = match answer.map(|(response, _)| response.body) {
            Ok(ResponseBody::JoinGroup(joined)) => {
                self.adopt(joined);
                return Ok(());
            }
            Ok(_) => self.client.cluster().unexpected_body("join group"),
            Err(e) => e,
        };
        self.phase = Phase::Unjoined {
            retry_at: Instant::now() + self.retry_backoff(),
        };
        match error.code() {
            Some(ErrorCode::UnknownMemberId) => {
                tracing::debug!(group = %self.config.group, "member unknown to the broker; joining afresh");
                self.member_id.clear();
                self.shared.forget_member();
                self.phase = Phase::Unjoined {
                    retry_at: Instant::now(),
                };
                Ok(())
            }
            Some(ErrorCode::RebalanceInProgress | ErrorCode::IllegalGeneration) => Ok(()),
            _ if is_transient(&error) => {
                tracing::debug!(group = %self.config.group, error = %error, "join failed; retrying");
                self.coordinator.note_error(&error);
                Ok(())
            }
            _ => Err(error),
        }
    }

    /// Takes a successful join's outcome: the new generation's assignment.
    fn adopt(&mut self, joined: JoinGroupResponse) {
        self.member_id = joined.member_id;
        self.generation = joined.generation;
        self.owned = flatten_assignment(&joined.assignment);
        self.unpositioned = self.owned.clone();
        self.consumer.set_fence(Some(FetchFence {
            group: self.config.group.clone(),
            member_id: self.member_id.clone(),
            generation: self.generation,
        }));
        self.phase = Phase::Stable;
        self.next_auto_commit = Instant::now() + self.auto_commit_interval();
        self.stale_fence_since = None;
        tracing::info!(group = %self.config.group, member_id = %self.member_id, generation = self.generation, partitions = self.owned.len(), members = joined.member_count, "joined");
        if let Some(listener) = self.listener.as_mut() {
            listener.on_assigned(self.generation, &self.owned);
        }
    }

    /// Starts the partitions of a fresh assignment at their committed
    /// offsets, or at the reset policy. False (after a short backoff) when
    /// that failed for a transient reason: the next pass retries.
    fn ensure_positions(&mut self, deadline: Instant) -> Result<bool> {
        if self.unpositioned.is_empty() {
            return Ok(true);
        }
        match self.position_assigned() {
            Ok(()) => Ok(true),
            Err(e) if is_transient(&e) => {
                tracing::debug!(group = %self.config.group, error = %e, "cannot position partitions yet; retrying");
                let wait = self
                    .retry_backoff()
                    .min(deadline.saturating_duration_since(Instant::now()));
                std::thread::sleep(wait);
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    fn position_assigned(&mut self) -> Result<()> {
        let committed = self.fetch_committed(topics_of(&self.unpositioned))?;
        let (at_committed, at_reset) = split_by_committed(&self.unpositioned, &committed);
        let reset = self.config.reset;
        self.consumer.assign_partitions(
            at_reset
                .into_iter()
                .map(|(topic, partition)| (topic, partition, reset))
                .collect(),
        )?;
        for (topic, partition, offset) in &at_committed {
            self.last_committed
                .insert((topic.clone(), *partition), *offset);
        }
        self.consumer.assign_positions(at_committed)?;
        self.unpositioned.clear();
        Ok(())
    }

    // --------------------------------------------------------------- fetch

    /// Fetches for at most one slice. A member that owns nothing waits for
    /// a signal instead (there may be more members than partitions).
    fn fetch(&mut self, deadline: Instant) -> Result<Vec<ConsumerRecord>> {
        let slice_end = deadline.min(Instant::now() + POLL_SLICE);
        if self.owned.is_empty() {
            self.shared.wait_signal(slice_end);
            return Ok(Vec::new());
        }
        match self
            .consumer
            .poll(slice_end.saturating_duration_since(Instant::now()))
        {
            Ok(records) => Ok(records),
            Err(e) => self.on_fetch_error(e).map(|()| Vec::new()),
        }
    }

    /// A committed offset that fell out of the log restarts at the reset
    /// policy (as Kafka's `auto.offset.reset`); a fenced fetch rejoins.
    fn on_fetch_error(&mut self, error: ClientError) -> Result<()> {
        if let ClientError::OffsetOutOfRange {
            topic, partition, ..
        } = &error
        {
            tracing::warn!(group = %self.config.group, error = %error, reset = ?self.config.reset, "position out of range; resetting");
            return self.consumer.seek_to(topic, *partition, self.config.reset);
        }
        match Signal::of(&error) {
            Some(_) => {
                self.on_fetch_fenced(&error);
                Ok(())
            }
            None => Err(error),
        }
    }

    /// A shard refused a fetch as coming from a fenced member. Shards learn
    /// of new generations asynchronously, so the refusing one may be behind:
    /// the coordinator, which is authoritative, decides.
    fn on_fetch_fenced(&mut self, refusal: &ClientError) {
        let verdict = self.heartbeat_now();
        if let Err(e) = &verdict {
            if let Some(signal) = Signal::of(e) {
                self.shared.raise(&self.member_id, self.generation, signal);
                return;
            }
        }
        // Still a member (or the coordinator cannot say right now): retry
        // the fetch shortly, and rejoin if the refusals persist.
        let since = *self.stale_fence_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= STALE_FENCE_LIMIT {
            tracing::warn!(group = %self.config.group, error = %refusal, "fetches keep being refused though the coordinator knows this member; rejoining");
            self.stale_fence_since = None;
            self.shared
                .raise(&self.member_id, self.generation, Signal::Rebalance);
            return;
        }
        tracing::debug!(group = %self.config.group, error = %refusal, "fetch refused by a shard whose fence lags; retrying");
        std::thread::sleep(self.retry_backoff());
    }

    /// One heartbeat from the poll thread, answered by the coordinator.
    fn heartbeat_now(&self) -> Result<()> {
        let body = RequestBody::Heartbeat(HeartbeatRequest {
            group: self.config.group.clone(),
            member_id: self.member_id.clone(),
            generation: self.generation,
        });
        self.coordinator.call("heartbeat", body).map(|_| ())
    }

    // ------------------------------------------------------------- commits

    fn positions_to_commit(&self, only_changed: bool) -> Vec<(String, u32, i64)> {
        offsets_to_commit(
            &self.owned,
            |topic, partition| self.consumer.position(topic, partition),
            &self.last_committed,
            only_changed,
        )
    }

    fn maybe_auto_commit(&mut self) {
        let due = self.config.auto_commit
            && self.async_commits_in_flight == 0
            && Instant::now() >= self.next_auto_commit;
        if !due {
            return;
        }
        self.next_auto_commit = Instant::now() + self.auto_commit_interval();
        let offsets = self.positions_to_commit(true);
        if !offsets.is_empty() {
            self.send_async_commit(offsets, None);
        }
    }

    fn require_member(&self) -> Result<()> {
        if self.member_id.is_empty() {
            return Err(ClientError::InvalidArgument(format!(
                "not a member of group {} yet: poll() joins it",
                self.config.group
            )));
        }
        Ok(())
    }

    fn commit_request(&self, offsets: &[(String, u32, i64)]) -> RequestBody {
        RequestBody::OffsetCommit(OffsetCommitRequest {
            group: self.config.group.clone(),
            member_id: self.member_id.clone(),
            generation: self.generation,
            // A member's commits go under the instance the broker has for it.
            instance_id: String::new(),
            topics: commit_topics(offsets),
        })
    }

    fn send_async_commit(
        &mut self,
        offsets: Vec<(String, u32, i64)>,
        callback: Option<CommitCallback>,
    ) {
        self.async_commits_in_flight += 1;
        let generation = self.generation;
        let tx = self.commits_tx.clone();
        let nothing_to_send = if offsets.is_empty() {
            Some(Ok(ResponseBody::OffsetCommit(
                OffsetCommitResponse::default(),
            )))
        } else {
            self.require_member().err().map(Err)
        };
        if let Some(answer) = nothing_to_send {
            // Answered on the next poll all the same: one contract for callers.
            let _ = tx.send(AsyncCommit {
                offsets,
                generation,
                answer,
                callback,
            });
            return;
        }
        let body = self.commit_request(&offsets);
        self.coordinator.request_with_callback(body, move |reply| {
            // The consumer may be gone; then nobody needs the answer.
            let _ = tx.send(AsyncCommit {
                offsets,
                generation,
                answer: reply.map(|(response, _)| response.body),
                callback,
            });
        });
    }

    /// Runs the callbacks of asynchronous commits that were answered.
    fn run_commit_callbacks(&mut self) {
        while let Ok(done) = self.commits_rx.try_recv() {
            self.finish_async_commit(done);
        }
    }

    /// Waits (at most a request timeout) for asynchronous commits in
    /// flight, so that a later commit cannot be overtaken by an older one.
    fn wait_async_commits(&mut self) {
        let deadline =
            Instant::now() + Duration::from_millis(self.client.config().request_timeout_ms);
        while self.async_commits_in_flight > 0 {
            let wait = deadline.saturating_duration_since(Instant::now());
            match self.commits_rx.recv_timeout(wait) {
                Ok(done) => self.finish_async_commit(done),
                Err(_) => return,
            }
        }
    }

    fn finish_async_commit(&mut self, done: AsyncCommit) {
        self.async_commits_in_flight = self.async_commits_in_flight.saturating_sub(1);
        let result = self.commit_answer(done.answer, &done.offsets, done.generation);
        match done.callback {
            Some(callback) => callback(result),
            None => {
                if let Err(e) = result {
                    tracing::warn!(group = %self.config.group, error = %e, "auto-commit failed");
                }
            }
        }
    }

    /// Reads a commit's answer: remembers what the broker acknowledged, and
    /// turns a fencing refusal into a signal for the next `poll`.
    fn commit_answer(
        &mut self,
        answer: Result<ResponseBody>,
        offsets: &[(String, u32, i64)],
        generation: i32,
    ) -> Result<()> {
        let outcome = answer.and_then(|body| match body {
            ResponseBody::OffsetCommit(response) => commit_outcome(&self.config.group, &response),
            _ => Err(self.client.cluster().unexpected_body("offset commit")),
        });
        match &outcome {
            Ok(()) if generation == self.generation => {
                for (topic, partition, offset) in offsets {
                    if self.owns(topic, *partition) {
                        self.last_committed
                            .insert((topic.clone(), *partition), *offset);
                    }
                }
            }
            Ok(()) => {}
            Err(e) => match Signal::of(e) {
                Some(signal) => self.shared.raise(&self.member_id, generation, signal),
                None => self.coordinator.note_error(e),
            },
        }
        outcome
    }

    /// Committed offsets of this consumer (its instance's, broadcasting).
    fn fetch_committed(
        &self,
        topics: Vec<String>,
    ) -> Result<Vec<ringmq_wire::envelope::CommittedOffset>> {
        let instance_id = match self.config.mode {
            GroupMode::Broadcasting => self.instance_id.clone(),
            GroupMode::Clustering => String::new(),
        };
        let body = RequestBody::OffsetFetch(OffsetFetchRequest {
            group: self.config.group.clone(),
            instance_id,
            topics: Some(topics),
        });
        match self.coordinator.call("offset_fetch", body)? {
            ResponseBody::OffsetFetch(fetched) => Ok(fetched.offsets),
            _ => Err(self.client.cluster().unexpected_body("offset fetch")),
        }
    }

    // --------------------------------------------------------------- close

    fn shutdown(&mut self) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        self.settle_join();
        let mut outcome = Ok(());
        if matches!(self.phase, Phase::Stable) {
            if self.config.auto_commit {
                outcome = self.commit_sync();
            }
            if let Some(listener) = self.listener.as_mut() {
                listener.on_revoked(self.generation, &self.owned);
            }
            self.give_up_assignment();
        }
        self.wait_async_commits();
        self.stop_heartbeats();
        if let Err(e) = self.leave() {
            if outcome.is_ok() {
                outcome = Err(e);
            }
        }
        outcome
    }

    /// Resolves a join in flight before leaving. A rejoin needs no wait:
    /// leaving makes the broker answer it. A first join is waited for,
    /// since its member id is needed to leave.
    fn settle_join(&mut self) {
        if !matches!(self.phase, Phase::Joining) {
            return;
        }
        self.phase = Phase::Unjoined {
            retry_at: Instant::now(),
        };
        if !self.member_id.is_empty() {
            return;
        }
        let limit_ms = u64::from(self.config.rebalance_timeout_ms)
            + JOIN_GRACE_MS
            + self.client.config().request_timeout_ms;
        let answer = self
            .shared
            .wait_join_answer(Instant::now() + Duration::from_millis(limit_ms));
        if let Some(Ok((response, _))) = answer {
            if let ResponseBody::JoinGroup(joined) = response.body {
                self.member_id = joined.member_id;
                self.generation = joined.generation;
            }
        }
    }

    fn stop_heartbeats(&mut self) {
        self.shared.stop();
        if let Some(handle) = self.heartbeat.take() {
            if handle.join().is_err() {
                tracing::warn!(group = %self.config.group, "the heartbeat thread panicked");
            }
        }
    }

    /// Leaves the group, so that the others rebalance at once instead of
    /// after this member's session times out.
    fn leave(&mut self) -> Result<()> {
        if self.member_id.is_empty() {
            return Ok(());
        }
        let body = RequestBody::LeaveGroup(LeaveGroupRequest {
            group: self.config.group.clone(),
            member_id: self.member_id.clone(),
        });
        let result = self.coordinator.call("leave_group", body);
        self.member_id.clear();
        self.shared.forget_member();
        match result {
            Ok(_) => Ok(()),
            // Already gone (session expired, or a retried leave).
            Err(e) if e.code() == Some(ErrorCode::UnknownMemberId) => Ok(()),
            Err(e) => Err(e),
        }
    }

    // ------------------------------------------------------------- helpers

    fn owns(&self, topic: &str, partition: u32) -> bool {
        self.owned
            .iter()
            .any(|(t, p)| t == topic && *p == partition)
    }

    fn retry_backoff(&self) -> Duration {
        Duration::from_millis(self.client.config().retry_backoff_ms.max(50))
    }

    fn auto_commit_interval(&self) -> Duration {
        Duration::from_millis(self.config.auto_commit_interval_ms)
    }
}

impl Drop for GroupConsumer {
    /// Closes like [`GroupConsumer::close`], logging a failure.
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!(group = %self.config.group, error = %e, "closing the group consumer failed");
        }
    }
}

/// Errors after which the same step may succeed later: retriable broker
/// errors, broken connections, and timeouts (which reset the connection).
fn is_transient(error: &ClientError) -> bool {
    error.is_retriable() || matches!(error, ClientError::Timeout { .. })
}

fn validate(config: &GroupConfig) -> Result<()> {
    let invalid = |message: &str| Err(ClientError::InvalidArgument(message.to_string()));
    if config.group.is_empty() {
        return invalid("the group name must not be empty");
    }
    if !matches!(config.reset, StartFrom::Earliest | StartFrom::Latest) {
        return invalid("a group consumer's reset policy must be Earliest or Latest");
    }
    if config.session_timeout_ms == 0 || config.rebalance_timeout_ms == 0 {
        return invalid("session_timeout_ms and rebalance_timeout_ms must be at least 1");
    }
    if config.auto_commit && config.auto_commit_interval_ms == 0 {
        return invalid("auto_commit_interval_ms must be at least 1");
    }
    if config.instance_id.as_deref() == Some("") {
        return invalid("instance_id must not be empty (use None to generate one)");
    }
    Ok(())
}

/// A broadcasting instance id unique to this process and moment. Not
/// stable across restarts: such a consumer restarts at the reset policy.
fn generated_instance_id(client_id: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{client_id}-{}-{nanos:x}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_follow_the_documented_values() {
        let config = GroupConfig::new("g");
        assert_eq!(config.group, "g");
        assert_eq!(config.mode, GroupMode::Clustering);
        assert_eq!(config.session_timeout_ms, 10_000);
        assert_eq!(config.rebalance_timeout_ms, 30_000);
        assert!(config.auto_commit);
        assert_eq!(config.auto_commit_interval_ms, 5_000);
        assert_eq!(config.reset, StartFrom::Earliest);
        assert!(validate(&config).is_ok());
    }

    #[test]
    fn invalid_configs_are_refused() {
        assert!(validate(&GroupConfig::default()).is_err(), "no group name");
        let with = |change: fn(&mut GroupConfig)| {
            let mut config = GroupConfig::new("g");
            change(&mut config);
            validate(&config)
        };
        assert!(with(|c| c.reset = StartFrom::Offset(3)).is_err());
        assert!(with(|c| c.session_timeout_ms = 0).is_err());
        assert!(with(|c| c.auto_commit_interval_ms = 0).is_err());
        assert!(with(|c| {
            c.auto_commit = false;
            c.auto_commit_interval_ms = 0;
        })
        .is_ok());
        assert!(with(|c| c.instance_id = Some(String::new())).is_err());
    }

    #[test]
    fn generated_instance_ids_differ() {
        let a = generated_instance_id("svc");
        std::thread::sleep(Duration::from_millis(1));
        let b = generated_instance_id("svc");
        assert!(a.starts_with("svc-"), "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn group_consumer_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<GroupConsumer>();
        assert_send::<Membership>();
    }
}
