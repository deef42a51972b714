//! Bounds how many long prompts tokenize at once: one per core.
//!
//! Tokenizing is CPU-bound. Without a bound, a burst of long prompts became as many blocking
//! threads, the OS time-sliced them all, and every request finished near the end of the burst
//! (`cargo bench --bench scale`: client p50 at 0.93× the burst's wall time). Queueing them
//! FIFO (tokio's semaphore is fair) instead finishes them in arrival order at the same
//! throughput, and leaves CPU for the fleet actor and the proxy.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Clone, Debug)]
pub(crate) struct TokenizeGate(Arc<Semaphore>);

impl TokenizeGate {
    pub(crate) fn new(slots: usize) -> Self {
        TokenizeGate(Arc::new(Semaphore::new(slots.max(1))))
    }

    /// One slot per available core.
    pub(crate) fn per_core() -> Self {
        Self::new(std::thread::available_parallelism().map_or(2, |n| n.get()))
    }

    /// Waits for a slot. The semaphore is never closed, so this only returns None if it were.
    pub(crate) async fn acquire(&self) -> Option<OwnedSemaphorePermit> {
        self.0.clone().acquire_owned().await.ok()
    }
}
