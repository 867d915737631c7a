//! The classic consumer-group APIs over the native coordinator.
//!
//! Kafka clients assign partitions themselves (the leader runs the assignor
//! and ships the result through SyncGroup); the coordinator relays the
//! opaque bytes. For the "consumer" protocol the bytes are decoded here
//! (ConsumerProtocolSubscription/Assignment), so the coordinator knows the
//! subscribed topics (partition-count rebalances) and each member's
//! partitions (describe, lag). Committed offsets live in the same place as
//! the native groups', under the same group name.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{self as km, BrokerId};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use ringmq_wire::envelope::{
    CommittedOffset, DeleteGroupRequest, DescribeGroupRequest, DescribeGroupResponse,
    FindCoordinatorRequest, GroupProtocol, HeartbeatRequest, JoinGroupRequest, LeaveGroupRequest,
    MemberAssignment, OffsetCommitPartition, OffsetCommitRequest, OffsetCommitTopic,
    OffsetFetchRequest, RequestBody, ResponseBody, SyncGroupRequest, TopicPartitions,
};
use ringmq_wire::error::{ApiError, ErrorCode};

use super::codec::{kafka_code, str_bytes};
use super::handlers::Call;

/// Kafka's protocol type for consumers, whose metadata ringmq understands.
const CONSUMER_PROTOCOL: &str = "consumer";
/// The consumer-protocol schema versions kafka-protocol decodes; newer
/// versions only append fields, so they decode as the newest known one.
const MAX_CONSUMER_PROTOCOL_VERSION: i16 = 3;

fn unexpected(what: &str) -> ApiError {
    ApiError::new(ErrorCode::Unknown, format!("unexpected reply to {what}"))
}

fn code_of<T>(result: &Result<T, ApiError>) -> i16 {
    result
        .as_ref()
        .err()
        .map(|e| kafka_code(e.code))
        .unwrap_or(0)
}

/// Decodes "consumer" protocol metadata or assignment bytes: a big-endian
/// i16 schema version, then the body. `None` for bytes that do not decode
/// (the protocol's bytes are the client's business; ringmq only reads them).
fn consumer_protocol<T: Decodable>(bytes: &Bytes) -> Option<T> {
    if bytes.len() < 2 {
        return None;
    }
    let version = i16::from_be_bytes([bytes[0], bytes[1]]).clamp(0, MAX_CONSUMER_PROTOCOL_VERSION);
    T::decode(&mut bytes.slice(2..), version).ok()
}

/// The topics of a "consumer" protocol subscription.
fn subscription_topics(metadata: &Bytes) -> Vec<String> {
    consumer_protocol::<km::ConsumerProtocolSubscription>(metadata)
        .map(|s| s.topics.iter().map(|t| t.as_str().to_string()).collect())
        .unwrap_or_default()
}

/// The partitions of a "consumer" protocol assignment, sorted.
fn assignment_partitions(assignment: &Bytes) -> Vec<TopicPartitions> {
    let Some(decoded) = consumer_protocol::<km::ConsumerProtocolAssignment>(assignment) else {
        return Vec::new();
    };
    let mut out: Vec<TopicPartitions> = decoded
        .assigned_partitions
        .iter()
        .map(|tp| {
            let mut partitions: Vec<u32> =
                tp.partitions.iter().map(|p| (*p).max(0) as u32).collect();
            partitions.sort_unstable();
            partitions.dedup();
            TopicPartitions {
                topic: tp.topic.as_str().to_string(),
                partitions,
            }
        })
        .collect();
    out.sort_by(|a, b| a.topic.cmp(&b.topic));
    out
}

/// A native member's assignment in the "consumer" protocol (v0), so Kafka
/// tools describing a native group see its partitions.
fn encode_assignment(assignment: &[TopicPartitions]) -> Bytes {
    let body = km::ConsumerProtocolAssignment::default().with_assigned_partitions(
        assignment
            .iter()
            .map(|tp| {
                km::consumer_protocol_assignment::TopicPartition::default()
                    .with_topic(str_bytes(&tp.topic).into())
                    .with_partitions(tp.partitions.iter().map(|p| *p as i32).collect())
            })
            .collect(),
    );
    let mut out = BytesMut::new();
    out.put_i16(0);
    if body.encode(&mut out, 0).is_err() {
        return Bytes::new();
    }
    out.freeze()
}

