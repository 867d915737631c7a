//! `ringmq-bench`: the bundled load generator.
//!
//! * `produce`, `consume`, `e2e`: load against a running broker, with HDR
//!   latency histograms and a fixed-rate mode free of coordinated omission;
//! * `disk`, `net`: hardware baselines of the same machine (O_DIRECT
//!   through io_uring, loopback TCP), to read the broker's numbers against.
//!
//! Every subcommand prints a human-readable summary, or with `--json` one
//! JSON object (see `docs` in the crate README / `--help`).

mod disk;
mod load;
mod net;
mod pace;
mod report;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "ringmq-bench",
    version,
    about = "ringmq load generator (HDR latency, fixed-rate mode) and hardware baselines"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Produce load; latency is send → acknowledgement per message.
    Produce(load::LoadArgs),
    /// Read --messages from the earliest offset of a topic (fill it first
    /// with --produce-first).
    Consume(load::LoadArgs),
    /// Produce and consume at once; latency is send → receipt, from the
    /// send time stamped in each value.
    E2e(load::LoadArgs),
    /// Disk baseline: O_DIRECT sequential write/read, write+fdatasync
    /// bandwidth, fdatasync latency.
    Disk(disk::DiskArgs),
    /// Network baseline: loopback TCP bandwidth, one stream.
    Net(net::NetArgs),
}

fn main() {
    // Fix the shared time base before any thread starts.
    report::epoch();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Produce(a) => load::run(load::Mode::Produce, a),
        Command::Consume(a) => load::run(load::Mode::Consume, a),
        Command::E2e(a) => load::run(load::Mode::E2e, a),
        Command::Disk(a) => disk::run(a),
        Command::Net(a) => net::run(a),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("ringmq-bench: {e}");
            std::process::exit(1);
        }
    }
}
