//! `ringctl log verify DIR`: offline verification of partition logs.
//! Placeholder: the lead replaces this with the real implementation.

use std::path::Path;

/// Verifies the logs under `dir`; returns the process exit code.
pub fn run(dir: &Path, json: bool) -> i32 {
    let _ = json;
    eprintln!("ringctl log verify {}: not built yet", dir.display());
    crate::EXIT_RUNTIME_ERROR
}
