//! Consumer groups end to end: real broker processes, real `ringctl
//! consume --group` processes, SIGKILL of a consumer and of the broker.
//!
//! The consumers print one JSON object per message on stdout and one line
//! per rebalance event on stderr (`ringctl: assigned generation=G
//! member=M partitions=t:0,t:3`); the tests read both as they come.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{bin_path, Broker};
use serde_json::Value;

/// One consumed message: (partition, offset, value).
type Message = (u32, i64, String);

/// A `ringctl consume --group` process whose output is collected live.
struct GroupConsumer {
    child: Option<Child>,
    messages: Arc<Mutex<Vec<Message>>>,
    /// (when it was read, the line) of every `ringctl: ...` stderr line.
    events: Arc<Mutex<Vec<(Instant, String)>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl GroupConsumer {
    fn spawn(broker: &Broker, topic: &str, group: &str, extra: &[&str]) -> GroupConsumer {
        let mut child = Command::new(bin_path("ringctl"))
            .args([
                "--broker",
                &broker.addr(),
                "consume",
                topic,
                "--group",
                group,
            ])
            .args(["--format", "json", "--session-timeout-ms", "3000"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ringctl");
        let messages = Arc::new(Mutex::new(Vec::new()));
        let events = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let sink = messages.clone();
        let out_reader = std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines().peekable();
            while let Some(Ok(line)) = lines.next() {
                let json: Value = match serde_json::from_str(&line) {
                    Ok(json) => json,
                    // Only the last line of a SIGKILLed consumer may be cut
                    // short; it was never fully printed, so it is not counted.
                    Err(e) if lines.peek().is_none() && !line.ends_with('}') => {
                        eprintln!("[consumer] torn last line {line:?}: {e}");
                        break;
                    }
                    Err(e) => panic!("bad json line {line:?}: {e}"),
                };
                sink.lock().unwrap().push((
                    json["partition"].as_u64().unwrap() as u32,
                    json["offset"].as_i64().unwrap(),
                    json["value"].as_str().unwrap().to_string(),
                ));
            }
        });
        let sink = events.clone();
        let err_reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[consumer] {line}");
                sink.lock().unwrap().push((Instant::now(), line));
            }
        });
        GroupConsumer {
            child: Some(child),
            messages,
            events,
            readers: vec![out_reader, err_reader],
        }
    }

    fn count(&self) -> usize {
        self.messages.lock().unwrap().len()
    }

    fn kill9(&mut self) -> Instant {
        let mut child = self.child.take().unwrap();
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let at = Instant::now();
        child.wait().unwrap();
        at
    }

    fn terminate(&mut self) {
        let child = self.child.as_ref().unwrap();
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    }

    /// Waits for exit; panics unless it exits 0 within `timeout`.
    fn wait_success(&mut self, timeout: Duration) {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("consumer did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        for reader in self.readers.drain(..) {
            reader.join().unwrap();
        }
        assert!(status.success(), "consumer exited with {status}");
    }

    fn finish(mut self) -> Vec<Message> {
        for reader in self.readers.drain(..) {
            reader.join().unwrap();
        }
        std::mem::take(&mut *self.messages.lock().unwrap())
    }

    /// Parsed `assigned` events: (time, generation, member, partitions).
    fn assignments(&self) -> Vec<(Instant, i32, String, BTreeSet<u32>)> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(at, line)| {
                let rest = line.strip_prefix("ringctl: assigned ")?;
                let (generation, member, partitions) = parse_event(rest);
                Some((*at, generation, member, partitions))
            })
            .collect()
    }
}

impl Drop for GroupConsumer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `generation=G member=M partitions=t:0,t:3` (partitions may be empty).
fn parse_event(text: &str) -> (i32, String, BTreeSet<u32>) {
    let mut generation = None;
    let mut member = None;
    let mut partitions = BTreeSet::new();
    for field in text.split_whitespace() {
        if let Some(g) = field.strip_prefix("generation=") {
            generation = Some(g.parse().unwrap());
        } else if let Some(m) = field.strip_prefix("member=") {
            member = Some(m.to_string());
        } else if let Some(list) = field.strip_prefix("partitions=") {
            for tp in list.split(',').filter(|s| !s.is_empty()) {
                let (_, p) = tp.rsplit_once(':').unwrap();
                partitions.insert(p.parse().unwrap());
            }
        }
    }
    (generation.unwrap(), member.unwrap(), partitions)
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
    assert!(out.status.success(), "{out:?}");
}

