//! Helpers shared by the reporter's benches (`flow`, `stale_cache`): the router started through
//! the test kit as the reporter's routed tests start it, `/route` and completion calls that
//! return what a log line needs, waits driven by the router's own progress, a tap on a worker's
//! event subject, and the stale-cache timeline plot ([`timeline`]). The engines, reporters,
//! nats-server and the small-mode switch come from the test kit (`cache-router-testkit`).
#![allow(dead_code)]

pub(crate) mod timeline;

use std::collections::HashSet;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;
use tokio::sync::watch;

use cache_router::proxy::WORKER_HEADER;
use cache_router::{FleetHandle, RunningRouter};
use cache_router_bus::NatsArgs;
use cache_router_core::protocol::{BlockHash, Body, Envelope, WorkerId};
use cache_router_testkit::{eventually, patience, routers};

pub(crate) use cache_router_testkit::small_mode;

/// How often the benches' measurement loops sample the router's view (`/route`, the fleet's
/// views) while they count false hits or time a recovery.
pub(crate) const POLL: Duration = Duration::from_millis(10);

/// Logs warnings to stderr (`RUST_LOG` overrides). The reporters' gap warnings (the benches
/// cause them on purpose), the router's event-plane warnings and the NATS connection-state
/// lines of clients outliving their server are noise here.
pub(crate) fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(
                    "warn,cache_router_bus=error,cache_router::plane=error,\
                     worker_reporter::events=error,worker_reporter::load=error",
                )
            }),
        )
        .with_writer(std::io::stderr)
        .try_init();
}

/// A two-thread runtime like the tests' `multi_thread, worker_threads = 2`.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Seconds since the bench started, for log lines.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock(Instant);

impl Clock {
    pub(crate) fn start() -> Clock {
        Clock(Instant::now())
    }

    pub(crate) fn stamp(&self) -> String {
        format!("[{:7.3} s]", self.0.elapsed().as_secs_f64())
    }
}

/// The router as `cache-router serve --nats URL --model mock-model --tokenizer ...
/// --block-size 16 --policy cache-aware` wires it (the kit's [`routers::nats_router_config`]:
/// speculation off, so that every overlap it reports comes from the engines' KV events), on
/// 127.0.0.1.
pub(crate) struct Router {
    pub(crate) base: String,
    pub(crate) fleet: FleetHandle,
    running: RunningRouter,
}

impl Router {
    pub(crate) async fn start(nats: &str) -> Router {
        let mut config = routers::nats_router_config(nats);
        // The kit's tests snapshot every 500 ms; these benches time how fast the router's view
        // follows the engines, so the router keeps `serve`'s cadence (100 k messages or 30 s)
        // and does no snapshot work during the measurements.
        let defaults = cache_router::NatsConfig::new(nats);
        if let Some(n) = config.nats.as_mut() {
            n.snapshot_every = defaults.snapshot_every;
            n.snapshot_interval = defaults.snapshot_interval;
        }
        let running = routers::spawn(config).await;
        Router {
            base: running.url().to_owned(),
            fleet: running.fleet().clone(),
            running,
        }
    }

    /// Stops the router and waits for its drain.
    pub(crate) async fn stop(self) {
        self.running.stop().await.expect("the router stops");
    }

    /// Waits until `/ready` answers 200 and `n` workers are registered.
    pub(crate) async fn wait_for_workers(&self, http: &reqwest::Client, n: usize) {
        eventually(
            "the router is ready with every worker registered",
            || async {
                let ready = http
                    .get(format!("{}/ready", self.base))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                let registered = self.fleet.stats().await.map_or(0, |s| s.registered);
                ready && registered == n
            },
        )
        .await;
    }

