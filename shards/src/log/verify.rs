//! Offline verification of partition directories (`ringctl log verify DIR`).
//!
//! Uses `std::fs`: this runs in a command-line tool, never on a shard. For
//! every partition directory found (the given directory itself, or its
//! subdirectories up to two levels down), checks every batch (length,
//! magic, CRC32C, offsets contiguous within and across segments), that index
//! and time-index entries point at batch boundaries with the right offsets
//! and monotonic timestamps, and the durable checkpoint.
//!
//! Zeros after the last batch of the last segment are not a problem: the
//! broker preallocates the active segment ahead of its writes (and pads
//! writes to a block), so a running or crashed broker's active segment ends
//! that way. They are counted in `zero_tail_bytes`. In a sealed segment
//! (trimmed when sealed) they are a warning: a crash between the roll and
//! the trim; any batch missing there shows up as an offset gap.

use super::{
    checkpoint::{Checkpoint, CHECKPOINT_FILE},
    index::OffsetIndex,
    segment::{index_file_name, parse_file_name, timeindex_file_name, LOG_SUFFIX},
    timeindex::TimeIndex,
};
use ringmq_wire::batch::header::{peek_total_size, validate_batch, HEADER_SIZE, LOG_OVERHEAD};
use std::{
    collections::HashMap,
    fmt,
    path::{Path, PathBuf},
};

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Repaired automatically at the next open (torn tail, missing index).
    Warning,
    /// Data is damaged or inconsistent.
    Error,
}

/// One finding, with the file and byte position it concerns.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    pub severity: Severity,
    pub file: PathBuf,
    pub position: Option<u64>,
    pub message: String,
}

/// What was found in one partition directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PartitionReport {
    pub dir: PathBuf,
    pub segments: u64,
    pub batches: u64,
    pub records: u64,
    pub bytes: u64,
    /// Zeros after the last batch of the last segment (preallocated space,
    /// block padding): not written yet, not damage.
    pub zero_tail_bytes: u64,
    pub first_offset: Option<i64>,
    pub next_offset: Option<i64>,
    pub checkpoint: Option<Checkpoint>,
    pub problems: Vec<Problem>,
}

/// The result of [`verify_dir`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    pub root: PathBuf,
    pub partitions: Vec<PartitionReport>,
}

impl VerifyReport {
    pub fn errors(&self) -> usize {
        self.count(Severity::Error)
    }

    pub fn warnings(&self) -> usize {
        self.count(Severity::Warning)
    }

    fn count(&self, severity: Severity) -> usize {
        self.partitions
            .iter()
            .flat_map(|p| &p.problems)
            .filter(|p| p.severity == severity)
            .count()
    }

    /// No errors (warnings allowed).
    pub fn is_ok(&self) -> bool {
        self.errors() == 0
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("report serializes")
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.partitions {
            let range = match (p.first_offset, p.next_offset) {
                (Some(a), Some(b)) => format!("offsets [{a}, {b})"),
                _ => "empty".to_string(),
            };
            writeln!(
                f,
                "{}: {} segments, {} batches, {} records, {} bytes, {}{}",
                p.dir.display(),
                p.segments,
                p.batches,
                p.records,
                p.bytes,
                range,
                if p.zero_tail_bytes > 0 {
                    format!(" (+{} preallocated bytes)", p.zero_tail_bytes)
                } else {
                    String::new()
                }
            )?;
            for pr in &p.problems {
                let sev = match pr.severity {
                    Severity::Warning => "warning",
                    Severity::Error => "ERROR",
                };
                match pr.position {
                    Some(pos) => writeln!(
                        f,
                        "  {sev}: {} @ byte {pos}: {}",
                        pr.file.display(),
                        pr.message
                    )?,
                    None => writeln!(f, "  {sev}: {}: {}", pr.file.display(), pr.message)?,
                }
            }
        }
        write!(
            f,
            "{} partitions, {} errors, {} warnings: {}",
            self.partitions.len(),
            self.errors(),
            self.warnings(),
            if self.is_ok() { "OK" } else { "DAMAGED" }
        )
    }
}

fn is_partition_dir(path: &Path) -> bool {
    std::fs::read_dir(path).is_ok_and(|rd| {
        rd.flatten().any(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| parse_file_name(n, LOG_SUFFIX).is_some())
        })
    })
}

fn find_partitions(path: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    if is_partition_dir(path) {
        out.push(path.to_path_buf());
        return;
    }
    if depth == 0 {
        return;
    }
    let Ok(rd) = std::fs::read_dir(path) else {
        return;
    };
    let mut dirs: Vec<PathBuf> = rd
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    dirs.sort();
    for d in dirs {
        find_partitions(&d, depth - 1, out);
    }
}

