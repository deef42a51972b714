//! Chained block hashes: the one function the router and every reporter share.
//!
//! Tokens are cut into full blocks of `block_size`; block `i`'s hash chains the previous one,
//! `h_i = xxh3_64_with_seed(le_bytes(tokens of block i), seed = h_{i-1})`, and `h_{-1}` is a
//! namespace seed derived from the model name and LoRA adapter. So one hash names a whole
//! prefix (two requests share `h_k` only if they share the first `k+1` blocks and the model),
//! and "does worker w hold the first k blocks" is a look-up of `h_{k-1}`. A partial last block
//! is never hashed: engines do not cache it either.
//!
//! The golden vectors in the tests pin the exact values; changing them is a protocol break.

use crate::protocol::BlockHash;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// Domain tag mixed into every namespace seed, so that our hashes never collide by accident
/// with another system's xxh3 of the same model name.
const DOMAIN: &[u8] = b"cache-router/block-hash/v1";

/// The seed `h_{-1}` for a model and optional LoRA adapter: requests of different models or
/// adapters never share a block hash, so they never match each other's cache.
pub fn namespace_seed(model: &str, lora: Option<&str>) -> u64 {
    let lora = lora.unwrap_or("");
    let mut buf = Vec::with_capacity(DOMAIN.len() + model.len() + lora.len() + 18);
    buf.extend_from_slice(DOMAIN);
    // Length-prefix each part so ("ab", "c") and ("a", "bc") differ.
    buf.extend_from_slice(&(model.len() as u64).to_le_bytes());
    buf.extend_from_slice(model.as_bytes());
    buf.extend_from_slice(&(lora.len() as u64).to_le_bytes());
    buf.extend_from_slice(lora.as_bytes());
    xxh3_64(&buf)
}

/// Hash of one full block given its parent's hash (or the namespace seed for the first block).
#[inline]
pub fn chain_hash(parent: u64, block_tokens: &[u32]) -> BlockHash {
    BlockHash(xxh3_64_with_seed(token_bytes(block_tokens), parent))
}

/// On little-endian targets the token slice already is its little-endian byte string, so no
/// copy is needed; bytemuck makes the reinterpretation safe.
#[cfg(target_endian = "little")]
#[inline]
fn token_bytes(tokens: &[u32]) -> &[u8] {
    bytemuck::cast_slice(tokens)
}

#[cfg(not(target_endian = "little"))]
fn token_bytes(tokens: &[u32]) -> Vec<u8> {
    tokens.iter().flat_map(|t| t.to_le_bytes()).collect()
}

/// Appends the hashes of every full block of `tokens` to `out`, chaining from `parent`
/// (the namespace seed for a fresh prompt, or the last hash of an already hashed prefix).
/// Returns the number of tokens left over in the partial last block.
pub fn extend_block_hashes(
    parent: u64,
    tokens: &[u32],
    block_size: usize,
    out: &mut Vec<BlockHash>,
) -> usize {
    assert!(block_size > 0, "block_size must be positive");
    let mut prev = parent;
    let chunks = tokens.chunks_exact(block_size);
    let rest = chunks.remainder().len();
    out.reserve(tokens.len() / block_size);
    for block in chunks {
        let h = chain_hash(prev, block);
        out.push(h);
        prev = h.0;
    }
    rest
}

/// The block hashes of a whole prompt.
pub fn block_hashes(seed: u64, tokens: &[u32], block_size: usize) -> Vec<BlockHash> {
    let mut out = Vec::new();
    extend_block_hashes(seed, tokens, block_size, &mut out);
    out
}

/// Incremental hasher for a token stream that arrives in pieces (for example a chat rendered
/// message by message): it keeps the partial tail block and the last full hash.
#[derive(Clone, Debug)]
pub struct BlockHasher {
    block_size: usize,
    last: u64,
    tail: Vec<u32>,
    hashes: Vec<BlockHash>,
}

impl BlockHasher {
    pub fn new(seed: u64, block_size: usize) -> Self {
        assert!(block_size > 0, "block_size must be positive");
        BlockHasher {
            block_size,
            last: seed,
            tail: Vec::with_capacity(block_size),
            hashes: Vec::new(),
        }
    }

    /// Feeds more tokens.
    pub fn update(&mut self, mut tokens: &[u32]) {
        if !self.tail.is_empty() {
            let need = self.block_size - self.tail.len();
            let take = need.min(tokens.len());
            self.tail.extend_from_slice(&tokens[..take]);
            tokens = &tokens[take..];
            if self.tail.len() < self.block_size {
                return;
            }
            let h = chain_hash(self.last, &self.tail);
            self.hashes.push(h);
            self.last = h.0;
            self.tail.clear();
        }
        let rest = extend_block_hashes(self.last, tokens, self.block_size, &mut self.hashes);
        if let Some(h) = self.hashes.last() {
            self.last = h.0;
        }
        self.tail.extend_from_slice(&tokens[tokens.len() - rest..]);
    }

