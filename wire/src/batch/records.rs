//! The records section of a v2 batch: Kafka's zigzag varints, record
//! validation (on produce, for uncompressed batches, without allocating) and
//! record iteration (zero-copy: keys, values and headers are slices of the
//! batch, or of its decompressed records section).
//!
//! One record, every length a zigzag varint, -1 meaning null:
//!
//! ```text
//! length varint            bytes after this field
//! attributes int8          unused, 0
//! timestamp_delta varlong  from the batch base timestamp
//! offset_delta varint      from the batch base offset
//! key_length varint, key
//! value_length varint, value
//! header_count varint, then per header:
//!     key_length varint (never null), key (UTF-8 in Kafka)
//!     value_length varint, value
//! ```

use std::ops::Range;

use bytes::Bytes;

use super::compression::{decompress, Compression};
use super::header::{validate_batch, BatchHeader, ATTR_TIMESTAMP_TYPE_LOG_APPEND, HEADER_SIZE};
use super::BatchError;

/// Most bytes a varint (i32) takes.
pub const MAX_VARINT_SIZE: usize = 5;
/// Most bytes a varlong (i64) takes.
pub const MAX_VARLONG_SIZE: usize = 10;
/// Decompressed-size limit of [`RecordIter::new`]: larger than any batch a
/// sane producer builds, small enough that a zip bomb cannot exhaust memory.
pub const DEFAULT_DECOMPRESSED_LIMIT_BYTES: usize = 64 * 1024 * 1024;

/// Why a varint could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VarintError {
    #[error("truncated varint")]
    Truncated,
    #[error("varint longer than its type allows")]
    TooLong,
    #[error("varint overflows its type")]
    Overflow,
}

impl VarintError {
    fn reason(self) -> &'static str {
        match self {
            VarintError::Truncated => "truncated varint",
            VarintError::TooLong => "varint longer than its type allows",
            VarintError::Overflow => "varint overflows its type",
        }
    }
}

fn zigzag_encode_32(value: i32) -> u32 {
    ((value as u32) << 1) ^ ((value >> 31) as u32)
}

fn zigzag_encode_64(value: i64) -> u64 {
    ((value as u64) << 1) ^ ((value >> 63) as u64)
}

fn zigzag_decode_32(value: u32) -> i32 {
    ((value >> 1) as i32) ^ -((value & 1) as i32)
}

