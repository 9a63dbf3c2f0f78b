//! Failover: promoting a replica to be the new primary's disk, switching
//! its point until commit, committing, and the pieces of reverse
//! replication (what differs between the two sides since the failover
//! point).
//!
//! * **Test failover** is a [`PointView`](crate::replica::PointView) with
//!   an overlay ([`test_failover`]): the replica goes on applying logs
//!   underneath and dropping the view leaves no trace.
//! * **Promotion** ([`Failover::promote`]) records the failover point
//!   durably (no log applies from then on) and serves a writable disk
//!   ([`Failover::disk`]): the point, with the new primary's writes in an
//!   overlay file in the replica's directory. Until
//!   [`commit`](Failover::commit) the point may change
//!   ([`switch`](Failover::switch)), which discards those writes.
//! * **Commit** records the blocks written since the point and the blocks
//!   of the later points it drops, then rolls the image back to the point,
//!   copies the written blocks in and keeps only that point. A crash during
//!   the commit is finished when the replica is opened again. The disk
//!   then reads and writes the image directly.
//! * **Reverse replication**: the new primary's pipeline (over
//!   [`Failover::disk`], its spool starting at the failover point) sends
//!   one resync log of every block that may differ:
//!   [`Committed::divergence`] on its side, and on the old primary's side
//!   what its tracker and spool hold
//!   ([`Pipeline::divergence`](crate::source::Pipeline::divergence)). The
//!   old primary's disk becomes a replica at the failover point
//!   ([`Replica::adopt`]) and applies it. Failback is the same done again.
//! * **Recovery plans** ([`RecoveryPlan`]) fail machines over group by
//!   group with the integration's hooks around each;
//!   [`DiskStatus`](crate::status::DiskStatus) is what a console shows per
//!   disk.

mod plan;

pub use plan::{
    DiskFailover, MachineFailover, PlanFailure, PlanGroup, PlanHooks, PlanMachine, PlanMode,
    PlanReport, RecoveryPlan,
};

use crate::error::{Error, ErrorKind, Result};
use crate::geometry::BlockSet;
use crate::io::{Dir, Storage};
use crate::replica::{AdoptAt, FailoverPhase, FailoverRecord, OverlayView, Replica, OVERLAY};
use crate::source::{AnyTracker, ChainPoint, Pipeline};
use parking_lot::RwLock;
use std::sync::Arc;

/// A writable view of `point` for a test machine: reads see the overlay,
/// then the point; the replica is never written and keeps applying logs.
/// Dropping it discards the test failover without a trace.
pub fn test_failover(
    replica: &Replica,
    point: Option<u64>,
    overlay: Arc<dyn Storage>,
) -> Result<OverlayView> {
    let point = match point {
        Some(p) => p,
        None => replica.status().applied,
    };
    replica.view(point)?.with_overlay(overlay)
}

enum Mode {
    /// Before commit: the point, with writes in the overlay.
    Overlay(OverlayView),
    /// After commit: the image itself.
    Committed,
    /// A switch or a commit failed half way: reopening the replica
    /// finishes or undoes it (see [`Failover::promote`]).
    Unavailable,
}

/// A replica promoted to be the new primary's disk; see the module docs.
///
/// A handle: cloning it is cheap, and every clone (and every disk from
/// [`disk`](Self::disk)) sees the same failover.
#[derive(Clone)]
pub struct Failover {
    replica: Replica,
    /// Writers hold it for reading; switching and committing for writing,
    /// so no write is in flight while the disk changes underneath.
    mode: Arc<RwLock<Mode>>,
}

impl std::fmt::Debug for Failover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Failover")
            .field("phase", &self.replica.failover_phase())
            .finish()
    }
}

/// What a commit fixed.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The failover point.
    pub point: u64,
    /// Blocks the new primary wrote since the point (before the commit).
    pub written: BlockSet,
    /// Blocks of the later points the commit dropped.
    pub rolled_back: BlockSet,
}

