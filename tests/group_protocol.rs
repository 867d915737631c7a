//! Consumer-group protocol against a real broker, spoken frame by frame:
//! generation fencing of commits and fetches, rebalances on join and on
//! rebalance-deadline expiry, administrative commits refused while members
//! live, committed offsets surviving SIGKILL, snapshot compaction of
//! `__consumer_offsets`, and lag on /metrics.

mod common;

use common::{Broker, RawConn};
use ringmq_wire::envelope::{FetchPartition, FetchRequest, FetchTopic, RequestBody, ResponseBody};
use ringmq_wire::error::{ApiError, ErrorCode};
use ringmq_wire::group_api::*;

fn join_request(group: &str, member_id: &str, rebalance_timeout_ms: u32) -> RequestBody {
    RequestBody::JoinGroup(JoinGroupRequest {
        group: group.into(),
        member_id: member_id.into(),
        instance_id: String::new(),
        client_id: "raw-test".into(),
        mode: GroupMode::Clustering,
        assignor: Assignor::Sticky,
        topics: vec!["orders".into()],
        session_timeout_ms: 10_000,
        rebalance_timeout_ms,
        ..Default::default()
    })
}

fn expect_join(result: (ringmq_wire::envelope::Response, bytes::Bytes)) -> JoinGroupResponse {
    match result.0.body {
        ResponseBody::JoinGroup(join) => join,
        _ => panic!("join failed: {:?}", result.0.error),
    }
}

fn call_error(conn: &mut RawConn, body: RequestBody) -> Option<ApiError> {
    conn.call(7, body, &[]).0.error
}

fn commit(group: &str, member_id: &str, generation: i32, offset: i64) -> RequestBody {
    commit_partitions(group, member_id, generation, &[(0, offset)], String::new())
}

fn commit_partitions(
    group: &str,
    member_id: &str,
    generation: i32,
    offsets: &[(u32, i64)],
    metadata: String,
) -> RequestBody {
    RequestBody::OffsetCommit(OffsetCommitRequest {
        group: group.into(),
        member_id: member_id.into(),
        generation,
        instance_id: String::new(),
        topics: vec![OffsetCommitTopic {
            name: "orders".into(),
            partitions: offsets
                .iter()
                .map(|(partition, offset)| OffsetCommitPartition {
                    partition: *partition,
                    offset: *offset,
                    metadata: metadata.clone(),
                })
                .collect(),
        }],
    })
}

fn committed(conn: &mut RawConn, group: &str) -> Vec<(u32, i64)> {
    let (response, _) = conn.call(
        9,
        RequestBody::OffsetFetch(OffsetFetchRequest {
            group: group.into(),
            instance_id: String::new(),
            topics: None,
        }),
        &[],
    );
    let ResponseBody::OffsetFetch(fetched) = response.body else {
        panic!("{response:?}")
    };
    fetched
        .offsets
        .iter()
        .map(|o| (o.partition, o.offset))
        .collect()
}

fn fenced_fetch(group: &str, member_id: &str, generation: i32, partition: u32) -> RequestBody {
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
            group: group.into(),
            member_id: member_id.into(),
            generation,
        }),
    })
}

