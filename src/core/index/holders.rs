//! The set of workers holding one block, packed into 8 bytes.
//!
//! Most blocks are held by one or two workers (a cache-aware router concentrates prefixes),
//! so the set lives inline in a `u64`: two 32-bit slots, each a worker slot (15 bits) and the
//! number of that worker's held children of this block (16 bits). Sets of three or more
//! workers spill into a side arena, and the `u64` then stores the arena index with the top bit
//! set. Spilled lists are kept sorted by worker, so membership in a block held by a thousand
//! workers is a binary search, not a scan. Keeping the map's value at 16 bytes (parent + holders) is what keeps memory per entry
//! low; see `benches/core.rs` for the measured figure.

/// A worker's dense slot in the index (0..=[`MAX_WORKER_SLOT`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerIdx(u16);

/// The highest usable worker slot: slots are 15 bits so an inline slot's top bit stays free.
pub const MAX_WORKER_SLOT: u16 = 0x7FFE;

impl WorkerIdx {
    /// `None` past [`MAX_WORKER_SLOT`].
    pub fn new(slot: u32) -> Option<WorkerIdx> {
        (slot <= u32::from(MAX_WORKER_SLOT)).then_some(WorkerIdx(slot as u16))
    }

    pub fn get(self) -> usize {
        self.0 as usize
    }
}

/// One holder: a worker and how many blocks whose parent is this block that worker holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Holder {
    pub(crate) worker: u16,
    pub(crate) children: u16,
}

const EMPTY_SLOT: u32 = 0x7FFF_FFFF;
const SPILLED: u64 = 1 << 63;

impl Holder {
    fn pack(self) -> u32 {
        (u32::from(self.worker) << 16) | u32::from(self.children)
    }
    fn unpack(v: u32) -> Option<Holder> {
        (v != EMPTY_SLOT).then_some(Holder {
            worker: (v >> 16) as u16,
            children: v as u16,
        })
    }
}

/// Packed holder set; meaningful only together with the [`Spill`] arena that owns its
/// overflow lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Holders(u64);

/// Arena for holder sets of three or more workers, with a free list so slots are reused.
#[derive(Debug, Default)]
pub(crate) struct Spill {
    lists: Vec<Vec<Holder>>,
    free: Vec<u32>,
}

impl Spill {
    pub(crate) fn bytes(&self) -> usize {
        self.lists.capacity() * std::mem::size_of::<Vec<Holder>>()
            + self
                .lists
                .iter()
                .map(|l| l.capacity() * std::mem::size_of::<Holder>())
                .sum::<usize>()
            + self.free.capacity() * 4
    }
}

impl Holders {
    pub(crate) const EMPTY: Holders = Holders(((EMPTY_SLOT as u64) << 32) | EMPTY_SLOT as u64);

    fn spill_index(self) -> Option<usize> {
        (self.0 & SPILLED != 0).then_some((self.0 & 0xFFFF_FFFF) as usize)
    }

    fn inline(self) -> [Option<Holder>; 2] {
        [
            Holder::unpack(self.0 as u32),
            Holder::unpack((self.0 >> 32) as u32),
        ]
    }

    fn from_inline(a: Option<Holder>, b: Option<Holder>) -> Holders {
        let lo = a.map_or(EMPTY_SLOT, Holder::pack);
        let hi = b.map_or(EMPTY_SLOT, Holder::pack);
        Holders((u64::from(hi) << 32) | u64::from(lo))
    }

    pub(crate) fn is_empty(self) -> bool {
        self == Holders::EMPTY
    }

    /// Calls `f` for each holder.
    #[inline]
    pub(crate) fn for_each(self, spill: &Spill, mut f: impl FnMut(Holder)) {
        match self.spill_index() {
            Some(i) => spill.lists[i].iter().copied().for_each(f),
            None => {
                let [a, b] = self.inline();
                if let Some(a) = a {
                    f(a);
                }
                if let Some(b) = b {
                    f(b);
                }
            }
        }
    }

    /// The holders sorted by worker when spilled; None when inline (at most two).
    #[inline]
    pub(crate) fn sorted(self, spill: &Spill) -> Option<&[Holder]> {
        self.spill_index().map(|i| spill.lists[i].as_slice())
    }

    #[cfg(test)]
    pub(crate) fn len(self, spill: &Spill) -> usize {
        match self.spill_index() {
            Some(i) => spill.lists[i].len(),
            None => self.inline().iter().flatten().count(),
        }
    }

    pub(crate) fn get(self, spill: &Spill, worker: u16) -> Option<Holder> {
        match self.spill_index() {
            Some(i) => spill.lists[i].iter().copied().find(|h| h.worker == worker),
            None => self
                .inline()
                .into_iter()
                .flatten()
                .find(|h| h.worker == worker),
        }
    }

