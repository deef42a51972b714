//! The reporter's sequencing of one engine's KV-event batches, as a pure state machine.
//!
//! vLLM numbers its batches 0, 1, 2, … per process and keeps the last few thousand for replay
//! (a ROUTER socket answering "everything from N"). The live PUB stream can lose batches
//! (slow subscriber, reconnect) and the engine can restart (numbering starts over, cache
//! empty). For each live batch the reporter asks [`Sequencer::classify`] what it means:
//!
//! | live batch `s`, last applied `l`         | verdict                                   |
//! |-------------------------------------------|-------------------------------------------|
//! | `s == l + 1`                              | [`Live::Apply`]                           |
//! | `s <= l`, same bytes as applied `s`       | [`Live::Duplicate`] (seen live and by a tail probe) |
//! | `s <= l`, different                       | [`Live::Restart`]: new engine; fetch `0..s` |
//! | `s > l + 1`                               | [`Live::Gap`]: fetch `l+1..s` from replay  |
//! | nothing applied yet, `s > 0`              | [`Live::CatchUp`]: take what replay holds before `s` |
//!
//! A lost batch at the *tail* shows no gap until the next batch arrives, so at every digest
//! tick on a quiet stream the reporter probes the replay socket for anything after `l`
//! ([`Sequencer::tail_probe`]). A replayed range that comes back incomplete
//! ([`Sequencer::replay_complete`]) means events were lost for good: the reporter starts a new
//! epoch and routers resync its whole mirror. The shell (sockets, NATS) only carries out
//! these verdicts.

use std::collections::VecDeque;
use std::ops::Range;
use std::time::{Duration, Instant};

use xxhash_rust::xxh3::xxh3_64;

/// Recently applied batches remembered to recognise a duplicate: a batch fetched by the tail
/// probe can still arrive live afterwards, and must not pass for an engine restart.
pub const RECENT_BATCHES: usize = 1024;

/// A stream quiet for this long at a digest tick is probed for a lost tail; a busier one
/// reveals a lost batch with its next one. A lost tail is thus repaired within one digest
/// interval plus this.
pub const TAIL_QUIET: Duration = Duration::from_millis(50);

/// What a live batch means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Live {
    /// The next batch: apply it.
    Apply,
    /// Already applied (the same sequence number and bytes): drop it.
    Duplicate,
    /// The numbering went back with other bytes: a new engine with an empty cache. Start a
    /// new epoch, then fetch `missing` (the new engine's batches sent before this one) from
    /// replay, then apply this one.
    Restart { missing: Range<u64> },
    /// Batches `missing` were lost: fetch them from replay, then apply this one.
    Gap { missing: Range<u64> },
    /// The first batch seen, and not the engine's first: apply whatever replay still holds
    /// before `until` (older history is gone for good), then this one.
    CatchUp { until: u64 },
}

/// Counts for logs and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SequencerStats {
    pub applied: u64,
    pub duplicates: u64,
    pub gaps: u64,
    pub restarts: u64,
}

/// One engine's batch sequencing.
#[derive(Debug, Default)]
pub struct Sequencer {
    last: Option<u64>,
    /// `(seq, xxh3 of payload)` of the last [`RECENT_BATCHES`] applied batches.
    recent: VecDeque<(u64, u64)>,
    /// When the last live batch arrived.
    last_live: Option<Instant>,
    stats: SequencerStats,
}

impl Sequencer {
    pub fn new() -> Self {
        Self::default()
    }

    /// The last applied batch's sequence number.
    pub fn last(&self) -> Option<u64> {
        self.last
    }

    pub fn stats(&self) -> &SequencerStats {
        &self.stats
    }

    /// Classifies live batch `seq` (with its raw `payload`) arriving at `now`.
    pub fn classify(&mut self, seq: u64, payload: &[u8], now: Instant) -> Live {
        self.last_live = Some(now);
        let verdict = match self.last {
            Some(last) if seq == last.wrapping_add(1) => Live::Apply,
            Some(last) if seq <= last && self.was_applied(seq, payload) => Live::Duplicate,
            Some(last) if seq <= last => Live::Restart { missing: 0..seq },
            Some(last) => Live::Gap {
                missing: last + 1..seq,
            },
            None if seq > 0 => Live::CatchUp { until: seq },
            None => Live::Apply,
        };
        match &verdict {
            Live::Duplicate => self.stats.duplicates += 1,
            Live::Restart { .. } => {
                self.stats.restarts += 1;
                // The new engine's numbering starts over: forget the old one's.
                self.last = None;
                self.recent.clear();
            }
            Live::Gap { .. } => self.stats.gaps += 1,
            Live::Apply | Live::CatchUp { .. } => {}
        }
        verdict
    }

    fn was_applied(&self, seq: u64, payload: &[u8]) -> bool {
        let h = xxh3_64(payload);
        self.recent.contains(&(seq, h))
    }

    /// Records that batch `seq` (live or replayed) was applied.
    pub fn applied(&mut self, seq: u64, payload: &[u8]) {
        self.last = Some(seq);
        if self.recent.len() == RECENT_BATCHES {
            self.recent.pop_front();
        }
        self.recent.push_back((seq, xxh3_64(payload)));
        self.stats.applied += 1;
    }

