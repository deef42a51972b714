//! Which workers the proxy has ejected, the one liveness source routing and the proxy share.
//!
//! The registry says which workers exist; this says which of them failed when the router
//! last tried them. After `failures_to_eject` consecutive failures (connection refused, no
//! headers in time, 5xx before any byte, a stream cut short) a worker is ejected: routing
//! ranks it after every healthy worker, so neither a proxied request nor `/route` picks it,
//! until the ejection lapses. Each ejection lasts twice the previous one (the
//! [`Backoff`] schedule), so a worker that keeps failing costs fewer and fewer requests; one
//! success clears its record. Lock-free (atomics per worker slot): the proxy records from any
//! task, routing reads on the fleet's thread. Time is passed in, so tests drive it with any
//! clock (the async shell passes tokio's, which tests can pause).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::backoff::Backoff;
use crate::index::WorkerIdx;

/// When to eject and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EjectionPolicy {
    /// Consecutive failures that eject a worker.
    pub failures_to_eject: u32,
    /// The first ejection lasts `backoff.initial`, each further one twice as long, capped.
    pub backoff: Backoff,
}

impl Default for EjectionPolicy {
    fn default() -> Self {
        EjectionPolicy {
            failures_to_eject: 3,
            backoff: Backoff {
                initial: Duration::from_secs(10),
                max: Duration::from_secs(300),
            },
        }
    }
}

/// Per-slot failure records.
#[derive(Debug)]
pub struct Liveness {
    slots: Box<[Slot]>,
    /// Origin of the `ejected_until` offsets.
    origin: Instant,
    policy: EjectionPolicy,
}

#[derive(Debug, Default)]
struct Slot {
    failures: AtomicU32,
    /// Ejections since the last success: the next one lasts `backoff.delay(ejections + 1)`.
    ejections: AtomicU32,
    /// Nanoseconds after `origin` until which the worker is ejected; 0 when it is not.
    ejected_until: AtomicU64,
}

/// A worker's record, for admin views.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerLiveness {
    pub consecutive_failures: u32,
    pub ejections: u32,
    /// Time left of the current ejection; None when the worker is not ejected.
    pub ejected_for: Option<Duration>,
}

impl Liveness {
    /// Tracks slots `0..max_workers` (others are always live). Instants passed to the
    /// methods should not precede `origin`.
    pub fn new(max_workers: usize, policy: EjectionPolicy, origin: Instant) -> Liveness {
        Liveness {
            slots: (0..max_workers).map(|_| Slot::default()).collect(),
            origin,
            policy: EjectionPolicy {
                failures_to_eject: policy.failures_to_eject.max(1),
                ..policy
            },
        }
    }

