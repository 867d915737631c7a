//! The checks behind the `frame_decoder`, `envelope` and `batch` fuzz
//! targets. Plain functions over `&[u8]` that panic on a broken invariant,
//! so the same code runs under libFuzzer (`fuzz/fuzz_targets/*.rs`) and, on
//! the committed corpora and crash inputs, in `cargo test`
//! (`wire/tests/fuzz_regressions.rs` includes this file by path). Depends on
//! `ringmq-wire`, `bytes` and `flatbuffers` only.

use bytes::{Bytes, BytesMut};
use flatbuffers::FlatBufferBuilder;
use ringmq_wire::batch::compression::{compress, decompress};
use ringmq_wire::batch::header::{store_crc, ATTR_TIMESTAMP_TYPE_LOG_APPEND, LOG_OVERHEAD};
use ringmq_wire::batch::{
    validate_batch, validate_records, BatchBuilder, BatchError, BatchSplitter, Compression, Record,
    RecordIter, HEADER_SIZE,
};
use ringmq_wire::envelope::{peek_request_header, EnvelopeError, Request, Response};
use ringmq_wire::frame::{
    verify_request, verify_response, Frame, FrameDecoder, FrameError, FRAME_PREFIX_BYTES,
};

/// Decompression limit of the batch checks: small, so that a bomb is caught
/// by the limit and not by the fuzzer's RSS limit.
pub const DECOMPRESSED_LIMIT_BYTES: usize = 64 * 1024;

/// A tiny deterministic PRNG (xorshift64*) driven by the input itself.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng((seed ^ 0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

// ------------------------------------------------------------ frame decoder

/// What decoding a whole stream produced.
#[derive(Debug, PartialEq)]
struct Decoded {
    frames: Vec<Frame>,
    error: Option<FrameError>,
    /// Bytes of an incomplete frame still buffered at the end.
    left_over: usize,
}

/// Feeds `stream` to `decoder` in chunks of the given sizes (the last chunk
/// takes the rest), taking every complete frame after each chunk, until the
/// stream ends or the decoder fails.
fn decode_stream(
    decoder: &FrameDecoder,
    stream: &[u8],
    chunks: &mut dyn FnMut() -> usize,
) -> Decoded {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut rest = stream;
    loop {
        let take = chunks().clamp(1, rest.len().max(1)).min(rest.len());
        buf.extend_from_slice(&rest[..take]);
        rest = &rest[take..];
        loop {
            let before = buf.len();
            let hint = decoder.frame_size_hint(&buf);
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    let consumed = before - buf.len();
                    assert_eq!(
                        consumed,
                        FRAME_PREFIX_BYTES + frame.envelope.len() + frame.payload.len()
                    );
                    assert!(consumed <= 4 + decoder.max_frame_bytes());
                    assert_eq!(hint, Some(consumed), "size hint disagrees with the frame");
                    frames.push(frame);
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "Ok(None) must not consume");
                    if let Some(size) = hint {
                        assert!(before < size, "a whole frame was buffered but not returned");
                    }
                    break;
                }
                Err(error) => {
                    if hint.is_none() && before >= 4 {
                        assert!(matches!(error, FrameError::TooLarge { .. }));
                    }
                    // The stream is dead: how much of it had arrived
                    // depends on the chunking, so it is not compared.
                    return Decoded {
                        frames,
                        error: Some(error),
                        left_over: 0,
                    };
                }
            }
        }
        if rest.is_empty() {
            return Decoded {
                frames,
                error: None,
                left_over: buf.len(),
            };
        }
    }
}

/// Input: `[control byte][stream]`. The control byte picks the maximum
/// frame size (8 to 1016 bytes) and seeds the chunking. The stream is
/// decoded whole and in random chunks: both must give the same frames and
/// the same error, and every frame's envelope goes through
/// [`envelope`].
pub fn frame_decoder(data: &[u8]) {
    let Some((&control, stream)) = data.split_first() else {
        return;
    };
    let max_frame_bytes = FRAME_PREFIX_BYTES + usize::from(control & 0x3F) * 16;
    let decoder = FrameDecoder::new(max_frame_bytes);
    let whole = decode_stream(&decoder, stream, &mut || usize::MAX);
    let mut rng = Rng::new(u64::from(control) << 32 | stream.len() as u64);
    let chunked = decode_stream(&decoder, stream, &mut || match rng.next() % 8 {
        0 => 1,
        1..=5 => 1 + (rng.next() % 16) as usize,
        _ => 1 + (rng.next() % 256) as usize,
    });
    assert_eq!(whole, chunked, "chunking changed what was decoded");
    let byte_by_byte = decode_stream(&decoder, stream, &mut || 1);
    assert_eq!(
        whole, byte_by_byte,
        "byte-by-byte feeding changed what was decoded"
    );
    for frame in &whole.frames {
        envelope(&frame.envelope);
    }
}

