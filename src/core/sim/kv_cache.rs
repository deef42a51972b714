//! A paged prefix KV cache with vLLM's semantics, shared by the simulator and the mock engine.
//!
//! - A request is admitted when its blocks fit: the leading run of cached blocks is reused
//!   (and pinned), the rest are allocated, evicting unpinned cached blocks least recently freed
//!   first. Blocks referenced by a running request are pinned and never evicted.
//! - When a request finishes its blocks are unpinned but stay cached; they are queued for
//!   eviction tail first (a prompt's last block is freed before its first), as vLLM's free
//!   block queue does, so a shared prefix outlives its continuations.
//! - Every change is reported as our protocol's bodies: `Removed` when blocks are evicted,
//!   `Stored` once a request's new blocks are computed.

use std::collections::{BTreeMap, HashMap};

use crate::protocol::{BlockHash, Body};

#[derive(Clone, Copy, Debug)]
struct Slot {
    refs: u32,
    /// Position in the eviction queue while unpinned.
    free_tick: Option<u64>,
}

/// A request's hold on the cache between admission and release.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admission {
    /// Leading blocks that were already cached (prefill skips them).
    pub hit_blocks: usize,
    /// Blocks newly allocated for this request (to be announced as `Stored` once computed).
    pub new_blocks: usize,
}

/// The cache of one simulated engine.
#[derive(Debug)]
pub struct KvCache {
    capacity: usize,
    slots: HashMap<u64, Slot>,
    free: BTreeMap<u64, u64>,
    tick: u64,
    evictions: u64,
}

