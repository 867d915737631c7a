//! One partition's log: a directory of segments, group-committed appends,
//! reads, recovery, retention.
//!
//! Concurrency model (one glommio executor, single-threaded):
//! * `append` is synchronous: it assigns offsets, rewrites base offsets in
//!   place, puts the batches in the tail cache and the write queue, and
//!   returns a future for the requested durability.
//! * A writer task (spawned on demand) drains the queue: one write in flight
//!   per partition, each write carrying every batch queued meanwhile (up to
//!   `max_write_bytes`), rewriting the partial tail block.
//! * A syncer task (spawned on demand) runs fdatasync while written data is
//!   not yet durable; one fdatasync covers every write completed before it
//!   started, and it overlaps the next write. The high watermark (what reads
//!   may return) is the end covered by a completed fdatasync.
//! * An allocator task (spawned by the writer when due) preallocates the
//!   active segment's file ahead of the writes (`LogConfig::
//!   preallocate_bytes`), so that block allocation and file growth happen
//!   in large steps ahead of the appends rather than inside each one.
//!   Sealing and closing a segment wait for it, then truncate the file to
//!   its logical size; recovery takes zeros after the last batch as the end
//!   of the log.
//! * No `RefCell` borrow is held across an `.await`.
//! * Idempotent producers (Kafka): `append` checks the producer id, epoch
//!   and sequence of each batch against [`ProducerStateTable`] in the same
//!   synchronous step that assigns offsets, so a producer's pipelined
//!   batches are checked in order. A retried batch is not appended again:
//!   its original offsets are returned (see `producer_state`). Recovery
//!   rebuilds the table from the last [`PRODUCER_STATE_SCAN_BYTES`] of the
//!   log.

use super::{
    checkpoint::{Checkpoint, CHECKPOINT_FILE, CHECKPOINT_TMP_FILE},
    index::{IndexTrailer, OffsetIndex},
    now_ms,
    producer_state::{
        AppendVerdict, BatchMetadata, IncomingBatch, ProducerStateTable,
        MAX_PRODUCERS_PER_PARTITION,
    },
    readahead::{spawn_reads, ReadAhead},
    segment::{
        log_file_name, parse_file_name, scan_segment, BatchCursor, CursorItem, Segment,
        INDEX_SUFFIX, LOG_SUFFIX, SCAN_CHUNK, TIMEINDEX_SUFFIX,
    },
    timeindex::TimeIndex,
    Acks, LogConfig, LogError, MAX_BATCH_BYTES, MIN_PREALLOCATE_BYTES,
};
use crate::{
    cache::{CacheKey, TailCache},
    io::{
        align_down, align_up, read_whole_file, write_whole_file, OpenMode, StorageFile, StorageRef,
        BLOCK_SIZE,
    },
};
use bytes::{Bytes, BytesMut};
use event_listener::{Event, EventListener};
use ringmq_wire::batch::header::{
    peek_total_size, set_base_offset, validate_batch, BatchHeader, HEADER_SIZE, MAGIC_V2,
};
use std::{
    cell::{Cell, RefCell},
    collections::{BTreeMap, VecDeque},
    future::Future,
    io,
    path::{Path, PathBuf},
    pin::Pin,
    rc::Rc,
    task::{Context, Poll, Waker},
};

/// What `append` returns.
pub struct AppendResult {
    pub base_offset: i64,
    pub last_offset: i64,
    pub log_append_time_ms: i64,
    /// Resolves at the requested durability, or with the error of the write
    /// or fdatasync that covered the batches.
    pub durable: AckFuture,
    /// The append was a retry of idempotent batches already in the log:
    /// nothing was appended, the offsets are the original ones, and
    /// `durable` resolves when the original batches reach the requested
    /// durability. `log_append_time_ms` is then the original batches' max
    /// timestamp (what Kafka answers for a duplicate).
    pub duplicate: bool,
}

/// How much of the log's tail recovery reads to rebuild the idempotent
/// producers' state, in bytes (whole segments from the newest back, the
/// oldest one from the sparse-index entry at or before the bound).
///
/// A retry after a broker restart is a retry of a batch that was in flight
/// at the crash, so it lies at the very end of the log: librdkafka keeps at
/// most 5 requests of at most `message.max.bytes` (1 MB by default) in
/// flight per partition. 8 MiB covers that with room for other producers
/// interleaved, and keeps start-up cost bounded (tens of milliseconds per
/// partition at worst, nothing for a partition smaller than that). A
/// producer none of whose batches lies in the window is unknown after the
/// restart, and its next batch is accepted at any sequence.
pub const PRODUCER_STATE_SCAN_BYTES: u64 = 8 << 20;

/// What `read` returns.
#[derive(Debug, Clone, Default)]
pub struct ReadData {
    /// Whole batches, in offset order; empty at the high watermark.
    pub chunks: Vec<Bytes>,
    pub high_watermark: i64,
    pub log_start_offset: i64,
}

impl ReadData {
    pub fn total_bytes(&self) -> usize {
        self.chunks.iter().map(Bytes::len).sum()
    }
}

/// What recovery found and did when the log was opened.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RecoveryReport {
    pub segments: usize,
    /// Segment files whose index or time index was missing or damaged and
    /// was rebuilt from the log.
    pub indexes_rebuilt: Vec<PathBuf>,
    /// Bytes cut off the last segment (torn tail).
    pub truncated_bytes: u64,
    /// Zeros after the last batch, trimmed: preallocated space not written
    /// yet (or writes that never reached the disk) when the broker stopped
    /// without closing the log. A clean end, not damage.
    pub zero_tail_bytes: u64,
    /// Why the tail was cut, if it was.
    pub torn_tail: Option<String>,
    /// Bytes of log validated batch by batch.
    pub scanned_bytes: u64,
    pub checkpoint: Option<Checkpoint>,
    /// True when the last segment's index matched it (clean shutdown).
    pub clean_shutdown: bool,
    /// Bytes of the log's tail read to rebuild the idempotent producers'
    /// state (at most about [`PRODUCER_STATE_SCAN_BYTES`]).
    pub producer_state_scanned_bytes: u64,
    /// Idempotent producers found in that tail.
    pub producers_recovered: usize,
}

/// Counters of one partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LogStats {
    pub appends: u64,
    pub batches_appended: u64,
    pub bytes_appended: u64,
    pub writes: u64,
    pub bytes_written: u64,
    pub fdatasyncs: u64,
    pub segments_rolled: u64,
    pub segments_deleted: u64,
    /// Successful preallocations of segment space.
    pub preallocations: u64,
    pub cold_reads: u64,
    pub cache_reads: u64,
    /// Cold reads that took bytes from read-ahead, and those that did not.
    pub readahead_hits: u64,
    pub readahead_misses: u64,
    /// Appends answered as retries of idempotent batches already in the log.
    pub duplicate_appends: u64,
}

#[derive(Default)]
struct AckCell {
    result: RefCell<Option<Result<(), LogError>>>,
    waker: RefCell<Option<Waker>>,
}

impl AckCell {
    fn complete(&self, result: Result<(), LogError>) {
        let mut slot = self.result.borrow_mut();
        if slot.is_some() {
            return;
        }
        *slot = Some(result);
        drop(slot);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }
}

/// Resolves when the appended batches reach the requested durability.
pub struct AckFuture {
    cell: Rc<AckCell>,
}

impl AckFuture {
    /// The outcome if already known.
    pub fn try_result(&self) -> Option<Result<(), LogError>> {
        self.cell.result.borrow().clone()
    }
}

impl Future for AckFuture {
    type Output = Result<(), LogError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(r) = self.cell.result.borrow().as_ref() {
            return Poll::Ready(r.clone());
        }
        *self.cell.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

struct Pending {
    segment: i64,
    position: u64,
    data: Bytes,
    end_offset: i64,
}

struct State {
    segments: BTreeMap<i64, Segment>,
    log_start: i64,
    /// Next offset to assign.
    log_end: i64,
    /// Offset after the last batch whose write completed.
    written: i64,
    /// Offset after the last batch covered by a completed fdatasync (HW).
    durable: i64,
    queue: VecDeque<Pending>,
    /// Assigned but not yet written, in bytes (queued and in flight).
    queued_bytes: u64,
    write_acks: VecDeque<(i64, Rc<AckCell>)>,
    sync_acks: VecDeque<(i64, Rc<AckCell>)>,
    writer_active: bool,
    syncer_active: bool,
    /// A preallocation is in flight (at most one per partition).
    allocator_active: bool,
    /// Preallocation is on: `preallocate_bytes > 0` and the filesystem has
    /// not refused it.
    preallocate: bool,
    fenced: Option<LogError>,
    closed: bool,
    checkpointed: i64,
    last_checkpoint_ms: i64,
    stats: LogStats,
    /// Idempotent producers' epochs and last batches, as of `log_end`.
    producers: ProducerStateTable,
}

impl State {
    fn active(&self) -> &Segment {
        self.segments
            .values()
            .next_back()
            .expect("a log always has a segment")
    }