// ----------------------------------------------------------------- envelope

/// Verifies and decodes `data` as a request and as a response. Whatever
/// decodes must re-encode to an envelope that decodes to the same value,
/// and the verifier, `peek_request_header` and the decoders must agree.
pub fn envelope(data: &[u8]) {
    let request_verifies = verify_request(data).is_ok();
    let peeked = peek_request_header(data);
    assert_eq!(peeked.is_some(), request_verifies);
    let mut fbb = FlatBufferBuilder::new();
    match Request::decode(data) {
        Ok(request) => {
            let (correlation_id, api) = peeked.expect("a decoded request verifies");
            assert_eq!(request.correlation_id, correlation_id);
            assert_eq!(request.body.api().to_fb().0, api);
            let encoded = request.encode(&mut fbb).to_vec();
            let again = Request::decode(&encoded).expect("a re-encoded request decodes");
            assert_eq!(
                again, request,
                "request changed across decode-encode-decode"
            );
            assert_eq!(
                peek_request_header(&encoded),
                Some((correlation_id, api)),
                "re-encoded request has another header"
            );
        }
        Err(error) => {
            let _ = error.to_api_error();
            assert_eq!(
                matches!(error, EnvelopeError::Frame(_)),
                !request_verifies,
                "a verification error iff the verifier refused: {error}"
            );
        }
    }
    let response_verifies = verify_response(data).is_ok();
    match Response::decode(data) {
        Ok(response) => {
            let encoded = response.encode(&mut fbb).to_vec();
            let again = Response::decode(&encoded).expect("a re-encoded response decodes");
            assert_eq!(
                again, response,
                "response changed across decode-encode-decode"
            );
        }
        Err(error) => {
            let _ = error.to_api_error();
            assert_eq!(
                matches!(error, EnvelopeError::Frame(_)),
                !response_verifies,
                "a verification error iff the verifier refused: {error}"
            );
        }
    }
}

// -------------------------------------------------------------------- batch

const OFF_BATCH_LENGTH: usize = 8;
const OFF_MAGIC: usize = 16;
const OFF_ATTRIBUTES: usize = 21;
const OFF_LAST_OFFSET_DELTA: usize = 23;
const OFF_RECORD_COUNT: usize = 57;

/// Makes `bytes` pass the header checks that a fuzzer cannot guess (length,
/// magic, record count vs last offset delta, CRC32C), so that mutations
/// reach the records and the decompressors. `codec`, when given, replaces
/// the codec bits of the attributes.
fn seal(mut bytes: Vec<u8>, codec: Option<Compression>) -> Vec<u8> {
    if bytes.len() < HEADER_SIZE {
        bytes.resize(HEADER_SIZE, 0);
    }
    let batch_length = i32::try_from(bytes.len() - LOG_OVERHEAD).unwrap_or(i32::MAX);
    bytes[OFF_BATCH_LENGTH..OFF_BATCH_LENGTH + 4].copy_from_slice(&batch_length.to_be_bytes());
    bytes[OFF_MAGIC] = 2;
    if let Some(codec) = codec {
        bytes[OFF_ATTRIBUTES + 1] = (bytes[OFF_ATTRIBUTES + 1] & !0x07) | codec.id();
    }
    let count = i32::from_be_bytes(
        bytes[OFF_RECORD_COUNT..OFF_RECORD_COUNT + 4]
            .try_into()
            .unwrap(),
    );
    // Keep record counts small so that a bad count is found by iteration,
    // not by a multi-second loop: the fuzzer controls the low byte.
    let count = (count & 0xFF).max(1);
    bytes[OFF_RECORD_COUNT..OFF_RECORD_COUNT + 4].copy_from_slice(&count.to_be_bytes());
    bytes[OFF_LAST_OFFSET_DELTA..OFF_LAST_OFFSET_DELTA + 4]
        .copy_from_slice(&(count - 1).to_be_bytes());
    store_crc(&mut bytes);
    bytes
}

