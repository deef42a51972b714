//! The reporter's async loops: engine KV events (with gap replay and resync), digests, load,
//! and the registry entry, all stopped by one cancellation token.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::kv;
use cache_router::bus::publisher::Publisher;
use cache_router::bus::{self, BusError, NatsArgs, StreamArgs};
use cache_router::kv_events::decode_batch;
use cache_router::kv_events::zmq::{fetch_replay, EventSubscriber, ZmqError};
use cache_router::protocol::{WorkerId, WorkerInfo};
use tokio_util::sync::CancellationToken;
use xxhash_rust::xxh3::xxh3_64;

use crate::mirror::Mirror;

/// Runs beside one unmodified engine and reports its cache and load to cache-router.
#[derive(Clone, Debug, clap::Parser)]
#[command(name = "worker-reporter", version, about)]
pub struct ReporterArgs {
    /// This worker's stable id (`[A-Za-z0-9_-]`, at most 128 characters).
    #[arg(long, env = "WORKER_ID")]
    pub worker_id: String,
    /// The engine's OpenAI-compatible base URL, e.g. http://10.0.0.5:8000 (also scraped for
    /// `/metrics`).
    #[arg(long, env = "ENGINE_URL")]
    pub engine_url: String,
    /// URL the router should send requests to, when it differs from --engine-url.
    #[arg(long, env = "ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// Model name: the hash namespace; must match the router's.
    #[arg(long, env = "MODEL")]
    pub model: String,
    /// The engine's KV block size in tokens (vLLM's --block-size); must match the router's.
    #[arg(long, env = "BLOCK_SIZE", default_value_t = 16)]
    pub block_size: u32,
    /// The engine's KV-events endpoint (vLLM's `kv_events_config.endpoint`).
    #[arg(long, env = "ZMQ_ENDPOINT")]
    pub zmq_endpoint: String,
    /// Bind the SUB socket instead of connecting: needed when the engine's endpoint names a
    /// concrete host (then vLLM's PUB connects to us).
    #[arg(long, env = "ZMQ_BIND")]
    pub zmq_bind: bool,
    /// The engine's replay endpoint (`kv_events_config.replay_endpoint`), used on gaps.
    #[arg(long, env = "ZMQ_REPLAY_ENDPOINT")]
    pub zmq_replay_endpoint: Option<String>,
    /// Topic prefix to subscribe to (vLLM's default topic is empty).
    #[arg(long, env = "ZMQ_TOPIC", default_value = "")]
    pub zmq_topic: String,
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub stream: StreamArgs,
    /// How often to publish a digest of the mirror (anti-entropy), e.g. 2s, 500ms.
    #[arg(long, env = "DIGEST_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub digest_interval: Duration,
    /// How often to scrape the engine's /metrics and publish its load.
    #[arg(long, env = "LOAD_INTERVAL", default_value = "500ms", value_parser = parse_duration)]
    pub load_interval: Duration,
    /// Timeout of each engine HTTP scrape and of each replay request.
    #[arg(long, env = "ENGINE_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub engine_timeout: Duration,
    /// Mirror entries kept at most (bounds memory if removals are lost).
    #[arg(long, env = "MAX_MIRROR_ENTRIES", default_value_t = 4_000_000)]
    pub max_mirror_entries: usize,
}

