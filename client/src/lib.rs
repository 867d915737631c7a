//! ringmq Rust client: producer, consumer, admin.
//!
//! Runtime-agnostic and thread-based: every connection has one writer and
//! one reader thread; results come back through [`oneshot`] channels that
//! can be awaited from any executor or waited on with `.wait()`.
//!
//! * [`Client`]: metadata cache and connection pool, shared by everything
//!   built on it (`Clone`, `Send`, `Sync`).
//! * [`Producer`]: batching by partition, shard-aware routing, pipelined
//!   produce requests, per-partition order.
//! * [`Consumer`]: assigned partitions, long-poll fetches per shard.
//! * [`GroupConsumer`]: partitions assigned by a consumer group, committed
//!   offsets, rebalances (a heartbeat thread keeps the session alive).
//! * [`Admin`]: topics, consumer groups and broker information.
//!
//! Routing: partition-level requests go straight to the shard that owns the
//! partition (its own port, from metadata); metadata and admin requests go to
//! the bootstrap address; group requests go to the group's coordinator
//! shard when it is known.

pub mod admin;
mod batch_view;
pub mod cluster;
pub mod connection;
pub mod consumer;
pub mod error;
pub mod group;
pub mod oneshot;
pub mod producer;

use std::sync::Arc;

use bytes::Bytes;
pub use ringmq_wire::batch::Compression;
pub use ringmq_wire::envelope::Acks;
use ringmq_wire::envelope::{MetadataResponse, RequestBody, ResponseBody};

pub use admin::{Admin, PartitionInfo, TopicInfo};
pub use batch_view::{ConsumerBatch, RecordView};
pub use cluster::TopicRoute;
pub use connection::{Reply, ResponseFuture};
pub use consumer::{Consumer, ConsumerConfig, ConsumerRecord, StartFrom};
pub use error::{ClientError, Result};
pub use group::{
    Assignor, CommitCallback, GroupConfig, GroupConsumer, GroupMode, Membership, RebalanceListener,
};
pub use producer::{
    Producer, ProducerConfig, ProducerRecord, RangeAck, RecordMetadata, RecordPosition, RecordRef,
    SendFuture, SendManyFuture, SendManyResult, SentRange,
};

use cluster::Cluster;

/// How to reach the broker and how patient to be with it.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `HOST:PORT` of the broker's public port.
    pub bootstrap: String,
    pub client_id: String,
    /// A request unanswered this long fails (long-poll fetches get their
    /// `max_wait_ms` on top).
    pub request_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    /// Requests awaiting a response, per connection.
    pub max_in_flight: usize,
    /// Retries of idempotent requests (metadata, admin, list offsets, fetch
    /// set-up) after a retriable error. Produce is never retried.
    pub retries: u32,
    /// Backoff before retry `n` is `n * retry_backoff_ms`.
    pub retry_backoff_ms: u64,
    /// Cached topic metadata older than this is refetched on use.
    pub metadata_max_age_ms: u64,
    pub max_frame_bytes: usize,
    pub socket_send_buffer_bytes: Option<usize>,
    pub socket_recv_buffer_bytes: Option<usize>,
}

impl ClientConfig {
    pub fn new(bootstrap: impl Into<String>) -> ClientConfig {
        ClientConfig {
            bootstrap: bootstrap.into(),
            ..ClientConfig::default()
        }
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            bootstrap: "127.0.0.1:7070".to_string(),
            client_id: "ringmq-client".to_string(),
            request_timeout_ms: 30_000,
            connect_timeout_ms: 10_000,
            max_in_flight: 16,
            retries: 3,
            retry_backoff_ms: 100,
            metadata_max_age_ms: 5 * 60 * 1000,
            max_frame_bytes: ringmq_wire::frame::DEFAULT_MAX_FRAME_BYTES,
            socket_send_buffer_bytes: None,
            socket_recv_buffer_bytes: None,
        }
    }
}

/// A handle to one broker: metadata cache + connection pool. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    cluster: Arc<Cluster>,
}

impl Client {
    /// Connects to the bootstrap address and checks that a ringmq broker
    /// answers there (ApiVersions).
    pub fn connect(config: ClientConfig) -> Result<Client> {
        if config.max_in_flight == 0 {
            return Err(ClientError::InvalidArgument(
                "max_in_flight must be at least 1".into(),
            ));
        }
        if config.request_timeout_ms == 0 {
            return Err(ClientError::InvalidArgument(
                "request_timeout_ms must be at least 1".into(),
            ));
        }
        let client = Client {
            cluster: Arc::new(Cluster::new(config)?),
        };
        client.admin().api_versions()?;
        Ok(client)
    }

    pub fn config(&self) -> &ClientConfig {
        &self.cluster.config
    }

    pub fn admin(&self) -> Admin {
        Admin::new(self.clone())
    }

    /// Fetches metadata (`None`: every topic) and refreshes the cache.
    pub fn metadata(&self, topics: Option<&[String]>) -> Result<MetadataResponse> {
        self.cluster.refresh(topics)
    }

    /// The cached (or freshly fetched) route of a topic.
    pub fn topic_route(&self, topic: &str) -> Result<Arc<TopicRoute>> {
        self.cluster.topic(topic)
    }

    pub fn partition_count(&self, topic: &str) -> Result<u32> {
        Ok(self.cluster.topic(topic)?.partition_count())
    }

    /// The shard that owns a partition and its shard-aware endpoint.
    pub fn partition_endpoint(&self, topic: &str, partition: u32) -> Result<(u16, String)> {
        let shard = self.cluster.topic(topic)?.shard_of(partition)?;
        Ok((shard, self.cluster.shard_endpoint(shard)?))
    }

    /// Offsets for `(partition, timestamp)` queries (timestamps
    /// [`ringmq_wire::envelope::LIST_OFFSETS_EARLIEST`] /
    /// [`ringmq_wire::envelope::LIST_OFFSETS_LATEST`] or ms), in input order.
    pub fn list_offsets(
        &self,
        topic: &str,
        queries: &[(u32, i64)],
    ) -> Result<Vec<ringmq_wire::envelope::ListOffsetsPartitionResult>> {
        self.cluster.list_offsets(topic, queries)
    }

    /// Sends a raw request to the bootstrap connection and waits (escape
    /// hatch for tools; the typed APIs are preferable).
    pub fn call(&self, body: RequestBody, payload: Vec<Bytes>) -> Result<Reply> {
        self.cluster.any_connection()?.call(body, payload)
    }

    pub(crate) fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }
}

pub(crate) fn expect_body<T>(
    client: &Client,
    what: &str,
    body: ResponseBody,
    pick: impl FnOnce(ResponseBody) -> Option<T>,
) -> Result<T> {
    pick(body).ok_or_else(|| client.cluster.unexpected_body(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}
    fn assert_clone<T: Clone>() {}

    #[test]
    fn handles_are_thread_safe() {
        assert_send_sync::<Client>();
        assert_clone::<Client>();
        assert_send_sync::<Producer>();
        assert_send_sync::<Admin>();
        assert_send_sync::<SendFuture>();
        assert_send_sync::<ResponseFuture>();
        fn assert_send<T: Send>() {}
        assert_send::<Consumer>();
        assert_send::<GroupConsumer>();
    }
}