    /// Applies `f` to `worker`'s holder; returns false if `worker` is not a holder.
    pub(crate) fn update(
        &mut self,
        spill: &mut Spill,
        worker: u16,
        f: impl FnOnce(&mut Holder),
    ) -> bool {
        match self.spill_index() {
            Some(i) => {
                let list = &mut spill.lists[i];
                match list.binary_search_by_key(&worker, |h| h.worker) {
                    Ok(p) => {
                        f(&mut list[p]);
                        true
                    }
                    Err(_) => false,
                }
            }
            None => {
                let [mut a, mut b] = self.inline();
                let hit = match (&mut a, &mut b) {
                    (Some(h), _) if h.worker == worker => h,
                    (_, Some(h)) if h.worker == worker => h,
                    _ => return false,
                };
                f(hit);
                *self = Holders::from_inline(a, b);
                true
            }
        }
    }

    /// Adds a holder that is known not to be present.
    pub(crate) fn insert(&mut self, spill: &mut Spill, h: Holder) {
        match self.spill_index() {
            Some(i) => {
                let list = &mut spill.lists[i];
                let p = list.partition_point(|x| x.worker < h.worker);
                list.insert(p, h);
            }
            None => match self.inline() {
                [None, None] => *self = Holders::from_inline(Some(h), None),
                [Some(a), None] => *self = Holders::from_inline(Some(a), Some(h)),
                [None, Some(b)] => *self = Holders::from_inline(Some(h), Some(b)),
                [Some(a), Some(b)] => {
                    let mut list = vec![a, b, h];
                    list.sort_unstable_by_key(|x| x.worker);
                    let idx = match spill.free.pop() {
                        Some(idx) => {
                            spill.lists[idx as usize] = list;
                            idx
                        }
                        None => {
                            spill.lists.push(list);
                            (spill.lists.len() - 1) as u32
                        }
                    };
                    *self = Holders(SPILLED | u64::from(idx));
                }
            },
        }
    }

    /// Removes `worker`; returns its holder if it was present.
    pub(crate) fn remove(&mut self, spill: &mut Spill, worker: u16) -> Option<Holder> {
        match self.spill_index() {
            Some(i) => {
                let list = &mut spill.lists[i];
                let pos = list.binary_search_by_key(&worker, |h| h.worker).ok()?;
                let removed = list.remove(pos);
                if list.len() <= 2 {
                    let a = list.first().copied();
                    let b = list.get(1).copied();
                    spill.lists[i] = Vec::new();
                    spill.free.push(i as u32);
                    *self = Holders::from_inline(a, b);
                }
                Some(removed)
            }
            None => {
                let [a, b] = self.inline();
                match (a, b) {
                    (Some(x), rest) if x.worker == worker => {
                        *self = Holders::from_inline(rest, None);
                        Some(x)
                    }
                    (rest, Some(x)) if x.worker == worker => {
                        *self = Holders::from_inline(rest, None);
                        Some(x)
                    }
                    _ => None,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workers(h: Holders, spill: &Spill) -> Vec<u16> {
        let mut v = Vec::new();
        h.for_each(spill, |x| v.push(x.worker));
        v.sort_unstable();
        v
    }

    #[test]
    fn grows_spills_and_shrinks_back() {
        let mut spill = Spill::default();
        let mut h = Holders::EMPTY;
        assert!(h.is_empty());
        for w in [3u16, MAX_WORKER_SLOT, 0, 9] {
            h.insert(
                &mut spill,
                Holder {
                    worker: w,
                    children: 0,
                },
            );
        }
        assert_eq!(workers(h, &spill), vec![0, 3, 9, MAX_WORKER_SLOT]);
        assert!(h.update(&mut spill, 9, |x| x.children = 65535));
        assert_eq!(h.get(&spill, 9).unwrap().children, 65535);
        assert_eq!(h.remove(&mut spill, 3).unwrap().worker, 3);
        assert_eq!(h.remove(&mut spill, 3), None);
        assert_eq!(h.len(&spill), 3);
        assert_eq!(
            h.remove(&mut spill, MAX_WORKER_SLOT).unwrap().worker,
            MAX_WORKER_SLOT
        );
        // Back to two holders: inline again, spill slot freed.
        assert_eq!(workers(h, &spill), vec![0, 9]);
        assert_eq!(spill.free.len(), 1);
        assert_eq!(h.get(&spill, 9).unwrap().children, 65535);
        h.remove(&mut spill, 9);
        h.remove(&mut spill, 0);
        assert!(h.is_empty());
        assert_eq!(h.len(&spill), 0);
    }
}
