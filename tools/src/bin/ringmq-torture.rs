//! ringmq-torture: SIGKILL a real broker at random instants while producers
//! write self-describing messages, then read everything back and check it
//! against the history of every send.
//!
//! Exit codes: 0 nothing lost, duplicated, reordered, inconsistent or
//! unexpected; 1 a violation was found; 2 usage error; 3 the run could not
//! be carried out (broker would not start or restart, ...).

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use ringmq_client::Acks;
use ringmq_tools::torture::{self, broker, Config};

#[derive(Parser, Debug)]
#[command(
    name = "ringmq-torture",
    version,
    about = "Crash-consistency torture test of a ringmq broker: SIGKILL at random instants, restart, check every acknowledged message"
)]
struct Cli {
    /// The ringmq broker binary (default: `ringmq` next to this executable).
    #[arg(long, value_name = "PATH")]
    broker_bin: Option<PathBuf>,
    /// Work directory, wiped first if an earlier run made it: broker data in
    /// DIR/data, broker log in DIR/broker.log.
    #[arg(long, value_name = "DIR", default_value = "ringmq-torture-data")]
    data_dir: PathBuf,
    /// Broker shards.
    #[arg(long, default_value_t = 2)]
    shards: u16,
    /// Partitions of the test topic.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Producer threads, each with its own client producer.
    #[arg(long, default_value_t = 3)]
    producers: u64,
    /// Durability the producers wait for: fsync or leader.
    #[arg(long, default_value = "fsync", value_parser = parse_acks)]
    acks: Acks,
    /// Bytes per message value (at least 20: producer, sequence, checksum).
    #[arg(long, default_value_t = 64)]
    message_size: usize,
    /// The topic's segment.bytes (small: many segment rolls).
    #[arg(long, default_value_t = 65536)]
    segment_bytes: u64,
    /// SIGKILL/restart cycles.
    #[arg(long, default_value_t = 20)]
    cycles: u64,
    /// Shortest time the broker runs between restart and kill (ms).
    #[arg(long, default_value_t = 20)]
    min_ms: u64,
    /// Longest time the broker runs between restart and kill (ms).
    #[arg(long, default_value_t = 300)]
    max_ms: u64,
    /// Undisturbed producing after the last restart, before the read-back (ms).
    #[arg(long, default_value_t = 500)]
    final_ms: u64,
    /// Seed of every random choice (default: from the clock; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Also write every send event (invoke, ack, fail, unknown) and every
    /// kill/restart as JSON lines to FILE.
    #[arg(long, value_name = "FILE")]
    history: Option<PathBuf>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// TEST ONLY, negative control: halfway through, while the broker is
    /// down, cut the last --sabotage-bytes of valid data off one partition's
    /// active segment. The check must then report lost messages.
    #[arg(long)]
    sabotage: bool,
    #[arg(long, default_value_t = 16384, requires = "sabotage")]
    sabotage_bytes: u64,
    /// Lowest port to use (the broker needs 2 + shards free ports; default:
    /// above the kernel's ephemeral range).
    #[arg(long)]
    port_min: Option<u16>,
    /// Highest port to use.
    #[arg(long)]
    port_max: Option<u16>,
    /// Sends awaiting an answer per producer.
    #[arg(long, default_value_t = 32)]
    window: usize,
    /// Producer linger (ms).
    #[arg(long, default_value_t = 1)]
    linger_ms: u64,
    /// Longest wait for one produce answer (ms).
    #[arg(long, default_value_t = 10_000)]
    request_timeout_ms: u64,
    /// Longest wait for the broker to become healthy after a (re)start (s).
    #[arg(long, default_value_t = 60)]
    start_timeout_s: u64,
    /// Print a progress line to stderr every N cycles (0: never).
    #[arg(long, default_value_t = 0)]
    progress_every: u64,
    /// Extra arguments for `ringmq serve` (repeatable).
    #[arg(long = "broker-arg", value_name = "ARG", allow_hyphen_values = true)]
    broker_args: Vec<String>,
}

fn parse_acks(s: &str) -> Result<Acks, String> {
    match s {
        "fsync" => Ok(Acks::Fsync),
        "leader" => Ok(Acks::Leader),
        _ => Err(format!("{s:?}: expected fsync or leader")),
    }
}

fn main() {
    let cli = Cli::parse();
    let usage = |m: String| -> ! {
        eprintln!("ringmq-torture: {m}");
        std::process::exit(2);
    };
    if cli.partitions == 0 || cli.producers == 0 || cli.shards == 0 {
        usage("--partitions, --producers and --shards must be at least 1".into());
    }
    if cli.min_ms > cli.max_ms {
        usage("--min-ms must not exceed --max-ms".into());
    }
    if cli.sabotage && cli.cycles < 2 {
        usage("--sabotage needs at least 2 cycles".into());
    }
    let broker_bin = match cli.broker_bin {
        Some(p) => p,
        None => broker::sibling_binary("ringmq").unwrap_or_else(|| {
            usage("no ringmq binary next to this executable; pass --broker-bin".into())
        }),
    };
    let (default_min, default_max) = broker::default_port_range();
    let port_range = (
        cli.port_min.unwrap_or(default_min),
        cli.port_max.unwrap_or(default_max),
    );
    let seed = cli.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    eprintln!("ringmq-torture: seed {seed}");
    let config = Config {
        broker_bin,
        dir: cli.data_dir,
        shards: cli.shards,
        partitions: cli.partitions,
        producers: cli.producers,
        acks: cli.acks,
        message_size: cli.message_size.max(torture::message::HEADER_LEN),
        segment_bytes: cli.segment_bytes,
        cycles: cli.cycles,
        min_ms: cli.min_ms,
        max_ms: cli.max_ms,
        final_ms: cli.final_ms,
        seed,
        history: cli.history,
        sabotage: cli.sabotage,
        sabotage_bytes: cli.sabotage_bytes,
        port_range,
        window: cli.window,
        linger_ms: cli.linger_ms,
        request_timeout_ms: cli.request_timeout_ms,
        start_timeout: Duration::from_secs(cli.start_timeout_s),
        read_timeout: Duration::from_secs(120),
        broker_args: cli.broker_args,
        progress_every: cli.progress_every,
    };
    let report = match torture::run(&config) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ringmq-torture: {e}");
            std::process::exit(3);
        }
    };
    if cli.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report.to_json()).expect("JSON")
        );
        eprintln!("{}", report.human());
    } else {
        println!("{}", report.human());
    }
    let code = if report.error.is_some() {
        3
    } else if report.ok() {
        0
    } else {
        1
    };
    std::process::exit(code);
}
