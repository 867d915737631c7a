//! The admin HTTP endpoint on shard 0: `/health` and `/metrics`.
//!
//! A deliberately tiny HTTP/1.1 server (one request per connection, GET
//! only, 8 KiB request cap): this port serves probes and scrapers, not
//! traffic, and keeping it dependency-free keeps it on the shard's executor.

use std::fmt::Write as _;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use ringmq_shards::metrics::{
    HistogramSnapshot, SeriesSnapshot, ShardMetrics, GROUP_COMMIT_BUCKETS, LATENCY_BUCKETS_US,
};
use ringmq_shards::shard::Shard;
use ringmq_wire::envelope::ApiKey;

use super::shutdown::Shutdown;

const MAX_REQUEST_BYTES: usize = 8 * 1024;

/// (name, type, help, reader) of a per-shard series.
type ShardSeries = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ShardMetrics) -> i64,
);
/// (name, help, reader) of a per-partition gauge.
type PartitionSeries = (
    &'static str,
    &'static str,
    fn(&ringmq_shards::mesh::PartitionStat) -> i64,
);

pub struct HttpState {
    pub shard: Rc<Shard>,
    pub all_metrics: Arc<Vec<Arc<ShardMetrics>>>,
    pub ready_shards: Arc<std::sync::atomic::AtomicUsize>,
}

pub async fn serve(listener: TcpListener, state: Rc<HttpState>, shutdown: Shutdown) {
    loop {
        let accepted = shutdown.or_cancel(listener.accept()).await;
        match accepted {
            None => return,
            Some(Ok(stream)) => {
                let state = state.clone();
                glommio::spawn_local(async move {
                    if let Err(err) = handle(stream, &state).await {
                        tracing::debug!(error = %err, "http request failed");
                    }
                })
                .detach();
            }
            Some(Err(err)) => tracing::warn!(error = %err, "http accept failed"),
        }
    }
}

async fn handle(mut stream: TcpStream, state: &HttpState) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        request.extend_from_slice(&chunk[..n]);
        if request.len() > MAX_REQUEST_BYTES {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                "request too large\n",
            )
            .await;
        }
    }
    let line = String::from_utf8_lossy(&request);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/health") => {
            let ready = state.ready_shards.load(Ordering::SeqCst);
            let total = state.shard.config().shard_count;
            let status = if ready == total { "ok" } else { "starting" };
            let body = format!(
                "{{\"status\":\"{status}\",\"shards\":{total},\"ready_shards\":{ready}}}\n"
            );
            let code = if ready == total {
                "200 OK"
            } else {
                "503 Service Unavailable"
            };
            respond(&mut stream, code, "application/json", &body).await
        }
        ("GET", "/metrics") => {
            let body = render_metrics(state).await;
            respond(&mut stream, "200 OK", "text/plain; version=0.0.4", &body).await
        }
        ("GET", _) => {
            respond(
                &mut stream,
                "404 Not Found",
                "text/plain",
                "try /health or /metrics\n",
            )
            .await
        }
        _ => {
            respond(
                &mut stream,
                "405 Method Not Allowed",
                "text/plain",
                "GET only\n",
            )
            .await
        }
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.close().await
}

