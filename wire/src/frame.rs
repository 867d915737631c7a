//! Framing: `[u32 length][u32 envelope length][flatbuffers envelope][raw payload]`.
//!
//! `length` counts everything after itself. The decoder enforces a maximum
//! frame size before buffering anything, and every envelope is verified by
//! the flatbuffers verifier (with depth, table-count and size limits) before
//! a single field is read.

use bytes::{Buf, BufMut, BytesMut};

use crate::generated as fb;

/// `u32 length` + `u32 envelope length`.
pub const FRAME_PREFIX_BYTES: usize = 8;
/// Default cap on one frame (envelope + payload), in bytes.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;
/// Envelopes are metadata only; batches ride in the payload. Cap them hard.
pub const MAX_ENVELOPE_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {size_bytes} bytes exceeds the {max_bytes}-byte maximum (raise --max-frame-bytes on the broker, or send smaller batches)")]
    TooLarge { size_bytes: usize, max_bytes: usize },
    #[error("frame length {length} is too short to hold the 4-byte envelope length")]
    TooShort { length: usize },
    #[error("envelope length {envelope_bytes} does not fit in a frame of {frame_bytes} bytes (max envelope {MAX_ENVELOPE_BYTES})")]
    BadEnvelopeLength {
        envelope_bytes: usize,
        frame_bytes: usize,
    },
    #[error("envelope failed flatbuffers verification: {0}")]
    InvalidEnvelope(String),
}

/// One complete frame, split into its two parts. Both are `BytesMut` views of
/// the connection's read buffer: no copy. The payload stays mutable so the
/// partition owner can patch base offsets in place before freezing it.
#[derive(Debug)]
pub struct Frame {
    pub envelope: BytesMut,
    pub payload: BytesMut,
}

impl PartialEq for Frame {
    fn eq(&self, other: &Frame) -> bool {
        self.envelope == other.envelope && self.payload == other.payload
    }
}

/// Incremental decoder over a connection's read buffer.
#[derive(Debug, Clone, Copy)]
pub struct FrameDecoder {
    max_frame_bytes: usize,
}

impl FrameDecoder {
    pub fn new(max_frame_bytes: usize) -> FrameDecoder {
        assert!(max_frame_bytes >= FRAME_PREFIX_BYTES);
        FrameDecoder { max_frame_bytes }
    }

    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }

    /// Total bytes (prefix included) of the frame at the front of `buf`, once
    /// its length is known and legal. Lets the reader reserve the whole frame
    /// at once instead of growing the buffer piecemeal.
    pub fn frame_size_hint(&self, buf: &[u8]) -> Option<usize> {
        if buf.len() < 4 {
            return None;
        }
        let length = u32::from_be_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
        (length <= self.max_frame_bytes).then_some(4 + length)
    }

    /// Takes one frame off the front of `buf`, or returns `Ok(None)` when more
    /// bytes are needed. An error means the stream can no longer be framed
    /// (or must not be: an oversize frame is refused before it is buffered).
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if buf.len() < FRAME_PREFIX_BYTES {
            if buf.len() >= 4 {
                self.check_length(buf)?;
            }
            return Ok(None);
        }
        let length = self.check_length(buf)?;
        let envelope_bytes = u32::from_be_bytes(buf[4..8].try_into().expect("4 bytes")) as usize;
        if envelope_bytes > length - 4 || envelope_bytes > MAX_ENVELOPE_BYTES {
            return Err(FrameError::BadEnvelopeLength {
                envelope_bytes,
                frame_bytes: length,
            });
        }
        if buf.len() < 4 + length {
            return Ok(None);
        }
        buf.advance(FRAME_PREFIX_BYTES);
        let mut frame = buf.split_to(length - 4);
        let payload = frame.split_off(envelope_bytes);
        Ok(Some(Frame {
            envelope: frame,
            payload,
        }))
    }

    fn check_length(&self, buf: &[u8]) -> Result<usize, FrameError> {
        let length = u32::from_be_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
        if length > self.max_frame_bytes {
            return Err(FrameError::TooLarge {
                size_bytes: length,
                max_bytes: self.max_frame_bytes,
            });
        }
        if length < 4 {
            return Err(FrameError::TooShort { length });
        }
        Ok(length)
    }
}

