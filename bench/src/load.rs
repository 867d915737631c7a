//! Load against a broker: `produce`, `consume` and `e2e`.
//!
//! Every producer and consumer is its own thread with its own client
//! (connections included), since the client is thread-based.
//!
//! Timing: all times are nanoseconds since the process-wide epoch
//! ([`now_ns`]). Without `--rate` a message's send time is taken just
//! before `send` (so time blocked on a full producer buffer counts). With
//! `--rate` each message has an *intended* send time `start + i / rate`
//! and latency is measured from it, so a stalled producer shows up in the
//! tail instead of silently sending less (no coordinated omission).
//!
//! Producers hand messages to the client in `send_many` calls (up to
//! [`MAX_CALL_MESSAGES`] at a time; with `--rate`, every message whose
//! intended time has come, once per tick: see [`crate::pace`]). The client
//! reports each run of a call's messages that shared a batch with one
//! callback, which reads the clock once and records every message's latency
//! from its own (intended) send time.
//!
//! `produce` latency is send → acknowledgement (the range callback runs
//! when the produce response arrives). `e2e` latency is send →
//! receipt by a consumer, from the send time stamped in the first 8 bytes
//! of each value (little-endian u64 ns since the shared epoch).
//!
//! Warm-up: messages whose send time falls in the first `--warmup-s`
//! seconds are sent (and consumed) but counted in neither throughput nor
//! latency; `--messages` / `--duration-s` count from the end of warm-up.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use ringmq_client::{
    Acks, Client, ClientConfig, ClientError, Compression, Consumer, ConsumerConfig, Producer,
    ProducerConfig, RecordRef, SentRange, StartFrom,
};
use ringmq_wire::batch::builder::record_size_upper_bound_bytes;
use ringmq_wire::batch::HEADER_SIZE;
use ringmq_wire::envelope::{LIST_OFFSETS_EARLIEST, LIST_OFFSETS_LATEST};
use serde_json::{json, Value};

use crate::pace::{Pacer, SendTimes};
use crate::report::{
    latency_json, latency_line, new_histogram, now_ns, num, record_ns, wall_ms_at, Environment,
    ProgressLine,
};

/// Most messages per `send_many` call without `--rate`: a call holds the
/// producer's lock while it copies them, so keep calls around a batch.
pub const MAX_CALL_MESSAGES: usize = 1000;
/// Most value bytes per `send_many` call (bounds the e2e stamping buffer).
const MAX_CALL_BYTES: usize = 4 << 20;

/// Options shared by `produce`, `consume` and `e2e`.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// Broker bootstrap address (HOST:PORT of the public native port).
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub broker: String,
    #[arg(long, default_value = "ringmq-bench")]
    pub topic: String,
    /// Partitions of the topic; it is created with this many when missing.
    /// An existing topic with another count is an error (see
    /// --recreate-topic).
    #[arg(long, default_value_t = 1)]
    pub partitions: u32,
    /// Delete and re-create the topic first (its data is lost).
    #[arg(long)]
    pub recreate_topic: bool,
    /// Producer threads, each with its own producer and connections.
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// Consumer threads; they split the partitions (partition p goes to
    /// consumer p % consumers).
    #[arg(long, default_value_t = 1)]
    pub consumers: usize,
    /// Bytes of each message value (no key, no headers).
    #[arg(long, default_value_t = 1000)]
    pub message_size: usize,
    /// Messages per batch: the producer's batch_bytes is this times the
    /// encoded record size (plus the batch header).
    #[arg(long, default_value_t = 1000)]
    pub batch_size: usize,
    /// How long a batch may wait for more records before it is sent.
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
    /// none, gzip, snappy, lz4 or zstd.
    #[arg(long, default_value = "none")]
    pub compression: Compression,
    /// Durability to wait for: none, leader or fsync.
    #[arg(long, default_value = "fsync")]
    pub acks: Acks,
    /// Messages to measure (in total over all producers; for `consume`,
    /// how many to read). With neither this nor --duration-s: 10 s
    /// (`consume`: everything in the topic).
    #[arg(long, conflicts_with = "duration_s")]
    pub messages: Option<u64>,
    /// Seconds to measure, after warm-up.
    #[arg(long)]
    pub duration_s: Option<f64>,
    /// Fixed total send rate in messages per second; latency is then
    /// measured from each message's intended send time.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seconds of load before measuring (excluded from the results).
    #[arg(long, default_value_t = 0.0)]
    pub warmup_s: f64,
    /// Produce requests in flight per connection.
    #[arg(long, default_value_t = 16)]
    pub max_in_flight: usize,
    /// With --rate: how often a producer wakes to send every message whose
    /// intended time has come, in µs. Latency still counts from each
    /// message's intended time, so a longer tick shows as more latency
    /// (about half a tick, more with --linger-ms: a burst opens its batch
    /// late); 250 µs costs W4 ~0.2 ms of p50 against sending each message
    /// on time, and a fraction of the CPU (1 ms: ~0.9 ms of p50).
    #[arg(long, default_value_t = 250)]
    pub send_tick_us: u64,
    /// Consumers verify each batch's CRC32C (Kafka's check.crcs).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub check_crcs: bool,
    /// `consume` only: first produce --messages messages (untimed) so
    /// there is something to read.
    #[arg(long)]
    pub produce_first: bool,
    /// Print one JSON object instead of the human-readable summary.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Produce,
    Consume,
    E2e,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Produce => "produce",
            Mode::Consume => "consume",
            Mode::E2e => "e2e",
        }
    }
}

type BenchResult<T> = std::result::Result<T, String>;

