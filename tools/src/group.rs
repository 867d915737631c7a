//! `ringctl group list|describe|reset-offsets|delete`.
//!
//! Plain output is one `key value` line per item (like `topic describe`);
//! `--json` prints one JSON document.

use std::collections::HashMap;

use ringmq_client::{Client, StartFrom};
use ringmq_wire::envelope::{
    CommittedOffset, DescribeGroupResponse, GroupListing, GroupMember, TopicPartitions,
    LIST_OFFSETS_EARLIEST, LIST_OFFSETS_LATEST,
};
use serde_json::{json, Value};

/// Plain: one `group G state S mode M generation N members K coordinator C`
/// line per group. JSON: an array of
/// `{group, state, mode, generation, members, coordinator_shard}`.
pub fn list(client: &Client, json: bool) -> i32 {
    let groups = match client.admin().list_groups() {
        Ok(g) => g,
        Err(e) => return crate::fail(e),
    };
    if json {
        let items: Vec<Value> = groups.iter().map(listing_json).collect();
        println!("{}", Value::Array(items));
    } else {
        for g in &groups {
            println!(
                "group {} state {} mode {} generation {} members {} coordinator {}",
                g.group, g.state, g.mode, g.generation, g.members, g.coordinator_shard
            );
        }
    }
    0
}

fn listing_json(g: &GroupListing) -> Value {
    json!({
        "group": g.group,
        "state": g.state,
        "mode": g.mode.name(),
        "generation": g.generation,
        "members": g.members,
        "coordinator_shard": g.coordinator_shard,
    })
}

/// One committed offset with the partition's log end and the lag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetRow {
    pub topic: String,
    pub partition: u32,
    /// "" for clustering groups.
    pub instance_id: String,
    pub committed_offset: i64,
    /// `None` when the partition's end could not be read (topic deleted).
    pub log_end_offset: Option<i64>,
}

impl OffsetRow {
    /// Records after the committed offset: `max(0, end - committed)`.
    pub fn lag(&self) -> Option<i64> {
        self.log_end_offset
            .map(|end| (end - self.committed_offset).max(0))
    }
}

/// Joins committed offsets with log ends, sorted by topic, partition and
/// instance.
pub fn offset_rows(
    offsets: &[CommittedOffset],
    log_ends: &HashMap<(String, u32), i64>,
) -> Vec<OffsetRow> {
    let mut rows: Vec<OffsetRow> = offsets
        .iter()
        .map(|c| OffsetRow {
            topic: c.topic.clone(),
            partition: c.partition,
            instance_id: c.instance_id.clone(),
            committed_offset: c.offset,
            log_end_offset: log_ends.get(&(c.topic.clone(), c.partition)).copied(),
        })
        .collect();
    rows.sort_by(|a, b| {
        (&a.topic, a.partition, &a.instance_id).cmp(&(&b.topic, b.partition, &b.instance_id))
    });
    rows
}

/// Log-end offsets of every partition that has a committed offset. A
/// topic whose ends cannot be read (deleted since) is left out.
fn log_ends(client: &Client, offsets: &[CommittedOffset]) -> HashMap<(String, u32), i64> {
    let mut by_topic: HashMap<&str, Vec<u32>> = HashMap::new();
    for c in offsets {
        let partitions = by_topic.entry(c.topic.as_str()).or_default();
        if !partitions.contains(&c.partition) {
            partitions.push(c.partition);
        }
    }
    let mut ends = HashMap::new();
    for (topic, partitions) in by_topic {
        let queries: Vec<(u32, i64)> = partitions
            .iter()
            .map(|&p| (p, LIST_OFFSETS_LATEST))
            .collect();
        match client.list_offsets(topic, &queries) {
            Ok(results) => {
                for (p, r) in partitions.iter().zip(results) {
                    ends.insert((topic.to_string(), *p), r.offset);
                }
            }
            Err(e) => eprintln!("ringctl: cannot read the log end of {topic}: {e}"),
        }
    }
    ends
}

