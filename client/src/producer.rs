//! The producer: a record accumulator keyed by (topic, partition) and one
//! background sender thread.
//!
//! * `send*` encodes the record straight into its partition's open
//!   [`BatchBuilder`] (no per-record allocation beyond the builder's buffer,
//!   plus a oneshot when the caller wants a result).
//! * `send_many*` queues many records of one topic under one lock, with one
//!   topic lookup and at most one clock read, and reports them per *range*:
//!   a run of the call's records that landed in one batch completes with one
//!   callback (first offset + count), not one callback per record. This is
//!   the cheap path for high-rate producers (the bench uses it).
//! * A batch is *ready* when it reaches `batch_bytes`, has lingered
//!   `linger_ms`, or a flush/close asks for it. The sender thread takes ready
//!   batches, finishes them (compression + CRC, off the accumulator lock),
//!   groups them by owning shard into produce requests of at most
//!   `max_request_bytes`, and pipelines them on that shard's connection.
//!
//! Ordering: a partition belongs to one shard and the pool holds one
//! connection per shard endpoint, and the broker appends a connection's
//! requests in arrival order; the single sender thread writes a partition's
//! batches in accumulation order, so per-partition order holds with many
//! requests in flight. If metadata moves a partition to another endpoint
//! while batches are in flight on the old one, the sender holds the
//! partition back until those complete: never two connections at once.
//!
//! Retries: produce is NOT retried. A retried batch could land after a later
//! batch of the same partition that was already in flight, which would
//! reorder the partition. A failed batch fails its records (their futures or
//! callbacks get the error); a retriable error (`not_owner`...) also drops
//! the topic's cached metadata so the next batches route afresh.
//!
//! Back-pressure: records hold `record_size_upper_bound_bytes` of the
//! `buffer_bytes` budget from `send` until their batch completes; `send`
//! blocks while the budget is spent, at most `max_block_ms`. Requests in
//! flight per connection are bounded by the connection, which blocks the
//! sender thread when full, so the budget fills and senders block.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ringmq_wire::batch::builder::{record_size_upper_bound_bytes, HeaderRef};
use ringmq_wire::batch::{BatchBuilder, Compression, HEADER_SIZE};
use ringmq_wire::envelope::{
    Acks, PayloadRange, ProducePartition, ProducePartitionResult, ProduceRequest, ProduceTopic,
    RequestBody, ResponseBody,
};
use ringmq_wire::error::ErrorCode;
use ringmq_wire::murmur2;

use crate::cluster::Cluster;
use crate::connection::ReplyResult;
use crate::error::{ClientError, Result};
use crate::{oneshot, Client, ClientConfig};
use rustc_hash::FxHashMap;

/// Spare batch builders kept for reuse (their buffers and compression
/// scratch), at most this many.
const MAX_SPARE_BUILDERS: usize = 4;
/// Buffers of acknowledged uncompressed batches kept to carry new batches:
/// without them every batch is written into freshly allocated memory, which
/// the allocator often gets from the kernel anew (page faults and zeroing
/// cost the client more than encoding). At most this many bytes of them.
const MAX_SPARE_BUFFER_BYTES: usize = 16 << 20;

/// How many spare builders and spare buffers (each) the producer keeps:
/// memory held outside the buffer budget, so at most 1/8 of it (and
/// `MAX_SPARE_BUFFER_BYTES`), but at least one of each, or nothing would be
/// reused at all.
fn spare_limit(config: &ProducerConfig) -> usize {
    let bytes = MAX_SPARE_BUFFER_BYTES.min(config.buffer_bytes / 8);
    (bytes / config.batch_bytes).clamp(1, 16)
}

#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// Durability to wait for. `Acks::None`: no response; results carry
    /// offset -1 once the request is written to the socket.
    pub acks: Acks,
    /// How long a batch may wait for more records before it is sent.
    pub linger_ms: u64,
    /// Largest batch of one partition (uncompressed size).
    pub batch_bytes: usize,
    /// Largest produce request (sum of its batches).
    pub max_request_bytes: usize,
    pub compression: Compression,
    /// Bytes of records buffered (queued or in flight) before `send` blocks.
    pub buffer_bytes: usize,
    /// Longest `send` blocks for buffer space (or metadata) before failing.
    pub max_block_ms: u64,
    /// Produce requests in flight per connection (used by
    /// [`Producer::connect`]; a producer built on an existing [`Client`]
    /// shares that client's connections and their bound).
    pub max_in_flight_per_connection: usize,
    /// How long the broker may take (sent in the request) and how long the
    /// client waits for an answer (with [`Producer::connect`]).
    pub request_timeout_ms: u64,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            acks: Acks::Fsync,
            linger_ms: 5,
            batch_bytes: 1024 * 1024,
            max_request_bytes: 8 * 1024 * 1024,
            compression: Compression::None,
            buffer_bytes: 64 * 1024 * 1024,
            max_block_ms: 60_000,
            max_in_flight_per_connection: 16,
            request_timeout_ms: 30_000,
        }
    }
}

impl ProducerConfig {
    fn validate(&self) -> Result<()> {
        let invalid = |m: String| Err(ClientError::InvalidArgument(m));
        if self.batch_bytes <= HEADER_SIZE {
            return invalid(format!(
                "batch_bytes {} must exceed the {HEADER_SIZE}-byte batch header",
                self.batch_bytes
            ));
        }
        if self.max_request_bytes < self.batch_bytes {
            return invalid(format!(
                "max_request_bytes {} must be at least batch_bytes {}",
                self.max_request_bytes, self.batch_bytes
            ));
        }
        if self.buffer_bytes < self.batch_bytes {
            return invalid(format!(
                "buffer_bytes {} must be at least batch_bytes {}",
                self.buffer_bytes, self.batch_bytes
            ));
        }
        if self.max_in_flight_per_connection == 0 {
            return invalid("max_in_flight_per_connection must be at least 1".into());
        }
        Ok(())
    }
}

/// One record to send.
#[derive(Debug, Clone, Default)]
pub struct ProducerRecord {
    pub topic: String,
    /// `None`: by key (murmur2, Kafka-compatible), else sticky.
    pub partition: Option<u32>,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Bytes)>,
    /// `None`: now.
    pub timestamp_ms: Option<i64>,
}

impl ProducerRecord {
    pub fn new(topic: impl Into<String>, value: impl Into<Bytes>) -> ProducerRecord {
        ProducerRecord {
            topic: topic.into(),
            value: Some(value.into()),
            ..ProducerRecord::default()
        }
    }

    /// A record with a null value (a tombstone on compacted topics).
    pub fn tombstone(topic: impl Into<String>, key: impl Into<Bytes>) -> ProducerRecord {
        ProducerRecord {
            topic: topic.into(),
            key: Some(key.into()),
            ..ProducerRecord::default()
        }
    }

    pub fn with_key(mut self, key: impl Into<Bytes>) -> ProducerRecord {
        self.key = Some(key.into());
        self
    }

    pub fn with_partition(mut self, partition: u32) -> ProducerRecord {
        self.partition = Some(partition);
        self
    }

    pub fn with_header(
        mut self,
        key: impl Into<String>,
        value: impl Into<Bytes>,
    ) -> ProducerRecord {
        self.headers.push((key.into(), value.into()));
        self
    }

    pub fn with_timestamp_ms(mut self, timestamp_ms: i64) -> ProducerRecord {
        self.timestamp_ms = Some(timestamp_ms);
        self
    }

    /// A borrowed view for [`Producer::send_many`] (the topic is given to
    /// that call once).
    pub fn as_record_ref(&self) -> RecordRef<'_> {
        RecordRef {
            partition: self.partition,
            key: self.key.as_deref(),
            value: self.value.as_deref(),
            headers: &self.headers,
            timestamp_ms: self.timestamp_ms,
        }
    }
}

/// One record for [`Producer::send_many`], borrowed: the producer copies
/// key, value and headers into its batch while queueing, so the caller can
/// reuse its buffers as soon as the call returns.
#[derive(Debug, Clone, Copy, Default)]
pub struct RecordRef<'a> {
    /// `None`: by key (murmur2, Kafka-compatible), else sticky.
    pub partition: Option<u32>,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: &'a [(String, Bytes)],
    /// `None`: the time of the `send_many` call (read once per call).
    pub timestamp_ms: Option<i64>,
}

