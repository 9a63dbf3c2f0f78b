//! Point-in-time reads with writers running: copy-before-write.
//!
//! A [`Primary`] owns a disk's tracker and its storage. Each guest write
//! takes a [`WriteGuard`] before it is submitted and drops it once the
//! write completed. While a cycle is reading its frozen blocks, a guard for
//! a write that would overwrite a frozen block the cycle has not read yet
//! first copies that block's old content aside for the cycle. With no cycle
//! in flight a guard costs one atomic load beyond the mark.
//!
//! A write already in flight when a cycle starts (its guard taken before)
//! may or may not be in that cycle's point, as a write in flight at a power
//! cut may or may not be on the disk; its mark lands in the next generation
//! either way, so it is never lost.

use super::Source;
use crate::error::Result;
use crate::geometry::Extent;
use crate::io::Storage;
use crate::log::{LogHeader, LogKind, LogSummary, LogWriter, WriterOptions};
use crate::tracker::{FrozenSet, Tracker};
use parking_lot::Mutex;
use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The blocks a running cycle still has to read, and old contents saved
/// for it by writers.
#[derive(Default)]
struct InFlight {
    unread: BTreeSet<u64>,
    saved: HashMap<u64, Vec<u8>>,
}

/// A replicated disk on the primary: its tracker, its storage, and the
/// copy-before-write state of the cycle in flight.
pub struct Primary {
    tracker: Tracker,
    disk: Arc<dyn Storage>,
    active: AtomicBool,
    cycle: Mutex<InFlight>,
}

/// Taken before a guest write is submitted; marks the write when dropped
/// (after it completed).
#[must_use = "dropping the guard marks the write as completed"]
pub struct WriteGuard<'a> {
    primary: &'a Primary,
    offset: u64,
    len: u64,
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        // The range was checked when the guard was taken.
        let _ = self.primary.tracker.mark(self.offset, self.len);
    }
}

/// A cycle whose cut is taken: the point is fixed; its blocks are read by
/// [`write_log`](CycleHandle::write_log).
pub struct CycleHandle<'a> {
    primary: &'a Primary,
    frozen: Option<FrozenSet>,
}

impl std::fmt::Debug for Primary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Primary")
            .field("tracker", &self.tracker)
            .finish()
    }
}

impl Primary {
    /// A primary disk with a clean tracker.
    pub fn new(tracker: Tracker, disk: Arc<dyn Storage>) -> Self {
        Primary {
            tracker,
            disk,
            active: AtomicBool::new(false),
            cycle: Mutex::new(InFlight::default()),
        }
    }

    /// The tracker.
    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    /// Call before submitting a guest write of `len` bytes at `offset`;
    /// drop the guard once the write completed. Thread-safe.
    #[inline]
    pub fn write_guard(&self, offset: u64, len: u64) -> Result<WriteGuard<'_>> {
        let e = self.tracker.geometry().blocks_for_range(offset, len)?;
        if self.active.load(Ordering::Acquire) {
            self.save_old(e)?;
        }
        Ok(WriteGuard {
            primary: self,
            offset,
            len,
        })
    }

    #[cold]
    fn save_old(&self, e: Extent) -> Result<()> {
        let g = self.tracker.geometry();
        let mut c = self.cycle.lock();
        let todo: Vec<u64> = c.unread.range(e.start..e.end()).copied().collect();
        for b in todo {
            let mut old = vec![0u8; g.block_len(b) as usize];
            self.disk.read_at(&mut old, g.block_offset(b))?;
            c.unread.remove(&b);
            c.saved.insert(b, old);
        }
        Ok(())
    }

    /// Cuts the tracker: the point of the next log is now. Writers go on;
    /// the ones that overwrite frozen blocks save them first.
    pub fn begin_cycle(&self) -> CycleHandle<'_> {
        let mut c = self.cycle.lock();
        let frozen = self.tracker.cut();
        c.unread = frozen.blocks().collect();
        c.saved.clear();
        self.active.store(true, Ordering::Release);
        CycleHandle {
            primary: self,
            frozen: Some(frozen),
        }
    }
}

impl CycleHandle<'_> {
    /// Reads the frozen blocks as of the cut (saved copies first, then the
    /// disk) and writes the next log of `source` to `out`. On failure the
    /// blocks go back to the tracker and the chain does not advance.
    pub fn write_log<W: Write>(
        mut self,
        source: &mut Source,
        out: W,
        opts: WriterOptions,
    ) -> Result<(W, LogSummary)> {
        let frozen = self.frozen.take().expect("a cycle writes its log once");
        let p = self.primary;
        let g = p.tracker.geometry();
        let result = (|| {
            let mut h: LogHeader = source.header(LogKind::Delta)?;
            h.geometry = g;
            let mut w = LogWriter::new(out, h, opts)?;
            let mut buf = vec![0u8; g.block_size() as usize];
            for b in frozen.blocks() {
                let data = &mut buf[..g.block_len(b) as usize];
                {
                    // Under the lock, so no writer overwrites `b` between
                    // the check and the read.
                    let mut c = p.cycle.lock();
                    match c.saved.remove(&b) {
                        Some(old) => data.copy_from_slice(&old),
                        None => {
                            p.disk.read_at(data, g.block_offset(b))?;
                            c.unread.remove(&b);
                        }
                    }
                }
                w.add_block(b, data)?;
            }
            w.finish()
        })();
        self.end();
        match result {
            Ok((out, summary)) => {
                source.advance(&summary);
                Ok((out, summary))
            }
            Err(e) => {
                p.tracker.reclaim(&frozen);
                Err(e)
            }
        }
    }

    fn end(&self) {
        let p = self.primary;
        let mut c = p.cycle.lock();
        p.active.store(false, Ordering::Release);
        c.unread.clear();
        c.saved.clear();
    }
}

impl Drop for CycleHandle<'_> {
    fn drop(&mut self) {
        // Abandoned without writing its log: hand the blocks back.
        if let Some(f) = self.frozen.take() {
            self.end();
            self.primary.tracker.reclaim(&f);
        }
    }
}
