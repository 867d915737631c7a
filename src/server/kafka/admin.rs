//! ApiVersions, Metadata, topic admin, DescribeConfigs and InitProducerId.

use bytes::Bytes;
use kafka_protocol::messages::{self as km, BrokerId};
use kafka_protocol::protocol::StrBytes;
use ringmq_wire::envelope::{
    CreatePartitionsRequest, CreateTopicsRequest, DeleteTopicsRequest, MetadataRequest,
    MetadataResponse, NewPartitions, NewTopic, RequestBody, ResponseBody, TopicResults,
};
use ringmq_wire::error::{ApiError, ErrorCode};

use super::codec::{error_code, error_message, kafka_code, str_bytes, SUPPORTED};
use super::handlers::Call;

/// Kafka's default partition count (`num.partitions`) for CreateTopics
/// asking for the broker default (-1).
const DEFAULT_PARTITIONS: u32 = 1;
/// Kafka's cluster id is a base64 UUID; ours names the product.
const CLUSTER_ID: &str = "ringmq";
/// Authorized-operation bitfields (Kafka's AclOperation codes) for clients
/// that ask (Metadata v8+): ringmq has no ACLs, so everything is allowed.
/// Only codes up to IDEMPOTENT_WRITE (12): some clients reject codes they
/// do not know.
const CLUSTER_OPERATIONS: i32 = 1 << 5 | 1 << 7 | 1 << 8 | 1 << 9 | 1 << 10 | 1 << 11 | 1 << 12;
const TOPIC_OPERATIONS: i32 =
    1 << 3 | 1 << 4 | 1 << 5 | 1 << 6 | 1 << 7 | 1 << 8 | 1 << 10 | 1 << 11;
const CONFIG_RESOURCE_TOPIC: i8 = 2;
const CONFIG_RESOURCE_BROKER: i8 = 4;
/// DescribeConfigs `config_source`: DYNAMIC_TOPIC_CONFIG.
const CONFIG_SOURCE_TOPIC: i8 = 1;

pub fn api_versions(call: &Call, error: i16) -> Option<Bytes> {
    let api_keys = SUPPORTED
        .iter()
        .map(|(api, min, max)| {
            km::api_versions_response::ApiVersion::default()
                .with_api_key(*api as i16)
                .with_min_version(*min)
                .with_max_version(*max)
        })
        .collect();
    let response = km::ApiVersionsResponse::default()
        .with_error_code(error)
        .with_api_keys(api_keys);
    call.respond(&response)
}

fn topic_error(name: &str, error: ApiError) -> ringmq_wire::envelope::TopicMetadata {
    ringmq_wire::envelope::TopicMetadata {
        name: name.to_string(),
        error: Some(error),
        partitions: Vec::new(),
        configs: Vec::new(),
    }
}

/// Our metadata for `topics` (`None`: all).
async fn our_metadata(call: &Call, topics: Option<Vec<String>>) -> MetadataResponse {
    let asked = topics.clone();
    match call
        .call(RequestBody::Metadata(MetadataRequest { topics }))
        .await
    {
        Ok(ResponseBody::Metadata(m)) => m,
        other => {
            let error = match other {
                Err(err) => err,
                Ok(_) => ApiError::new(ErrorCode::Unknown, "unexpected reply to metadata"),
            };
            MetadataResponse {
                shards: Vec::new(),
                topics: asked
                    .unwrap_or_default()
                    .iter()
                    .map(|t| topic_error(t, error.clone()))
                    .collect(),
            }
        }
    }
}

/// A stable, non-nil topic id derived from the name: clients of Metadata
/// v10+ key caches on it. ringmq has no topic ids of its own yet, so a
/// topic deleted and created again keeps its id.
fn topic_id(name: &str) -> uuid::Uuid {
    let a = crc32c::crc32c(name.as_bytes()) as u128;
    let b = crc32c::crc32c_append(0x9e37_79b9, name.as_bytes()) as u128;
    let c = name.len() as u128;
    uuid::Uuid::from_u128((a << 96) | (b << 64) | (c << 32) | 0x5249_4e47) // "RING"
}

