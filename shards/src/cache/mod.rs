//! Per-shard tail cache: recently appended batches kept in memory as the
//! very `Bytes` that went to disk (no copy), so tailing consumers are served
//! without touching the disk.
//!
//! Bounded by bytes across all partitions of a shard, FIFO eviction in
//! append order. Shard-local (`Rc<RefCell<..>>`): glommio executors are
//! single-threaded, and no borrow is ever held across an `.await`.
//!
//! The cache also carries the shard's read-ahead budget
//! ([`ReadAheadBudget`]): the other half of the memory a shard spends on
//! serving fetches, shared by the same partitions.

use crate::log::readahead::{ReadAheadBudget, ReadAheadSettings};
use bytes::Bytes;
use std::{
    cell::RefCell,
    collections::{HashMap, VecDeque},
    rc::Rc,
};

/// Default capacity of a shard's tail cache, in bytes.
pub const DEFAULT_TAIL_CACHE_BYTES: usize = 64 << 20;

/// Identifies one partition's entries in the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey(u64);

/// Counters of a tail cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheStats {
    pub capacity_bytes: usize,
    pub used_bytes: usize,
    pub batches: usize,
    pub hits: u64,
    pub misses: u64,
    pub evicted_batches: u64,
}

#[derive(Debug)]
struct Entry {
    base_offset: i64,
    last_offset: i64,
    bytes: Bytes,
}

#[derive(Debug, Default)]
struct Inner {
    capacity_bytes: usize,
    used_bytes: usize,
    batches: usize,
    next_key: u64,
    partitions: HashMap<CacheKey, VecDeque<Entry>>,
    /// Insertion order across partitions: (partition, base offset). Entries
    /// removed by truncation are skipped lazily when they reach the front.
    fifo: VecDeque<(CacheKey, i64)>,
    hits: u64,
    misses: u64,
    evicted_batches: u64,
}

/// A shard's tail cache. Cloning shares it.
#[derive(Debug, Clone)]
pub struct TailCache {
    inner: Rc<RefCell<Inner>>,
    readahead: ReadAheadBudget,
}

impl Default for TailCache {
    fn default() -> Self {
        TailCache::new(DEFAULT_TAIL_CACHE_BYTES)
    }
}

impl TailCache {
    /// A cache holding at most `capacity_bytes` of batches (0 disables it),
    /// with the default read-ahead budget.
    pub fn new(capacity_bytes: usize) -> TailCache {
        TailCache::with_readahead(capacity_bytes, ReadAheadSettings::default())
    }

    /// A cache of `capacity_bytes`, and read-ahead bounded by `readahead`.
    pub fn with_readahead(capacity_bytes: usize, readahead: ReadAheadSettings) -> TailCache {
        TailCache {
            inner: Rc::new(RefCell::new(Inner {
                capacity_bytes,
                ..Inner::default()
            })),
            readahead: ReadAheadBudget::new(readahead),
        }
    }

    /// The shard's read-ahead budget and counters.
    pub fn readahead(&self) -> &ReadAheadBudget {
        &self.readahead
    }

    /// A key for a new partition.
    pub fn register(&self) -> CacheKey {
        let mut inner = self.inner.borrow_mut();
        inner.next_key += 1;
        let key = CacheKey(inner.next_key);
        inner.partitions.insert(key, VecDeque::new());
        key
    }

    /// Drops a partition and its entries.
    pub fn unregister(&self, key: CacheKey) {
        let mut inner = self.inner.borrow_mut();
        if let Some(entries) = inner.partitions.remove(&key) {
            inner.used_bytes -= entries.iter().map(|e| e.bytes.len()).sum::<usize>();
            inner.batches -= entries.len();
        }
    }

    /// Adds a batch appended at `base_offset..=last_offset`. Batches of one
    /// partition must be inserted in offset order.
    pub fn insert(&self, key: CacheKey, base_offset: i64, last_offset: i64, bytes: Bytes) {
        let mut inner = self.inner.borrow_mut();
        let size = bytes.len();
        if size > inner.capacity_bytes {
            return;
        }
        let Some(entries) = inner.partitions.get_mut(&key) else {
            return;
        };
        if let Some(last) = entries.back() {
            if last.last_offset >= base_offset {
                // Out of order (should not happen): keep the cache consistent.
                let n = entries.partition_point(|e| e.base_offset < base_offset);
                let removed: Vec<Entry> = entries.drain(n..).collect();
                let freed: usize = removed.iter().map(|e| e.bytes.len()).sum();
                inner.used_bytes -= freed;
                inner.batches -= removed.len();
            }
        }
        let entries = inner.partitions.get_mut(&key).expect("registered");
        entries.push_back(Entry {
            base_offset,
            last_offset,
            bytes,
        });
        inner.used_bytes += size;
        inner.batches += 1;
        inner.fifo.push_back((key, base_offset));
        inner.evict();
    }

