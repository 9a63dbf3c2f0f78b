//! The primary side: turning a disk and its tracked changes into logs.
//!
//! * [`Source`]: a disk's identity and where its chain of logs stands;
//!   writes the initial full log (skipping holes) and delta cycles that
//!   hand their blocks back to the tracker when anything fails.
//! * [`Primary`]: write guards with copy-before-write, so a cycle's point
//!   is one instant while writers run; zero writes and discards tracked as
//!   such.
//! * [`Spool`]: logs waiting for the transport, bounded and crash-safe.
//! * [`Pipeline`]: the three together, as an integration runs them.
//! * [`ConsistencyGroup`]: several disks cut at one instant.
//! * [`Throttle`]: a bandwidth limit; [`Progress`] reports for long copies.

mod builder;
mod cow;
mod group;
mod pipeline;
mod spool;
mod throttle;
mod tracking;

pub use builder::PipelineBuilder;
pub use cow::{CycleHandle, Primary, WriteGuard};
pub use group::ConsistencyGroup;
pub use pipeline::{CycleReport, Pipeline, PipelineCycle};
pub use spool::{ChainPoint, FoldBack, Spool, SpoolStatus, SpooledLog};
pub use throttle::{Progress, Throttle, TransferOptions};
pub use tracking::{AnyTracker, Tracking};

use crate::error::{Error, Result};
use crate::geometry::{Extent, Geometry};
use crate::id::DiskId;
use crate::io::{aligned_buf, Dir, ReadAhead, Storage, WriteBehind};
use crate::log::{
    digest_blocks, is_zero, BlockDigests, Consistency, Digest, GroupInfo, LogHeader, LogKind,
    LogSummary, LogWriter, WriterOptions,
};
use crate::replica::Replica;
use crate::tracker::{BlockSet, Tracker};
use std::io::Write;
use std::sync::Arc;

/// Bytes read from the source at a time.
const READ_CHUNK: u64 = 1 << 20;

/// Bytes a whole-disk copy reads at a time: large, as its reads bypass the
/// cache and get no read-ahead.
const COPY_CHUNK: u64 = 4 << 20;
/// Bytes digested between progress reports in a resync.
const DIGEST_SLAB: u64 = 64 << 20;

/// One disk replicated from this site: its identity and where its chain of
/// logs stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub(crate) disk_id: DiskId,
    pub(crate) epoch: u64,
    pub(crate) geometry: Geometry,
    /// The sequence of the last log produced (0: none yet).
    pub(crate) sequence: u64,
    /// The content digest after that log.
    pub(crate) digest: Digest,
}

/// What the point a cycle cuts is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CycleOptions {
    /// Crash-consistent, or app-consistent when the integration quiesced
    /// the guest for this cycle.
    pub consistency: Consistency,
    /// A label for the point (at most 255 bytes of UTF-8).
    pub label: String,
    /// The consistency group cut, when the cycle is one disk of a group.
    pub group: Option<GroupInfo>,
}

impl Default for CycleOptions {
    fn default() -> Self {
        CycleOptions {
            consistency: Consistency::Crash,
            label: String::new(),
            group: None,
        }
    }
}

impl CycleOptions {
    /// An app-consistent point with `label`.
    pub fn app_consistent(label: impl Into<String>) -> Self {
        CycleOptions {
            consistency: Consistency::App,
            label: label.into(),
            group: None,
        }
    }
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
    pub(crate) fn advance(&mut self, summary: &LogSummary) {
        self.sequence = summary.header.sequence;
        self.digest = summary.trailer.digest;
    }

    /// The disk.
    pub fn disk_id(&self) -> DiskId {
        self.disk_id
    }