/// `2s`, `500ms`, `1m`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (try 2s or 500ms)"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" => v * 60.0,
        _ => return Err(format!("invalid duration unit in {s:?} (use ms, s or m)")),
    };
    if !(secs.is_finite() && secs > 0.0) {
        return Err(format!("duration {s:?} must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[derive(Debug, thiserror::Error)]
pub enum ReporterError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    Zmq(#[from] ZmqError),
    #[error("http client: {0}")]
    Http(#[from] reqwest::Error),
}

impl ReporterArgs {
    pub fn validate(&self) -> Result<(), ReporterError> {
        WorkerId(self.worker_id.clone())
            .validate()
            .map_err(|e| ReporterError::Config(e.to_string()))?;
        if self.block_size == 0 {
            return Err(ReporterError::Config(
                "--block-size must be positive".into(),
            ));
        }
        if self.nats.url.is_none() {
            return Err(ReporterError::Config("--nats is required".into()));
        }
        self.nats.validate()?;
        Ok(())
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Runs until `shutdown`, then deregisters.
pub async fn run(args: ReporterArgs, shutdown: CancellationToken) -> Result<(), ReporterError> {
    args.validate()?;
    let worker = WorkerId(args.worker_id.clone());
    let client = bus::connect(&args.nats, "worker-reporter").await?;
    let subjects = args.nats.subjects();
    let infra = bus::ensure_infra(&client, &subjects, &args.stream).await?;
    let epoch = now_ms();
    let publisher = Publisher::new(client, subjects, worker.clone(), epoch, args.nats.timeout())?;
    let resync = publisher.serve_resync(shutdown.clone()).await?;
    let sub = EventSubscriber::open(&args.zmq_endpoint, args.zmq_bind, &args.zmq_topic).await?;
    let http = reqwest::Client::builder()
        .timeout(args.engine_timeout)
        .build()?;
    let engine_ok_ms = Arc::new(AtomicU64::new(0));
    tracing::info!(%worker, engine = %args.engine_url, zmq = %args.zmq_endpoint, "reporting");

    let events = tokio::spawn(
        EventLoop {
            mirror: Mirror::new(
                args.model.clone(),
                args.block_size as usize,
                args.max_mirror_entries,
            ),
            publisher: publisher.clone(),
            replay: args.zmq_replay_endpoint.clone(),
            timeout: args.engine_timeout,
            last_seq: None,
            recent: VecDeque::with_capacity(RECENT_BATCHES),
            last_live: None,
            stats: EventStats::default(),
        }
        .run(sub, args.digest_interval, shutdown.clone()),
    );
    let load = tokio::spawn(load_loop(
        http,
        args.engine_url.clone(),
        publisher.clone(),
        args.load_interval,
        engine_ok_ms.clone(),
        shutdown.clone(),
    ));
    let info = WorkerInfo {
        id: worker.clone(),
        url: args
            .advertise_url
            .clone()
            .unwrap_or_else(|| args.engine_url.clone()),
        model: args.model.clone(),
        block_size: args.block_size,
        epoch,
    };
    let ttl = Duration::from_millis(args.stream.registry_ttl_ms.max(30));
    let registry = tokio::spawn(registry_loop(
        infra.registry.clone(),
        info,
        ttl,
        args.load_interval,
        engine_ok_ms,
        shutdown.clone(),
    ));

    shutdown.cancelled().await;
    for task in [events, load, registry, resync] {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    tracing::info!(%worker, "stopped");
    Ok(())
}

/// Keeps the registry entry fresh while the engine answers its scrapes; when it stops
/// answering the entry is no longer refreshed and lapses after the TTL, so routers stop
/// sending to a dead engine even though the sidecar lives. Deletes the entry on shutdown.
async fn registry_loop(
    kv: kv::Store,
    info: WorkerInfo,
    ttl: Duration,
    check_every: Duration,
    engine_ok_ms: Arc<AtomicU64>,
    shutdown: CancellationToken,
) {
    let key = info.id.0.clone();
    let value = match serde_json::to_vec(&info) {
        Ok(v) => v,
        Err(e) => {
            tracing::error!("cannot encode registry entry: {e}");
            return;
        }
    };
    // Checked at least as often as the engine is scraped, so the first registration follows
    // the first good scrape closely; the entry itself is rewritten every ttl/3.
    let refresh = (ttl / 3).max(Duration::from_millis(10));
    let mut tick = tokio::time::interval(check_every.min(refresh));
    let mut registered = false;
    let mut last_put = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let alive =
            now_ms().saturating_sub(engine_ok_ms.load(Ordering::Relaxed)) < ttl.as_millis() as u64;
        if !alive {
            if registered {
                tracing::warn!(worker = %info.id, "engine not answering; letting the registration lapse");
                registered = false;
            }
            continue;
        }
        if registered && last_put.elapsed() < refresh {
            continue;
        }
        match kv.put(&key, value.clone().into()).await {
            Ok(_) => {
                last_put = tokio::time::Instant::now();
                if !registered {
                    tracing::info!(worker = %info.id, url = %info.url, "registered");
                }
                registered = true;
            }
            Err(e) => tracing::warn!(worker = %info.id, "registry refresh failed: {e}"),
        }
    }
    if let Err(e) = kv.delete(&key).await {
        tracing::warn!(worker = %info.id, "deregister failed: {e}");
    } else {
        tracing::info!(worker = %info.id, "deregistered");
    }
}

async fn load_loop(
    http: reqwest::Client,
    engine_url: String,
    publisher: Publisher,
    every: Duration,
    engine_ok_ms: Arc<AtomicU64>,
    shutdown: CancellationToken,
) {
    let url = format!("{}/metrics", engine_url.trim_end_matches('/'));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let text = match http
            .get(&url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
        {
            Ok(r) => r.text().await,
            Err(e) => Err(e),
        };
        match text.map(|t| crate::load::parse(&t)) {
            Ok(Some(load)) => {
                engine_ok_ms.store(now_ms(), Ordering::Relaxed);
                if failing {
                    tracing::info!(%url, "engine metrics back");
                    failing = false;
                }
                if let Err(e) = publisher.publish_load(load).await {
                    tracing::warn!("publish load: {e}");
                }
            }
            Ok(None) => {
                engine_ok_ms.store(now_ms(), Ordering::Relaxed);
                if !failing {
                    tracing::warn!(%url, "no engine load gauges in /metrics");
                    failing = true;
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(%url, "engine scrape failed: {e}");
                    failing = true;
                }
            }
        }
    }
}

#[derive(Debug, Default)]
struct EventStats {
    batches: u64,
    decode_errors: u64,
    gaps: u64,
    replayed: u64,
    resyncs: u64,
    restarts: u64,
    duplicates: u64,
}

/// Recently applied batches remembered to recognise a duplicate: a batch fetched by the tail
/// probe can still arrive live afterwards, and must not pass for an engine restart.
const RECENT_BATCHES: usize = 1024;

/// A stream quiet for this long at a digest tick is probed for a lost tail; a busier one
/// reveals a lost batch with its next one. A lost tail is thus repaired within one digest
/// interval plus this.
const TAIL_QUIET: Duration = Duration::from_millis(50);

struct EventLoop {
    mirror: Mirror,
    publisher: Publisher,
    replay: Option<String>,
    timeout: Duration,
    last_seq: Option<u64>,
    /// `(seq, xxh3 of payload)` of the last [`RECENT_BATCHES`] applied batches.
    recent: VecDeque<(u64, u64)>,
    /// When the last live batch arrived.
    last_live: Option<tokio::time::Instant>,
    stats: EventStats,
}

impl EventLoop {
    async fn run(
        mut self,
        mut sub: EventSubscriber,
        digest_every: Duration,
        shutdown: CancellationToken,
    ) {
        let mut digest = tokio::time::interval(digest_every);
        digest.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = digest.tick() => {
                    // A batch lost at the tail shows no gap until the next one arrives; when
                    // the stream is quiet, ask the replay socket for anything after it. A live
                    // batch since the previous tick proves nothing: batches lost after it are
                    // a tail too, and skipping this tick would leave them for up to two
                    // intervals.
                    if self.last_live.is_none_or(|t| t.elapsed() >= TAIL_QUIET) {
                        self.probe_tail().await;
                    }
                    if let Err(e) = self.publisher.publish_digest().await {
                        tracing::warn!("publish digest: {e}");
                    }
                }
                m = sub.recv() => match m {
                    Ok(m) => self.on_live(m.seq, &m.payload).await,
                    Err(e) => {
                        tracing::warn!("kv events receive failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        tracing::info!(stats = ?self.stats, skipped = ?self.mirror.skipped, "event loop stopped");
    }

    async fn on_live(&mut self, seq: u64, payload: &[u8]) {
        self.last_live = Some(tokio::time::Instant::now());
        match self.last_seq {
            Some(last) if seq == last.wrapping_add(1) => {}
            Some(last) if seq <= last && self.applied(seq, payload) => {
                self.stats.duplicates += 1;
                return;
            }
            Some(last) if seq <= last => {
                // vLLM numbers batches from 0 per process: a step back is a new engine with an
                // empty cache.
                self.stats.restarts += 1;
                tracing::info!(seq, last, "engine restarted; new epoch");
                self.mirror.clear();
                self.publisher.new_epoch(now_ms(), true).await;
                let _ = self.publisher.publish_digest().await;
                if seq > 0 {
                    // The new engine's first batches went out before we reconnected.
                    self.recover(0, seq).await;
                }
            }
            Some(last) => {
                self.stats.gaps += 1;
                tracing::warn!(from = last + 1, to = seq - 1, "kv event gap");
                self.recover(last + 1, seq).await;
            }
            None if seq > 0 => {
                // Started after the engine (or its first batches were lost): take whatever
                // the replay buffer still holds; older history is gone for good.
                self.catch_up(seq).await;
            }
            None => {}
        }
        self.apply(seq, payload).await;
    }

    fn applied(&self, seq: u64, payload: &[u8]) -> bool {
        self.recent.contains(&(seq, xxh3_64(payload)))
    }

    async fn apply(&mut self, seq: u64, payload: &[u8]) {
        self.last_seq = Some(seq);
        if self.recent.len() == RECENT_BATCHES {
            self.recent.pop_front();
        }
        self.recent.push_back((seq, xxh3_64(payload)));
        self.stats.batches += 1;
        let batch = match decode_batch(payload) {
            Ok(b) => b,
            Err(e) => {
                self.stats.decode_errors += 1;
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

    /// Fetches batches `from..to` from the replay socket; falls back to a resync.
    async fn recover(&mut self, from: u64, to: u64) {
        let Some(endpoint) = self.replay.clone() else {
            self.resync().await;
            return;
        };
        match fetch_replay(&endpoint, from, self.timeout).await {
            Ok(batches) => {
                let wanted: Vec<_> = batches
                    .into_iter()
                    .filter(|(s, _)| (from..to).contains(s))
                    .collect();
                let complete = wanted.len() as u64 == to - from
                    && wanted.iter().zip(from..).all(|((s, _), want)| *s == want);
                if !complete {
                    tracing::warn!(from, to, got = wanted.len(), "replay incomplete; resyncing");
                    self.resync().await;
                    return;
                }
                self.stats.replayed += wanted.len() as u64;
                for (s, p) in wanted {
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
                    self.stats.replayed += 1;
                    self.apply(s, &p).await;
                }
            }
            Err(e) => tracing::warn!("catch-up replay failed: {e}"),
        }
    }

    async fn probe_tail(&mut self) {
        let (Some(last), Some(endpoint)) = (self.last_seq, self.replay.clone()) else {
            return;
        };
        match fetch_replay(&endpoint, last + 1, self.timeout).await {
            Ok(batches) => {
                let mut next = last + 1;
                for (s, p) in batches {
                    if s == next {
                        self.stats.replayed += 1;
                        self.apply(s, &p).await;
                        next += 1;
                    }
                }
            }
            Err(e) => tracing::debug!("tail probe: {e}"),
        }
    }

    /// Events were lost for good: start a new epoch so routers drop what they had from us
    /// and fetch the mirror whole. The mirror itself may lack what the lost batches said;
    /// the engine has no API to list its cache, so it is the best view there is.
    async fn resync(&mut self) {
        self.stats.resyncs += 1;
        self.publisher.new_epoch(now_ms(), false).await;
        if let Err(e) = self.publisher.publish_digest().await {
            tracing::warn!("publish digest after new epoch: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("2h").is_err());
        assert!(parse_duration("x").is_err());
    }
}
