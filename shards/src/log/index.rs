//! Sparse offset index (`.index`) and the trailer shared with the time index.
//!
//! On disk: `N` entries of `[relative_offset u32 BE][position u32 BE]`, then a
//! 40-byte trailer:
//!
//! ```text
//! [magic u32][version u16][entry_size u16][entry_count u32]
//! [segment_bytes u64][next_offset i64][max_timestamp i64][crc32 u32]
//! ```
//!
//! The CRC32 (IEEE, crc32fast) covers the entries and the trailer fields
//! before it. The trailer also records the size of the log file and the next
//! offset at the time the index was written, so recovery can tell whether the
//! index still describes the log (sealed segments) or only a prefix of it
//! (the active segment after a restart).

/// Bytes per offset-index entry.
pub const INDEX_ENTRY_SIZE: usize = 8;
/// Bytes of the trailer at the end of `.index` and `.timeindex` files.
pub const TRAILER_SIZE: usize = 40;
/// "RIDX"
pub const INDEX_MAGIC: u32 = 0x5249_4458;
/// "RTIX"
pub const TIMEINDEX_MAGIC: u32 = 0x5254_4958;
/// Current on-disk version of both index formats.
pub const INDEX_VERSION: u16 = 1;

/// What the trailer says about the segment the index belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct IndexTrailer {
    pub entry_count: u32,
    /// Logical size of the `.log` file when the index was written, in bytes.
    pub segment_bytes: u64,
    /// Offset following the last batch of the segment at that time.
    pub next_offset: i64,
    /// Largest batch max-timestamp in the segment at that time (-1 if none).
    pub max_timestamp: i64,
}

/// Why an index file could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    #[error("index file is {len} bytes, shorter than its {TRAILER_SIZE}-byte trailer")]
    TooShort { len: usize },
    #[error("index trailer magic {found:#010x} is not {expected:#010x}")]
    BadMagic { expected: u32, found: u32 },
    #[error("index version {0} is not supported")]
    BadVersion(u16),
    #[error(
        "index declares {entry_count} entries of {entry_size} bytes but the file holds {len} bytes"
    )]
    BadLength {
        entry_count: u32,
        entry_size: u16,
        len: usize,
    },
    #[error("index CRC32 mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadCrc { stored: u32, computed: u32 },
    #[error("index entry {index} is not monotonic")]
    NotMonotonic { index: usize },
}

/// Appends the trailer to `out` (which already holds the entries).
pub(crate) fn encode_trailer(out: &mut Vec<u8>, magic: u32, entry_size: u16, t: &IndexTrailer) {
    out.extend_from_slice(&magic.to_be_bytes());
    out.extend_from_slice(&INDEX_VERSION.to_be_bytes());
    out.extend_from_slice(&entry_size.to_be_bytes());
    out.extend_from_slice(&t.entry_count.to_be_bytes());
    out.extend_from_slice(&t.segment_bytes.to_be_bytes());
    out.extend_from_slice(&t.next_offset.to_be_bytes());
    out.extend_from_slice(&t.max_timestamp.to_be_bytes());
    let crc = crc32fast::hash(out);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// Checks the trailer and CRC; returns the trailer and the entry bytes.
pub(crate) fn decode_trailer(
    bytes: &[u8],
    magic: u32,
    entry_size: u16,
) -> Result<(IndexTrailer, &[u8]), IndexError> {
    if bytes.len() < TRAILER_SIZE {
        return Err(IndexError::TooShort { len: bytes.len() });
    }
    let t = &bytes[bytes.len() - TRAILER_SIZE..];
    let u32_at = |b: &[u8], at: usize| u32::from_be_bytes(b[at..at + 4].try_into().unwrap());
    let u16_at = |b: &[u8], at: usize| u16::from_be_bytes(b[at..at + 2].try_into().unwrap());
    let u64_at = |b: &[u8], at: usize| u64::from_be_bytes(b[at..at + 8].try_into().unwrap());
    let found_magic = u32_at(t, 0);
    if found_magic != magic {
        return Err(IndexError::BadMagic {
            expected: magic,
            found: found_magic,
        });
    }
    let version = u16_at(t, 4);
    if version != INDEX_VERSION {
        return Err(IndexError::BadVersion(version));
    }
    let found_entry_size = u16_at(t, 6);
    let entry_count = u32_at(t, 8);
    if found_entry_size != entry_size
        || entry_count as usize * entry_size as usize + TRAILER_SIZE != bytes.len()
    {
        return Err(IndexError::BadLength {
            entry_count,
            entry_size: found_entry_size,
            len: bytes.len(),
        });
    }
    let stored = u32_at(t, 36);
    let computed = crc32fast::hash(&bytes[..bytes.len() - 4]);
    if stored != computed {
        return Err(IndexError::BadCrc { stored, computed });
    }
    let trailer = IndexTrailer {
        entry_count,
        segment_bytes: u64_at(t, 12),
        next_offset: u64_at(t, 20) as i64,
        max_timestamp: u64_at(t, 28) as i64,
    };
    Ok((trailer, &bytes[..bytes.len() - TRAILER_SIZE]))
}

/// One offset-index entry: the batch starting at `base + relative_offset`
/// begins at byte `position` of the segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct IndexEntry {
    pub relative_offset: u32,
    pub position: u32,
}

