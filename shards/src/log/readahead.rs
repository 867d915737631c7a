//! Sequential read-ahead for cold fetches (reads the tail cache misses).
//!
//! A consumer keeps one fetch in flight per partition. Without read-ahead
//! the broker reads a cold fetch's bytes only once the fetch arrives, one
//! read at a time, and the disk idles while the response travels and the
//! client decodes it: disk time and network time add up, and the disk runs
//! at queue depth 1. Here, once a partition's cold fetches are seen to be
//! sequential (a fetch asks for the offset where the previous cold read
//! ended), the broker reads ahead of the consumer: `chunk_bytes` reads, up
//! to `partition_bytes` held per partition and `shard_bytes` per shard, so
//! the next fetch finds its bytes in memory, or waits for a read that is
//! already in flight, and the disk sees several reads at once.
//!
//! What keeps it safe:
//! * a chunk never extends past its segment's written size when issued, and
//!   `PartitionLog::read` still stops at the high watermark;
//! * bytes taken from read-ahead pass exactly the checks of any cold read
//!   (CRC32C and offset continuity, in `PartitionLog::read`);
//! * every chunk records the partition's read-ahead generation when issued.
//!   Whatever could make the file's bytes differ from a chunk's, or make
//!   them unservable (rollback, fence, segment deletion, close), calls
//!   [`ReadAhead::invalidate`]: the generation moves on, the stream is
//!   dropped, and a chunk of an older generation is never served, even by a
//!   read that picked it up before and was waiting for it.
//!
//! One stream per partition: a cold read that does not continue the stream
//! replaces it (random access, a second consumer elsewhere in the log), and
//! the new stream reads ahead only once the next fetch confirms it.

use super::segment::Segment;
use crate::io::{align_down, FileRef, LocalBuf};
use bytes::{Bytes, BytesMut};
use event_listener::Event;
use std::{
    cell::{Cell, RefCell},
    collections::{BTreeMap, VecDeque},
    io,
    rc::Rc,
};

/// Default bound on read-ahead held per partition, in bytes: four fetches
/// of the clients' default 2 MiB per partition, and eight 1 MiB reads in
/// flight, the depth at which `ringmq-bench disk` reaches the device's
/// sequential read bandwidth.
pub const DEFAULT_READAHEAD_PARTITION_BYTES: usize = 8 << 20;
/// Default bound on read-ahead held per shard, in bytes: eight partitions
/// read sequentially at full depth at once; as large as the default tail
/// cache, so a shard's fetch memory is at most twice that.
pub const DEFAULT_READAHEAD_SHARD_BYTES: usize = 64 << 20;
/// Default size of one read-ahead read, in bytes (the block size at which
/// `ringmq-bench disk` measures the device's sequential read bandwidth).
pub const DEFAULT_READAHEAD_CHUNK_BYTES: usize = 1 << 20;

/// Read-ahead bounds. Any of them 0 disables read-ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadAheadSettings {
    /// Most bytes read ahead (in flight or ready) for one partition.
    pub partition_bytes: usize,
    /// Most bytes read ahead over all partitions of a shard.
    pub shard_bytes: usize,
    /// Size of one read.
    pub chunk_bytes: usize,
}

impl Default for ReadAheadSettings {
    fn default() -> Self {
        ReadAheadSettings {
            partition_bytes: DEFAULT_READAHEAD_PARTITION_BYTES,
            shard_bytes: DEFAULT_READAHEAD_SHARD_BYTES,
            chunk_bytes: DEFAULT_READAHEAD_CHUNK_BYTES,
        }
    }
}

impl ReadAheadSettings {
    /// No read-ahead: every cold read reads the file when the fetch comes.
    pub fn disabled() -> ReadAheadSettings {
        ReadAheadSettings {
            partition_bytes: 0,
            shard_bytes: 0,
            chunk_bytes: 0,
        }
    }

    pub fn enabled(&self) -> bool {
        self.partition_bytes > 0 && self.shard_bytes > 0 && self.chunk_bytes > 0
    }

    /// One read, no larger than the partition allows.
    fn read_bytes(&self) -> usize {
        self.chunk_bytes.min(self.partition_bytes)
    }
}

