//! `blockrep_blockset_*`: the blocks a cut took, or a divergence.

use super::convert::{borrow, free, handle, need, new_handle, slice_out, write_out};
use super::error::{blockrep_status, guard};
use crate::tracker::FrozenSet;

/// The blocks one cut took (a frozen, immutable set). Free with
/// `blockrep_blockset_free`; read-only calls may run from many threads.
pub struct blockrep_blockset {
    inner: FrozenSet,
}
handle!(blockrep_blockset, FrozenSet, "set");

/// A run of `count` blocks from block `start`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct blockrep_extent {
    /// The first block.
    pub start: u64,
    /// How many blocks.
    pub count: u64,
}

/// Writes the number of blocks in the set to `*out`.
///
/// # Safety
/// `set` null (refused) or live; `out` null (refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn blockrep_blockset_count(
    set: *const blockrep_blockset,
    out: *mut u64,
) -> blockrep_status {
    guard(|| write_out(out, borrow(set)?.count()))
}

/// Writes the generation the set's cut closed to `*out`.
///
/// # Safety
/// `set` null (refused) or live; `out` null (refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn blockrep_blockset_generation(
    set: *const blockrep_blockset,
    out: *mut u64,
) -> blockrep_status {
    guard(|| write_out(out, borrow(set)?.generation()))
}

/// Copies up to `cap` coalesced extents at or after block `from` into
/// `extents`, writes how many to `*out_n` and the block to continue from to
/// `*out_next` (`UINT64_MAX` once the set is exhausted). Thread-safe.
///
/// # Safety
/// `set` null (refused) or live; `extents` must point to `cap` writable
/// elements (null is refused unless `cap` is 0); `out_n` and `out_next`
/// writable (null refused).
#[no_mangle]
pub unsafe extern "C" fn blockrep_blockset_extents(
    set: *const blockrep_blockset,
    from: u64,
    extents: *mut blockrep_extent,
    cap: usize,
    out_n: *mut usize,
    out_next: *mut u64,
) -> blockrep_status {
    guard(|| {
        let s = borrow(set)?;
        need(out_n, "out_n")?;
        need(out_next, "out_next")?;
        let slots = slice_out(extents, cap, "extents")?;
        let mut n = 0;
        let mut next = u64::MAX;
        for e in s.extents_from(from) {
            if n == cap {
                next = e.start;
                break;
            }
            slots[n] = blockrep_extent {
                start: e.start,
                count: e.count,
            };
            n += 1;
        }
        write_out(out_n, n)?;
        write_out(out_next, next)
    })
}

/// Frees a set. Null and double frees are refused.
///
/// # Safety
/// `set` must be null or a handle from `blockrep_tracker_cut`.
#[no_mangle]
pub unsafe extern "C" fn blockrep_blockset_free(set: *mut blockrep_blockset) -> blockrep_status {
    guard(|| free(set).map(drop))
}

/// Writes to `*out` (the caller's) a new set of the blocks in `a` or `b`
/// (sets of the same disk). Thread-safe.
///
/// # Safety
/// `a` and `b` live; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn blockrep_blockset_union(
    a: *const blockrep_blockset,
    b: *const blockrep_blockset,
    out: *mut *mut blockrep_blockset,
) -> blockrep_status {
    guard(|| {
        let (a, b) = (borrow(a)?, borrow(b)?);
        need(out, "out")?;
        if a.universe() != b.universe() {
            return Err(crate::Error::mismatch("sets of disks of different sizes"));
        }
        write_out(out, new_handle(FrozenSet::new(0, a.union(b))))
    })
}
