//! Index formats: lookups against a linear-scan model, round trips, and
//! damage detection.

use proptest::prelude::*;
use ringmq_shards::log::{
    checkpoint::Checkpoint,
    index::{IndexTrailer, OffsetIndex},
    timeindex::TimeIndex,
};

fn build_index(steps: &[(u32, u32)]) -> OffsetIndex {
    let mut idx = OffsetIndex::new();
    let (mut rel, mut pos) = (0u32, 0u32);
    for &(dr, dp) in steps {
        rel += dr;
        pos += dp;
        idx.push(rel, pos);
    }
    idx
}

fn trailer(idx: &OffsetIndex) -> IndexTrailer {
    IndexTrailer {
        entry_count: 0,
        segment_bytes: idx.last().map_or(0, |e| e.position as u64) + 100,
        next_offset: 1_000 + idx.last().map_or(0, |e| e.relative_offset as i64) + 1,
        max_timestamp: 77,
    }
}

proptest! {
    #[test]
    fn offset_lookup_matches_linear_scan(
        steps in prop::collection::vec((1u32..50, 1u32..5000), 0..200),
        targets in prop::collection::vec(0u32..12_000, 1..50),
    ) {
        let idx = build_index(&steps);
        for t in targets {
            let model = idx.entries().iter().rev().find(|e| e.relative_offset <= t).copied();
            prop_assert_eq!(idx.lookup(t), model);
        }
    }

    #[test]
    fn time_lookup_matches_linear_scan(
        steps in prop::collection::vec((-5i64..50, 0u32..5), 0..200),
        targets in prop::collection::vec(-10i64..12_000, 1..50),
    ) {
        let mut ti = TimeIndex::new();
        let (mut ts, mut rel) = (0i64, 0u32);
        for (dt, dr) in steps {
            ts += dt;
            rel += dr;
            ti.maybe_push(ts, rel);
        }
        for w in ti.entries().windows(2) {
            prop_assert!(w[0].timestamp < w[1].timestamp);
            prop_assert!(w[0].relative_offset <= w[1].relative_offset);
        }
        for t in targets {
            let model = ti.entries().iter().rev().find(|e| e.timestamp <= t).copied();
            prop_assert_eq!(ti.lookup(t), model);
        }
    }

    #[test]
    fn encoded_index_round_trips_and_any_damage_is_detected(
        steps in prop::collection::vec((1u32..50, 1u32..5000), 0..50),
        flip_at in any::<prop::sample::Index>(),
        flip_bit in 0u8..8,
    ) {
        let idx = build_index(&steps);
        let t = trailer(&idx);
        let bytes = idx.encode(&t);
        let (back, bt) = OffsetIndex::decode(&bytes).unwrap();
        prop_assert_eq!(back.entries(), idx.entries());
        prop_assert_eq!(bt.segment_bytes, t.segment_bytes);
        prop_assert_eq!(bt.next_offset, t.next_offset);
        prop_assert_eq!(bt.entry_count as usize, idx.len());
        let mut bad = bytes.clone();
        let i = flip_at.index(bad.len());
        bad[i] ^= 1 << flip_bit;
        prop_assert!(OffsetIndex::decode(&bad).is_err());
        prop_assert!(OffsetIndex::decode(&bytes[..bytes.len() - 1]).is_err());
        prop_assert!(TimeIndex::decode(&bytes).is_err(), "magic tells the formats apart");
    }
}

#[test]
fn time_index_round_trip() {
    let mut ti = TimeIndex::new();
    for i in 0..100 {
        ti.maybe_push(1_000 + i * 3, (i * 2) as u32);
    }
    let t = IndexTrailer {
        entry_count: 0,
        segment_bytes: 4096,
        next_offset: 300,
        max_timestamp: 1_297,
    };
    let bytes = ti.encode(&t);
    let (back, bt) = TimeIndex::decode(&bytes).unwrap();
    assert_eq!(back.entries(), ti.entries());
    assert_eq!(bt.max_timestamp, 1_297);
    assert_eq!(ti.lookup(999), None);
    assert_eq!(ti.lookup(1_004).unwrap().timestamp, 1_003);
}

#[test]
fn checkpoint_round_trip_and_damage() {
    let cp = Checkpoint {
        durable_offset: 12_345,
        log_start_offset: 100,
    };
    let bytes = cp.encode();
    assert_eq!(Checkpoint::decode(&bytes).unwrap(), cp);
    for i in 0..bytes.len() {
        let mut bad = bytes;
        bad[i] ^= 0x01;
        assert!(Checkpoint::decode(&bad).is_err(), "flip at {i}");
    }
    assert!(Checkpoint::decode(&bytes[..10]).is_err());
}