pub async fn metadata(call: Call, body: km::MetadataRequest) -> Option<Bytes> {
    let topics = body.topics.as_ref().map(|ts| {
        ts.iter()
            .filter_map(|t| t.name.as_ref().map(|n| n.as_str().to_string()))
            .collect::<Vec<_>>()
    });
    let ours = our_metadata(&call, topics).await;
    let v = call.version;
    let brokers = call
        .ctx
        .brokers
        .iter()
        .map(|b| {
            km::metadata_response::MetadataResponseBroker::default()
                .with_node_id(BrokerId(b.node_id))
                .with_host(str_bytes(&b.host))
                .with_port(i32::from(b.port))
        })
        .collect();
    let topics = ours
        .topics
        .into_iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let leader = BrokerId(i32::from(p.shard));
                    // Fields a version lacks must keep their defaults, or
                    // kafka-protocol refuses to encode.
                    km::metadata_response::MetadataResponsePartition::default()
                        .with_error_code(error_code(&p.error))
                        .with_partition_index(p.partition as i32)
                        .with_leader_id(leader)
                        .with_leader_epoch(if v >= 7 { 0 } else { -1 })
                        .with_replica_nodes(vec![leader])
                        .with_isr_nodes(vec![leader])
                })
                .collect();
            km::metadata_response::MetadataResponseTopic::default()
                .with_error_code(error_code(&t.error))
                .with_topic_id(if v >= 10 {
                    topic_id(&t.name)
                } else {
                    uuid::Uuid::nil()
                })
                .with_is_internal(v >= 1 && t.name.starts_with("__"))
                .with_name(Some(str_bytes(&t.name).into()))
                .with_partitions(partitions)
                .with_topic_authorized_operations(if body.include_topic_authorized_operations {
                    TOPIC_OPERATIONS
                } else {
                    i32::MIN
                })
        })
        .collect();
    let response = km::MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id((v >= 2).then(|| str_bytes(CLUSTER_ID)))
        .with_controller_id(BrokerId(if v >= 1 { 0 } else { -1 }))
        .with_cluster_authorized_operations(if body.include_cluster_authorized_operations {
            CLUSTER_OPERATIONS
        } else {
            i32::MIN
        })
        .with_topics(topics);
    call.respond(&response)
}

/// ringmq keeps one copy per partition: a replication factor above one is
/// refused rather than silently weakened.
fn check_replication(replication_factor: i16) -> Result<(), ApiError> {
    if replication_factor > 1 {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!(
                "replication factor {replication_factor} is not available: ringmq keeps one copy (use 1 or -1)"
            ),
        ));
    }
    Ok(())
}

fn results_or(body: Result<ResponseBody, ApiError>, names: &[String]) -> TopicResults {
    match body {
        Ok(ResponseBody::CreateTopics(r))
        | Ok(ResponseBody::DeleteTopics(r))
        | Ok(ResponseBody::CreatePartitions(r)) => r,
        other => {
            let error = match other {
                Err(err) => err,
                Ok(_) => ApiError::new(ErrorCode::Unknown, "unexpected reply to a topic request"),
            };
            TopicResults {
                results: names
                    .iter()
                    .map(|n| ringmq_wire::envelope::TopicResult {
                        name: n.clone(),
                        error: Some(error.clone()),
                    })
                    .collect(),
            }
        }
    }
}

