//! Metadata, ApiVersions and topic administration.
//!
//! Shard 0 is the controller: create/delete/create-partitions requests are
//! forwarded to it,
//! it persists the new catalog, then pushes it to every shard and answers
//! once all of them have opened (or removed) their partitions.

use std::rc::Rc;
use std::sync::Arc;

use ringmq_wire::envelope::{
    ApiKey, ApiVersionRange, ApiVersionsResponse, CreatePartitionsRequest, CreateTopicsRequest,
    DeleteTopicsRequest, MetadataRequest, MetadataResponse, NewPartitions, NewTopic,
    PartitionMetadata, ResponseBody, TopicMetadata, TopicResult, TopicResults, API_VERSION,
};
use ringmq_wire::error::{ApiError, ErrorCode};

use super::{catalog_path, now_ms, Reply, Shard};
use crate::catalog::{Catalog, CatalogError, TopicEntry};
use crate::mesh::{ShardRequest, ShardResponse};

/// The controller shard.
pub const CONTROLLER_SHARD: usize = 0;

fn catalog_error_to_api(err: &CatalogError) -> ApiError {
    let code = match err {
        CatalogError::InvalidName { .. } => ErrorCode::InvalidTopic,
        CatalogError::AlreadyExists(_) => ErrorCode::TopicAlreadyExists,
        CatalogError::UnknownTopic(_) => ErrorCode::UnknownTopicOrPartition,
        CatalogError::InvalidPartitions { .. } | CatalogError::PartitionsOnlyGrow { .. } => {
            ErrorCode::InvalidPartitions
        }
        CatalogError::InvalidConfig { .. } => ErrorCode::InvalidConfig,
    };
    ApiError::new(code, err.to_string())
}

/// Pairs each item with its topic name.
fn named<T>(items: Vec<T>, name: impl Fn(&T) -> String) -> Vec<(String, T)> {
    items.into_iter().map(|t| (name(&t), t)).collect()
}

/// Applies one catalog change per named item, each to the catalog as
/// changed by the items before it. One result per item, in order.
fn apply_changes<T>(
    catalog: &Catalog,
    items: Vec<(String, T)>,
    change: impl Fn(&Catalog, &str, &T) -> Result<Catalog, CatalogError>,
) -> (Catalog, Vec<TopicResult>) {
    let mut next = catalog.clone();
    let mut results = Vec::with_capacity(items.len());
    for (name, item) in items {
        let error = match change(&next, &name, &item) {
            Ok(changed) => {
                next = changed;
                None
            }
            Err(err) => Some(catalog_error_to_api(&err)),
        };
        results.push(TopicResult { name, error });
    }
    (next, results)
}

impl Shard {
    pub(super) fn api_versions(&self) -> Reply {
        let apis = ApiKey::ALL
            .iter()
            .map(|api| ApiVersionRange {
                api: *api,
                min_version: API_VERSION,
                max_version: API_VERSION,
            })
            .collect();
        Reply::ok(
            ApiKey::ApiVersions,
            ResponseBody::ApiVersions(ApiVersionsResponse {
                apis,
                broker_version: env!("CARGO_PKG_VERSION").to_string(),
                max_frame_bytes: self.config.max_frame_bytes as u32,
            }),
        )
    }

    pub(super) fn metadata(&self, request: MetadataRequest) -> Reply {
        let catalog = self.catalog();
        let names: Vec<String> = match request.topics {
            Some(names) if !names.is_empty() => names,
            // Internal topics are listed only when asked for by name.
            _ => catalog
                .topics
                .keys()
                .filter(|name| !crate::catalog::is_internal_topic(name))
                .cloned()
                .collect(),
        };
        let topics = names
            .into_iter()
            .map(|name| self.topic_metadata(&catalog, name))
            .collect();
        Reply::ok(
            ApiKey::Metadata,
            ResponseBody::Metadata(MetadataResponse {
                shards: self.config.endpoints.clone(),
                topics,
            }),
        )
    }

    fn topic_metadata(&self, catalog: &Catalog, name: String) -> TopicMetadata {
        let Some(entry) = catalog.topic(&name) else {
            return TopicMetadata {
                error: Some(ApiError::new(
                    ErrorCode::UnknownTopicOrPartition,
                    format!("topic {name:?} does not exist"),
                )),
                name,
                partitions: Vec::new(),
                configs: Vec::new(),
            };
        };
        let partitions = (0..entry.partitions)
            .map(|partition| PartitionMetadata {
                partition,
                shard: self.owner(&name, partition) as u16,
                error: None,
            })
            .collect();
        TopicMetadata {
            name,
            error: None,
            partitions,
            configs: entry.config.to_pairs(),
        }
    }

    pub(super) async fn create_topics(self: Rc<Self>, request: CreateTopicsRequest) -> Reply {
        let results = if self.id() == CONTROLLER_SHARD {
            self.controller_create_topics(request).await
        } else {
            self.call_controller(ShardRequest::CreateTopics(request))
                .await
        };
        Reply::ok(ApiKey::CreateTopics, ResponseBody::CreateTopics(results))
    }

    pub(super) async fn delete_topics(self: Rc<Self>, request: DeleteTopicsRequest) -> Reply {
        let results = if self.id() == CONTROLLER_SHARD {
            self.controller_delete_topics(request).await
        } else {
            self.call_controller(ShardRequest::DeleteTopics(request))
                .await
        };
        Reply::ok(ApiKey::DeleteTopics, ResponseBody::DeleteTopics(results))
    }

