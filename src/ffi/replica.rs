//! `blockrep_replica_*`: a replica in a directory (create, open, adopt,
//! apply, points, rollback, prune, export, digests, status).

use super::convert::{
    borrow, handle, handle_out, need, new_handle, opt_out, path_in, slice_out, str_in, struct_in,
    write_out,
};
use super::error::{blockrep_status, guard};
use super::failover::blockrep_adopt_point;
use super::incoming::blockrep_incoming;
use super::status::blockrep_disk_status;
use super::types::{blockrep_consistency, blockrep_disk_id};
use crate::geometry::Geometry;
use crate::io::{FileStorage, FsDir, Storage};
use crate::log::Digest;
use crate::replica::{AdoptAt, ApplyOutcome, Replica, RetentionPolicy};
use crate::status::DiskStatus;
use std::ffi::c_char;
use std::sync::Arc;

/// A replica in a directory. All calls but `_free` may run from many
/// threads at once; applies, rollbacks and prunes serialise inside.
pub struct blockrep_replica {
    inner: Replica,
}
handle!(blockrep_replica, Replica, "replica");

/// One retained point.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct blockrep_point {
    /// The sequence of the log that produced it.
    pub sequence: u64,
    /// Its epoch.
    pub epoch: u64,
    /// When it was cut (ns since the Unix epoch).
    pub created_ns: u64,
    /// Size of the undo log leading to the point before it (0: oldest).
    pub undo_bytes: u64,
    /// Crash- or app-consistent.
    pub consistency: blockrep_consistency,
}

/// A replica's identity and position.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct blockrep_replica_info {
    /// The disk replicated.
    pub disk_id: blockrep_disk_id,
    /// The current epoch.
    pub epoch: u64,
    /// The sequence of the latest applied log.
    pub applied: u64,
    /// The content digest at the latest point: with `applied`, what a
    /// primary reconciles with (`blockrep_pipeline_reconcile`).
    pub digest: [u8; 32],
    /// The disk's size at the latest point.
    pub size: u64,
    /// Its block size.
    pub block_size: u32,
}

/// Writes the replica's identity and position to `*out`. Thread-safe.
///
/// # Safety
/// `r` live; `out` null (refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn blockrep_replica_get_info(
    r: *const blockrep_replica,
    out: *mut blockrep_replica_info,
) -> blockrep_status {
    guard(|| {
        let s = borrow(r)?.status();
        write_out(
            out,
            blockrep_replica_info {
                disk_id: s.disk_id.into(),
                epoch: s.epoch,
                applied: s.applied,
                digest: s.digest.0,
                size: s.geometry.size(),
                block_size: s.geometry.block_size(),
            },
        )
    })
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
        write_out(
            out,
            (&DiskStatus::of_replica(borrow(r)?, super::status::now_ns())).into(),
        )
    })
}

/// Creates a replica in directory `dir` from the full log file `full_log`.
///
/// # Safety
/// Paths NUL-terminated, `out` writable; nulls refused.
#[no_mangle]
pub unsafe extern "C" fn blockrep_replica_create(
    dir: *const c_char,
    full_log: *const c_char,
    out: *mut *mut blockrep_replica,
) -> blockrep_status {
    guard(|| {
        let (dir, log) = (path_in(dir)?, path_in(full_log)?);
        need(out, "out")?;
        handle_out(
            out,
            Replica::create_from_file(Arc::new(FsDir::new(dir)?), log)?,
        )
    })
}

/// Opens the replica in `dir`, undoing an operation a crash interrupted.
///
/// # Safety
/// `dir` NUL-terminated, `out` writable; nulls refused.
#[no_mangle]
pub unsafe extern "C" fn blockrep_replica_open(
    dir: *const c_char,
    out: *mut *mut blockrep_replica,
) -> blockrep_status {
    guard(|| {
        let dir = path_in(dir)?;
        need(out, "out")?;
        handle_out(out, Replica::open(Arc::new(FsDir::new(dir)?))?)
    })
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
        let (dir, disk) = (path_in(dir)?, path_in(disk_path)?);
        let at = struct_in(at, "at")?;
        need(out, "out")?;
        let at = AdoptAt {
            disk_id: at.disk_id.into(),
            epoch: at.epoch,
            sequence: at.sequence,
            digest: Digest(at.digest),
            geometry: Geometry::new(at.disk_size, at.block_size)?,
        };
        let image: Arc<dyn Storage> = Arc::new(FileStorage::open(disk)?);
        handle_out(out, Replica::adopt(Arc::new(FsDir::new(dir)?), image, at)?)
    })
}

