//! The primary side as an integration runs it: a [`Primary`](super::Primary) whose cycles
//! write into a [`Spool`], folding the spool back into the tracker when it
//! overflows.

use super::{copy_disk, CycleOptions, Primary, Spool, SpoolStatus, Tracking, TransferOptions};
use super::{send_blocks, ChainPoint, CycleHandle, FoldBack, Source};
use crate::error::{Error, ErrorKind, Result};
use crate::geometry::Extent;
use crate::io::Dir;
use crate::log::{BlockDigests, LogKind, LogSummary, WriterOptions};
use crate::replica::Replica;
use crate::tracker::{BlockSet, Tracker};
use parking_lot::{Mutex, MutexGuard};
use std::sync::Arc;

/// What a cycle (or an initial sync, or a resync) did.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CycleReport {
    /// The log written.
    pub summary: LogSummary,
    /// Blocks it ships (data and zero).
    pub blocks: u64,
    /// What was folded back from the spool before the cut, if anything.
    pub folded: Option<FoldBack>,
}

/// One disk on the primary: tracking with copy-before-write, cycles, and
/// the spool the transport takes logs from. Guest writes go through
/// [`primary`](Self::primary)'s guards from any thread; cycles run one at
/// a time (a second caller waits); the spool may be used by the transport
/// concurrently.
pub struct Pipeline<T: Tracking = Tracker> {
    pub(crate) primary: Primary<T>,
    /// Shared with a transport running on its own thread (the shipper).
    pub(crate) spool: Arc<Spool>,
    pub(crate) writer: WriterOptions,
    pub(crate) cycles: Mutex<()>,
}

impl<T: Tracking> std::fmt::Debug for Pipeline<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("primary", &self.primary)
            .field("spool", &self.spool)
            .finish()
    }
}

impl<T: Tracking> Pipeline<T> {
    /// Joins a primary and its spool, which must be of the same block size
    /// (a different disk size is a resize the next log ships).
    pub fn new(primary: Primary<T>, spool: Spool, writer: WriterOptions) -> Result<Self> {
        let (a, b) = (primary.tracker().geometry(), spool.head().geometry);
        if a.block_size() != b.block_size() {
            return Err(Error::mismatch(format!(
                "the tracker's geometry {a} differs from the spool's {b}"
            )));
        }
        Ok(Pipeline {
            primary,
            spool: Arc::new(spool),
            writer,
            cycles: Mutex::new(()),
        })
    }

    /// The primary: write guards, tracker.
    pub fn primary(&self) -> &Primary<T> {
        &self.primary
    }

    /// Takes the primary back.
    pub fn into_primary(self) -> Primary<T> {
        self.primary
    }

    /// Stops replicating cleanly: blocks zeroed since the last cut are
    /// marked, and the tracking is closed with the disk's identity as of
    /// now (for a persistent tracker, the next open is clean if nothing
    /// writes to the disk meanwhile). Drain the disk's I/O first. The
    /// spool keeps its logs for the next start.
    pub fn close(self) -> Result<()> {
        let disk = self.primary.disk().identity()?;
        self.primary.into_tracking().close(disk)
    }

    /// The spool: logs to ship, acknowledgements.
    pub fn spool(&self) -> &Spool {
        &self.spool
    }

    /// The spool, shared: for a transport on a thread of its own (the
    /// shipper).
    pub fn shared_spool(&self) -> Arc<Spool> {
        self.spool.clone()
    }

    /// The chain's head as a [`Source`], at the disk's current size.
    pub fn source(&self) -> Source {
        let mut s = self.spool.source();
        s.geometry = self.primary.tracker().geometry();
        s
    }

    /// Lets the disk be cut in a [`ConsistencyGroup`](super::ConsistencyGroup)
    /// (call before it takes writes, or with them drained: `&mut self`).
    /// Its write completions then cost two more atomic operations, the
    /// price of a group's single instant.
    pub fn join_group(&mut self) {
        self.primary.join_group();
    }

