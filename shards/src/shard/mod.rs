//! One shard: the partitions it owns, its catalog snapshot, its end of the
//! mesh, and the request handlers that run on its core.
//!
//! Request handling is split in two phases so that pipelining never reorders
//! a producer's batches: [`Shard::submit`] runs the *ordered* phase (offset
//! assignment for local partitions, enqueueing on the mesh for remote ones)
//! and must be awaited by the connection reader before it reads the next
//! frame; it returns the *completion* future (durability, long-poll, remote
//! replies), which the connection runs as its own task.
//!
//! The shard knows nothing of sockets or framing: it takes decoded requests
//! plus their raw payload and returns response bodies plus payload chunks.

mod admin;
mod fetch;
mod group;
mod produce;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_lite::future::{self, BoxedLocal};
use glommio::channels::shared_channel::ConnectedReceiver;
use ringmq_wire::envelope::{Acks, ApiKey, Request, RequestBody, ResponseBody, ShardEndpoint};
use ringmq_wire::error::{ApiError, ErrorCode};

use crate::cache::TailCache;
use crate::catalog::{owner_shard, Catalog, TopicConfig, TopicEntry};
use crate::io::StorageRef;
use crate::log::{LogConfig, LogError, PartitionLog};
use crate::mesh::{Mesh, MeshMsg, PartitionStat, ShardRequest, ShardResponse};
use crate::metrics::ShardMetrics;

/// What one shard needs to start.
#[derive(Debug, Clone)]
pub struct ShardConfig {
    pub shard: usize,
    pub shard_count: usize,
    pub data_dir: PathBuf,
    /// Every shard's advertised shard-aware endpoint, indexed by shard.
    pub endpoints: Vec<ShardEndpoint>,
    pub default_topic_config: TopicConfig,
    pub tail_cache_bytes: usize,
    /// Sequential read-ahead bounds of cold fetches (shard and partition).
    pub readahead: crate::log::readahead::ReadAheadSettings,
    pub max_frame_bytes: usize,
    pub retention_check_ms: u64,
    /// Partitions of `__consumer_offsets` when the broker creates it.
    pub offsets_partitions: u32,
    /// Segment size of `__consumer_offsets`; compaction runs past two of them.
    pub offsets_segment_bytes: u64,
    pub group_settings: crate::group::GroupSettings,
}

/// The answer to one request: a body (or a whole-request error) and the raw
/// payload chunks that follow the envelope. `silent` replies (produce with
/// `acks=none`) are not sent at all.
#[derive(Debug)]
pub struct Reply {
    pub api: ApiKey,
    pub body: Result<ResponseBody, ApiError>,
    pub payload: Vec<Bytes>,
    pub silent: bool,
}

impl Reply {
    pub fn ok(api: ApiKey, body: ResponseBody) -> Reply {
        Reply {
            api,
            body: Ok(body),
            payload: Vec::new(),
            silent: false,
        }
    }

    pub fn error(api: ApiKey, error: ApiError) -> Reply {
        Reply {
            api,
            body: Err(error),
            payload: Vec::new(),
            silent: false,
        }
    }
}

/// A partition this shard owns, or why it could not be opened.
enum Slot {
    Open(Rc<PartitionLog>),
    Failed(ApiError),
}

pub struct Shard {
    config: ShardConfig,
    storage: StorageRef,
    mesh: Mesh,
    catalog: RefCell<Arc<Catalog>>,
    partitions: RefCell<HashMap<String, Vec<Option<Slot>>>>,
    cache: TailCache,
    metrics: Arc<ShardMetrics>,
    /// Serialises catalog changes on the controller (shard 0).
    controller_lock: glommio::sync::Semaphore,
    shutting_down: Cell<bool>,
    /// Wakes long polls when shutdown begins.
    shutdown_event: event_listener::Event,
    /// Consumer groups coordinated here, and every group's fence.
    groups: group::GroupHost,
}

/// Where the controller keeps the catalog.
pub fn catalog_path(data_dir: &Path) -> PathBuf {
    data_dir.join("meta").join("topics.json")
}

/// Directory of one partition's segments.
pub fn partition_dir(data_dir: &Path, topic: &str, partition: u32) -> PathBuf {
    data_dir
        .join("topics")
        .join(topic)
        .join(partition.to_string())
}