    /// Hashes of the full blocks seen so far.
    pub fn hashes(&self) -> &[BlockHash] {
        &self.hashes
    }

    /// Tokens waiting in the partial last block.
    pub fn pending_tokens(&self) -> usize {
        self.tail.len()
    }
}

/// Chains a sequence of opaque block ids (for example a Mooncake trace's `hash_ids`, each
/// naming one block's content) into our prefix hashes, so traces and live traffic share the
/// index's semantics.
pub fn chain_ids(seed: u64, ids: &[u64], out: &mut Vec<BlockHash>) {
    let mut prev = seed;
    out.reserve(ids.len());
    for &id in ids {
        let h = BlockHash(xxh3_64_with_seed(&id.to_le_bytes(), prev));
        out.push(h);
        prev = h.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Golden vectors: the reporter and the router must compute exactly these. If this test
    /// fails, the hash function changed and every deployed reporter would disagree with the
    /// router: bump the protocol version instead.
    #[test]
    fn golden_vectors() {
        let seed = namespace_seed("meta-llama/Llama-3.1-8B-Instruct", None);
        assert_eq!(seed, GOLDEN_SEED);
        let lora_seed = namespace_seed("meta-llama/Llama-3.1-8B-Instruct", Some("sql-adapter"));
        assert_eq!(lora_seed, GOLDEN_LORA_SEED);
        let tokens: Vec<u32> = (0..40).map(|i| i * 1000 + 7).collect();
        let hashes: Vec<u64> = block_hashes(seed, &tokens, 16)
            .iter()
            .map(|h| h.0)
            .collect();
        assert_eq!(hashes, GOLDEN_BLOCKS_16);
        let mut ids = Vec::new();
        chain_ids(seed, &[0, 1, 2], &mut ids);
        let ids: Vec<u64> = ids.iter().map(|h| h.0).collect();
        assert_eq!(ids, GOLDEN_IDS);
    }

    // Cross-checked with Python's `xxhash` package (xxh3_64_intdigest), an independent
    // implementation of the same spec: see docs/protocol.md.
    const GOLDEN_SEED: u64 = 0x876d_2bd1_b7fd_0246;
    const GOLDEN_LORA_SEED: u64 = 0xc5b8_7680_2b66_94b0;
    const GOLDEN_BLOCKS_16: [u64; 2] = [0x362a_5e58_0402_9637, 0x7627_0d44_fdc0_057b];
    const GOLDEN_IDS: [u64; 3] = [
        0x6ba2_b050_ab9d_bf78,
        0xc89d_8bee_b26a_d575,
        0x18ae_3992_5a3a_b6d2,
    ];

    #[test]
    fn partial_block_is_not_hashed() {
        let seed = namespace_seed("m", None);
        assert!(block_hashes(seed, &[1, 2, 3], 4).is_empty());
        assert_eq!(block_hashes(seed, &[1, 2, 3, 4, 5], 4).len(), 1);
    }

    #[test]
    fn namespaces_separate_models_and_adapters() {
        let tokens = [5u32; 16];
        let a = block_hashes(namespace_seed("a", None), &tokens, 16);
        let b = block_hashes(namespace_seed("b", None), &tokens, 16);
        let a_lora = block_hashes(namespace_seed("a", Some("x")), &tokens, 16);
        assert_ne!(a, b);
        assert_ne!(a, a_lora);
        assert_ne!(
            namespace_seed("ab", Some("c")),
            namespace_seed("a", Some("bc"))
        );
    }

    #[test]
    fn hash_names_the_whole_prefix() {
        let seed = namespace_seed("m", None);
        let x = block_hashes(seed, &[1, 2, 3, 4, 9, 9, 9, 9], 4);
        let y = block_hashes(seed, &[1, 2, 3, 5, 9, 9, 9, 9], 4);
        // Same second block, different first block: the second hashes differ too.
        assert_ne!(x[1], y[1]);
    }

    proptest! {
        #[test]
        fn incremental_equals_one_shot(
            tokens in proptest::collection::vec(any::<u32>(), 0..300),
            cuts in proptest::collection::vec(0usize..300, 0..6),
            block_size in 1usize..40,
        ) {
            let seed = 99;
            let whole = block_hashes(seed, &tokens, block_size);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(tokens.len())).collect();
            cuts.sort_unstable();
            let mut h = BlockHasher::new(seed, block_size);
            let mut start = 0;
            for c in cuts.into_iter().chain(std::iter::once(tokens.len())) {
                h.update(&tokens[start..c]);
                start = c;
            }
            prop_assert_eq!(h.hashes(), &whole[..]);
            prop_assert_eq!(h.pending_tokens(), tokens.len() % block_size);
        }
    }
}
