//! The simulated engine: the prefix cache keyed by engine block hashes, the running and
//! waiting counts, the prefix-cache counters, and the KV events of every step.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::Notify;
use xxhash_rust::xxh3::xxh3_64_with_seed;

use cache_router_core::kv_events::{BlockRemoved, BlockStored, EngineHash, KvEvent, KvEventBatch};
use cache_router_core::protocol::{BlockHash, Body};
use cache_router_core::sim::kv_cache::KvCache;
use cache_router_core::sim::timing::TimingModel;

/// Seed of the engine's block hashes; differs from the router's so that a reporter must
/// translate engine hashes into ours.
pub const ENGINE_HASH_SEED: u64 = 0x6d6f_636b_766c_6c6d; // "mockvllm"

/// The engine's chained hash of every full block of `tokens`: block `i` hashes
/// `hash(i - 1)` (little-endian, 0 for the first block) followed by its token ids.
pub fn engine_block_hashes(tokens: &[u32], block_size: usize) -> Vec<u64> {
    let mut out = Vec::with_capacity(tokens.len() / block_size.max(1));
    let mut parent = 0u64;
    let mut buf = Vec::with_capacity(8 + 4 * block_size);
    for block in tokens.chunks_exact(block_size.max(1)) {
        buf.clear();
        buf.extend_from_slice(&parent.to_le_bytes());
        for t in block {
            buf.extend_from_slice(&t.to_le_bytes());
        }
        parent = xxh3_64_with_seed(&buf, ENGINE_HASH_SEED);
        out.push(parent);
    }
    out
}

/// Counters and gauges for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EngineStats {
    pub running: usize,
    pub waiting: usize,
    /// Cached blocks / capacity (0..1).
    pub usage: f64,
    pub prefix_cache_hits_tokens: u64,
    pub prefix_cache_queries_tokens: u64,
    pub num_blocks: usize,
    pub block_size: usize,
}

#[derive(Debug)]
struct State {
    cache: KvCache,
    running: usize,
    waiting: usize,
    hits_tokens: u64,
    queries_tokens: u64,
}

/// One simulated vLLM engine.
#[derive(Debug)]
pub struct MockEngine {
    state: Mutex<State>,
    released: Notify,
    /// Prefills run one at a time, as in the simulator: prefill is compute-bound, so a GPU
    /// serves concurrent prompts' prefills one after another, and queued prefill is what makes
    /// uncached prompts slow for everyone behind them.
    prefill_slot: tokio::sync::Mutex<()>,
    block_size: usize,
    timing: TimingModel,
    speedup: f64,
    events: Option<UnboundedSender<KvEventBatch>>,
}

/// A request's hold on the cache: pinned blocks and a running slot, released on drop.
#[derive(Debug)]
pub struct Lease {
    engine: Arc<MockEngine>,
    hashes: Vec<BlockHash>,
    /// Prompt tokens served from the cache (vLLM's `cached_tokens`).
    pub cached_tokens: usize,
    pub prompt_tokens: usize,
}

