//! Compression of the records section of a v2 batch, as Kafka numbers and
//! frames the codecs, so that batches cross between ringmq and Kafka clients
//! unchanged:
//!
//! * gzip: a gzip stream (several concatenated members are accepted).
//! * snappy: written in the xerial framing that the Java client writes and
//!   reads; read both xerial and the raw snappy blocks that librdkafka writes.
//! * lz4: the LZ4 *frame* format with independent blocks (the Java client
//!   refuses linked blocks) and block sizes of 64 KiB to 4 MiB (the only ones
//!   it knows).
//! * zstd: one zstd frame, level 3, with the content size in its header.
//!
//! Decompression takes a limit on the output size and stops reading past it,
//! so a small batch that inflates to gigabytes (a zip bomb) costs at most
//! about the limit in memory.

use std::cell::RefCell;
use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use super::BatchError;

/// A compression codec, numbered as in the attributes of a Kafka batch.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Compression {
    #[default]
    None = 0,
    Gzip = 1,
    Snappy = 2,
    Lz4 = 3,
    Zstd = 4,
}

impl Compression {
    /// Every codec, in id order.
    pub const ALL: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    /// The codec with Kafka id `id` (the low 3 bits of the batch attributes).
    pub fn from_id(id: u8) -> Option<Compression> {
        Compression::ALL.get(usize::from(id)).copied()
    }

    /// Kafka's id for the codec.
    pub fn id(self) -> u8 {
        self as u8
    }

    /// Kafka's name for the codec (`compression.type`).
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A codec name that is none of Kafka's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown compression codec {0:?}; expected one of none, gzip, snappy, lz4, zstd")]
pub struct ParseCompressionError(pub String);

impl FromStr for Compression {
    type Err = ParseCompressionError;