/// Runs a load subcommand; returns the process exit code.
pub fn run(mode: Mode, args: &LoadArgs) -> BenchResult<i32> {
    validate(mode, args)?;
    let env = Environment::probe();
    let client = connect(&args.broker)?;
    let partitions = ensure_topic(&client, args)?;
    let outcome = match mode {
        Mode::Produce => run_produce(args, partitions)?,
        Mode::Consume => {
            if args.produce_first {
                let n = args.messages.unwrap_or(0);
                if n == 0 {
                    return Err("--produce-first needs --messages N".into());
                }
                let before = log_span(&client, &args.topic, partitions)?.2;
                preload(args, n)?;
                // With --acks none, "sent" is not "appended": wait for it.
                let deadline = std::time::Instant::now() + Duration::from_secs(30);
                while log_span(&client, &args.topic, partitions)?.2 < before + n
                    && std::time::Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            run_consume(&client, args, partitions)?
        }
        Mode::E2e => run_e2e(args, partitions)?,
    };
    let report = outcome.json(mode, args, partitions, &env);
    if args.json {
        println!("{}", serde_json::to_string(&report).expect("serialisable"));
    } else {
        outcome.print(mode, args, partitions);
    }
    if let Some(e) = &outcome.first_error {
        eprintln!(
            "ringmq-bench: {} failed messages; first error: {e}",
            outcome.errors
        );
        return Ok(2);
    }
    if outcome.shortfall > 0 {
        eprintln!(
            "ringmq-bench: {} sent messages were never consumed",
            outcome.shortfall
        );
        return Ok(2);
    }
    Ok(0)
}

fn validate(mode: Mode, args: &LoadArgs) -> BenchResult<()> {
    if args.partitions == 0 {
        return Err("--partitions must be at least 1".into());
    }
    if args.producers == 0 && mode != Mode::Consume {
        return Err("--producers must be at least 1".into());
    }
    if args.consumers == 0 && mode != Mode::Produce {
        return Err("--consumers must be at least 1".into());
    }
    if args.batch_size == 0 {
        return Err("--batch-size must be at least 1".into());
    }
    if mode == Mode::E2e && args.message_size < 8 {
        return Err("e2e stamps a u64 send time in each value: --message-size must be >= 8".into());
    }
    if let Some(rate) = args.rate {
        if !(rate > 0.0 && rate.is_finite()) {
            return Err("--rate must be a positive number of messages per second".into());
        }
    }
    if let Some(d) = args.duration_s {
        if !(d > 0.0 && d.is_finite()) {
            return Err("--duration-s must be positive".into());
        }
    }
    if !(args.warmup_s >= 0.0 && args.warmup_s.is_finite()) {
        return Err("--warmup-s must be >= 0".into());
    }
    if args.send_tick_us == 0 || args.send_tick_us > 1_000_000 {
        return Err("--send-tick-us must be between 1 and 1000000".into());
    }
    Ok(())
}

fn client_config(broker: &str, max_in_flight: usize) -> ClientConfig {
    ClientConfig {
        client_id: "ringmq-bench".to_string(),
        max_in_flight: max_in_flight.max(1),
        ..ClientConfig::new(broker)
    }
}

fn connect(broker: &str) -> BenchResult<Client> {
    Client::connect(client_config(broker, 16)).map_err(|e| format!("connect to {broker}: {e}"))
}

/// Makes sure the topic exists with `--partitions` partitions; returns its
/// partition count.
fn ensure_topic(client: &Client, args: &LoadArgs) -> BenchResult<u32> {
    let admin = client.admin();
    if args.recreate_topic {
        match admin.delete_topic(&args.topic) {
            Ok(()) => {}
            Err(e) if is_unknown_topic(&e) => {}
            Err(e) => return Err(format!("delete topic {}: {e}", args.topic)),
        }
    }
    match client.partition_count(&args.topic) {
        Ok(n) if n == args.partitions => return Ok(n),
        Ok(n) => {
            return Err(format!(
                "topic {:?} exists with {n} partitions, not --partitions {}; pick another --topic or pass --recreate-topic",
                args.topic, args.partitions
            ))
        }
        Err(e) if is_unknown_topic(&e) => {}
        Err(e) => return Err(format!("metadata of {}: {e}", args.topic)),
    }
    match admin.create_topic(&args.topic, args.partitions, &[]) {
        Ok(()) => {}
        Err(e) if e.code() == Some(ringmq_wire::error::ErrorCode::TopicAlreadyExists) => {}
        Err(e) => return Err(format!("create topic {}: {e}", args.topic)),
    }
    // The new topic may take a moment to show in metadata.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match client.partition_count(&args.topic) {
            Ok(n) => return Ok(n),
            Err(e) if std::time::Instant::now() < deadline && is_unknown_topic(&e) => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(format!("metadata of new topic {}: {e}", args.topic)),
        }
    }
}

fn is_unknown_topic(e: &ClientError) -> bool {
    matches!(e, ClientError::UnknownTopic { .. })
        || e.code() == Some(ringmq_wire::error::ErrorCode::UnknownTopicOrPartition)
}

/// The producer configuration the flags describe.
fn producer_config(args: &LoadArgs, acks: Acks) -> BenchResult<ProducerConfig> {
    let record = record_size_upper_bound_bytes(None, Some(&vec![0u8; args.message_size]), &[]);
    let batch_bytes = args
        .batch_size
        .checked_mul(record)
        .and_then(|b| b.checked_add(HEADER_SIZE))
        .ok_or("--batch-size × --message-size overflows")?;
    const MAX_BATCH: usize = 32 << 20;
    if batch_bytes > MAX_BATCH {
        return Err(format!(
            "--batch-size {} × {record}-byte records = {batch_bytes} bytes per batch; keep it under {MAX_BATCH} (the broker's frame limit is 64 MiB)",
            args.batch_size
        ));
    }
    Ok(ProducerConfig {
        acks,
        linger_ms: args.linger_ms,
        batch_bytes,
        max_request_bytes: batch_bytes.max(8 << 20),
        compression: args.compression,
        buffer_bytes: (64usize << 20).max(4 * batch_bytes),
        max_in_flight_per_connection: args.max_in_flight.max(1),
        ..ProducerConfig::default()
    })
}