    /// Whole cached batches starting with the one containing `offset`, up to
    /// `max_bytes` (at least one batch), stopping before `limit_offset`.
    /// `None` (a miss) when the batch containing `offset` is not cached.
    pub fn read(
        &self,
        key: CacheKey,
        offset: i64,
        max_bytes: usize,
        limit_offset: i64,
    ) -> Option<Vec<Bytes>> {
        let mut inner = self.inner.borrow_mut();
        let found = inner.partitions.get(&key).and_then(|entries| {
            let i = entries.partition_point(|e| e.last_offset < offset);
            let first = entries.get(i)?;
            if first.base_offset > offset || first.base_offset >= limit_offset {
                return None;
            }
            let mut out = Vec::new();
            let mut total = 0usize;
            let mut expected = first.base_offset;
            for e in entries.range(i..) {
                if e.base_offset >= limit_offset || e.base_offset != expected {
                    break;
                }
                if !out.is_empty() && total + e.bytes.len() > max_bytes {
                    break;
                }
                total += e.bytes.len();
                expected = e.last_offset + 1;
                out.push(e.bytes.clone());
                if total >= max_bytes {
                    break;
                }
            }
            Some(out)
        });
        if found.is_some() {
            inner.hits += 1;
        } else {
            inner.misses += 1;
        }
        found
    }

    /// Whether a read of `offset` would be served here (counts nothing).
    pub fn contains(&self, key: CacheKey, offset: i64) -> bool {
        let inner = self.inner.borrow();
        inner.partitions.get(&key).is_some_and(|entries| {
            let i = entries.partition_point(|e| e.last_offset < offset);
            entries.get(i).is_some_and(|e| e.base_offset <= offset)
        })
    }

    /// Removes a partition's batches at or after `offset` (a rolled-back append).
    pub fn truncate_from(&self, key: CacheKey, offset: i64) {
        let mut inner = self.inner.borrow_mut();
        let Some(entries) = inner.partitions.get_mut(&key) else {
            return;
        };
        let n = entries.partition_point(|e| e.base_offset < offset);
        let removed: Vec<Entry> = entries.drain(n..).collect();
        inner.used_bytes -= removed.iter().map(|e| e.bytes.len()).sum::<usize>();
        inner.batches -= removed.len();
        inner.compact_fifo();
    }

    /// Removes a partition's batches that end before `offset` (retention).
    pub fn truncate_before(&self, key: CacheKey, offset: i64) {
        let mut inner = self.inner.borrow_mut();
        let Some(entries) = inner.partitions.get_mut(&key) else {
            return;
        };
        let n = entries.partition_point(|e| e.last_offset < offset);
        let removed: Vec<Entry> = entries.drain(..n).collect();
        inner.used_bytes -= removed.iter().map(|e| e.bytes.len()).sum::<usize>();
        inner.batches -= removed.len();
        inner.compact_fifo();
    }

    pub fn stats(&self) -> CacheStats {
        let inner = self.inner.borrow();
        CacheStats {
            capacity_bytes: inner.capacity_bytes,
            used_bytes: inner.used_bytes,
            batches: inner.batches,
            hits: inner.hits,
            misses: inner.misses,
            evicted_batches: inner.evicted_batches,
        }
    }
}

impl Inner {
    fn evict(&mut self) {
        while self.used_bytes > self.capacity_bytes {
            let Some((key, base)) = self.fifo.pop_front() else {
                break;
            };
            let Some(entries) = self.partitions.get_mut(&key) else {
                continue;
            };
            // Stale FIFO record (entry already truncated away): skip it.
            if entries.front().map(|e| e.base_offset) != Some(base) {
                continue;
            }
            let e = entries.pop_front().expect("front checked");
            self.used_bytes -= e.bytes.len();
            self.batches -= 1;
            self.evicted_batches += 1;
        }
        debug_assert!(self.used_bytes <= self.capacity_bytes);
    }

    /// Keeps the FIFO from growing without bound when many entries leave by
    /// truncation rather than eviction.
    fn compact_fifo(&mut self) {
        if self.fifo.len() > 2 * self.batches + 1024 {
            let partitions = &self.partitions;
            self.fifo.retain(|(key, base)| {
                partitions.get(key).is_some_and(|entries| {
                    let i = entries.partition_point(|e| e.base_offset < *base);
                    entries.get(i).is_some_and(|e| e.base_offset == *base)
                })
            });
        }
    }
}