/// Produces `k{i}:m-{i}` for i in `range` (keys spread over the partitions).
fn produce(broker: &Broker, topic: &str, range: std::ops::Range<usize>) {
    let input: String = range.map(|i| format!("k{i}:m-{i:06}\n")).collect();
    let out = broker.ringctl(
        &["produce", topic, "--key-separator", ":"],
        Some(input.as_bytes()),
    );
    assert!(out.status.success(), "{out:?}");
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn values(messages: &[Message]) -> Vec<String> {
    messages.iter().map(|(_, _, v)| v.clone()).collect()
}

#[test]
fn three_consumers_share_six_partitions_and_survive_a_kill() {
    const TOTAL: usize = 60_000;
    let broker = Broker::start(2);
    create_topic(&broker, "events", 6);
    produce(&broker, "events", 0..TOTAL / 2);

    let mut consumers: Vec<GroupConsumer> = (0..3)
        .map(|_| GroupConsumer::spawn(&broker, "events", "kill-test", &[]))
        .collect();
    // Wait for a generation in which all three own two partitions each,
    // and for the first half to be consumed.
    wait_until(
        "a stable three-member generation",
        Duration::from_secs(60),
        || {
            let latest: Vec<_> = consumers
                .iter()
                .filter_map(|c| c.assignments().last().cloned())
                .collect();
            latest.len() == 3 && latest.iter().all(|a| a.1 == latest[0].1 && a.3.len() == 2)
        },
    );
    wait_until("the first half", Duration::from_secs(60), || {
        consumers.iter().map(|c| c.count()).sum::<usize>() >= TOTAL / 2
    });

    // Second half while the victim is consuming; SIGKILL it mid-stream.
    let victim = 1;
    let before = consumers[victim].count();
    let producer = {
        let addr = broker.addr();
        std::thread::spawn(move || {
            let input: String = (TOTAL / 2..TOTAL)
                .map(|i| format!("k{i}:m-{i:06}\n"))
                .collect();
            let out = common::ringctl(
                &addr,
                &["produce", "events", "--key-separator", ":"],
                Some(input.as_bytes()),
            );
            assert!(out.status.success(), "{out:?}");
        })
    };
    wait_until("the victim to consume", Duration::from_secs(60), || {
        consumers[victim].count() >= before + 500
    });
    let victim_last = consumers[victim].assignments().last().cloned().unwrap();
    let killed_at = consumers[victim].kill9();
    producer.join().unwrap();

    // The survivors take over the victim's partitions and finish.
    let seen = || -> BTreeSet<String> {
        consumers
            .iter()
            .flat_map(|c| values(&c.messages.lock().unwrap()))
            .collect()
    };
    wait_until("every message consumed", Duration::from_secs(120), || {
        seen().len() == TOTAL
    });
    let takeover = consumers
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .flat_map(|(_, c)| c.assignments())
        .filter(|a| a.1 > victim_last.1)
        .map(|a| a.0)
        .min()
        .expect("a generation after the kill");
    let rebalance_ms = takeover.duration_since(killed_at).as_millis();

    // At no moment do two members of one generation own a partition.
    let mut by_generation: BTreeMap<i32, Vec<(String, BTreeSet<u32>)>> = BTreeMap::new();
    for c in &consumers {
        for (_, generation, member, partitions) in c.assignments() {
            by_generation
                .entry(generation)
                .or_default()
                .push((member, partitions));
        }
    }
    for (generation, members) in &by_generation {
        let mut owned = BTreeSet::new();
        for (member, partitions) in members {
            for p in partitions {
                assert!(
                    owned.insert(*p),
                    "partition {p} owned twice in generation {generation} (second: {member})"
                );
            }
        }
    }

    for i in [0, 2] {
        consumers[i].terminate();
        consumers[i].wait_success(Duration::from_secs(30));
    }
    let all: Vec<Vec<Message>> = consumers.into_iter().map(|c| c.finish()).collect();

    // Duplicates only from the victim's uncommitted range: each value
    // printed twice was printed once by the victim, in one of the
    // partitions it owned when it died, and once by a survivor.
    let mut printers: HashMap<&str, Vec<(usize, u32)>> = HashMap::new();
    for (i, messages) in all.iter().enumerate() {
        for (partition, _, value) in messages {
            printers.entry(value).or_default().push((i, *partition));
        }
    }
    let mut duplicates = 0;
    for (value, by) in &printers {
        if by.len() == 1 {
            continue;
        }
        duplicates += by.len() - 1;
        assert_eq!(by.len(), 2, "{value} printed {} times: {by:?}", by.len());
        assert!(
            by.iter().any(|(i, _)| *i == victim) && by.iter().any(|(i, _)| *i != victim),
            "{value} duplicated between survivors: {by:?}"
        );
        assert!(
            victim_last.3.contains(&by[0].1),
            "{value} not in the victim's partitions"
        );
    }
    let printed: usize = all.iter().map(Vec::len).sum();
    eprintln!(
        "kill test: {TOTAL} messages, {printed} printed, {} distinct, {duplicates} duplicates, \
         victim owned {:?} in generation {}, partitions moved {rebalance_ms} ms after SIGKILL \
         (session timeout 3000 ms), {} generations",
        printers.len(),
        victim_last.3,
        victim_last.1,
        by_generation.len()
    );
    assert_eq!(printers.len(), TOTAL);
}

#[test]
fn consumers_resume_from_committed_offsets_across_restarts_and_sigkill() {
    let mut broker = Broker::start(2);
    create_topic(&broker, "resume", 3);
    produce(&broker, "resume", 0..1_000);
    // Two consumers, 500 each: together everything, exactly once (each
    // commits what it printed before leaving).
    let mut pair: Vec<GroupConsumer> = (0..2)
        .map(|_| GroupConsumer::spawn(&broker, "resume", "r", &["--count", "500"]))
        .collect();
    for c in &mut pair {
        c.wait_success(Duration::from_secs(60));
    }
    let first: Vec<String> = pair.into_iter().flat_map(|c| values(&c.finish())).collect();
    assert_eq!(first.len(), 1_000);
    assert_eq!(
        first.iter().collect::<BTreeSet<_>>().len(),
        1_000,
        "no duplicates"
    );

    // More messages: a restarted consumer reads only those.
    produce(&broker, "resume", 1_000..1_500);
    let mut again = GroupConsumer::spawn(&broker, "resume", "r", &["--count", "500"]);
    again.wait_success(Duration::from_secs(60));
    let second: BTreeSet<String> = values(&again.finish()).into_iter().collect();
    let expected: BTreeSet<String> = (1_000..1_500).map(|i| format!("m-{i:06}")).collect();
    assert_eq!(second, expected, "resumed exactly at the committed offsets");

    // Committed offsets survive SIGKILL of the broker.
    broker.kill9();
    broker.restart();
    let described = describe(&broker, "r");
    let offsets = described["offsets"].as_array().unwrap();
    assert_eq!(offsets.len(), 3, "{described}");
    let committed: i64 = offsets
        .iter()
        .map(|o| o["committed_offset"].as_i64().unwrap())
        .sum();
    assert_eq!(committed, 1_500);
    for o in offsets {
        assert_eq!(o["lag"].as_i64(), Some(0), "{described}");
        assert_eq!(o["committed_offset"], o["log_end_offset"], "{described}");
    }
    produce(&broker, "resume", 1_500..1_510);
    let mut after = GroupConsumer::spawn(&broker, "resume", "r", &["--count", "10"]);
    after.wait_success(Duration::from_secs(60));
    let third: BTreeSet<String> = values(&after.finish()).into_iter().collect();
    let expected: BTreeSet<String> = (1_500..1_510).map(|i| format!("m-{i:06}")).collect();
    assert_eq!(third, expected);

    // Admin: reset is refused while a member lives, then works; delete.
    let mut live = GroupConsumer::spawn(&broker, "resume", "r", &[]);
    wait_until("the member to join", Duration::from_secs(30), || {
        !live.assignments().is_empty()
    });
    let refused = broker.ringctl(
        &[
            "group",
            "reset-offsets",
            "r",
            "--topic",
            "resume",
            "--to",
            "earliest",
        ],
        None,
    );
    assert!(!refused.status.success(), "{refused:?}");
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("live member"), "{message}");
    live.terminate();
    live.wait_success(Duration::from_secs(30));
    let reset = broker.ringctl(
        &[
            "group",
            "reset-offsets",
            "r",
            "--topic",
            "resume",
            "--to",
            "earliest",
        ],
        None,
    );
    assert!(reset.status.success(), "{reset:?}");
    let described = describe(&broker, "r");
    for o in described["offsets"].as_array().unwrap() {
        assert_eq!(o["committed_offset"].as_i64(), Some(0), "{described}");
        assert_eq!(o["lag"], o["log_end_offset"], "{described}");
    }
    let list = broker.ringctl(&["group", "list", "--json"], None);
    assert!(String::from_utf8_lossy(&list.stdout).contains("\"r\""));
    let deleted = broker.ringctl(&["group", "delete", "r"], None);
    assert!(deleted.status.success(), "{deleted:?}");
    let list = broker.ringctl(&["group", "list", "--json"], None);
    assert!(!String::from_utf8_lossy(&list.stdout).contains("\"r\""));
}

#[test]
fn broadcasting_consumers_each_receive_every_message() {
    let broker = Broker::start(2);
    create_topic(&broker, "news", 4);
    produce(&broker, "news", 0..2_000);
    let mut pair: Vec<GroupConsumer> = ["east", "west"]
        .iter()
        .map(|id| {
            GroupConsumer::spawn(
                &broker,
                "news",
                "fanout",
                &["--broadcast", "--instance-id", id, "--count", "2000"],
            )
        })
        .collect();
    for c in &mut pair {
        c.wait_success(Duration::from_secs(60));
    }
    let expected: BTreeSet<String> = (0..2_000).map(|i| format!("m-{i:06}")).collect();
    for c in pair {
        let got = values(&c.finish());
        assert_eq!(got.len(), 2_000);
        assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), expected);
    }
    // Each instance kept its own offsets.
    let described = describe(&broker, "fanout");
    let instances: BTreeSet<&str> = described["offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["instance_id"].as_str().unwrap())
        .collect();
    assert_eq!(instances, BTreeSet::from(["east", "west"]), "{described}");
}

fn describe(broker: &Broker, group: &str) -> Value {
    let out = broker.ringctl(&["group", "describe", group, "--json"], None);
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("describe --json prints JSON")
}
