//! The router's metrics, declared once and exposed through `prometheus-client`.
//!
//! Three kinds of source:
//! - counters and gauges the request path and the event plane update as things happen
//!   ([`HttpMetrics`], [`PlaneMetrics`]): atomics, or a label family whose read path is a
//!   shared read lock;
//! - the decision-latency histogram ([`DecisionTimes`]), lock-free buckets of our own encoded
//!   by the crate, so observing a phase never takes a lock;
//! - what the fleet actor and the in-flight counters know, read at scrape time
//!   ([`FleetCollector`], [`InFlightCollector`]).
//!
//! Metric names are a contract (dashboards, alerts, the demo): counters are registered without
//! their `_total` suffix, which the OpenMetrics encoder appends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use cache_router_core::fleet::ResyncCause;

use crate::fleet_actor::FleetStats;
use crate::proxy::InFlight;

/// The content type of [`RouterMetrics::render`]'s output.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteStatus {
    route: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabel {
    worker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// Why a stream message was skipped.
#[derive(Clone, Copy, Debug)]
pub(crate) enum BadMessage {
    Malformed,
    UnknownVersion,
    /// The envelope names another worker than its subject.
    SubjectMismatch,
}

impl BadMessage {
    fn label(self) -> &'static str {
        match self {
            BadMessage::Malformed => "malformed",
            BadMessage::UnknownVersion => "unknown_version",
            BadMessage::SubjectMismatch => "subject_mismatch",
        }
    }
}

/// Why a registry entry was refused.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Rejected {
    Malformed,
    /// Its id is not its key (or not a valid id).
    OtherWorker,
    /// Its URL is more than `http://host:port`.
    Url,
    /// Its host is not in `--allow-worker-host`.
    HostNotAllowed,
}

impl Rejected {
    const ALL: [Rejected; 4] = [
        Rejected::Malformed,
        Rejected::OtherWorker,
        Rejected::Url,
        Rejected::HostNotAllowed,
    ];

    fn label(self) -> &'static str {
        match self {
            Rejected::Malformed => "malformed",
            Rejected::OtherWorker => "other_worker",
            Rejected::Url => "url",
            Rejected::HostNotAllowed => "host_not_allowed",
        }
    }
}

/// What the event plane counts.
#[derive(Debug, Default)]
pub(crate) struct PlaneMetrics {
    pub(crate) stream_messages: Counter,
    bad_messages: Family<ReasonLabel, Counter>,
    pub(crate) replayed: Counter,
    pub(crate) load_messages: Counter,
    /// Other routers' in-flight reports applied.
    pub(crate) router_load_messages: Counter,
    registry_rejected: Family<ReasonLabel, Counter>,
    /// Registry sweeps that found lapsed entries but purged none (the registry in trouble).
    pub(crate) registry_suspended: Counter,
    resync_fetches: Family<ResultLabel, Counter>,
    /// Resyncs that waited before starting (a worker resyncing again and again).
    pub(crate) resyncs_paced: Counter,
    /// Duration of the last successful resync fetch, in microseconds.
    pub(crate) resync_last_us: Gauge,
    pub(crate) snapshots_written: Counter,
    pub(crate) snapshot_bytes: Gauge,
    /// Time from start to ready, in milliseconds (0 until ready).
    pub(crate) recovery_ms: Gauge,
}

impl PlaneMetrics {
    pub(crate) fn bad_message(&self, why: BadMessage) {
        self.bad_messages
            .get_or_create(&ReasonLabel {
                reason: why.label(),
            })
            .inc();
    }

    pub(crate) fn bad_messages(&self, why: BadMessage) -> u64 {
        self.bad_messages
            .get(&ReasonLabel {
                reason: why.label(),
            })
            .map_or(0, |c| c.get())
    }

    pub(crate) fn registry_rejected(&self, why: Rejected) {
        self.registry_rejected
            .get_or_create(&ReasonLabel {
                reason: why.label(),
            })
            .inc();
    }

    /// Registry entries refused, for any reason.
    pub(crate) fn registry_rejections(&self) -> u64 {
        Rejected::ALL
            .into_iter()
            .map(|r| {
                self.registry_rejected
                    .get(&ReasonLabel { reason: r.label() })
                    .map_or(0, |c| c.get())
            })
            .sum()
    }

