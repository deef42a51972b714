//! Tokenization for routing: a request's text becomes the token ids the engine will see, and
//! those become block hashes.
//!
//! - `/v1/completions`: [`ModelTokenizer::encode_prompt`] is `tokenizer.encode(prompt,
//!   add_special_tokens=True)`, as vLLM does for a plain prompt.
//! - `/v1/chat/completions`: [`ModelTokenizer::encode_chat`] renders the messages with the
//!   model's chat template exactly as transformers' `apply_chat_template(...,
//!   add_generation_prompt=True, tokenize=False)` does (see [`chat`]), then encodes with
//!   `add_special_tokens=False`, as vLLM does, because the template already wrote BOS.
//!
//! Tokenizing is most of the cost of a routing decision (about 1 µs a token on one core for a
//! 128k-vocabulary BPE), and a chat turn repeats the whole history. So the ids are assembled
//! from cached pieces: the text between the tokenizer's added tokens, which HF `tokenizers`
//! encodes independently of its neighbours. Only new pieces are tokenized. The result is
//! exactly the ids of encoding the whole text; where that cannot be guaranteed the whole text
//! is encoded instead (see [`pieces`] and [`SplitMode`]).
//!
//! Loading reads HF's `tokenizer.json`, optionally `tokenizer_config.json` (chat template,
//! special tokens, `add_bos_token`) and a chat template file that overrides the config's.

pub mod chat;
pub mod config;
mod error;
pub mod pieces;
mod prompt;
mod split;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use tokenizers::Tokenizer;

use cache_router_core::hashing::{extend_block_hashes, namespace_seed};
use cache_router_core::protocol::BlockHash;

pub use chat::{ChatMessage, ContentPart, MessageContent};
pub use config::{ChatTemplateSource, TokenizerConfig};
pub use error::TokenizeError;
pub use pieces::{PieceCacheStats, SplitMode, DEFAULT_PIECE_CACHE_TOKENS};
pub use prompt::{Models, PromptTokenizer};

use chat::ChatTemplate;
use pieces::PieceEncoder;

/// The block size hashes use until [`ModelTokenizer::with_model`] sets one (vLLM's default).
pub const DEFAULT_BLOCK_SIZE: usize = 16;

/// A model's tokenizer, chat template and block hashing: everything the router needs to turn
/// a request into block hashes. Shared by all request handlers (`Send + Sync`; the piece
/// cache is concurrent).
pub struct ModelTokenizer {
    tokenizer: Tokenizer,
    config: TokenizerConfig,
    /// The compiled chat template, or why there is none.
    template: Result<ChatTemplate, String>,
    /// BOS to put in front of a plain prompt (`add_bos_token: true` and the post-processor
    /// does not add it itself).
    prompt_bos: Option<u32>,
    /// Whether the post-processor adds tokens to a single sequence.
    post_processor_adds: bool,
    pieces: PieceEncoder,
    model: String,
    block_size: usize,
    seed: u64,
}

impl std::fmt::Debug for ModelTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelTokenizer")
            .field("model", &self.model)
            .field("block_size", &self.block_size)
            .field("vocab_size", &self.tokenizer.get_vocab_size(true))
            .field("chat_template", &self.template.as_ref().map(|_| ()))
            .field("prompt_bos", &self.prompt_bos)
            .field("pieces", &self.pieces)
            .finish()
    }
}

impl ModelTokenizer {
    /// Loads `tokenizer.json`, optionally `tokenizer_config.json`, and optionally a chat
    /// template file that overrides the config's template.
    pub fn from_files(
        tokenizer_json: &Path,
        config: Option<&Path>,
        chat_template_file: Option<&Path>,
    ) -> Result<Self, TokenizeError> {
        let tokenizer = load_tokenizer(tokenizer_json)?;
        let config = match config {
            Some(path) => TokenizerConfig::from_file(path)?,
            None => TokenizerConfig::default(),
        };
        let template = match chat_template_file {
            Some(path) => Some(read_template(path)?),
            None => None,
        };
        Self::new(tokenizer, config, template)
    }

