//! Fetched batches as the consumer hands them out: validated once, then
//! read without per-record allocation or reference counting.
//!
//! Decoding a batch checks its header (and its CRC32C unless the consumer
//! opted out with `check_crcs: false`), decompresses the records section
//! when needed, and parses every record once into a compact span table (one
//! allocation per batch). [`ConsumerBatch::iter`] then yields borrowed
//! [`RecordView`]s straight from that table; [`crate::ConsumerRecord`]s
//! (owned `Bytes` slices) are made only for callers of `poll`.
//!
//! The record checks are those of `ringmq_wire`'s `RecordIter` (framing,
//! lengths confined to the record, offset deltas `0..record_count`, nothing
//! after the last record); a test compares both on the same batches.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use ringmq_wire::batch::compression::decompress;
use ringmq_wire::batch::header::ATTR_TIMESTAMP_TYPE_LOG_APPEND;
use ringmq_wire::batch::records::{
    header_entries, parse_record, RecordSpans, DEFAULT_DECOMPRESSED_LIMIT_BYTES,
};
use ringmq_wire::batch::{
    validate_batch_checking_crc, BatchError, BatchHeader, Compression, RecordHeader,
};

use crate::consumer::ConsumerRecord;

/// Where one record's fields lie in its batch's records section. Lengths of
/// -1 mean null. Positions fit u32: a records section is at most
/// `DEFAULT_DECOMPRESSED_LIMIT_BYTES` (or one frame) long.
#[derive(Debug, Clone, Copy)]
struct RecordSpan {
    offset: i64,
    timestamp_ms: i64,
    key_start: u32,
    key_len: i32,
    value_start: u32,
    value_len: i32,
    /// The header entries (after the header count varint).
    headers_start: u32,
    headers_end: u32,
    header_count: u32,
}

impl RecordSpan {
    fn new(offset: i64, timestamp_ms: i64, record: &RecordSpans) -> RecordSpan {
        let pos = |p: usize| u32::try_from(p).expect("records section under 4 GiB");
        let field = |range: &Option<Range<usize>>| match range {
            Some(r) => (
                pos(r.start),
                i32::try_from(r.len()).expect("field under 2 GiB"),
            ),
            None => (0, -1),
        };
        let (key_start, key_len) = field(&record.key);
        let (value_start, value_len) = field(&record.value);
        RecordSpan {
            offset,
            timestamp_ms,
            key_start,
            key_len,
            value_start,
            value_len,
            headers_start: pos(record.headers.start),
            headers_end: pos(record.headers.end),
            header_count: record.header_count,
        }
    }
}

/// The records of one fetched batch at or after the consumer's position,
/// in offset order. Cheap to move; cloning shares the data.
#[derive(Debug, Clone)]
pub struct ConsumerBatch {
    topic: Arc<str>,
    partition: u32,
    /// The uncompressed records section: a slice of the fetch answer, or
    /// the decompressed copy.
    records: Bytes,
    spans: Vec<RecordSpan>,
}

/// One record of a [`ConsumerBatch`], borrowed from it.
#[derive(Debug, Clone, Copy)]
pub struct RecordView<'a> {
    pub offset: i64,
    pub timestamp_ms: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    headers: &'a [u8],
    header_count: u32,
}

impl<'a> RecordView<'a> {
    /// The record's headers: (key, value), in order.
    pub fn headers(&self) -> impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)> + 'a {
        header_entries(self.headers, self.header_count)
    }

    pub fn header_count(&self) -> usize {
        self.header_count as usize
    }
}

impl ConsumerBatch {
    pub fn topic(&self) -> &Arc<str> {
        &self.topic
    }

    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// Records in the batch (those below the position when it was fetched
    /// are not counted: they were handed out before).
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Offset of the first record handed out in this batch.
    pub fn first_offset(&self) -> Option<i64> {
        self.spans.first().map(|s| s.offset)
    }

    /// Offset of the last record in this batch.
    pub fn last_offset(&self) -> Option<i64> {
        self.spans.last().map(|s| s.offset)
    }

