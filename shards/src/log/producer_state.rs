//! Idempotent-producer state of one partition (Kafka's `ProducerStateManager`,
//! reduced to what idempotence needs; no transactions).
//!
//! A Kafka idempotent producer stamps every batch with its producer id, an
//! epoch and the sequence number of the batch's first record; sequences count
//! records per (producer, partition) and wrap from `i32::MAX` to 0. The
//! partition remembers, per producer id, the epoch and the last
//! [`MAX_CACHED_BATCHES`] batches it appended, and with that:
//!
//! * refuses an epoch older than the one it knows (`InvalidProducerEpoch`:
//!   a newer instance of the producer fenced this one);
//! * accepts a newer epoch only at sequence 0, and then forgets the old one;
//! * answers a batch equal to a cached one (same epoch, same first and last
//!   sequence) as a **duplicate**: a client retry of a batch whose answer was
//!   lost. It is not appended again; the original offsets are returned;
//! * accepts the batch that follows the last one (`last + 1`, wrapping);
//! * refuses anything else (`OutOfOrderSequenceNumber`), saying what it
//!   expected.
//!
//! A producer id the partition does not know is accepted at any sequence.
//! The state is rebuilt from the log's tail at start-up, so an unknown id is
//! a new producer, or one whose batches all left that tail (retention, or
//! older than the recovery scan window), or one evicted from the bounded
//! table. Refusing it would wedge such a producer forever; Kafka makes the
//! same choice for producers without state.
//!
//! Pure: no I/O, no clock. [`super::partition`] calls it in the ordered
//! (synchronous) phase of an append, so batches pipelined by one producer
//! are checked against each other in the order they were sent.
//!
//! Bounds: at most `max_producers` producers per partition, the least
//! recently appended one evicted first; [`MAX_CACHED_BATCHES`] batches per
//! producer. Memory per partition is therefore at most about
//! `max_producers * 300` bytes.

use super::LogError;
use std::collections::HashMap;

/// Batches remembered per producer: librdkafka and the Java client keep at
/// most 5 requests in flight per partition with idempotence on, so a retry
/// is always one of the last 5 batches appended.
pub const MAX_CACHED_BATCHES: usize = 5;

/// Producers tracked per partition before the least recently used one is
/// forgotten (it then counts as unknown: any sequence is accepted).
pub const MAX_PRODUCERS_PER_PARTITION: usize = 10_000;

/// The sequence that follows `sequence` (Kafka wraps `i32::MAX` to 0).
pub fn next_sequence(sequence: i32) -> i32 {
    debug_assert!(sequence >= 0, "sequences are never negative");
    if sequence == i32::MAX {
        0
    } else {
        sequence + 1
    }
}

/// Sequence of the last record of a batch whose first record has
/// `first_sequence` and that spans `last_offset_delta + 1` records
/// (Kafka's `DefaultRecordBatch.incrementSequence`).
pub fn last_sequence(first_sequence: i32, last_offset_delta: i32) -> i32 {
    debug_assert!(first_sequence >= 0 && last_offset_delta >= 0);
    if first_sequence > i32::MAX - last_offset_delta {
        last_offset_delta - (i32::MAX - first_sequence) - 1
    } else {
        first_sequence + last_offset_delta
    }
}

/// One batch appended by an idempotent producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchMetadata {
    pub producer_epoch: i16,
    pub first_sequence: i32,
    pub last_sequence: i32,
    pub base_offset: i64,
    pub last_offset: i64,
    /// The batch's max timestamp: what a duplicate is answered with as its
    /// append time (Kafka does the same).
    pub max_timestamp_ms: i64,
}

impl BatchMetadata {
    const EMPTY: BatchMetadata = BatchMetadata {
        producer_epoch: -1,
        first_sequence: -1,
        last_sequence: -1,
        base_offset: -1,
        last_offset: -1,
        max_timestamp_ms: -1,
    };
}

/// What one producer looks like to a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerEntry {
    epoch: i16,
    /// Oldest first; only `batches[..len]` is meaningful.
    batches: [BatchMetadata; MAX_CACHED_BATCHES],
    len: u8,
}

impl ProducerEntry {
    fn new(batch: BatchMetadata) -> ProducerEntry {
        let mut entry = ProducerEntry {
            epoch: batch.producer_epoch,
            batches: [BatchMetadata::EMPTY; MAX_CACHED_BATCHES],
            len: 0,
        };
        entry.push(batch);
        entry
    }

    pub fn epoch(&self) -> i16 {
        self.epoch
    }

    /// The cached batches, oldest first (never empty).
    pub fn batches(&self) -> &[BatchMetadata] {
        &self.batches[..self.len as usize]
    }

