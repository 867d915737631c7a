//! `ringmq`: the broker binary.

mod config;
mod server;

use clap::Parser;
use config::{Cli, Command};

/// Keeps large buffers (receive buffers of ~1 MiB produce frames, O_DIRECT
/// read and write buffers of up to 16 MiB, fetch responses) in malloc's
/// arenas instead of a fresh `mmap` each: glibc serves allocations above
/// its (dynamic) mmap threshold from new anonymous memory every time, so
/// every cold read paid page faults, zeroing, memcg charging and O_DIRECT
/// pinning of fresh pages (a third of the broker's CPU while consuming from
/// disk), and on produce the first touch of each receive buffer by `recv`
/// faulted (≈12 % of broker samples in W1). A produce frame's buffer stays
/// referenced by the tail cache, so each frame needs a new one: what matters
/// is that memory freed by cache evictions is reused without faulting. Freed memory
/// stays with the process up to the trim threshold, so the broker's RSS
/// stays near its peak use (tail cache + read-ahead + requests in flight).
/// Set before any thread starts; glibc only (other libcs keep defaults).
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        /// The largest glibc accepts (half of a thread arena's heap).
        const MMAP_THRESHOLD_BYTES: libc::c_int = 32 << 20;
        const TRIM_THRESHOLD_BYTES: libc::c_int = 256 << 20;
        // SAFETY: mallopt only sets allocator parameters; no thread runs yet.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES);
        }
    }
}

fn main() {
    tune_malloc();
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
