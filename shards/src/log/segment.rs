//! Segments: `<base_offset:020>.log` with `.index` and `.timeindex` beside
//! it, the in-memory state of one segment, and the batch scanner used by
//! recovery, cold reads and timestamp lookups.

use super::{
    index::{IndexTrailer, OffsetIndex},
    readahead::ReadAheadView,
    timeindex::TimeIndex,
    MAX_BATCH_BYTES,
};
use crate::io::{FileRef, StorageFile};
use bytes::Bytes;
use ringmq_wire::batch::header::{peek_total_size, validate_batch, HEADER_SIZE, LOG_OVERHEAD};
use std::{
    io,
    path::{Path, PathBuf},
};

pub const LOG_SUFFIX: &str = ".log";
pub const INDEX_SUFFIX: &str = ".index";
pub const TIMEINDEX_SUFFIX: &str = ".timeindex";

/// `00000000000000000042.log` for base offset 42.
pub fn log_file_name(base_offset: i64) -> String {
    format!("{base_offset:020}{LOG_SUFFIX}")
}

pub fn index_file_name(base_offset: i64) -> String {
    format!("{base_offset:020}{INDEX_SUFFIX}")
}

pub fn timeindex_file_name(base_offset: i64) -> String {
    format!("{base_offset:020}{TIMEINDEX_SUFFIX}")
}

/// Parses `<20 digits><suffix>` into the base offset.
pub fn parse_file_name(name: &str, suffix: &str) -> Option<i64> {
    let stem = name.strip_suffix(suffix)?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// In-memory state of one segment.
pub(crate) struct Segment {
    pub base_offset: i64,
    pub log_path: PathBuf,
    /// `None` for a segment the writer has not created on disk yet.
    pub file: Option<FileRef>,
    /// Offset following the last batch assigned to this segment.
    pub next_offset: i64,
    /// Bytes assigned to this segment (written or queued).
    pub size: u64,
    /// Bytes known written to the file.
    pub written_size: u64,
    /// End of the space preallocated in the file (`StorageFile::allocate`),
    /// or of the last preallocation tried: the file may be this long, the
    /// bytes past `written_size` being zeros. The writer preallocates ahead
    /// of it; sealing and closing truncate the file back to `written_size`.
    pub allocated_size: u64,
    /// Content of the partial block at `align_down(written_size)`, rewritten
    /// with the next write.
    pub tail: Vec<u8>,
    pub index: OffsetIndex,
    pub timeindex: TimeIndex,
    pub bytes_since_index: u64,
    /// Largest batch max-timestamp (-1 when none).
    pub max_timestamp: i64,
    /// Base offset of the batch holding `max_timestamp`.
    pub max_timestamp_offset: i64,
    /// Wall-clock time of the first append (for `segment_ms`).
    pub first_append_ms: Option<i64>,
    /// No more appends go here (a newer segment exists).
    pub sealed: bool,
}

impl Segment {
    pub fn new(dir: &Path, base_offset: i64) -> Segment {
        Segment {
            base_offset,
            log_path: dir.join(log_file_name(base_offset)),
            file: None,
            next_offset: base_offset,
            size: 0,
            written_size: 0,
            allocated_size: 0,
            tail: Vec::new(),
            index: OffsetIndex::new(),
            timeindex: TimeIndex::new(),
            bytes_since_index: 0,
            max_timestamp: -1,
            max_timestamp_offset: base_offset,
            first_append_ms: None,
            sealed: false,
        }
    }

    pub fn index_path(&self) -> PathBuf {
        self.log_path.with_extension("index")
    }

    pub fn timeindex_path(&self) -> PathBuf {
        self.log_path.with_extension("timeindex")
    }

    pub fn relative(&self, offset: i64) -> u32 {
        let rel = offset - self.base_offset;
        assert!(
            (0..=u32::MAX as i64).contains(&rel),
            "offset {offset} outside segment {}",
            self.base_offset
        );
        rel as u32
    }

    /// Index maintenance for a batch placed at `position`.
    pub fn record_batch(
        &mut self,
        base_offset: i64,
        position: u64,
        size: usize,
        max_timestamp: i64,
        interval: u32,
    ) {
        assert!(
            position + size as u64 <= u32::MAX as u64,
            "segment position overflows u32"
        );
        if max_timestamp > self.max_timestamp {
            self.max_timestamp = max_timestamp;
            self.max_timestamp_offset = base_offset;
        }
        if self.bytes_since_index >= interval as u64 && position > 0 {
            let rel = self.relative(base_offset);
            self.index.push(rel, position as u32);
            self.bytes_since_index = 0;
            if self.max_timestamp >= 0 {
                let rel_max = self.relative(self.max_timestamp_offset);
                self.timeindex.maybe_push(self.max_timestamp, rel_max);
            }
        }
        self.bytes_since_index += size as u64;
    }

    /// Adds the final time-index entry (seal, close, rebuild).
    pub fn finish_timeindex(&mut self) {
        if self.max_timestamp >= 0 {
            let rel_max = self.relative(self.max_timestamp_offset);
            self.timeindex.maybe_push(self.max_timestamp, rel_max);
        }
    }

    pub fn trailer(&self) -> IndexTrailer {
        IndexTrailer {
            entry_count: 0,
            segment_bytes: self.written_size,
            next_offset: self.next_offset,
            max_timestamp: self.max_timestamp,
        }
    }

    /// Position to start reading for `offset` (from the sparse index).
    pub fn lookup_position(&self, offset: i64) -> u64 {
        if offset <= self.base_offset {
            return 0;
        }
        let rel = (offset - self.base_offset).min(u32::MAX as i64) as u32;
        self.index.lookup(rel).map_or(0, |e| e.position as u64)
    }

    /// Where to start reading for `offset`: the position of a batch at or
    /// before it (from the sparse index) and that batch's base offset.
    pub fn lookup_start(&self, offset: i64) -> (u64, i64) {
        if offset <= self.base_offset {
            return (0, self.base_offset);
        }
        let rel = (offset - self.base_offset).min(u32::MAX as i64) as u32;
        self.index.lookup(rel).map_or((0, self.base_offset), |e| {
            (
                e.position as u64,
                self.base_offset + e.relative_offset as i64,
            )
        })
    }

    /// Rolls the in-memory indexes back to `written_size` / `next_offset`.
    pub fn rollback_to_written(&mut self, next_offset: i64) {
        self.size = self.written_size;
        self.next_offset = next_offset;
        self.index.truncate_to_position(self.written_size);
        let rel = self.relative(next_offset);
        self.timeindex.truncate_to_offset(rel);
        // The batch holding the largest timestamp may be among those rolled
        // back: the time index written at seal or close would then point
        // past the end of the segment, and the next start would distrust
        // and rebuild it. The true maximum is unknown without a scan; keep
        // the estimate (an over-estimate only delays retention by time) and
        // point it at the last batch that stays.
        if self.max_timestamp_offset >= next_offset {
            if self.written_size == 0 {
                self.max_timestamp = -1;
                self.max_timestamp_offset = self.base_offset;
            } else {
                self.max_timestamp_offset = next_offset - 1;
            }
        }
        self.bytes_since_index =
            self.written_size - self.index.last().map_or(0, |e| e.position as u64);
    }
}

/// What the scanner found next.
#[derive(Debug)]
pub(crate) enum CursorItem {
    /// A complete batch (not validated) at `position`.
    Batch { position: u64, bytes: Bytes },
    /// Clean end: the position reached the limit.
    End,
    /// Something that cannot be a batch starts at `position`.
    Bad { position: u64, reason: String },
}

/// Walks the batches of a segment file from a position, reading in chunks
/// and handing out zero-copy slices of the chunks. With a read-ahead view,
/// bytes the read-ahead holds are taken from it instead of the file.
pub(crate) struct BatchCursor<'a> {
    file: &'a dyn StorageFile,
    limit: u64,
    pos: u64,
    buf: Bytes,
    buf_pos: u64,
    chunk: usize,
    ahead: Option<ReadAheadView>,
    /// Bytes taken from read-ahead, and whether that meant waiting for a
    /// read in flight (for the read-ahead counters).
    pub readahead_bytes: u64,
    pub readahead_waited: bool,
}

