//! `blockrep_ptracker_*`: the persistent tracker.

use super::blockset::blockrep_blockset;
use super::convert::{
    borrow, disk_id_in, free, handle, handle_out, need, new_handle, opt_path_in, path_in, write_out,
};
use super::error::{blockrep_status, guard};
use super::types::blockrep_disk_id;
use crate::geometry::Geometry;
use crate::io::{FileStorage, Storage};
use crate::tracker::{OpenState, PersistentTracker};
use std::ffi::c_char;

/// A tracker persisted in a memory-mapped file (write-intent map and
/// checkpoint). All calls but `_close` and `_free` may run from many
/// threads at once on the same handle.
pub struct blockrep_ptracker {
    inner: TrackerFile,
}
handle!(blockrep_ptracker, TrackerFile, "tracker");

/// A persistent tracker and the disk it tracks.
pub(crate) struct TrackerFile {
    tracker: PersistentTracker,
    /// The disk, when named: its identity is recorded at a clean close and
    /// checked at the next open.
    disk: Option<FileStorage>,
}

/// The disk's identity now, when it was named.
fn identity_of(disk: Option<&FileStorage>) -> crate::Result<Option<crate::io::DiskIdentity>> {
    match disk {
        Some(d) => d.identity(),
        None => Ok(None),
    }
}

/// How a persistent tracker file was found when opened.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum blockrep_open_state {
    /// A new file: nothing was tracked before; run an initial sync.
    BLOCKREP_OPEN_CREATED = 1,
    /// The last stop was clean; its dirty blocks are marked again.
    BLOCKREP_OPEN_CLEAN = 2,
    /// The last stop was unclean; the blocks that may differ are marked
    /// again and the next cycle ships them.
    BLOCKREP_OPEN_RECOVERED = 3,
    /// The file could not be trusted, or the disk changed while nothing
    /// tracked it, and the file was recreated: tracking was lost, run a
    /// digest resync.
    BLOCKREP_OPEN_INVALID = 4,
}

impl From<&OpenState> for blockrep_open_state {
    fn from(s: &OpenState) -> Self {
        match s {
            OpenState::Created => blockrep_open_state::BLOCKREP_OPEN_CREATED,
            OpenState::Clean { .. } => blockrep_open_state::BLOCKREP_OPEN_CLEAN,
            OpenState::Recovered { .. } => blockrep_open_state::BLOCKREP_OPEN_RECOVERED,
            OpenState::Invalid(_) => blockrep_open_state::BLOCKREP_OPEN_INVALID,
        }
    }
}

/// Opens the tracker file at `path` (a NUL-terminated UTF-8 path) for the
/// disk `*disk_id` of `size` bytes in `block_size` blocks, or
/// creates it (intent regions of `region_size` bytes: 1, 2 or 4 MiB). On
/// success writes the handle (owned by the caller) to `*out` and how the
/// file was found to `*out_state`.
///
/// `disk_path` names the disk's file: its identity (inode, size, times) is
/// recorded at a clean close and compared at the next open, so writes made
/// while nothing tracked are detected (`BLOCKREP_OPEN_INVALID`). Null when
/// the disk offers no such signal (a block device): the integration then
/// declares that nothing writes to the disk while it is not tracked.
///
/// # Safety
/// `path` must be a NUL-terminated string, `disk_path` null or one,
/// `disk_id` readable, `out` and `out_state` writable; other null
/// pointers are refused.
#[no_mangle]
pub unsafe extern "C" fn blockrep_ptracker_open(
    path: *const c_char,
    disk_path: *const c_char,
    disk_id: *const blockrep_disk_id,
    size: u64,
    block_size: u32,
    region_size: u32,
    out: *mut *mut blockrep_ptracker,
    out_state: *mut blockrep_open_state,
) -> blockrep_status {
    guard(|| {
        let (path, id) = (path_in(path)?, disk_id_in(disk_id)?);
        need(out, "out")?;
        need(out_state, "out_state")?;
        let geometry = Geometry::new(size, block_size)?;
        let disk = match opt_path_in(disk_path)? {
            Some(p) => Some(FileStorage::open_read_only(p)?),
            None => None,
        };
        let seen = identity_of(disk.as_ref())?;
        let (tracker, state) =
            PersistentTracker::open_or_create(path, id, geometry, region_size, seen)?;
        write_out(out_state, blockrep_open_state::from(&state))?;
        handle_out(out, TrackerFile { tracker, disk })
    })
}

