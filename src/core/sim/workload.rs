//! Workloads for the simulator: a Mooncake-format trace, or a built-in generator.
//!
//! A workload is a list of requests with arrival times, prompt/output lengths and the prompt's
//! block hashes (already chained with [`crate::hashing::chain_ids`], so identical prefixes have
//! identical hashes exactly as live traffic would).

use std::io::BufRead;
use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;

use crate::hashing::{chain_ids, namespace_seed};
use crate::protocol::BlockHash;

/// One simulated request.
#[derive(Clone, Debug, PartialEq)]
pub struct SimRequest {
    pub arrival_ms: f64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Prompt block hashes (the last one may cover a partial block, as trace ids do).
    pub blocks: Vec<BlockHash>,
}

/// A named list of requests sorted by arrival.
#[derive(Clone, Debug)]
pub struct Workload {
    pub name: String,
    /// Tokens per block.
    pub block_size: u64,
    pub requests: Vec<SimRequest>,
}

/// Why a workload could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("cannot read trace {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("trace {path}, line {line}: {msg}")]
    Parse {
        path: String,
        line: usize,
        msg: String,
    },
    #[error("trace {0} has no requests")]
    Empty(String),
}

#[derive(Deserialize)]
struct MooncakeLine {
    timestamp: f64,
    input_length: u64,
    output_length: u64,
    hash_ids: Vec<u64>,
}

/// Loads a Mooncake trace: JSON lines `{timestamp, input_length, output_length, hash_ids}`,
/// timestamps in ms, each hash id one block of `block_size` tokens (512 in Mooncake's release).
/// `time_scale` > 1 compresses time (arrivals come that many times faster).
pub fn load_mooncake(
    path: &Path,
    block_size: u64,
    time_scale: f64,
) -> Result<Workload, WorkloadError> {
    let p = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| WorkloadError::Io {
        path: p.clone(),
        source,
    })?;
    let seed = namespace_seed("mooncake-trace", None);
    let mut requests = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| WorkloadError::Io {
            path: p.clone(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let rec: MooncakeLine = serde_json::from_str(&line).map_err(|e| WorkloadError::Parse {
            path: p.clone(),
            line: i + 1,
            msg: e.to_string(),
        })?;
        let mut blocks = Vec::with_capacity(rec.hash_ids.len());
        chain_ids(seed, &rec.hash_ids, &mut blocks);
        requests.push(SimRequest {
            arrival_ms: rec.timestamp / time_scale,
            input_tokens: rec.input_length,
            output_tokens: rec.output_length.max(1),
            blocks,
        });
    }
    if requests.is_empty() {
        return Err(WorkloadError::Empty(p));
    }
    requests.sort_by(|a, b| a.arrival_ms.total_cmp(&b.arrival_ms));
    Ok(Workload {
        name: format!(
            "trace:{}",
            path.file_name()
                .map_or(p.clone(), |f| f.to_string_lossy().into())
        ),
        block_size,
        requests,
    })
}

/// Shape of the built-in generators.
#[derive(Clone, Debug)]
pub struct GeneratorConfig {
    /// Seed of the generator.
    pub seed: u64,
    /// Tokens per block for generated workloads.
    pub block_size: u64,
    /// Requests per second (Poisson arrivals).
    pub rate: f64,
    /// chat: number of sessions.
    pub sessions: usize,
    /// chat: turns per session.
    pub turns: usize,
    /// chat: shared system prompt length in tokens.
    pub system_tokens: u64,
    /// chat: user message length in tokens; rag: question length.
    pub user_tokens: u64,
    /// Output length in tokens (chat: the assistant reply, which joins the history).
    pub output_tokens: u64,
    /// rag: documents in the pool.
    pub documents: usize,
    /// rag: document length in tokens.
    pub document_tokens: u64,
    /// rag: documents per request (the first is drawn by Zipf popularity).
    pub docs_per_request: usize,
    /// rag: requests in total.
    pub rag_requests: usize,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig {
            seed: 42,
            block_size: 16,
            rate: 20.0,
            sessions: 200,
            turns: 8,
            system_tokens: 512,
            user_tokens: 128,
            output_tokens: 128,
            documents: 200,
            document_tokens: 1024,
            docs_per_request: 2,
            rag_requests: 2000,
        }
    }
}

