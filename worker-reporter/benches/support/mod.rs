//! Helpers shared by the reporter's benches (`flow`, `stale_cache`): the small-mode switch, the
//! router started in-process as `tests/routed.rs` does, `/route` and completion calls that
//! return what a log line needs, a tap on a worker's event subject, and the stale-cache
//! timeline plot ([`timeline`]). The engines, reporters and nats-server come from the
//! end-to-end tests' harness (`tests/common`).
#![allow(dead_code)]

pub(crate) mod timeline;

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use cache_router::bus::ingest::FleetHandle;
use cache_router::bus::NatsArgs;
use cache_router::http::proxy::WORKER_HEADER;
use cache_router::protocol::{BlockHash, Body, Envelope, WorkerId};

use crate::common::{wait_until, PATIENCE};

/// The root benches' small-mode switch (`cargo test` runs benches small, still checking).
#[path = "../../../benches/common/mod.rs"]
mod root_common;
pub(crate) use root_common::small_mode;

/// Logs warnings to stderr (`RUST_LOG` overrides). The reporters' gap warnings (the benches
/// cause them on purpose) and the NATS connection-state lines of clients outliving their
/// server are noise here.
pub(crate) fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(
                    "warn,cache_router::bus=error,worker_reporter::reporter=error",
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
/// --block-size 16 --policy cache-aware` wires it, on 127.0.0.1, with speculation off so that
/// every overlap it reports comes from the engines' KV events.
pub(crate) struct Router {
    pub(crate) base: String,
    pub(crate) fleet: FleetHandle,
    pub(crate) token: CancellationToken,
}

impl Router {
    pub(crate) async fn start(nats: &str) -> Router {
        let (base, fleet, token) = crate::common::start_router(nats).await;
        Router { base, fleet, token }
    }

    /// Waits until `/ready` answers 200 and `n` workers are registered.
    pub(crate) async fn wait_for_workers(&self, http: &reqwest::Client, n: usize) {
        wait_until(
            "the router is ready with every worker registered",
            || async {
                let ready = http
                    .get(format!("{}/ready", self.base))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                let registered = self
                    .fleet
                    .query(|f| f.workers().filter(|(_, e)| e.info.is_some()).count())
                    .await
                    .unwrap_or(0);
                ready && registered == n
            },
        )
        .await;
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

/// Every message one worker's reporter publishes on `kvr.events.<worker>`, as NATS delivers
/// it to a plain subscriber (the subject the router's stream captures), with its arrival time.
pub(crate) struct EventTap {
    seen: Arc<Mutex<Vec<(Instant, Body)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl EventTap {
    /// Returns once the subscription is registered with the server.
    pub(crate) async fn start(nats: &str, worker: &str) -> EventTap {
        let client = async_nats::connect(nats).await.expect("tap connects");
        let subject = NatsArgs::for_url(nats)
            .subjects()
            .events(&WorkerId::from(worker));
        let mut sub = client.subscribe(subject).await.expect("subscribe");
        client.flush().await.expect("flush the subscription");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let task = tokio::spawn(async move {
            let _client = client;
            while let Some(msg) = sub.next().await {
                if let Ok(env) = Envelope::decode(&msg.payload) {
                    s.lock().unwrap().push((Instant::now(), env.body));
                }
            }
        });
        EventTap { seen, task }
    }

    /// `Removed` messages, blocks they removed, and how many of those are in `of`.
    pub(crate) fn removed(&self, of: &HashSet<BlockHash>) -> (usize, usize, usize) {
        let seen = self.seen.lock().unwrap();
        let blocks: Vec<&BlockHash> = seen
            .iter()
            .filter_map(|(_, b)| match b {
                Body::Removed { blocks } => Some(blocks),
                _ => None,
            })
            .flatten()
            .collect();
        let messages = seen
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
            .iter()
            .filter(|(_, b)| matches!(b, Body::Digest { .. }))
            .map(|(t, _)| match t.checked_duration_since(since) {
                Some(d) => d.as_secs_f64(),
                None => -(since - *t).as_secs_f64(),
            })
            .collect()
    }

    fn digest_count(&self) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, b)| matches!(b, Body::Digest { .. }))
            .count()
    }

    /// Waits (bounded) for the next digest.
    pub(crate) async fn next_digest(&self) {
        let n = self.digest_count();
        let t = Instant::now();
        while self.digest_count() == n {
            assert!(t.elapsed() < PATIENCE, "no digest from the reporter");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

impl Drop for EventTap {
    fn drop(&mut self) {
        self.task.abort();
    }
}
