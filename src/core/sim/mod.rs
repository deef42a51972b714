//! The offline simulator's model (`cache-router sim` is its command line).
//!
//! A discrete-event simulation that drives the *same* [`crate::index::Index`] and
//! [`crate::policy::Policy`] code as the live router over simulated engines with vLLM's cache
//! semantics ([`kv_cache`]) and a documented timing model ([`timing`]). Each simulated engine
//! reports its cache changes as protocol bodies into the index, exactly as a live worker's
//! events would arrive, so a policy's simulated hit rate is the one it would get live (minus
//! event latency, which the live stack measures separately).
//!
//! - [`workload`]: Mooncake traces and the built-in chat / RAG generators.
//! - [`engine`]: the event loop and the router-side load accounting.
//! - [`kv_cache`] and [`timing`]: one engine's cache and clock, shared with the mock engine.
//!
//! The command line, the table and the plots live in the router crate (`cache_router::sim`).

pub mod engine;
pub mod kv_cache;
pub mod timing;
pub mod workload;

use serde::Serialize;

pub use engine::{simulate, FleetConfig};

/// One policy's outcome on one workload. JSON keys are a contract for scripts.
#[derive(Clone, Debug, Serialize)]
pub struct SimResult {
    pub policy: String,
    pub workload: String,
    pub workers: usize,
    pub capacity_blocks: usize,
    /// Requests completed.
    pub requests: usize,
    /// Prompt blocks served from cache / prompt blocks, 0..=1.
    pub hit_rate: f64,
    pub ttft_mean_ms: f64,
    pub ttft_p50_ms: f64,
    pub ttft_p99_ms: f64,
    /// Completed requests per second of simulated time.
    pub throughput_rps: f64,
    /// Max / mean prefill tokens computed per worker (1.0 is perfectly even).
    pub imbalance: f64,
    pub prefill_tokens_per_worker: Vec<u64>,
    /// Blocks evicted by the engines' caches.
    pub evictions: u64,
    /// Router index entries at the end (equals the engines' cached blocks).
    pub index_entries: usize,
    /// Blocks where the index and the engines' caches disagree at the end (expected 0).
    pub index_mismatches: usize,
    /// Sorted TTFTs (for plots); not serialized.
    #[serde(skip)]
    pub ttft_cdf_ms: Vec<f64>,
}

#[cfg(test)]
mod tests;
