//! Reading every partition back and checking it against the history.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use ringmq_client::{Client, Consumer, ConsumerConfig, StartFrom};
use ringmq_wire::envelope::{LIST_OFFSETS_EARLIEST, LIST_OFFSETS_LATEST};

use super::files;
use super::history::{Outcome, ProducerHistory};
use super::message;

/// One record read back: its offset and `(producer, seq)`, or why it is
/// not one of ours.
#[derive(Debug, Clone)]
pub struct ReadRecord {
    pub offset: i64,
    pub id: Result<(u64, u64), String>,
}

/// Everything read from one partition.
#[derive(Debug, Clone, Default)]
pub struct PartitionRead {
    pub partition: u32,
    pub earliest: i64,
    pub end: i64,
    /// In offset order.
    pub records: Vec<ReadRecord>,
    /// Why the partition could not be read completely.
    pub error: Option<String>,
}

/// Reads one partition from its earliest offset up to its end (as
/// ListOffsets reports it when the read starts).
pub fn read_partition(
    client: &Client,
    topic: &str,
    partition: u32,
    timeout: Duration,
) -> PartitionRead {
    let mut read = PartitionRead {
        partition,
        ..PartitionRead::default()
    };
    // One query per call: an answer carries one result per partition.
    let mut bounds = [0i64; 2];
    for (timestamp, slot) in [LIST_OFFSETS_EARLIEST, LIST_OFFSETS_LATEST]
        .into_iter()
        .zip(bounds.iter_mut())
    {
        match client.list_offsets(topic, &[(partition, timestamp)]) {
            Ok(r) if r.len() == 1 => *slot = r[0].offset,
            Ok(r) => {
                read.error = Some(format!("list offsets returned {} results", r.len()));
                return read;
            }
            Err(e) => {
                read.error = Some(format!("list offsets: {e}"));
                return read;
            }
        }
    }
    [read.earliest, read.end] = bounds;
    if read.end <= read.earliest {
        return read;
    }
    let mut consumer = Consumer::new(
        client.clone(),
        ConsumerConfig {
            max_wait_ms: 100,
            ..ConsumerConfig::default()
        },
    );
    if let Err(e) = consumer.assign(topic, Some(vec![partition]), StartFrom::Earliest) {
        read.error = Some(format!("assign: {e}"));
        return read;
    }
    let deadline = Instant::now() + timeout;
    loop {
        let position = consumer.position(topic, partition).unwrap_or(0);
        if position >= read.end {
            break;
        }
        if Instant::now() > deadline {
            read.error = Some(format!(
                "read stopped at offset {position} of {} after {timeout:?}",
                read.end
            ));
            break;
        }
        match consumer.poll(Duration::from_millis(500)) {
            Ok(records) => {
                for r in records {
                    let id = match r.value.as_deref() {
                        Some(v) => message::decode(v),
                        None => Err("null value".into()),
                    };
                    read.records.push(ReadRecord {
                        offset: r.offset,
                        id,
                    });
                }
            }
            Err(e) => {
                read.error = Some(format!("fetch at offset {position}: {e}"));
                break;
            }
        }
    }
    read
}

/// A message acknowledged but not read back.
#[derive(Debug, Clone)]
pub struct Loss {
    pub producer: u64,
    pub seq: u64,
    pub partition: u32,
    pub acked_offset: i64,
    /// Whether the message is in the partition's data files (`None`: the
    /// files could not be scanned).
    pub in_files: Option<bool>,
}