    fn active_mut(&mut self) -> &mut Segment {
        self.segments
            .values_mut()
            .next_back()
            .expect("a log always has a segment")
    }
}

struct Shared {
    dir: PathBuf,
    storage: StorageRef,
    config: LogConfig,
    cache: TailCache,
    cache_key: CacheKey,
    state: RefCell<State>,
    /// Notified when the high watermark advances (and on fence/close).
    hw_event: Event,
    /// Notified when queued bytes drop.
    space_event: Event,
    /// Notified when the writer or syncer goes idle.
    idle_event: Event,
    recovery: RecoveryReport,
    checkpoint_busy: Cell<bool>,
    /// Sequential read-ahead of cold reads (see `readahead`).
    readahead: RefCell<ReadAhead>,
}

/// A partition's log. Cloning is cheap and shares the log.
#[derive(Clone)]
pub struct PartitionLog {
    shared: Rc<Shared>,
}

impl std::fmt::Debug for PartitionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionLog")
            .field("dir", &self.shared.dir)
            .finish()
    }
}

/// What the first pass over an append found.
struct Framing {
    batch_count: usize,
    /// Some batch carries a producer id (an idempotent producer's batch).
    has_producer_ids: bool,
}

/// First pass over an append: checks the framing of each batch.
fn check_framing(data: &[u8]) -> Result<Framing, LogError> {
    let mut pos = 0usize;
    let mut count = 0usize;
    let mut has_producer_ids = false;
    while pos < data.len() {
        let rest = &data[pos..];
        let invalid = |reason: String| LogError::InvalidBatch {
            position: pos,
            reason,
        };
        let size = peek_total_size(rest).ok_or_else(|| invalid("truncated batch length".into()))?;
        if !(HEADER_SIZE..=MAX_BATCH_BYTES).contains(&size) {
            return Err(invalid(format!("batch size {} out of range", size as i64)));
        }
        if size > rest.len() {
            return Err(invalid(format!(
                "batch of {size} bytes but only {} sent",
                rest.len()
            )));
        }
        let h = BatchHeader::parse(rest).map_err(|e| invalid(e.to_string()))?;
        if h.magic != MAGIC_V2 {
            return Err(invalid(format!("magic {} is not 2", h.magic)));
        }
        if h.last_offset_delta < 0 {
            return Err(invalid(format!(
                "negative last_offset_delta {}",
                h.last_offset_delta
            )));
        }
        has_producer_ids |= h.producer_id >= 0;
        pos += size;
        count += 1;
    }
    Ok(Framing {
        batch_count: count,
        has_producer_ids,
    })
}

/// The headers of back-to-back batches whose framing was checked.
fn batch_headers(data: &[u8]) -> impl Iterator<Item = BatchHeader> + '_ {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        if pos >= data.len() {
            return None;
        }
        let h = BatchHeader::parse(&data[pos..]).expect("framing checked");
        pos += peek_total_size(&data[pos..]).expect("framing checked");
        Some(h)
    })
}

/// The producer fields of an idempotent batch; `None` for a batch without a
/// producer id (native producers), which is never checked.
fn idempotent(h: &BatchHeader) -> Option<IncomingBatch> {
    (h.producer_id >= 0).then_some(IncomingBatch {
        producer_id: h.producer_id,
        producer_epoch: h.producer_epoch,
        base_sequence: h.base_sequence,
        last_offset_delta: h.last_offset_delta,
        max_timestamp_ms: h.max_timestamp,
    })
}

/// The first record of `batch` whose timestamp is at least `timestamp_ms`
/// (offset, timestamp), like Kafka's ListOffsets. The batch's max timestamp
/// is at least `timestamp_ms`, so one exists unless the batch is damaged, in
/// which case the batch's base offset is the safe answer (never later).
fn first_record_at_or_after(batch: Bytes, header: &BatchHeader, timestamp_ms: i64) -> (i64, i64) {
    let fallback = (header.base_offset, header.max_timestamp);
    let Ok(records) = ringmq_wire::batch::RecordIter::new(batch) else {
        return fallback;
    };
    for record in records {
        match record {
            Ok(r) if r.timestamp_ms >= timestamp_ms => return (r.offset, r.timestamp_ms),
            Ok(_) => {}
            Err(_) => return fallback,
        }
    }
    fallback
}

