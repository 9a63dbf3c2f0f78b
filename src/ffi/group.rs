//! `blockrep_replica_group_*` and `blockrep_group_cycle`: the disks of
//! one machine cut together on the primary and applied all or none on
//! the replica.

use super::convert::{
    borrow, free, handle, handles_in, need, new_handle, null, opt_out, path_in, slice_in,
    slice_out, write_out,
};
use super::error::{blockrep_status, guard};
use super::pipeline::{blockrep_cycle_info, blockrep_pipeline, info_out, label_in};
use super::replica::blockrep_replica;
use super::types::consistency_of;
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
handle!(blockrep_replica_group, ReplicaGroup, "replica group");

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
        let pipelines = handles_in(members, n)?;
        let c = CycleOptions {
            consistency: consistency_of(consistency)?,
            label: label_in(label)?,
            group: None,
        };
        let reports = ConsistencyGroup::new(pipelines)?.cycle(&c)?;
        if !out.is_null() {
            for (slot, r) in slice_out(out, n, "out")?.iter_mut().zip(&reports) {
                info_out(slot, r);
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
        let dir = path_in(dir)?;
        let replicas: Vec<Replica> = handles_in(members, n)?.into_iter().cloned().collect();
        need(out, "out")?;
        let group = ReplicaGroup::open(Arc::new(FsDir::new(dir)?), replicas)?;
        write_out(out, new_handle(group))
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
        let g = borrow(g)?;
        let ps = slice_in(paths, n, "paths")?;
        if ps.is_empty() {
            return Err(null("paths"));
        }
        let logs: Vec<MappedLog> = ps
            .iter()
            .map(|&p| MappedLog::open(path_in(p)?, &ReadOptions::default()))
            .collect::<Result<_>>()?;
        let refs: Vec<&MappedLog> = logs.iter().collect();
        let out = g.apply(&refs)?;
        opt_out(
            out_applied,
            u32::from(out.first().is_some_and(ApplyOutcome::applied_now)),
        );
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
    guard(|| free(g).map(drop))
}
