//! Immutable sets of blocks of a disk: what a cut took, what a log holds,
//! what differs between two sides. Next to [`Extent`] so the log, the
//! tracker and the replica share it without depending on each other.

use super::Extent;
use crate::error::{Error, Result};

/// One non-zero 64-bit word of a set: its index and its bits.
pub(crate) type Word = (u64, u64);

/// The bits `lo..=hi` of a word.
pub(crate) fn word_mask(lo: u64, hi: u64) -> u64 {
    debug_assert!(lo <= hi && hi < 64);
    (u64::MAX >> (63 - hi)) & (u64::MAX << lo)
}

/// An immutable set of blocks of a disk of [`universe`](BlockSet::universe)
/// blocks, stored as its non-zero 64-bit words so its size is proportional to
/// the blocks it holds, not to the disk.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BlockSet {
    universe: u64,
    words: Vec<Word>,
    count: u64,
}

impl BlockSet {
    /// An empty set over a disk of `universe` blocks.
    pub fn new(universe: u64) -> Self {
        BlockSet {
            universe,
            words: Vec::new(),
            count: 0,
        }
    }

    /// Builds from sorted, non-zero words whose bits lie below `universe`.
    pub(crate) fn from_words(universe: u64, words: Vec<Word>) -> Self {
        debug_assert!(words.windows(2).all(|w| w[0].0 < w[1].0));
        debug_assert!(words.iter().all(|&(_, v)| v != 0));
        let count = words.iter().map(|&(_, v)| u64::from(v.count_ones())).sum();
        BlockSet {
            universe,
            words,
            count,
        }
    }

    /// The set of the blocks in `extents` (any order, overlaps allowed).
    pub fn from_extents(universe: u64, extents: impl IntoIterator<Item = Extent>) -> Result<Self> {
        let mut words: Vec<Word> = Vec::new();
        for e in extents {
            if e.count == 0
                || e.start
                    .checked_add(e.count)
                    .is_none_or(|end| end > universe)
            {
                return Err(Error::out_of_range(format!(
                    "extent of {} blocks from {} is empty or outside a {universe}-block disk",
                    e.count, e.start
                )));
            }
            let last = e.end() - 1;
            for w in e.start >> 6..=last >> 6 {
                let lo = if w == e.start >> 6 { e.start & 63 } else { 0 };
                let hi = if w == last >> 6 { last & 63 } else { 63 };
                words.push((w, word_mask(lo, hi)));
            }
        }
        words.sort_unstable_by_key(|&(w, _)| w);
        words.dedup_by(|b, a| {
            if a.0 == b.0 {
                a.1 |= b.1;
                true
            } else {
                false
            }
        });
        Ok(Self::from_words(universe, words))
    }

    /// The set of the given blocks (any order, repeats allowed).
    pub fn from_blocks(universe: u64, blocks: impl IntoIterator<Item = u64>) -> Result<Self> {
        Self::from_extents(universe, blocks.into_iter().map(|b| Extent::new(b, 1)))
    }

    /// The number of blocks of the disk the set is over.
    pub fn universe(&self) -> u64 {
        self.universe
    }

    /// The number of blocks in the set.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Whether the set holds no block.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether `block` is in the set.
    pub fn contains(&self, block: u64) -> bool {
        match self.words.binary_search_by_key(&(block >> 6), |&(w, _)| w) {
            Ok(i) => self.words[i].1 & (1 << (block & 63)) != 0,
            Err(_) => false,
        }
    }

