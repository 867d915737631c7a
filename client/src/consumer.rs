//! The consumer with manual assignment; [`crate::GroupConsumer`] drives one
//! of these for group-managed assignment.
//!
//! `poll` keeps one long-poll Fetch in flight per owning shard, covering all
//! assigned partitions of that shard, sent straight to the shard's endpoint.
//! As soon as a shard's answer is decoded, the next fetch for that shard is
//! sent (from the advanced positions) before the records go back to the
//! application, so the broker works on the next batch while the app
//! processes this one. At most one fetch per shard is in flight, so the
//! completion queue is bounded by the shard count.
//!
//! Positions advance only as records are handed out. A fetch answer for a
//! partition whose position changed meanwhile (`seek`, re-`assign`) is
//! dropped. `OffsetOutOfRange` pauses the partition and is returned from
//! `poll`; nothing resets silently: `seek` to go on.
//!
//! A group consumer sets a fetch fence ([`Consumer::set_fence`]): the
//! broker then refuses fetches once the member's generation is over. An
//! answer to a fetch sent under another fence (an older generation) is
//! dropped, so a stale refusal never reaches the new generation.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel as channel;
use ringmq_wire::batch::header::peek_total_size;
use ringmq_wire::batch::{BatchHeader, RecordHeader};
use ringmq_wire::envelope::{
    FetchFence, FetchPartition, FetchPartitionResult, FetchRequest, FetchTopic, RequestBody,
    ResponseBody, LIST_OFFSETS_EARLIEST, LIST_OFFSETS_LATEST,
};
use ringmq_wire::error::ErrorCode;

use crate::batch_view::{decode_batch, ConsumerBatch};
use crate::connection::ReplyResult;
use crate::error::{ClientError, Result};
use crate::Client;

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Longest the broker holds a fetch open waiting for `min_bytes`.
    pub max_wait_ms: u32,
    pub min_bytes: u32,
    /// Most bytes one fetch answer may carry.
    pub max_bytes: u32,
    /// Most bytes of one partition in one fetch answer.
    pub partition_max_bytes: u32,
    /// Verify each fetched batch's CRC32C (Kafka's `check.crcs`), catching
    /// corruption on disk or in transit. On by default; turning it off saves
    /// one pass over every fetched byte. Batch framing and every record's
    /// structure are checked either way.
    pub check_crcs: bool,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            max_wait_ms: 500,
            min_bytes: 1,
            max_bytes: 8 * 1024 * 1024,
            partition_max_bytes: 2 * 1024 * 1024,
            check_crcs: true,
        }
    }
}

/// Where to start reading an assigned partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// The first offset still in the log.
    Earliest,
    /// The end of the log: only records produced from now on.
    Latest,
    /// An exact offset; outside `earliest..=latest` it is an error.
    Offset(i64),
    /// The first record with a timestamp >= this (ms since the epoch); the
    /// end of the log when there is none.
    Timestamp(i64),
}

impl std::str::FromStr for StartFrom {
    type Err = String;

    /// `earliest`, `latest`, `OFFSET` or `@TIMESTAMP_MS`.
    fn from_str(s: &str) -> std::result::Result<StartFrom, String> {
        match s {
            "earliest" | "beginning" => Ok(StartFrom::Earliest),
            "latest" | "end" => Ok(StartFrom::Latest),
            _ => {
                if let Some(ts) = s.strip_prefix('@') {
                    ts.parse::<i64>().map(StartFrom::Timestamp).map_err(|_| {
                        format!("bad timestamp {ts:?}: expected @MILLISECONDS_SINCE_EPOCH")
                    })
                } else {
                    s.parse::<i64>().ok().filter(|o| *o >= 0).map(StartFrom::Offset).ok_or_else(|| {
                        format!("bad start position {s:?}: expected earliest, latest, an offset >= 0, or @TIMESTAMP_MS")
                    })
                }
            }
        }
    }
}

