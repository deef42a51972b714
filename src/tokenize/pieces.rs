//! The warm path: token ids assembled from cached pieces of text.
//!
//! HF `tokenizers` encodes a text in this order: (1) find the added tokens that match the raw
//! text (`normalized: false` ones), cutting the text around them; (2) normalize each remaining
//! piece on its own and find the `normalized: true` added tokens in it; (3) pre-tokenize and
//! run the model on each remaining piece *on its own*; (4) post-process the whole sequence.
//! So the ids of a text are the ids of the pieces between added tokens, each encoded alone,
//! interleaved with the added tokens' ids. A chat template puts added tokens (`<|im_start|>`,
//! `<｜User｜>`, BOS/EOS, ...) around every message, so each message's text is one piece, and
//! the next turn of a conversation re-uses every piece but the new ones.
//!
//! We cut the text where `encode` does (see the private `split` module, which reproduces the
//! tokenizer's matcher, `lstrip`/`rstrip` and `encode_special_tokens` included, and is tested
//! against it). Each piece's ids are cached in a bounded moka cache keyed by the xxh3-128
//! hash of the piece.
//!
//! Where that equality does not hold, we encode the whole text instead (see [`SplitMode`]):
//! - no added tokens at all (nothing to cut at; the cache would only hold whole prompts);
//! - an added token with `single_word: true` (whether it matches depends on the characters
//!   around it, which may lie outside a piece);
//! - a `Metaspace` pre-tokenizer with `prepend_scheme: "first"` (it treats the piece at
//!   offset 0 differently from the others, so a piece encoded alone differs);
//! - an added token that starts with whitespace while some added token has `rstrip` (the
//!   matcher resumes scanning inside the stripped whitespace; never seen in practice).
//!
//! With a normalizer that is not the identity, step (2) normalizes each step-(1) piece as a
//! whole, so we only cut at step-(1) (`normalized: false`) tokens and keep any
//! `normalized: true` tokens inside the piece, which is encoded whole.

use std::sync::Arc;

use moka::sync::Cache;
use serde_json::Value as Json;
use tokenizers::{Encoding, Token, Tokenizer};
use xxhash_rust::xxh3::xxh3_128;

use super::split::{Matcher, Segment};
use super::TokenizeError;

/// Default bound of the piece cache, in tokens (about 200 MB of ids at 4 bytes a token, plus
/// the per-entry charge).
pub const DEFAULT_PIECE_CACHE_TOKENS: u64 = 50_000_000;

/// Each cache entry is charged this many tokens on top of its own length, for the key, the
/// `Arc` header and moka's bookkeeping (about 128 bytes).
const ENTRY_OVERHEAD_TOKENS: u32 = 32;

/// How [`super::ModelTokenizer`] turns a text into ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SplitMode {
    /// Cut at added tokens and cache the pieces between them (exactly equal to encoding the
    /// whole text).
    AddedTokens,
    /// Encode every text whole, without the cache, for the reason given.
    WholeText(String),
}

/// Piece cache occupancy (moka's counts are eventually consistent).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PieceCacheStats {
    pub entries: u64,
    /// Sum of the entries' weights: tokens plus a fixed charge per entry.
    pub weighted_tokens: u64,
}

pub(crate) struct PieceEncoder {
    mode: SplitMode,
    /// Cuts at the added tokens matched against the raw text (`normalized: false`).
    raw: Option<Matcher>,
    /// Cuts at the `normalized: true` tokens inside the raw pieces, when the normalizer is
    /// the identity (otherwise they stay inside their piece, which is encoded whole).
    normalized: Option<Matcher>,
    cache: Option<Cache<u128, Arc<[u32]>>>,
}

impl std::fmt::Debug for PieceEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PieceEncoder")
            .field("mode", &self.mode)
            .field("cuts_at_normalized_tokens", &self.normalized.is_some())
            .field(
                "cache_entries",
                &self.cache.as_ref().map(Cache::entry_count),
            )
            .finish()
    }
}