/// Read-ahead counters of a shard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReadAheadStats {
    /// Cold reads that took bytes from read-ahead.
    pub hits: u64,
    /// Hits that had to wait for a read still in flight.
    pub hit_waits: u64,
    /// Cold reads that found nothing read ahead and read the file.
    pub misses: u64,
    /// Reads issued ahead, and their bytes.
    pub reads: u64,
    pub read_bytes: u64,
    /// Bytes read ahead and dropped without being served (random access,
    /// invalidation, the consumer caught up with the tail cache).
    pub discarded_bytes: u64,
    /// Streams dropped because the log changed under them.
    pub invalidations: u64,
    /// Bytes held now (reads in flight or ready).
    pub held_bytes: u64,
}

/// The read-ahead bounds and counters of one shard, shared by its
/// partitions (it travels with the shard's [`crate::cache::TailCache`]).
#[derive(Clone)]
pub struct ReadAheadBudget {
    inner: Rc<BudgetInner>,
}

struct BudgetInner {
    settings: ReadAheadSettings,
    held_bytes: Cell<usize>,
    stats: Cell<ReadAheadStats>,
    /// Reads in flight, and a notification when one completes.
    in_flight: Cell<usize>,
    read_done: Event,
}

impl std::fmt::Debug for ReadAheadBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadAheadBudget")
            .field("settings", &self.inner.settings)
            .field("held_bytes", &self.inner.held_bytes.get())
            .finish()
    }
}

impl ReadAheadBudget {
    pub fn new(settings: ReadAheadSettings) -> ReadAheadBudget {
        ReadAheadBudget {
            inner: Rc::new(BudgetInner {
                settings,
                held_bytes: Cell::new(0),
                stats: Cell::new(ReadAheadStats::default()),
                in_flight: Cell::new(0),
                read_done: Event::new(),
            }),
        }
    }

    pub fn settings(&self) -> ReadAheadSettings {
        self.inner.settings
    }

    pub fn stats(&self) -> ReadAheadStats {
        let mut stats = self.inner.stats.get();
        stats.held_bytes = self.inner.held_bytes.get() as u64;
        stats
    }

    pub(crate) fn count(&self, f: impl FnOnce(&mut ReadAheadStats)) {
        let mut stats = self.inner.stats.get();
        f(&mut stats);
        self.inner.stats.set(stats);
    }

    /// Resolves once no read-ahead read of the shard is in flight.
    pub async fn settled(&self) {
        loop {
            let listener = self.inner.read_done.listen();
            if self.inner.in_flight.get() == 0 {
                return;
            }
            listener.await;
        }
    }

    /// Takes `bytes` out of the shard's allowance, if they fit.
    fn try_take(&self, bytes: usize) -> bool {
        let held = self.inner.held_bytes.get();
        if held + bytes > self.inner.settings.shard_bytes {
            return false;
        }
        self.inner.held_bytes.set(held + bytes);
        true
    }

    fn give_back(&self, bytes: usize) {
        let held = self.inner.held_bytes.get();
        assert!(
            bytes <= held,
            "read-ahead gives back {bytes} of {held} held bytes"
        );
        self.inner.held_bytes.set(held - bytes);
    }
}

enum ChunkState {
    InFlight,
    Ready(LocalBuf),
    /// The read failed; a fetch that needs these bytes reads the file itself
    /// and reports the error it gets then.
    Failed,
}

/// One read ahead: bytes `start..start + len` of segment `segment`. Its
/// bytes count against the shard's allowance from issue until it is dropped
/// (the read task holds it until the read completes, so a read in flight is
/// counted even after its stream is gone).
struct Chunk {
    segment: i64,
    start: u64,
    len: usize,
    generation: u64,
    state: RefCell<ChunkState>,
    done: Event,
    served: Cell<bool>,
    budget: ReadAheadBudget,
}

impl Chunk {
    fn end(&self) -> u64 {
        self.start + self.len as u64
    }

    fn complete(&self, result: io::Result<LocalBuf>) {
        let state = match result {
            Ok(buf) => ChunkState::Ready(buf),
            Err(err) => {
                tracing::debug!(segment = self.segment, position = self.start, error = %err, "read-ahead read failed");
                ChunkState::Failed
            }
        };
        *self.state.borrow_mut() = state;
        self.done.notify(usize::MAX);
    }

    /// Waits for the read; true if it was still in flight.
    async fn wait(&self) -> bool {
        let mut waited = false;
        loop {
            let listener = self.done.listen();
            if !matches!(*self.state.borrow(), ChunkState::InFlight) {
                return waited;
            }
            waited = true;
            listener.await;
        }
    }

