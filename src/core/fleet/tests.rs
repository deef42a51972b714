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
    let config = FleetConfig {
        max_buffered: 2,
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