    pub fn last(&self) -> &BatchMetadata {
        self.batches().last().expect("an entry holds a batch")
    }

    fn push(&mut self, batch: BatchMetadata) {
        if batch.producer_epoch != self.epoch {
            // A new epoch starts a new sequence space: the old batches can
            // no longer be retried (their epoch is fenced).
            self.epoch = batch.producer_epoch;
            self.len = 0;
        }
        if self.len as usize == MAX_CACHED_BATCHES {
            self.batches.copy_within(1.., 0);
            self.len -= 1;
        }
        self.batches[self.len as usize] = batch;
        self.len += 1;
    }

    fn find(&self, first_sequence: i32, last_sequence: i32) -> Option<&BatchMetadata> {
        self.batches()
            .iter()
            .find(|b| b.first_sequence == first_sequence && b.last_sequence == last_sequence)
    }

    fn check_invariants(&self) {
        assert!(
            (1..=MAX_CACHED_BATCHES).contains(&(self.len as usize)),
            "entry holds 1..=5 batches"
        );
        for pair in self.batches().windows(2) {
            assert!(
                pair[0].last_offset < pair[1].base_offset,
                "cached batches are in offset order"
            );
        }
        for b in self.batches() {
            assert_eq!(
                b.producer_epoch, self.epoch,
                "cached batches share the epoch"
            );
            assert!(b.base_offset <= b.last_offset);
        }
    }
}

/// An idempotent batch about to be appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IncomingBatch {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub last_offset_delta: i32,
    pub max_timestamp_ms: i64,
}

/// What to do with one idempotent batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Append it.
    Append,
    /// A retry of this batch, already in the log: do not append it.
    Duplicate(BatchMetadata),
}

/// What to do with a whole append (one or more concatenated batches).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendVerdict {
    /// Append everything; then call [`ProducerStateTable::commit_append`].
    Append,
    /// Every batch is a retry of batches appended back to back: append
    /// nothing and answer with these original offsets.
    Duplicate {
        base_offset: i64,
        last_offset: i64,
        max_timestamp_ms: i64,
    },
}

const NIL: u32 = u32::MAX;

struct Slot {
    producer_id: i64,
    entry: ProducerEntry,
    /// Towards the most recently used end of the list.
    newer: u32,
    /// Towards the least recently used end of the list.
    older: u32,
}

/// An idempotent batch of the append being checked (see `check_append`).
#[derive(Debug, Clone, Copy)]
struct PendingBatch {
    producer_id: i64,
    batch: BatchMetadata,
    duplicate: bool,
}

/// Producer id → state, bounded, least recently used evicted first.
///
/// The entries live in a slab (`slots`) threaded on a doubly linked list in
/// recency order, so touching and evicting are O(1) and, once the slab has
/// grown, allocation-free.
pub struct ProducerStateTable {
    max_producers: usize,
    slots: Vec<Slot>,
    /// Slab indexes of removed entries, reused before the slab grows.
    free: Vec<u32>,
    by_id: HashMap<i64, u32>,
    most_recent: u32,
    least_recent: u32,
    /// Scratch of `check_append`, kept to reuse its allocation.
    pending: Vec<PendingBatch>,
}

impl std::fmt::Debug for ProducerStateTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProducerStateTable")
            .field("producers", &self.by_id.len())
            .field("max_producers", &self.max_producers)
            .finish()
    }
}

impl ProducerStateTable {
    pub fn new(max_producers: usize) -> ProducerStateTable {
        assert!(
            (1..NIL as usize).contains(&max_producers),
            "max_producers must be positive and fit a u32 slab index"
        );
        ProducerStateTable {
            max_producers,
            slots: Vec::new(),
            free: Vec::new(),
            by_id: HashMap::new(),
            most_recent: NIL,
            least_recent: NIL,
            pending: Vec::new(),
        }
    }

