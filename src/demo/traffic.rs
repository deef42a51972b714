//! The demo's traffic generator: replays a [`Workload`] through the router's OpenAI endpoint
//! with open-loop arrivals, streaming, and measures what a client sees.
//!
//! Workload requests are block-hash lists (the simulator's form), so each is turned into token
//! ids whose blocks have the same sharing structure: block `i` of a prompt is `block_size`
//! tokens drawn from the (chained) hash of block `i`, so two prompts share a block's tokens
//! exactly when they share the prefix up to it, as in the simulator. Prompts go out as
//! `/v1/completions` with token-id prompts (OpenAI's array form), which vLLM and the mock
//! accept unchanged, so the router and the engine hash the very tokens the simulator modelled.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::proxy::WORKER_HEADER;
use cache_router_core::sim::workload::{SimRequest, Workload};
use cache_router_core::sim::SimResult;

/// Token ids stay within this range so any tokenizer with a 100k+ vocabulary could detokenize.
const TOKEN_BASE: u64 = 1_000;
const TOKEN_SPAN: u64 = 99_000;

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Appends the prompt's token ids for `req` (request number `n`, which makes the partial tail
/// unique) to `out`.
pub(super) fn prompt_tokens(req: &SimRequest, n: u64, block_size: u64, out: &mut Vec<u32>) {
    let total = req.input_tokens.max(1);
    for (i, h) in req.blocks.iter().enumerate() {
        let start = i as u64 * block_size;
        if start >= total {
            break;
        }
        for j in 0..block_size.min(total - start) {
            out.push((TOKEN_BASE + splitmix(h.0 ^ splitmix(j)) % TOKEN_SPAN) as u32);
        }
    }
    let salt = splitmix(n ^ 0x7461_696c);
    let mut j = 0;
    while (out.len() as u64) < total {
        out.push((TOKEN_BASE + splitmix(salt ^ splitmix(j)) % TOKEN_SPAN) as u32);
        j += 1;
    }
}

/// The JSON body of one streamed completion request.
pub(super) fn request_body(model: &str, tokens: &[u32], max_tokens: u64) -> String {
    let mut s = String::with_capacity(tokens.len() * 7 + 128);
    let _ = write!(s, "{{\"model\":{},\"prompt\":[", Value::from(model));
    for (i, t) in tokens.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{t}");
    }
    let _ = write!(
        s,
        "],\"max_tokens\":{max_tokens},\"stream\":true,\"stream_options\":{{\"include_usage\":true}}}}"
    );
    s
}

/// What the client saw for one request.
#[derive(Clone, Debug)]
pub(super) struct Record {
    pub worker: String,
    /// Wall-clock time to the first streamed chunk.
    pub ttft: Duration,
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    /// The workload's block count for this prompt: the hit rate's denominator, as in the
    /// simulator (a chat prompt's partial tail is not a block there).
    pub blocks: u64,
}

/// The outcome of one replay.
#[derive(Debug)]
pub(super) struct Replay {
    pub records: Vec<Record>,
    pub failures: u64,
    /// The first few failure messages.
    pub errors: Vec<String>,
    pub wall: Duration,
    pub interrupted: bool,
}

/// How to replay.
#[derive(Clone, Debug)]
pub(super) struct ReplayConfig {
    pub url: String,
    pub model: String,
    pub block_size: u64,
    /// Arrivals are `arrival_ms / speedup` of wall time (the engines run `speedup` times faster
    /// than the modelled GPU).
    pub speedup: f64,
    /// Requests in flight at most (the rest wait: a bounded generator).
    pub max_inflight: usize,
    /// Per-request timeout.
    pub timeout: Duration,
    pub label: String,
}

#[derive(Default)]
struct Progress {
    done: AtomicU64,
    failed: AtomicU64,
    prompt_blocks: AtomicU64,
    cached_blocks: AtomicU64,
}

