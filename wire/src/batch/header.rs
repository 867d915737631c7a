//! The 61-byte Kafka v2 record-batch header: parse, validate, patch.
//!
//! The broker never re-encodes a batch. On produce it validates the header and
//! the CRC32C, then rewrites the base offset in place (the CRC starts at byte
//! 21, so offsets and the leader epoch can be patched without recomputing it).

use super::BatchError;

/// Size of the fixed v2 header, in bytes.
pub const HEADER_SIZE: usize = 61;
/// `base_offset` (8) + `batch_length` (4): the bytes not counted by `batch_length`.
pub const LOG_OVERHEAD: usize = 12;
/// The only batch format ringmq stores.
pub const MAGIC_V2: i8 = 2;
/// First byte covered by the CRC32C.
pub const CRC_START: usize = 21;
/// Smallest legal `batch_length` (a header with no records).
pub const MIN_BATCH_LENGTH: i32 = (HEADER_SIZE - LOG_OVERHEAD) as i32;

const OFF_BASE_OFFSET: usize = 0;
const OFF_BATCH_LENGTH: usize = 8;
const OFF_LEADER_EPOCH: usize = 12;
const OFF_MAGIC: usize = 16;
const OFF_CRC: usize = 17;
const OFF_ATTRIBUTES: usize = 21;
const OFF_LAST_OFFSET_DELTA: usize = 23;
const OFF_BASE_TIMESTAMP: usize = 27;
const OFF_MAX_TIMESTAMP: usize = 35;
const OFF_PRODUCER_ID: usize = 43;
const OFF_PRODUCER_EPOCH: usize = 51;
const OFF_BASE_SEQUENCE: usize = 53;
const OFF_RECORD_COUNT: usize = 57;

/// Attribute bits (Kafka numbering).
pub const ATTR_COMPRESSION_MASK: i16 = 0x07;
pub const ATTR_TIMESTAMP_TYPE_LOG_APPEND: i16 = 0x08;
pub const ATTR_TRANSACTIONAL: i16 = 0x10;
pub const ATTR_CONTROL: i16 = 0x20;

/// The decoded fixed header of one v2 record batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    /// Bytes after the `batch_length` field; the whole batch is
    /// `LOG_OVERHEAD + batch_length` bytes.
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

fn be_i64(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}

impl BatchHeader {
    /// Decodes the fixed header. Checks only that 61 bytes are present; use
    /// [`validate_batch`] for everything else.
    pub fn parse(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
        if bytes.len() < HEADER_SIZE {
            return Err(BatchError::Truncated {
                needed: HEADER_SIZE,
                available: bytes.len(),
            });
        }
        Ok(BatchHeader {
            base_offset: be_i64(bytes, OFF_BASE_OFFSET),
            batch_length: be_i32(bytes, OFF_BATCH_LENGTH),
            partition_leader_epoch: be_i32(bytes, OFF_LEADER_EPOCH),
            magic: bytes[OFF_MAGIC] as i8,
            crc: be_i32(bytes, OFF_CRC) as u32,
            attributes: be_i16(bytes, OFF_ATTRIBUTES),
            last_offset_delta: be_i32(bytes, OFF_LAST_OFFSET_DELTA),
            base_timestamp: be_i64(bytes, OFF_BASE_TIMESTAMP),
            max_timestamp: be_i64(bytes, OFF_MAX_TIMESTAMP),
            producer_id: be_i64(bytes, OFF_PRODUCER_ID),
            producer_epoch: be_i16(bytes, OFF_PRODUCER_EPOCH),
            base_sequence: be_i32(bytes, OFF_BASE_SEQUENCE),
            record_count: be_i32(bytes, OFF_RECORD_COUNT),
        })
    }

    /// Total size of the batch on disk and on the wire, in bytes.
    pub fn total_size(&self) -> usize {
        LOG_OVERHEAD + self.batch_length.max(0) as usize
    }

    /// Offset of the last record in the batch.
    pub fn last_offset(&self) -> i64 {
        self.base_offset + self.last_offset_delta as i64
    }

    /// Offset that follows this batch.
    pub fn next_offset(&self) -> i64 {
        self.last_offset() + 1
    }

    /// Kafka compression codec id (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd).
    pub fn compression_id(&self) -> u8 {
        (self.attributes & ATTR_COMPRESSION_MASK) as u8
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTR_TRANSACTIONAL != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & ATTR_CONTROL != 0
    }
}

/// Reads just the total size of the batch starting at `bytes[0]`, without
/// validating anything else. `None` when fewer than 12 bytes are present.
pub fn peek_total_size(bytes: &[u8]) -> Option<usize> {
    if bytes.len() < LOG_OVERHEAD {
        return None;
    }
    let len = be_i32(bytes, OFF_BATCH_LENGTH);
    if len < 0 {
        return Some(usize::MAX);
    }
    Some(LOG_OVERHEAD + len as usize)
}