    /// The disk was resized to `size` bytes (with its I/O drained); the
    /// next log ships the new size and the replica follows it.
    pub fn resize(&mut self, size: u64) -> Result<()> {
        self.primary.resize(size)
    }

    /// Writes the full log of the disk into the spool (the first log of a
    /// chain). Writers may run: what they change goes into the next cycle.
    pub fn initial_sync(&self, mut t: TransferOptions<'_>) -> Result<CycleReport> {
        let _one = self.cycles.lock();
        let mut source = self.chain_start()?;
        let h = source.header(LogKind::Full)?;
        let mut f = self.spool.begin(h, t.writer)?;
        copy_disk(&**self.primary.disk(), &mut f, &mut t, None)?;
        let summary = f.commit()?;
        self.spool.push(&summary)?;
        source.advance(&summary);
        Ok(CycleReport {
            blocks: summary.trailer.blocks,
            summary,
            folded: None,
        })
    }

    /// Initial replication into a replica on this host, in one pass: the
    /// replica is made in `dir` from the disk as it is read
    /// ([`Source::initial_sync_into`]), and the spool records its point as
    /// delivered, with no log file; cycles go on from it and are applied
    /// to the returned replica (or shipped to one opened from `dir`).
    ///
    /// The replica is durable before the spool's state records the point:
    /// a crash between the two leaves a replica the spool does not know,
    /// which a second call refuses (the directory holds a replica); bring
    /// it back with a [`resync`](Self::resync) from its digests.
    pub fn initial_sync_into(
        &self,
        dir: Arc<dyn Dir>,
        t: TransferOptions<'_>,
    ) -> Result<(CycleReport, Replica)> {
        let _one = self.cycles.lock();
        let mut source = self.chain_start()?;
        let (replica, summary) = source.initial_sync_into(&**self.primary.disk(), dir, t)?;
        self.spool.push_delivered(&summary)?;
        Ok((
            CycleReport {
                blocks: summary.trailer.blocks,
                summary,
                folded: None,
            },
            replica,
        ))
    }

    /// The chain's head, which an initial sync must start.
    fn chain_start(&self) -> Result<Source> {
        let source = self.source();
        if source.sequence != 0 {
            return Err(Error::new(
                ErrorKind::Misuse,
                format!(
                    "the chain already has {} logs: an initial sync starts one",
                    source.sequence
                ),
            ));
        }
        Ok(source)
    }

    /// One cycle: [`begin_cycle`](Self::begin_cycle), then
    /// [`PipelineCycle::write`].
    pub fn cycle(&self, cycle: &CycleOptions) -> Result<CycleReport> {
        self.begin_cycle().and_then(|c| c.write(cycle))
    }