/// Sends every request of `workload` at its (compressed) arrival time, prints progress every
/// two seconds, and returns when all have finished or `cancel` fires.
pub(super) async fn replay(
    client: &reqwest::Client,
    cfg: &ReplayConfig,
    workload: &Workload,
    cancel: &CancellationToken,
) -> Replay {
    let total = workload.requests.len();
    let records = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let progress = Arc::new(Progress::default());
    let permits = Arc::new(Semaphore::new(cfg.max_inflight.max(1)));
    let start = Instant::now();
    let stop_progress = CancellationToken::new();
    let printer = tokio::spawn(print_progress(
        cfg.label.clone(),
        total,
        progress.clone(),
        start,
        stop_progress.clone(),
    ));
    let mut tasks = tokio::task::JoinSet::new();
    let mut interrupted = false;
    // Arrivals are relative to the first one (a trace may carry absolute timestamps).
    let t0 = workload.requests.first().map_or(0.0, |r| r.arrival_ms);
    for (n, req) in workload.requests.iter().enumerate() {
        let offset = (req.arrival_ms - t0).max(0.0) / 1000.0 / cfg.speedup;
        let at = start + Duration::try_from_secs_f64(offset).unwrap_or(Duration::ZERO);
        tokio::select! {
            _ = tokio::time::sleep_until(at.into()) => {},
            _ = cancel.cancelled() => { interrupted = true; break; }
        }
        let mut tokens = Vec::with_capacity(req.input_tokens as usize);
        prompt_tokens(req, n as u64, cfg.block_size, &mut tokens);
        let body = request_body(&cfg.model, &tokens, req.output_tokens);
        let blocks = req.blocks.len() as u64;
        let (client, cfg2, permits) = (client.clone(), cfg.clone(), permits.clone());
        let (records, errors, progress) = (records.clone(), errors.clone(), progress.clone());
        tasks.spawn(async move {
            // Open loop: the request arrived at `at`; waiting for a slot counts in its TTFT,
            // as queueing does in the simulator.
            let Ok(permit) = permits.acquire_owned().await else {
                return;
            };
            let result = one(&client, &cfg2, body, at).await;
            drop(permit);
            match result {
                Ok(mut r) => {
                    r.blocks = blocks;
                    let bs = cfg2.block_size;
                    progress.prompt_blocks.fetch_add(blocks, Ordering::Relaxed);
                    progress
                        .cached_blocks
                        .fetch_add((r.cached_tokens / bs).min(blocks), Ordering::Relaxed);
                    progress.done.fetch_add(1, Ordering::Relaxed);
                    records.lock().unwrap_or_else(|e| e.into_inner()).push(r);
                }
                Err(e) => {
                    progress.failed.fetch_add(1, Ordering::Relaxed);
                    let mut errs = errors.lock().unwrap_or_else(|e| e.into_inner());
                    if errs.len() < 5 {
                        errs.push(e);
                    }
                }
            }
        });
        // Reap finished tasks as we go so the set stays small.
        while tasks.try_join_next().is_some() {}
    }
    tokio::select! {
        _ = async { while tasks.join_next().await.is_some() {} } => {},
        _ = cancel.cancelled() => { interrupted = true; tasks.abort_all(); }
    }
    let wall = start.elapsed();
    stop_progress.cancel();
    let _ = printer.await;
    let records = std::mem::take(&mut *records.lock().unwrap_or_else(|e| e.into_inner()));
    let errors = std::mem::take(&mut *errors.lock().unwrap_or_else(|e| e.into_inner()));
    Replay {
        records,
        failures: progress.failed.load(Ordering::Relaxed),
        errors,
        wall,
        interrupted,
    }
}