/// What the checker found. The first five counts must be zero.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    /// Acknowledged, not read back.
    pub lost: u64,
    /// ... and not in the data files either.
    pub lost_storage: u64,
    /// ... but in the data files: fetch did not return it.
    pub lost_read_path: u64,
    /// ... and the files could not be scanned.
    pub lost_unclassified: u64,
    /// Extra copies: a message read at more than one offset.
    pub duplicated: u64,
    /// Read after a later message of the same producer in the same partition.
    pub reordered: u64,
    /// An acknowledgement named an offset that holds something else, or the
    /// message was read at another offset than acknowledged.
    pub inconsistent: u64,
    /// Read but never sent, sent to another partition, or failing its checksum.
    pub unexpected: u64,
    /// Informational: unacknowledged messages found in the log.
    pub failed_survived: u64,
    pub unknown_survived: u64,
    pub acked_survived: u64,
    pub records_read: u64,
    /// Offsets missing between records read (holes in the log).
    pub offset_gaps: u64,
    pub unreadable_partitions: Vec<(u32, String)>,
    pub losses: Vec<Loss>,
    /// Human-readable descriptions of the first findings of each kind.
    pub examples: Vec<String>,
}

impl CheckReport {
    pub fn violations(&self) -> u64 {
        self.lost + self.duplicated + self.reordered + self.inconsistent + self.unexpected
    }

    fn example(&mut self, kind: &str, counts: &mut HashMap<String, usize>, text: String) {
        let n = counts.entry(kind.to_string()).or_default();
        if *n < 10 {
            *n += 1;
            self.examples.push(format!("{kind}: {text}"));
        }
    }
}

const NOWHERE: (u32, i64) = (u32::MAX, -1);

/// Checks what was read against what was sent; for every loss, scans the
/// partition's files under `data_dir` (the broker should be stopped).
pub fn check(
    histories: &[ProducerHistory],
    reads: &[PartitionRead],
    data_dir: &Path,
    topic: &str,
) -> CheckReport {
    let mut report = CheckReport::default();
    let mut shown = HashMap::new();
    // Where each message was first read: first[producer][seq].
    let mut first: Vec<Vec<(u32, i64)>> = histories
        .iter()
        .map(|h| vec![NOWHERE; h.entries.len()])
        .collect();
    let by_id: HashMap<u64, usize> = histories
        .iter()
        .enumerate()
        .map(|(i, h)| (h.producer, i))
        .collect();
    for read in reads {
        if let Some(error) = &read.error {
            report
                .unreadable_partitions
                .push((read.partition, error.clone()));
        }
        let mut last_seq: HashMap<usize, u64> = HashMap::new();
        let mut expected_offset = read.earliest;
        for record in &read.records {
            report.records_read += 1;
            if record.offset > expected_offset {
                report.offset_gaps += (record.offset - expected_offset) as u64;
                let text = format!(
                    "partition {} offsets {expected_offset}..{} missing",
                    read.partition, record.offset
                );
                report.example("gap", &mut shown, text);
            }
            expected_offset = expected_offset.max(record.offset + 1);
            let (producer, seq) = match &record.id {
                Ok(id) => *id,
                Err(reason) => {
                    report.unexpected += 1;
                    let text = format!(
                        "partition {} offset {}: {reason}",
                        read.partition, record.offset
                    );
                    report.example("unexpected", &mut shown, text);
                    continue;
                }
            };
            let Some(&pi) = by_id.get(&producer) else {
                report.unexpected += 1;
                let text = format!(
                    "partition {} offset {}: unknown producer {producer} (seq {seq})",
                    read.partition, record.offset
                );
                report.example("unexpected", &mut shown, text);
                continue;
            };
            let Some(entry) = histories[pi].entries.get(seq as usize) else {
                report.unexpected += 1;
                let text = format!(
                    "partition {} offset {}: producer {producer} never sent seq {seq}",
                    read.partition, record.offset
                );
                report.example("unexpected", &mut shown, text);
                continue;
            };
            if entry.partition != read.partition {
                report.unexpected += 1;
                let text = format!(
                    "partition {} offset {}: producer {producer} seq {seq} was sent to partition {}",
                    read.partition, record.offset, entry.partition
                );
                report.example("unexpected", &mut shown, text);
                continue;
            }
            let slot = &mut first[pi][seq as usize];
            if *slot != NOWHERE {
                report.duplicated += 1;
                let text = format!(
                    "producer {producer} seq {seq} in partition {} at offsets {} and {}",
                    read.partition, slot.1, record.offset
                );
                report.example("duplicated", &mut shown, text);
                continue;
            }
            *slot = (read.partition, record.offset);
            let last = last_seq.entry(pi).or_insert(seq);
            if seq < *last {
                report.reordered += 1;
                let text = format!(
                    "producer {producer} partition {}: seq {seq} at offset {} after seq {}",
                    read.partition, record.offset, *last
                );
                report.example("reordered", &mut shown, text);
            } else {
                *last = seq;
            }
        }
    }
    let read_of = |partition: u32| reads.iter().find(|r| r.partition == partition);
    let at_offset = |partition: u32, offset: i64| -> Option<&ReadRecord> {
        let read = read_of(partition)?;
        let i = read
            .records
            .binary_search_by_key(&offset, |r| r.offset)
            .ok()?;
        Some(&read.records[i])
    };
    for (pi, history) in histories.iter().enumerate() {
        for (seq, entry) in history.entries.iter().enumerate() {
            let found = first[pi][seq];
            let survived = found != NOWHERE;
            match entry.outcome {
                Outcome::Acked(offset) => {
                    if survived {
                        report.acked_survived += 1;
                        if found != (entry.partition, offset) {
                            report.inconsistent += 1;
                            let text = format!(
                                "producer {} seq {seq} acknowledged at {}/{offset}, read at {}/{}",
                                history.producer, entry.partition, found.0, found.1
                            );
                            report.example("inconsistent", &mut shown, text);
                        }
                        continue;
                    }
                    report.lost += 1;
                    report.losses.push(Loss {
                        producer: history.producer,
                        seq: seq as u64,
                        partition: entry.partition,
                        acked_offset: offset,
                        in_files: None,
                    });
                    if let Some(other) = at_offset(entry.partition, offset) {
                        report.inconsistent += 1;
                        let text = format!(
                            "offset {}/{offset}: acknowledged for producer {} seq {seq}, read as {:?}",
                            entry.partition, history.producer, other.id
                        );
                        report.example("inconsistent", &mut shown, text);
                    }
                }
                Outcome::Failed if survived => report.failed_survived += 1,
                Outcome::Unknown | Outcome::Invoked if survived => report.unknown_survived += 1,
                _ => {}
            }
        }
    }
    classify_losses(&mut report, data_dir, topic, &mut shown);
    report
}