    /// Loads a model directory: `tokenizer.json`, and if present `tokenizer_config.json` and
    /// `chat_template.jinja` (newer transformers save the template there; it takes precedence
    /// over the config's). `chat_template_override` (`--chat-template FILE`) beats both.
    pub fn from_model_dir(
        dir: &Path,
        chat_template_override: Option<&Path>,
    ) -> Result<Self, TokenizeError> {
        let config = dir.join("tokenizer_config.json");
        let config = config.is_file().then_some(config);
        let jinja = dir.join("chat_template.jinja");
        let template = match chat_template_override {
            Some(path) => Some(path.to_owned()),
            None => jinja.is_file().then_some(jinja),
        };
        Self::from_files(
            &dir.join("tokenizer.json"),
            config.as_deref(),
            template.as_deref(),
        )
    }

    /// Builds from a loaded tokenizer. `chat_template` is `(source, origin)` and overrides
    /// the config's template; `origin` names it in errors.
    pub fn new(
        mut tokenizer: Tokenizer,
        config: TokenizerConfig,
        chat_template: Option<(String, String)>,
    ) -> Result<Self, TokenizeError> {
        // transformers turns truncation and padding off on every call unless asked, and
        // vLLM does not ask: a tokenizer.json that enables them must not change our ids.
        let _ = tokenizer.with_truncation(None);
        tokenizer.with_padding(None);

        let (source, origin) = match chat_template {
            Some(t) => (Ok(t.0), t.1),
            None => match &config.chat_template {
                Some(c) => (
                    c.default_template().map(str::to_owned),
                    "tokenizer_config.json".to_owned(),
                ),
                None => (
                    Err("tokenizer_config.json has no chat_template".to_owned()),
                    String::new(),
                ),
            },
        };
        let template = match source {
            Ok(source) => Ok(ChatTemplate::compile(
                source,
                &origin,
                &[
                    ("bos_token", config.bos_token.as_deref()),
                    ("eos_token", config.eos_token.as_deref()),
                    ("unk_token", config.unk_token.as_deref()),
                    ("pad_token", config.pad_token.as_deref()),
                ],
            )?),
            Err(reason) => Err(reason),
        };

        let post_processor_adds = tokenizer
            .get_post_processor()
            .is_some_and(|p| tokenizers::PostProcessor::added_tokens(p, false) > 0);
        let bos_id = config
            .bos_token
            .as_deref()
            .and_then(|t| tokenizer.token_to_id(t));
        let prompt_bos = match (config.add_bos_token, bos_id) {
            (Some(true), Some(bos)) => {
                let empty = pieces::post_process(&tokenizer, Vec::new())?;
                (empty.first() != Some(&bos)).then_some(bos)
            }
            _ => None,
        };
        let pieces = PieceEncoder::new(&tokenizer, DEFAULT_PIECE_CACHE_TOKENS);
        Ok(ModelTokenizer {
            tokenizer,
            config,
            template,
            prompt_bos,
            post_processor_adds,
            pieces,
            model: String::new(),
            block_size: DEFAULT_BLOCK_SIZE,
            seed: namespace_seed("", None),
        })
    }

    /// Sets the model name that namespaces block hashes, and the engine's block size.
    ///
    /// # Panics
    /// If `block_size` is 0.
    pub fn with_model(mut self, model: impl Into<String>, block_size: usize) -> Self {
        assert!(block_size > 0, "block_size must be positive");
        self.model = model.into();
        self.block_size = block_size;
        self.seed = namespace_seed(&self.model, None);
        self
    }

    /// Bounds the piece cache at `max_tokens` (weighted: tokens plus a small charge per
    /// entry); 0 turns the cache off. Replaces the cache (and empties it).
    pub fn with_piece_cache(mut self, max_tokens: u64) -> Self {
        self.pieces = PieceEncoder::new(&self.tokenizer, max_tokens);
        self
    }

    /// Renders `messages` with the chat template, as transformers' `apply_chat_template(
    /// messages, add_generation_prompt=..., tokenize=False)`.
    pub fn render_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizeError> {
        match &self.template {
            Ok(t) => t.render(messages, add_generation_prompt),
            Err(reason) => Err(TokenizeError::NoChatTemplate {
                reason: reason.clone(),
            }),
        }
    }

