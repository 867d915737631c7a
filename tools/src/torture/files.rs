//! Direct reads of a partition's data files (std::fs, batch parsing from
//! `ringmq_wire`): to tell a storage loss (the message is not in the files)
//! from a read-path loss (it is there, but fetch did not return it), and to
//! sabotage a log for the negative control.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use ringmq_shards::log::segment::{log_file_name, parse_file_name, LOG_SUFFIX};
use ringmq_wire::batch::{BatchSplitter, RecordIter};

use super::message;

/// The directory of one partition under the broker's data directory.
pub fn partition_dir(data_dir: &Path, topic: &str, partition: u32) -> PathBuf {
    data_dir
        .join("topics")
        .join(topic)
        .join(partition.to_string())
}

/// Base offsets of the segments in a partition directory, ascending.
pub fn segment_bases(dir: &Path) -> std::io::Result<Vec<i64>> {
    let mut bases: Vec<i64> = std::fs::read_dir(dir)?
        .flatten()
        .filter_map(|e| parse_file_name(e.file_name().to_str()?, LOG_SUFFIX))
        .collect();
    bases.sort_unstable();
    Ok(bases)
}

/// Bytes of valid batches at the start of `data` (where a torn tail, zero
/// padding or damage begins).
pub fn valid_prefix(data: &[u8]) -> usize {
    let mut end = 0;
    for batch in BatchSplitter::new(data) {
        match batch {
            Ok(b) => end = b.position + b.size,
            Err(_) => break,
        }
    }
    end
}

/// What a scan of a partition's files found.
#[derive(Debug, Default)]
pub struct FileScan {
    /// `(producer, seq)` of every decodable message in a valid batch.
    pub messages: HashSet<(u64, u64)>,
    pub segments: u64,
    pub batches: u64,
    pub records: u64,
    /// Bytes after the last valid batch of each segment, summed.
    pub trailing_bytes: u64,
}

/// Reads every segment of a partition with plain file I/O and collects the
/// messages in its valid batches.
pub fn scan_partition(dir: &Path) -> std::io::Result<FileScan> {
    let mut scan = FileScan::default();
    for base in segment_bases(dir)? {
        let data = Bytes::from(std::fs::read(dir.join(log_file_name(base)))?);
        scan.segments += 1;
        let mut end = 0;
        for batch in BatchSplitter::new(&data) {
            let Ok(batch) = batch else { break };
            end = batch.position + batch.size;
            scan.batches += 1;
            let Ok(records) = RecordIter::new(data.slice(batch.position..end)) else {
                continue;
            };
            for record in records.flatten() {
                scan.records += 1;
                if let Some(Ok(id)) = record.value.as_deref().map(message::decode) {
                    scan.messages.insert(id);
                }
            }
        }
        scan.trailing_bytes += (data.len() - end) as u64;
    }
    Ok(scan)
}

/// What `--sabotage` did.
#[derive(Debug, Clone)]
pub struct Sabotage {
    pub cycle: u64,
    pub partition: u32,
    pub segment: PathBuf,
    pub data_bytes_before: u64,
    pub file_bytes_before: u64,
    pub bytes_after: u64,
}

/// Cuts the last `cut` bytes of valid data off the active segment of one of
/// `partitions` (chosen by `pick` among those holding data). Run only
/// while the broker is down.
pub fn sabotage(
    data_dir: &Path,
    topic: &str,
    partitions: u32,
    cut: u64,
    pick: u64,
    cycle: u64,
) -> Result<Sabotage, String> {
    let mut candidates = Vec::new();
    for partition in 0..partitions {
        let dir = partition_dir(data_dir, topic, partition);
        let bases = segment_bases(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let Some(&base) = bases.last() else { continue };
        let path = dir.join(log_file_name(base));
        let data = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let valid = valid_prefix(&data) as u64;
        if valid > 0 {
            candidates.push((partition, path, valid, data.len() as u64));
        }
    }
    if candidates.is_empty() {
        return Err("no partition has data in its active segment to sabotage".into());
    }
    let (partition, path, valid, size) = candidates.swap_remove((pick as usize) % candidates.len());
    let after = valid.saturating_sub(cut);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    file.set_len(after)
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("truncate {}: {e}", path.display()))?;
    Ok(Sabotage {
        cycle,
        partition,
        segment: path,
        data_bytes_before: valid,
        file_bytes_before: size,
        bytes_after: after,
    })
}
