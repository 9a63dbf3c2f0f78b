//! `blockrep_tracker_*`: the in-memory tracker.

use super::blockset::blockrep_blockset;
use super::convert::{borrow, free, handle, handle_out, new_handle, write_out};
use super::error::{blockrep_status, guard};
use crate::geometry::Geometry;
use crate::tracker::Tracker;

/// An in-memory dirty-block tracker. Create with `blockrep_tracker_new`,
/// free with `blockrep_tracker_free`. `blockrep_tracker_mark`,
/// `blockrep_tracker_cut` and `blockrep_tracker_reclaim` may be called from
/// any number of threads at once on the same `const` handle.
pub struct blockrep_tracker {
    inner: Tracker,
}
handle!(blockrep_tracker, Tracker, "tracker");

/// Creates a clean tracker for a disk of `size` bytes in blocks of
/// `block_size` bytes (a power of two from 4096 to 1048576). On success
/// writes the new handle to `*out`, which the caller owns.
///
/// # Safety
/// `out` must be null (refused) or point to writable storage for a pointer.
#[no_mangle]
pub unsafe extern "C" fn blockrep_tracker_new(
    size: u64,
    block_size: u32,
    out: *mut *mut blockrep_tracker,
) -> blockrep_status {
    guard(|| handle_out(out, Tracker::new(Geometry::new(size, block_size)?)))
}

/// Frees a tracker. Null is refused; a handle already freed is refused with
/// `BLOCKREP_STATUS_MISUSE`. No other call may use the handle at the same
/// time or afterwards.
///
/// # Safety
/// `t` must be a handle from `blockrep_tracker_new` (or null).
#[no_mangle]
pub unsafe extern "C" fn blockrep_tracker_free(t: *mut blockrep_tracker) -> blockrep_status {
    guard(|| free(t).map(drop))
}

/// Marks every block that a write of `len` bytes at `offset` touches. Call
/// after the guest write completed. Lock-free; thread-safe.
///
/// # Safety
/// `t` must be null (refused) or a live tracker handle.
#[no_mangle]
pub unsafe extern "C" fn blockrep_tracker_mark(
    t: *const blockrep_tracker,
    offset: u64,
    len: u64,
) -> blockrep_status {
    guard(|| borrow(t)?.mark(offset, len))
}

/// Closes the current generation: writes the blocks marked so far to
/// `*out` as a new set the caller owns, and leaves the tracker clean.
/// Thread-safe; writers never wait.
///
/// # Safety
/// `t` must be null (refused) or a live tracker; `out` null (refused) or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn blockrep_tracker_cut(
    t: *const blockrep_tracker,
    out: *mut *mut blockrep_blockset,
) -> blockrep_status {
    guard(|| {
        let t = borrow(t)?;
        super::convert::need(out, "out")?;
        write_out(out, new_handle(t.cut()))
    })
}

/// Hands the blocks of a failed cycle back to the tracker. The set stays
/// the caller's. Thread-safe.
///
/// # Safety
/// Both handles must be null (refused) or live.
#[no_mangle]
pub unsafe extern "C" fn blockrep_tracker_reclaim(
    t: *const blockrep_tracker,
    set: *const blockrep_blockset,
) -> blockrep_status {
    guard(|| {
        borrow(t)?.reclaim(borrow(set)?);
        Ok(())
    })
}