    /// Parses Kafka's codec names, ignoring ASCII case.
    fn from_str(name: &str) -> Result<Compression, ParseCompressionError> {
        Compression::ALL
            .into_iter()
            .find(|codec| codec.name().eq_ignore_ascii_case(name))
            .ok_or_else(|| ParseCompressionError(name.to_owned()))
    }
}

/// zstd level used for every batch (Kafka's default).
pub const ZSTD_LEVEL: i32 = 3;

/// First 8 bytes of a xerial-framed snappy stream (snappy-java's
/// `SnappyOutputStream`).
pub const XERIAL_MAGIC: [u8; 8] = [0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0];
/// Magic, then a big-endian i32 version and i32 minimum compatible version.
const XERIAL_HEADER_SIZE: usize = 16;
const XERIAL_VERSION: i32 = 1;
const XERIAL_MIN_COMPATIBLE_VERSION: i32 = 1;
/// Uncompressed bytes per xerial chunk: snappy-java's default block size.
/// Larger chunks would gain nothing: snappy compresses in 64 KiB fragments.
const XERIAL_CHUNK_SIZE: usize = 32 * 1024;

/// Appends `input` compressed with `codec` to `out`. On error `out` is left as
/// it was.
pub fn compress(codec: Compression, input: &[u8], out: &mut Vec<u8>) -> Result<(), BatchError> {
    let start_size = out.len();
    let result = match codec {
        Compression::None => {
            out.extend_from_slice(input);
            Ok(())
        }
        Compression::Gzip => compress_gzip(input, out),
        Compression::Snappy => compress_xerial_snappy(input, out),
        Compression::Lz4 => compress_lz4(input, out),
        Compression::Zstd => compress_zstd(input, out),
    };
    if result.is_err() {
        out.truncate(start_size);
    }
    result
}

/// Decompresses `input`, refusing to produce more than `limit_bytes`.
pub fn decompress(
    codec: Compression,
    input: &[u8],
    limit_bytes: usize,
) -> Result<Vec<u8>, BatchError> {
    match codec {
        Compression::None => {
            if input.len() > limit_bytes {
                return Err(BatchError::DecompressedTooLarge { limit_bytes });
            }
            Ok(input.to_vec())
        }
        Compression::Gzip => decompress_gzip(input, limit_bytes),
        Compression::Snappy => decompress_snappy(input, limit_bytes),
        Compression::Lz4 => decompress_lz4(input, limit_bytes),
        Compression::Zstd => decompress_zstd(input, limit_bytes),
    }
}

fn compress_error(codec: Compression, reason: impl fmt::Display) -> BatchError {
    BatchError::Compress {
        codec: codec.name(),
        reason: reason.to_string(),
    }
}

fn decompress_error(codec: Compression, reason: impl fmt::Display) -> BatchError {
    BatchError::Decompress {
        codec: codec.name(),
        reason: reason.to_string(),
    }
}

/// Reads `reader` to its end into a vector, but never more than
/// `limit_bytes + 1` bytes: the one byte past the limit tells "exactly at the
/// limit" from "over it" without inflating the rest.
fn read_limited(
    codec: Compression,
    reader: impl Read,
    limit_bytes: usize,
    capacity_hint_bytes: usize,
) -> Result<Vec<u8>, BatchError> {
    let mut out = Vec::with_capacity(capacity_hint_bytes.min(limit_bytes));
    let read_limit_bytes = u64::try_from(limit_bytes)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    reader
        .take(read_limit_bytes)
        .read_to_end(&mut out)
        .map_err(|error| decompress_error(codec, error))?;
    if out.len() > limit_bytes {
        return Err(BatchError::DecompressedTooLarge { limit_bytes });
    }
    Ok(out)
}

/// A first guess at the inflated size, to save a few reallocations.
fn capacity_hint_bytes(input: &[u8]) -> usize {
    input.len().saturating_mul(4)
}

fn compress_gzip(input: &[u8], out: &mut Vec<u8>) -> Result<(), BatchError> {
    let codec = Compression::Gzip;
    let mut encoder = flate2::write::GzEncoder::new(out, flate2::Compression::default());
    encoder
        .write_all(input)
        .map_err(|error| compress_error(codec, error))?;
    encoder
        .finish()
        .map_err(|error| compress_error(codec, error))?;
    Ok(())
}

fn decompress_gzip(input: &[u8], limit_bytes: usize) -> Result<Vec<u8>, BatchError> {
    // Multi-member, like Java's GZIPInputStream.
    let decoder = flate2::read::MultiGzDecoder::new(input);
    read_limited(
        Compression::Gzip,
        decoder,
        limit_bytes,
        capacity_hint_bytes(input),
    )
}

fn compress_xerial_snappy(input: &[u8], out: &mut Vec<u8>) -> Result<(), BatchError> {
    let codec = Compression::Snappy;
    out.extend_from_slice(&XERIAL_MAGIC);
    out.extend_from_slice(&XERIAL_VERSION.to_be_bytes());
    out.extend_from_slice(&XERIAL_MIN_COMPATIBLE_VERSION.to_be_bytes());
    let mut encoder = snap::raw::Encoder::new();
    for chunk in input.chunks(XERIAL_CHUNK_SIZE) {
        let length_at = out.len();
        let chunk_at = length_at + 4;
        out.resize(chunk_at + snap::raw::max_compress_len(chunk.len()), 0);
        let chunk_size = encoder
            .compress(chunk, &mut out[chunk_at..])
            .map_err(|error| compress_error(codec, error))?;
        let chunk_size_u32 = u32::try_from(chunk_size).expect("a 32 KiB chunk compresses small");
        out[length_at..chunk_at].copy_from_slice(&chunk_size_u32.to_be_bytes());
        out.truncate(chunk_at + chunk_size);
    }
    Ok(())
}

fn decompress_snappy(input: &[u8], limit_bytes: usize) -> Result<Vec<u8>, BatchError> {
    let mut decoder = snap::raw::Decoder::new();
    let mut out = Vec::new();
    if input.starts_with(&XERIAL_MAGIC) {
        decompress_xerial_chunks(&mut decoder, input, limit_bytes, &mut out)?;
    } else {
        append_raw_snappy(&mut decoder, input, limit_bytes, &mut out)?;
    }
    Ok(out)
}

/// Walks the `[u32 BE size][raw snappy block]` chunks after a xerial header.
fn decompress_xerial_chunks(
    decoder: &mut snap::raw::Decoder,
    input: &[u8],
    limit_bytes: usize,
    out: &mut Vec<u8>,
) -> Result<(), BatchError> {
    let codec = Compression::Snappy;
    let Some(mut rest) = input.get(XERIAL_HEADER_SIZE..) else {
        return Err(decompress_error(codec, "xerial header truncated"));
    };
    while !rest.is_empty() {
        let Some((size_bytes, tail)) = rest.split_first_chunk::<4>() else {
            return Err(decompress_error(codec, "xerial chunk size truncated"));
        };
        let chunk_size = usize::try_from(u32::from_be_bytes(*size_bytes)).unwrap_or(usize::MAX);
        if chunk_size > tail.len() {
            return Err(decompress_error(codec, "xerial chunk runs past the end"));
        }
        let (chunk, tail) = tail.split_at(chunk_size);
        append_raw_snappy(decoder, chunk, limit_bytes, out)?;
        rest = tail;
    }
    Ok(())
}

/// Appends one raw snappy block to `out`, checking its declared size against
/// the limit before allocating for it.
fn append_raw_snappy(
    decoder: &mut snap::raw::Decoder,
    block: &[u8],
    limit_bytes: usize,
    out: &mut Vec<u8>,
) -> Result<(), BatchError> {
    let codec = Compression::Snappy;
    let block_size =
        snap::raw::decompress_len(block).map_err(|error| decompress_error(codec, error))?;
    let start = out.len();
    let end = start
        .checked_add(block_size)
        .filter(|&end| end <= limit_bytes)
        .ok_or(BatchError::DecompressedTooLarge { limit_bytes })?;
    out.resize(end, 0);
    let written = decoder
        .decompress(block, &mut out[start..])
        .map_err(|error| decompress_error(codec, error))?;
    if written != block_size {
        return Err(decompress_error(
            codec,
            "block shorter than its declared size",
        ));
    }
    Ok(())
}

// The LZ4 frame format (lz4's Frame_format.md), written and read here over
// lz4_flex's block codec rather than through lz4_flex::frame: its
// FrameDecoder allocates and zeroes two block-sized buffers per frame and
// copies every byte once more, which made a 1 MiB batch decompress at
// hundreds of MB/s instead of GB/s. Here blocks decode straight into the
// output vector.

const LZ4_MAGIC: u32 = 0x184D_2204;
const LZ4_SKIPPABLE_MAGIC: std::ops::RangeInclusive<u32> = 0x184D_2A50..=0x184D_2A5F;
const LZ4_FLG_VERSION_MASK: u8 = 0xC0;
const LZ4_FLG_VERSION_01: u8 = 0x40;
const LZ4_FLG_INDEPENDENT_BLOCKS: u8 = 0x20;
const LZ4_FLG_BLOCK_CHECKSUM: u8 = 0x10;
const LZ4_FLG_CONTENT_SIZE: u8 = 0x08;
const LZ4_FLG_CONTENT_CHECKSUM: u8 = 0x04;
const LZ4_FLG_RESERVED: u8 = 0x02;
const LZ4_FLG_DICTIONARY_ID: u8 = 0x01;
const LZ4_BD_RESERVED: u8 = 0x8F;
const LZ4_BLOCK_UNCOMPRESSED: u32 = 0x8000_0000;
/// How far back a match in a linked block may reach.
const LZ4_WINDOW_SIZE: usize = 64 * 1024;

/// What the encoder writes: version 01, independent blocks (the Java client
/// refuses linked ones), no checksums (the batch CRC32C covers the bytes),
/// no content size.
const LZ4_FLG: u8 = LZ4_FLG_VERSION_01 | LZ4_FLG_INDEPENDENT_BLOCKS;

/// The block sizes Kafka's Java client reads: (BD byte, block max size,
/// header checksum of FLG and BD). The checksum is the second byte of the
/// xxh32 of the two descriptor bytes; there are only four descriptors to
/// write, so they are precomputed (and checked against lz4_flex in tests).
const LZ4_DESCRIPTORS: [(u8, usize, u8); 4] = [
    (0x40, 64 * 1024, 0x82),
    (0x50, 256 * 1024, 0xFB),
    (0x60, 1024 * 1024, 0x51),
    (0x70, 4 * 1024 * 1024, 0x73),
];

/// The smallest descriptor whose block holds all of `input` (up to 4 MiB):
/// one block per batch where it fits, as DESIGN.md 6 recommends, without
/// making readers allocate 4 MiB for a small batch.
fn lz4_descriptor(input_size: usize) -> (u8, usize, u8) {
    let largest = LZ4_DESCRIPTORS[LZ4_DESCRIPTORS.len() - 1];
    LZ4_DESCRIPTORS
        .into_iter()
        .find(|&(_, block_max_size, _)| input_size <= block_max_size)
        .unwrap_or(largest)
}

fn compress_lz4(input: &[u8], out: &mut Vec<u8>) -> Result<(), BatchError> {
    let codec = Compression::Lz4;
    let (bd, block_max_size, header_checksum) = lz4_descriptor(input.len());
    out.extend_from_slice(&LZ4_MAGIC.to_le_bytes());
    out.extend_from_slice(&[LZ4_FLG, bd, header_checksum]);
    for chunk in input.chunks(block_max_size) {
        let size_at = out.len();
        let block_at = size_at + 4;
        out.resize(
            block_at + lz4_flex::block::get_maximum_output_size(chunk.len()),
            0,
        );
        let compressed_size = lz4_flex::block::compress_into(chunk, &mut out[block_at..])
            .map_err(|error| compress_error(codec, error))?;
        let block_info = if compressed_size < chunk.len() {
            out.truncate(block_at + compressed_size);
            u32::try_from(compressed_size).expect("block under 4 MiB")
        } else {
            // Incompressible: stored as is, flagged, as the reference does.
            out.truncate(block_at);
            out.extend_from_slice(chunk);
            u32::try_from(chunk.len()).expect("block at most 4 MiB") | LZ4_BLOCK_UNCOMPRESSED
        };
        out[size_at..block_at].copy_from_slice(&block_info.to_le_bytes());
    }
    out.extend_from_slice(&0u32.to_le_bytes()); // end mark
    Ok(())
}

/// Reads fixed-size fields off the front of a byte slice.
struct FieldReader<'a> {
    rest: &'a [u8],
}

