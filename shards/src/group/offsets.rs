//! Records of the internal `__consumer_offsets` topic and their replay.
//!
//! The topic is an ordinary partitioned log (same storage, recovery and
//! durability code as any topic); what makes it "compacted" is that only the
//! last record per key matters. Two kinds of record, both Kafka v2 records
//! with a binary key and value:
//!
//! * offset commit: key (group, instance, topic, partition) -> (offset,
//!   metadata, commit time). `instance` is empty for clustering groups and
//!   the consumer's instance id for broadcasting ones.
//! * group metadata: key (group) -> (generation, mode, assignor). A null
//!   value is a group tombstone: everything of that group written before it
//!   is dead.
//!
//! Layouts are versioned by their first byte so that a later broker can
//! read what this one wrote; an unknown version is skipped with a warning
//! rather than failing the coordinator.
//!
//! Client-assigned groups (Kafka's classic protocol) use the same records:
//! their offsets go under instance "" like a clustering group's, and the
//! group record keeps only the generation (mode clustering). Their
//! protocol type, chosen protocol, leader and assignments are not stored:
//! members are not persisted, so after a restart the group is empty, any
//! kind of member may take it over, and there is nothing to check a join
//! against. The layouts are therefore unchanged from version 1.

use std::collections::BTreeMap;

use ringmq_wire::group_api::{Assignor, GroupMode};

const KEY_VERSION: u8 = 1;
const VALUE_VERSION: u8 = 1;
const KIND_OFFSET: u8 = 1;
const KIND_GROUP: u8 = 2;

/// Longest group id, instance id or metadata string accepted (bytes).
pub const MAX_GROUP_STRING_BYTES: usize = 1024;

/// Identifies one committed offset.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OffsetKey {
    pub instance_id: String,
    pub topic: String,
    pub partition: u32,
}

/// A committed position: the next offset the consumer will read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub offset: i64,
    pub metadata: String,
    pub commit_time_ms: i64,
}

/// What a group-metadata record remembers across restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupMeta {
    pub generation: i32,
    pub mode: GroupMode,
    pub assignor: Assignor,
}

