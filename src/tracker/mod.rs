//! Change tracking on the primary: which blocks the guest wrote since the
//! last cut.
//!
//! # The contract for integrations
//!
//! * **Mark after the write completes.** Call [`Tracker::mark`] once the
//!   guest write has been acknowledged by the storage, never before. A write
//!   still in flight when a cycle cuts then lands in the next generation, and
//!   the cycle never reads a half-written block as if it were final.
//! * **Record persistent intent before the write is submitted.** With a
//!   [`PersistentTracker`], call [`PersistentTracker::begin_write`] before
//!   submitting and let the returned guard mark on completion, so an unclean
//!   stop between the two is covered by the write-intent map.
//! * **Resize with I/O drained.** [`Tracker::resize`] takes `&mut self`: no
//!   mark may run during a resize, as a hypervisor drains a disk's queue
//!   before resizing it.
//!
//! Marking is lock-free and may run from any number of threads at once, also
//! while another thread cuts.

mod bitmap;
pub(crate) mod open_writes;
mod persistent;
mod set;

pub use crate::geometry::{BlockSet, Extents};
pub use persistent::{
    OpenState, PersistentTracker, TrackerHeader, WriteGuard, INTENT_REGION_DEFAULT,
};
pub use set::FrozenSet;

use crate::error::Result;
use crate::geometry::{Extent, Geometry};
use bitmap::AtomicBitmap;
use std::sync::atomic::{AtomicU64, Ordering};

/// An in-memory dirty-block tracker for one disk.
pub struct Tracker {
    geometry: Geometry,
    bitmap: AtomicBitmap,
    /// The generation that marks go into now; the next cut closes it.
    generation: AtomicU64,
}

impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracker")
            .field("geometry", &self.geometry)
            .field("generation", &self.generation())
            .finish()
    }
}

impl Tracker {
    /// A clean tracker whose first cut closes generation 1.
    pub fn new(geometry: Geometry) -> Self {
        Self::with_generation(geometry, 1)
    }

    /// A clean tracker whose next cut closes `generation`.
    pub fn with_generation(geometry: Geometry, generation: u64) -> Self {
        Tracker {
            geometry,
            bitmap: AtomicBitmap::new(geometry.block_count()),
            generation: AtomicU64::new(generation),
        }
    }

    /// The geometry tracked.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// The generation that new marks go into.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Marks every block that a write of `len` bytes at `offset` touches.
    ///
    /// Lock-free; call after the write completed. A zero length, an
    /// overflowing range or a range past the end of the disk is an error and
    /// marks nothing.
    #[inline]
    pub fn mark(&self, offset: u64, len: u64) -> Result<()> {
        let e = self.geometry.blocks_for_range(offset, len)?;
        self.bitmap.set_span(e.start, e.start + e.count - 1);
        Ok(())
    }

    /// Marks the blocks of `extent`.
    pub fn mark_extent(&self, extent: Extent) -> Result<()> {
        self.geometry.check_extent(extent)?;
        self.bitmap.set_range(extent.start, extent.count);
        Ok(())
    }

    /// Closes the current generation: takes every marked block as a
    /// [`FrozenSet`] and leaves the tracker clean for new marks.
    ///
    /// Writers never wait. The cost is proportional to the dirty words, not
    /// the disk. A mark racing with the cut lands in exactly one generation,
    /// this one or the next.
    pub fn cut(&self) -> FrozenSet {
        let generation = self.generation.fetch_add(1, Ordering::AcqRel);
        let words = self.bitmap.take();
        FrozenSet::new(generation, BlockSet::from_words(self.bitmap.bits(), words))
    }

    /// Hands the blocks of a failed cycle back: ORs `set` into the current
    /// generation. Blocks past the end of a disk that shrank since are gone
    /// and dropped.
    pub fn reclaim(&self, set: &BlockSet) {
        let limit = self.bitmap.leaf_words() as u64;
        let bits = self.bitmap.bits();
        for &(w, v) in set.words() {
            if w >= limit {
                break;
            }
            let v = if (w + 1) << 6 > bits {
                v & (u64::MAX >> (((w + 1) << 6) - bits))
            } else {
                v
            };
            if v != 0 {
                self.bitmap.set_in_word(w as usize, v);
            }
        }
    }

    /// The blocks marked so far, without cutting: a moment's view.
    pub fn snapshot(&self) -> BlockSet {
        BlockSet::from_words(self.bitmap.bits(), self.bitmap.snapshot())
    }

    /// Whether any block of `extent` is marked (a moment's view).
    pub fn any_marked(&self, extent: Extent) -> bool {
        self.bitmap.any_in(extent.start, extent.count)
    }

    /// Changes the disk size. Growing marks the new range dirty, since its
    /// content was never shipped; shrinking drops the bits past the end.
    ///
    /// Takes `&mut self`: drain the disk's I/O first.
    pub fn resize(&mut self, size: u64) -> Result<()> {
        let geometry = self.geometry.resized(size)?;
        let old_blocks = self.geometry.block_count();
        let new_blocks = geometry.block_count();
        let bitmap = self.bitmap.resized(new_blocks);
        // A short last block that grew has new bytes too.
        let grown_from = if size > self.geometry.size()
            && !self
                .geometry
                .size()
                .is_multiple_of(u64::from(self.geometry.block_size()))
        {
            old_blocks - 1
        } else {
            old_blocks
        };
        if new_blocks > grown_from {
            bitmap.set_range(grown_from, new_blocks - grown_from);
        }
        self.bitmap = bitmap;
        self.geometry = geometry;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo(size: u64) -> Geometry {
        Geometry::new(size, 4096).unwrap()
    }

    #[test]
    fn mark_cut_reclaim() {
        let t = Tracker::new(geo(1 << 30));
        t.mark(0, 1).unwrap();
        t.mark(4095, 2).unwrap();
        t.mark(1 << 20, 1 << 20).unwrap();
        let f = t.cut();
        assert_eq!(f.generation(), 1);
        let ext: Vec<_> = f.extents().collect();
        assert_eq!(ext, vec![Extent::new(0, 2), Extent::new(256, 256)]);
        assert!(t.cut().is_empty());
        t.reclaim(&f);
        t.mark(8192, 1).unwrap();
        let g = t.cut();
        assert_eq!(g.generation(), 3);
        assert_eq!(g.count(), f.count() + 1);
    }

    #[test]
    fn resize_grow_marks_new_range_and_shrink_drops() {
        let mut t = Tracker::new(geo(10_000)); // 3 blocks, short last
        t.mark(0, 1).unwrap();
        t.resize(5 * 4096).unwrap();
        let b: Vec<_> = t.cut().blocks().collect();
        assert_eq!(b, vec![0, 2, 3, 4]);
        t.mark(4 * 4096, 1).unwrap();
        t.mark(0, 1).unwrap();
        t.resize(4096).unwrap();
        let f = t.cut();
        assert_eq!(f.blocks().collect::<Vec<_>>(), vec![0]);
        assert_eq!(f.universe(), 1);
        assert!(t.mark(4096, 1).is_err());
        let old = BlockSet::from_blocks(5, [0, 3, 4]).unwrap();
        t.reclaim(&old);
        assert_eq!(t.cut().blocks().collect::<Vec<_>>(), vec![0]);
    }
}
