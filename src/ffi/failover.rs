//! Failover through the C ABI: test failover, promotion, switching,
//! commit, the new primary's pipeline, adopting the old primary's disk,
//! reverse replication, and a disk's status for a console.

use super::log::c_path;
use super::pipeline::{blockrep_cycle_info, blockrep_pipeline, info_out, live as live_pipeline};
use super::replica::{blockrep_replica, live as live_replica, out_handle as replica_out};
use super::status::{blockrep_status, guard, null, register, unregister};
use super::tracker::blockrep_blockset;
use crate::error::Result;
use crate::failover::{test_failover, Failover};
use crate::geometry::Geometry;
use crate::id::DiskId;
use crate::io::{FileStorage, FsDir, Storage};
use crate::log::Digest;
use crate::replica::{AdoptAt, OverlayView, Replica};
use crate::status::{DiskStatus, Role};
use crate::tracker::{BlockSet, FrozenSet};
use std::ffi::c_char;
use std::sync::Arc;

/// A replica promoted by a failover: the new primary's disk. Reads and
/// writes may run from many threads; `_switch` and `_commit` wait for
/// them.
pub struct blockrep_failover {
    inner: Failover,
}

/// A test failover: a writable view of a point, discarded when freed.
/// Reads and writes may run from many threads.
pub struct blockrep_test_failover {
    inner: OverlayView,
}

/// The point a disk is declared to hold when adopted as a replica (the
/// failover point, for the old primary in reverse replication).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct blockrep_adopt_point {
    /// The disk (16 bytes).
    pub disk_id: [u8; 16],
    /// The point's epoch.
    pub epoch: u64,
    /// Its sequence.
    pub sequence: u64,
    /// Its content digest.
    pub digest: [u8; 32],
    /// The disk's size in bytes.
    pub disk_size: u64,
    /// Its block size.
    pub block_size: u32,
}

fn live<'a>(f: *const blockrep_failover) -> Result<&'a Failover> {
    // SAFETY: callers pass null (refused) or a live handle per contract.
    unsafe { f.as_ref() }
        .map(|f| &f.inner)
        .ok_or_else(|| null("failover"))
}

fn buf_mut<'a>(buf: *mut u8, len: usize) -> Result<&'a mut [u8]> {
    if buf.is_null() && len > 0 {
        return Err(null("buf"));
    }
    if len == 0 {
        return Ok(&mut []);
    }
    // SAFETY: non-null with `len` writable bytes per the contract.
    Ok(unsafe { std::slice::from_raw_parts_mut(buf, len) })
}

fn buf_ref<'a>(buf: *const u8, len: usize) -> Result<&'a [u8]> {
    if buf.is_null() && len > 0 {
        return Err(null("buf"));
    }
    if len == 0 {
        return Ok(&[]);
    }
    // SAFETY: non-null with `len` readable bytes per the contract.
    Ok(unsafe { std::slice::from_raw_parts(buf, len) })
}

fn write_out<T>(out: *mut T, v: T) -> Result<()> {
    if out.is_null() {
        return Err(null("out"));
    }
    // SAFETY: non-null; writable per the contract.
    unsafe { *out = v };
    Ok(())
}

/// Opens a test failover of retained point `point` (0: the latest) of
/// `r`: writes go to a sparse overlay file created at `overlay_path`; the
/// replica keeps applying logs underneath. Free it to discard it (the
/// overlay file is the caller's to delete).
///
/// # Safety
/// `r` live; `overlay_path` NUL-terminated; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn blockrep_test_failover_open(
    r: *const blockrep_replica,
    point: u64,
    overlay_path: *const c_char,
    out: *mut *mut blockrep_test_failover,
) -> blockrep_status {
    guard(|| {
        let r = live_replica(r)?;
        let overlay = FileStorage::create(c_path(overlay_path)?, 0)?;
        if out.is_null() {
            return Err(null("out"));
        }
        let inner = test_failover(r, (point != 0).then_some(point), Arc::new(overlay))?;
        write_out(out, register(Box::new(blockrep_test_failover { inner })))
    })
}