    /// The ids of a chat request as vLLM computes them: rendered with
    /// `add_generation_prompt=True`, then encoded with `add_special_tokens=False`. Uses the
    /// piece cache.
    pub fn encode_chat(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, TokenizeError> {
        let text = self.render_chat(messages, true)?;
        self.encode_text(&text, false)
    }

    /// The ids of a plain prompt (`/v1/completions`): `encode(prompt,
    /// add_special_tokens=True)`, plus BOS when the config says `add_bos_token` and the
    /// tokenizer's post-processor does not add it. Uses the piece cache.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>, TokenizeError> {
        self.encode_text(text, true)
    }

    /// Encodes `text` through the piece cache; exactly equal to
    /// [`encode_uncached`](Self::encode_uncached).
    pub fn encode_text(
        &self,
        text: &str,
        add_special_tokens: bool,
    ) -> Result<Vec<u32>, TokenizeError> {
        let mut ids = Vec::with_capacity(text.len() / 3 + 8);
        self.pieces.encode(&self.tokenizer, text, &mut ids)?;
        self.finish(ids, add_special_tokens)
    }

    /// Encodes `text` whole with the tokenizer, bypassing the piece cache: the reference the
    /// cached path is tested against, and the cold cost.
    pub fn encode_uncached(
        &self,
        text: &str,
        add_special_tokens: bool,
    ) -> Result<Vec<u32>, TokenizeError> {
        let ids = pieces::encode_whole(&self.tokenizer, text)?
            .get_ids()
            .to_vec();
        self.finish(ids, add_special_tokens)
    }

    fn finish(&self, ids: Vec<u32>, add_special_tokens: bool) -> Result<Vec<u32>, TokenizeError> {
        if !add_special_tokens {
            return Ok(ids);
        }
        let mut ids = if self.post_processor_adds {
            pieces::post_process(&self.tokenizer, ids)?
        } else {
            ids
        };
        if let Some(bos) = self.prompt_bos {
            ids.insert(0, bos);
        }
        Ok(ids)
    }

    /// Appends the block hashes of `ids` (full blocks only) for this model without an adapter.
    pub fn block_hashes(&self, ids: &[u32], out: &mut Vec<BlockHash>) {
        extend_block_hashes(self.seed, ids, self.block_size, out);
    }

    /// Appends the block hashes of `ids` for this model and a LoRA adapter.
    pub fn block_hashes_for_adapter(
        &self,
        lora: Option<&str>,
        ids: &[u32],
        out: &mut Vec<BlockHash>,
    ) {
        let seed = match lora {
            None => self.seed,
            Some(_) => namespace_seed(&self.model, lora),
        };
        extend_block_hashes(seed, ids, self.block_size, out);
    }

    /// The underlying HF tokenizer (truncation and padding off).
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn config(&self) -> &TokenizerConfig {
        &self.config
    }

    /// The chat template's source, if the model has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.template.as_ref().ok().map(ChatTemplate::source)
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Whether texts are assembled from cached pieces, or encoded whole and why.
    pub fn split_mode(&self) -> &SplitMode {
        self.pieces.mode()
    }

    pub fn piece_cache_stats(&self) -> PieceCacheStats {
        self.pieces.stats()
    }

    /// Empties the piece cache.
    pub fn clear_piece_cache(&self) {
        self.pieces.clear();
    }
}

/// Reads `tokenizer.json`. A file `tokenizers` cannot make sense of is an error naming it,
/// never a panic (the library asserts on some malformed inputs, so it runs under
/// `catch_unwind`).
fn load_tokenizer(path: &Path) -> Result<Tokenizer, TokenizeError> {
    let bytes = std::fs::read(path).map_err(|source| TokenizeError::Read {
        path: path.to_owned(),
        source,
    })?;
    let invalid = |message: String| TokenizeError::TokenizerJson {
        path: path.to_owned(),
        message,
    };
    match std::panic::catch_unwind(|| Tokenizer::from_bytes(&bytes)) {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(invalid(e.to_string())),
        Err(panic) => Err(invalid(format!(
            "the tokenizers library panicked: {}",
            panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)")
        ))),
    }
}

/// Reads a chat template file; returns `(source, origin)`.
fn read_template(path: &Path) -> Result<(String, String), TokenizeError> {
    let source = std::fs::read_to_string(path).map_err(|source| TokenizeError::Read {
        path: PathBuf::from(path),
        source,
    })?;
    Ok((source, path.display().to_string()))
}