fn zigzag_decode_64(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

fn unsigned_varint_size(value: u64) -> usize {
    let significant_bits = (u64::BITS - value.leading_zeros()).max(1);
    significant_bits.div_ceil(7) as usize
}

fn put_unsigned_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Decodes an unsigned LEB128 of at most `max_size` bytes whose last byte may
/// carry at most `last_byte_max` (so the value fits its type). Non-minimal
/// encodings are accepted, as Kafka accepts them.
fn get_unsigned_varint(
    bytes: &[u8],
    max_size: usize,
    last_byte_max: u8,
) -> Result<(u64, usize), VarintError> {
    let mut value = 0u64;
    for index in 0..max_size {
        let Some(&byte) = bytes.get(index) else {
            return Err(VarintError::Truncated);
        };
        if index == max_size - 1 {
            if byte & 0x80 != 0 {
                return Err(VarintError::TooLong);
            }
            if byte > last_byte_max {
                return Err(VarintError::Overflow);
            }
        }
        value |= u64::from(byte & 0x7F) << (7 * index);
        if byte & 0x80 == 0 {
            return Ok((value, index + 1));
        }
    }
    unreachable!("the last byte returns or fails above")
}

/// Encoded size of `value` as a zigzag varint, in bytes.
pub fn varint_size(value: i32) -> usize {
    unsigned_varint_size(u64::from(zigzag_encode_32(value)))
}

/// Encoded size of `value` as a zigzag varlong, in bytes.
pub fn varlong_size(value: i64) -> usize {
    unsigned_varint_size(zigzag_encode_64(value))
}

/// Appends `value` as a zigzag varint (Kafka's `ByteUtils.writeVarint`).
pub fn put_varint(out: &mut Vec<u8>, value: i32) {
    put_unsigned_varint(out, u64::from(zigzag_encode_32(value)));
}

/// Appends `value` as a zigzag varlong (Kafka's `ByteUtils.writeVarlong`).
pub fn put_varlong(out: &mut Vec<u8>, value: i64) {
    put_unsigned_varint(out, zigzag_encode_64(value));
}

/// Decodes a zigzag varint from the start of `bytes`: the value and the bytes
/// it took.
#[inline]
pub fn get_varint(bytes: &[u8]) -> Result<(i32, usize), VarintError> {
    if let Some((raw, size)) = short_varint(bytes) {
        return Ok((zigzag_decode_32(u32::from(raw)), size));
    }
    // 5 bytes carry 35 bits; the 5th may only fill bits 28..32.
    let (value, size) = get_unsigned_varint(bytes, MAX_VARINT_SIZE, 0x0F)?;
    let value = u32::try_from(value).expect("35-bit varint capped to 32 bits");
    Ok((zigzag_decode_32(value), size))
}

/// Decodes a zigzag varlong from the start of `bytes`: the value and the
/// bytes it took.
#[inline]
pub fn get_varlong(bytes: &[u8]) -> Result<(i64, usize), VarintError> {
    if let Some((raw, size)) = short_varint(bytes) {
        return Ok((zigzag_decode_64(u64::from(raw)), size));
    }
    // 10 bytes carry 70 bits; the 10th may only fill bit 63.
    let (value, size) = get_unsigned_varint(bytes, MAX_VARLONG_SIZE, 0x01)?;
    Ok((zigzag_decode_64(value), size))
}

/// The raw (still zigzagged) value of a 1- or 2-byte varint, the sizes
/// almost every length, delta and count takes; `None`: decode the long way.
/// Accepts what the full decoder accepts (non-minimal encodings included).
#[inline]
fn short_varint(bytes: &[u8]) -> Option<(u16, usize)> {
    match *bytes {
        [b0, ..] if b0 < 0x80 => Some((u16::from(b0), 1)),
        [b0, b1, ..] if b1 < 0x80 => Some((u16::from(b0 & 0x7f) | (u16::from(b1) << 7), 2)),
        _ => None,
    }
}

/// A record header. Kafka header keys are strings; the key is kept as bytes
/// so iteration neither copies nor validates UTF-8 (see [`Self::key_str`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordHeader {
    pub key: Bytes,
    pub value: Option<Bytes>,
}

impl RecordHeader {
    /// The key as a string, `None` if it is not UTF-8.
    pub fn key_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.key).ok()
    }
}

/// One record with absolute offset and timestamp. Key, value and headers are
/// slices of the batch buffer (or of its decompressed records): owned, and
/// no copy was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: i64,
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<RecordHeader>,
}

/// Where the fields of one record lie in the records section.
#[derive(Debug)]
pub struct RecordSpans {
    pub timestamp_delta: i64,
    pub offset_delta: i32,
    pub key: Option<Range<usize>>,
    pub value: Option<Range<usize>>,
    /// The header entries (after the header count), for [`header_entries`].
    pub headers: Range<usize>,
    pub header_count: u32,
    /// First byte after the record.
    pub end: usize,
}

/// The (key, value) entries of a record's headers, from
/// `section[spans.headers]` and `spans.header_count` of a record that
/// [`parse_record`] accepted.
pub fn header_entries(region: &[u8], count: u32) -> HeaderEntries<'_> {
    HeaderEntries {
        reader: Reader {
            bytes: region,
            position: 0,
        },
        left: count,
    }
}

/// Iterator of [`header_entries`].
pub struct HeaderEntries<'a> {
    reader: Reader<'a>,
    left: u32,
}

impl<'a> Iterator for HeaderEntries<'a> {
    type Item = (&'a [u8], Option<&'a [u8]>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let reader = &mut self.reader;
        let bytes = reader.bytes;
        let entry = (|| {
            let key_length = reader.varint().ok().filter(|&l| l >= 0)?;
            let key = reader.span(key_length, "").ok()?;
            let value = reader.nullable_span("", "").ok()?;
            Some((&bytes[key], value.map(|v| &bytes[v])))
        })();
        // Validated by parse_record: a failure here would be a bug, and
        // ending the iteration is the safe answer.
        debug_assert!(entry.is_some(), "headers were validated");
        if entry.is_none() {
            self.left = 0;
        }
        entry
    }
}

