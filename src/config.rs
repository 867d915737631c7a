//! Command line and environment: every flag has a `RINGMQ_*` variable, and
//! `ringmq serve` with no flags runs with embedded defaults (DESIGN.md 4).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "ringmq",
    version,
    about = "ringmq: a thread-per-core message broker on io_uring"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the broker.
    Serve(ServeArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Directory holding topics and their logs (created if missing).
    #[arg(long, env = "RINGMQ_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Public native-protocol address; every shard accepts on it (SO_REUSEPORT).
    #[arg(long, env = "RINGMQ_LISTEN", default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,

    /// HTTP address for /health and /metrics.
    #[arg(long, env = "RINGMQ_HTTP", default_value = "127.0.0.1:7071")]
    pub http: SocketAddr,

    /// First shard-aware port: shard N listens on BASE+N. Default: the
    /// listen port + 10 (7080, 7081, ...). 0 binds ephemeral ports (tests);
    /// Metadata always reports the real ones.
    #[arg(long, env = "RINGMQ_SHARD_PORT_BASE")]
    pub shard_port_base: Option<u16>,

    /// Host clients should use to reach the shard-aware ports. Default: the
    /// listen host, or 127.0.0.1 when listening on a wildcard address.
    #[arg(long, env = "RINGMQ_ADVERTISE_HOST")]
    pub advertise_host: Option<String>,

    /// Kafka protocol listener (DESIGN.md 3.7), shared by every shard like
    /// the native port; `off` disables it.
    #[arg(long, env = "RINGMQ_KAFKA", default_value = "127.0.0.1:9092")]
    pub kafka: KafkaListen,

    /// First per-shard Kafka port: shard N is Kafka broker (node id) N and
    /// listens on BASE+N. Default: the Kafka port + 10 (9102, 9103, ...).
    /// 0 binds ephemeral ports (tests); Metadata reports the real ones.
    #[arg(long, env = "RINGMQ_KAFKA_SHARD_PORT_BASE")]
    pub kafka_shard_port_base: Option<u16>,

    /// Host Kafka clients should use to reach the per-shard brokers.
    /// Default: --advertise-host, else the Kafka listen host (127.0.0.1
    /// for a wildcard address).
    #[arg(long, env = "RINGMQ_KAFKA_ADVERTISE_HOST")]
    pub kafka_advertise_host: Option<String>,

    /// Number of shards (executors). Default: one per CPU in --cpus, or one
    /// per online CPU.
    #[arg(long, env = "RINGMQ_SHARDS")]
    pub shards: Option<usize>,

    /// CPUs to pin shards to, e.g. "0-3,6". Shard i runs on the i-th CPU of
    /// the list (wrapping when there are more shards than CPUs).
    #[arg(long, env = "RINGMQ_CPUS")]
    pub cpus: Option<String>,

    /// Largest frame (envelope + batches) a client may send, in bytes.
    #[arg(long, env = "RINGMQ_MAX_FRAME_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_frame_bytes: usize,

    /// Requests a single connection may have in flight before the broker stops
    /// reading from it.
    #[arg(long, env = "RINGMQ_MAX_IN_FLIGHT", default_value_t = 256)]
    pub max_in_flight_per_connection: usize,

    /// Per-shard cache of recently appended batches, in MiB.
    #[arg(long, env = "RINGMQ_TAIL_CACHE_MB", default_value_t = 64)]
    pub tail_cache_mb: usize,

    /// Per-shard bound on sequential read-ahead for consumers reading from
    /// disk, in MiB (0 disables read-ahead). See docs/ARCHITECTURE.md.
    #[arg(long, env = "RINGMQ_READAHEAD_MB", default_value_t = 64)]
    pub readahead_mb: usize,

    /// Per-partition bound on sequential read-ahead, in MiB (0 disables).
    #[arg(long, env = "RINGMQ_READAHEAD_PARTITION_MB", default_value_t = 8)]
    pub readahead_partition_mb: usize,

    /// Size of one read-ahead read, in KiB.
    #[arg(long, env = "RINGMQ_READAHEAD_READ_KIB", default_value_t = 1024)]
    pub readahead_read_kib: usize,

    /// DMA buffer arena per shard, in MiB: O_DIRECT write and read buffers
    /// come from it (reused memory: no page faults, no malloc). glommio
    /// registers it with io_uring (3 rings per shard) when the memlock limit
    /// allows (root, or `ulimit -l` >= 3 x shards x this), which also saves
    /// the kernel pinning pages on every write; otherwise it is used
    /// unregistered. 64 MiB measured 12-18 % less broker CPU per GB than
    /// 2 MiB on W1 (BENCHMARKS.md).
    #[arg(long, env = "RINGMQ_IO_MEMORY_MB", default_value_t = 64)]
    pub io_memory_mb: usize,

    /// Busy-poll this long before an idle shard parks: trades CPU for
    /// cross-shard latency (a parked hop costs 50-170 us on VMs).
    #[arg(long, env = "RINGMQ_SPIN_BEFORE_PARK_US", default_value_t = 0)]
    pub spin_before_park_us: u64,

    /// Default retention by time for new topics (-1: forever).
    #[arg(long, env = "RINGMQ_RETENTION_MS", default_value_t = 7 * 24 * 3600 * 1000)]
    pub retention_ms: i64,

    /// Default retention by size per partition for new topics (-1: unlimited).
    #[arg(long, env = "RINGMQ_RETENTION_BYTES", default_value_t = -1)]
    pub retention_bytes: i64,

    /// Default segment size for new topics, in bytes.
    #[arg(long, env = "RINGMQ_SEGMENT_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub segment_bytes: u64,

    /// Default segment age before it rolls, for new topics.
    #[arg(long, env = "RINGMQ_SEGMENT_MS", default_value_t = 7 * 24 * 3600 * 1000)]
    pub segment_ms: i64,

    /// How often each shard applies retention.
    #[arg(long, env = "RINGMQ_RETENTION_CHECK_MS", default_value_t = 5_000)]
    pub retention_check_ms: u64,

    /// Partitions of the internal __consumer_offsets topic, fixed when it is
    /// first created (a group's coordinator is the shard owning
    /// murmur2(group) % this).
    #[arg(long, env = "RINGMQ_OFFSETS_PARTITIONS", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub offsets_partitions: u32,

    /// Segment size of __consumer_offsets; a partition is compacted once it
    /// grows past two segments and twice its live size.
    #[arg(long, env = "RINGMQ_OFFSETS_SEGMENT_BYTES", default_value_t = 16 << 20)]
    pub offsets_segment_bytes: u64,

    /// Shortest consumer session timeout a member may ask for.
    #[arg(
        long,
        env = "RINGMQ_GROUP_MIN_SESSION_TIMEOUT_MS",
        default_value_t = 1_000
    )]
    pub group_min_session_timeout_ms: u32,

    /// Longest consumer session timeout a member may ask for.
    #[arg(
        long,
        env = "RINGMQ_GROUP_MAX_SESSION_TIMEOUT_MS",
        default_value_t = 300_000
    )]
    pub group_max_session_timeout_ms: u32,

    /// How long SIGTERM waits for in-flight requests before closing logs.
    #[arg(long, env = "RINGMQ_SHUTDOWN_GRACE_MS", default_value_t = 5_000)]
    pub shutdown_grace_ms: u64,
}

