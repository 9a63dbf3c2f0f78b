//! Reading a retained point without changing the replica, exporting it,
//! and writable overlays on it (test failover).

use super::Replica;
use crate::error::{Error, ErrorKind, Result};
use crate::geometry::Geometry;
use crate::io::{FileStorage, Storage};
use crate::log::BlockLookup;
use crate::tracker::Tracker;
use parking_lot::Mutex;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

impl Replica {
    /// Pins `sequence` so it is not pruned or rolled past; the count is
    /// released by [`unpin`](Self::unpin).
    pub(super) fn pin(&self, sequence: u64) -> Result<()> {
        let st = self.s.state.lock();
        if !st.points.iter().any(|p| p.sequence == sequence) {
            return Err(Error::new(
                ErrorKind::OutOfRange,
                format!("point {sequence} is not retained"),
            )
            .with_sequence(sequence));
        }
        *self.s.pins.lock().entry(sequence).or_insert(0) += 1;
        Ok(())
    }

    pub(super) fn unpin(&self, sequence: u64) {
        let mut pins = self.s.pins.lock();
        if let Some(n) = pins.get_mut(&sequence) {
            *n -= 1;
            if *n == 0 {
                pins.remove(&sequence);
            }
        }
    }

    /// The points pinned now.
    pub(super) fn pinned(&self) -> Vec<u64> {
        self.s.pins.lock().keys().copied().collect()
    }

    /// The geometry of retained point `sequence`: the one its successor's
    /// undo log leads back to, or the latest point's.
    fn geometry_of(&self, sequence: u64) -> Result<Geometry> {
        let undo = self.s.undo.read();
        match undo.range(sequence + 1..).next() {
            Some((_, l)) => Ok(l.header().geometry),
            None => Geometry::new(self.s.size.load(Ordering::Acquire), self.s.block_size),
        }
    }

    /// Reads bytes of point `sequence`: each block from the first undo log
    /// after the point that holds it, else from the image.
    fn read_point(&self, sequence: u64, buf: &mut [u8], offset: u64) -> Result<()> {
        let g = self.geometry_of(sequence)?;
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= g.size())
            .ok_or_else(|| {
                Error::out_of_range(format!("read of {} bytes past the disk", buf.len()))
                    .with_offset(offset)
            })?;
        if buf.is_empty() {
            return Ok(());
        }
        let undo = self.s.undo.read();
        // A block the read covers whole is read straight into `buf`; only
        // the partial ones at its ends go through a block buffer.
        let mut block = Vec::new();
        let mut grown = Vec::new();
        let (first, last) = (offset >> g.block_shift(), (end - 1) >> g.block_shift());
        for b in first..=last {
            let boff = g.block_offset(b);
            let blen = g.block_len(b) as usize;
            let from = offset.max(boff);
            let to = end.min(boff + blen as u64);
            let dst = (from - offset) as usize..(to - offset) as usize;
            let whole = dst.len() == blen;
            let data = if whole {
                &mut buf[dst.clone()]
            } else {
                block.resize(blen, 0);
                &mut block[..]
            };
            let mut found = false;
            for (_, l) in undo.range(sequence + 1..) {
                let held = l.header().geometry.block_len(b) as usize;
                let lookup = if held > blen {
                    // The block grew since the point (it was the short last
                    // block). Undo logs written since keep it at its old
                    // length on a grow (`undo_blocks`), but older ones may
                    // not: then the first that holds it is a later one, at
                    // a grown length. Nothing wrote the block in between (an
                    // earlier undo log would hold it), so the point's bytes
                    // are that copy's first `blen`.
                    grown.resize(held, 0);
                    let lookup = l.read_block(b, &mut grown)?;
                    if lookup != BlockLookup::Absent {
                        data.copy_from_slice(&grown[..blen]);
                    }
                    lookup
                } else {
                    l.read_block(b, data)?
                };
                if lookup != BlockLookup::Absent {
                    found = true;
                    break;
                }
            }
            if !found {
                self.s.image.read_at(data, boff)?;
            }
            if !whole {
                buf[dst].copy_from_slice(&block[(from - boff) as usize..(to - boff) as usize]);
            }
        }
        Ok(())
    }

    /// A read-only view of retained point `sequence`, pinned while it lives.
    /// Logs may go on applying underneath; the view stays at its point.
    pub fn view(&self, sequence: u64) -> Result<PointView> {
        self.pin(sequence)?;
        // Pinned: the undo logs that give the point's size stay.
        match self.geometry_of(sequence) {
            Ok(geometry) => Ok(PointView {
                replica: self.clone(),
                sequence,
                geometry,
            }),
            Err(e) => {
                self.unpin(sequence);
                Err(e)
            }
        }
    }

    /// Writes point `sequence` as a raw image file at `path`, sparse where
    /// the point holds zeros.
    pub fn export(&self, sequence: u64, path: impl AsRef<Path>) -> Result<()> {
        self.export_with(sequence, path, &mut |_| {})
    }

    /// [`export`](Self::export), calling `progress` with the bytes done
    /// after each chunk (a progress bar's feed).
    pub fn export_with(
        &self,
        sequence: u64,
        path: impl AsRef<Path>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<()> {
        let view = self.view(sequence)?;
        let g = view.geometry;
        let out = FileStorage::create(path, g.size())?;
        let mut buf = vec![0u8; 1 << 20];
        let mut off = 0;
        while off < g.size() {
            let n = (g.size() - off).min(buf.len() as u64) as usize;
            view.read_at(&mut buf[..n], off)?;
            // Zero runs stay holes: the file was created sparse.
            let bs = g.block_size() as usize;
            for (i, c) in buf[..n].chunks(bs).enumerate() {
                if c.iter().any(|&x| x != 0) {
                    out.write_at(c, off + (i * bs) as u64)?;
                }
            }
            off += n as u64;
            progress(off);
        }
        out.sync()
    }
}