/// Content ids: a block of content is named by (source, position) so equal content has an
/// equal id; chaining them then gives prefix hashes.
fn content_id(source: u64, pos: u64) -> u64 {
    (source << 24) | pos
}

fn exp_sample(rng: &mut StdRng, mean: f64) -> f64 {
    -mean * (1.0 - rng.random::<f64>()).ln()
}

/// Appends the content ids of `tokens` tokens of `source` to `ids` (whole blocks only; a
/// partial tail is folded into the next segment, as a real tokenizer's stream would be).
fn push_segment(ids: &mut Vec<u64>, carry: &mut u64, source: u64, tokens: u64, block: u64) {
    let total = *carry + tokens;
    let start = ids.len() as u64;
    for k in 0..total / block {
        ids.push(content_id(source, start + k));
    }
    *carry = total % block;
}

/// Multi-turn chat: sessions share one system prompt; each turn's prompt is the whole history
/// so far plus a new user message, and the reply joins the history.
pub fn generate_chat(cfg: &GeneratorConfig) -> Workload {
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let seed = namespace_seed("generated-chat", None);
    let b = cfg.block_size;
    let mut requests = Vec::new();
    // Sessions start as a Poisson process; each turn follows the previous after a think time
    // scaled so the overall rate is about `cfg.rate`.
    let session_rate = cfg.rate / cfg.turns.max(1) as f64;
    let mut t = 0.0;
    for s in 0..cfg.sessions as u64 {
        t += exp_sample(&mut rng, 1000.0 / session_rate);
        let mut turn_t = t;
        let mut ids: Vec<u64> = Vec::new();
        let mut carry = 0;
        push_segment(&mut ids, &mut carry, 0, cfg.system_tokens, b);
        let mut tokens = cfg.system_tokens;
        for turn in 0..cfg.turns as u64 {
            let user = (cfg.user_tokens as f64 * (0.5 + rng.random::<f64>())) as u64;
            push_segment(&mut ids, &mut carry, 1 + s * 1000 + turn * 2, user, b);
            tokens += user;
            let mut blocks = Vec::new();
            chain_ids(seed, &ids, &mut blocks);
            requests.push(SimRequest {
                arrival_ms: turn_t,
                input_tokens: tokens,
                output_tokens: cfg.output_tokens,
                blocks,
            });
            push_segment(
                &mut ids,
                &mut carry,
                2 + s * 1000 + turn * 2,
                cfg.output_tokens,
                b,
            );
            tokens += cfg.output_tokens;
            turn_t += exp_sample(&mut rng, 5_000.0) + 2_000.0;
        }
    }
    requests.sort_by(|a, b| a.arrival_ms.total_cmp(&b.arrival_ms));
    Workload {
        name: "chat".into(),
        block_size: b,
        requests,
    }
}