    /// Whether a replay of `missing` returned every batch: `got` are the sequence numbers
    /// received, in order, already restricted to `missing`.
    pub fn replay_complete(missing: &Range<u64>, got: &[u64]) -> bool {
        got.len() as u64 == missing.end.saturating_sub(missing.start)
            && got.iter().zip(missing.clone()).all(|(s, want)| *s == want)
    }

    /// At a digest tick at `now`: the sequence number to ask the replay socket from, when the
    /// stream has been quiet for [`TAIL_QUIET`] (or never spoke) and something was applied.
    /// A live batch earlier in the interval proves nothing: batches lost after it are a tail
    /// too.
    pub fn tail_probe(&self, now: Instant) -> Option<u64> {
        let last = self.last?;
        let quiet = self
            .last_live
            .is_none_or(|t| now.saturating_duration_since(t) >= TAIL_QUIET);
        quiet.then_some(last + 1)
    }

    /// Of the batches a tail probe returned (in order), the run that continues the stream.
    pub fn tail_run(&self, got: &[u64]) -> Range<usize> {
        let Some(last) = self.last else {
            return 0..0;
        };
        let end = got
            .iter()
            .zip(last + 1..)
            .take_while(|(s, want)| **s == *want)
            .count();
        0..end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn in_order_batches_apply() {
        let mut s = Sequencer::new();
        let now = t0();
        assert_eq!(s.classify(0, b"a", now), Live::Apply);
        s.applied(0, b"a");
        assert_eq!(s.classify(1, b"b", now), Live::Apply);
        s.applied(1, b"b");
        assert_eq!(s.last(), Some(1));
        assert_eq!(s.stats().applied, 2);
    }

    #[test]
    fn a_batch_seen_twice_is_a_duplicate_but_other_bytes_are_a_restart() {
        let mut s = Sequencer::new();
        let now = t0();
        for (i, p) in [b"a", b"b", b"c"].iter().enumerate() {
            s.classify(i as u64, *p, now);
            s.applied(i as u64, *p);
        }
        assert_eq!(s.classify(1, b"b", now), Live::Duplicate);
        assert_eq!(s.last(), Some(2), "a duplicate changes nothing");
        assert_eq!(s.classify(2, b"x", now), Live::Restart { missing: 0..2 });
        assert_eq!(s.last(), None, "the new engine's numbering starts over");
        // After a restart the old engine's batches are forgotten: seq 1 is not a duplicate.
        s.applied(0, b"n0");
        s.applied(1, b"n1");
        s.applied(2, b"x");
        assert_eq!(s.classify(3, b"n3", now), Live::Apply);
        let st = s.stats();
        assert_eq!((st.duplicates, st.restarts), (1, 1));
    }

    #[test]
    fn a_restart_at_zero_needs_no_replay() {
        let mut s = Sequencer::new();
        let now = t0();
        s.classify(0, b"a", now);
        s.applied(0, b"a");
        s.classify(1, b"b", now);
        s.applied(1, b"b");
        assert_eq!(s.classify(0, b"new", now), Live::Restart { missing: 0..0 });
    }

    #[test]
    fn a_jump_is_a_gap_and_the_first_batch_after_start_catches_up() {
        let mut s = Sequencer::new();
        let now = t0();
        assert_eq!(s.classify(5, b"f", now), Live::CatchUp { until: 5 });
        s.applied(5, b"f");
        assert_eq!(s.classify(9, b"j", now), Live::Gap { missing: 6..9 });
        assert_eq!(s.stats().gaps, 1);
    }

    #[test]
    fn replays_must_return_the_whole_range_in_order() {
        assert!(Sequencer::replay_complete(&(3..6), &[3, 4, 5]));
        assert!(Sequencer::replay_complete(&(3..3), &[]));
        assert!(!Sequencer::replay_complete(&(3..6), &[3, 5]), "a hole");
        assert!(
            !Sequencer::replay_complete(&(3..6), &[4, 5]),
            "the oldest aged out"
        );
        assert!(
            !Sequencer::replay_complete(&(3..6), &[3, 5, 4]),
            "out of order"
        );
    }

    #[test]
    fn the_tail_is_probed_only_on_a_quiet_stream_after_something_applied() {
        let mut s = Sequencer::new();
        let now = t0();
        assert_eq!(s.tail_probe(now), None, "nothing applied yet");
        s.classify(0, b"a", now);
        s.applied(0, b"a");
        assert_eq!(
            s.tail_probe(now + Duration::from_millis(10)),
            None,
            "just spoke"
        );
        assert_eq!(s.tail_probe(now + TAIL_QUIET), Some(1));
        assert_eq!(
            s.tail_run(&[1, 2, 4]),
            0..2,
            "only the run that continues the stream"
        );
        assert_eq!(s.tail_run(&[2, 3]), 0..0);
    }

    #[test]
    fn duplicates_are_remembered_for_a_bounded_window() {
        let mut s = Sequencer::new();
        let now = t0();
        let n = RECENT_BATCHES as u64 + 10;
        for i in 0..n {
            s.applied(i, &i.to_le_bytes());
        }
        assert_eq!(
            s.classify(n - 1, &(n - 1).to_le_bytes(), now),
            Live::Duplicate
        );
        // The oldest fell out of the window: seen again it reads as a restart (and the
        // reporter then resyncs, which is safe).
        assert_eq!(
            s.classify(0, &0u64.to_le_bytes(), now),
            Live::Restart { missing: 0..0 }
        );
    }
}