/// Verifies a data directory (every partition directory below it, up to
/// three levels) or a single partition directory.
pub fn verify_dir(path: impl AsRef<Path>) -> VerifyReport {
    let root = path.as_ref().to_path_buf();
    let mut dirs = Vec::new();
    find_partitions(&root, 3, &mut dirs);
    VerifyReport {
        partitions: dirs.iter().map(|d| verify_partition(d)).collect(),
        root,
    }
}

/// Verifies one partition directory.
pub fn verify_partition(dir: &Path) -> PartitionReport {
    let mut rep = PartitionReport {
        dir: dir.to_path_buf(),
        ..PartitionReport::default()
    };
    let mut bases: Vec<i64> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .flatten()
            .filter_map(|e| parse_file_name(e.file_name().to_str()?, LOG_SUFFIX))
            .collect(),
        Err(e) => {
            rep.problems.push(Problem {
                severity: Severity::Error,
                file: dir.to_path_buf(),
                position: None,
                message: format!("cannot list directory: {e}"),
            });
            return rep;
        }
    };
    bases.sort_unstable();
    let mut expected: Option<i64> = None;
    for (i, &base) in bases.iter().enumerate() {
        let is_last = i + 1 == bases.len();
        let log_path = dir.join(super::segment::log_file_name(base));
        if let Some(exp) = expected {
            if exp != base {
                rep.problems.push(Problem {
                    severity: Severity::Error,
                    file: log_path.clone(),
                    position: Some(0),
                    message: format!(
                        "offset gap: previous segment ends at {exp}, this one starts at {base}"
                    ),
                });
            }
        }
        let next = verify_segment(dir, base, is_last, &mut rep);
        rep.first_offset.get_or_insert(base);
        rep.next_offset = Some(next);
        expected = Some(next);
        rep.segments += 1;
    }
    let cp_path = dir.join(CHECKPOINT_FILE);
    if let Ok(bytes) = std::fs::read(&cp_path) {
        match Checkpoint::decode(&bytes) {
            Ok(cp) => {
                rep.checkpoint = Some(cp);
                if let Some(next) = rep.next_offset {
                    if cp.durable_offset > next {
                        rep.problems.push(Problem {
                            severity: Severity::Error,
                            file: cp_path,
                            position: None,
                            message: format!(
                                "checkpoint says offsets below {} were durable but the log ends at {next}: acknowledged data is missing",
                                cp.durable_offset
                            ),
                        });
                    }
                }
            }
            Err(reason) => rep.problems.push(Problem {
                severity: Severity::Warning,
                file: cp_path,
                position: None,
                message: format!("damaged checkpoint ({reason}); recovery ignores it"),
            }),
        }
    }
    rep
}

