//! Point-in-time reads with writers running: copy-before-write.
//!
//! A [`Primary`] owns a disk's tracker and its storage. Each guest write
//! takes a [`WriteGuard`] before it is submitted and drops it once the
//! write completed. While a cycle is reading its frozen blocks, a guard for
//! a write that would overwrite a frozen block the cycle has not read yet
//! first copies that block's old content aside for the cycle. With no cycle
//! in flight a guard costs one atomic load beyond the mark.
//!
//! Zero writes and discards take a [`Primary::zero_guard`]: their whole
//! blocks go into a set of zeroed blocks, which a cycle ships as zero
//! extents without reading them, unless a data write touched them too in
//! the same generation.
//!
//! A point is the disk at one instant, the moment the cut announces its
//! cycle (docs/ARCHITECTURE.md, "A cut is one instant"): every write that
//! completed before it is in the point, no write whose guard was taken
//! after it is, and a write in flight across it may or may not be, as a
//! write in flight at a power cut may or may not be on the disk (its mark
//! lands in one generation or the next, never lost). The cut announces
//! the cycle before it takes the dirty set and holds the cycle's lock
//! until it has recorded the frozen set, so a guard that begins after a
//! mark the take missed sees the cycle and waits for the frozen set
//! before it saves.

use super::{CycleOptions, Source, Tracking};
use crate::error::Result;
use crate::geometry::Extent;
use crate::io::Storage;
use crate::log::{LogKind, LogSummary, LogWriter, WriterOptions};
use crate::tracker::open_writes::OpenWrites;
use crate::tracker::{BlockSet, FrozenSet, Tracker};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// The cycle in flight: the blocks it froze, how far it has read them
/// (in ascending order), and old contents saved for it by writers.
#[derive(Default)]
struct InFlight {
    frozen: BlockSet,
    /// Frozen blocks below this one are read.
    next: u64,
    saved: HashMap<u64, Vec<u8>>,
}

impl InFlight {
    /// The frozen blocks of `e` the cycle has neither read nor been
    /// handed yet.
    fn unread_in(&self, e: Extent) -> Vec<u64> {
        self.frozen
            .extents_from(e.start.max(self.next))
            .take_while(|x| x.start < e.end())
            .flat_map(|x| x.start..x.end().min(e.end()))
            .filter(|b| !self.saved.contains_key(b))
            .collect()
    }
}

/// A replicated disk on the primary: its tracking, its storage, the blocks
/// zeroed since the last cut, and the copy-before-write state of the cycle
/// in flight.
pub struct Primary<T: Tracking = Tracker> {
    tracking: T,
    disk: Arc<dyn Storage>,
    /// Whole blocks written with zeros or discarded.
    zeroed: Tracker,
    active: AtomicBool,
    /// Set while a consistency group cuts its disks: completions wait, so
    /// no write completes on one disk after its cut while a write it
    /// depends on, completed on another, lands after that disk's cut.
    hold: AtomicBool,
    /// Whether the disk may be cut in a consistency group (see
    /// [`join_group`](Primary::join_group)): only then do completions pay
    /// for the hold.
    grouped: bool,
    /// Completions of a grouped disk between their look at `hold` and
    /// their mark: a group cut waits for them to finish.
    completing: AtomicU64,
    cycle: Mutex<InFlight>,
    /// Writes begun with [`begin_write`](Primary::begin_write), so an end
    /// without its begin is refused.
    unguarded: OpenWrites,
}

/// Taken before a guest write is submitted; marks the write when dropped
/// (after it completed).
#[must_use = "dropping the guard marks the write as completed"]
pub struct WriteGuard<'a, T: Tracking = Tracker> {
    primary: &'a Primary<T>,
    offset: u64,
    /// The length, with [`ZERO_WRITE`] set for a zero write: a guard of
    /// three words is as cheap to pass around as the old two-field one.
    len: u64,
}

/// Flags a zero write in [`WriteGuard::len`] (lengths fit in 63 bits: they
/// were checked against the disk's size).
const ZERO_WRITE: u64 = 1 << 63;