    pub(crate) fn resync_fetch(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.resync_fetches
            .get_or_create(&ResultLabel { result })
            .inc();
    }
}

/// Decision latency by phase: fixed microsecond buckets of atomics.
#[derive(Debug, Default)]
pub(crate) struct DecisionTimes {
    pub(crate) queue: LatencyBuckets,
    pub(crate) tokenize: LatencyBuckets,
    pub(crate) lookup: LatencyBuckets,
    pub(crate) score: LatencyBuckets,
}

/// Upper bounds of the latency buckets, in microseconds.
const BUCKETS_US: [u64; 16] = [
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 50_000, 100_000, 250_000, 1_000_000,
    2_500_000,
];

/// A lock-free latency histogram.
#[derive(Debug, Default)]
pub(crate) struct LatencyBuckets {
    counts: [AtomicU64; BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

impl LatencyBuckets {
    pub(crate) fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = BUCKETS_US.partition_point(|&b| b < us);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// (sum in seconds, count, cumulative buckets in seconds).
    fn read(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut cum = 0;
        let mut buckets = Vec::with_capacity(BUCKETS_US.len() + 1);
        for (i, b) in BUCKETS_US.iter().enumerate() {
            cum += self.counts[i].load(Ordering::Relaxed);
            buckets.push((*b as f64 / 1e6, cum));
        }
        cum += self.counts[BUCKETS_US.len()].load(Ordering::Relaxed);
        buckets.push((f64::INFINITY, cum));
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        (sum, cum, buckets)
    }
}

/// What the HTTP surface counts.
#[derive(Debug, Default)]
pub(crate) struct HttpMetrics {
    requests: Family<RouteStatus, Counter>,
    worker_requests: Family<WorkerLabel, Counter>,
    pub(crate) decision: DecisionTimes,
    pub(crate) request_blocks: Counter,
    pub(crate) overlap_blocks: Counter,
    pub(crate) proxy_errors: Counter,
    pub(crate) connections_accepted: Counter,
    /// Closed at once because `--max-connections` were open.
    pub(crate) connections_refused: Counter,
    /// Prompts waiting for or holding a tokenizer slot, ordinary lane.
    pub(crate) tokenize_lane_normal: Gauge,
    /// The same, huge-prompt lane.
    pub(crate) tokenize_lane_huge: Gauge,
}

impl HttpMetrics {
    pub(crate) fn count(&self, route: &'static str, status: u16) {
        self.requests
            .get_or_create(&RouteStatus { route, status })
            .inc();
    }

    pub(crate) fn served_by(&self, worker: &str) {
        let label = WorkerLabel {
            worker: worker.to_owned(),
        };
        // The common case (a known worker) takes only the family's read lock.
        if let Some(c) = self.worker_requests.get(&label) {
            c.inc();
            return;
        }
        self.worker_requests.get_or_create(&label).inc();
    }
}

/// Every metric of one router and the registry that exposes them.
#[derive(Debug)]
pub(crate) struct RouterMetrics {
    pub(crate) http: Arc<HttpMetrics>,
    pub(crate) plane: Arc<PlaneMetrics>,
    fleet: Arc<FleetCollector>,
    registry: Registry,
}

impl RouterMetrics {
    pub(crate) fn new(inflight: InFlight) -> Self {
        let http = Arc::new(HttpMetrics::default());
        let plane = Arc::new(PlaneMetrics::default());
        let fleet = Arc::new(FleetCollector::default());
        let mut r = Registry::default();
        let p = &plane;
        r.register(
            "cache_router_stream_messages",
            "Event stream messages received",
            p.stream_messages.clone(),
        );
        r.register(
            "cache_router_bad_messages",
            "Messages skipped because they could not be applied, by reason",
            p.bad_messages.clone(),
        );
        r.register(
            "cache_router_replayed_messages",
            "Stream messages replayed before ready",
            p.replayed.clone(),
        );
        r.register(
            "cache_router_load_messages",
            "Load reports received",
            p.load_messages.clone(),
        );
        r.register(
            "cache_router_router_load_messages",
            "Other routers' in-flight reports applied",
            p.router_load_messages.clone(),
        );
        r.register(
            "cache_router_registry_rejected",
            "Registry entries refused, by reason",
            p.registry_rejected.clone(),
        );
        r.register(
            "cache_router_registry_suspended",
            "Registry sweeps that kept lapsed workers routable (registry unreachable or most workers lapsing at once)",
            p.registry_suspended.clone(),
        );
        r.register(
            "cache_router_resync_fetches",
            "Resync fetches, by result",
            p.resync_fetches.clone(),
        );
        r.register(
            "cache_router_resyncs_paced",
            "Resyncs delayed because the same worker resynced shortly before (backoff)",
            p.resyncs_paced.clone(),
        );
        r.register(
            "cache_router_resync_last_us",
            "Duration of the last successful resync fetch, in microseconds",
            p.resync_last_us.clone(),
        );
        r.register(
            "cache_router_recovery_ms",
            "Milliseconds from start to ready",
            p.recovery_ms.clone(),
        );
        r.register(
            "cache_router_snapshots_written",
            "Snapshots written",
            p.snapshots_written.clone(),
        );
        r.register(
            "cache_router_snapshot_bytes",
            "Size of the last snapshot",
            p.snapshot_bytes.clone(),
        );
        let h = &http;
        r.register(
            "cache_router_requests",
            "HTTP requests by route and status",
            h.requests.clone(),
        );
        r.register(
            "cache_router_worker_requests",
            "Requests proxied, by worker",
            h.worker_requests.clone(),
        );
        r.register(
            "cache_router_request_blocks",
            "Full blocks in routed requests",
            h.request_blocks.clone(),
        );
        r.register(
            "cache_router_overlap_blocks",
            "Blocks the chosen worker already held",
            h.overlap_blocks.clone(),
        );
        r.register(
            "cache_router_proxy_errors",
            "Requests that failed on every attempted worker",
            h.proxy_errors.clone(),
        );
        r.register(
            "cache_router_connections_accepted",
            "Client connections accepted",
            h.connections_accepted.clone(),
        );
        r.register(
            "cache_router_connections_refused",
            "Client connections closed at once because --max-connections were open",
            h.connections_refused.clone(),
        );
        for (lane, gauge) in [
            ("normal", &h.tokenize_lane_normal),
            ("huge", &h.tokenize_lane_huge),
        ] {
            r.sub_registry_with_label(("lane".into(), lane.into()))
                .register(
                    "cache_router_tokenize_queue",
                    "Prompts waiting for or holding a tokenizer slot, by lane",
                    gauge.clone(),
                );
        }
        r.register_collector(Box::new(HttpCollector(http.clone())));
        r.register_collector(Box::new(fleet.clone()));
        r.register_collector(Box::new(InFlightCollector(inflight)));
        RouterMetrics {
            http,
            plane,
            fleet,
            registry: r,
        }
    }

    /// The exposition text, with the fleet's counters as of `fleet` (None when the actor has
    /// stopped) and the readiness state given.
    pub(crate) fn render(&self, fleet: Option<FleetStats>, ready: bool, stream_seq: u64) -> String {
        self.fleet.set(FleetSample {
            stats: fleet,
            ready,
            stream_seq,
        });
        let mut out = String::with_capacity(8 << 10);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!("cannot encode metrics: {e}");
        }
        out
    }
}

/// The decision histogram and the hit ratio, derived from [`HttpMetrics`] at scrape time.
#[derive(Debug)]
struct HttpCollector(Arc<HttpMetrics>);

impl Collector for HttpCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = &self.0;
        let mut family = encoder.encode_descriptor(
            "cache_router_decision_seconds",
            "Routing decision latency by phase",
            None,
            MetricType::Histogram,
        )?;
        for (phase, h) in [
            ("queue", &m.decision.queue),
            ("tokenize", &m.decision.tokenize),
            ("lookup", &m.decision.lookup),
            ("score", &m.decision.score),
        ] {
            let (sum, count, buckets) = h.read();
            family
                .encode_family(&[("phase", phase)])?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    sum, count, &buckets, None,
                )?;
        }
        let blocks = m.request_blocks.get();
        let ratio = if blocks == 0 {
            0.0
        } else {
            m.overlap_blocks.get() as f64 / blocks as f64
        };
        const_gauge(
            &mut encoder,
            "cache_router_hit_ratio",
            "Overlap blocks / request blocks since start",
            ratio,
        )
    }
}