/// Parses a CPU list such as "0-3,6,8-9".
/// `--kafka`: an address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KafkaListen {
    Off,
    On(SocketAddr),
}

impl std::str::FromStr for KafkaListen {
    type Err = String;
    fn from_str(text: &str) -> Result<KafkaListen, String> {
        if text.eq_ignore_ascii_case("off") {
            return Ok(KafkaListen::Off);
        }
        text.parse().map(KafkaListen::On).map_err(|_| {
            format!("--kafka {text:?} is neither HOST:PORT (e.g. 127.0.0.1:9092) nor \"off\"")
        })
    }
}

pub fn parse_cpu_list(text: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let parse = |s: &str| {
            s.trim()
                .parse::<usize>()
                .map_err(|_| format!("bad CPU number {s:?} in --cpus {text:?}"))
        };
        match part.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi) = (parse(lo)?, parse(hi)?);
                if lo > hi {
                    return Err(format!("bad CPU range {part:?} in --cpus {text:?}"));
                }
                cpus.extend(lo..=hi);
            }
            None => cpus.push(parse(part)?),
        }
    }
    if cpus.is_empty() {
        return Err(format!("--cpus {text:?} names no CPU"));
    }
    Ok(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_listen() {
        assert_eq!("off".parse::<KafkaListen>().unwrap(), KafkaListen::Off);
        assert_eq!(
            "127.0.0.1:9092".parse::<KafkaListen>().unwrap(),
            KafkaListen::On("127.0.0.1:9092".parse().unwrap())
        );
        assert!("nope".parse::<KafkaListen>().is_err());
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,6").unwrap(), vec![0, 1, 2, 3, 6]);
        assert_eq!(parse_cpu_list("1").unwrap(), vec![1]);
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("x").is_err());
        assert!(parse_cpu_list("").is_err());
    }
}