    /// The blocks as maximal runs of consecutive blocks, in order.
    pub fn extents(&self) -> Extents<'_> {
        Extents {
            words: &self.words,
            next: 0,
            cur: (0, 0),
        }
    }

    /// The runs of blocks at or after `block`, in order; a run that starts
    /// before `block` is cut to start there.
    pub fn extents_from(&self, block: u64) -> Extents<'_> {
        let i = self.words.partition_point(|&(w, _)| w < block >> 6);
        let mut it = Extents {
            words: &self.words,
            next: i,
            cur: (0, 0),
        };
        if let Some(&(w, v)) = self.words.get(i) {
            if w == block >> 6 {
                it.cur = (w, v & (u64::MAX << (block & 63)));
                it.next = i + 1;
            }
        }
        it
    }

    /// Every block in the set, in order.
    pub fn blocks(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().flat_map(|&(w, v)| {
            let mut v = v;
            std::iter::from_fn(move || {
                (v != 0).then(|| {
                    let b = u64::from(v.trailing_zeros());
                    v &= v - 1;
                    (w << 6) | b
                })
            })
        })
    }

    /// The blocks in either set, over the larger universe.
    pub fn union(&self, other: &BlockSet) -> BlockSet {
        self.merge(other, |a, b| a | b, true)
    }

    /// The blocks in both sets.
    pub fn intersection(&self, other: &BlockSet) -> BlockSet {
        self.merge(other, |a, b| a & b, false)
    }

    /// The blocks in this set and not in `other`.
    pub fn difference(&self, other: &BlockSet) -> BlockSet {
        let mut out = Vec::with_capacity(self.words.len());
        let mut j = 0;
        for &(w, v) in &self.words {
            while j < other.words.len() && other.words[j].0 < w {
                j += 1;
            }
            let o = match other.words.get(j) {
                Some(&(ow, ov)) if ow == w => ov,
                _ => 0,
            };
            if v & !o != 0 {
                out.push((w, v & !o));
            }
        }
        BlockSet::from_words(self.universe, out)
    }

    fn merge(&self, other: &BlockSet, op: fn(u64, u64) -> u64, keep_lone: bool) -> BlockSet {
        let (a, b) = (&self.words, &other.words);
        let mut out = Vec::with_capacity(a.len().max(b.len()));
        let (mut i, mut j) = (0, 0);
        let lone = |v: u64| if keep_lone { v } else { 0 };
        loop {
            let (w, v) = match (a.get(i), b.get(j)) {
                (Some(&(x, xv)), Some(&(y, yv))) if x == y => {
                    i += 1;
                    j += 1;
                    (x, op(xv, yv))
                }
                (Some(&(x, xv)), Some(&(y, _))) if x < y => {
                    i += 1;
                    (x, lone(xv))
                }
                (Some(&(x, xv)), None) => {
                    i += 1;
                    (x, lone(xv))
                }
                (_, Some(&(y, yv))) => {
                    j += 1;
                    (y, lone(yv))
                }
                (None, None) => break,
            };
            if v != 0 {
                out.push((w, v));
            }
        }
        BlockSet::from_words(self.universe.max(other.universe), out)
    }

    /// The non-zero words, in index order.
    pub(crate) fn words(&self) -> &[Word] {
        &self.words
    }

    /// An index over the set's words for [`BucketIndex::contains`]: a
    /// membership test in constant expected time, where
    /// [`contains`](Self::contains) searches the words.
    pub(crate) fn bucket_index(&self) -> BucketIndex {
        // About one bucket per word: a lookup scans a word or two.
        let universe_words = self.universe.div_ceil(64).max(1);
        let n = (self.words.len() as u64).max(1);
        let mut shift = 0;
        while (universe_words >> shift) > n.next_power_of_two() {
            shift += 1;
        }
        let buckets = (universe_words >> shift) + 2;
        let mut starts = Vec::with_capacity(buckets as usize);
        let mut j = 0;
        for b in 0..buckets {
            while j < self.words.len() && self.words[j].0 >> shift < b {
                j += 1;
            }
            starts.push(j as u32);
        }
        BucketIndex { shift, starts }
    }
}

/// Where each bucket of words starts in a [`BlockSet`]'s words (built by
/// [`BlockSet::bucket_index`]).
#[derive(Debug, Clone)]
pub(crate) struct BucketIndex {
    shift: u32,
    starts: Vec<u32>,
}

impl BucketIndex {
    /// Whether `set` (the set this index was built from) holds `block`.
    pub(crate) fn contains(&self, set: &BlockSet, block: u64) -> bool {
        let w = block >> 6;
        let b = (w >> self.shift) as usize;
        let (Some(&lo), Some(&hi)) = (self.starts.get(b), self.starts.get(b + 1)) else {
            return false;
        };
        set.words[lo as usize..hi as usize]
            .iter()
            .find(|&&(x, _)| x == w)
            .is_some_and(|&(_, v)| v & (1 << (block & 63)) != 0)
    }
}