impl<'a> RecordRef<'a> {
    pub fn new(value: &'a [u8]) -> RecordRef<'a> {
        RecordRef {
            value: Some(value),
            ..RecordRef::default()
        }
    }

    pub fn with_key(mut self, key: &'a [u8]) -> RecordRef<'a> {
        self.key = Some(key);
        self
    }

    pub fn with_partition(mut self, partition: u32) -> RecordRef<'a> {
        self.partition = Some(partition);
        self
    }

    pub fn with_timestamp_ms(mut self, timestamp_ms: i64) -> RecordRef<'a> {
        self.timestamp_ms = Some(timestamp_ms);
        self
    }
}

/// Where an acknowledged record landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMetadata {
    pub topic: String,
    pub partition: u32,
    /// Batch base offset + index in the batch; -1 with `Acks::None`.
    pub offset: i64,
    /// The record's timestamp (the broker's, for log-append-time topics).
    pub timestamp_ms: i64,
}

type SendResult = Result<RecordMetadata>;
type SendCallback = Box<dyn FnOnce(SendResult) + Send + 'static>;
type RangeCallback = Arc<dyn Fn(SentRange) + Send + Sync + 'static>;

/// The outcome of a run of consecutive records of one `send_many` call:
/// records `indices` (positions in the call, in the order given) went into
/// one batch of `partition`, and succeeded or failed together.
#[derive(Debug, Clone)]
pub struct SentRange {
    pub topic: Arc<str>,
    /// `None` for records that failed before a partition was chosen.
    pub partition: Option<u32>,
    pub indices: Range<usize>,
    pub result: Result<RangeAck>,
}

/// Where an acknowledged range landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeAck {
    /// Offset of the range's first record; the others follow one by one.
    /// -1 with `Acks::None`.
    pub base_offset: i64,
    /// The broker's log-append time for log-append-time topics, else -1
    /// (the records keep the timestamps they were sent with).
    pub log_append_time_ms: i64,
}

impl SentRange {
    /// The offset of record `index` of the call, if it is in this range
    /// and was acknowledged with offsets.
    pub fn offset_of(&self, index: usize) -> Option<i64> {
        let ack = self.result.as_ref().ok()?;
        if !self.indices.contains(&index) || ack.base_offset < 0 {
            return None;
        }
        Some(ack.base_offset + (index - self.indices.start) as i64)
    }
}

/// Where one record of a `send_many` call landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordPosition {
    pub partition: u32,
    /// -1 with `Acks::None`.
    pub offset: i64,
}

/// Every record's outcome of one [`Producer::send_many`] call.
#[derive(Debug, Clone)]
pub struct SendManyResult {
    /// Sorted by `indices.start`; together they cover `0..len` once.
    ranges: Vec<SentRange>,
    len: usize,
}

impl SendManyResult {
    /// Records in the call.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The ranges, in the order of the call's records.
    pub fn ranges(&self) -> &[SentRange] {
        &self.ranges
    }

    /// Each record's outcome, in the order the records were given.
    pub fn results(&self) -> impl Iterator<Item = Result<RecordPosition>> + '_ {
        self.ranges.iter().flat_map(|range| {
            range.indices.clone().map(move |index| match &range.result {
                Ok(ack) => Ok(RecordPosition {
                    partition: range
                        .partition
                        .expect("acknowledged ranges have a partition"),
                    offset: if ack.base_offset >= 0 {
                        ack.base_offset + (index - range.indices.start) as i64
                    } else {
                        -1
                    },
                }),
                Err(e) => Err(e.clone()),
            })
        })
    }

    /// The first failure, if any record failed.
    pub fn first_error(&self) -> Option<&ClientError> {
        self.ranges.iter().find_map(|r| r.result.as_ref().err())
    }
}

/// The eventual [`SendManyResult`] of [`Producer::send_many`]: `.wait()`
/// blocks, `.await` works in any executor.
pub struct SendManyFuture {
    rx: oneshot::Receiver<SendManyResult>,
}

impl SendManyFuture {
    pub fn is_ready(&self) -> bool {
        self.rx.is_ready()
    }

    pub fn wait(self) -> Result<SendManyResult> {
        self.rx.wait().map_err(|_| ClientError::Closed("producer"))
    }
}

impl Future for SendManyFuture {
    type Output = Result<SendManyResult>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.map_err(|_| ClientError::Closed("producer")))
    }
}

fn lock_gather(gather: &Mutex<Gather>) -> MutexGuard<'_, Gather> {
    gather.lock().unwrap_or_else(|e| e.into_inner())
}

/// Gathers the ranges of one `send_many` call until they cover it.
struct Gather {
    ranges: Vec<SentRange>,
    covered: usize,
    /// Records in the call; known once queueing returns.
    expected: Option<usize>,
    tx: Option<oneshot::Sender<SendManyResult>>,
}

impl Gather {
    fn finish_if_complete(&mut self) {
        let Some(expected) = self.expected else {
            return;
        };
        assert!(self.covered <= expected, "a record was reported twice");
        if self.covered == expected {
            if let Some(tx) = self.tx.take() {
                let mut ranges = std::mem::take(&mut self.ranges);
                ranges.sort_unstable_by_key(|r| r.indices.start);
                tx.send(SendManyResult {
                    ranges,
                    len: expected,
                });
            }
        }
    }
}

/// The eventual result of [`Producer::send`]: `.wait()` blocks, `.await`
/// works in any executor.
pub struct SendFuture {
    state: SendFutureState,
}

enum SendFutureState {
    Done(Option<SendResult>),
    Pending(oneshot::Receiver<SendResult>),
}

impl SendFuture {
    /// Whether `wait` would return without blocking.
    pub fn is_ready(&self) -> bool {
        match &self.state {
            SendFutureState::Done(_) => true,
            SendFutureState::Pending(rx) => rx.is_ready(),
        }
    }

    pub fn wait(self) -> SendResult {
        match self.state {
            SendFutureState::Done(result) => result.expect("SendFuture polled after completion"),
            SendFutureState::Pending(rx) => {
                rx.wait().unwrap_or(Err(ClientError::Closed("producer")))
            }
        }
    }
}

impl Future for SendFuture {
    type Output = SendResult;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<SendResult> {
        match &mut self.state {
            SendFutureState::Done(result) => {
                Poll::Ready(result.take().expect("SendFuture polled after completion"))
            }
            SendFutureState::Pending(rx) => Pin::new(rx)
                .poll(cx)
                .map(|r| r.unwrap_or(Err(ClientError::Closed("producer")))),
        }
    }
}

/// Who hears about the outcome of the records a [`RecordSink`] covers.
enum Sink {
    /// One record, `send`.
    Future(oneshot::Sender<SendResult>),
    /// One record, `send_with_callback`.
    Callback(SendCallback),
    /// A run of a `send_many` call, starting at record `first` of the call.
    Range {
        callback: RangeCallback,
        first: usize,
    },
}

struct RecordSink {
    /// Index of the (first) record in its batch.
    index: u32,
    /// Records covered: 1 for the per-record sinks, the run's length for
    /// `Sink::Range`.
    count: u32,
    timestamp_ms: i64,
    sink: Sink,
}

/// A batch being filled, or sealed and waiting to ship, or in flight.
struct Batch {
    id: u64,
    builder: BatchBuilder,
    created: Instant,
    record_count: u32,
    /// Buffer budget held until the batch completes.
    reserved_bytes: usize,
    /// Only records whose sender wants a result (none for one-way sends).
    sinks: Vec<RecordSink>,
}

#[derive(Default)]
struct PartitionQueue {
    open: Option<Batch>,
    /// Full batches, oldest first.
    sealed: VecDeque<Batch>,
    /// Batches of this partition in flight, and the endpoint carrying them.
    in_flight_batches: u32,
    in_flight_endpoint: Option<Arc<str>>,
}

impl PartitionQueue {
    fn is_idle(&self) -> bool {
        self.open.is_none() && self.sealed.is_empty()
    }
}

struct TopicState {
    name: Arc<str>,
    partitions: Vec<PartitionQueue>,
    /// The sticky partition for keyless records and the batch it fills.
    sticky: Option<(u32, u64)>,
}

