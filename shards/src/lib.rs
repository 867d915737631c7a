//! ringmq-shards: everything a shard owns.
//!
//! * [`io`]: the storage I/O seam (glommio DMA files, buffered fallback).
//! * [`log`]: partition logs: segments, indexes, group commit, recovery,
//!   retention, offline verification.
//! * [`cache`]: the per-shard tail cache of recent batches.
//! * [`catalog`]: topics, configs, deterministic placement.
//! * [`group`]: consumer groups: membership, assignors, committed offsets.
//! * [`mesh`]: cross-shard channels.
//! * [`shard`]: the request handlers that run on a shard.
//! * [`metrics`]: per-shard counters.

pub mod cache;
pub mod catalog;
pub mod group;
pub mod io;
pub mod log;
pub mod mesh;
pub mod metrics;
pub mod shard;

pub use cache::{CacheStats, TailCache};
pub use io::{GlommioStorage, Storage, StorageFile};
pub use log::{Acks, AppendResult, LogConfig, LogError, PartitionLog, ReadData};
