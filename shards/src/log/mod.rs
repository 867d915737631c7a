//! Partition log storage (DESIGN.md 3.4): segments of Kafka v2 record
//! batches with sparse offset and time indexes, group commit, recovery,
//! retention, and an offline verifier.
//!
//! * [`partition::PartitionLog`]: what the broker calls (append, read, ...).
//! * [`segment`]: segment files, naming, and the batch scanner.
//! * [`index`], [`timeindex`]: the sparse indexes and their on-disk format.
//! * [`checkpoint`]: the per-partition "durable end" checkpoint.
//! * [`producer_state`]: idempotent-producer sequence checks (Kafka's).
//! * [`readahead`]: sequential read-ahead for cold fetches.
//! * [`verify`]: `ringctl log verify` (std::fs, not for shards).

pub mod checkpoint;
pub mod index;
pub mod partition;
pub mod producer_state;
pub mod readahead;
pub mod segment;
pub mod timeindex;
pub mod verify;

pub use partition::{AckFuture, AppendResult, LogStats, PartitionLog, ReadData, RecoveryReport};

use std::{io, path::PathBuf, sync::Arc};

/// Durability a producer asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Acks {
    /// No acknowledgement expected; resolves like `Leader`.
    None,
    /// Resolved once the write holding the batch completed (survives a
    /// process crash, not a machine crash).
    Leader,
    /// Resolved once an fdatasync that started after that write completed.
    Fsync,
}

/// Per-partition storage settings. Sizes in bytes, times in milliseconds;
/// `-1` means unlimited where noted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Roll to a new segment when the active one would exceed this size.
    pub segment_bytes: u64,
    /// Roll when the active segment's first append is this old.
    pub segment_ms: i64,
    /// Delete sealed segments whose newest timestamp is older (-1: never).
    pub retention_ms: i64,
    /// Delete the oldest sealed segments while the log is larger (-1: never).
    pub retention_bytes: i64,
    /// Bytes of log between two sparse-index entries.
    pub index_interval_bytes: u32,
    /// Bound on assigned-but-unwritten bytes; `reserve` waits below it.
    pub max_queued_bytes: u64,
    /// Target size of one write (more pending data is written in several).
    pub max_write_bytes: usize,
    /// Minimum interval between two writes of the durable-end checkpoint.
    pub checkpoint_interval_ms: u64,
    /// How far ahead of the write position the active segment's file is
    /// preallocated (fallocate), at most: the step grows from
    /// [`MIN_PREALLOCATE_BYTES`] by doubling up to this, and never past
    /// `segment_bytes`. 0 turns preallocation off. It moves block allocation
    /// and file growth out of the appends (see `StorageFile::allocate`).
    pub preallocate_bytes: u64,
}

/// First preallocation step of a segment, in bytes: a quiet partition
/// reserves this much, a busy one doubles it up to `preallocate_bytes`.
pub const MIN_PREALLOCATE_BYTES: u64 = 1 << 20;

/// Largest batch the log stores, in bytes (positions in the index are u32).
pub const MAX_BATCH_BYTES: usize = 1 << 30;
/// Largest `segment_bytes` accepted.
pub const MAX_SEGMENT_BYTES: u64 = 2 << 30;

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 256 << 20,
            segment_ms: 7 * 24 * 3600 * 1000,
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: -1,
            index_interval_bytes: 4096,
            max_queued_bytes: 64 << 20,
            max_write_bytes: 4 << 20,
            checkpoint_interval_ms: 1000,
            // 32 steps per default 256 MiB segment: one fallocate per 32
            // MiB appended, and at most 32 MiB of slack per active
            // partition (trimmed when the segment is sealed or closed).
            preallocate_bytes: 32 << 20,
        }
    }
}

impl LogConfig {
    /// Checks the settings; the message names the bad knob.
    pub fn validate(&self) -> Result<(), LogError> {
        let bad = |reason: String| Err(LogError::Config { reason });
        if self.segment_bytes < 4096 || self.segment_bytes > MAX_SEGMENT_BYTES {
            return bad(format!(
                "segment_bytes {} must be between 4096 and {MAX_SEGMENT_BYTES}",
                self.segment_bytes
            ));
        }
        if self.segment_ms <= 0 {
            return bad(format!("segment_ms {} must be positive", self.segment_ms));
        }
        if self.retention_ms < -1 || self.retention_bytes < -1 {
            return bad("retention_ms and retention_bytes must be >= 0 or -1 (unlimited)".into());
        }
        if self.index_interval_bytes == 0 {
            return bad("index_interval_bytes must be positive".into());
        }
        if self.max_write_bytes < 4096 || self.max_queued_bytes < 4096 {
            return bad("max_write_bytes and max_queued_bytes must be at least 4096".into());
        }
        Ok(())
    }
}

/// Errors of the log. Each message says what happened and what to do.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LogError {
    #[error("disk full writing {path}: free space on that filesystem; writes will resume, retry the produce")]
    DiskFull { path: PathBuf },
    #[error("I/O error during {op} on {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: Arc<io::Error>,
    },
    #[error("partition {dir} is fenced: {reason}; it refuses writes until the broker restarts and recovers it from disk")]
    Fenced { dir: PathBuf, reason: String },
    #[error("acknowledged data is corrupt in {segment} at byte {position} (offset {offset}): {reason}; the partition must be fenced; restore it from a replica or inspect it with `ringctl log verify`")]
    Corrupt {
        segment: PathBuf,
        position: u64,
        offset: i64,
        reason: String,
    },
    #[error(
        "offset {offset} is out of range: the log holds [{log_start_offset}, {high_watermark})"
    )]
    OffsetOutOfRange {
        offset: i64,
        log_start_offset: i64,
        high_watermark: i64,
    },
    #[error("partition write queue is full ({queued_bytes} of {limit_bytes} bytes queued): await reserve() before append")]
    QueueFull { queued_bytes: u64, limit_bytes: u64 },
    #[error("invalid record batch data at byte {position} of the append: {reason}")]
    InvalidBatch { position: usize, reason: String },
    #[error("partition {dir} is closed")]
    Closed { dir: PathBuf },
    #[error("bad log configuration: {reason}")]
    Config { reason: String },
    #[error("idempotent producer {producer_id} sent epoch {producer_epoch} but this partition has seen epoch {current_epoch}: a newer instance of the producer has fenced this one (or the epoch is invalid); close this producer and create a new one")]
    InvalidProducerEpoch {
        producer_id: i64,
        producer_epoch: i16,
        current_epoch: i16,
    },
    #[error("idempotent producer {producer_id} (epoch {producer_epoch}) sent sequences {first_sequence}..={last_sequence} but this partition expects sequence {expected_sequence} next: {detail}")]
    OutOfOrderSequence {
        producer_id: i64,
        producer_epoch: i16,
        expected_sequence: i32,
        first_sequence: i32,
        last_sequence: i32,
        /// What probably happened and what the producer must do.
        detail: &'static str,
    },
}

impl LogError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, err: io::Error) -> LogError {
        let path = path.into();
        if crate::io::is_disk_full(&err) {
            LogError::DiskFull { path }
        } else {
            LogError::Io {
                op,
                path,
                source: Arc::new(err),
            }
        }
    }

    /// Whether the partition can no longer be written (fenced or corrupt).
    pub fn is_fatal(&self) -> bool {
        matches!(self, LogError::Fenced { .. } | LogError::Corrupt { .. })
    }
}

/// Wall-clock milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
