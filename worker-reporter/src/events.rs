//! The engine's KV-event batches → our protocol: the shell around the core's
//! [`Sequencer`], which decides what each live batch means; this loop carries the verdicts
//! out on the ZMQ replay socket and the publisher, and publishes a digest every interval.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cache_router_bus::publisher::Publisher;
use cache_router_bus::zmq::{fetch_replay, EventSubscriber};
use cache_router_core::backoff::Backoff;
use cache_router_core::kv_events::decode_batch;
use cache_router_core::sequencer::{Live, Sequencer};
use tokio_util::sync::CancellationToken;

use crate::load::now_ms;
use crate::mirror::Mirror;

/// What the event loop has done, readable while it runs (logs, tests, benches).
#[derive(Debug, Default)]
pub struct ReporterStats {
    batches: AtomicU64,
    decode_errors: AtomicU64,
    gaps: AtomicU64,
    replayed: AtomicU64,
    resyncs: AtomicU64,
    restarts: AtomicU64,
    duplicates: AtomicU64,
}

fn bump(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

impl ReporterStats {
    /// Batches applied (live or replayed).
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }
    /// Live sequence gaps seen.
    pub fn gaps(&self) -> u64 {
        self.gaps.load(Ordering::Relaxed)
    }
    /// Batches recovered from the engine's replay socket.
    pub fn replayed(&self) -> u64 {
        self.replayed.load(Ordering::Relaxed)
    }
    /// New epochs started because events were lost for good (routers resync).
    pub fn resyncs(&self) -> u64 {
        self.resyncs.load(Ordering::Relaxed)
    }
    /// Engine restarts seen.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }
    /// Batches seen twice (live after a tail probe).
    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }
    pub fn decode_errors(&self) -> u64 {
        self.decode_errors.load(Ordering::Relaxed)
    }
}

pub(crate) struct EventLoop {
    pub(crate) mirror: Mirror,
    pub(crate) publisher: Publisher,
    pub(crate) replay: Option<String>,
    pub(crate) timeout: Duration,
    pub(crate) sequencer: Sequencer,
    pub(crate) stats: Arc<ReporterStats>,
}