/// A value of `size` bytes of word-like text, so that compression has
/// something realistic to chew on (≈2–3× with lz4), deterministic across
/// runs.
fn payload_template(size: usize) -> Bytes {
    const WORDS: [&str; 32] = [
        "ringmq",
        "broker",
        "shard",
        "glommio",
        "uring",
        "partition",
        "offset",
        "batch",
        "record",
        "produce",
        "consume",
        "fsync",
        "latency",
        "segment",
        "index",
        "commit",
        "alpha",
        "bravo",
        "charlie",
        "delta",
        "echo",
        "foxtrot",
        "golf",
        "hotel",
        "india",
        "juliet",
        "kilo",
        "lima",
        "mike",
        "november",
        "oscar",
        "papa",
    ];
    let mut out = Vec::with_capacity(size + 16);
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    while out.len() < size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(WORDS[(state % 32) as usize].as_bytes());
        out.push(if state & 7 == 0 { b',' } else { b' ' });
        if (state >> 3) & 3 == 0 {
            out.extend_from_slice(format!("{}", state % 100_000).as_bytes());
            out.push(b' ');
        }
    }
    out.truncate(size);
    Bytes::from(out)
}

/// Per producer thread; leaked so that the per-record callbacks can hold a
/// plain `&'static` (no reference counting per message).
struct ProducerStats {
    sent: AtomicU64,
    acked: AtomicU64,
    acked_measured: AtomicU64,
    /// Latest acknowledgement of a measured message (ns since the epoch).
    last_measured_ack_ns: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
    hist: Mutex<Histogram<u64>>,
}

impl ProducerStats {
    fn leak() -> &'static ProducerStats {
        Box::leak(Box::new(ProducerStats {
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            acked_measured: AtomicU64::new(0),
            last_measured_ack_ns: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            first_error: Mutex::new(None),
            hist: Mutex::new(new_histogram()),
        }))
    }

    /// The range callback: runs on the client's I/O thread once per run of
    /// a `send_many` call's messages that shared a batch. One clock read;
    /// each message's latency counts from its own (intended) send time.
    fn complete_range(&self, range: SentRange, times: SendTimes, measured: bool) {
        let n = range.indices.len() as u64;
        match range.result {
            Ok(_) => {
                self.acked.fetch_add(n, Ordering::Relaxed);
                if measured {
                    let now = now_ns();
                    {
                        let mut hist = self.hist.lock().unwrap_or_else(|e| e.into_inner());
                        match times {
                            SendTimes::Same(t) => {
                                hist.saturating_record_n(now.saturating_sub(t) / 1_000, n)
                            }
                            SendTimes::Paced { .. } => {
                                for k in range.indices {
                                    record_ns(&mut hist, now.saturating_sub(times.of(k)));
                                }
                            }
                        }
                    }
                    self.acked_measured.fetch_add(n, Ordering::Relaxed);
                    self.last_measured_ack_ns.fetch_max(now, Ordering::Relaxed);
                }
            }
            Err(e) => {
                self.errors.fetch_add(n, Ordering::Relaxed);
                let mut first = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
                if first.is_none() {
                    *first = Some(e.to_string());
                }
            }
        }
    }
}

/// Per consumer thread.
struct ConsumerStats {
    records: AtomicU64,
    bytes: AtomicU64,
    measured: AtomicU64,
    measured_bytes: AtomicU64,
    last_measured_ns: AtomicU64,
    hist: Mutex<Histogram<u64>>,
}

impl ConsumerStats {
    fn leak() -> &'static ConsumerStats {
        Box::leak(Box::new(ConsumerStats {
            records: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            measured: AtomicU64::new(0),
            measured_bytes: AtomicU64::new(0),
            last_measured_ns: AtomicU64::new(0),
            hist: Mutex::new(new_histogram()),
        }))
    }
}

/// What one producer thread is to do.
#[derive(Clone)]
struct ProducePlan {
    broker: String,
    topic: String,
    message_size: usize,
    config: ProducerConfig,
    max_in_flight: usize,
    /// Messages to measure (after warm-up); `None`: until `end_ns`.
    messages: Option<u64>,
    /// Nanoseconds between this producer's intended send times (`--rate`).
    interval_ns: Option<f64>,
    /// With `--rate`: nanoseconds between send bursts.
    tick_ns: u64,
    /// Stamp the send time into each value (e2e).
    stamp: bool,
}

/// When a run starts: every thread connects first, then waits at the
/// barrier; the main thread sets the times in between.
struct Clock {
    ready: Barrier,
    go: Barrier,
    start_ns: AtomicU64,
    measure_start_ns: AtomicU64,
    /// u64::MAX: no time limit.
    end_ns: AtomicU64,
}

impl Clock {
    fn new(threads: usize) -> Arc<Clock> {
        Arc::new(Clock {
            ready: Barrier::new(threads + 1),
            go: Barrier::new(threads + 1),
            start_ns: AtomicU64::new(0),
            measure_start_ns: AtomicU64::new(0),
            end_ns: AtomicU64::new(u64::MAX),
        })
    }

    /// Main thread: once everyone is connected, fix the times and go.
    fn release(&self, warmup_s: f64, duration_s: Option<f64>) -> (u64, u64) {
        self.ready.wait();
        let start = now_ns() + 1_000_000;
        let measure_start = start + secs_to_ns(warmup_s);
        self.start_ns.store(start, Ordering::SeqCst);
        self.measure_start_ns.store(measure_start, Ordering::SeqCst);
        if let Some(d) = duration_s {
            self.end_ns
                .store(measure_start + secs_to_ns(d), Ordering::SeqCst);
        }
        self.go.wait();
        (start, measure_start)
    }