pub async fn find_coordinator(call: Call, body: km::FindCoordinatorRequest) -> Option<Bytes> {
    let mut response = km::FindCoordinatorResponse::default();
    const KEY_TYPE_GROUP: i8 = 0;
    if body.key_type != KEY_TYPE_GROUP {
        response.error_code = kafka_protocol::ResponseError::CoordinatorNotAvailable.code();
        response.error_message = Some(str_bytes(
            "ringmq has no transaction coordinator: transactions are not supported",
        ));
        response.node_id = BrokerId(-1);
        response.port = -1;
        return call.respond(&response);
    }
    let result = call
        .call(RequestBody::FindCoordinator(FindCoordinatorRequest {
            group: body.key.as_str().to_string(),
        }))
        .await;
    match result {
        Ok(ResponseBody::FindCoordinator(found)) => {
            match call.ctx.brokers.get(usize::from(found.shard)) {
                Some(broker) => {
                    response.node_id = BrokerId(broker.node_id);
                    response.host = str_bytes(&broker.host);
                    response.port = i32::from(broker.port);
                }
                None => {
                    response.error_code = kafka_code(ErrorCode::NotCoordinator);
                    response.node_id = BrokerId(-1);
                }
            }
        }
        other => {
            let err = other
                .err()
                .unwrap_or_else(|| unexpected("find coordinator"));
            response.error_code = kafka_code(err.code);
            response.error_message = Some(str_bytes(&err.message));
            response.node_id = BrokerId(-1);
            response.port = -1;
        }
    }
    call.respond(&response)
}

pub async fn join_group(call: Call, body: km::JoinGroupRequest) -> Option<Bytes> {
    let protocol_type = body.protocol_type.as_str().to_string();
    let topics = if protocol_type == CONSUMER_PROTOCOL {
        let mut topics: Vec<String> = body
            .protocols
            .iter()
            .flat_map(|p| subscription_topics(&p.metadata))
            .collect();
        topics.sort();
        topics.dedup();
        topics
    } else {
        Vec::new()
    };
    let request = JoinGroupRequest {
        group: body.group_id.as_str().to_string(),
        member_id: body.member_id.as_str().to_string(),
        client_id: call.client_id.clone(),
        topics,
        session_timeout_ms: body.session_timeout_ms.max(0) as u32,
        // v0 had no rebalance timeout: the session timeout served as both.
        rebalance_timeout_ms: if body.rebalance_timeout_ms > 0 {
            body.rebalance_timeout_ms as u32
        } else {
            body.session_timeout_ms.max(0) as u32
        },
        protocol_type: protocol_type.clone(),
        protocols: body
            .protocols
            .iter()
            .map(|p| GroupProtocol {
                name: p.name.as_str().to_string(),
                metadata: p.metadata.to_vec(),
            })
            .collect(),
        ..Default::default()
    };
    let result = call.call(RequestBody::JoinGroup(request)).await;
    let mut response = km::JoinGroupResponse::default()
        .with_member_id(body.member_id.clone())
        .with_generation_id(-1);
    match result {
        Ok(ResponseBody::JoinGroup(joined)) => {
            response.member_id = str_bytes(&joined.member_id);
            response.generation_id = joined.generation;
            if call.version >= 7 {
                response.protocol_type = Some(str_bytes(&protocol_type));
            }
            response.protocol_name = Some(str_bytes(&joined.protocol_name));
            response.leader = str_bytes(&joined.leader_id);
            response.members = joined
                .members
                .into_iter()
                .map(|m| {
                    km::join_group_response::JoinGroupResponseMember::default()
                        .with_member_id(str_bytes(&m.member_id))
                        .with_metadata(Bytes::from(m.metadata))
                })
                .collect();
        }
        other => {
            let err = other.err().unwrap_or_else(|| unexpected("join group"));
            response.error_code = kafka_code(err.code);
        }
    }
    call.respond(&response)
}