/// One consumed record. Key, value and headers are zero-copy slices of the
/// fetch answer (or of the decompressed batch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRecord {
    pub topic: Arc<str>,
    pub partition: u32,
    pub offset: i64,
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<RecordHeader>,
}

struct PartitionState {
    topic: Arc<str>,
    /// Next offset to hand out.
    position: i64,
    high_watermark: i64,
    /// Paused after an error until `seek`.
    paused: bool,
}

type Key = (Arc<str>, u32);

struct FetchInFlight {
    id: u64,
    /// (topic, partition, fetch offset) as requested.
    requested: Vec<(Arc<str>, u32, i64)>,
    /// The fence the fetch was sent under.
    fence: Option<FetchFence>,
}

type Completion = (u16, u64, ReplyResult);

pub struct Consumer {
    client: Client,
    config: ConsumerConfig,
    partitions: BTreeMap<Key, PartitionState>,
    in_flight: HashMap<u16, FetchInFlight>,
    completions_tx: channel::Sender<Completion>,
    completions_rx: channel::Receiver<Completion>,
    /// Batches decoded but not yet returned (after an error interrupted a poll).
    buffered: VecDeque<ConsumerBatch>,
    errors: VecDeque<ClientError>,
    next_fetch_id: u64,
    /// Sent with every fetch (group consumers only).
    fence: Option<FetchFence>,
}

impl Consumer {
    pub fn new(client: Client, config: ConsumerConfig) -> Consumer {
        // One fetch in flight per shard bounds what this channel can hold.
        let (completions_tx, completions_rx) = channel::unbounded();
        Consumer {
            client,
            config,
            partitions: BTreeMap::new(),
            in_flight: HashMap::new(),
            completions_tx,
            completions_rx,
            buffered: VecDeque::new(),
            errors: VecDeque::new(),
            next_fetch_id: 1,
            fence: None,
        }
    }

    /// Sets the group fence sent with every later fetch (`None`: no fence).
    /// Answers to fetches already in flight under another fence are
    /// dropped when they arrive: they belong to a generation that is over.
    pub fn set_fence(&mut self, fence: Option<FetchFence>) {
        self.fence = fence;
    }

    /// Assigns partitions, each at its own start position. Partitions that
    /// share a topic and a start are resolved with one ListOffsets per
    /// shard, as [`Consumer::assign`] does.
    pub fn assign_partitions(&mut self, partitions: Vec<(String, u32, StartFrom)>) -> Result<()> {
        let mut by_start: Vec<(String, StartFrom, Vec<u32>)> = Vec::new();
        for (topic, partition, from) in partitions {
            match by_start
                .iter_mut()
                .find(|(t, f, _)| *t == topic && *f == from)
            {
                Some((_, _, group)) => group.push(partition),
                None => by_start.push((topic, from, vec![partition])),
            }
        }
        for (topic, from, partitions) in by_start {
            self.assign(&topic, Some(partitions), from)?;
        }
        Ok(())
    }

    /// Assigns partitions at exact positions without asking the broker
    /// (the caller resolved them, e.g. from committed offsets). A position
    /// outside the log surfaces from `poll` as `OffsetOutOfRange`.
    pub fn assign_positions(&mut self, positions: Vec<(String, u32, i64)>) -> Result<()> {
        for (topic, partition, offset) in &positions {
            let count = self.client.partition_count(topic)?;
            if *partition >= count {
                return Err(ClientError::UnknownPartition {
                    topic: topic.clone(),
                    partition: *partition,
                    partition_count: count,
                });
            }
            if *offset < 0 {
                return Err(ClientError::InvalidArgument(format!(
                    "cannot start {topic}/{partition} at negative offset {offset}"
                )));
            }
        }
        for (topic, partition, position) in positions {
            self.insert_partition(Arc::from(topic.as_str()), partition, position);
        }
        Ok(())
    }

