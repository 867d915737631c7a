//! Client-side assignment groups (Kafka's classic protocol) spoken frame by
//! frame on the native wire: leader election and protocol choice, the
//! follower's SyncGroup waiting for the leader's, describe showing the
//! protocol and the assignments, commits refused while the leader has not
//! synced and shared with native groups of the same name afterwards, fetch
//! fences built from the decoded assignment, and a native server-assigned
//! member refused while the Kafka members live.

mod common;

use std::time::Duration;

use common::{Broker, RawConn};
use ringmq_wire::envelope::{
    FetchPartition, FetchRequest, FetchTopic, RequestBody, Response, ResponseBody,
};
use ringmq_wire::error::{ApiError, ErrorCode};
use ringmq_wire::group_api::*;

const GROUP: &str = "classic";

fn kafka_join(member_id: &str, protocols: &[(&str, &[u8])]) -> RequestBody {
    RequestBody::JoinGroup(JoinGroupRequest {
        group: GROUP.into(),
        member_id: member_id.into(),
        client_id: "kafka-like".into(),
        topics: vec!["orders".into()],
        session_timeout_ms: 10_000,
        rebalance_timeout_ms: 10_000,
        protocol_type: "consumer".into(),
        protocols: protocols
            .iter()
            .map(|(name, metadata)| GroupProtocol {
                name: name.to_string(),
                metadata: metadata.to_vec(),
            })
            .collect(),
        ..Default::default()
    })
}

fn sync(member_id: &str, generation: i32, plan: &[(&str, &[u8], &[u32])]) -> RequestBody {
    RequestBody::SyncGroup(SyncGroupRequest {
        group: GROUP.into(),
        member_id: member_id.into(),
        generation,
        assignments: plan
            .iter()
            .map(|(member, bytes, partitions)| MemberAssignment {
                member_id: member.to_string(),
                assignment: bytes.to_vec(),
                partitions: vec![TopicPartitions {
                    topic: "orders".into(),
                    partitions: partitions.to_vec(),
                }],
            })
            .collect(),
    })
}

fn expect_join(response: Response) -> JoinGroupResponse {
    match response.body {
        ResponseBody::JoinGroup(join) => join,
        _ => panic!("join failed: {:?}", response.error),
    }
}

fn expect_sync(response: Response) -> SyncGroupResponse {
    match response.body {
        ResponseBody::SyncGroup(sync) => sync,
        _ => panic!("sync failed: {:?}", response.error),
    }
}

fn call_error(conn: &mut RawConn, body: RequestBody) -> Option<ApiError> {
    conn.call(7, body, &[]).0.error
}

fn heartbeat(member_id: &str, generation: i32) -> RequestBody {
    RequestBody::Heartbeat(HeartbeatRequest {
        group: GROUP.into(),
        member_id: member_id.into(),
        generation,
    })
}

fn commit(member_id: &str, generation: i32, partition: u32, offset: i64) -> RequestBody {
    RequestBody::OffsetCommit(OffsetCommitRequest {
        group: GROUP.into(),
        member_id: member_id.into(),
        generation,
        instance_id: String::new(),
        topics: vec![OffsetCommitTopic {
            name: "orders".into(),
            partitions: vec![OffsetCommitPartition {
                partition,
                offset,
                metadata: String::new(),
            }],
        }],
    })
}

fn fenced_fetch(member_id: &str, generation: i32, partition: u32) -> RequestBody {
    RequestBody::Fetch(FetchRequest {
        max_wait_ms: 0,
        min_bytes: 0,
        max_bytes: 1 << 20,
        topics: vec![FetchTopic {
            name: "orders".into(),
            partitions: vec![FetchPartition {
                partition,
                fetch_offset: 0,
                partition_max_bytes: 1 << 20,
            }],
        }],
        fence: Some(FetchFence {
            group: GROUP.into(),
            member_id: member_id.into(),
            generation,
        }),
    })
}

