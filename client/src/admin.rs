//! Topic and consumer-group administration, broker information. All of it
//! goes to the bootstrap connection; the broker forwards internally.

use ringmq_wire::envelope::{
    ApiVersionsResponse, CommittedOffset, CreatePartitionsRequest, CreateTopicsRequest,
    DeleteGroupRequest, DeleteTopicsRequest, DescribeGroupRequest, DescribeGroupResponse,
    FindCoordinatorRequest, FindCoordinatorResponse, GroupListing, NewPartitions, NewTopic,
    OffsetCommitRequest, OffsetFetchRequest, RequestBody, ResponseBody, TopicMetadata,
    TopicResults,
};

use crate::error::{ClientError, Result};
use crate::group::offsets::{commit_outcome, commit_topics};
use crate::{expect_body, Client};

/// The generation an administrative commit names (it has no member).
const ADMIN_GENERATION: i32 = -1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    pub partition: u32,
    pub shard: u16,
    /// `host:port` of the owning shard's own listener.
    pub endpoint: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    pub partitions: Vec<PartitionInfo>,
    pub configs: Vec<(String, String)>,
}

/// Admin operations over a [`Client`].
#[derive(Clone)]
pub struct Admin {
    client: Client,
}

impl Admin {
    pub fn new(client: Client) -> Admin {
        Admin { client }
    }