impl<'a> FieldReader<'a> {
    fn take(&mut self, size: usize) -> Result<&'a [u8], BatchError> {
        if size > self.rest.len() {
            return Err(decompress_error(Compression::Lz4, "frame truncated"));
        }
        let (field, rest) = self.rest.split_at(size);
        self.rest = rest;
        Ok(field)
    }

    fn u8(&mut self) -> Result<u8, BatchError> {
        Ok(self.take(1)?[0])
    }

    fn u32_le(&mut self) -> Result<u32, BatchError> {
        let field = self.take(4)?;
        Ok(u32::from_le_bytes(field.try_into().expect("4 bytes")))
    }

    fn u64_le(&mut self) -> Result<u64, BatchError> {
        let field = self.take(8)?;
        Ok(u64::from_le_bytes(field.try_into().expect("8 bytes")))
    }
}

fn decompress_lz4(input: &[u8], limit_bytes: usize) -> Result<Vec<u8>, BatchError> {
    if input.is_empty() {
        return Err(decompress_error(Compression::Lz4, "no frame"));
    }
    let mut out = Vec::with_capacity(capacity_hint_bytes(input).min(limit_bytes));
    let mut reader = FieldReader { rest: input };
    while !reader.rest.is_empty() {
        decompress_lz4_frame(&mut reader, limit_bytes, &mut out)?;
    }
    Ok(out)
}