    /// How many of its bytes the read returned (0 when it failed).
    fn ready_len(&self) -> usize {
        match &*self.state.borrow() {
            ChunkState::Ready(buf) => buf.len().min(self.len),
            _ => 0,
        }
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        self.budget.give_back(self.len);
        if !self.served.get() {
            let len = self.len as u64;
            self.budget.count(|s| s.discarded_bytes += len);
        }
    }
}

/// A read to start: spawn it once no `RefCell` borrow is held.
pub(crate) struct Issue {
    file: FileRef,
    chunk: Rc<Chunk>,
}

/// Starts the reads `ReadAhead::finish` asked for, each as its own task.
pub(crate) fn spawn_reads(issues: Vec<Issue>) {
    for Issue { file, chunk } in issues {
        let budget = chunk.budget.inner.clone();
        budget.in_flight.set(budget.in_flight.get() + 1);
        glommio::spawn_local(async move {
            let result = file.read_at_local(chunk.start, chunk.len).await;
            chunk.complete(result);
            // The chunk is dropped here if its stream is gone.
            drop(chunk);
            budget.in_flight.set(budget.in_flight.get() - 1);
            budget.read_done.notify(usize::MAX);
        })
        .detach();
    }
}

/// What one sequential reader has been given and what was read for it.
struct Stream {
    /// Where the last cold read ended: a sequential fetch asks for
    /// `next_offset`, whose batch starts at `next_position` of segment
    /// `next_segment`.
    next_offset: i64,
    next_segment: i64,
    next_position: u64,
    /// Reads issued ahead, contiguous in log order.
    chunks: VecDeque<Rc<Chunk>>,
    /// Where the next read ahead starts.
    issue_segment: i64,
    issue_position: u64,
}

/// A sealed segment whose bytes are all written: the log continues in the
/// next segment at position 0.
fn complete(seg: &Segment) -> bool {
    seg.sealed && seg.written_size == seg.size
}

/// Where a cold read should start and what it may take from read-ahead.
#[derive(Default)]
pub(crate) struct ReadStart {
    /// The read continues the stream: the exact position of its offset.
    pub position: Option<u64>,
    pub view: Option<ReadAheadView>,
}

/// A partition's read-ahead: at most one stream. Not shared across tasks
/// other than through `RefCell` borrows that are never held over an await.
pub(crate) struct ReadAhead {
    budget: ReadAheadBudget,
    generation: Rc<Cell<u64>>,
    stream: Option<Stream>,
}

impl ReadAhead {
    pub fn new(budget: ReadAheadBudget) -> ReadAhead {
        ReadAhead {
            budget,
            generation: Rc::new(Cell::new(0)),
            stream: None,
        }
    }

    pub fn budget(&self) -> &ReadAheadBudget {
        &self.budget
    }

    /// A cold read of `offset`, whose batch lies in segment `segment`.
    pub fn begin(&self, offset: i64, segment: i64) -> ReadStart {
        match &self.stream {
            Some(s) if s.next_offset == offset && s.next_segment == segment => ReadStart {
                position: Some(s.next_position),
                view: (!s.chunks.is_empty()).then(|| ReadAheadView {
                    chunks: s
                        .chunks
                        .iter()
                        .filter(|c| c.segment == segment)
                        .cloned()
                        .collect(),
                    generation: self.generation.clone(),
                }),
            },
            _ => ReadStart::default(),
        }
    }