pub async fn sync_group(call: Call, body: km::SyncGroupRequest) -> Option<Bytes> {
    let assignments = body
        .assignments
        .iter()
        .map(|a| MemberAssignment {
            member_id: a.member_id.as_str().to_string(),
            partitions: assignment_partitions(&a.assignment),
            assignment: a.assignment.to_vec(),
        })
        .collect();
    let result = call
        .call(RequestBody::SyncGroup(SyncGroupRequest {
            group: body.group_id.as_str().to_string(),
            member_id: body.member_id.as_str().to_string(),
            generation: body.generation_id,
            assignments,
        }))
        .await;
    let mut response = km::SyncGroupResponse::default();
    match result {
        Ok(ResponseBody::SyncGroup(synced)) => {
            if call.version >= 5 {
                response.protocol_type = body.protocol_type.clone();
                response.protocol_name = Some(str_bytes(&synced.protocol_name));
            }
            response.assignment = Bytes::from(synced.assignment);
        }
        other => {
            let err = other.err().unwrap_or_else(|| unexpected("sync group"));
            response.error_code = kafka_code(err.code);
        }
    }
    call.respond(&response)
}

pub async fn heartbeat(call: Call, body: km::HeartbeatRequest) -> Option<Bytes> {
    let result = call
        .call(RequestBody::Heartbeat(HeartbeatRequest {
            group: body.group_id.as_str().to_string(),
            member_id: body.member_id.as_str().to_string(),
            generation: body.generation_id,
        }))
        .await;
    call.respond(&km::HeartbeatResponse::default().with_error_code(code_of(&result)))
}

pub async fn leave_group(call: Call, body: km::LeaveGroupRequest) -> Option<Bytes> {
    let group = body.group_id.as_str().to_string();
    // v0-2 name one member; v3+ a list of them.
    let mut members: Vec<StrBytes> = body.members.iter().map(|m| m.member_id.clone()).collect();
    if call.version < 3 {
        members = vec![body.member_id.clone()];
    }
    let mut responses = Vec::with_capacity(members.len());
    let mut first_error = 0;
    for member in members {
        let result = call
            .call(RequestBody::LeaveGroup(LeaveGroupRequest {
                group: group.clone(),
                member_id: member.as_str().to_string(),
            }))
            .await;
        let code = code_of(&result);
        if first_error == 0 {
            first_error = code;
        }
        responses.push(
            km::leave_group_response::MemberResponse::default()
                .with_member_id(member)
                .with_error_code(code),
        );
    }
    let mut response = km::LeaveGroupResponse::default();
    if call.version < 3 {
        response.error_code = first_error;
    } else {
        response.members = responses;
    }
    call.respond(&response)
}

pub async fn offset_commit(call: Call, body: km::OffsetCommitRequest) -> Option<Bytes> {
    let topics: Vec<OffsetCommitTopic> = body
        .topics
        .iter()
        .map(|t| OffsetCommitTopic {
            name: t.name.as_str().to_string(),
            partitions: t
                .partitions
                .iter()
                .map(|p| OffsetCommitPartition {
                    partition: p.partition_index.max(0) as u32,
                    offset: p.committed_offset,
                    metadata: p
                        .committed_metadata
                        .as_ref()
                        .map(|m| m.as_str().to_string())
                        .unwrap_or_default(),
                })
                .collect(),
        })
        .collect();
    let result = call
        .call(RequestBody::OffsetCommit(OffsetCommitRequest {
            group: body.group_id.as_str().to_string(),
            member_id: body.member_id.as_str().to_string(),
            generation: body.generation_id_or_member_epoch,
            instance_id: String::new(),
            topics,
        }))
        .await;
    let response_topics = match result {
        Ok(ResponseBody::OffsetCommit(committed)) => committed
            .topics
            .into_iter()
            .map(|t| {
                km::offset_commit_response::OffsetCommitResponseTopic::default()
                    .with_name(str_bytes(&t.name).into())
                    .with_partitions(
                        t.partitions
                            .into_iter()
                            .map(|p| {
                                km::offset_commit_response::OffsetCommitResponsePartition::default()
                                    .with_partition_index(p.partition as i32)
                                    .with_error_code(
                                        p.error.map(|e| kafka_code(e.code)).unwrap_or(0),
                                    )
                            })
                            .collect(),
                    )
            })
            .collect(),
        other => {
            // A group-level refusal (fenced, rebalancing...) is reported on
            // every partition, as Kafka does.
            let err = other.err().unwrap_or_else(|| unexpected("offset commit"));
            let code = kafka_code(err.code);
            body.topics
                .iter()
                .map(|t| {
                    km::offset_commit_response::OffsetCommitResponseTopic::default()
                        .with_name(t.name.clone())
                        .with_partitions(
                            t.partitions
                                .iter()
                                .map(|p| {
                                    km::offset_commit_response::OffsetCommitResponsePartition::default()
                                        .with_partition_index(p.partition_index)
                                        .with_error_code(code)
                                })
                                .collect(),
                        )
                })
                .collect()
        }
    };
    call.respond(&km::OffsetCommitResponse::default().with_topics(response_topics))
}