/// Maps a storage error to what a client sees. Disk-full is retriable: the
/// producer may try again once space is freed.
pub fn log_error_to_api(error: &LogError) -> ApiError {
    let code = match error {
        LogError::DiskFull { .. } => ErrorCode::DiskFull,
        LogError::Io { .. } | LogError::Closed { .. } | LogError::Config { .. } => {
            ErrorCode::StorageError
        }
        LogError::Fenced { .. } | LogError::Corrupt { .. } => ErrorCode::PartitionFenced,
        LogError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
        LogError::QueueFull { .. } => ErrorCode::Throttled,
        LogError::InvalidBatch { .. } => ErrorCode::CorruptMessage,
        LogError::InvalidProducerEpoch { .. } => ErrorCode::InvalidProducerEpoch,
        LogError::OutOfOrderSequence { .. } => ErrorCode::OutOfOrderSequenceNumber,
    };
    ApiError::new(code, error.to_string())
}

/// Storage settings of a partition of a topic with `config`.
pub fn log_config(config: &TopicConfig) -> LogConfig {
    LogConfig {
        segment_bytes: config.segment_bytes,
        segment_ms: config.segment_ms,
        retention_ms: config.retention_ms,
        retention_bytes: config.retention_bytes,
        ..LogConfig::default()
    }
}

/// Settings of `__consumer_offsets`: never deleted by retention (only the
/// snapshot compaction removes segments, once they are superseded).
pub fn offsets_topic_config(config: &ShardConfig) -> TopicConfig {
    TopicConfig {
        retention_ms: -1,
        retention_bytes: -1,
        segment_bytes: config.offsets_segment_bytes,
        ..config.default_topic_config.clone()
    }
}

/// The storage layer's name for a durability level.
pub fn log_acks(acks: Acks) -> crate::log::Acks {
    match acks {
        Acks::None => crate::log::Acks::None,
        Acks::Leader => crate::log::Acks::Leader,
        Acks::Fsync => crate::log::Acks::Fsync,
    }
}

impl Shard {
    /// Loads the catalog and opens (recovering) every partition this shard
    /// owns. Runs before the shard serves anything.
    pub async fn open(
        config: ShardConfig,
        storage: StorageRef,
        mesh: Mesh,
        metrics: Arc<ShardMetrics>,
    ) -> Result<Rc<Shard>, String> {
        assert_eq!(config.shard, mesh.shard());
        assert_eq!(config.shard_count, mesh.shard_count());
        let catalog = load_catalog(&storage, &config.data_dir)
            .await?
            .with_internal_topic(
                crate::group::OFFSETS_TOPIC,
                config.offsets_partitions,
                offsets_topic_config(&config),
            );
        let shard = Rc::new(Shard {
            cache: TailCache::with_readahead(config.tail_cache_bytes, config.readahead),
            config,
            storage,
            mesh,
            catalog: RefCell::new(Arc::new(Catalog::default())),
            partitions: RefCell::new(HashMap::new()),
            metrics,
            controller_lock: glommio::sync::Semaphore::new(1),
            shutting_down: Cell::new(false),
            shutdown_event: event_listener::Event::new(),
            groups: group::GroupHost::default(),
        });
        shard.apply_catalog(Arc::new(catalog)).await;
        Ok(shard)
    }

    pub fn id(&self) -> usize {
        self.config.shard
    }

    pub fn config(&self) -> &ShardConfig {
        &self.config
    }