/// Decodes one frame (or skips a skippable one) from the front of `reader`.
/// Header and block checksums are skipped, not verified: the batch CRC32C
/// already covers every byte of the frame.
fn decompress_lz4_frame(
    reader: &mut FieldReader<'_>,
    limit_bytes: usize,
    out: &mut Vec<u8>,
) -> Result<(), BatchError> {
    let error = |reason: &str| decompress_error(Compression::Lz4, reason);
    let magic = reader.u32_le()?;
    if LZ4_SKIPPABLE_MAGIC.contains(&magic) {
        let size = usize::try_from(reader.u32_le()?).unwrap_or(usize::MAX);
        reader.take(size)?;
        return Ok(());
    }
    if magic != LZ4_MAGIC {
        return Err(error("not an LZ4 frame (bad magic number)"));
    }
    let flg = reader.u8()?;
    let bd = reader.u8()?;
    if flg & LZ4_FLG_VERSION_MASK != LZ4_FLG_VERSION_01 {
        return Err(error("unsupported frame version"));
    }
    if flg & LZ4_FLG_RESERVED != 0 || bd & LZ4_BD_RESERVED != 0 {
        return Err(error("reserved bits set in the frame descriptor"));
    }
    if flg & LZ4_FLG_DICTIONARY_ID != 0 {
        return Err(error("frames with a dictionary are not supported"));
    }
    let block_max_size = match (bd >> 4) & 0x07 {
        4 => 64 * 1024,
        5 => 256 * 1024,
        6 => 1024 * 1024,
        7 => 4 * 1024 * 1024,
        _ => return Err(error("invalid block maximum size")),
    };
    let content_size = if flg & LZ4_FLG_CONTENT_SIZE != 0 {
        Some(reader.u64_le()?)
    } else {
        None
    };
    let _header_checksum = reader.u8()?;
    let frame_start = out.len();
    loop {
        let block_info = reader.u32_le()?;
        if block_info == 0 {
            break; // end mark
        }
        let block_size = usize::try_from(block_info & !LZ4_BLOCK_UNCOMPRESSED).expect("31 bits");
        if block_size > block_max_size {
            return Err(error("block larger than the frame's block maximum size"));
        }
        let block = reader.take(block_size)?;
        if flg & LZ4_FLG_BLOCK_CHECKSUM != 0 {
            reader.take(4)?;
        }
        if block_info & LZ4_BLOCK_UNCOMPRESSED != 0 {
            if out.len() + block.len() > limit_bytes {
                return Err(BatchError::DecompressedTooLarge { limit_bytes });
            }
            out.extend_from_slice(block);
        } else {
            let linked = flg & LZ4_FLG_INDEPENDENT_BLOCKS == 0;
            let history_start = if linked { frame_start } else { out.len() };
            decompress_lz4_block(block, block_max_size, limit_bytes, history_start, out)?;
        }
    }
    if flg & LZ4_FLG_CONTENT_CHECKSUM != 0 {
        reader.take(4)?;
    }
    if let Some(content_size) = content_size {
        if (out.len() - frame_start) as u64 != content_size {
            return Err(error("frame content size does not match its blocks"));
        }
    }
    Ok(())
}

