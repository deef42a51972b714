//! How soon a worker's next resync may start.
//!
//! A resync fetches a worker's whole set, so it is the most expensive thing the event plane
//! does. A worker that keeps breaking its sequence — a buggy reporter, or anyone who can
//! publish on its subject forging sequence numbers — would otherwise cost one resync per bad
//! message, forever. Each worker's resyncs are paced by the one [`Backoff`] schedule: the
//! first starts at once, each further one within [`ResyncPace::quiet`] of the previous waits
//! twice as long as the last (capped), and a worker quiet that long starts afresh.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::backoff::Backoff;
use crate::protocol::WorkerId;

/// Per-worker resync pacing.
#[derive(Debug)]
pub struct ResyncPace {
    backoff: Backoff,
    quiet: Duration,
    /// Per worker: resyncs in the current burst, and when the last one was asked for.
    recent: HashMap<WorkerId, (u32, Instant)>,
}

impl Default for ResyncPace {
    /// 250 ms doubling to 30 s; a minute without a resync ends a burst.
    fn default() -> Self {
        ResyncPace::new(
            Backoff {
                initial: Duration::from_millis(250),
                max: Duration::from_secs(30),
            },
            Duration::from_secs(60),
        )
    }
}

impl ResyncPace {
    pub fn new(backoff: Backoff, quiet: Duration) -> Self {
        ResyncPace {
            backoff,
            quiet,
            recent: HashMap::new(),
        }
    }

    /// A resync of `worker` is asked for at `now`: how long to wait before starting it.
    pub fn delay(&mut self, worker: &WorkerId, now: Instant) -> Duration {
        if self.recent.len() > 4 * 1024 {
            let quiet = self.quiet;
            self.recent
                .retain(|_, (_, t)| now.saturating_duration_since(*t) <= quiet);
        }
        let quiet = self.quiet;
        let (n, last) = self.recent.entry(worker.clone()).or_insert((0, now));
        if now.saturating_duration_since(*last) > quiet {
            *n = 0;
        }
        let delay = self.backoff.delay(*n);
        *n = n.saturating_add(1);
        // The burst's clock runs from when this resync will start.
        *last = now + delay;
        delay
    }

    /// The worker left: forget its history.
    pub fn forget(&mut self, worker: &WorkerId) {
        self.recent.remove(worker);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pace() -> ResyncPace {
        ResyncPace::new(
            Backoff {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(2),
            },
            Duration::from_secs(10),
        )
    }

    #[test]
    fn the_first_resync_is_immediate_and_a_burst_backs_off_to_the_cap() {
        let mut p = pace();
        let w = WorkerId::from("w");
        let t0 = Instant::now();
        let mut t = t0;
        let mut delays = Vec::new();
        for _ in 0..8 {
            let d = p.delay(&w, t);
            delays.push(d.as_millis());
            t += d;
        }
        assert_eq!(delays, vec![0, 100, 200, 400, 800, 1600, 2000, 2000]);
        // Another worker is not slowed by w's burst.
        assert_eq!(p.delay(&WorkerId::from("v"), t), Duration::ZERO);
    }

    #[test]
    fn a_quiet_worker_starts_afresh_and_a_forgotten_one_too() {
        let mut p = pace();
        let w = WorkerId::from("w");
        let t0 = Instant::now();
        p.delay(&w, t0);
        assert_eq!(p.delay(&w, t0), Duration::from_millis(100));
        let later = t0 + Duration::from_secs(11);
        assert_eq!(
            p.delay(&w, later),
            Duration::ZERO,
            "quiet for longer than 10 s"
        );
        assert_eq!(p.delay(&w, later), Duration::from_millis(100));
        p.forget(&w);
        assert_eq!(p.delay(&w, later), Duration::ZERO);
    }

    #[test]
    fn a_forger_rotating_ids_cannot_grow_the_table_without_bound() {
        let mut p = pace();
        let t0 = Instant::now();
        for i in 0..20_000u32 {
            // Each id asks once; a second later it is stale.
            p.delay(
                &WorkerId(format!("f{i}")),
                t0 + Duration::from_secs(u64::from(i)),
            );
        }
        assert!(p.recent.len() <= 4 * 1024 + 1, "{}", p.recent.len());
    }
}