    /// Stops consuming everything, dropping buffered records and queued
    /// errors (they concern partitions this consumer no longer reads).
    pub fn unassign_all(&mut self) {
        self.partitions.clear();
        self.buffered.clear();
        self.errors.clear();
    }

    fn insert_partition(&mut self, topic: Arc<str>, partition: u32, position: i64) {
        self.partitions.insert(
            (topic.clone(), partition),
            PartitionState {
                topic,
                position,
                high_watermark: -1,
                paused: false,
            },
        );
    }

    /// Assigns partitions of `topic` (`None`: all of them), each starting at
    /// `from`. Re-assigning a partition moves it to the new start.
    pub fn assign(
        &mut self,
        topic: &str,
        partitions: Option<Vec<u32>>,
        from: StartFrom,
    ) -> Result<()> {
        let count = self.client.partition_count(topic)?;
        let partitions = partitions.unwrap_or_else(|| (0..count).collect());
        if partitions.is_empty() {
            return Err(ClientError::InvalidArgument(format!(
                "no partitions of {topic:?} to assign"
            )));
        }
        for &p in &partitions {
            if p >= count {
                return Err(ClientError::UnknownPartition {
                    topic: topic.to_string(),
                    partition: p,
                    partition_count: count,
                });
            }
        }
        let positions = self.resolve(topic, &partitions, from)?;
        let topic: Arc<str> = Arc::from(topic);
        for (p, position) in partitions.into_iter().zip(positions) {
            self.insert_partition(topic.clone(), p, position);
        }
        Ok(())
    }

    /// Stops consuming every partition of `topic`.
    pub fn unassign(&mut self, topic: &str) {
        self.partitions.retain(|(t, _), _| &**t != topic);
        self.buffered.retain(|b| &**b.topic() != topic);
    }

    /// Assigned (topic, partition) pairs.
    pub fn assignment(&self) -> Vec<(String, u32)> {
        self.partitions
            .keys()
            .map(|(t, p)| (t.to_string(), *p))
            .collect()
    }

    /// The next offset `poll` hands out for an assigned partition.
    pub fn position(&self, topic: &str, partition: u32) -> Option<i64> {
        self.partitions
            .get(&(Arc::from(topic), partition))
            .map(|s| s.position)
    }

    /// The high watermark seen in the last fetch answer (-1 before one).
    pub fn high_watermark(&self, topic: &str, partition: u32) -> Option<i64> {
        self.partitions
            .get(&(Arc::from(topic), partition))
            .map(|s| s.high_watermark)
    }

    /// Moves an assigned partition to `offset` (and un-pauses it).
    pub fn seek(&mut self, topic: &str, partition: u32, offset: i64) -> Result<()> {
        if offset < 0 {
            return Err(ClientError::InvalidArgument(format!(
                "cannot seek to negative offset {offset}"
            )));
        }
        let state = self
            .partitions
            .get_mut(&(Arc::from(topic), partition))
            .ok_or_else(|| {
                ClientError::InvalidArgument(format!(
                    "{topic}/{partition} is not assigned; assign it first"
                ))
            })?;
        state.position = offset;
        state.paused = false;
        self.buffered
            .retain(|b| !(&**b.topic() == topic && b.partition() == partition));
        Ok(())
    }

    /// Moves an assigned partition to a resolved start position.
    pub fn seek_to(&mut self, topic: &str, partition: u32, from: StartFrom) -> Result<()> {
        let position = self.resolve(topic, &[partition], from)?[0];
        self.seek(topic, partition, position)
    }

