//! Property tests of every wire decoder against hostile input: arbitrary
//! bytes, and valid frames, envelopes and batches with bit flips and
//! truncations. Decoders must refuse cleanly (an error, never a panic) or
//! decode to something that re-encodes consistently. The invariants are the
//! fuzz targets' own (`fuzz/src/wire_checks.rs`, included by path), so what
//! `make fuzz` explores for minutes, `make test` samples in a second.

#[allow(dead_code)]
#[path = "../../fuzz/src/wire_checks.rs"]
mod wire_checks;
#[allow(dead_code)]
#[path = "../../fuzz/src/wire_samples.rs"]
mod wire_samples;

use bytes::BytesMut;
use proptest::prelude::*;
use ringmq_wire::envelope::{Request, Response};
use ringmq_wire::frame::FrameDecoder;

/// Flips `mask` bits at each chosen position, then keeps `keep` of the
/// bytes (all of them when `keep` points past the end).
fn mutate(
    mut bytes: Vec<u8>,
    flips: &[(prop::sample::Index, u8)],
    keep: Option<prop::sample::Index>,
) -> Vec<u8> {
    if !bytes.is_empty() {
        for (position, mask) in flips {
            let at = position.index(bytes.len());
            bytes[at] ^= mask;
        }
    }
    if let Some(keep) = keep {
        bytes.truncate(keep.index(bytes.len() + 1));
    }
    bytes
}

fn flips() -> impl Strategy<Value = Vec<(prop::sample::Index, u8)>> {
    prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 0..4)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any bytes, into every decoder through every fuzz harness mode.
    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..600)) {
        wire_checks::envelope(&data);
        wire_checks::frame_decoder(&data);
        wire_checks::batch(&data);
    }

    /// Valid envelopes, damaged: refused with an error, or decoded to a
    /// value that survives encode-decode unchanged.
    #[test]
    fn damaged_envelopes_are_refused_or_round_trip(
        which in any::<prop::sample::Index>(),
        flips in flips(),
        keep in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let envelopes = wire_samples::envelopes();
        let envelope = envelopes[which.index(envelopes.len())].clone();
        wire_checks::envelope(&mutate(envelope, &flips, keep));
    }

    /// Frames fed in any chunking come out exactly as they were encoded.
    #[test]
    fn frames_survive_any_chunking(
        picks in prop::collection::vec((any::<prop::sample::Index>(), 0usize..200), 0..6),
        chunks in prop::collection::vec(1usize..64, 1..32),
    ) {
        let envelopes = wire_samples::envelopes();
        let sent: Vec<(Vec<u8>, Vec<u8>)> = picks
            .iter()
            .map(|(which, payload_len)| {
                let payload = (0..*payload_len).map(|i| i as u8).collect();
                (envelopes[which.index(envelopes.len())].clone(), payload)
            })
            .collect();
        let stream: Vec<u8> = sent.iter().flat_map(|(e, p)| wire_samples::frame(e, p)).collect();
        let decoder = FrameDecoder::new(4096);
        let mut buf = BytesMut::new();
        let mut received = Vec::new();
        let mut rest = &stream[..];
        let mut chunk = chunks.iter().cycle();
        while !rest.is_empty() {
            let take = (*chunk.next().expect("cycle")).min(rest.len());
            buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            while let Some(frame) = decoder.decode(&mut buf).expect("valid stream") {
                received.push((frame.envelope.to_vec(), frame.payload.to_vec()));
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(&received, &sent);
        for (envelope, _) in &received {
            prop_assert!(Request::decode(envelope).is_ok() || Response::decode(envelope).is_ok());
        }
    }

    /// A stream of valid frames, damaged anywhere, with any maximum frame
    /// size: whole, chunked and byte-by-byte decoding agree, and whatever
    /// frames come out are checked as envelopes.
    #[test]
    fn damaged_frame_streams_decode_consistently(
        control in any::<u8>(),
        picks in prop::collection::vec(any::<prop::sample::Index>(), 1..4),
        flips in flips(),
        keep in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let envelopes = wire_samples::envelopes();
        let mut input = vec![control];
        for which in picks {
            input.extend(wire_samples::frame(&envelopes[which.index(envelopes.len())], b"payload"));
        }
        wire_checks::frame_decoder(&mutate(input, &flips, keep));
    }

    /// Valid batches in every codec, damaged, split from a stream: raw
    /// (the CRC32C must catch it) and resealed (the records parser and the
    /// decompressors must refuse it or yield exactly record_count records).
    #[test]
    fn damaged_batches_are_refused_or_iterate_exactly(
        picks in prop::collection::vec(any::<prop::sample::Index>(), 1..3),
        flips in flips(),
        keep in prop::option::of(any::<prop::sample::Index>()),
        sealed in any::<bool>(),
    ) {
        let batches = wire_samples::batches();
        let mut stream = vec![u8::from(sealed)];
        for which in picks {
            stream.extend_from_slice(&batches[which.index(batches.len())]);
        }
        let mut damaged = mutate(stream[1..].to_vec(), &flips, keep);
        damaged.insert(0, stream[0]);
        wire_checks::batch(&damaged);
    }

    /// Uncompressed records sections, damaged, then compressed with each
    /// codec: iteration must agree across codecs and with validate_records.
    #[test]
    fn damaged_records_agree_across_codecs(
        codec in 0u8..5,
        which in any::<prop::sample::Index>(),
        flips in flips(),
        keep in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let batches = wire_samples::batches();
        let plain: Vec<_> = batches.iter().filter(|b| b[22] & 0x07 == 0).collect();
        let batch = plain[which.index(plain.len())].to_vec();
        let mut input = vec![codec << 2 | 2];
        input.extend(mutate(batch, &flips, keep));
        wire_checks::batch(&input);
    }
}