impl<T: Tracking> Drop for WriteGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        self.primary.complete_write(self.offset, self.len);
    }
}

/// A cycle whose cut is taken: the point is fixed; its blocks are read by
/// [`write_log`](CycleHandle::write_log).
pub struct CycleHandle<'a, T: Tracking = Tracker> {
    primary: &'a Primary<T>,
    frozen: Option<FrozenSet>,
    /// Blocks only zeroed in the generation: shipped without a read.
    zeroed: BlockSet,
}

impl<T: Tracking> std::fmt::Debug for Primary<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Primary")
            .field("tracker", self.tracking.tracker())
            .finish()
    }
}

impl<T: Tracking> Primary<T> {
    /// A primary disk tracked by `tracking`.
    pub fn new(tracking: T, disk: Arc<dyn Storage>) -> Self {
        let g = tracking.tracker().geometry();
        Primary {
            tracking,
            disk,
            zeroed: Tracker::new(g),
            active: AtomicBool::new(false),
            hold: AtomicBool::new(false),
            grouped: false,
            completing: AtomicU64::new(0),
            cycle: Mutex::new(InFlight::default()),
            unguarded: OpenWrites::default(),
        }
    }

    /// The in-memory tracker.
    pub fn tracker(&self) -> &Tracker {
        self.tracking.tracker()
    }

    /// The tracking.
    pub fn tracking(&self) -> &T {
        &self.tracking
    }

    /// Takes the tracking back (to close a persistent tracker cleanly).
    /// Blocks zeroed since the last cut are marked in it first, so they
    /// are not lost.
    pub fn into_tracking(self) -> T {
        self.tracking.tracker().reclaim(&self.zeroed.snapshot());
        self.tracking
    }

    /// The disk was resized to `size` bytes (by the integration, with its
    /// I/O drained: `&mut self` proves no guard is held). A grown range is
    /// marked as changed; the next cycle's log carries the new size.
    pub fn resize(&mut self, size: u64) -> Result<()> {
        self.tracking.resize(size)?;
        // Zeroed blocks past a new end are dropped by the reclaim.
        let zeroed = Tracker::new(self.tracking.tracker().geometry());
        zeroed.reclaim(&self.zeroed.snapshot());
        self.zeroed = zeroed;
        Ok(())
    }

    /// The disk.
    pub fn disk(&self) -> &Arc<dyn Storage> {
        &self.disk
    }