/// Plain: a `group ...` line, one `member ...` line per member, one
/// `offset ...` line per committed offset. JSON: see [`describe_json`].
pub fn describe(client: &Client, group: &str, json: bool) -> i32 {
    let described = match client.admin().describe_group(group) {
        Ok(d) => d,
        Err(e) => return crate::fail(e),
    };
    let rows = offset_rows(&described.offsets, &log_ends(client, &described.offsets));
    if json {
        println!("{}", describe_json(&described, &rows));
        return 0;
    }
    println!(
        "group {} state {} mode {} assignor {} generation {} coordinator {}",
        described.group,
        described.state,
        described.mode,
        described.assignor,
        described.generation,
        described.coordinator_shard
    );
    for m in &described.members {
        println!(
            "member {} instance {} client {} topics {} assignment {}",
            m.member_id,
            or_dash(&m.instance_id),
            or_dash(&m.client_id),
            or_dash(&m.topics.join(",")),
            or_dash(&assignment_text(&m.assignment))
        );
    }
    for row in &rows {
        let show = |v: Option<i64>| v.map_or("-".to_string(), |v| v.to_string());
        println!(
            "offset {}:{} instance {} committed {} end {} lag {}",
            row.topic,
            row.partition,
            or_dash(&row.instance_id),
            row.committed_offset,
            show(row.log_end_offset),
            show(row.lag())
        );
    }
    0
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

/// `t:0,t:1,u:2`.
fn assignment_text(assignment: &[TopicPartitions]) -> String {
    let parts: Vec<String> = assignment
        .iter()
        .flat_map(|tp| {
            tp.partitions
                .iter()
                .map(move |p| format!("{}:{p}", tp.topic))
        })
        .collect();
    parts.join(",")
}

/// `{group, state, mode, assignor, generation, coordinator_shard,
/// members: [{member_id, instance_id, client_id, topics, assignment:
/// [{topic, partition}]}], offsets: [{topic, partition, instance_id,
/// committed_offset, log_end_offset, lag}]}`; an unknown log end and its
/// lag are null.
pub fn describe_json(described: &DescribeGroupResponse, rows: &[OffsetRow]) -> Value {
    let members: Vec<Value> = described.members.iter().map(member_json).collect();
    let offsets: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "topic": r.topic,
                "partition": r.partition,
                "instance_id": r.instance_id,
                "committed_offset": r.committed_offset,
                "log_end_offset": r.log_end_offset,
                "lag": r.lag(),
            })
        })
        .collect();
    json!({
        "group": described.group,
        "state": described.state,
        "mode": described.mode.name(),
        "assignor": described.assignor.name(),
        "generation": described.generation,
        "coordinator_shard": described.coordinator_shard,
        "members": members,
        "offsets": offsets,
    })
}

fn member_json(m: &GroupMember) -> Value {
    let assignment: Vec<Value> = m
        .assignment
        .iter()
        .flat_map(|tp| {
            tp.partitions
                .iter()
                .map(move |p| json!({"topic": tp.topic, "partition": p}))
        })
        .collect();
    json!({
        "member_id": m.member_id,
        "instance_id": m.instance_id,
        "client_id": m.client_id,
        "topics": m.topics,
        "assignment": assignment,
    })
}

/// Sets the committed offset of every partition of `topic` in `group` to
/// `to` (resolved per partition). The broker refuses while the group has
/// live members; its message is printed and the exit code is 1.
pub fn reset_offsets(
    client: &Client,
    group: &str,
    topic: &str,
    to: StartFrom,
    instance_id: Option<&str>,
) -> i32 {
    let targets = match reset_targets(client, topic, to) {
        Ok(t) => t,
        Err(e) => return crate::fail(e),
    };
    let instance = instance_id.unwrap_or("");
    if let Err(e) = client
        .admin()
        .commit_offsets_admin(group, instance, &targets)
    {
        return crate::fail(e);
    }
    for (topic, partition, offset) in &targets {
        println!(
            "reset group {group} instance {} partition {topic}:{partition} offset {offset}",
            or_dash(instance)
        );
    }
    0
}

/// The target offset of every partition of `topic`.
fn reset_targets(
    client: &Client,
    topic: &str,
    to: StartFrom,
) -> ringmq_client::Result<Vec<(String, u32, i64)>> {
    if let StartFrom::Timestamp(ts) = to {
        if ts < 0 {
            return Err(ringmq_client::ClientError::InvalidArgument(format!(
                "timestamp {ts} is negative"
            )));
        }
    }
    let partitions: Vec<u32> = (0..client.partition_count(topic)?).collect();
    let timestamp = match to {
        StartFrom::Timestamp(ts) => ts,
        _ => LIST_OFFSETS_LATEST,
    };
    let mut queries = Vec::with_capacity(partitions.len() * 3);
    for &p in &partitions {
        queries.extend([
            (p, LIST_OFFSETS_EARLIEST),
            (p, LIST_OFFSETS_LATEST),
            (p, timestamp),
        ]);
    }
    let answers = client.list_offsets(topic, &queries)?;
    Ok(partitions
        .iter()
        .zip(answers.chunks(3))
        .map(|(&p, a)| {
            let target = reset_target(to, a[0].offset, a[1].offset, a[2].offset);
            (topic.to_string(), p, target)
        })
        .collect())
}

