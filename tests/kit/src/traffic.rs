//! Prompts as token ids, with the map from the engine's block hashes to ours for every block
//! sent, so a test can say what a router's index should hold for each engine: exactly the
//! engine's cache, translated.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use cache_router::mock::engine_block_hashes;
use cache_router_core::hashing::{block_hashes, namespace_seed};
use cache_router_core::protocol::BlockHash;

use crate::engines::{engine_cache_as_ours, Engine};
use crate::{BLOCK_SIZE as BS, MODEL};

/// A seeded source of prompts sharing a few prefixes.
#[derive(Debug)]
pub struct Traffic {
    http: reqwest::Client,
    rng: StdRng,
    prefixes: Vec<Vec<u32>>,
    /// Engine block hash → our block hash, for every full block of every prompt made.
    pub ours: HashMap<u64, BlockHash>,
}

impl Traffic {
    pub fn new(seed: u64) -> Traffic {
        let mut rng = StdRng::seed_from_u64(seed);
        let prefixes = (0..4)
            .map(|_| (0..BS * 2).map(|_| rng.random_range(100..30_000)).collect())
            .collect();
        Traffic {
            http: crate::http_client(),
            rng,
            prefixes,
            ours: HashMap::new(),
        }
    }

    /// The next prompt: one of the shared prefixes plus 1–4 blocks and a partial one.
    pub fn next_prompt(&mut self) -> Vec<u32> {
        let mut tokens = self.prefixes[self.rng.random_range(0..4)].clone();
        let extra = self.rng.random_range(1..5) * BS + self.rng.random_range(0..BS);
        tokens.extend((0..extra).map(|_| self.rng.random_range(100..30_000u32)));
        let engine_hashes = engine_block_hashes(&tokens, BS);
        let our = block_hashes(namespace_seed(MODEL, None), &tokens, BS);
        self.ours.extend(engine_hashes.into_iter().zip(our));
        tokens
    }

    /// Sends `n` completions to `base` (an engine or a router), each answered 2xx.
    pub async fn send(&mut self, base: &str, n: usize) {
        for _ in 0..n {
            let tokens = self.next_prompt();
            let resp = self
                .http
                .post(format!("{base}/v1/completions"))
                .json(&serde_json::json!({"model": MODEL, "prompt": tokens, "max_tokens": 2}))
                .send()
                .await
                .unwrap();
            assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());
        }
    }

    /// The engine's cache in our hashes, sorted.
    pub fn expected(&self, engine: &Engine) -> Vec<BlockHash> {
        engine_cache_as_ours(engine, &self.ours)
    }
}

/// What [`stream_completions`] sent so far.
#[derive(Debug, Default)]
pub struct StreamCounts {
    pub sent: AtomicU64,
    pub failed: AtomicU64,
    /// The first failures, for the report.
    pub examples: std::sync::Mutex<Vec<String>>,
}

impl StreamCounts {
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
}

/// Streams completions through `routers` in turn, about 50 a second, until `stop`, counting
/// failures (a non-2xx status, or a body that breaks off or carries an error event). Bounded by
/// `stop`, which every caller cancels.
pub async fn stream_completions(
    routers: Arc<Mutex<Vec<String>>>,
    traffic: Arc<Mutex<Traffic>>,
    counts: Arc<StreamCounts>,
    stop: CancellationToken,
) {
    let http = crate::http_client();
    let mut k = 0usize;
    while !stop.is_cancelled() {
        let url = {
            let r = routers.lock().await;
            r[k % r.len()].clone()
        };
        k += 1;
        let prompt = traffic.lock().await.next_prompt();
        let body =
            serde_json::json!({"model": MODEL, "prompt": prompt, "max_tokens": 4, "stream": true});
        let failure = match http
            .post(format!("{url}/v1/completions"))
            .json(&body)
            .timeout(crate::patience())
            .send()
            .await
        {
            Ok(r) => {
                let status = r.status();
                match r.text().await {
                    Ok(text)
                        if status.is_success()
                            && text.contains("[DONE]")
                            && !text.contains("\"error\"") =>
                    {
                        None
                    }
                    Ok(text) => Some(format!(
                        "{status}: {}",
                        text.chars().take(200).collect::<String>()
                    )),
                    Err(e) => Some(format!("{status}: body: {e}")),
                }
            }
            Err(e) => Some(format!("request: {e}")),
        };
        counts.sent.fetch_add(1, Ordering::Relaxed);
        if let Some(f) = failure {
            counts.failed.fetch_add(1, Ordering::Relaxed);
            let mut ex = counts.examples.lock().unwrap_or_else(|e| e.into_inner());
            if ex.len() < 5 {
                ex.push(f);
            }
        }
        // About 50 requests a second: enough to keep every engine's cache changing.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