    /// Bytes of keys and values in the batch (nulls count 0).
    pub fn payload_bytes(&self) -> usize {
        self.spans
            .iter()
            .map(|s| s.key_len.max(0) as usize + s.value_len.max(0) as usize)
            .sum()
    }

    /// The records, borrowed, in offset order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = RecordView<'_>> + '_ {
        self.spans.iter().map(move |s| self.view(s))
    }

    fn view(&self, s: &RecordSpan) -> RecordView<'_> {
        let field = |start: u32, len: i32| {
            usize::try_from(len)
                .ok()
                .map(|len| &self.records[start as usize..start as usize + len])
        };
        RecordView {
            offset: s.offset,
            timestamp_ms: s.timestamp_ms,
            key: field(s.key_start, s.key_len),
            value: field(s.value_start, s.value_len),
            headers: &self.records[s.headers_start as usize..s.headers_end as usize],
            header_count: s.header_count,
        }
    }

    /// Appends the records as owned [`ConsumerRecord`]s (zero-copy `Bytes`
    /// slices of the batch).
    pub fn append_records_to(&self, out: &mut Vec<ConsumerRecord>) {
        out.reserve(self.spans.len());
        let slice = |start: u32, len: i32| {
            usize::try_from(len)
                .ok()
                .map(|len| self.records.slice(start as usize..start as usize + len))
        };
        for s in &self.spans {
            let headers = if s.header_count == 0 {
                Vec::new()
            } else {
                let base = s.headers_start as usize;
                let region = &self.records[base..s.headers_end as usize];
                let mut headers = Vec::with_capacity(s.header_count as usize);
                for (key, value) in header_entries(region, s.header_count) {
                    let at = |part: &[u8]| part.as_ptr() as usize - self.records.as_ptr() as usize;
                    headers.push(RecordHeader {
                        key: self.records.slice(at(key)..at(key) + key.len()),
                        value: value.map(|v| self.records.slice(at(v)..at(v) + v.len())),
                    });
                }
                headers
            };
            out.push(ConsumerRecord {
                topic: self.topic.clone(),
                partition: self.partition,
                offset: s.offset,
                timestamp_ms: s.timestamp_ms,
                key: slice(s.key_start, s.key_len),
                value: slice(s.value_start, s.value_len),
                headers,
            });
        }
    }

    #[cfg(test)]
    fn offsets(&self) -> Vec<i64> {
        self.spans.iter().map(|s| s.offset).collect()
    }
}

/// Decodes one complete batch (`batch` holds exactly it), keeping the
/// records at or after `position`. Every record is validated, also those
/// skipped. `Ok(None)` when no record is at or after `position`.
pub(crate) fn decode_batch(
    topic: &Arc<str>,
    partition: u32,
    batch: Bytes,
    position: i64,
    check_crc: bool,
) -> Result<(BatchHeader, Option<ConsumerBatch>), BatchError> {
    let header = validate_batch_checking_crc(&batch, check_crc)?;
    let codec =
        Compression::from_id(header.compression_id()).ok_or(BatchError::UnknownCompression {
            id: header.compression_id(),
        })?;
    let section = batch.slice(ringmq_wire::batch::HEADER_SIZE..);
    let records = match codec {
        Compression::None => section,
        codec => Bytes::from(decompress(
            codec,
            &section,
            DEFAULT_DECOMPRESSED_LIMIT_BYTES,
        )?),
    };
    if u32::try_from(records.len()).is_err() {
        return Err(BatchError::TooLarge {
            what: "records section",
            size_bytes: records.len(),
        });
    }
    let record_count = usize::try_from(header.record_count).expect("validated: count > 0");
    // Records below the position are skipped; at most all of them stay.
    let keep = usize::try_from(header.next_offset().saturating_sub(position))
        .unwrap_or(0)
        .min(record_count);
    let mut spans = Vec::with_capacity(keep);
    parse_spans(&records, &header, position, &mut spans)?;
    if spans.is_empty() {
        return Ok((header, None));
    }
    Ok((
        header,
        Some(ConsumerBatch {
            topic: topic.clone(),
            partition,
            records,
            spans,
        }),
    ))
}