    /// Resolves start positions through ListOffsets on the owning shards.
    fn resolve(&self, topic: &str, partitions: &[u32], from: StartFrom) -> Result<Vec<i64>> {
        let query = |ts: i64| -> Result<Vec<i64>> {
            let queries: Vec<(u32, i64)> = partitions.iter().map(|&p| (p, ts)).collect();
            Ok(self
                .client
                .list_offsets(topic, &queries)?
                .into_iter()
                .map(|r| r.offset)
                .collect())
        };
        match from {
            StartFrom::Earliest => query(LIST_OFFSETS_EARLIEST),
            StartFrom::Latest => query(LIST_OFFSETS_LATEST),
            StartFrom::Timestamp(ts) => {
                if ts < 0 {
                    return Err(ClientError::InvalidArgument(format!(
                        "timestamp {ts} is negative"
                    )));
                }
                let found = query(ts)?;
                let latest = query(LIST_OFFSETS_LATEST)?;
                // No record at or after `ts`: start at the end.
                Ok(found
                    .into_iter()
                    .zip(latest)
                    .map(|(f, l)| if f < 0 { l } else { f })
                    .collect())
            }
            StartFrom::Offset(offset) => {
                let earliest = query(LIST_OFFSETS_EARLIEST)?;
                let latest = query(LIST_OFFSETS_LATEST)?;
                for ((&p, e), l) in partitions.iter().zip(&earliest).zip(&latest) {
                    if offset < *e || offset > *l {
                        return Err(ClientError::InvalidArgument(format!(
                            "offset {offset} is outside {topic}/{p}, which holds offsets {e}..{l}; use earliest, latest, or an offset in that range"
                        )));
                    }
                }
                Ok(vec![offset; partitions.len()])
            }
        }
    }

    /// Returns the records available within `timeout` (possibly none). Each
    /// partition's records come in offset order.
    pub fn poll(&mut self, timeout: Duration) -> Result<Vec<ConsumerRecord>> {
        let batches = self.poll_batches(timeout)?;
        let mut records = Vec::with_capacity(batches.iter().map(ConsumerBatch::len).sum());
        for batch in &batches {
            batch.append_records_to(&mut records);
        }
        Ok(records)
    }