impl Committed {
    /// The blocks that may differ between the new primary and the old one
    /// on the new primary's side: written here since the point, or rolled
    /// back by the failover. Add what the new primary's tracker marked
    /// since the commit, and the old primary's own divergence.
    pub fn divergence(&self) -> BlockSet {
        self.written.union(&self.rolled_back)
    }
}

impl Failover {
    /// Promotes `replica` at `point` (the latest when `None`): from now on
    /// no log applies to it, and [`disk`](Self::disk) serves the point
    /// with writes going to an overlay in the replica's directory, until
    /// [`commit`](Self::commit). A replica promoted before (and not
    /// committed) is taken up again at its recorded point; its earlier
    /// writes are gone (they lived in the overlay only).
    pub fn promote(replica: Replica, point: Option<u64>) -> Result<Failover> {
        if let Some((phase, p)) = replica.failover_phase() {
            if phase == FailoverPhase::Committed {
                return Ok(Failover {
                    replica,
                    mode: Arc::new(RwLock::new(Mode::Committed)),
                });
            }
            if point.is_some_and(|q| q != p) {
                return Err(Error::new(
                    ErrorKind::Misuse,
                    format!("promoted at point {p} already: switch instead"),
                ));
            }
        }
        // Taken up again at the recorded point unless another is named
        // (refused above); a first promotion defaults to the latest point.
        let recorded = replica.failover_phase().map(|(_, p)| p);
        let point = point
            .or(recorded)
            .unwrap_or_else(|| replica.status().applied);
        let view = Self::overlay_at(&replica, point)?;
        Ok(Failover {
            replica,
            mode: Arc::new(RwLock::new(Mode::Overlay(view))),
        })
    }

    /// Records the promotion at `point` and opens a fresh overlay on it.
    fn overlay_at(replica: &Replica, point: u64) -> Result<OverlayView> {
        let view = replica.view(point)?;
        replica.store_failover(Some(FailoverRecord {
            phase: FailoverPhase::Promoted,
            point,
            written: Vec::new(),
            rolled_back: Vec::new(),
        }))?;
        let overlay = replica.dir().create(OVERLAY)?;
        view.with_overlay(overlay)
    }

    /// The replica promoted.
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// The failover point.
    pub fn point(&self) -> u64 {
        self.replica.failover_phase().map_or(0, |(_, p)| p)
    }

    /// The failover point as the start of the new primary's chain: give it
    /// to [`Spool::create`](crate::source::Spool::create) for the new
    /// primary's pipeline over [`disk`](Self::disk), before its first
    /// write, so its tracking starts at the failover point.
    pub fn chain_point(&self) -> Result<ChainPoint> {
        let point = self.point();
        let p = self
            .replica
            .points()
            .into_iter()
            .find(|p| p.sequence == point)
            .ok_or_else(|| Error::corrupt(format!("failover point {point} is not retained")))?;
        Ok(ChainPoint {
            epoch: p.epoch,
            sequence: p.sequence,
            digest: p.digest,
            created_ns: p.created_ns,
            geometry: self.replica.status().geometry,
        })
    }

    /// What the old primary adopts as its replica state for reverse
    /// replication: the failover point.
    pub fn adopt_at(&self) -> Result<AdoptAt> {
        let c = self.chain_point()?;
        Ok(AdoptAt {
            disk_id: self.replica.status().disk_id,
            epoch: c.epoch,
            sequence: c.sequence,
            digest: c.digest,
            geometry: c.geometry,
        })
    }

    /// Whether the failover was committed.
    pub fn is_committed(&self) -> bool {
        matches!(*self.mode.read(), Mode::Committed)
    }