pub async fn create_topics(call: Call, body: km::CreateTopicsRequest) -> Option<Bytes> {
    let mut refused: Vec<(String, ApiError)> = Vec::new();
    let mut topics = Vec::new();
    for t in &body.topics {
        let name = t.name.as_str().to_string();
        if let Err(err) = check_replication(t.replication_factor) {
            refused.push((name, err));
            continue;
        }
        let partitions = match t.num_partitions {
            -1 => DEFAULT_PARTITIONS,
            n => n.max(0) as u32,
        };
        let configs = t
            .configs
            .iter()
            .filter_map(|c| {
                c.value
                    .as_ref()
                    .map(|v| (c.name.as_str().to_string(), v.as_str().to_string()))
            })
            .collect();
        topics.push(NewTopic {
            name,
            partitions,
            configs,
        });
    }
    let wanted: Vec<(String, u32)> = topics
        .iter()
        .map(|t| (t.name.clone(), t.partitions))
        .collect();
    let names: Vec<String> = wanted.iter().map(|(n, _)| n.clone()).collect();
    let mut results = if body.validate_only {
        call.ctx.shard.validate_create_topics(topics)
    } else if topics.is_empty() {
        TopicResults {
            results: Vec::new(),
        }
    } else {
        results_or(
            call.call(RequestBody::CreateTopics(CreateTopicsRequest {
                topics,
                timeout_ms: body.timeout_ms.max(0) as u32,
            }))
            .await,
            &names,
        )
    };
    results
        .results
        .extend(
            refused
                .into_iter()
                .map(|(name, err)| ringmq_wire::envelope::TopicResult {
                    name,
                    error: Some(err),
                }),
        );
    let topics = results
        .results
        .into_iter()
        .map(|r| {
            let partitions = wanted
                .iter()
                .find(|(n, _)| *n == r.name)
                .map(|(_, p)| *p as i32)
                .unwrap_or(-1);
            let created = r.error.is_none() && call.version >= 5;
            km::create_topics_response::CreatableTopicResult::default()
                .with_topic_id(if call.version >= 7 {
                    topic_id(&r.name)
                } else {
                    uuid::Uuid::nil()
                })
                .with_name(str_bytes(&r.name).into())
                .with_error_code(error_code(&r.error))
                .with_error_message(error_message(&r.error))
                .with_num_partitions(if created { partitions } else { -1 })
                .with_replication_factor(if created { 1 } else { -1 })
        })
        .collect();
    call.respond(&km::CreateTopicsResponse::default().with_topics(topics))
}

pub async fn delete_topics(call: Call, body: km::DeleteTopicsRequest) -> Option<Bytes> {
    // v6 names topics in `topics` (by name or id); older versions in
    // `topic_names`.
    let mut names: Vec<String> = body
        .topic_names
        .iter()
        .map(|n| n.as_str().to_string())
        .collect();
    names.extend(
        body.topics
            .iter()
            .filter_map(|t| t.name.as_ref().map(|n| n.as_str().to_string())),
    );
    let results = results_or(
        call.call(RequestBody::DeleteTopics(DeleteTopicsRequest {
            names: names.clone(),
            timeout_ms: body.timeout_ms.max(0) as u32,
        }))
        .await,
        &names,
    );
    let responses = results
        .results
        .into_iter()
        .map(|r| {
            km::delete_topics_response::DeletableTopicResult::default()
                .with_name(Some(str_bytes(&r.name).into()))
                .with_error_code(error_code(&r.error))
                .with_error_message(if call.version >= 5 {
                    error_message(&r.error)
                } else {
                    None
                })
        })
        .collect();
    call.respond(&km::DeleteTopicsResponse::default().with_responses(responses))
}

pub async fn create_partitions(call: Call, body: km::CreatePartitionsRequest) -> Option<Bytes> {
    let topics: Vec<NewPartitions> = body
        .topics
        .iter()
        .map(|t| NewPartitions {
            name: t.name.as_str().to_string(),
            count: t.count.max(0) as u32,
        })
        .collect();
    let names: Vec<String> = topics.iter().map(|t| t.name.clone()).collect();
    let results = if body.validate_only {
        call.ctx.shard.validate_create_partitions(topics)
    } else {
        results_or(
            call.call(RequestBody::CreatePartitions(CreatePartitionsRequest {
                topics,
                timeout_ms: body.timeout_ms.max(0) as u32,
            }))
            .await,
            &names,
        )
    };
    let results = results
        .results
        .into_iter()
        .map(|r| {
            km::create_partitions_response::CreatePartitionsTopicResult::default()
                .with_name(str_bytes(&r.name).into())
                .with_error_code(error_code(&r.error))
                .with_error_message(error_message(&r.error))
        })
        .collect();
    call.respond(&km::CreatePartitionsResponse::default().with_results(results))
}