    /// The epoch of the last log.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The disk's geometry.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    pub(crate) fn header_for(&self, kind: LogKind, cycle: &CycleOptions) -> Result<LogHeader> {
        let mut h = self.header(kind)?;
        h.consistency = cycle.consistency;
        h.label.clone_from(&cycle.label);
        h.group = cycle.group;
        h.check()?;
        Ok(h)
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
    /// (found with `SEEK_DATA`/`SEEK_HOLE` where the backend can) and zero
    /// blocks become zero extents without being read or stored. Start
    /// tracking before calling it: what changes during the copy goes into
    /// the first delta.
    pub fn initial_sync<'a, W: Write>(
        &mut self,
        disk: &dyn Storage,
        out: W,
        opts: impl Into<TransferOptions<'a>>,
    ) -> Result<(W, LogSummary)> {
        let mut t = opts.into();
        let mut w = LogWriter::new(out, self.header(LogKind::Full)?, t.writer)?;
        copy_disk(disk, &mut w, &mut t, None)?;
        let (out, summary) = w.finish()?;
        self.advance(&summary);
        Ok((out, summary))
    }

    /// Makes a local replica of `disk` in `dir` in one pass (initial
    /// replication to a replica on this host: a seed on removable media,
    /// a second disk), writing no log: each data range read is written to
    /// the replica's image, holes and zero blocks are skipped, and the
    /// digest of the full log is computed on the way
    /// ([`LogWriter::digest_only`]: the log without copies), so the
    /// replica stands for the chain's first point and the chain goes on
    /// from it. The image is synced before the replica exists; a failure
    /// leaves none. The summary's `bytes` is 0 (no log was written).
    pub fn initial_sync_into<'a>(
        &mut self,
        disk: &dyn Storage,
        dir: Arc<dyn Dir>,
        opts: impl Into<TransferOptions<'a>>,
    ) -> Result<(Replica, LogSummary)> {
        let mut t = opts.into();
        let header = self.header(LogKind::Full)?;
        let (replica, summary) = Replica::create_seeded(dir, |image| {
            image.set_len(header.geometry.size())?;
            let mut w = LogWriter::digest_only(header, t.writer)?;
            copy_disk(disk, &mut w, &mut t, Some(image))?;
            let (_, summary) = w.finish()?;
            image.sync()?;
            Ok(summary)
        })?;
        self.advance(&summary);
        Ok((replica, summary))
    }

    /// Resync after tracking was lost or the replica left the chain: moves
    /// the chain to the replica's point (`remote`, the replica's block
    /// digests), starts a new epoch, and writes a resync log of exactly the
    /// blocks whose content differs, compared by digest on all cores.
    /// Start tracking anew before calling it: what changes during the
    /// comparison goes into the next delta.
    pub fn resync<'a, W: Write>(
        &mut self,
        disk: &dyn Storage,
        remote: &BlockDigests,
        out: W,
        opts: impl Into<TransferOptions<'a>>,
    ) -> Result<(W, LogSummary)> {
        let mut t = opts.into();
        let differ = self.resync_blocks(disk, remote, &mut t)?;
        let mut w = LogWriter::new(out, self.header(LogKind::Resync)?, t.writer)?;
        send_blocks(disk, &mut w, &differ, &mut t)?;
        let (out, summary) = w.finish()?;
        self.advance(&summary);
        Ok((out, summary))
    }

    /// Positions the chain at `remote`'s point in a new epoch and returns
    /// the blocks to send.
    pub(crate) fn resync_blocks(
        &mut self,
        disk: &dyn Storage,
        remote: &BlockDigests,
        t: &mut TransferOptions<'_>,
    ) -> Result<BlockSet> {
        let g = self.geometry;
        if remote.disk_id != self.disk_id || remote.geometry.block_size() != g.block_size() {
            return Err(Error::mismatch(format!(
                "digests of disk {} ({}) for disk {} ({})",
                remote.disk_id, remote.geometry, self.disk_id, g
            )));
        }
        // In slabs, so limits and progress apply as the disk is read.
        let mut local = vec![[0u8; 32]; g.block_count() as usize];
        let per = (DIGEST_SLAB / u64::from(g.block_size())).max(1) as usize;
        for (i, slab) in local.chunks_mut(per).enumerate() {
            let first = (i * per) as u64;
            let (off, len) = g.extent_bytes(Extent::new(first, slab.len() as u64));
            t.read(len);
            digest_blocks(disk, g, first, slab, 0)?;
            t.report(off + len, g.size());
        }
        let differ = if remote.geometry == g {
            remote.differing(&local)?
        } else {
            // Resized since: the blocks both have are compared (the last
            // of them differs in length on one side), the rest is sent.
            let common = g.block_count().min(remote.geometry.block_count());
            let mut differ: Vec<Extent> = (0..common)
                .filter(|&b| b + 1 == common || remote.blocks[b as usize] != local[b as usize])
                .map(|b| Extent::new(b, 1))
                .collect();
            if g.block_count() > common {
                differ.push(Extent::new(common, g.block_count() - common));
            }
            BlockSet::from_extents(g.block_count(), differ)?
        };
        self.epoch = self.epoch.max(remote.epoch) + 1;
        self.sequence = remote.sequence;
        self.digest = remote.digest;
        Ok(differ)
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
        cycle: &CycleOptions,
    ) -> Result<(W, LogSummary)> {
        let frozen = tracker.cut();
        let result = (|| {
            let mut w = LogWriter::new(out, self.header_for(LogKind::Delta, cycle)?, opts)?;
            read_extents(
                disk,
                &mut w,
                frozen.extents(),
                &mut TransferOptions::default(),
            )?;
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

/// Writes a full log of `disk` under `header` to `out` (a base image
/// compacted from a replica's point, say): holes and zero blocks become
/// zero extents.
#[cfg(feature = "s3")]
pub(crate) fn full_log<W: Write>(
    disk: &dyn Storage,
    header: LogHeader,
    out: W,
) -> Result<(W, LogSummary)> {
    let mut t = TransferOptions::default();
    let mut w = LogWriter::new(out, header, t.writer)?;
    copy_disk(disk, &mut w, &mut t, None)?;
    w.finish()
}

/// What [`read_disk`] hands to the writing side of [`copy_disk`].
enum Piece {
    Zero(Extent),
    /// The extent's bytes, at the start of `store`'s aligned part (see
    /// [`aligned_buf`]).
    Data(Extent, Vec<u8>),
}

/// Chunks the reading thread of [`copy_disk`] may be ahead.
const READ_AHEAD: usize = 2;

/// Adds every block of `disk` to `w`: data ranges read in chunks, holes as
/// zero extents. With `tee` (a new, all-zero image of the disk's size),
/// the non-zero blocks read are also written there, so a local replica's
/// image is made in the same pass that makes the log's digest.
///
/// The disk is read past its cache ([`Storage::read_uncached`]: it is read
/// once) on a thread of its own, a few chunks ahead of this one, which
/// writes the tee and the log: reads past the cache get no read-ahead
/// from the kernel, so this thread's is what keeps the disk busy.
pub(crate) fn copy_disk<W: Write>(
    disk: &dyn Storage,
    w: &mut LogWriter<W>,
    t: &mut TransferOptions<'_>,
    tee: Option<&dyn Storage>,
) -> Result<()> {
    let g = w.header().geometry;
    let bs = g.block_size() as usize;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Piece>>(READ_AHEAD);
    let (free_tx, free_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let read_limit = t.read_limit;
    std::thread::scope(|s| {
        s.spawn(move || {
            if let Err(e) = read_disk(disk, g, read_limit, &free_rx, &tx) {
                let _ = tx.send(Err(e));
            }
        });
        let mut paid = w.written();
        let mut tee = tee.map(|image| (image, WriteBehind::new(image)));
        for piece in rx {
            match piece? {
                Piece::Zero(e) => w.add_zero(e)?,
                Piece::Data(e, mut store) => {
                    let (off, len) = g.extent_bytes(e);
                    let buf = aligned_buf(&mut store, len as usize);
                    if let Some((image, behind)) = tee.as_mut() {
                        write_nonzero(image, buf, off, bs)?;
                        // Synced at the end: written while the disk is read.
                        behind.wrote(off, len);
                    }
                    w.add_extent(e, buf)?;
                    t.wrote(w.written() - paid);
                    paid = w.written();
                    t.report(off + len, g.size());
                    let _ = free_tx.send(store);
                }
            }
        }
        t.report(g.size(), g.size());
        Ok(())
    })
}

/// The reading side of [`copy_disk`]: every block of `disk` in order, as
/// zero extents (holes) and chunks of data read into buffers handed back
/// through `free`, sent to `to`; stops early, without error, when a send
/// fails (the writing side stopped).
fn read_disk(
    disk: &dyn Storage,
    g: Geometry,
    read_limit: Option<&Throttle>,
    free: &std::sync::mpsc::Receiver<Vec<u8>>,
    to: &std::sync::mpsc::SyncSender<Result<Piece>>,
) -> Result<()> {
    let emit = |p| to.send(Ok(p)).is_ok();
    let bs = u64::from(g.block_size());
    let per = (COPY_CHUNK / bs).max(1);
    let mut next_block = 0u64;
    let mut at = 0u64;
    while let Some((start, len)) = disk.next_data(at)? {
        // Whole blocks covering the data range; a block part hole, part
        // data is read whole.
        let first = (start / bs).max(next_block);
        let end_block = (start + len).div_ceil(bs).min(g.block_count());
        if first > next_block && !emit(Piece::Zero(Extent::new(next_block, first - next_block))) {
            return Ok(());
        }
        let mut b = first;
        while b < end_block {
            let part = Extent::new(b, per.min(end_block - b));
            let (off, n) = g.extent_bytes(part);
            let mut store = free.try_recv().unwrap_or_default();
            if let Some(limit) = read_limit {
                limit.consume(n);
            }
            // Read once, so past the cache where the backend can.
            disk.read_uncached(aligned_buf(&mut store, n as usize), off)?;
            if !emit(Piece::Data(part, store)) {
                return Ok(());
            }
            b = part.end();
        }
        next_block = next_block.max(end_block);
        at = start + len;
        if next_block >= g.block_count() {
            break;
        }
    }
    if next_block < g.block_count() {
        emit(Piece::Zero(Extent::new(
            next_block,
            g.block_count() - next_block,
        )));
    }
    Ok(())
}

/// Writes the runs of non-zero blocks of `buf` (the bytes at `off`) to
/// `image`, whose blocks are zero already.
fn write_nonzero(image: &dyn Storage, buf: &[u8], off: u64, bs: usize) -> Result<()> {
    let mut run: Option<usize> = None;
    for (i, block) in buf.chunks(bs).enumerate() {
        match (is_zero(block), run) {
            (false, None) => run = Some(i * bs),
            (true, Some(start)) => {
                image.write_at(&buf[start..i * bs], off + start as u64)?;
                run = None;
            }
            _ => {}
        }
    }
    if let Some(start) = run {
        image.write_at(&buf[start..], off + start as u64)?;
    }
    Ok(())
}

/// Writes the blocks of `set` to a resync log; progress was reported by
/// the digest pass, which covered the whole disk.
pub(crate) fn send_blocks<W: Write>(
    disk: &dyn Storage,
    w: &mut LogWriter<W>,
    set: &BlockSet,
    t: &mut TransferOptions<'_>,
) -> Result<()> {
    let progress = t.progress.take();
    let result = read_extents(disk, w, set.extents(), t);
    t.progress = progress;
    result
}

/// Reads the blocks of `extents` from `disk` into `w`, a chunk at a time,
/// within the options' limits and reporting progress in blocks' bytes.
pub(crate) fn read_extents<W: Write>(
    disk: &dyn Storage,
    w: &mut LogWriter<W>,
    extents: impl Iterator<Item = Extent> + Clone,
    t: &mut TransferOptions<'_>,
) -> Result<()> {
    let g = w.header().geometry;
    let per = (READ_CHUNK / u64::from(g.block_size())).max(1);
    let mut buf = Vec::new();
    let mut paid = w.written();
    // Dirty blocks are scattered: read ahead so they are read together.
    let mut ahead = ReadAhead::new(disk, extents.clone().map(|e| g.extent_bytes(e)));
    for e in extents {
        let mut b = e.start;
        while b < e.end() {
            let part = Extent::new(b, per.min(e.end() - b));
            let (off, len) = g.extent_bytes(part);
            buf.resize(len as usize, 0);
            t.read(len);
            ahead.advance(len);
            disk.read_at(&mut buf, off)?;
            w.add_extent(part, &buf)?;
            t.wrote(w.written() - paid);
            paid = w.written();
            t.report(off + len, g.size());
            b = part.end();
        }
    }
    Ok(())
}
