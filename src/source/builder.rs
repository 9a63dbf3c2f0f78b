//! Composing a [`Pipeline`] from its parts: the disk, the spool's
//! directory and bound, the kind of tracking. The front door for an
//! integration (and what the C ABI and the command line call), so that none
//! of them assembles chain points, trackers and spools itself.

use super::{AnyTracker, ChainPoint, Pipeline, Primary, Spool};
use crate::error::{Error, ErrorKind, Result};
use crate::geometry::Geometry;
use crate::id::DiskId;
use crate::io::{Dir, Storage};
use crate::log::WriterOptions;
use crate::tracker::{OpenState, PersistentTracker, Tracker, INTENT_REGION_DEFAULT};
use std::path::PathBuf;
use std::sync::Arc;

/// Builds a [`Pipeline`] with either kind of tracking ([`AnyTracker`]).
///
/// ```
/// use blockrep::io::{MemDir, MemStorage};
/// use blockrep::source::Pipeline;
/// use blockrep::DiskId;
/// use std::sync::Arc;
///
/// let disk = Arc::new(MemStorage::zeroed(16 << 20)?);
/// let p = Pipeline::builder(disk, Arc::new(MemDir::new()))
///     .block_size(4096)
///     .spool_limit(256 << 20)
///     .create(DiskId([1; 16]), 1)?; // new disk, epoch 1; initial sync next
/// p.initial_sync(Default::default())?;
/// # Ok::<(), blockrep::Error>(())
/// ```
#[must_use = "a builder does nothing until create or open"]
pub struct PipelineBuilder {
    disk: Arc<dyn Storage>,
    spool: Arc<dyn Dir>,
    spool_limit: u64,
    block_size: u32,
    tracker: Option<PathBuf>,
    region_size: u32,
    writer: WriterOptions,
    grouped: bool,
}

impl std::fmt::Debug for PipelineBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelineBuilder")
            .field("spool_limit", &self.spool_limit)
            .field("block_size", &self.block_size)
            .field("tracker", &self.tracker)
            .field("grouped", &self.grouped)
            .finish()
    }
}

impl Pipeline<AnyTracker> {
    /// A builder for the pipeline of `disk`, its spool in `spool`.
    pub fn builder(disk: Arc<dyn Storage>, spool: Arc<dyn Dir>) -> PipelineBuilder {
        PipelineBuilder {
            disk,
            spool,
            spool_limit: 1 << 30,
            block_size: 4096,
            tracker: None,
            region_size: INTENT_REGION_DEFAULT,
            writer: WriterOptions::default(),
            grouped: false,
        }
    }
}

impl PipelineBuilder {
    /// The spool holds at most about this many bytes of unshipped logs
    /// before it folds them back into the tracker (default 1 GiB).
    pub fn spool_limit(mut self, bytes: u64) -> Self {
        self.spool_limit = bytes;
        self
    }

    /// The block size of a new chain (default 4 KiB); an opened spool has
    /// its own.
    pub fn block_size(mut self, bytes: u32) -> Self {
        self.block_size = bytes;
        self
    }

    /// Tracks in the tracker file at `path` (survives restarts) instead of
    /// in memory (lost at exit: a restart then needs a digest resync).
    pub fn tracker_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.tracker = Some(path.into());
        self
    }

    /// The write-intent region of a new tracker file: 1, 2 or 4 MiB
    /// (default 4 MiB).
    pub fn intent_region(mut self, bytes: u32) -> Self {
        self.region_size = bytes;
        self
    }

    /// How logs are written (record size, threads).
    pub fn writer(mut self, writer: WriterOptions) -> Self {
        self.writer = writer;
        self
    }

    /// Lets the pipeline be cut in a consistency group (see
    /// [`Pipeline::join_group`]).
    pub fn grouped(mut self) -> Self {
        self.grouped = true;
        self
    }

    /// Starts replicating a disk never replicated: a new spool whose chain
    /// begins in `epoch`, a new tracker. Run
    /// [`initial_sync`](Pipeline::initial_sync) next.
    pub fn create(self, disk_id: DiskId, epoch: u64) -> Result<Pipeline<AnyTracker>> {
        let g = Geometry::new(self.disk.len()?, self.block_size)?;
        self.create_at(disk_id, ChainPoint::start(epoch, g))
    }

    /// Starts a chain that continues from `at` (the new primary after a
    /// failover, whose disk holds that point): a new spool, a new tracker
    /// from now on. The disk's size may differ from the point's (a resize
    /// the next log ships); the block size is the point's.
    pub fn create_at(self, disk_id: DiskId, at: ChainPoint) -> Result<Pipeline<AnyTracker>> {
        let g = Geometry::new(self.disk.len()?, at.geometry.block_size())?;
        let tracking = match &self.tracker {
            Some(p) => PersistentTracker::create(p, disk_id, g, self.region_size)?.into(),
            None => Tracker::new(g).into(),
        };
        let spool = Spool::create(self.spool.clone(), disk_id, at, self.spool_limit)?;
        self.assemble(tracking, spool)
    }

    /// Reopens after a restart: the spool (logs not acknowledged are
    /// shipped again; reconcile with the replica first) and the tracker
    /// file. The state says how tracking was found: anything but
    /// [`OpenState::Clean`] or [`OpenState::Recovered`] means it was lost
    /// (a missing or untrustworthy file, a disk changed while nothing
    /// tracked it, or tracking in memory): run
    /// [`resync`](Pipeline::resync) before the next cycle.
    pub fn open(self) -> Result<(Pipeline<AnyTracker>, OpenState)> {
        let spool = Spool::open(self.spool.clone(), self.spool_limit)?;
        let g = Geometry::new(self.disk.len()?, spool.head().geometry.block_size())?;
        let (tracking, state) = match &self.tracker {
            Some(p) => {
                let seen = self.disk.identity()?;
                let (t, s) = PersistentTracker::open_or_create(
                    p,
                    spool.disk_id(),
                    g,
                    self.region_size,
                    seen,
                )?;
                let s = match s {
                    OpenState::Created => OpenState::Invalid(Error::new(
                        ErrorKind::ResyncRequired,
                        "the tracker file was missing: tracking was lost",
                    )),
                    s => s,
                };
                (AnyTracker::from(t), s)
            }
            None => (
                Tracker::new(g).into(),
                OpenState::Invalid(Error::new(
                    ErrorKind::ResyncRequired,
                    "tracking in memory does not survive a restart",
                )),
            ),
        };
        Ok((self.assemble(tracking, spool)?, state))
    }

    fn assemble(self, tracking: AnyTracker, spool: Spool) -> Result<Pipeline<AnyTracker>> {
        let mut p = Pipeline::new(Primary::new(tracking, self.disk), spool, self.writer)?;
        if self.grouped {
            p.join_group();
        }
        Ok(p)
    }
}