impl PartitionLog {
    /// Opens (or creates) the partition in `dir`, running recovery.
    pub async fn open(
        storage: StorageRef,
        dir: impl Into<PathBuf>,
        config: LogConfig,
        cache: TailCache,
    ) -> Result<PartitionLog, LogError> {
        config.validate()?;
        let dir = dir.into();
        let (state, recovery) = recover(&storage, &dir, &config).await?;
        let cache_key = cache.register();
        let readahead = RefCell::new(ReadAhead::new(cache.readahead().clone()));
        Ok(PartitionLog {
            shared: Rc::new(Shared {
                readahead,
                dir,
                storage,
                config,
                cache,
                cache_key,
                state: RefCell::new(state),
                hw_event: Event::new(),
                space_event: Event::new(),
                idle_event: Event::new(),
                recovery,
                checkpoint_busy: Cell::new(false),
            }),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    pub fn config(&self) -> &LogConfig {
        &self.shared.config
    }

    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.shared.recovery
    }

    /// End of the data covered by a completed fdatasync: reads stop here.
    pub fn high_watermark(&self) -> i64 {
        self.shared.state.borrow().durable
    }

    /// Next offset to be assigned.
    pub fn log_end_offset(&self) -> i64 {
        self.shared.state.borrow().log_end
    }

    pub fn log_start_offset(&self) -> i64 {
        self.shared.state.borrow().log_start
    }

    /// Offset after the last batch whose write completed.
    pub fn written_offset(&self) -> i64 {
        self.shared.state.borrow().written
    }

    pub fn segment_count(&self) -> usize {
        self.shared.state.borrow().segments.len()
    }

    /// Base offsets of the segments, oldest first.
    pub fn segment_bases(&self) -> Vec<i64> {
        self.shared
            .state
            .borrow()
            .segments
            .keys()
            .copied()
            .collect()
    }

    /// Total bytes of the log (assigned).
    pub fn size_bytes(&self) -> u64 {
        self.shared
            .state
            .borrow()
            .segments
            .values()
            .map(|s| s.size)
            .sum()
    }

    pub fn stats(&self) -> LogStats {
        self.shared.state.borrow().stats
    }

    /// A preallocation of segment space is running (beside the writes).
    pub fn preallocation_in_flight(&self) -> bool {
        self.shared.state.borrow().allocator_active
    }

    /// The error that fenced the partition, if any.
    pub fn fenced(&self) -> Option<LogError> {
        self.shared.state.borrow().fenced.clone()
    }

    /// A listener notified when the high watermark advances. Create it,
    /// check `high_watermark()`, then await it (no lost wake-ups).
    pub fn watch(&self) -> EventListener {
        self.shared.hw_event.listen()
    }

    /// Waits until the high watermark exceeds `offset` (or the log is
    /// fenced or closed).
    pub async fn wait_for_high_watermark(&self, offset: i64) -> Result<i64, LogError> {
        loop {
            let listener = self.watch();
            {
                let st = self.shared.state.borrow();
                if st.durable > offset {
                    return Ok(st.durable);
                }
                if let Some(e) = &st.fenced {
                    return Err(e.clone());
                }
                if st.closed {
                    return Err(LogError::Closed {
                        dir: self.shared.dir.clone(),
                    });
                }
            }
            listener.await;
        }
    }

    /// Waits until `bytes` more can be queued without exceeding
    /// `max_queued_bytes` (always admits when nothing is queued). Call
    /// `append` right after it returns, without awaiting in between.
    pub async fn reserve(&self, bytes: usize) -> Result<(), LogError> {
        loop {
            let listener = self.shared.space_event.listen();
            {
                let st = self.shared.state.borrow();
                self.shared.check_writable(&st)?;
                if st.queued_bytes == 0
                    || st.queued_bytes + bytes as u64 <= self.shared.config.max_queued_bytes
                {
                    return Ok(());
                }
            }
            listener.await;
        }
    }

    /// Appends one or more concatenated, already validated v2 batches at the
    /// current time. See [`PartitionLog::append_at`].
    pub fn append(&self, batches: BytesMut, acks: Acks) -> Result<AppendResult, LogError> {
        self.append_at(batches, acks, now_ms())
    }

    /// Appends with an explicit clock (`now_ms` drives `segment_ms` rolls and
    /// is returned as the log-append time). Offsets are assigned here,
    /// synchronously, so appends get offsets in call order.
    ///
    /// Batches with a producer id (idempotent producers) are sequence-checked
    /// first, against the partition's producer state and the earlier batches
    /// of the same append: `InvalidProducerEpoch` or `OutOfOrderSequence`
    /// refuse the whole append; a retry of batches already in the log
    /// appends nothing and returns their original offsets with
    /// `duplicate: true`. Batches without one (producer id -1) are not
    /// checked.
    pub fn append_at(
        &self,
        mut batches: BytesMut,
        acks: Acks,
        now_ms: i64,
    ) -> Result<AppendResult, LogError> {
        let sh = &self.shared;
        let mut st = sh.state.borrow_mut();
        sh.check_writable(&st)?;
        let total = batches.len();
        if total == 0 {
            return Err(LogError::InvalidBatch {
                position: 0,
                reason: "empty append".into(),
            });
        }
        if st.queued_bytes > 0 && st.queued_bytes + total as u64 > sh.config.max_queued_bytes {
            return Err(LogError::QueueFull {
                queued_bytes: st.queued_bytes,
                limit_bytes: sh.config.max_queued_bytes,
            });
        }
        let framing = check_framing(&batches)?;
        let batch_count = framing.batch_count;
        if framing.has_producer_ids {
            let log_end = st.log_end;
            let verdict = st.producers.check_append(
                batch_headers(&batches).map(|h| (idempotent(&h), h.last_offset_delta)),
                log_end,
            )?;
            if let AppendVerdict::Duplicate {
                base_offset,
                last_offset,
                max_timestamp_ms,
            } = verdict
            {
                return Ok(sh.duplicate_result(
                    &mut st,
                    acks,
                    base_offset,
                    last_offset,
                    max_timestamp_ms,
                ));
            }
        }

        // Roll by size or age.
        let roll = {
            let active = st.active();
            active.size > 0
                && (active.size + total as u64 > sh.config.segment_bytes
                    || now_ms.saturating_sub(active.first_append_ms.unwrap_or(now_ms))
                        >= sh.config.segment_ms)
        };
        if roll {
            let base = st.log_end;
            st.active_mut().sealed = true;
            st.segments.insert(base, Segment::new(&sh.dir, base));
            st.stats.segments_rolled += 1;
        }

        // Assign offsets.
        let base_offset = st.log_end;
        let interval = sh.config.index_interval_bytes;
        let seg = st.active_mut();
        let segment = seg.base_offset;
        let start_position = seg.size;
        let mut pos = 0usize;
        let mut next = base_offset;
        while pos < total {
            let size = peek_total_size(&batches[pos..]).expect("framing checked");
            set_base_offset(&mut batches[pos..], next);
            let h = BatchHeader::parse(&batches[pos..]).expect("framing checked");
            seg.record_batch(
                next,
                start_position + pos as u64,
                size,
                h.max_timestamp,
                interval,
            );
            next += h.last_offset_delta as i64 + 1;
            pos += size;
        }
        seg.size += total as u64;
        seg.next_offset = next;
        seg.first_append_ms.get_or_insert(now_ms);

        let data = batches.freeze();
        let mut pos = 0usize;
        while pos < total {
            let size = peek_total_size(&data[pos..]).expect("framing checked");
            let h = BatchHeader::parse(&data[pos..]).expect("framing checked");
            sh.cache.insert(
                sh.cache_key,
                h.base_offset,
                h.last_offset(),
                data.slice(pos..pos + size),
            );
            pos += size;
        }

        st.log_end = next;
        if framing.has_producer_ids {
            // Nothing below can fail: the producers' state advances with
            // the log end, and `rollback` takes it back with it.
            st.producers.commit_append();
        }
        st.queue.push_back(Pending {
            segment,
            position: start_position,
            data,
            end_offset: next,
        });
        st.queued_bytes += total as u64;
        let cell = Rc::new(AckCell::default());
        match acks {
            Acks::Fsync => st.sync_acks.push_back((next, cell.clone())),
            Acks::Leader | Acks::None => st.write_acks.push_back((next, cell.clone())),
        }
        st.stats.appends += 1;
        st.stats.batches_appended += batch_count as u64;
        st.stats.bytes_appended += total as u64;
        let spawn = !st.writer_active;
        st.writer_active = true;
        drop(st);
        if spawn {
            glommio::spawn_local(writer_loop(sh.clone())).detach();
        }
        Ok(AppendResult {
            base_offset,
            last_offset: next - 1,
            log_append_time_ms: now_ms,
            durable: AckFuture { cell },
            duplicate: false,
        })
    }

    /// Whole batches from the one containing `offset`, at most `max_bytes`
    /// but at least one batch, never past the high watermark. Served from
    /// the tail cache when possible, else with a DMA read of one segment.
    pub async fn read(&self, offset: i64, max_bytes: usize) -> Result<ReadData, LogError> {
        let sh = &self.shared;
        let (hw, start) = {
            let st = sh.state.borrow();
            (st.durable, st.log_start)
        };
        let out_of_range = || LogError::OffsetOutOfRange {
            offset,
            log_start_offset: start,
            high_watermark: hw,
        };
        if offset < start || offset > hw {
            return Err(out_of_range());
        }
        let mut data = ReadData {
            chunks: Vec::new(),
            high_watermark: hw,
            log_start_offset: start,
        };
        if offset == hw {
            return Ok(data);
        }
        if let Some(chunks) = sh.cache.read(sh.cache_key, offset, max_bytes, hw) {
            sh.state.borrow_mut().stats.cache_reads += 1;
            // The reader is at the tail: read-ahead behind it is of no use.
            sh.readahead.borrow_mut().release();
            data.chunks = chunks;
            return Ok(data);
        }
        let (file, segment, position, limit, mut expected, start) = {
            let mut st = sh.state.borrow_mut();
            st.stats.cold_reads += 1;
            let Some((_, seg)) = st.segments.range(..=offset).next_back() else {
                return Err(out_of_range());
            };
            let Some(file) = seg.file.clone() else {
                return Err(out_of_range());
            };
            let start = sh.readahead.borrow().begin(offset, seg.base_offset);
            let (position, base) = match start.position {
                // The previous cold read ended exactly here.
                Some(position) => (position, offset),
                None => seg.lookup_start(offset),
            };
            (
                file,
                seg.base_offset,
                position,
                seg.written_size,
                base,
                start,
            )
        };
        let sequential = start.position.is_some();
        let chunk = max_bytes
            .saturating_add(sh.config.index_interval_bytes as usize)
            .saturating_add(HEADER_SIZE)
            .clamp(BLOCK_SIZE, 16 << 20);
        let mut cursor =
            BatchCursor::new(&*file, position, limit, chunk).with_readahead(start.view);
        let mut total = 0usize;
        // Position and offset after the last batch served.
        let mut served_end: Option<(u64, i64)> = None;
        loop {
            let item = cursor
                .next()
                .await
                .map_err(|e| LogError::io("read", file.path(), e))?;
            match item {
                CursorItem::End => break,
                CursorItem::Bad { position, reason } => {
                    if data.chunks.is_empty() {
                        return Err(LogError::Corrupt {
                            segment: file.path().to_path_buf(),
                            position,
                            offset,
                            reason,
                        });
                    }
                    break;
                }
                CursorItem::Batch { position, bytes } => {
                    // Batches are contiguous, so `expected` is this one's
                    // offset (its own base offset field is not CRC-covered).
                    if expected >= hw {
                        break;
                    }
                    let h = BatchHeader::parse(&bytes).expect("cursor checked the size");
                    // The tail cache holds batches validated on produce; what
                    // comes back from the disk is checked again (CRC32C and
                    // offset continuity), so bit rot or a misdirected write
                    // is reported instead of served.
                    let bad = match validate_batch(&bytes) {
                        Err(e) => Some(e.to_string()),
                        Ok(h) if h.base_offset != expected => Some(format!(
                            "batch has base offset {} where {expected} was expected",
                            h.base_offset
                        )),
                        Ok(_) => None,
                    };
                    if let Some(reason) = bad {
                        if data.chunks.is_empty() {
                            return Err(LogError::Corrupt {
                                segment: file.path().to_path_buf(),
                                position,
                                offset: expected,
                                reason: format!("cold read: {reason}"),
                            });
                        }
                        break;
                    }
                    expected = h.next_offset();
                    if h.last_offset() < offset {
                        continue;
                    }
                    if !data.chunks.is_empty() && total + bytes.len() > max_bytes {
                        break;
                    }
                    total += bytes.len();
                    served_end = Some((position + bytes.len() as u64, h.next_offset()));
                    data.chunks.push(bytes);
                    if total >= max_bytes {
                        break;
                    }
                }
            }
        }
        let hit = cursor.readahead_bytes > 0;
        let issues = {
            let mut st = sh.state.borrow_mut();
            let mut readahead = sh.readahead.borrow_mut();
            if hit {
                st.stats.readahead_hits += 1;
            } else {
                st.stats.readahead_misses += 1;
            }
            let waited = cursor.readahead_waited;
            readahead.budget().count(|s| {
                if hit {
                    s.hits += 1;
                    s.hit_waits += waited as u64;
                } else {
                    s.misses += 1;
                }
            });
            match served_end {
                // A closing log reads nothing more ahead.
                Some(_) if st.closed => Vec::new(),
                Some((end_position, end_offset)) => readahead.finish(
                    offset,
                    sequential,
                    segment,
                    end_offset,
                    end_position,
                    &st.segments,
                    sh.cache.contains(sh.cache_key, end_offset),
                ),
                None => Vec::new(),
            }
        };
        spawn_reads(issues);
        Ok(data)
    }

    /// Read-ahead counters of this partition's shard.
    pub fn readahead_stats(&self) -> super::readahead::ReadAheadStats {
        self.shared.readahead.borrow().budget().stats()
    }

    /// Waits until no read-ahead read of this partition's shard is in
    /// flight (for tests that need read-ahead to hold data, or none).
    #[doc(hidden)]
    pub async fn readahead_settled(&self) {
        let budget = self.shared.readahead.borrow().budget().clone();
        budget.settled().await
    }

    /// The first record whose timestamp is `>= timestamp_ms`, below the high
    /// watermark: `(offset, timestamp)` of that record (Kafka's ListOffsets).
    /// The time index finds the batch; one batch is then iterated.
    pub async fn offset_for_timestamp(
        &self,
        timestamp_ms: i64,
    ) -> Result<Option<(i64, i64)>, LogError> {
        let sh = &self.shared;
        let hw = self.high_watermark();
        // Candidate segments, oldest first.
        let candidates: Vec<(Rc<dyn StorageFile>, u64, u64)> = {
            let st = sh.state.borrow();
            st.segments
                .values()
                .filter(|s| s.base_offset < hw && s.max_timestamp >= timestamp_ms)
                .filter_map(|s| {
                    let file = s.file.clone()?;
                    let start = match s.timeindex.lookup(timestamp_ms.saturating_sub(1)) {
                        Some(e) => s.lookup_position(s.base_offset + e.relative_offset as i64 + 1),
                        None => 0,
                    };
                    Some((file, start, s.written_size))
                })
                .collect()
        };
        for (file, start, limit) in candidates {
            let mut cursor = BatchCursor::new(&*file, start, limit, 256 << 10);
            loop {
                match cursor
                    .next()
                    .await
                    .map_err(|e| LogError::io("read", file.path(), e))?
                {
                    CursorItem::End => break,
                    CursorItem::Bad { position, reason } => {
                        return Err(LogError::Corrupt {
                            segment: file.path().to_path_buf(),
                            position,
                            offset: -1,
                            reason,
                        })
                    }
                    CursorItem::Batch { position, bytes } => {
                        let h = BatchHeader::parse(&bytes).expect("cursor checked the size");
                        if h.base_offset >= hw {
                            return Ok(None);
                        }
                        if let Err(e) = validate_batch(&bytes) {
                            return Err(LogError::Corrupt {
                                segment: file.path().to_path_buf(),
                                position,
                                offset: h.base_offset,
                                reason: format!("cold read: {e}"),
                            });
                        }
                        if h.max_timestamp >= timestamp_ms {
                            return Ok(Some(first_record_at_or_after(bytes, &h, timestamp_ms)));
                        }
                    }
                }
            }
        }
        Ok(None)
    }

    /// Deletes whole sealed segments beyond `retention_ms` (by their newest
    /// timestamp) or `retention_bytes`, oldest first; never the active one.
    /// Returns how many segments were deleted.
    pub async fn enforce_retention(&self, now_ms: i64) -> Result<usize, LogError> {
        let sh = &self.shared;
        let cfg = &sh.config;
        let victims: Vec<Segment> = {
            let mut st = sh.state.borrow_mut();
            let mut total: u64 = st.segments.values().map(|s| s.size).sum();
            let mut victims = Vec::new();
            loop {
                let mut iter = st.segments.values();
                let (Some(first), Some(second)) = (iter.next(), iter.next()) else {
                    break;
                };
                // Only segments fully sealed on disk (the successor exists)
                // and durable.
                if second.file.is_none() || !first.sealed || first.next_offset > st.durable {
                    break;
                }
                let by_time = cfg.retention_ms >= 0
                    && first.max_timestamp >= 0
                    && now_ms.saturating_sub(first.max_timestamp) > cfg.retention_ms;
                let by_size =
                    cfg.retention_bytes >= 0 && total - first.size >= cfg.retention_bytes as u64;
                if !(by_time || by_size) {
                    break;
                }
                let base = first.base_offset;
                let seg = st.segments.remove(&base).expect("present");
                total -= seg.size;
                victims.push(seg);
            }
            if !victims.is_empty() {
                st.log_start = *st.segments.keys().next().expect("active remains");
                st.stats.segments_deleted += victims.len() as u64;
                sh.cache.truncate_before(sh.cache_key, st.log_start);
                sh.readahead.borrow_mut().invalidate();
            }
            victims
        };
        self.remove_segment_files(victims).await
    }

    /// Deletes whole sealed, durable segments that end at or before
    /// `offset` (used by the offsets topic's snapshot compaction once
    /// everything below `offset` has been rewritten). Returns how many.
    pub async fn delete_segments_before(&self, offset: i64) -> Result<usize, LogError> {
        let sh = &self.shared;
        let victims: Vec<Segment> = {
            let mut st = sh.state.borrow_mut();
            let mut victims = Vec::new();
            loop {
                let mut iter = st.segments.values();
                let (Some(first), Some(second)) = (iter.next(), iter.next()) else {
                    break;
                };
                if second.file.is_none()
                    || !first.sealed
                    || first.next_offset > st.durable
                    || first.next_offset > offset
                {
                    break;
                }
                let base = first.base_offset;
                victims.push(st.segments.remove(&base).expect("present"));
            }
            if !victims.is_empty() {
                st.log_start = *st.segments.keys().next().expect("active remains");
                st.stats.segments_deleted += victims.len() as u64;
                sh.cache.truncate_before(sh.cache_key, st.log_start);
                sh.readahead.borrow_mut().invalidate();
            }
            victims
        };
        self.remove_segment_files(victims).await
    }

    /// Unlinks the files of segments already taken out of the log state.
    async fn remove_segment_files(&self, victims: Vec<Segment>) -> Result<usize, LogError> {
        let sh = &self.shared;
        let count = victims.len();
        let mut first_err = None;
        for seg in victims {
            tracing::info!(segment = %seg.log_path.display(), "deleting segment");
            // The handle is dropped, not closed: reads in flight on this
            // segment keep their own reference and finish normally.
            for (path, must_exist) in [
                (seg.log_path.clone(), true),
                (seg.index_path(), false),
                (seg.timeindex_path(), false),
            ] {
                if let Err(e) = sh.storage.remove_file(&path).await {
                    if must_exist || e.kind() != io::ErrorKind::NotFound {
                        first_err.get_or_insert(LogError::io("delete segment", path, e));
                    }
                }
            }
        }
        if count > 0 {
            // Make the deletions durable: an unlink that a power loss takes
            // back would bring old segments back and move the log start
            // offset backwards after recovery.
            if let Err(e) = sh.storage.sync_dir(&sh.dir).await {
                first_err.get_or_insert(LogError::io("sync partition directory", &sh.dir, e));
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(count),
        }
    }

    /// Clean shutdown: finishes queued writes, fdatasync, trims the padding
    /// of the active segment, writes its indexes and the checkpoint, closes
    /// the files. Appends fail with `Closed` from the moment it is called.
    pub async fn close(&self) -> Result<(), LogError> {
        let sh = &self.shared;
        {
            let mut st = sh.state.borrow_mut();
            if st.closed && st.segments.values().all(|s| s.file.is_none()) {
                return Ok(());
            }
            st.closed = true;
        }
        sh.readahead.borrow_mut().invalidate();
        sh.wait_idle().await;
        let fenced = sh.state.borrow().fenced.clone();
        let mut result = match fenced {
            Some(e) => Err(e),
            None => sh.finish_active().await,
        };
        if result.is_ok() {
            result = sh.write_checkpoint().await;
        }
        let files: Vec<Rc<dyn StorageFile>> = {
            let mut st = sh.state.borrow_mut();
            st.segments
                .values_mut()
                .filter_map(|s| s.file.take())
                .collect()
        };
        for f in files {
            let _ = f.close().await;
        }
        sh.cache.unregister(sh.cache_key);
        sh.hw_event.notify(usize::MAX);
        sh.space_event.notify(usize::MAX);
        result
    }

    /// Writes the durable-end checkpoint now (it is otherwise written at
    /// most every `checkpoint_interval_ms` after an fdatasync, and on close).
    pub async fn checkpoint(&self) -> Result<(), LogError> {
        self.shared.write_checkpoint().await
    }

    /// Closes the log and removes the partition directory.
    pub async fn delete(&self) -> Result<(), LogError> {
        let _ = self.close().await;
        let dir = self.shared.dir.clone();
        self.shared
            .storage
            .remove_dir_all(&dir)
            .await
            .map_err(|e| LogError::io("delete partition", dir, e))
    }
}

impl Shared {
    /// The answer to a retry of batches already in the log at
    /// `base_offset..=last_offset`: nothing is appended, and the ack waits
    /// for the original batches to reach `acks` (they may still be queued;
    /// if their write fails, the retry fails with the same error and may be
    /// retried again, since `rollback` forgets them).
    fn duplicate_result(
        &self,
        st: &mut State,
        acks: Acks,
        base_offset: i64,
        last_offset: i64,
        max_timestamp_ms: i64,
    ) -> AppendResult {
        let end = last_offset + 1;
        assert!(
            base_offset <= last_offset && end <= st.log_end,
            "a duplicate's original batches {base_offset}..={last_offset} are below the log end {}",
            st.log_end
        );
        let cell = Rc::new(AckCell::default());
        let (reached, waiting) = match acks {
            Acks::Fsync => (st.durable >= end, &mut st.sync_acks),
            Acks::Leader | Acks::None => (st.written >= end, &mut st.write_acks),
        };
        if reached {
            cell.complete(Ok(()));
        } else {
            // The ack queues are sorted by end offset; this end is not
            // necessarily the largest.
            let at = waiting.partition_point(|(e, _)| *e <= end);
            waiting.insert(at, (end, cell.clone()));
        }
        st.stats.duplicate_appends += 1;
        AppendResult {
            base_offset,
            last_offset,
            log_append_time_ms: max_timestamp_ms,
            durable: AckFuture { cell },
            duplicate: true,
        }
    }

    fn check_writable(&self, st: &State) -> Result<(), LogError> {
        if let Some(e) = &st.fenced {
            return Err(e.clone());
        }
        if st.closed {
            return Err(LogError::Closed {
                dir: self.dir.clone(),
            });
        }
        Ok(())
    }

    async fn wait_idle(&self) {
        loop {
            let listener = self.idle_event.listen();
            {
                let st = self.state.borrow();
                if !st.writer_active
                    && !st.syncer_active
                    && !st.allocator_active
                    && st.queue.is_empty()
                    && !self.checkpoint_busy.get()
                {
                    return;
                }
            }
            listener.await;
        }
    }

    /// Waits until no preallocation is in flight.
    async fn wait_allocator(&self) {
        loop {
            let listener = self.idle_event.listen();
            if !self.state.borrow().allocator_active {
                return;
            }
            listener.await;
        }
    }

    /// The preallocation to start now, if one is due for `segment`, whose
    /// writes (queued so far) reach `end`: `(file, from, to)`; marks the
    /// allocator active. Due when less than half a step, or less than one
    /// maximal write, is left preallocated ahead of `end`. The step doubles
    /// with what the segment already holds (from [`MIN_PREALLOCATE_BYTES`]
    /// to `preallocate_bytes`), so a quiet partition reserves little; the
    /// space never goes past `segment_bytes`, where the segment is sealed
    /// and trimmed anyway.
    fn plan_allocation(
        &self,
        st: &mut State,
        segment: i64,
        end: u64,
    ) -> Option<(Rc<dyn StorageFile>, u64, u64)> {
        let max_step = self.config.preallocate_bytes;
        if max_step == 0 || !st.preallocate || st.allocator_active || st.fenced.is_some() {
            return None;
        }
        let cap = align_up(self.config.segment_bytes);
        let seg = st.segments.get(&segment)?;
        if seg.sealed {
            return None;
        }
        let file = seg.file.clone()?;
        let end = align_up(end);
        let step = max_step.min(seg.allocated_size.max(MIN_PREALLOCATE_BYTES));
        let lead = (step / 2).max(self.config.max_write_bytes as u64);
        if seg.allocated_size >= cap || seg.allocated_size >= end.saturating_add(lead) {
            return None;
        }
        let from = seg.allocated_size.max(end);
        let to = align_up(from + step).min(cap);
        if to <= from {
            return None;
        }
        st.allocator_active = true;
        Some((file, from, to))
    }

    fn advance_durable(&self, st: &mut State, target: i64) {
        if target <= st.durable {
            return;
        }
        assert!(
            target <= st.written,
            "durable {target} beyond written {}",
            st.written
        );
        st.durable = target;
        while let Some((end, _)) = st.sync_acks.front() {
            if *end > target {
                break;
            }
            let (_, cell) = st.sync_acks.pop_front().expect("front");
            cell.complete(Ok(()));
        }
        self.hw_event.notify(usize::MAX);
    }

    /// fdatasync failed (or a write failed other than with ENOSPC): the state
    /// of the file is unknown, so every pending ack fails and the partition
    /// refuses writes until it is reopened (recovered) from disk.
    fn fence(&self, err: LogError) {
        let mut st = self.state.borrow_mut();
        if st.fenced.is_some() {
            return;
        }
        tracing::error!(dir = %self.dir.display(), error = %err, "fencing partition");
        st.fenced = Some(LogError::Fenced {
            dir: self.dir.clone(),
            reason: err.to_string(),
        });
        let mut failed: Vec<Rc<AckCell>> = st.write_acks.drain(..).map(|(_, c)| c).collect();
        failed.extend(st.sync_acks.drain(..).map(|(_, c)| c));
        st.queue.clear();
        st.queued_bytes = 0;
        let written = st.written;
        self.cache.truncate_from(self.cache_key, written);
        drop(st);
        self.readahead.borrow_mut().invalidate();
        for cell in failed {
            cell.complete(Err(err.clone()));
        }
        self.hw_event.notify(usize::MAX);
        self.space_event.notify(usize::MAX);
        self.idle_event.notify(usize::MAX);
    }

    /// A write failed with ENOSPC: fail every batch not yet written, give
    /// their offsets back, and let later appends retry.
    fn rollback(&self, err: LogError) {
        let mut st = self.state.borrow_mut();
        let written = st.written;
        tracing::warn!(
            dir = %self.dir.display(),
            error = %err,
            rolled_back_to = written,
            "write failed; failing unwritten appends and rolling the log end back"
        );
        let mut failed: Vec<Rc<AckCell>> = st.write_acks.drain(..).map(|(_, c)| c).collect();
        let keep = st.sync_acks.partition_point(|(end, _)| *end <= written);
        failed.extend(st.sync_acks.drain(keep..).map(|(_, c)| c));
        st.queue.clear();
        st.queued_bytes = 0;
        st.log_end = written;
        // The failed batches are not in the log: a retry of one must be
        // appended, not answered as a duplicate of offsets that are gone.
        st.producers.truncate_from(written);
        st.segments.retain(|_, s| s.file.is_some());
        let last = st.active_mut();
        last.sealed = false;
        last.rollback_to_written(written);
        self.cache.truncate_from(self.cache_key, written);
        drop(st);
        self.readahead.borrow_mut().invalidate();
        for cell in failed {
            cell.complete(Err(err.clone()));
        }
        self.space_event.notify(usize::MAX);
    }

    fn handle_write_error(&self, err: LogError) {
        if matches!(err, LogError::DiskFull { .. }) {
            self.rollback(err);
        } else {
            self.fence(err);
        }
    }

    /// Marks the syncer active if it has work and is idle; the caller must
    /// then spawn it *after* releasing the state borrow (glommio may run a
    /// freshly spawned task before `spawn_local` returns).
    fn claim_syncer(st: &mut State) -> bool {
        if !st.syncer_active && st.written > st.durable {
            st.syncer_active = true;
            return true;
        }
        false
    }

    /// Writes the indexes of `seg` (as of now) to disk; failures only cost a
    /// rebuild at the next recovery, so they are logged, not returned.
    async fn write_indexes(
        &self,
        index_path: PathBuf,
        index: Vec<u8>,
        time_path: PathBuf,
        time: Vec<u8>,
    ) {
        for (path, bytes) in [(index_path, index), (time_path, time)] {
            if let Err(e) = write_whole_file(&*self.storage, &path, &bytes).await {
                tracing::warn!(path = %path.display(), error = %e, "could not write index; it will be rebuilt at the next start");
            }
        }
    }

    fn encode_indexes(seg: &mut Segment) -> (PathBuf, Vec<u8>, PathBuf, Vec<u8>) {
        seg.finish_timeindex();
        let trailer = seg.trailer();
        (
            seg.index_path(),
            seg.index.encode(&trailer),
            seg.timeindex_path(),
            seg.timeindex.encode(&trailer),
        )
    }

    /// Seals the segment before `new_base` (trim padding, fdatasync, write
    /// indexes) and creates the file of the segment at `new_base`.
    async fn roll(self: &Rc<Self>, new_base: i64) {
        // A preallocation in flight would grow the file again after the
        // truncation below.
        self.wait_allocator().await;
        let (file, size) = {
            let st = self.state.borrow();
            let (_, old) = st
                .segments
                .range(..new_base)
                .next_back()
                .expect("a segment precedes a roll");
            assert_eq!(
                old.size, old.written_size,
                "all of the old segment is written before a roll"
            );
            (old.file.clone().expect("old segment is on disk"), old.size)
        };
        // Trims the block padding and any preallocated space: sealed
        // segments carry no slack (and recovery requires them to end with
        // their last batch, or with zeros a crash left untrimmed).
        let sealed = async {
            file.truncate(size).await?;
            file.fdatasync().await
        }
        .await;
        if let Err(e) = sealed {
            self.fence(LogError::io("seal segment", file.path(), e));
            return;
        }
        let (ip, ib, tp, tb) = {
            let mut st = self.state.borrow_mut();
            if st.fenced.is_some() {
                return;
            }
            st.stats.fdatasyncs += 1;
            let old_end = st
                .segments
                .range(..new_base)
                .next_back()
                .expect("old")
                .1
                .next_offset;
            self.advance_durable(&mut st, old_end);
            let (_, old) = st.segments.range_mut(..new_base).next_back().expect("old");
            old.allocated_size = size;
            Self::encode_indexes(old)
        };
        self.write_indexes(ip, ib, tp, tb).await;
        let path = self.dir.join(log_file_name(new_base));
        let created = async {
            let f = self.storage.open(&path, OpenMode::CreateTruncate).await?;
            self.storage.sync_dir(&self.dir).await?;
            Ok::<_, io::Error>(f)
        }
        .await;
        match created {
            Ok(f) => {
                let mut st = self.state.borrow_mut();
                if st.fenced.is_some() {
                    return;
                }
                if let Some((_, old)) = st.segments.range_mut(..new_base).next_back() {
                    old.tail = Vec::new();
                }
                if let Some(seg) = st.segments.get_mut(&new_base) {
                    seg.file = Some(f);
                }
            }
            Err(e) => self.handle_write_error(LogError::io("create segment", path, e)),
        }
    }

    async fn write_checkpoint(&self) -> Result<(), LogError> {
        // One checkpoint write at a time (they share the temporary file).
        loop {
            let listener = self.idle_event.listen();
            if !self.checkpoint_busy.get() {
                break;
            }
            listener.await;
        }
        let cp = {
            let st = self.state.borrow();
            Checkpoint {
                durable_offset: st.durable,
                log_start_offset: st.log_start,
            }
        };
        self.checkpoint_busy.set(true);
        let tmp = self.dir.join(CHECKPOINT_TMP_FILE);
        let dst = self.dir.join(CHECKPOINT_FILE);
        let result = async {
            write_whole_file(&*self.storage, &tmp, &cp.encode()).await?;
            self.storage.rename(&tmp, &dst).await?;
            // Without this the rename may not survive a power loss, and
            // recovery would judge damage against an older checkpoint (or
            // none): corruption of acknowledged data would pass for a torn
            // tail and be cut off.
            self.storage.sync_dir(&self.dir).await
        }
        .await;
        self.checkpoint_busy.set(false);
        self.idle_event.notify(usize::MAX);
        match result {
            Ok(()) => {
                let mut st = self.state.borrow_mut();
                st.checkpointed = st.checkpointed.max(cp.durable_offset);
                st.last_checkpoint_ms = now_ms();
                Ok(())
            }
            Err(e) => Err(LogError::io("write checkpoint", dst, e)),
        }
    }

    /// Close path: trims the active segment's padding and preallocated
    /// space, fdatasync, indexes.
    async fn finish_active(&self) -> Result<(), LogError> {
        self.wait_allocator().await;
        let (file, size) = {
            let st = self.state.borrow();
            let seg = st.active();
            match &seg.file {
                Some(f) => (f.clone(), seg.written_size),
                None => return Ok(()),
            }
        };
        let synced = async {
            file.truncate(size).await?;
            file.fdatasync().await
        }
        .await;
        if let Err(e) = synced {
            let err = LogError::io("close segment", file.path(), e);
            self.fence(err.clone());
            return Err(err);
        }
        let (ip, ib, tp, tb) = {
            let mut st = self.state.borrow_mut();
            st.stats.fdatasyncs += 1;
            let written = st.written;
            self.advance_durable(&mut st, written);
            let active = st.active_mut();
            active.allocated_size = size;
            Self::encode_indexes(active)
        };
        self.write_indexes(ip, ib, tp, tb).await;
        Ok(())
    }
}

struct WriteJob {
    segment: i64,
    file: Rc<dyn StorageFile>,
    written_size: u64,
    /// The segment's `allocated_size` when the job was built: zeros may be
    /// written up to there.
    allocated_size: u64,
    tail: Vec<u8>,
    chunks: Vec<Bytes>,
    bytes: u64,
    end_offset: i64,
}

enum Job {
    Write(WriteJob),
    Roll(i64),
}

async fn writer_loop(sh: Rc<Shared>) {
    loop {
        let mut allocation = None;
        let job = {
            let mut st = sh.state.borrow_mut();
            let front = match st.queue.front() {
                Some(p) if st.fenced.is_none() => p.segment,
                _ => {
                    st.writer_active = false;
                    drop(st);
                    sh.idle_event.notify(usize::MAX);
                    return;
                }
            };
            let seg = st.segments.get(&front).expect("queued segment exists");
            match seg.file.clone() {
                None => Job::Roll(front),
                Some(file) => {
                    let written_size = seg.written_size;
                    let allocated_size = seg.allocated_size;
                    let tail = seg.tail.clone();
                    let mut chunks = Vec::new();
                    let mut bytes = 0u64;
                    let mut end_offset = st.written;
                    while let Some(p) = st.queue.front() {
                        if p.segment != front
                            || (!chunks.is_empty()
                                && bytes + p.data.len() as u64 > sh.config.max_write_bytes as u64)
                        {
                            break;
                        }
                        let p = st.queue.pop_front().expect("front");
                        assert_eq!(
                            p.position,
                            written_size + bytes,
                            "queued data is contiguous"
                        );
                        bytes += p.data.len() as u64;
                        end_offset = p.end_offset;
                        chunks.push(p.data);
                    }
                    // Everything queued for this segment, not just this
                    // write: the space should be there before it is reached.
                    let queued_end = st
                        .queue
                        .iter()
                        .take_while(|p| p.segment == front)
                        .last()
                        .map_or(written_size + bytes, |p| p.position + p.data.len() as u64);
                    allocation = sh.plan_allocation(&mut st, front, queued_end);
                    Job::Write(WriteJob {
                        segment: front,
                        file,
                        written_size,
                        allocated_size,
                        tail,
                        chunks,
                        bytes,
                        end_offset,
                    })
                }
            }
        };
        if let (Some((file, from, to)), Job::Write(w)) = (allocation, &job) {
            // Runs beside the write: the fallocate goes to an io_uring
            // worker thread and this write does not wait for it.
            glommio::spawn_local(allocator_task(sh.clone(), w.segment, file, from, to)).detach();
        }
        match job {
            Job::Roll(base) => sh.roll(base).await,
            Job::Write(job) => write_once(&sh, job).await,
        }
    }
}

/// Large writes are rounded up to a multiple of this (with zeros), so that
/// their lengths repeat and the storage's write-buffer pool can reuse
/// buffers (`POOLED_WRITE_MIN_BYTES`): at most 64 KiB of zeros more per
/// write of at least 256 KiB (under 25%, about 3% for the 1 MiB and larger
/// writes of a busy partition), written only into preallocated space.
const WRITE_LEN_CLASS_BYTES: u64 = 64 << 10;

/// The length of a write of `exact` bytes at `start`: rounded up to its
/// class when large and when the zeros past the end stay inside the space
/// preallocated up to `allocated_size` (zeros past the last batch are the
/// end of the log for recovery, as preallocated space is, so writing them
/// changes nothing but the bytes sent to the disk).
fn write_len(exact: u64, start: u64, allocated_size: u64) -> u64 {
    if exact < crate::io::POOLED_WRITE_MIN_BYTES as u64 {
        return exact;
    }
    let class = exact.div_ceil(WRITE_LEN_CLASS_BYTES) * WRITE_LEN_CLASS_BYTES;
    if start + class <= allocated_size {
        class
    } else {
        exact
    }
}

async fn write_once(sh: &Rc<Shared>, job: WriteJob) {
    let start = job.written_size - job.tail.len() as u64;
    assert_eq!(start % BLOCK_SIZE as u64, 0, "tail block is aligned");
    let logical_end = job.written_size + job.bytes;
    let exact = align_up(logical_end) - start;
    let len = write_len(exact, start, job.allocated_size) as usize;
    assert!(len as u64 >= exact, "a write covers its data");
    assert_eq!(len % BLOCK_SIZE, 0, "O_DIRECT writes are whole blocks");
    let mut buf = job.file.alloc_buf(len);
    let new_tail;
    {
        let out = buf.as_mut_slice();
        let mut at = job.tail.len();
        out[..at].copy_from_slice(&job.tail);
        for c in &job.chunks {
            out[at..at + c.len()].copy_from_slice(c);
            at += c.len();
        }
        out[at..].fill(0);
        let tail_start = (align_down(logical_end) - start) as usize;
        new_tail = out[tail_start..at].to_vec();
    }
    let result = job.file.write_at(buf, start).await;
    let mut st = sh.state.borrow_mut();
    if st.fenced.is_some() {
        return;
    }
    match result {
        Ok(n) if n == len => {
            let seg = st
                .segments
                .get_mut(&job.segment)
                .expect("segment being written exists");
            seg.written_size = logical_end;
            seg.tail = new_tail;
            st.written = job.end_offset;
            st.queued_bytes -= job.bytes;
            st.stats.writes += 1;
            st.stats.bytes_written += len as u64;
            while let Some((end, _)) = st.write_acks.front() {
                if *end > job.end_offset {
                    break;
                }
                let (_, cell) = st.write_acks.pop_front().expect("front");
                cell.complete(Ok(()));
            }
            let spawn = Shared::claim_syncer(&mut st);
            drop(st);
            if spawn {
                glommio::spawn_local(syncer_loop(sh.clone())).detach();
            }
            sh.space_event.notify(usize::MAX);
        }
        other => {
            drop(st);
            let err = match other {
                Ok(n) => io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("short write: {n} of {len} bytes"),
                ),
                Err(e) => e,
            };
            sh.handle_write_error(LogError::io("write", job.file.path(), err));
        }
    }
}

/// Preallocates `[from, to)` of `segment`'s file (claimed by
/// `plan_allocation`). A failure costs only speed: ENOSPC or EIO are logged
/// and that step is skipped (the writes report real errors); "not
/// supported" turns preallocation off for this partition.
async fn allocator_task(
    sh: Rc<Shared>,
    segment: i64,
    file: Rc<dyn StorageFile>,
    from: u64,
    to: u64,
) {
    assert!(from < to, "empty preallocation {from}..{to}");
    let result = file.allocate(from, to - from).await;
    {
        let mut st = sh.state.borrow_mut();
        assert!(st.allocator_active, "one preallocation at a time");
        st.allocator_active = false;
        match result {
            Ok(true) => st.stats.preallocations += 1,
            Ok(false) => st.preallocate = false,
            Err(e) => {
                tracing::warn!(segment = %file.path().display(), from, to, error = %e, "could not preallocate segment space; appends continue without it");
            }
        }
        if st.preallocate {
            // On failure too: the next attempt waits for the next step.
            if let Some(seg) = st.segments.get_mut(&segment) {
                seg.allocated_size = seg.allocated_size.max(to);
            }
        }
    }
    sh.idle_event.notify(usize::MAX);
}

async fn syncer_loop(sh: Rc<Shared>) {
    loop {
        let (target, files) = {
            let mut st = sh.state.borrow_mut();
            if st.fenced.is_some() || st.written <= st.durable {
                st.syncer_active = false;
                drop(st);
                sh.idle_event.notify(usize::MAX);
                return;
            }
            let target = st.written;
            let durable = st.durable;
            let files: Vec<Rc<dyn StorageFile>> = st
                .segments
                .range(..target)
                .rev()
                .take_while(|(_, s)| s.next_offset > durable)
                .filter_map(|(_, s)| s.file.clone())
                .collect();
            (target, files)
        };
        let mut failed = None;
        let sync_started = std::time::Instant::now();
        for f in &files {
            if let Err(e) = f.fdatasync().await {
                failed = Some(LogError::io("fdatasync", f.path(), e));
                break;
            }
        }
        if let Some(err) = failed {
            // Never retry-and-ack: the kernel may have dropped the dirty data.
            let mut st = sh.state.borrow_mut();
            st.syncer_active = false;
            drop(st);
            sh.fence(err);
            return;
        }
        let checkpoint_due = {
            let mut st = sh.state.borrow_mut();
            if st.fenced.is_some() {
                continue;
            }
            st.stats.fdatasyncs += 1;
            crate::metrics::record_fdatasync(
                sync_started.elapsed().as_micros() as u64,
                target.saturating_sub(st.durable).max(0) as u64,
            );
            sh.advance_durable(&mut st, target);
            st.durable > st.checkpointed
                && now_ms().saturating_sub(st.last_checkpoint_ms)
                    >= sh.config.checkpoint_interval_ms as i64
        };
        if checkpoint_due {
            if let Err(e) = sh.write_checkpoint().await {
                tracing::warn!(error = %e, "could not write the durable checkpoint; recovery will be less precise");
            }
        }
    }
}

/// Loads both indexes of a segment; `None` if either is missing or damaged.
async fn load_indexes(
    storage: &StorageRef,
    seg: &Segment,
) -> Option<(OffsetIndex, TimeIndex, IndexTrailer)> {
    let ib = read_whole_file(&**storage, &seg.index_path()).await.ok()?;
    let tb = read_whole_file(&**storage, &seg.timeindex_path())
        .await
        .ok()?;
    let (index, it) = OffsetIndex::decode(&ib).ok()?;
    let (time, tt) = TimeIndex::decode(&tb).ok()?;
    let same = it.segment_bytes == tt.segment_bytes
        && it.next_offset == tt.next_offset
        && it.max_timestamp == tt.max_timestamp
        && it.next_offset >= seg.base_offset
        && index
            .entries()
            .iter()
            .all(|e| (e.relative_offset as i64) < it.next_offset - seg.base_offset)
        && time
            .entries()
            .iter()
            .all(|e| (e.relative_offset as i64) < it.next_offset - seg.base_offset);
    same.then_some((index, time, it))
}

fn apply_trusted_indexes(
    seg: &mut Segment,
    index: OffsetIndex,
    time: TimeIndex,
    trailer: &IndexTrailer,
) {
    seg.max_timestamp = trailer.max_timestamp;
    seg.max_timestamp_offset = time.last().map_or(seg.base_offset, |e| {
        seg.base_offset + e.relative_offset as i64
    });
    seg.index = index;
    seg.timeindex = time;
    seg.bytes_since_index = 0;
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> LogError {
    let path = path.to_path_buf();
    move |e| LogError::io(op, path, e)
}

async fn recover(
    storage: &StorageRef,
    dir: &Path,
    config: &LogConfig,
) -> Result<(State, RecoveryReport), LogError> {
    storage
        .create_dir_all(dir)
        .await
        .map_err(io_err("create partition directory", dir))?;
    let entries = storage
        .list_dir(dir)
        .await
        .map_err(io_err("list partition directory", dir))?;
    let mut report = RecoveryReport::default();
    let mut bases: Vec<i64> = entries
        .iter()
        .filter(|e| !e.is_dir)
        .filter_map(|e| parse_file_name(&e.name, LOG_SUFFIX))
        .collect();
    bases.sort_unstable();
    // Orphan indexes (their log was deleted) and stale temporary files.
    for e in entries.iter().filter(|e| !e.is_dir) {
        let orphan = [INDEX_SUFFIX, TIMEINDEX_SUFFIX]
            .iter()
            .filter_map(|s| parse_file_name(&e.name, s))
            .any(|b| bases.binary_search(&b).is_err());
        if orphan || e.name == CHECKPOINT_TMP_FILE {
            let _ = storage.remove_file(&dir.join(&e.name)).await;
        }
    }
    let checkpoint = if entries.iter().any(|e| e.name == CHECKPOINT_FILE) {
        let path = dir.join(CHECKPOINT_FILE);
        match read_whole_file(&**storage, &path).await {
            Ok(b) => match Checkpoint::decode(&b) {
                Ok(c) => Some(c),
                Err(reason) => {
                    tracing::warn!(path = %path.display(), reason, "ignoring damaged checkpoint");
                    None
                }
            },
            Err(e) => return Err(LogError::io("read checkpoint", path, e)),
        }
    } else {
        None
    };
    report.checkpoint = checkpoint;
    let durable_floor = checkpoint.map_or(0, |c| c.durable_offset);
    let interval = config.index_interval_bytes;

    let mut segments: BTreeMap<i64, Segment> = BTreeMap::new();
    if bases.is_empty() {
        let mut seg = Segment::new(dir, 0);
        let f = storage
            .open(&seg.log_path, OpenMode::CreateTruncate)
            .await
            .map_err(io_err("create segment", &seg.log_path))?;
        storage
            .sync_dir(dir)
            .await
            .map_err(io_err("sync partition directory", dir))?;
        seg.file = Some(f);
        segments.insert(0, seg);
    }
    let now = now_ms();
    for (i, &base) in bases.iter().enumerate() {
        let is_last = i + 1 == bases.len();
        let mut seg = Segment::new(dir, base);
        let path = seg.log_path.clone();
        let file = storage
            .open(&path, OpenMode::ReadWrite)
            .await
            .map_err(io_err("open segment", &path))?;
        let size = file.size().await.map_err(io_err("stat segment", &path))?;
        let loaded = load_indexes(storage, &seg).await;
        let corrupt = |position: u64, offset: i64, reason: String| LogError::Corrupt {
            segment: path.clone(),
            position,
            offset,
            reason,
        };
        let mut clean = false;
        let (mut start_pos, mut start_off, mut trusted_size) = (0u64, base, 0u64);
        match loaded {
            Some((index, time, trailer)) if trailer.segment_bytes == size => {
                seg.next_offset = trailer.next_offset;
                apply_trusted_indexes(&mut seg, index, time, &trailer);
                clean = true;
            }
            Some((index, time, trailer)) if is_last && trailer.segment_bytes < size => {
                if let Some(e) = index.last() {
                    start_pos = e.position as u64;
                    start_off = base + e.relative_offset as i64;
                }
                trusted_size = trailer.segment_bytes;
                apply_trusted_indexes(&mut seg, index, time, &trailer);
            }
            _ => {}
        }
        if !clean {
            let mut outcome = scan_segment(&mut seg, &*file, start_pos, start_off, size, interval)
                .await
                .map_err(io_err("scan segment", &path))?;
            report.scanned_bytes += outcome.end_position - start_pos;
            if outcome
                .stop
                .as_ref()
                .is_some_and(|(p, _)| *p < trusted_size)
            {
                // The stale index describes data that is gone: rebuild from 0.
                seg = Segment::new(dir, base);
                outcome = scan_segment(&mut seg, &*file, 0, base, size, interval)
                    .await
                    .map_err(io_err("scan segment", &path))?;
                report.scanned_bytes += outcome.end_position;
            }
            if let Some((position, reason)) = outcome.stop {
                // Zeros after the last batch are the end of the log: the
                // file was preallocated (or padded to a block) and not
                // written further, or writes never reached the disk. Only
                // data below the checkpoint (the last segment) or before the
                // next segment's base offset (a sealed one: the gap check
                // below) may not end there.
                let zero_tail = outcome.zero_tail;
                if !is_last && !zero_tail {
                    return Err(corrupt(
                        position,
                        outcome.next_offset,
                        format!("{reason} (in a sealed segment, which was fsynced before the next one was created)"),
                    ));
                }
                if !is_last && outcome.next_offset != bases[i + 1] {
                    // Checked before anything is cut: a sealed segment may
                    // end in zeros only where its batches are all there.
                    return Err(corrupt(
                        position,
                        outcome.next_offset,
                        format!(
                            "{reason}, but the next segment starts at offset {}: offset gap (in a sealed segment, which was fsynced before the next one was created)",
                            bases[i + 1]
                        ),
                    ));
                }
                if is_last && outcome.next_offset < durable_floor {
                    return Err(corrupt(
                        position,
                        outcome.next_offset,
                        format!("{reason}; the checkpoint says offsets below {durable_floor} were made durable"),
                    ));
                }
                if zero_tail {
                    tracing::debug!(
                        segment = %path.display(),
                        from_bytes = size,
                        to_bytes = position,
                        "zeros after the last batch (preallocated space): trimming"
                    );
                    report.zero_tail_bytes += size - position;
                } else {
                    tracing::warn!(
                        segment = %path.display(),
                        from_bytes = size,
                        to_bytes = position,
                        reason,
                        "torn tail after a crash: truncating the last segment"
                    );
                    report.truncated_bytes += size - position;
                    report.torn_tail =
                        Some(format!("{} at byte {position}: {reason}", path.display()));
                }
                // Cut in both cases: stale bytes past the end could otherwise
                // be taken for batches once new appends reach them.
                file.truncate(position)
                    .await
                    .map_err(io_err("truncate the end of a segment", &path))?;
            }
            seg.next_offset = outcome.next_offset;
            seg.written_size = outcome.end_position;
            if !is_last {
                tracing::warn!(segment = %path.display(), "rebuilding a missing or damaged index from the log");
                let (ip, ib, tp, tb) = Shared::encode_indexes(&mut seg);
                for (p, b) in [(ip, ib), (tp, tb)] {
                    if let Err(e) = write_whole_file(&**storage, &p, &b).await {
                        tracing::warn!(path = %p.display(), error = %e, "could not write rebuilt index");
                    }
                }
                report.indexes_rebuilt.push(path.clone());
            }
        } else {
            seg.written_size = size;
        }
        seg.size = seg.written_size;
        // The file now ends at its last batch (trimmed above if it did not).
        seg.allocated_size = seg.written_size;
        if let Some(prev) = segments.values().next_back() {
            if prev.next_offset != base {
                return Err(corrupt(
                    0,
                    base,
                    format!(
                        "offset gap: the previous segment ends at offset {} but this one starts at {base}",
                        prev.next_offset
                    ),
                ));
            }
        }
        if is_last {
            report.clean_shutdown = clean;
            let tail_start = align_down(seg.written_size);
            if tail_start < seg.written_size {
                let tail = file
                    .read_at(tail_start, (seg.written_size - tail_start) as usize)
                    .await
                    .map_err(io_err("read tail block", &path))?;
                assert_eq!(tail.len() as u64, seg.written_size - tail_start);
                seg.tail = tail.to_vec();
            }
            if seg.written_size > 0 {
                seg.first_append_ms = Some(now);
            }
            // Whatever survived the crash may sit in volatile caches: make it
            // durable before it becomes visible.
            file.fdatasync().await.map_err(io_err("fdatasync", &path))?;
        } else {
            seg.sealed = true;
        }
        seg.file = Some(file);
        segments.insert(base, seg);
    }
    report.segments = segments.len();
    let log_start = *segments.keys().next().expect("a segment");
    let log_end = segments
        .values()
        .next_back()
        .expect("a segment")
        .next_offset;
    if log_end < durable_floor {
        let last = segments.values().next_back().expect("a segment");
        return Err(LogError::Corrupt {
            segment: last.log_path.clone(),
            position: last.written_size,
            offset: log_end,
            reason: format!("the log ends at offset {log_end} but the checkpoint says offsets below {durable_floor} were made durable; acknowledged data is missing"),
        });
    }
    let producers = rebuild_producer_state(&segments, &mut report).await?;
    let state = State {
        segments,
        log_start,
        log_end,
        written: log_end,
        durable: log_end,
        queue: VecDeque::new(),
        queued_bytes: 0,
        write_acks: VecDeque::new(),
        sync_acks: VecDeque::new(),
        writer_active: false,
        syncer_active: false,
        allocator_active: false,
        preallocate: config.preallocate_bytes > 0,
        fenced: None,
        closed: false,
        checkpointed: durable_floor,
        last_checkpoint_ms: now,
        stats: LogStats::default(),
        producers,
    };
    Ok((state, report))
}

/// Where the producer-state scan starts in each segment it reads, oldest
/// first: `(segment base offset, start position, offset of the batch
/// there)`. Whole segments from the newest back while they fit in
/// `budget_bytes`; in the oldest one, the sparse-index entry at or before
/// the bound (so at most one index interval more is read).
fn producer_scan_plan(
    segments: &BTreeMap<i64, Segment>,
    budget_bytes: u64,
) -> Vec<(i64, u64, i64)> {
    let mut plan = Vec::new();
    let mut left = budget_bytes;
    for seg in segments.values().rev() {
        if left == 0 {
            break;
        }
        if seg.written_size == 0 {
            continue;
        }
        if seg.written_size <= left {
            plan.push((seg.base_offset, 0, seg.base_offset));
            left -= seg.written_size;
            continue;
        }
        let bound = seg.written_size - left;
        let entries = seg.index.entries();
        let after = entries.partition_point(|e| e.position as u64 <= bound);
        let start = match after.checked_sub(1) {
            Some(i) => (
                entries[i].position as u64,
                seg.base_offset + entries[i].relative_offset as i64,
            ),
            None => (0, seg.base_offset),
        };
        plan.push((seg.base_offset, start.0, start.1));
        left = 0;
    }
    plan.reverse();
    plan
}

/// Rebuilds the idempotent producers' state from the log's tail (see
/// [`PRODUCER_STATE_SCAN_BYTES`]), with the same DMA reads as cold reads.
/// Every batch in the window is replayed in offset order, as if appended.
/// A batch that fails its CRC or offset check (possible only in a segment
/// recovery trusted without scanning) leaves the state empty, with a
/// warning: every producer is then unknown and accepted at any sequence,
/// which keeps the partition writable; reading that batch will report the
/// corruption.
async fn rebuild_producer_state(
    segments: &BTreeMap<i64, Segment>,
    report: &mut RecoveryReport,
) -> Result<ProducerStateTable, LogError> {
    let mut table = ProducerStateTable::new(MAX_PRODUCERS_PER_PARTITION);
    for (base, start, start_offset) in producer_scan_plan(segments, PRODUCER_STATE_SCAN_BYTES) {
        let seg = &segments[&base];
        let file = seg.file.clone().expect("recovered segments are open");
        let mut cursor = BatchCursor::new(&*file, start, seg.written_size, SCAN_CHUNK);
        let mut expected = start_offset;
        loop {
            let item = cursor
                .next()
                .await
                .map_err(|e| LogError::io("scan producer state", file.path(), e))?;
            let (position, bytes) = match item {
                CursorItem::End => break,
                CursorItem::Batch { position, bytes } => (position, bytes),
                CursorItem::Bad { position, reason } => {
                    forget_producers(&mut table, file.path(), position, &reason);
                    return Ok(table);
                }
            };
            let h = match validate_batch(&bytes) {
                Ok(h) if h.base_offset == expected => h,
                Ok(h) => {
                    let reason = format!(
                        "batch has base offset {} where {expected} was expected",
                        h.base_offset
                    );
                    forget_producers(&mut table, file.path(), position, &reason);
                    return Ok(table);
                }
                Err(e) => {
                    forget_producers(&mut table, file.path(), position, &e.to_string());
                    return Ok(table);
                }
            };
            report.producer_state_scanned_bytes += bytes.len() as u64;
            expected = h.next_offset();
            // Batches appended before sequence checks existed may carry
            // fields the checks refuse; they cannot be retried usefully.
            if h.producer_id >= 0 && h.producer_epoch >= 0 && h.base_sequence >= 0 {
                table.record(
                    h.producer_id,
                    BatchMetadata {
                        producer_epoch: h.producer_epoch,
                        first_sequence: h.base_sequence,
                        last_sequence: super::producer_state::last_sequence(
                            h.base_sequence,
                            h.last_offset_delta,
                        ),
                        base_offset: h.base_offset,
                        last_offset: h.last_offset(),
                        max_timestamp_ms: h.max_timestamp,
                    },
                );
            }
        }
        assert_eq!(
            expected, seg.next_offset,
            "recovery and the producer-state scan agree on the segment's end"
        );
    }
    assert!(table.invariants_hold());
    report.producers_recovered = table.len();
    Ok(table)
}

fn forget_producers(table: &mut ProducerStateTable, path: &Path, position: u64, reason: &str) {
    tracing::warn!(
        segment = %path.display(),
        position,
        reason,
        "unreadable batch while rebuilding idempotent-producer state: every producer of this partition is treated as new (retries of batches sent before the restart may be appended twice)"
    );
    table.clear();
}
