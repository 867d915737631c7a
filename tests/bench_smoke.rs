//! Smoke runs of every `ringmq-bench` subcommand with tiny counts against a
//! real broker, each with `--json`: the report parses, carries the fields
//! outside tools read, and the counts add up. No timing thresholds.

mod common;

use std::time::Duration;

use common::{bin_path, wait_output_timeout, Broker};
use serde_json::Value;

/// Runs `ringmq-bench ARGS --json`, expects success and one JSON object.
fn bench(args: &[&str]) -> Value {
    let child = std::process::Command::new(bin_path("ringmq-bench"))
        .args(args)
        .arg("--json")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn ringmq-bench");
    let out = wait_output_timeout(
        child,
        Duration::from_secs(120),
        &format!("ringmq-bench {args:?}"),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "ringmq-bench {args:?} failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    let line = stdout.trim();
    assert_eq!(line.lines().count(), 1, "one JSON line expected: {stdout}");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("bad JSON ({e}): {stdout}"))
}

fn field<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |v, key| {
        v.get(key)
            .unwrap_or_else(|| panic!("field {path} missing (at {key}) in {v}"))
    })
}

fn number(v: &Value, path: &str) -> f64 {
    field(v, path)
        .as_f64()
        .unwrap_or_else(|| panic!("{path} is not a number in {v}"))
}

fn count(v: &Value, path: &str) -> u64 {
    field(v, path)
        .as_u64()
        .unwrap_or_else(|| panic!("{path} is not a count in {v}"))
}

const LATENCY: [&str; 6] = ["p50", "p90", "p99", "p999", "p9999", "max"];

/// What every report carries.
fn check_head(v: &Value, command: &str) {
    assert_eq!(field(v, "command"), command);
    assert!(field(v, "parameters").is_object());
    assert!(!field(v, "git_revision").as_str().unwrap().is_empty());
    assert!(count(v, "nproc") >= 1);
    assert!(!field(v, "kernel").as_str().unwrap().is_empty());
    field(v, "durability");
    field(v, "throughput.msgs_per_sec");
    assert!(number(v, "throughput.mb_per_sec") >= 0.0);
    for p in LATENCY {
        field(v, &format!("latency_us.{p}"));
    }
}

/// Latency percentiles are numbers and ordered.
fn check_latency(v: &Value, prefix: &str) {
    let values: Vec<f64> = LATENCY
        .iter()
        .map(|p| number(v, &format!("{prefix}.{p}")))
        .collect();
    assert!(
        values.windows(2).all(|w| w[0] <= w[1]),
        "{prefix} not monotonic: {values:?}"
    );
}

#[test]
fn produce_then_consume_counts_match() {
    let broker = Broker::start(1);
    let addr = broker.addr();
    let produced = bench(&[
        "produce",
        "--broker",
        &addr,
        "--topic",
        "smoke",
        "--partitions",
        "2",
        "--messages",
        "2000",
        "--message-size",
        "100",
        "--batch-size",
        "50",
        "--acks",
        "fsync",
    ]);
    check_head(&produced, "produce");
    assert_eq!(field(&produced, "durability"), "fsync");
    assert_eq!(count(&produced, "records"), 2000);
    assert_eq!(count(&produced, "acked"), 2000);
    assert_eq!(count(&produced, "errors"), 0);
    assert_eq!(count(&produced, "bytes"), 2000 * 100);
    assert!(number(&produced, "throughput.msgs_per_sec") > 0.0);
    check_latency(&produced, "latency_us");
    assert_eq!(count(&produced, "latency_us.count"), 2000);
    assert_eq!(count(&produced, "parameters.partitions"), 2);

    let consumed = bench(&[
        "consume",
        "--broker",
        &addr,
        "--topic",
        "smoke",
        "--partitions",
        "2",
        "--consumers",
        "2",
        "--messages",
        "2000",
    ]);
    check_head(&consumed, "consume");
    assert_eq!(count(&consumed, "records"), 2000);
    assert_eq!(count(&consumed, "consumed"), 2000);
    assert_eq!(count(&consumed, "bytes"), 2000 * 100);
    assert!(number(&consumed, "throughput.msgs_per_sec") > 0.0);

    // Asking for more than the topic holds reads what is there.
    let all = bench(&[
        "consume",
        "--broker",
        &addr,
        "--topic",
        "smoke",
        "--partitions",
        "2",
        "--messages",
        "5000",
    ]);
    assert_eq!(count(&all, "records"), 2000);
}

