//! The primary side: turning a disk and its tracked changes into logs.
//!
//! This first part covers enabling replication, the initial full log
//! (skipping holes) and delta cycles that hand their blocks back to the
//! tracker when anything fails. Point-in-time reads under running writers
//! (copy-before-write), the spool, consistency groups and resync follow.

mod cow;

pub use cow::{CycleHandle, Primary, WriteGuard};

use crate::error::Result;
use crate::geometry::{Extent, Geometry};
use crate::id::DiskId;
use crate::io::Storage;
use crate::log::{Digest, LogHeader, LogKind, LogSummary, LogWriter, WriterOptions};
use crate::tracker::Tracker;
use std::io::Write;

/// Bytes read from the source at a time.
const READ_CHUNK: u64 = 1 << 20;

/// One disk replicated from this site: its identity and where its chain of
/// logs stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    disk_id: DiskId,
    epoch: u64,
    geometry: Geometry,
    /// The sequence of the last log produced (0: none yet).
    sequence: u64,
    /// The content digest after that log.
    digest: Digest,
}

impl Source {
    /// Enables replication of a disk: fixes its id and first epoch. The
    /// first log is [`initial_sync`](Self::initial_sync).
    pub fn enable(disk_id: DiskId, epoch: u64, geometry: Geometry) -> Self {
        Source {
            disk_id,
            epoch,
            geometry,
            sequence: 0,
            digest: Digest::default(),
        }
    }

    /// The sequence of the last log produced.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// The content digest the replica has after the last log.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// Moves the chain on past a log just written.
    fn advance(&mut self, summary: &LogSummary) {
        self.sequence = summary.header.sequence;
        self.digest = summary.trailer.digest;
    }

    fn header(&self, kind: LogKind) -> Result<LogHeader> {
        let mut h = LogHeader::new(
            self.disk_id,
            self.geometry,
            kind,
            self.epoch,
            self.sequence + 1,
        )?;
        h.base_sequence = self.sequence;
        h.base_digest = self.digest;
        Ok(h)
    }

    /// Writes the full log of `disk` to `out`: data ranges are read, holes
    /// (found with SEEK_DATA/SEEK_HOLE where the backend can) and zero
    /// blocks become zero extents without being read or stored. Start
    /// tracking before calling it: what changes during the copy goes into
    /// the first delta.
    pub fn initial_sync<W: Write>(
        &mut self,
        disk: &dyn Storage,
        out: W,
        opts: WriterOptions,
    ) -> Result<(W, LogSummary)> {
        let g = self.geometry;
        let mut w = LogWriter::new(out, self.header(LogKind::Full)?, opts)?;
        let bs = g.block_size() as u64;
        let mut next_block = 0u64;
        let mut buf = Vec::new();
        let mut at = 0u64;
        while let Some((start, len)) = disk.next_data(at)? {
            // Whole blocks covering the data range; a block part hole, part
            // data is read whole.
            let first = (start / bs).max(next_block);
            let end_block = (start + len).div_ceil(bs).min(g.block_count());
            if first > next_block {
                w.add_zero(Extent::new(next_block, first - next_block))?;
            }
            let mut b = first;
            while b < end_block {
                let n = (end_block - b).min(READ_CHUNK / bs);
                let e = Extent::new(b, n);
                let (off, elen) = g.extent_bytes(e);
                buf.resize(elen as usize, 0);
                disk.read_at(&mut buf, off)?;
                w.add_extent(e, &buf)?;
                b += n;
            }
            next_block = next_block.max(end_block);
            at = start + len;
            if next_block >= g.block_count() {
                break;
            }
        }
        if next_block < g.block_count() {
            w.add_zero(Extent::new(next_block, g.block_count() - next_block))?;
        }
        let (out, summary) = w.finish()?;
        self.advance(&summary);
        Ok((out, summary))
    }

    /// One delta cycle: cuts `tracker`, reads the frozen blocks from `disk`
    /// and writes the next log (sequence + 1, chained to the last digest)
    /// to `out`. When any step fails, the cut's blocks go back to the
    /// tracker and the chain does not advance: nothing is lost.
    ///
    /// `disk` must read as of the cut (a snapshot the integration took at
    /// the cut, or a quiesced disk) for the point to be one instant.
    pub fn cycle<W: Write>(
        &mut self,
        tracker: &Tracker,
        disk: &dyn Storage,
        out: W,
        opts: WriterOptions,
    ) -> Result<(W, LogSummary)> {
        let frozen = tracker.cut();
        let result = (|| {
            let g = self.geometry;
            let mut w = LogWriter::new(out, self.header(LogKind::Delta)?, opts)?;
            let mut buf = Vec::new();
            for e in frozen.extents() {
                let per = (READ_CHUNK / g.block_size() as u64).max(1);
                let mut b = e.start;
                while b < e.end() {
                    let part = Extent::new(b, per.min(e.end() - b));
                    let (off, len) = g.extent_bytes(part);
                    buf.resize(len as usize, 0);
                    disk.read_at(&mut buf, off)?;
                    w.add_extent(part, &buf)?;
                    b = part.end();
                }
            }
            w.finish()
        })();
        match result {
            Ok((out, summary)) => {
                self.advance(&summary);
                Ok((out, summary))
            }
            Err(e) => {
                tracker.reclaim(&frozen);
                Err(e.with_sequence(self.sequence + 1))
            }
        }
    }
}
