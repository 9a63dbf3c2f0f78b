//! I/O started early. Read-ahead for scattered reads in a known order (a
//! cycle reading its dirty blocks, an apply reading the blocks its undo
//! log saves): small random reads that would otherwise wait for the disk
//! one at a time; hinting the next ones ([`Advice::WillRead`]) lets the
//! disk serve many at once. Write-behind for long writes synced at their
//! end (an image made from a full log or a disk): without it the kernel
//! may hold gigabytes dirty until the sync (its background threshold is a
//! tenth of memory), so the disk writes nothing while the copy reads and
//! everything at the sync.

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

/// Bytes written between two starts of write-back.
const WRITE_BEHIND: u64 = 32 << 20;

/// Starts the write-back of what was written to a storage, every
/// [`WRITE_BEHIND`] bytes ([`Advice::WriteBack`]), so the final sync
/// finds little left to write.
pub(crate) struct WriteBehind<'a> {
    storage: &'a dyn Storage,
    /// The span written since the last start, and its bytes.
    span: Option<(u64, u64)>,
    bytes: u64,
}

impl<'a> WriteBehind<'a> {
    /// Write-behind for writes to `storage`.
    pub(crate) fn new(storage: &'a dyn Storage) -> Self {
        WriteBehind {
            storage,
            span: None,
            bytes: 0,
        }
    }

    /// Call after writing `len` bytes at `offset`.
    pub(crate) fn wrote(&mut self, offset: u64, len: u64) {
        let end = offset + len;
        let (lo, hi) = self
            .span
            .map_or((offset, end), |(lo, hi)| (lo.min(offset), hi.max(end)));
        self.bytes += len;
        if self.bytes >= WRITE_BEHIND {
            self.storage.advise(Advice::WriteBack, lo, hi - lo);
            self.span = None;
            self.bytes = 0;
        } else {
            self.span = Some((lo, hi));
        }
    }
}
