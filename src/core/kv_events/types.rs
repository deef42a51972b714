//! The decoded meaning of an engine KV-event batch.

/// An engine's block hash. vLLM sends unsigned 64-bit ints (often >= 2^63) or bytes
/// (sha256 hashing); SGLang sends signed 64-bit ints, which are kept as their bit pattern so
/// that `BlockRemoved` finds what `BlockStored` announced.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EngineHash {
    Int(u64),
    Bytes(Vec<u8>),
}

/// One `EventBatch`: `[ts, events, data_parallel_rank]` on the wire.
#[derive(Clone, Debug, PartialEq)]
pub struct KvEventBatch {
    pub ts: f64,
    pub events: Vec<KvEvent>,
    /// `data_parallel_rank` (vLLM) or `attn_dp_rank` (SGLang); absent in vLLM 0.9.
    pub data_parallel_rank: Option<i64>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum KvEvent {
    BlockStored(BlockStored),
    BlockRemoved(BlockRemoved),
    AllBlocksCleared,
    /// An event type this build does not know; counted and skipped by consumers.
    Unknown {
        tag: String,
    },
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct BlockStored {
    pub block_hashes: Vec<EngineHash>,
    pub parent_block_hash: Option<EngineHash>,
    /// Token ids of all blocks, concatenated. SGLang's EAGLE bigram entries (`[a, b]`) keep
    /// their first id.
    pub token_ids: Vec<u32>,
    pub block_size: u32,
    pub lora_id: Option<i64>,
    /// Storage tier, e.g. `"GPU"` or `"CPU"`; `None` means the GPU (engines before `medium`).
    pub medium: Option<String>,
    pub lora_name: Option<String>,
    /// Per-block extra keys (LoRA name, multimodal `[id, offset]`, cache salt, prompt embeds).
    /// `None` when absent; `Some(v)` with `v[i] == true` when block `i` carries any extra key
    /// (such a block's content is not determined by its token ids alone).
    pub extra_keys: Option<Vec<bool>>,
    /// KV-cache group (hybrid models); `None` when absent.
    pub group_idx: Option<u32>,
    /// The group's attention kind (`"full_attention"`, `"sliding_window"`, ...; vLLM >= 0.2x).
    pub kv_cache_spec_kind: Option<String>,
    pub kv_cache_spec_sliding_window: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct BlockRemoved {
    pub block_hashes: Vec<EngineHash>,
    pub medium: Option<String>,
    pub group_idx: Option<u32>,
}
