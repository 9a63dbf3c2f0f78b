//! `blockrep_view_*`: a read-only view of one retained point.

use super::convert::{borrow, bytes_out, free, handle, need, new_handle, write_out};
use super::error::{blockrep_status, guard};
use super::replica::blockrep_replica;
use crate::replica::PointView;

/// A read-only view of one retained point; pins it while open. Reads may
/// run from many threads.
pub struct blockrep_view {
    inner: PointView,
}
handle!(blockrep_view, PointView, "view");

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
        let r = borrow(r)?;
        need(out, "out")?;
        write_out(out, new_handle(r.view(sequence)?))
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
    guard(|| borrow(v)?.read_at(bytes_out(buf, len)?, offset))
}

/// Closes a view, unpinning its point.
///
/// # Safety
/// `v` null (refused) or live.
#[no_mangle]
pub unsafe extern "C" fn blockrep_view_free(v: *mut blockrep_view) -> blockrep_status {
    guard(|| free(v).map(drop))
}