fn classify_losses(
    report: &mut CheckReport,
    data_dir: &Path,
    topic: &str,
    shown: &mut HashMap<String, usize>,
) {
    let mut partitions: BTreeMap<u32, Option<files::FileScan>> = BTreeMap::new();
    for loss in &report.losses {
        partitions.entry(loss.partition).or_insert(None);
    }
    let mut scan_errors = Vec::new();
    for (partition, scan) in partitions.iter_mut() {
        let dir = files::partition_dir(data_dir, topic, *partition);
        match files::scan_partition(&dir) {
            Ok(s) => *scan = Some(s),
            Err(e) => scan_errors.push(format!("cannot scan {}: {e}", dir.display())),
        }
    }
    let mut losses = std::mem::take(&mut report.losses);
    let mut texts = Vec::new();
    for loss in &mut losses {
        let where_ = match &partitions[&loss.partition] {
            Some(scan) => {
                let present = scan.messages.contains(&(loss.producer, loss.seq));
                loss.in_files = Some(present);
                if present {
                    report.lost_read_path += 1;
                    "read-path loss (in the data files)"
                } else {
                    report.lost_storage += 1;
                    "storage loss (not in the data files)"
                }
            }
            None => {
                report.lost_unclassified += 1;
                "unclassified (files not scanned)"
            }
        };
        texts.push(format!(
            "producer {} seq {} acknowledged at {}/{}: {where_}",
            loss.producer, loss.seq, loss.partition, loss.acked_offset
        ));
    }
    report.losses = losses;
    for text in texts {
        report.example("lost", shown, text);
    }
    for e in scan_errors {
        report.example("scan", shown, e);
    }
}