/// Writes the frame prefix and the envelope. The caller sends `payload_bytes`
/// of raw payload right after (typically with a vectored write of `Bytes`).
pub fn encode_frame_head(out: &mut BytesMut, envelope: &[u8], payload_bytes: usize) {
    let length = 4 + envelope.len() + payload_bytes;
    assert!(length <= u32::MAX as usize, "frame length overflows u32");
    out.reserve(FRAME_PREFIX_BYTES + envelope.len());
    out.put_u32(length as u32);
    out.put_u32(envelope.len() as u32);
    out.put_slice(envelope);
}

fn verifier_options(envelope_bytes: usize) -> flatbuffers::VerifierOptions {
    flatbuffers::VerifierOptions {
        max_depth: 16,
        // A table needs at least 4 bytes, so more than len/4 tables means
        // shared (DAG) references used to amplify work: refuse.
        max_tables: envelope_bytes / 4 + 16,
        max_apparent_size: envelope_bytes.saturating_mul(4).max(1 << 12),
        ignore_missing_null_terminator: false,
    }
}

/// Verifies a request envelope before any field is read.
pub fn verify_request(envelope: &[u8]) -> Result<fb::Request<'_>, FrameError> {
    flatbuffers::root_with_opts::<fb::Request>(&verifier_options(envelope.len()), envelope)
        .map_err(|e| FrameError::InvalidEnvelope(e.to_string()))
}

/// Verifies a response envelope before any field is read.
pub fn verify_response(envelope: &[u8]) -> Result<fb::Response<'_>, FrameError> {
    flatbuffers::root_with_opts::<fb::Response>(&verifier_options(envelope.len()), envelope)
        .map_err(|e| FrameError::InvalidEnvelope(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(envelope: &[u8], payload: &[u8]) -> BytesMut {
        let mut out = BytesMut::new();
        encode_frame_head(&mut out, envelope, payload.len());
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn decodes_back_to_back_frames_fed_byte_by_byte() {
        let decoder = FrameDecoder::new(1024);
        let mut wire = frame(b"env1", b"payload-1");
        wire.extend_from_slice(&frame(b"e2", b""));
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for byte in wire.iter() {
            buf.put_u8(*byte);
            while let Some(f) = decoder.decode(&mut buf).unwrap() {
                frames.push(f);
            }
        }
        assert_eq!(frames.len(), 2);
        assert_eq!(&frames[0].envelope[..], b"env1");
        assert_eq!(&frames[0].payload[..], b"payload-1");
        assert_eq!(&frames[1].envelope[..], b"e2");
        assert!(frames[1].payload.is_empty());
        assert!(buf.is_empty());
    }

    #[test]
    fn refuses_oversize_before_buffering() {
        let decoder = FrameDecoder::new(100);
        let mut buf = BytesMut::from(&101u32.to_be_bytes()[..]);
        assert_eq!(
            decoder.decode(&mut buf),
            Err(FrameError::TooLarge {
                size_bytes: 101,
                max_bytes: 100
            })
        );
    }

    #[test]
    fn refuses_envelope_longer_than_frame() {
        let decoder = FrameDecoder::new(100);
        let mut buf = BytesMut::new();
        buf.put_u32(10);
        buf.put_u32(7);
        assert!(matches!(
            decoder.decode(&mut buf),
            Err(FrameError::BadEnvelopeLength { .. })
        ));
    }

    #[test]
    fn garbage_envelope_fails_verification() {
        assert!(verify_request(b"\xff\xff\xff\xff garbage").is_err());
        assert!(verify_request(b"").is_err());
    }
}