/// Index of a topic in [`Accumulator::topics`]; stable for the producer's
/// life (topics are never removed), so in-flight batches carry it instead
/// of looking the name up again.
type TopicId = usize;

struct Accumulator {
    topics: Vec<TopicState>,
    topic_ids: FxHashMap<Arc<str>, TopicId>,
    /// The topic of the last lookup: one string compare instead of a hash
    /// lookup when an application sends to one topic at a time.
    last_topic: Option<TopicId>,
    buffered_bytes: usize,
    next_batch_id: u64,
    /// Batches created and not yet completed: `flush` waits on these.
    unfinished: BTreeSet<u64>,
    /// Open batches with an id up to this ship regardless of linger.
    flush_up_to: u64,
    closed: bool,
    rng: u64,
    /// Builders of shipped batches, reused by new ones (bounded).
    spare_builders: Vec<BatchBuilder>,
    /// Buffers of completed batches, recycled into builders (bounded).
    spare_buffers: Vec<Vec<u8>>,
}

impl Accumulator {
    fn new(rng: u64) -> Accumulator {
        Accumulator {
            topics: Vec::new(),
            topic_ids: FxHashMap::default(),
            last_topic: None,
            buffered_bytes: 0,
            next_batch_id: 1,
            unfinished: BTreeSet::new(),
            flush_up_to: 0,
            closed: false,
            rng,
            spare_builders: Vec::new(),
            spare_buffers: Vec::new(),
        }
    }

    fn find_topic(&mut self, topic: &str) -> Option<TopicId> {
        if let Some(id) = self.last_topic {
            if *self.topics[id].name == *topic {
                return Some(id);
            }
        }
        let id = *self.topic_ids.get(topic)?;
        self.last_topic = Some(id);
        Some(id)
    }

    /// Registers `topic` with `partition_count` partitions (or finds it;
    /// partitions only grow, queues that exist are kept).
    fn register_topic(&mut self, topic: &str, partition_count: u32) -> TopicId {
        let id = match self.find_topic(topic) {
            Some(id) => id,
            None => {
                let name: Arc<str> = Arc::from(topic);
                let id = self.topics.len();
                self.topics.push(TopicState {
                    name: name.clone(),
                    partitions: Vec::new(),
                    sticky: None,
                });
                self.topic_ids.insert(name, id);
                id
            }
        };
        let state = &mut self.topics[id];
        while state.partitions.len() < partition_count as usize {
            state.partitions.push(PartitionQueue::default());
        }
        self.last_topic = Some(id);
        id
    }
}

struct Shared {
    config: ProducerConfig,
    cluster: Arc<Cluster>,
    acc: Mutex<Accumulator>,
    /// Wakes the sender: a batch sealed/created, a flush, a completion.
    wake_sender: Condvar,
    /// Wakes `send` (buffer space) and `flush` (batches completed).
    progress: Condvar,
}

/// A thread-safe producer. Share it with an `Arc`; `close` or drop flushes.
pub struct Producer {
    shared: Arc<Shared>,
    sender: Mutex<Option<JoinHandle<()>>>,
}

impl Producer {
    /// Connects a dedicated client, with the producer's in-flight bound and
    /// request timeout on its connections.
    pub fn connect(client_config: ClientConfig, config: ProducerConfig) -> Result<Producer> {
        let client_config = ClientConfig {
            max_in_flight: config.max_in_flight_per_connection,
            request_timeout_ms: config.request_timeout_ms,
            ..client_config
        };
        Producer::new(Client::connect(client_config)?, config)
    }

    /// A producer over an existing client (sharing its connections).
    pub fn new(client: Client, config: ProducerConfig) -> Result<Producer> {
        config.validate()?;
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
        let shared = Arc::new(Shared {
            config,
            cluster: client.cluster().clone(),
            acc: Mutex::new(Accumulator::new(seed)),
            wake_sender: Condvar::new(),
            progress: Condvar::new(),
        });
        let sender_shared = shared.clone();
        let handle = std::thread::Builder::new()
            .name("ringmq-producer".into())
            .spawn(move || sender_loop(&sender_shared))
            .map_err(|e| ClientError::Io {
                endpoint: String::new(),
                message: format!("cannot start the producer thread: {e}"),
            })?;
        Ok(Producer {
            shared,
            sender: Mutex::new(Some(handle)),
        })
    }

    pub fn config(&self) -> &ProducerConfig {
        &self.shared.config
    }

    /// Queues a record; the future resolves when it is acknowledged (or
    /// failed). Blocks only while the buffer is full (`max_block_ms`).
    pub fn send(&self, record: ProducerRecord) -> SendFuture {
        let (tx, rx) = oneshot::channel();
        match self.shared.append(
            &record.topic,
            record.as_record_ref(),
            &mut Some(Sink::Future(tx)),
        ) {
            Ok(()) => SendFuture {
                state: SendFutureState::Pending(rx),
            },
            Err(e) => SendFuture {
                state: SendFutureState::Done(Some(Err(e))),
            },
        }
    }

    /// Queues a record; `callback` runs exactly once with its outcome, on an
    /// I/O thread (keep it short), or on this thread if queueing fails.
    pub fn send_with_callback(
        &self,
        record: ProducerRecord,
        callback: impl FnOnce(SendResult) + Send + 'static,
    ) {
        let mut sink = Some(Sink::Callback(Box::new(callback)));
        if let Err(e) = self
            .shared
            .append(&record.topic, record.as_record_ref(), &mut sink)
        {
            if let Some(Sink::Callback(callback)) = sink {
                callback(Err(e));
            }
        }
    }

