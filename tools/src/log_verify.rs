//! `ringctl log verify DIR`: offline verification of a data directory (or a
//! single partition directory): every batch's length, magic and CRC32C,
//! offsets contiguous within and across segments, index and time-index
//! entries pointing at real batch boundaries, the durable checkpoint.
//! Reads files with std::fs; run it on a stopped broker's data or a copy.

use std::path::Path;

use ringmq_shards::log::verify::verify_dir;

/// Verifies the logs under `dir`; returns the process exit code (0 when no
/// errors were found, warnings allowed).
pub fn run(dir: &Path, json: bool) -> i32 {
    if !dir.is_dir() {
        eprintln!("ringctl log verify: {} is not a directory", dir.display());
        return crate::EXIT_RUNTIME_ERROR;
    }
    let report = verify_dir(dir);
    if report.partitions.is_empty() {
        eprintln!(
            "ringctl log verify: no partition directories (with .log segments) under {}; pass the broker's --data-dir or one partition directory",
            dir.display()
        );
        return crate::EXIT_RUNTIME_ERROR;
    }
    if json {
        println!("{}", report.to_json());
    } else {
        println!("{report}");
    }
    if report.is_ok() {
        0
    } else {
        crate::EXIT_RUNTIME_ERROR
    }
}
