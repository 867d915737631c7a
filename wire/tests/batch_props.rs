//! Property tests of the v2 record codec: build, validate, iterate, compress,
//! and hostile input (bit flips, truncation, garbage) that must be refused
//! without a panic.

use bytes::Bytes;
use proptest::prelude::*;
use ringmq_wire::batch::compression::{compress, decompress, XERIAL_MAGIC};
use ringmq_wire::batch::header::{set_base_offset, set_partition_leader_epoch, store_crc};
use ringmq_wire::batch::records::validate_records;
use ringmq_wire::batch::{
    validate_batch, BatchBuilder, BatchError, BatchHeader, Compression, Record, RecordIter,
    HEADER_SIZE,
};

/// One record as a test generates it.
#[derive(Debug, Clone)]
struct TestRecord {
    timestamp_delta_ms: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
}

fn codec_strategy() -> impl Strategy<Value = Compression> {
    prop::sample::select(Compression::ALL.to_vec())
}

/// Bytes that are sometimes compressible (runs) and sometimes not.
fn payload_strategy(max_size: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..max_size),
        (any::<u8>(), 0..max_size).prop_map(|(byte, size)| vec![byte; size]),
    ]
}

fn record_strategy() -> impl Strategy<Value = TestRecord> {
    let header = (
        "\\PC{0,8}",
        prop::option::of(prop::collection::vec(any::<u8>(), 0..16)),
    );
    (
        -1_000_000_000i64..1_000_000_000,
        prop::option::of(payload_strategy(64)),
        prop::option::of(payload_strategy(512)),
        prop::collection::vec(header, 0..4),
    )
        .prop_map(|(timestamp_delta_ms, key, value, headers)| TestRecord {
            timestamp_delta_ms,
            key,
            value,
            headers,
        })
}

fn build(codec: Compression, base_timestamp_ms: i64, records: &[TestRecord]) -> Bytes {
    let mut builder = BatchBuilder::new(codec, base_timestamp_ms);
    for record in records {
        let headers: Vec<(&str, Option<&[u8]>)> = record
            .headers
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_deref()))
            .collect();
        builder
            .append(
                base_timestamp_ms + record.timestamp_delta_ms,
                record.key.as_deref(),
                record.value.as_deref(),
                &headers,
            )
            .unwrap();
    }
    assert_eq!(builder.len(), records.len());
    builder.build().unwrap()
}

fn assert_record_eq(got: &Record, expected: &TestRecord, offset: i64, base_timestamp_ms: i64) {
    assert_eq!(got.offset, offset);
    assert_eq!(
        got.timestamp_ms,
        base_timestamp_ms + expected.timestamp_delta_ms
    );
    assert_eq!(got.key.as_deref(), expected.key.as_deref());
    assert_eq!(got.value.as_deref(), expected.value.as_deref());
    assert_eq!(got.headers.len(), expected.headers.len());
    for (header, (key, value)) in got.headers.iter().zip(&expected.headers) {
        assert_eq!(header.key_str(), Some(key.as_str()));
        assert_eq!(header.value.as_deref(), value.as_deref());
    }
}

/// Iterates a batch to the end; the records, or the first error.
fn iterate(batch: Bytes) -> Result<Vec<Record>, BatchError> {
    RecordIter::new(batch)?.collect()
}

/// Rewrites the length and CRC of a (modified) batch so that it passes
/// `validate_batch`, to reach the record parser with hostile records.
fn reseal(batch: &mut [u8]) {
    let batch_length = i32::try_from(batch.len() - 12).unwrap();
    batch[8..12].copy_from_slice(&batch_length.to_be_bytes());
    store_crc(batch);
}

