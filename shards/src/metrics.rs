//! Per-shard counters. Each shard writes only its own (relaxed atomics, no
//! locks); the HTTP endpoint on shard 0 reads them all for /metrics.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use ringmq_wire::envelope::ApiKey;

#[derive(Debug, Default)]
pub struct ShardMetrics {
    pub requests: [AtomicU64; 7],
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