impl Drop for Lease {
    fn drop(&mut self) {
        {
            let mut s = self.engine.lock();
            s.cache.release(&self.hashes);
            s.running = s.running.saturating_sub(1);
        }
        self.engine.released.notify_waiters();
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn removed_events(blocks: &[BlockHash], out: &mut Vec<KvEvent>) {
    // vLLM emits one hash per BlockRemoved.
    out.extend(blocks.iter().map(|h| {
        KvEvent::BlockRemoved(BlockRemoved {
            block_hashes: vec![EngineHash::Int(h.0)],
            medium: Some("GPU".into()),
            group_idx: Some(0),
        })
    }));
}

impl MockEngine {
    pub fn new(
        num_blocks: usize,
        block_size: usize,
        timing: TimingModel,
        speedup: f64,
        events: Option<UnboundedSender<KvEventBatch>>,
    ) -> Arc<Self> {
        Arc::new(MockEngine {
            state: Mutex::new(State {
                cache: KvCache::new(num_blocks),
                running: 0,
                waiting: 0,
                hits_tokens: 0,
                queries_tokens: 0,
            }),
            released: Notify::new(),
            prefill_slot: tokio::sync::Mutex::new(()),
            block_size: block_size.max(1),
            timing,
            speedup: if speedup > 0.0 { speedup } else { 1.0 },
            events,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-updated in a way that
        // matters for a mock; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn capacity(&self) -> usize {
        self.lock().cache.capacity()
    }

    /// The engine hashes of every cached block (pinned or not), sorted.
    pub fn cached_hashes(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.lock().cache.blocks().map(|h| h.0).collect();
        v.sort_unstable();
        v
    }

    pub fn stats(&self) -> EngineStats {
        let s = self.lock();
        let cap = s.cache.capacity();
        EngineStats {
            running: s.running,
            waiting: s.waiting,
            usage: if cap == 0 {
                0.0
            } else {
                s.cache.len() as f64 / cap as f64
            },
            prefix_cache_hits_tokens: s.hits_tokens,
            prefix_cache_queries_tokens: s.queries_tokens,
            num_blocks: cap,
            block_size: self.block_size,
        }
    }

    /// Whether a prompt of `prompt_len` tokens can ever fit the cache.
    pub fn fits(&self, prompt_len: usize) -> bool {
        prompt_len / self.block_size <= self.capacity()
    }

    fn emit(&self, events: Vec<KvEvent>) {
        if events.is_empty() {
            return;
        }
        if let Some(tx) = &self.events {
            let _ = tx.send(KvEventBatch {
                ts: unix_now(),
                events,
                data_parallel_rank: Some(0),
            });
        }
    }

    /// Admits a prompt, waiting (counted in `waiting`) until the cache has room. Emits the
    /// step's evictions and the prompt's newly stored blocks as one batch. The caller must
    /// have checked [`fits`](Self::fits), else this waits forever.
    pub async fn admit(self: &Arc<Self>, tokens: &[u32]) -> Lease {
        let bs = self.block_size;
        let engine_hashes = engine_block_hashes(tokens, bs);
        let hashes: Vec<BlockHash> = engine_hashes.iter().map(|&h| BlockHash(h)).collect();
        let mut queued = false;
        loop {
            let notified = self.released.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut s = self.lock();
                let mut bodies = Vec::new();
                if let Some(adm) = s.cache.admit(&hashes, &mut bodies) {
                    if queued {
                        s.waiting = s.waiting.saturating_sub(1);
                    }
                    s.running += 1;
                    let mut cached = adm.hit_blocks * bs;
                    if cached >= tokens.len() && cached > 0 {
                        // An engine always computes the last prompt token.
                        cached -= bs;
                    }
                    s.hits_tokens += cached as u64;
                    s.queries_tokens += tokens.len() as u64;
                    let mut events = Vec::new();
                    for b in &bodies {
                        if let Body::Removed { blocks } = b {
                            removed_events(blocks, &mut events);
                        }
                    }
                    if let Some(Body::Stored { blocks, parent }) =
                        KvCache::stored_event(&hashes, &adm)
                    {
                        let first = adm.hit_blocks;
                        let last = first + blocks.len();
                        events.push(KvEvent::BlockStored(BlockStored {
                            block_hashes: blocks.iter().map(|h| EngineHash::Int(h.0)).collect(),
                            parent_block_hash: parent.map(|p| EngineHash::Int(p.0)),
                            token_ids: tokens[first * bs..last * bs].to_vec(),
                            block_size: bs as u32,
                            lora_id: None,
                            medium: Some("GPU".into()),
                            lora_name: None,
                            // As vLLM >= 0.2x writes them for a plain full-attention model.
                            extra_keys: Some(vec![false; last - first]),
                            group_idx: Some(0),
                            kv_cache_spec_kind: Some("full_attention".into()),
                            kv_cache_spec_sliding_window: None,
                        }));
                    }
                    // Emitted under the lock so that batches leave in step order.
                    self.emit(events);
                    drop(s);
                    return Lease {
                        engine: Arc::clone(self),
                        hashes,
                        cached_tokens: cached,
                        prompt_tokens: tokens.len(),
                    };
                }
                if !queued {
                    queued = true;
                    s.waiting += 1;
                }
            }
            notified.await;
        }
    }

    /// Drops every unpinned block (vLLM's `/reset_prefix_cache`): `AllBlocksCleared` when
    /// nothing is pinned, else one `BlockRemoved` per dropped block.
    pub fn reset_prefix_cache(&self) {
        let s = &mut *self.lock();
        let mut events = Vec::new();
        match s.cache.clear_unpinned() {
            Body::Removed { blocks } => removed_events(&blocks, &mut events),
            _ => events.push(KvEvent::AllBlocksCleared),
        }
        self.emit(events);
    }

    fn scaled(&self, ms: f64) -> Duration {
        Duration::try_from_secs_f64(ms / 1000.0 / self.speedup).unwrap_or(Duration::ZERO)
    }

    /// Waits for the engine's prefill slot (FIFO), then sleeps for the lease's prefill.
    pub async fn prefill(&self, lease: &Lease) {
        let d = self.scaled(
            self.timing
                .prefill_ms(lease.prompt_tokens as u64, lease.cached_tokens as u64),
        );
        if !d.is_zero() {
            let _slot = self.prefill_slot.lock().await;
            tokio::time::sleep(d).await;
        }
    }

    /// Sleeps for one decode step at the current batch size.
    pub async fn decode_step(&self) {
        let running = self.lock().running;
        let d = self.scaled(self.timing.decode_ms(1, running));
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
    }
}
