//! Bounds how many long prompts tokenize at once: one per core, and huge ones in a lane of
//! their own.
//!
//! Tokenizing is CPU-bound. Without a bound, a burst of long prompts became as many blocking
//! threads, the OS time-sliced them all, and every request finished near the end of the burst
//! (`cargo bench --bench scale`: client p50 at 0.93× the burst's wall time). Queueing them
//! FIFO (tokio's semaphore is fair) instead finishes them in arrival order at the same
//! throughput, and leaves CPU for the fleet actor and the proxy.
//!
//! One FIFO is not enough: four multi-megabyte prompts took both slots for 27 s and a 6 KB
//! prompt behind them waited 25.7 s. Prompts over [`HUGE_BYTES`] therefore queue in their own
//! lane of one slot: at most one core ever tokenizes them, and everything else keeps its own
//! slots.

use std::sync::Arc;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bodies over this size tokenize in the huge lane.
pub(crate) const HUGE_BYTES: usize = 256 << 10;

/// One lane: its slots, and how many prompts wait for or hold one (exported).
#[derive(Clone, Debug)]
struct Lane {
    slots: Arc<Semaphore>,
    occupancy: Gauge,
}

#[derive(Clone, Debug)]
pub(crate) struct TokenizeGate {
    normal: Lane,
    huge: Lane,
}

/// A tokenizer slot; released, and counted out of its lane, on drop.
#[derive(Debug)]
pub(crate) struct Slot {
    _permit: OwnedSemaphorePermit,
    _counted: Counted,
}

/// Counts a prompt in its lane from when it starts waiting until its slot is released, also
/// when the wait is abandoned (the client went away).
#[derive(Debug)]
struct Counted(Gauge);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl TokenizeGate {
    /// `slots` for ordinary long prompts, one for huge ones.
    pub(crate) fn new(slots: usize) -> Self {
        TokenizeGate {
            normal: Lane {
                slots: Arc::new(Semaphore::new(slots.max(1))),
                occupancy: Gauge::default(),
            },
            huge: Lane {
                slots: Arc::new(Semaphore::new(1)),
                occupancy: Gauge::default(),
            },
        }
    }

    /// One slot per available core.
    pub(crate) fn per_core() -> Self {
        Self::new(std::thread::available_parallelism().map_or(2, |n| n.get()))
    }

    /// Exports each lane's occupancy through these gauges.
    pub(crate) fn with_gauges(mut self, normal: Gauge, huge: Gauge) -> Self {
        self.normal.occupancy = normal;
        self.huge.occupancy = huge;
        self
    }

    /// Waits for a slot in the lane a body of `bytes` belongs to. The semaphores are never
    /// closed, so this only returns None if they were.
    pub(crate) async fn acquire(&self, bytes: usize) -> Option<Slot> {
        let lane = if bytes > HUGE_BYTES {
            &self.huge
        } else {
            &self.normal
        };
        lane.occupancy.inc();
        let counted = Counted(lane.occupancy.clone());
        let permit = lane.slots.clone().acquire_owned().await.ok()?;
        Some(Slot {
            _permit: permit,
            _counted: counted,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[tokio::test]
    async fn a_huge_prompt_never_takes_an_ordinary_slot() {
        let (normal, huge_gauge) = (Gauge::default(), Gauge::default());
        let gate = TokenizeGate::new(1).with_gauges(normal.clone(), huge_gauge.clone());
        let huge = gate.acquire(HUGE_BYTES + 1).await.unwrap();
        // The huge lane is full, the ordinary one is not.
        let ordinary = gate.acquire(10_000).await;
        assert!(ordinary.is_some());
        assert!(
            gate.acquire(HUGE_BYTES + 1).now_or_never().is_none(),
            "one huge prompt at a time"
        );
        assert_eq!(huge_gauge.get(), 1, "an abandoned wait is counted out");
        drop(ordinary);
        assert_eq!(normal.get(), 0);
        drop(huge);
        assert!(gate.acquire(HUGE_BYTES + 1).await.is_some());
        assert_eq!(huge_gauge.get(), 0);
    }
}