    /// Call before submitting a guest write of `len` bytes at `offset`;
    /// drop the guard once the write completed. Thread-safe.
    #[inline]
    pub fn write_guard(&self, offset: u64, len: u64) -> Result<WriteGuard<'_, T>> {
        self.guard(offset, len, false)
    }

    /// As [`write_guard`](Self::write_guard), for a write of zeros or a
    /// discard (which must leave the range reading as zeros): its whole
    /// blocks ship as zero extents, without being read.
    pub fn zero_guard(&self, offset: u64, len: u64) -> Result<WriteGuard<'_, T>> {
        self.guard(offset, len, true)
    }

    #[inline]
    fn guard(&self, offset: u64, len: u64, zero: bool) -> Result<WriteGuard<'_, T>> {
        let e = self.tracker().geometry().blocks_for_range(offset, len)?;
        self.tracking.begin_write(offset, len)?;
        let guard = WriteGuard {
            primary: self,
            offset,
            len: if zero { len | ZERO_WRITE } else { len },
        };
        // Pairs with the cut's store: a guard that begins after a mark the
        // cut missed sees the cycle (docs/ARCHITECTURE.md, "A cut is one
        // instant"). Sequentially consistent, so the flag also takes its
        // place in one order with everything else so ordered (a plain
        // load on x86, the same instruction as an acquire on ARM).
        if self.active.load(Ordering::SeqCst) {
            self.save_old(e)?;
        }
        Ok(guard)
    }

    /// Marks the whole blocks of a zero write as zeroed; the partial
    /// blocks at its ends keep other data and are marked as written.
    fn mark_zeroed(&self, offset: u64, len: u64) {
        let g = self.tracker().geometry();
        let bs = u64::from(g.block_size());
        let end = offset + len;
        let first = offset.div_ceil(bs);
        // The disk's last block may be short: a write to the end covers it.
        let stop = if end == g.size() {
            g.block_count()
        } else {
            end / bs
        };
        if first >= stop {
            let _ = self.tracker().mark(offset, len);
            return;
        }
        let _ = self.zeroed.mark_extent(Extent::new(first, stop - first));
        if offset < first * bs {
            let _ = self.tracker().mark(offset, first * bs - offset);
        }
        if stop < g.block_count() && stop * bs < end {
            let _ = self.tracker().mark(stop * bs, end - stop * bs);
        }
    }

    /// [`write_guard`](Self::write_guard) (or, with `zero`,
    /// [`zero_guard`](Self::zero_guard)) for callers that cannot hold a
    /// guard (the C ABI): on success, pair it with
    /// [`end_write`](Self::end_write) over the same range once the write
    /// completed.
    pub fn begin_write(&self, offset: u64, len: u64, zero: bool) -> Result<()> {
        std::mem::forget(self.guard(offset, len, zero)?);
        self.unguarded.begin(offset, len);
        Ok(())
    }

    /// Completes a write begun with [`begin_write`](Self::begin_write) over
    /// the same range. An end without its begin (or a second end) is
    /// refused as misuse and changes nothing: it cannot complete another
    /// write still in flight.
    pub fn end_write(&self, offset: u64, len: u64, zero: bool) -> Result<()> {
        self.tracker().geometry().blocks_for_range(offset, len)?;
        self.unguarded.end(offset, len)?;
        self.complete_write(offset, if zero { len | ZERO_WRITE } else { len });
        Ok(())
    }

    /// What dropping a guard does: marks (for a disk in a consistency
    /// group, waiting out a group cut first).
    #[inline]
    fn complete_write(&self, offset: u64, flagged_len: u64) {
        if self.grouped {
            self.complete_grouped(offset, flagged_len);
        } else {
            self.mark_completed(offset, flagged_len);
        }
    }

    #[inline]
    fn mark_completed(&self, offset: u64, flagged_len: u64) {
        let (len, zero) = (flagged_len & !ZERO_WRITE, flagged_len & ZERO_WRITE != 0);
        if zero {
            self.mark_zeroed(offset, len);
        }
        self.tracking.end_write(offset, len, !zero);
    }

    /// A completion counts itself before it looks at the hold, and a group
    /// cut sets the hold before it waits for the count to drain (both
    /// sequentially consistent): either the cut sees the completion and
    /// waits for its mark, or the completion sees the hold and waits for
    /// the cut. A completion can no longer pass the check, be overtaken by
    /// the cut of its disk, and return to the guest before the cut of
    /// another disk.
    fn complete_grouped(&self, offset: u64, flagged_len: u64) {
        loop {
            self.completing.fetch_add(1, Ordering::SeqCst);
            if !self.hold.load(Ordering::SeqCst) {
                break;
            }
            self.completing.fetch_sub(1, Ordering::SeqCst);
            self.wait_hold();
        }
        #[cfg(test)]
        hooks::after_hold_check();
        self.mark_completed(offset, flagged_len);
        self.completing.fetch_sub(1, Ordering::SeqCst);
    }

    #[cold]
    fn wait_hold(&self) {
        while self.hold.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
    }

    /// Makes the disk eligible for consistency groups: from now on its
    /// completions take part in a group cut's hold. `&mut self` proves no
    /// completion is under way while the switch happens.
    pub fn join_group(&mut self) {
        self.grouped = true;
    }

    /// Whether [`join_group`](Self::join_group) was called.
    pub fn is_grouped(&self) -> bool {
        self.grouped
    }

    /// Holds write completions (a group is about to cut).
    pub(crate) fn hold(&self) {
        self.hold.store(true, Ordering::SeqCst);
    }

    /// Waits until no completion is between its look at the hold and its
    /// mark; call after [`hold`](Self::hold).
    pub(crate) fn drain_completions(&self) {
        while self.completing.load(Ordering::SeqCst) != 0 {
            std::thread::yield_now();
        }
    }

    /// Lets held completions go on.
    pub(crate) fn release(&self) {
        self.hold.store(false, Ordering::SeqCst);
    }

    /// Hands the cycle the old content of the frozen blocks of `e` it has
    /// not read yet. Takes the cycle's lock, so a guard that saw a cut
    /// under way waits for it to record its frozen set.
    #[cold]
    fn save_old(&self, e: Extent) -> Result<()> {
        let g = self.tracker().geometry();
        let mut c = self.cycle.lock();
        for b in c.unread_in(e) {
            let mut old = vec![0u8; g.block_len(b) as usize];
            self.disk.read_at(&mut old, g.block_offset(b))?;
            c.saved.insert(b, old);
        }
        Ok(())
    }

    /// Cuts the tracker: the point of the next log is now. Writers go on;
    /// the ones that overwrite frozen blocks save them first.
    pub fn begin_cycle(&self) -> CycleHandle<'_, T> {
        self.cut(true)
    }

    /// Cuts the tracker for a resync, which compares the whole disk
    /// instead of reading the frozen blocks: no copy-before-write. The
    /// handle hands the blocks back if the resync fails.
    pub(crate) fn begin_resync(&self) -> CycleHandle<'_, T> {
        self.cut(false)
    }

    /// The cut. With copy-before-write, the cycle is announced before the
    /// take and under the cycle's lock, which is held until the frozen set
    /// is recorded: a mark the take misses happened after the store, so
    /// the guard of any write that followed it sees the cycle and waits
    /// for the frozen set before it saves. That makes the store the cut's
    /// instant (docs/ARCHITECTURE.md, "A cut is one instant").
    fn cut(&self, cow: bool) -> CycleHandle<'_, T> {
        let mut c = self.cycle.lock();
        if cow {
            self.active.store(true, Ordering::SeqCst);
        }
        let zeroed = self.zeroed.cut().into_set();
        let frozen = self.tracking.cut();
        if cow {
            c.frozen = frozen.set().clone();
            c.next = 0;
            c.saved.clear();
        }
        drop(c);
        let zeroed = zeroed.difference(&frozen);
        CycleHandle {
            primary: self,
            frozen: Some(frozen),
            zeroed,
        }
    }

    /// Every block marked now, written or zeroed (a moment's view).
    pub fn marked(&self) -> BlockSet {
        self.tracker().snapshot().union(&self.zeroed.snapshot())
    }

    /// Marks the blocks of a log handed back (folded) from the spool:
    /// durably, as written.
    pub(crate) fn mark_durable(&self, extent: Extent) -> Result<()> {
        self.tracking.mark_durable(extent)
    }

    /// [`mark_durable`](Self::mark_durable) for the blocks of a log folded
    /// back from the spool, clipped to the disk's current size: a log
    /// spooled before a shrink may hold blocks past the new end, which are
    /// gone and need not ship (the next log carries the new size), and
    /// refusing them would fail every cycle while the spool is over its
    /// limit.
    pub(crate) fn mark_folded(&self, extent: Extent) -> Result<()> {
        let count = self.tracker().geometry().block_count();
        if extent.start >= count {
            return Ok(());
        }
        let clipped = Extent::new(extent.start, extent.count.min(count - extent.start));
        self.mark_durable(clipped)
    }
}