async fn print_progress(
    label: String,
    total: usize,
    p: Arc<Progress>,
    start: Instant,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {},
            _ = stop.cancelled() => return,
        }
        let done = p.done.load(Ordering::Relaxed);
        let pb = p.prompt_blocks.load(Ordering::Relaxed).max(1);
        println!(
            "  [{label}] {:>5.1}s  {done:>5}/{total} done  {:>3} failed  block hit rate so far {:>5.1}%",
            start.elapsed().as_secs_f64(),
            p.failed.load(Ordering::Relaxed),
            100.0 * p.cached_blocks.load(Ordering::Relaxed) as f64 / pb as f64,
        );
    }
}

/// Bytes of a stream's tail kept to find the usage chunk (it comes last, before `[DONE]`).
const TAIL_BYTES: usize = 16 << 10;

/// One streamed request: time from its arrival to the first chunk, the serving worker, and
/// the engine's usage.
async fn one(
    client: &reqwest::Client,
    cfg: &ReplayConfig,
    body: String,
    arrived: Instant,
) -> Result<Record, String> {
    let sent = arrived;
    let fut = async {
        let mut resp = client
            .post(format!("{}/v1/completions", cfg.url))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| format!("send: {e}"))?;
        let status = resp.status();
        let worker = resp
            .headers()
            .get(WORKER_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?")
            .to_string();
        let mut ttft = None;
        let mut text = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| format!("body: {e}"))? {
            ttft.get_or_insert_with(|| sent.elapsed());
            text.extend_from_slice(&chunk);
            if text.len() > 2 * TAIL_BYTES {
                text.drain(..text.len() - TAIL_BYTES);
            }
        }
        if !status.is_success() {
            return Err(format!("{status}: {}", String::from_utf8_lossy(&text)));
        }
        let (prompt_tokens, cached_tokens) = usage(&text).ok_or("no usage in the stream")?;
        Ok(Record {
            worker,
            ttft: ttft.unwrap_or_else(|| sent.elapsed()),
            prompt_tokens,
            cached_tokens,
            blocks: prompt_tokens.div_ceil(cfg.block_size),
        })
    };
    tokio::time::timeout(cfg.timeout, fut)
        .await
        .map_err(|_| format!("timed out after {:?}", cfg.timeout))?
}

/// `(prompt_tokens, cached_tokens)` from the usage chunk of an SSE stream.
fn usage(stream: &[u8]) -> Option<(u64, u64)> {
    let text = std::str::from_utf8(stream).ok()?;
    text.lines()
        .rev()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| d.contains("\"usage\""))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            let u = v.get("usage")?;
            let prompt = u.get("prompt_tokens")?.as_u64()?;
            let cached = u
                .pointer("/prompt_tokens_details/cached_tokens")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            Some((prompt, cached))
        })
        .next()
}

