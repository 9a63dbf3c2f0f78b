//! `blockrep_test_failover_*`: a writable view of a point for a test
//! machine, discarded when freed.

use super::convert::{
    borrow, bytes_in, bytes_out, free, handle, need, new_handle, path_in, write_out,
};
use super::error::{blockrep_status, guard};
use super::replica::blockrep_replica;
use crate::failover::test_failover;
use crate::io::FileStorage;
use crate::replica::OverlayView;
use std::ffi::c_char;
use std::sync::Arc;

/// A test failover: a writable view of a point, discarded when freed.
/// Reads and writes may run from many threads.
pub struct blockrep_test_failover {
    inner: OverlayView,
}
handle!(blockrep_test_failover, OverlayView, "test failover");

/// Opens a test failover of retained point `point` (0: the latest) of
/// `r`: writes go to a sparse overlay file created at `overlay_path`; the
/// replica keeps applying logs underneath. Free it to discard it (the
/// overlay file is the caller's to delete).
///
/// # Safety
/// `r` live; `overlay_path` NUL-terminated; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn blockrep_test_failover_open(
    r: *const blockrep_replica,
    point: u64,
    overlay_path: *const c_char,
    out: *mut *mut blockrep_test_failover,
) -> blockrep_status {
    guard(|| {
        let r = borrow(r)?;
        let path = path_in(overlay_path)?;
        need(out, "out")?;
        let overlay = Arc::new(FileStorage::create(path, 0)?);
        let view = test_failover(r, (point != 0).then_some(point), overlay)?;
        write_out(out, new_handle(view))
    })
}

/// Reads `len` bytes at `offset` of a test failover.
///
/// # Safety
/// `t` live; `buf` `len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn blockrep_test_failover_read(
    t: *const blockrep_test_failover,
    buf: *mut u8,
    len: usize,
    offset: u64,
) -> blockrep_status {
    guard(|| borrow(t)?.read_at(bytes_out(buf, len)?, offset))
}

/// Writes `len` bytes at `offset` of a test failover (into its overlay).
///
/// # Safety
/// `t` live; `buf` `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn blockrep_test_failover_write(
    t: *const blockrep_test_failover,
    buf: *const u8,
    len: usize,
    offset: u64,
) -> blockrep_status {
    guard(|| borrow(t)?.write_at(bytes_in(buf, len)?, offset))
}

/// Discards a test failover: the replica is as if it never happened.
///
/// # Safety
/// `t` null (refused) or a handle not yet released.
#[no_mangle]
pub unsafe extern "C" fn blockrep_test_failover_free(
    t: *mut blockrep_test_failover,
) -> blockrep_status {
    guard(|| free(t).map(drop))
}
