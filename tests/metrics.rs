//! /health and /metrics on the HTTP port, checked with a real Prometheus
//! text-format parser.

mod common;

use common::{http_get, Broker};
use prometheus_parse::{Scrape, Value};

fn scrape(broker: &Broker) -> Scrape {
    let (status, body) = http_get(broker.http_port, "/metrics").unwrap();
    assert_eq!(status, 200);
    Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .expect("valid Prometheus text exposition")
}

fn sum_of(scrape: &Scrape, name: &str) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            other => panic!("{name} is not a scalar: {other:?}"),
        })
        .sum()
}

#[test]
fn health_and_metrics_expose_the_broker() {
    let broker = Broker::start(2);
    let (status, body) = http_get(broker.http_port, "/health").unwrap();
    assert_eq!(status, 200);
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["shards"], 2);
    assert_eq!(http_get(broker.http_port, "/nope").unwrap().0, 404);

    let out = broker.ringctl(&["topic", "create", "m", "--partitions", "4"], None);
    assert!(out.status.success());
    let lines: String = (0..3_000).map(|i| format!("{}|v{i}\n", i % 11)).collect();
    let out = broker.ringctl(
        &["produce", "m", "--key-separator", "|", "--acks", "fsync"],
        Some(lines.as_bytes()),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = broker.ringctl(
        &["consume", "m", "--from", "earliest", "--count", "3000"],
        None,
    );
    assert!(out.status.success());

    let scrape = scrape(&broker);
    assert_eq!(sum_of(&scrape, "ringmq_produce_messages_total"), 3_000.0);
    assert_eq!(sum_of(&scrape, "ringmq_partition_log_end_offset"), 3_000.0);
    assert_eq!(sum_of(&scrape, "ringmq_partition_high_watermark"), 3_000.0);
    assert!(sum_of(&scrape, "ringmq_partition_size_bytes") > 3_000.0);
    assert!(sum_of(&scrape, "ringmq_fetch_bytes_total") > 0.0);
    assert!(sum_of(&scrape, "ringmq_connections_total") >= 3.0);
    assert!(scrape
        .samples
        .iter()
        .any(|s| s.metric == "ringmq_connections_open"));
    assert!(scrape
        .samples
        .iter()
        .any(|s| s.metric == "ringmq_forwards_out_total"));
    let hits = sum_of(&scrape, "ringmq_tail_cache_hits_total");
    let misses = sum_of(&scrape, "ringmq_tail_cache_misses_total");
    assert!(
        hits + misses > 0.0,
        "fetches went through the cache accounting"
    );
    // Read-ahead series parse (values are checked in tests/cold_fetch.rs).
    for name in [
        "ringmq_readahead_hits_total",
        "ringmq_readahead_hit_waits_total",
        "ringmq_readahead_misses_total",
        "ringmq_readahead_read_bytes_total",
        "ringmq_readahead_discarded_bytes_total",
        "ringmq_readahead_invalidations_total",
        "ringmq_readahead_held_bytes",
    ] {
        assert_eq!(
            scrape.samples.iter().filter(|s| s.metric == name).count(),
            2,
            "{name}: one sample per shard"
        );
    }

    // Histograms: per-API request latency with a shard label, fdatasync
    // latency and group-commit size, with cumulative buckets.
    let mut produce_count = 0u64;
    let mut fsyncs = 0u64;
    let mut commits = 0u64;
    for sample in &scrape.samples {
        let Value::Histogram(buckets) = &sample.value else {
            continue;
        };
        assert!(
            sample.labels.get("shard").is_some(),
            "{} has a shard label",
            sample.metric
        );
        assert!(
            buckets.windows(2).all(|w| w[0].count <= w[1].count),
            "{} buckets are cumulative",
            sample.metric
        );
        let total = buckets.last().map(|b| b.count as u64).unwrap_or(0);
        match sample.metric.as_str() {
            "ringmq_request_latency_seconds" if sample.labels.get("api") == Some("produce") => {
                produce_count += total
            }
            "ringmq_fdatasync_latency_seconds" => fsyncs += total,
            "ringmq_group_commit_records" => commits += total,
            _ => {}
        }
    }
    assert!(produce_count >= 1, "produce latencies recorded");
    assert!(fsyncs >= 1, "fdatasync latencies recorded");
    assert_eq!(fsyncs, commits, "one group-commit size per fdatasync");
}
