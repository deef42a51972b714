//! Unit tests over tiny tokenizers built here (a byte-level BPE trained on a few sentences),
//! so they need no fixture. The real DeepSeek tokenizer is exercised in `tests/tokenize.rs`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{
    AddedToken, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper, Tokenizer,
};

use super::split::Segment;
use super::*;

const CHATML: &str = include_str!("../../testdata/templates/chatml.jinja");
const DEEPSEEK: &str = include_str!("../../testdata/templates/deepseek.jinja");

const CORPUS: &[&str] = &[
    "You are a helpful assistant. Answer the question in one word.",
    "What is the capital of France? The capital of France is Paris.",
    "Hello world! Hello there, how are you doing today?",
    "fn main() { println!(\"hello\"); } // code with 123 numbers and 4567 more",
    "The quick brown fox jumps over the lazy dog. Don't stop; it's fine.",
    "Ünïcödé tëxt, 日本語のテキスト, and emoji 🙂 mixed in.",
];

/// A byte-level BPE (about 400 tokens) trained once on `CORPUS`, as JSON.
fn base_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        let mut tokenizer = Tokenizer::new(BPE::default());
        tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        tokenizer.with_decoder(Some(ByteLevel::default()));
        let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
            .vocab_size(400)
            .show_progress(false)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build()
            .into();
        tokenizer
            .train(&mut trainer, CORPUS.iter().copied())
            .expect("training the test tokenizer");
        tokenizer.to_string(false).unwrap()
    })
}

/// Variants of the tiny tokenizer.
#[derive(Clone, Copy, Debug)]
enum Variant {
    /// No normalizer; ChatML and BOS/EOS special tokens, and a non-special added token.
    Plain,
    /// A lowercasing normalizer and a `normalized: true` added token (cut points only at
    /// the raw-text tokens).
    Lowercase,
    /// Tokens with `lstrip`/`rstrip`, and a post-processor that adds `<s>` … `</s>`.
    StripAndTemplate,
    /// `Plain` with `encode_special_tokens` on: special tokens are encoded as text.
    EncodeSpecial,
}

