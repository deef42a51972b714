//! Fleet state machine tests: every consistency rule without NATS.

use super::*;
use crate::index::BlockSet;

fn env(worker: &str, epoch: u64, seq: u64, body: Body) -> Envelope {
    Envelope::new(worker.into(), epoch, seq, 0, body)
}

fn stored(blocks: &[u64], parent: Option<u64>) -> Body {
    Body::Stored {
        blocks: blocks.iter().map(|&b| BlockHash(b)).collect(),
        parent: parent.map(BlockHash),
    }
}

fn removed(blocks: &[u64]) -> Body {
    Body::Removed {
        blocks: blocks.iter().map(|&b| BlockHash(b)).collect(),
    }
}

fn ids(v: &[u64]) -> Vec<BlockHash> {
    let mut v: Vec<BlockHash> = v.iter().map(|&b| BlockHash(b)).collect();
    v.sort_unstable();
    v
}

#[test]
fn in_order_messages_apply_and_duplicates_are_dropped() {
    let mut f = Fleet::new(FleetConfig::default());
    let w: WorkerId = "a".into();
    assert_eq!(f.apply(1, env("a", 7, 1, stored(&[1, 2, 3], None))), None);
    assert_eq!(f.apply(2, env("a", 7, 2, removed(&[3]))), None);
    assert_eq!(
        f.apply(3, env("a", 7, 2, removed(&[2]))),
        None,
        "duplicate seq"
    );
    assert_eq!(f.worker_blocks(&w), ids(&[1, 2]));
    assert_eq!(f.counters().duplicates, 1);
    assert_eq!(f.applied_stream_seq(), 3);
}

#[test]
fn gap_buffers_until_resync_then_applies_what_came_after() {
    let mut f = Fleet::new(FleetConfig::default());
    let w: WorkerId = "a".into();
    f.apply(1, env("a", 7, 1, stored(&[1, 2], None)));
    // seq 2 lost; seq 3 reveals the gap.
    let need = f.apply(2, env("a", 7, 3, stored(&[5], Some(2)))).unwrap();
    assert_eq!(need.cause, ResyncCause::Gap);
    assert!(f.needs_resync(&w));
    // While resyncing, later messages are buffered, not applied.
    assert_eq!(f.apply(3, env("a", 7, 4, removed(&[1]))), None);
    assert_eq!(f.worker_blocks(&w), ids(&[1, 2]));
    // The reporter's set as of seq 3 (the lost seq 2 stored block 4).
    let mut truth = BlockSet::default();
    truth.apply(&stored(&[1, 2], None));
    truth.apply(&stored(&[4], Some(2)));
    truth.apply(&stored(&[5], Some(2)));
    assert_eq!(f.resync_done(&w, 7, 3, &truth.entries()), None);
    // Buffered seq 3 is a duplicate of the set; seq 4 applies on top.
    truth.apply(&removed(&[1]));
    assert_eq!(f.worker_blocks(&w), truth.sorted_blocks());
    assert!(!f.needs_resync(&w));
    assert_eq!(f.counters().resyncs(ResyncCause::Gap), 1);
    assert_eq!(f.counters().resyncs_completed, 1);
}

#[test]
fn new_epoch_and_late_join_resync() {
    let mut f = Fleet::new(FleetConfig::default());
    f.apply(1, env("a", 1, 1, stored(&[1], None)));
    let need = f.apply(2, env("a", 2, 1, stored(&[9], None))).unwrap();
    assert_eq!(need.cause, ResyncCause::NewEpoch);
    // A message of an older epoch after the new one is stale, not a resync.
    f.resync_done(&"a".into(), 2, 1, &[(BlockHash(9), None)]);
    assert_eq!(f.apply(3, env("a", 1, 2, stored(&[3], None))), None);
    assert_eq!(f.counters().stale_epoch, 1);
    // A worker first seen mid-sequence (router started late) resyncs too.
    let need = f.apply(4, env("b", 5, 40, stored(&[7], None))).unwrap();
    assert_eq!(need.cause, ResyncCause::Gap);
}

#[test]
fn digest_mismatch_triggers_resync_and_match_does_not() {
    let mut f = Fleet::new(FleetConfig::default());
    let w: WorkerId = "a".into();
    f.apply(1, env("a", 1, 1, stored(&[1, 2], None)));
    let mut truth = BlockSet::default();
    truth.apply(&stored(&[1, 2], None));
    let d = truth.digest();
    let ok = Body::Digest {
        block_count: d.block_count,
        checksum: d.checksum,
    };
    assert_eq!(f.apply(2, env("a", 1, 2, ok)), None);
    assert_eq!(f.counters().digests_ok, 1);
    // The worker silently lost block 2 (no event): its next digest says so.
    truth.apply(&removed(&[2]));
    let d = truth.digest();
    let lie = Body::Digest {
        block_count: d.block_count,
        checksum: d.checksum,
    };
    let need = f.apply(3, env("a", 1, 3, lie)).unwrap();
    assert_eq!(need.cause, ResyncCause::DigestMismatch);
    f.resync_done(&w, 1, 3, &truth.entries());
    assert_eq!(f.worker_blocks(&w), truth.sorted_blocks());
}

