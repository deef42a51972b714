//! The router's own accounting of what it has in flight to each worker: the load term of the
//! cost function.
//!
//! Per worker slot, three atomics:
//! - `prefill_blocks`: uncached prefill blocks of requests sent whose first response byte has
//!   not arrived yet (the prefill a new request would queue behind),
//! - `decoding`: requests past their first byte and not finished,
//! - `requests`: every request in flight, whatever its phase.
//!
//! [`InFlight::begin`] hands out a [`Guard`] that owns one request's share; its `Drop` gives
//! back whatever it still holds, so every exit path (completion, engine error, timeout, client
//! disconnect mid-stream, unwinding) releases exactly once. No lock is ever taken.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use cache_router_core::index::WorkerIdx;
use cache_router_core::policy::WorkerLoad;
use cache_router_core::routing::LoadSource;

#[derive(Debug, Default)]
struct Slot {
    prefill_blocks: AtomicU64,
    decoding: AtomicU32,
    requests: AtomicU32,
}

#[derive(Debug)]
struct Inner {
    slots: Box<[Slot]>,
    /// One past the highest slot ever begun on (what [`InFlight::snapshot`] covers).
    used: AtomicUsize,
}

/// Per-worker in-flight counters, shared by cheap clones.
#[derive(Clone, Debug)]
pub struct InFlight {
    inner: Arc<Inner>,
}

impl InFlight {
    /// Counters for worker slots `0..max_workers`. A request to a slot past that is not
    /// counted (its guard holds nothing and [`load`](InFlight::load) reports zero).
    pub fn new(max_workers: usize) -> InFlight {
        InFlight {
            inner: Arc::new(Inner {
                slots: (0..max_workers).map(|_| Slot::default()).collect(),
                used: AtomicUsize::new(0),
            }),
        }
    }

    /// How many worker slots are counted.
    pub fn capacity(&self) -> usize {
        self.inner.slots.len()
    }

    /// Counts a request to `w` as in flight and prefilling `uncached_blocks` blocks.
    pub fn begin(&self, w: WorkerIdx, uncached_blocks: u32) -> Guard {
        let Some(slot) = self.inner.slots.get(w.get()) else {
            tracing::warn!(
                worker = w.get(),
                capacity = self.capacity(),
                "worker slot past the in-flight capacity is not counted"
            );
            return Guard {
                inner: Arc::clone(&self.inner),
                worker: w,
                blocks: uncached_blocks,
                phase: Phase::Done,
            };
        };
        self.inner.used.fetch_max(w.get() + 1, Ordering::Relaxed);
        slot.requests.fetch_add(1, Ordering::Relaxed);
        slot.prefill_blocks
            .fetch_add(u64::from(uncached_blocks), Ordering::Relaxed);
        Guard {
            inner: Arc::clone(&self.inner),
            worker: w,
            blocks: uncached_blocks,
            phase: Phase::Prefill,
        }
    }

    /// `w`'s load as the policy sees it. The three counters are read one after the other, so
    /// a request changing phase meanwhile may be seen in both or neither phase.
    pub fn load(&self, w: WorkerIdx) -> WorkerLoad {
        match self.inner.slots.get(w.get()) {
            Some(slot) => WorkerLoad {
                prefill_blocks: slot.prefill_blocks.load(Ordering::Relaxed) as f64,
                decode_requests: f64::from(slot.decoding.load(Ordering::Relaxed)),
                requests: slot.requests.load(Ordering::Relaxed),
            },
            None => WorkerLoad::default(),
        }
    }

    /// Every slot ever used (including ones now idle, so metrics fall back to 0 rather than
    /// vanish), in slot order.
    pub fn snapshot(&self) -> Vec<(WorkerIdx, WorkerLoad)> {
        let used = self
            .inner
            .used
            .load(Ordering::Relaxed)
            .min(self.inner.slots.len());
        (0..used)
            .filter_map(|i| WorkerIdx::new(i as u32))
            .map(|w| (w, self.load(w)))
            .collect()
    }
}