    /// Grows topics' partition counts (Kafka's CreatePartitions), through
    /// the controller like every catalog change.
    pub(super) async fn create_partitions(
        self: Rc<Self>,
        request: CreatePartitionsRequest,
    ) -> Reply {
        let results = if self.id() == CONTROLLER_SHARD {
            self.controller_create_partitions(request).await
        } else {
            self.call_controller(ShardRequest::CreatePartitions(request))
                .await
        };
        Reply::ok(
            ApiKey::CreatePartitions,
            ResponseBody::CreatePartitions(results),
        )
    }

    async fn call_controller(&self, request: ShardRequest) -> TopicResults {
        self.metrics
            .forwards_out
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match self.mesh.call(CONTROLLER_SHARD, request).await {
            Ok(ShardResponse::TopicResults(results)) => results,
            _ => TopicResults {
                results: Vec::new(),
            },
        }
    }

    pub(super) async fn controller_create_topics(
        &self,
        request: CreateTopicsRequest,
    ) -> TopicResults {
        let topics = named(request.topics, |t| t.name.clone());
        self.controller_apply(topics, |c, n, t| self.create_topic_change(c, n, t))
            .await
    }

    pub(super) async fn controller_delete_topics(
        &self,
        request: DeleteTopicsRequest,
    ) -> TopicResults {
        let names = named(request.names, String::clone);
        self.controller_apply(names, |catalog, name, _| catalog.without_topic(name))
            .await
    }

    /// Answers after every shard has opened the new partitions it owns: a
    /// client told "ok" can produce to any new partition at once.
    pub(super) async fn controller_create_partitions(
        &self,
        request: CreatePartitionsRequest,
    ) -> TopicResults {
        let topics = named(request.topics, |t| t.name.clone());
        self.controller_apply(topics, |catalog, name, t| {
            catalog.with_partitions(name, t.count)
        })
        .await
    }

    /// What CreateTopics would answer, checked against this shard's catalog
    /// snapshot and changing nothing (Kafka's `validate_only`). The snapshot
    /// can lag the controller's by one catalog push.
    pub fn validate_create_topics(&self, topics: Vec<NewTopic>) -> TopicResults {
        let topics = named(topics, |t| t.name.clone());
        let (_, results) = apply_changes(&self.catalog(), topics, |c, n, t| {
            self.create_topic_change(c, n, t)
        });
        TopicResults { results }
    }

    /// What CreatePartitions would answer; see `validate_create_topics`.
    pub fn validate_create_partitions(&self, topics: Vec<NewPartitions>) -> TopicResults {
        let topics = named(topics, |t| t.name.clone());
        let (_, results) = apply_changes(&self.catalog(), topics, |catalog, name, t| {
            catalog.with_partitions(name, t.count)
        });
        TopicResults { results }
    }

    fn create_topic_change(
        &self,
        catalog: &Catalog,
        name: &str,
        topic: &NewTopic,
    ) -> Result<Catalog, CatalogError> {
        let config = self
            .config
            .default_topic_config
            .clone()
            .with_overrides(&topic.configs)?;
        catalog.with_topic(TopicEntry {
            name: name.to_string(),
            partitions: topic.partitions,
            config,
            created_ms: now_ms(),
        })
    }

    /// Applies the changes under the controller lock, then persists and
    /// pushes the result once.
    async fn controller_apply<T>(
        &self,
        items: Vec<(String, T)>,
        change: impl Fn(&Catalog, &str, &T) -> Result<Catalog, CatalogError>,
    ) -> TopicResults {
        assert_eq!(self.id(), CONTROLLER_SHARD);
        let _permit = self
            .controller_lock
            .acquire_permit(1)
            .await
            .expect("controller lock never closes");
        let (next, mut results) = apply_changes(&self.catalog(), items, change);
        self.commit_catalog(next, &mut results).await;
        TopicResults { results }
    }

    /// Persists `next` (if it changed) and pushes it to every shard. On a
    /// persistence failure nothing is applied and every change is reported
    /// as failed.
    async fn commit_catalog(&self, next: Catalog, results: &mut [TopicResult]) {
        if next.version == self.catalog().version {
            return;
        }
        if let Err(err) = self.persist_catalog(&next).await {
            tracing::error!(error = %err, "could not persist the topic catalog");
            for result in results.iter_mut().filter(|r| r.error.is_none()) {
                result.error = Some(ApiError::new(
                    ErrorCode::StorageError,
                    format!("could not persist the topic catalog: {err}"),
                ));
            }
            return;
        }
        let next = Arc::new(next);
        self.apply_catalog(next.clone()).await;
        for peer in 0..self.config.shard_count {
            if peer == self.id() {
                continue;
            }
            if let Err(err) = self
                .mesh
                .call(peer, ShardRequest::ApplyCatalog(next.clone()))
                .await
            {
                tracing::error!(peer, error = %err, "shard did not apply the new catalog");
            }
        }
    }

    /// Writes the catalog atomically: temporary file (fdatasync'd), rename,
    /// then fsync of the directory so the rename itself is durable.
    async fn persist_catalog(&self, catalog: &Catalog) -> std::io::Result<()> {
        let path = catalog_path(&self.config.data_dir);
        let dir = path
            .parent()
            .expect("catalog path has a parent")
            .to_path_buf();
        let tmp = dir.join("topics.json.tmp");
        self.storage.create_dir_all(&dir).await?;
        crate::io::write_whole_file(self.storage.as_ref(), &tmp, &catalog.to_json()).await?;
        self.storage.rename(&tmp, &path).await?;
        self.storage.sync_dir(&dir).await
    }
}
