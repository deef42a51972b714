//! Order-independent digest of a worker's held set: what anti-entropy compares.
//!
//! `checksum = Σ digest_term(h)` (wrapping), `block_count = |set|`. A sum of well-mixed terms
//! can be updated in O(1) per stored or removed block on both sides (reporter and router) and
//! does not depend on the order events arrived in.

/// The term a block contributes: the splitmix64 finalizer, so that near-equal hashes (which
/// ours never are, but other producers' may be) do not cancel out.
#[inline]
pub fn digest_term(h: u64) -> u64 {
    let mut z = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Count and checksum of a held set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Digest {
    pub block_count: u64,
    pub checksum: u64,
}

impl Digest {
    #[inline]
    pub fn add(&mut self, h: u64) {
        self.block_count += 1;
        self.checksum = self.checksum.wrapping_add(digest_term(h));
    }

    #[inline]
    pub fn remove(&mut self, h: u64) {
        self.block_count = self.block_count.saturating_sub(1);
        self.checksum = self.checksum.wrapping_sub(digest_term(h));
    }

    /// The digest of a whole set.
    pub fn of(set: impl IntoIterator<Item = u64>) -> Digest {
        let mut d = Digest::default();
        for h in set {
            d.add(h);
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_independent_and_reversible() {
        let a = Digest::of([1, 2, 3]);
        let b = Digest::of([3, 1, 2]);
        assert_eq!(a, b);
        let mut c = Digest::of([1, 2, 3, 4]);
        c.remove(4);
        assert_eq!(a, c);
        assert_ne!(a, Digest::of([1, 2, 4]));
    }
}
