//! `ringmq`: the broker binary.

mod config;
mod server;

use clap::Parser;
use config::{Cli, Command};

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RINGMQ_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => server::run(args),
    };
    if let Err(err) = result {
        eprintln!("ringmq: {err}");
        std::process::exit(1);
    }
}
