//! Producer threads: each owns a client `Producer`, sends self-describing
//! messages to pseudo-random partitions and records every outcome.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ringmq_client::{Acks, ClientConfig, Producer, ProducerConfig, ProducerRecord, SendFuture};

use super::history::{classify, json_str, HistorySink, Outcome, ProducerHistory, SendEntry};
use super::message;
use super::rng::Rng;

#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    pub bootstrap: String,
    pub topic: String,
    pub partitions: u32,
    pub acks: Acks,
    pub message_size: usize,
    /// Sends awaiting an answer per producer.
    pub window: usize,
    pub linger_ms: u64,
    pub request_timeout_ms: u64,
    pub seed: u64,
}

/// Counters shared with the main thread for progress lines.
#[derive(Default)]
pub struct Progress {
    pub invoked: AtomicU64,
    pub acked: AtomicU64,
    pub failed: AtomicU64,
    pub unknown: AtomicU64,
}

/// Runs one producer until `stop`; returns its history.
pub fn run_producer(
    id: u64,
    config: &WorkloadConfig,
    stop: &AtomicBool,
    progress: &Progress,
    log: &HistorySink,
) -> Result<ProducerHistory, String> {
    let producer = Producer::connect(
        ClientConfig {
            client_id: format!("ringmq-torture-{id}"),
            connect_timeout_ms: 1_000,
            request_timeout_ms: config.request_timeout_ms,
            ..ClientConfig::new(config.bootstrap.clone())
        },
        ProducerConfig {
            acks: config.acks,
            linger_ms: config.linger_ms,
            batch_bytes: 64 * 1024,
            max_request_bytes: 1024 * 1024,
            buffer_bytes: 4 * 1024 * 1024,
            max_block_ms: 2_000,
            max_in_flight_per_connection: 8,
            request_timeout_ms: config.request_timeout_ms,
            ..ProducerConfig::default()
        },
    )
    .map_err(|e| format!("producer {id}: {e}"))?;
    let mut history = ProducerHistory {
        producer: id,
        ..ProducerHistory::default()
    };
    let mut rng = Rng::derive(config.seed, 1000 + id);
    let mut window: VecDeque<(u64, SendFuture)> = VecDeque::with_capacity(config.window);
    let mut backoff = false;
    while !stop.load(Ordering::Relaxed) {
        if backoff {
            // The broker is probably down: do not spin through sends.
            std::thread::sleep(Duration::from_millis(5));
            backoff = false;
        }
        if window.len() < config.window.max(1) {
            let seq = history.entries.len() as u64;
            let partition = rng.below(u64::from(config.partitions)) as u32;
            history.entries.push(SendEntry {
                partition,
                outcome: Outcome::Invoked,
            });
            progress.invoked.fetch_add(1, Ordering::Relaxed);
            if log.enabled() {
                log.event(format_args!(
                    "\"ev\":\"invoke\",\"producer\":{id},\"seq\":{seq},\"partition\":{partition}"
                ));
            }
            let value = message::encode(id, seq, config.message_size);
            let future = producer
                .send(ProducerRecord::new(config.topic.clone(), value).with_partition(partition));
            window.push_back((seq, future));
            // Complete whatever is already done without blocking.
            while window.front().is_some_and(|(_, f)| f.is_ready()) {
                let (seq, future) = window.pop_front().expect("front");
                backoff |= complete(&mut history, seq, future, progress, log);
            }
        } else {
            let (seq, future) = window.pop_front().expect("window is full");
            backoff |= complete(&mut history, seq, future, progress, log);
        }
    }
    while let Some((seq, future)) = window.pop_front() {
        complete(&mut history, seq, future, progress, log);
    }
    producer.close();
    Ok(history)
}

/// Waits for one send and records it; returns whether it failed.
fn complete(
    history: &mut ProducerHistory,
    seq: u64,
    future: SendFuture,
    progress: &Progress,
    log: &HistorySink,
) -> bool {
    let id = history.producer;
    let entry = &mut history.entries[seq as usize];
    match future.wait() {
        Ok(meta) => {
            if meta.partition != entry.partition {
                // Cannot happen with an explicit partition; keep it visible.
                *history
                    .errors
                    .entry("acked_on_other_partition".into())
                    .or_default() += 1;
            }
            entry.outcome = Outcome::Acked(meta.offset);
            progress.acked.fetch_add(1, Ordering::Relaxed);
            if log.enabled() {
                log.event(format_args!(
                    "\"ev\":\"ack\",\"producer\":{id},\"seq\":{seq},\"partition\":{},\"offset\":{}",
                    meta.partition, meta.offset
                ));
            }
            false
        }
        Err(error) => {
            let (outcome, kind) = classify(&error);
            entry.outcome = outcome;
            let counter = if outcome == Outcome::Failed {
                &progress.failed
            } else {
                &progress.unknown
            };
            counter.fetch_add(1, Ordering::Relaxed);
            if log.enabled() {
                let ev = if outcome == Outcome::Failed {
                    "fail"
                } else {
                    "unknown"
                };
                log.event(format_args!(
                    "\"ev\":\"{ev}\",\"producer\":{id},\"seq\":{seq},\"kind\":{},\"error\":{}",
                    json_str(&kind),
                    json_str(&error.to_string())
                ));
            }
            *history.errors.entry(kind).or_default() += 1;
            true
        }
    }
}

/// Starts `count` producer threads.
pub fn spawn_producers(
    count: u64,
    config: &WorkloadConfig,
    stop: &Arc<AtomicBool>,
    progress: &Arc<Progress>,
    log: &HistorySink,
) -> Vec<std::thread::JoinHandle<Result<ProducerHistory, String>>> {
    (0..count)
        .map(|id| {
            let config = config.clone();
            let stop = stop.clone();
            let progress = progress.clone();
            let log = log.clone();
            std::thread::Builder::new()
                .name(format!("torture-producer-{id}"))
                .spawn(move || run_producer(id, &config, &stop, &progress, &log))
                .expect("spawn producer thread")
        })
        .collect()
}
