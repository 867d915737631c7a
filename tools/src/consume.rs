//! `ringctl consume TOPIC --from ...`: prints messages, one per line.
//!
//! `--format value` (default): the raw value bytes then `\n` (a null value
//! prints an empty line). `--format json`: one object per line,
//! `{topic, partition, offset, timestamp_ms, key, value, headers}` with
//! `headers` an array of `{key, value}`; keys, values and header values are
//! strings decoded as UTF-8 *lossily* (invalid bytes become U+FFFD), null
//! when absent. Within a partition, messages come in offset order.
//!
//! Stops after `--count N` messages, after `--idle-timeout-ms` without a
//! message, or on SIGINT/SIGTERM (exit 0 in all three cases).
//!
//! With `--group G` ([`run_group`]) the consumer is a member of group G:
//! the group assigns partitions, and committed offsets say where to resume
//! (`--from` then only says where partitions without one start). Only
//! offsets of records already written *and flushed* to stdout are ever
//! committed: auto-commit runs inside `poll`, which is only called after
//! the previous batch was flushed, and records fetched but not printed
//! (past `--count`, or lost to a failed write) are sought back before the
//! final commit. Rebalance events go to stderr, one line each:
//! `ringctl: assigned|revoked|lost generation=G member=M partitions=t:0,t:3`.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringmq_client::{
    Client, ClientError, Consumer, ConsumerConfig, ConsumerRecord, GroupConfig, GroupConsumer,
    GroupMode, Membership, RebalanceListener, StartFrom,
};
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Value,
    Json,
}

pub struct ConsumeArgs {
    pub topic: String,
    /// Without a group: where to start. With one: the reset policy.
    pub from: StartFrom,
    pub count: Option<u64>,
    pub partition: Option<u32>,
    pub format: Format,
    pub max_wait_ms: u32,
    pub idle_timeout_ms: Option<u64>,
}

/// `--group` settings.
pub struct GroupArgs {
    pub group: String,
    /// Broadcasting mode: every member reads every partition.
    pub broadcast: bool,
    pub instance_id: Option<String>,
    pub session_timeout_ms: u32,
}

/// Longest one poll blocks, so signals are noticed promptly.
const POLL_SLICE: Duration = Duration::from_millis(200);

/// Auto-commit interval of `--group`: short, so that a consumer killed
/// without a chance to close re-delivers little.
const GROUP_AUTO_COMMIT_INTERVAL_MS: u64 = 1_000;

pub fn run(client: Client, args: &ConsumeArgs) -> i32 {
    crate::signals::install();
    let config = ConsumerConfig {
        max_wait_ms: args.max_wait_ms,
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::new(client, config);
    if let Err(e) = consumer.assign(&args.topic, args.partition.map(|p| vec![p]), args.from) {
        return crate::fail(e);
    }
    match consume_loop(&mut consumer, args) {
        Ok(()) => 0,
        Err(e) if crate::is_broken_pipe(&e) => 0,
        Err(e) => crate::fail(format!("writing stdout: {e}")),
    }
}

fn consume_loop(consumer: &mut Consumer, args: &ConsumeArgs) -> std::io::Result<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(256 * 1024, stdout.lock());
    let mut printed = 0u64;
    let mut last_message = Instant::now();
    while !matches!(args.count, Some(n) if printed >= n) && !crate::signals::stop_requested() {
        if args
            .idle_timeout_ms
            .is_some_and(|ms| last_message.elapsed() >= Duration::from_millis(ms))
        {
            break;
        }
        let records = match consumer.poll(POLL_SLICE) {
            Ok(r) => r,
            Err(e) => {
                out.flush()?;
                return Err(std::io::Error::other(e.to_string()));
            }
        };
        if records.is_empty() {
            continue;
        }
        last_message = Instant::now();
        for record in &records {
            if args.count.is_some_and(|n| printed >= n) {
                break;
            }
            write_record(&mut out, record, args.format)?;
            printed += 1;
        }
        // Once per poll, so a signal or a reader that stops early loses nothing.
        out.flush()?;
    }
    out.flush()
}