    /// Queues many records of `topic` at once and reports them by range:
    /// `callback` runs once per run of consecutive records that went into
    /// the same batch (a [`SentRange`]: which records, the partition, the
    /// first offset), so a call of N records that fills one batch costs one
    /// callback, not N. Every record is covered by exactly one range; ranges
    /// may arrive in any order, on I/O threads (keep the callback short) or
    /// on this thread for records that could not be queued (bad record:
    /// that record alone; closed producer or buffer timeout: every record
    /// from there on).
    ///
    /// Cheaper than `send` per record: one lock, one topic lookup, at most
    /// one clock read (for records without a timestamp) and no allocation
    /// per record. Blocks while the buffer is full, like `send`.
    pub fn send_many_with_callback<'r>(
        &self,
        topic: &str,
        records: impl IntoIterator<Item = RecordRef<'r>>,
        callback: impl Fn(SentRange) + Send + Sync + 'static,
    ) {
        let callback: RangeCallback = Arc::new(callback);
        self.shared.append_many(topic, records, &callback);
    }

    /// Like [`Self::send_many_with_callback`], with one future for the whole
    /// call that resolves once every record is acknowledged or failed, with
    /// each record's partition and offset in the order given.
    pub fn send_many<'r>(
        &self,
        topic: &str,
        records: impl IntoIterator<Item = RecordRef<'r>>,
    ) -> SendManyFuture {
        let (tx, rx) = oneshot::channel();
        let gather = Arc::new(Mutex::new(Gather {
            ranges: Vec::new(),
            covered: 0,
            expected: None,
            tx: Some(tx),
        }));
        let sink = gather.clone();
        let callback: RangeCallback = Arc::new(move |range: SentRange| {
            let mut g = lock_gather(&sink);
            g.covered += range.indices.len();
            g.ranges.push(range);
            g.finish_if_complete();
        });
        let count = self.shared.append_many(topic, records, &callback);
        let mut g = lock_gather(&gather);
        g.expected = Some(count);
        g.finish_if_complete();
        SendManyFuture { rx }
    }

    /// Sends and waits for the acknowledgement.
    pub fn send_sync(&self, record: ProducerRecord) -> SendResult {
        self.send(record).wait()
    }

    /// Queues a record and forgets it: no result is delivered (failures are
    /// logged). Errors here are only those found before queueing.
    pub fn send_oneway(&self, record: ProducerRecord) -> Result<()> {
        self.shared
            .append(&record.topic, record.as_record_ref(), &mut None)
    }

    /// Sends everything queued now without waiting for linger, and blocks
    /// until all of it is acknowledged or failed.
    pub fn flush(&self) {
        self.shared.flush();
    }

    /// Flushes, then stops the sender thread. Later sends fail with `Closed`.
    pub fn close(&self) {
        self.shared.flush();
        self.shared.lock().closed = true;
        self.shared.wake_sender.notify_all();
        let handle = self.sender.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }

    /// Bytes of records queued or in flight right now.
    pub fn buffered_bytes(&self) -> usize {
        self.shared.lock().buffered_bytes
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.close();
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A record checked and measured outside the lock, ready to append.
struct Prepared<'r> {
    record: RecordRef<'r>,
    headers: Vec<HeaderRef<'r>>,
    size_bytes: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Accumulator> {
        self.acc.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks that `record` fits a batch; collects its headers (allocates
    /// only when it has some).
    fn prepare<'r>(&self, record: RecordRef<'r>) -> Result<Prepared<'r>> {
        let headers: Vec<HeaderRef<'r>> = record
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), Some(&v[..])))
            .collect();
        let size_bytes = record_size_upper_bound_bytes(record.key, record.value, &headers);
        if size_bytes > self.config.batch_bytes - HEADER_SIZE {
            return Err(ClientError::InvalidArgument(format!(
                "a record of up to {size_bytes} bytes does not fit in a batch of batch_bytes {}; raise ProducerConfig::batch_bytes (and the broker's frame limit) or send smaller records",
                self.config.batch_bytes
            )));
        }
        Ok(Prepared {
            record,
            headers,
            size_bytes,
        })
    }

    /// Queues one record into its partition's open batch. `sink` is taken
    /// only once the record is queued; on failure the caller still has it.
    fn append(&self, topic: &str, record: RecordRef<'_>, sink: &mut Option<Sink>) -> Result<()> {
        let prepared = self.prepare(record)?;
        let timestamp_ms = record.timestamp_ms.unwrap_or_else(now_ms);
        let (acc, topic_id) = self.lock_topic(topic)?;
        let (mut acc, reserved) = self.reserve(acc, prepared.size_bytes);
        reserved?;
        let result = self.append_locked(
            &mut acc,
            topic_id,
            &prepared,
            timestamp_ms,
            |batch, index| {
                if let Some(sink) = sink.take() {
                    batch.sinks.push(RecordSink {
                        index,
                        count: 1,
                        timestamp_ms,
                        sink,
                    });
                }
            },
        );
        match result {
            Ok(wake) => {
                drop(acc);
                if wake {
                    self.wake_sender.notify_one();
                }
                Ok(())
            }
            Err(e) => {
                acc.buffered_bytes -= prepared.size_bytes;
                Err(e)
            }
        }
    }

    /// Queues the records of one `send_many` call; returns how many there
    /// were. Every record ends up in exactly one range reported to
    /// `callback`: from `complete_batch` once its batch completes, or from
    /// here (after the lock is released) when it could not be queued.
    fn append_many<'r>(
        &self,
        topic: &str,
        records: impl IntoIterator<Item = RecordRef<'r>>,
        callback: &RangeCallback,
    ) -> usize {
        let mut records = records.into_iter();
        // Failed before queueing; reported once the lock is released, as
        // the callback may call back into the producer.
        let mut failures: Vec<(Range<usize>, ClientError)> = Vec::new();
        let mut count = 0usize;
        let name: Arc<str> = match self.lock_topic(topic) {
            Err(e) => {
                count = records.count();
                if count > 0 {
                    failures.push((0..count, e));
                }
                Arc::from(topic)
            }
            Ok((mut acc, topic_id)) => {
                let name = acc.topics[topic_id].name.clone();
                let mut call_now_ms: Option<i64> = None;
                let mut wake = false;
                for record in records.by_ref() {
                    let index = count;
                    count += 1;
                    let prepared = match self.prepare(record) {
                        Ok(p) => p,
                        Err(e) => {
                            failures.push((index..index + 1, e));
                            continue;
                        }
                    };
                    let timestamp_ms = record
                        .timestamp_ms
                        .unwrap_or_else(|| *call_now_ms.get_or_insert_with(now_ms));
                    let reserved;
                    (acc, reserved) = self.reserve(acc, prepared.size_bytes);
                    if let Err(e) = reserved {
                        // Closed or out of buffer for max_block_ms: the
                        // same would happen to every later record.
                        let rest = records.by_ref().count();
                        count += rest;
                        failures.push((index..index + 1 + rest, e));
                        break;
                    }
                    let result = self.append_locked(
                        &mut acc,
                        topic_id,
                        &prepared,
                        timestamp_ms,
                        |batch, index_in_batch| {
                            attach_range(batch, index_in_batch, index, timestamp_ms, callback)
                        },
                    );
                    match result {
                        Ok(w) => wake |= w,
                        Err(e) => {
                            acc.buffered_bytes -= prepared.size_bytes;
                            failures.push((index..index + 1, e));
                        }
                    }
                }
                drop(acc);
                if wake {
                    self.wake_sender.notify_one();
                }
                name
            }
        };
        for (indices, error) in failures {
            callback(SentRange {
                topic: name.clone(),
                partition: None,
                indices,
                result: Err(error),
            });
        }
        count
    }

    /// Appends one prepared record, whose budget is reserved, to its
    /// partition's open batch. `attach` gets the batch and the record's
    /// index in it once the record is in (before the batch can seal, so a
    /// sink always ships with its records). Returns whether to wake the
    /// sender (a new batch to linger on, or a full one).
    fn append_locked(
        &self,
        acc: &mut Accumulator,
        topic_id: TopicId,
        prepared: &Prepared<'_>,
        timestamp_ms: i64,
        attach: impl FnOnce(&mut Batch, u32),
    ) -> Result<bool> {
        let Accumulator {
            topics,
            next_batch_id,
            unfinished,
            rng,
            spare_builders,
            spare_buffers,
            ..
        } = acc;
        let topic = &mut topics[topic_id];
        let partition_count = u32::try_from(topic.partitions.len()).expect("fits");
        let (record, size_bytes) = (&prepared.record, prepared.size_bytes);
        let partition = match (record.partition, record.key) {
            (Some(p), _) if p >= partition_count => {
                return Err(ClientError::UnknownPartition {
                    topic: topic.name.to_string(),
                    partition: p,
                    partition_count,
                })
            }
            (Some(p), _) => p,
            (None, Some(key)) => murmur2::partition_for_key(key, partition_count),
            (None, None) => sticky_partition(topic, rng, size_bytes, self.config.batch_bytes),
        };
        let queue = &mut topic.partitions[partition as usize];
        let batch = open_batch(
            queue,
            next_batch_id,
            unfinished,
            Spares {
                builders: spare_builders,
                buffers: spare_buffers,
            },
            &self.config,
            size_bytes,
            timestamp_ms,
        );
        let new_batch = batch.record_count == 0;
        batch
            .builder
            .append(timestamp_ms, record.key, record.value, &prepared.headers)
            .map_err(|e| ClientError::InvalidArgument(format!("cannot encode the record: {e}")))?;
        attach(batch, batch.record_count);
        batch.record_count += 1;
        batch.reserved_bytes += size_bytes;
        let full = batch.builder.size_bytes() >= self.config.batch_bytes;
        let batch_id = batch.id;
        if full {
            let batch = queue.open.take().expect("just appended");
            queue.sealed.push_back(batch);
        }
        if record.partition.is_none() && record.key.is_none() {
            topic.sticky = Some((partition, batch_id));
        }
        // An empty open batch left behind by a failed append is harmless:
        // the sender completes it as empty.
        Ok(new_batch || full)
    }

    /// The accumulator, locked, and the id of `topic` in it (registered on
    /// first use, which fetches its metadata without the lock held).
    fn lock_topic(&self, topic: &str) -> Result<(MutexGuard<'_, Accumulator>, TopicId)> {
        if topic.is_empty() {
            return Err(ClientError::InvalidArgument(
                "the record has no topic".into(),
            ));
        }
        {
            let mut acc = self.lock();
            if let Some(id) = acc.find_topic(topic) {
                return Ok((acc, id));
            }
        }
        let count = self.cluster.topic(topic)?.partition_count();
        let mut acc = self.lock();
        let id = acc.register_topic(topic, count);
        Ok((acc, id))
    }

    /// Takes `size_bytes` of the buffer budget, waiting (lock released)
    /// while it is spent. Gives the lock back either way.
    fn reserve<'a>(
        &'a self,
        mut acc: MutexGuard<'a, Accumulator>,
        size_bytes: usize,
    ) -> (MutexGuard<'a, Accumulator>, Result<()>) {
        // Read the clock only when we have to wait: this runs per record.
        let mut deadline: Option<Instant> = None;
        loop {
            if acc.closed {
                return (acc, Err(ClientError::Closed("producer")));
            }
            // An empty buffer always admits one record, so no record can wait forever.
            if acc.buffered_bytes == 0
                || acc.buffered_bytes + size_bytes <= self.config.buffer_bytes
            {
                acc.buffered_bytes += size_bytes;
                return (acc, Ok(()));
            }
            let now = Instant::now();
            let deadline =
                *deadline.get_or_insert(now + Duration::from_millis(self.config.max_block_ms));
            if now >= deadline {
                let error = ClientError::Timeout {
                    what: format!(
                        "buffer space ({} of buffer_bytes {} in use)",
                        acc.buffered_bytes, self.config.buffer_bytes
                    ),
                    endpoint: self.cluster.config.bootstrap.clone(),
                    timeout_ms: self.config.max_block_ms,
                };
                return (acc, Err(error));
            }
            // Make sure what is buffered actually ships while we wait.
            acc.flush_up_to = acc.next_batch_id - 1;
            self.wake_sender.notify_one();
            acc = self
                .progress
                .wait_timeout(acc, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn flush(&self) {
        let mut acc = self.lock();
        let target = acc.next_batch_id - 1;
        acc.flush_up_to = acc.flush_up_to.max(target);
        self.wake_sender.notify_one();
        while acc.unfinished.first().is_some_and(|&id| id <= target) {
            acc = self.progress.wait(acc).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// The open batch of `queue` with room for `size_bytes` more, sealing a full
/// one and starting a new one as needed (on a spare builder when there is
/// one).
fn open_batch<'q>(
    queue: &'q mut PartitionQueue,
    next_batch_id: &mut u64,
    unfinished: &mut BTreeSet<u64>,
    spares: Spares<'_>,
    config: &ProducerConfig,
    size_bytes: usize,
    timestamp_ms: i64,
) -> &'q mut Batch {
    let fits = queue
        .open
        .as_ref()
        .is_some_and(|b| b.builder.size_bytes() + size_bytes <= config.batch_bytes);
    if !fits {
        if let Some(full) = queue.open.take() {
            queue.sealed.push_back(full);
        }
        let id = *next_batch_id;
        *next_batch_id += 1;
        unfinished.insert(id);
        let mut builder = match spares.builders.pop() {
            Some(mut builder) => {
                builder.reset(timestamp_ms);
                builder
            }
            // Sized up front: a batch that regrows re-copies its records.
            None => {
                BatchBuilder::with_capacity(config.compression, timestamp_ms, config.batch_bytes)
            }
        };
        if config.compression == Compression::None {
            // Carries the batch after this one (build hands this one's over).
            if let Some(buffer) = spares.buffers.pop() {
                builder.recycle_buffer(buffer);
            }
        }
        queue.open = Some(Batch {
            id,
            builder,
            created: Instant::now(),
            record_count: 0,
            reserved_bytes: 0,
            sinks: Vec::new(),
        });
    }
    queue.open.as_mut().expect("open batch ensured")
}

/// The accumulator's pools of reusable builders and batch buffers.
struct Spares<'a> {
    builders: &'a mut Vec<BatchBuilder>,
    buffers: &'a mut Vec<Vec<u8>>,
}

/// Records that record `call_index` of a `send_many` call went into
/// `batch` at `index_in_batch`: extends the call's run in this batch when
/// the record follows it, else starts a new run.
fn attach_range(
    batch: &mut Batch,
    index_in_batch: u32,
    call_index: usize,
    timestamp_ms: i64,
    callback: &RangeCallback,
) {
    if let Some(last) = batch.sinks.last_mut() {
        if let Sink::Range {
            callback: run_callback,
            first,
        } = &last.sink
        {
            let follows = last.index + last.count == index_in_batch
                && *first + last.count as usize == call_index;
            if follows && Arc::ptr_eq(run_callback, callback) {
                last.count += 1;
                return;
            }
        }
    }
    batch.sinks.push(RecordSink {
        index: index_in_batch,
        count: 1,
        timestamp_ms,
        sink: Sink::Range {
            callback: callback.clone(),
            first: call_index,
        },
    });
}

/// Kafka's sticky partitioner: keyless records fill one partition's batch;
/// once that batch is full or shipped, move to another partition at random.
fn sticky_partition(
    topic: &TopicState,
    rng: &mut u64,
    size_bytes: usize,
    batch_bytes: usize,
) -> u32 {
    let count = u32::try_from(topic.partitions.len()).expect("fits");
    assert!(count > 0, "a topic has at least one partition");
    if let Some((partition, batch_id)) = topic.sticky {
        let same_batch_has_room = topic.partitions[partition as usize]
            .open
            .as_ref()
            .is_some_and(|b| {
                b.id == batch_id && b.builder.size_bytes() + size_bytes <= batch_bytes
            });
        if same_batch_has_room {
            return partition;
        }
        if count > 1 {
            // A different partition, uniformly among the others.
            let step = 1 + (next_random(rng) % u64::from(count - 1)) as u32;
            return (partition + step) % count;
        }
        return partition;
    }
    (next_random(rng) % u64::from(count)) as u32
}

fn next_random(state: &mut u64) -> u64 {
    // xorshift64: good enough to spread partitions, no dependency.
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}

/// Batches of one partition taken by the sender.
struct Drained {
    topic_id: TopicId,
    topic: Arc<str>,
    partition: u32,
    endpoint: Arc<str>,
    batches: Vec<Batch>,
}

/// A finished batch in flight.
struct InFlight {
    id: u64,
    record_count: u32,
    reserved_bytes: usize,
    sinks: Vec<RecordSink>,
    /// The encoded batch (uncompressed only), to recycle its buffer once
    /// the connection is done with it.
    encoded: Option<Bytes>,
}

/// One partition's part of a produce request.
struct RequestPart {
    topic_id: TopicId,
    topic: Arc<str>,
    partition: u32,
    endpoint: Arc<str>,
    batches: Vec<InFlight>,
}

fn sender_loop(shared: &Arc<Shared>) {
    loop {
        let Some(drained) = wait_for_ready(shared) else {
            return;
        };
        ship(shared, drained);
    }
}

/// Blocks until some batches are ready and takes them; `None` once closed
/// and empty.
fn wait_for_ready(shared: &Shared) -> Option<Vec<Drained>> {
    let mut acc = shared.lock();
    loop {
        let now = Instant::now();
        let linger = Duration::from_millis(shared.config.linger_ms);
        let (drained, next_deadline, unrouted) =
            drain_ready(&mut acc, &shared.cluster, now, linger);
        if !drained.is_empty() {
            return Some(drained);
        }
        if !unrouted.is_empty() {
            drop(acc);
            route_or_fail(shared, &unrouted);
            acc = shared.lock();
            continue;
        }
        let idle = acc
            .topics
            .iter()
            .all(|t| t.partitions.iter().all(PartitionQueue::is_idle));
        if acc.closed && idle {
            return None;
        }
        acc = match next_deadline {
            Some(deadline) => {
                shared
                    .wake_sender
                    .wait_timeout(acc, deadline.saturating_duration_since(now))
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
            None => shared
                .wake_sender
                .wait(acc)
                .unwrap_or_else(|e| e.into_inner()),
        };
    }
}

/// Takes every ready batch whose partition can ship now. Also returns the
/// earliest linger deadline of what stays, and topics lacking metadata.
fn drain_ready(
    acc: &mut Accumulator,
    cluster: &Cluster,
    now: Instant,
    linger: Duration,
) -> (Vec<Drained>, Option<Instant>, Vec<TopicId>) {
    let mut drained = Vec::new();
    let mut next_deadline: Option<Instant> = None;
    let mut unrouted = Vec::new();
    let (closed, flush_up_to) = (acc.closed, acc.flush_up_to);
    let force = |b: &Batch| closed || b.id <= flush_up_to || b.created + linger <= now;
    for (topic_id, topic) in acc.topics.iter_mut().enumerate() {
        if topic.partitions.iter().all(PartitionQueue::is_idle) {
            continue; // no metadata lookup for topics with nothing queued
        }
        let route = cluster.cached_route(&topic.name);
        for (index, queue) in topic.partitions.iter_mut().enumerate() {
            let open_ready = queue.open.as_ref().is_some_and(force);
            if !open_ready {
                if let Some(open) = &queue.open {
                    let deadline = open.created + linger;
                    next_deadline = Some(next_deadline.map_or(deadline, |d| d.min(deadline)));
                }
            }
            if queue.sealed.is_empty() && !open_ready {
                continue;
            }
            let partition = u32::try_from(index).expect("fits");
            let Some(endpoint) = route
                .as_ref()
                .and_then(|r| cluster.cached_endpoint(r, partition))
            else {
                if !unrouted.contains(&topic_id) {
                    unrouted.push(topic_id);
                }
                continue;
            };
            let moved = queue.in_flight_batches > 0
                && queue.in_flight_endpoint.as_deref() != Some(&*endpoint);
            if moved {
                continue; // wait for the old connection's batches first
            }
            let mut batches: Vec<Batch> = queue.sealed.drain(..).collect();
            if open_ready {
                batches.push(queue.open.take().expect("open_ready"));
            }
            queue.in_flight_batches += u32::try_from(batches.len()).expect("fits");
            queue.in_flight_endpoint = Some(endpoint.clone());
            drained.push(Drained {
                topic_id,
                topic: topic.name.clone(),
                partition,
                endpoint,
                batches,
            });
        }
    }
    (drained, next_deadline, unrouted)
}

/// Fetches metadata for topics the cache lost; fails their queued batches
/// when that is impossible (the topic was deleted, the broker is gone).
fn route_or_fail(shared: &Shared, topics: &[TopicId]) {
    for &topic_id in topics {
        let name = shared.lock().topics[topic_id].name.clone();
        let Err(error) = shared.cluster.topic(&name) else {
            continue;
        };
        tracing::warn!(topic = %name, %error, "cannot route queued batches; failing them");
        let batches: Vec<(u32, Batch)> = {
            let mut acc = shared.lock();
            acc.topics[topic_id]
                .partitions
                .iter_mut()
                .enumerate()
                .flat_map(|(p, q)| {
                    let p = u32::try_from(p).expect("fits");
                    q.sealed.drain(..).chain(q.open.take()).map(move |b| (p, b))
                })
                .collect()
        };
        for (partition, batch) in batches {
            let in_flight = InFlight {
                id: batch.id,
                record_count: batch.record_count,
                reserved_bytes: batch.reserved_bytes,
                sinks: batch.sinks,
                encoded: None,
            };
            let target = BatchTarget {
                topic_id,
                topic: &name,
                partition,
                shipped: false,
            };
            complete_batch(shared, target, in_flight, Err(error.clone()));
        }
    }
}

/// Finishes the drained batches and sends them, one or more produce
/// requests per endpoint.
fn ship(shared: &Arc<Shared>, drained: Vec<Drained>) {
    let mut by_endpoint: HashMap<Arc<str>, Vec<(RequestPart, Vec<Bytes>)>> = HashMap::new();
    let mut spare_builders = Vec::new();
    for d in drained {
        let mut part = RequestPart {
            topic_id: d.topic_id,
            topic: d.topic.clone(),
            partition: d.partition,
            endpoint: d.endpoint.clone(),
            batches: Vec::with_capacity(d.batches.len()),
        };
        let target = BatchTarget {
            topic_id: d.topic_id,
            topic: &d.topic,
            partition: d.partition,
            shipped: true,
        };
        let mut encoded = Vec::with_capacity(d.batches.len());
        for mut batch in d.batches {
            let mut in_flight = InFlight {
                id: batch.id,
                record_count: batch.record_count,
                reserved_bytes: batch.reserved_bytes,
                sinks: std::mem::take(&mut batch.sinks),
                encoded: None,
            };
            if batch.record_count == 0 {
                // Left by a failed append: nothing to send.
                complete_batch(shared, target, in_flight, Ok((-1, -1)));
                continue;
            }
            match batch.builder.build() {
                Ok(bytes) => {
                    if batch.builder.compression() == Compression::None {
                        in_flight.encoded = Some(bytes.clone());
                    }
                    encoded.push(bytes);
                    part.batches.push(in_flight);
                }
                Err(e) => {
                    let err = ClientError::InvalidArgument(format!("cannot build the batch: {e}"));
                    complete_batch(shared, target, in_flight, Err(err));
                }
            }
            if spare_builders.len() < MAX_SPARE_BUILDERS.min(spare_limit(&shared.config)) {
                spare_builders.push(batch.builder);
            }
        }
        if !part.batches.is_empty() {
            by_endpoint
                .entry(d.endpoint)
                .or_default()
                .push((part, encoded));
        }
    }
    if !spare_builders.is_empty() {
        let mut acc = shared.lock();
        let room = MAX_SPARE_BUILDERS
            .min(spare_limit(&shared.config))
            .saturating_sub(acc.spare_builders.len());
        spare_builders.truncate(room);
        acc.spare_builders.append(&mut spare_builders);
    }
    for (endpoint, parts) in by_endpoint {
        for request in split_requests(parts, shared.config.max_request_bytes) {
            send_request(shared, &endpoint, request);
        }
    }
}

/// Groups partition parts into requests of at most `max_request_bytes`,
/// keeping each partition's batches in order (a partition whose batches do
/// not fit continues in the next request on the same connection).
fn split_requests(
    parts: Vec<(RequestPart, Vec<Bytes>)>,
    max_request_bytes: usize,
) -> Vec<Vec<(RequestPart, Vec<Bytes>)>> {
    let mut requests = Vec::new();
    let mut current: Vec<(RequestPart, Vec<Bytes>)> = Vec::new();
    let mut current_bytes = 0;
    for (mut part, mut encoded) in parts {
        while !encoded.is_empty() {
            let mut take = 0;
            let mut take_bytes = 0;
            while take < encoded.len()
                && current_bytes + take_bytes + encoded[take].len() <= max_request_bytes
            {
                take_bytes += encoded[take].len();
                take += 1;
            }
            if take == 0 {
                if current.is_empty() {
                    take = 1; // a lone batch larger than the limit still goes
                    take_bytes = encoded[0].len();
                } else {
                    requests.push(std::mem::take(&mut current));
                    current_bytes = 0;
                    continue;
                }
            }
            let rest_encoded = encoded.split_off(take);
            let rest_batches = part.batches.split_off(take);
            let rest = RequestPart {
                topic_id: part.topic_id,
                topic: part.topic.clone(),
                partition: part.partition,
                endpoint: part.endpoint.clone(),
                batches: rest_batches,
            };
            current.push((part, encoded));
            current_bytes += take_bytes;
            part = rest;
            encoded = rest_encoded;
        }
    }
    if !current.is_empty() {
        requests.push(current);
    }
    requests
}

fn send_request(shared: &Arc<Shared>, endpoint: &str, parts: Vec<(RequestPart, Vec<Bytes>)>) {
    let (body, payload, parts) = produce_body(&shared.config, parts);
    let connection = match shared.cluster.connection(endpoint) {
        Ok(c) => c,
        Err(e) => return complete_request(shared, parts, Err(e)),
    };
    let completer = shared.clone();
    if shared.config.acks == Acks::None {
        connection.send_without_response(body, payload, move |result| {
            let outcome = result.map(|()| None);
            complete_parts(&completer, parts, outcome);
        });
    } else {
        connection.request_with_callback(body, payload, move |result| {
            complete_request(&completer, parts, result)
        });
    }
}

/// Builds the produce envelope: per topic, per partition, a payload range
/// over that partition's concatenated batches.
fn produce_body(
    config: &ProducerConfig,
    parts: Vec<(RequestPart, Vec<Bytes>)>,
) -> (RequestBody, Vec<Bytes>, Vec<RequestPart>) {
    let mut topics: Vec<ProduceTopic> = Vec::new();
    let mut payload = Vec::new();
    let mut offset = 0usize;
    let mut out_parts = Vec::with_capacity(parts.len());
    for (part, encoded) in parts {
        let length: usize = encoded.iter().map(Bytes::len).sum();
        let range = PayloadRange {
            offset: u32::try_from(offset).expect("request under 4 GiB"),
            length: u32::try_from(length).expect("request under 4 GiB"),
        };
        offset += length;
        payload.extend(encoded);
        let entry = ProducePartition {
            partition: part.partition,
            payload: range,
        };
        match topics.iter_mut().find(|t| *t.name == *part.topic) {
            Some(t) => t.partitions.push(entry),
            None => topics.push(ProduceTopic {
                name: part.topic.to_string(),
                partitions: vec![entry],
            }),
        }
        out_parts.push(part);
    }
    let body = RequestBody::Produce(ProduceRequest {
        acks: config.acks,
        timeout_ms: u32::try_from(config.request_timeout_ms).unwrap_or(u32::MAX),
        topics,
    });
    (body, payload, out_parts)
}

/// Completes every batch of a produce request from its response.
fn complete_request(shared: &Shared, parts: Vec<RequestPart>, result: ReplyResult) {
    let outcome = result.and_then(|(response, _)| match response.body {
        ResponseBody::Produce(body) => Ok(Some(body)),
        _ => Err(shared.cluster.unexpected_body("produce")),
    });
    complete_parts(shared, parts, outcome);
}

/// `Ok(None)`: written with `Acks::None` (no offsets).
fn complete_parts(
    shared: &Shared,
    parts: Vec<RequestPart>,
    outcome: Result<Option<ringmq_wire::envelope::ProduceResponse>>,
) {
    let mut results: HashMap<(String, u32), ProducePartitionResult> = HashMap::new();
    let outcome = outcome.map(|response| {
        if let Some(response) = response {
            for topic in response.topics {
                for p in topic.partitions {
                    results.insert((topic.name.clone(), p.partition), p);
                }
            }
        }
    });
    let acked_without_offsets = outcome.is_ok() && results.is_empty();
    for part in parts {
        let partition_result: Result<(i64, i64)> = match &outcome {
            Err(e) => Err(e.clone()),
            Ok(()) if acked_without_offsets => Ok((-1, -1)),
            Ok(()) => match results.remove(&(part.topic.to_string(), part.partition)) {
                None => Err(ClientError::Protocol {
                    endpoint: part.endpoint.to_string(),
                    message: format!("produce answer lacks {}/{}", part.topic, part.partition),
                }),
                Some(r) => match r.error {
                    Some(error) => {
                        if error.code.is_retriable()
                            || error.code == ErrorCode::UnknownTopicOrPartition
                        {
                            shared.cluster.invalidate_topic(&part.topic);
                        }
                        Err(ClientError::api(
                            error,
                            format!("produce to {}/{}", part.topic, part.partition),
                        ))
                    }
                    None => Ok((r.base_offset, r.log_append_time_ms)),
                },
            },
        };
        let target = BatchTarget {
            topic_id: part.topic_id,
            topic: &part.topic,
            partition: part.partition,
            shipped: true,
        };
        let mut next_offset = partition_result.as_ref().map_or(-1, |(base, _)| *base);
        for batch in part.batches {
            let batch_result = partition_result.clone().map(|(_, append_ms)| {
                let base = next_offset;
                if next_offset >= 0 {
                    // The broker assigns a request's batches consecutive offsets.
                    next_offset += i64::from(batch.record_count);
                }
                (base, append_ms)
            });
            complete_batch(shared, target, batch, batch_result);
        }
    }
}

/// Which partition a completing batch belongs to.
#[derive(Clone, Copy)]
struct BatchTarget<'a> {
    topic_id: TopicId,
    topic: &'a Arc<str>,
    partition: u32,
    /// Whether it was taken by the sender (counted in flight); batches
    /// failed before routing were not.
    shipped: bool,
}

/// Resolves a batch's record sinks, then returns its buffer budget and wakes
/// `send`/`flush`/the sender. `result`: (base offset or -1, log append time
/// or -1).
fn complete_batch(
    shared: &Shared,
    target: BatchTarget<'_>,
    batch: InFlight,
    result: Result<(i64, i64)>,
) {
    let topic = target.topic;
    // Batches that never went out report no partition, as before.
    let partition_number = if target.shipped {
        target.partition
    } else {
        u32::MAX
    };
    for record in batch.sinks {
        let offset_of = |base: i64| {
            if base >= 0 {
                base + i64::from(record.index)
            } else {
                -1
            }
        };
        match record.sink {
            Sink::Range { callback, first } => {
                let ack = match &result {
                    Ok((base, append_ms)) => Ok(RangeAck {
                        base_offset: offset_of(*base),
                        log_append_time_ms: *append_ms,
                    }),
                    Err(e) => Err(e.clone()),
                };
                callback(SentRange {
                    topic: topic.clone(),
                    partition: Some(target.partition),
                    indices: first..first + record.count as usize,
                    result: ack,
                });
            }
            sink => {
                debug_assert_eq!(record.count, 1, "per-record sinks cover one record");
                let outcome = match &result {
                    Ok((base, append_ms)) => Ok(RecordMetadata {
                        topic: topic.to_string(),
                        partition: partition_number,
                        offset: offset_of(*base),
                        timestamp_ms: if *append_ms >= 0 {
                            *append_ms
                        } else {
                            record.timestamp_ms
                        },
                    }),
                    Err(e) => Err(e.clone()),
                };
                match sink {
                    Sink::Future(tx) => tx.send(outcome),
                    Sink::Callback(cb) => cb(outcome),
                    Sink::Range { .. } => unreachable!("matched above"),
                }
            }
        }
    }
    if let Err(e) = &result {
        tracing::debug!(topic = %topic, partition = partition_number, records = batch.record_count, error = %e, "batch failed");
    }
    // The batch's memory, if the connection no longer holds it (it may
    // still, briefly, after a fast answer: then it is simply freed).
    let buffer = batch
        .encoded
        .and_then(|bytes| bytes.try_into_mut().ok())
        .map(|mut bytes| {
            bytes.clear(); // nothing to move to the front when converting
            Vec::from(bytes)
        });
    {
        let mut acc = shared.lock();
        if let Some(buffer) = buffer {
            if acc.spare_buffers.len() < spare_limit(&shared.config) {
                acc.spare_buffers.push(buffer);
            }
        }
        assert!(
            acc.buffered_bytes >= batch.reserved_bytes,
            "buffer accounting underflow"
        );
        acc.buffered_bytes -= batch.reserved_bytes;
        let removed = acc.unfinished.remove(&batch.id);
        assert!(removed, "batch {} completed twice", batch.id);
        if target.shipped {
            let queue = acc
                .topics
                .get_mut(target.topic_id)
                .and_then(|t| t.partitions.get_mut(target.partition as usize))
                .expect("topics and partitions are never removed");
            assert!(
                queue.in_flight_batches > 0,
                "in-flight accounting underflow"
            );
            queue.in_flight_batches -= 1;
            if queue.in_flight_batches == 0 {
                queue.in_flight_endpoint = None;
            }
        }
    }
    shared.progress.notify_all();
    shared.wake_sender.notify_one();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic_state(partitions: usize) -> TopicState {
        TopicState {
            name: Arc::from("t"),
            partitions: (0..partitions).map(|_| PartitionQueue::default()).collect(),
            sticky: None,
        }
    }

    fn config(batch_bytes: usize) -> ProducerConfig {
        ProducerConfig {
            batch_bytes,
            ..ProducerConfig::default()
        }
    }

    /// Appends like `Shared::append` does, for a keyless record.
    fn append_sticky(
        topic: &mut TopicState,
        rng: &mut u64,
        next_id: &mut u64,
        unfinished: &mut BTreeSet<u64>,
        cfg: &ProducerConfig,
    ) -> u32 {
        let value = [7u8; 100];
        let size = record_size_upper_bound_bytes(None, Some(&value), &[]);
        let p = sticky_partition(topic, rng, size, cfg.batch_bytes);
        let queue = &mut topic.partitions[p as usize];
        let spares = Spares {
            builders: &mut Vec::new(),
            buffers: &mut Vec::new(),
        };
        let batch = open_batch(queue, next_id, unfinished, spares, cfg, size, 0);
        batch.builder.append(0, None, Some(&value), &[]).unwrap();
        batch.record_count += 1;
        let id = batch.id;
        topic.sticky = Some((p, id));
        p
    }

    #[test]
    fn sticky_partition_stays_until_the_batch_fills_then_moves() {
        let cfg = config(1000);
        let mut topic = topic_state(4);
        let (mut rng, mut next_id, mut unfinished) = (12345u64, 1u64, BTreeSet::new());
        let first = append_sticky(&mut topic, &mut rng, &mut next_id, &mut unfinished, &cfg);
        let mut same = 1;
        loop {
            let p = append_sticky(&mut topic, &mut rng, &mut next_id, &mut unfinished, &cfg);
            if p != first {
                break;
            }
            same += 1;
            assert!(same < 20, "never rotated");
        }
        // ~100-byte records in a 1000-byte batch with a 61-byte header.
        assert!((7..=9).contains(&same), "stayed for {same} records");
    }

    #[test]
    fn sticky_partition_moves_after_the_batch_ships() {
        let cfg = config(1 << 20);
        let mut topic = topic_state(3);
        let (mut rng, mut next_id, mut unfinished) = (99u64, 1u64, BTreeSet::new());
        let first = append_sticky(&mut topic, &mut rng, &mut next_id, &mut unfinished, &cfg);
        assert_eq!(
            append_sticky(&mut topic, &mut rng, &mut next_id, &mut unfinished, &cfg),
            first
        );
        topic.partitions[first as usize].open = None; // the sender took it
        assert_ne!(
            append_sticky(&mut topic, &mut rng, &mut next_id, &mut unfinished, &cfg),
            first
        );
    }

    #[test]
    fn sticky_partition_spreads_over_all_partitions() {
        let mut topic = topic_state(5);
        let mut rng = 7u64;
        let mut seen = [0u32; 5];
        for _ in 0..1000 {
            topic.sticky = Some((2, 0)); // a batch that no longer exists
            seen[sticky_partition(&topic, &mut rng, 10, 1000) as usize] += 1;
        }
        assert_eq!(seen[2], 0, "must move away from the shipped partition");
        for (p, n) in seen.iter().enumerate() {
            if p != 2 {
                assert!(*n > 150, "partition {p} got {n} of 1000");
            }
        }
    }

    #[test]
    fn keyed_records_follow_kafka_murmur2() {
        // Kafka's DefaultPartitioner: toPositive(murmur2(key)) % n.
        assert_eq!(
            murmur2::partition_for_key(b"foobar", 7),
            (-790332482i32 & 0x7fff_ffff) as u32 % 7
        );
    }

    fn accumulator() -> Accumulator {
        let mut acc = Accumulator::new(1);
        let id = acc.register_topic("t", 2);
        assert_eq!(id, 0);
        acc
    }

    fn push(acc: &mut Accumulator, partition: usize, cfg: &ProducerConfig, created: Instant) {
        let value = [1u8; 200];
        let size = record_size_upper_bound_bytes(None, Some(&value), &[]);
        let acc = &mut *acc;
        let queue = &mut acc.topics[0].partitions[partition];
        let batch = open_batch(
            queue,
            &mut acc.next_batch_id,
            &mut acc.unfinished,
            Spares {
                builders: &mut acc.spare_builders,
                buffers: &mut acc.spare_buffers,
            },
            cfg,
            size,
            0,
        );
        if batch.record_count == 0 {
            batch.created = created;
        }
        batch.builder.append(0, None, Some(&value), &[]).unwrap();
        batch.record_count += 1;
    }

    #[test]
    fn batches_seal_by_bytes() {
        let cfg = config(1000);
        let mut acc = accumulator();
        let now = Instant::now();
        for _ in 0..10 {
            push(&mut acc, 0, &cfg, now);
        }
        let queue = &acc.topics[0].partitions[0];
        // 61-byte header + ~4 records of ~210 bytes per 1000-byte batch.
        assert!(queue.sealed.len() >= 2, "sealed {}", queue.sealed.len());
        for b in &queue.sealed {
            assert!(b.builder.size_bytes() <= 1000);
            assert!(b.record_count >= 3);
        }
        let total: u32 = queue.sealed.iter().map(|b| b.record_count).sum::<u32>()
            + queue.open.as_ref().unwrap().record_count;
        assert_eq!(total, 10);
        assert_eq!(acc.unfinished.len(), queue.sealed.len() + 1);
    }

    #[test]
    fn open_batches_wait_for_linger_unless_flushed() {
        let cfg = config(1 << 20);
        let linger = Duration::from_millis(50);
        let mut acc = accumulator();
        let t0 = Instant::now();
        push(&mut acc, 0, &cfg, t0);
        push(&mut acc, 1, &cfg, t0 + Duration::from_millis(20));
        let cluster = test_cluster();
        // Before linger: nothing ready, next deadline is partition 0's.
        let (drained, deadline, _) =
            drain_ready(&mut acc, &cluster, t0 + Duration::from_millis(10), linger);
        assert!(drained.is_empty());
        assert_eq!(deadline, Some(t0 + linger));
        // After partition 0's linger: it is ready (but unroutable here, as
        // the test cluster has no metadata), partition 1 is not.
        let (drained, deadline, unrouted) =
            drain_ready(&mut acc, &cluster, t0 + Duration::from_millis(55), linger);
        assert!(drained.is_empty());
        assert_eq!(unrouted.len(), 1);
        assert_eq!(deadline, Some(t0 + Duration::from_millis(70)));
        // A flush makes both ready at once.
        acc.flush_up_to = acc.next_batch_id - 1;
        let (_, deadline, unrouted) =
            drain_ready(&mut acc, &cluster, t0 + Duration::from_millis(11), linger);
        assert_eq!(deadline, None);
        assert_eq!(unrouted.len(), 1);
    }

    #[test]
    fn lingered_batches_drain_in_order_with_a_route() {
        let cfg = config(1000);
        let linger = Duration::from_millis(5);
        let mut acc = accumulator();
        let t0 = Instant::now();
        for _ in 0..10 {
            push(&mut acc, 1, &cfg, t0);
        }
        let cluster = test_cluster();
        cluster.insert_test_route("t", &[0, 0], "127.0.0.1:1");
        let (drained, deadline, unrouted) =
            drain_ready(&mut acc, &cluster, t0 + Duration::from_millis(6), linger);
        assert!(unrouted.is_empty());
        assert_eq!(deadline, None);
        assert_eq!(drained.len(), 1);
        let ids: Vec<u64> = drained[0].batches.iter().map(|b| b.id).collect();
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        assert_eq!(ids, sorted, "batches must leave in creation order");
        assert_eq!(
            drained[0]
                .batches
                .iter()
                .map(|b| b.record_count)
                .sum::<u32>(),
            10
        );
        assert_eq!(
            acc.topics[0].partitions[1].in_flight_batches as usize,
            ids.len()
        );
        assert!(acc.topics[0].partitions[1].is_idle());
    }

    #[test]
    fn requests_split_by_bytes_keep_partition_order() {
        let part = |p: u32, n: usize| {
            (
                RequestPart {
                    topic_id: 0,
                    topic: Arc::from("t"),
                    partition: p,
                    endpoint: Arc::from("e"),
                    batches: (0..n)
                        .map(|i| InFlight {
                            id: u64::from(p) * 100 + i as u64,
                            record_count: 1,
                            reserved_bytes: 0,
                            sinks: Vec::new(),
                            encoded: None,
                        })
                        .collect(),
                },
                (0..n)
                    .map(|_| Bytes::from(vec![0u8; 100]))
                    .collect::<Vec<_>>(),
            )
        };
        let requests = split_requests(vec![part(0, 3), part(1, 4)], 250);
        let flat: Vec<Vec<(u32, u64)>> = requests
            .iter()
            .map(|r| {
                r.iter()
                    .flat_map(|(p, _)| p.batches.iter().map(move |b| (p.partition, b.id)))
                    .collect()
            })
            .collect();
        assert!(requests.iter().all(|r| r
            .iter()
            .map(|(_, e)| e.iter().map(Bytes::len).sum::<usize>())
            .sum::<usize>()
            <= 250));
        let all: Vec<(u32, u64)> = flat.concat();
        assert_eq!(
            all,
            vec![
                (0, 0),
                (0, 1),
                (0, 2),
                (1, 100),
                (1, 101),
                (1, 102),
                (1, 103)
            ]
        );
        assert_eq!(requests.len(), 4);
    }

    fn test_cluster() -> Cluster {
        Cluster::new(ClientConfig::new("127.0.0.1:1")).unwrap()
    }
}