/// For an uncompressed batch, validation and iteration must agree: what
/// validates iterates (barring an i64 overflow of offset or timestamp, which
/// only iteration computes), and what iterates validates.
fn assert_validation_agrees_with_iteration(batch: &Bytes) {
    let validated = validate_records(batch);
    let iterated = iterate(batch.clone());
    match (&validated, &iterated) {
        (Ok(()), Err(BatchError::BadRecord { reason, .. })) => {
            assert!(reason.contains("overflows"), "{reason}")
        }
        (Ok(()), Err(error)) => panic!("validated but iteration failed: {error}"),
        (Err(error), Ok(_)) => panic!("iterated but validation failed: {error}"),
        _ => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn build_validate_iterate_round_trip(
        codec in codec_strategy(),
        base_timestamp_ms in 0i64..4_000_000_000_000,
        records in prop::collection::vec(record_strategy(), 1..200),
    ) {
        let batch = build(codec, base_timestamp_ms, &records);
        let header = validate_batch(&batch).unwrap();
        prop_assert_eq!(header.record_count as usize, records.len());
        prop_assert_eq!(header.last_offset_delta as usize, records.len() - 1);
        prop_assert_eq!(header.compression_id(), codec.id());
        prop_assert_eq!(header.base_offset, 0);
        prop_assert_eq!(header.base_timestamp, base_timestamp_ms);
        let max_delta = records.iter().map(|r| r.timestamp_delta_ms).max().unwrap();
        prop_assert_eq!(header.max_timestamp, base_timestamp_ms + max_delta);

        let uncompressed = build(Compression::None, base_timestamp_ms, &records);
        prop_assert_eq!(validate_records(&uncompressed), Ok(()));
        if codec == Compression::None {
            prop_assert_eq!(&batch, &uncompressed);
        } else {
            prop_assert_eq!(
                validate_records(&batch),
                Err(BatchError::RecordsCompressed { id: codec.id() })
            );
            // The compressed section inflates to exactly the uncompressed one.
            let inflated = decompress(codec, &batch[HEADER_SIZE..], 64 << 20).unwrap();
            prop_assert!(inflated[..] == uncompressed[HEADER_SIZE..]);
        }

        let iterated = iterate(batch).unwrap();
        prop_assert_eq!(iterated.len(), records.len());
        for (index, (got, expected)) in iterated.iter().zip(&records).enumerate() {
            assert_record_eq(got, expected, index as i64, base_timestamp_ms);
        }
    }

    #[test]
    fn set_base_offset_keeps_the_crc_valid(
        codec in codec_strategy(),
        records in prop::collection::vec(record_strategy(), 1..20),
        base_offset in 0i64..(i64::MAX / 2),
        leader_epoch in any::<i32>(),
    ) {
        let batch = build(codec, 1_700_000_000_000, &records);
        let mut patched = batch.to_vec();
        set_base_offset(&mut patched, base_offset);
        set_partition_leader_epoch(&mut patched, leader_epoch);
        let header = validate_batch(&patched).unwrap();
        prop_assert_eq!(header.base_offset, base_offset);
        prop_assert_eq!(header.partition_leader_epoch, leader_epoch);
        prop_assert_eq!(header.next_offset(), base_offset + records.len() as i64);
        let offsets: Vec<i64> = iterate(Bytes::from(patched))
            .unwrap()
            .iter()
            .map(|record| record.offset)
            .collect();
        let expected: Vec<i64> = (0..records.len() as i64).map(|i| base_offset + i).collect();
        prop_assert_eq!(offsets, expected);
    }
}

proptest! {
    #[test]
    fn any_byte_flip_under_the_crc_is_caught(
        codec in codec_strategy(),
        records in prop::collection::vec(record_strategy(), 1..8),
        position in any::<prop::sample::Index>(),
        mask in 1u8..=255,
    ) {
        let batch = build(codec, 1_000, &records);
        // From the CRC field itself (17) to the end.
        let at = 17 + position.index(batch.len() - 17);
        let mut flipped = batch.to_vec();
        flipped[at] ^= mask;
        prop_assert!(
            matches!(validate_batch(&flipped), Err(BatchError::BadCrc { .. })),
            "flip at {} not caught", at
        );
        prop_assert!(RecordIter::new(Bytes::from(flipped)).is_err());
    }

    #[test]
    fn hostile_records_with_a_valid_crc_never_panic(
        codec in codec_strategy(),
        records in prop::collection::vec(record_strategy(), 1..8),
        flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let batch = build(codec, 1_000, &records);
        let mut hostile = batch.to_vec();
        for (position, mask) in flips {
            let at = HEADER_SIZE + position.index(hostile.len() - HEADER_SIZE);
            hostile[at] ^= mask;
        }
        hostile.truncate(HEADER_SIZE + cut.index(hostile.len() - HEADER_SIZE + 1));
        reseal(&mut hostile);
        let hostile = Bytes::from(hostile);
        prop_assert!(validate_batch(&hostile).is_ok());
        if codec == Compression::None {
            assert_validation_agrees_with_iteration(&hostile);
        } else {
            let _ = iterate(hostile);
        }
    }

    #[test]
    fn random_record_sections_never_panic(
        codec in codec_strategy(),
        record_count in 1i32..50,
        section in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut batch = build(Compression::None, 0, &[TestRecord {
            timestamp_delta_ms: 0,
            key: None,
            value: None,
            headers: Vec::new(),
        }])
        .to_vec();
        batch.truncate(HEADER_SIZE);
        batch[21..23].copy_from_slice(&i16::from(codec.id()).to_be_bytes());
        batch[23..27].copy_from_slice(&(record_count - 1).to_be_bytes());
        batch[57..61].copy_from_slice(&record_count.to_be_bytes());
        batch.extend_from_slice(&section);
        reseal(&mut batch);
        let batch = Bytes::from(batch);
        if codec == Compression::None {
            assert_validation_agrees_with_iteration(&batch);
        } else {
            let _ = validate_records(&batch);
            let _ = iterate(batch);
        }
    }

    #[test]
    fn garbage_never_panics(
        garbage in prop::collection::vec(any::<u8>(), 0..600),
        limit_bytes in 0usize..(1 << 20),
    ) {
        let _ = BatchHeader::parse(&garbage);
        let _ = validate_batch(&garbage);
        let _ = validate_records(&garbage);
        let _ = iterate(Bytes::from(garbage.clone()));
        // With each codec's magic in front, to get past the first check.
        let magics: [&[u8]; 5] = [
            &[],
            &[0x1F, 0x8B, 0x08],
            &XERIAL_MAGIC,
            &[0x04, 0x22, 0x4D, 0x18],
            &[0x28, 0xB5, 0x2F, 0xFD],
        ];
        // An LZ4 frame header and a block of garbage: reaches the block
        // decoder itself, independent (0x60) and linked (0x40).
        for flg in [0x60u8, 0x40] {
            let mut frame = vec![0x04, 0x22, 0x4D, 0x18, flg, 0x40, 0x82];
            frame.extend_from_slice(&(garbage.len() as u32).to_le_bytes());
            frame.extend_from_slice(&garbage);
            frame.extend_from_slice(&[0; 4]);
            if let Ok(out) = decompress(Compression::Lz4, &frame, limit_bytes) {
                prop_assert!(out.len() <= limit_bytes);
            }
        }
        for magic in magics {
            let input = [magic, &garbage[..]].concat();
            for codec in Compression::ALL {
                if let Ok(out) = decompress(codec, &input, limit_bytes) {
                    prop_assert!(out.len() <= limit_bytes);
                }
            }
        }
    }

    #[test]
    fn decompress_respects_its_limit(
        codec in codec_strategy(),
        data in payload_strategy(200_000),
    ) {
        let mut compressed = Vec::new();
        compress(codec, &data, &mut compressed).unwrap();
        prop_assert!(decompress(codec, &compressed, data.len()).unwrap() == data);
        prop_assert!(decompress(codec, &compressed, data.len() + 1).unwrap() == data);
        if !data.is_empty() {
            let limit_bytes = data.len() - 1;
            prop_assert_eq!(
                decompress(codec, &compressed, limit_bytes),
                Err(BatchError::DecompressedTooLarge { limit_bytes })
            );
            prop_assert_eq!(
                decompress(codec, &compressed, 0),
                Err(BatchError::DecompressedTooLarge { limit_bytes: 0 })
            );
        }
    }
}

/// Every prefix of a small batch is refused, never a panic; and every
/// prefix of its records section, resealed with a valid length and CRC so
/// that it reaches the codec and the record parser, is refused too.
#[test]
fn every_truncation_is_an_error() {
    let records = [
        TestRecord {
            timestamp_delta_ms: 0,
            key: Some(b"key-0".to_vec()),
            value: Some(b"value-0 value-0 value-0".to_vec()),
            headers: vec![("h".to_owned(), Some(b"x".to_vec()))],
        },
        TestRecord {
            timestamp_delta_ms: 7,
            key: None,
            value: Some(vec![]),
            headers: vec![("nil".to_owned(), None)],
        },
        TestRecord {
            timestamp_delta_ms: -3,
            key: Some(vec![0xFF; 40]),
            value: None,
            headers: Vec::new(),
        },
    ];
    for codec in Compression::ALL {
        let batch = build(codec, 1_700_000_000_000, &records);
        assert!(iterate(batch.clone()).is_ok());
        for size in 0..batch.len() {
            let prefix = &batch[..size];
            assert!(validate_batch(prefix).is_err(), "{codec} {size}");
            assert!(validate_records(prefix).is_err(), "{codec} {size}");
            assert!(
                iterate(Bytes::copy_from_slice(prefix)).is_err(),
                "{codec} {size}"
            );
        }
        for size in HEADER_SIZE..batch.len() {
            let mut resealed = batch[..size].to_vec();
            reseal(&mut resealed);
            assert!(validate_batch(&resealed).is_ok());
            if codec == Compression::None {
                assert!(validate_records(&resealed).is_err(), "{size}");
            }
            assert!(
                iterate(Bytes::from(resealed)).is_err(),
                "{codec}: records cut to {} bytes iterate cleanly",
                size - HEADER_SIZE
            );
        }
    }
}

#[test]
fn log_append_time_uses_the_max_timestamp() {
    let records = [
        TestRecord {
            timestamp_delta_ms: 5,
            key: None,
            value: Some(b"a".to_vec()),
            headers: Vec::new(),
        },
        TestRecord {
            timestamp_delta_ms: 9,
            key: None,
            value: Some(b"b".to_vec()),
            headers: Vec::new(),
        },
    ];
    let mut batch = build(Compression::Lz4, 100, &records).to_vec();
    // The broker stamps log append time: attribute bit 3, max timestamp = now.
    let attributes = i16::from_be_bytes([batch[21], batch[22]]) | 0x08;
    batch[21..23].copy_from_slice(&attributes.to_be_bytes());
    batch[35..43].copy_from_slice(&5_000i64.to_be_bytes());
    store_crc(&mut batch);
    for record in iterate(Bytes::from(batch)).unwrap() {
        assert_eq!(record.timestamp_ms, 5_000);
    }
}

#[test]
fn trailing_bytes_after_the_last_record_are_refused() {
    let records = [TestRecord {
        timestamp_delta_ms: 0,
        key: None,
        value: Some(b"v".to_vec()),
        headers: Vec::new(),
    }];
    let mut batch = build(Compression::None, 0, &records).to_vec();
    batch.push(0);
    reseal(&mut batch);
    let expected = BatchError::BadRecord {
        index: 1,
        reason: "bytes remain after the last record",
    };
    assert_eq!(validate_records(&batch), Err(expected.clone()));
    let mut iter = RecordIter::new(Bytes::from(batch)).unwrap();
    assert!(iter.next().unwrap().is_ok());
    assert_eq!(iter.next(), Some(Err(expected)));
    assert_eq!(iter.next(), None);
}

/// Batches encoded by another implementation (sarama, the Go Kafka client:
/// `record_test.go`), including raw snappy and an lz4 frame with a content
/// checksum. They must validate, and iterate to the record sarama encoded:
/// timestamp delta 5 ms, key [1,2,3,4], value [5,6,7], one header.
#[test]
fn decodes_batches_encoded_by_sarama() {
    let header = |length: u8, crc: [u8; 4], codec: u8| -> Vec<u8> {
        let mut h = vec![0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, length, 0, 0, 0, 0, 2];
        h.extend_from_slice(&crc);
        h.extend_from_slice(&[0, codec, 0, 0, 0, 0]);
        h.extend_from_slice(&[0, 0, 1, 88, 141, 205, 89, 56]); // 1479847795000
        h.extend_from_slice(&[0; 8 + 8 + 2 + 4]);
        h.extend_from_slice(&[0, 0, 0, 1]);
        h
    };
    let cases: [(Vec<u8>, &[u8]); 4] = [
        (
            header(70, [84, 121, 97, 253], 0),
            &[
                40, 0, 10, 0, 8, 1, 2, 3, 4, 6, 5, 6, 7, 2, 6, 8, 9, 10, 4, 11, 12,
            ],
        ),
        (
            header(95, [231, 74, 206, 165], 1),
            &[
                31, 139, 8, 0, 0, 9, 110, 136, 0, 255, 0, 21, 0, 234, 255, 40, 0, 10, 0, 8, 1, 2,
                3, 4, 6, 5, 6, 7, 2, 6, 8, 9, 10, 4, 11, 12, 3, 0, 173, 201, 88, 103, 21, 0, 0, 0,
            ],
        ),
        (
            header(72, [21, 0, 159, 97], 2),
            &[
                21, 80, 40, 0, 10, 0, 8, 1, 2, 3, 4, 6, 5, 6, 7, 2, 6, 8, 9, 10, 4, 11, 12,
            ],
        ),
        (
            header(89, [169, 74, 119, 197], 3),
            &[
                4, 34, 77, 24, 100, 112, 185, 21, 0, 0, 128, 40, 0, 10, 0, 8, 1, 2, 3, 4, 6, 5, 6,
                7, 2, 6, 8, 9, 10, 4, 11, 12, 0, 0, 0, 0, 12, 59, 239, 146,
            ],
        ),
    ];
    for (mut batch, records) in cases {
        batch.extend_from_slice(records);
        let header = validate_batch(&batch).unwrap();
        if header.compression_id() == 0 {
            assert_eq!(validate_records(&batch), Ok(()));
        }
        let iterated = iterate(Bytes::from(batch)).unwrap();
        assert_eq!(iterated.len(), 1);
        let record = &iterated[0];
        assert_eq!(record.offset, 0);
        assert_eq!(record.timestamp_ms, 1_479_847_795_005);
        assert_eq!(record.key.as_deref(), Some(&[1u8, 2, 3, 4][..]));
        assert_eq!(record.value.as_deref(), Some(&[5u8, 6, 7][..]));
        assert_eq!(record.headers.len(), 1);
        assert_eq!(&record.headers[0].key[..], &[8, 9, 10]);
        assert_eq!(record.headers[0].value.as_deref(), Some(&[11u8, 12][..]));
    }
}