/// Splits `stream` into batches and checks each one.
fn split_stream(stream: &[u8]) {
    let mut next_position = 0;
    let mut items = 0;
    for item in BatchSplitter::new(stream) {
        items += 1;
        assert!(
            items <= stream.len() / HEADER_SIZE + 1,
            "splitter does not advance"
        );
        if let Ok(split) = item {
            assert!(split.position >= next_position);
            assert_eq!(split.size, split.header.total_size());
            let batch = &stream[split.position..split.position + split.size];
            next_position = split.position + split.size;
            check_batch(batch);
        }
    }
}

/// The outcome of iterating one batch.
#[derive(Debug, PartialEq)]
struct Iterated {
    records: Vec<Record>,
    error: Option<BatchError>,
}

impl Iterated {
    fn complete(&self) -> bool {
        self.error.is_none()
    }
}

/// Iterates `batch`, checking the iterator's own contract: at most
/// `record_count` records, offsets consecutive from the base offset, then
/// either the end or one error, and nothing after an error.
fn iterate(batch: &Bytes) -> Result<Iterated, BatchError> {
    let iter = RecordIter::with_limit(batch.clone(), DECOMPRESSED_LIMIT_BYTES)?;
    let header = *iter.header();
    let record_count = usize::try_from(header.record_count).expect("validated count > 0");
    let mut records = Vec::new();
    let mut error = None;
    for item in iter {
        assert!(error.is_none(), "the iterator went on after an error");
        match item {
            Ok(record) => {
                assert_eq!(record.offset, header.base_offset + records.len() as i64);
                records.push(record);
                assert!(
                    records.len() <= record_count,
                    "more records than record_count"
                );
            }
            Err(e) => error = Some(e),
        }
    }
    if error.is_none() {
        assert_eq!(
            records.len(),
            record_count,
            "iteration ended early without an error"
        );
    }
    Ok(Iterated { records, error })
}

fn is_overflow(error: &Option<BatchError>) -> bool {
    matches!(
        error,
        Some(BatchError::BadRecord {
            reason: "offset overflows i64" | "timestamp overflows i64",
            ..
        })
    )
}

/// Checks one candidate batch (exactly one batch's bytes, or garbage).
fn check_batch(batch: &[u8]) {
    let bytes = Bytes::copy_from_slice(batch);
    let validated = validate_batch(batch);
    let iterated = iterate(&bytes);
    let header = match (&validated, &iterated) {
        (Err(v), Err(i)) => {
            assert_eq!(v, i, "RecordIter must refuse what validate_batch refuses");
            return;
        }
        (Err(v), Ok(_)) => panic!("RecordIter accepted a batch validate_batch refused: {v}"),
        (Ok(header), Err(e)) => {
            assert_ne!(
                header.compression_id(),
                0,
                "an uncompressed batch failed to open: {e}"
            );
            assert!(
                matches!(
                    e,
                    BatchError::Decompress { .. } | BatchError::DecompressedTooLarge { .. }
                ),
                "a valid header may only fail to open by decompression: {e}"
            );
            return;
        }
        (Ok(header), Ok(_)) => *header,
    };
    let iterated = iterated.expect("matched above");
    // The same records, uncompressed: validate_records must agree with
    // iteration, and iterating it must give the very same records.
    let uncompressed = if header.compression_id() == 0 {
        bytes.clone()
    } else {
        let codec = Compression::from_id(header.compression_id()).expect("validated codec");
        assert!(
            validate_records(batch).is_err(),
            "validate_records took a compressed batch"
        );
        let section = decompress(codec, &batch[HEADER_SIZE..], DECOMPRESSED_LIMIT_BYTES)
            .expect("decompressed once already");
        let mut plain = batch[..HEADER_SIZE].to_vec();
        plain.extend_from_slice(&section);
        plain[OFF_ATTRIBUTES + 1] &= !0x07;
        let batch_length = i32::try_from(plain.len() - LOG_OVERHEAD).expect("64 KiB limit");
        plain[OFF_BATCH_LENGTH..OFF_BATCH_LENGTH + 4].copy_from_slice(&batch_length.to_be_bytes());
        store_crc(&mut plain);
        let plain = Bytes::from(plain);
        assert!(validate_batch(&plain).is_ok());
        let plain_iterated = iterate(&plain).expect("uncompressed copy opens");
        assert_eq!(plain_iterated, iterated, "codec changed the records");
        plain
    };
    match validate_records(&uncompressed) {
        Ok(()) => assert!(
            iterated.complete() || is_overflow(&iterated.error),
            "validate_records accepted what iteration refused: {:?}",
            iterated.error
        ),
        Err(e) => assert!(
            !iterated.complete(),
            "validate_records refused what iteration accepted: {e}"
        ),
    }
    if iterated.complete() {
        rebuild(&header, &iterated.records);
    }
}

