//! Pure offset bookkeeping of the group consumer: what to commit, where to
//! start, how commit answers and assignments are read. No I/O here, so all
//! of it is unit tested.
//!
//! Offsets follow Kafka's convention: a committed offset is the *next*
//! offset to read, which is exactly a consumer's position.

use std::collections::HashMap;

use ringmq_wire::envelope::{
    CommittedOffset, OffsetCommitPartition, OffsetCommitResponse, OffsetCommitTopic,
    TopicPartitions,
};

use crate::error::{ClientError, Result};

/// A partition of a topic.
pub(crate) type TopicPartition = (String, u32);

/// The last offset the broker acknowledged per partition.
pub(crate) type CommittedMap = HashMap<TopicPartition, i64>;

/// The assignment of a JoinGroup answer as sorted (topic, partition) pairs.
pub(crate) fn flatten_assignment(assignment: &[TopicPartitions]) -> Vec<TopicPartition> {
    let mut pairs: Vec<TopicPartition> = assignment
        .iter()
        .flat_map(|tp| tp.partitions.iter().map(|p| (tp.topic.clone(), *p)))
        .collect();
    pairs.sort();
    pairs.dedup();
    pairs
}

/// The (topic, partition, offset) triples to commit for `owned` partitions
/// given their positions. Partitions without a position (not positioned
/// yet) are skipped; with `only_changed`, so are those whose position is
/// what the broker already has, which keeps periodic auto-commits of an
/// idle consumer from writing anything.
pub(crate) fn offsets_to_commit(
    owned: &[TopicPartition],
    position: impl Fn(&str, u32) -> Option<i64>,
    last_committed: &CommittedMap,
    only_changed: bool,
) -> Vec<(String, u32, i64)> {
    owned
        .iter()
        .filter_map(|(topic, partition)| {
            let offset = position(topic, *partition)?;
            let key = (topic.clone(), *partition);
            let unchanged = last_committed.get(&key) == Some(&offset);
            (!(only_changed && unchanged)).then(|| (topic.clone(), *partition, offset))
        })
        .collect()
}

/// Groups commit triples by topic, in first-seen order, for an
/// OffsetCommit request.
pub(crate) fn commit_topics(offsets: &[(String, u32, i64)]) -> Vec<OffsetCommitTopic> {
    let mut topics: Vec<OffsetCommitTopic> = Vec::new();
    for (topic, partition, offset) in offsets {
        let entry = OffsetCommitPartition {
            partition: *partition,
            offset: *offset,
            metadata: String::new(),
        };
        match topics.iter_mut().find(|t| t.name == *topic) {
            Some(t) => t.partitions.push(entry),
            None => topics.push(OffsetCommitTopic {
                name: topic.clone(),
                partitions: vec![entry],
            }),
        }
    }
    topics
}