fn tiny(variant: Variant) -> Tokenizer {
    let mut t = Tokenizer::from_bytes(base_json()).unwrap();
    let special = |s: &str| AddedToken::from(s, true);
    match variant {
        Variant::Plain | Variant::EncodeSpecial => {
            t.add_special_tokens(&[
                special("<s>"),
                special("</s>"),
                special("<|im_start|>"),
                special("<|im_end|>"),
                special("<｜User｜>"),
                special("<｜Assistant｜>"),
            ]);
            t.add_tokens(&[AddedToken::from("<tool>", false)]);
            t.set_encode_special_tokens(matches!(variant, Variant::EncodeSpecial));
        }
        Variant::Lowercase => {
            let n: NormalizerWrapper =
                serde_json::from_value(json!({"type": "Lowercase"})).unwrap();
            t.with_normalizer(Some(n));
            t.add_special_tokens(&[special("<|im_start|>"), special("<|im_end|>")]);
            t.add_tokens(&[AddedToken::from("<TOOL>", false).normalized(true)]);
        }
        Variant::StripAndTemplate => {
            t.add_special_tokens(&[
                special("<s>"),
                special("</s>"),
                special("<|im_start|>").rstrip(true),
                special("<|im_end|>").lstrip(true),
            ]);
            let s = t.token_to_id("<s>").unwrap();
            let e = t.token_to_id("</s>").unwrap();
            let p: PostProcessorWrapper = serde_json::from_value(json!({
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                           {"Sequence": {"id": "A", "type_id": 0}},
                           {"SpecialToken": {"id": "</s>", "type_id": 0}}],
                "pair": [{"Sequence": {"id": "A", "type_id": 0}},
                         {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {
                    "<s>": {"id": "<s>", "ids": [s], "tokens": ["<s>"]},
                    "</s>": {"id": "</s>", "ids": [e], "tokens": ["</s>"]}
                }
            }))
            .unwrap();
            t.with_post_processor(Some(p));
        }
    }
    t
}

fn config() -> TokenizerConfig {
    TokenizerConfig {
        bos_token: Some("<s>".into()),
        eos_token: Some("</s>".into()),
        ..TokenizerConfig::default()
    }
}

fn with_template(variant: Variant, template: &str) -> ModelTokenizer {
    ModelTokenizer::new(
        tiny(variant),
        config(),
        Some((template.to_owned(), "test".to_owned())),
    )
    .unwrap()
}

/// A fresh directory under the system temp dir.
fn temp_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "cache-router-tokenize-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

fn sample_chat() -> Vec<ChatMessage> {
    vec![
        ChatMessage::text("system", "You are a helpful assistant."),
        ChatMessage::text("user", "What is the capital of France?"),
        ChatMessage::text("assistant", "<think>\nEasy.\n</think>\n\nParis."),
        ChatMessage::text("user", "And of Japan? Answer in one word."),
    ]
}

// The expected strings are what Python's jinja2 renders with transformers' environment
// (ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=
// [loopcontrols]), raise_exception, and tools=None, documents=None).
#[test]
fn renders_chatml_like_transformers() {
    let t = with_template(Variant::Plain, CHATML);
    let text = t.render_chat(&sample_chat(), true).unwrap();
    assert_eq!(
        text,
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is \
         the capital of France?<|im_end|>\n<|im_start|>assistant\n<think>\nEasy.\n</think>\n\n\
         Paris.<|im_end|>\n<|im_start|>user\nAnd of Japan? Answer in one word.<|im_end|>\n\
         <|im_start|>assistant\n"
    );
    let no_prompt = t.render_chat(&sample_chat(), false).unwrap();
    assert_eq!(
        no_prompt,
        text.strip_suffix("<|im_start|>assistant\n").unwrap()
    );
}

#[test]
fn renders_deepseek_template_with_pycompat_methods() {
    let t = ModelTokenizer::new(
        tiny(Variant::Plain),
        TokenizerConfig {
            bos_token: Some("<｜begin▁of▁sentence｜>".into()),
            eos_token: Some("<｜end▁of▁sentence｜>".into()),
            ..TokenizerConfig::default()
        },
        Some((DEEPSEEK.to_owned(), "deepseek.jinja".to_owned())),
    )
    .unwrap();
    assert_eq!(
        t.render_chat(&sample_chat(), true).unwrap(),
        "<｜begin▁of▁sentence｜>You are a helpful assistant.<｜User｜>What is the capital of \
         France?<｜Assistant｜>Paris.<｜end▁of▁sentence｜><｜User｜>And of Japan? Answer in one \
         word.<｜Assistant｜>"
    );
    // Two system prompts are joined by a blank line; an unknown role is refused.
    let two = [
        ChatMessage::text("system", "A"),
        ChatMessage::text("system", "B"),
        ChatMessage::text("user", "u"),
    ];
    assert!(t
        .render_chat(&two, false)
        .unwrap()
        .ends_with("A\n\nB<｜User｜>u"));
    let err = t
        .render_chat(&[ChatMessage::text("robot", "beep")], true)
        .unwrap_err();
    assert!(
        matches!(&err, TokenizeError::TemplateRaised { message } if message == "Unsupported role: robot"),
        "{err:?}"
    );
}

#[test]
fn content_parts_are_joined_and_extra_fields_ignored() {
    let messages: Vec<ChatMessage> = serde_json::from_value(json!([
        {"role": "system", "content": "sys", "name": "policy"},
        {"role": "user", "content": [
            {"type": "text", "text": "first"},
            {"type": "image_url", "image_url": {"url": "http://x/y.png"}},
            {"type": "text", "text": "second"}
        ]},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "1"}]},
        {"role": "user"}
    ]))
    .unwrap();
    assert_eq!(messages[1].content.as_text(), "first\nsecond");
    assert_eq!(messages[2].content, MessageContent::Null);
    assert_eq!(messages[3].content, MessageContent::Null);
    let t = with_template(Variant::Plain, CHATML);
    assert_eq!(
        t.render_chat(&messages, false).unwrap(),
        "<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\nfirst\nsecond<|im_end|>\n\
         <|im_start|>assistant\n<|im_end|>\n<|im_start|>user\n<|im_end|>\n"
    );
    // A single text part is used as is.
    let one: ChatMessage =
        serde_json::from_value(json!({"role": "user", "content": [{"type": "text", "text": "x"}]}))
            .unwrap();
    assert_eq!(one.content.as_text(), "x");
}

#[test]
fn raise_exception_is_a_typed_error() {
    let t = with_template(
        Variant::Plain,
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation roles must \
         alternate user/assistant/user/assistant/...') }}{% endif %}ok",
    );
    let err = t
        .render_chat(&[ChatMessage::text("assistant", "hi")], true)
        .unwrap_err();
    match err {
        TokenizeError::TemplateRaised { message } => {
            assert!(
                message.starts_with("Conversation roles must alternate"),
                "{message}"
            )
        }
        other => panic!("expected TemplateRaised, got {other:?}"),
    }
    assert_eq!(
        t.render_chat(&[ChatMessage::text("user", "hi")], true)
            .unwrap(),
        "ok"
    );
    // Other render failures are `Render`, not `TemplateRaised`.
    let t = with_template(Variant::Plain, "{{ messages[0].content.no_such_method() }}");
    let err = t
        .render_chat(&[ChatMessage::text("user", "hi")], true)
        .unwrap_err();
    assert!(matches!(err, TokenizeError::Render { .. }), "{err:?}");
}

