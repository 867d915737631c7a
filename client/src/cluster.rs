//! The client's view of the broker: a metadata cache (topic → partitions →
//! owning shard; shard → endpoint) and a connection pool keyed by endpoint.
//!
//! Partition-level requests (produce, fetch, list offsets) go straight to the
//! owning shard's own port (shard-aware routing, DESIGN.md 3.1); metadata and
//! admin go to the bootstrap endpoint. One connection per endpoint: a
//! partition therefore always travels over one connection at a time, which
//! is what keeps its produce requests in order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringmq_wire::envelope::{
    ListOffsetsPartition, ListOffsetsPartitionResult, ListOffsetsRequest, ListOffsetsTopic,
    MetadataRequest, MetadataResponse, RequestBody, ResponseBody, ShardEndpoint,
};
use ringmq_wire::error::ErrorCode;

use crate::connection::{Connection, ConnectionConfig, Reply};
use crate::error::{ClientError, Result};
use crate::ClientConfig;

/// Where one partition lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionRoute {
    pub partition: u32,
    pub shard: u16,
}

/// A topic as the cache knows it.
#[derive(Debug, Clone)]
pub struct TopicRoute {
    pub name: String,
    /// Indexed by partition number.
    pub partitions: Vec<PartitionRoute>,
    pub configs: Vec<(String, String)>,
    fetched_at: Instant,
}

impl TopicRoute {
    pub fn partition_count(&self) -> u32 {
        u32::try_from(self.partitions.len()).expect("partition count fits u32")
    }

    pub fn shard_of(&self, partition: u32) -> Result<u16> {
        self.partitions
            .get(partition as usize)
            .map(|p| p.shard)
            .ok_or_else(|| ClientError::UnknownPartition {
                topic: self.name.clone(),
                partition,
                partition_count: self.partition_count(),
            })
    }
}

#[derive(Default)]
struct MetadataCache {
    /// shard → `host:port` of its shard-aware listener.
    endpoints: HashMap<u16, Arc<str>>,
    topics: HashMap<String, Arc<TopicRoute>>,
}

pub(crate) struct Cluster {
    pub(crate) config: ClientConfig,
    connection_config: ConnectionConfig,
    /// Host of the bootstrap address, used when a shard advertises an
    /// unspecified host (`0.0.0.0`, `::` or empty).
    bootstrap_host: String,
    pool: Mutex<HashMap<String, Connection>>,
    metadata: RwLock<MetadataCache>,
}

impl Cluster {
    pub(crate) fn new(config: ClientConfig) -> Result<Cluster> {
        let bootstrap_host = split_host(&config.bootstrap)?;
        let connection_config = ConnectionConfig {
            client_id: config.client_id.clone(),
            request_timeout_ms: config.request_timeout_ms,
            connect_timeout_ms: config.connect_timeout_ms,
            max_in_flight: config.max_in_flight,
            write_queue_frames: config.max_in_flight.max(16) * 4,
            max_frame_bytes: config.max_frame_bytes,
            socket_send_buffer_bytes: config.socket_send_buffer_bytes,
            socket_recv_buffer_bytes: config.socket_recv_buffer_bytes,
        };
        Ok(Cluster {
            config,
            connection_config,
            bootstrap_host,
            pool: Mutex::new(HashMap::new()),
            metadata: RwLock::new(MetadataCache::default()),
        })
    }

    /// The pooled connection to `endpoint`, (re)connecting when there is
    /// none or it broke. Connects outside the pool lock.
    pub(crate) fn connection(&self, endpoint: &str) -> Result<Connection> {
        if let Some(conn) = self.pool_lock().get(endpoint) {
            if !conn.is_broken() {
                return Ok(conn.clone());
            }
        }
        let fresh = Connection::connect(endpoint, self.connection_config.clone())?;
        let mut pool = self.pool_lock();
        match pool.get(endpoint) {
            Some(existing) if !existing.is_broken() => {
                // Another thread won the race: keep one connection per endpoint.
                fresh.close();
                Ok(existing.clone())
            }
            _ => {
                pool.insert(endpoint.to_string(), fresh.clone());
                Ok(fresh)
            }
        }
    }