/// Parses every record of an uncompressed records section, pushing the
/// spans of those at or after `position`.
fn parse_spans(
    section: &[u8],
    header: &BatchHeader,
    position: i64,
    out: &mut Vec<RecordSpan>,
) -> Result<(), BatchError> {
    let record_count = usize::try_from(header.record_count).expect("validated: count > 0");
    let log_append_time = header.attributes & ATTR_TIMESTAMP_TYPE_LOG_APPEND != 0;
    let mut at = 0usize;
    for index in 0..record_count {
        let bad = |reason| BatchError::BadRecord { index, reason };
        let record = parse_record(section, at, |_, _| {}).map_err(bad)?;
        let expected = i32::try_from(index).expect("index below record_count, an i32");
        if record.offset_delta != expected {
            return Err(BatchError::BadOffsetDelta {
                index,
                expected,
                found: record.offset_delta,
            });
        }
        let offset = header
            .base_offset
            .checked_add(i64::from(record.offset_delta))
            .ok_or(bad("offset overflows i64"))?;
        let timestamp_ms = if log_append_time {
            // Log append time: the broker's, stored once in the header.
            header.max_timestamp
        } else {
            header
                .base_timestamp
                .checked_add(record.timestamp_delta)
                .ok_or(bad("timestamp overflows i64"))?
        };
        if offset >= position {
            out.push(RecordSpan::new(offset, timestamp_ms, &record));
        }
        at = record.end;
    }
    if at != section.len() {
        return Err(BatchError::BadRecord {
            index: record_count,
            reason: "bytes remain after the last record",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringmq_wire::batch::header::set_base_offset;
    use ringmq_wire::batch::{BatchBuilder, RecordIter};

    /// (key, value, headers) of a record to build.
    type TestRecord<'a> = (
        Option<&'a [u8]>,
        Option<&'a [u8]>,
        Vec<(&'a str, Option<&'a [u8]>)>,
    );

    fn batch_of(base_offset: i64, records: &[TestRecord<'_>], compression: Compression) -> Bytes {
        let mut builder = BatchBuilder::new(compression, 5_000);
        for (i, (k, v, h)) in records.iter().enumerate() {
            builder.append(5_000 + i as i64 * 3, *k, *v, h).unwrap();
        }
        let mut bytes = bytes::BytesMut::from(&builder.build().unwrap()[..]);
        set_base_offset(&mut bytes, base_offset);
        bytes.freeze()
    }

    fn owned(batch: &ConsumerBatch) -> Vec<ConsumerRecord> {
        let mut out = Vec::new();
        batch.append_records_to(&mut out);
        out
    }

    /// The views, the owned records and wire's `RecordIter` agree on every
    /// field, for every codec, with null keys/values and headers.
    #[test]
    fn agrees_with_the_wire_record_iterator() {
        let topic: Arc<str> = Arc::from("t");
        let big = vec![7u8; 3000];
        let records: Vec<TestRecord<'_>> = vec![
            (None, Some(b"v0"), vec![]),
            (Some(b"k1"), None, vec![("h", Some(b"x")), ("n", None)]),
            (Some(b""), Some(&big), vec![]),
            (None, None, vec![("only", Some(b""))]),
        ];
        for codec in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let bytes = batch_of(40, &records, codec);
            let expected: Vec<_> = RecordIter::new(bytes.clone())
                .unwrap()
                .map(Result::unwrap)
                .collect();
            for check_crc in [true, false] {
                let (header, batch) = decode_batch(&topic, 3, bytes.clone(), 0, check_crc).unwrap();
                assert_eq!(header.base_offset, 40);
                let batch = batch.unwrap();
                assert_eq!(batch.len(), expected.len());
                let owned = owned(&batch);
                for ((view, rec), want) in batch.iter().zip(&owned).zip(&expected) {
                    assert_eq!(view.offset, want.offset);
                    assert_eq!(view.timestamp_ms, want.timestamp_ms);
                    assert_eq!(view.key, want.key.as_deref());
                    assert_eq!(view.value, want.value.as_deref());
                    let headers: Vec<_> = view.headers().collect();
                    let want_headers: Vec<_> = want
                        .headers
                        .iter()
                        .map(|h| (&h.key[..], h.value.as_deref()))
                        .collect();
                    assert_eq!(headers, want_headers);
                    assert_eq!(rec.offset, want.offset);
                    assert_eq!(rec.timestamp_ms, want.timestamp_ms);
                    assert_eq!(rec.key, want.key);
                    assert_eq!(rec.value, want.value);
                    assert_eq!(rec.headers, want.headers);
                    assert_eq!((&*rec.topic, rec.partition), ("t", 3));
                }
                assert_eq!(batch.payload_bytes(), 2 + 2 + 3000);
            }
        }
    }

    #[test]
    fn records_below_the_position_are_skipped_but_validated() {
        let topic: Arc<str> = Arc::from("t");
        let records: Vec<TestRecord<'_>> =
            (0..5).map(|_| (None, Some(&b"v"[..]), vec![])).collect();
        let bytes = batch_of(100, &records, Compression::None);
        let (_, batch) = decode_batch(&topic, 0, bytes.clone(), 103, true).unwrap();
        assert_eq!(batch.unwrap().offsets(), vec![103, 104]);
        let (header, batch) = decode_batch(&topic, 0, bytes, 105, true).unwrap();
        assert!(batch.is_none());
        assert_eq!(header.next_offset(), 105);
    }

    #[test]
    fn crc_mismatch_is_caught_only_when_checking() {
        let topic: Arc<str> = Arc::from("t");
        let records: Vec<TestRecord<'_>> = vec![(None, Some(&b"hello"[..]), vec![])];
        let mut bytes = bytes::BytesMut::from(&batch_of(0, &records, Compression::None)[..]);
        // Flip the value's last byte (the batch's last byte is the header
        // count): the framing stays valid, only the CRC catches it.
        let at = bytes.len() - 2;
        bytes[at] ^= 0x20;
        let bytes = bytes.freeze();
        let err = decode_batch(&topic, 0, bytes.clone(), 0, true).unwrap_err();
        assert!(matches!(err, BatchError::BadCrc { .. }), "{err}");
        let (_, batch) = decode_batch(&topic, 0, bytes, 0, false).unwrap();
        let batch = batch.unwrap();
        assert_eq!(batch.iter().next().unwrap().value, Some(&b"hellO"[..]));
    }

    #[test]
    fn malformed_records_are_refused_even_without_crc_checks() {
        let topic: Arc<str> = Arc::from("t");
        let records: Vec<TestRecord<'_>> = vec![
            (None, Some(&b"a"[..]), vec![]),
            (None, Some(&b"b"[..]), vec![]),
        ];
        let good = batch_of(0, &records, Compression::None);
        let header_size = ringmq_wire::batch::HEADER_SIZE;
        // The first record's length varint claims more than is there.
        let mut bad = bytes::BytesMut::from(&good[..]);
        bad[header_size] = 0x7e;
        for check_crc in [true, false] {
            let mut copy = bad.clone();
            if check_crc {
                ringmq_wire::batch::header::store_crc(&mut copy);
            }
            let err = decode_batch(&topic, 0, copy.freeze(), 0, check_crc).unwrap_err();
            assert!(
                matches!(err, BatchError::BadRecord { index: 0, .. }),
                "{err}"
            );
        }
        // A batch cut short is a length mismatch, not a crash.
        let err = decode_batch(&topic, 0, good.slice(..good.len() - 1), 0, false).unwrap_err();
        assert!(matches!(err, BatchError::LengthMismatch { .. }), "{err}");
    }
}