/// Reads fields from `bytes[position..]`. Positions are absolute in the
/// records section so that spans can slice the section directly.
struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, &'static str> {
        let byte = *self
            .bytes
            .get(self.position)
            .ok_or("record ends before its attributes")?;
        self.position += 1;
        Ok(byte)
    }

    fn varint(&mut self) -> Result<i32, &'static str> {
        let rest = &self.bytes[self.position..];
        let (value, size) = get_varint(rest).map_err(VarintError::reason)?;
        self.position += size;
        Ok(value)
    }

    fn varlong(&mut self) -> Result<i64, &'static str> {
        let rest = &self.bytes[self.position..];
        let (value, size) = get_varlong(rest).map_err(VarintError::reason)?;
        self.position += size;
        Ok(value)
    }

    /// `length` bytes from here, as a range.
    fn span(&mut self, length: i32, overrun: &'static str) -> Result<Range<usize>, &'static str> {
        let length = usize::try_from(length).expect("caller checked length >= 0");
        let start = self.position;
        let end = start
            .checked_add(length)
            .filter(|&end| end <= self.bytes.len())
            .ok_or(overrun)?;
        self.position = end;
        Ok(start..end)
    }

    /// A length-prefixed byte string where length -1 means null.
    fn nullable_span(
        &mut self,
        negative: &'static str,
        overrun: &'static str,
    ) -> Result<Option<Range<usize>>, &'static str> {
        match self.varint()? {
            -1 => Ok(None),
            length if length < -1 => Err(negative),
            length => self.span(length, overrun).map(Some),
        }
    }
}

/// Parses the record at `section[start..]`, calling `on_header` with the
/// key and value spans of each header (a no-op when validating, so that
/// validation allocates nothing). Errors are reasons for
/// [`BatchError::BadRecord`].
#[inline]
pub fn parse_record(
    section: &[u8],
    start: usize,
    mut on_header: impl FnMut(Range<usize>, Option<Range<usize>>),
) -> Result<RecordSpans, &'static str> {
    assert!(start <= section.len());
    let mut frame = Reader {
        bytes: section,
        position: start,
    };
    let length = frame.varint()?;
    if length < 0 {
        return Err("negative record length");
    }
    let body = frame.span(length, "record length runs past the end of the records")?;
    // Every field read below is confined to the body.
    let mut reader = Reader {
        bytes: &section[..body.end],
        position: body.start,
    };
    let _attributes = reader.byte()?;
    let timestamp_delta = reader.varlong()?;
    let offset_delta = reader.varint()?;
    let key = reader.nullable_span("key length below -1", "key runs past the end of its record")?;
    let value = reader.nullable_span(
        "value length below -1",
        "value runs past the end of its record",
    )?;
    let header_count = u32::try_from(reader.varint()?).map_err(|_| "negative header count")?;
    let headers_start = reader.position;
    // A huge count cannot loop for long: each header takes at least 2 bytes.
    for _ in 0..header_count {
        let key_length = reader.varint()?;
        if key_length < 0 {
            return Err("null or negative header key length");
        }
        let key = reader.span(key_length, "header key runs past the end of its record")?;
        let value = reader.nullable_span(
            "header value length below -1",
            "header value runs past the end of its record",
        )?;
        on_header(key, value);
    }
    if reader.position != body.end {
        return Err("record length does not match its contents");
    }
    Ok(RecordSpans {
        timestamp_delta,
        offset_delta,
        key,
        value,
        headers: headers_start..body.end,
        header_count,
        end: body.end,
    })
}

fn check_offset_delta(index: usize, offset_delta: i32) -> Result<(), BatchError> {
    let expected = i32::try_from(index).expect("index below record_count, an i32");
    if offset_delta != expected {
        return Err(BatchError::BadOffsetDelta {
            index,
            expected,
            found: offset_delta,
        });
    }
    Ok(())
}

fn trailing_bytes_error(record_count: usize) -> BatchError {
    BatchError::BadRecord {
        index: record_count,
        reason: "bytes remain after the last record",
    }
}

/// Checks every record of an uncompressed records section: framing, that
/// each record's length matches its contents, offset deltas exactly
/// `0..record_count` in order, and that the last record ends the section.
fn validate_record_section(section: &[u8], record_count: usize) -> Result<(), BatchError> {
    let mut position = 0;
    for index in 0..record_count {
        let spans = parse_record(section, position, |_, _| {})
            .map_err(|reason| BatchError::BadRecord { index, reason })?;
        check_offset_delta(index, spans.offset_delta)?;
        position = spans.end;
    }
    if position != section.len() {
        return Err(trailing_bytes_error(record_count));
    }
    Ok(())
}

