//! A worker's held set with parent links and a running digest: the reporter's mirror of its
//! engine, the publisher's ground truth, and what a resync sends.

use std::collections::HashMap;

use super::{Digest, IdBuild};
use crate::protocol::{BlockHash, Body};

/// Held blocks of one worker, each with its parent (None for a chain root).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockSet {
    blocks: HashMap<u64, Option<u64>, IdBuild>,
    digest: Digest,
}

impl BlockSet {
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    pub fn contains(&self, b: BlockHash) -> bool {
        self.blocks.contains_key(&b.0)
    }

    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// Applies a cache event the way the router's index does; `Digest`/`Load` are ignored.
    pub fn apply(&mut self, body: &Body) {
        match body {
            Body::Stored { blocks, parent } => {
                let mut prev = parent.map(|p| p.0);
                for b in blocks {
                    if self.blocks.insert(b.0, prev).is_none() {
                        self.digest.add(b.0);
                    }
                    prev = Some(b.0);
                }
            }
            Body::Removed { blocks } => {
                for b in blocks {
                    if self.blocks.remove(&b.0).is_some() {
                        self.digest.remove(b.0);
                    }
                }
            }
            Body::Cleared => {
                self.blocks.clear();
                self.digest = Digest::default();
            }
            Body::Digest { .. } | Body::Load(_) => {}
        }
    }

    /// `(block, parent)` pairs, in arbitrary order.
    pub fn entries(&self) -> Vec<(BlockHash, Option<BlockHash>)> {
        self.blocks
            .iter()
            .map(|(&b, &p)| (BlockHash(b), p.map(BlockHash)))
            .collect()
    }

    /// Sorted block hashes (for comparisons in tests and tools).
    pub fn sorted_blocks(&self) -> Vec<BlockHash> {
        let mut v: Vec<BlockHash> = self.blocks.keys().map(|&b| BlockHash(b)).collect();
        v.sort_unstable();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_parents_and_digest() {
        let mut s = BlockSet::default();
        s.apply(&Body::Stored {
            blocks: vec![BlockHash(1), BlockHash(2)],
            parent: None,
        });
        s.apply(&Body::Stored {
            blocks: vec![BlockHash(3)],
            parent: Some(BlockHash(2)),
        });
        s.apply(&Body::Removed {
            blocks: vec![BlockHash(1), BlockHash(9)],
        });
        let mut e = s.entries();
        e.sort();
        assert_eq!(
            e,
            vec![
                (BlockHash(2), Some(BlockHash(1))),
                (BlockHash(3), Some(BlockHash(2)))
            ]
        );
        assert_eq!(s.digest(), Digest::of([2, 3]));
        s.apply(&Body::Cleared);
        assert!(s.is_empty());
        assert_eq!(s.digest(), Digest::default());
    }
}