/// Summarises a replay in the simulator's terms, so the same table and plots serve both.
/// Times are model time: wall time × `speedup`.
pub(super) fn summarize(
    policy: &str,
    workload: &str,
    workers: &[String],
    capacity_blocks: usize,
    block_size: u64,
    speedup: f64,
    r: &Replay,
) -> SimResult {
    let mut ttft: Vec<f64> = r
        .records
        .iter()
        .map(|x| x.ttft.as_secs_f64() * 1000.0 * speedup)
        .collect();
    ttft.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        if ttft.is_empty() {
            0.0
        } else {
            ttft[((ttft.len() - 1) as f64 * p).round() as usize]
        }
    };
    let (mut prompt_blocks, mut cached_blocks) = (0u64, 0u64);
    let mut prefill: HashMap<&str, u64> = workers.iter().map(|w| (w.as_str(), 0)).collect();
    for x in &r.records {
        prompt_blocks += x.blocks;
        cached_blocks += (x.cached_tokens / block_size).min(x.blocks);
        *prefill.entry(x.worker.as_str()).or_default() +=
            x.prompt_tokens - x.cached_tokens.min(x.prompt_tokens);
    }
    let per_worker: Vec<u64> = workers.iter().map(|w| prefill[w.as_str()]).collect();
    let max = per_worker.iter().copied().max().unwrap_or(0) as f64;
    let mean = per_worker.iter().sum::<u64>() as f64 / per_worker.len().max(1) as f64;
    SimResult {
        policy: policy.to_string(),
        workload: workload.to_string(),
        workers: workers.len(),
        capacity_blocks,
        requests: r.records.len(),
        hit_rate: cached_blocks as f64 / prompt_blocks.max(1) as f64,
        ttft_mean_ms: ttft.iter().sum::<f64>() / ttft.len().max(1) as f64,
        ttft_p50_ms: pct(0.50),
        ttft_p99_ms: pct(0.99),
        throughput_rps: r.records.len() as f64 / (r.wall.as_secs_f64() * speedup).max(1e-9),
        imbalance: if mean > 0.0 { max / mean } else { 1.0 },
        prefill_tokens_per_worker: per_worker,
        evictions: 0,
        index_entries: 0,
        index_mismatches: 0,
        ttft_cdf_ms: ttft,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cache_router_core::protocol::BlockHash;

    fn req(blocks: &[u64], tokens: u64) -> SimRequest {
        SimRequest {
            arrival_ms: 0.0,
            input_tokens: tokens,
            output_tokens: 1,
            blocks: blocks.iter().map(|&b| BlockHash(b)).collect(),
        }
    }

    #[test]
    fn shared_block_hashes_give_shared_tokens_and_tails_are_unique() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        prompt_tokens(&req(&[1, 2], 40), 0, 16, &mut a);
        prompt_tokens(&req(&[1, 3], 40), 1, 16, &mut b);
        assert_eq!((a.len(), b.len()), (40, 40));
        assert_eq!(a[..16], b[..16], "block 0 is shared");
        assert_ne!(a[16..32], b[16..32], "block 1 differs");
        assert_ne!(a[32..], b[32..], "partial tails are per request");
        // A trace's partial last block is cut to the input length.
        let mut c = Vec::new();
        prompt_tokens(&req(&[1, 2], 20), 2, 16, &mut c);
        assert_eq!(c[..], a[..20]);
    }

    #[test]
    fn body_is_valid_json_and_usage_is_read_from_the_stream() {
        let body = request_body("m", &[5, 6, 7], 3);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["prompt"], serde_json::json!([5, 6, 7]));
        assert_eq!(v["stream_options"]["include_usage"], true);
        let stream = b"data: {\"choices\":[{\"text\":\"x\"}]}\n\n\
            data: {\"choices\":[],\"usage\":{\"prompt_tokens\":40,\"prompt_tokens_details\":{\"cached_tokens\":32}}}\n\n\
            data: [DONE]\n\n";
        assert_eq!(usage(stream), Some((40, 32)));
        assert_eq!(usage(b"data: [DONE]\n\n"), None);
    }

    #[test]
    fn summary_counts_blocks_and_imbalance_per_worker() {
        let rec = |w: &str, p: u64, c| Record {
            worker: w.into(),
            ttft: Duration::from_millis(10),
            prompt_tokens: p,
            cached_tokens: c,
            blocks: p.div_ceil(16),
        };
        let r = Replay {
            records: vec![rec("a", 64, 32), rec("a", 32, 0), rec("b", 40, 32)],
            failures: 0,
            errors: vec![],
            wall: Duration::from_secs(1),
            interrupted: false,
        };
        let ws = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let s = summarize("p", "w", &ws, 10, 16, 2.0, &r);
        // blocks: 4 + 2 + 3 = 9; cached 2 + 0 + 2 = 4.
        assert!((s.hit_rate - 4.0 / 9.0).abs() < 1e-9);
        assert_eq!(s.prefill_tokens_per_worker, vec![64, 8, 0]);
        assert!((s.imbalance - 64.0 / 24.0).abs() < 1e-9);
        assert!(
            (s.ttft_p50_ms - 20.0).abs() < 1e-9,
            "model time = wall x speedup"
        );
        assert!((s.throughput_rps - 1.5).abs() < 1e-9);
    }
}