/// Validates the records of one UNCOMPRESSED batch (`batch` holds exactly the
/// batch). Checks the header fields it relies on (length, record count) but
/// not the CRC: call [`validate_batch`] for that first. Allocates nothing.
/// A compressed batch is refused with [`BatchError::RecordsCompressed`]:
/// its records are opaque until decompressed (see [`RecordIter`]).
pub fn validate_records(batch: &[u8]) -> Result<(), BatchError> {
    let header = BatchHeader::parse(batch)?;
    if header.total_size() != batch.len() {
        return Err(BatchError::LengthMismatch {
            declared: header.total_size(),
            actual: batch.len(),
        });
    }
    if header.compression_id() != Compression::None.id() {
        return Err(BatchError::RecordsCompressed {
            id: header.compression_id(),
        });
    }
    let record_count = usize::try_from(header.record_count)
        .ok()
        .filter(|&count| count > 0)
        .ok_or(BatchError::BadRecordCount {
            record_count: header.record_count,
            last_offset_delta: header.last_offset_delta,
        })?;
    validate_record_section(&batch[HEADER_SIZE..], record_count)
}

/// Iterates the records of ONE batch, decompressing its records section
/// first when the batch is compressed. Yields records with absolute offsets
/// and timestamps; after the first error it yields nothing more.
#[derive(Debug, Clone)]
pub struct RecordIter {
    header: BatchHeader,
    /// The uncompressed records section.
    records: Bytes,
    /// Start of the next record in `records`.
    position: usize,
    next_index: usize,
    record_count: usize,
    finished: bool,
}

impl RecordIter {
    /// Validates the batch (length, magic, CRC32C, counts) and prepares to
    /// iterate it, decompressing up to [`DEFAULT_DECOMPRESSED_LIMIT_BYTES`].
    pub fn new(batch: Bytes) -> Result<RecordIter, BatchError> {
        RecordIter::with_limit(batch, DEFAULT_DECOMPRESSED_LIMIT_BYTES)
    }

    /// As [`Self::new`], refusing a records section that decompresses to more
    /// than `limit_bytes`.
    pub fn with_limit(batch: Bytes, limit_bytes: usize) -> Result<RecordIter, BatchError> {
        let header = validate_batch(&batch)?;
        let codec = Compression::from_id(header.compression_id()).ok_or(
            BatchError::UnknownCompression {
                id: header.compression_id(),
            },
        )?;
        let section = batch.slice(HEADER_SIZE..);
        let records = match codec {
            Compression::None => section,
            codec => Bytes::from(decompress(codec, &section, limit_bytes)?),
        };
        let record_count =
            usize::try_from(header.record_count).expect("validate_batch checked count > 0");
        Ok(RecordIter {
            header,
            records,
            position: 0,
            next_index: 0,
            record_count,
            finished: false,
        })
    }

    /// The batch header.
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    fn read_record(&mut self) -> Result<Record, BatchError> {
        let index = self.next_index;
        let records = &self.records;
        let mut headers = Vec::new();
        let spans = parse_record(records, self.position, |key, value| {
            headers.push(RecordHeader {
                key: records.slice(key),
                value: value.map(|value| records.slice(value)),
            });
        })
        .map_err(|reason| BatchError::BadRecord { index, reason })?;
        check_offset_delta(index, spans.offset_delta)?;
        let offset = self
            .header
            .base_offset
            .checked_add(i64::from(spans.offset_delta))
            .ok_or(BatchError::BadRecord {
                index,
                reason: "offset overflows i64",
            })?;
        let timestamp_ms = if self.header.attributes & ATTR_TIMESTAMP_TYPE_LOG_APPEND != 0 {
            // Log append time: the broker's time, stored once in the header.
            self.header.max_timestamp
        } else {
            self.header
                .base_timestamp
                .checked_add(spans.timestamp_delta)
                .ok_or(BatchError::BadRecord {
                    index,
                    reason: "timestamp overflows i64",
                })?
        };
        let record = Record {
            offset,
            timestamp_ms,
            key: spans.key.map(|key| records.slice(key)),
            value: spans.value.map(|value| records.slice(value)),
            headers,
        };
        self.position = spans.end;
        self.next_index += 1;
        Ok(record)
    }
}