pub async fn describe_configs(call: Call, body: km::DescribeConfigsRequest) -> Option<Bytes> {
    let mut results = Vec::with_capacity(body.resources.len());
    for resource in &body.resources {
        let wanted = |key: &str| key_wanted(&resource.configuration_keys, key);
        let mut result = km::describe_configs_response::DescribeConfigsResult::default()
            .with_resource_type(resource.resource_type)
            .with_resource_name(resource.resource_name.clone());
        match resource.resource_type {
            CONFIG_RESOURCE_TOPIC => {
                let name = resource.resource_name.as_str().to_string();
                let ours = our_metadata(&call, Some(vec![name])).await;
                match ours.topics.into_iter().next() {
                    Some(t) if t.error.is_none() => {
                        result.configs = t
                            .configs
                            .iter()
                            .filter(|(k, _)| wanted(k))
                            .map(|(k, v)| config_entry(k, v, CONFIG_SOURCE_TOPIC))
                            .collect();
                    }
                    Some(t) => {
                        result.error_code = error_code(&t.error);
                        result.error_message = error_message(&t.error);
                    }
                    None => {
                        result.error_code = kafka_code(ErrorCode::UnknownTopicOrPartition);
                    }
                }
            }
            CONFIG_RESOURCE_BROKER => {
                // Broker configs are flags (`ringmq serve --help`); Kafka
                // tools only need the resource to exist.
                result.configs = Vec::new();
            }
            other => {
                result.error_code = kafka_code(ErrorCode::InvalidRequest);
                result.error_message = Some(StrBytes::from_string(format!(
                    "config resource type {other} is not supported: ringmq describes topics (2) and brokers (4)"
                )));
            }
        }
        results.push(result);
    }
    call.respond(&km::DescribeConfigsResponse::default().with_results(results))
}

/// Kafka: null or empty keys mean "every config".
fn key_wanted(keys: &Option<Vec<StrBytes>>, key: &str) -> bool {
    match keys {
        Some(keys) if !keys.is_empty() => keys.iter().any(|k| k.as_str() == key),
        _ => true,
    }
}

fn config_entry(
    name: &str,
    value: &str,
    source: i8,
) -> km::describe_configs_response::DescribeConfigsResourceResult {
    km::describe_configs_response::DescribeConfigsResourceResult::default()
        .with_name(str_bytes(name))
        .with_value(Some(str_bytes(value)))
        .with_read_only(false)
        .with_config_source(source)
        .with_is_sensitive(false)
}

/// Producer ids for idempotent producers. Sequence state lives with each
/// partition (its log rebuilds it on start), so an id only has to be
/// unique: see `ProducerIds`.
pub fn init_producer_id(call: &Call, body: km::InitProducerIdRequest) -> Option<Bytes> {
    let mut response = km::InitProducerIdResponse::default();
    if body
        .transactional_id
        .as_ref()
        .is_some_and(|t| !t.is_empty())
    {
        response.error_code = kafka_code(ErrorCode::InvalidRequest);
        response.producer_id = km::ProducerId(-1);
        response.producer_epoch = -1;
        return call.respond(&response);
    }
    let (id, epoch) = call
        .ctx
        .producer_ids
        .next(body.producer_id.0, body.producer_epoch);
    response.producer_id = km::ProducerId(id);
    response.producer_epoch = epoch;
    call.respond(&response)
}
