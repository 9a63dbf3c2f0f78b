//! `blockrep_incoming_*`: a log received in chunks from a transport.

use super::convert::{borrow_mut, bytes_in, free, handle};
use super::error::{blockrep_status, guard};
use super::replica::outcome_out;
use crate::log::ReadOptions;
use crate::replica::IncomingLog;

/// A log being received in chunks (`blockrep_replica_receive`). Not
/// thread-safe: one thread feeds it.
pub struct blockrep_incoming {
    inner: IncomingLog,
}
handle!(blockrep_incoming, IncomingLog, "incoming log");

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
    guard(|| borrow_mut(i)?.write(bytes_in(buf, len)?))
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
        let applied = free(i)?.apply(&ReadOptions::default())?;
        outcome_out(applied, out_sequence, out_applied);
        Ok(())
    })
}

/// Abandons a log being received; nothing is left behind.
///
/// # Safety
/// `i` null (refused) or a handle not yet released.
#[no_mangle]
pub unsafe extern "C" fn blockrep_incoming_free(i: *mut blockrep_incoming) -> blockrep_status {
    guard(|| free(i).map(drop))
}