/// `ringctl consume TOPIC --group G`: see the module docs.
pub fn run_group(client: Client, args: &ConsumeArgs, group: &GroupArgs) -> i32 {
    crate::signals::install();
    if !matches!(args.from, StartFrom::Earliest | StartFrom::Latest) {
        eprintln!("ringctl: with --group, --from must be earliest or latest (where partitions without a committed offset start)");
        return crate::EXIT_USAGE;
    }
    let config = GroupConfig {
        mode: if group.broadcast {
            GroupMode::Broadcasting
        } else {
            GroupMode::Clustering
        },
        instance_id: group.instance_id.clone(),
        session_timeout_ms: group.session_timeout_ms,
        auto_commit: true,
        auto_commit_interval_ms: GROUP_AUTO_COMMIT_INTERVAL_MS,
        reset: args.from,
        consumer: ConsumerConfig {
            max_wait_ms: args.max_wait_ms,
            ..ConsumerConfig::default()
        },
        ..GroupConfig::new(group.group.clone())
    };
    let mut consumer = match GroupConsumer::new(client, config) {
        Ok(c) => c,
        Err(e) => return crate::fail(e),
    };
    consumer.subscribe(std::slice::from_ref(&args.topic));
    consumer.set_rebalance_listener(Box::new(StderrListener {
        membership: consumer.membership(),
    }));
    let outcome = group_consume_loop(&mut consumer, args);
    // Commits what was printed, revokes, leaves: even after an error.
    let closed = consumer.close();
    match outcome {
        Err(LoopError::Output(e)) if crate::is_broken_pipe(&e) => {}
        Err(LoopError::Output(e)) => return crate::fail(format!("writing stdout: {e}")),
        Err(LoopError::Client(e)) => return crate::fail(e),
        Ok(()) => {}
    }
    match closed {
        Ok(()) => 0,
        Err(e) => crate::fail(format!("leaving group {}: {e}", group.group)),
    }
}

enum LoopError {
    Output(std::io::Error),
    Client(ClientError),
}

fn group_consume_loop(consumer: &mut GroupConsumer, args: &ConsumeArgs) -> Result<(), LoopError> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(256 * 1024, stdout.lock());
    let mut printed = 0u64;
    let mut last_message = Instant::now();
    while !matches!(args.count, Some(n) if printed >= n) && !crate::signals::stop_requested() {
        if args
            .idle_timeout_ms
            .is_some_and(|ms| last_message.elapsed() >= Duration::from_millis(ms))
        {
            break;
        }
        let records = consumer.poll(POLL_SLICE).map_err(LoopError::Client)?;
        if records.is_empty() {
            continue;
        }
        last_message = Instant::now();
        let room = args.count.map_or(u64::MAX, |n| n - printed);
        let take = records
            .len()
            .min(usize::try_from(room).unwrap_or(usize::MAX));
        let written =
            write_records(&mut out, &records[..take], args.format).and_then(|()| out.flush());
        if let Err(e) = written {
            // Some of the batch may be out, but none of it is known to be:
            // re-deliver all of it rather than commit past unseen records.
            rewind(consumer, &records);
            return Err(LoopError::Output(e));
        }
        printed += take as u64;
        rewind(consumer, &records[take..]);
    }
    out.flush().map_err(LoopError::Output)
}

fn write_records(
    out: &mut impl Write,
    records: &[ConsumerRecord],
    format: Format,
) -> std::io::Result<()> {
    records
        .iter()
        .try_for_each(|record| write_record(out, record, format))
}

/// Seeks every partition of `unprinted` back to its first record there,
/// so that the next commit does not cover records that were not printed.
fn rewind(consumer: &mut GroupConsumer, unprinted: &[ConsumerRecord]) {
    for ((topic, partition), offset) in first_offsets(unprinted) {
        if let Err(e) = consumer.seek(&topic, partition, offset) {
            eprintln!("ringctl: cannot rewind {topic}/{partition} to {offset}: {e}");
        }
    }
}

/// The lowest offset per partition among `records`.
fn first_offsets(records: &[ConsumerRecord]) -> BTreeMap<(String, u32), i64> {
    let mut first: BTreeMap<(String, u32), i64> = BTreeMap::new();
    for record in records {
        first
            .entry((record.topic.to_string(), record.partition))
            .and_modify(|o| *o = (*o).min(record.offset))
            .or_insert(record.offset);
    }
    first
}

/// Writes one stderr line per rebalance event, flushed at once, so that
/// scripts can follow assignments.
struct StderrListener {
    membership: Membership,
}

impl StderrListener {
    fn report(&self, event: &str, generation: i32, partitions: &[(String, u32)]) {
        let line = rebalance_line(event, generation, &self.membership.member_id(), partitions);
        let mut stderr = std::io::stderr().lock();
        // Nothing sensible to do if stderr is gone.
        let _ = writeln!(stderr, "{line}").and_then(|()| stderr.flush());
    }
}