/// One decoded record of the offsets topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OffsetsRecord {
    Offset {
        group: String,
        key: OffsetKey,
        /// `None`: the offset was deleted.
        value: Option<Committed>,
    },
    Group {
        group: String,
        /// `None`: the group was deleted.
        meta: Option<GroupMeta>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unreadable __consumer_offsets record: {0}")]
pub struct DecodeError(&'static str);

// ------------------------------------------------------------- encoding

fn put_str(out: &mut Vec<u8>, s: &str) {
    assert!(s.len() <= u16::MAX as usize, "caller bounds string lengths");
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl OffsetsRecord {
    /// The record key: stable for a given identity, so "last one wins" works.
    pub fn key_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.push(KEY_VERSION);
        match self {
            OffsetsRecord::Offset { group, key, .. } => {
                out.push(KIND_OFFSET);
                put_str(&mut out, group);
                put_str(&mut out, &key.instance_id);
                put_str(&mut out, &key.topic);
                out.extend_from_slice(&key.partition.to_be_bytes());
            }
            OffsetsRecord::Group { group, .. } => {
                out.push(KIND_GROUP);
                put_str(&mut out, group);
            }
        }
        out
    }

    /// The record value; `None` for tombstones.
    pub fn value_bytes(&self) -> Option<Vec<u8>> {
        match self {
            OffsetsRecord::Offset { value, .. } => value.as_ref().map(|c| {
                let mut out = Vec::with_capacity(24 + c.metadata.len());
                out.push(VALUE_VERSION);
                out.extend_from_slice(&c.offset.to_be_bytes());
                out.extend_from_slice(&c.commit_time_ms.to_be_bytes());
                put_str(&mut out, &c.metadata);
                out
            }),
            OffsetsRecord::Group { meta, .. } => meta.as_ref().map(|m| {
                let mut out = Vec::with_capacity(7);
                out.push(VALUE_VERSION);
                out.extend_from_slice(&m.generation.to_be_bytes());
                out.push(mode_id(m.mode));
                out.push(assignor_id(m.assignor));
                out
            }),
        }
    }

    pub fn decode(key: &[u8], value: Option<&[u8]>) -> Result<OffsetsRecord, DecodeError> {
        let mut k = Cursor(key);
        if k.u8()? != KEY_VERSION {
            return Err(DecodeError("unknown key version"));
        }
        let kind = k.u8()?;
        let group = k.string()?;
        let record = match kind {
            KIND_OFFSET => {
                let key = OffsetKey {
                    instance_id: k.string()?,
                    topic: k.string()?,
                    partition: k.u32()?,
                };
                let value = value.map(decode_committed).transpose()?;
                OffsetsRecord::Offset { group, key, value }
            }
            KIND_GROUP => {
                let meta = value.map(decode_group_meta).transpose()?;
                OffsetsRecord::Group { group, meta }
            }
            _ => return Err(DecodeError("unknown record kind")),
        };
        k.end()?;
        Ok(record)
    }
}

fn decode_committed(value: &[u8]) -> Result<Committed, DecodeError> {
    let mut v = Cursor(value);
    if v.u8()? != VALUE_VERSION {
        return Err(DecodeError("unknown value version"));
    }
    let committed = Committed {
        offset: v.i64()?,
        commit_time_ms: v.i64()?,
        metadata: v.string()?,
    };
    v.end()?;
    Ok(committed)
}

fn decode_group_meta(value: &[u8]) -> Result<GroupMeta, DecodeError> {
    let mut v = Cursor(value);
    if v.u8()? != VALUE_VERSION {
        return Err(DecodeError("unknown value version"));
    }
    let meta = GroupMeta {
        generation: v.u32()? as i32,
        mode: mode_from_id(v.u8()?)?,
        assignor: assignor_from_id(v.u8()?)?,
    };
    v.end()?;
    Ok(meta)
}

fn mode_id(mode: GroupMode) -> u8 {
    match mode {
        GroupMode::Clustering => 0,
        GroupMode::Broadcasting => 1,
    }
}

fn mode_from_id(id: u8) -> Result<GroupMode, DecodeError> {
    match id {
        0 => Ok(GroupMode::Clustering),
        1 => Ok(GroupMode::Broadcasting),
        _ => Err(DecodeError("unknown group mode")),
    }
}

fn assignor_id(assignor: Assignor) -> u8 {
    match assignor {
        Assignor::Sticky => 0,
        Assignor::Range => 1,
        Assignor::RoundRobin => 2,
    }
}

fn assignor_from_id(id: u8) -> Result<Assignor, DecodeError> {
    match id {
        0 => Ok(Assignor::Sticky),
        1 => Ok(Assignor::Range),
        2 => Ok(Assignor::RoundRobin),
        _ => Err(DecodeError("unknown assignor")),
    }
}

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError("record is truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn string(&mut self) -> Result<String, DecodeError> {
        let len = u16::from_be_bytes(self.take(2)?.try_into().expect("2 bytes")) as usize;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError("string is not UTF-8"))
    }
    fn end(&self) -> Result<(), DecodeError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(DecodeError("trailing bytes"))
        }
    }
}

// --------------------------------------------------------------- replay

/// The durable state of the groups of one offsets partition, rebuilt by
/// replaying the partition from its start (last record per key wins).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplayedGroup {
    pub meta: Option<GroupMeta>,
    pub offsets: BTreeMap<OffsetKey, Committed>,
}