/// In-memory sparse offset index of one segment. Entries are strictly
/// increasing in both fields.
#[derive(Debug, Clone, Default)]
pub struct OffsetIndex {
    entries: Vec<IndexEntry>,
}

impl OffsetIndex {
    pub fn new() -> OffsetIndex {
        OffsetIndex::default()
    }

    pub fn entries(&self) -> &[IndexEntry] {
        &self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn last(&self) -> Option<IndexEntry> {
        self.entries.last().copied()
    }

    /// Adds an entry; both fields must exceed those of the last entry.
    pub fn push(&mut self, relative_offset: u32, position: u32) {
        if let Some(last) = self.entries.last() {
            assert!(
                relative_offset > last.relative_offset && position > last.position,
                "offset index must be strictly increasing: last {last:?}, new ({relative_offset}, {position})"
            );
        }
        self.entries.push(IndexEntry {
            relative_offset,
            position,
        });
    }

    /// The entry with the greatest relative offset `<= target`, if any.
    pub fn lookup(&self, target: u32) -> Option<IndexEntry> {
        let n = self
            .entries
            .partition_point(|e| e.relative_offset <= target);
        n.checked_sub(1).map(|i| self.entries[i])
    }

    /// Drops entries pointing at or past byte `position`.
    pub fn truncate_to_position(&mut self, position: u64) {
        let n = self
            .entries
            .partition_point(|e| (e.position as u64) < position);
        self.entries.truncate(n);
    }

    /// The on-disk form: entries and trailer.
    pub fn encode(&self, trailer: &IndexTrailer) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * INDEX_ENTRY_SIZE + TRAILER_SIZE);
        for e in &self.entries {
            out.extend_from_slice(&e.relative_offset.to_be_bytes());
            out.extend_from_slice(&e.position.to_be_bytes());
        }
        let trailer = IndexTrailer {
            entry_count: self.entries.len() as u32,
            ..*trailer
        };
        encode_trailer(&mut out, INDEX_MAGIC, INDEX_ENTRY_SIZE as u16, &trailer);
        out
    }

    /// Parses and checks an `.index` file.
    pub fn decode(bytes: &[u8]) -> Result<(OffsetIndex, IndexTrailer), IndexError> {
        let (trailer, body) = decode_trailer(bytes, INDEX_MAGIC, INDEX_ENTRY_SIZE as u16)?;
        let mut entries = Vec::with_capacity(trailer.entry_count as usize);
        for (i, chunk) in body.chunks_exact(INDEX_ENTRY_SIZE).enumerate() {
            let e = IndexEntry {
                relative_offset: u32::from_be_bytes(chunk[0..4].try_into().unwrap()),
                position: u32::from_be_bytes(chunk[4..8].try_into().unwrap()),
            };
            if let Some(last) = entries.last() {
                let last: &IndexEntry = last;
                if e.relative_offset <= last.relative_offset || e.position <= last.position {
                    return Err(IndexError::NotMonotonic { index: i });
                }
            }
            if e.position as u64 >= trailer.segment_bytes {
                return Err(IndexError::NotMonotonic { index: i });
            }
            entries.push(e);
        }
        Ok((OffsetIndex { entries }, trailer))
    }
}