impl RebalanceListener for StderrListener {
    fn on_assigned(&mut self, generation: i32, partitions: &[(String, u32)]) {
        self.report("assigned", generation, partitions);
    }

    fn on_revoked(&mut self, generation: i32, partitions: &[(String, u32)]) {
        self.report("revoked", generation, partitions);
    }

    fn on_lost(&mut self, generation: i32, partitions: &[(String, u32)]) {
        self.report("lost", generation, partitions);
    }
}

/// `ringctl: EVENT generation=G member=M partitions=t:0,t:3`.
pub fn rebalance_line(
    event: &str,
    generation: i32,
    member_id: &str,
    partitions: &[(String, u32)],
) -> String {
    let partitions: Vec<String> = partitions.iter().map(|(t, p)| format!("{t}:{p}")).collect();
    format!(
        "ringctl: {event} generation={generation} member={member_id} partitions={}",
        partitions.join(",")
    )
}

fn write_record(
    out: &mut impl Write,
    record: &ConsumerRecord,
    format: Format,
) -> std::io::Result<()> {
    match format {
        Format::Value => {
            if let Some(value) = &record.value {
                out.write_all(value)?;
            }
            out.write_all(b"\n")
        }
        Format::Json => {
            serde_json::to_writer(&mut *out, &record_json(record))
                .map_err(std::io::Error::other)?;
            out.write_all(b"\n")
        }
    }
}

fn lossy(bytes: Option<&Bytes>) -> Value {
    bytes.map_or(Value::Null, |b| {
        Value::String(String::from_utf8_lossy(b).into_owned())
    })
}

pub fn record_json(record: &ConsumerRecord) -> Value {
    let headers: Vec<Value> = record
        .headers
        .iter()
        .map(|h| json!({"key": String::from_utf8_lossy(&h.key), "value": lossy(h.value.as_ref())}))
        .collect();
    json!({
        "topic": &*record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp_ms": record.timestamp_ms,
        "key": lossy(record.key.as_ref()),
        "value": lossy(record.value.as_ref()),
        "headers": headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringmq_wire::batch::RecordHeader;
    use std::sync::Arc;

    fn record(partition: u32, offset: i64) -> ConsumerRecord {
        ConsumerRecord {
            topic: Arc::from("t"),
            partition,
            offset,
            timestamp_ms: 0,
            key: None,
            value: None,
            headers: vec![],
        }
    }

    #[test]
    fn rebalance_lines_have_the_documented_shape() {
        let partitions = vec![("t".to_string(), 0), ("t".to_string(), 3)];
        assert_eq!(
            rebalance_line("assigned", 4, "m-1", &partitions),
            "ringctl: assigned generation=4 member=m-1 partitions=t:0,t:3"
        );
        assert_eq!(
            rebalance_line("revoked", 4, "m-1", &[]),
            "ringctl: revoked generation=4 member=m-1 partitions="
        );
    }

    #[test]
    fn unprinted_records_rewind_to_their_first_offset_per_partition() {
        let unprinted = vec![record(1, 7), record(0, 3), record(1, 8), record(0, 4)];
        let first = first_offsets(&unprinted);
        assert_eq!(
            first.into_iter().collect::<Vec<_>>(),
            vec![(("t".to_string(), 0), 3), (("t".to_string(), 1), 7)]
        );
        assert!(first_offsets(&[]).is_empty());
    }

    #[test]
    fn json_shape_and_lossy_utf8() {
        let record = ConsumerRecord {
            topic: Arc::from("t"),
            partition: 2,
            offset: 7,
            timestamp_ms: 1,
            key: None,
            value: Some(Bytes::from_static(b"h\xffi")),
            headers: vec![RecordHeader {
                key: Bytes::from_static(b"k"),
                value: None,
            }],
        };
        let v = record_json(&record);
        assert_eq!(v["topic"], "t");
        assert_eq!(v["partition"], 2);
        assert_eq!(v["offset"], 7);
        assert_eq!(v["key"], Value::Null);
        assert_eq!(v["value"], "h\u{fffd}i");
        assert_eq!(v["headers"][0]["key"], "k");
        let mut out = Vec::new();
        write_record(&mut out, &record, Format::Value).unwrap();
        assert_eq!(out, b"h\xffi\n");
    }
}
