//! The change tracking behind a [`Primary`](super::Primary): the
//! [`Tracking`] trait, its two implementations (an in-memory [`Tracker`],
//! a [`PersistentTracker`]) and [`AnyTracker`], either one chosen at run
//! time (what the builder, the C ABI and the command line use).

use crate::error::Result;
use crate::geometry::Extent;
use crate::io::DiskIdentity;
use crate::tracker::{FrozenSet, PersistentTracker, Tracker};

/// The change tracking behind a [`Primary`](super::Primary): an in-memory [`Tracker`], or a
/// [`PersistentTracker`] that records write intent before a write and
/// survives restarts.
pub trait Tracking: Send + Sync {
    /// The in-memory tracker (for queries and cuts).
    fn tracker(&self) -> &Tracker;
    /// Called before a write of `len` bytes at `offset` is submitted.
    fn begin_write(&self, offset: u64, len: u64) -> Result<()>;
    /// Called once it completed; `data`: whether its blocks must be marked
    /// (false for a zero write, whose blocks the primary tracks apart).
    fn end_write(&self, offset: u64, len: u64, data: bool);
    /// Closes the current generation.
    fn cut(&self) -> FrozenSet {
        self.tracker().cut()
    }
    /// Hands a failed cycle's blocks back.
    fn reclaim(&self, frozen: &FrozenSet) {
        self.tracker().reclaim(frozen);
    }
    /// The log of `generation` is durable in the spool.
    fn commit(&self, generation: u64) -> Result<()> {
        let _ = generation;
        Ok(())
    }
    /// Marks `extent` so that it survives a crash from now on (blocks of a
    /// spooled log folded back).
    fn mark_durable(&self, extent: Extent) -> Result<()> {
        self.tracker().mark_extent(extent)
    }
    /// Changes the disk size (I/O drained): a grown range is marked.
    fn resize(&mut self, size: u64) -> Result<()>;
    /// Stops tracking: cleanly for a persistent tracker (checkpoint, and
    /// `disk`, the disk's identity after its last write, recorded so the
    /// next open can tell whether anything wrote to it meanwhile); for one
    /// in memory, the marks are simply lost.
    fn close(self, disk: Option<DiskIdentity>) -> Result<()>
    where
        Self: Sized;
}

impl Tracking for Tracker {
    fn tracker(&self) -> &Tracker {
        self
    }
    fn resize(&mut self, size: u64) -> Result<()> {
        Tracker::resize(self, size)
    }
    fn close(self, _disk: Option<DiskIdentity>) -> Result<()> {
        Ok(())
    }
    #[inline]
    fn begin_write(&self, _offset: u64, _len: u64) -> Result<()> {
        Ok(())
    }
    #[inline]
    fn end_write(&self, offset: u64, len: u64, data: bool) {
        if data {
            // The range was checked when the guard was taken.
            let _ = self.mark(offset, len);
        }
    }
}

impl Tracking for PersistentTracker {
    fn tracker(&self) -> &Tracker {
        PersistentTracker::tracker(self)
    }
    fn resize(&mut self, size: u64) -> Result<()> {
        PersistentTracker::resize(self, size)
    }
    fn close(self, disk: Option<DiskIdentity>) -> Result<()> {
        PersistentTracker::close(self, disk)
    }
    fn begin_write(&self, offset: u64, len: u64) -> Result<()> {
        // The primary pairs begins and ends itself (guards, or its own
        // check of unguarded calls).
        self.begin_raw(offset, len)
    }
    fn end_write(&self, offset: u64, len: u64, _data: bool) {
        // Zero writes are marked too: the zero set is not persistent, and
        // the blocks, read as zeros, still ship as zero extents.
        self.end_raw(offset, len);
    }
    fn cut(&self) -> FrozenSet {
        PersistentTracker::cut(self)
    }
    fn reclaim(&self, frozen: &FrozenSet) {
        PersistentTracker::reclaim(self, frozen);
    }
    fn commit(&self, generation: u64) -> Result<()> {
        PersistentTracker::commit(self, generation)
    }
    fn mark_durable(&self, extent: Extent) -> Result<()> {
        let g = self.geometry();
        let (offset, len) = g.extent_bytes(extent);
        self.begin_raw(offset, len)?;
        self.end_raw(offset, len);
        Ok(())
    }
}

/// Either kind of tracking, chosen at run time: one pipeline type for
/// disks tracked in memory and disks tracked in a tracker file, so they can
/// share a consistency group and a C handle. Dispatch is a match on two
/// variants, which the compiler turns into a predictable branch.
#[derive(Debug)]
pub enum AnyTracker {
    /// Tracking in memory: lost at exit (a restart needs a digest resync).
    Memory(Tracker),
    /// Tracking in a tracker file with a write-intent map (boxed: it is
    /// several times the size of the in-memory tracker).
    File(Box<PersistentTracker>),
}

impl From<Tracker> for AnyTracker {
    fn from(t: Tracker) -> Self {
        AnyTracker::Memory(t)
    }
}

impl From<PersistentTracker> for AnyTracker {
    fn from(t: PersistentTracker) -> Self {
        AnyTracker::File(Box::new(t))
    }
}

/// Forwards a shared call to whichever tracker is inside.
macro_rules! either {
    ($self:expr, $t:ident => $e:expr) => {
        match $self {
            AnyTracker::Memory($t) => $e,
            AnyTracker::File(boxed) => {
                let $t: &PersistentTracker = boxed;
                $e
            }
        }
    };
}

impl Tracking for AnyTracker {
    #[inline]
    fn tracker(&self) -> &Tracker {
        either!(self, t => Tracking::tracker(t))
    }
    #[inline]
    fn begin_write(&self, offset: u64, len: u64) -> Result<()> {
        either!(self, t => Tracking::begin_write(t, offset, len))
    }
    #[inline]
    fn end_write(&self, offset: u64, len: u64, data: bool) {
        either!(self, t => Tracking::end_write(t, offset, len, data));
    }
    fn cut(&self) -> FrozenSet {
        either!(self, t => Tracking::cut(t))
    }
    fn reclaim(&self, frozen: &FrozenSet) {
        either!(self, t => Tracking::reclaim(t, frozen));
    }
    fn commit(&self, generation: u64) -> Result<()> {
        either!(self, t => Tracking::commit(t, generation))
    }
    fn mark_durable(&self, extent: Extent) -> Result<()> {
        either!(self, t => Tracking::mark_durable(t, extent))
    }
    fn resize(&mut self, size: u64) -> Result<()> {
        match self {
            AnyTracker::Memory(t) => Tracking::resize(t, size),
            AnyTracker::File(t) => Tracking::resize(&mut **t, size),
        }
    }
    fn close(self, disk: Option<DiskIdentity>) -> Result<()> {
        match self {
            AnyTracker::Memory(t) => Tracking::close(t, disk),
            AnyTracker::File(t) => Tracking::close(*t, disk),
        }
    }
}