    /// Producers tracked.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn get(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.by_id
            .get(&producer_id)
            .map(|&i| &self.slots[i as usize].entry)
    }

    /// Producer ids from most to least recently used.
    pub fn ids_by_recency(&self) -> impl Iterator<Item = i64> + '_ {
        let mut at = self.most_recent;
        std::iter::from_fn(move || {
            if at == NIL {
                return None;
            }
            let slot = &self.slots[at as usize];
            at = slot.older;
            Some(slot.producer_id)
        })
    }

    /// Checks one idempotent batch against the producer's state (Kafka's
    /// rules; see the module docs). Changes nothing.
    pub fn check(&self, batch: &IncomingBatch) -> Result<Verdict, LogError> {
        check_fields(batch)?;
        let Some(entry) = self.get(batch.producer_id) else {
            return Ok(Verdict::Append);
        };
        let last = last_sequence(batch.base_sequence, batch.last_offset_delta);
        if batch.producer_epoch < entry.epoch {
            return Err(LogError::InvalidProducerEpoch {
                producer_id: batch.producer_id,
                producer_epoch: batch.producer_epoch,
                current_epoch: entry.epoch,
            });
        }
        if batch.producer_epoch > entry.epoch {
            if batch.base_sequence != 0 {
                return Err(out_of_order(
                    batch,
                    0,
                    "a new producer epoch must start at sequence 0",
                ));
            }
            return Ok(Verdict::Append);
        }
        if let Some(original) = entry.find(batch.base_sequence, last) {
            return Ok(Verdict::Duplicate(*original));
        }
        follows(batch, entry.last().last_sequence)
    }

    /// Checks every idempotent batch of one append, in order; `batches`
    /// yields each batch's header fields (`None` for a batch without a
    /// producer id) and its `last_offset_delta`. Offsets are predicted from
    /// `log_end` the way the append will assign them. A batch is checked
    /// against the earlier batches of the same append first, so a producer
    /// may send several consecutive batches at once.
    ///
    /// Rules for an append of several batches: all new → append; all
    /// retries of batches that sit back to back in the log → duplicate with
    /// their combined offsets; a mix → `OutOfOrderSequenceNumber`, nothing
    /// appended (Kafka clients send one batch per partition per request, so
    /// only non-Kafka clients can hit this).
    pub fn check_append(
        &mut self,
        batches: impl IntoIterator<Item = (Option<IncomingBatch>, i32)>,
        log_end: i64,
    ) -> Result<AppendVerdict, LogError> {
        self.pending.clear();
        let mut next_offset = log_end;
        let mut total = 0usize;
        for (incoming, last_offset_delta) in batches {
            assert!(last_offset_delta >= 0, "framing was checked");
            let base_offset = next_offset;
            next_offset += last_offset_delta as i64 + 1;
            total += 1;
            let Some(incoming) = incoming else { continue };
            assert_eq!(incoming.last_offset_delta, last_offset_delta);
            // Within one append, the previous batch of the same producer is
            // the reference, unless that one was itself a retry.
            let earlier = self
                .pending
                .iter()
                .rev()
                .find(|p| p.producer_id == incoming.producer_id && !p.duplicate)
                .map(|p| p.batch);
            let verdict = match earlier {
                Some(earlier) => check_after(&incoming, &earlier)?,
                None => self.check(&incoming)?,
            };
            let (batch, duplicate) = match verdict {
                Verdict::Duplicate(original) => (original, true),
                Verdict::Append => (
                    BatchMetadata {
                        producer_epoch: incoming.producer_epoch,
                        first_sequence: incoming.base_sequence,
                        last_sequence: last_sequence(
                            incoming.base_sequence,
                            incoming.last_offset_delta,
                        ),
                        base_offset,
                        last_offset: next_offset - 1,
                        max_timestamp_ms: incoming.max_timestamp_ms,
                    },
                    false,
                ),
            };
            self.pending.push(PendingBatch {
                producer_id: incoming.producer_id,
                batch,
                duplicate,
            });
        }
        let duplicates = self.pending.iter().filter(|p| p.duplicate).count();
        if duplicates == 0 {
            return Ok(AppendVerdict::Append);
        }
        let first = self.pending.iter().find(|p| p.duplicate).expect("counted");
        let contiguous = self
            .pending
            .windows(2)
            .all(|w| w[0].batch.last_offset + 1 == w[1].batch.base_offset);
        if duplicates == total && contiguous {
            let last = self.pending.last().expect("counted");
            let verdict = AppendVerdict::Duplicate {
                base_offset: self.pending[0].batch.base_offset,
                last_offset: last.batch.last_offset,
                max_timestamp_ms: self
                    .pending
                    .iter()
                    .map(|p| p.batch.max_timestamp_ms)
                    .max()
                    .expect("counted"),
            };
            self.pending.clear();
            return Ok(verdict);
        }
        let err = LogError::OutOfOrderSequence {
            producer_id: first.producer_id,
            producer_epoch: first.batch.producer_epoch,
            expected_sequence: self
                .get(first.producer_id)
                .map_or(0, |e| next_sequence(e.last().last_sequence)),
            first_sequence: first.batch.first_sequence,
            last_sequence: first.batch.last_sequence,
            detail: "this request retries a batch already appended together with other batches; send each idempotent batch in its own produce request, as Kafka clients do",
        };
        self.pending.clear();
        Err(err)
    }

    /// Records the batches of the append that `check_append` last accepted.
    /// Call it once the append can no longer fail synchronously, and
    /// `truncate_from` if its data is rolled back later.
    pub fn commit_append(&mut self) {
        let mut pending = std::mem::take(&mut self.pending);
        for p in pending.drain(..) {
            assert!(!p.duplicate, "duplicates are never committed");
            self.record(p.producer_id, p.batch);
        }
        self.pending = pending;
    }

    /// Records an appended batch (or one found in the log by recovery) as
    /// the producer's latest. A different epoch replaces the old state.
    pub fn record(&mut self, producer_id: i64, batch: BatchMetadata) {
        assert!(producer_id >= 0, "only idempotent batches have state");
        if let Some(&at) = self.by_id.get(&producer_id) {
            let entry = &mut self.slots[at as usize].entry;
            assert!(
                entry.last().last_offset < batch.base_offset,
                "batches are recorded in offset order"
            );
            entry.push(batch);
            self.unlink(at);
            self.link_most_recent(at);
        } else {
            let at = self.allocate(producer_id, ProducerEntry::new(batch));
            self.by_id.insert(producer_id, at);
            self.link_most_recent(at);
        }
        // O(1) checks here (this runs per idempotent batch); the full walk
        // of `invariants_hold` runs after the rare bulk operations.
        assert!(self.by_id.len() <= self.max_producers, "table is bounded");
        debug_assert_eq!(self.by_id.len() + self.free.len(), self.slots.len());
        debug_assert!({
            self.slots[self.most_recent as usize]
                .entry
                .check_invariants();
            true
        });
    }

    /// Forgets every batch at or after `offset` (a write failed and the log
    /// end went back to `offset`: those batches are not in the log, and a
    /// retry of them must be appended, not answered as a duplicate). A
    /// producer left with no batch is forgotten altogether.
    pub fn truncate_from(&mut self, offset: i64) {
        let mut at = self.most_recent;
        while at != NIL {
            let slot = &mut self.slots[at as usize];
            let older = slot.older;
            let entry = &mut slot.entry;
            let keep = entry
                .batches()
                .iter()
                .take_while(|b| b.base_offset < offset)
                .count();
            entry.len = keep as u8;
            if keep == 0 {
                let producer_id = slot.producer_id;
                self.by_id.remove(&producer_id);
                self.unlink(at);
                self.free.push(at);
            } else {
                // An entry only ever holds batches of its current epoch (a
                // bump empties it), so the epoch is unchanged.
                debug_assert_eq!(entry.epoch, entry.last().producer_epoch);
            }
            at = older;
        }
        debug_assert!(self.invariants_hold());
    }

    /// Forgets everything (every producer becomes unknown).
    pub fn clear(&mut self) {
        self.slots.clear();
        self.free.clear();
        self.by_id.clear();
        self.most_recent = NIL;
        self.least_recent = NIL;
    }

    fn allocate(&mut self, producer_id: i64, entry: ProducerEntry) -> u32 {
        if let Some(at) = self.free.pop() {
            self.slots[at as usize] = Slot {
                producer_id,
                entry,
                newer: NIL,
                older: NIL,
            };
            return at;
        }
        if self.by_id.len() >= self.max_producers {
            let victim = self.least_recent;
            assert_ne!(victim, NIL, "a full table has a least recent entry");
            self.unlink(victim);
            let evicted = self.slots[victim as usize].producer_id;
            self.by_id.remove(&evicted);
            tracing::debug!(
                producer_id = evicted,
                max_producers = self.max_producers,
                "forgetting the least recently used idempotent producer of this partition"
            );
            self.slots[victim as usize] = Slot {
                producer_id,
                entry,
                newer: NIL,
                older: NIL,
            };
            return victim;
        }
        let at = u32::try_from(self.slots.len()).expect("bounded by max_producers");
        self.slots.push(Slot {
            producer_id,
            entry,
            newer: NIL,
            older: NIL,
        });
        at
    }

    fn unlink(&mut self, at: u32) {
        let (newer, older) = {
            let s = &self.slots[at as usize];
            (s.newer, s.older)
        };
        match newer {
            NIL => self.most_recent = older,
            n => self.slots[n as usize].older = older,
        }
        match older {
            NIL => self.least_recent = newer,
            o => self.slots[o as usize].newer = newer,
        }
        let s = &mut self.slots[at as usize];
        s.newer = NIL;
        s.older = NIL;
    }

    fn link_most_recent(&mut self, at: u32) {
        let old_head = self.most_recent;
        {
            let s = &mut self.slots[at as usize];
            s.newer = NIL;
            s.older = old_head;
        }
        match old_head {
            NIL => self.least_recent = at,
            h => self.slots[h as usize].newer = at,
        }
        self.most_recent = at;
    }

    /// Asserts the structural invariants; returns true so it can sit in a
    /// `debug_assert!`.
    pub fn invariants_hold(&self) -> bool {
        assert!(self.by_id.len() <= self.max_producers, "table is bounded");
        assert_eq!(
            self.by_id.len() + self.free.len(),
            self.slots.len(),
            "every slot is live or free"
        );
        let mut count = 0usize;
        let mut newer = NIL;
        let mut at = self.most_recent;
        while at != NIL {
            let s = &self.slots[at as usize];
            assert_eq!(s.newer, newer, "list links agree");
            assert_eq!(self.by_id.get(&s.producer_id), Some(&at), "index agrees");
            s.entry.check_invariants();
            count += 1;
            assert!(count <= self.by_id.len(), "list has no cycle");
            newer = at;
            at = s.older;
        }
        assert_eq!(newer, self.least_recent, "list ends at the least recent");
        assert_eq!(count, self.by_id.len(), "every entry is on the list");
        true
    }
}

