//! The cross-shard channel mesh (DESIGN.md 3.1).
//!
//! One bounded glommio `shared_channel` per ordered pair of shards, built
//! before the executors start so that shard ids, not join order, name the
//! peers. A message is either a call (a [`ShardRequest`] with an id) or the
//! reply to one. Record batches cross as `BytesMut`/`Bytes`: moved, never
//! copied. A hop costs 12–170 µs here, so the shard-aware client avoids
//! them; the mesh exists for the public port, admin fan-out and the odd
//! misrouted request.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use glommio::channels::local_channel::{self, LocalSender};
use glommio::channels::shared_channel::{
    self, ConnectedReceiver, ConnectedSender, SharedReceiver, SharedSender,
};
use ringmq_wire::envelope::{
    Acks, CreatePartitionsRequest, CreateTopicsRequest, DeleteTopicsRequest, FetchPartition,
    FetchPartitionResult, ListOffsetsPartition, ListOffsetsPartitionResult, ProducePartitionResult,
    TopicResults,
};

use crate::catalog::Catalog;

/// Messages queued per ordered pair of shards before senders wait.
pub const MESH_CHANNEL_CAPACITY: usize = 1024;

/// One partition's slice of a forwarded produce.
#[derive(Debug)]
pub struct ProducePart {
    pub topic: String,
    pub partition: u32,
    /// Validated, concatenated v2 batches; the owner patches base offsets in place.
    pub batches: BytesMut,
    pub record_count: u32,
}

#[derive(Debug)]
pub enum ShardRequest {
    Produce {
        acks: Acks,
        parts: Vec<ProducePart>,
    },
    Fetch {
        max_wait_ms: u32,
        min_bytes: u32,
        max_bytes: u32,
        parts: Vec<(String, FetchPartition)>,
    },
    ListOffsets(Vec<(String, ListOffsetsPartition)>),
    /// To the controller (shard 0).
    CreateTopics(CreateTopicsRequest),
    /// To the controller (shard 0).
    DeleteTopics(DeleteTopicsRequest),
    /// To the controller (shard 0): grow topics' partition counts.
    CreatePartitions(CreatePartitionsRequest),
    /// From the controller: adopt this catalog, open/close partitions.
    ApplyCatalog(Arc<Catalog>),
    /// Per-partition figures for /metrics.
    PartitionStats,
    /// Latency histograms and cache counters for /metrics.
    Histograms,
    /// A consumer-group request for the group's coordinator (or ListGroups:
    /// this shard's groups).
    Group(ringmq_wire::envelope::RequestBody),
    /// From a coordinator: a group's new generation (`None`: deleted).
    GroupFence {
        group: String,
        fence: Option<crate::group::Fence>,
    },
    /// Committed offsets of the groups a shard coordinates (for lag).
    CommittedOffsets,
}

#[derive(Debug, Clone)]
pub struct PartitionStat {
    pub topic: String,
    pub partition: u32,
    pub log_start_offset: i64,
    pub log_end_offset: i64,
    pub high_watermark: i64,
    pub size_bytes: u64,
}

#[derive(Debug)]
pub enum ShardResponse {
    Produce(Vec<(String, ProducePartitionResult)>),
    Fetch(Vec<(String, FetchPartitionResult, Vec<Bytes>)>),
    ListOffsets(Vec<(String, ListOffsetsPartitionResult)>),
    TopicResults(TopicResults),
    CatalogApplied,
    PartitionStats(Vec<PartitionStat>),
    Histograms(Box<crate::metrics::HistogramSnapshot>),
    Group(Result<ringmq_wire::envelope::ResponseBody, ringmq_wire::error::ApiError>),
    FenceInstalled,
    CommittedOffsets(Vec<(String, ringmq_wire::group_api::CommittedOffset)>),
}

#[derive(Debug)]
pub enum MeshMsg {
    Call {
        call_id: u64,
        request: ShardRequest,
    },
    Reply {
        call_id: u64,
        response: ShardResponse,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("shard {0} is not reachable (it is shutting down or has stopped)")]
    PeerGone(usize),
}

/// The unconnected channel ends one shard takes into its executor.
pub struct MeshEnds {
    pub shard: usize,
    senders: Vec<Option<SharedSender<MeshMsg>>>,
    receivers: Vec<Option<SharedReceiver<MeshMsg>>>,
}

