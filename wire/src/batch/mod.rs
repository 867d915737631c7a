//! Kafka v2 record batches: the on-disk and on-wire unit (DESIGN.md 3.3).
//!
//! * [`header`]: the fixed 61-byte header, CRC32C validation, in-place patching.
//! * [`records`]: varint record encoding and iteration.
//! * [`builder`]: building batches on the client side, with compression.
//! * [`compression`]: gzip, snappy, lz4 (frame), zstd as Kafka numbers them.

pub mod builder;
pub mod compression;
pub mod header;
pub mod records;

pub use builder::BatchBuilder;
pub use compression::Compression;
pub use header::{
    validate_batch, validate_batch_checking_crc, BatchHeader, BatchSplitter, SplitBatch,
    HEADER_SIZE,
};
pub use records::{validate_records, Record, RecordHeader, RecordIter};

/// Why a record batch was refused. Every variant names what was wrong and
/// what was found, so the producer can tell a bug from corruption in transit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("record batch truncated: need {needed} bytes, have {available}")]
    Truncated { needed: usize, available: usize },
    #[error("record batch length {batch_length} is below the 49-byte minimum of a v2 header")]
    BadLength { batch_length: i32 },
    #[error("record batch declares {declared} bytes but {actual} were sent for it")]
    LengthMismatch { declared: usize, actual: usize },
    #[error("record batch magic {magic} is not supported; only v2 (magic 2) batches are accepted")]
    BadMagic { magic: i8 },
    #[error("record batch CRC32C mismatch: header says {stored:#010x}, data hashes to {computed:#010x}; the batch was corrupted")]
    BadCrc { stored: u32, computed: u32 },
    #[error("record batch has record_count {record_count} but last_offset_delta {last_offset_delta}; they must satisfy delta = count - 1 and count >= 1")]
    BadRecordCount {
        record_count: i32,
        last_offset_delta: i32,
    },
    #[error("record batch uses unknown compression codec id {id}; supported: 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd")]
    UnknownCompression { id: u8 },
    #[error("malformed record {index} in batch: {reason}")]
    BadRecord { index: usize, reason: &'static str },
    #[error("record {index} has offset delta {found}, expected {expected}")]
    BadOffsetDelta {
        index: usize,
        expected: i32,
        found: i32,
    },
    #[error("decompression failed ({codec}): {reason}")]
    Decompress { codec: &'static str, reason: String },
    #[error("compression failed ({codec}): {reason}")]
    Compress { codec: &'static str, reason: String },
    #[error("decompressed records exceed the {limit_bytes}-byte limit")]
    DecompressedTooLarge { limit_bytes: usize },
    #[error("record-level validation needs an uncompressed batch; this one uses codec id {id}")]
    RecordsCompressed { id: u8 },
    #[error("{what} of {size_bytes} bytes does not fit the v2 format (its lengths are i32)")]
    TooLarge {
        what: &'static str,
        size_bytes: usize,
    },
    #[error("record timestamp {timestamp_ms} ms is too far from the batch base timestamp {base_timestamp_ms} ms: the delta overflows i64")]
    TimestampOutOfRange {
        timestamp_ms: i64,
        base_timestamp_ms: i64,
    },
}