/// Fields Kafka requires of a batch that carries a producer id.
fn check_fields(batch: &IncomingBatch) -> Result<(), LogError> {
    assert!(
        batch.producer_id >= 0,
        "only idempotent batches are checked"
    );
    if batch.producer_epoch < 0 {
        return Err(LogError::InvalidProducerEpoch {
            producer_id: batch.producer_id,
            producer_epoch: batch.producer_epoch,
            current_epoch: 0,
        });
    }
    if batch.base_sequence < 0 {
        return Err(out_of_order(
            batch,
            0,
            "a batch with a producer id must carry a base sequence of 0 or more (client bug)",
        ));
    }
    Ok(())
}

/// Checks `batch` against an earlier batch of the same append.
fn check_after(batch: &IncomingBatch, earlier: &BatchMetadata) -> Result<Verdict, LogError> {
    check_fields(batch)?;
    if batch.producer_epoch < earlier.producer_epoch {
        return Err(LogError::InvalidProducerEpoch {
            producer_id: batch.producer_id,
            producer_epoch: batch.producer_epoch,
            current_epoch: earlier.producer_epoch,
        });
    }
    if batch.producer_epoch > earlier.producer_epoch {
        if batch.base_sequence != 0 {
            return Err(out_of_order(
                batch,
                0,
                "a new producer epoch must start at sequence 0",
            ));
        }
        return Ok(Verdict::Append);
    }
    follows(batch, earlier.last_sequence)
}