/// Prometheus text exposition (format 0.0.4).
async fn render_metrics(state: &HttpState) -> String {
    let mut out = String::with_capacity(8 * 1024);
    let shards = state.all_metrics.iter().enumerate();
    counter_header(
        &mut out,
        "ringmq_requests_total",
        "Requests received, by API.",
    );
    for (shard, m) in shards.clone() {
        for api in ApiKey::ALL {
            let _ = writeln!(
                out,
                "ringmq_requests_total{{shard=\"{shard}\",api=\"{}\"}} {}",
                api.name(),
                m.requests_for(api)
            );
        }
    }
    let per_shard: [ShardSeries; 8] = [
        (
            "ringmq_request_errors_total",
            "counter",
            "Requests refused before reaching a handler (malformed, unknown API).",
            |m| m.request_errors.load(Ordering::Relaxed) as i64,
        ),
        (
            "ringmq_produce_bytes_total",
            "counter",
            "Record-batch bytes accepted by produce.",
            |m| m.produce_bytes.load(Ordering::Relaxed) as i64,
        ),
        (
            "ringmq_produce_messages_total",
            "counter",
            "Records accepted by produce.",
            |m| m.produce_messages.load(Ordering::Relaxed) as i64,
        ),
        (
            "ringmq_fetch_bytes_total",
            "counter",
            "Record-batch bytes returned by fetch.",
            |m| m.fetch_bytes.load(Ordering::Relaxed) as i64,
        ),
        (
            "ringmq_connections_open",
            "gauge",
            "Open client connections.",
            |m| m.connections_open.load(Ordering::Relaxed),
        ),
        (
            "ringmq_connections_total",
            "counter",
            "Client connections accepted.",
            |m| m.connections_total.load(Ordering::Relaxed) as i64,
        ),
        (
            "ringmq_forwards_out_total",
            "counter",
            "Requests this shard forwarded to another shard.",
            |m| m.forwards_out.load(Ordering::Relaxed) as i64,
        ),
        (
            "ringmq_forwards_in_total",
            "counter",
            "Requests this shard served for another shard.",
            |m| m.forwards_in.load(Ordering::Relaxed) as i64,
        ),
    ];
    for (name, kind, help, read) in per_shard {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (shard, m) in shards.clone() {
            let _ = writeln!(out, "{name}{{shard=\"{shard}\"}} {}", read(m));
        }
    }
    render_histograms(&mut out, &state.shard.cluster_histograms().await);
    let stats = state.shard.cluster_partition_stats().await;
    let gauges: [PartitionSeries; 4] = [
        (
            "ringmq_partition_log_end_offset",
            "Next offset to be assigned.",
            |s| s.log_end_offset,
        ),
        (
            "ringmq_partition_high_watermark",
            "Offset up to which data is durable and visible.",
            |s| s.high_watermark,
        ),
        (
            "ringmq_partition_log_start_offset",
            "First offset still retained.",
            |s| s.log_start_offset,
        ),
        ("ringmq_partition_size_bytes", "Bytes on disk.", |s| {
            s.size_bytes as i64
        }),
    ];
    for (name, help, read) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for s in &stats {
            let _ = writeln!(
                out,
                "{name}{{topic=\"{}\",partition=\"{}\"}} {}",
                s.topic,
                s.partition,
                read(s)
            );
        }
    }
    render_group_lag(
        &mut out,
        &stats,
        &state.shard.cluster_committed_offsets().await,
    );
    out
}

/// Committed offset and lag (high watermark - committed offset, never
/// negative) per group and partition; broadcasting groups per instance.
fn render_group_lag(
    out: &mut String,
    stats: &[ringmq_shards::mesh::PartitionStat],
    committed: &[(String, ringmq_wire::group_api::CommittedOffset)],
) {
    let hw: std::collections::HashMap<(&str, u32), i64> = stats
        .iter()
        .map(|s| ((s.topic.as_str(), s.partition), s.high_watermark))
        .collect();
    let series: [(&str, &str); 2] = [
        (
            "ringmq_consumer_group_committed_offset",
            "Next offset the group will read, as last committed.",
        ),
        (
            "ringmq_consumer_group_lag",
            "Messages between the committed offset and the high watermark.",
        ),
    ];
    for (index, (name, help)) in series.into_iter().enumerate() {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (group, c) in committed {
            let value = match index {
                0 => c.offset,
                _ => match hw.get(&(c.topic.as_str(), c.partition)) {
                    Some(hw) => (hw - c.offset).max(0),
                    None => continue,
                },
            };
            let _ = writeln!(
                out,
                "{name}{{group=\"{}\",instance=\"{}\",topic=\"{}\",partition=\"{}\"}} {value}",
                escape_label(group),
                escape_label(&c.instance_id),
                c.topic,
                c.partition,
            );
        }
    }
}