impl<T: Tracking> CycleHandle<'_, T> {
    /// The generation the cut closed.
    pub fn generation(&self) -> u64 {
        self.frozen.as_ref().map_or(0, FrozenSet::generation)
    }

    /// Blocks the cycle ships (read or zeroed).
    pub fn blocks(&self) -> u64 {
        self.frozen.as_ref().map_or(0, |f| f.count()) + self.zeroed.count()
    }

    /// Reads the frozen blocks as of the cut (saved copies first, then the
    /// disk) and writes the next log of `source` to `out`. On failure the
    /// blocks go back to the tracker and the chain does not advance.
    pub fn write_log<W: Write>(
        mut self,
        source: &mut Source,
        out: W,
        opts: WriterOptions,
        cycle: &CycleOptions,
    ) -> Result<(W, LogSummary)> {
        let h = source.header_for(LogKind::Delta, cycle)?;
        let mut w = LogWriter::new(out, h, opts)?;
        self.fill(&mut w)?;
        let (out, summary) = w.finish()?;
        self.complete();
        source.advance(&summary);
        Ok((out, summary))
    }

    /// Writes the cycle's blocks to `w`, in ascending order: zeroed ones
    /// as zero extents, the others as of the cut (saved copies first, then
    /// the disk).
    pub(crate) fn fill<W: Write>(&mut self, w: &mut LogWriter<W>) -> Result<()> {
        let p = self.primary;
        let g = p.tracker().geometry();
        let frozen = self.frozen.as_ref().expect("a cycle is filled once");
        let mut zeros = self.zeroed.extents().peekable();
        let mut buf = vec![0u8; g.block_size() as usize];
        for b in frozen.blocks() {
            // Disjoint sets: a zero run starting before `b` ends before it.
            while let Some(z) = zeros.next_if(|z| z.start < b) {
                w.add_zero(z)?;
            }
            let data = &mut buf[..g.block_len(b) as usize];
            {
                // Under the lock, so no writer overwrites `b` between the
                // check and the read.
                let mut c = p.cycle.lock();
                match c.saved.remove(&b) {
                    Some(old) => data.copy_from_slice(&old),
                    None => p.disk.read_at(data, g.block_offset(b))?,
                }
                c.next = b + 1;
            }
            w.add_block(b, data)?;
        }
        for z in zeros {
            w.add_zero(z)?;
        }
        Ok(())
    }

    /// Ends a cycle whose log is durable: its blocks are shipped.
    pub(crate) fn complete(mut self) {
        let frozen = self.frozen.take().expect("a cycle completes once");
        self.end();
        // A failure only keeps intent bits set, which widens the resync
        // after a crash; the log is safe either way.
        let _ = self.primary.tracking.commit(frozen.generation());
    }

    fn end(&self) {
        let p = self.primary;
        let mut c = p.cycle.lock();
        p.active.store(false, Ordering::Release);
        c.frozen = BlockSet::default();
        c.saved.clear();
    }
}

