//! The replica through the C ABI.

use super::log::{blockrep_consistency, c_path};
use super::status::{blockrep_status, guard, null, register, unregister};
use crate::error::Error;
use crate::io::FsDir;
use crate::log::ReadOptions;
use crate::replica::{ApplyOutcome, IncomingLog, PointView, Replica, RetentionPolicy};
use std::sync::Arc;

/// A replica in a directory. All calls but `_free` may run from many
/// threads at once; applies, rollbacks and prunes serialise inside.
pub struct blockrep_replica {
    inner: Replica,
}

/// A log being received in chunks (`blockrep_replica_receive`). Not
/// thread-safe: one thread feeds it.
pub struct blockrep_incoming {
    inner: IncomingLog,
}

/// A read-only view of one retained point; pins it while open.
pub struct blockrep_view {
    inner: PointView,
}

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
    pub disk_id: [u8; 16],
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
        let s = live(r)?.status();
        // SAFETY: null (refused) or writable per the contract.
        let out = unsafe { out.as_mut() }.ok_or_else(|| null("out"))?;
        *out = blockrep_replica_info {
            disk_id: s.disk_id.0,
            epoch: s.epoch,
            applied: s.applied,
            digest: s.digest.0,
            size: s.geometry.size(),
            block_size: s.geometry.block_size(),
        };
        Ok(())
    })
}

pub(super) fn live<'a>(r: *const blockrep_replica) -> Result<&'a Replica, Error> {
    // SAFETY: callers pass null (refused) or a live handle per contract.
    unsafe { r.as_ref() }
        .map(|r| &r.inner)
        .ok_or_else(|| null("replica"))
}

pub(super) fn out_handle(r: Replica, out: *mut *mut blockrep_replica) -> Result<(), Error> {
    let p = register(Box::new(blockrep_replica { inner: r }));
    // SAFETY: callers checked `out` is non-null; writable per contract.
    unsafe { *out = p };
    Ok(())
}

/// Creates a replica in directory `dir` from the full log file `full_log`.
///
/// # Safety
/// Paths NUL-terminated, `out` writable; nulls refused.
#[no_mangle]
pub unsafe extern "C" fn blockrep_replica_create(
    dir: *const std::ffi::c_char,
    full_log: *const std::ffi::c_char,
    out: *mut *mut blockrep_replica,
) -> blockrep_status {
    guard(|| {
        let (dir, log) = (c_path(dir)?, c_path(full_log)?);
        if out.is_null() {
            return Err(null("out"));
        }
        out_handle(
            Replica::create_from_file(Arc::new(FsDir::new(dir)?), log)?,
            out,
        )
    })
}

/// Opens the replica in `dir`, undoing an operation a crash interrupted.
///
/// # Safety
/// `dir` NUL-terminated, `out` writable; nulls refused.
#[no_mangle]
pub unsafe extern "C" fn blockrep_replica_open(
    dir: *const std::ffi::c_char,
    out: *mut *mut blockrep_replica,
) -> blockrep_status {
    guard(|| {
        let dir = c_path(dir)?;
        if out.is_null() {
            return Err(null("out"));
        }
        out_handle(Replica::open(Arc::new(FsDir::new(dir)?))?, out)
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
    path: *const std::ffi::c_char,
    out_sequence: *mut u64,
    out_applied: *mut u32,
) -> blockrep_status {
    guard(|| {
        let r = live(r)?;
        outcome_out(r.apply_file(c_path(path)?)?, out_sequence, out_applied);
        Ok(())
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
        let r = live(r)?;
        if (points.is_null() && cap > 0) || out_n.is_null() {
            return Err(null("an output"));
        }
        let all = r.points();
        for (i, p) in all.iter().take(cap).enumerate() {
            let c = blockrep_point {
                sequence: p.sequence,
                epoch: p.epoch,
                created_ns: p.created_ns,
                undo_bytes: p.undo_bytes,
                consistency: p.consistency.into(),
            };
            // SAFETY: i < cap elements, writable per the contract.
            unsafe { *points.add(i) = c };
        }
        // SAFETY: non-null and writable.
        unsafe { *out_n = all.len() };
        Ok(())
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
    guard(|| live(r)?.rollback(sequence))
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
        let dropped = live(r)?.prune(&policy, 0)?;
        // SAFETY: null or writable per the contract.
        if let Some(o) = unsafe { out_dropped.as_mut() } {
            *o = dropped.len();
        }
        Ok(())
    })
}

/// Writes point `sequence` as a sparse raw image file at `path`.
///
/// # Safety
/// `r` live; `path` NUL-terminated. Nulls refused.
#[no_mangle]
pub unsafe extern "C" fn blockrep_replica_export(
    r: *const blockrep_replica,
    sequence: u64,
    path: *const std::ffi::c_char,
) -> blockrep_status {
    guard(|| live(r)?.export(sequence, c_path(path)?))
}

/// Opens a read-only view of point `sequence` (`*out`, owned by the
/// caller), pinning it until `blockrep_view_free`. Logs may keep applying.
///
/// # Safety
/// `r` live; `out` writable. Nulls refused.
#[no_mangle]
pub unsafe extern "C" fn blockrep_view_open(
    r: *const blockrep_replica,
    sequence: u64,
    out: *mut *mut blockrep_view,
) -> blockrep_status {
    guard(|| {
        let r = live(r)?;
        if out.is_null() {
            return Err(null("out"));
        }
        let p = register(Box::new(blockrep_view {
            inner: r.view(sequence)?,
        }));
        // SAFETY: `out` is non-null and writable.
        unsafe { *out = p };
        Ok(())
    })
}

/// Reads `len` bytes of the view's point at `offset` into `buf`.
/// Thread-safe.
///
/// # Safety
/// `v` live; `buf` `len` writable bytes. Nulls refused.
#[no_mangle]
pub unsafe extern "C" fn blockrep_view_read(
    v: *const blockrep_view,
    buf: *mut u8,
    len: usize,
    offset: u64,
) -> blockrep_status {
    guard(|| {
        // SAFETY: non-null handles are live per the contract.
        let v = unsafe { v.as_ref() }.ok_or_else(|| null("view"))?;
        if buf.is_null() {
            return Err(null("buf"));
        }
        // SAFETY: `len` writable bytes at `buf` per the contract.
        let b = unsafe { std::slice::from_raw_parts_mut(buf, len) };
        v.inner.read_at(b, offset)
    })
}

/// Closes a view, unpinning its point.
///
/// # Safety
/// `v` null (refused) or live.
#[no_mangle]
pub unsafe extern "C" fn blockrep_view_free(v: *mut blockrep_view) -> blockrep_status {
    guard(|| unregister(v, "view").map(drop))
}

/// Frees a replica handle (its files stay). Views keep what they need.
///
/// # Safety
/// `r` null (refused) or live; no other call may use it meanwhile or after.
#[no_mangle]
pub unsafe extern "C" fn blockrep_replica_free(r: *mut blockrep_replica) -> blockrep_status {
    guard(|| unregister(r, "replica").map(drop))
}

fn outcome_out(o: ApplyOutcome, out_sequence: *mut u64, out_applied: *mut u32) {
    let (seq, applied) = (o.sequence(), u32::from(o.applied_now()));
    // SAFETY: outputs are null or writable per the callers' contracts.
    unsafe {
        if let Some(o) = out_sequence.as_mut() {
            *o = seq;
        }
        if let Some(o) = out_applied.as_mut() {
            *o = applied;
        }
    }
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
        let r = live(r)?;
        if out.is_null() {
            return Err(null("out"));
        }
        let inner = r.receive()?;
        // SAFETY: `out` is non-null and writable per the contract.
        unsafe { *out = register(Box::new(blockrep_incoming { inner })) };
        Ok(())
    })
}

