//! ringctl: topic and consumer-group admin, produce, consume and log
//! verification for ringmq.
//!
//! The command spellings are a contract checked by outside scripts.
//! Exit codes: 0 ok, 1 runtime error, 2 usage error.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use ringmq_client::{Acks, Client, ClientConfig, Compression, StartFrom};
use ringmq_tools::consume::{ConsumeArgs, Format, GroupArgs};
use ringmq_tools::produce::ProduceArgs;
use ringmq_tools::{consume, group, log_verify, produce, topic};

/// Session timeout of `consume --group` unless `--session-timeout-ms`.
const DEFAULT_SESSION_TIMEOUT_MS: u32 = 10_000;

#[derive(Parser)]
#[command(
    name = "ringctl",
    version,
    about = "Command-line tools for the ringmq broker"
)]
struct Cli {
    /// Broker address (its public port).
    #[arg(
        long,
        global = true,
        env = "RINGMQ_BROKER",
        default_value = "127.0.0.1:7070",
        value_name = "HOST:PORT"
    )]
    broker: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create, list, describe, alter and delete topics.
    Topic {
        #[command(subcommand)]
        command: TopicCommand,
    },
    /// Produce one message per stdin line.
    Produce {
        topic: String,
        /// Split each line into key and value at the first SEP.
        #[arg(long, value_name = "SEP")]
        key_separator: Option<String>,
        /// Durability to wait for: none, leader or fsync.
        #[arg(long, default_value = "fsync", value_parser = parse_acks)]
        acks: Acks,
        /// Send every message to this partition (default: by key, else sticky).
        #[arg(long, value_name = "P")]
        partition: Option<u32>,
        /// Batch compression: none, gzip, snappy, lz4 or zstd.
        #[arg(long, default_value = "none", value_parser = parse_compression)]
        compression: Compression,
        /// Print `PARTITION OFFSET` per message, in input order.
        #[arg(long)]
        verbose: bool,
    },
    /// Print messages, one per line.
    Consume {
        topic: String,
        /// earliest, latest, an OFFSET, or @TIMESTAMP_MS. With --group:
        /// where partitions without a committed offset start, earliest
        /// (default) or latest.
        #[arg(long, value_parser = parse_start, required_unless_present = "group")]
        from: Option<StartFrom>,
        /// Exit after N messages.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// Only this partition (default: all).
        #[arg(long, value_name = "P", conflicts_with = "group")]
        partition: Option<u32>,
        /// Consume as a member of consumer group G: the group assigns the
        /// partitions, and what was printed is committed.
        #[arg(long, value_name = "G")]
        group: Option<String>,
        /// With --group: broadcasting mode, every member reads every
        /// partition and keeps its own offsets.
        #[arg(long, requires = "group")]
        broadcast: bool,
        /// With --group --broadcast: the stable name this consumer's offsets
        /// are kept under; reuse it to resume after a restart (default: a
        /// fresh one, so a restart begins at --from).
        #[arg(long, value_name = "ID", requires = "group")]
        instance_id: Option<String>,
        /// With --group: the broker drops this consumer after this long
        /// without a heartbeat [default: 10000].
        #[arg(long, value_name = "MS", requires = "group")]
        session_timeout_ms: Option<u32>,
        /// value: raw values; json: one object per line.
        #[arg(long, value_enum, default_value = "value")]
        format: Format,
        /// How long the broker may hold a fetch open.
        #[arg(long, default_value_t = 500, value_name = "MS")]
        max_wait_ms: u32,
        /// Exit 0 once no message arrived for this long.
        #[arg(long, value_name = "MS")]
        idle_timeout_ms: Option<u64>,
    },
    /// List, describe, reset and delete consumer groups.
    Group {
        #[command(subcommand)]
        command: GroupCommand,
    },
    /// Offline log inspection.
    Log {
        #[command(subcommand)]
        command: LogCommand,
    },
}

#[derive(Subcommand)]
enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        #[arg(long, value_name = "N")]
        partitions: u32,
        /// Topic config, repeatable.
        #[arg(long = "config", value_name = "KEY=VALUE", value_parser = topic::parse_config)]
        configs: Vec<(String, String)>,
    },
    /// List topics (one name per line).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show a topic's partitions, owning shards and configs.
    Describe {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Grow a topic's partition count. Existing partitions and their data
    /// stay; counts only grow. Keyed messages may map to other partitions
    /// afterwards (murmur2(key) % count).
    Alter {
        name: String,
        /// The new partition count, larger than the current one.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        partitions: u32,
    },
    /// Delete a topic and its data.
    Delete { name: String },
}

