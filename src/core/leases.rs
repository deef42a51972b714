//! Registry leases: which workers' registry entries have lapsed, and when a router must not
//! believe that they have.
//!
//! A reporter rewrites its worker's entry every third of the TTL; an entry older than the TTL
//! means the worker is gone and is purged from routing. But an entry also ages when the
//! registry itself cannot be written or read — NATS unreachable, a JetStream leader election
//! during a node restart — and purging every worker then turns a control-plane blip into
//! `503 no_workers` for every client, though the engines are fine. So:
//! - while the registry is unreachable, and for one TTL after it is back (reporters need that
//!   long to rewrite their entries), nothing lapses;
//! - when most workers (at least two) lapse at the same moment, the registry is the likelier
//!   culprit than the workers: nothing lapses, and the router keeps routing to them (the
//!   proxy's own failures eject a worker that is really gone);
//! - a watch that has been silent for half a TTL while workers are registered has most likely
//!   stopped delivering (its server went away): the caller re-creates it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::protocol::WorkerId;

/// Why lapsed entries were not purged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suspended {
    /// The registry is unreachable, or came back less than a TTL ago.
    RegistryUnreachable,
    /// Most workers lapsed at once.
    MassLapse { lapsed: usize, registered: usize },
}

/// The leases of the registered workers.
#[derive(Debug)]
pub struct Leases {
    ttl: Duration,
    renewed: HashMap<WorkerId, Instant>,
    /// Since when the registry has been reachable; None while it is not.
    reachable_since: Option<Instant>,
    /// When the watch last delivered anything.
    last_delivery: Option<Instant>,
}

impl Leases {
    pub fn new(ttl: Duration) -> Self {
        Leases {
            ttl,
            renewed: HashMap::new(),
            reachable_since: None,
            last_delivery: None,
        }
    }

    /// A worker's entry was written `age` ago (by the server's clock), seen at `now`. False
    /// when it is already older than the TTL (a stale entry found in the history): not
    /// registered.
    pub fn renewed(&mut self, id: WorkerId, age: Duration, now: Instant) -> bool {
        self.last_delivery = Some(now);
        if age > self.ttl {
            return false;
        }
        self.renewed.insert(id, now.checked_sub(age).unwrap_or(now));
        true
    }

    /// A worker's entry was deleted (a clean shutdown).
    pub fn removed(&mut self, id: &WorkerId, now: Instant) {
        self.last_delivery = Some(now);
        self.renewed.remove(id);
    }

    /// The registry can be read (the watch is up and the connection connected) at `now`.
    pub fn reachable(&mut self, now: Instant) {
        if self.reachable_since.is_none() {
            self.reachable_since = Some(now);
        }
    }

    /// The registry cannot be read (the watch failed, the connection is down).
    pub fn unreachable(&mut self) {
        self.reachable_since = None;
    }

    /// Whether the watch has delivered nothing for half a TTL while workers are registered
    /// (each of which rewrites its entry every third of one).
    pub fn watch_silent(&self, now: Instant) -> bool {
        !self.renewed.is_empty()
            && self
                .last_delivery
                .is_some_and(|t| now.saturating_duration_since(t) > self.ttl / 2)
    }

    /// Re-arms the silence check (a new watch starts at `now`).
    pub fn watch_restarted(&mut self, now: Instant) {
        self.last_delivery = Some(now);
    }

    /// The workers whose leases lapsed at `now`, removed from the leases — or why none are.
    pub fn lapsed(&mut self, now: Instant) -> Result<Vec<WorkerId>, Suspended> {
        let lapsed: Vec<WorkerId> = self
            .renewed
            .iter()
            .filter(|(_, &t)| now.saturating_duration_since(t) > self.ttl)
            .map(|(id, _)| id.clone())
            .collect();
        if lapsed.is_empty() {
            return Ok(lapsed);
        }
        if !self.settled(now) {
            return Err(Suspended::RegistryUnreachable);
        }
        let registered = self.renewed.len();
        if lapsed.len() >= 2 && lapsed.len() * 2 > registered {
            return Err(Suspended::MassLapse {
                lapsed: lapsed.len(),
                registered,
            });
        }
        for id in &lapsed {
            self.renewed.remove(id);
        }
        Ok(lapsed)
    }