#[test]
fn old_generations_are_fenced_from_commits_and_fetches() {
    let broker = Broker::start(2);
    let mut a_conn = RawConn::connect(&broker.addr());
    let mut b_conn = RawConn::connect(&broker.addr());
    a_conn.create_topic("orders", 4);

    // A alone: generation 1, everything.
    let a = expect_join(a_conn.call(1, join_request("g", "", 5_000), &[]));
    assert_eq!(a.generation, 1);
    assert_eq!(a.assignment[0].partitions, vec![0, 1, 2, 3]);
    assert!(call_error(&mut a_conn, commit("g", &a.member_id, 1, 10)).is_none());

    // B joins (long poll); A learns of it from its heartbeat and rejoins.
    b_conn.send(2, join_request("g", "", 5_000), &[]);
    let heartbeat = RequestBody::Heartbeat(HeartbeatRequest {
        group: "g".into(),
        member_id: a.member_id.clone(),
        generation: 1,
    });
    // B's join travels on another connection: heartbeat until it lands.
    let err = loop {
        if let Some(err) = call_error(&mut a_conn, heartbeat.clone()) {
            break err;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert_eq!(err.code, ErrorCode::RebalanceInProgress);
    // Commits of the current generation are still taken during the
    // rebalance: that is how a member saves its progress before revoking.
    assert!(call_error(&mut a_conn, commit("g", &a.member_id, 1, 11)).is_none());
    let a2 = expect_join(a_conn.call(3, join_request("g", &a.member_id, 5_000), &[]));
    let b = expect_join(b_conn.recv().expect("join answer"));
    assert_eq!(a2.generation, 2);
    assert_eq!(b.generation, 2);
    let mut owned: Vec<u32> = a2.assignment[0]
        .partitions
        .iter()
        .chain(&b.assignment[0].partitions)
        .copied()
        .collect();
    owned.sort();
    assert_eq!(owned, vec![0, 1, 2, 3], "disjoint and complete");
    assert_eq!(a2.assignment[0].partitions.len(), 2);

    // A stale commit (generation 1) is rejected with a clear error.
    let err = call_error(&mut a_conn, commit("g", &a.member_id, 1, 99)).expect("fenced");
    assert_eq!(err.code, ErrorCode::IllegalGeneration);
    assert!(err.message.contains("fenced"), "{err}");
    assert_eq!(committed(&mut a_conn, "g"), vec![(0, 11)]);

    // Fetches are fenced too: old generation, and a partition of B's.
    let err = call_error(&mut a_conn, fenced_fetch("g", &a.member_id, 1, 0)).expect("fenced");
    assert_eq!(err.code, ErrorCode::IllegalGeneration);
    let b_partition = b.assignment[0].partitions[0];
    let err = call_error(&mut a_conn, fenced_fetch("g", &a.member_id, 2, b_partition))
        .expect("not A's partition");
    assert_eq!(err.code, ErrorCode::IllegalGeneration);
    let own = a2.assignment[0].partitions[0];
    assert!(call_error(&mut a_conn, fenced_fetch("g", &a.member_id, 2, own)).is_none());

    // Administrative commits wait for the group to be empty.
    let err = call_error(&mut a_conn, commit("g", "", -1, 0)).expect("members live");
    assert_eq!(err.code, ErrorCode::GroupNotEmpty);
    let delete = RequestBody::DeleteGroup(DeleteGroupRequest { group: "g".into() });
    assert_eq!(
        call_error(&mut a_conn, delete).map(|e| e.code),
        Some(ErrorCode::GroupNotEmpty)
    );
}

#[test]
fn a_member_that_does_not_rejoin_is_dropped_at_the_rebalance_deadline() {
    let broker = Broker::start(2);
    let mut a_conn = RawConn::connect(&broker.addr());
    let mut b_conn = RawConn::connect(&broker.addr());
    a_conn.create_topic("orders", 3);
    let a = expect_join(a_conn.call(1, join_request("slow", "", 1_000), &[]));
    // B's join waits for A, which never rejoins: after A's 1 s rebalance
    // timeout A is dropped and B gets everything.
    let b = expect_join(b_conn.call(2, join_request("slow", "", 1_000), &[]));
    assert_eq!(b.generation, a.generation + 1);
    assert_eq!(b.member_count, 1);
    assert_eq!(b.assignment[0].partitions, vec![0, 1, 2]);
    let err = call_error(&mut a_conn, commit("slow", &a.member_id, a.generation, 5))
        .expect("A was dropped");
    assert_eq!(err.code, ErrorCode::UnknownMemberId);
    // B leaves: the group is empty, and an administrative commit works.
    let leave = RequestBody::LeaveGroup(LeaveGroupRequest {
        group: "slow".into(),
        member_id: b.member_id.clone(),
    });
    assert!(call_error(&mut b_conn, leave).is_none());
    assert!(call_error(&mut b_conn, commit("slow", "", -1, 42)).is_none());
    let (response, _) = b_conn.call(
        3,
        RequestBody::DescribeGroup(DescribeGroupRequest {
            group: "slow".into(),
        }),
        &[],
    );
    let ResponseBody::DescribeGroup(described) = response.body else {
        panic!("{response:?}")
    };
    assert_eq!(described.state, "empty");
    assert!(described.members.is_empty());
    assert_eq!(described.offsets[0].offset, 42);
}

#[test]
fn committed_offsets_survive_sigkill_and_compaction() {
    // One small-segment offsets partition, so a few thousand commits roll
    // many segments and trigger snapshot compaction.
    let mut broker = Broker::start_with(
        2,
        &[
            "--offsets-partitions",
            "2",
            "--offsets-segment-bytes",
            "65536",
        ],
    );
    let mut conn = RawConn::connect(&broker.addr());
    conn.create_topic("orders", 4);
    let metadata = "m".repeat(200);
    for round in 0..2_000i64 {
        let group = format!("g{}", round % 5);
        let offsets: Vec<(u32, i64)> = (0..4).map(|p| (p, round * 10 + p as i64)).collect();
        let body = commit_partitions(&group, "", -1, &offsets, metadata.clone());
        let (response, _) = conn.call(100 + round as u64, body, &[]);
        let ResponseBody::OffsetCommit(result) = response.body else {
            panic!("{response:?}")
        };
        for p in &result.topics[0].partitions {
            assert!(p.error.is_none(), "{:?}", p.error);
        }
    }
    // ~2.2 MB of commits went in; compaction keeps the partitions small.
    let size = offsets_topic_bytes(&broker);
    assert!(
        size < 8 * 65_536,
        "__consumer_offsets holds {size} bytes after compaction"
    );
    let expected = |group: usize| -> Vec<(u32, i64)> {
        let last_round = 1_995 + group as i64;
        (0..4).map(|p| (p, last_round * 10 + p as i64)).collect()
    };
    for group in 0..5 {
        assert_eq!(committed(&mut conn, &format!("g{group}")), expected(group));
    }
    drop(conn);
    broker.kill9();
    broker.restart();
    let mut conn = RawConn::connect(&broker.addr());
    for group in 0..5 {
        assert_eq!(
            committed(&mut conn, &format!("g{group}")),
            expected(group),
            "after SIGKILL"
        );
    }
    // Lag per group and partition: nothing was produced, so the high
    // watermark is 0 and the lag floors at 0; the committed offsets show.
    let (_, metrics) = common::http_get(broker.http_port, "/metrics").unwrap();
    let line = format!(
        "ringmq_consumer_group_committed_offset{{group=\"g0\",instance=\"\",topic=\"orders\",partition=\"3\"}} {}",
        1_995 * 10 + 3
    );
    assert!(metrics.contains(&line), "missing {line}");
    assert!(metrics.contains("ringmq_consumer_group_lag{group=\"g0\""));
}

/// Bytes on disk of `__consumer_offsets`, from /metrics.
fn offsets_topic_bytes(broker: &Broker) -> i64 {
    let (_, metrics) = common::http_get(broker.http_port, "/metrics").unwrap();
    metrics
        .lines()
        .filter(|l| l.starts_with("ringmq_partition_size_bytes{topic=\"__consumer_offsets\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<i64>().ok())
        .sum()
}
