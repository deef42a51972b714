//! The scale bench's requests: what a burst sends (warm turns, new chats, cold completions, or
//! token-id prompts) and what each answer must be.

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use serde_json::json;

use cache_router::tokenize::{ChatMessage, ModelTokenizer};

use super::{text, Corpus, WorkerContent, MODEL};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Warm,
    NewChat,
    Cold,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Warm => "warm turn",
            Kind::NewChat => "new chat on the system prompt",
            Kind::Cold => "cold completion",
        }
    }
}

/// A correct decision: to `Holder` with at least `blocks` overlap; at least this overlap;
/// or no overlap at all.
#[derive(Debug)]
pub(crate) enum Expect {
    Holder { worker: String, blocks: u32 },
    AtLeast(u32),
    Nothing,
}

#[derive(Debug)]
pub(crate) struct Req {
    pub(crate) kind: Kind,
    pub(crate) body: Bytes,
    pub(crate) expect: Expect,
}

/// The parts of `/route`'s answer read here (the candidate list is skipped).
#[derive(Debug, Deserialize)]
pub(crate) struct Reply {
    pub(crate) tokens: u64,
    pub(crate) blocks: u64,
    pub(crate) chosen: Option<Chosen>,
    pub(crate) timings_us: Timings,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Chosen {
    pub(crate) worker: String,
    pub(crate) overlap: u32,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Timings {
    /// Waiting for a tokenizer slot (absent in routers before the tokenize gate).
    #[serde(default)]
    pub(crate) queue: u64,
    pub(crate) tokenize: u64,
    pub(crate) lookup: u64,
    pub(crate) score: u64,
}

/// `n` requests, shuffled: half the active conversations' next turns (in the warm-up burst,
/// `seed` 0, their previous turn: the history itself), a quarter new chats on the system
/// prompt, a quarter cold completions.
pub(crate) fn requests(
    corpus: &Corpus,
    fleet: &[WorkerContent],
    active: &[(usize, usize)],
    n: usize,
    shared: u32,
    seed: u64,
) -> Vec<Req> {
    let mut rng = StdRng::seed_from_u64(7_000 + seed);
    let body = |v: serde_json::Value| Bytes::from(v.to_string());
    let mut out = Vec::with_capacity(n);
    for &(w, h) in active.iter().cycle().take(n / 2) {
        let hist = &fleet[w].histories[h];
        let mut msgs = corpus.history(&hist.msgs);
        if seed > 0 {
            let (a, u) = (rng.random_range(40..80), rng.random_range(40..80));
            msgs.push(ChatMessage::text("assistant", text(&mut rng, a)));
            msgs.push(ChatMessage::text("user", text(&mut rng, u)));
        }
        let (worker, blocks) = (fleet[w].id.0.clone(), hist.hashes.len() as u32);
        let body = body(json!({"model": MODEL, "messages": msgs, "max_tokens": 64}));
        let expect = Expect::Holder { worker, blocks };
        out.push(Req {
            kind: Kind::Warm,
            body,
            expect,
        });
    }
    while out.len() < n - n / 4 {
        let words = rng.random_range(800..1300);
        let system = ChatMessage::text("system", corpus.system.clone());
        let msgs = [system, ChatMessage::text("user", text(&mut rng, words))];
        let body = body(json!({"model": MODEL, "messages": msgs, "max_tokens": 64}));
        let expect = Expect::AtLeast(shared);
        out.push(Req {
            kind: Kind::NewChat,
            body,
            expect,
        });
    }
    while out.len() < n {
        let words = rng.random_range(900..1400);
        let prompt = text(&mut rng, words);
        let body = body(json!({"model": MODEL, "prompt": prompt, "max_tokens": 64}));
        out.push(Req {
            kind: Kind::Cold,
            body,
            expect: Expect::Nothing,
        });
    }
    out.shuffle(&mut rng);
    out
}

/// `n` requests whose prompts are token ids (OpenAI's array form), so the router does no
/// tokenizing: half the active conversations' histories, half cold prompts. This isolates
/// the routing path (parse, hash, look-up, score, answer) under the same concurrency, the
/// shape a decision-only benchmark such as the prototype's measures.
pub(crate) fn pretokenized(
    tok: &ModelTokenizer,
    corpus: &Corpus,
    fleet: &[WorkerContent],
    active: &[(usize, usize)],
    n: usize,
    seed: u64,
) -> Vec<Req> {
    let mut rng = StdRng::seed_from_u64(9_000 + seed);
    let mut out = Vec::with_capacity(n);
    for &(w, h) in active.iter().cycle().take(n / 2) {
        let hist = &fleet[w].histories[h];
        let ids = tok
            .encode_chat(&corpus.history(&hist.msgs))
            .expect("tokenize a chat");
        let (worker, blocks) = (fleet[w].id.0.clone(), hist.hashes.len() as u32);
        let body = json!({"model": MODEL, "prompt": ids, "max_tokens": 64});
        out.push(Req {
            kind: Kind::Warm,
            body: Bytes::from(body.to_string()),
            expect: Expect::Holder { worker, blocks },
        });
    }
    while out.len() < n {
        let ids: Vec<u32> = (0..1400)
            .map(|_| rng.random_range(1_000..100_000))
            .collect();
        let body = json!({"model": MODEL, "prompt": ids, "max_tokens": 64});
        out.push(Req {
            kind: Kind::Cold,
            body: Bytes::from(body.to_string()),
            expect: Expect::Nothing,
        });
    }
    out.shuffle(&mut rng);
    out
}

/// Checks one answer against what it should be.
pub(crate) fn check(req: &Req, status: reqwest::StatusCode, body: &[u8]) -> Result<Reply, String> {
    let kind = req.kind.name();
    if status != reqwest::StatusCode::OK {
        let body = String::from_utf8_lossy(body);
        return Err(format!("{kind}: {status}: {body}"));
    }
    let reply: Reply = serde_json::from_slice(body).map_err(|e| format!("{kind}: {e}"))?;
    let chosen = reply
        .chosen
        .as_ref()
        .ok_or_else(|| format!("{kind}: none chosen"))?;
    let ok = match &req.expect {
        Expect::Holder { worker, blocks } => chosen.worker == *worker && chosen.overlap >= *blocks,
        Expect::AtLeast(blocks) => chosen.overlap >= *blocks && *blocks > 0,
        Expect::Nothing => chosen.overlap == 0,
    };
    if !ok {
        let (w, o, b) = (&chosen.worker, chosen.overlap, reply.blocks);
        return Err(format!(
            "{kind}: expected {:?}, got {w} with overlap {o} of {b}",
            req.expect
        ));
    }
    Ok(reply)
}
