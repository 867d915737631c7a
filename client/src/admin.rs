//! Topic administration and broker information. All of it goes to the
//! bootstrap connection; the broker forwards internally.

use ringmq_wire::envelope::{
    ApiVersionsResponse, CreateTopicsRequest, DeleteTopicsRequest, NewTopic, RequestBody,
    ResponseBody, TopicMetadata, TopicResults,
};

use crate::error::{ClientError, Result};
use crate::{expect_body, Client};

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
