//! The tracker through the C ABI.

use super::status::{blockrep_status, guard, null, register, unregister};
use crate::geometry::Geometry;
use crate::tracker::{FrozenSet, Tracker};

/// An in-memory dirty-block tracker. Create with `blockrep_tracker_new`,
/// free with `blockrep_tracker_free`. `blockrep_tracker_mark`,
/// `blockrep_tracker_cut` and `blockrep_tracker_reclaim` may be called from
/// any number of threads at once on the same `const` handle.
pub struct blockrep_tracker {
    inner: Tracker,
}

/// The blocks one cut took (a frozen, immutable set). Free with
/// `blockrep_blockset_free`; read-only calls may run from many threads.
pub struct blockrep_blockset {
    inner: FrozenSet,
}

impl blockrep_blockset {
    pub(super) fn from_frozen(inner: FrozenSet) -> Self {
        blockrep_blockset { inner }
    }

    pub(super) fn frozen(&self) -> &FrozenSet {
        &self.inner
    }
}

/// A run of `count` blocks from block `start`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct blockrep_extent {
    /// The first block.
    pub start: u64,
    /// How many blocks.
    pub count: u64,
}

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
    guard(|| {
        if out.is_null() {
            return Err(null("out"));
        }
        let t = Tracker::new(Geometry::new(size, block_size)?);
        let p = register(Box::new(blockrep_tracker { inner: t }));
        // SAFETY: `out` is non-null and, per the contract, writable.
        unsafe { *out = p };
        Ok(())
    })
}

/// Frees a tracker. Null is refused; a handle already freed is refused with
/// `BLOCKREP_STATUS_MISUSE`. No other call may use the handle at the same
/// time or afterwards.
///
/// # Safety
/// `t` must be a handle from `blockrep_tracker_new` (or null).
#[no_mangle]
pub unsafe extern "C" fn blockrep_tracker_free(t: *mut blockrep_tracker) -> blockrep_status {
    guard(|| unregister(t, "tracker").map(drop))
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
    guard(|| {
        // SAFETY: non-null handles are live trackers, per the contract.
        let t = unsafe { t.as_ref() }.ok_or_else(|| null("tracker"))?;
        t.inner.mark(offset, len)
    })
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
        // SAFETY: non-null handles are live trackers, per the contract.
        let t = unsafe { t.as_ref() }.ok_or_else(|| null("tracker"))?;
        if out.is_null() {
            return Err(null("out"));
        }
        let p = register(Box::new(blockrep_blockset {
            inner: t.inner.cut(),
        }));
        // SAFETY: `out` is non-null and writable per the contract.
        unsafe { *out = p };
        Ok(())
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
        // SAFETY: non-null handles are live, per the contract.
        let (t, s) = unsafe { (t.as_ref(), set.as_ref()) };
        let (t, s) = (
            t.ok_or_else(|| null("tracker"))?,
            s.ok_or_else(|| null("set"))?,
        );
        t.inner.reclaim(&s.inner);
        Ok(())
    })
}

/// Writes `value(set)` to `*out`, refusing nulls.
fn read_set(
    set: *const blockrep_blockset,
    out: *mut u64,
    value: fn(&FrozenSet) -> u64,
) -> blockrep_status {
    guard(|| {
        // SAFETY: non-null handles are live, per the callers' contract.
        let s = unsafe { set.as_ref() }.ok_or_else(|| null("set"))?;
        if out.is_null() {
            return Err(null("out"));
        }
        // SAFETY: `out` is non-null and writable per the callers' contract.
        unsafe { *out = value(&s.inner) };
        Ok(())
    })
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
    read_set(set, out, |s| s.count())
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
    read_set(set, out, |s| s.generation())
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
        // SAFETY: non-null handles are live, per the contract.
        let s = unsafe { set.as_ref() }.ok_or_else(|| null("set"))?;
        if (extents.is_null() && cap > 0) || out_n.is_null() || out_next.is_null() {
            return Err(null("an output"));
        }
        let mut n = 0;
        let mut next = u64::MAX;
        for e in s.inner.extents_from(from) {
            if n == cap {
                next = e.start;
                break;
            }
            // SAFETY: n < cap and the caller promises `cap` elements.
            unsafe {
                *extents.add(n) = blockrep_extent {
                    start: e.start,
                    count: e.count,
                }
            };
            n += 1;
        }
        // SAFETY: both outputs are non-null and writable per the contract.
        unsafe {
            *out_n = n;
            *out_next = next;
        }
        Ok(())
    })
}

/// Frees a set. Null and double frees are refused.
///
/// # Safety
/// `set` must be null or a handle from `blockrep_tracker_cut`.
#[no_mangle]
pub unsafe extern "C" fn blockrep_blockset_free(set: *mut blockrep_blockset) -> blockrep_status {
    guard(|| unregister(set, "set").map(drop))
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
        // SAFETY: null (refused) or live handles per the contract.
        let (a, b) = unsafe { (a.as_ref(), b.as_ref()) };
        let (a, b) = a.zip(b).ok_or_else(|| null("set"))?;
        if out.is_null() {
            return Err(null("out"));
        }
        if a.inner.universe() != b.inner.universe() {
            return Err(crate::Error::mismatch("sets of disks of different sizes"));
        }
        let set = FrozenSet::new(0, a.inner.union(&b.inner));
        let p = register(Box::new(blockrep_blockset { inner: set }));
        // SAFETY: `out` is non-null and writable per the contract.
        unsafe { *out = p };
        Ok(())
    })
}