/// Verifies and applies the log file `path`. Writes the log's sequence to
/// `*out_sequence` and 1 to `*out_applied` when applied now, 0 when it was
/// applied before (both optional). A log of another disk, an older epoch,
/// a gap or another history is refused and changes nothing.
///
/// # Safety
/// `r` live; `path` NUL-terminated; outputs null or writable.
#[no_mangle]
pub unsafe extern "C" fn blockrep_replica_apply(
    r: *const blockrep_replica,
    path: *const c_char,
    out_sequence: *mut u64,
    out_applied: *mut u32,
) -> blockrep_status {
    guard(|| {
        let r = borrow(r)?;
        outcome_out(r.apply_file(path_in(path)?)?, out_sequence, out_applied);
        Ok(())
    })
}

/// Writes an apply's outcome to the optional outputs: the log's sequence,
/// and 1 when applied now (0: applied before).
pub(super) fn outcome_out(o: ApplyOutcome, out_sequence: *mut u64, out_applied: *mut u32) {
    opt_out(out_sequence, o.sequence());
    opt_out(out_applied, u32::from(o.applied_now()));
}

/// Starts receiving a log pushed in chunks by a transport: `*out` is the
/// caller's; feed it with `blockrep_incoming_write`, then
/// `blockrep_incoming_apply` (or drop it with `blockrep_incoming_free`).
/// Nothing is applied until the whole log is verified. Thread-safe on `r`.
///
/// # Safety
/// `r` live; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn blockrep_replica_receive(
    r: *const blockrep_replica,
    out: *mut *mut blockrep_incoming,
) -> blockrep_status {
    guard(|| {
        let r = borrow(r)?;
        need(out, "out")?;
        write_out(out, new_handle(r.receive()?))
    })
}

/// Copies up to `cap` retained points, oldest first, into `points` and
/// writes their total number to `*out_n` (which may exceed `cap`).
///
/// # Safety
/// `r` live; `points` `cap` writable elements (null only with `cap` 0);
/// `out_n` writable.
#[no_mangle]
pub unsafe extern "C" fn blockrep_replica_points(
    r: *const blockrep_replica,
    points: *mut blockrep_point,
    cap: usize,
    out_n: *mut usize,
) -> blockrep_status {
    guard(|| {
        let r = borrow(r)?;
        need(out_n, "out_n")?;
        let slots = slice_out(points, cap, "points")?;
        let all = r.points();
        for (slot, p) in slots.iter_mut().zip(&all) {
            let c = blockrep_point {
                sequence: p.sequence,
                epoch: p.epoch,
                created_ns: p.created_ns,
                undo_bytes: p.undo_bytes,
                consistency: p.consistency.into(),
            };
            *slot = c;
        }
        write_out(out_n, all.len())
    })
}

/// Rolls the replica back to retained point `sequence`; newer points are
/// dropped. Refused while a newer point is viewed.
///
/// # Safety
/// `r` live (null refused).
#[no_mangle]
pub unsafe extern "C" fn blockrep_replica_rollback(
    r: *const blockrep_replica,
    sequence: u64,
) -> blockrep_status {
    guard(|| borrow(r)?.rollback(sequence))
}

