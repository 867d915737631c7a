//! Building v2 batches on the producer side.
//!
//! Records are encoded as they are appended into a reused buffer; `build`
//! compresses that buffer (when a codec is set), writes the 61-byte header and
//! the CRC32C, and hands the batch out as `Bytes` split off a reused
//! `BytesMut`, so a long-lived builder settles into few allocations.

use bytes::{BufMut, Bytes, BytesMut};

use super::compression::{compress, Compression};
use super::header::{store_crc, HEADER_SIZE, LOG_OVERHEAD, MAGIC_V2};
use super::records::{
    put_varint, put_varlong, varint_size, varlong_size, MAX_VARINT_SIZE, MAX_VARLONG_SIZE,
};
use super::BatchError;

/// A record header as the builder takes it: a string key and a nullable
/// value (Kafka's header model).
pub type HeaderRef<'a> = (&'a str, Option<&'a [u8]>);

/// "No producer": the id, epoch and base sequence of a non-idempotent batch.
pub const NO_PRODUCER_ID: i64 = -1;
pub const NO_PRODUCER_EPOCH: i16 = -1;
pub const NO_SEQUENCE: i32 = -1;
/// The leader epoch a producer writes; the broker patches it in place.
const NO_PARTITION_LEADER_EPOCH: i32 = -1;

/// The most bytes the records section may take: `batch_length` is an i32
/// that also counts the 49 header bytes after it.
const MAX_RECORDS_SIZE_BYTES: usize = i32::MAX as usize - (HEADER_SIZE - LOG_OVERHEAD);

/// Builds one v2 record batch at a time; `reset` to reuse it for the next.
#[derive(Debug)]
pub struct BatchBuilder {
    compression: Compression,
    base_timestamp_ms: i64,
    /// Meaningful only when at least one record was appended.
    max_timestamp_ms: i64,
    record_count: i32,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    /// `HEADER_SIZE` placeholder bytes, then the encoded, uncompressed
    /// records section. An uncompressed `build` fills the header in place
    /// and hands this buffer over as the batch: no copy of the records.
    records: Vec<u8>,
    /// Capacity of the records section a fresh buffer starts with.
    capacity_bytes: usize,
    /// A buffer handed back by the caller ([`Self::recycle_buffer`]) for
    /// the records section after the next uncompressed `build`.
    spare_records: Option<Vec<u8>>,
    /// Scratch for the compressed records section.
    compressed: Vec<u8>,
    /// The batch being assembled; `build` splits it off.
    out: BytesMut,
}

impl BatchBuilder {
    /// An empty builder. `base_timestamp_ms` becomes the batch's first
    /// timestamp; record timestamps are stored as deltas from it.
    pub fn new(compression: Compression, base_timestamp_ms: i64) -> BatchBuilder {
        BatchBuilder::with_capacity(compression, base_timestamp_ms, 0)
    }

    /// Like [`Self::new`], with room for `capacity_bytes` of records up
    /// front, so a producer filling batches of a known size never regrows
    /// (and re-copies) the buffer.
    pub fn with_capacity(
        compression: Compression,
        base_timestamp_ms: i64,
        capacity_bytes: usize,
    ) -> BatchBuilder {
        BatchBuilder {
            compression,
            base_timestamp_ms,
            max_timestamp_ms: i64::MIN,
            record_count: 0,
            producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_EPOCH,
            base_sequence: NO_SEQUENCE,
            records: fresh_records(capacity_bytes),
            capacity_bytes,
            spare_records: None,
            compressed: Vec::new(),
            out: BytesMut::new(),
        }
    }

    /// Sets the idempotent-producer fields of the batch.
    pub fn with_producer(
        mut self,
        producer_id: i64,
        producer_epoch: i16,
        base_sequence: i32,
    ) -> BatchBuilder {
        self.set_producer(producer_id, producer_epoch, base_sequence);
        self
    }