impl PieceEncoder {
    /// Decides whether piece-wise encoding is exact for `tokenizer`, and builds the cache.
    /// `max_tokens == 0` disables the cache (and so the splitting).
    pub(crate) fn new(tokenizer: &Tokenizer, max_tokens: u64) -> Self {
        let (mode, raw, normalized) = match analyse(tokenizer) {
            Err(reason) => (SplitMode::WholeText(reason), None, None),
            Ok(_) if max_tokens == 0 => (
                SplitMode::WholeText("the piece cache is disabled".into()),
                None,
                None,
            ),
            Ok((raw, normalized)) => (SplitMode::AddedTokens, Some(raw), normalized),
        };
        let cache = (mode == SplitMode::AddedTokens).then(|| {
            Cache::builder()
                .max_capacity(max_tokens)
                .weigher(|_: &u128, ids: &Arc<[u32]>| {
                    u32::try_from(ids.len())
                        .unwrap_or(u32::MAX)
                        .saturating_add(ENTRY_OVERHEAD_TOKENS)
                })
                .build()
        });
        PieceEncoder {
            mode,
            raw,
            normalized,
            cache,
        }
    }

    pub(crate) fn mode(&self) -> &SplitMode {
        &self.mode
    }

    pub(crate) fn stats(&self) -> PieceCacheStats {
        match &self.cache {
            None => PieceCacheStats::default(),
            Some(c) => {
                c.run_pending_tasks();
                PieceCacheStats {
                    entries: c.entry_count(),
                    weighted_tokens: c.weighted_size(),
                }
            }
        }
    }

    /// Empties the cache (for measurements and tests).
    pub(crate) fn clear(&self) {
        if let Some(c) = &self.cache {
            c.invalidate_all();
            c.run_pending_tasks();
        }
    }

    /// Cuts `text` into pieces and added tokens, as `encode` does (in
    /// [`SplitMode::AddedTokens`]; the whole text is one piece otherwise).
    pub(crate) fn segments(&self, text: &str, emit: &mut dyn FnMut(Segment)) {
        let Some(raw) = &self.raw else {
            if !text.is_empty() {
                emit(Segment::Text(0..text.len()));
            }
            return;
        };
        match &self.normalized {
            None => raw.split(text, 0..text.len(), emit),
            Some(normalized) => raw.split(text, 0..text.len(), &mut |seg| match seg {
                Segment::Text(r) => normalized.split(text, r, emit),
                token => emit(token),
            }),
        }
    }

    /// Appends the ids of `text` encoded without special tokens (`add_special_tokens =
    /// false`) to `out`: from cached pieces in [`SplitMode::AddedTokens`], else whole.
    pub(crate) fn encode(
        &self,
        tokenizer: &Tokenizer,
        text: &str,
        out: &mut Vec<u32>,
    ) -> Result<(), TokenizeError> {
        let Some(cache) = &self.cache else {
            out.extend_from_slice(encode_whole(tokenizer, text)?.get_ids());
            return Ok(());
        };
        let mut result = Ok(());
        self.segments(text, &mut |seg| {
            if result.is_err() {
                return;
            }
            match seg {
                Segment::Token(id) => out.push(id),
                Segment::Text(r) => result = piece(cache, tokenizer, &text[r], out),
            }
        });
        result
    }
}

fn piece(
    cache: &Cache<u128, Arc<[u32]>>,
    tokenizer: &Tokenizer,
    piece: &str,
    out: &mut Vec<u32>,
) -> Result<(), TokenizeError> {
    let key = xxh3_128(piece.as_bytes());
    if let Some(ids) = cache.get(&key) {
        out.extend_from_slice(&ids);
        return Ok(());
    }
    let encoding = encode_whole(tokenizer, piece)?;
    let ids: Arc<[u32]> = Arc::from(encoding.get_ids());
    out.extend_from_slice(&ids);
    cache.insert(key, ids);
    Ok(())
}

/// `tokenizer.encode(text, add_special_tokens = false)` without offsets.
pub(crate) fn encode_whole(tokenizer: &Tokenizer, text: &str) -> Result<Encoding, TokenizeError> {
    tokenizer
        .encode_fast(text, false)
        .map_err(|e| TokenizeError::Encode {
            message: e.to_string(),
        })
}