impl<'a> BatchCursor<'a> {
    pub fn new(file: &'a dyn StorageFile, start: u64, limit: u64, chunk: usize) -> BatchCursor<'a> {
        BatchCursor {
            file,
            limit,
            pos: start,
            buf: Bytes::new(),
            buf_pos: start,
            chunk: chunk.max(HEADER_SIZE),
            ahead: None,
            readahead_bytes: 0,
            readahead_waited: false,
        }
    }

    /// Takes bytes from `view` where it holds them.
    pub fn with_readahead(mut self, view: Option<ReadAheadView>) -> BatchCursor<'a> {
        self.ahead = view;
        self
    }

    async fn ensure(&mut self, pos: u64, len: usize) -> io::Result<bool> {
        let end = pos + len as u64;
        if pos >= self.buf_pos && end <= self.buf_pos + self.buf.len() as u64 {
            return Ok(true);
        }
        let want = (self.limit - pos).min(len.max(self.chunk) as u64) as usize;
        if let Some(view) = &self.ahead {
            if let Some(copied) = view.copy_out(pos, len, want).await {
                debug_assert!(copied.bytes.len() >= len && copied.bytes.len() <= want);
                self.readahead_bytes += copied.bytes.len() as u64;
                self.readahead_waited |= copied.waited;
                self.buf = copied.bytes;
                self.buf_pos = pos;
                return Ok(true);
            }
        }
        self.buf = self.file.read_at(pos, want).await?;
        self.buf_pos = pos;
        Ok(self.buf.len() >= len)
    }

