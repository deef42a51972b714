//! Prompts as token ids, with the map from the engine's block hashes to ours for every block
//! sent, so a test can say what a router's index should hold for each engine: exactly the
//! engine's cache, translated.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

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
