//! The topic catalog: names, partition counts, per-topic configs, placement.
//!
//! Every shard holds an immutable snapshot (`Rc<Catalog>`) and answers
//! Metadata from it without a hop. Shard 0 is the controller: it alone
//! mutates the catalog (create/delete), persists it (`meta/topics.json`,
//! written to a temporary file, fdatasync'd, renamed, directory fsync'd) and
//! then pushes the new snapshot to every shard.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Longest topic name accepted (Kafka's limit).
pub const MAX_TOPIC_NAME_BYTES: usize = 249;
/// Upper bound on partitions per topic: each one holds open files and memory.
pub const MAX_PARTITIONS_PER_TOPIC: u32 = 10_000;

/// Per-topic settings. `-1` means unlimited where it applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConfig {
    pub retention_ms: i64,
    pub retention_bytes: i64,
    pub segment_bytes: u64,
    pub segment_ms: i64,
    pub max_message_bytes: u32,
}

impl Default for TopicConfig {
    fn default() -> TopicConfig {
        TopicConfig {
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: -1,
            segment_bytes: 256 * 1024 * 1024,
            segment_ms: 7 * 24 * 3600 * 1000,
            max_message_bytes: 16 * 1024 * 1024,
        }
    }
}

/// The config keys a client may set, Kafka-spelled.
pub const CONFIG_KEYS: [&str; 5] = [
    "retention.ms",
    "retention.bytes",
    "segment.bytes",
    "segment.ms",
    "max.message.bytes",
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("topic {0:?} already exists")]
    AlreadyExists(String),
    #[error("topic {0:?} does not exist")]
    UnknownTopic(String),
    #[error("invalid partition count {count} for topic {name:?}: must be 1..={MAX_PARTITIONS_PER_TOPIC}")]
    InvalidPartitions { name: String, count: u32 },
    /// Shrinking would drop partitions and their data, and moving records
    /// between partitions would break per-key order: counts only grow.
    #[error("cannot set topic {name:?} to {requested} partitions: a topic's partition count only grows: it has {current}; ask for more than {current}")]
    PartitionsOnlyGrow {
        name: String,
        current: u32,
        requested: u32,
    },
    #[error("invalid config {key}={value:?}: {reason}")]
    InvalidConfig {
        key: String,
        value: String,
        reason: String,
    },
}

impl TopicConfig {
    /// Applies Kafka-spelled overrides on top of `self`.
    pub fn with_overrides(
        mut self,
        overrides: &[(String, String)],
    ) -> Result<TopicConfig, CatalogError> {
        for (key, value) in overrides {
            let bad = |reason: &str| CatalogError::InvalidConfig {
                key: key.clone(),
                value: value.clone(),
                reason: reason.to_string(),
            };
            let int: i64 = value.trim().parse().map_err(|_| bad("not an integer"))?;
            match key.as_str() {
                "retention.ms" if int >= -1 => self.retention_ms = int,
                "retention.bytes" if int >= -1 => self.retention_bytes = int,
                "segment.bytes" if (4096..=(1 << 31)).contains(&int) => {
                    self.segment_bytes = int as u64
                }
                "segment.ms" if int >= 1 => self.segment_ms = int,
                "max.message.bytes" if (1024..=(1 << 30)).contains(&int) => {
                    self.max_message_bytes = int as u32
                }
                k if CONFIG_KEYS.contains(&k) => return Err(bad("out of range")),
                _ => {
                    return Err(bad(&format!(
                        "unknown config key; supported keys: {}",
                        CONFIG_KEYS.join(", ")
                    )))
                }
            }
        }
        Ok(self)
    }

    /// Kafka-spelled key/value pairs, for Metadata and `topic describe`.
    pub fn to_pairs(&self) -> Vec<(String, String)> {
        vec![
            ("retention.ms".into(), self.retention_ms.to_string()),
            ("retention.bytes".into(), self.retention_bytes.to_string()),
            ("segment.bytes".into(), self.segment_bytes.to_string()),
            ("segment.ms".into(), self.segment_ms.to_string()),
            (
                "max.message.bytes".into(),
                self.max_message_bytes.to_string(),
            ),
        ]
    }
}