/// Where `to` points in a partition holding `earliest..latest`, given what
/// a timestamp query `found` (-1: no record that late). Explicit offsets
/// are clamped into the log, as a partition may be shorter than others.
pub fn reset_target(to: StartFrom, earliest: i64, latest: i64, found: i64) -> i64 {
    match to {
        StartFrom::Earliest => earliest,
        StartFrom::Latest => latest,
        StartFrom::Offset(offset) => offset.clamp(earliest, latest.max(earliest)),
        StartFrom::Timestamp(_) if found < 0 => latest,
        StartFrom::Timestamp(_) => found,
    }
}

pub fn delete(client: &Client, group: &str) -> i32 {
    match client.admin().delete_group(group) {
        Ok(()) => {
            println!("deleted group {group}");
            0
        }
        Err(e) => crate::fail(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringmq_wire::envelope::{Assignor, GroupMode};

    fn committed(topic: &str, partition: u32, offset: i64, instance: &str) -> CommittedOffset {
        CommittedOffset {
            topic: topic.into(),
            partition,
            offset,
            metadata: String::new(),
            commit_time_ms: 0,
            instance_id: instance.into(),
        }
    }

    #[test]
    fn lag_is_never_negative_and_unknown_without_an_end() {
        let mut ends = HashMap::new();
        ends.insert(("t".to_string(), 0), 10);
        ends.insert(("t".to_string(), 1), 3);
        let rows = offset_rows(
            &[
                committed("t", 1, 5, ""),
                committed("t", 0, 4, ""),
                committed("gone", 0, 1, ""),
            ],
            &ends,
        );
        let lags: Vec<(String, u32, Option<i64>)> = rows
            .iter()
            .map(|r| (r.topic.clone(), r.partition, r.lag()))
            .collect();
        assert_eq!(
            lags,
            vec![
                ("gone".to_string(), 0, None),
                ("t".to_string(), 0, Some(6)),
                ("t".to_string(), 1, Some(0)),
            ]
        );
    }

    #[test]
    fn describe_json_has_the_documented_shape() {
        let described = DescribeGroupResponse {
            group: "g".into(),
            state: "stable".into(),
            mode: GroupMode::Broadcasting,
            assignor: Assignor::Range,
            generation: 3,
            coordinator_shard: 1,
            members: vec![GroupMember {
                member_id: "m-1".into(),
                instance_id: "host-a".into(),
                client_id: "ringctl".into(),
                topics: vec!["t".into()],
                assignment: vec![TopicPartitions {
                    topic: "t".into(),
                    partitions: vec![0, 2],
                }],
                since_heartbeat_ms: 5,
                ..Default::default()
            }],
            offsets: vec![],
            ..Default::default()
        };
        let rows = vec![OffsetRow {
            topic: "t".into(),
            partition: 2,
            instance_id: "host-a".into(),
            committed_offset: 7,
            log_end_offset: Some(9),
        }];
        let v = describe_json(&described, &rows);
        assert_eq!(v["group"], "g");
        assert_eq!(v["mode"], "broadcasting");
        assert_eq!(v["assignor"], "range");
        assert_eq!(v["generation"], 3);
        assert_eq!(v["coordinator_shard"], 1);
        assert_eq!(v["members"][0]["member_id"], "m-1");
        assert_eq!(v["members"][0]["topics"][0], "t");
        assert_eq!(v["members"][0]["assignment"][1]["partition"], 2);
        assert_eq!(v["offsets"][0]["committed_offset"], 7);
        assert_eq!(v["offsets"][0]["log_end_offset"], 9);
        assert_eq!(v["offsets"][0]["lag"], 2);
        assert_eq!(assignment_text(&described.members[0].assignment), "t:0,t:2");
    }

    #[test]
    fn reset_targets_resolve_and_clamp() {
        assert_eq!(reset_target(StartFrom::Earliest, 5, 20, 0), 5);
        assert_eq!(reset_target(StartFrom::Latest, 5, 20, 0), 20);
        assert_eq!(reset_target(StartFrom::Offset(12), 5, 20, 0), 12);
        assert_eq!(reset_target(StartFrom::Offset(2), 5, 20, 0), 5);
        assert_eq!(reset_target(StartFrom::Offset(99), 5, 20, 0), 20);
        assert_eq!(reset_target(StartFrom::Timestamp(1), 5, 20, 8), 8);
        assert_eq!(reset_target(StartFrom::Timestamp(1), 5, 20, -1), 20);
    }
}
