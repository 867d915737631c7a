//! ringctl's logic, one module per command family; `bin/ringctl.rs` holds
//! only the clap definitions and dispatch.
//!
//! Exit codes: 0 ok, 1 runtime error, 2 usage error (clap's own).

pub mod consume;
pub mod group;
pub mod log_verify;
pub mod produce;
pub mod signals;
pub mod topic;
pub mod torture;

/// Exit code of a command that failed at run time.
pub const EXIT_RUNTIME_ERROR: i32 = 1;
/// Exit code of a command given bad arguments.
pub const EXIT_USAGE: i32 = 2;

/// Prints `ringctl: {error}` to stderr and returns the runtime-error code.
pub fn fail(error: impl std::fmt::Display) -> i32 {
    eprintln!("ringctl: {error}");
    EXIT_RUNTIME_ERROR
}

/// Whether an output error means the reader went away (`| head`): then we
/// stop quietly with success.
pub fn is_broken_pipe(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::BrokenPipe
}