    /// Starts a cycle: when the spool is over its limit, folds its
    /// unshipped logs back into the tracker; then cuts. The point is now;
    /// writers go on. Another cycle waits until this one is written or
    /// dropped (which hands its blocks back).
    pub fn begin_cycle(&self) -> Result<PipelineCycle<'_, T>> {
        let one = self.cycles.lock();
        let folded = if self.spool.over_limit() {
            let p = &self.primary;
            Some(self.spool.fold_back(&mut |e| p.mark_folded(e))?)
        } else {
            None
        };
        Ok(PipelineCycle {
            pipeline: self,
            handle: self.primary.begin_cycle(),
            folded,
            _one: one,
        })
    }

    /// Resync after tracking was lost (a persistent tracker found invalid)
    /// or the replica left the chain (its epoch or point no longer
    /// matches): drops the spool's logs, restarts the chain at the
    /// replica's point (`remote`, its block digests), cuts the tracker and
    /// spools a resync log of exactly the blocks that differ, in a new
    /// epoch. Writers may run: what they change goes into the next cycle.
    pub fn resync(&self, remote: &BlockDigests, mut t: TransferOptions<'_>) -> Result<CycleReport> {
        let _one = self.cycles.lock();
        self.spool.restart(ChainPoint {
            epoch: remote.epoch,
            sequence: remote.sequence,
            digest: remote.digest,
            created_ns: 0,
            geometry: remote.geometry,
        })?;
        let handle = self.primary.begin_resync();
        let mut source = self.source();
        let disk = &**self.primary.disk();
        let differ = source.resync_blocks(disk, remote, &mut t)?;
        let mut f = self
            .spool
            .begin(source.header(LogKind::Resync)?, t.writer)?;
        send_blocks(disk, &mut f, &differ, &mut t)?;
        let summary = f.commit()?;
        self.spool.push(&summary)?;
        handle.complete();
        Ok(CycleReport {
            blocks: differ.count(),
            summary,
            folded: None,
        })
    }

    /// The blocks this side changed that the replica may not hold: marked
    /// in the tracker, or in a log of the spool not acknowledged. After a
    /// failover this is the old primary's part of the divergence that
    /// reverse replication sends back from the new primary.
    pub fn divergence(&self) -> Result<BlockSet> {
        let mut set = self.primary.marked();
        let n = set.universe();
        for l in self.spool.pending() {
            let log = self.spool.read(&l)?;
            let blocks = BlockSet::from_extents(
                n,
                log.extents()?
                    .into_iter()
                    .map(|e| e.extent)
                    .filter(|e| e.start < n)
                    .map(|e| Extent::new(e.start, e.count.min(n - e.start))),
            )?;
            set = set.union(&blocks);
        }
        Ok(set)
    }

    /// Reverse replication from this (new) primary: marks `other` (the
    /// blocks that may differ on the other side, and those the failover
    /// rolled back) durably, cuts, and spools a resync log in a new epoch
    /// holding every marked block as of the cut. Its base is the spool's
    /// head, the failover point; the other side adopts that point
    /// ([`Replica::adopt`](crate::replica::Replica::adopt)) and applies it.
    pub fn reverse_sync(&self, other: &BlockSet) -> Result<CycleReport> {
        let one = self.cycles.lock();
        for e in other.extents() {
            self.primary.mark_durable(e)?;
        }
        let cycle = PipelineCycle {
            pipeline: self,
            handle: self.primary.begin_cycle(),
            folded: None,
            _one: one,
        };
        cycle.write_as(LogKind::Resync, &CycleOptions::default())
    }

    /// The spool's status: pending logs and bytes, acknowledged point.
    pub fn status(&self) -> SpoolStatus {
        self.spool.status()
    }
}

/// A cycle whose cut is taken (see [`Pipeline::begin_cycle`]).
pub struct PipelineCycle<'a, T: Tracking = Tracker> {
    pipeline: &'a Pipeline<T>,
    handle: CycleHandle<'a, T>,
    folded: Option<FoldBack>,
    _one: MutexGuard<'a, ()>,
}

impl<T: Tracking> PipelineCycle<'_, T> {
    /// Reads the frozen blocks as of the cut and writes the next log into
    /// the spool. On failure the blocks go back to the tracker.
    pub fn write(self, cycle: &CycleOptions) -> Result<CycleReport> {
        self.write_as(LogKind::Delta, cycle)
    }

    /// Writes the log as a delta, or as a resync starting a new epoch.
    fn write_as(mut self, kind: LogKind, cycle: &CycleOptions) -> Result<CycleReport> {
        let spool = &self.pipeline.spool;
        let blocks = self.handle.blocks();
        let mut source = self.pipeline.source();
        if kind == LogKind::Resync {
            source.epoch += 1;
        }
        let h = source.header_for(kind, cycle)?;
        let seq = h.sequence;
        let summary = (|| {
            let mut f = spool.begin(h, self.pipeline.writer)?;
            self.handle.fill(&mut f)?;
            let summary = f.commit()?;
            spool.push(&summary)?;
            Ok(summary)
        })()
        .map_err(|e: Error| e.with_sequence(seq))?;
        self.handle.complete();
        Ok(CycleReport {
            summary,
            blocks,
            folded: self.folded,
        })
    }
}