/// A read-only view of one retained point; see [`Replica::view`].
pub struct PointView {
    replica: Replica,
    sequence: u64,
    geometry: Geometry,
}

impl std::fmt::Debug for PointView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PointView")
            .field("sequence", &self.sequence)
            .finish()
    }
}

impl PointView {
    /// The point's sequence.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// The point's geometry (its size may differ from the latest point's
    /// when the disk was resized since).
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// Reads bytes of the point.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.replica.read_point(self.sequence, buf, offset)
    }

    /// Makes the view writable: writes go to `overlay` (memory or a sparse
    /// file), reads see the overlay, then the point. The replica is never
    /// written; dropping the overlay view leaves no trace in it.
    pub fn with_overlay(self, overlay: Arc<dyn Storage>) -> Result<OverlayView> {
        let g = self.geometry;
        overlay.set_len(g.size())?;
        Ok(OverlayView {
            view: self,
            overlay,
            written: Tracker::new(g),
            write_lock: Mutex::new(()),
        })
    }
}

impl Drop for PointView {
    fn drop(&mut self) {
        self.replica.unpin(self.sequence);
    }
}

/// A writable view of a point (test failover); see
/// [`PointView::with_overlay`].
pub struct OverlayView {
    view: PointView,
    overlay: Arc<dyn Storage>,
    /// Blocks present in the overlay.
    written: Tracker,
    /// Serialises writes: a partial block is read, patched and written.
    write_lock: Mutex<()>,
}

impl std::fmt::Debug for OverlayView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OverlayView")
            .field("sequence", &self.view.sequence)
            .finish()
    }
}

impl OverlayView {
    /// The point under the overlay.
    pub fn sequence(&self) -> u64 {
        self.view.sequence
    }

    /// The blocks written into the overlay so far.
    pub fn written(&self) -> crate::geometry::BlockSet {
        self.written.snapshot()
    }

    /// Makes the overlay's writes durable.
    pub fn sync(&self) -> Result<()> {
        self.overlay.sync()
    }

    /// Reads bytes: from the overlay where written, else from the point.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let g = self.written.geometry();
        let e = g.blocks_for_range(offset, buf.len() as u64)?;
        let end = offset + buf.len() as u64;
        // Runs of blocks from the same side, each read in one call.
        let in_overlay = |b: u64| self.written.any_marked(crate::geometry::Extent::new(b, 1));
        let mut b = e.start;
        while b < e.end() {
            let side = in_overlay(b);
            let mut run_end = b + 1;
            while run_end < e.end() && in_overlay(run_end) == side {
                run_end += 1;
            }
            let (boff, blen) = g.extent_bytes(crate::geometry::Extent::new(b, run_end - b));
            let from = offset.max(boff);
            let to = end.min(boff + blen);
            let dst = &mut buf[(from - offset) as usize..(to - offset) as usize];
            if side {
                self.overlay.read_at(dst, from)?;
            } else {
                self.view.read_at(dst, from)?;
            }
            b = run_end;
        }
        Ok(())
    }

    /// Writes bytes into the overlay; a partial block is first filled from
    /// the point.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        let g = self.written.geometry();
        let e = g.blocks_for_range(offset, buf.len() as u64)?;
        let _w = self.write_lock.lock();
        let end = offset + buf.len() as u64;
        // Only a block the write covers in part needs its old bytes first.
        let partial = |b: u64| {
            let (boff, blen) = g.extent_bytes(crate::geometry::Extent::new(b, 1));
            offset > boff || end < boff + blen
        };
        let mut edges = vec![e.start];
        if e.count > 1 {
            edges.push(e.end() - 1);
        }
        for b in edges.into_iter().filter(|&b| partial(b)) {
            let one = crate::geometry::Extent::new(b, 1);
            if !self.written.any_marked(one) {
                let (boff, blen) = g.extent_bytes(one);
                let mut old = vec![0u8; blen as usize];
                self.view.read_at(&mut old, boff)?;
                self.overlay.write_at(&old, boff)?;
            }
        }
        self.overlay.write_at(buf, offset)?;
        self.written.mark_extent(e)
    }
}

/// A test failover's disk as a [`Storage`]: to serve it (over NBD, say)
/// or hand it to anything that takes a disk.
impl Storage for OverlayView {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        OverlayView::read_at(self, buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        OverlayView::write_at(self, buf, offset)
    }
    fn sync(&self) -> Result<()> {
        OverlayView::sync(self)
    }
    fn len(&self) -> Result<u64> {
        Ok(self.view.geometry().size())
    }
    fn set_len(&self, _len: u64) -> Result<()> {
        Err(Error::new(
            ErrorKind::Unsupported,
            "a test failover's disk keeps its point's size",
        ))
    }
}