#[derive(Debug, Default)]
struct FleetSample {
    stats: Option<FleetStats>,
    ready: bool,
    stream_seq: u64,
}

/// The fleet actor's counters as of the scrape.
#[derive(Debug, Default)]
struct FleetCollector {
    sample: Mutex<FleetSample>,
}

impl FleetCollector {
    fn set(&self, s: FleetSample) {
        *self.sample.lock().unwrap_or_else(|e| e.into_inner()) = s;
    }
}

fn const_gauge<V>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: V,
) -> Result<(), std::fmt::Error>
where
    ConstGauge<V>: EncodeMetric,
{
    let g = ConstGauge::new(v);
    let e = encoder.encode_descriptor(name, help, None, g.metric_type())?;
    g.encode(e)
}

fn const_counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(v);
    let e = encoder.encode_descriptor(name, help, None, c.metric_type())?;
    c.encode(e)
}

impl Collector for FleetCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.sample.lock().unwrap_or_else(|e| e.into_inner());
        const_gauge(
            &mut encoder,
            "cache_router_ready",
            "1 once the event stream is replayed",
            i64::from(s.ready),
        )?;
        const_gauge(
            &mut encoder,
            "cache_router_stream_seq",
            "Last event stream sequence applied",
            i64::try_from(s.stream_seq).unwrap_or(i64::MAX),
        )?;
        let Some(f) = &s.stats else {
            return Ok(());
        };
        let c = &f.counters;
        const_counter(
            &mut encoder,
            "cache_router_events_applied",
            "Cache messages applied to the index",
            c.applied,
        )?;
        const_counter(
            &mut encoder,
            "cache_router_block_events_applied",
            "Block events applied to the index",
            c.block_events,
        )?;
        const_counter(
            &mut encoder,
            "cache_router_duplicates",
            "Duplicate messages dropped",
            c.duplicates,
        )?;
        let mut dropped = encoder.encode_descriptor(
            "cache_router_event_drops",
            "Event messages dropped by the fleet's bounds and rules, by reason",
            None,
            MetricType::Counter,
        )?;
        for (reason, v) in [
            ("stale_epoch", c.stale_epoch),
            ("resync_buffer_overflow", c.buffer_dropped),
            ("no_slot", c.no_slot),
            ("unregistered_quarantine_full", c.unregistered_dropped),
            ("ahead_of_resync", c.ahead_dropped),
        ] {
            ConstCounter::new(v).encode(dropped.encode_family(&[("reason", reason)])?)?;
        }
        const_counter(
            &mut encoder,
            "cache_router_unregistered_purged",
            "Workers known only from events (never registered) purged or evicted",
            c.unregistered_purged + c.unregistered_evicted,
        )?;
        let mut resyncs = encoder.encode_descriptor(
            "cache_router_resyncs",
            "Resyncs started, by cause",
            None,
            MetricType::Counter,
        )?;
        for cause in ResyncCause::ALL {
            ConstCounter::new(c.resyncs(cause))
                .encode(resyncs.encode_family(&[("cause", cause.as_str())])?)?;
        }
        let gauge = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        const_gauge(
            &mut encoder,
            "cache_router_index_entries",
            "Resident (worker, block) entries",
            gauge(f.index.entries),
        )?;
        const_gauge(
            &mut encoder,
            "cache_router_index_blocks",
            "Distinct resident blocks",
            gauge(f.index.distinct_blocks),
        )?;
        const_gauge(
            &mut encoder,
            "cache_router_index_heap_bytes",
            "Estimated heap bytes of the index's tables",
            gauge(f.index_heap_bytes),
        )?;
        const_counter(
            &mut encoder,
            "cache_router_index_evictions",
            "Entries dropped by the memory bound",
            f.index.evictions,
        )?;
        const_gauge(
            &mut encoder,
            "cache_router_resync_buffer_bytes",
            "Bytes of messages buffered while resyncs are pending",
            gauge(f.resync_buffered_bytes),
        )?;
        const_gauge(
            &mut encoder,
            "cache_router_workers",
            "Workers known to the router",
            gauge(f.workers),
        )
    }
}

