//! The hierarchical atomic bitmap behind the tracker.
//!
//! Level 0 holds one bit per block in `AtomicU64` words. Each level above
//! holds one bit per word of the level below, set when that word may be
//! non-zero. The top level has a single word. Setting a bit touches a summary
//! only when its word turns from zero to non-zero; taking the set walks down
//! from the top and visits only non-zero words.
//!
//! Why no bit is lost while writers and a taker race: a writer sets the leaf
//! first and then the summary bits, with release ordering; the taker clears a
//! summary word first and then the leaves it pointed at, with acquire
//! ordering. A leaf the taker does not visit was either zero, or is about to
//! get its summary bit set by the writer that made it non-zero, so it stays
//! reachable for the next take. A summary bit may point at a zero word; that
//! costs one wasted visit, never a lost bit.
//!
//! A take is not an instant by itself: a mark racing with it may land in
//! the next take while a later mark lands in this one. What makes a cycle
//! one instant is the protocol around the take (`source::cow`): every mark
//! the take misses is ordered after an announcement made before it, and
//! so is everything its writer does next (docs/ARCHITECTURE.md, "A cut is
//! one instant").

use std::sync::atomic::{AtomicU64, Ordering};

use crate::geometry::set::{word_mask, Word};

pub(crate) struct AtomicBitmap {
    bits: u64,
    /// The leaves, kept apart from `levels` to save an indirection on the
    /// hot path.
    leaves: Box<[AtomicU64]>,
    /// `levels[0]` are the leaves' summary, and so on up; the last level
    /// has exactly one word. Empty when one leaf word holds every bit.
    levels: Vec<Box<[AtomicU64]>>,
}

fn zeroed(n: usize) -> Box<[AtomicU64]> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

impl AtomicBitmap {
    /// A bitmap of `bits` clear bits.
    pub(crate) fn new(bits: u64) -> Self {
        let leaves = bits.div_ceil(64).max(1);
        let mut levels = Vec::new();
        let mut n = leaves;
        while n > 1 {
            n = n.div_ceil(64);
            levels.push(zeroed(n as usize));
        }
        AtomicBitmap {
            bits,
            leaves: zeroed(leaves as usize),
            levels,
        }
    }

    pub(crate) fn bits(&self) -> u64 {
        self.bits
    }

    pub(crate) fn leaf_words(&self) -> usize {
        self.leaves.len()
    }

    /// Sets bits `first .. first + count`; the caller checked the range.
    #[inline]
    pub(crate) fn set_range(&self, first: u64, count: u64) {
        debug_assert!(count > 0 && first + count <= self.bits);
        self.set_span(first, first + count - 1);
    }

    /// Sets bits `first ..= last`; the caller checked the range.
    #[inline]
    pub(crate) fn set_span(&self, first: u64, last: u64) {
        let (fw, lw) = (first >> 6, last >> 6);
        if fw == lw {
            self.set_in_word(fw as usize, word_mask(first & 63, last & 63));
        } else {
            self.set_words(first, last);
        }
    }

    /// The multi-word case of [`set_span`](Self::set_span), kept out of line
    /// so the common one-word mark stays small.
    #[inline(never)]
    fn set_words(&self, first: u64, last: u64) {
        let (fw, lw) = (first >> 6, last >> 6);
        self.set_in_word(fw as usize, word_mask(first & 63, 63));
        for w in fw + 1..lw {
            self.set_in_word(w as usize, u64::MAX);
        }
        self.set_in_word(lw as usize, word_mask(0, last & 63));
    }

    /// ORs `mask` into leaf word `w`. A load first keeps an already dirty
    /// word's cache line shared between cores.
    // The one call on the write path: forced inline, as measured in
    // benches/tracker.rs.
    #[allow(clippy::inline_always)]
    #[inline(always)]
    pub(crate) fn set_in_word(&self, w: usize, mask: u64) {
        let word = &self.leaves[w];
        // Acquire, not relaxed: when the bits were set by a mark that came
        // after a take, this mark is ordered after that take too, so what
        // the caller does next sees what the taker did before it (a
        // cycle's flag; docs/ARCHITECTURE.md, "A cut is one instant"). A
        // plain load on x86.
        if word.load(Ordering::Acquire) & mask == mask {
            return;
        }
        if word.fetch_or(mask, Ordering::AcqRel) == 0 {
            self.set_summary(w);
        }
    }

