//! Growing a topic's partition count (CreatePartitions) on a real 2-shard
//! broker: `ringctl topic alter`, placement of the new partitions, produce
//! and consume on old and new partitions, the new count and every record
//! surviving a clean restart and a SIGKILL, the documented refusals, and
//! the rebalance of a consumer group subscribed to the grown topic.

mod common;

use std::collections::BTreeMap;
use std::process::Output;
use std::time::Duration;

use common::{ringctl_timeout, Broker, RawConn};
use ringmq_shards::catalog::{owner_shard, MAX_PARTITIONS_PER_TOPIC};
use ringmq_wire::envelope::{
    ApiKey, CreatePartitionsRequest, NewPartitions, RequestBody, ResponseBody, TopicResult,
};
use ringmq_wire::error::ErrorCode;
use ringmq_wire::group_api::{
    Assignor, GroupMode, HeartbeatRequest, JoinGroupRequest, JoinGroupResponse,
};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(60);
const SHARDS: usize = 2;
const TOPIC: &str = "grow";

/// partition → values in offset order (offsets are 0, 1, 2, … within each).
type Model = BTreeMap<u32, Vec<String>>;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn run(broker: &Broker, args: &[&str], stdin: Option<&[u8]>) -> Output {
    ringctl_timeout(&broker.addr(), args, stdin, TIMEOUT)
}

