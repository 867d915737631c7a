//! Real Kafka clients against ringmq's Kafka listener: kcat (librdkafka
//! from Debian), confluent-kafka (the librdkafka its wheel ships) and
//! kafka-python, each a separate process speaking to a real broker process
//! on loopback, plus interop with the native client (`ringctl`).
//!
//! The clients come from `make kafka-test-deps` (a dependency of `make
//! test`): `kcat` on PATH and a venv in target/kafka-venv with the versions
//! pinned in tests/kafka/requirements.txt. Without them these tests fail
//! (they never skip). The Python scripts in tests/kafka/ print one JSON line
//! of results; they log details on stderr, which the test prints.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{ringctl_timeout, wait_output_timeout, Broker};
use ringmq_wire::murmur2::partition_for_key;
use serde_json::Value;

const DEPS_HINT: &str = "run `make kafka-test-deps` (make test does)";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The venv's Python, checked once to import both client libraries.
fn python() -> PathBuf {
    static CHECKED: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    CHECKED
        .get_or_init(|| {
            let python = repo_root().join("target/kafka-venv/bin/python");
            if !python.exists() {
                return Err(format!("{} is missing: {DEPS_HINT}", python.display()));
            }
            let out = Command::new(&python)
                .args(["-c", "import confluent_kafka, kafka"])
                .output()
                .map_err(|e| format!("cannot run {}: {e}: {DEPS_HINT}", python.display()))?;
            if !out.status.success() {
                return Err(format!(
                    "{} cannot import confluent_kafka and kafka: {}: {DEPS_HINT}",
                    python.display(),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            Ok(python)
        })
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn kcat() -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("kcat"))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| panic!("kcat is not on PATH: {DEPS_HINT}"))
}

fn script(name: &str) -> PathBuf {
    repo_root().join("tests/kafka").join(name)
}

fn describe_output(what: &str, out: &Output) -> String {
    format!(
        "{what}: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The last stdout line, as JSON.
fn result_json(what: &str, out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_else(|| panic!("no result line\n{}", describe_output(what, out)));
    serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("bad result JSON ({e})\n{}", describe_output(what, out)))
}

fn python_command(name: &str, args: &[String]) -> Command {
    let mut cmd = Command::new(python());
    cmd.arg(script(name))
        .args(args)
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Runs a script to completion; panics (with its output) unless it exits
/// 0 within `timeout`. Returns its JSON result.
fn run_script(name: &str, args: &[String], timeout: Duration) -> Value {
    let what = format!("{name} {}", args.join(" "));
    let child = python_command(name, args)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let out = wait_output_timeout(child, timeout, &what);
    eprintln!(
        "[{name}] stderr:\n{}",
        String::from_utf8_lossy(&out.stderr).trim_end()
    );
    assert!(out.status.success(), "{}", describe_output(&what, &out));
    let result = result_json(&what, &out);
    eprintln!("[{name}] {result}");
    result
}

/// A script running in the background, its output collected as it comes.
struct Background {
    what: String,
    child: Option<std::process::Child>,
    stdout: Option<std::thread::JoinHandle<Vec<u8>>>,
    stderr: Option<std::thread::JoinHandle<Vec<u8>>>,
}

impl Background {
    fn spawn(name: &str, args: &[String]) -> Background {
        let what = format!("{name} {}", args.join(" "));
        let mut child = python_command(name, args)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = pipe.read_to_end(&mut buf);
                buf
            })
        }
        let stdout = drain(child.stdout.take().unwrap());
        let stderr = drain(child.stderr.take().unwrap());
        Background {
            what,
            child: Some(child),
            stdout: Some(stdout),
            stderr: Some(stderr),
        }
    }

    fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// Waits for the exit; kills it and panics with its output after
    /// `timeout`.
    fn wait(&mut self, timeout: Duration) -> Output {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let status = child.wait().unwrap();
                let out = self.collect(status);
                panic!(
                    "{}",
                    describe_output(
                        &format!("{} did not exit within {timeout:?}", self.what),
                        &out
                    )
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let out = self.collect(status);
        eprintln!(
            "[{}] stderr:\n{}",
            self.what,
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
        out
    }

    /// Waits like [`Background::wait`], asserts exit 0, returns the JSON result.
    fn result(&mut self, timeout: Duration) -> Value {
        let out = self.wait(timeout);
        assert!(
            out.status.success(),
            "{}",
            describe_output(&self.what, &out)
        );
        let result = result_json(&self.what, &out);
        eprintln!("[{}] {result}", self.what);
        result
    }

    /// Panics (with its output) if it has exited.
    fn assert_running(&mut self, context: &str) {
        if !self.is_running() {
            let out = self.wait(Duration::from_secs(1));
            panic!(
                "{}",
                describe_output(&format!("{context}: {} exited", self.what), &out)
            );
        }
    }

    fn collect(&mut self, status: std::process::ExitStatus) -> Output {
        Output {
            status,
            stdout: self.stdout.take().unwrap().join().unwrap(),
            stderr: self.stderr.take().unwrap().join().unwrap(),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Runs kcat with `stdin`; panics (with its output) unless it exits 0.
fn run_kcat(kcat_args: &[&str], stdin: Option<Vec<u8>>, timeout: Duration) -> Output {
    let what = format!("kcat {}", kcat_args.join(" "));
    let mut child = Command::new(kcat())
        .args(kcat_args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    let out = wait_output_timeout(child, timeout, &what);
    assert!(out.status.success(), "{}", describe_output(&what, &out));
    out
}

/// One ApiVersions v0 round trip on `addr`.
fn api_versions(addr: &str) -> Result<(), String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    let client_id = b"ringmq-test-probe";
    let mut request = Vec::new();
    request.extend_from_slice(&18i16.to_be_bytes()); // ApiVersions
    request.extend_from_slice(&0i16.to_be_bytes()); // v0
    request.extend_from_slice(&0x5eed_i32.to_be_bytes()); // correlation id
    request.extend_from_slice(&(client_id.len() as i16).to_be_bytes());
    request.extend_from_slice(client_id);
    let mut frame = (request.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&request);
    stream
        .write_all(&frame)
        .map_err(|e| format!("write: {e}"))?;
    let mut size = [0u8; 4];
    stream
        .read_exact(&mut size)
        .map_err(|e| format!("no response: {e}"))?;
    let size = i32::from_be_bytes(size);
    if !(6..=1 << 20).contains(&size) {
        return Err(format!("response size {size}"));
    }
    let mut body = vec![0u8; size as usize];
    stream
        .read_exact(&mut body)
        .map_err(|e| format!("short response: {e}"))?;
    let correlation = i32::from_be_bytes(body[0..4].try_into().unwrap());
    let error = i16::from_be_bytes(body[4..6].try_into().unwrap());
    if correlation != 0x5eed || error != 0 {
        return Err(format!(
            "correlation id {correlation:#x} (sent 0x5eed), error code {error}"
        ));
    }
    Ok(())
}

/// Waits (up to 15 s) until `addr` answers ApiVersions.
fn wait_kafka_addr(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match api_versions(addr) {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!(
                "the Kafka listener at {addr} does not answer ApiVersions v0 ({e}): \
                 is the broker built with its Kafka listener (cargo build --bins)?"
            ),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// A broker with `shards` shards whose Kafka listener answers.
fn kafka_broker(shards: usize) -> Broker {
    let broker = Broker::start(shards);
    wait_kafka_addr(&broker.kafka_addr());
    broker
}

fn create_topic(broker: &Broker, topic: &str, partitions: u32) {
    let out = broker.ringctl(
        &[
            "topic",
            "create",
            topic,
            "--partitions",
            &partitions.to_string(),
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        describe_output("ringctl topic create", &out)
    );
}

/// `ringctl topic describe --json`: partition -> shard.
fn topic_shards(broker: &Broker, topic: &str) -> BTreeMap<u32, u64> {
    let out = broker.ringctl(&["topic", "describe", topic, "--json"], None);
    assert!(
        out.status.success(),
        "{}",
        describe_output("ringctl topic describe", &out)
    );
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    json["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["partition"].as_u64().unwrap() as u32,
                p["shard"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn ringctl_produce(broker: &Broker, topic: &str, lines: &str, extra: &[&str]) {
    let mut argv = vec!["produce", topic, "--key-separator", ":"];
    argv.extend_from_slice(extra);
    let out = ringctl_timeout(
        &broker.addr(),
        &argv,
        Some(lines.as_bytes()),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "{}",
        describe_output("ringctl produce", &out)
    );
}

/// `ringctl group describe G --json`: the clustering (instance "") committed
/// offsets of `topic`, partition -> offset.
fn native_committed(broker: &Broker, group: &str, topic: &str) -> BTreeMap<u32, i64> {
    let out = broker.ringctl(&["group", "describe", group, "--json"], None);
    assert!(
        out.status.success(),
        "{}",
        describe_output("ringctl group describe", &out)
    );
    let json: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    json["offsets"]
        .as_array()
        .unwrap_or_else(|| panic!("no offsets in {json}"))
        .iter()
        .filter(|o| o["topic"] == topic && o["instance_id"] == "")
        .map(|o| {
            (
                o["partition"].as_u64().unwrap() as u32,
                o["committed_offset"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// One record read back: partition, offset, key, value.
#[derive(Debug, Clone)]
struct Record {
    partition: u32,
    offset: i64,
    key: Option<String>,
    value: String,
}

/// Reads the whole topic with confluent-kafka (tests/kafka/cfk_dump.py).
fn cfk_dump(broker: &Broker, topic: &str, dir: &Path) -> Vec<Record> {
    let out_file = dir.join(format!("{topic}.dump.jsonl"));
    let result = run_script(
        "cfk_dump.py",
        &args(&[
            "--bootstrap",
            &broker.kafka_addr(),
            "--topic",
            topic,
            "--out",
            out_file.to_str().unwrap(),
            "--timeout",
            "50",
        ]),
        Duration::from_secs(60),
    );
    let text = std::fs::read_to_string(&out_file).unwrap();
    let records: Vec<Record> = text
        .lines()
        .map(|line| {
            let j: Value = serde_json::from_str(line).unwrap();
            Record {
                partition: j["p"].as_u64().unwrap() as u32,
                offset: j["o"].as_i64().unwrap(),
                key: j["k"].as_str().map(str::to_string),
                value: j["v"].as_str().unwrap().to_string(),
            }
        })
        .collect();
    assert_eq!(
        records.len() as u64,
        result["count"].as_u64().unwrap(),
        "{result}"
    );
    records
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("ringmq-kafka")
        .tempdir_in(common::test_tmp_root())
        .unwrap()
}

/// `PREFIX<id>` -> id.
fn id_of(value: &str, prefix: &str) -> u64 {
    value
        .strip_prefix(prefix)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected value {value:?} (expected {prefix}<n>)"))
}

/// The values of `ids` that occur more than once.
fn duplicates(ids: &[u64]) -> Vec<u64> {
    let mut seen = HashSet::new();
    let mut dups: BTreeSet<u64> = BTreeSet::new();
    for &id in ids {
        if !seen.insert(id) {
            dups.insert(id);
        }
    }
    dups.into_iter().collect()
}

/// In every partition, the records' offsets are distinct and gapless from 0.
fn assert_contiguous_offsets(records: &[Record]) {
    let mut by_partition: BTreeMap<u32, Vec<i64>> = BTreeMap::new();
    for r in records {
        by_partition.entry(r.partition).or_default().push(r.offset);
    }
    for (p, mut offsets) in by_partition {
        offsets.sort_unstable();
        let expected: Vec<i64> = (0..offsets.len() as i64).collect();
        assert!(
            offsets == expected,
            "partition {p}: offsets are not 0..{} (first {:?}, last {:?})",
            expected.len(),
            &offsets[..offsets.len().min(5)],
            offsets.last()
        );
    }
}

fn assert_murmur2_partitions(records: &[Record], partitions: u32) {
    let misplaced: Vec<String> = records
        .iter()
        .filter_map(|r| {
            let key = r.key.as_deref().expect("keyed records");
            let expected = partition_for_key(key.as_bytes(), partitions);
            (expected != r.partition).then(|| {
                format!(
                    "key {key:?} on partition {} (murmur2 says {expected})",
                    r.partition
                )
            })
        })
        .take(10)
        .collect();
    assert!(misplaced.is_empty(), "misplaced keys: {misplaced:#?}");
}

// ---------------------------------------------------------------------------
// 1. kcat
// ---------------------------------------------------------------------------

/// `kcat -L` sees one Kafka broker per shard (node ids 0..shards, each on
/// its own port that answers) and the topic, with each partition led by
/// the broker of the shard that owns it.
#[test]
fn kcat_lists_one_broker_per_shard_and_the_topic() {
    let broker = kafka_broker(2);
    create_topic(&broker, "kcat-meta", 5);
    let out = run_kcat(
        &["-L", "-J", "-b", &broker.kafka_addr()],
        None,
        Duration::from_secs(30),
    );
    let meta: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}\n{}", describe_output("kcat -L -J", &out)));
    eprintln!("kcat -L -J: {meta}");

    let brokers: BTreeMap<i64, String> = meta["brokers"]
        .as_array()
        .unwrap_or_else(|| panic!("no brokers in {meta}"))
        .iter()
        .map(|b| {
            (
                b["id"].as_i64().unwrap(),
                b["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        brokers.keys().copied().collect::<Vec<_>>(),
        vec![0, 1],
        "one Kafka broker per shard: {meta}"
    );
    let addrs: BTreeSet<&String> = brokers.values().collect();
    assert_eq!(addrs.len(), 2, "each shard on its own port: {brokers:?}");
    for addr in brokers.values() {
        assert!(addr.starts_with("127.0.0.1:"), "{brokers:?}");
        api_versions(addr).unwrap_or_else(|e| panic!("per-shard broker {addr}: {e}"));
    }

    let topics = meta["topics"].as_array().unwrap();
    let topic = topics
        .iter()
        .find(|t| t["topic"] == "kcat-meta")
        .unwrap_or_else(|| panic!("kcat-meta not listed: {meta}"));
    let leaders: BTreeMap<u32, u64> = topic["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["partition"].as_u64().unwrap() as u32,
                p["leader"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        leaders,
        topic_shards(&broker, "kcat-meta"),
        "partition leaders (Kafka) vs owning shards (ringctl topic describe)"
    );
}

/// 10,000 keyed messages with lz4 and 10,000 with zstd, produced by kcat
/// with Java's partitioner, come back complete, each key on partition
/// `toPositive(murmur2(key)) % partitions`.
#[test]
fn kcat_lz4_and_zstd_keyed_messages_land_on_murmur2_partitions() {
    const N: usize = 10_000;
    const PARTITIONS: u32 = 6;
    let broker = kafka_broker(2);
    for codec in ["lz4", "zstd"] {
        let topic = format!("kcat-{codec}");
        create_topic(&broker, &topic, PARTITIONS);
        let input: String = (0..N)
            .map(|i| format!("key-{codec}-{i}:value-{codec}-{i}\n"))
            .collect();
        // kcat -P exits 1 when any delivery failed.
        run_kcat(
            &[
                "-P",
                "-b",
                &broker.kafka_addr(),
                "-t",
                &topic,
                "-K",
                ":",
                "-z",
                codec,
                "-X",
                "topic.partitioner=murmur2_random",
            ],
            Some(input.into_bytes()),
            Duration::from_secs(60),
        );

        let out = run_kcat(
            &[
                "-C",
                "-b",
                &broker.kafka_addr(),
                "-t",
                &topic,
                "-o",
                "beginning",
                "-e",
                "-q",
                "-f",
                "%p %k %s\n",
            ],
            None,
            Duration::from_secs(60),
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let records: Vec<Record> = stdout
            .lines()
            .map(|line| {
                let mut fields = line.splitn(3, ' ');
                let partition = fields.next().unwrap().parse().unwrap();
                let key = fields.next().unwrap().to_string();
                let value = fields.next().unwrap_or_else(|| panic!("bad line {line:?}"));
                Record {
                    partition,
                    offset: -1,
                    key: Some(key),
                    value: value.to_string(),
                }
            })
            .collect();
        assert_eq!(records.len(), N, "{codec}: messages read back");
        let mut values: Vec<u64> = Vec::with_capacity(N);
        for r in &records {
            let id = id_of(&r.value, &format!("value-{codec}-"));
            assert_eq!(
                r.key.as_deref(),
                Some(format!("key-{codec}-{id}").as_str()),
                "{codec}: key of {r:?}"
            );
            values.push(id);
        }
        assert!(duplicates(&values).is_empty(), "{codec}: duplicates");
        let unique: BTreeSet<u64> = values.into_iter().collect();
        assert_eq!(unique, (0..N as u64).collect(), "{codec}: payloads");
        assert_murmur2_partitions(&records, PARTITIONS);
    }
}

// ---------------------------------------------------------------------------
// 2. confluent-kafka: idempotent producer, consumer group, resume
// ---------------------------------------------------------------------------

/// An idempotent producer (acks=all) delivers 100,000 messages with
/// contiguous offsets; a 2-member group with manual synchronous commits
/// reads every one; a restarted member resumes at the committed offsets:
/// nothing old, then exactly the 1,000 produced after.
#[test]
fn confluent_idempotent_producer_and_two_member_group_resume() {
    const N: u64 = 100_000;
    const MORE: u64 = 1_000;
    let broker = kafka_broker(2);
    let topic = "cfk-group";
    let group = "cfk-group-g";
    create_topic(&broker, topic, 4);
    let kafka = broker.kafka_addr();
    let dir = tempdir();
    let ready = dir.path().join("group-ready");

    // The group forms (both members hold partitions) before anything is
    // produced, so both members read.
    let mut group_consumer = Background::spawn(
        "cfk_group_consume.py",
        &args(&[
            "--bootstrap",
            &kafka,
            "--topic",
            topic,
            "--group",
            group,
            "--members",
            "2",
            "--expect",
            &N.to_string(),
            "--linger",
            "2",
            "--ready-file",
            ready.to_str().unwrap(),
            "--timeout",
            "100",
        ]),
    );
    let deadline = Instant::now() + Duration::from_secs(40);
    while !ready.exists() {
        group_consumer.assert_running("before both members held partitions");
        assert!(
            Instant::now() < deadline,
            "the 2-member group did not form within 40 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let produced = run_script(
        "cfk_produce.py",
        &args(&[
            "--bootstrap",
            &kafka,
            "--topic",
            topic,
            "--count",
            &N.to_string(),
            "--idempotent",
            "--acks",
            "all",
            "--timeout",
            "100",
        ]),
        Duration::from_secs(110),
    );
    assert_eq!(produced["delivered"], N, "{produced}");
    assert_eq!(produced["errors"], 0, "{produced}");
    assert_eq!(produced["contiguous"], true, "{produced}");
    for (p, stats) in produced["partitions"].as_object().unwrap() {
        assert_eq!(stats["min"], 0, "partition {p} starts at 0: {produced}");
    }

    let consumed = group_consumer.result(Duration::from_secs(110));
    assert_eq!(consumed["missing"], 0, "{consumed}");
    assert_eq!(consumed["unexpected"], 0, "{consumed}");
    assert_eq!(consumed["unique"], N, "{consumed}");
    for member in consumed["members"].as_array().unwrap() {
        assert!(
            !member["final_assignment"].as_array().unwrap().is_empty(),
            "every member of the group holds partitions: {consumed}"
        );
        assert!(
            member["count"].as_u64().unwrap() > 0,
            "every member of the group reads: {consumed}"
        );
    }
    assert_eq!(
        consumed["committed"], consumed["high"],
        "committed offsets = log ends"
    );
    let ends = consumed["high"].clone();

    // A member restarted in the same group: nothing old.
    let resumed = run_script(
        "cfk_group_consume.py",
        &args(&[
            "--bootstrap",
            &kafka,
            "--topic",
            topic,
            "--group",
            group,
            "--expect",
            "0",
            "--linger",
            "3",
            "--timeout",
            "40",
        ]),
        Duration::from_secs(50),
    );
    assert_eq!(
        resumed["count"], 0,
        "a restarted member reads nothing old: {resumed}"
    );
    assert_eq!(resumed["committed"], ends, "{resumed}");

    run_script(
        "cfk_produce.py",
        &args(&[
            "--bootstrap",
            &kafka,
            "--topic",
            topic,
            "--start",
            &N.to_string(),
            "--count",
            &MORE.to_string(),
            "--idempotent",
        ]),
        Duration::from_secs(60),
    );
    let after = run_script(
        "cfk_group_consume.py",
        &args(&[
            "--bootstrap",
            &kafka,
            "--topic",
            topic,
            "--group",
            group,
            "--expect-start",
            &N.to_string(),
            "--expect",
            &MORE.to_string(),
            "--linger",
            "2",
            "--timeout",
            "40",
        ]),
        Duration::from_secs(50),
    );
    assert_eq!(after["missing"], 0, "{after}");
    assert_eq!(
        after["unexpected"], 0,
        "only the new messages are read: {after}"
    );
    assert_eq!(after["count"], MORE, "exactly the new messages: {after}");
    assert_eq!(after["committed"], after["high"], "{after}");
}

// ---------------------------------------------------------------------------
// 3. confluent-kafka: SIGKILL of the broker under an idempotent producer
// ---------------------------------------------------------------------------

/// The broker is SIGKILLed while an idempotent producer (acks=all) is
/// sending and restarted on the same ports; the producer retries and
/// finishes. Every acknowledged message is in the log, and no message is
/// there twice.
#[test]
fn confluent_idempotent_producer_survives_broker_sigkill() {
    const N: u64 = 40_000;
    const KILL_AFTER: usize = 8_000;
    let dir = tempdir();
    let mut broker = kafka_broker(2);
    let topic = "cfk-crash";
    create_topic(&broker, topic, 4);
    let record = dir.path().join("acked.txt");

    let producer_args = args(&[
        "--bootstrap",
        &broker.kafka_addr(),
        "--topic",
        topic,
        "--count",
        &N.to_string(),
        "--value-prefix",
        "c-",
        "--idempotent",
        "--acks",
        "all",
        "--rate",
        "8000",
        "--message-timeout-ms",
        "120000",
        "--record",
        record.to_str().unwrap(),
        "--timeout",
        "110",
    ]);
    let mut producer = Background::spawn("cfk_produce.py", &producer_args);
    let acked_lines = || {
        std::fs::read_to_string(&record)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(40);
    while acked_lines() < KILL_AFTER {
        producer.assert_running(&format!("before {KILL_AFTER} acknowledgements"));
        assert!(
            Instant::now() < deadline,
            "fewer than {KILL_AFTER} acknowledgements after 40 s ({})",
            acked_lines()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    broker.kill9();
    let acked_at_kill = acked_lines();
    producer.assert_running("the producer must still be producing when the broker dies");
    eprintln!("broker SIGKILLed after {acked_at_kill} acknowledgements");
    std::thread::sleep(Duration::from_millis(500));
    broker.restart();
    wait_kafka_addr(&broker.kafka_addr());

    let out = producer.wait(Duration::from_secs(120));
    let produced = result_json("cfk_produce.py", &out);
    eprintln!("[cfk_produce.py] {produced}");

    let acked: Vec<u64> = std::fs::read_to_string(&record)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert!(
        duplicates(&acked).is_empty(),
        "a message acknowledged twice"
    );
    let records = cfk_dump(&broker, topic, dir.path());
    let ids: Vec<u64> = records.iter().map(|r| id_of(&r.value, "c-")).collect();
    let dups = duplicates(&ids);
    assert!(
        dups.is_empty(),
        "{} message ids are in the log more than once (first: {:?}); \
         the idempotent producer's retries after the restart were appended again",
        dups.len(),
        &dups[..dups.len().min(10)]
    );
    let in_log: HashSet<u64> = ids.iter().copied().collect();
    let lost: Vec<u64> = acked
        .iter()
        .copied()
        .filter(|id| !in_log.contains(id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged messages are missing from the log (first: {:?})",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    // The producer retried through the restart and got everything through.
    assert!(
        out.status.success(),
        "{}",
        describe_output("cfk_produce.py", &out)
    );
    assert_eq!(produced["delivered"], N, "{produced}");
    assert_eq!(produced["errors"], 0, "{produced}");
    assert_eq!(acked.len() as u64, N);
    assert_eq!(in_log.len() as u64, N, "every message is in the log");
}

// ---------------------------------------------------------------------------
// 4. kafka-python
// ---------------------------------------------------------------------------

/// kafka-python (API versions negotiated with ApiVersions) creates a topic,
/// lists topics, produces with gzip, consumes in a group and commits.
#[test]
fn kafka_python_admin_produce_consume() {
    let broker = kafka_broker(2);
    let topic = "kp-topic";
    let result = run_script(
        "kp_roundtrip.py",
        &args(&[
            "--bootstrap",
            &broker.kafka_addr(),
            "--topic",
            topic,
            "--group",
            "kp-group",
            "--partitions",
            "3",
            "--count",
            "2000",
            "--timeout",
            "50",
        ]),
        Duration::from_secs(60),
    );
    assert_eq!(result["created"], true, "{result}");
    for list in ["admin_topics", "consumer_topics"] {
        assert!(
            result[list].as_array().unwrap().iter().any(|t| t == topic),
            "{list} lacks {topic}: {result}"
        );
    }
    assert_eq!(result["acked"], 2000, "{result}");
    assert_eq!(result["unique"], 2000, "{result}");
    assert_eq!(result["missing"], 0, "{result}");
    assert_eq!(result["unexpected"], 0, "{result}");
    // The topic exists for native clients too, with the partitions asked for.
    assert_eq!(topic_shards(&broker, topic).len(), 3);
}

// ---------------------------------------------------------------------------
// 5. Interop with the native client
// ---------------------------------------------------------------------------

/// Produced by `ringctl produce` (uncompressed and lz4), read by
/// confluent-kafka: same keys and values, keys on their murmur2 partitions.
#[test]
fn interop_native_produce_confluent_consume() {
    const PARTITIONS: u32 = 4;
    let dir = tempdir();
    let broker = kafka_broker(2);
    let topic = "interop-n2k";
    create_topic(&broker, topic, PARTITIONS);
    let plain: String = (0..1000).map(|i| format!("nk{i}:nv-{i}\n")).collect();
    ringctl_produce(&broker, topic, &plain, &[]);
    let lz4: String = (1000..2000).map(|i| format!("nk{i}:nv-{i}\n")).collect();
    ringctl_produce(&broker, topic, &lz4, &["--compression", "lz4"]);

    let records = cfk_dump(&broker, topic, dir.path());
    assert_eq!(records.len(), 2000);
    let mut ids = Vec::new();
    for r in &records {
        let id = id_of(&r.value, "nv-");
        assert_eq!(r.key.as_deref(), Some(format!("nk{id}").as_str()), "{r:?}");
        ids.push(id);
    }
    assert!(duplicates(&ids).is_empty());
    assert_eq!(
        ids.iter().copied().collect::<BTreeSet<_>>(),
        (0..2000).collect()
    );
    assert_murmur2_partitions(&records, PARTITIONS);
    assert_contiguous_offsets(&records);
}

/// Produced by confluent-kafka (lz4), read by `ringctl consume`.
#[test]
fn interop_confluent_produce_native_consume() {
    const N: u64 = 2000;
    let broker = kafka_broker(2);
    let topic = "interop-k2n";
    create_topic(&broker, topic, 4);
    let produced = run_script(
        "cfk_produce.py",
        &args(&[
            "--bootstrap",
            &broker.kafka_addr(),
            "--topic",
            topic,
            "--count",
            &N.to_string(),
            "--key-prefix",
            "ck",
            "--value-prefix",
            "cv-",
            "--compression",
            "lz4",
        ]),
        Duration::from_secs(60),
    );
    assert_eq!(produced["delivered"], N, "{produced}");

    let out = ringctl_timeout(
        &broker.addr(),
        &[
            "consume",
            topic,
            "--from",
            "earliest",
            "--count",
            &N.to_string(),
            "--format",
            "json",
        ],
        None,
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "{}",
        describe_output("ringctl consume", &out)
    );
    let records: Vec<Record> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let j: Value = serde_json::from_str(line).unwrap();
            Record {
                partition: j["partition"].as_u64().unwrap() as u32,
                offset: j["offset"].as_i64().unwrap(),
                key: j["key"].as_str().map(str::to_string),
                value: j["value"].as_str().unwrap().to_string(),
            }
        })
        .collect();
    assert_eq!(records.len() as u64, N);
    let mut ids = Vec::new();
    for r in &records {
        let id = id_of(&r.value, "cv-");
        assert_eq!(r.key.as_deref(), Some(format!("ck{id}").as_str()), "{r:?}");
        ids.push(id);
    }
    assert!(duplicates(&ids).is_empty());
    assert_eq!(
        ids.iter().copied().collect::<BTreeSet<_>>(),
        (0..N).collect()
    );
    assert_murmur2_partitions(&records, 4);
    assert_contiguous_offsets(&records);
}

/// A confluent-kafka consumer commits in group G; `ringctl group describe G`
/// shows those offsets, and `ringctl consume --group G` continues from them:
/// it reads exactly the messages the Kafka consumer did not.
#[test]
fn interop_group_offsets_are_shared_with_native_groups() {
    const N: u64 = 1000;
    const FIRST: u64 = 600;
    let broker = kafka_broker(2);
    let topic = "interop-offsets";
    let group = "interop-shared-g";
    create_topic(&broker, topic, 4);
    let produced = run_script(
        "cfk_produce.py",
        &args(&[
            "--bootstrap",
            &broker.kafka_addr(),
            "--topic",
            topic,
            "--count",
            &N.to_string(),
            "--value-prefix",
            "s-",
        ]),
        Duration::from_secs(60),
    );
    assert_eq!(produced["delivered"], N, "{produced}");
    // Every (partition, offset) in the topic.
    let mut all: BTreeSet<(u32, i64)> = BTreeSet::new();
    for (p, stats) in produced["partitions"].as_object().unwrap() {
        let p: u32 = p.parse().unwrap();
        for o in stats["min"].as_i64().unwrap()..=stats["max"].as_i64().unwrap() {
            all.insert((p, o));
        }
    }
    assert_eq!(all.len() as u64, N);

    let kafka = run_script(
        "cfk_group_consume.py",
        &args(&[
            "--bootstrap",
            &broker.kafka_addr(),
            "--topic",
            topic,
            "--group",
            group,
            "--max",
            &FIRST.to_string(),
            "--value-prefix",
            "s-",
            "--timeout",
            "40",
        ]),
        Duration::from_secs(50),
    );
    let read_by_kafka: BTreeSet<(u32, i64)> = kafka["consumed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|po| (po[0].as_u64().unwrap() as u32, po[1].as_i64().unwrap()))
        .collect();
    assert_eq!(read_by_kafka.len() as u64, FIRST, "{kafka}");
    // What the Kafka consumer committed: one past the last message it
    // processed in each partition it read.
    let mut expected_commits: BTreeMap<u32, i64> = BTreeMap::new();
    for &(p, o) in &read_by_kafka {
        let next = expected_commits.entry(p).or_insert(0);
        *next = (*next).max(o + 1);
    }
    let kafka_committed: BTreeMap<u32, i64> = kafka["committed"]
        .as_object()
        .unwrap()
        .iter()
        .filter_map(|(p, o)| Some((p.parse().unwrap(), o.as_i64()?)))
        .collect();
    assert_eq!(
        kafka_committed, expected_commits,
        "OffsetFetch after the commits: {kafka}"
    );
    assert_eq!(
        native_committed(&broker, group, topic),
        expected_commits,
        "ringctl group describe shows the Kafka consumer's commits"
    );

    let rest = (N - FIRST).to_string();
    let out = ringctl_timeout(
        &broker.addr(),
        &[
            "consume",
            topic,
            "--group",
            group,
            "--format",
            "json",
            "--count",
            &rest,
            "--idle-timeout-ms",
            "20000",
        ],
        None,
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "{}",
        describe_output("ringctl consume --group", &out)
    );
    let read_natively: Vec<(u32, i64)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let j: Value = serde_json::from_str(line).unwrap();
            (
                j["partition"].as_u64().unwrap() as u32,
                j["offset"].as_i64().unwrap(),
            )
        })
        .collect();
    let again: Vec<&(u32, i64)> = read_natively
        .iter()
        .filter(|po| read_by_kafka.contains(po))
        .take(10)
        .collect();
    assert!(
        again.is_empty(),
        "ringctl consume --group re-read messages the Kafka consumer had committed: {again:?}"
    );
    let expected_rest: BTreeSet<(u32, i64)> = all.difference(&read_by_kafka).copied().collect();
    assert_eq!(
        read_natively.iter().copied().collect::<BTreeSet<_>>(),
        expected_rest,
        "ringctl consume --group reads exactly what came after the commits"
    );
    assert_eq!(read_natively.len() as u64, N - FIRST);

    // And the native consumer's commits are where a Kafka consumer looks.
    let ends: HashMap<u32, i64> = all.iter().fold(HashMap::new(), |mut m, &(p, o)| {
        let e = m.entry(p).or_insert(0);
        *e = (*e).max(o + 1);
        m
    });
    let native = native_committed(&broker, group, topic);
    for (p, end) in &ends {
        assert_eq!(native.get(p), Some(end), "partition {p}: {native:?}");
    }
}

// ---------------------------------------------------------------------------
// 6. The benchmark script still runs
// ---------------------------------------------------------------------------

/// tests/kafka/producer_bench.py (BENCHMARKS.md) runs and reports every
/// message delivered; no timing is asserted.
#[test]
fn producer_bench_script_runs() {
    let broker = kafka_broker(1);
    create_topic(&broker, "kafka-bench", 2);
    let result = run_script(
        "producer_bench.py",
        &args(&[
            "--bootstrap",
            &broker.kafka_addr(),
            "--topic",
            "kafka-bench",
            "--count",
            "5000",
            "--size",
            "100",
            "--acks",
            "all",
            "--timeout",
            "50",
        ]),
        Duration::from_secs(60),
    );
    assert_eq!(result["delivered"], 5000, "{result}");
    assert_eq!(result["errors"], 0, "{result}");
    assert!(result["msgs_per_s"].as_f64().unwrap() > 0.0, "{result}");
}