#[test]
fn buffer_overflow_restarts_the_resync() {
    // Room for two one-block messages (about 105 bytes each), not three.
    let config = FleetConfig {
        max_buffered_bytes: 250,
        ..FleetConfig::default()
    };
    let mut f = Fleet::new(config);
    f.apply(1, env("a", 1, 1, stored(&[1], None)));
    assert!(f.apply(2, env("a", 1, 3, stored(&[2], None))).is_some());
    assert!(f.apply(3, env("a", 1, 4, stored(&[3], None))).is_none());
    let need = f.apply(4, env("a", 1, 5, stored(&[4], None))).unwrap();
    assert_eq!(need.cause, ResyncCause::BufferOverflow);
    assert_eq!(f.counters().buffer_dropped, 3);
}

#[test]
fn the_buffer_budget_is_in_bytes_and_shared_by_all_workers() {
    // One 1,000-block message is worth many small ones: the budget counts bytes.
    let config = FleetConfig {
        max_buffered_bytes: 9_000,
        ..FleetConfig::default()
    };
    let mut f = Fleet::new(config);
    // About 8,900 bytes: it would fit alone.
    let big: Vec<u64> = (100..1_200).collect();
    f.apply(1, env("a", 1, 1, stored(&[1], None)));
    f.apply(2, env("b", 1, 1, stored(&[2], None)));
    assert!(f.apply(3, env("a", 1, 3, stored(&[3], None))).is_some());
    assert!(f.apply(4, env("b", 1, 3, stored(&[4], None))).is_some());
    // Worker b's big message does not fit in what a and b buffered together.
    let need = f.apply(5, env("b", 1, 4, stored(&big, None))).unwrap();
    assert_eq!(need.cause, ResyncCause::BufferOverflow);
    assert_eq!(need.worker, WorkerId::from("b"));
    // a's buffer is untouched, b's was released: the budget accounts for both.
    assert!(f.apply(6, env("a", 1, 4, stored(&[5], None))).is_none());
    assert_eq!(f.counters().buffer_dropped, 2);
    f.resync_done(&"b".into(), 1, 4, &[]);
    f.resync_done(&"a".into(), 1, 2, &[]);
    assert_eq!(f.buffered_bytes, 0, "released on completion");
}

#[test]
fn a_forged_sequence_jump_costs_one_resync_not_a_loop() {
    let mut f = Fleet::new(FleetConfig::default());
    let w: WorkerId = "a".into();
    f.apply(1, env("a", 1, 1, stored(&[1], None)));
    // A forger on a's subject jumps the sequence by 10^12.
    let need = f.apply(2, env("a", 1, 1_000_000_000_001, stored(&[66], None)));
    assert_eq!(need.map(|n| n.cause), Some(ResyncCause::Gap));
    // The real worker goes on while the resync is pending.
    assert!(f.apply(3, env("a", 1, 2, stored(&[2], Some(1)))).is_none());
    // Its set as of seq 1: the forged message is ahead of anything the worker sent, so it
    // is dropped; the real seq 2 applies; no second resync.
    assert_eq!(f.resync_done(&w, 1, 1, &[(BlockHash(1), None)]), None);
    assert_eq!(f.worker_blocks(&w), ids(&[1, 2]));
    assert_eq!(f.counters().ahead_dropped, 1);
    assert_eq!(f.counters().resyncs_total(), 1);
    assert!(f.apply(4, env("a", 1, 3, stored(&[3], Some(2)))).is_none());
    assert_eq!(f.worker_blocks(&w), ids(&[1, 2, 3]));
}

fn info(id: &str) -> WorkerInfo {
    WorkerInfo {
        id: id.into(),
        url: "http://127.0.0.1:1".into(),
        model: "m".into(),
        block_size: 16,
        epoch: 1,
    }
}

#[test]
fn invented_worker_ids_are_quarantined_and_a_registering_worker_always_gets_a_slot() {
    let config = FleetConfig {
        max_unregistered: 3,
        ..FleetConfig::default()
    };
    let mut f = Fleet::new(config);
    for i in 0..10u64 {
        f.apply(i + 1, env(&format!("fake-{i}"), 1, 1, stored(&[i], None)));
    }
    assert_eq!(
        f.workers().count(),
        3,
        "only three unregistered ids hold slots"
    );
    assert_eq!(f.counters().unregistered_dropped, 7);
    f.register(info("real"));
    f.apply(11, env("real", 1, 1, stored(&[42], None)));
    assert_eq!(f.worker_blocks(&"real".into()), ids(&[42]));
    // Registered workers do not count against the quarantine.
    f.apply(12, env("fake-x", 1, 1, stored(&[7], None)));
    assert_eq!(f.counters().unregistered_dropped, 8);
}