#[test]
fn consume_produce_first_and_every_codec() {
    let broker = Broker::start(1);
    let addr = broker.addr();
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let v = bench(&[
            "produce",
            "--broker",
            &addr,
            "--topic",
            "codecs",
            "--messages",
            "300",
            "--compression",
            codec,
            "--acks",
            "leader",
        ]);
        assert_eq!(count(&v, "records"), 300, "{codec}");
        assert_eq!(field(&v, "parameters.compression"), codec);
    }
    let v = bench(&[
        "consume",
        "--broker",
        &addr,
        "--topic",
        "codecs",
        "--messages",
        "1500",
    ]);
    assert_eq!(count(&v, "records"), 1500);

    let v = bench(&[
        "consume",
        "--broker",
        &addr,
        "--topic",
        "preloaded",
        "--partitions",
        "3",
        "--consumers",
        "2",
        "--messages",
        "1000",
        "--produce-first",
        "--acks",
        "none",
    ]);
    check_head(&v, "consume");
    assert_eq!(count(&v, "records"), 1000);
}

#[test]
fn e2e_counts_and_latency() {
    let broker = Broker::start(1);
    let addr = broker.addr();
    let v = bench(&[
        "e2e",
        "--broker",
        &addr,
        "--topic",
        "e2e",
        "--partitions",
        "2",
        "--producers",
        "2",
        "--consumers",
        "2",
        "--messages",
        "2000",
        "--message-size",
        "64",
    ]);
    check_head(&v, "e2e");
    assert_eq!(count(&v, "records"), 2000);
    assert_eq!(count(&v, "sent"), 2000);
    assert_eq!(count(&v, "consumed"), 2000);
    assert_eq!(count(&v, "not_consumed"), 0);
    check_latency(&v, "latency_us");
    check_latency(&v, "produce_latency_us");
    assert_eq!(count(&v, "latency_us.count"), 2000);

    // Fixed rate, with warm-up excluded: 0.25 s of warm-up at 2000/s, then 500.
    let v = bench(&[
        "e2e",
        "--broker",
        &addr,
        "--topic",
        "e2e-rate",
        "--rate",
        "2000",
        "--warmup-s",
        "0.25",
        "--messages",
        "500",
        "--acks",
        "leader",
    ]);
    assert_eq!(count(&v, "records"), 500);
    assert_eq!(count(&v, "latency_us.count"), 500);
    assert_eq!(count(&v, "sent"), 1000, "0.25 s of warm-up at 2000/s");
    assert_eq!(count(&v, "consumed"), 1000);
    check_latency(&v, "latency_us");
}

#[test]
fn produce_fixed_rate_duration() {
    let broker = Broker::start(1);
    let v = bench(&[
        "produce",
        "--broker",
        &broker.addr(),
        "--rate",
        "1000",
        "--duration-s",
        "0.5",
        "--acks",
        "none",
    ]);
    check_head(&v, "produce");
    assert_eq!(count(&v, "records"), 500);
    assert_eq!(field(&v, "durability"), "none");
    check_latency(&v, "latency_us");
}

#[test]
fn disk_baseline() {
    let dir = tempfile::Builder::new()
        .prefix("bench-disk")
        .tempdir_in(common::test_tmp_root())
        .unwrap();
    let v = bench(&[
        "disk",
        "--dir",
        dir.path().to_str().unwrap(),
        "--size-mib",
        "4",
        "--fsync-writes",
        "2",
        "--fsync-count",
        "5",
    ]);
    check_head(&v, "disk");
    for f in [
        "disk.write_mb_per_sec",
        "disk.read_mb_per_sec",
        "disk.write_fsync_1mib_mb_per_sec",
        "disk.write_fsync_4mib_mb_per_sec",
    ] {
        assert!(number(&v, f) > 0.0, "{f}");
    }
    for p in ["p50", "p99", "max"] {
        number(&v, &format!("disk.fdatasync_latency_us.{p}"));
    }
    assert_eq!(count(&v, "disk.fdatasync_latency_us.count"), 5);
    assert_eq!(
        number(&v, "throughput.mb_per_sec"),
        number(&v, "disk.write_mb_per_sec")
    );
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "test files left behind: {left:?}");
}

#[test]
fn net_baseline() {
    let v = bench(&["net", "--size-mib", "16"]);
    check_head(&v, "net");
    assert!(number(&v, "net.mb_per_sec") > 0.0);
    assert_eq!(count(&v, "net.bytes"), 16 << 20);
    assert_eq!(
        number(&v, "throughput.mb_per_sec"),
        number(&v, "net.mb_per_sec")
    );
}