/// Lets routing decisions read the proxy's in-flight accounting.
impl LoadSource for InFlight {
    fn load(&self, w: WorkerIdx) -> WorkerLoad {
        InFlight::load(self, w)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Prefill,
    Decoding,
    Done,
}

/// One request's share of a worker's in-flight counters; released on drop.
#[derive(Debug)]
#[must_use = "dropping the guard ends the request's accounting"]
pub struct Guard {
    inner: Arc<Inner>,
    worker: WorkerIdx,
    blocks: u32,
    phase: Phase,
}

impl Guard {
    /// The first response byte arrived: the request's prefill is done and it is decoding.
    /// Idempotent.
    pub fn first_byte(&mut self) {
        if self.phase != Phase::Prefill {
            return;
        }
        self.phase = Phase::Decoding;
        let slot = &self.inner.slots[self.worker.get()];
        slot.decoding.fetch_add(1, Ordering::Relaxed);
        slot.prefill_blocks
            .fetch_sub(u64::from(self.blocks), Ordering::Relaxed);
    }

    /// Has the first byte arrived?
    pub fn is_decoding(&self) -> bool {
        self.phase == Phase::Decoding
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let phase = std::mem::replace(&mut self.phase, Phase::Done);
        if phase == Phase::Done {
            return;
        }
        let slot = &self.inner.slots[self.worker.get()];
        match phase {
            Phase::Prefill => {
                slot.prefill_blocks
                    .fetch_sub(u64::from(self.blocks), Ordering::Relaxed);
            }
            Phase::Decoding => {
                slot.decoding.fetch_sub(1, Ordering::Relaxed);
            }
            Phase::Done => {}
        }
        slot.requests.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(i: u32) -> WorkerIdx {
        WorkerIdx::new(i).unwrap()
    }

    fn load(prefill: f64, decoding: f64, requests: u32) -> WorkerLoad {
        WorkerLoad {
            prefill_blocks: prefill,
            decode_requests: decoding,
            requests,
        }
    }

    #[test]
    fn begin_first_byte_drop_walk_the_phases() {
        let f = InFlight::new(4);
        let mut a = f.begin(w(1), 10);
        let b = f.begin(w(1), 5);
        assert_eq!(f.load(w(1)), load(15.0, 0.0, 2));
        assert_eq!(f.load(w(0)), WorkerLoad::default());

        a.first_byte();
        assert!(a.is_decoding());
        assert_eq!(f.load(w(1)), load(5.0, 1.0, 2));
        a.first_byte(); // idempotent
        assert_eq!(f.load(w(1)), load(5.0, 1.0, 2));

        drop(b); // released while still prefilling
        assert_eq!(f.load(w(1)), load(0.0, 1.0, 1));
        drop(a); // released while decoding
        assert_eq!(f.load(w(1)), load(0.0, 0.0, 0));
    }

    #[test]
    fn workers_are_counted_apart_and_snapshot_covers_used_slots() {
        let f = InFlight::new(8);
        assert!(f.snapshot().is_empty());
        let _a = f.begin(w(0), 3);
        let mut c = f.begin(w(2), 7);
        c.first_byte();
        let snap = f.snapshot();
        assert_eq!(
            snap,
            vec![
                (w(0), load(3.0, 0.0, 1)),
                (w(1), load(0.0, 0.0, 0)),
                (w(2), load(0.0, 1.0, 1)),
            ]
        );
        drop(c);
        assert_eq!(f.snapshot()[2], (w(2), WorkerLoad::default()));
    }

    #[test]
    fn clones_share_counters_and_slots_past_capacity_are_ignored() {
        let f = InFlight::new(2);
        let g = f.clone();
        let guard = f.begin(w(1), 4);
        assert_eq!(g.load(w(1)).requests, 1);
        drop(guard);
        assert_eq!(g.load(w(1)).requests, 0);

        let mut far = f.begin(w(5), 9);
        far.first_byte();
        assert_eq!(f.load(w(5)), WorkerLoad::default());
        drop(far);
        assert_eq!(f.snapshot().len(), 2);
    }

    #[test]
    fn guard_released_on_panic_unwind() {
        let f = InFlight::new(1);
        let f2 = f.clone();
        let r = std::panic::catch_unwind(move || {
            let mut g = f2.begin(w(0), 2);
            g.first_byte();
            panic!("handler blew up");
        });
        assert!(r.is_err());
        assert_eq!(f.load(w(0)), WorkerLoad::default());
    }

    #[test]
    fn concurrent_begin_and_drop_balance_to_zero() {
        let f = InFlight::new(4);
        std::thread::scope(|s| {
            for t in 0..8u32 {
                let f = &f;
                s.spawn(move || {
                    for i in 0..2_000u32 {
                        let mut g = f.begin(w(t % 4), i % 17);
                        if i % 3 != 0 {
                            g.first_byte();
                        }
                    }
                });
            }
        });
        for i in 0..4 {
            assert_eq!(f.load(w(i)), WorkerLoad::default());
        }
    }
}
