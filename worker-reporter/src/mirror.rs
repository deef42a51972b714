//! The reporter's mirror of the engine's cache: engine block hash → our chained hash.
//!
//! vLLM's block hashes are its own (sha256/xxh3 over its own key layout, per-process seeded
//! with `PYTHONHASHSEED` in some versions), so the router cannot use them. `BlockStored`
//! carries the token ids and the parent, which is enough to compute *our* chained hash; the
//! mirror remembers the pair so that `BlockRemoved`, which carries only engine hashes, can be
//! translated. I/O-free: one call per engine event, returning our protocol's body.
//!
//! Deliberate choices:
//! - Only the GPU tier is reported (`medium` absent or `"GPU"`): the router's cost model is
//!   "prefill work the engine skips", and a CPU/disk-tier block still costs a load; such
//!   events are counted and skipped.
//! - Only KV-cache group 0 (`group_idx` absent or 0): hybrid models store the same prefix
//!   once per group; group 0 is the full-attention one.
//! - Blocks whose content is not determined by their tokens (multimodal inputs, cache salt,
//!   prompt embeds in `extra_keys`) cannot be matched by a text-only router; they and the
//!   rest of their event are skipped, so their children become unknown parents and are
//!   skipped too (counted as orphans).

use std::collections::HashMap;

use cache_router_core::hashing::{chain_hash, namespace_seed};
use cache_router_core::kv_events::{BlockRemoved, BlockStored, EngineHash, KvEvent};
use cache_router_core::protocol::{BlockHash, Body};

/// Why events or blocks were not reported (exported as counters in logs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Skipped {
    pub non_gpu_medium: u64,
    pub other_group: u64,
    pub extra_keys: u64,
    pub orphan_parent: u64,
    pub bad_token_count: u64,
    pub unknown_removed: u64,
    pub unknown_event: u64,
}

#[derive(Debug)]
pub(crate) struct Mirror {
    model: String,
    block_size: usize,
    map: HashMap<EngineHash, BlockHash>,
    /// Upper bound on entries (a few times the engine's block count); beyond it new blocks are
    /// not mirrored, so lost `BlockRemoved` events cannot grow memory without bound.
    max_entries: usize,
    pub skipped: Skipped,
}

fn is_gpu(medium: &Option<String>) -> bool {
    medium
        .as_deref()
        .is_none_or(|m| m.eq_ignore_ascii_case("gpu"))
}