#[test]
fn missing_or_broken_template_errors() {
    let t = ModelTokenizer::new(tiny(Variant::Plain), config(), None).unwrap();
    let err = t.encode_chat(&sample_chat()).unwrap_err();
    assert!(
        matches!(err, TokenizeError::NoChatTemplate { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("--chat-template"), "{err}");
    // Plain prompts still work without a template.
    assert!(!t.encode_prompt("hello").unwrap().is_empty());

    let err = ModelTokenizer::new(
        tiny(Variant::Plain),
        config(),
        Some(("{% for m in messages %}".into(), "broken.jinja".into())),
    )
    .unwrap_err();
    assert!(
        matches!(err, TokenizeError::TemplateSyntax { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("broken.jinja"), "{err}");
}

#[test]
fn loads_files_and_names_bad_ones() {
    let dir = temp_dir();
    let tok_path = dir.join("tokenizer.json");
    tiny(Variant::Plain).save(&tok_path, false).unwrap();
    let cfg = write(
        &dir,
        "tokenizer_config.json",
        r#"{"bos_token": {"content": "<s>", "__type": "AddedToken"}, "eos_token": "</s>",
            "chat_template": [{"name": "default", "template": "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}"},
                              {"name": "tool_use", "template": "no"}]}"#,
    );
    let t = ModelTokenizer::from_model_dir(&dir, None).unwrap();
    assert_eq!(
        t.render_chat(&[ChatMessage::text("user", "hi")], true)
            .unwrap(),
        "<s>hi"
    );
    // A chat_template.jinja in the directory beats the config; --chat-template beats both.
    write(&dir, "chat_template.jinja", "jinja:{{ eos_token }}");
    let t = ModelTokenizer::from_model_dir(&dir, None).unwrap();
    assert_eq!(t.render_chat(&[], true).unwrap(), "jinja:</s>");
    let over = write(&dir, "override.jinja", "override\n");
    let t = ModelTokenizer::from_model_dir(&dir, Some(&over)).unwrap();
    // Jinja2's keep_trailing_newline=False drops the file's final newline.
    assert_eq!(t.render_chat(&[], true).unwrap(), "override");
    let t = ModelTokenizer::from_files(&tok_path, Some(&cfg), None).unwrap();
    assert_eq!(t.config().eos_token.as_deref(), Some("</s>"));

    let missing = dir.join("nope.json");
    let err = ModelTokenizer::from_files(&missing, None, None).unwrap_err();
    assert!(matches!(err, TokenizeError::Read { .. }), "{err:?}");
    assert!(err.to_string().contains("nope.json"), "{err}");

    let bad = write(
        &dir,
        "bad.json",
        r#"{"model": {"type": "BPE", "vocab": 3}}"#,
    );
    let err = ModelTokenizer::from_files(&bad, None, None).unwrap_err();
    assert!(
        matches!(err, TokenizeError::TokenizerJson { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("bad.json"), "{err}");

    let bad_cfg = write(&dir, "bad_config.json", r#"{"chat_template": 42}"#);
    let err = ModelTokenizer::from_files(&tok_path, Some(&bad_cfg), None).unwrap_err();
    assert!(matches!(err, TokenizeError::Config { .. }), "{err:?}");
    assert!(err.to_string().contains("bad_config.json"), "{err}");

    let err = ModelTokenizer::from_files(&tok_path, None, Some(&missing)).unwrap_err();
    assert!(err.to_string().contains("nope.json"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tojson_is_pythons_json_dumps() {
    let t = with_template(
        Variant::Plain,
        r#"{{ {"b": 1, "a": [1.5, 2.0, "x<y&'z'", none, true]} | tojson }}|{{ {"b": 1, "a": 2} | tojson(sort_keys=true) }}|{{ [1, {"k": "ü"}] | tojson(indent=2) }}"#,
    );
    assert_eq!(
        t.render_chat(&[], true).unwrap(),
        // minijinja's maps iterate in key order (no `preserve_order` feature), so "a"
        // comes first where Python would keep "b" first.
        "{\"a\": [1.5, 2.0, \"x<y&'z'\", null, true], \"b\": 1}|{\"a\": 2, \"b\": 1}|[\n  1,\n  \
         {\n    \"k\": \"ü\"\n  }\n]"
    );
}

#[test]
fn strftime_subset() {
    let t = time::Date::from_calendar_date(2024, time::Month::July, 5)
        .unwrap()
        .with_hms(14, 3, 9)
        .unwrap()
        .assume_utc();
    assert_eq!(
        chat::strftime("%d %b %Y|%B %A %a %H:%M:%S %I%p %j %y %%", t).unwrap(),
        "05 Jul 2024|July Friday Fri 14:03:09 02PM 187 24 %"
    );
    assert!(chat::strftime("%Q", t).is_err());
}

#[test]
fn split_mode_detects_unsafe_tokenizers() {
    let plain = ModelTokenizer::new(tiny(Variant::Plain), config(), None).unwrap();
    assert_eq!(plain.split_mode(), &SplitMode::AddedTokens);

    let bare = Tokenizer::from_bytes(base_json()).unwrap();
    let t = ModelTokenizer::new(bare, TokenizerConfig::default(), None).unwrap();
    assert!(matches!(t.split_mode(), SplitMode::WholeText(_)));

    let mut single = tiny(Variant::Plain);
    single.add_tokens(&[AddedToken::from("word", false).single_word(true)]);
    let t = ModelTokenizer::new(single, config(), None).unwrap();
    assert!(matches!(t.split_mode(), SplitMode::WholeText(r) if r.contains("single_word")));

    let mut meta = tiny(Variant::Plain);
    let pt: PreTokenizerWrapper = serde_json::from_value(json!({
        "type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": true
    }))
    .unwrap();
    meta.with_pre_tokenizer(Some(pt));
    let t = ModelTokenizer::new(meta, config(), None).unwrap();
    assert!(matches!(t.split_mode(), SplitMode::WholeText(r) if r.contains("Metaspace")));

    let t = ModelTokenizer::new(tiny(Variant::Plain), config(), None)
        .unwrap()
        .with_piece_cache(0);
    assert!(matches!(t.split_mode(), SplitMode::WholeText(_)));
}

const FRAGMENTS: &[&str] = &[
    "hello",
    " world",
    "Hello",
    "capital",
    " of",
    " France",
    "?",
    "!",
    ".",
    "\n",
    "\n\n",
    "  ",
    "   ",
    "\t",
    " ",
    "123",
    "4567890",
    "ÄÖü",
    "日本語",
    "テキスト",
    "🙂",
    "<|im_end|>",
    "<|im_",
    "im_start|>",
    "<s>",
    "</s",
    "</s>",
    "<tool>",
    " <tool> ",
    "<TOOL>",
    "<Tool>",
    "<｜User｜>",
    "'s",
    "don't",
    " \n ",
    "x",
    "fn main() {",
    "}",
    "\"quoted\"",
    "a.b",
    "<",
    "|>",
    "▁",
];

fn random_text(rng: &mut StdRng, max_fragments: usize) -> String {
    let n = rng.random_range(0..=max_fragments);
    (0..n)
        .map(|_| FRAGMENTS[rng.random_range(0..FRAGMENTS.len())])
        .collect()
}

fn random_chat(rng: &mut StdRng) -> Vec<ChatMessage> {
    let mut messages = Vec::new();
    if rng.random_bool(0.5) {
        messages.push(ChatMessage::text("system", random_text(rng, 12)));
    }
    for turn in 0..rng.random_range(1..6) {
        let role = if turn % 2 == 0 { "user" } else { "assistant" };
        messages.push(ChatMessage::text(role, random_text(rng, 25)));
    }
    messages
}

/// The cached path equals encoding the whole text, for chats and plain prompts, cold and
/// warm, over every tokenizer variant.
#[test]
fn piece_cache_equals_whole_text_encoding() {
    let mut rng = StdRng::seed_from_u64(7);
    for variant in [
        Variant::Plain,
        Variant::Lowercase,
        Variant::StripAndTemplate,
        Variant::EncodeSpecial,
    ] {
        let t = with_template(variant, CHATML);
        assert_eq!(t.split_mode(), &SplitMode::AddedTokens, "{variant:?}");
        for _ in 0..300 {
            let chat = random_chat(&mut rng);
            let text = t.render_chat(&chat, true).unwrap();
            let reference = t.tokenizer().encode(text.as_str(), false).unwrap();
            for _ in 0..2 {
                assert_eq!(
                    t.encode_chat(&chat).unwrap(),
                    reference.get_ids(),
                    "{variant:?}: {text:?}"
                );
            }
            let prompt = random_text(&mut rng, 30);
            let reference = t.tokenizer().encode(prompt.as_str(), true).unwrap();
            assert_eq!(
                t.encode_prompt(&prompt).unwrap(),
                reference.get_ids(),
                "{variant:?}: {prompt:?}"
            );
            assert_eq!(
                t.encode_uncached(&prompt, true).unwrap(),
                reference.get_ids()
            );
        }
        assert!(t.piece_cache_stats().entries > 0);
    }
}

#[test]
fn a_new_turn_only_tokenizes_new_pieces() {
    let t = with_template(Variant::Plain, CHATML);
    let mut chat = sample_chat();
    t.encode_chat(&chat).unwrap();
    let before = t.piece_cache_stats().entries;
    chat.push(ChatMessage::text("assistant", "Tokyo."));
    chat.push(ChatMessage::text("user", "Thanks!"));
    t.encode_chat(&chat).unwrap();
    // The pieces: "system\n...", "\n", "user\n...", "assistant\n..." (one per message, the
    // generation prompt's "assistant\n" included). Two new messages add two pieces.
    assert_eq!(t.piece_cache_stats().entries, before + 2);
    t.clear_piece_cache();
    assert_eq!(t.piece_cache_stats().entries, 0);
}

#[test]
fn add_bos_token_prefixes_plain_prompts() {
    let mut cfg = config();
    cfg.add_bos_token = Some(true);
    let t = ModelTokenizer::new(tiny(Variant::Plain), cfg.clone(), None).unwrap();
    let bos = t.tokenizer().token_to_id("<s>").unwrap();
    let ids = t.encode_prompt("hello world").unwrap();
    assert_eq!(ids[0], bos);
    assert_eq!(&ids[1..], t.encode_text("hello world", false).unwrap());
    // A post-processor that already adds BOS is not doubled.
    let t = ModelTokenizer::new(tiny(Variant::StripAndTemplate), cfg, None).unwrap();
    let ids = t.encode_prompt("hello").unwrap();
    assert_eq!(ids[0], bos);
    assert_ne!(ids[1], bos);
}

#[test]
fn block_hashes_use_the_model_namespace() {
    let t = with_template(Variant::Plain, CHATML).with_model("tiny-model", 4);
    assert_eq!(t.model(), "tiny-model");
    assert_eq!(t.block_size(), 4);
    let ids = t.encode_chat(&sample_chat()).unwrap();
    let mut out = Vec::new();
    t.block_hashes(&ids, &mut out);
    let seed = cache_router_core::hashing::namespace_seed("tiny-model", None);
    assert_eq!(out, cache_router_core::hashing::block_hashes(seed, &ids, 4));
    assert_eq!(out.len(), ids.len() / 4);
    let mut lora = Vec::new();
    t.block_hashes_for_adapter(Some("adapter"), &ids, &mut lora);
    assert_ne!(lora, out);
    let mut none = Vec::new();
    t.block_hashes_for_adapter(None, &ids, &mut none);
    assert_eq!(none, out);
}

/// Our splitter finds exactly the pieces and tokens the tokenizer's own
/// `extract_and_normalize` finds (identity normalizer: both matching stages).
#[test]
fn splitter_agrees_with_the_tokenizer() {
    let mut rng = StdRng::seed_from_u64(11);
    for variant in [
        Variant::Plain,
        Variant::StripAndTemplate,
        Variant::EncodeSpecial,
    ] {
        let t = with_template(variant, CHATML);
        for i in 0..2000 {
            let text = if i % 2 == 0 {
                random_text(&mut rng, 40)
            } else {
                t.render_chat(&random_chat(&mut rng), true).unwrap()
            };
            let reference: Vec<Segment> = t
                .tokenizer()
                .get_added_vocabulary()
                .extract_and_normalize(None::<&NormalizerWrapper>, &text)
                .get_splits(
                    tokenizers::OffsetReferential::Original,
                    tokenizers::OffsetType::Byte,
                )
                .into_iter()
                .map(|(_, (start, end), tokens)| match tokens {
                    Some(tokens) => {
                        assert_eq!(tokens.len(), 1);
                        Segment::Token(tokens[0].id)
                    }
                    None => Segment::Text(start..end),
                })
                .collect();
            let mut ours = Vec::new();
            t.pieces.segments(&text, &mut |s| ours.push(s));
            assert_eq!(ours, reference, "{variant:?}: {text:?}");
        }
    }
}