    /// Worker thread: after connecting.
    fn arrive(&self) -> (u64, u64, u64) {
        self.ready.wait();
        self.go.wait();
        (
            self.start_ns.load(Ordering::SeqCst),
            self.measure_start_ns.load(Ordering::SeqCst),
            self.end_ns.load(Ordering::SeqCst),
        )
    }
}

fn secs_to_ns(s: f64) -> u64 {
    (s * 1e9) as u64
}

/// Sleeps (then yields) until `t_ns`. Sleeping stops ~60 µs early, as a
/// sleep overshoots by about that much; the rest is yielded away.
fn wait_until(t_ns: u64) {
    loop {
        let now = now_ns();
        if now >= t_ns {
            return;
        }
        let left = t_ns - now;
        if left > 60_000 {
            std::thread::sleep(Duration::from_nanos(left - 60_000));
        } else {
            std::thread::yield_now();
        }
    }
}

/// Hands messages to the producer, `send_many` call by call.
struct CallSender<'a> {
    producer: &'a Producer,
    topic: &'a str,
    template: Bytes,
    message_size: usize,
    /// e2e: stamp each value with its (intended) send time.
    stamp: bool,
    /// e2e: the stamped values of one call, back to back (reused).
    scratch: Vec<u8>,
    stats: &'static ProducerStats,
}

impl CallSender<'_> {
    /// Sends `count` messages whose send times are `times`; `measured`:
    /// they count in the results (not warm-up).
    fn send(&mut self, count: usize, times: SendTimes, measured: bool) {
        let size = self.message_size;
        if self.stamp {
            // Each value: its send time (u64 LE ns), then the template.
            self.scratch.clear();
            self.scratch.reserve(count * size);
            for k in 0..count {
                self.scratch.extend_from_slice(&times.of(k).to_le_bytes());
                self.scratch.extend_from_slice(&self.template[8..]);
            }
        }
        let (scratch, template, stamp) = (&self.scratch, &self.template, self.stamp);
        let records = (0..count).map(|k| RecordRef {
            value: Some(if stamp {
                &scratch[k * size..(k + 1) * size]
            } else {
                &template[..]
            }),
            timestamp_ms: Some(wall_ms_at(times.of(k))),
            ..RecordRef::default()
        });
        let stats = self.stats;
        self.producer
            .send_many_with_callback(self.topic, records, move |range| {
                stats.complete_range(range, times, measured)
            });
        stats.sent.fetch_add(count as u64, Ordering::Relaxed);
    }
}

/// Messages per `send_many` call for `message_size`-byte values.
fn call_messages(message_size: usize) -> usize {
    (MAX_CALL_BYTES / message_size.max(1)).clamp(1, MAX_CALL_MESSAGES)
}

/// Sleeps until `t_ns` (no spinning: with 1 ns timer slack the kernel
/// wakes the thread within microseconds).
fn sleep_until(t_ns: u64) {
    let now = now_ns();
    if t_ns > now {
        std::thread::sleep(Duration::from_nanos(t_ns - now));
    }
}

/// Asks the kernel to wake this thread's sleeps on time: the default 50 µs
/// timer slack would add to every fixed-rate tick (best effort).
fn precise_sleeps() {
    // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this thread's slack.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
}

/// One producer thread: connect, wait for the start, send, flush.
fn producer_thread(
    plan: ProducePlan,
    stats: &'static ProducerStats,
    clock: Arc<Clock>,
) -> BenchResult<()> {
    let producer = Producer::connect(
        client_config(&plan.broker, plan.max_in_flight),
        plan.config.clone(),
    );
    let (start, measure_start, end) = clock.arrive();
    let producer = producer.map_err(|e| format!("producer connect to {}: {e}", plan.broker))?;
    let mut sender = CallSender {
        producer: &producer,
        topic: &plan.topic,
        template: payload_template(plan.message_size),
        message_size: plan.message_size,
        stamp: plan.stamp,
        scratch: Vec::new(),
        stats,
    };
    let per_call = call_messages(plan.message_size);
    match plan.interval_ns {
        None => {
            wait_until(start);
            send_flat_out(&mut sender, &plan, per_call, measure_start, end);
        }
        Some(interval_ns) => {
            precise_sleeps();
            let pacer = Pacer::new(start, interval_ns, plan.tick_ns);
            send_paced(&mut sender, &plan, pacer, per_call, measure_start, end);
        }
    }
    producer.close();
    Ok(())
}

/// Without `--rate`: calls of `per_call` messages back to back, each
/// message's send time the time its call started.
fn send_flat_out(
    sender: &mut CallSender<'_>,
    plan: &ProducePlan,
    per_call: usize,
    measure_start: u64,
    end: u64,
) {
    let mut measured: u64 = 0;
    loop {
        let t = now_ns();
        let in_measure = t >= measure_start;
        let left = if in_measure {
            if t >= end {
                break;
            }
            match plan.messages {
                Some(n) if measured >= n => break,
                Some(n) => n - measured,
                None => u64::MAX,
            }
        } else {
            u64::MAX
        };
        let count = per_call.min(usize::try_from(left).unwrap_or(usize::MAX));
        sender.send(count, SendTimes::Same(t), in_measure);
        if in_measure {
            measured += count as u64;
        }
    }
}