/// Applies the tokenizer's post-processor with `add_special_tokens = true` to ids encoded
/// without special tokens: what `encode(text, true)` does after tokenizing.
pub(crate) fn post_process(
    tokenizer: &Tokenizer,
    ids: Vec<u32>,
) -> Result<Vec<u32>, TokenizeError> {
    let tokens = ids
        .into_iter()
        .map(|id| Token::new(id, String::new(), (0, 0)))
        .collect();
    let encoding = Encoding::from_tokens(tokens, 0);
    tokenizer
        .post_process(encoding, None, true)
        .map(|e| e.get_ids().to_vec())
        .map_err(|e| TokenizeError::Encode {
            message: e.to_string(),
        })
}

/// Whether cutting at added tokens is exact for this tokenizer (see the module docs); if so
/// the matchers for the raw text and, with an identity normalizer, for the normalized tokens.
fn analyse(tokenizer: &Tokenizer) -> Result<(Matcher, Option<Matcher>), String> {
    let decoder = tokenizer.get_added_tokens_decoder();
    if decoder.is_empty() {
        return Err("the tokenizer has no added tokens to cut at".into());
    }
    if let Some(t) = decoder.values().find(|t| t.single_word) {
        return Err(format!(
            "added token {:?} has single_word, whose match depends on text outside a piece",
            t.content
        ));
    }
    if decoder.values().any(|t| t.rstrip)
        && decoder
            .values()
            .any(|t| t.content.starts_with(char::is_whitespace))
    {
        return Err("an added token starts with whitespace while another one has rstrip".into());
    }
    if let Some(pt) = tokenizer.get_pre_tokenizer() {
        let json = serde_json::to_value(pt).unwrap_or(Json::Null);
        if json_any(&json, &|o| {
            o.get("type").and_then(Json::as_str) == Some("Metaspace")
                && o.get("prepend_scheme").and_then(Json::as_str) == Some("first")
        }) {
            return Err(
                "a Metaspace pre-tokenizer with prepend_scheme \"first\" encodes the \
                        first piece differently"
                    .into(),
            );
        }
    }
    let identity = match tokenizer.get_normalizer() {
        None => true,
        Some(n) => serde_json::to_value(n).is_ok_and(|j| normalizer_is_identity(&j)),
    };
    // The tokenizer's own ids for each content (what its matcher reports), in id order so
    // duplicates resolve the same way every time.
    let mut tokens: Vec<(u32, &tokenizers::AddedToken)> = decoder
        .values()
        .filter_map(|t| tokenizer.token_to_id(&t.content).map(|id| (id, t)))
        .collect();
    tokens.sort_by_key(|(id, _)| *id);
    tokens.dedup_by_key(|(id, _)| *id);
    let special = tokenizer.get_encode_special_tokens();
    let raw = Matcher::new(
        tokens.iter().filter(|(_, t)| !t.normalized).copied(),
        special,
    );
    let normalized = Matcher::new(
        tokens.iter().filter(|(_, t)| t.normalized).copied(),
        special,
    );
    if identity {
        Ok((raw, (!normalized.is_empty()).then_some(normalized)))
    } else if raw.is_empty() {
        Err(
            "the normalizer is not the identity and every added token is matched after \
             normalizing"
                .into(),
        )
    } else {
        Ok((raw, None))
    }
}

/// A normalizer that changes nothing: an empty `Sequence` (or one of such).
fn normalizer_is_identity(json: &Json) -> bool {
    match json.get("type").and_then(Json::as_str) {
        Some("Sequence") => json
            .get("normalizers")
            .and_then(Json::as_array)
            .is_some_and(|list| list.iter().all(normalizer_is_identity)),
        _ => false,
    }
}

/// Whether `pred` holds for any JSON object inside `json`.
fn json_any(json: &Json, pred: &dyn Fn(&serde_json::Map<String, Json>) -> bool) -> bool {
    match json {
        Json::Object(o) => pred(o) || o.values().any(|v| json_any(v, pred)),
        Json::Array(a) => a.iter().any(|v| json_any(v, pred)),
        _ => false,
    }
}
