//! Time index (`.timeindex`): `(max timestamp so far, relative offset)`
//! entries, strictly increasing in timestamp and non-decreasing in offset.
//!
//! On disk: `N` entries of `[timestamp i64 BE][relative_offset u32 BE]`, then
//! the trailer described in [`super::index`] with magic "RTIX".
//!
//! Entry `(T, O)` means: every batch up to and including the one at relative
//! offset `O` has a max timestamp `<= T`, and the batch at `O` reaches `T`.

use super::index::{
    decode_trailer, encode_trailer, IndexError, IndexTrailer, TIMEINDEX_MAGIC, TRAILER_SIZE,
};

/// Bytes per time-index entry.
pub const TIMEINDEX_ENTRY_SIZE: usize = 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct TimeEntry {
    pub timestamp: i64,
    pub relative_offset: u32,
}

#[derive(Debug, Clone, Default)]
pub struct TimeIndex {
    entries: Vec<TimeEntry>,
}

impl TimeIndex {
    pub fn new() -> TimeIndex {
        TimeIndex::default()
    }

    pub fn entries(&self) -> &[TimeEntry] {
        &self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn last(&self) -> Option<TimeEntry> {
        self.entries.last().copied()
    }

    /// Adds `(timestamp, relative_offset)` if the timestamp exceeds the last
    /// entry's; returns whether it was added.
    pub fn maybe_push(&mut self, timestamp: i64, relative_offset: u32) -> bool {
        if let Some(last) = self.entries.last() {
            if timestamp <= last.timestamp {
                return false;
            }
            assert!(
                relative_offset >= last.relative_offset,
                "time index offsets must not go backwards: last {last:?}, new ({timestamp}, {relative_offset})"
            );
        }
        self.entries.push(TimeEntry {
            timestamp,
            relative_offset,
        });
        true
    }

    /// The entry with the greatest timestamp `<= target`, if any.
    pub fn lookup(&self, target: i64) -> Option<TimeEntry> {
        let n = self.entries.partition_point(|e| e.timestamp <= target);
        n.checked_sub(1).map(|i| self.entries[i])
    }

    /// Drops entries at or past `relative_offset`.
    pub fn truncate_to_offset(&mut self, relative_offset: u32) {
        let n = self
            .entries
            .partition_point(|e| e.relative_offset < relative_offset);
        self.entries.truncate(n);
    }

    pub fn encode(&self, trailer: &IndexTrailer) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * TIMEINDEX_ENTRY_SIZE + TRAILER_SIZE);
        for e in &self.entries {
            out.extend_from_slice(&e.timestamp.to_be_bytes());
            out.extend_from_slice(&e.relative_offset.to_be_bytes());
        }
        let trailer = IndexTrailer {
            entry_count: self.entries.len() as u32,
            ..*trailer
        };
        encode_trailer(
            &mut out,
            TIMEINDEX_MAGIC,
            TIMEINDEX_ENTRY_SIZE as u16,
            &trailer,
        );
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<(TimeIndex, IndexTrailer), IndexError> {
        let (trailer, body) = decode_trailer(bytes, TIMEINDEX_MAGIC, TIMEINDEX_ENTRY_SIZE as u16)?;
        let mut entries: Vec<TimeEntry> = Vec::with_capacity(trailer.entry_count as usize);
        for (i, chunk) in body.chunks_exact(TIMEINDEX_ENTRY_SIZE).enumerate() {
            let e = TimeEntry {
                timestamp: i64::from_be_bytes(chunk[0..8].try_into().unwrap()),
                relative_offset: u32::from_be_bytes(chunk[8..12].try_into().unwrap()),
            };
            if let Some(last) = entries.last() {
                if e.timestamp <= last.timestamp || e.relative_offset < last.relative_offset {
                    return Err(IndexError::NotMonotonic { index: i });
                }
            }
            entries.push(e);
        }
        Ok((TimeIndex { entries }, trailer))
    }
}
