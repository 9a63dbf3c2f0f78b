//! Read-ahead for scattered reads in a known order: a cycle reading its
//! dirty blocks, an apply reading the blocks its undo log saves. Each is a
//! run of small random reads that would otherwise wait for the disk one at
//! a time; hinting the next ones ([`Advice::WillRead`]) lets the disk
//! serve many at once.

use super::{Advice, Storage};

/// Bytes hinted ahead of the read position.
const WINDOW: u64 = 8 << 20;

/// Hints a storage about the ranges about to be read, in their order,
/// [`WINDOW`] bytes ahead of the reads.
pub(crate) struct ReadAhead<'a, I> {
    storage: &'a dyn Storage,
    ranges: I,
    hinted: u64,
    read: u64,
}

impl<'a, I: Iterator<Item = (u64, u64)>> ReadAhead<'a, I> {
    /// Read-ahead over `ranges` (offset, length), the order they will be
    /// read in; nothing is hinted until the first [`advance`](Self::advance).
    pub(crate) fn new(storage: &'a dyn Storage, ranges: I) -> Self {
        ReadAhead {
            storage,
            ranges,
            hinted: 0,
            read: 0,
        }
    }

    /// Call before reading the next `len` bytes of the ranges: hints up to
    /// a window past them.
    pub(crate) fn advance(&mut self, len: u64) {
        self.read += len;
        while self.hinted < self.read + WINDOW {
            let Some((offset, len)) = self.ranges.next() else {
                return;
            };
            self.storage.advise(Advice::WillRead, offset, len);
            self.hinted += len;
        }
    }
}