impl EventLoop {
    pub(crate) async fn run(
        mut self,
        mut sub: EventSubscriber,
        digest_every: Duration,
        shutdown: CancellationToken,
    ) {
        let mut digest = tokio::time::interval(digest_every);
        digest.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failures = 0u32;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = digest.tick() => {
                    if let Some(from) = self.sequencer.tail_probe(std::time::Instant::now()) {
                        self.probe_tail(from).await;
                    }
                    if let Err(e) = self.publisher.publish_digest().await {
                        tracing::warn!("publish digest: {e}");
                    }
                }
                m = sub.recv() => match m {
                    Ok(m) => {
                        failures = 0;
                        self.on_live(m.seq, &m.payload).await;
                    }
                    Err(e) => {
                        failures = failures.saturating_add(1);
                        tracing::warn!("kv events receive failed: {e}");
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = tokio::time::sleep(Backoff::NETWORK.delay(failures)) => {}
                        }
                    }
                },
            }
        }
        tracing::info!(stats = ?self.stats, skipped = ?self.mirror.skipped, "event loop stopped");
    }

    async fn on_live(&mut self, seq: u64, payload: &[u8]) {
        match self
            .sequencer
            .classify(seq, payload, std::time::Instant::now())
        {
            Live::Apply => {}
            Live::Duplicate => {
                bump(&self.stats.duplicates);
                return;
            }
            Live::Restart { missing } => {
                bump(&self.stats.restarts);
                tracing::info!(seq, "engine restarted; new epoch");
                self.mirror.clear();
                self.publisher.new_epoch(now_ms(), true).await;
                let _ = self.publisher.publish_digest().await;
                if !missing.is_empty() {
                    // The new engine's first batches went out before we reconnected.
                    self.recover(missing).await;
                }
            }
            Live::Gap { missing } => {
                bump(&self.stats.gaps);
                tracing::warn!(from = missing.start, to = missing.end - 1, "kv event gap");
                self.recover(missing).await;
            }
            Live::CatchUp { until } => self.catch_up(until).await,
        }
        self.apply(seq, payload).await;
    }

    async fn apply(&mut self, seq: u64, payload: &[u8]) {
        self.sequencer.applied(seq, payload);
        bump(&self.stats.batches);
        let batch = match decode_batch(payload) {
            Ok(b) => b,
            Err(e) => {
                bump(&self.stats.decode_errors);
                tracing::warn!(seq, "undecodable kv event batch: {e}; resyncing");
                self.resync().await;
                return;
            }
        };
        for ev in &batch.events {
            if let Some(body) = self.mirror.apply(ev) {
                if let Err(e) = self.publisher.publish(body).await {
                    tracing::warn!("publish: {e}");
                }
            }
        }
    }

    /// Fetches batches `missing` from the replay socket; falls back to a resync.
    async fn recover(&mut self, missing: Range<u64>) {
        let Some(endpoint) = self.replay.clone() else {
            self.resync().await;
            return;
        };
        match fetch_replay(&endpoint, missing.start, self.timeout).await {
            Ok(batches) => {
                let wanted: Vec<_> = batches
                    .into_iter()
                    .filter(|(s, _)| missing.contains(s))
                    .collect();
                let got: Vec<u64> = wanted.iter().map(|(s, _)| *s).collect();
                if !Sequencer::replay_complete(&missing, &got) {
                    tracing::warn!(
                        from = missing.start,
                        to = missing.end,
                        got = got.len(),
                        "replay incomplete; resyncing"
                    );
                    self.resync().await;
                    return;
                }
                for (s, p) in wanted {
                    self.stats.replayed.fetch_add(1, Ordering::Relaxed);
                    self.apply(s, &p).await;
                }
            }
            Err(e) => {
                tracing::warn!("replay failed: {e}; resyncing");
                self.resync().await;
            }
        }
    }

    /// Applies every buffered batch before `until`, from the oldest the engine kept.
    async fn catch_up(&mut self, until: u64) {
        let Some(endpoint) = self.replay.clone() else {
            return;
        };
        match fetch_replay(&endpoint, 0, self.timeout).await {
            Ok(batches) => {
                for (s, p) in batches.into_iter().filter(|(s, _)| *s < until) {
                    self.stats.replayed.fetch_add(1, Ordering::Relaxed);
                    self.apply(s, &p).await;
                }
            }
            Err(e) => tracing::warn!("catch-up replay failed: {e}"),
        }
    }

    /// Asks the replay socket for anything after the last applied batch (a lost tail).
    async fn probe_tail(&mut self, from: u64) {
        let Some(endpoint) = self.replay.clone() else {
            return;
        };
        match fetch_replay(&endpoint, from, self.timeout).await {
            Ok(batches) => {
                let seqs: Vec<u64> = batches.iter().map(|(s, _)| *s).collect();
                let run = self.sequencer.tail_run(&seqs);
                for (s, p) in batches.into_iter().take(run.end) {
                    self.stats.replayed.fetch_add(1, Ordering::Relaxed);
                    self.apply(s, &p).await;
                }
            }
            Err(e) => tracing::debug!("tail probe: {e}"),
        }
    }

    /// Events were lost for good: start a new epoch so routers drop what they had from us
    /// and fetch the mirror whole. The mirror itself may lack what the lost batches said;
    /// the engine has no API to list its cache, so it is the best view there is.
    async fn resync(&mut self) {
        bump(&self.stats.resyncs);
        self.publisher.new_epoch(now_ms(), false).await;
        if let Err(e) = self.publisher.publish_digest().await {
            tracing::warn!("publish digest after new epoch: {e}");
        }
    }
}