    /// Whether the registry has been reachable for a whole TTL at `now`: long enough for
    /// every live worker to have rewritten its entry, so an entry that is missing is missing.
    pub fn settled(&self, now: Instant) -> bool {
        self.reachable_since
            .is_some_and(|t| now.saturating_duration_since(t) >= self.ttl)
    }

    /// Registered workers.
    pub fn len(&self) -> usize {
        self.renewed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.renewed.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(6);
    const S: Duration = Duration::from_secs(1);

    fn id(s: &str) -> WorkerId {
        WorkerId::from(s)
    }

    fn leases(t0: Instant, workers: &[&str]) -> Leases {
        let mut l = Leases::new(TTL);
        l.reachable(t0);
        for w in workers {
            assert!(l.renewed(id(w), Duration::ZERO, t0));
        }
        l
    }

    #[test]
    fn a_worker_that_stops_renewing_lapses_after_the_ttl() {
        let t0 = Instant::now();
        let mut l = leases(t0, &["a", "b", "c"]);
        for k in 1..=4 {
            l.renewed(id("a"), Duration::ZERO, t0 + 2 * k * S);
            l.renewed(id("b"), Duration::ZERO, t0 + 2 * k * S);
        }
        assert_eq!(l.lapsed(t0 + 6 * S), Ok(vec![]), "not yet");
        assert_eq!(l.lapsed(t0 + 7 * S), Ok(vec![id("c")]));
        assert_eq!(l.len(), 2);
        assert_eq!(l.lapsed(t0 + 7 * S), Ok(vec![]), "reported once");
    }

    #[test]
    fn a_stale_entry_in_the_history_is_not_a_registration() {
        let t0 = Instant::now() + 60 * S;
        let mut l = leases(t0 - 10 * S, &[]);
        assert!(!l.renewed(id("old"), 7 * S, t0));
        assert!(l.renewed(id("young"), 2 * S, t0));
        // Its lease started when it was written, not when we saw it.
        assert_eq!(l.lapsed(t0 + 5 * S), Ok(vec![id("young")]));
    }

    #[test]
    fn nothing_lapses_while_the_registry_is_unreachable_and_for_a_ttl_after() {
        let t0 = Instant::now();
        let mut l = leases(t0, &["a"]);
        l.unreachable();
        assert_eq!(l.lapsed(t0 + 30 * S), Err(Suspended::RegistryUnreachable));
        l.reachable(t0 + 30 * S);
        assert_eq!(l.lapsed(t0 + 35 * S), Err(Suspended::RegistryUnreachable));
        // A TTL after it came back, a worker that still has not renewed is gone.
        assert_eq!(l.lapsed(t0 + 36 * S), Ok(vec![id("a")]));
    }

    #[test]
    fn most_workers_lapsing_at_once_blames_the_registry() {
        let t0 = Instant::now();
        let mut l = leases(t0, &["a", "b", "c", "d"]);
        l.renewed(id("a"), Duration::ZERO, t0 + 5 * S);
        assert_eq!(
            l.lapsed(t0 + 7 * S),
            Err(Suspended::MassLapse {
                lapsed: 3,
                registered: 4
            })
        );
        assert_eq!(l.len(), 4, "nobody purged");
        // Half or fewer lapsing is the workers' doing.
        l.renewed(id("a"), Duration::ZERO, t0 + 7 * S);
        l.renewed(id("b"), Duration::ZERO, t0 + 7 * S);
        let mut gone = l.lapsed(t0 + 8 * S).unwrap();
        gone.sort();
        assert_eq!(gone, vec![id("c"), id("d")]);
        // A lone worker always lapses.
        let mut one = leases(t0, &["solo"]);
        assert_eq!(one.lapsed(t0 + 7 * S), Ok(vec![id("solo")]));
    }

    #[test]
    fn a_silent_watch_is_noticed_only_with_workers_registered() {
        let t0 = Instant::now();
        let mut l = leases(t0, &[]);
        assert!(!l.watch_silent(t0 + 60 * S), "nothing to hear");
        l.renewed(id("a"), Duration::ZERO, t0);
        assert!(!l.watch_silent(t0 + 3 * S));
        assert!(l.watch_silent(t0 + 4 * S));
        l.watch_restarted(t0 + 4 * S);
        assert!(!l.watch_silent(t0 + 5 * S));
        l.removed(&id("a"), t0 + 5 * S);
        assert!(!l.watch_silent(t0 + 60 * S));
    }
}
