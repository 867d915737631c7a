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

use std::io::Write;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringmq_client::{Client, Consumer, ConsumerConfig, ConsumerRecord, StartFrom};
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Value,
    Json,
}

pub struct ConsumeArgs {
    pub topic: String,
    pub from: StartFrom,
    pub count: Option<u64>,
    pub partition: Option<u32>,
    pub format: Format,
    pub max_wait_ms: u32,
    pub idle_timeout_ms: Option<u64>,
}

/// Longest one poll blocks, so signals are noticed promptly.
const POLL_SLICE: Duration = Duration::from_millis(200);

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