/// Prunes points: keeps the newest `keep_last`, and the newest
/// `keep_app_last` app-consistent ones; never the latest or a viewed one.
/// Writes how many points were dropped to `*out_dropped` when not null.
///
/// # Safety
/// `r` live (null refused); `out_dropped` null or writable.
#[no_mangle]
pub unsafe extern "C" fn blockrep_replica_prune(
    r: *const blockrep_replica,
    keep_last: u32,
    keep_app_last: u32,
    out_dropped: *mut usize,
) -> blockrep_status {
    guard(|| {
        let policy = RetentionPolicy {
            keep_last: keep_last as usize,
            keep_for: None,
            keep_app_last: keep_app_last as usize,
            keep_app_for: None,
        };
        let dropped = borrow(r)?.prune(&policy, 0)?;
        opt_out(out_dropped, dropped.len());
        Ok(())
    })
}

/// A retention policy: a point is kept when any rule keeps it; the latest
/// point and points in use by views are always kept. Zero disables a rule.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct blockrep_retention {
    /// Keep the newest this many points.
    pub keep_last: u32,
    /// Keep the newest this many app-consistent points.
    pub keep_app_last: u32,
    /// Keep points younger than this many seconds.
    pub keep_for_secs: u64,
    /// Keep app-consistent points younger than this many seconds.
    pub keep_app_for_secs: u64,
}

/// Prunes points by `*policy` as of `now_ns` (ns since the Unix epoch; 0:
/// the current time). Points between kept ones are dropped by merging
/// their undo logs. Writes how many were dropped to `*out_dropped` when
/// not null. Thread-safe.
///
/// # Safety
/// `r` live; `policy` readable; `out_dropped` null or writable.
#[no_mangle]
pub unsafe extern "C" fn blockrep_replica_prune_policy(
    r: *const blockrep_replica,
    policy: *const blockrep_retention,
    now_ns: u64,
    out_dropped: *mut usize,
) -> blockrep_status {
    guard(|| {
        let r = borrow(r)?;
        let p = struct_in(policy, "policy")?;
        let secs = |s: u64| (s > 0).then(|| std::time::Duration::from_secs(s));
        let policy = RetentionPolicy {
            keep_last: p.keep_last as usize,
            keep_for: secs(p.keep_for_secs),
            keep_app_last: p.keep_app_last as usize,
            keep_app_for: secs(p.keep_app_for_secs),
        };
        let now = if now_ns == 0 {
            super::status::now_ns()
        } else {
            now_ns
        };
        let dropped = r.prune(&policy, now)?;
        opt_out(out_dropped, dropped.len());
        Ok(())
    })
}

/// Marks retained point `sequence` app-consistent with `label` (the
/// integration quiesced the guest for it). Thread-safe.
///
/// # Safety
/// `r` live; `label` NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn blockrep_replica_tag(
    r: *const blockrep_replica,
    sequence: u64,
    label: *const c_char,
) -> blockrep_status {
    guard(|| borrow(r)?.tag_app_consistent(sequence, str_in(label, "label")?))
}

/// Writes point `sequence` as a sparse raw image file at `path`.
///
/// # Safety
/// `r` live; `path` NUL-terminated. Nulls refused.
#[no_mangle]
pub unsafe extern "C" fn blockrep_replica_export(
    r: *const blockrep_replica,
    sequence: u64,
    path: *const c_char,
) -> blockrep_status {
    guard(|| borrow(r)?.export(sequence, path_in(path)?))
}

/// Writes the BLAKE3 digest of every block of the latest point to the file
/// `path` (crash-safely: a temporary file, synced, renamed, the directory
/// synced), for the primary's
/// `blockrep_pipeline_resync`. Uses every core; applies wait meanwhile.
///
/// # Safety
/// `r` live; `path` NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn blockrep_replica_block_digests(
    r: *const blockrep_replica,
    path: *const c_char,
) -> blockrep_status {
    guard(|| {
        let r = borrow(r)?;
        r.block_digests(0)?.store(path_in(path)?)
    })
}

/// Frees a replica handle (its files stay). Views keep what they need.
///
/// # Safety
/// `r` null (refused) or live; no other call may use it meanwhile or after.
#[no_mangle]
pub unsafe extern "C" fn blockrep_replica_free(r: *mut blockrep_replica) -> blockrep_status {
    guard(|| super::convert::free(r).map(drop))
}