/// With `--rate`: wakes once per tick and sends every message whose
/// intended time has come; warm-up and measured messages go in separate
/// calls. Stops at the first measured message past `end` or the count.
fn send_paced(
    sender: &mut CallSender<'_>,
    plan: &ProducePlan,
    mut pacer: Pacer,
    per_call: usize,
    measure_start: u64,
    end: u64,
) {
    let first_measured = pacer.first_at_or_after(measure_start);
    let past_end = if end == u64::MAX {
        u64::MAX
    } else {
        pacer.first_at_or_after(end)
    };
    // The first message not to send: past the end, or past the count.
    let stop = match plan.messages {
        Some(n) => past_end.min(first_measured.saturating_add(n)),
        None => past_end,
    };
    let interval_ns = plan.interval_ns.expect("paced");
    sleep_until(pacer.intended_ns(0));
    loop {
        let now = now_ns();
        let due = pacer.due(now);
        let due_end = due.end.min(stop);
        let mut i = due.start;
        while i < due_end {
            let in_measure = i >= first_measured;
            let run_end = if in_measure {
                due_end
            } else {
                due_end.min(first_measured)
            };
            let count = usize::try_from(run_end - i)
                .unwrap_or(usize::MAX)
                .min(per_call);
            let times = SendTimes::Paced {
                start_ns: pacer.intended_ns(0),
                interval_ns,
                first: i,
            };
            sender.send(count, times, in_measure);
            i += count as u64;
        }
        pacer.sent_up_to(i);
        if i >= stop {
            return;
        }
        sleep_until(pacer.next_wake_ns(now));
    }
}

/// Splits `total` over `n` workers as evenly as possible.
fn share(total: u64, n: usize, k: usize) -> u64 {
    let n = n as u64;
    total / n + u64::from((k as u64) < total % n)
}

fn produce_plans(args: &LoadArgs, acks: Acks, stamp: bool) -> BenchResult<Vec<ProducePlan>> {
    let config = producer_config(args, acks)?;
    let messages = match (args.messages, args.duration_s) {
        (Some(n), _) => Some(n),
        (None, Some(_)) => None,
        (None, None) => None, // the default 10 s is set as a duration
    };
    Ok((0..args.producers)
        .map(|k| ProducePlan {
            broker: args.broker.clone(),
            topic: args.topic.clone(),
            message_size: args.message_size,
            config: config.clone(),
            max_in_flight: args.max_in_flight,
            messages: messages.map(|n| share(n, args.producers, k)),
            interval_ns: args.rate.map(|r| 1e9 * args.producers as f64 / r),
            tick_ns: args.send_tick_us * 1_000,
            stamp,
        })
        .collect())
}

/// The measured duration: `--duration-s`, or 10 s when neither it nor
/// `--messages` is given.
fn duration_of(args: &LoadArgs) -> Option<f64> {
    match (args.messages, args.duration_s) {
        (Some(_), _) => None,
        (None, Some(d)) => Some(d),
        (None, None) => Some(10.0),
    }
}

/// What a run measured.
#[derive(Default)]
struct Outcome {
    /// Messages counted in the results.
    records: u64,
    /// Bytes of values (and keys) counted in the results.
    bytes: u64,
    /// Seconds over which `records` were counted.
    elapsed_s: f64,
    /// Latency of the headline path (send→ack, or send→receive for e2e).
    latency: Option<Histogram<u64>>,
    /// e2e: the producers' send→ack latency as well.
    produce_latency: Option<Histogram<u64>>,
    /// Everything sent / acknowledged / consumed, warm-up included.
    sent: u64,
    acked: u64,
    consumed: u64,
    errors: u64,
    first_error: Option<String>,
    /// e2e: acknowledged messages that no consumer received.
    shortfall: u64,
}

impl Outcome {
    fn msgs_per_sec(&self) -> f64 {
        if self.elapsed_s > 0.0 {
            self.records as f64 / self.elapsed_s
        } else {
            0.0
        }
    }

    fn mb_per_sec(&self) -> f64 {
        if self.elapsed_s > 0.0 {
            self.bytes as f64 / 1e6 / self.elapsed_s
        } else {
            0.0
        }
    }

    fn json(&self, mode: Mode, args: &LoadArgs, partitions: u32, env: &Environment) -> Value {
        let acks = if mode == Mode::Consume && !args.produce_first {
            None
        } else {
            Some(args.acks.to_string())
        };
        let parameters = json!({
            "broker": args.broker,
            "topic": args.topic,
            "partitions": partitions,
            "producers": if mode == Mode::Consume { 0 } else { args.producers },
            "consumers": if mode == Mode::Produce { 0 } else { args.consumers },
            "message_size": args.message_size,
            "batch_size": args.batch_size,
            "batch_bytes": producer_config(args, args.acks).map(|c| c.batch_bytes).ok(),
            "linger_ms": args.linger_ms,
            "compression": args.compression.to_string(),
            "acks": args.acks.to_string(),
            "messages": args.messages,
            "duration_s": if mode == Mode::Consume { args.duration_s } else { duration_of(args) },
            "rate": args.rate,
            "warmup_s": args.warmup_s,
            "max_in_flight": args.max_in_flight,
            "produce_first": args.produce_first,
            "send_tick_us": args.rate.map(|_| args.send_tick_us),
            "check_crcs": args.check_crcs,
        });
        let mut report = env.json_head(mode.name(), acks.as_deref(), parameters);
        let obj = report.as_object_mut().expect("an object");
        obj.insert("records".into(), json!(self.records));
        obj.insert("bytes".into(), json!(self.bytes));
        obj.insert("elapsed_s".into(), num(self.elapsed_s));
        obj.insert("sent".into(), json!(self.sent));
        obj.insert("acked".into(), json!(self.acked));
        obj.insert("consumed".into(), json!(self.consumed));
        obj.insert("errors".into(), json!(self.errors));
        obj.insert("first_error".into(), json!(self.first_error));
        obj.insert(
            "throughput".into(),
            json!({
                "msgs_per_sec": num(self.msgs_per_sec()),
                "mb_per_sec": num(self.mb_per_sec()),
            }),
        );
        obj.insert("latency_us".into(), latency_json(self.latency.as_ref()));
        if mode == Mode::E2e {
            obj.insert(
                "produce_latency_us".into(),
                latency_json(self.produce_latency.as_ref()),
            );
            obj.insert("not_consumed".into(), json!(self.shortfall));
        }
        report
    }

