//! The `ringctl` command line as outside scripts use it: exact spellings,
//! output formats and exit codes.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::process::Output;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{free_port, ringctl_timeout, spawn_ringctl, wait_output_timeout, Broker};
use ringmq_wire::murmur2::partition_for_key;
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(30);

fn run(broker: &Broker, args: &[&str], stdin: Option<&[u8]>) -> Output {
    ringctl_timeout(&broker.addr(), args, stdin, TIMEOUT)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs and requires exit 0; returns stdout.
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

/// Runs and requires a non-zero exit; returns stderr.
fn fails(broker: &Broker, args: &[&str], stdin: Option<&[u8]>) -> String {
    let out = run(broker, args, stdin);
    assert!(
        !out.status.success(),
        "ringctl {args:?} should fail:\nstdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let stderr = text(&out.stderr);
    assert!(
        !stderr.trim().is_empty(),
        "ringctl {args:?} failed without saying why"
    );
    stderr
}

fn lines(s: &str) -> Vec<&str> {
    s.lines().collect()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn create(broker: &Broker, name: &str, partitions: u32) {
    let p = partitions.to_string();
    ok(broker, &["topic", "create", name, "--partitions", &p], None);
}

#[test]
fn topic_create_list_describe_delete() {
    let broker = Broker::start(2);
    let out = ok(
        &broker,
        &[
            "topic",
            "create",
            "orders",
            "--partitions",
            "4",
            "--config",
            "retention.ms=123456",
        ],
        None,
    );
    assert!(out.contains("orders"), "{out}");
    create(&broker, "audit", 1);

    // list: one name per line, sorted.
    assert_eq!(
        lines(&ok(&broker, &["topic", "list"], None)),
        ["audit", "orders"]
    );
    let list: Value = serde_json::from_str(&ok(&broker, &["topic", "list", "--json"], None))
        .expect("topic list --json is JSON");
    let list = list.as_array().expect("an array");
    assert_eq!(list.len(), 2);
    assert_eq!(list[1]["name"], "orders");
    assert_eq!(list[1]["partitions"], 4);

    // describe: partitions, owning shards, endpoints, configs.
    let plain = ok(&broker, &["topic", "describe", "orders"], None);
    let plain = lines(&plain);
    assert_eq!(plain[0], "topic orders partitions 4");
    assert!(plain.contains(&"config retention.ms=123456"), "{plain:?}");
    let partition_lines: Vec<&&str> = plain
        .iter()
        .filter(|l| l.starts_with("partition "))
        .collect();
    assert_eq!(partition_lines.len(), 4, "{plain:?}");
    for (i, line) in partition_lines.iter().enumerate() {
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words.len(), 6, "{line}");
        assert_eq!(
            (words[0], words[1], words[2], words[4]),
            ("partition", &*i.to_string(), "shard", "endpoint")
        );
        assert!(words[3].parse::<u16>().unwrap() < 2, "{line}");
        assert!(words[5].parse::<std::net::SocketAddr>().is_ok(), "{line}");
    }
    let json: Value = serde_json::from_str(&ok(
        &broker,
        &["topic", "describe", "orders", "--json"],
        None,
    ))
    .expect("describe --json is JSON");
    assert_eq!(json["name"], "orders");
    assert_eq!(json["configs"]["retention.ms"], "123456");
    let parts = json["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 4);
    for (i, p) in parts.iter().enumerate() {
        assert_eq!(p["partition"], i);
        assert!(p["shard"].as_u64().unwrap() < 2);
        assert!(p["endpoint"].as_str().unwrap().contains(':'));
    }

    // Creating it again fails, clearly.
    let err = fails(
        &broker,
        &["topic", "create", "orders", "--partitions", "4"],
        None,
    );
    assert!(err.contains("orders") && err.contains("exist"), "{err}");

    // delete: then describe fails, produce fails, list no longer has it.
    ok(&broker, &["topic", "delete", "orders"], None);
    let err = fails(&broker, &["topic", "describe", "orders"], None);
    assert!(err.contains("orders"), "{err}");
    let err = fails(&broker, &["produce", "orders"], Some(b"x\n"));
    assert!(err.contains("orders"), "{err}");
    assert_eq!(lines(&ok(&broker, &["topic", "list"], None)), ["audit"]);
    // The name can be used again, with fresh (empty) logs.
    create(&broker, "orders", 2);
    ok(
        &broker,
        &["produce", "orders", "--partition", "1"],
        Some(b"fresh\n"),
    );
    assert_eq!(
        ok(
            &broker,
            &["consume", "orders", "--from", "earliest", "--count", "1"],
            None
        ),
        "fresh\n"
    );
}

#[test]
fn produce_and_consume_round_trip() {
    let mut broker = Broker::start(2);
    create(&broker, "events", 4);
    let n = 1_000;
    let input: String = (0..n).map(|i| format!("k{}:v{i}\n", i % 10)).collect();
    let verbose = ok(
        &broker,
        &["produce", "events", "--key-separator", ":", "--verbose"],
        Some(input.as_bytes()),
    );
    // --verbose: `PARTITION OFFSET` per message in input order; offsets per
    // partition contiguous from 0 in input order; partition by key (murmur2).
    let acked: Vec<(u32, i64)> = verbose
        .lines()
        .map(|l| {
            let (p, o) = l.split_once(' ').expect("PARTITION OFFSET");
            (p.parse().unwrap(), o.parse().unwrap())
        })
        .collect();
    assert_eq!(acked.len(), n);
    let mut next = [0i64; 4];
    let mut where_is: HashMap<String, (u32, i64)> = HashMap::new();
    for (i, &(p, o)) in acked.iter().enumerate() {
        let key = format!("k{}", i % 10);
        assert_eq!(p, partition_for_key(key.as_bytes(), 4), "line {i}");
        assert_eq!(o, next[p as usize], "line {i}: offsets contiguous");
        next[p as usize] += 1;
        where_is.insert(format!("v{i}"), (p, o));
    }

    // consume --count N: one value per line; each partition in offset
    // (= input) order; exactly N lines.
    let out = ok(
        &broker,
        &[
            "consume",
            "events",
            "--from",
            "earliest",
            "--count",
            &n.to_string(),
        ],
        None,
    );
    let values = lines(&out);
    assert_eq!(values.len(), n);
    let mut last_seen: BTreeMap<u32, i64> = BTreeMap::new();
    let mut seen = std::collections::HashSet::new();
    for v in &values {
        let (p, o) = where_is[*v];
        assert!(seen.insert(*v), "{v} printed twice");
        if let Some(prev) = last_seen.insert(p, o) {
            assert!(prev < o, "partition {p} out of order at {v}");
        }
    }
    // Fewer than available: exactly that many, then exit.
    let out = ok(
        &broker,
        &["consume", "events", "--from", "earliest", "--count", "7"],
        None,
    );
    assert_eq!(lines(&out).len(), 7);

    // --format json: one object per line with topic, partition, offset,
    // key, value, timestamp.
    let out = ok(
        &broker,
        &[
            "consume",
            "events",
            "--from",
            "earliest",
            "--count",
            &n.to_string(),
            "--format",
            "json",
        ],
        None,
    );
    let mut count = 0;
    for line in out.lines() {
        let v: Value = serde_json::from_str(line).expect("one JSON object per line");
        let value = v["value"].as_str().unwrap();
        let i: usize = value[1..].parse().unwrap();
        assert_eq!(v["topic"], "events");
        assert_eq!(v["key"], format!("k{}", i % 10));
        let (p, o) = where_is[value];
        assert_eq!(
            (
                v["partition"].as_u64().unwrap() as u32,
                v["offset"].as_i64().unwrap()
            ),
            (p, o)
        );
        assert!(v["timestamp_ms"].as_i64().unwrap() > 0);
        count += 1;
    }
    assert_eq!(count, n);

    // Every --acks level; produce exits 0 once acknowledged, so the
    // messages are there for the next command.
    for (acks, topic) in [
        ("none", "a-none"),
        ("leader", "a-leader"),
        ("fsync", "a-fsync"),
    ] {
        create(&broker, topic, 1);
        let input: String = (0..100).map(|i| format!("{acks}-{i}\n")).collect();
        let out = ok(
            &broker,
            &["produce", topic, "--acks", acks, "--verbose"],
            Some(input.as_bytes()),
        );
        let out = lines(&out);
        assert_eq!(out.len(), 100);
        for (i, l) in out.iter().enumerate() {
            let want = if acks == "none" {
                "0 -1".to_string()
            } else {
                format!("0 {i}")
            };
            assert_eq!(*l, want, "--acks {acks}");
        }
        let consumed = ok(
            &broker,
            &["consume", topic, "--from", "earliest", "--count", "100"],
            None,
        );
        assert_eq!(consumed, input, "--acks {acks}");
    }
    // `produce` exits 0 only once every message is acknowledged: at the
    // default (fsync) durability they survive a SIGKILL right after it.
    create(&broker, "durable", 2);
    let input: String = (0..500).map(|i| format!("k{i}:d{i}\n")).collect();
    ok(
        &broker,
        &["produce", "durable", "--key-separator", ":"],
        Some(input.as_bytes()),
    );
    broker.kill9();
    broker.restart();
    let out = ok(
        &broker,
        &["consume", "durable", "--from", "earliest", "--count", "500"],
        None,
    );
    let mut got: Vec<&str> = lines(&out);
    got.sort_by_key(|v| v[1..].parse::<u32>().unwrap());
    let want: Vec<String> = (0..500).map(|i| format!("d{i}")).collect();
    assert_eq!(got, want);

    let err = fails(
        &broker,
        &["produce", "events", "--acks", "most"],
        Some(b"x\n"),
    );
    assert!(err.contains("most"), "{err}");

    // Lines without the separator have no key; \r\n endings are stripped.
    create(&broker, "lines", 1);
    ok(
        &broker,
        &["produce", "lines", "--key-separator", "=>"],
        Some(b"plain\r\nk=>v=>w\n=>empty-key\n"),
    );
    let out = ok(
        &broker,
        &[
            "consume", "lines", "--from", "earliest", "--count", "3", "--format", "json",
        ],
        None,
    );
    let objs: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        (objs[0]["key"].clone(), objs[0]["value"].clone()),
        (Value::Null, "plain".into())
    );
    assert_eq!(
        (objs[1]["key"].clone(), objs[1]["value"].clone()),
        ("k".into(), "v=>w".into())
    );
    assert_eq!(
        (objs[2]["key"].clone(), objs[2]["value"].clone()),
        ("".into(), "empty-key".into())
    );
}

#[test]
fn consume_start_positions() {
    let broker = Broker::start(2);

    // --from OFFSET with --partition.
    create(&broker, "pos", 2);
    let p1: String = (0..10).map(|i| format!("p1-{i}\n")).collect();
    ok(
        &broker,
        &["produce", "pos", "--partition", "1"],
        Some(p1.as_bytes()),
    );
    ok(
        &broker,
        &["produce", "pos", "--partition", "0"],
        Some(b"p0-0\np0-1\n"),
    );
    let out = ok(
        &broker,
        &[
            "consume",
            "pos",
            "--partition",
            "1",
            "--from",
            "4",
            "--count",
            "6",
        ],
        None,
    );
    assert_eq!(
        lines(&out),
        ["p1-4", "p1-5", "p1-6", "p1-7", "p1-8", "p1-9"]
    );
    let out = ok(
        &broker,
        &[
            "consume",
            "pos",
            "--partition",
            "0",
            "--from",
            "1",
            "--count",
            "1",
        ],
        None,
    );
    assert_eq!(out, "p0-1\n");
    // An offset beyond the end is an error, not a silent wait.
    let err = fails(
        &broker,
        &[
            "consume",
            "pos",
            "--partition",
            "1",
            "--from",
            "100",
            "--count",
            "1",
        ],
        None,
    );
    assert!(err.contains("100"), "{err}");
    // Unknown partition.
    let err = fails(
        &broker,
        &[
            "consume",
            "pos",
            "--partition",
            "7",
            "--from",
            "earliest",
            "--count",
            "1",
        ],
        None,
    );
    assert!(err.contains('7'), "{err}");

    // --from @TIMESTAMP_MS: the first message at or after it.
    create(&broker, "ts", 1);
    let before: String = (0..20).map(|i| format!("before-{i}\n")).collect();
    ok(&broker, &["produce", "ts"], Some(before.as_bytes()));
    std::thread::sleep(Duration::from_millis(20));
    let t = now_ms();
    std::thread::sleep(Duration::from_millis(20));
    let after: String = (0..20).map(|i| format!("after-{i}\n")).collect();
    ok(&broker, &["produce", "ts"], Some(after.as_bytes()));
    let from = format!("@{t}");
    let out = ok(
        &broker,
        &["consume", "ts", "--from", &from, "--count", "20"],
        None,
    );
    assert_eq!(out, after);

    // --from latest: only what is produced after the consumer started.
    create(&broker, "tail", 1);
    ok(
        &broker,
        &["produce", "tail"],
        Some(b"old-0\nold-1\nold-2\n"),
    );
    let mut child = spawn_ringctl(
        &broker.addr(),
        &["consume", "tail", "--from", "latest", "--count", "3"],
        None,
    );
    // We cannot see when the consumer has resolved `latest`, so keep
    // producing until it has printed 3 messages and exited.
    let deadline = Instant::now() + TIMEOUT;
    let mut j = 0;
    while child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "consume --from latest never finished"
        );
        ok(
            &broker,
            &["produce", "tail"],
            Some(format!("new-{j}\n").as_bytes()),
        );
        j += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = wait_output_timeout(child, TIMEOUT, "consume --from latest");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let got = text(&out.stdout);
    let got = lines(&got);
    assert_eq!(got.len(), 3, "{got:?}");
    let first: usize = got[0]
        .strip_prefix("new-")
        .expect("only new messages")
        .parse()
        .unwrap();
    assert_eq!(
        got,
        [
            format!("new-{first}"),
            format!("new-{}", first + 1),
            format!("new-{}", first + 2)
        ],
        "consecutive new messages, nothing old"
    );

    // Bad --from values are usage errors.
    let out = run(&broker, &["consume", "tail", "--from", "yesterday"], None);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

#[test]
fn error_paths() {
    let broker = Broker::start(2);
    create(&broker, "exists", 1);

    // Unknown topic: non-zero exit, stderr names the topic and the problem.
    for args in [
        &["topic", "describe", "nope"][..],
        &["topic", "delete", "nope"][..],
        &["consume", "nope", "--from", "earliest", "--count", "1"][..],
        &["produce", "nope"][..],
    ] {
        let err = fails(&broker, args, Some(b"hello\n"));
        assert!(
            err.contains("nope") && err.to_lowercase().contains("unknown"),
            "{args:?}: {err}"
        );
    }

    // Invalid topic names.
    for bad in ["bad/name", "white space", "__internal", "ünïcode"] {
        let err = fails(
            &broker,
            &["topic", "create", bad, "--partitions", "1"],
            None,
        );
        assert!(err.to_lowercase().contains("invalid"), "{bad:?}: {err}");
    }
    let err = fails(
        &broker,
        &["topic", "create", "zero", "--partitions", "0"],
        None,
    );
    assert!(err.contains("partition"), "{err}");
    assert_eq!(lines(&ok(&broker, &["topic", "list"], None)), ["exists"]);

    // Broker unreachable: exit 1 for every command, with a clear message.
    let nowhere = format!("127.0.0.1:{}", free_port());
    for args in [
        &["topic", "list"][..],
        &["topic", "create", "x", "--partitions", "1"][..],
        &["topic", "describe", "x"][..],
        &["produce", "x"][..],
        &["consume", "x", "--from", "earliest", "--count", "1"][..],
    ] {
        let out = ringctl_timeout(&nowhere, args, Some(b"hello\n"), TIMEOUT);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{args:?} against no broker: {}",
            text(&out.stderr)
        );
        let err = text(&out.stderr);
        assert!(err.contains(&nowhere), "{args:?}: {err}");
    }
}