    /// Moves the failover to another retained point before commit. The
    /// writes made since the promotion are discarded; the new primary's
    /// tracker must start again too.
    pub fn switch(&self, point: u64) -> Result<()> {
        let mut mode = self.mode.write();
        match *mode {
            Mode::Committed => {
                return Err(Error::new(
                    ErrorKind::Misuse,
                    "the failover is committed: its point is fixed",
                ))
            }
            Mode::Unavailable => return Err(unavailable()),
            Mode::Overlay(_) => {}
        }
        // The old view (and its pin) goes before the new overlay is made.
        *mode = Mode::Unavailable;
        match Self::overlay_at(&self.replica, point) {
            Ok(v) => {
                *mode = Mode::Overlay(v);
                Ok(())
            }
            Err(e) => {
                // Back on the recorded point, with an empty overlay.
                *mode = Mode::Overlay(Self::overlay_at(&self.replica, self.point())?);
                Err(e)
            }
        }
    }

    /// Fixes the failover point: the image becomes the point plus the
    /// writes made since, the later points are dropped. Writers wait while
    /// it runs. Crash-safe: the commit is recorded first and finished on
    /// the next open.
    pub fn commit(&self) -> Result<Committed> {
        let mut mode = self.mode.write();
        let Mode::Overlay(view) = &*mode else {
            return Err(match *mode {
                Mode::Committed => {
                    Error::new(ErrorKind::Misuse, "the failover is committed already")
                }
                _ => unavailable(),
            });
        };
        let point = view.sequence();
        view.sync()?;
        let written = view.written();
        let rolled_back = self.replica.blocks_after(point)?;
        let rec = FailoverRecord {
            phase: FailoverPhase::Committing,
            point,
            written: written.extents().collect(),
            rolled_back: rolled_back.extents().collect(),
        };
        self.replica.store_failover(Some(rec.clone()))?;
        // The view pins the point; the rollback to it needs no later pin.
        // Until the commit is finished the disk is unavailable; if it
        // fails, the next open of the replica finishes it.
        *mode = Mode::Unavailable;
        self.replica.finish_commit(rec)?;
        *mode = Mode::Committed;
        Ok(Committed {
            point,
            written,
            rolled_back,
        })
    }

    /// The new primary's disk: the point with the overlay before commit,
    /// the image after. Give it to the new primary's pipeline.
    pub fn disk(&self) -> Arc<dyn Storage> {
        Arc::new(FailoverDisk(self.clone()))
    }

    /// Starts the new primary's pipeline over the failover disk: its chain
    /// (a new spool in `spool`, at most about `spool_limit` bytes) begins
    /// at the failover point, its tracking (in memory) from now. Call it
    /// before the new primary's first write.
    pub fn start_pipeline(
        &self,
        spool: Arc<dyn Dir>,
        spool_limit: u64,
    ) -> Result<Pipeline<AnyTracker>> {
        let at = self.chain_point()?;
        let id = self.replica().status().disk_id;
        Pipeline::builder(self.disk(), spool)
            .spool_limit(spool_limit)
            .create_at(id, at)
    }
}

/// See [`Failover::disk`].
struct FailoverDisk(Failover);

fn unavailable() -> Error {
    Error::new(
        ErrorKind::Misuse,
        "the failover disk is unavailable after a failed switch or commit: reopen the replica",
    )
}

impl Storage for FailoverDisk {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        match &*self.0.mode.read() {
            Mode::Overlay(v) => v.read_at(buf, offset),
            Mode::Committed => self.0.replica.image().read_at(buf, offset),
            Mode::Unavailable => Err(unavailable()),
        }
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        match &*self.0.mode.read() {
            Mode::Overlay(v) => v.write_at(buf, offset),
            Mode::Committed => self.0.replica.image().write_at(buf, offset),
            Mode::Unavailable => Err(unavailable()),
        }
    }
    fn sync(&self) -> Result<()> {
        match &*self.0.mode.read() {
            Mode::Overlay(v) => v.sync(),
            Mode::Committed => self.0.replica.image().sync(),
            Mode::Unavailable => Err(unavailable()),
        }
    }
    fn len(&self) -> Result<u64> {
        Ok(self.0.replica.status().geometry.size())
    }
    fn set_len(&self, _len: u64) -> Result<()> {
        Err(Error::new(
            ErrorKind::Unsupported,
            "a failover disk is resized through its pipeline",
        ))
    }
}