    fn print(&self, mode: Mode, args: &LoadArgs, partitions: u32) {
        println!(
            "ringmq-bench {}: topic {} ({partitions} partitions), {} producers, {} consumers, {} B messages, batch {} msgs, linger {} ms, compression {}, acks {}{}",
            mode.name(),
            args.topic,
            if mode == Mode::Consume { 0 } else { args.producers },
            if mode == Mode::Produce { 0 } else { args.consumers },
            args.message_size,
            args.batch_size,
            args.linger_ms,
            args.compression,
            args.acks,
            args.rate.map(|r| format!(", fixed rate {r} msg/s")).unwrap_or_default(),
        );
        println!(
            "  measured {} messages, {:.1} MB in {:.3} s (warm-up {} s excluded); sent {}, acked {}, consumed {}, errors {}",
            self.records,
            self.bytes as f64 / 1e6,
            self.elapsed_s,
            args.warmup_s,
            self.sent,
            self.acked,
            self.consumed,
            self.errors
        );
        println!(
            "  throughput: {:.0} msg/s, {:.1} MB/s",
            self.msgs_per_sec(),
            self.mb_per_sec()
        );
        let what = match mode {
            Mode::Produce => "send→ack",
            Mode::E2e => "send→receive",
            Mode::Consume => "",
        };
        if let Some(h) = &self.latency {
            println!("  latency {what}: {}", latency_line(h));
        }
        if let Some(h) = &self.produce_latency {
            println!("  latency send→ack: {}", latency_line(h));
        }
    }
}

fn progress_producers(stats: Vec<&'static ProducerStats>) -> ProgressLine {
    let last = Mutex::new((0u64, std::time::Instant::now()));
    ProgressLine::start(move |elapsed| {
        let acked: u64 = stats.iter().map(|s| s.acked.load(Ordering::Relaxed)).sum();
        let sent: u64 = stats.iter().map(|s| s.sent.load(Ordering::Relaxed)).sum();
        let errors: u64 = stats.iter().map(|s| s.errors.load(Ordering::Relaxed)).sum();
        let mut last = last.lock().unwrap();
        let now = std::time::Instant::now();
        let rate = (acked - last.0) as f64 / (now - last.1).as_secs_f64().max(1e-9);
        *last = (acked, now);
        format!(
            "[{:>4.0}s] sent {sent}  acked {acked}  {rate:.0} msg/s  errors {errors}",
            elapsed.as_secs_f64()
        )
    })
}

fn join_all(handles: Vec<std::thread::JoinHandle<BenchResult<()>>>) -> BenchResult<()> {
    let mut first = Ok(());
    for h in handles {
        let r = h
            .join()
            .unwrap_or_else(|_| Err("a worker thread panicked".into()));
        if first.is_ok() {
            first = r;
        }
    }
    first
}