    #[cold]
    fn set_summary(&self, mut child: usize) {
        for level in &self.levels {
            let prev = level[child >> 6].fetch_or(1 << (child & 63), Ordering::AcqRel);
            if prev != 0 {
                return;
            }
            child >>= 6;
        }
    }

    /// Takes every set bit, leaving the bitmap clear: the non-zero leaf words
    /// in index order. Costs O(non-zero words), not O(bits).
    pub(crate) fn take(&self) -> Vec<Word> {
        let mut out = Vec::new();
        self.walk(self.levels.len(), 0, &mut out, |w| {
            w.swap(0, Ordering::AcqRel)
        });
        out
    }

    /// Reads every set bit without clearing: a moment's view while writers run.
    pub(crate) fn snapshot(&self) -> Vec<Word> {
        let mut out = Vec::new();
        self.walk(self.levels.len(), 0, &mut out, |w| {
            w.load(Ordering::Acquire)
        });
        out
    }

    /// The words of `level` (0: leaves, 1: their summary, ...).
    fn level(&self, level: usize) -> &[AtomicU64] {
        if level == 0 {
            &self.leaves
        } else {
            &self.levels[level - 1]
        }
    }

    fn walk(&self, level: usize, idx: usize, out: &mut Vec<Word>, read: fn(&AtomicU64) -> u64) {
        let mut v = read(&self.level(level)[idx]);
        if level == 0 {
            if v != 0 {
                out.push((idx as u64, v));
            }
            return;
        }
        let below = self.level(level - 1);
        while v != 0 {
            let bit = v.trailing_zeros() as usize;
            v &= v - 1;
            let child = (idx << 6) | bit;
            if level == 1 {
                // Leaves inline: the common case, without the recursion.
                if let Some(w) = below.get(child) {
                    let x = read(w);
                    if x != 0 {
                        out.push((child as u64, x));
                    }
                }
            } else if child < below.len() {
                self.walk(level - 1, child, out, read);
            }
        }
    }

    /// Whether any bit in `first .. first + count` is set (a moment's view).
    pub(crate) fn any_in(&self, first: u64, count: u64) -> bool {
        if count == 0 {
            return false;
        }
        let last = (first + count - 1).min(self.bits.saturating_sub(1));
        let (fw, lw) = (first >> 6, last >> 6);
        (fw..=lw).any(|w| {
            let lo = if w == fw { first & 63 } else { 0 };
            let hi = if w == lw { last & 63 } else { 63 };
            self.leaves[w as usize].load(Ordering::Acquire) & word_mask(lo, hi) != 0
        })
    }

    /// A bitmap of `bits` bits holding this one's bits below `bits`.
    /// Needs `&mut`: no writer may run during a resize.
    pub(crate) fn resized(&mut self, bits: u64) -> AtomicBitmap {
        let new = AtomicBitmap::new(bits);
        for (w, v) in self.take() {
            let first = w << 6;
            if first >= bits {
                break;
            }
            let keep = if bits - first >= 64 {
                v
            } else {
                v & word_mask(0, bits - first - 1)
            };
            if keep != 0 {
                new.set_in_word(w as usize, keep);
            }
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        assert_eq!(word_mask(0, 63), u64::MAX);
        assert_eq!(word_mask(0, 0), 1);
        assert_eq!(word_mask(63, 63), 1 << 63);
        assert_eq!(word_mask(4, 7), 0xf0);
    }

    #[test]
    fn levels_shrink_to_one_word() {
        for bits in [1, 64, 65, 4096, 4097, 1 << 20, (1 << 24) + 3] {
            let b = AtomicBitmap::new(bits);
            assert_eq!(b.level(b.levels.len()).len(), 1, "{bits}");
            assert_eq!(b.leaf_words() as u64, bits.div_ceil(64));
        }
    }

    #[test]
    fn take_after_set_then_empty() {
        let b = AtomicBitmap::new(1 << 20);
        b.set_range(5, 1);
        b.set_range(63, 3);
        b.set_range((1 << 20) - 1, 1);
        assert!(b.any_in(64, 1) && !b.any_in(66, 100));
        let words = b.take();
        assert_eq!(
            words,
            vec![(0, 1 << 5 | 1 << 63), (1, 0b11), ((1 << 14) - 1, 1 << 63)]
        );
        assert!(b.take().is_empty());
        assert!(b.snapshot().is_empty());
    }
}