    /// Sets the idempotent-producer fields of the batch being built.
    pub fn set_producer(&mut self, producer_id: i64, producer_epoch: i16, base_sequence: i32) {
        self.producer_id = producer_id;
        self.producer_epoch = producer_epoch;
        self.base_sequence = base_sequence;
    }

    pub fn compression(&self) -> Compression {
        self.compression
    }

    pub fn base_timestamp_ms(&self) -> i64 {
        self.base_timestamp_ms
    }

    /// Gives the builder a buffer for the records section after the next
    /// uncompressed [`Self::build`] (which hands the current one over as the
    /// batch), instead of allocating a fresh one. A producer that gets the
    /// buffers of its acknowledged batches back keeps reusing warm memory
    /// rather than faulting in new pages for every batch. A buffer smaller
    /// than the builder's capacity is dropped.
    pub fn recycle_buffer(&mut self, buffer: Vec<u8>) {
        if buffer.capacity() >= HEADER_SIZE + self.capacity_bytes {
            self.spare_records = Some(buffer);
        }
    }

    /// Empties the builder for the next batch, keeping its buffers and codec.
    /// The producer fields go back to "none": a base sequence must never be
    /// reused by accident, so the caller sets it again for each batch.
    pub fn reset(&mut self, base_timestamp_ms: i64) {
        self.base_timestamp_ms = base_timestamp_ms;
        self.max_timestamp_ms = i64::MIN;
        self.record_count = 0;
        self.set_producer(NO_PRODUCER_ID, NO_PRODUCER_EPOCH, NO_SEQUENCE);
        self.records.truncate(HEADER_SIZE);
    }

    /// Bytes of the records section appended so far.
    fn records_len(&self) -> usize {
        self.records.len() - HEADER_SIZE
    }

    /// Number of records appended.
    pub fn len(&self) -> usize {
        usize::try_from(self.record_count).expect("record_count is never negative")
    }

    pub fn is_empty(&self) -> bool {
        self.record_count == 0
    }

    /// Size of the batch if built uncompressed, in bytes. With a codec the
    /// built batch is usually smaller; use this to cap batches by size.
    pub fn size_bytes(&self) -> usize {
        self.records.len()
    }