fn merge_producers(stats: &[&'static ProducerStats]) -> (Histogram<u64>, Outcome) {
    let mut hist = new_histogram();
    let mut out = Outcome::default();
    for s in stats {
        hist.add(&*s.hist.lock().unwrap())
            .expect("same histogram bounds");
        out.sent += s.sent.load(Ordering::Relaxed);
        out.acked += s.acked.load(Ordering::Relaxed);
        out.errors += s.errors.load(Ordering::Relaxed);
        if out.first_error.is_none() {
            out.first_error = s.first_error.lock().unwrap().clone();
        }
    }
    (hist, out)
}

fn run_produce(args: &LoadArgs, _partitions: u32) -> BenchResult<Outcome> {
    let plans = produce_plans(args, args.acks, false)?;
    let clock = Clock::new(plans.len());
    let stats: Vec<&'static ProducerStats> = plans.iter().map(|_| ProducerStats::leak()).collect();
    let handles: Vec<_> = plans
        .into_iter()
        .zip(&stats)
        .map(|(plan, &s)| {
            let clock = clock.clone();
            std::thread::spawn(move || producer_thread(plan, s, clock))
        })
        .collect();
    let (_, measure_start) = clock.release(args.warmup_s, duration_of(args));
    let progress = progress_producers(stats.clone());
    let joined = join_all(handles);
    progress.stop();
    joined?;
    let (hist, mut out) = merge_producers(&stats);
    let measured: u64 = stats
        .iter()
        .map(|s| s.acked_measured.load(Ordering::Relaxed))
        .sum();
    let last = stats
        .iter()
        .map(|s| s.last_measured_ack_ns.load(Ordering::Relaxed))
        .max()
        .unwrap_or(0);
    out.records = measured;
    out.bytes = measured * args.message_size as u64;
    out.elapsed_s = last.saturating_sub(measure_start) as f64 / 1e9;
    out.latency = Some(hist);
    Ok(out)
}

/// `consume --produce-first`: fills the topic, untimed.
fn preload(args: &LoadArgs, messages: u64) -> BenchResult<()> {
    let mut a = args.clone();
    a.messages = Some(messages);
    a.duration_s = None;
    a.rate = None;
    a.warmup_s = 0.0;
    let out = run_produce(&a, args.partitions)?;
    if let Some(e) = out.first_error {
        return Err(format!(
            "--produce-first: {} messages failed: {e}",
            out.errors
        ));
    }
    eprintln!(
        "ringmq-bench: produced {} messages first ({:.0} msg/s)",
        out.records,
        out.msgs_per_sec()
    );
    Ok(())
}

/// Per partition the earliest and the latest offset, and how many records
/// lie between them in all.
fn log_span(
    client: &Client,
    topic: &str,
    partitions: u32,
) -> BenchResult<(Vec<i64>, Vec<i64>, u64)> {
    let offsets = |ts: i64| -> BenchResult<Vec<i64>> {
        let queries: Vec<(u32, i64)> = (0..partitions).map(|p| (p, ts)).collect();
        Ok(client
            .list_offsets(topic, &queries)
            .map_err(|e| format!("list offsets of {topic}: {e}"))?
            .into_iter()
            .map(|r| r.offset)
            .collect())
    };
    let earliest = offsets(LIST_OFFSETS_EARLIEST)?;
    let latest = offsets(LIST_OFFSETS_LATEST)?;
    let available = earliest
        .iter()
        .zip(&latest)
        .map(|(e, l)| (l - e).max(0) as u64)
        .sum();
    Ok((earliest, latest, available))
}

/// The partitions of consumer `k` of `n`.
fn partitions_of(k: usize, n: usize, partitions: u32) -> Vec<u32> {
    (0..partitions).filter(|p| *p as usize % n == k).collect()
}

/// When consumers stop.
struct ConsumeStop {
    /// Stop once this many records were consumed in total (all consumers).
    total: AtomicU64,
    /// For `consume`: each consumer also stops once its partitions reach
    /// these end offsets (the log end when it started).
    ends: Option<Vec<i64>>,
    /// e2e: the producers are done (then `total` is final).
    producers_done: AtomicBool,
    /// Everything consumed so far, all consumers.
    consumed: AtomicU64,
}

struct ConsumePlan {
    broker: String,
    topic: String,
    partitions: Vec<u32>,
    from: StartFrom,
    /// e2e: read send stamps.
    stamped: bool,
    check_crcs: bool,
}

fn consumer_thread(
    plan: ConsumePlan,
    stats: &'static ConsumerStats,
    stop: Arc<ConsumeStop>,
    clock: Arc<Clock>,
) -> BenchResult<()> {
    let setup = (|| {
        let client = Client::connect(client_config(&plan.broker, 4))?;
        let config = ConsumerConfig {
            check_crcs: plan.check_crcs,
            ..ConsumerConfig::default()
        };
        let mut consumer = Consumer::new(client, config);
        consumer.assign(&plan.topic, Some(plan.partitions.clone()), plan.from)?;
        Ok::<_, ClientError>(consumer)
    })();
    let (start, measure_start, end) = clock.arrive();
    let mut consumer = setup.map_err(|e| format!("consumer set-up: {e}"))?;
    wait_until(start);
    if plan.partitions.is_empty() {
        return Ok(());
    }
    let mut idle_since: Option<u64> = None;
    loop {
        let now = now_ns();
        let consumed = stop.consumed.load(Ordering::Relaxed);
        let total = stop.total.load(Ordering::Relaxed);
        // e2e consumers outlive the producers' end: they stop through
        // `producers_done` once everything acknowledged has arrived.
        if now >= end && !plan.stamped {
            break;
        }
        if (stop.ends.is_some() || stop.producers_done.load(Ordering::Relaxed)) && consumed >= total
        {
            break;
        }
        if let Some(ends) = &stop.ends {
            let done = plan.partitions.iter().all(|&p| {
                consumer
                    .position(&plan.topic, p)
                    .is_some_and(|pos| pos >= ends[p as usize])
            });
            if done {
                break;
            }
        }
        let batches = consumer
            .poll_batches(Duration::from_millis(100))
            .map_err(|e| format!("consumer poll: {e}"))?;
        let received = now_ns();
        let polled: usize = batches.iter().map(|b| b.len()).sum();
        if polled == 0 {
            // e2e: give up on messages that never arrive after the
            // producers finished (reported as not consumed).
            if stop.producers_done.load(Ordering::Relaxed) {
                let since = *idle_since.get_or_insert(received);
                if received - since > 10_000_000_000 {
                    break;
                }
            }
            continue;
        }
        idle_since = None;
        // `consume`: count no more than the target over all consumers (a
        // fetch may overshoot it).
        let take = if stop.ends.is_some() {
            let before = stop.consumed.fetch_add(polled as u64, Ordering::Relaxed);
            let total = stop.total.load(Ordering::Relaxed);
            (total.saturating_sub(before) as usize).min(polled)
        } else {
            stop.consumed.fetch_add(polled as u64, Ordering::Relaxed);
            polled
        };
        let mut bytes = 0u64;
        let mut measured = 0u64;
        let mut measured_bytes = 0u64;
        {
            let mut hist = plan
                .stamped
                .then(|| stats.hist.lock().unwrap_or_else(|e| e.into_inner()));
            let records = batches.iter().flat_map(|b| b.iter()).take(take);
            for r in records {
                let size =
                    r.value.map_or(0, <[u8]>::len) as u64 + r.key.map_or(0, <[u8]>::len) as u64;
                bytes += size;
                match (&mut hist, r.value) {
                    (Some(hist), Some(v)) if v.len() >= 8 => {
                        let sent = u64::from_le_bytes(v[..8].try_into().expect("8 bytes"));
                        if sent >= measure_start {
                            record_ns(hist, received.saturating_sub(sent));
                            measured += 1;
                            measured_bytes += size;
                        }
                    }
                    (Some(_), _) => {}
                    (None, _) => {
                        if received >= measure_start {
                            measured += 1;
                            measured_bytes += size;
                        }
                    }
                }
            }
        }
        let n = take as u64;
        stats.records.fetch_add(n, Ordering::Relaxed);
        stats.bytes.fetch_add(bytes, Ordering::Relaxed);
        if measured > 0 {
            stats.measured.fetch_add(measured, Ordering::Relaxed);
            stats
                .measured_bytes
                .fetch_add(measured_bytes, Ordering::Relaxed);
            stats
                .last_measured_ns
                .fetch_max(received, Ordering::Relaxed);
        }
    }
    Ok(())
}

fn spawn_consumers(
    args: &LoadArgs,
    partitions: u32,
    from: StartFrom,
    stamped: bool,
    stop: &Arc<ConsumeStop>,
    clock: &Arc<Clock>,
) -> (
    Vec<&'static ConsumerStats>,
    Vec<std::thread::JoinHandle<BenchResult<()>>>,
) {
    let n = args.consumers;
    let stats: Vec<&'static ConsumerStats> = (0..n).map(|_| ConsumerStats::leak()).collect();
    let handles = (0..n)
        .map(|k| {
            let plan = ConsumePlan {
                broker: args.broker.clone(),
                topic: args.topic.clone(),
                partitions: partitions_of(k, n, partitions),
                from,
                stamped,
                check_crcs: args.check_crcs,
            };
            let (s, stop, clock) = (stats[k], stop.clone(), clock.clone());
            std::thread::spawn(move || consumer_thread(plan, s, stop, clock))
        })
        .collect();
    (stats, handles)
}

fn merge_consumers(stats: &[&'static ConsumerStats], measure_start: u64, out: &mut Outcome) {
    let mut hist = new_histogram();
    let mut last = 0;
    for s in stats {
        hist.add(&*s.hist.lock().unwrap())
            .expect("same histogram bounds");
        out.consumed += s.records.load(Ordering::Relaxed);
        out.records += s.measured.load(Ordering::Relaxed);
        out.bytes += s.measured_bytes.load(Ordering::Relaxed);
        last = last.max(s.last_measured_ns.load(Ordering::Relaxed));
    }
    out.elapsed_s = last.saturating_sub(measure_start) as f64 / 1e9;
    out.latency = Some(hist);
}

fn run_consume(client: &Client, args: &LoadArgs, partitions: u32) -> BenchResult<Outcome> {
    if args.consumers > partitions as usize {
        eprintln!(
            "ringmq-bench: {} consumers for {partitions} partitions: {} will be idle",
            args.consumers,
            args.consumers - partitions as usize
        );
    }
    let (_, latest, available) = log_span(client, &args.topic, partitions)?;
    let target = args.messages.unwrap_or(available).min(available);
    if args.messages.is_some_and(|m| m > available) {
        eprintln!(
            "ringmq-bench: the topic holds only {available} messages; reading those (use --produce-first to fill it)"
        );
    }
    let stop = Arc::new(ConsumeStop {
        total: AtomicU64::new(target),
        ends: Some(latest),
        producers_done: AtomicBool::new(false),
        consumed: AtomicU64::new(0),
    });
    let clock = Clock::new(args.consumers);
    let (stats, handles) =
        spawn_consumers(args, partitions, StartFrom::Earliest, false, &stop, &clock);
    let duration = args.duration_s;
    let (_, measure_start) = clock.release(args.warmup_s, duration);
    let progress = {
        let stats = stats.clone();
        ProgressLine::start(move |elapsed| {
            let n: u64 = stats
                .iter()
                .map(|s| s.records.load(Ordering::Relaxed))
                .sum();
            format!("[{:>4.0}s] consumed {n} of {target}", elapsed.as_secs_f64())
        })
    };
    let joined = join_all(handles);
    progress.stop();
    joined?;
    let mut out = Outcome::default();
    merge_consumers(&stats, measure_start, &mut out);
    out.latency = None;
    Ok(out)
}

fn run_e2e(args: &LoadArgs, partitions: u32) -> BenchResult<Outcome> {
    let plans = produce_plans(args, args.acks, true)?;
    let stop = Arc::new(ConsumeStop {
        total: AtomicU64::new(u64::MAX),
        ends: None,
        producers_done: AtomicBool::new(false),
        consumed: AtomicU64::new(0),
    });
    let clock = Clock::new(plans.len() + args.consumers);
    let (cstats, chandles) =
        spawn_consumers(args, partitions, StartFrom::Latest, true, &stop, &clock);
    let pstats: Vec<&'static ProducerStats> = plans.iter().map(|_| ProducerStats::leak()).collect();
    let phandles: Vec<_> = plans
        .into_iter()
        .zip(&pstats)
        .map(|(plan, &s)| {
            let clock = clock.clone();
            std::thread::spawn(move || producer_thread(plan, s, clock))
        })
        .collect();
    let duration = duration_of(args);
    let (_, measure_start) = clock.release(args.warmup_s, duration);
    let progress = {
        let (pstats, cstats) = (pstats.clone(), cstats.clone());
        ProgressLine::start(move |elapsed| {
            let sent: u64 = pstats.iter().map(|s| s.sent.load(Ordering::Relaxed)).sum();
            let acked: u64 = pstats.iter().map(|s| s.acked.load(Ordering::Relaxed)).sum();
            let got: u64 = cstats
                .iter()
                .map(|s| s.records.load(Ordering::Relaxed))
                .sum();
            format!(
                "[{:>4.0}s] sent {sent}  acked {acked}  consumed {got}",
                elapsed.as_secs_f64()
            )
        })
    };
    let produced = join_all(phandles);
    let (phist, mut out) = merge_producers(&pstats);
    // Only acknowledged messages are sure to arrive.
    stop.total.store(out.acked, Ordering::SeqCst);
    stop.producers_done.store(true, Ordering::SeqCst);
    let consumed = join_all(chandles);
    progress.stop();
    produced?;
    consumed?;
    merge_consumers(&cstats, measure_start, &mut out);
    out.produce_latency = Some(phist);
    out.shortfall = out.acked.saturating_sub(out.consumed);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up() {
        for (total, n) in [(10u64, 3usize), (2000, 1), (7, 8), (0, 2)] {
            let sum: u64 = (0..n).map(|k| share(total, n, k)).sum();
            assert_eq!(sum, total);
        }
    }

    #[test]
    fn consumers_split_partitions() {
        assert_eq!(partitions_of(0, 2, 5), vec![0, 2, 4]);
        assert_eq!(partitions_of(1, 2, 5), vec![1, 3]);
        assert!(partitions_of(3, 4, 2).is_empty());
    }

    #[test]
    fn payload_has_the_size_and_compresses() {
        let p = payload_template(1000);
        assert_eq!(p.len(), 1000);
        assert_eq!(payload_template(3).len(), 3);
        assert_eq!(payload_template(1000), p, "deterministic");
    }
}