pub async fn offset_fetch(call: Call, body: km::OffsetFetchRequest) -> Option<Bytes> {
    let asked: Option<Vec<(String, Vec<i32>)>> = body.topics.as_ref().map(|ts| {
        ts.iter()
            .map(|t| (t.name.as_str().to_string(), t.partition_indexes.clone()))
            .collect()
    });
    let result = call
        .call(RequestBody::OffsetFetch(OffsetFetchRequest {
            group: body.group_id.as_str().to_string(),
            instance_id: String::new(),
            topics: asked
                .as_ref()
                .map(|ts| ts.iter().map(|(t, _)| t.clone()).collect()),
        }))
        .await;
    let (offsets, error) = match result {
        Ok(ResponseBody::OffsetFetch(found)) => (found.offsets, 0),
        // Kafka answers an unknown group with "no offsets", not an error.
        Err(err) if err.code == ErrorCode::GroupNotFound => (Vec::new(), 0),
        other => {
            let err = other.err().unwrap_or_else(|| unexpected("offset fetch"));
            (Vec::new(), kafka_code(err.code))
        }
    };
    let find = |topic: &str, partition: i32| -> Option<&CommittedOffset> {
        offsets.iter().find(|c| {
            c.topic == topic && c.partition as i32 == partition && c.instance_id.is_empty()
        })
    };
    let wanted: Vec<(String, Vec<i32>)> = match asked {
        Some(asked) => asked,
        None => {
            let mut all: Vec<(String, Vec<i32>)> = Vec::new();
            for c in offsets.iter().filter(|c| c.instance_id.is_empty()) {
                match all.iter_mut().find(|(t, _)| *t == c.topic) {
                    Some((_, ps)) => ps.push(c.partition as i32),
                    None => all.push((c.topic.clone(), vec![c.partition as i32])),
                }
            }
            all
        }
    };
    let topics = wanted
        .iter()
        .map(|(topic, partitions)| {
            km::offset_fetch_response::OffsetFetchResponseTopic::default()
                .with_name(str_bytes(topic).into())
                .with_partitions(
                    partitions
                        .iter()
                        .map(|p| {
                            let committed = find(topic, *p);
                            km::offset_fetch_response::OffsetFetchResponsePartition::default()
                                .with_partition_index(*p)
                                .with_committed_offset(committed.map(|c| c.offset).unwrap_or(-1))
                                .with_committed_leader_epoch(-1)
                                .with_metadata(Some(str_bytes(
                                    committed.map(|c| c.metadata.as_str()).unwrap_or(""),
                                )))
                                .with_error_code(error)
                        })
                        .collect(),
                )
        })
        .collect();
    call.respond(
        &km::OffsetFetchResponse::default()
            .with_topics(topics)
            .with_error_code(if call.version >= 2 { error } else { 0 }),
    )
}

/// Our state names in Kafka's spelling.
fn kafka_state(state: &str) -> &'static str {
    match state {
        "empty" => "Empty",
        "preparing_rebalance" => "PreparingRebalance",
        "completing_rebalance" => "CompletingRebalance",
        "stable" => "Stable",
        _ => "Dead",
    }
}

pub async fn list_groups(call: Call, body: km::ListGroupsRequest) -> Option<Bytes> {
    let result = call.call(RequestBody::ListGroups).await;
    let mut response = km::ListGroupsResponse::default();
    match result {
        Ok(ResponseBody::ListGroups(listed)) => {
            response.groups = listed
                .groups
                .into_iter()
                .map(|g| (kafka_state(&g.state), g.group))
                .filter(|(state, _)| {
                    body.states_filter.is_empty()
                        || body.states_filter.iter().any(|s| s.as_str() == *state)
                })
                .map(|(state, group)| {
                    let listed = km::list_groups_response::ListedGroup::default()
                        .with_group_id(str_bytes(&group).into())
                        .with_protocol_type(str_bytes(CONSUMER_PROTOCOL));
                    if call.version >= 4 {
                        listed.with_group_state(str_bytes(state))
                    } else {
                        listed
                    }
                })
                .collect();
        }
        other => {
            let err = other.err().unwrap_or_else(|| unexpected("list groups"));
            response.error_code = kafka_code(err.code);
        }
    }
    call.respond(&response)
}