impl<T: Tracking> Drop for CycleHandle<'_, T> {
    fn drop(&mut self) {
        // Failed or abandoned before its log was durable: hand the blocks
        // back.
        if let Some(f) = self.frozen.take() {
            self.end();
            let p = self.primary;
            p.zeroed.reclaim(&self.zeroed);
            p.tracking.reclaim(&f);
        }
    }
}

/// Test hooks: pauses at the racy moments of a group cut, so a test can
/// show that no interleaving breaks the group's instant.
#[cfg(test)]
pub(crate) mod hooks {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    /// Milliseconds a grouped completion sleeps after its look at the hold.
    pub static AFTER_HOLD_CHECK_MS: AtomicU64 = AtomicU64::new(0);
    /// Milliseconds a group cycle sleeps between two members' cuts.
    pub static BETWEEN_CUTS_MS: AtomicU64 = AtomicU64::new(0);

    fn pause(ms: &AtomicU64) {
        let ms = ms.load(Ordering::SeqCst);
        if ms > 0 {
            std::thread::sleep(Duration::from_millis(ms));
        }
    }

    pub fn after_hold_check() {
        pause(&AFTER_HOLD_CHECK_MS);
    }

    pub fn between_cuts() {
        pause(&BETWEEN_CUTS_MS);
    }
}
