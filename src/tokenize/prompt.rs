//! What the router needs from a model's tokenizer, and the tokenizers by served model name.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use cache_router_core::protocol::BlockHash;

use super::{ChatMessage, ModelTokenizer};

/// A model's tokenizer as routing uses it (implemented by [`ModelTokenizer`]; tests may plug
/// in their own).
pub trait PromptTokenizer: Send + Sync + std::fmt::Debug {
    /// Token ids of a plain prompt, as the engine computes them for `/v1/completions`.
    fn encode_prompt(&self, text: &str) -> Result<Vec<u32>, String>;
    /// Token ids of a rendered chat, as the engine computes them for `/v1/chat/completions`.
    fn encode_chat(&self, messages: &[Value]) -> Result<Vec<u32>, String>;
    /// Appends the chained block hashes of `ids`.
    fn block_hashes(&self, ids: &[u32], out: &mut Vec<BlockHash>);
}

/// Tokenizers by served model name.
pub type Models = HashMap<String, Arc<dyn PromptTokenizer>>;

impl PromptTokenizer for ModelTokenizer {
    fn encode_prompt(&self, text: &str) -> Result<Vec<u32>, String> {
        ModelTokenizer::encode_prompt(self, text).map_err(|e| e.to_string())
    }

    fn encode_chat(&self, messages: &[Value]) -> Result<Vec<u32>, String> {
        let msgs: Vec<ChatMessage> = messages
            .iter()
            .map(|m| serde_json::from_value(m.clone()))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("bad message: {e}"))?;
        ModelTokenizer::encode_chat(self, &msgs).map_err(|e| e.to_string())
    }

    fn block_hashes(&self, ids: &[u32], out: &mut Vec<BlockHash>) {
        ModelTokenizer::block_hashes(self, ids, out)
    }
}
