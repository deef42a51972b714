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
//! We cut the text with the tokenizer's own matcher
//! ([`AddedVocabulary::extract_and_normalize`], the function `encode` itself calls), so the
//! cut points are exactly the ones `encode` uses, including `lstrip`/`rstrip` handling and
//! `encode_special_tokens`. Each piece's ids are cached in a bounded moka cache keyed by the
//! xxh3-128 hash of the piece.
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

use std::collections::HashSet;
use std::sync::Arc;

use moka::sync::Cache;
use serde_json::Value as Json;
use tokenizers::{Encoding, OffsetReferential, OffsetType, Token, Tokenizer};
use xxhash_rust::xxh3::xxh3_128;

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
    /// Pass the tokenizer's normalizer to the splitter (only needed to find
    /// `normalized: true` tokens when the normalizer is not the identity).
    split_with_normalizer: bool,
    /// Ids of `normalized: true` added tokens that must not be cut at (non-identity
    /// normalizer only; empty otherwise).
    keep_inside: HashSet<u32>,
    cache: Option<Cache<u128, Arc<[u32]>>>,
}

impl std::fmt::Debug for PieceEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PieceEncoder")
            .field("mode", &self.mode)
            .field("split_with_normalizer", &self.split_with_normalizer)
            .field("keep_inside", &self.keep_inside.len())
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
        let (mode, split_with_normalizer, keep_inside) = analyse(tokenizer);
        let mode = if max_tokens == 0 && mode == SplitMode::AddedTokens {
            SplitMode::WholeText("the piece cache is disabled".into())
        } else {
            mode
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
            split_with_normalizer,
            keep_inside,
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
        let normalizer = if self.split_with_normalizer {
            tokenizer.get_normalizer()
        } else {
            None
        };
        let pretokenized = tokenizer
            .get_added_vocabulary()
            .extract_and_normalize(normalizer, text);
        // A piece runs from `start` to `end` (byte offsets in `text`) over the splits that are
        // not cut points.
        let mut piece: Option<(usize, usize)> = None;
        for (_, (start, end), tokens) in
            pretokenized.get_splits(OffsetReferential::Original, OffsetType::Byte)
        {
            match tokens {
                Some(tokens) if !tokens.iter().any(|t| self.keep_inside.contains(&t.id)) => {
                    if let Some((s, e)) = piece.take() {
                        self.piece(cache, tokenizer, &text[s..e], out)?;
                    }
                    out.extend(tokens.iter().map(|t| t.id));
                }
                _ => {
                    piece = Some(match piece {
                        Some((s, _)) => (s, end),
                        None => (start, end),
                    });
                }
            }
        }
        if let Some((s, e)) = piece {
            self.piece(cache, tokenizer, &text[s..e], out)?;
        }
        Ok(())
    }

    fn piece(
        &self,
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

/// Whether cutting at added tokens is exact for this tokenizer; see the module docs.
fn analyse(tokenizer: &Tokenizer) -> (SplitMode, bool, HashSet<u32>) {
    let whole = |reason: &str| {
        (
            SplitMode::WholeText(reason.to_owned()),
            false,
            HashSet::new(),
        )
    };
    let added = tokenizer.get_added_tokens_decoder();
    if added.is_empty() {
        return whole("the tokenizer has no added tokens to cut at");
    }
    if let Some((_, t)) = added.iter().find(|(_, t)| t.single_word) {
        return whole(&format!(
            "added token {:?} has single_word, whose match depends on text outside a piece",
            t.content
        ));
    }
    if added.values().any(|t| t.rstrip)
        && added
            .values()
            .any(|t| t.content.starts_with(char::is_whitespace))
    {
        return whole("an added token starts with whitespace while another one has rstrip");
    }
    if let Some(pt) = tokenizer.get_pre_tokenizer() {
        let json = serde_json::to_value(pt).unwrap_or(Json::Null);
        if json_any(&json, &|o| {
            o.get("type").and_then(Json::as_str) == Some("Metaspace")
                && o.get("prepend_scheme").and_then(Json::as_str) == Some("first")
        }) {
            return whole(
                "a Metaspace pre-tokenizer with prepend_scheme \"first\" encodes the first \
                 piece differently",
            );
        }
    }
    let identity = match tokenizer.get_normalizer() {
        None => true,
        Some(n) => serde_json::to_value(n).is_ok_and(|j| normalizer_is_identity(&j)),
    };
    let normalized: HashSet<u32> = added
        .iter()
        .filter(|(_, t)| t.normalized)
        .map(|(id, _)| *id)
        .collect();
    if identity || normalized.is_empty() {
        // Both matching stages see the raw text (or stage 2 has nothing to find): every
        // added token is a cut point and the splitter needs no normalizer.
        (SplitMode::AddedTokens, false, HashSet::new())
    } else {
        (SplitMode::AddedTokens, true, normalized)
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