/// Applies one record to the replayed state.
pub fn apply_record(state: &mut BTreeMap<String, ReplayedGroup>, record: OffsetsRecord) {
    match record {
        OffsetsRecord::Offset { group, key, value } => {
            let entry = state.entry(group.clone()).or_default();
            match value {
                Some(committed) => {
                    entry.offsets.insert(key, committed);
                }
                None => {
                    entry.offsets.remove(&key);
                    if entry.meta.is_none() && entry.offsets.is_empty() {
                        state.remove(&group);
                    }
                }
            }
        }
        OffsetsRecord::Group { group, meta: None } => {
            state.remove(&group);
        }
        OffsetsRecord::Group {
            group,
            meta: Some(meta),
        } => {
            state.entry(group).or_default().meta = Some(meta);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(record: OffsetsRecord) {
        let key = record.key_bytes();
        let value = record.value_bytes();
        assert_eq!(
            OffsetsRecord::decode(&key, value.as_deref()).unwrap(),
            record
        );
    }

    #[test]
    fn records_round_trip() {
        let key = OffsetKey {
            instance_id: "c-1".into(),
            topic: "orders".into(),
            partition: 7,
        };
        round_trip(OffsetsRecord::Offset {
            group: "g".into(),
            key: key.clone(),
            value: Some(Committed {
                offset: 1 << 40,
                metadata: "meta".into(),
                commit_time_ms: 1_700_000_000_000,
            }),
        });
        round_trip(OffsetsRecord::Offset {
            group: "g".into(),
            key,
            value: None,
        });
        round_trip(OffsetsRecord::Group {
            group: "g".into(),
            meta: Some(GroupMeta {
                generation: 123_456,
                mode: GroupMode::Broadcasting,
                assignor: Assignor::RoundRobin,
            }),
        });
        round_trip(OffsetsRecord::Group {
            group: "g".into(),
            meta: None,
        });
    }

    /// Bytes as version 1 of the broker wrote them: logs written before
    /// client-assigned groups existed must keep decoding to the same state.
    #[test]
    fn version_1_records_still_decode() {
        let group_key = b"\x01\x02\x00\x01g";
        let group_value = b"\x01\x00\x00\x00\x07\x01\x02";
        assert_eq!(
            OffsetsRecord::decode(group_key, Some(group_value)).unwrap(),
            OffsetsRecord::Group {
                group: "g".into(),
                meta: Some(GroupMeta {
                    generation: 7,
                    mode: GroupMode::Broadcasting,
                    assignor: Assignor::RoundRobin,
                }),
            }
        );
        let offset_key = b"\x01\x01\x00\x01g\x00\x00\x00\x01t\x00\x00\x00\x03";
        let mut offset_value = vec![1u8];
        offset_value.extend_from_slice(&42i64.to_be_bytes());
        offset_value.extend_from_slice(&1_000i64.to_be_bytes());
        offset_value.extend_from_slice(b"\x00\x02md");
        let record = OffsetsRecord::decode(offset_key, Some(&offset_value)).unwrap();
        assert_eq!(
            record,
            OffsetsRecord::Offset {
                group: "g".into(),
                key: OffsetKey {
                    instance_id: String::new(),
                    topic: "t".into(),
                    partition: 3,
                },
                value: Some(Committed {
                    offset: 42,
                    metadata: "md".into(),
                    commit_time_ms: 1_000,
                }),
            }
        );
        // And this version writes exactly those bytes.
        assert_eq!(record.key_bytes(), offset_key);
        assert_eq!(record.value_bytes().unwrap(), offset_value);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            &b""[..],
            b"\x01",
            b"\x01\x09\x00\x01g",
            b"\x02\x01",
            b"\x01\x02\x00\x05g",
        ] {
            assert!(OffsetsRecord::decode(bad, None).is_err(), "{bad:?}");
        }
        let good = OffsetsRecord::Group {
            group: "g".into(),
            meta: None,
        }
        .key_bytes();
        assert!(OffsetsRecord::decode(&good, Some(b"\x01\x00")).is_err());
    }

    #[test]
    fn replay_keeps_the_last_value_and_honours_tombstones() {
        let commit = |group: &str, partition: u32, offset: i64| OffsetsRecord::Offset {
            group: group.into(),
            key: OffsetKey {
                instance_id: String::new(),
                topic: "t".into(),
                partition,
            },
            value: Some(Committed {
                offset,
                metadata: String::new(),
                commit_time_ms: 0,
            }),
        };
        let mut state = BTreeMap::new();
        apply_record(&mut state, commit("a", 0, 5));
        apply_record(&mut state, commit("a", 0, 9));
        apply_record(&mut state, commit("b", 1, 3));
        apply_record(
            &mut state,
            OffsetsRecord::Group {
                group: "b".into(),
                meta: None,
            },
        );
        apply_record(&mut state, commit("a", 1, 2));
        assert_eq!(state.len(), 1);
        let a = &state["a"];
        assert_eq!(a.offsets.len(), 2);
        assert_eq!(
            a.offsets.values().map(|c| c.offset).collect::<Vec<_>>(),
            [9, 2]
        );
        // A group deleted and then committed to again starts from scratch.
        apply_record(&mut state, commit("b", 0, 1));
        assert_eq!(state["b"].offsets.len(), 1);
    }
}