/// Checks a topic name: 1..=249 bytes of `[A-Za-z0-9._-]`, not `.` or `..`,
/// and not starting with `__` (reserved for internal topics).
pub fn validate_topic_name(name: &str) -> Result<(), CatalogError> {
    let bad = |reason| {
        Err(CatalogError::InvalidName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_TOPIC_NAME_BYTES {
        return bad("longer than 249 bytes");
    }
    if name == "." || name == ".." {
        return bad("'.' and '..' are not allowed");
    }
    if name.starts_with("__") {
        return bad("names starting with '__' are reserved for internal topics");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return bad("only ASCII letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicEntry {
    pub name: String,
    pub partitions: u32,
    pub config: TopicConfig,
    pub created_ms: i64,
}

/// One immutable version of the catalog.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    /// Bumped by every change; shards apply snapshots in version order.
    pub version: u64,
    pub topics: BTreeMap<String, TopicEntry>,
}

impl Catalog {
    pub fn topic(&self, name: &str) -> Option<&TopicEntry> {
        self.topics.get(name)
    }

    /// A new version with `entry` added.
    pub fn with_topic(&self, entry: TopicEntry) -> Result<Catalog, CatalogError> {
        validate_topic_name(&entry.name)?;
        if !(1..=MAX_PARTITIONS_PER_TOPIC).contains(&entry.partitions) {
            return Err(CatalogError::InvalidPartitions {
                name: entry.name.clone(),
                count: entry.partitions,
            });
        }
        if self.topics.contains_key(&entry.name) {
            return Err(CatalogError::AlreadyExists(entry.name));
        }
        let mut next = self.clone();
        next.version += 1;
        next.topics.insert(entry.name.clone(), entry);
        Ok(next)
    }

    /// A new version without topic `name`.
    pub fn without_topic(&self, name: &str) -> Result<Catalog, CatalogError> {
        if is_internal_topic(name) {
            return Err(CatalogError::InvalidName {
                name: name.to_string(),
                reason: "internal topics cannot be deleted",
            });
        }
        if !self.topics.contains_key(name) {
            return Err(CatalogError::UnknownTopic(name.to_string()));
        }
        let mut next = self.clone();
        next.version += 1;
        next.topics.remove(name);
        Ok(next)
    }

    /// A new version in which topic `name` has `count` partitions. The
    /// partitions it already has keep their numbers, data and placement
    /// ([`owner_shard`] depends only on the topic, the partition and the
    /// shard count), so the new ones `current..count` are simply added.
    pub fn with_partitions(&self, name: &str, count: u32) -> Result<Catalog, CatalogError> {
        if is_internal_topic(name) {
            // The offsets topic's partition count decides which shard
            // coordinates each group: changing it would strand every group.
            return Err(CatalogError::InvalidName {
                name: name.to_string(),
                reason: "internal topics cannot be changed (the partition count of __consumer_offsets is fixed when it is first created)",
            });
        }
        let Some(entry) = self.topics.get(name) else {
            return Err(CatalogError::UnknownTopic(name.to_string()));
        };
        if count <= entry.partitions {
            return Err(CatalogError::PartitionsOnlyGrow {
                name: name.to_string(),
                current: entry.partitions,
                requested: count,
            });
        }
        if count > MAX_PARTITIONS_PER_TOPIC {
            return Err(CatalogError::InvalidPartitions {
                name: name.to_string(),
                count,
            });
        }
        let mut next = self.clone();
        next.version += 1;
        let grown = next
            .topics
            .get_mut(name)
            .expect("the topic was found in the same map just above");
        grown.partitions = count;
        debug_assert!(grown.partitions > entry.partitions);
        Ok(next)
    }

    /// Adds an internal topic if it is missing, without bumping the
    /// version: every shard adds the same entry to the catalog it loaded, so
    /// all agree without a controller round trip, and the controller
    /// persists it with its next change. An existing entry wins (its
    /// partition count decides where groups live, so it must not change).
    pub fn with_internal_topic(
        mut self,
        name: &str,
        partitions: u32,
        config: TopicConfig,
    ) -> Catalog {
        assert!(is_internal_topic(name));
        assert!(partitions > 0);
        self.topics
            .entry(name.to_string())
            .or_insert_with(|| TopicEntry {
                name: name.to_string(),
                partitions,
                config,
                created_ms: 0,
            });
        self
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("catalog serializes")
    }

    pub fn from_json(bytes: &[u8]) -> Result<Catalog, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }
}

/// Internal topics (`__` prefix) are created by the broker itself.
pub fn is_internal_topic(name: &str) -> bool {
    name.starts_with("__")
}

/// Deterministic placement: partitions of a topic go round-robin across
/// shards, starting at a shard derived from the topic name so that many
/// single-partition topics do not all land on shard 0. A pure function of
/// (topic, partition, shard count): every shard computes the same answer.
pub fn owner_shard(topic: &str, partition: u32, shard_count: usize) -> usize {
    assert!(shard_count > 0);
    let start = ringmq_wire::murmur2::murmur2(topic.as_bytes()) as u32 as u64;
    ((start + partition as u64) % shard_count as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(validate_topic_name("orders.v1_eu-west").is_ok());
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a b",
            "__internal",
            "é",
            &"x".repeat(250),
        ] {
            assert!(validate_topic_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn placement_is_deterministic_and_spread() {
        let shards = 4;
        let owners: Vec<usize> = (0..8).map(|p| owner_shard("orders", p, shards)).collect();
        assert_eq!(
            owners,
            (0..8)
                .map(|p| owner_shard("orders", p, shards))
                .collect::<Vec<_>>()
        );
        for s in 0..shards {
            assert_eq!(owners.iter().filter(|o| **o == s).count(), 2);
        }
    }

    #[test]
    fn configs_parse_and_refuse_nonsense() {
        let cfg = TopicConfig::default()
            .with_overrides(&[("retention.ms".into(), "1000".into())])
            .unwrap();
        assert_eq!(cfg.retention_ms, 1000);
        assert!(TopicConfig::default()
            .with_overrides(&[("retention.ms".into(), "soon".into())])
            .is_err());
        assert!(TopicConfig::default()
            .with_overrides(&[("no.such.key".into(), "1".into())])
            .is_err());
    }

    #[test]
    fn catalog_versions_and_round_trips() {
        let c = Catalog::default();
        let entry = TopicEntry {
            name: "t".into(),
            partitions: 3,
            config: TopicConfig::default(),
            created_ms: 1,
        };
        let c1 = c.with_topic(entry.clone()).unwrap();
        assert_eq!(c1.version, 1);
        assert!(matches!(
            c1.with_topic(entry),
            Err(CatalogError::AlreadyExists(_))
        ));
        assert_eq!(Catalog::from_json(&c1.to_json()).unwrap(), c1);
        let c2 = c1.without_topic("t").unwrap();
        assert_eq!(c2.version, 2);
        assert!(c2.topics.is_empty());
    }

    fn catalog_with(name: &str, partitions: u32) -> Catalog {
        Catalog::default()
            .with_topic(TopicEntry {
                name: name.into(),
                partitions,
                config: TopicConfig::default(),
                created_ms: 7,
            })
            .unwrap()
    }

    #[test]
    fn catalog_with_partitions_grows_a_topic() {
        let c1 = catalog_with("t", 2);
        let c2 = c1.with_partitions("t", 5).unwrap();
        assert_eq!(c2.version, c1.version + 1);
        let grown = c2.topic("t").unwrap();
        assert_eq!(grown.partitions, 5);
        // Everything but the count is kept.
        assert_eq!(grown.config, c1.topic("t").unwrap().config);
        assert_eq!(grown.created_ms, 7);
        // The snapshot it came from is untouched (shards may still hold it).
        assert_eq!(c1.topic("t").unwrap().partitions, 2);
        // Placement ignores the partition count, so the old partitions keep
        // their owners and the new ones continue the round robin.
        for shards in 1..=4 {
            for p in 1..5 {
                assert_eq!(
                    owner_shard("t", p, shards),
                    (owner_shard("t", p - 1, shards) + 1) % shards
                );
            }
        }
        assert_eq!(Catalog::from_json(&c2.to_json()).unwrap(), c2);
        // Up to the limit, not past it.
        let max = c2.with_partitions("t", MAX_PARTITIONS_PER_TOPIC).unwrap();
        assert_eq!(max.topic("t").unwrap().partitions, MAX_PARTITIONS_PER_TOPIC);
        assert_eq!(
            c2.with_partitions("t", MAX_PARTITIONS_PER_TOPIC + 1),
            Err(CatalogError::InvalidPartitions {
                name: "t".into(),
                count: MAX_PARTITIONS_PER_TOPIC + 1
            })
        );
    }

    #[test]
    fn catalog_with_partitions_refuses_shrink_equal_unknown_internal() {
        let c = catalog_with("t", 3);
        for count in [0, 1, 2, 3] {
            let err = c.with_partitions("t", count).unwrap_err();
            assert_eq!(
                err,
                CatalogError::PartitionsOnlyGrow {
                    name: "t".into(),
                    current: 3,
                    requested: count
                }
            );
            assert!(
                err.to_string()
                    .contains("a topic's partition count only grows: it has 3"),
                "{err}"
            );
        }
        assert_eq!(
            c.with_partitions("nope", 4),
            Err(CatalogError::UnknownTopic("nope".into()))
        );
        let with_offsets =
            c.clone()
                .with_internal_topic("__consumer_offsets", 16, TopicConfig::default());
        assert!(matches!(
            with_offsets.with_partitions("__consumer_offsets", 32),
            Err(CatalogError::InvalidName { .. })
        ));
        // A refusal never yields a new version.
        assert_eq!(c.version, 1);
    }
}