/// Runs ringctl, requires exit 0, returns stdout.
fn ok(broker: &Broker, args: &[&str], stdin: Option<&[u8]>) -> String {
    let out = run(broker, args, stdin);
    assert!(
        out.status.success(),
        "ringctl {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Runs ringctl, requires exit `code`, returns stderr.
fn fails_with(broker: &Broker, args: &[&str], code: i32) -> String {
    let out = run(broker, args, None);
    assert_eq!(
        out.status.code(),
        Some(code),
        "ringctl {args:?}:\nstdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stderr)
}

/// Produces `values` to one partition at `fsync` and checks that they got
/// the next offsets of that partition in `model`.
fn produce(broker: &Broker, model: &mut Model, partition: u32, values: &[String]) {
    let input: String = values.iter().map(|v| format!("{v}\n")).collect();
    let p = partition.to_string();
    let out = ok(
        broker,
        &[
            "produce",
            TOPIC,
            "--partition",
            &p,
            "--acks",
            "fsync",
            "--verbose",
        ],
        Some(input.as_bytes()),
    );
    let stored = model.entry(partition).or_default();
    let first_offset = stored.len();
    let acked: Vec<(u32, usize)> = out
        .lines()
        .map(|line| {
            let (p, o) = line.split_once(' ').expect("`PARTITION OFFSET`");
            (p.parse().unwrap(), o.parse().unwrap())
        })
        .collect();
    let expected: Vec<(u32, usize)> = (0..values.len())
        .map(|i| (partition, first_offset + i))
        .collect();
    assert_eq!(acked, expected, "produce to partition {partition}: {out}");
    stored.extend(values.iter().cloned());
}

fn values(tag: &str, partition: u32, count: usize) -> Vec<String> {
    (0..count)
        .map(|i| format!("{tag}-p{partition}-{i}"))
        .collect()
}

/// Reads the whole topic and compares it with `model`: nothing lost,
/// duplicated, reordered or renumbered, and no partition without a model.
fn assert_contents(broker: &Broker, model: &Model, when: &str) {
    let out = ok(
        broker,
        &[
            "consume",
            TOPIC,
            "--from",
            "earliest",
            "--format",
            "json",
            "--max-wait-ms",
            "100",
            "--idle-timeout-ms",
            "1500",
        ],
        None,
    );
    let mut read: Model = BTreeMap::new();
    for line in out.lines() {
        let record: Value = serde_json::from_str(line).expect("consume --format json");
        let partition = record["partition"].as_u64().unwrap() as u32;
        let offset = record["offset"].as_u64().unwrap() as usize;
        let stored = read.entry(partition).or_default();
        assert_eq!(
            offset,
            stored.len(),
            "{when}: offsets of {partition}: {out}"
        );
        stored.push(record["value"].as_str().unwrap().to_string());
    }
    let expected: Model = model
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(p, v)| (*p, v.clone()))
        .collect();
    assert_eq!(read, expected, "{when}: topic contents");
}

/// `(partition, shard, endpoint)` from `topic describe --json`.
fn describe(broker: &Broker) -> Vec<(u32, usize, String)> {
    let out = ok(broker, &["topic", "describe", TOPIC, "--json"], None);
    let topic: Value = serde_json::from_str(&out).expect("describe --json");
    topic["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["partition"].as_u64().unwrap() as u32,
                p["shard"].as_u64().unwrap() as usize,
                p["endpoint"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The topic has `count` partitions, each on the shard placement names,
/// and every shard has one endpoint.
fn assert_layout(broker: &Broker, count: u32, when: &str) -> Vec<String> {
    let partitions = describe(broker);
    assert_eq!(
        partitions.iter().map(|p| p.0).collect::<Vec<_>>(),
        (0..count).collect::<Vec<_>>(),
        "{when}: {partitions:?}"
    );
    let mut endpoints: Vec<Option<String>> = vec![None; SHARDS];
    for (partition, shard, endpoint) in &partitions {
        assert_eq!(
            *shard,
            owner_shard(TOPIC, *partition, SHARDS),
            "{when}: owner of partition {partition}"
        );
        let known = endpoints[*shard].get_or_insert_with(|| endpoint.clone());
        assert_eq!(known, endpoint, "{when}: shard {shard} has two endpoints");
    }
    let plain = ok(broker, &["topic", "describe", TOPIC], None);
    assert_eq!(
        plain.lines().next(),
        Some(format!("topic {TOPIC} partitions {count}").as_str()),
        "{when}: {plain}"
    );
    endpoints.into_iter().flatten().collect()
}

fn create_partitions(conn: &mut RawConn, topics: &[(&str, u32)]) -> Vec<TopicResult> {
    let body = RequestBody::CreatePartitions(CreatePartitionsRequest {
        topics: topics
            .iter()
            .map(|(name, count)| NewPartitions {
                name: name.to_string(),
                count: *count,
            })
            .collect(),
        timeout_ms: 10_000,
    });
    let (response, _) = conn.call(17, body, &[]);
    assert_eq!(response.api, ApiKey::CreatePartitions);
    match response.body {
        ResponseBody::CreatePartitions(results) => results.results,
        other => panic!("create partitions: {other:?} {:?}", response.error),
    }
}

fn error_code(result: &TopicResult) -> ErrorCode {
    result.error.as_ref().map_or(ErrorCode::None, |e| e.code)
}

#[test]
fn grow_a_topic_produce_consume_restart_and_refusals() {
    let mut broker = Broker::start(SHARDS);
    let mut model: Model = BTreeMap::new();
    ok(
        &broker,
        &["topic", "create", TOPIC, "--partitions", "2"],
        None,
    );
    assert_layout(&broker, 2, "created");
    for partition in 0..2 {
        produce(
            &broker,
            &mut model,
            partition,
            &values("before", partition, 20),
        );
    }

    let out = ok(
        &broker,
        &["topic", "alter", TOPIC, "--partitions", "5"],
        None,
    );
    assert_eq!(out.trim(), format!("altered topic {TOPIC}: 5 partitions"));
    // With 2 shards, 5 partitions land on both shards, and old and new
    // partitions share them: the placement did not move partitions 0 and 1.
    let endpoints = assert_layout(&broker, 5, "grown");
    assert_eq!(endpoints.len(), SHARDS);

    // The old partitions are untouched, and every partition takes writes.
    assert_contents(&broker, &model, "after alter");
    for partition in 0..5 {
        produce(
            &broker,
            &mut model,
            partition,
            &values("grown", partition, 15),
        );
    }
    assert_contents(&broker, &model, "after producing to the new partitions");

    // A clean restart keeps the count, the placement and the data.
    assert!(broker.terminate().success(), "clean shutdown");
    broker.restart();
    assert_layout(&broker, 5, "after SIGTERM + restart");
    assert_contents(&broker, &model, "after SIGTERM + restart");

    // fsync-acknowledged records on new partitions survive SIGKILL.
    for partition in [2, 3, 4] {
        produce(
            &broker,
            &mut model,
            partition,
            &values("killed", partition, 10),
        );
    }
    broker.kill9();
    broker.restart();
    // Shard ports are ephemeral (`--shard-port-base 0`): take the new ones.
    let endpoints = assert_layout(&broker, 5, "after SIGKILL + restart");
    assert_contents(&broker, &model, "after SIGKILL + restart");

    // Refusals through ringctl: a runtime error (exit 1) naming the code.
    for count in ["5", "3"] {
        let err = fails_with(
            &broker,
            &["topic", "alter", TOPIC, "--partitions", count],
            1,
        );
        assert!(err.contains("invalid_partitions"), "{err}");
        assert!(
            err.contains("a topic's partition count only grows: it has 5"),
            "{err}"
        );
    }
    let err = fails_with(&broker, &["topic", "alter", "nope", "--partitions", "3"], 1);
    assert!(err.contains("unknown_topic_or_partition"), "{err}");
    // A count of 0 is a usage error, caught before anything is sent.
    let err = fails_with(&broker, &["topic", "alter", TOPIC, "--partitions", "0"], 2);
    assert!(err.contains("--partitions"), "{err}");
    let err = fails_with(&broker, &["topic", "alter", TOPIC], 2);
    assert!(err.contains("--partitions"), "{err}");

    // Refusals on the wire, sent to each shard's own port so that shard 1
    // forwards to the controller; one result per topic, in request order.
    let too_many = MAX_PARTITIONS_PER_TOPIC + 1;
    for endpoint in &endpoints {
        let mut conn = RawConn::connect(endpoint);
        let results = create_partitions(
            &mut conn,
            &[
                (TOPIC, 5),
                (TOPIC, 4),
                ("nope", 9),
                ("__consumer_offsets", 64),
                (TOPIC, too_many),
            ],
        );
        let got: Vec<(&str, ErrorCode)> = results
            .iter()
            .map(|r| (r.name.as_str(), error_code(r)))
            .collect();
        assert_eq!(
            got,
            [
                (TOPIC, ErrorCode::InvalidPartitions),
                (TOPIC, ErrorCode::InvalidPartitions),
                ("nope", ErrorCode::UnknownTopicOrPartition),
                ("__consumer_offsets", ErrorCode::InvalidTopic),
                (TOPIC, ErrorCode::InvalidPartitions),
            ],
            "via {endpoint}: {results:?}"
        );
    }
    assert_layout(&broker, 5, "after the refusals");

    // ApiVersions advertises CreatePartitions.
    let mut conn = RawConn::connect(&broker.addr());
    let (response, _) = conn.call(3, RequestBody::ApiVersions, &[]);
    let ResponseBody::ApiVersions(versions) = response.body else {
        panic!("api versions: {response:?}")
    };
    assert!(
        versions
            .apis
            .iter()
            .any(|a| a.api == ApiKey::CreatePartitions),
        "{versions:?}"
    );

    // Mixed request through shard 1 (forwarded): the valid change is
    // applied even though another topic in it is refused.
    let shard1 = &endpoints[1];
    let mut conn = RawConn::connect(shard1);
    let results = create_partitions(&mut conn, &[("nope", 2), (TOPIC, 7)]);
    assert_eq!(
        results.iter().map(error_code).collect::<Vec<_>>(),
        [ErrorCode::UnknownTopicOrPartition, ErrorCode::None],
        "{results:?}"
    );
    assert_layout(&broker, 7, "grown again through shard 1");
    for partition in [5, 6] {
        produce(
            &broker,
            &mut model,
            partition,
            &values("seven", partition, 5),
        );
    }
    assert_contents(&broker, &model, "after growing to 7");
}

fn join(conn: &mut RawConn, member_id: &str) -> JoinGroupResponse {
    let body = RequestBody::JoinGroup(JoinGroupRequest {
        group: "readers".into(),
        member_id: member_id.into(),
        instance_id: String::new(),
        client_id: "create-partitions-test".into(),
        mode: GroupMode::Clustering,
        assignor: Assignor::Sticky,
        topics: vec![TOPIC.into()],
        session_timeout_ms: 10_000,
        rebalance_timeout_ms: 5_000,
        ..Default::default()
    });
    let (response, _) = conn.call(5, body, &[]);
    match response.body {
        ResponseBody::JoinGroup(join) => join,
        other => panic!("join failed: {other:?} {:?}", response.error),
    }
}

#[test]
fn growing_a_subscribed_topic_rebalances_its_groups() {
    let broker = Broker::start(SHARDS);
    let mut conn = RawConn::connect(&broker.addr());
    conn.create_topic(TOPIC, 2);
    let first = join(&mut conn, "");
    let assigned = |join: &JoinGroupResponse| -> Vec<u32> {
        join.assignment
            .iter()
            .filter(|t| t.topic == TOPIC)
            .flat_map(|t| t.partitions.iter().copied())
            .collect()
    };
    assert_eq!(assigned(&first), [0, 1]);
    let heartbeat = RequestBody::Heartbeat(HeartbeatRequest {
        group: "readers".into(),
        member_id: first.member_id.clone(),
        generation: first.generation,
    });
    let (response, _) = conn.call(6, heartbeat.clone(), &[]);
    assert!(response.error.is_none(), "{response:?}");

    ok(
        &broker,
        &["topic", "alter", TOPIC, "--partitions", "4"],
        None,
    );
    // The alter is answered after every shard applied the new catalog, the
    // coordinator included: the very next heartbeat learns of the rebalance.
    let (response, _) = conn.call(7, heartbeat, &[]);
    assert_eq!(
        response.error.as_ref().map(|e| e.code),
        Some(ErrorCode::RebalanceInProgress),
        "{response:?}"
    );
    let second = join(&mut conn, &first.member_id);
    assert!(second.generation > first.generation, "{second:?}");
    assert_eq!(assigned(&second), [0, 1, 2, 3]);
}
