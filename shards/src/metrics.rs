//! Per-shard counters. Each shard writes only its own (relaxed atomics, no
//! locks); the HTTP endpoint on shard 0 reads them all for /metrics.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use ringmq_wire::envelope::ApiKey;

#[derive(Debug, Default)]
pub struct ShardMetrics {
    pub requests: [AtomicU64; ApiKey::ALL.len()],
    pub request_errors: AtomicU64,
    pub produce_bytes: AtomicU64,
    pub produce_messages: AtomicU64,
    pub fetch_bytes: AtomicU64,
    pub connections_open: AtomicI64,
    pub connections_total: AtomicU64,
    pub forwards_out: AtomicU64,
    pub forwards_in: AtomicU64,
}

fn api_index(api: ApiKey) -> usize {
    ApiKey::ALL
        .iter()
        .position(|a| *a == api)
        .expect("api is listed")
}

impl ShardMetrics {
    pub fn record_request(&self, api: ApiKey) {
        self.requests[api_index(api)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn requests_for(&self, api: ApiKey) -> u64 {
        self.requests[api_index(api)].load(Ordering::Relaxed)
    }

    pub fn record_produce(&self, bytes: u64, messages: u64) {
        self.produce_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.produce_messages.fetch_add(messages, Ordering::Relaxed);
    }

    pub fn record_fetch(&self, bytes: u64) {
        self.fetch_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------- histograms
//
// Latency histograms are HDR histograms owned by the shard's thread (no
// atomics on the hot path: record is ~6.5 ns). /metrics asks each shard for
// a [`HistogramSnapshot`] over the mesh and renders cumulative Prometheus
// buckets from it.

use std::cell::RefCell;

use hdrhistogram::Histogram;

/// Bucket upper bounds (µs) of the latency series on /metrics.
pub const LATENCY_BUCKETS_US: [u64; 20] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
    500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000, 60_000_000,
];
/// Bucket upper bounds of the group-commit size series (records per fdatasync).
pub const GROUP_COMMIT_BUCKETS: [u64; 14] = [
    1, 2, 4, 8, 16, 32, 64, 128, 256, 1_024, 4_096, 16_384, 65_536, 262_144,
];

struct Series {
    histogram: Histogram<u64>,
    sum: u64,
}

impl Series {
    fn new(max_value: u64) -> Series {
        Series {
            histogram: Histogram::new_with_bounds(1, max_value, 3).expect("valid histogram bounds"),
            sum: 0,
        }
    }

    fn record(&mut self, value: u64) {
        self.histogram.saturating_record(value.max(1));
        self.sum = self.sum.saturating_add(value);
    }

    fn snapshot(&self, bounds: &[u64]) -> SeriesSnapshot {
        SeriesSnapshot {
            cumulative: bounds
                .iter()
                .map(|b| self.histogram.count_between(0, *b))
                .collect(),
            count: self.histogram.len(),
            sum: self.sum,
        }
    }
}

struct ShardHistograms {
    request_latency_us: Vec<Series>,
    fdatasync_latency_us: Series,
    group_commit_records: Series,
}

thread_local! {
    static HISTOGRAMS: RefCell<ShardHistograms> = RefCell::new(ShardHistograms {
        request_latency_us: ApiKey::ALL.iter().map(|_| Series::new(3_600_000_000)).collect(),
        fdatasync_latency_us: Series::new(3_600_000_000),
        group_commit_records: Series::new(1 << 40),
    });
}

/// Records how long a request took on this shard, from frame decoded to
/// reply queued.
pub fn record_request_latency(api: ApiKey, latency_us: u64) {
    HISTOGRAMS.with(|h| h.borrow_mut().request_latency_us[api_index(api)].record(latency_us));
}

/// Records one fdatasync of a partition log and how many records it made
/// durable (the group-commit size).
pub fn record_fdatasync(latency_us: u64, records: u64) {
    HISTOGRAMS.with(|h| {
        let mut h = h.borrow_mut();
        h.fdatasync_latency_us.record(latency_us);
        h.group_commit_records.record(records);
    });
}

/// Cumulative counts at fixed bounds, plus count and sum: a Prometheus
/// histogram's data, `Send` so it can cross the mesh.
#[derive(Debug, Clone, Default)]
pub struct SeriesSnapshot {
    pub cumulative: Vec<u64>,
    pub count: u64,
    pub sum: u64,
}

#[derive(Debug, Clone, Default)]
pub struct HistogramSnapshot {
    /// Indexed like [`ApiKey::ALL`].
    pub request_latency_us: Vec<SeriesSnapshot>,
    pub fdatasync_latency_us: SeriesSnapshot,
    pub group_commit_records: SeriesSnapshot,
    pub tail_cache_hits: u64,
    pub tail_cache_misses: u64,
    /// Sequential read-ahead of cold fetches.
    pub readahead: crate::log::readahead::ReadAheadStats,
}

/// This shard's histograms (call on the shard's own thread).
pub fn histogram_snapshot() -> HistogramSnapshot {
    HISTOGRAMS.with(|h| {
        let h = h.borrow();
        HistogramSnapshot {
            request_latency_us: h
                .request_latency_us
                .iter()
                .map(|s| s.snapshot(&LATENCY_BUCKETS_US))
                .collect(),
            fdatasync_latency_us: h.fdatasync_latency_us.snapshot(&LATENCY_BUCKETS_US),
            group_commit_records: h.group_commit_records.snapshot(&GROUP_COMMIT_BUCKETS),
            tail_cache_hits: 0,
            tail_cache_misses: 0,
            readahead: Default::default(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_are_cumulative() {
        let mut s = Series::new(1_000_000);
        for v in [5, 20, 20, 700, 40_000] {
            s.record(v);
        }
        let snap = s.snapshot(&LATENCY_BUCKETS_US);
        assert_eq!(snap.count, 5);
        assert_eq!(snap.sum, 40_745);
        assert_eq!(snap.cumulative[0], 1); // <= 10
        assert_eq!(snap.cumulative[1], 3); // <= 25
        assert_eq!(snap.cumulative[6], 4); // <= 1000
        assert_eq!(*snap.cumulative.last().unwrap(), 5);
        assert!(snap.cumulative.windows(2).all(|w| w[0] <= w[1]));
    }
}