/// Iterator over the maximal runs of a [`BlockSet`].
#[derive(Debug, Clone)]
pub struct Extents<'a> {
    words: &'a [Word],
    next: usize,
    /// The word being consumed and its bits not yet handed out.
    cur: Word,
}

impl Iterator for Extents<'_> {
    type Item = Extent;

    fn next(&mut self) -> Option<Extent> {
        while self.cur.1 == 0 {
            self.cur = *self.words.get(self.next)?;
            self.next += 1;
        }
        let (w, v) = self.cur;
        let lo = u64::from(v.trailing_zeros());
        let ones = u64::from((!(v >> lo)).trailing_zeros()); // 64 - lo when it runs to bit 63
        let start = (w << 6) | lo;
        if lo + ones < 64 {
            self.cur.1 = v & !word_mask(lo, lo + ones - 1);
            return Some(Extent::new(start, ones));
        }
        // The run reaches the word's top bit: follow it into the next words.
        let mut end = (w + 1) << 6;
        self.cur.1 = 0;
        while let Some(&(nw, nv)) = self.words.get(self.next) {
            if nw != end >> 6 || nv & 1 == 0 {
                break;
            }
            self.next += 1;
            let ones = u64::from((!nv).trailing_zeros());
            end += ones;
            if ones < 64 {
                self.cur = (nw, nv & !word_mask(0, ones - 1));
                break;
            }
        }
        Some(Extent::new(start, end - start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(s: &BlockSet) -> Vec<(u64, u64)> {
        s.extents().map(|e| (e.start, e.count)).collect()
    }

    #[test]
    fn the_bucket_index_agrees_with_contains() {
        for (universe, step) in [
            (1u64, 1u64),
            (100, 3),
            (1 << 20, 977),
            (1 << 20, 1),
            (5000, 4999),
        ] {
            let set = BlockSet::from_extents(
                universe,
                (0..universe)
                    .step_by(step as usize)
                    .map(|b| Extent::new(b, 1)),
            )
            .unwrap();
            let idx = set.bucket_index();
            for b in (0..universe)
                .step_by(((universe / 5000) as usize).max(1))
                .chain([universe - 1])
            {
                assert_eq!(
                    idx.contains(&set, b),
                    set.contains(b),
                    "{universe} {step} {b}"
                );
            }
            assert!(!idx.contains(&set, universe + 64 * 1000));
        }
        let empty = BlockSet::new(1000);
        assert!(!empty.bucket_index().contains(&empty, 5));
    }

    #[test]
    fn extents_coalesce_across_words() {
        let s = BlockSet::from_extents(
            1000,
            [
                Extent::new(60, 200),
                Extent::new(3, 2),
                Extent::new(260, 1),
                Extent::new(400, 64),
            ],
        )
        .unwrap();
        assert_eq!(ext(&s), vec![(3, 2), (60, 201), (400, 64)]);
        assert_eq!(s.count(), 2 + 201 + 64);
        let from: Vec<_> = s.extents_from(100).map(|e| (e.start, e.count)).collect();
        assert_eq!(from, vec![(100, 161), (400, 64)]);
        assert_eq!(s.extents_from(999).count(), 0);
        assert!(s.contains(260) && !s.contains(261) && !s.contains(999));
    }

    #[test]
    fn set_algebra() {
        let a = BlockSet::from_blocks(200, [1, 2, 3, 100, 150]).unwrap();
        let b = BlockSet::from_blocks(300, [3, 4, 150, 250]).unwrap();
        let u: Vec<_> = a.union(&b).blocks().collect();
        assert_eq!(u, vec![1, 2, 3, 4, 100, 150, 250]);
        assert_eq!(a.union(&b).universe(), 300);
        let i: Vec<_> = a.intersection(&b).blocks().collect();
        assert_eq!(i, vec![3, 150]);
        let d: Vec<_> = a.difference(&b).blocks().collect();
        assert_eq!(d, vec![1, 2, 100]);
    }

    #[test]
    fn bad_extents_are_errors() {
        assert!(BlockSet::from_extents(10, [Extent::new(9, 2)]).is_err());
        assert!(BlockSet::from_extents(10, [Extent::new(0, 0)]).is_err());
        assert!(BlockSet::from_extents(10, [Extent::new(u64::MAX, 2)]).is_err());
    }
}