/// RAG: a pool of documents with Zipf-like popularity; each prompt is a shared system prompt,
/// `docs_per_request` documents, then a unique question.
pub fn generate_rag(cfg: &GeneratorConfig) -> Workload {
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ 0x5241_4700);
    let seed = namespace_seed("generated-rag", None);
    let b = cfg.block_size;
    // Zipf(1) weights over documents.
    let weights: Vec<f64> = (1..=cfg.documents.max(1)).map(|k| 1.0 / k as f64).collect();
    let total: f64 = weights.iter().sum();
    let pick = |rng: &mut StdRng| {
        let mut x = rng.random::<f64>() * total;
        for (i, w) in weights.iter().enumerate() {
            x -= w;
            if x <= 0.0 {
                return i as u64;
            }
        }
        weights.len() as u64 - 1
    };
    let mut requests = Vec::with_capacity(cfg.rag_requests);
    let mut t = 0.0;
    for q in 0..cfg.rag_requests as u64 {
        t += exp_sample(&mut rng, 1000.0 / cfg.rate);
        let mut ids = Vec::new();
        let mut carry = 0;
        push_segment(&mut ids, &mut carry, 0, cfg.system_tokens, b);
        let mut tokens = cfg.system_tokens;
        for _ in 0..cfg.docs_per_request {
            let d = pick(&mut rng);
            // A document's id depends on what precedes it only through chaining.
            push_segment(&mut ids, &mut carry, 1_000_000 + d, cfg.document_tokens, b);
            tokens += cfg.document_tokens;
        }
        push_segment(&mut ids, &mut carry, 2_000_000 + q, cfg.user_tokens, b);
        tokens += cfg.user_tokens;
        let mut blocks = Vec::new();
        chain_ids(seed, &ids, &mut blocks);
        requests.push(SimRequest {
            arrival_ms: t,
            input_tokens: tokens,
            output_tokens: cfg.output_tokens,
            blocks,
        });
    }
    Workload {
        name: "rag".into(),
        block_size: b,
        requests,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mooncake_trace_loads_and_chains() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/mooncake_trace.jsonl");
        let w = load_mooncake(&path, 512, 1.0).unwrap();
        assert_eq!(w.requests.len(), 3993);
        let r0 = &w.requests[0];
        assert_eq!(r0.input_tokens, 40160);
        assert_eq!(r0.blocks.len(), 79);
        // Time compression divides arrivals.
        let fast = load_mooncake(&path, 512, 10.0).unwrap();
        let last = w.requests.last().unwrap().arrival_ms;
        assert!((fast.requests.last().unwrap().arrival_ms - last / 10.0).abs() < 1e-6);
    }

    #[test]
    fn malformed_trace_is_a_typed_error() {
        let dir = std::env::temp_dir().join(format!("cr-trace-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("bad.jsonl");
        std::fs::write(&p, "{\"timestamp\": 1}\n").unwrap();
        let err = load_mooncake(&p, 512, 1.0).unwrap_err();
        assert!(matches!(err, WorkloadError::Parse { line: 1, .. }), "{err}");
        assert!(matches!(
            load_mooncake(&dir.join("missing"), 512, 1.0),
            Err(WorkloadError::Io { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn chat_turns_extend_their_history() {
        let cfg = GeneratorConfig {
            sessions: 3,
            turns: 4,
            ..GeneratorConfig::default()
        };
        let w = generate_chat(&cfg);
        assert_eq!(w.requests.len(), 12);
        // Some pair of requests must be a strict prefix extension (a later turn).
        let ext = w.requests.iter().any(|a| {
            w.requests
                .iter()
                .any(|b| b.blocks.len() > a.blocks.len() && b.blocks.starts_with(&a.blocks))
        });
        assert!(ext);
        // All sessions share the system prompt's blocks.
        let sys = (cfg.system_tokens / cfg.block_size) as usize;
        let first = &w.requests[0].blocks[..sys];
        assert!(w.requests.iter().all(|r| &r.blocks[..sys] == first));
    }

    #[test]
    fn rag_shares_popular_documents() {
        let cfg = GeneratorConfig {
            rag_requests: 200,
            ..GeneratorConfig::default()
        };
        let w = generate_rag(&cfg);
        assert_eq!(w.requests.len(), 200);
        let prefix = ((cfg.system_tokens + cfg.document_tokens) / cfg.block_size) as usize;
        let mut firsts: Vec<_> = w.requests.iter().map(|r| r.blocks[prefix - 1]).collect();
        firsts.sort_unstable();
        firsts.dedup();
        assert!(
            firsts.len() < 150,
            "popular documents repeat: {} distinct",
            firsts.len()
        );
    }
}