#[test]
fn when_every_slot_is_taken_by_invented_ids_a_registering_worker_evicts_one() {
    let config = FleetConfig {
        max_unregistered: usize::MAX,
        ..FleetConfig::default()
    };
    let mut f = Fleet::new(config);
    let slots = usize::from(MAX_WORKER_SLOT) + 1;
    for i in 0..slots as u64 {
        f.apply(i + 1, env(&format!("f{i}"), 1, 1, stored(&[i], None)));
    }
    assert_eq!(f.workers().count(), slots);
    f.apply(slots as u64 + 1, env("late", 1, 1, stored(&[1], None)));
    assert_eq!(
        f.counters().no_slot,
        1,
        "no slot left for another invented id"
    );
    f.register(info("real"));
    assert!(f.worker(&"real".into()).is_some_and(|e| e.info.is_some()));
    assert_eq!(f.counters().unregistered_evicted, 1);
    assert_eq!(f.workers().count(), slots);
}

#[test]
fn unregistered_ids_are_purged_at_the_second_sweep_and_registered_ones_never() {
    let mut f = Fleet::new(FleetConfig::default());
    f.register(info("real"));
    f.apply(1, env("real", 1, 1, stored(&[1], None)));
    f.apply(2, env("ghost", 1, 1, stored(&[2], None)));
    assert!(f.purge_unregistered().is_empty(), "first sweep only marks");
    // A worker whose events came just before its entry registers in time.
    f.apply(3, env("late", 1, 1, stored(&[3], None)));
    let purged: Vec<WorkerId> = f
        .purge_unregistered()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(purged, vec![WorkerId::from("ghost")]);
    f.register(info("late"));
    assert!(f.purge_unregistered().is_empty());
    assert!(f.worker(&"late".into()).is_some());
    assert!(f.worker(&"real".into()).is_some());
    assert!(f.worker(&"ghost".into()).is_none());
    assert_eq!(f.index().stats().entries, 2, "the ghost's blocks are gone");
    assert_eq!(f.counters().unregistered_purged, 1);
}

#[test]
fn registry_and_deregistration_purge() {
    let mut f = Fleet::new(FleetConfig::default());
    let info = WorkerInfo {
        id: "a".into(),
        url: "http://127.0.0.1:1".into(),
        model: "m".into(),
        block_size: 16,
        epoch: 1,
    };
    f.register(info.clone());
    f.apply(1, env("a", 1, 1, stored(&[1, 2], None)));
    f.update_load(
        &"a".into(),
        Load {
            running: 2,
            ..Load::default()
        },
    );
    let e = f.worker(&"a".into()).unwrap();
    assert_eq!(e.info.as_ref(), Some(&info));
    assert_eq!(e.load.as_ref().unwrap().running, 2);
    let slot = f.deregister(&"a".into()).unwrap();
    assert!(f.worker(&"a".into()).is_none());
    assert_eq!(f.index().stats().entries, 0);
    // The slot is reused by the next worker.
    f.apply(2, env("b", 1, 1, stored(&[3], None)));
    assert_eq!(f.worker(&"b".into()).unwrap().idx, slot);
}

#[test]
fn snapshot_round_trip_restores_the_exact_state() {
    let mut f = Fleet::new(FleetConfig::default());
    f.apply(1, env("a", 3, 1, stored(&[1, 2, 3], None)));
    f.apply(2, env("b", 4, 1, stored(&[1, 9], None)));
    f.apply(3, env("b", 4, 2, removed(&[9])));
    f.apply(4, env("c", 1, 1, stored(&[5], None)));
    f.apply(5, env("c", 1, 3, stored(&[6], None))); // gap: c is resyncing
    let snap = f.snapshot();
    let bytes = snap.encode().unwrap();
    let back = Snapshot::decode(&bytes).unwrap();
    assert_eq!(back, snap);
    let (g, needs) = Fleet::restore(FleetConfig::default(), back);
    assert_eq!(g.applied_stream_seq(), 5);
    for w in ["a", "b"] {
        let id: WorkerId = w.into();
        assert_eq!(g.worker_blocks(&id), f.worker_blocks(&id));
        assert_eq!(
            g.worker(&id).unwrap().last_seq,
            f.worker(&id).unwrap().last_seq
        );
        assert_eq!(
            g.index().worker_digest(g.worker(&id).unwrap().idx),
            f.index().worker_digest(f.worker(&id).unwrap().idx)
        );
    }
    assert_eq!(
        needs,
        vec![ResyncNeeded {
            worker: "c".into(),
            cause: ResyncCause::Restore
        }]
    );
    // Continuing the stream after the snapshot works as if never restarted.
    let mut g = g;
    assert_eq!(g.apply(6, env("a", 3, 2, removed(&[3]))), None);
    assert_eq!(g.worker_blocks(&"a".into()), ids(&[1, 2]));
}