    fn pool_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Connection>> {
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection for metadata and admin: the bootstrap endpoint, else any
    /// shard endpoint that answers.
    pub(crate) fn any_connection(&self) -> Result<Connection> {
        let first_err = match self.connection(&self.config.bootstrap) {
            Ok(conn) => return Ok(conn),
            Err(e) => e,
        };
        let endpoints: Vec<Arc<str>> = self.metadata_read().endpoints.values().cloned().collect();
        for endpoint in endpoints {
            if let Ok(conn) = self.connection(&endpoint) {
                return Ok(conn);
            }
        }
        Err(first_err)
    }

    pub(crate) fn shard_connection(&self, shard: u16) -> Result<Connection> {
        let endpoint = self.shard_endpoint(shard)?;
        self.connection(&endpoint)
    }

    pub(crate) fn shard_endpoint(&self, shard: u16) -> Result<String> {
        if let Some(endpoint) = self.metadata_read().endpoints.get(&shard) {
            return Ok(endpoint.to_string());
        }
        self.refresh(None)?;
        self.metadata_read()
            .endpoints
            .get(&shard)
            .map(|e| e.to_string())
            .ok_or_else(|| ClientError::Protocol {
                endpoint: self.config.bootstrap.clone(),
                message: format!("metadata names no endpoint for shard {shard}"),
            })
    }

    fn metadata_read(&self) -> std::sync::RwLockReadGuard<'_, MetadataCache> {
        self.metadata.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached route of `topic`, fetched when missing or older than
    /// `metadata_max_age_ms`.
    pub(crate) fn topic(&self, topic: &str) -> Result<Arc<TopicRoute>> {
        let max_age = Duration::from_millis(self.config.metadata_max_age_ms);
        if let Some(route) = self.metadata_read().topics.get(topic) {
            if route.fetched_at.elapsed() < max_age {
                return Ok(route.clone());
            }
        }
        self.refresh(Some(&[topic.to_string()]))?;
        self.metadata_read()
            .topics
            .get(topic)
            .cloned()
            .ok_or_else(|| ClientError::UnknownTopic {
                topic: topic.to_string(),
            })
    }

    /// The cached route of `topic`, whatever its age; never does I/O.
    pub(crate) fn cached_route(&self, topic: &str) -> Option<Arc<TopicRoute>> {
        self.metadata_read().topics.get(topic).cloned()
    }

    /// The cached endpoint of a partition's shard; never does I/O.
    pub(crate) fn cached_endpoint(&self, route: &TopicRoute, partition: u32) -> Option<Arc<str>> {
        let shard = route.shard_of(partition).ok()?;
        self.metadata_read().endpoints.get(&shard).cloned()
    }

    #[cfg(test)]
    pub(crate) fn insert_test_route(&self, topic: &str, shards: &[u16], endpoint: &str) {
        let mut cache = self.metadata.write().unwrap();
        for &shard in shards {
            cache.endpoints.insert(shard, Arc::from(endpoint));
        }
        let partitions = shards
            .iter()
            .enumerate()
            .map(|(i, &shard)| PartitionRoute {
                partition: i as u32,
                shard,
            })
            .collect();
        cache.topics.insert(
            topic.to_string(),
            Arc::new(TopicRoute {
                name: topic.to_string(),
                partitions,
                configs: Vec::new(),
                fetched_at: Instant::now(),
            }),
        );
    }

    /// Forgets `topic`, so the next use fetches fresh metadata (after a
    /// `NotOwner` or `UnknownTopicOrPartition`).
    pub(crate) fn invalidate_topic(&self, topic: &str) {
        self.metadata
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .topics
            .remove(topic);
    }

    /// Fetches metadata (`None`: every topic) and updates the cache. A topic
    /// the broker reports as unknown is an error when it was asked for by name.
    pub(crate) fn refresh(&self, topics: Option<&[String]>) -> Result<MetadataResponse> {
        let body = RequestBody::Metadata(MetadataRequest {
            topics: topics.map(<[String]>::to_vec),
        });
        let (response, _) = self.retrying("metadata", || {
            self.any_connection()?.call(body.clone(), Vec::new())
        })?;
        let ResponseBody::Metadata(metadata) = response.body else {
            return Err(self.unexpected_body("metadata"));
        };
        self.store(&metadata);
        if let Some(names) = topics {
            for topic in &metadata.topics {
                if let Some(error) = &topic.error {
                    if names.contains(&topic.name) {
                        return Err(match error.code {
                            ErrorCode::UnknownTopicOrPartition => ClientError::UnknownTopic {
                                topic: topic.name.clone(),
                            },
                            _ => ClientError::api(
                                error.clone(),
                                format!("metadata for topic {}", topic.name),
                            ),
                        });
                    }
                }
            }
        }
        Ok(metadata)
    }

    fn store(&self, metadata: &MetadataResponse) {
        let now = Instant::now();
        let mut cache = self.metadata.write().unwrap_or_else(|e| e.into_inner());
        for shard in &metadata.shards {
            cache
                .endpoints
                .insert(shard.shard, Arc::from(self.endpoint_of(shard)));
        }
        for topic in &metadata.topics {
            if topic.error.is_some() {
                cache.topics.remove(&topic.name);
                continue;
            }
            let mut partitions: Vec<PartitionRoute> = topic
                .partitions
                .iter()
                .map(|p| PartitionRoute {
                    partition: p.partition,
                    shard: p.shard,
                })
                .collect();
            partitions.sort_by_key(|p| p.partition);
            let dense = partitions
                .iter()
                .enumerate()
                .all(|(i, p)| p.partition as usize == i);
            if !dense {
                tracing::warn!(topic = %topic.name, "metadata lists partitions with gaps; ignoring the topic");
                cache.topics.remove(&topic.name);
                continue;
            }
            let route = TopicRoute {
                name: topic.name.clone(),
                partitions,
                configs: topic.configs.clone(),
                fetched_at: now,
            };
            cache.topics.insert(topic.name.clone(), Arc::new(route));
        }
    }

    pub(crate) fn endpoint_of(&self, shard: &ShardEndpoint) -> String {
        let host = match shard.host.as_str() {
            "" | "0.0.0.0" | "::" | "[::]" => self.bootstrap_host.as_str(),
            host => host,
        };
        if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{}", shard.port)
        } else {
            format!("{host}:{}", shard.port)
        }
    }