/// The first per-partition error of a commit answer, if any. A commit is
/// all or nothing for the caller: one refused partition fails the call.
pub(crate) fn commit_outcome(group: &str, response: &OffsetCommitResponse) -> Result<()> {
    for topic in &response.topics {
        for partition in &topic.partitions {
            if let Some(error) = &partition.error {
                return Err(ClientError::api(
                    error.clone(),
                    format!(
                        "commit offset of {}/{} for group {group}",
                        topic.name, partition.partition
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Splits freshly assigned partitions into those with a committed offset
/// (with it) and those without (which start at the reset policy).
pub(crate) fn split_by_committed(
    assigned: &[TopicPartition],
    committed: &[CommittedOffset],
) -> (Vec<(String, u32, i64)>, Vec<TopicPartition>) {
    let known: HashMap<(&str, u32), i64> = committed
        .iter()
        .filter(|c| c.offset >= 0)
        .map(|c| ((c.topic.as_str(), c.partition), c.offset))
        .collect();
    let mut at_committed = Vec::new();
    let mut at_reset = Vec::new();
    for (topic, partition) in assigned {
        match known.get(&(topic.as_str(), *partition)) {
            Some(offset) => at_committed.push((topic.clone(), *partition, *offset)),
            None => at_reset.push((topic.clone(), *partition)),
        }
    }
    (at_committed, at_reset)
}

/// The distinct topics of some partitions, sorted.
pub(crate) fn topics_of(partitions: &[TopicPartition]) -> Vec<String> {
    let mut topics: Vec<String> = partitions.iter().map(|(t, _)| t.clone()).collect();
    topics.sort();
    topics.dedup();
    topics
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringmq_wire::envelope::{OffsetCommitPartitionResult, OffsetCommitTopicResult};
    use ringmq_wire::error::{ApiError, ErrorCode};

    fn tp(topic: &str, partition: u32) -> TopicPartition {
        (topic.to_string(), partition)
    }

    #[test]
    fn assignment_is_flattened_sorted_and_deduplicated() {
        let assignment = vec![
            TopicPartitions {
                topic: "b".into(),
                partitions: vec![3, 1],
            },
            TopicPartitions {
                topic: "a".into(),
                partitions: vec![0, 0],
            },
        ];
        assert_eq!(
            flatten_assignment(&assignment),
            vec![tp("a", 0), tp("b", 1), tp("b", 3)]
        );
    }

    #[test]
    fn commit_takes_positions_and_skips_unpositioned_partitions() {
        let owned = vec![tp("t", 0), tp("t", 1), tp("t", 2)];
        let positions = |_: &str, p: u32| (p != 2).then_some(i64::from(p) * 10 + 5);
        let got = offsets_to_commit(&owned, positions, &CommittedMap::new(), false);
        assert_eq!(got, vec![("t".to_string(), 0, 5), ("t".to_string(), 1, 15)]);
    }

    #[test]
    fn only_changed_skips_what_the_broker_already_has() {
        let owned = vec![tp("t", 0), tp("t", 1)];
        let mut last = CommittedMap::new();
        last.insert(tp("t", 0), 7);
        last.insert(tp("t", 1), 3);
        let positions = |_: &str, p: u32| Some(if p == 0 { 7 } else { 9 });
        assert_eq!(
            offsets_to_commit(&owned, positions, &last, true),
            vec![("t".to_string(), 1, 9)]
        );
        // An explicit commit sends everything.
        assert_eq!(offsets_to_commit(&owned, positions, &last, false).len(), 2);
    }

    #[test]
    fn commit_request_groups_by_topic_in_order() {
        let topics = commit_topics(&[("b".into(), 1, 10), ("a".into(), 0, 4), ("b".into(), 0, 2)]);
        assert_eq!(topics.len(), 2);
        assert_eq!(topics[0].name, "b");
        let b: Vec<(u32, i64)> = topics[0]
            .partitions
            .iter()
            .map(|p| (p.partition, p.offset))
            .collect();
        assert_eq!(b, vec![(1, 10), (0, 2)]);
        assert_eq!(topics[1].name, "a");
    }

    #[test]
    fn a_refused_partition_fails_the_commit() {
        let mut response = OffsetCommitResponse {
            topics: vec![OffsetCommitTopicResult {
                name: "t".into(),
                partitions: vec![
                    OffsetCommitPartitionResult {
                        partition: 0,
                        error: None,
                    },
                    OffsetCommitPartitionResult {
                        partition: 9,
                        error: None,
                    },
                ],
            }],
        };
        assert!(commit_outcome("g", &response).is_ok());
        response.topics[0].partitions[1].error = Some(ApiError::new(
            ErrorCode::UnknownTopicOrPartition,
            "no partition 9",
        ));
        let err = commit_outcome("g", &response).unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::UnknownTopicOrPartition));
        assert!(err.to_string().contains("t/9"), "{err}");
    }

    #[test]
    fn partitions_without_a_commit_start_at_the_reset_policy() {
        let committed = |topic: &str, partition, offset| CommittedOffset {
            topic: topic.into(),
            partition,
            offset,
            metadata: String::new(),
            commit_time_ms: 0,
            instance_id: String::new(),
        };
        let (at_committed, at_reset) = split_by_committed(
            &[tp("t", 0), tp("t", 1), tp("u", 0)],
            &[
                committed("t", 1, 42),
                committed("u", 0, -1),
                committed("x", 0, 5),
            ],
        );
        assert_eq!(at_committed, vec![("t".to_string(), 1, 42)]);
        assert_eq!(at_reset, vec![tp("t", 0), tp("u", 0)]);
    }

    #[test]
    fn topics_are_distinct_and_sorted() {
        assert_eq!(
            topics_of(&[tp("b", 0), tp("a", 1), tp("b", 2)]),
            vec!["a".to_string(), "b".to_string()]
        );
    }
}