/// Appends `len` bytes of the log being received.
///
/// # Safety
/// `i` live, used by one thread; `buf` `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn blockrep_incoming_write(
    i: *mut blockrep_incoming,
    buf: *const u8,
    len: usize,
) -> blockrep_status {
    guard(|| {
        // SAFETY: null (refused) or a live handle used by one thread.
        let i = unsafe { i.as_mut() }.ok_or_else(|| null("incoming"))?;
        if len == 0 {
            return Ok(());
        }
        if buf.is_null() {
            return Err(null("buf"));
        }
        // SAFETY: `buf` holds `len` readable bytes per the contract.
        i.inner
            .write(unsafe { std::slice::from_raw_parts(buf, len) })
    })
}

/// Verifies the received log whole and applies it (as
/// `blockrep_replica_apply`; same outputs). Consumes the handle, also on
/// failure, which leaves the replica unchanged.
///
/// # Safety
/// `i` a live handle; outputs null or writable.
#[no_mangle]
pub unsafe extern "C" fn blockrep_incoming_apply(
    i: *mut blockrep_incoming,
    out_sequence: *mut u64,
    out_applied: *mut u32,
) -> blockrep_status {
    guard(|| {
        let i = unregister(i, "incoming log")?;
        outcome_out(
            i.inner.apply(&ReadOptions::default())?,
            out_sequence,
            out_applied,
        );
        Ok(())
    })
}

/// Abandons a log being received; nothing is left behind.
///
/// # Safety
/// `i` null (refused) or a handle not yet released.
#[no_mangle]
pub unsafe extern "C" fn blockrep_incoming_free(i: *mut blockrep_incoming) -> blockrep_status {
    guard(|| unregister(i, "incoming log").map(drop))
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
    path: *const std::ffi::c_char,
) -> blockrep_status {
    guard(|| {
        let r = live(r)?;
        r.block_digests(0)?.store(c_path(path)?)
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
        let r = live(r)?;
        // SAFETY: null (refused) or readable per the contract.
        let p = unsafe { policy.as_ref() }.ok_or_else(|| null("policy"))?;
        let secs = |s: u64| (s > 0).then(|| std::time::Duration::from_secs(s));
        let policy = RetentionPolicy {
            keep_last: p.keep_last as usize,
            keep_for: secs(p.keep_for_secs),
            keep_app_last: p.keep_app_last as usize,
            keep_app_for: secs(p.keep_app_for_secs),
        };
        let now = if now_ns == 0 {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        } else {
            now_ns
        };
        let dropped = r.prune(&policy, now)?;
        // SAFETY: null or writable per the contract.
        if let Some(o) = unsafe { out_dropped.as_mut() } {
            *o = dropped.len();
        }
        Ok(())
    })
}