    /// Creates a topic. Fails with `topic_already_exists` if it exists.
    pub fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        configs: &[(String, String)],
    ) -> Result<()> {
        if partitions == 0 {
            return Err(ClientError::InvalidArgument(format!(
                "topic {name:?} needs at least one partition"
            )));
        }
        let body = RequestBody::CreateTopics(CreateTopicsRequest {
            topics: vec![NewTopic {
                name: name.to_string(),
                partitions,
                configs: configs.to_vec(),
            }],
            timeout_ms: self.timeout_ms(),
        });
        let (response, _) = self.client.cluster().call_any("create_topics", body)?;
        let results = expect_body(&self.client, "create topics", response.body, |b| match b {
            ResponseBody::CreateTopics(r) => Some(r),
            _ => None,
        })?;
        self.client.cluster().invalidate_topic(name);
        single_result(results, name, "create topic")
    }

    /// Grows topic `name` to `count` partitions. Existing partitions keep
    /// their data and owners; the broker answers once every shard has
    /// opened the new ones. Counts only grow: a count at or below the
    /// current one fails with `invalid_partitions`, an unknown topic with
    /// `unknown_topic_or_partition`. Keyed records map to partitions by
    /// `murmur2(key) % count`, so growing moves where new records with a
    /// given key go.
    pub fn create_partitions(&self, name: &str, count: u32) -> Result<()> {
        if count == 0 {
            return Err(ClientError::InvalidArgument(format!(
                "topic {name:?} cannot have 0 partitions; give its new, larger count"
            )));
        }
        let body = RequestBody::CreatePartitions(CreatePartitionsRequest {
            topics: vec![NewPartitions {
                name: name.to_string(),
                count,
            }],
            timeout_ms: self.timeout_ms(),
        });
        let (response, _) = self.client.cluster().call_any("create_partitions", body)?;
        let results = expect_body(
            &self.client,
            "create partitions",
            response.body,
            |b| match b {
                ResponseBody::CreatePartitions(r) => Some(r),
                _ => None,
            },
        )?;
        // The cached partition count is stale now (or was, if this failed
        // because another admin grew the topic first).
        self.client.cluster().invalidate_topic(name);
        single_result(results, name, "create partitions")
    }

    /// Deletes a topic and all its data.
    pub fn delete_topic(&self, name: &str) -> Result<()> {
        let body = RequestBody::DeleteTopics(DeleteTopicsRequest {
            names: vec![name.to_string()],
            timeout_ms: self.timeout_ms(),
        });
        let (response, _) = self.client.cluster().call_any("delete_topics", body)?;
        let results = expect_body(&self.client, "delete topics", response.body, |b| match b {
            ResponseBody::DeleteTopics(r) => Some(r),
            _ => None,
        })?;
        self.client.cluster().invalidate_topic(name);
        single_result(results, name, "delete topic")
    }

    /// Every topic, sorted by name.
    pub fn list_topics(&self) -> Result<Vec<TopicInfo>> {
        let metadata = self.client.metadata(None)?;
        let mut topics: Vec<TopicInfo> = metadata
            .topics
            .iter()
            .filter(|t| t.error.is_none())
            .map(|t| self.topic_info(t))
            .collect::<Result<_>>()?;
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(topics)
    }

    /// One topic: its partitions, their owning shards and endpoints, configs.
    pub fn describe_topic(&self, name: &str) -> Result<TopicInfo> {
        let metadata = self.client.metadata(Some(&[name.to_string()]))?;
        let topic = metadata
            .topics
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| ClientError::UnknownTopic {
                topic: name.to_string(),
            })?;
        self.topic_info(topic)
    }

    pub fn api_versions(&self) -> Result<ApiVersionsResponse> {
        let (response, _) = self
            .client
            .cluster()
            .call_any("api_versions", RequestBody::ApiVersions)?;
        expect_body(&self.client, "api versions", response.body, |b| match b {
            ResponseBody::ApiVersions(v) => Some(v),
            _ => None,
        })
    }

    /// Every consumer group of the broker (all shards), sorted by name.
    pub fn list_groups(&self) -> Result<Vec<GroupListing>> {
        let (response, _) = self
            .client
            .cluster()
            .call_any("list_groups", RequestBody::ListGroups)?;
        let listing = expect_body(&self.client, "list groups", response.body, |b| match b {
            ResponseBody::ListGroups(r) => Some(r),
            _ => None,
        })?;
        Ok(listing.groups)
    }

    /// A group's state, members with their assignments, and committed
    /// offsets (of every instance, for broadcasting groups).
    pub fn describe_group(&self, group: &str) -> Result<DescribeGroupResponse> {
        let body = RequestBody::DescribeGroup(DescribeGroupRequest {
            group: group.to_string(),
        });
        let (response, _) = self.client.cluster().call_any("describe_group", body)?;
        expect_body(&self.client, "describe group", response.body, |b| match b {
            ResponseBody::DescribeGroup(r) => Some(r),
            _ => None,
        })
    }

    /// Deletes a group and its committed offsets. The broker refuses
    /// (`group_not_empty`) while the group has live members.
    pub fn delete_group(&self, group: &str) -> Result<()> {
        let body = RequestBody::DeleteGroup(DeleteGroupRequest {
            group: group.to_string(),
        });
        let (response, _) = self.client.cluster().call_any("delete_group", body)?;
        expect_body(&self.client, "delete group", response.body, |b| match b {
            ResponseBody::DeleteGroup => Some(()),
            _ => None,
        })
    }

    /// Sets committed offsets of `group` as an administrator (no member,
    /// generation -1), e.g. to reset where consumers resume. `offsets` are
    /// (topic, partition, next offset to read). `instance_id` names whose
    /// offsets for a broadcasting group ("" for clustering groups). The
    /// broker refuses (`group_not_empty`) while the group has live members.
    pub fn commit_offsets_admin(
        &self,
        group: &str,
        instance_id: &str,
        offsets: &[(String, u32, i64)],
    ) -> Result<()> {
        let body = RequestBody::OffsetCommit(OffsetCommitRequest {
            group: group.to_string(),
            member_id: String::new(),
            generation: ADMIN_GENERATION,
            instance_id: instance_id.to_string(),
            topics: commit_topics(offsets),
        });
        let (response, _) = self.client.cluster().call_any("offset_commit", body)?;
        let result = expect_body(&self.client, "offset commit", response.body, |b| match b {
            ResponseBody::OffsetCommit(r) => Some(r),
            _ => None,
        })?;
        commit_outcome(group, &result)
    }

    /// Committed offsets of `group` (of `instance_id` for a broadcasting
    /// group, "" for a clustering one), for `topics` (`None`: all).
    pub fn fetch_offsets(
        &self,
        group: &str,
        instance_id: &str,
        topics: Option<&[String]>,
    ) -> Result<Vec<CommittedOffset>> {
        let body = RequestBody::OffsetFetch(OffsetFetchRequest {
            group: group.to_string(),
            instance_id: instance_id.to_string(),
            topics: topics.map(<[String]>::to_vec),
        });
        let (response, _) = self.client.cluster().call_any("offset_fetch", body)?;
        let fetched = expect_body(&self.client, "offset fetch", response.body, |b| match b {
            ResponseBody::OffsetFetch(r) => Some(r),
            _ => None,
        })?;
        Ok(fetched.offsets)
    }

    /// The shard coordinating `group` and its shard-aware endpoint.
    pub fn find_coordinator(&self, group: &str) -> Result<FindCoordinatorResponse> {
        let body = RequestBody::FindCoordinator(FindCoordinatorRequest {
            group: group.to_string(),
        });
        let (response, _) = self.client.cluster().call_any("find_coordinator", body)?;
        expect_body(
            &self.client,
            "find coordinator",
            response.body,
            |b| match b {
                ResponseBody::FindCoordinator(r) => Some(r),
                _ => None,
            },
        )
    }

    fn topic_info(&self, topic: &TopicMetadata) -> Result<TopicInfo> {
        let mut partitions = topic
            .partitions
            .iter()
            .map(|p| {
                Ok(PartitionInfo {
                    partition: p.partition,
                    shard: p.shard,
                    endpoint: self.client.cluster().shard_endpoint(p.shard)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        partitions.sort_by_key(|p| p.partition);
        Ok(TopicInfo {
            name: topic.name.clone(),
            partitions,
            configs: topic.configs.clone(),
        })
    }

    fn timeout_ms(&self) -> u32 {
        u32::try_from(self.client.config().request_timeout_ms).unwrap_or(u32::MAX)
    }
}

fn single_result(results: TopicResults, name: &str, what: &str) -> Result<()> {
    let result = results
        .results
        .into_iter()
        .find(|r| r.name == name)
        .ok_or_else(|| ClientError::Protocol {
            endpoint: String::new(),
            message: format!("the {what} answer does not mention topic {name:?}"),
        })?;
    match result.error {
        None => Ok(()),
        Some(error) => Err(ClientError::api(error, format!("{what} {name}"))),
    }
}