/// Rebuilds a fully iterated batch with [`BatchBuilder`] in its own codec
/// and checks that it iterates to the same records (offsets relative).
fn rebuild(header: &ringmq_wire::batch::BatchHeader, records: &[Record]) {
    if header.attributes & ATTR_TIMESTAMP_TYPE_LOG_APPEND != 0 {
        return; // timestamps come from the header, not the records
    }
    let codec = Compression::from_id(header.compression_id()).expect("validated codec");
    let mut builder = BatchBuilder::new(codec, header.base_timestamp);
    for record in records {
        let mut headers = Vec::with_capacity(record.headers.len());
        for h in &record.headers {
            let Some(key) = h.key_str() else {
                return; // the builder takes string keys only
            };
            headers.push((key, h.value.as_deref()));
        }
        builder
            .append(
                record.timestamp_ms,
                record.key.as_deref(),
                record.value.as_deref(),
                &headers,
            )
            .expect("a record that iterated can be appended again");
    }
    let rebuilt = builder.build().expect("rebuild");
    assert!(validate_batch(&rebuilt).is_ok());
    let again = iterate(&rebuilt).expect("rebuilt batch opens");
    assert!(again.complete(), "rebuilt batch fails: {:?}", again.error);
    assert_eq!(again.records.len(), records.len());
    for (a, b) in again.records.iter().zip(records) {
        assert_eq!(a.offset, b.offset - header.base_offset);
        assert_eq!(a.timestamp_ms, b.timestamp_ms);
        assert_eq!(a.key, b.key);
        assert_eq!(a.value, b.value);
        assert_eq!(a.headers, b.headers);
    }
}

/// Decompresses `input` with every codec under a limit, then checks that
/// compress-decompress round-trips it and that a limit one byte short fails.
fn check_codecs(input: &[u8], limit: usize) {
    for codec in Compression::ALL {
        if let Ok(out) = decompress(codec, input, limit) {
            assert!(out.len() <= limit, "{codec} produced more than its limit");
        }
        let mut compressed = Vec::new();
        compress(codec, input, &mut compressed).expect("compress");
        let back = decompress(codec, &compressed, input.len()).expect("round trip decompress");
        assert_eq!(back, input, "{codec} round trip");
        if !input.is_empty() {
            let short = decompress(codec, &compressed, input.len() - 1);
            assert!(
                matches!(short, Err(BatchError::DecompressedTooLarge { .. })),
                "{codec}: a limit one byte short gave {short:?}"
            );
        }
    }
}

/// Input: `[mode byte][bytes]`.
///
/// * mode % 4 == 0: `bytes` is a stream of batches for [`BatchSplitter`];
///   each batch found is checked.
/// * 1: `bytes` is one batch, sealed (length, magic, count, CRC fixed up):
///   mutated compressed seeds reach the decompressors this way.
/// * 2: `bytes[61..]` is an uncompressed records section, compressed with
///   codec `(mode >> 2) % 5` and sealed: reaches record parsing behind
///   every codec.
/// * 3: `bytes` goes straight to every decompressor (limit from
///   `mode >> 2`) and through compress-decompress round trips.
pub fn batch(data: &[u8]) {
    let Some((&mode, bytes)) = data.split_first() else {
        return;
    };
    let codec = Compression::from_id((mode >> 2) % 5).expect("0..5");
    match mode % 4 {
        0 => split_stream(bytes),
        1 => split_stream(&seal(bytes.to_vec(), None)),
        2 => {
            let mut batch = bytes.to_vec();
            batch.resize(batch.len().max(HEADER_SIZE), 0);
            let mut section = Vec::new();
            compress(codec, &batch[HEADER_SIZE..], &mut section).expect("compress");
            batch.truncate(HEADER_SIZE);
            batch.extend_from_slice(&section);
            split_stream(&seal(batch, Some(codec)));
        }
        _ => check_codecs(bytes, usize::from(mode >> 2) * 64),
    }
}