    /// Like [`Self::poll`], handing out whole batches: records are read
    /// through [`ConsumerBatch::iter`] as borrowed views, with no allocation
    /// or reference counting per record. Positions advance past every
    /// record returned, as with `poll`.
    pub fn poll_batches(&mut self, timeout: Duration) -> Result<Vec<ConsumerBatch>> {
        if let Some(error) = self.errors.pop_front() {
            return Err(error);
        }
        if !self.buffered.is_empty() {
            return Ok(self.buffered.drain(..).collect());
        }
        if self.partitions.is_empty() {
            return Err(ClientError::InvalidArgument(
                "nothing is assigned; call assign first".into(),
            ));
        }
        let deadline = Instant::now() + timeout;
        self.send_fetches()?;
        let mut batches = Vec::new();
        loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            let completion = match self.completions_rx.recv_timeout(wait) {
                Ok(c) => c,
                Err(channel::RecvTimeoutError::Timeout) => return Ok(batches),
                Err(channel::RecvTimeoutError::Disconnected) => {
                    unreachable!("the consumer holds a sender")
                }
            };
            self.handle(completion, &mut batches);
            // Take whatever else already arrived, then prefetch.
            while let Ok(more) = self.completions_rx.try_recv() {
                self.handle(more, &mut batches);
            }
            let sent = self.send_fetches();
            if !self.errors.is_empty() || sent.is_err() {
                self.buffered.extend(batches);
                if let Err(e) = sent {
                    self.errors.push_back(e);
                }
                return Err(self.errors.pop_front().expect("an error is queued"));
            }
            if !batches.is_empty() || Instant::now() >= deadline {
                return Ok(batches);
            }
        }
    }

    /// Sends a fetch to every shard that has active partitions and no fetch
    /// in flight.
    fn send_fetches(&mut self) -> Result<()> {
        let mut by_shard: BTreeMap<u16, Vec<(Arc<str>, u32, i64)>> = BTreeMap::new();
        for ((topic, partition), state) in &self.partitions {
            if state.paused {
                continue;
            }
            let shard = self.client.topic_route(topic)?.shard_of(*partition)?;
            if self.in_flight.contains_key(&shard) {
                continue;
            }
            by_shard
                .entry(shard)
                .or_default()
                .push((topic.clone(), *partition, state.position));
        }
        for (shard, requested) in by_shard {
            self.send_fetch(shard, requested)?;
        }
        Ok(())
    }

    fn send_fetch(&mut self, shard: u16, requested: Vec<(Arc<str>, u32, i64)>) -> Result<()> {
        let mut topics: Vec<FetchTopic> = Vec::new();
        for (topic, partition, offset) in &requested {
            let entry = FetchPartition {
                partition: *partition,
                fetch_offset: *offset,
                partition_max_bytes: self.config.partition_max_bytes,
            };
            match topics.iter_mut().find(|t| *t.name == **topic) {
                Some(t) => t.partitions.push(entry),
                None => topics.push(FetchTopic {
                    name: topic.to_string(),
                    partitions: vec![entry],
                }),
            }
        }
        let body = RequestBody::Fetch(FetchRequest {
            max_wait_ms: self.config.max_wait_ms,
            min_bytes: self.config.min_bytes,
            max_bytes: self.config.max_bytes,
            topics,
            fence: self.fence.clone(),
        });
        let id = self.next_fetch_id;
        self.next_fetch_id += 1;
        let connection = self
            .client
            .cluster()
            .retrying("connect", || self.client.cluster().shard_connection(shard))?;
        let tx = self.completions_tx.clone();
        let fence = self.fence.clone();
        self.in_flight.insert(
            shard,
            FetchInFlight {
                id,
                requested,
                fence,
            },
        );
        connection.request_with_callback(body, Vec::new(), move |result| {
            // The consumer may be gone; then nobody needs the answer.
            let _ = tx.send((shard, id, result));
        });
        Ok(())
    }

    fn handle(&mut self, (shard, id, result): Completion, batches: &mut Vec<ConsumerBatch>) {
        let Some(fetch) = self.in_flight.remove(&shard) else {
            return;
        };
        assert_eq!(fetch.id, id, "one fetch in flight per shard");
        if fetch.fence != self.fence {
            return; // sent for a generation that is over
        }
        let (response, payload) = match result {
            Ok(reply) => reply,
            Err(e) => {
                // Fetch is idempotent: a broken connection is retried on the
                // next send; tell the caller only if it is not transient.
                if !e.is_retriable() {
                    self.errors.push_back(e);
                } else {
                    tracing::debug!(shard, error = %e, "fetch failed; retrying");
                    self.invalidate_requested(&fetch);
                }
                return;
            }
        };
        let ResponseBody::Fetch(body) = response.body else {
            self.errors
                .push_back(self.client.cluster().unexpected_body("fetch"));
            return;
        };
        for topic in body.topics {
            for result in topic.partitions {
                let requested = fetch
                    .requested
                    .iter()
                    .find(|(t, p, _)| **t == *topic.name && *p == result.partition)
                    .map(|(_, _, offset)| *offset);
                if let Some(fetch_offset) = requested {
                    self.apply(&topic.name, fetch_offset, &result, &payload, batches);
                }
            }
        }
    }

    fn invalidate_requested(&self, fetch: &FetchInFlight) {
        for (topic, _, _) in &fetch.requested {
            self.client.cluster().invalidate_topic(topic);
        }
    }

    /// Applies one partition's fetch result: decode, skip what lies below
    /// the position, advance.
    fn apply(
        &mut self,
        topic: &str,
        fetch_offset: i64,
        result: &FetchPartitionResult,
        payload: &Bytes,
        batches: &mut Vec<ConsumerBatch>,
    ) {
        let key: Key = (Arc::from(topic), result.partition);
        let Some(state) = self.partitions.get_mut(&key) else {
            return; // unassigned meanwhile
        };
        if state.position != fetch_offset || state.paused {
            return; // sought meanwhile: this answer is stale
        }
        if result.high_watermark >= 0 {
            state.high_watermark = result.high_watermark;
        }
        if let Some(error) = &result.error {
            match error.code {
                ErrorCode::OffsetOutOfRange => {
                    state.paused = true;
                    self.errors.push_back(ClientError::OffsetOutOfRange {
                        topic: topic.to_string(),
                        partition: result.partition,
                        offset: fetch_offset,
                        log_start_offset: result.log_start_offset,
                        high_watermark: result.high_watermark,
                    });
                }
                code if code.is_retriable() || code == ErrorCode::UnknownTopicOrPartition => {
                    tracing::debug!(topic, partition = result.partition, %error, "fetch error; refreshing metadata");
                    self.client.cluster().invalidate_topic(topic);
                }
                _ => {
                    state.paused = true;
                    self.errors.push_back(ClientError::api(
                        error.clone(),
                        format!(
                            "fetch {topic}/{} at offset {fetch_offset}",
                            result.partition
                        ),
                    ));
                }
            }
            return;
        }
        if result.payload.end() > payload.len() {
            state.paused = true;
            self.errors.push_back(ClientError::Protocol {
                endpoint: String::new(),
                message: format!(
                    "fetch answer for {topic}/{} points past its payload ({} > {} bytes)",
                    result.partition,
                    result.payload.end(),
                    payload.len()
                ),
            });
            return;
        }
        let section = payload.slice(result.payload.offset as usize..result.payload.end());
        if let Err(e) = decode_batches(
            &state.topic,
            result.partition,
            section,
            &mut state.position,
            self.config.check_crcs,
            batches,
        ) {
            state.paused = true;
            self.errors.push_back(e);
        }
    }
}