    /// After a cold read of `start_offset` (continuing the stream when
    /// `sequential`) served batches up to `end_offset`, which starts at
    /// `end_position` of `segment`. Moves the stream on, drops what the
    /// reader has passed, and returns the reads to issue so that
    /// `partition_bytes` lie read ahead (none when the reader's next offset
    /// is in the tail cache, `tail_cached`).
    #[allow(clippy::too_many_arguments)]
    pub fn finish(
        &mut self,
        start_offset: i64,
        sequential: bool,
        segment: i64,
        end_offset: i64,
        end_position: u64,
        segments: &BTreeMap<i64, Segment>,
        tail_cached: bool,
    ) -> Vec<Issue> {
        let settings = self.budget.settings();
        if !settings.enabled() {
            self.stream = None;
            return Vec::new();
        }
        // At the end of a sealed segment the next batch is the first of the
        // next segment.
        let (next_segment, next_position) = match segments.get(&segment) {
            Some(seg) if complete(seg) && end_position >= seg.written_size => {
                match segments.range(segment + 1..).next() {
                    Some((&base, _)) if base == end_offset => (base, 0),
                    _ => (segment, end_position),
                }
            }
            _ => (segment, end_position),
        };
        let stream = match &mut self.stream {
            Some(s) if sequential => {
                if s.next_offset != start_offset {
                    // Another read of the same position moved the stream on
                    // meanwhile (two readers in step): nothing to do.
                    return Vec::new();
                }
                s
            }
            _ => {
                // First cold read here, random access, or the stream was
                // invalidated meanwhile: a new stream, which reads ahead
                // once the next fetch shows it is sequential.
                self.stream = Some(Stream {
                    next_offset: end_offset,
                    next_segment,
                    next_position,
                    chunks: VecDeque::new(),
                    issue_segment: next_segment,
                    issue_position: next_position,
                });
                return Vec::new();
            }
        };
        assert!(
            end_offset > stream.next_offset,
            "a sequential read moves forward: {} -> {end_offset}",
            stream.next_offset
        );
        stream.next_offset = end_offset;
        stream.next_segment = next_segment;
        stream.next_position = next_position;
        while let Some(c) = stream.chunks.front() {
            let passed =
                c.segment < next_segment || (c.segment == next_segment && c.end() <= next_position);
            if !passed {
                break;
            }
            stream.chunks.pop_front();
        }
        if let Some(c) = stream.chunks.front() {
            assert!(
                c.segment > next_segment || c.start <= next_position,
                "read-ahead of segment {} starts at {} past the reader's next position {next_position}",
                c.segment,
                c.start
            );
        } else {
            // The reader is past everything read ahead (or nothing was).
            stream.issue_segment = next_segment;
            stream.issue_position = next_position;
        }
        if tail_cached {
            // The reader's next fetch is served from the tail cache.
            stream.chunks.clear();
            stream.issue_segment = next_segment;
            stream.issue_position = next_position;
            return Vec::new();
        }
        let issues = issue_reads(
            stream,
            segments,
            settings,
            &self.budget,
            self.generation.get(),
        );
        let issued: u64 = issues.iter().map(|i| i.chunk.len as u64).sum();
        let count = issues.len() as u64;
        self.budget.count(|s| {
            s.reads += count;
            s.read_bytes += issued;
        });
        issues
    }

    /// The log changed under the read-ahead (rollback, fence, segment
    /// deletion, close): nothing read so far may be served any more.
    pub fn invalidate(&mut self) {
        self.generation.set(self.generation.get() + 1);
        if self.stream.take().is_some() {
            self.budget.count(|s| s.invalidations += 1);
        }
    }

    /// The reader is served by the tail cache: read-ahead is of no use.
    pub fn release(&mut self) {
        self.stream = None;
    }
}

/// Issues reads after what `stream` already holds, up to the partition
/// bound and the shard budget, continuing into the next segment only from a
/// sealed, fully written one.
fn issue_reads(
    stream: &mut Stream,
    segments: &BTreeMap<i64, Segment>,
    settings: ReadAheadSettings,
    budget: &ReadAheadBudget,
    generation: u64,
) -> Vec<Issue> {
    let read_bytes = settings.read_bytes();
    let mut held: usize = stream.chunks.iter().map(|c| c.len).sum();
    let mut issues = Vec::new();
    while held + read_bytes <= settings.partition_bytes {
        let Some(seg) = segments.get(&stream.issue_segment) else {
            break;
        };
        if stream.issue_position >= seg.written_size {
            // Only a sealed, fully written segment continues in the
            // next one.
            if !complete(seg) {
                break;
            }
            match segments.range(stream.issue_segment + 1..).next() {
                Some((&base, next)) if next.file.is_some() => {
                    stream.issue_segment = base;
                    stream.issue_position = 0;
                    continue;
                }
                _ => break,
            }
        }
        let Some(file) = seg.file.clone() else {
            break;
        };
        let start = stream.issue_position;
        // Block-aligned ends keep every read after the first aligned.
        let mut end = align_down(start + read_bytes as u64);
        if end <= start {
            end = start + read_bytes as u64;
        }
        let end = end.min(seg.written_size);
        let len = (end - start) as usize;
        if !budget.try_take(len) {
            break;
        }
        let chunk = Rc::new(Chunk {
            segment: stream.issue_segment,
            start,
            len,
            generation,
            state: RefCell::new(ChunkState::InFlight),
            done: Event::new(),
            served: Cell::new(false),
            budget: budget.clone(),
        });
        if let Some(last) = stream.chunks.back() {
            assert!(
                (last.segment == chunk.segment && last.end() == start)
                    || (last.segment < chunk.segment && start == 0),
                "read-ahead chunks are contiguous"
            );
        }
        stream.chunks.push_back(chunk.clone());
        issues.push(Issue { file, chunk });
        held += len;
        stream.issue_position = end;
    }
    issues
}

