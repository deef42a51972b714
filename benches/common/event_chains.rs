//! The event-plane bench's synthetic worker caches: what one publisher stores and removes.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use cache_router_core::protocol::{BlockHash, Body};

/// A worker's cache as chains (paths from a root): Stored appends a chain (a new root or an
/// extension of a held chain's leaf); Removed takes leaves off a chain's end, so every held
/// block's parent stays held.
#[derive(Debug)]
pub(crate) struct Chains {
    rng: StdRng,
    chains: Vec<Vec<u64>>,
    pub(crate) held: usize,
    /// Blocks per event.
    pub(crate) len: usize,
    /// Past this many held blocks, the next event is a Removed.
    pub(crate) cap: usize,
}

impl Chains {
    pub(crate) fn new(seed: u64) -> Chains {
        Chains {
            rng: StdRng::seed_from_u64(seed),
            chains: Vec::new(),
            held: 0,
            len: 16,
            cap: usize::MAX,
        }
    }

    pub(crate) fn next_event(&mut self) -> Body {
        if self.held + self.len > self.cap && !self.chains.is_empty() {
            let i = self.rng.random_range(0..self.chains.len());
            let chain = &mut self.chains[i];
            let k = self.len.min(chain.len());
            let blocks: Vec<BlockHash> =
                (0..k).filter_map(|_| chain.pop()).map(BlockHash).collect();
            if chain.is_empty() {
                self.chains.swap_remove(i);
            }
            self.held -= blocks.len();
            return Body::Removed { blocks };
        }
        let new: Vec<u64> = (0..self.len).map(|_| self.rng.random()).collect();
        let blocks = new.iter().copied().map(BlockHash).collect();
        self.held += new.len();
        if !self.chains.is_empty() && self.rng.random_bool(0.5) {
            let i = self.rng.random_range(0..self.chains.len());
            let chain = &mut self.chains[i];
            let parent = chain.last().copied().map(BlockHash);
            chain.extend(new);
            Body::Stored { blocks, parent }
        } else {
            self.chains.push(new);
            Body::Stored {
                blocks,
                parent: None,
            }
        }
    }
}