    /// Runs `call` again (up to `retries` times, with backoff) while it fails
    /// with a retriable error. Only for idempotent requests: never produce.
    pub(crate) fn retrying<T>(&self, what: &str, mut call: impl FnMut() -> Result<T>) -> Result<T> {
        let mut attempt = 0;
        loop {
            match call() {
                Err(e) if e.is_retriable() && attempt < self.config.retries => {
                    attempt += 1;
                    tracing::debug!(what, attempt, error = %e, "retrying");
                    std::thread::sleep(Duration::from_millis(
                        self.config.retry_backoff_ms * u64::from(attempt),
                    ));
                }
                other => return other,
            }
        }
    }

    pub(crate) fn unexpected_body(&self, what: &str) -> ClientError {
        ClientError::Protocol {
            endpoint: self.config.bootstrap.clone(),
            message: format!("the answer to a {what} request has the wrong body type"),
        }
    }

    /// ListOffsets for some partitions of one topic, each sent to its owning
    /// shard (one request per shard). Results come back in input order.
    pub(crate) fn list_offsets(
        &self,
        topic: &str,
        queries: &[(u32, i64)],
    ) -> Result<Vec<ListOffsetsPartitionResult>> {
        self.retrying("list_offsets", || {
            let route = self.topic(topic)?;
            let mut by_shard: HashMap<u16, Vec<ListOffsetsPartition>> = HashMap::new();
            for &(partition, timestamp) in queries {
                by_shard
                    .entry(route.shard_of(partition)?)
                    .or_default()
                    .push(ListOffsetsPartition {
                        partition,
                        timestamp,
                    });
            }
            let mut futures = Vec::with_capacity(by_shard.len());
            for (shard, partitions) in by_shard {
                let body = RequestBody::ListOffsets(ListOffsetsRequest {
                    topics: vec![ListOffsetsTopic {
                        name: topic.to_string(),
                        partitions,
                    }],
                });
                futures.push(self.shard_connection(shard)?.request(body, Vec::new())?);
            }
            // Several queries may name the same partition (say earliest and
            // latest): the owner answers them in request order, so keep a
            // queue per partition and hand answers out in query order.
            let mut results: HashMap<u32, std::collections::VecDeque<ListOffsetsPartitionResult>> =
                HashMap::new();
            for future in futures {
                let (response, _) = future.wait()?;
                let ResponseBody::ListOffsets(body) = response.body else {
                    return Err(self.unexpected_body("list offsets"));
                };
                for result in body.topics.into_iter().flat_map(|t| t.partitions) {
                    if let Some(error) = &result.error {
                        if error.code.is_retriable()
                            || error.code == ErrorCode::UnknownTopicOrPartition
                        {
                            self.invalidate_topic(topic);
                        }
                        return Err(ClientError::api(
                            error.clone(),
                            format!("list offsets of {topic}/{}", result.partition),
                        ));
                    }
                    results
                        .entry(result.partition)
                        .or_default()
                        .push_back(result);
                }
            }
            queries
                .iter()
                .map(|(partition, _)| {
                    results
                        .get_mut(partition)
                        .and_then(|answers| answers.pop_front())
                        .ok_or_else(|| ClientError::Protocol {
                            endpoint: self.config.bootstrap.clone(),
                            message: format!("list offsets answer lacks {topic}/{partition}"),
                        })
                })
                .collect()
        })
    }