#[derive(Subcommand)]
enum GroupCommand {
    /// List consumer groups (one line each).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show a group's members, assignments, committed offsets and lag.
    Describe {
        group: String,
        #[arg(long)]
        json: bool,
    },
    /// Set a group's committed offsets of every partition of a topic. The
    /// broker refuses while the group has live members.
    ResetOffsets {
        group: String,
        #[arg(long)]
        topic: String,
        /// earliest, latest, an OFFSET (clamped into each partition's log)
        /// or @TIMESTAMP_MS.
        #[arg(long, value_parser = parse_start)]
        to: StartFrom,
        /// Broadcasting groups: whose offsets to set.
        #[arg(long, value_name = "ID")]
        instance_id: Option<String>,
    },
    /// Delete a group and its committed offsets. The broker refuses while
    /// the group has live members.
    Delete { group: String },
}

#[derive(Subcommand)]
enum LogCommand {
    /// Verify every batch of the partition logs under DIR.
    Verify {
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

fn parse_acks(s: &str) -> Result<Acks, String> {
    s.parse()
}

fn parse_compression(s: &str) -> Result<Compression, String> {
    s.parse()
        .map_err(|e: ringmq_wire::batch::compression::ParseCompressionError| e.to_string())
}

fn parse_start(s: &str) -> Result<StartFrom, String> {
    s.parse()
}

fn connect(broker: &str) -> Result<Client, i32> {
    let config = ClientConfig {
        client_id: "ringctl".to_string(),
        ..ClientConfig::new(broker)
    };
    Client::connect(config).map_err(ringmq_tools::fail)
}

fn run(cli: Cli) -> i32 {
    let client_config = ClientConfig {
        client_id: "ringctl".to_string(),
        ..ClientConfig::new(&cli.broker)
    };
    match cli.command {
        Command::Log {
            command: LogCommand::Verify { dir, json },
        } => log_verify::run(&dir, json),
        Command::Produce {
            topic,
            key_separator,
            acks,
            partition,
            compression,
            verbose,
        } => {
            let args = ProduceArgs {
                topic,
                key_separator,
                acks,
                partition,
                compression,
                verbose,
            };
            produce::run(client_config, &args)
        }
        Command::Consume {
            topic,
            from,
            count,
            partition,
            format,
            max_wait_ms,
            idle_timeout_ms,
            group,
            broadcast,
            instance_id,
            session_timeout_ms,
        } => {
            let client = match connect(&cli.broker) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let args = ConsumeArgs {
                topic,
                // clap requires --from unless --group is given.
                from: from.unwrap_or(StartFrom::Earliest),
                count,
                partition,
                format,
                max_wait_ms,
                idle_timeout_ms,
            };
            match group {
                None => consume::run(client, &args),
                Some(group) => {
                    let group_args = GroupArgs {
                        group,
                        broadcast,
                        instance_id,
                        session_timeout_ms: session_timeout_ms
                            .unwrap_or(DEFAULT_SESSION_TIMEOUT_MS),
                    };
                    consume::run_group(client, &args, &group_args)
                }
            }
        }
        Command::Group { command } => {
            let client = match connect(&cli.broker) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match command {
                GroupCommand::List { json } => group::list(&client, json),
                GroupCommand::Describe { group: name, json } => {
                    group::describe(&client, &name, json)
                }
                GroupCommand::ResetOffsets {
                    group: name,
                    topic,
                    to,
                    instance_id,
                } => group::reset_offsets(&client, &name, &topic, to, instance_id.as_deref()),
                GroupCommand::Delete { group: name } => group::delete(&client, &name),
            }
        }
        Command::Topic { command } => {
            let client = match connect(&cli.broker) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match command {
                TopicCommand::Create {
                    name,
                    partitions,
                    configs,
                } => topic::create(&client, &name, partitions, &configs),
                TopicCommand::List { json } => topic::list(&client, json),
                TopicCommand::Describe { name, json } => topic::describe(&client, &name, json),
                TopicCommand::Alter { name, partitions } => {
                    topic::alter(&client, &name, partitions)
                }
                TopicCommand::Delete { name } => topic::delete(&client, &name),
            }
        }
    }
}

fn main() {
    let cli = Cli::parse();
    std::process::exit(run(cli));
}