/// Decodes one compressed block onto the end of `out`. A linked block may
/// copy from up to 64 KiB of `out[history_start..]`, the frame's output so
/// far; an independent one passes `history_start = out.len()`.
fn decompress_lz4_block(
    block: &[u8],
    block_max_size: usize,
    limit_bytes: usize,
    history_start: usize,
    out: &mut Vec<u8>,
) -> Result<(), BatchError> {
    let start = out.len();
    assert!(history_start <= start);
    // Never make room past the limit: a bomb fails here, unallocated.
    let room = block_max_size.min(limit_bytes.saturating_sub(start));
    out.resize(start + room, 0);
    let (history, output) = out.split_at_mut(start);
    let result = if history_start == start {
        lz4_flex::block::decompress_into(block, output)
    } else {
        let window_start = start.saturating_sub(LZ4_WINDOW_SIZE).max(history_start);
        lz4_flex::block::decompress_into_with_dict(block, output, &history[window_start..])
    };
    match result {
        Ok(size) => {
            out.truncate(start + size);
            Ok(())
        }
        Err(lz4_flex::block::DecompressError::OutputTooSmall { .. }) if room < block_max_size => {
            out.truncate(start);
            Err(BatchError::DecompressedTooLarge { limit_bytes })
        }
        Err(error) => {
            out.truncate(start);
            Err(decompress_error(Compression::Lz4, error))
        }
    }
}

thread_local! {
    /// zstd contexts are costly to create (hundreds of KiB each); one per
    /// thread is reused for every batch.
    static ZSTD_COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { RefCell::new(None) };
    static ZSTD_DECOMPRESSOR: RefCell<Option<zstd::zstd_safe::DCtx<'static>>> =
        const { RefCell::new(None) };
}

