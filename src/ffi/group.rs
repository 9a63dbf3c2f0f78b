//! Consistency groups, resize and tagging through the C ABI.

use super::log::{c_path, consistency_of};
use super::pipeline::{blockrep_cycle_info, blockrep_pipeline, info_out};
use super::replica::{blockrep_replica, live as live_replica};
use super::status::{blockrep_status, guard, null, register, unregister};
use crate::error::Result;
use crate::io::FsDir;
use crate::log::{MappedLog, ReadOptions};
use crate::replica::{ApplyOutcome, Replica, ReplicaGroup};
use crate::source::{ConsistencyGroup, CycleOptions};
use std::ffi::c_char;
use std::sync::Arc;

/// The replicas of one machine's disks, applied together. Calls on it
/// serialise inside; it may be used from several threads.
pub struct blockrep_replica_group {
    inner: ReplicaGroup,
}

/// The handles of an array of `n` pointers (null array or member refused).
unsafe fn handles<'a, T>(p: *const *const T, n: usize, what: &str) -> Result<Vec<&'a T>> {
    if p.is_null() || n == 0 {
        return Err(null(what));
    }
    // SAFETY: `p` holds `n` readable pointers per the caller's contract.
    let ptrs = unsafe { std::slice::from_raw_parts(p, n) };
    ptrs.iter()
        // SAFETY: each is null (refused) or live per the contract.
        .map(|&m| unsafe { m.as_ref() }.ok_or_else(|| null(what)))
        .collect()
}

/// One group cycle over the `n` pipelines of `members` (one machine's
/// disks, each of which joined groups): cut at one instant, their
/// logs sharing a group id, spooled all or none. `consistency` 1 crash, 2
/// app; `label` may be null; `out` null or `n` writable entries, in the
/// members' order. Also folds back a group cut a crash left incomplete.
///
/// # Safety
/// `members` `n` live pipeline pointers; `label` null or NUL-terminated;
/// `out` null or `n` writable entries.
#[no_mangle]
pub unsafe extern "C" fn blockrep_group_cycle(
    members: *const *const blockrep_pipeline,
    n: usize,
    consistency: u32,
    label: *const c_char,
    out: *mut blockrep_cycle_info,
) -> blockrep_status {
    guard(|| {
        // SAFETY: forwarded contract.
        let ms = unsafe { handles(members, n, "member pipeline")? };
        let pipelines: Vec<_> = ms.iter().map(|m| m.pipeline()).collect();
        let c = CycleOptions {
            consistency: consistency_of(consistency)?,
            label: if label.is_null() {
                String::new()
            } else {
                c_path(label)?.to_owned()
            },
            group: None,
        };
        let reports = ConsistencyGroup::new(pipelines)?.cycle(&c)?;
        if !out.is_null() {
            for (i, r) in reports.iter().enumerate() {
                // SAFETY: `out` holds `n` entries per the contract; i < n.
                info_out(unsafe { out.add(i) }, r);
            }
        }
        Ok(())
    })
}

/// Groups the `n` replicas of `members` (distinct disks), keeping the
/// group's journal in `dir`, and finishes a group apply a crash
/// interrupted. The replicas stay the caller's too.
///
/// # Safety
/// `dir` NUL-terminated; `members` `n` live replica pointers; `out`
/// writable.
#[no_mangle]
pub unsafe extern "C" fn blockrep_replica_group_open(
    dir: *const c_char,
    members: *const *const blockrep_replica,
    n: usize,
    out: *mut *mut blockrep_replica_group,
) -> blockrep_status {
    guard(|| {
        let dir = c_path(dir)?;
        // SAFETY: forwarded contract.
        let ms = unsafe { handles(members, n, "member replica")? };
        if out.is_null() {
            return Err(null("out"));
        }
        let replicas: Vec<Replica> = ms
            .iter()
            .map(|&m| live_replica(m).cloned())
            .collect::<Result<_>>()?;
        let inner = ReplicaGroup::open(Arc::new(FsDir::new(dir)?), replicas)?;
        let p = register(Box::new(blockrep_replica_group { inner }));
        // SAFETY: `out` is non-null and writable per the contract.
        unsafe { *out = p };
        Ok(())
    })
}

/// Applies one group cut: the `n` log files of `paths`, one per member
/// (any order), all or none. Writes 1 to `*out_applied` when applied now,
/// 0 when it was applied before (may be null).
///
/// # Safety
/// `g` live; `paths` `n` NUL-terminated strings; `out_applied` null or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn blockrep_replica_group_apply(
    g: *const blockrep_replica_group,
    paths: *const *const c_char,
    n: usize,
    out_applied: *mut u32,
) -> blockrep_status {
    guard(|| {
        // SAFETY: null (refused) or live per the contract.
        let g = unsafe { g.as_ref() }.ok_or_else(|| null("replica group"))?;
        if paths.is_null() || n == 0 {
            return Err(null("paths"));
        }
        // SAFETY: `paths` holds `n` pointers per the contract.
        let ps = unsafe { std::slice::from_raw_parts(paths, n) };
        let logs: Vec<MappedLog> = ps
            .iter()
            .map(|&p| MappedLog::open(c_path(p)?, &ReadOptions::default()))
            .collect::<Result<_>>()?;
        let refs: Vec<&MappedLog> = logs.iter().collect();
        let out = g.inner.apply(&refs)?;
        // SAFETY: null or writable per the contract.
        if let Some(o) = unsafe { out_applied.as_mut() } {
            *o = u32::from(out.first().is_some_and(ApplyOutcome::applied_now));
        }
        Ok(())
    })
}

/// Releases a replica group (its replicas stay).
///
/// # Safety
/// `g` null (refused) or a handle not yet released.
#[no_mangle]
pub unsafe extern "C" fn blockrep_replica_group_free(
    g: *mut blockrep_replica_group,
) -> blockrep_status {
    guard(|| unregister(g, "replica group").map(drop))
}

/// Lets the pipeline be cut in a consistency group (`blockrep_group_cycle`
/// refuses members that did not join): call it before the disk takes
/// writes. Its write completions then take part in a group cut's hold,
/// which costs two atomic operations each. No other call may run on `p`
/// meanwhile.
///
/// # Safety
/// `p` null (refused) or live, used by no other thread during the call.
#[no_mangle]
pub unsafe extern "C" fn blockrep_pipeline_join_group(
    p: *mut blockrep_pipeline,
) -> blockrep_status {
    guard(|| {
        // SAFETY: null (refused) or live and exclusive per the contract.
        let p = unsafe { p.as_mut() }.ok_or_else(|| null("pipeline"))?;
        p.pipeline_mut().join_group();
        Ok(())
    })
}

/// The disk was resized to `size` bytes (by the integration, with its I/O
/// drained): the next cycle's log ships the new size and the replica
/// follows. No other call may run on `p` meanwhile.
///
/// # Safety
/// `p` null (refused) or live, used by no other thread during the call.
#[no_mangle]
pub unsafe extern "C" fn blockrep_pipeline_resize(
    p: *mut blockrep_pipeline,
    size: u64,
) -> blockrep_status {
    guard(|| {
        // SAFETY: null (refused) or live and exclusive per the contract.
        let p = unsafe { p.as_mut() }.ok_or_else(|| null("pipeline"))?;
        p.pipeline_mut().resize(size)
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
    guard(|| live_replica(r)?.tag_app_consistent(sequence, c_path(label)?))
}