/// Prometheus label-value escaping (group ids may hold quotes).
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn render_histograms(out: &mut String, shards: &[(usize, HistogramSnapshot)]) {
    let name = "ringmq_request_latency_seconds";
    let _ = writeln!(out, "# HELP {name} Request latency on the shard, from frame decoded to reply queued.\n# TYPE {name} histogram");
    for (shard, snapshot) in shards {
        for (api, series) in ApiKey::ALL.iter().zip(&snapshot.request_latency_us) {
            let labels = format!("shard=\"{shard}\",api=\"{}\"", api.name());
            write_histogram(out, name, &labels, series, &LATENCY_BUCKETS_US, 1e-6);
        }
    }
    let name = "ringmq_fdatasync_latency_seconds";
    let _ = writeln!(out, "# HELP {name} Latency of the fdatasyncs that make partition logs durable.\n# TYPE {name} histogram");
    for (shard, snapshot) in shards {
        let labels = format!("shard=\"{shard}\"");
        write_histogram(
            out,
            name,
            &labels,
            &snapshot.fdatasync_latency_us,
            &LATENCY_BUCKETS_US,
            1e-6,
        );
    }
    let name = "ringmq_group_commit_records";
    let _ = writeln!(out, "# HELP {name} Records made durable by one fdatasync (group-commit size).\n# TYPE {name} histogram");
    for (shard, snapshot) in shards {
        let labels = format!("shard=\"{shard}\"");
        write_histogram(
            out,
            name,
            &labels,
            &snapshot.group_commit_records,
            &GROUP_COMMIT_BUCKETS,
            1.0,
        );
    }
    for (name, help, read) in [
        (
            "ringmq_tail_cache_hits_total",
            "Fetch reads served from the tail cache.",
            (|s: &HistogramSnapshot| s.tail_cache_hits) as fn(&HistogramSnapshot) -> u64,
        ),
        (
            "ringmq_tail_cache_misses_total",
            "Fetch reads that went to disk.",
            |s: &HistogramSnapshot| s.tail_cache_misses,
        ),
        (
            "ringmq_readahead_hits_total",
            "Cold fetch reads that took bytes from sequential read-ahead.",
            |s: &HistogramSnapshot| s.readahead.hits,
        ),
        (
            "ringmq_readahead_hit_waits_total",
            "Read-ahead hits that waited for a read still in flight.",
            |s: &HistogramSnapshot| s.readahead.hit_waits,
        ),
        (
            "ringmq_readahead_misses_total",
            "Cold fetch reads that found nothing read ahead and read the file.",
            |s: &HistogramSnapshot| s.readahead.misses,
        ),
        (
            "ringmq_readahead_read_bytes_total",
            "Bytes read ahead of sequential consumers.",
            |s: &HistogramSnapshot| s.readahead.read_bytes,
        ),
        (
            "ringmq_readahead_discarded_bytes_total",
            "Bytes read ahead but dropped unserved (random access, invalidation, reader caught up).",
            |s: &HistogramSnapshot| s.readahead.discarded_bytes,
        ),
        (
            "ringmq_readahead_invalidations_total",
            "Read-ahead streams dropped because the log changed under them.",
            |s: &HistogramSnapshot| s.readahead.invalidations,
        ),
    ] {
        counter_header(out, name, help);
        for (shard, snapshot) in shards {
            let _ = writeln!(out, "{name}{{shard=\"{shard}\"}} {}", read(snapshot));
        }
    }
    let name = "ringmq_readahead_held_bytes";
    let _ = writeln!(
        out,
        "# HELP {name} Bytes read ahead and held now (in flight or ready).\n# TYPE {name} gauge"
    );
    for (shard, snapshot) in shards {
        let _ = writeln!(
            out,
            "{name}{{shard=\"{shard}\"}} {}",
            snapshot.readahead.held_bytes
        );
    }
}

/// One Prometheus histogram: cumulative `_bucket`s, `+Inf`, `_sum`, `_count`.
/// `scale` converts recorded units to the exposed unit (µs to seconds).
fn write_histogram(
    out: &mut String,
    name: &str,
    labels: &str,
    series: &SeriesSnapshot,
    bounds: &[u64],
    scale: f64,
) {
    for (bound, count) in bounds.iter().zip(&series.cumulative) {
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels},le=\"{}\"}} {count}",
            *bound as f64 * scale
        );
    }
    let _ = writeln!(
        out,
        "{name}_bucket{{{labels},le=\"+Inf\"}} {}",
        series.count
    );
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", series.sum as f64 * scale);
    let _ = writeln!(out, "{name}_count{{{labels}}} {}", series.count);
}

fn counter_header(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
}