/// Decodes back-to-back batches, appending those with records at or after
/// `position` and advancing it. A truncated batch at the end is left for
/// the next fetch.
fn decode_batches(
    topic: &Arc<str>,
    partition: u32,
    mut section: Bytes,
    position: &mut i64,
    check_crcs: bool,
    batches: &mut Vec<ConsumerBatch>,
) -> Result<()> {
    while let Some(size) = peek_total_size(&section) {
        if size > section.len() {
            break; // partial batch at the end of the answer
        }
        let batch = section.split_to(size);
        let header =
            BatchHeader::parse(&batch).map_err(|e| corrupt(topic, partition, *position, &e))?;
        if header.next_offset() <= *position || header.is_control() {
            *position = (*position).max(header.next_offset());
            continue;
        }
        let (header, decoded) = decode_batch(topic, partition, batch, *position, check_crcs)
            .map_err(|e| corrupt(topic, partition, *position, &e))?;
        if let Some(decoded) = decoded {
            let last = decoded
                .last_offset()
                .expect("decoded batches are not empty");
            assert!(
                last >= *position,
                "records below the position were handed out"
            );
            *position = last + 1;
            batches.push(decoded);
        }
        // Compaction can leave gaps: the next batch starts after this one.
        *position = (*position).max(header.next_offset());
    }
    Ok(())
}