/// Validates one complete batch: exact length, magic, CRC32C, record count
/// against the last offset delta, timestamps, codec id. `bytes` must hold
/// exactly one batch. Record-level checks (varint framing, per-record offset
/// deltas) are in [`super::records::validate_records`] for uncompressed data.
pub fn validate_batch(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    validate_batch_checking_crc(bytes, true)
}

/// [`validate_batch`], with the CRC32C check only when `check_crc` (a
/// consumer's `check_crcs: false`, Kafka's `check.crcs`); every other check
/// always runs.
pub fn validate_batch_checking_crc(
    bytes: &[u8],
    check_crc: bool,
) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::parse(bytes)?;
    if header.batch_length < MIN_BATCH_LENGTH {
        return Err(BatchError::BadLength {
            batch_length: header.batch_length,
        });
    }
    if header.total_size() != bytes.len() {
        return Err(BatchError::LengthMismatch {
            declared: header.total_size(),
            actual: bytes.len(),
        });
    }
    if header.magic != MAGIC_V2 {
        return Err(BatchError::BadMagic {
            magic: header.magic,
        });
    }
    if check_crc {
        let computed = crc32c::crc32c(&bytes[CRC_START..]);
        if computed != header.crc {
            return Err(BatchError::BadCrc {
                stored: header.crc,
                computed,
            });
        }
    }
    if header.record_count <= 0 {
        return Err(BatchError::BadRecordCount {
            record_count: header.record_count,
            last_offset_delta: header.last_offset_delta,
        });
    }
    if header.last_offset_delta != header.record_count - 1 {
        return Err(BatchError::BadRecordCount {
            record_count: header.record_count,
            last_offset_delta: header.last_offset_delta,
        });
    }
    if header.compression_id() > 4 {
        return Err(BatchError::UnknownCompression {
            id: header.compression_id(),
        });
    }
    Ok(header)
}

/// Rewrites the base offset of the batch at `bytes[0..]` (not CRC-covered).
pub fn set_base_offset(bytes: &mut [u8], base_offset: i64) {
    assert!(bytes.len() >= HEADER_SIZE, "batch shorter than its header");
    bytes[OFF_BASE_OFFSET..OFF_BASE_OFFSET + 8].copy_from_slice(&base_offset.to_be_bytes());
}

/// Rewrites the partition leader epoch (not CRC-covered).
pub fn set_partition_leader_epoch(bytes: &mut [u8], epoch: i32) {
    assert!(bytes.len() >= HEADER_SIZE, "batch shorter than its header");
    bytes[OFF_LEADER_EPOCH..OFF_LEADER_EPOCH + 4].copy_from_slice(&epoch.to_be_bytes());
}

/// Recomputes and stores the CRC32C of a batch whose covered bytes changed
/// (used by the builder, never by the broker's produce path).
pub fn store_crc(bytes: &mut [u8]) {
    assert!(bytes.len() >= HEADER_SIZE, "batch shorter than its header");
    let crc = crc32c::crc32c(&bytes[CRC_START..]);
    bytes[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_be_bytes());
}

/// Splits a buffer of back-to-back batches, validating each one.
/// Stops with an error at the first batch that is truncated or invalid.
pub struct BatchSplitter<'a> {
    rest: &'a [u8],
    position: usize,
}

impl<'a> BatchSplitter<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        BatchSplitter {
            rest: bytes,
            position: 0,
        }
    }
}

/// One batch found by [`BatchSplitter`]: its header and where it lies in the
/// buffer that was split.
#[derive(Debug, Clone, Copy)]
pub struct SplitBatch {
    pub header: BatchHeader,
    pub position: usize,
    pub size: usize,
}

impl Iterator for BatchSplitter<'_> {
    type Item = Result<SplitBatch, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let size = match peek_total_size(self.rest) {
            Some(size) => size,
            None => {
                let err = BatchError::Truncated {
                    needed: LOG_OVERHEAD,
                    available: self.rest.len(),
                };
                self.rest = &[];
                return Some(Err(err));
            }
        };
        if size > self.rest.len() || size < HEADER_SIZE {
            let err = if size < HEADER_SIZE {
                BatchError::BadLength {
                    batch_length: size.saturating_sub(LOG_OVERHEAD) as i32,
                }
            } else {
                BatchError::Truncated {
                    needed: size,
                    available: self.rest.len(),
                }
            };
            self.rest = &[];
            return Some(Err(err));
        }
        let (batch, rest) = self.rest.split_at(size);
        let position = self.position;
        self.rest = rest;
        self.position += size;
        Some(validate_batch(batch).map(|header| SplitBatch {
            header,
            position,
            size,
        }))
    }
}
