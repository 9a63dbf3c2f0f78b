//! `blockrep_failover_*`: a replica promoted to be the new primary's disk
//! (promote, switch, commit, read and write it, start the new primary's
//! pipeline, the point the old primary adopts).

use super::blockset::blockrep_blockset;
use super::convert::{
    borrow, bytes_in, bytes_out, free, handle, handle_out, need, path_in, write_out,
};
use super::error::{blockrep_status, guard};
use super::pipeline::blockrep_pipeline;
use super::replica::blockrep_replica;
use super::types::blockrep_disk_id;
use crate::failover::Failover;
use crate::io::FsDir;
use crate::tracker::FrozenSet;
use std::ffi::c_char;
use std::sync::Arc;

/// A replica promoted by a failover: the new primary's disk. Reads and
/// writes may run from many threads; `_switch` and `_commit` wait for
/// them.
pub struct blockrep_failover {
    inner: Failover,
}
handle!(blockrep_failover, Failover, "failover");

/// The point a disk is declared to hold when adopted as a replica (the
/// failover point, for the old primary in reverse replication).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct blockrep_adopt_point {
    /// The disk.
    pub disk_id: blockrep_disk_id,
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
        let r = borrow(r)?;
        need(out, "out")?;
        handle_out(
            out,
            Failover::promote(r.clone(), (point != 0).then_some(point))?,
        )
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
    guard(|| borrow(f)?.switch(point))
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
        let c = borrow(f)?.commit()?;
        if !out_divergence.is_null() {
            handle_out::<blockrep_blockset>(out_divergence, FrozenSet::new(0, c.divergence()))?;
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
    guard(|| borrow(f)?.disk().read_at(bytes_out(buf, len)?, offset))
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
    guard(|| borrow(f)?.disk().write_at(bytes_in(buf, len)?, offset))
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
        let f = borrow(f)?;
        let dir = path_in(spool_dir)?;
        need(out, "out")?;
        handle_out(
            out,
            f.start_pipeline(Arc::new(FsDir::new(dir)?), spool_limit)?,
        )
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
        let a = borrow(f)?.adopt_at()?;
        write_out(
            out,
            blockrep_adopt_point {
                disk_id: a.disk_id.into(),
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
    guard(|| free(f).map(drop))
}