/// The chunks a cold read may take bytes from (one segment's, in order).
pub(crate) struct ReadAheadView {
    chunks: Vec<Rc<Chunk>>,
    generation: Rc<Cell<u64>>,
}

/// Bytes copied out of read-ahead.
pub(crate) struct Copied {
    pub bytes: Bytes,
    /// A read was still in flight and had to be awaited.
    pub waited: bool,
}

impl ReadAheadView {
    /// Bytes `pos..pos + want` of the segment, as far as the read-ahead
    /// holds them contiguously from `pos`, copied into one buffer (the one
    /// copy out of the read's DMA buffer that a plain read makes too).
    /// Awaits reads in flight. `None` when fewer than `min` bytes from `pos`
    /// are held, or they were invalidated: the caller reads the file.
    pub async fn copy_out(&self, pos: u64, min: usize, want: usize) -> Option<Copied> {
        let first = self
            .chunks
            .iter()
            .position(|c| c.start <= pos && pos < c.end())?;
        let end = pos + want as u64;
        let mut covered = pos;
        let mut used = 0usize;
        let mut waited = false;
        for c in &self.chunks[first..] {
            if covered >= end || c.start > covered {
                break;
            }
            waited |= c.wait().await;
            let ready_end = c.start + c.ready_len() as u64;
            if ready_end <= covered {
                break;
            }
            covered = ready_end.min(end);
            used += 1;
            if ready_end < c.end() {
                // Short read (the file ends there) or a failed one.
                break;
            }
        }
        if covered - pos < min as u64 {
            return None;
        }
        let chunks = &self.chunks[first..first + used];
        // No await from here on: what is checked is what is copied.
        let generation = self.generation.get();
        if chunks.iter().any(|c| c.generation != generation) {
            return None;
        }
        let mut out = BytesMut::with_capacity((covered - pos) as usize);
        for c in chunks {
            let state = c.state.borrow();
            let ChunkState::Ready(buf) = &*state else {
                unreachable!("a used chunk is ready");
            };
            let from = (pos.max(c.start) - c.start) as usize;
            let to = (covered.min(c.end()) - c.start) as usize;
            out.extend_from_slice(&buf[from..to]);
            c.served.set(true);
        }
        assert_eq!(
            out.len() as u64,
            covered - pos,
            "read-ahead copies exactly the bytes it checked"
        );
        Some(Copied {
            bytes: out.freeze(),
            waited,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{IoBuf, IoFuture, StorageFile};
    use std::path::{Path, PathBuf};

    /// A file whose reads complete only once the test opens the gate.
    struct GateFile {
        path: PathBuf,
        data: Vec<u8>,
        open: Cell<bool>,
        opened: Event,
    }

    impl GateFile {
        fn open_gate(&self) {
            self.open.set(true);
            self.opened.notify(usize::MAX);
        }
    }

    impl StorageFile for GateFile {
        fn path(&self) -> &Path {
            &self.path
        }
        fn alignment(&self) -> usize {
            1
        }
        fn is_direct(&self) -> bool {
            false
        }
        fn alloc_buf(&self, len: usize) -> IoBuf {
            IoBuf::Heap(vec![0; len])
        }
        fn write_at(&self, _buf: IoBuf, _pos: u64) -> IoFuture<'_, usize> {
            Box::pin(async { Err(io::Error::other("read-only")) })
        }
        fn read_at(&self, pos: u64, len: usize) -> IoFuture<'_, Bytes> {
            Box::pin(async move {
                loop {
                    let listener = self.opened.listen();
                    if self.open.get() {
                        break;
                    }
                    listener.await;
                }
                let end = (pos as usize + len).min(self.data.len());
                Ok(Bytes::copy_from_slice(&self.data[pos as usize..end]))
            })
        }
        fn fdatasync(&self) -> IoFuture<'_, ()> {
            Box::pin(async { Ok(()) })
        }
        fn truncate(&self, _len: u64) -> IoFuture<'_, ()> {
            Box::pin(async { Ok(()) })
        }
        fn allocate(&self, _pos: u64, _len: u64) -> IoFuture<'_, bool> {
            Box::pin(async { Ok(false) })
        }
        fn size(&self) -> IoFuture<'_, u64> {
            let len = self.data.len() as u64;
            Box::pin(async move { Ok(len) })
        }
        fn close(&self) -> IoFuture<'_, ()> {
            Box::pin(async { Ok(()) })
        }
    }

    fn run<G, F>(f: G)
    where
        G: FnOnce() -> F + Send + 'static,
        F: std::future::Future<Output = ()> + 'static,
    {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(1 << 20)
            .spawn(f)
            .expect("executor starts")
            .join()
            .expect("test executor panicked");
    }

    fn settings() -> ReadAheadSettings {
        ReadAheadSettings {
            partition_bytes: 32 << 10,
            shard_bytes: 64 << 10,
            chunk_bytes: 8 << 10,
        }
    }

    /// A stream over one 64 KiB segment at base 0 (offsets are opaque here:
    /// one per 1000 bytes) whose file holds reads at the gate: after two
    /// sequential cold reads, reads ahead are in flight. Returns how many
    /// reads were issued.
    fn setup(budget: &ReadAheadBudget) -> (ReadAhead, Rc<GateFile>, usize) {
        let file = Rc::new(GateFile {
            path: PathBuf::from("gate.log"),
            data: (0..64 << 10).map(|i| (i % 251) as u8).collect(),
            open: Cell::new(false),
            opened: Event::new(),
        });
        let mut seg = Segment::new(Path::new("."), 0);
        seg.file = Some(file.clone());
        seg.written_size = file.data.len() as u64;
        seg.size = seg.written_size;
        let segments = BTreeMap::from([(0, seg)]);
        let mut ra = ReadAhead::new(budget.clone());
        assert!(ra.finish(0, false, 0, 1, 1000, &segments, false).is_empty());
        assert_eq!(ra.begin(1, 0).position, Some(1000), "sequential");
        let issues = ra.finish(1, true, 0, 2, 2000, &segments, false);
        let count = issues.len();
        spawn_reads(issues);
        (ra, file, count)
    }

    #[test]
    fn a_read_waiting_for_read_ahead_gets_the_bytes() {
        run(|| async {
            let budget = ReadAheadBudget::new(settings());
            let (ra, file, issued) = setup(&budget);
            assert_eq!(issued, 4, "32 KiB in 8 KiB reads");
            let view = ra.begin(2, 0).view.expect("reads in flight");
            let reader =
                glommio::spawn_local(async move { view.copy_out(2000, 100, 12_000).await });
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
            file.open_gate();
            let copied = reader.await.expect("served from read-ahead");
            assert!(copied.waited);
            assert_eq!(&copied.bytes[..], &file.data[2000..14_000]);
            // 2000..8192 (to a block boundary), then three 8 KiB reads.
            assert_eq!(budget.stats().held_bytes, (32 << 10) - 2000);
        });
    }

    #[test]
    fn a_read_waiting_for_read_ahead_invalidated_meanwhile_gets_nothing() {
        run(|| async {
            let budget = ReadAheadBudget::new(settings());
            let (mut ra, file, _) = setup(&budget);
            let view = ra.begin(2, 0).view.expect("reads in flight");
            let reader =
                glommio::spawn_local(async move { view.copy_out(2000, 100, 12_000).await });
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
            // The log changes while the reader waits for the disk.
            ra.invalidate();
            file.open_gate();
            assert!(
                reader.await.is_none(),
                "bytes read before the change are never served after it"
            );
            assert_eq!(ra.begin(2, 0).position, None, "the stream is gone");
            budget.settled().await;
            let stats = budget.stats();
            assert_eq!(stats.held_bytes, 0);
            assert_eq!(stats.discarded_bytes, (32 << 10) - 2000);
            assert_eq!(stats.invalidations, 1);
        });
    }

    #[test]
    fn the_shard_bound_limits_what_is_issued() {
        run(|| async {
            let budget = ReadAheadBudget::new(ReadAheadSettings {
                shard_bytes: 20 << 10,
                ..settings()
            });
            let (_ra, file, issued) = setup(&budget);
            // 2000..8192, then one 8 KiB read: a second would pass 20 KiB.
            assert_eq!(issued, 2);
            assert!(budget.stats().held_bytes <= 20 << 10);
            file.open_gate();
            budget.settled().await;
            assert!(budget.stats().held_bytes <= 20 << 10);
        });
    }
}