fn compress_zstd(input: &[u8], out: &mut Vec<u8>) -> Result<(), BatchError> {
    let codec = Compression::Zstd;
    ZSTD_COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            let compressor = zstd::bulk::Compressor::new(ZSTD_LEVEL)
                .map_err(|error| compress_error(codec, error))?;
            *slot = Some(compressor);
        }
        let compressor = slot.as_mut().expect("compressor created above");
        // One-shot compression: the frame header then carries the content
        // size, so a reader sizes its window to the batch, not to the level.
        let start = out.len();
        out.reserve(zstd::zstd_safe::compress_bound(input.len()));
        let mut cursor = io::Cursor::new(&mut *out);
        cursor.set_position(start as u64);
        compressor
            .compress_to_buffer(input, &mut cursor)
            .map_err(|error| compress_error(codec, error))?;
        Ok(())
    })
}

/// The largest zstd window (log2 bytes) to accept. A frame without a content
/// size makes the decoder allocate its whole window, so the window is bounded
/// by the output limit; but never below 8 MiB, which every level up to 19
/// fits, so that ordinary frames from other clients decode under small limits.
fn zstd_window_log_max(limit_bytes: usize) -> u32 {
    const MIN_LOG: u32 = 23;
    const MAX_LOG: u32 = 27; // zstd's own default limit
    let limit_log = usize::BITS - limit_bytes.saturating_sub(1).leading_zeros();
    limit_log.clamp(MIN_LOG, MAX_LOG)
}