impl Iterator for RecordIter {
    type Item = Result<Record, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        if self.next_index == self.record_count {
            self.finished = true;
            if self.position != self.records.len() {
                return Some(Err(trailing_bytes_error(self.record_count)));
            }
            return None;
        }
        let result = self.read_record();
        if result.is_err() {
            self.finished = true;
        }
        Some(result)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.finished {
            return (0, Some(0));
        }
        // One more for a possible trailing-bytes error.
        (0, Some(self.record_count - self.next_index + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint_bytes(value: i32) -> Vec<u8> {
        let mut out = Vec::new();
        put_varint(&mut out, value);
        out
    }

    fn varlong_bytes(value: i64) -> Vec<u8> {
        let mut out = Vec::new();
        put_varlong(&mut out, value);
        out
    }

    #[test]
    fn varint_known_encodings() {
        // Zigzag: 0 -> 0, -1 -> 1, 1 -> 2, -2 -> 3, ...
        assert_eq!(varint_bytes(0), [0x00]);
        assert_eq!(varint_bytes(-1), [0x01]);
        assert_eq!(varint_bytes(1), [0x02]);
        assert_eq!(varint_bytes(-64), [0x7F]);
        assert_eq!(varint_bytes(64), [0x80, 0x01]);
        assert_eq!(varint_bytes(300), [0xD8, 0x04]);
        assert_eq!(varint_bytes(i32::MAX), [0xFE, 0xFF, 0xFF, 0xFF, 0x0F]);
        assert_eq!(varint_bytes(i32::MIN), [0xFF, 0xFF, 0xFF, 0xFF, 0x0F]);
        assert_eq!(
            varlong_bytes(i64::MAX),
            [0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]
        );
        assert_eq!(
            varlong_bytes(i64::MIN),
            [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]
        );
    }

    #[test]
    fn varint_edges_round_trip() {
        let values = [
            0,
            -1,
            1,
            63,
            -64,
            64,
            -65,
            8191,
            8192,
            i32::MAX,
            i32::MIN,
            i32::MAX - 1,
            i32::MIN + 1,
        ];
        for value in values {
            let bytes = varint_bytes(value);
            assert_eq!(bytes.len(), varint_size(value), "{value}");
            assert_eq!(get_varint(&bytes), Ok((value, bytes.len())), "{value}");
            // Every proper prefix is truncated.
            for cut in 0..bytes.len() {
                assert_eq!(get_varint(&bytes[..cut]), Err(VarintError::Truncated));
            }
        }
        let longs = [
            0,
            -1,
            1,
            i64::from(i32::MAX),
            i64::from(i32::MIN),
            i64::from(i32::MAX) + 1,
            i64::from(i32::MIN) - 1,
            i64::MAX,
            i64::MIN,
            i64::MAX - 1,
            i64::MIN + 1,
        ];
        for value in longs {
            let bytes = varlong_bytes(value);
            assert_eq!(bytes.len(), varlong_size(value), "{value}");
            assert_eq!(get_varlong(&bytes), Ok((value, bytes.len())), "{value}");
            for cut in 0..bytes.len() {
                assert_eq!(get_varlong(&bytes[..cut]), Err(VarintError::Truncated));
            }
        }
    }

    #[test]
    fn overlong_and_overflowing_varints_are_refused() {
        assert_eq!(
            get_varint(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x00]),
            Err(VarintError::TooLong)
        );
        assert_eq!(
            get_varint(&[0xFF, 0xFF, 0xFF, 0xFF, 0x1F]),
            Err(VarintError::Overflow)
        );
        assert_eq!(get_varlong(&[0xFF; 10]), Err(VarintError::TooLong));
        let mut overflow = [0xFF; 10];
        overflow[9] = 0x02;
        assert_eq!(get_varlong(&overflow), Err(VarintError::Overflow));
        // Non-minimal but in range: accepted, as Kafka accepts it.
        assert_eq!(get_varint(&[0x82, 0x00]), Ok((1, 2)));
        // A varlong-sized value is too long for a varint.
        assert!(get_varint(&varlong_bytes(i64::MAX)).is_err());
    }

    /// Hand-encodes one record body (after its length).
    fn record(offset_delta: i32, key: &[u8], value: &[u8]) -> Vec<u8> {
        let mut body = vec![0u8];
        put_varlong(&mut body, 0);
        put_varint(&mut body, offset_delta);
        put_varint(&mut body, key.len() as i32);
        body.extend_from_slice(key);
        put_varint(&mut body, value.len() as i32);
        body.extend_from_slice(value);
        put_varint(&mut body, 0);
        let mut out = Vec::new();
        put_varint(&mut out, body.len() as i32);
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn record_section_checks() {
        let mut section = record(0, b"a", b"b");
        section.extend_from_slice(&record(1, b"", b"cc"));
        assert_eq!(validate_record_section(&section, 2), Ok(()));
        assert_eq!(
            validate_record_section(&section, 1),
            Err(trailing_bytes_error(1))
        );
        assert!(matches!(
            validate_record_section(&section, 3),
            Err(BatchError::BadRecord { index: 2, .. })
        ));
        let mut gap = record(0, b"a", b"b");
        gap.extend_from_slice(&record(2, b"", b"cc"));
        assert_eq!(
            validate_record_section(&gap, 2),
            Err(BatchError::BadOffsetDelta {
                index: 1,
                expected: 1,
                found: 2
            })
        );
        // Length says one byte more than the fields take.
        let mut long = record(0, b"a", b"b");
        long[0] += 2; // zigzag: +1 in length
        long.push(0);
        assert_eq!(
            validate_record_section(&long, 1),
            Err(BatchError::BadRecord {
                index: 0,
                reason: "record length does not match its contents"
            })
        );
    }

    #[test]
    fn null_key_and_value_and_headers_parse() {
        let mut body = vec![0u8];
        put_varlong(&mut body, -5);
        put_varint(&mut body, 0);
        put_varint(&mut body, -1); // null key
        put_varint(&mut body, -1); // null value
        put_varint(&mut body, 2);
        put_varint(&mut body, 1);
        body.push(b'h');
        put_varint(&mut body, -1); // null header value
        put_varint(&mut body, 0); // empty header key
        put_varint(&mut body, 1);
        body.push(b'v');
        let mut section = Vec::new();
        put_varint(&mut section, body.len() as i32);
        section.extend_from_slice(&body);
        let mut headers = Vec::new();
        let spans = parse_record(&section, 0, |key, value| headers.push((key, value))).unwrap();
        assert_eq!(spans.timestamp_delta, -5);
        assert_eq!(spans.key, None);
        assert_eq!(spans.value, None);
        assert_eq!(spans.end, section.len());
        assert_eq!(headers.len(), 2);
        assert_eq!(&section[headers[0].0.clone()], b"h");
        assert_eq!(headers[0].1, None);
        assert!(headers[1].0.is_empty());
        assert_eq!(&section[headers[1].1.clone().unwrap()], b"v");
    }

    #[test]
    fn null_header_key_is_refused() {
        let mut body = vec![0u8, 0, 0, 1, 1, 2];
        put_varint(&mut body, -1);
        put_varint(&mut body, -1);
        let mut section = Vec::new();
        put_varint(&mut section, body.len() as i32);
        section.extend_from_slice(&body);
        assert_eq!(
            parse_record(&section, 0, |_, _| {}).unwrap_err(),
            "null or negative header key length"
        );
    }

    /// The 1-2 byte fast path decodes exactly as the general decoder, for
    /// every 1- and 2-byte input (minimal or not).
    #[test]
    fn short_varints_match_the_general_decoder() {
        for b0 in 0..=255u8 {
            for b1 in 0..=255u8 {
                let bytes = [b0, b1, 0x00];
                let want = get_unsigned_varint(&bytes, MAX_VARINT_SIZE, 0x0F)
                    .map(|(v, n)| (zigzag_decode_32(v as u32), n));
                assert_eq!(get_varint(&bytes), want);
                let want = get_unsigned_varint(&bytes, MAX_VARLONG_SIZE, 0x01)
                    .map(|(v, n)| (zigzag_decode_64(v), n));
                assert_eq!(get_varlong(&bytes), want);
            }
        }
    }

    #[test]
    fn huge_header_count_fails_fast() {
        let mut body = vec![0u8, 0, 0, 1, 1];
        put_varint(&mut body, i32::MAX);
        let mut section = Vec::new();
        put_varint(&mut section, body.len() as i32);
        section.extend_from_slice(&body);
        assert!(parse_record(&section, 0, |_, _| {}).is_err());
    }
}
