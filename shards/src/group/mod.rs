//! Consumer groups (DESIGN.md 3.5): membership, assignment, committed
//! offsets.
//!
//! * [`coordinator`]: one group's membership state machine (pure), for
//!   server-assigned groups and for client-assigned ones (Kafka's classic
//!   protocol: a leader member assigns, SyncGroup relays).
//! * [`assignor`]: range, round-robin and sticky assignment (pure).
//! * [`offsets`]: records of the internal `__consumer_offsets` topic and
//!   their replay.
//!
//! A group lives on the shard that owns its partition of
//! `__consumer_offsets` (murmur2 of the group id, like Kafka); the request
//! handlers that drive it are in `shard/group.rs`.

pub mod assignor;
pub mod coordinator;
pub mod offsets;

use ringmq_wire::error::{ApiError, ErrorCode};

pub use coordinator::{Fence, Group, GroupSettings, GroupState};

/// The internal topic holding committed offsets and group metadata.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// Which partition of [`OFFSETS_TOPIC`] holds `group`.
pub fn offsets_partition(group: &str, partition_count: u32) -> u32 {
    assert!(partition_count > 0);
    ringmq_wire::murmur2::partition_for_key(group.as_bytes(), partition_count)
}

/// Group and instance ids: 1..=1024 bytes of printable characters.
pub fn validate_group_id(group: &str) -> Result<(), ApiError> {
    let bad = |why: &str| {
        Err(ApiError::new(
            ErrorCode::InvalidGroupId,
            format!("invalid group id {group:?}: {why}"),
        ))
    };
    if group.is_empty() {
        return bad("it is empty");
    }
    if group.len() > offsets::MAX_GROUP_STRING_BYTES {
        return bad("it is longer than 1024 bytes");
    }
    if group.chars().any(char::is_control) {
        return bad("it contains control characters");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_ids_are_validated_and_spread() {
        assert!(validate_group_id("billing-consumers.v2").is_ok());
        for bad in ["", "a\nb", &"x".repeat(1025)] {
            assert!(validate_group_id(bad).is_err());
        }
        let partitions: std::collections::HashSet<u32> = (0..200)
            .map(|i| offsets_partition(&format!("group-{i}"), 16))
            .collect();
        assert!(partitions.len() > 10, "groups spread over the partitions");
        assert_eq!(offsets_partition("g", 16), offsets_partition("g", 16));
    }
}