    fn slice(&self, pos: u64, len: usize) -> Bytes {
        let at = (pos - self.buf_pos) as usize;
        self.buf.slice(at..at + len)
    }

    pub async fn next(&mut self) -> io::Result<CursorItem> {
        let position = self.pos;
        if position >= self.limit {
            return Ok(CursorItem::End);
        }
        let left = self.limit - position;
        if left < LOG_OVERHEAD as u64 {
            return Ok(CursorItem::Bad {
                position,
                reason: format!("{left} trailing bytes, fewer than a batch length field"),
            });
        }
        if !self.ensure(position, LOG_OVERHEAD).await? {
            return Ok(CursorItem::Bad {
                position,
                reason: "file shorter than expected".into(),
            });
        }
        let head = self.slice(position, LOG_OVERHEAD);
        let size = peek_total_size(&head).unwrap_or(usize::MAX);
        if !(HEADER_SIZE..=MAX_BATCH_BYTES).contains(&size) {
            let reason = if head.iter().all(|&b| b == 0) {
                "zero-filled data where a batch should start".to_string()
            } else {
                format!("impossible batch size {}", size as i64)
            };
            return Ok(CursorItem::Bad { position, reason });
        }
        if size as u64 > left {
            return Ok(CursorItem::Bad {
                position,
                reason: format!("batch of {size} bytes truncated: only {left} bytes left"),
            });
        }
        if !self.ensure(position, size).await? {
            return Ok(CursorItem::Bad {
                position,
                reason: "file shorter than expected".into(),
            });
        }
        let bytes = self.slice(position, size);
        self.pos = position + size as u64;
        Ok(CursorItem::Batch { position, bytes })
    }
}

/// Result of scanning (and validating) part of a segment.
#[derive(Debug)]
pub(crate) struct ScanOutcome {
    /// Position after the last good batch.
    pub end_position: u64,
    /// Offset after the last good batch.
    pub next_offset: i64,
    pub batches: u64,
    /// First bad batch: position and why.
    pub stop: Option<(u64, String)>,
    /// The scan stopped at zeros (the rest of the block at the stop
    /// position, or of the file if shorter, reads as zeros): preallocated
    /// space or writes that never reached the disk, not a torn batch.
    pub zero_tail: bool,
}

/// Chunk size of recovery scans, in bytes.
pub(crate) const SCAN_CHUNK: usize = 1 << 20;

/// Validates every batch from `start` (at `start_offset`) up to `limit`,
/// recording index entries in `seg`. Stops at the first invalid batch.
pub(crate) async fn scan_segment(
    seg: &mut Segment,
    file: &dyn StorageFile,
    start: u64,
    start_offset: i64,
    limit: u64,
    interval: u32,
) -> io::Result<ScanOutcome> {
    let mut cursor = BatchCursor::new(file, start, limit, SCAN_CHUNK);
    let mut out = ScanOutcome {
        end_position: start,
        next_offset: start_offset,
        batches: 0,
        stop: None,
        zero_tail: false,
    };
    loop {
        match cursor.next().await? {
            CursorItem::End => return Ok(out),
            CursorItem::Bad { position, reason } => {
                out.zero_tail = reads_as_zeros(file, position, limit).await?;
                out.stop = Some((position, reason));
                return Ok(out);
            }
            CursorItem::Batch { position, bytes } => {
                let header = match validate_batch(&bytes) {
                    Ok(h) => h,
                    Err(e) => {
                        // A batch whose length field survived but whose body
                        // does not check out is torn, not a clean end.
                        out.stop = Some((position, e.to_string()));
                        return Ok(out);
                    }
                };
                if header.base_offset != out.next_offset {
                    out.stop = Some((
                        position,
                        format!(
                            "batch has base offset {} where {} was expected",
                            header.base_offset, out.next_offset
                        ),
                    ));
                    return Ok(out);
                }
                seg.record_batch(
                    header.base_offset,
                    position,
                    bytes.len(),
                    header.max_timestamp,
                    interval,
                );
                out.batches += 1;
                out.next_offset = header.next_offset();
                out.end_position = position + bytes.len() as u64;
            }
        }
    }
}

/// Whether the bytes from `position` to the end of its block (or to `limit`
/// if sooner) are all zeros. One small read: recovery uses it to tell the
/// zeros after the last batch of a preallocated segment (a clean end) from a
/// torn batch (a warning).
async fn reads_as_zeros(file: &dyn StorageFile, position: u64, limit: u64) -> io::Result<bool> {
    let block = crate::io::BLOCK_SIZE as u64;
    let end = (position / block + 1) * block;
    let len = end.min(limit).saturating_sub(position) as usize;
    if len == 0 {
        return Ok(false);
    }
    let bytes = file.read_at(position, len).await?;
    Ok(!bytes.is_empty() && bytes.iter().all(|&b| b == 0))
}