impl KvCache {
    pub fn new(capacity_blocks: usize) -> Self {
        KvCache {
            capacity: capacity_blocks,
            slots: HashMap::new(),
            free: BTreeMap::new(),
            tick: 0,
            evictions: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Blocks cached (pinned or not).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Blocks evicted so far.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Blocks pinned by running requests.
    pub fn pinned(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Cached block hashes (for comparing with the router's index).
    pub fn blocks(&self) -> impl Iterator<Item = BlockHash> + '_ {
        self.slots.keys().map(|&h| BlockHash(h))
    }

    pub fn contains(&self, h: BlockHash) -> bool {
        self.slots.contains_key(&h.0)
    }

    /// Leading blocks of `hashes` that are cached.
    pub fn cached_prefix(&self, hashes: &[BlockHash]) -> usize {
        hashes
            .iter()
            .take_while(|h| self.slots.contains_key(&h.0))
            .count()
    }

    /// Admits a request: pins its cached prefix and allocates the rest, evicting as needed.
    /// Returns `None` (and changes nothing) when pinned blocks leave no room; the caller
    /// retries after a release. Evictions are appended to `events` as one `Removed`.
    pub fn admit(&mut self, hashes: &[BlockHash], events: &mut Vec<Body>) -> Option<Admission> {
        let hit_blocks = self.cached_prefix(hashes);
        let absent = hashes[hit_blocks..]
            .iter()
            .filter(|h| !self.slots.contains_key(&h.0))
            .count();
        // Free-queue blocks this request itself reuses cannot be evicted to make room for it.
        let reused_free = hashes
            .iter()
            .filter(|h| self.slots.get(&h.0).is_some_and(|s| s.free_tick.is_some()))
            .count();
        let evictable = self.free.len() - reused_free;
        let room = self.capacity - self.slots.len();
        if absent > room + evictable {
            return None;
        }
        for h in hashes {
            if let Some(slot) = self.slots.get_mut(&h.0) {
                if let Some(t) = slot.free_tick.take() {
                    self.free.remove(&t);
                }
                slot.refs += 1;
            }
        }
        let mut removed = Vec::new();
        let mut need = absent.saturating_sub(self.capacity - self.slots.len());
        while need > 0 {
            let (_, victim) = self.free.pop_first().expect("checked room above");
            self.slots.remove(&victim);
            removed.push(BlockHash(victim));
            need -= 1;
        }
        self.evictions += removed.len() as u64;
        if !removed.is_empty() {
            events.push(Body::Removed { blocks: removed });
        }
        let mut new_blocks = 0;
        for h in &hashes[hit_blocks..] {
            if let std::collections::hash_map::Entry::Vacant(e) = self.slots.entry(h.0) {
                e.insert(Slot {
                    refs: 1,
                    free_tick: None,
                });
                new_blocks += 1;
            }
        }
        Some(Admission {
            hit_blocks,
            new_blocks,
        })
    }

    /// The `Stored` event for a request's computed blocks: everything past its cached prefix,
    /// as one chain whose parent is the last cached block.
    pub fn stored_event(hashes: &[BlockHash], admission: &Admission) -> Option<Body> {
        let blocks = hashes[admission.hit_blocks..].to_vec();
        (!blocks.is_empty()).then(|| Body::Stored {
            blocks,
            parent: admission.hit_blocks.checked_sub(1).map(|i| hashes[i]),
        })
    }

    /// Unpins a finished request's blocks; they stay cached, queued for eviction tail first.
    pub fn release(&mut self, hashes: &[BlockHash]) {
        for h in hashes.iter().rev() {
            if let Some(slot) = self.slots.get_mut(&h.0) {
                slot.refs = slot.refs.saturating_sub(1);
                if slot.refs == 0 && slot.free_tick.is_none() {
                    self.tick += 1;
                    slot.free_tick = Some(self.tick);
                    self.free.insert(self.tick, h.0);
                }
            }
        }
    }

    /// Drops every unpinned block (vLLM's `reset_prefix_cache`); returns the event.
    pub fn clear_unpinned(&mut self) -> Body {
        let free = std::mem::take(&mut self.free);
        for h in free.values() {
            self.slots.remove(h);
        }
        if self.slots.is_empty() {
            Body::Cleared
        } else {
            Body::Removed {
                blocks: free.into_values().map(BlockHash).collect(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs(v: &[u64]) -> Vec<BlockHash> {
        v.iter().map(|&x| BlockHash(x)).collect()
    }

    #[test]
    fn reuse_pin_evict_tail_first() {
        let mut c = KvCache::new(4);
        let mut ev = Vec::new();
        let a = hs(&[1, 2, 3]);
        let adm = c.admit(&a, &mut ev).unwrap();
        assert_eq!(
            adm,
            Admission {
                hit_blocks: 0,
                new_blocks: 3
            }
        );
        assert_eq!(
            KvCache::stored_event(&a, &adm),
            Some(Body::Stored {
                blocks: a.clone(),
                parent: None
            })
        );
        // Pinned: a second, disjoint 2-block request does not fit (1 free slot).
        assert_eq!(c.admit(&hs(&[7, 8]), &mut ev), None);
        c.release(&a);
        // Now it fits by evicting the tail of `a` first (block 3).
        let adm = c.admit(&hs(&[7, 8]), &mut ev).unwrap();
        assert_eq!(adm.new_blocks, 2);
        assert_eq!(ev, vec![Body::Removed { blocks: hs(&[3]) }]);
        // The shared prefix [1, 2] is still cached and is a hit.
        ev.clear();
        let b = hs(&[1, 2, 9]);
        assert_eq!(c.cached_prefix(&b), 2);
        c.release(&hs(&[7, 8]));
        let adm = c.admit(&b, &mut ev).unwrap();
        assert_eq!(
            adm,
            Admission {
                hit_blocks: 2,
                new_blocks: 1
            }
        );
        assert_eq!(
            KvCache::stored_event(&b, &adm),
            Some(Body::Stored {
                blocks: hs(&[9]),
                parent: Some(BlockHash(2))
            })
        );
        assert!(c.len() <= c.capacity());
    }

    #[test]
    fn a_request_never_evicts_its_own_prefix() {
        let mut c = KvCache::new(3);
        let mut ev = Vec::new();
        let a = hs(&[1, 2]);
        c.admit(&a, &mut ev).unwrap();
        c.release(&a);
        // [1, 2, 3, 4] needs 2 new slots; only 1 is empty and the free ones are its own prefix.
        assert_eq!(c.admit(&hs(&[1, 2, 3, 4]), &mut ev), None);
        assert_eq!(c.admit(&hs(&[1, 2, 3]), &mut ev).unwrap().hit_blocks, 2);
    }
}