fn decompress_zstd(input: &[u8], limit_bytes: usize) -> Result<Vec<u8>, BatchError> {
    use zstd::zstd_safe::{get_frame_content_size, DCtx, DParameter, ResetDirective};
    let codec = Compression::Zstd;
    let hint_bytes = match get_frame_content_size(input) {
        Ok(Some(size)) => usize::try_from(size).unwrap_or(usize::MAX),
        _ => capacity_hint_bytes(input),
    };
    ZSTD_DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let context = slot.get_or_insert_with(DCtx::create);
        // A previous call may have stopped mid-frame (limit, error); zstd
        // takes parameters only between frames.
        context
            .reset(ResetDirective::SessionOnly)
            .map_err(|code| decompress_error(codec, zstd::zstd_safe::get_error_name(code)))?;
        context
            .set_parameter(DParameter::WindowLogMax(zstd_window_log_max(limit_bytes)))
            .map_err(|code| decompress_error(codec, zstd::zstd_safe::get_error_name(code)))?;
        let decoder = zstd::stream::read::Decoder::with_context(input, context);
        read_limited(codec, decoder, limit_bytes, hint_bytes)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_records() -> Vec<u8> {
        (0..200_000u32)
            .flat_map(|i| format!("{{\"id\":{i},\"name\":\"user-{}\"}}", i % 97).into_bytes())
            .collect()
    }

    #[test]
    fn ids_names_and_parsing_agree() {
        for codec in Compression::ALL {
            assert_eq!(Compression::from_id(codec.id()), Some(codec));
            assert_eq!(codec.name().parse::<Compression>(), Ok(codec));
            assert_eq!(codec.to_string(), codec.name());
        }
        assert_eq!(Compression::from_id(5), None);
        assert_eq!(Compression::from_id(7), None);
        assert_eq!("ZSTD".parse::<Compression>(), Ok(Compression::Zstd));
        assert!("brotli".parse::<Compression>().is_err());
        assert_eq!(Compression::Lz4 as u8, 3);
    }

    #[test]
    fn every_codec_round_trips() {
        let input = sample_records();
        for codec in Compression::ALL {
            for size in [0, 1, 100, 64 * 1024, 64 * 1024 + 1, input.len()] {
                let mut out = vec![0xAA]; // compress appends
                compress(codec, &input[..size], &mut out).unwrap();
                assert_eq!(out[0], 0xAA);
                let back = decompress(codec, &out[1..], size).unwrap();
                assert!(back == input[..size], "{codec} size {size}");
            }
        }
    }

    #[test]
    fn xerial_snappy_layout_matches_snappy_java() {
        let input = sample_records();
        let mut out = Vec::new();
        compress(Compression::Snappy, &input, &mut out).unwrap();
        assert_eq!(out[..8], XERIAL_MAGIC);
        assert_eq!(out[8..16], [0, 0, 0, 1, 0, 0, 0, 1]);
        // Walk the chunks by hand: each one is a raw snappy block of at most
        // 32 KiB, and they tile the input.
        let mut rest = &out[16..];
        let mut inflated = Vec::new();
        while !rest.is_empty() {
            let size = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
            let chunk = snap::raw::Decoder::new()
                .decompress_vec(&rest[4..4 + size])
                .unwrap();
            assert!(chunk.len() <= XERIAL_CHUNK_SIZE);
            inflated.extend_from_slice(&chunk);
            rest = &rest[4 + size..];
        }
        assert!(inflated == input);
    }

    #[test]
    fn raw_snappy_as_librdkafka_writes_it_decodes() {
        let input = sample_records();
        let raw = snap::raw::Encoder::new().compress_vec(&input).unwrap();
        assert!(decompress(Compression::Snappy, &raw, input.len()).unwrap() == input);
        assert_eq!(
            decompress(Compression::Snappy, &raw, input.len() - 1),
            Err(BatchError::DecompressedTooLarge {
                limit_bytes: input.len() - 1
            })
        );
    }

    #[test]
    fn lz4_frame_uses_independent_blocks_sized_to_the_input() {
        let cases = [(100, 4u8), (100 * 1024, 5), (1024 * 1024, 6), (5 << 20, 7)];
        for (size, block_size_id) in cases {
            let input: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let mut out = Vec::new();
            compress(Compression::Lz4, &input, &mut out).unwrap();
            assert_eq!(out[..4], [0x04, 0x22, 0x4D, 0x18], "LZ4 frame magic");
            let flg = out[4];
            assert_eq!(flg >> 6, 1, "frame version 1");
            assert_ne!(
                flg & 0x20,
                0,
                "block independence set (Java refuses linked)"
            );
            assert_eq!(flg & 0x10, 0, "no block checksums");
            assert_eq!(flg & 0x04, 0, "no content checksum");
            let bd = out[5];
            assert_eq!((bd >> 4) & 0x07, block_size_id, "size {size}");
            assert_eq!(out[out.len() - 4..], [0, 0, 0, 0], "end mark");
        }
    }

    /// lz4_flex's own frame codec is the reference: it must read what we
    /// write (header checksums included, as it verifies them), and we must
    /// read what it writes with every option.
    #[test]
    fn lz4_frames_interoperate_with_lz4_flex() {
        use lz4_flex::frame::{BlockMode, BlockSize, FrameDecoder, FrameEncoder, FrameInfo};
        let compressible = sample_records();
        let incompressible: Vec<u8> = (0..300_000u64)
            .map(|i| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8)
            .collect();
        for input in [
            &compressible[..],
            &incompressible[..],
            &compressible[..70_000],
            &[],
        ] {
            let mut ours = Vec::new();
            compress(Compression::Lz4, input, &mut ours).unwrap();
            let mut theirs_read = Vec::new();
            FrameDecoder::new(&ours[..])
                .read_to_end(&mut theirs_read)
                .unwrap();
            assert!(theirs_read == input);

            for block_mode in [BlockMode::Independent, BlockMode::Linked] {
                for block_size in [BlockSize::Max64KB, BlockSize::Max256KB, BlockSize::Max4MB] {
                    for checksums in [false, true] {
                        let info = FrameInfo::new()
                            .block_mode(block_mode)
                            .block_size(block_size)
                            .block_checksums(checksums)
                            .content_checksum(checksums)
                            .content_size(checksums.then_some(input.len() as u64));
                        let mut encoder = FrameEncoder::with_frame_info(info, Vec::new());
                        encoder.write_all(input).unwrap();
                        let theirs = encoder.finish().unwrap();
                        if block_mode == BlockMode::Independent && !checksums {
                            assert_eq!(theirs[4], LZ4_FLG);
                            // Our precomputed header checksum for this
                            // descriptor equals the one lz4_flex computes.
                            let (_, _, header_checksum) = LZ4_DESCRIPTORS
                                .into_iter()
                                .find(|&(bd, _, _)| bd == theirs[5])
                                .unwrap();
                            assert_eq!(theirs[6], header_checksum);
                        }
                        let read = decompress(Compression::Lz4, &theirs, input.len()).unwrap();
                        assert!(read == input, "{block_mode:?} {block_size:?} {checksums}");
                    }
                }
            }
        }
    }

    #[test]
    fn lz4_truncated_or_inconsistent_frames_are_errors() {
        let input = sample_records();
        let mut framed = Vec::new();
        compress(Compression::Lz4, &input[..10_000], &mut framed).unwrap();
        for cut in 0..framed.len() {
            assert!(
                decompress(Compression::Lz4, &framed[..cut], 1 << 20).is_err(),
                "{cut}"
            );
        }
        // Two frames back to back decode as one stream, like gzip members.
        let mut two = framed.clone();
        two.extend_from_slice(&framed);
        assert_eq!(
            decompress(Compression::Lz4, &two, 1 << 20).unwrap().len(),
            20_000
        );
        // A skippable frame in between is skipped.
        let mut skippable = framed.clone();
        skippable.extend_from_slice(&0x184D_2A50u32.to_le_bytes());
        skippable.extend_from_slice(&3u32.to_le_bytes());
        skippable.extend_from_slice(b"abc");
        skippable.extend_from_slice(&framed);
        assert_eq!(
            decompress(Compression::Lz4, &skippable, 1 << 20)
                .unwrap()
                .len(),
            20_000
        );
        // A declared content size that the blocks do not match.
        let mut four = Vec::new();
        compress(Compression::Lz4, b"four", &mut four).unwrap();
        let mut lying = four[..4].to_vec();
        lying.extend_from_slice(&[four[4] | LZ4_FLG_CONTENT_SIZE, four[5]]);
        lying.extend_from_slice(&5u64.to_le_bytes());
        lying.push(0); // header checksum, not verified
        lying.extend_from_slice(&four[7..]);
        let mut honest = lying.clone();
        honest[6..14].copy_from_slice(&4u64.to_le_bytes());
        assert_eq!(decompress(Compression::Lz4, &honest, 100).unwrap(), b"four");
        assert!(decompress(Compression::Lz4, &lying, 100).is_err());
    }

    #[test]
    fn zstd_frame_declares_its_content_size() {
        let input = sample_records();
        let mut out = Vec::new();
        compress(Compression::Zstd, &input, &mut out).unwrap();
        let content_size = zstd::zstd_safe::get_frame_content_size(&out).ok();
        assert_eq!(content_size, Some(Some(input.len() as u64)));
        // A streamed frame (no content size, as Java's zstd-jni writes) decodes.
        let streamed = zstd::stream::encode_all(&input[..], 3).unwrap();
        assert!(decompress(Compression::Zstd, &streamed, input.len()).unwrap() == input);
    }

    #[test]
    fn concatenated_gzip_members_decode() {
        let mut out = Vec::new();
        compress(Compression::Gzip, b"hello ", &mut out).unwrap();
        compress(Compression::Gzip, b"world", &mut out).unwrap();
        assert_eq!(
            decompress(Compression::Gzip, &out, 100).unwrap(),
            b"hello world"
        );
    }

    #[test]
    fn zip_bomb_stops_at_the_limit() {
        let zeros = vec![0u8; 64 << 20];
        for codec in Compression::ALL {
            let mut bomb = Vec::new();
            compress(codec, &zeros, &mut bomb).unwrap();
            let limit_bytes = 1 << 20;
            assert_eq!(
                decompress(codec, &bomb, limit_bytes),
                Err(BatchError::DecompressedTooLarge { limit_bytes }),
                "{codec}"
            );
            assert_eq!(
                decompress(codec, &bomb, zeros.len()).unwrap().len(),
                zeros.len()
            );
        }
    }

    #[test]
    fn zstd_window_is_bounded_by_the_limit() {
        assert_eq!(zstd_window_log_max(0), 23);
        assert_eq!(zstd_window_log_max(1 << 20), 23);
        assert_eq!(zstd_window_log_max(1 << 24), 24);
        assert_eq!(zstd_window_log_max((1 << 24) + 1), 25);
        assert_eq!(zstd_window_log_max(64 << 20), 26);
        assert_eq!(zstd_window_log_max(usize::MAX), 27);
    }

    #[test]
    fn garbage_is_an_error() {
        let garbage = [0xFFu8; 64];
        for codec in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            assert!(decompress(codec, &garbage, 1 << 20).is_err(), "{codec}");
        }
        let mut xerial_truncated = XERIAL_MAGIC.to_vec();
        xerial_truncated.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 9, 1]);
        assert!(decompress(Compression::Snappy, &xerial_truncated, 100).is_err());
    }
}