/// Accepts `batch` if it starts right after `last_sequence`.
fn follows(batch: &IncomingBatch, last_sequence: i32) -> Result<Verdict, LogError> {
    let expected = next_sequence(last_sequence);
    if batch.base_sequence == expected {
        return Ok(Verdict::Append);
    }
    // Distance forward from `expected` in the wrapping sequence space: a
    // small one means batches are missing, a large one that the batch is
    // older than what the partition remembers.
    let ahead = (batch.base_sequence as i64 - expected as i64).rem_euclid(1i64 << 31);
    let detail = if ahead < 1i64 << 30 {
        "earlier batches of this producer are missing (they failed and were not retried in order); the producer must bump its epoch or be recreated"
    } else {
        "the batch is older than the last 5 batches this partition remembers for the producer or overlaps them, so it can be neither appended nor recognised as a retry"
    };
    Err(out_of_order(batch, expected, detail))
}

fn out_of_order(batch: &IncomingBatch, expected: i32, detail: &'static str) -> LogError {
    LogError::OutOfOrderSequence {
        producer_id: batch.producer_id,
        producer_epoch: batch.producer_epoch,
        expected_sequence: expected,
        first_sequence: batch.base_sequence,
        last_sequence: if batch.base_sequence >= 0 {
            last_sequence(batch.base_sequence, batch.last_offset_delta)
        } else {
            batch.base_sequence
        },
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PID: i64 = 7;

    fn incoming(epoch: i16, first: i32, records: i32) -> IncomingBatch {
        IncomingBatch {
            producer_id: PID,
            producer_epoch: epoch,
            base_sequence: first,
            last_offset_delta: records - 1,
            max_timestamp_ms: 1_000 + first as i64,
        }
    }

    /// Checks and appends one batch at `log_end` like the log does; returns
    /// the verdict and the new log end.
    fn append(
        table: &mut ProducerStateTable,
        batch: IncomingBatch,
        log_end: i64,
    ) -> (Result<AppendVerdict, LogError>, i64) {
        let verdict = table.check_append([(Some(batch), batch.last_offset_delta)], log_end);
        match verdict {
            Ok(AppendVerdict::Append) => {
                table.commit_append();
                (verdict, log_end + batch.last_offset_delta as i64 + 1)
            }
            _ => (verdict, log_end),
        }
    }

    fn is_out_of_order(r: &Result<AppendVerdict, LogError>, expected: i32) -> bool {
        matches!(r, Err(LogError::OutOfOrderSequence { expected_sequence, .. }) if *expected_sequence == expected)
    }

    #[test]
    fn sequence_arithmetic_wraps_like_kafka() {
        assert_eq!(next_sequence(0), 1);
        assert_eq!(next_sequence(i32::MAX), 0);
        assert_eq!(last_sequence(10, 4), 14);
        assert_eq!(last_sequence(i32::MAX, 0), i32::MAX);
        assert_eq!(last_sequence(i32::MAX, 1), 0);
        assert_eq!(last_sequence(i32::MAX - 1, 3), 1);
    }

    #[test]
    fn in_order_batches_are_appended_and_remembered() {
        let mut t = ProducerStateTable::new(16);
        let mut end = 100;
        for (first, records) in [(0, 3), (3, 1), (4, 5)] {
            let (r, e) = append(&mut t, incoming(0, first, records), end);
            assert_eq!(r.unwrap(), AppendVerdict::Append);
            end = e;
        }
        let entry = t.get(PID).unwrap();
        assert_eq!(entry.epoch(), 0);
        let seqs: Vec<_> = entry
            .batches()
            .iter()
            .map(|b| {
                (
                    b.first_sequence,
                    b.last_sequence,
                    b.base_offset,
                    b.last_offset,
                )
            })
            .collect();
        assert_eq!(
            seqs,
            vec![(0, 2, 100, 102), (3, 3, 103, 103), (4, 8, 104, 108)]
        );
        assert!(t.invariants_hold());
    }

    #[test]
    fn unknown_producer_is_accepted_at_any_sequence() {
        let mut t = ProducerStateTable::new(16);
        let (r, _) = append(&mut t, incoming(3, 12_345, 2), 0);
        assert_eq!(r.unwrap(), AppendVerdict::Append);
        assert_eq!(t.get(PID).unwrap().last().last_sequence, 12_346);
    }

    #[test]
    fn retry_of_any_of_the_last_five_batches_is_a_duplicate_with_its_offsets() {
        let mut t = ProducerStateTable::new(16);
        let mut end = 0;
        let mut originals = Vec::new();
        for i in 0..7 {
            let (r, e) = append(&mut t, incoming(0, i * 2, 2), end);
            assert_eq!(r.unwrap(), AppendVerdict::Append);
            originals.push((end, e - 1));
            end = e;
        }
        // The last five are recognised, with their original offsets.
        for i in 2..7 {
            let (r, e) = append(&mut t, incoming(0, i * 2, 2), end);
            assert_eq!(e, end, "a duplicate is not appended");
            match r.unwrap() {
                AppendVerdict::Duplicate {
                    base_offset,
                    last_offset,
                    max_timestamp_ms,
                } => {
                    assert_eq!((base_offset, last_offset), originals[i as usize]);
                    assert_eq!(max_timestamp_ms, 1_000 + i as i64 * 2);
                }
                other => panic!("batch {i}: {other:?}"),
            }
        }
        // The two older ones are out of the window: out of order.
        let (r, _) = append(&mut t, incoming(0, 0, 2), end);
        assert!(is_out_of_order(&r, 14), "{r:?}");
        let (r, _) = append(&mut t, incoming(0, 2, 2), end);
        assert!(is_out_of_order(&r, 14), "{r:?}");
        // A batch overlapping a cached one but not equal to it is no retry.
        let (r, _) = append(&mut t, incoming(0, 12, 1), end);
        assert!(is_out_of_order(&r, 14), "{r:?}");
        assert_eq!(
            t.get(PID).unwrap().last().last_sequence,
            13,
            "nothing moved"
        );
    }

    #[test]
    fn a_gap_is_out_of_order_and_changes_nothing() {
        let mut t = ProducerStateTable::new(16);
        let (_, end) = append(&mut t, incoming(0, 0, 5), 0);
        let before = t.get(PID).unwrap().clone();
        let (r, e) = append(&mut t, incoming(0, 6, 1), end);
        assert_eq!(e, end);
        match r {
            Err(err @ LogError::OutOfOrderSequence { .. }) => {
                let msg = err.to_string();
                assert!(msg.contains("expects sequence 5"), "{msg}");
                assert!(msg.contains("sent sequences 6..=6"), "{msg}");
                assert!(msg.contains("missing"), "{msg}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(t.get(PID).unwrap(), &before);
        // The expected batch is still accepted.
        let (r, _) = append(&mut t, incoming(0, 5, 1), end);
        assert_eq!(r.unwrap(), AppendVerdict::Append);
    }

    #[test]
    fn epoch_bump_resets_and_older_epoch_is_fenced() {
        let mut t = ProducerStateTable::new(16);
        let (_, end) = append(&mut t, incoming(0, 0, 3), 0);
        let (_, end) = append(&mut t, incoming(0, 3, 3), end);
        // A new epoch must start at 0.
        let (r, _) = append(&mut t, incoming(1, 6, 1), end);
        assert!(is_out_of_order(&r, 0), "{r:?}");
        let (r, end) = append(&mut t, incoming(1, 0, 2), end);
        assert_eq!(r.unwrap(), AppendVerdict::Append);
        let entry = t.get(PID).unwrap();
        assert_eq!(entry.epoch(), 1);
        assert_eq!(entry.batches().len(), 1, "old epoch's batches forgotten");
        // The old epoch is fenced, even for what was once a valid retry.
        for (first, records) in [(0, 3), (6, 1)] {
            let (r, _) = append(&mut t, incoming(0, first, records), end);
            match r {
                Err(LogError::InvalidProducerEpoch {
                    producer_epoch,
                    current_epoch,
                    ..
                }) => assert_eq!((producer_epoch, current_epoch), (0, 1)),
                other => panic!("{other:?}"),
            }
        }
        // Same sequence range under the new epoch: a retry of the new batch.
        let (r, _) = append(&mut t, incoming(1, 0, 2), end);
        assert!(
            matches!(
                r,
                Ok(AppendVerdict::Duplicate {
                    base_offset: 6,
                    last_offset: 7,
                    ..
                })
            ),
            "{r:?}"
        );
    }

    #[test]
    fn sequence_wraps_from_i32_max_to_zero() {
        let mut t = ProducerStateTable::new(16);
        let (_, end) = append(&mut t, incoming(0, i32::MAX - 2, 2), 0);
        // Spans MAX-0 .. wraps: MAX, 0, 1.
        let (r, end) = append(&mut t, incoming(0, i32::MAX, 3), end);
        assert_eq!(r.unwrap(), AppendVerdict::Append);
        assert_eq!(t.get(PID).unwrap().last().last_sequence, 1);
        let (r, end2) = append(&mut t, incoming(0, 2, 1), end);
        assert_eq!(r.unwrap(), AppendVerdict::Append);
        // Retry of the wrapping batch is found.
        let (r, _) = append(&mut t, incoming(0, i32::MAX, 3), end2);
        assert!(
            matches!(
                r,
                Ok(AppendVerdict::Duplicate {
                    base_offset: 2,
                    last_offset: 4,
                    ..
                })
            ),
            "{r:?}"
        );
        // And the batch right after i32::MAX when it ends exactly there.
        let mut t = ProducerStateTable::new(16);
        let (_, end) = append(&mut t, incoming(0, i32::MAX - 1, 2), 0);
        let (r, _) = append(&mut t, incoming(0, 0, 1), end);
        assert_eq!(r.unwrap(), AppendVerdict::Append);
        let (r, _) = append(&mut t, incoming(0, i32::MAX, 1), end);
        assert!(is_out_of_order(&r, 1), "{r:?}");
    }

    #[test]
    fn bad_fields_are_refused() {
        let t = ProducerStateTable::new(16);
        assert!(matches!(
            t.check(&incoming(-1, 0, 1)),
            Err(LogError::InvalidProducerEpoch { .. })
        ));
        assert!(matches!(
            t.check(&incoming(0, -1, 1)),
            Err(LogError::OutOfOrderSequence { .. })
        ));
    }

    #[test]
    fn table_is_bounded_and_evicts_the_least_recently_used() {
        let mut t = ProducerStateTable::new(3);
        let mut end = 0;
        let batch = |pid: i64, first: i32| IncomingBatch {
            producer_id: pid,
            ..incoming(0, first, 1)
        };
        for pid in [1, 2, 3] {
            let (r, e) = append(&mut t, batch(pid, 0), end);
            r.unwrap();
            end = e;
        }
        // Touch 1: 2 becomes the least recently used.
        let (_, e) = append(&mut t, batch(1, 1), end);
        end = e;
        assert_eq!(t.ids_by_recency().collect::<Vec<_>>(), vec![1, 3, 2]);
        let (_, e) = append(&mut t, batch(4, 0), end);
        end = e;
        assert_eq!(t.len(), 3);
        assert!(t.get(2).is_none(), "least recently used evicted");
        assert_eq!(t.ids_by_recency().collect::<Vec<_>>(), vec![4, 1, 3]);
        // The evicted producer is unknown again: any sequence goes.
        let (r, _) = append(&mut t, batch(2, 999), end);
        assert_eq!(r.unwrap(), AppendVerdict::Append);
        assert!(t.get(3).is_none());
        assert!(t.invariants_hold());
        // Churn through many producers: the bound holds throughout.
        for pid in 10..200 {
            let (r, e) = append(&mut t, batch(pid, 0), end);
            r.unwrap();
            end = e;
            assert!(t.len() <= 3);
        }
        assert_eq!(t.ids_by_recency().collect::<Vec<_>>(), vec![199, 198, 197]);
        assert!(t.invariants_hold());
    }

    #[test]
    fn truncate_forgets_rolled_back_batches() {
        let mut t = ProducerStateTable::new(16);
        let other = |first: i32| IncomingBatch {
            producer_id: 8,
            ..incoming(0, first, 1)
        };
        let (_, end) = append(&mut t, incoming(0, 0, 2), 0); // 0..=1
        let (_, end) = append(&mut t, other(0), end); // 2
        let (_, end) = append(&mut t, incoming(0, 2, 2), end); // 3..=4
        let (_, end) = append(&mut t, other(1), end); // 5
        assert_eq!(end, 6);
        // A write failure rolls the log back to offset 3.
        t.truncate_from(3);
        assert_eq!(t.get(PID).unwrap().last().last_sequence, 1);
        assert_eq!(t.get(8).unwrap().last().last_sequence, 0);
        // The retried batch is appended again, not taken for a duplicate.
        let (r, end) = append(&mut t, incoming(0, 2, 2), 3);
        assert_eq!(r.unwrap(), AppendVerdict::Append);
        assert_eq!(end, 5);
        // A producer whose every batch is rolled back is forgotten.
        let (_, _) = append(
            &mut t,
            IncomingBatch {
                producer_id: 9,
                ..incoming(0, 40, 1)
            },
            end,
        );
        t.truncate_from(end);
        assert!(t.get(9).is_none());
        assert!(t.invariants_hold());
        // An epoch bump that is rolled back leaves the producer unknown
        // (the bump already dropped the old epoch's batches), so its retry
        // is accepted.
        let (_, e) = append(&mut t, incoming(1, 0, 1), end);
        assert_eq!(t.get(PID).unwrap().epoch(), 1);
        assert!(e > end);
        t.truncate_from(end);
        assert!(t.get(PID).is_none());
        let (r, _) = append(&mut t, incoming(1, 0, 1), end);
        assert_eq!(r.unwrap(), AppendVerdict::Append);
        assert!(t.invariants_hold());
    }

    #[test]
    fn several_batches_in_one_append() {
        let mut t = ProducerStateTable::new(16);
        let b = |first: i32, records: i32| (Some(incoming(0, first, records)), records - 1);
        // Consecutive batches of one producer, with a native batch between.
        let r = t.check_append([b(0, 2), (None, 4), b(2, 3)], 10);
        assert_eq!(r.unwrap(), AppendVerdict::Append);
        t.commit_append();
        let entry = t.get(PID).unwrap();
        assert_eq!(
            entry
                .batches()
                .iter()
                .map(|x| (x.base_offset, x.last_offset))
                .collect::<Vec<_>>(),
            vec![(10, 11), (17, 19)]
        );
        // A gap inside the append refuses all of it.
        let r = t.check_append([b(5, 1), b(7, 1)], 20);
        assert!(
            matches!(
                r,
                Err(LogError::OutOfOrderSequence {
                    expected_sequence: 6,
                    ..
                })
            ),
            "{r:?}"
        );
        assert_eq!(t.get(PID).unwrap().last().last_sequence, 4);
        // A full retry of the first append (native batch and all) is not
        // one run of duplicates: the native batch would be appended twice.
        let r = t.check_append([b(0, 2), (None, 4), b(2, 3)], 20);
        assert!(
            matches!(r, Err(LogError::OutOfOrderSequence { .. })),
            "{r:?}"
        );
        // Retries of batches that lie back to back: one duplicate answer.
        let r = t.check_append([b(5, 1)], 20);
        assert_eq!(r.unwrap(), AppendVerdict::Append);
        t.commit_append();
        let r = t.check_append([b(6, 2)], 21);
        assert_eq!(r.unwrap(), AppendVerdict::Append);
        t.commit_append();
        let r = t.check_append([b(5, 1), b(6, 2)], 23);
        assert!(
            matches!(
                r,
                Ok(AppendVerdict::Duplicate {
                    base_offset: 20,
                    last_offset: 22,
                    ..
                })
            ),
            "{r:?}"
        );
        // A retry mixed with a new batch is refused as a whole.
        let r = t.check_append([b(6, 2), b(8, 1)], 23);
        assert!(
            matches!(r, Err(LogError::OutOfOrderSequence { .. })),
            "{r:?}"
        );
        assert_eq!(t.get(PID).unwrap().last().last_sequence, 7);
        assert!(t.invariants_hold());
    }
}