impl Mirror {
    pub(crate) fn new(model: impl Into<String>, block_size: usize, max_entries: usize) -> Self {
        Mirror {
            model: model.into(),
            block_size: block_size.max(1),
            map: HashMap::new(),
            max_entries,
            skipped: Skipped::default(),
        }
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Forgets everything (engine restart or cleared cache).
    pub(crate) fn clear(&mut self) {
        self.map.clear();
    }

    /// Translates one engine event into our body (`None` when nothing is to be reported).
    pub(crate) fn apply(&mut self, event: &KvEvent) -> Option<Body> {
        match event {
            KvEvent::BlockStored(s) => self.stored(s),
            KvEvent::BlockRemoved(r) => self.removed(r),
            KvEvent::AllBlocksCleared => {
                self.map.clear();
                Some(Body::Cleared)
            }
            KvEvent::Unknown { .. } => {
                self.skipped.unknown_event += 1;
                None
            }
        }
    }

    /// Whether an event of this tier and KV group is reported (see the module docs); counts
    /// the ones that are not.
    fn reported(&mut self, medium: &Option<String>, group_idx: Option<u32>) -> bool {
        if !is_gpu(medium) {
            self.skipped.non_gpu_medium += 1;
            return false;
        }
        if group_idx.is_some_and(|g| g != 0) {
            self.skipped.other_group += 1;
            return false;
        }
        true
    }

    fn stored(&mut self, s: &BlockStored) -> Option<Body> {
        if !self.reported(&s.medium, s.group_idx) {
            return None;
        }
        let bs = self.block_size;
        if s.token_ids.len() != s.block_hashes.len() * bs {
            // A different block size than ours (or a malformed event): our hashes would not
            // match the router's, so report nothing rather than something wrong.
            self.skipped.bad_token_count += 1;
            return None;
        }
        let (mut prev, parent) = match &s.parent_block_hash {
            None => (namespace_seed(&self.model, s.lora_name.as_deref()), None),
            Some(p) => match self.map.get(p) {
                Some(ours) => (ours.0, Some(*ours)),
                None => {
                    self.skipped.orphan_parent += 1;
                    return None;
                }
            },
        };
        let mut blocks = Vec::with_capacity(s.block_hashes.len());
        for (i, (engine, tokens)) in s
            .block_hashes
            .iter()
            .zip(s.token_ids.chunks_exact(bs))
            .enumerate()
        {
            if s.extra_keys
                .as_ref()
                .is_some_and(|e| e.get(i).copied().unwrap_or(false))
            {
                self.skipped.extra_keys += 1;
                break;
            }
            let h = chain_hash(prev, tokens);
            if self.map.len() < self.max_entries || self.map.contains_key(engine) {
                self.map.insert(engine.clone(), h);
            }
            blocks.push(h);
            prev = h.0;
        }
        (!blocks.is_empty()).then_some(Body::Stored { blocks, parent })
    }

    fn removed(&mut self, r: &BlockRemoved) -> Option<Body> {
        if !self.reported(&r.medium, r.group_idx) {
            return None;
        }
        let mut blocks = Vec::with_capacity(r.block_hashes.len());
        for engine in &r.block_hashes {
            match self.map.remove(engine) {
                Some(h) => blocks.push(h),
                None => self.skipped.unknown_removed += 1,
            }
        }
        (!blocks.is_empty()).then_some(Body::Removed { blocks })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cache_router_core::hashing::block_hashes;

    fn stored(hashes: &[u64], parent: Option<u64>, tokens: Vec<u32>) -> KvEvent {
        KvEvent::BlockStored(BlockStored {
            block_hashes: hashes.iter().map(|&h| EngineHash::Int(h)).collect(),
            parent_block_hash: parent.map(EngineHash::Int),
            token_ids: tokens,
            block_size: 4,
            medium: Some("GPU".into()),
            ..Default::default()
        })
    }

    #[test]
    fn chained_stores_match_the_routers_prompt_hashes() {
        let mut m = Mirror::new("m", 4, 100);
        let tokens: Vec<u32> = (0..12).collect();
        let want = block_hashes(namespace_seed("m", None), &tokens, 4);
        let a = m
            .apply(&stored(&[u64::MAX, 7], None, tokens[..8].to_vec()))
            .unwrap();
        assert_eq!(
            a,
            Body::Stored {
                blocks: want[..2].to_vec(),
                parent: None
            }
        );
        let b = m
            .apply(&stored(&[9], Some(7), tokens[8..].to_vec()))
            .unwrap();
        assert_eq!(
            b,
            Body::Stored {
                blocks: want[2..].to_vec(),
                parent: Some(want[1])
            }
        );
        let removed = KvEvent::BlockRemoved(BlockRemoved {
            block_hashes: vec![EngineHash::Int(9), EngineHash::Int(12345)],
            medium: Some("GPU".into()),
            group_idx: None,
        });
        assert_eq!(
            m.apply(&removed),
            Some(Body::Removed {
                blocks: vec![want[2]]
            })
        );
        assert_eq!(m.skipped.unknown_removed, 1);
        assert_eq!(m.apply(&KvEvent::AllBlocksCleared), Some(Body::Cleared));
        assert!(m.is_empty());
    }

    #[test]
    fn other_tiers_groups_orphans_and_extra_keys_are_skipped_and_counted() {
        let mut m = Mirror::new("m", 4, 100);
        let mut cpu = stored(&[1], None, vec![1, 2, 3, 4]);
        if let KvEvent::BlockStored(s) = &mut cpu {
            s.medium = Some("CPU".into());
        }
        assert_eq!(m.apply(&cpu), None);
        assert_eq!(m.apply(&stored(&[2], Some(99), vec![1, 2, 3, 4])), None);
        let mut salted = stored(&[3, 4], None, (0..8).collect());
        if let KvEvent::BlockStored(s) = &mut salted {
            s.extra_keys = Some(vec![false, true]);
        }
        match m.apply(&salted) {
            Some(Body::Stored { blocks, .. }) => assert_eq!(blocks.len(), 1),
            other => panic!("expected one stored block, got {other:?}"),
        }
        assert_eq!(m.apply(&stored(&[5], Some(4), vec![1, 2, 3, 4])), None);
        assert_eq!(m.apply(&stored(&[6], None, vec![1, 2, 3])), None);
        let s = m.skipped;
        assert_eq!(
            (
                s.non_gpu_medium,
                s.orphan_parent,
                s.extra_keys,
                s.bad_token_count
            ),
            (1, 2, 1, 1)
        );
    }

    #[test]
    fn lora_blocks_use_the_adapters_namespace() {
        let mut m = Mirror::new("m", 4, 100);
        let mut ev = stored(&[1], None, vec![1, 2, 3, 4]);
        if let KvEvent::BlockStored(s) = &mut ev {
            s.lora_name = Some("ad".into());
        }
        let want = block_hashes(namespace_seed("m", Some("ad")), &[1, 2, 3, 4], 4);
        assert_eq!(
            m.apply(&ev),
            Some(Body::Stored {
                blocks: want,
                parent: None
            })
        );
    }
}