    /// Appends a record. Nothing is appended when it fails.
    pub fn append(
        &mut self,
        timestamp_ms: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[HeaderRef<'_>],
    ) -> Result<(), BatchError> {
        if self.record_count == i32::MAX {
            return Err(BatchError::TooLarge {
                what: "record count",
                size_bytes: self.len(),
            });
        }
        let offset_delta = self.record_count;
        let timestamp_delta = timestamp_ms.checked_sub(self.base_timestamp_ms).ok_or(
            BatchError::TimestampOutOfRange {
                timestamp_ms,
                base_timestamp_ms: self.base_timestamp_ms,
            },
        )?;
        let body_size = record_body_size(timestamp_delta, offset_delta, key, value, headers)?;
        let body_size_i32 = i32::try_from(body_size).expect("record_body_size caps at i32::MAX");
        let records_size = self
            .records_len()
            .checked_add(varint_size(body_size_i32) + body_size)
            .filter(|&size| size <= MAX_RECORDS_SIZE_BYTES)
            .ok_or(BatchError::TooLarge {
                what: "batch",
                size_bytes: self.size_bytes().saturating_add(body_size),
            })?;
        self.records.reserve(records_size - self.records_len());
        self.encode_record(
            body_size_i32,
            timestamp_delta,
            offset_delta,
            key,
            value,
            headers,
        );
        assert_eq!(
            self.records_len(),
            records_size,
            "record size computed wrong"
        );
        self.record_count += 1;
        self.max_timestamp_ms = self.max_timestamp_ms.max(timestamp_ms);
        Ok(())
    }

    fn encode_record(
        &mut self,
        body_size: i32,
        timestamp_delta: i64,
        offset_delta: i32,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[HeaderRef<'_>],
    ) {
        let out = &mut self.records;
        put_varint(out, body_size);
        out.push(0); // record attributes: unused by Kafka
        put_varlong(out, timestamp_delta);
        put_varint(out, offset_delta);
        put_nullable_bytes(out, key);
        put_nullable_bytes(out, value);
        put_varint(out, length_i32(headers.len()));
        for (header_key, header_value) in headers {
            put_nullable_bytes(out, Some(header_key.as_bytes()));
            put_nullable_bytes(out, *header_value);
        }
    }

    /// Encodes the batch: header (base offset 0, leader epoch -1, create-time
    /// timestamps), compressed records, CRC32C. Uncompressed, the records
    /// buffer itself becomes the batch (no copy) and the builder is left
    /// empty; compressed, the builder keeps its records. Either way, call
    /// [`Self::reset`] before the next batch.
    ///
    /// Panics if no record was appended: a v2 batch holds at least one.
    pub fn build(&mut self) -> Result<Bytes, BatchError> {
        assert!(!self.is_empty(), "a v2 batch needs at least one record");
        assert!(self.out.is_empty(), "the previous batch was split off");
        if self.compression == Compression::None {
            // The records already sit behind a header-sized gap: fill the
            // header in place and hand the whole buffer over.
            let records_len = self.records_len();
            let header = self.header_bytes(records_len)?;
            self.records[..HEADER_SIZE].copy_from_slice(&header);
            store_crc(&mut self.records);
            let next = match self.spare_records.take() {
                Some(mut spare) => {
                    spare.clear();
                    spare.resize(HEADER_SIZE, 0);
                    spare
                }
                None => fresh_records(self.capacity_bytes),
            };
            let batch = std::mem::replace(&mut self.records, next);
            // The records left with the batch; keep the builder consistent.
            self.record_count = 0;
            self.max_timestamp_ms = i64::MIN;
            return Ok(Bytes::from(batch));
        }
        self.compressed.clear();
        compress(
            self.compression,
            &self.records[HEADER_SIZE..],
            &mut self.compressed,
        )?;
        let header = self.header_bytes(self.compressed.len())?;
        let out = &mut self.out;
        out.reserve(HEADER_SIZE + self.compressed.len());
        out.extend_from_slice(&header);
        out.extend_from_slice(&self.compressed);
        store_crc(out);
        Ok(out.split().freeze())
    }

    /// The 61-byte header for a records section of `records_len` bytes (CRC
    /// left zero: computed over the finished batch).
    fn header_bytes(&self, records_len: usize) -> Result<[u8; HEADER_SIZE], BatchError> {
        if records_len > MAX_RECORDS_SIZE_BYTES {
            return Err(BatchError::TooLarge {
                what: "compressed batch",
                size_bytes: HEADER_SIZE + records_len,
            });
        }
        let batch_length = i32::try_from(HEADER_SIZE - LOG_OVERHEAD + records_len)
            .expect("records size checked above");
        let mut header = [0u8; HEADER_SIZE];
        let mut out = &mut header[..];
        out.put_i64(0); // base offset: the broker assigns it
        out.put_i32(batch_length);
        out.put_i32(NO_PARTITION_LEADER_EPOCH);
        out.put_i8(MAGIC_V2);
        out.put_u32(0); // CRC, stored over the finished batch
        out.put_i16(i16::from(self.compression.id())); // create time, not transactional
        out.put_i32(self.record_count - 1); // last offset delta
        out.put_i64(self.base_timestamp_ms);
        out.put_i64(self.max_timestamp_ms);
        out.put_i64(self.producer_id);
        out.put_i16(self.producer_epoch);
        out.put_i32(self.base_sequence);
        out.put_i32(self.record_count);
        assert!(out.is_empty(), "header is exactly HEADER_SIZE bytes");
        Ok(header)
    }
}

/// A records buffer holding only the header placeholder.
fn fresh_records(capacity_bytes: usize) -> Vec<u8> {
    let mut records = Vec::with_capacity(HEADER_SIZE + capacity_bytes);
    records.resize(HEADER_SIZE, 0);
    records
}

/// Upper bound of the bytes one record adds to a batch (before compression),
/// whatever its timestamp and position: lets a producer decide whether a
/// record still fits before appending it.
pub fn record_size_upper_bound_bytes(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: &[HeaderRef<'_>],
) -> usize {
    let fixed = MAX_VARINT_SIZE + 1 + MAX_VARLONG_SIZE + MAX_VARINT_SIZE + MAX_VARINT_SIZE;
    let field = |bytes: Option<&[u8]>| MAX_VARINT_SIZE + bytes.map_or(0, <[u8]>::len);
    let headers_size: usize = headers
        .iter()
        .map(|(key, value)| field(Some(key.as_bytes())) + field(*value))
        .sum();
    fixed + field(key) + field(value) + headers_size
}

fn length_i32(length: usize) -> i32 {
    i32::try_from(length).expect("record_body_size checked every length")
}

fn put_nullable_bytes(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => put_varint(out, -1),
        Some(bytes) => {
            put_varint(out, length_i32(bytes.len()));
            out.extend_from_slice(bytes);
        }
    }
}

/// Encoded size of a nullable byte string: its length varint and its bytes.
fn nullable_bytes_size(bytes: Option<&[u8]>, what: &'static str) -> Result<usize, BatchError> {
    let Some(bytes) = bytes else {
        return Ok(varint_size(-1));
    };
    let length = i32::try_from(bytes.len()).map_err(|_| BatchError::TooLarge {
        what,
        size_bytes: bytes.len(),
    })?;
    Ok(varint_size(length) + bytes.len())
}

/// Exact size of a record after its length field, checking that every
/// length fits the i32 the format gives it.
fn record_body_size(
    timestamp_delta: i64,
    offset_delta: i32,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: &[HeaderRef<'_>],
) -> Result<usize, BatchError> {
    let header_count = i32::try_from(headers.len()).map_err(|_| BatchError::TooLarge {
        what: "header count",
        size_bytes: headers.len(),
    })?;
    let mut size_bytes =
        1 + varlong_size(timestamp_delta) + varint_size(offset_delta) + varint_size(header_count);
    size_bytes = add_record_size(size_bytes, nullable_bytes_size(key, "record key")?)?;
    size_bytes = add_record_size(size_bytes, nullable_bytes_size(value, "record value")?)?;
    for (header_key, header_value) in headers {
        let key_size = nullable_bytes_size(Some(header_key.as_bytes()), "header key")?;
        size_bytes = add_record_size(size_bytes, key_size)?;
        let value_size = nullable_bytes_size(*header_value, "header value")?;
        size_bytes = add_record_size(size_bytes, value_size)?;
    }
    Ok(size_bytes)
}

/// `size_bytes + part_bytes`, refused past the i32 a record length holds.
fn add_record_size(size_bytes: usize, part_bytes: usize) -> Result<usize, BatchError> {
    size_bytes
        .checked_add(part_bytes)
        .filter(|&total| total <= i32::MAX as usize)
        .ok_or(BatchError::TooLarge {
            what: "record",
            size_bytes: size_bytes.saturating_add(part_bytes),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::header::{validate_batch, BatchHeader};
    use crate::batch::records::{validate_records, RecordIter};

    /// Kafka's CRC32C (Castagnoli, reflected 0x82F63B78), bit by bit, so the
    /// golden test does not trust the crate that the code uses.
    fn crc32c_reference(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &byte in bytes {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0x82F6_3B78
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn golden_one_record_uncompressed_batch() {
        let mut builder = BatchBuilder::new(Compression::None, 1000);
        builder.append(1000, Some(b"k"), Some(b"v"), &[]).unwrap();
        let batch = builder.build().unwrap();

        #[rustfmt::skip]
        let mut expected: Vec<u8> = vec![
            0, 0, 0, 0, 0, 0, 0, 0,        // base offset 0
            0, 0, 0, 58,                   // batch length: 70 - 12
            0xFF, 0xFF, 0xFF, 0xFF,        // partition leader epoch -1
            2,                             // magic
            0, 0, 0, 0,                    // CRC32C, filled below
            0, 0,                          // attributes: none, create time
            0, 0, 0, 0,                    // last offset delta
            0, 0, 0, 0, 0, 0, 0x03, 0xE8,  // first timestamp 1000
            0, 0, 0, 0, 0, 0, 0x03, 0xE8,  // max timestamp 1000
            0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, // producer id -1
            0xFF, 0xFF,                    // producer epoch -1
            0xFF, 0xFF, 0xFF, 0xFF,        // base sequence -1
            0, 0, 0, 1,                    // record count
            // record
            0x10,                          // length 8 (zigzag 16)
            0,                             // attributes
            0,                             // timestamp delta 0
            0,                             // offset delta 0
            0x02, b'k',                    // key length 1, key
            0x02, b'v',                    // value length 1, value
            0,                             // header count 0
        ];
        assert_eq!(expected.len(), 70);
        let crc = crc32c_reference(&expected[21..]);
        expected[17..21].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(&batch[..], &expected[..]);
        assert_eq!(
            crc32c_reference(b"123456789"),
            0xE306_9283,
            "CRC32C check value"
        );
    }

    #[test]
    fn built_batch_validates_and_iterates() {
        for codec in Compression::ALL {
            let mut builder = BatchBuilder::new(codec, 5_000).with_producer(42, 3, 100);
            builder
                .append(5_000, None, Some(b"first"), &[("tag", Some(b"a"))])
                .unwrap();
            builder
                .append(4_000, Some(b""), None, &[("nil", None)])
                .unwrap();
            builder
                .append(9_000, Some(b"k3"), Some(b"v3"), &[])
                .unwrap();
            assert_eq!(builder.len(), 3);
            let size_bytes = builder.size_bytes();
            let batch = builder.build().unwrap();
            let header = validate_batch(&batch).unwrap();
            assert_eq!(header.compression_id(), codec.id());
            assert_eq!(header.base_timestamp, 5_000);
            assert_eq!(header.max_timestamp, 9_000);
            assert_eq!(header.last_offset_delta, 2);
            assert_eq!(header.producer_id, 42);
            assert_eq!(header.producer_epoch, 3);
            assert_eq!(header.base_sequence, 100);
            if codec == Compression::None {
                assert_eq!(validate_records(&batch), Ok(()));
                assert_eq!(batch.len(), size_bytes);
            } else {
                assert_eq!(
                    validate_records(&batch),
                    Err(BatchError::RecordsCompressed { id: codec.id() })
                );
            }
            let records: Vec<_> = RecordIter::new(batch)
                .unwrap()
                .map(Result::unwrap)
                .collect();
            assert_eq!(records.len(), 3);
            assert_eq!(records[0].value.as_deref(), Some(&b"first"[..]));
            assert_eq!(records[0].headers[0].key_str(), Some("tag"));
            assert_eq!(records[1].timestamp_ms, 4_000);
            assert_eq!(records[1].key.as_deref(), Some(&b""[..]));
            assert_eq!(records[1].value, None);
            assert_eq!(records[1].headers[0].value, None);
            assert_eq!(records[2].offset, 2);
        }
    }

    #[test]
    fn reset_reuses_the_builder_and_clears_the_producer() {
        let mut builder = BatchBuilder::new(Compression::Lz4, 0).with_producer(1, 1, 7);
        builder.append(0, None, Some(b"one"), &[]).unwrap();
        let first = builder.build().unwrap();
        builder.reset(10);
        assert!(builder.is_empty());
        assert_eq!(builder.size_bytes(), HEADER_SIZE);
        builder.append(11, None, Some(b"two"), &[]).unwrap();
        let second = builder.build().unwrap();
        // The first batch is untouched by building the second.
        assert_eq!(validate_batch(&first).unwrap().producer_id, 1);
        let header = validate_batch(&second).unwrap();
        assert_eq!(header.producer_id, NO_PRODUCER_ID);
        assert_eq!(header.base_sequence, NO_SEQUENCE);
        assert_eq!(header.base_timestamp, 10);
    }

    #[test]
    fn a_recycled_buffer_carries_the_next_batch() {
        let mut builder = BatchBuilder::with_capacity(Compression::None, 0, 4096);
        builder.append(0, None, Some(b"one"), &[]).unwrap();
        let first = builder.build().unwrap();
        // The caller got its first batch's memory back (dirty) and recycles it.
        let mut buffer = Vec::with_capacity(HEADER_SIZE + 4096);
        buffer.extend_from_slice(&[0xEE; 100]);
        let address = buffer.as_ptr();
        builder.recycle_buffer(buffer);
        builder.reset(5);
        builder.append(5, None, Some(b"two"), &[]).unwrap();
        let second = builder.build().unwrap();
        builder.reset(9);
        builder.append(9, None, Some(b"three"), &[]).unwrap();
        let third = builder.build().unwrap();
        assert_eq!(
            third.as_ptr(),
            address,
            "the third batch used the recycled buffer"
        );
        for (batch, value) in [(&first, &b"one"[..]), (&second, b"two"), (&third, b"three")] {
            validate_batch(batch).unwrap();
            let records: Vec<_> = RecordIter::new(batch.clone()).unwrap().collect();
            assert_eq!(records[0].as_ref().unwrap().value.as_deref(), Some(value));
        }
        // Too small for the builder's capacity: ignored, not used.
        builder.recycle_buffer(Vec::with_capacity(10));
        builder.reset(0);
        builder.append(0, None, Some(b"four"), &[]).unwrap();
        validate_batch(&builder.build().unwrap()).unwrap();
    }

    #[test]
    fn timestamp_delta_overflow_is_an_error_and_appends_nothing() {
        let mut builder = BatchBuilder::new(Compression::None, i64::MIN);
        assert_eq!(
            builder.append(i64::MAX, None, None, &[]),
            Err(BatchError::TimestampOutOfRange {
                timestamp_ms: i64::MAX,
                base_timestamp_ms: i64::MIN
            })
        );
        assert!(builder.is_empty());
        assert_eq!(builder.size_bytes(), HEADER_SIZE);
    }

    #[test]
    fn size_bytes_tracks_the_encoding_and_the_bound_holds() {
        let mut builder = BatchBuilder::new(Compression::None, 0);
        let headers: [HeaderRef<'_>; 2] = [("a", Some(b"xyz")), ("b", None)];
        let value = vec![7u8; 300];
        for i in 0..100 {
            let before = builder.size_bytes();
            builder
                .append(i * 1_000_000, Some(b"key"), Some(&value), &headers)
                .unwrap();
            let added = builder.size_bytes() - before;
            assert!(added <= record_size_upper_bound_bytes(Some(b"key"), Some(&value), &headers));
        }
        let size_bytes = builder.size_bytes();
        let batch = builder.build().unwrap();
        assert_eq!(batch.len(), size_bytes);
        assert!(
            builder.is_empty(),
            "an uncompressed build hands the records over"
        );
        assert_eq!(BatchHeader::parse(&batch).unwrap().record_count, 100);
    }

    #[test]
    #[should_panic(expected = "at least one record")]
    fn building_an_empty_batch_is_a_bug() {
        let _ = BatchBuilder::new(Compression::None, 0).build();
    }
}