fn corrupt(
    topic: &str,
    partition: u32,
    position: i64,
    error: &dyn std::fmt::Display,
) -> ClientError {
    ClientError::Protocol {
        endpoint: String::new(),
        message: format!(
            "corrupt batch in {topic}/{partition} near offset {position}: {error}; the partition is paused (seek past it to skip)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringmq_wire::batch::header::set_base_offset;
    use ringmq_wire::batch::{BatchBuilder, Compression};

    fn batch(base_offset: i64, values: &[&str], compression: Compression) -> Bytes {
        let mut builder = BatchBuilder::new(compression, 1_000);
        for (i, v) in values.iter().enumerate() {
            builder
                .append(1_000 + i as i64, None, Some(v.as_bytes()), &[])
                .unwrap();
        }
        let mut bytes = bytes::BytesMut::from(&builder.build().unwrap()[..]);
        set_base_offset(&mut bytes, base_offset);
        bytes.freeze()
    }

    /// `decode_batches` flattened to records, as `poll` hands them out.
    fn decode(payload: Bytes, position: &mut i64, check_crcs: bool) -> Result<Vec<ConsumerRecord>> {
        let topic: Arc<str> = Arc::from("t");
        let mut batches = Vec::new();
        decode_batches(&topic, 0, payload, position, check_crcs, &mut batches)?;
        let mut records = Vec::new();
        for b in &batches {
            b.append_records_to(&mut records);
        }
        Ok(records)
    }

    #[test]
    fn decodes_skipping_records_below_the_position() {
        let mut payload = bytes::BytesMut::new();
        payload.extend_from_slice(&batch(10, &["a", "b", "c"], Compression::None));
        payload.extend_from_slice(&batch(13, &["d", "e"], Compression::Lz4));
        let mut position = 11;
        let records = decode(payload.freeze(), &mut position, true).unwrap();
        let got: Vec<(i64, &[u8])> = records
            .iter()
            .map(|r| (r.offset, &r.value.as_ref().unwrap()[..]))
            .collect();
        assert_eq!(
            got,
            vec![(11, &b"b"[..]), (12, b"c"), (13, b"d"), (14, b"e")]
        );
        assert_eq!(position, 15);
        assert_eq!(records[0].timestamp_ms, 1_001);
    }

    #[test]
    fn partial_trailing_batch_is_left_for_the_next_fetch() {
        let mut payload = bytes::BytesMut::new();
        payload.extend_from_slice(&batch(0, &["a"], Compression::None));
        let second = batch(1, &["b"], Compression::None);
        payload.extend_from_slice(&second[..second.len() - 5]);
        let mut position = 0;
        let records = decode(payload.freeze(), &mut position, true).unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(position, 1);
    }

    #[test]
    fn corrupt_batch_is_an_error() {
        let mut bytes = bytes::BytesMut::from(&batch(0, &["a"], Compression::None)[..]);
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        let mut position = 0;
        let err = decode(bytes.freeze(), &mut position, true).unwrap_err();
        assert!(err.to_string().contains("corrupt batch"), "{err}");
        assert!(err.to_string().contains("CRC32C"), "{err}");
        assert_eq!(position, 0);
    }

    #[test]
    fn check_crcs_off_skips_only_the_checksum() {
        // A flipped value byte (the last byte is the header count): only
        // the CRC can tell.
        let mut bytes = bytes::BytesMut::from(&batch(0, &["a"], Compression::None)[..]);
        let value_at = bytes.len() - 2;
        bytes[value_at] ^= 0x01;
        let mut position = 0;
        let records = decode(bytes.freeze(), &mut position, false).unwrap();
        assert_eq!(records[0].value.as_deref(), Some(&b"`"[..]));
        assert_eq!(position, 1);
        // A broken record structure is still refused without CRC checks.
        let mut bytes = bytes::BytesMut::from(&batch(0, &["a"], Compression::None)[..]);
        bytes[ringmq_wire::batch::HEADER_SIZE] = 0x7e; // record length 63
        let mut position = 0;
        let err = decode(bytes.freeze(), &mut position, false).unwrap_err();
        assert!(err.to_string().contains("malformed record 0"), "{err}");
        assert_eq!(position, 0);
    }

    #[test]
    fn start_positions_parse() {
        assert_eq!("earliest".parse(), Ok(StartFrom::Earliest));
        assert_eq!("latest".parse(), Ok(StartFrom::Latest));
        assert_eq!("42".parse(), Ok(StartFrom::Offset(42)));
        assert_eq!(
            "@1700000000000".parse(),
            Ok(StartFrom::Timestamp(1_700_000_000_000))
        );
        assert!("-1".parse::<StartFrom>().is_err());
        assert!("@x".parse::<StartFrom>().is_err());
    }
}