fn describe(conn: &mut RawConn) -> DescribeGroupResponse {
    let (response, _) = conn.call(
        8,
        RequestBody::DescribeGroup(DescribeGroupRequest {
            group: GROUP.into(),
        }),
        &[],
    );
    match response.body {
        ResponseBody::DescribeGroup(described) => described,
        _ => panic!("describe failed: {:?}", response.error),
    }
}

/// Whether a response is waiting on `conn` (after giving it `wait`).
fn has_reply(conn: &mut RawConn, wait: Duration) -> bool {
    std::thread::sleep(wait);
    conn.stream.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let ready = match conn.stream.peek(&mut byte) {
        Ok(n) => n > 0,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(e) => panic!("peek failed: {e}"),
    };
    conn.stream.set_nonblocking(false).unwrap();
    ready
}

#[test]
fn a_kafka_style_group_elects_a_leader_and_relays_its_assignment() {
    let broker = Broker::start(2);
    let mut a_conn = RawConn::connect(&broker.addr());
    let mut b_conn = RawConn::connect(&broker.addr());
    let mut admin = RawConn::connect(&broker.addr());
    admin.create_topic("orders", 4);

    // A alone: generation 1, A leads and assigns itself everything.
    a_conn.send(1, kafka_join("", &[("range", b"a-range")]), &[]);
    let a1 = expect_join(a_conn.recv().expect("join answer").0);
    assert_eq!(a1.leader_id, a1.member_id);
    assert_eq!(a1.protocol_name, "range");
    assert!(a1.assignment.is_empty(), "no server-side assignment");
    let a = a1.member_id.clone();
    let everything: &[(&str, &[u8], &[u32])] = &[(&a, b"all", &[0, 1, 2, 3])];
    let synced = expect_sync(a_conn.call(2, sync(&a, a1.generation, everything), &[]).0);
    assert_eq!(synced.assignment, b"all");

    // B joins (a long poll); A learns of it from its heartbeat and rejoins.
    // B prefers roundrobin, but range is the only protocol both support.
    b_conn.send(
        3,
        kafka_join("", &[("roundrobin", b"b-rr"), ("range", b"b-range")]),
        &[],
    );
    let err = loop {
        if let Some(err) = call_error(&mut a_conn, heartbeat(&a, a1.generation)) {
            break err;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(err.code, ErrorCode::RebalanceInProgress);
    a_conn.send(4, kafka_join(&a, &[("range", b"a-range")]), &[]);
    let leader = expect_join(a_conn.recv().expect("join answer").0);
    let follower = expect_join(b_conn.recv().expect("join answer").0);
    let b = follower.member_id.clone();
    let generation = leader.generation;
    assert_eq!(generation, a1.generation + 1);
    assert_eq!(follower.generation, generation);
    assert_eq!(leader.leader_id, a, "the leader stays while a member");
    assert_eq!(follower.leader_id, a);
    assert_eq!(
        (
            leader.protocol_name.as_str(),
            follower.protocol_name.as_str()
        ),
        ("range", "range")
    );
    let mut members: Vec<(String, Vec<u8>)> = leader
        .members
        .iter()
        .map(|m| (m.member_id.clone(), m.metadata.clone()))
        .collect();
    members.sort();
    let mut expected = vec![
        (a.clone(), b"a-range".to_vec()),
        (b.clone(), b"b-range".to_vec()),
    ];
    expected.sort();
    assert_eq!(members, expected, "each member's metadata for range");
    assert!(
        follower.members.is_empty(),
        "only the leader sees the members"
    );

    // B syncs first and waits for the leader.
    b_conn.send(5, sync(&b, generation, &[]), &[]);
    assert!(!has_reply(&mut b_conn, Duration::from_millis(300)));
    // Heartbeats are fine meanwhile; commits must wait for the assignment.
    assert!(call_error(&mut a_conn, heartbeat(&a, generation)).is_none());
    assert_eq!(describe(&mut admin).state, "completing_rebalance");
    let err = call_error(&mut a_conn, commit(&a, generation, 0, 5)).expect("refused");
    assert_eq!(err.code, ErrorCode::RebalanceInProgress);

    // The leader's plan completes both.
    let plan: &[(&str, &[u8], &[u32])] = &[(&a, b"plan-a", &[0, 1]), (&b, b"plan-b", &[2, 3])];
    let mine = expect_sync(a_conn.call(6, sync(&a, generation, plan), &[]).0);
    assert_eq!(mine.assignment, b"plan-a");
    assert_eq!(mine.protocol_name, "range");
    let (response, _) = b_conn.recv().expect("the pending sync completes");
    assert_eq!(response.correlation_id, 5);
    assert_eq!(expect_sync(response).assignment, b"plan-b");

    // Describe shows the protocol, the metadata and both assignments.
    let described = describe(&mut admin);
    assert_eq!(described.state, "stable");
    assert_eq!(described.generation, generation);
    assert_eq!(described.protocol_type, "consumer");
    assert_eq!(described.protocol_name, "range");
    let member_b = described
        .members
        .iter()
        .find(|m| m.member_id == b)
        .expect("b described");
    assert_eq!(member_b.metadata, b"b-range");
    assert_eq!(member_b.assignment_bytes, b"plan-b");
    assert_eq!(member_b.assignment[0].partitions, vec![2, 3]);

    // Fetch fences follow the decoded assignment.
    assert!(call_error(&mut b_conn, fenced_fetch(&b, generation, 2)).is_none());
    let err = call_error(&mut b_conn, fenced_fetch(&b, generation, 0)).expect("A's partition");
    assert_eq!(err.code, ErrorCode::IllegalGeneration);

    // A commit in the stable generation shows up in OffsetFetch, under the
    // group's instance "" like a native clustering group's.
    assert!(call_error(&mut b_conn, commit(&b, generation, 2, 17)).is_none());
    let (response, _) = admin.call(
        9,
        RequestBody::OffsetFetch(OffsetFetchRequest {
            group: GROUP.into(),
            instance_id: String::new(),
            topics: None,
        }),
        &[],
    );
    let ResponseBody::OffsetFetch(fetched) = response.body else {
        panic!("{response:?}")
    };
    let offsets: Vec<(u32, i64)> = fetched
        .offsets
        .iter()
        .map(|o| (o.partition, o.offset))
        .collect();
    assert_eq!(offsets, vec![(2, 17)]);

    // A native (server-assigned) consumer cannot join while they live.
    let native = RequestBody::JoinGroup(JoinGroupRequest {
        group: GROUP.into(),
        client_id: "native".into(),
        topics: vec!["orders".into()],
        session_timeout_ms: 10_000,
        rebalance_timeout_ms: 10_000,
        ..Default::default()
    });
    let err = call_error(&mut admin, native.clone()).expect("refused");
    assert_eq!(err.code, ErrorCode::InconsistentGroupProtocol);
    assert!(err.message.contains("another group id"), "{err}");

    // Once both left, the native consumer takes the group over and sees
    // the offsets the Kafka-style members committed.
    for (conn, member) in [(&mut a_conn, &a), (&mut b_conn, &b)] {
        let leave = RequestBody::LeaveGroup(LeaveGroupRequest {
            group: GROUP.into(),
            member_id: member.clone(),
        });
        assert!(call_error(conn, leave).is_none());
    }
    let joined = expect_join(admin.call(10, native, &[]).0);
    assert!(joined.protocol_name.is_empty() && joined.leader_id.is_empty());
    assert_eq!(joined.assignment[0].partitions, vec![0, 1, 2, 3]);
    let described = describe(&mut admin);
    assert_eq!(described.protocol_type, "");
    assert_eq!(described.offsets[0].offset, 17);
}