/// Reads `len` bytes at `offset` of a test failover.
///
/// # Safety
/// `t` live; `buf` `len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn blockrep_test_failover_read(
    t: *const blockrep_test_failover,
    buf: *mut u8,
    len: usize,
    offset: u64,
) -> blockrep_status {
    guard(|| {
        // SAFETY: null (refused) or live per the contract.
        let t = unsafe { t.as_ref() }.ok_or_else(|| null("test failover"))?;
        t.inner.read_at(buf_mut(buf, len)?, offset)
    })
}

/// Writes `len` bytes at `offset` of a test failover (into its overlay).
///
/// # Safety
/// `t` live; `buf` `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn blockrep_test_failover_write(
    t: *const blockrep_test_failover,
    buf: *const u8,
    len: usize,
    offset: u64,
) -> blockrep_status {
    guard(|| {
        // SAFETY: null (refused) or live per the contract.
        let t = unsafe { t.as_ref() }.ok_or_else(|| null("test failover"))?;
        t.inner.write_at(buf_ref(buf, len)?, offset)
    })
}

/// Discards a test failover: the replica is as if it never happened.
///
/// # Safety
/// `t` null (refused) or a handle not yet released.
#[no_mangle]
pub unsafe extern "C" fn blockrep_test_failover_free(
    t: *mut blockrep_test_failover,
) -> blockrep_status {
    guard(|| unregister(t, "test failover").map(drop))
}

/// Promotes `r` at retained point `point` (0: the latest): no log applies
/// to it from now on, and the handle serves the new primary's disk (the
/// point, with writes in an overlay in the replica's directory, until
/// `blockrep_failover_commit`).
///
/// # Safety
/// `r` live; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn blockrep_failover_promote(
    r: *const blockrep_replica,
    point: u64,
    out: *mut *mut blockrep_failover,
) -> blockrep_status {
    guard(|| {
        let r = live_replica(r)?;
        if out.is_null() {
            return Err(null("out"));
        }
        let inner = Failover::promote(r.clone(), (point != 0).then_some(point))?;
        write_out(out, register(Box::new(blockrep_failover { inner })))
    })
}

/// Moves an uncommitted failover to another retained point; the writes
/// made since the promotion are discarded (start the new primary's
/// pipeline again).
///
/// # Safety
/// `f` null (refused) or live.
#[no_mangle]
pub unsafe extern "C" fn blockrep_failover_switch(
    f: *const blockrep_failover,
    point: u64,
) -> blockrep_status {
    guard(|| live(f)?.switch(point))
}

/// Commits the failover: the image becomes the point plus the writes made
/// since; later points are dropped. Crash-safe (finished on the next
/// open). Writes `*out_divergence` (the caller's, may be null): the
/// blocks written since the point and those rolled back, the new
/// primary's part of what reverse replication sends.
///
/// # Safety
/// `f` live; `out_divergence` null or writable.
#[no_mangle]
pub unsafe extern "C" fn blockrep_failover_commit(
    f: *const blockrep_failover,
    out_divergence: *mut *mut blockrep_blockset,
) -> blockrep_status {
    guard(|| {
        let c = live(f)?.commit()?;
        if !out_divergence.is_null() {
            let set = blockrep_blockset::from_frozen(FrozenSet::new(0, c.divergence()));
            write_out(out_divergence, register(Box::new(set)))?;
        }
        Ok(())
    })
}

/// Reads `len` bytes at `offset` of the new primary's disk.
///
/// # Safety
/// `f` live; `buf` `len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn blockrep_failover_read(
    f: *const blockrep_failover,
    buf: *mut u8,
    len: usize,
    offset: u64,
) -> blockrep_status {
    guard(|| live(f)?.disk().read_at(buf_mut(buf, len)?, offset))
}

/// Writes `len` bytes at `offset` of the new primary's disk. Track it
/// like any guest write (`blockrep_pipeline_write_begin`/`_end` of the
/// pipeline from `blockrep_failover_start_pipeline`).
///
/// # Safety
/// `f` live; `buf` `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn blockrep_failover_write(
    f: *const blockrep_failover,
    buf: *const u8,
    len: usize,
    offset: u64,
) -> blockrep_status {
    guard(|| live(f)?.disk().write_at(buf_ref(buf, len)?, offset))
}