    /// Sends to any connection and waits, retrying retriable failures.
    pub(crate) fn call_any(&self, what: &str, body: RequestBody) -> Result<Reply> {
        self.retrying(what, || {
            self.any_connection()?
                .call(body.clone(), Vec::<Bytes>::new())
        })
    }
}

/// The host part of `HOST:PORT` (brackets kept off IPv6 hosts).
fn split_host(endpoint: &str) -> Result<String> {
    let invalid = || {
        ClientError::InvalidArgument(format!(
            "bootstrap address {endpoint:?} is not HOST:PORT (for example 127.0.0.1:7070)"
        ))
    };
    let (host, port) = endpoint.rsplit_once(':').ok_or_else(invalid)?;
    port.parse::<u16>().map_err(|_| invalid())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(invalid());
    }
    Ok(host.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_host_is_parsed() {
        assert_eq!(split_host("127.0.0.1:7070").unwrap(), "127.0.0.1");
        assert_eq!(split_host("[::1]:7070").unwrap(), "::1");
        assert!(split_host("localhost").is_err());
        assert!(split_host(":7070").is_err());
        assert!(split_host("h:notaport").is_err());
    }

    #[test]
    fn unspecified_shard_hosts_use_the_bootstrap_host() {
        let cluster = Cluster::new(ClientConfig::new("10.0.0.5:7070")).unwrap();
        let ep = |host: &str| ShardEndpoint {
            shard: 0,
            host: host.to_string(),
            port: 7072,
        };
        assert_eq!(cluster.endpoint_of(&ep("0.0.0.0")), "10.0.0.5:7072");
        assert_eq!(cluster.endpoint_of(&ep("")), "10.0.0.5:7072");
        assert_eq!(cluster.endpoint_of(&ep("192.168.1.1")), "192.168.1.1:7072");
        assert_eq!(cluster.endpoint_of(&ep("fe80::1")), "[fe80::1]:7072");
    }
}