/// Requests in flight per worker slot, read at scrape time.
#[derive(Debug)]
struct InFlightCollector(InFlight);

impl Collector for InFlightCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "cache_router_in_flight",
            "Requests in flight per worker slot",
            None,
            MetricType::Gauge,
        )?;
        for (w, load) in self.0.snapshot() {
            let slot = w.get().to_string();
            ConstGauge::new(i64::from(load.requests))
                .encode(family.encode_family(&[("slot", slot.as_str())])?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cache_router_core::prom_text;

    #[test]
    fn every_metric_name_of_the_contract_is_exposed() {
        let m = RouterMetrics::new(InFlight::new(4));
        m.http.count("completions", 200);
        m.http.served_by("w1");
        m.http.decision.tokenize.observe(Duration::from_micros(7));
        m.http.request_blocks.inc_by(4);
        m.http.overlap_blocks.inc_by(3);
        m.plane.bad_message(BadMessage::SubjectMismatch);
        let text = m.render(Some(FleetStats::default()), true, 42);
        for name in [
            "cache_router_ready",
            "cache_router_stream_seq",
            "cache_router_bad_messages_total",
            "cache_router_stream_messages_total",
            "cache_router_recovery_ms",
            "cache_router_snapshots_written_total",
            "cache_router_snapshot_bytes",
            "cache_router_events_applied_total",
            "cache_router_block_events_applied_total",
            "cache_router_duplicates_total",
            "cache_router_resyncs_total",
            "cache_router_index_entries",
            "cache_router_index_blocks",
            "cache_router_index_evictions_total",
            "cache_router_workers",
            "cache_router_requests_total",
            "cache_router_worker_requests_total",
            "cache_router_decision_seconds_bucket",
            "cache_router_request_blocks_total",
            "cache_router_overlap_blocks_total",
            "cache_router_hit_ratio",
            "cache_router_proxy_errors_total",
        ] {
            assert!(
                prom_text::samples(&text).any(|s| s.name == name),
                "{name} missing from\n{text}"
            );
        }
        assert_eq!(
            prom_text::unlabelled(&text, "cache_router_stream_seq"),
            Some(42.0)
        );
        assert_eq!(
            prom_text::unlabelled(&text, "cache_router_hit_ratio"),
            Some(0.75)
        );
        let mismatch = prom_text::samples(&text)
            .find(|s| s.name == "cache_router_bad_messages_total")
            .unwrap();
        assert_eq!(mismatch.label("reason"), Some("subject_mismatch"));
        let requests = prom_text::samples(&text)
            .find(|s| s.name == "cache_router_requests_total")
            .unwrap();
        assert_eq!(
            (requests.label("route"), requests.label("status")),
            (Some("completions"), Some("200"))
        );
        let tokenize_le_10us = prom_text::samples(&text)
            .find(|s| {
                s.name == "cache_router_decision_seconds_bucket"
                    && s.label("phase") == Some("tokenize")
                    && s.label("le") == Some("0.00001")
            })
            .map(|s| s.value);
        assert_eq!(tokenize_le_10us, Some(1.0), "{text}");
    }

    #[test]
    fn latency_buckets_are_cumulative_and_inclusive() {
        let b = LatencyBuckets::default();
        b.observe(Duration::from_micros(5));
        b.observe(Duration::from_micros(6));
        b.observe(Duration::from_secs(10));
        let (sum, count, buckets) = b.read();
        assert_eq!(count, 3);
        assert_eq!(buckets[0], (5e-6, 1), "le is inclusive");
        assert_eq!(buckets[1], (1e-5, 2));
        assert_eq!(buckets.last().unwrap(), &(f64::INFINITY, 3));
        assert!((sum - 10.000011).abs() < 1e-9);
    }
}