/// Starts the new primary's pipeline over the failover disk, its chain
/// (spool in the new directory `spool_dir`) beginning at the failover
/// point and its tracking (in memory) from now: call it before the first
/// write of the new primary.
///
/// # Safety
/// `f` live; `spool_dir` NUL-terminated; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn blockrep_failover_start_pipeline(
    f: *const blockrep_failover,
    spool_dir: *const c_char,
    spool_limit: u64,
    out: *mut *mut blockrep_pipeline,
) -> blockrep_status {
    guard(|| {
        let f = live(f)?;
        let dir = c_path(spool_dir)?;
        if out.is_null() {
            return Err(null("out"));
        }
        let p = f.start_pipeline(Arc::new(FsDir::new(dir)?), spool_limit)?;
        write_out(out, super::pipeline::boxed(p))
    })
}

/// Writes the point the old primary adopts for reverse replication (the
/// failover point) to `*out`.
///
/// # Safety
/// `f` live; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn blockrep_failover_adopt_point(
    f: *const blockrep_failover,
    out: *mut blockrep_adopt_point,
) -> blockrep_status {
    guard(|| {
        let a = live(f)?.adopt_at()?;
        write_out(
            out,
            blockrep_adopt_point {
                disk_id: a.disk_id.0,
                epoch: a.epoch,
                sequence: a.sequence,
                digest: a.digest.0,
                disk_size: a.geometry.size(),
                block_size: a.geometry.block_size(),
            },
        )
    })
}

/// Releases a failover handle (the failover itself stays recorded).
///
/// # Safety
/// `f` null (refused) or a handle not yet released.
#[no_mangle]
pub unsafe extern "C" fn blockrep_failover_free(f: *mut blockrep_failover) -> blockrep_status {
    guard(|| unregister(f, "failover").map(drop))
}

/// Makes the disk at `disk_path` (the old primary's) a replica in the new
/// directory `dir` at point `*at`, for reverse replication: the next log
/// it takes is the new primary's resync log.
///
/// # Safety
/// Paths NUL-terminated; `at` readable; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn blockrep_replica_adopt(
    dir: *const c_char,
    disk_path: *const c_char,
    at: *const blockrep_adopt_point,
    out: *mut *mut blockrep_replica,
) -> blockrep_status {
    guard(|| {
        let (dir, disk) = (c_path(dir)?, c_path(disk_path)?);
        // SAFETY: null (refused) or readable per the contract.
        let at = unsafe { at.as_ref() }.ok_or_else(|| null("at"))?;
        if out.is_null() {
            return Err(null("out"));
        }
        let at = AdoptAt {
            disk_id: DiskId(at.disk_id),
            epoch: at.epoch,
            sequence: at.sequence,
            digest: Digest(at.digest),
            geometry: Geometry::new(at.disk_size, at.block_size)?,
        };
        let image: Arc<dyn Storage> = Arc::new(FileStorage::open(disk)?);
        let r = Replica::adopt(Arc::new(FsDir::new(dir)?), image, at)?;
        replica_out(r, out)
    })
}

/// The blocks this primary changed that its replica may not hold (its
/// tracker and unacknowledged logs): after a failover, the old primary's
/// part of what reverse replication sends. `*out` is the caller's.
///
/// # Safety
/// `p` live; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn blockrep_pipeline_divergence(
    p: *const blockrep_pipeline,
    out: *mut *mut blockrep_blockset,
) -> blockrep_status {
    guard(|| {
        let set = live_pipeline(p)?.divergence()?;
        write_out(
            out,
            register(Box::new(blockrep_blockset::from_frozen(FrozenSet::new(
                0, set,
            )))),
        )
    })
}