    pub fn metrics(&self) -> &Arc<ShardMetrics> {
        &self.metrics
    }

    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.borrow().clone()
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.get()
    }

    fn owner(&self, topic: &str, partition: u32) -> usize {
        owner_shard(topic, partition, self.config.shard_count)
    }

    /// The open log of a partition this shard owns.
    fn local_log(&self, topic: &str, partition: u32) -> Result<Rc<PartitionLog>, ApiError> {
        debug_assert_eq!(self.owner(topic, partition), self.id());
        let partitions = self.partitions.borrow();
        let slot = partitions
            .get(topic)
            .and_then(|slots| slots.get(partition as usize))
            .and_then(|s| s.as_ref());
        match slot {
            Some(Slot::Open(log)) => Ok(log.clone()),
            Some(Slot::Failed(err)) => Err(err.clone()),
            None => Err(unknown_partition(topic, partition)),
        }
    }

    /// Checks that `topic` has `partition` in the current catalog.
    fn check_partition(&self, topic: &str, partition: u32) -> Result<Arc<Catalog>, ApiError> {
        let catalog = self.catalog();
        match catalog.topic(topic) {
            Some(entry) if partition < entry.partitions => Ok(catalog),
            _ => Err(unknown_partition(topic, partition)),
        }
    }

    /// The ordered phase of a request; see the module docs.
    pub async fn submit(self: &Rc<Self>, request: Request, payload: BytesMut) -> BoxedLocal<Reply> {
        let api = request.body.api();
        self.metrics.record_request(api);
        if self.is_shutting_down() {
            let err = ApiError::new(
                ErrorCode::ShuttingDown,
                "broker is shutting down; retry on another broker or later",
            );
            return Box::pin(future::ready(Reply::error(api, err)));
        }
        match request.body {
            RequestBody::Produce(req) => self.clone().submit_produce(req, payload).await,
            RequestBody::Fetch(req) => Box::pin(self.clone().fetch(req)),
            RequestBody::ListOffsets(req) => Box::pin(self.clone().list_offsets(req)),
            RequestBody::Metadata(req) => Box::pin(future::ready(self.metadata(req))),
            RequestBody::ApiVersions => Box::pin(future::ready(self.api_versions())),
            RequestBody::CreateTopics(req) => Box::pin(self.clone().create_topics(req)),
            RequestBody::DeleteTopics(req) => Box::pin(self.clone().delete_topics(req)),
            RequestBody::CreatePartitions(req) => Box::pin(self.clone().create_partitions(req)),
            body => {
                let shard = self.clone();
                Box::pin(async move {
                    match shard.group_request(body).await {
                        Ok(response) => Reply::ok(api, response),
                        Err(err) => Reply::error(api, err),
                    }
                })
            }
        }
    }

    /// Serves calls from one peer, in the order that peer sent them.
    pub async fn serve_peer(self: Rc<Self>, peer: usize, receiver: ConnectedReceiver<MeshMsg>) {
        while let Some(msg) = receiver.recv().await {
            match msg {
                MeshMsg::Reply { call_id, response } => self.mesh.complete(call_id, response),
                MeshMsg::Call { call_id, request } => {
                    self.metrics
                        .forwards_in
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let completion = self.clone().handle_call(request).await;
                    let shard = self.clone();
                    glommio::spawn_local(async move {
                        let response = completion.await;
                        shard.mesh.reply(peer, call_id, response).await;
                    })
                    .detach();
                }
            }
        }
    }

    /// Ordered phase of a call from another shard.
    async fn handle_call(self: Rc<Self>, request: ShardRequest) -> BoxedLocal<ShardResponse> {
        match request {
            ShardRequest::Produce { acks, parts } => {
                let mut pending = Vec::with_capacity(parts.len());
                for part in parts {
                    pending.push(self.append_ordered(part, acks).await);
                }
                Box::pin(async move {
                    let mut results = Vec::with_capacity(pending.len());
                    for p in pending {
                        results.push(p.await);
                    }
                    ShardResponse::Produce(results)
                })
            }
            ShardRequest::Fetch {
                max_wait_ms,
                min_bytes,
                max_bytes,
                parts,
            } => Box::pin(async move {
                ShardResponse::Fetch(
                    self.fetch_local(parts, max_wait_ms, min_bytes, max_bytes)
                        .await,
                )
            }),
            ShardRequest::ListOffsets(parts) => {
                Box::pin(
                    async move { ShardResponse::ListOffsets(self.list_offsets_local(parts).await) },
                )
            }
            ShardRequest::CreateTopics(req) => Box::pin(async move {
                ShardResponse::TopicResults(self.controller_create_topics(req).await)
            }),
            ShardRequest::DeleteTopics(req) => Box::pin(async move {
                ShardResponse::TopicResults(self.controller_delete_topics(req).await)
            }),
            ShardRequest::CreatePartitions(req) => Box::pin(async move {
                ShardResponse::TopicResults(self.controller_create_partitions(req).await)
            }),
            ShardRequest::ApplyCatalog(catalog) => {
                // Applied in the ordered phase: later calls from the
                // controller must see the new topics.
                self.apply_catalog(catalog).await;
                Box::pin(future::ready(ShardResponse::CatalogApplied))
            }
            ShardRequest::PartitionStats => Box::pin(future::ready(ShardResponse::PartitionStats(
                self.partition_stats(),
            ))),
            ShardRequest::Histograms => Box::pin(future::ready(ShardResponse::Histograms(
                Box::new(self.histograms()),
            ))),
            ShardRequest::Group(body) => {
                Box::pin(async move { ShardResponse::Group(self.group_call(body).await) })
            }
            ShardRequest::GroupFence { group, fence } => {
                self.install_fence(&group, fence);
                Box::pin(future::ready(ShardResponse::FenceInstalled))
            }
            ShardRequest::CommittedOffsets => Box::pin(future::ready(
                ShardResponse::CommittedOffsets(self.local_committed_offsets()),
            )),
        }
    }

    /// Adopts a catalog version: opens partitions of new topics this shard
    /// owns and the partitions it owns that were added to existing topics,
    /// closes and deletes those of removed topics. The partitions are open
    /// before the new snapshot is installed, so a request that passes the
    /// catalog check always finds its log.
    async fn apply_catalog(&self, next: Arc<Catalog>) {
        let previous = self.catalog();
        if next.version < previous.version {
            tracing::warn!(
                shard = self.id(),
                next = next.version,
                current = previous.version,
                "ignoring stale catalog"
            );
            return;
        }
        for entry in next.topics.values() {
            let known_partitions = self
                .partitions
                .borrow()
                .get(&entry.name)
                .map(|slots| slots.len() as u32);
            match known_partitions {
                None => {
                    self.open_topic(entry, 0).await;
                    if entry.name == crate::group::OFFSETS_TOPIC {
                        self.load_groups(entry).await;
                    }
                }
                // Grown (CreatePartitions): open only the new partitions;
                // the open ones keep their logs, caches and waiters.
                Some(known) if known < entry.partitions => {
                    debug_assert!(
                        !crate::catalog::is_internal_topic(&entry.name),
                        "the controller never grows an internal topic"
                    );
                    self.open_topic(entry, known).await;
                }
                Some(known) if known == entry.partitions => {}
                // Counts never shrink (`Catalog::with_partitions`), so this
                // is a controller bug. Keep the logs rather than drop data:
                // the partitions past the catalog's count are not served.
                Some(known) => {
                    debug_assert!(
                        false,
                        "topic {} shrank from {known} to {} partitions",
                        entry.name, entry.partitions
                    );
                    tracing::error!(
                        topic = %entry.name,
                        open = known,
                        catalog = entry.partitions,
                        "catalog shrank a topic; keeping its partitions open and serving only the catalog's count"
                    );
                }
            }
        }
        *self.catalog.borrow_mut() = next.clone();
        self.groups_on_catalog();
        let removed: Vec<String> = self
            .partitions
            .borrow()
            .keys()
            .filter(|name| !next.topics.contains_key(*name))
            .cloned()
            .collect();
        for name in removed {
            self.drop_topic(&name).await;
        }
    }

    /// Opens (recovering) the partitions `first..entry.partitions` of a
    /// topic that this shard owns, and records a slot for every partition
    /// of that range. `first` is 0 for a topic new to this shard and the
    /// old count for a grown one, whose lower slots are left as they are.
    async fn open_topic(&self, entry: &TopicEntry, first: u32) {
        assert!(first < entry.partitions, "nothing to open");
        let mut opened: Vec<Option<Slot>> = (first..entry.partitions).map(|_| None).collect();
        for partition in first..entry.partitions {
            if self.owner(&entry.name, partition) != self.id() {
                continue;
            }
            let dir = partition_dir(&self.config.data_dir, &entry.name, partition);
            let log_config = log_config(&entry.config);
            let slot = match PartitionLog::open(
                self.storage.clone(),
                dir,
                log_config,
                self.cache.clone(),
            )
            .await
            {
                Ok(log) => Slot::Open(Rc::new(log)),
                Err(err) => {
                    tracing::error!(topic = %entry.name, partition, error = %err, "partition failed to open; it is fenced until the problem is fixed and the broker restarted");
                    Slot::Failed(log_error_to_api(&err))
                }
            };
            opened[(partition - first) as usize] = Some(slot);
        }
        // No borrow was held across the opens above; the catalog is applied
        // one version at a time, so nothing else changed this topic's slots.
        let mut partitions = self.partitions.borrow_mut();
        let slots = partitions.entry(entry.name.clone()).or_default();
        assert_eq!(
            slots.len(),
            first as usize,
            "topic {} changed while its partitions were opening",
            entry.name
        );
        slots.extend(opened);
    }

    /// Replays the offsets partitions this shard owns into its groups.
    async fn load_groups(&self, entry: &TopicEntry) {
        for partition in 0..entry.partitions {
            if self.owner(&entry.name, partition) == self.id() {
                self.load_offsets_partition(partition).await;
            }
        }
    }

    async fn drop_topic(&self, name: &str) {
        let slots = self
            .partitions
            .borrow_mut()
            .remove(name)
            .unwrap_or_default();
        for slot in slots.into_iter().flatten() {
            if let Slot::Open(log) = slot {
                if let Err(err) = log.delete().await {
                    tracing::error!(topic = name, error = %err, "failed to delete partition files");
                }
            }
        }
    }

    fn partition_stats(&self) -> Vec<PartitionStat> {
        let partitions = self.partitions.borrow();
        let mut stats = Vec::new();
        for (topic, slots) in partitions.iter() {
            for (partition, slot) in slots.iter().enumerate() {
                if let Some(Slot::Open(log)) = slot {
                    stats.push(PartitionStat {
                        topic: topic.clone(),
                        partition: partition as u32,
                        log_start_offset: log.log_start_offset(),
                        log_end_offset: log.log_end_offset(),
                        high_watermark: log.high_watermark(),
                        size_bytes: log.size_bytes(),
                    });
                }
            }
        }
        stats
    }

    /// Partition figures of every shard (for /metrics), gathered over the mesh.
    pub async fn cluster_partition_stats(&self) -> Vec<PartitionStat> {
        let mut all = self.partition_stats();
        for peer in 0..self.config.shard_count {
            if peer == self.id() {
                continue;
            }
            if let Ok(ShardResponse::PartitionStats(stats)) =
                self.mesh.call(peer, ShardRequest::PartitionStats).await
            {
                all.extend(stats);
            }
        }
        all
    }

    /// This shard's histograms and cache counters.
    fn histograms(&self) -> crate::metrics::HistogramSnapshot {
        let mut snapshot = crate::metrics::histogram_snapshot();
        let cache = self.cache.stats();
        snapshot.tail_cache_hits = cache.hits;
        snapshot.tail_cache_misses = cache.misses;
        snapshot.readahead = self.cache.readahead().stats();
        snapshot
    }

    /// Every shard's histograms (for /metrics), indexed by shard; a shard
    /// that does not answer is left out.
    pub async fn cluster_histograms(&self) -> Vec<(usize, crate::metrics::HistogramSnapshot)> {
        let mut all = vec![(self.id(), self.histograms())];
        for peer in 0..self.config.shard_count {
            if peer == self.id() {
                continue;
            }
            if let Ok(ShardResponse::Histograms(h)) =
                self.mesh.call(peer, ShardRequest::Histograms).await
            {
                all.push((peer, *h));
            }
        }
        all.sort_by_key(|(shard, _)| *shard);
        all
    }

    /// Tail-cache counters, for /metrics.
    pub fn cache(&self) -> &TailCache {
        &self.cache
    }

    /// Applies retention to every local partition, forever. Spawn once.
    pub async fn retention_loop(self: Rc<Self>) {
        let period = Duration::from_millis(self.config.retention_check_ms.max(10));
        while !self.is_shutting_down() {
            glommio::timer::sleep(period).await;
            let logs: Vec<Rc<PartitionLog>> = self.open_logs();
            let now_ms = now_ms();
            for log in logs {
                if let Err(err) = log.enforce_retention(now_ms).await {
                    tracing::warn!(error = %err, "retention failed");
                }
            }
        }
    }

    fn open_logs(&self) -> Vec<Rc<PartitionLog>> {
        self.partitions
            .borrow()
            .values()
            .flatten()
            .filter_map(|slot| match slot {
                Some(Slot::Open(log)) => Some(log.clone()),
                _ => None,
            })
            .collect()
    }

    /// First step of a clean shutdown: refuse new requests and end long
    /// polls early, so connections drain quickly.
    pub fn begin_shutdown(&self) {
        self.shutting_down.set(true);
        self.shutdown_event.notify(usize::MAX);
    }

    /// A listener that fires when shutdown begins.
    pub(crate) fn shutdown_listener(&self) -> event_listener::EventListener {
        self.shutdown_event.listen()
    }

    /// Clean shutdown: refuse new requests, then flush and close every log.
    pub async fn shutdown(&self) {
        self.begin_shutdown();
        for log in self.open_logs() {
            if let Err(err) = log.close().await {
                tracing::error!(error = %err, "closing a partition failed; recovery will check it on the next start");
            }
        }
        self.partitions.borrow_mut().clear();
        self.mesh.close();
    }
}

pub fn unknown_partition(topic: &str, partition: u32) -> ApiError {
    ApiError::new(
        ErrorCode::UnknownTopicOrPartition,
        format!("topic {topic:?} partition {partition} does not exist; create the topic first or check the partition count"),
    )
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

async fn load_catalog(storage: &StorageRef, data_dir: &Path) -> Result<Catalog, String> {
    let path = catalog_path(data_dir);
    match crate::io::read_whole_file(storage.as_ref(), &path).await {
        Ok(bytes) => Catalog::from_json(&bytes).map_err(|e| {
            format!(
                "catalog {} is unreadable ({e}); restore it from a backup or move it away to start with no topics",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Catalog::default()),
        Err(e) => Err(format!("cannot read catalog {}: {e}", path.display())),
    }
}