/// Builds the full mesh for `shard_count` shards; element i goes to shard i.
pub fn build_mesh(shard_count: usize) -> Vec<MeshEnds> {
    let mut ends: Vec<MeshEnds> = (0..shard_count)
        .map(|shard| MeshEnds {
            shard,
            senders: (0..shard_count).map(|_| None).collect(),
            receivers: (0..shard_count).map(|_| None).collect(),
        })
        .collect();
    for from in 0..shard_count {
        for to in 0..shard_count {
            if from == to {
                continue;
            }
            let (tx, rx) = shared_channel::new_bounded(MESH_CHANNEL_CAPACITY);
            ends[from].senders[to] = Some(tx);
            ends[to].receivers[from] = Some(rx);
        }
    }
    ends
}

/// A shard's connected view of the mesh.
pub struct Mesh {
    shard: usize,
    senders: Vec<Option<ConnectedSender<MeshMsg>>>,
    pending: RefCell<HashMap<u64, LocalSender<ShardResponse>>>,
    next_call_id: Cell<u64>,
}

impl Mesh {
    /// Connects this shard's ends; returns the mesh and one receiver per peer.
    pub async fn connect(ends: MeshEnds) -> (Mesh, Vec<(usize, ConnectedReceiver<MeshMsg>)>) {
        // Each `connect` waits for the other end to connect too, so the
        // receiving ends must already be waiting while we connect senders,
        // or two shards deadlock connecting to each other.
        let receiving: Vec<_> = ends
            .receivers
            .into_iter()
            .enumerate()
            .filter_map(|(peer, r)| r.map(|r| (peer, glommio::spawn_local(r.connect()))))
            .collect();
        let mut senders = Vec::with_capacity(ends.senders.len());
        for sender in ends.senders {
            senders.push(match sender {
                Some(s) => Some(s.connect().await),
                None => None,
            });
        }
        let mut receivers = Vec::with_capacity(receiving.len());
        for (peer, task) in receiving {
            receivers.push((peer, task.await));
        }
        let mesh = Mesh {
            shard: ends.shard,
            senders,
            pending: RefCell::new(HashMap::new()),
            next_call_id: Cell::new(1),
        };
        (mesh, receivers)
    }

    pub fn shard(&self) -> usize {
        self.shard
    }

    pub fn shard_count(&self) -> usize {
        self.senders.len()
    }

    /// Sends `request` to shard `to` and waits for its reply. Sending is in
    /// call order per peer, which is what keeps a connection's produce
    /// requests for a remote partition in order.
    pub async fn call(&self, to: usize, request: ShardRequest) -> Result<ShardResponse, MeshError> {
        let receiver = self.send_call(to, request).await?;
        receiver.recv().await.ok_or(MeshError::PeerGone(to))
    }

    /// First half of [`Mesh::call`]: enqueue now (ordered), await the reply later.
    pub async fn send_call(
        &self,
        to: usize,
        request: ShardRequest,
    ) -> Result<local_channel::LocalReceiver<ShardResponse>, MeshError> {
        assert_ne!(to, self.shard, "a shard never calls itself over the mesh");
        let sender = self.senders[to]
            .as_ref()
            .expect("mesh has a sender per peer");
        let call_id = self.next_call_id.get();
        self.next_call_id.set(call_id + 1);
        let (tx, rx) = local_channel::new_bounded(1);
        self.pending.borrow_mut().insert(call_id, tx);
        if sender
            .send(MeshMsg::Call { call_id, request })
            .await
            .is_err()
        {
            self.pending.borrow_mut().remove(&call_id);
            return Err(MeshError::PeerGone(to));
        }
        Ok(rx)
    }

    /// Sends the reply for `call_id` back to shard `to`.
    pub async fn reply(&self, to: usize, call_id: u64, response: ShardResponse) {
        let sender = self.senders[to]
            .as_ref()
            .expect("mesh has a sender per peer");
        // A closed channel means the caller's shard is going away; nothing
        // is waiting for this reply any more.
        let _ = sender.send(MeshMsg::Reply { call_id, response }).await;
    }

    /// Hands a reply to the task waiting in [`Mesh::call`].
    pub fn complete(&self, call_id: u64, response: ShardResponse) {
        let waiter = self.pending.borrow_mut().remove(&call_id);
        match waiter {
            // The waiter may have been dropped (its connection closed): fine.
            Some(tx) => {
                let _ = tx.try_send(response);
            }
            None => tracing::warn!(call_id, "mesh reply for an unknown call"),
        }
    }

    pub fn close(&self) {
        for sender in self.senders.iter().flatten() {
            sender.close();
        }
    }
}
