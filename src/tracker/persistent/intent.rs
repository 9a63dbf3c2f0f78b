//! The write-intent map: one bit per region of 1 to 4 MiB, set durably
//! before a write to a cold region is submitted, cleared lazily once the
//! region is clean. An unclean stop then costs a resend of the regions
//! whose bits are set, never a silent gap (invariant 8).
//!
//! Two copies of each bit: the file's, and a shadow in memory that writers
//! check without a lock. A shadow bit is set only *after* the file's bit is
//! flushed, so a writer that finds it set may go ahead; a writer that finds
//! it clear takes the lock, where it either makes the bit durable itself or
//! waits for the writer doing so. Clearing follows the opposite order with
//! a Dekker handshake on the per-region in-flight counters (both sides use
//! sequentially consistent operations): the clearer clears the shadow bit,
//! then looks for writes in flight; a writer counts itself in flight, then
//! looks at the shadow bit. One of them always sees the other.

use super::format::Layout;
use super::mapping::Mapping;
use crate::error::Result;
use crate::geometry::{Extent, Geometry};
use crate::le::get_u64;
use crate::tracker::BlockSet;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// The intent map's state in memory; the bits themselves live in the file
/// at `at`.
pub(super) struct IntentMap {
    region_shift: u32,
    /// Offset of the map in the file.
    at: u64,
    regions: u64,
    /// Writes in flight per region.
    inflight: Box<[AtomicU32]>,
    /// Bits known durable in the file.
    shadow: Box<[AtomicU64]>,
    /// Held while the file's words change and are flushed.
    lock: Mutex<()>,
}

impl IntentMap {
    pub fn new(layout: &Layout, region_shift: u32) -> Self {
        IntentMap {
            region_shift,
            at: layout.intent,
            regions: layout.regions,
            inflight: (0..layout.regions).map(|_| AtomicU32::new(0)).collect(),
            shadow: (0..layout.intent_words)
                .map(|_| AtomicU64::new(0))
                .collect(),
            lock: Mutex::new(()),
        }
    }

    /// The first and last region of a write of `len > 0` bytes at `offset`
    /// (checked against the disk by the caller).
    pub fn regions_of(&self, offset: u64, len: u64) -> (u64, u64) {
        (
            offset >> self.region_shift,
            (offset + len - 1) >> self.region_shift,
        )
    }

    /// Counts a write in flight in `regions` and makes their intent bits
    /// durable. On error the write is not counted and must not be
    /// submitted.
    pub fn begin(&self, file: &dyn Mapping, regions: (u64, u64)) -> Result<()> {
        for r in regions.0..=regions.1 {
            self.inflight[r as usize].fetch_add(1, Ordering::SeqCst);
        }
        for r in regions.0..=regions.1 {
            if !self.published(r) {
                if let Err(e) = self.set(file, r) {
                    self.end(regions);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// A write counted by [`begin`](Self::begin) completed (its blocks are
    /// marked already).
    pub fn end(&self, regions: (u64, u64)) {
        for r in regions.0..=regions.1 {
            self.inflight[r as usize].fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Whether a write to region `r` is in flight.
    pub fn in_flight(&self, r: u64) -> bool {
        self.inflight[r as usize].load(Ordering::SeqCst) != 0
    }

    fn published(&self, r: u64) -> bool {
        self.shadow[(r >> 6) as usize].load(Ordering::SeqCst) & (1 << (r & 63)) != 0
    }

    /// Makes region `r`'s bit durable, then publishes it. Writers to the
    /// same region meanwhile wait on the lock and find it published.
    #[cold]
    fn set(&self, file: &dyn Mapping, r: u64) -> Result<()> {
        let _g = self.lock.lock();
        if self.published(r) {
            return Ok(());
        }
        let w = (r >> 6) as usize;
        let bit = 1u64 << (r & 63);
        let v = self.word(file, w) | bit;
        self.put_word(file, w, v);
        // A failed flush publishes nothing: the next writer flushes again.
        // (The bit set in the file's page is harmless: a set bit is a
        // conservative answer.)
        file.flush(self.word_at(w), 8)?;
        self.shadow[w].fetch_or(bit, Ordering::SeqCst);
        Ok(())
    }

    /// Clears the bit of every region with no write in flight for which
    /// `dirty` says no block is dirty or outstanding, and flushes the map.
    pub fn clear_clean(&self, file: &dyn Mapping, dirty: impl Fn(u64) -> bool) -> Result<()> {
        let _g = self.lock.lock();
        let mut changed = false;
        for w in 0..self.shadow.len() {
            let mut v = self.shadow[w].load(Ordering::SeqCst);
            let mut cleared = 0;
            while v != 0 {
                let b = v.trailing_zeros();
                v &= v - 1;
                let r = ((w as u64) << 6) | u64::from(b);
                let bit = 1u64 << b;
                self.shadow[w].fetch_and(!bit, Ordering::SeqCst);
                if self.in_flight(r) || dirty(r) {
                    self.shadow[w].fetch_or(bit, Ordering::SeqCst);
                } else {
                    cleared |= bit;
                }
            }
            if cleared != 0 {
                let v = self.word(file, w) & !cleared;
                self.put_word(file, w, v);
                changed = true;
            }
        }
        if changed {
            file.flush(self.at, self.shadow.len() as u64 * 8)?;
        }
        Ok(())
    }

    /// Clears every bit, in the file too (after a clean checkpoint).
    pub fn clear_all(&self, file: &dyn Mapping) -> Result<()> {
        let _g = self.lock.lock();
        for w in 0..self.shadow.len() {
            if self.word(file, w) != 0 {
                self.put_word(file, w, 0);
            }
            self.shadow[w].store(0, Ordering::SeqCst);
        }
        file.flush(self.at, self.shadow.len() as u64 * 8)
    }

    /// After an unclean stop: the file's bits are durable, so they are
    /// published as they are.
    pub fn adopt_file_bits(&self, file: &dyn Mapping) {
        let _g = self.lock.lock();
        for w in 0..self.shadow.len() {
            self.shadow[w].store(self.word(file, w), Ordering::SeqCst);
        }
    }

    /// The blocks of region `r` in `g`.
    pub fn region_blocks(&self, g: Geometry, r: u64) -> Extent {
        let first = (r << self.region_shift) >> g.block_shift();
        let end = (((r + 1) << self.region_shift) >> g.block_shift()).min(g.block_count());
        Extent::new(first, end - first)
    }

    /// Every block of every region whose bit is set in the file.
    pub fn file_blocks(&self, file: &dyn Mapping, g: Geometry) -> BlockSet {
        let _g = self.lock.lock();
        let extents = (0..self.regions)
            .filter(|&r| self.word(file, (r >> 6) as usize) & (1 << (r & 63)) != 0)
            .map(|r| self.region_blocks(g, r));
        BlockSet::from_extents(g.block_count(), extents).expect("regions lie within the disk")
    }

    fn word_at(&self, w: usize) -> u64 {
        self.at + w as u64 * 8
    }

    fn word(&self, file: &dyn Mapping, w: usize) -> u64 {
        let mut b = [0u8; 8];
        file.read(self.word_at(w), &mut b);
        get_u64(&b, 0)
    }

    fn put_word(&self, file: &dyn Mapping, w: usize, v: u64) {
        file.write(self.word_at(w), &v.to_le_bytes());
    }
}