/// Announces a write of `len` bytes at `offset`: call before submitting it.
/// When it touches a cold region, its intent bit is set and flushed first.
/// On success pair it with `blockrep_ptracker_end_write` over the same range
/// once the write completed (failed or not); on failure do not.
/// Thread-safe.
///
/// # Safety
/// `t` must be null (refused) or a live handle.
#[no_mangle]
pub unsafe extern "C" fn blockrep_ptracker_begin_write(
    t: *const blockrep_ptracker,
    offset: u64,
    len: u64,
) -> blockrep_status {
    guard(|| borrow(t)?.tracker.begin_write_unguarded(offset, len))
}

/// Completes a write announced by `blockrep_ptracker_begin_write`: marks
/// its blocks. An end without a begin is refused. Thread-safe.
///
/// # Safety
/// `t` must be null (refused) or a live handle.
#[no_mangle]
pub unsafe extern "C" fn blockrep_ptracker_end_write(
    t: *const blockrep_ptracker,
    offset: u64,
    len: u64,
) -> blockrep_status {
    guard(|| borrow(t)?.tracker.end_write(offset, len))
}

/// Closes the current generation into a new set the caller owns (`*out`).
/// The cut stays outstanding, keeping its intent regions, until
/// `blockrep_ptracker_commit` or `blockrep_ptracker_reclaim`. Thread-safe.
///
/// # Safety
/// `t` null (refused) or live; `out` null (refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn blockrep_ptracker_cut(
    t: *const blockrep_ptracker,
    out: *mut *mut blockrep_blockset,
) -> blockrep_status {
    guard(|| {
        let t = borrow(t)?;
        need(out, "out")?;
        write_out(out, new_handle(t.tracker.cut()))
    })
}

/// Records that the log of the set's generation is durable elsewhere; its
/// regions' intent bits may clear. The set stays the caller's.
///
/// # Safety
/// Both handles null (refused) or live.
#[no_mangle]
pub unsafe extern "C" fn blockrep_ptracker_commit(
    t: *const blockrep_ptracker,
    set: *const blockrep_blockset,
) -> blockrep_status {
    guard(|| borrow(t)?.tracker.commit(borrow(set)?.generation()))
}

/// Hands a failed cycle's blocks back. The set stays the caller's.
///
/// # Safety
/// Both handles null (refused) or live.
#[no_mangle]
pub unsafe extern "C" fn blockrep_ptracker_reclaim(
    t: *const blockrep_ptracker,
    set: *const blockrep_blockset,
) -> blockrep_status {
    guard(|| {
        borrow(t)?.tracker.reclaim(borrow(set)?);
        Ok(())
    })
}

/// Stops tracking cleanly (checkpoint, in-use flag cleared) and frees the
/// handle, also when the checkpoint fails (the next open then recovers).
/// No other call may use the handle at the same time or afterwards.
///
/// # Safety
/// `t` must be null (refused) or a live handle.
#[no_mangle]
pub unsafe extern "C" fn blockrep_ptracker_close(t: *mut blockrep_ptracker) -> blockrep_status {
    guard(|| {
        let t = free(t)?;
        let seen = identity_of(t.disk.as_ref())?;
        t.tracker.close(seen)
    })
}

/// Frees the handle without a clean stop: the next open treats it as a
/// crash and resends what may differ.
///
/// # Safety
/// `t` must be null (refused) or a live handle.
#[no_mangle]
pub unsafe extern "C" fn blockrep_ptracker_free(t: *mut blockrep_ptracker) -> blockrep_status {
    guard(|| free(t).map(drop))
}