    fn offset(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Records a failed attempt at `w` at `now`; true when this failure ejected it. A failure
    /// reported while `w` is already ejected (a request that was in flight) does not lengthen
    /// the ejection.
    pub fn record_failure(&self, w: WorkerIdx, now: Instant) -> bool {
        let Some(slot) = self.slots.get(w.get()) else {
            return false;
        };
        let at = self.offset(now);
        if at < slot.ejected_until.load(Ordering::Relaxed) {
            return false;
        }
        let n = slot
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if n < self.policy.failures_to_eject {
            return false;
        }
        let ejections = slot
            .ejections
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        let length = self.policy.backoff.delay(ejections);
        let until = at
            .saturating_add(u64::try_from(length.as_nanos()).unwrap_or(u64::MAX))
            .max(1);
        slot.ejected_until.fetch_max(until, Ordering::Relaxed);
        true
    }

    /// Records a good answer from `w`: live, with a clean record.
    pub fn record_success(&self, w: WorkerIdx) {
        if let Some(slot) = self.slots.get(w.get()) {
            slot.failures.store(0, Ordering::Relaxed);
            slot.ejections.store(0, Ordering::Relaxed);
            slot.ejected_until.store(0, Ordering::Relaxed);
        }
    }

    /// Forgets a slot's record (its worker left; the slot may be reused).
    pub fn forget(&self, w: WorkerIdx) {
        self.record_success(w);
    }

    /// Is `w` ejected at `now`?
    pub fn is_ejected(&self, w: WorkerIdx, now: Instant) -> bool {
        self.slots
            .get(w.get())
            .is_some_and(|s| self.offset(now) < s.ejected_until.load(Ordering::Relaxed))
    }

    /// `w`'s record at `now`.
    pub fn of(&self, w: WorkerIdx, now: Instant) -> WorkerLiveness {
        let Some(s) = self.slots.get(w.get()) else {
            return WorkerLiveness::default();
        };
        let until = s.ejected_until.load(Ordering::Relaxed);
        let at = self.offset(now);
        WorkerLiveness {
            consecutive_failures: s.failures.load(Ordering::Relaxed),
            ejections: s.ejections.load(Ordering::Relaxed),
            ejected_for: (at < until).then(|| Duration::from_nanos(until - at)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(i: u32) -> WorkerIdx {
        WorkerIdx::new(i).unwrap()
    }

    const SEC: Duration = Duration::from_secs(1);

    fn liveness(slots: usize, failures: u32, first: Duration) -> (Liveness, Instant) {
        let t0 = Instant::now();
        let policy = EjectionPolicy {
            failures_to_eject: failures,
            backoff: Backoff {
                initial: first,
                max: 100 * first,
            },
        };
        (Liveness::new(slots, policy, t0), t0)
    }

    #[test]
    fn ejected_after_n_consecutive_failures_for_the_first_backoff() {
        let (h, t0) = liveness(4, 3, 10 * SEC);
        assert!(!h.record_failure(w(1), t0));
        assert!(!h.record_failure(w(1), t0 + SEC));
        assert!(!h.is_ejected(w(1), t0 + SEC));
        assert!(h.record_failure(w(1), t0 + 2 * SEC));
        assert!(h.is_ejected(w(1), t0 + 2 * SEC));
        assert!(h.is_ejected(w(1), t0 + 11 * SEC));
        assert!(!h.is_ejected(w(1), t0 + 12 * SEC), "ejection over");
        assert!(!h.is_ejected(w(0), t0 + 2 * SEC), "others unaffected");
        assert_eq!(h.of(w(1), t0 + 2 * SEC).consecutive_failures, 3);
        assert_eq!(h.of(w(1), t0 + 7 * SEC).ejected_for, Some(5 * SEC));
    }

    #[test]
    fn each_ejection_doubles_until_a_success_clears_the_record() {
        let (h, t0) = liveness(2, 2, 5 * SEC);
        h.record_failure(w(0), t0);
        h.record_success(w(0));
        assert!(!h.record_failure(w(0), t0 + SEC), "count restarted");
        assert!(h.record_failure(w(0), t0 + 2 * SEC), "first ejection: 5 s");
        assert!(h.is_ejected(w(0), t0 + 6 * SEC));
        assert!(!h.is_ejected(w(0), t0 + 7 * SEC));
        // A failure reported during the ejection (a request in flight) changes nothing.
        assert!(!h.record_failure(w(0), t0 + 3 * SEC));
        // Tried again after the ejection: one more failure ejects it for twice as long.
        assert!(
            h.record_failure(w(0), t0 + 7 * SEC),
            "second ejection: 10 s"
        );
        assert!(h.is_ejected(w(0), t0 + 16 * SEC));
        assert!(!h.is_ejected(w(0), t0 + 17 * SEC));
        assert!(
            h.record_failure(w(0), t0 + 17 * SEC),
            "third ejection: 20 s"
        );
        assert!(h.is_ejected(w(0), t0 + 36 * SEC));
        assert!(!h.is_ejected(w(0), t0 + 37 * SEC));
        assert_eq!(h.of(w(0), t0 + 20 * SEC).ejections, 3);
        // A success clears the ejection at once, and the schedule starts over.
        h.record_success(w(0));
        assert!(!h.is_ejected(w(0), t0 + 20 * SEC));
        assert_eq!(h.of(w(0), t0 + 20 * SEC), WorkerLiveness::default());
        h.record_failure(w(0), t0 + 40 * SEC);
        assert!(h.record_failure(w(0), t0 + 40 * SEC));
        assert!(!h.is_ejected(w(0), t0 + 45 * SEC), "back to 5 s");
    }

    #[test]
    fn ejections_are_capped_at_the_maximum() {
        let (h, t0) = liveness(1, 1, SEC);
        let mut t = t0;
        for _ in 0..20 {
            assert!(h.record_failure(w(0), t));
            t += h.of(w(0), t).ejected_for.unwrap();
        }
        assert_eq!(h.of(w(0), t).ejected_for, None);
        h.record_failure(w(0), t);
        assert_eq!(h.of(w(0), t).ejected_for, Some(100 * SEC), "capped");
    }

    #[test]
    fn slots_past_capacity_are_always_live() {
        let (h, t0) = liveness(1, 1, SEC);
        assert!(!h.record_failure(w(7), t0));
        assert!(!h.is_ejected(w(7), t0));
        assert_eq!(h.of(w(7), t0), WorkerLiveness::default());
    }
}