    /// Evaluates `cond` now and again each time the router applies a stream message or `tap`
    /// sees one, until it holds; returns how long that took. Driven by the router's progress
    /// rather than by a poll period, so the time is as fine as the events themselves. Fails
    /// after the kit's patience.
    pub(crate) async fn wait_until<F, Fut>(
        &self,
        what: &str,
        tap: Option<&EventTap>,
        mut cond: F,
    ) -> Duration
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let start = Instant::now();
        loop {
            // Read both positions before the check, so nothing applied during it is missed.
            let applied = self.fleet.applied_stream_seq();
            let tapped = tap.map(EventTap::subscribe);
            if cond().await {
                return start.elapsed();
            }
            let next = async {
                let router = self.fleet.wait_applied(applied + 1);
                match tapped {
                    Some(mut t) => tokio::select! {
                        r = router => r.expect("the router runs"),
                        _ = t.changed() => {}
                    },
                    None => router.await.expect("the router runs"),
                }
            };
            let left = patience().saturating_sub(start.elapsed());
            if tokio::time::timeout(left, next).await.is_err() {
                panic!("timed out after {:?} waiting until {what}", patience());
            }
        }
    }

    /// `POST /route`: the decision for `body`, nothing proxied or recorded.
    pub(crate) async fn route(&self, http: &reqwest::Client, body: &Value) -> Decision {
        let resp = http
            .post(format!("{}/route", self.base))
            .json(body)
            .send()
            .await
            .expect("POST /route");
        let status = resp.status();
        let v: Value = resp.json().await.expect("/route answers JSON");
        assert!(status.is_success(), "/route: {status}: {v}");
        Decision::from_json(&v)
    }

    /// POSTs a completion through the router and reads the whole answer.
    pub(crate) async fn complete(&self, http: &reqwest::Client, body: &Value) -> Served {
        let resp = http
            .post(format!("{}/v1/completions", self.base))
            .json(body)
            .send()
            .await
            .expect("POST /v1/completions");
        let status = resp.status();
        let worker = resp
            .headers()
            .get(WORKER_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let v: Value = resp.json().await.expect("the completion is JSON");
        assert!(status.is_success(), "completion: {status}: {v}");
        Served {
            worker: worker.expect("the router names the serving worker"),
            prompt_tokens: v["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
            cached_tokens: v["usage"]["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .unwrap_or(0),
        }
    }
}

/// One candidate of a `/route` decision.
#[derive(Clone, Debug)]
pub(crate) struct Candidate {
    pub(crate) worker: String,
    pub(crate) overlap: u32,
    pub(crate) cost: f64,
}

/// What `/route` answered.
#[derive(Clone, Debug)]
pub(crate) struct Decision {
    pub(crate) blocks: usize,
    pub(crate) tokens: usize,
    pub(crate) chosen: String,
    /// The pick first, then by increasing cost.
    pub(crate) candidates: Vec<Candidate>,
    pub(crate) lookup_us: u64,
}

impl Decision {
    fn from_json(v: &Value) -> Decision {
        let candidates = v["candidates"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|c| Candidate {
                        worker: c["worker"].as_str().unwrap_or_default().to_owned(),
                        overlap: c["overlap"].as_u64().unwrap_or(0) as u32,
                        cost: c["cost"].as_f64().unwrap_or(f64::NAN),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Decision {
            blocks: v["blocks"].as_u64().unwrap_or(0) as usize,
            tokens: v["tokens"].as_u64().unwrap_or(0) as usize,
            chosen: v["chosen"]["worker"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            candidates,
            lookup_us: v["timings_us"]["lookup"].as_u64().unwrap_or(0),
        }
    }

    pub(crate) fn candidate(&self, worker: &str) -> Option<&Candidate> {
        self.candidates.iter().find(|c| c.worker == worker)
    }

    /// The router's overlap (blocks) for `worker`, 0 when it is not a candidate.
    pub(crate) fn overlap(&self, worker: &str) -> u32 {
        self.candidate(worker).map_or(0, |c| c.overlap)
    }

    pub(crate) fn max_overlap(&self) -> u32 {
        self.candidates.iter().map(|c| c.overlap).max().unwrap_or(0)
    }

    /// `w1 0/21 blk cost 21.0 | w2 ...`, in worker order.
    pub(crate) fn table(&self) -> String {
        let mut c = self.candidates.clone();
        c.sort_by(|a, b| a.worker.cmp(&b.worker));
        let mut out = String::new();
        for (i, c) in c.iter().enumerate() {
            if i > 0 {
                out.push_str(" | ");
            }
            let _ = write!(
                out,
                "{} overlap {}/{} cost {:.1}",
                c.worker, c.overlap, self.blocks, c.cost
            );
        }
        out
    }
}

/// What the engine behind the router answered.
#[derive(Clone, Debug)]
pub(crate) struct Served {
    /// From the router's `x-cache-router-worker` header.
    pub(crate) worker: String,
    pub(crate) prompt_tokens: u64,
    /// The engine's own `usage.prompt_tokens_details.cached_tokens`.
    pub(crate) cached_tokens: u64,
}

/// What a tap has seen: messages with their arrival times, and how many digests.
#[derive(Default)]
struct Seen {
    messages: Vec<(Instant, Body)>,
    digests: usize,
}

/// Every message one worker's reporter publishes on `kvr.events.<worker>`, as NATS delivers
/// it to a plain subscriber (the subject the router's stream captures), with its arrival time.
pub(crate) struct EventTap {
    seen: Arc<Mutex<Seen>>,
    /// Bumped with every message; the digest count rides along in `seen`.
    count: watch::Receiver<usize>,
    task: tokio::task::JoinHandle<()>,
}

impl EventTap {
    /// Returns once the subscription is registered with the server.
    pub(crate) async fn start(nats: &str, worker: &str) -> EventTap {
        let args = NatsArgs::for_url(nats);
        let client = cache_router_bus::connect(&args, "bench-event-tap")
            .await
            .expect("tap connects");
        let subject = args.subjects().events(&WorkerId::from(worker));
        let mut sub = client.subscribe(subject).await.expect("subscribe");
        client.flush().await.expect("flush the subscription");
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (tx, count) = watch::channel(0);
        let s = seen.clone();
        let task = tokio::spawn(async move {
            let _client = client;
            while let Some(msg) = sub.next().await {
                if let Ok(env) = Envelope::decode(&msg.payload) {
                    let mut seen = s.lock().unwrap();
                    seen.digests += usize::from(matches!(env.body, Body::Digest { .. }));
                    seen.messages.push((Instant::now(), env.body));
                    tx.send_modify(|n| *n += 1);
                }
            }
        });
        EventTap { seen, count, task }
    }

    /// A receiver that changes with the next message the tap sees.
    fn subscribe(&self) -> watch::Receiver<usize> {
        let mut rx = self.count.clone();
        rx.mark_unchanged();
        rx
    }

    /// `Removed` messages, blocks they removed, and how many of those are in `of`.
    pub(crate) fn removed(&self, of: &HashSet<BlockHash>) -> (usize, usize, usize) {
        let seen = self.seen.lock().unwrap();
        let blocks: Vec<&BlockHash> = seen
            .messages
            .iter()
            .filter_map(|(_, b)| match b {
                Body::Removed { blocks } => Some(blocks),
                _ => None,
            })
            .flatten()
            .collect();
        let messages = seen
            .messages
            .iter()
            .filter(|(_, b)| matches!(b, Body::Removed { .. }))
            .count();
        let of_them = blocks.iter().filter(|b| of.contains(b)).count();
        (messages, blocks.len(), of_them)
    }

    /// Arrival times of the digests (one per digest tick, right after the tail probe), in
    /// seconds since `since` (negative before it).
    pub(crate) fn digests(&self, since: Instant) -> Vec<f64> {
        self.seen
            .lock()
            .unwrap()
            .messages
            .iter()
            .filter(|(_, b)| matches!(b, Body::Digest { .. }))
            .map(|(t, _)| match t.checked_duration_since(since) {
                Some(d) => d.as_secs_f64(),
                None => -(since - *t).as_secs_f64(),
            })
            .collect()
    }

    fn digest_count(&self) -> usize {
        self.seen.lock().unwrap().digests
    }

    /// Waits (bounded by the kit's patience) for the next digest, returning as it arrives.
    pub(crate) async fn next_digest(&self) {
        let mut rx = self.subscribe();
        let n = self.digest_count();
        let next = async {
            while self.digest_count() == n {
                rx.changed().await.expect("the tap runs");
            }
        };
        tokio::time::timeout(patience(), next)
            .await
            .expect("no digest from the reporter");
    }
}

impl Drop for EventTap {
    fn drop(&mut self) {
        self.task.abort();
    }
}
