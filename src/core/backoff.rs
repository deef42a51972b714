//! The one exponential backoff schedule: every retry loop (NATS reconnects, the event consumer,
//! the registry watch, resync fetches, the replay socket, a worker the proxy ejected) waits
//! `initial * 2^(n-1)` before its `n`-th retry, capped at `max`.
//!
//! Pure arithmetic, so the schedule is unit-tested here and the async shells only sleep it.

use std::time::Duration;

/// An exponential backoff schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first retry.
    pub initial: Duration,
    /// Longest delay.
    pub max: Duration,
}

impl Backoff {
    /// 100 ms, doubling, capped at 5 s: retries of network calls.
    pub const NETWORK: Backoff = Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(5),
    };

    /// 100 ms, doubling, capped at 1 s: reconnecting to NATS. An attempt is one TCP connect,
    /// and every second of a longer cap is a second the fleet stays blind after the server
    /// is back (a 30 s outage left the router up to 5 s behind it).
    pub const RECONNECT: Backoff = Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(1),
    };

    /// The delay before retry `n` (1-based); zero for `n == 0` (the first try).
    pub fn delay(&self, n: u32) -> Duration {
        if n == 0 {
            return Duration::ZERO;
        }
        let factor = 1u32 << (n - 1).min(20);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_initial_and_caps() {
        let b = Backoff::NETWORK;
        assert_eq!(b.delay(0), Duration::ZERO);
        assert_eq!(b.delay(1), Duration::from_millis(100));
        assert_eq!(b.delay(2), Duration::from_millis(200));
        assert_eq!(b.delay(7), Duration::from_millis(5_000), "6.4 s capped");
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(5), "no overflow");
        let slow = Backoff {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(300),
        };
        assert_eq!(slow.delay(3), Duration::from_secs(40));
        assert_eq!(slow.delay(40), Duration::from_secs(300));
    }
}