/// Reverse replication from the new primary: spools a resync log, in a
/// new epoch, of every block of `other` (the old primary's divergence
/// unioned with the commit's, see `blockrep_blockset_union`; null for
/// none) and every block this pipeline tracked.
///
/// # Safety
/// `p` live; `other` null or live; `out` null or writable.
#[no_mangle]
pub unsafe extern "C" fn blockrep_pipeline_reverse_sync(
    p: *const blockrep_pipeline,
    other: *const blockrep_blockset,
    out: *mut blockrep_cycle_info,
) -> blockrep_status {
    guard(|| {
        let p = live_pipeline(p)?;
        // SAFETY: null or live per the contract.
        let other = match unsafe { other.as_ref() } {
            Some(s) => s.frozen().set().clone(),
            None => BlockSet::new(p.primary().tracker().geometry().block_count()),
        };
        let r = p.reverse_sync(&other)?;
        info_out(out, &r);
        Ok(())
    })
}

/// A disk's role at this site (`blockrep_disk_status.role`).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum blockrep_role {
    /// Runs the workload and replicates it.
    BLOCKREP_ROLE_PRIMARY = 1,
    /// Holds the copy and applies logs.
    BLOCKREP_ROLE_REPLICA = 2,
    /// A replica promoted by a failover not yet committed.
    BLOCKREP_ROLE_PROMOTED = 3,
    /// A replica whose failover was committed: the new primary's disk.
    BLOCKREP_ROLE_FAILED_OVER = 4,
}

/// Everything a console shows for one disk, primary or replica.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct blockrep_disk_status {
    /// The disk (16 bytes).
    pub disk_id: [u8; 16],
    /// Its role here.
    pub role: blockrep_role,
    /// The replication epoch.
    pub epoch: u64,
    /// The chain's head on a primary; the applied point on a replica (the
    /// failover point once promoted).
    pub latest_point: u64,
    /// Whether `rpo_ns` is set (false before the first point).
    pub has_rpo: bool,
    /// How much writing a disaster now would lose, in ns.
    pub rpo_ns: u64,
    /// Logs waiting to ship (primary).
    pub pending_logs: u64,
    /// Their bytes (primary).
    pub pending_bytes: u64,
    /// Blocks marked in the tracker (primary).
    pub dirty_blocks: u64,
    /// Whether a digest resync is required before replication goes on.
    pub resync_required: bool,
}

impl From<&DiskStatus> for blockrep_disk_status {
    fn from(s: &DiskStatus) -> Self {
        blockrep_disk_status {
            disk_id: s.disk_id.0,
            role: match s.role {
                Role::Primary => blockrep_role::BLOCKREP_ROLE_PRIMARY,
                Role::Replica => blockrep_role::BLOCKREP_ROLE_REPLICA,
                Role::Promoted => blockrep_role::BLOCKREP_ROLE_PROMOTED,
                Role::FailedOver => blockrep_role::BLOCKREP_ROLE_FAILED_OVER,
            },
            epoch: s.epoch,
            latest_point: s.latest_point,
            has_rpo: s.rpo_ns.is_some(),
            rpo_ns: s.rpo_ns.unwrap_or(0),
            pending_logs: s.pending_logs,
            pending_bytes: s.pending_bytes,
            dirty_blocks: s.dirty_blocks,
            resync_required: s.resync_required,
        }
    }
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The replica's status for a console (role, epoch, latest point, RPO)
/// in `*out`. Thread-safe.
///
/// # Safety
/// `r` live; `out` null (refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn blockrep_replica_disk_status(
    r: *const blockrep_replica,
    out: *mut blockrep_disk_status,
) -> blockrep_status {
    guard(|| {
        let s = DiskStatus::of_replica(live_replica(r)?, now_ns());
        write_out(out, (&s).into())
    })
}

/// The primary's status for a console; as `blockrep_replica_disk_status`.
///
/// # Safety
/// `p` live; `out` null (refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn blockrep_pipeline_disk_status(
    p: *const blockrep_pipeline,
    out: *mut blockrep_disk_status,
) -> blockrep_status {
    guard(|| {
        let s = DiskStatus::of_pipeline(live_pipeline(p)?, now_ns());
        write_out(out, (&s).into())
    })
}