fn described(
    group: &str,
    result: Result<ResponseBody, ApiError>,
) -> km::describe_groups_response::DescribedGroup {
    let mut out = km::describe_groups_response::DescribedGroup::default()
        .with_group_id(str_bytes(group).into());
    let d: DescribeGroupResponse = match result {
        Ok(ResponseBody::DescribeGroup(d)) => d,
        // Kafka describes an unknown group as Dead, without an error.
        Err(err) if err.code == ErrorCode::GroupNotFound => {
            out.group_state = str_bytes("Dead");
            return out;
        }
        other => {
            let err = other.err().unwrap_or_else(|| unexpected("describe group"));
            out.error_code = kafka_code(err.code);
            return out;
        }
    };
    let client_assigned = !d.protocol_type.is_empty();
    out.group_state = str_bytes(kafka_state(&d.state));
    out.protocol_type = str_bytes(if client_assigned {
        &d.protocol_type
    } else {
        CONSUMER_PROTOCOL
    });
    out.protocol_data = str_bytes(if client_assigned {
        &d.protocol_name
    } else {
        d.assignor.name()
    });
    out.members = d
        .members
        .into_iter()
        .map(|m| {
            let assignment = if client_assigned {
                Bytes::from(m.assignment_bytes)
            } else {
                encode_assignment(&m.assignment)
            };
            km::describe_groups_response::DescribedGroupMember::default()
                .with_member_id(str_bytes(&m.member_id))
                .with_client_id(str_bytes(&m.client_id))
                .with_client_host(str_bytes("/127.0.0.1"))
                .with_member_metadata(Bytes::from(m.metadata))
                .with_member_assignment(assignment)
        })
        .collect();
    out
}

pub async fn describe_groups(call: Call, body: km::DescribeGroupsRequest) -> Option<Bytes> {
    let mut groups = Vec::with_capacity(body.groups.len());
    for group in &body.groups {
        let name = group.as_str().to_string();
        let result = call
            .call(RequestBody::DescribeGroup(DescribeGroupRequest {
                group: name.clone(),
            }))
            .await;
        let mut group = described(&name, result);
        if body.include_authorized_operations {
            // No ACLs: READ, DELETE and DESCRIBE are allowed.
            group.authorized_operations = 1 << 3 | 1 << 6 | 1 << 8;
        }
        groups.push(group);
    }
    call.respond(&km::DescribeGroupsResponse::default().with_groups(groups))
}

pub async fn delete_groups(call: Call, body: km::DeleteGroupsRequest) -> Option<Bytes> {
    let mut results = Vec::with_capacity(body.groups_names.len());
    for group in &body.groups_names {
        let result = call
            .call(RequestBody::DeleteGroup(DeleteGroupRequest {
                group: group.as_str().to_string(),
            }))
            .await;
        results.push(
            km::delete_groups_response::DeletableGroupResult::default()
                .with_group_id(group.clone())
                .with_error_code(code_of(&result)),
        );
    }
    call.respond(&km::DeleteGroupsResponse::default().with_results(results))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_assignments_round_trip() {
        let assignment = vec![
            TopicPartitions {
                topic: "a".into(),
                partitions: vec![0, 2],
            },
            TopicPartitions {
                topic: "b".into(),
                partitions: vec![1],
            },
        ];
        let bytes = encode_assignment(&assignment);
        assert_eq!(assignment_partitions(&bytes), assignment);
        assert!(assignment_partitions(&Bytes::from_static(&[0])).is_empty());
        assert!(assignment_partitions(&Bytes::from_static(&[0, 0, 9, 9, 9])).is_empty());
    }

    #[test]
    fn subscriptions_name_their_topics() {
        let sub = km::ConsumerProtocolSubscription::default()
            .with_topics(vec![str_bytes("orders"), str_bytes("refunds")]);
        let mut out = BytesMut::new();
        out.put_i16(1);
        sub.encode(&mut out, 1).unwrap();
        assert_eq!(
            subscription_topics(&out.freeze()),
            vec!["orders", "refunds"]
        );
        assert!(subscription_topics(&Bytes::new()).is_empty());
    }
}