/// Verifies one segment and its indexes; returns the offset after its last
/// good batch.
fn verify_segment(dir: &Path, base: i64, is_last: bool, rep: &mut PartitionReport) -> i64 {
    let log_path = dir.join(super::segment::log_file_name(base));
    let data = match std::fs::read(&log_path) {
        Ok(d) => d,
        Err(e) => {
            rep.problems.push(Problem {
                severity: Severity::Error,
                file: log_path,
                position: None,
                message: format!("cannot read: {e}"),
            });
            return base;
        }
    };
    // position -> (base offset, running max timestamp up to that batch)
    let mut boundaries: HashMap<u32, (i64, i64)> = HashMap::new();
    let mut max_by_offset: Vec<(i64, i64)> = Vec::new();
    let mut pos = 0usize;
    let mut next = base;
    let mut running_max = -1i64;
    // Where the batches end (the file's length unless something follows).
    let mut logical_len = data.len();
    while pos < data.len() {
        let rest = &data[pos..];
        let size = peek_total_size(rest).unwrap_or(0);
        let problem = if rest.len() < LOG_OVERHEAD || size < HEADER_SIZE || size > rest.len() {
            // (All zeros from here is handled below: the end of the log.)
            Some(if size > rest.len() {
                format!("batch of {size} bytes truncated: {} bytes left", rest.len())
            } else {
                format!("no batch can start here ({} bytes left)", rest.len())
            })
        } else {
            match validate_batch(&rest[..size]) {
                Err(e) => Some(e.to_string()),
                Ok(h) if h.base_offset != next => Some(format!(
                    "batch base offset {} where {next} was expected",
                    h.base_offset
                )),
                Ok(h) => {
                    running_max = running_max.max(h.max_timestamp);
                    boundaries.insert(pos as u32, (h.base_offset, running_max));
                    max_by_offset.push((h.base_offset, running_max));
                    rep.batches += 1;
                    rep.records += h.record_count.max(0) as u64;
                    rep.bytes += size as u64;
                    next = h.next_offset();
                    pos += size;
                    None
                }
            }
        };
        if let Some(message) = problem {
            if data[pos..].iter().all(|&b| b == 0) {
                logical_len = pos;
                if is_last {
                    rep.zero_tail_bytes += (data.len() - pos) as u64;
                } else {
                    rep.problems.push(Problem {
                        severity: Severity::Warning,
                        file: log_path.clone(),
                        position: Some(pos as u64),
                        message: format!(
                            "{} bytes of zeros after the last batch of a sealed segment (preallocated space a crash left untrimmed; trimmed at the next open)",
                            data.len() - pos
                        ),
                    });
                }
                break;
            }
            rep.problems.push(Problem {
                // An unclean shutdown leaves a torn batch at the end of the
                // last segment; recovery cuts it off.
                severity: if is_last && pos + size >= data.len() {
                    Severity::Warning
                } else {
                    Severity::Error
                },
                file: log_path.clone(),
                position: Some(pos as u64),
                message: if is_last {
                    format!("{message} (torn tail unless below the checkpoint)")
                } else {
                    message
                },
            });
            break;
        }
    }
    let index_path = dir.join(index_file_name(base));
    match std::fs::read(&index_path) {
        Err(_) => {
            if !is_last {
                rep.problems.push(Problem {
                    severity: Severity::Warning,
                    file: index_path,
                    position: None,
                    message: "missing index (rebuilt at the next open)".into(),
                });
            }
        }
        Ok(bytes) => match OffsetIndex::decode(&bytes) {
            Err(e) => rep.problems.push(Problem {
                severity: Severity::Warning,
                file: index_path,
                position: None,
                message: format!("damaged index ({e}); rebuilt at the next open"),
            }),
            Ok((index, trailer)) => {
                for (i, e) in index.entries().iter().enumerate() {
                    let at = (i * super::index::INDEX_ENTRY_SIZE) as u64;
                    match boundaries.get(&e.position) {
                        Some((off, _)) if *off == base + e.relative_offset as i64 => {}
                        Some((off, _)) => rep.problems.push(Problem {
                            severity: Severity::Error,
                            file: index_path.clone(),
                            position: Some(at),
                            message: format!(
                                "entry {i} says offset {} at byte {} but the batch there starts at {off}",
                                base + e.relative_offset as i64,
                                e.position
                            ),
                        }),
                        None => rep.problems.push(Problem {
                            severity: Severity::Error,
                            file: index_path.clone(),
                            position: Some(at),
                            message: format!("entry {i} points at byte {}, not a batch boundary", e.position),
                        }),
                    }
                }
                if !is_last
                    && (trailer.segment_bytes != logical_len as u64 || trailer.next_offset != next)
                {
                    rep.problems.push(Problem {
                        severity: Severity::Warning,
                        file: index_path.clone(),
                        position: None,
                        message: format!(
                            "index describes {} bytes ending at offset {}, the log has {} bytes ending at {next}; rebuilt at the next open",
                            trailer.segment_bytes,
                            trailer.next_offset,
                            logical_len
                        ),
                    });
                }
            }
        },
    }
    let time_path = dir.join(timeindex_file_name(base));
    if let Ok(bytes) = std::fs::read(&time_path) {
        match TimeIndex::decode(&bytes) {
            Err(e) => rep.problems.push(Problem {
                severity: Severity::Warning,
                file: time_path,
                position: None,
                message: format!("damaged time index ({e}); rebuilt at the next open"),
            }),
            Ok((time, _)) => {
                for (i, e) in time.entries().iter().enumerate() {
                    let at = (i * super::timeindex::TIMEINDEX_ENTRY_SIZE) as u64;
                    let offset = base + e.relative_offset as i64;
                    match max_by_offset.binary_search_by_key(&offset, |(o, _)| *o) {
                        Ok(j) if max_by_offset[j].1 == e.timestamp => {}
                        Ok(j) => rep.problems.push(Problem {
                            severity: Severity::Error,
                            file: time_path.clone(),
                            position: Some(at),
                            message: format!(
                                "entry {i} says max timestamp {} at offset {offset}, the log says {}",
                                e.timestamp, max_by_offset[j].1
                            ),
                        }),
                        Err(_) => rep.problems.push(Problem {
                            severity: Severity::Error,
                            file: time_path.clone(),
                            position: Some(at),
                            message: format!("entry {i} names offset {offset}, which is not a batch start"),
                        }),
                    }
                }
            }
        }
    }
    next
}
