//! Status codes, the last error (message and detail), panic containment
//! and the version.

use super::convert::{string_out, write_out};
use super::types::blockrep_disk_id;
use crate::error::{Detail, Error, ErrorKind};
use std::cell::{Cell, RefCell};
use std::ffi::c_char;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// The result of every call. Values are stable and never reused; they
/// match `blockrep::ErrorKind::code` one to one.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum blockrep_status {
    /// Success.
    BLOCKREP_STATUS_OK = 0,
    /// An I/O call failed.
    BLOCKREP_STATUS_IO = 100,
    /// The device or file system is full.
    BLOCKREP_STATUS_NO_SPACE = 101,
    /// Stored data failed validation.
    BLOCKREP_STATUS_CORRUPT = 200,
    /// Data belongs to another disk, epoch, geometry or sequence.
    BLOCKREP_STATUS_MISMATCH = 201,
    /// Sealed data failed authentication (altered, truncated, reordered,
    /// another object's).
    BLOCKREP_STATUS_UNAUTHENTIC = 202,
    /// An offset, length or block lies outside the disk.
    BLOCKREP_STATUS_OUT_OF_RANGE = 300,
    /// An argument is impossible (a null pointer, a zero length, a bad size).
    BLOCKREP_STATUS_INVALID_ARGUMENT = 301,
    /// The call is not allowed now (a handle freed twice, a pinned point).
    BLOCKREP_STATUS_MISUSE = 302,
    /// Another writer holds the target; this one must stop.
    BLOCKREP_STATUS_FENCED = 303,
    /// Change tracking was lost; a digest resync is required.
    BLOCKREP_STATUS_RESYNC_REQUIRED = 400,
    /// A format version or feature this build does not support.
    BLOCKREP_STATUS_UNSUPPORTED = 500,
    /// A bug in blockrep (a caught panic); the message says where.
    BLOCKREP_STATUS_INTERNAL = 900,
}

impl From<ErrorKind> for blockrep_status {
    fn from(k: ErrorKind) -> Self {
        use blockrep_status::{
            BLOCKREP_STATUS_CORRUPT, BLOCKREP_STATUS_FENCED, BLOCKREP_STATUS_INVALID_ARGUMENT,
            BLOCKREP_STATUS_IO, BLOCKREP_STATUS_MISMATCH, BLOCKREP_STATUS_MISUSE,
            BLOCKREP_STATUS_NO_SPACE, BLOCKREP_STATUS_OUT_OF_RANGE,
            BLOCKREP_STATUS_RESYNC_REQUIRED, BLOCKREP_STATUS_UNAUTHENTIC,
            BLOCKREP_STATUS_UNSUPPORTED,
        };
        match k {
            ErrorKind::Io => BLOCKREP_STATUS_IO,
            ErrorKind::NoSpace => BLOCKREP_STATUS_NO_SPACE,
            ErrorKind::Corrupt => BLOCKREP_STATUS_CORRUPT,
            ErrorKind::Mismatch => BLOCKREP_STATUS_MISMATCH,
            ErrorKind::Unauthentic => BLOCKREP_STATUS_UNAUTHENTIC,
            ErrorKind::Fenced => BLOCKREP_STATUS_FENCED,
            ErrorKind::OutOfRange => BLOCKREP_STATUS_OUT_OF_RANGE,
            ErrorKind::InvalidArgument => BLOCKREP_STATUS_INVALID_ARGUMENT,
            ErrorKind::Misuse => BLOCKREP_STATUS_MISUSE,
            ErrorKind::ResyncRequired => BLOCKREP_STATUS_RESYNC_REQUIRED,
            ErrorKind::Unsupported => BLOCKREP_STATUS_UNSUPPORTED,
        }
    }
}

thread_local! {
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
    static LAST_DETAIL: Cell<Option<Detail>> = const { Cell::new(None) };
}

/// What a refused log or acknowledgement conflicts with (see
/// `blockrep_error_detail`). Values are stable and never reused.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum blockrep_detail {
    /// The last error carries no detail.
    BLOCKREP_DETAIL_NONE = 0,
    /// Not the next log: `value` is the sequence the replica expects.
    BLOCKREP_DETAIL_SEQUENCE_GAP = 1,
    /// Another disk's: `disk_id` is the one expected.
    BLOCKREP_DETAIL_OTHER_DISK = 2,
    /// An older epoch: `value` is the current epoch.
    BLOCKREP_DETAIL_EPOCH_BEHIND = 3,
    /// Builds on other content: `value` and `digest` are the replica's
    /// latest sequence and content digest.
    BLOCKREP_DETAIL_DIVERGED_HISTORY = 4,
    /// Another log with this sequence is held: `value` is the sequence,
    /// `digest` the held log's content digest.
    BLOCKREP_DETAIL_CONFLICT = 5,
    /// Not past the latest point, and its point is pruned: whether it was
    /// applied cannot be proved; `value` is the oldest retained sequence.
    BLOCKREP_DETAIL_NOT_RETAINED = 6,
}

/// The typed detail of the calling thread's last failed call.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct blockrep_error_detail {
    /// Which detail (`BLOCKREP_DETAIL_NONE` when the error has none).
    pub detail: blockrep_detail,
    /// A sequence or epoch, as the detail says; 0 when unused.
    pub value: u64,
    /// A content digest, as the detail says; zeros when unused.
    pub digest: [u8; 32],
    /// A disk id, as the detail says; zeros when unused.
    pub disk_id: blockrep_disk_id,
}

impl From<Option<Detail>> for blockrep_error_detail {
    fn from(d: Option<Detail>) -> Self {
        use blockrep_detail::{
            BLOCKREP_DETAIL_CONFLICT, BLOCKREP_DETAIL_DIVERGED_HISTORY,
            BLOCKREP_DETAIL_EPOCH_BEHIND, BLOCKREP_DETAIL_NONE, BLOCKREP_DETAIL_NOT_RETAINED,
            BLOCKREP_DETAIL_OTHER_DISK, BLOCKREP_DETAIL_SEQUENCE_GAP,
        };
        let mut out = blockrep_error_detail {
            detail: BLOCKREP_DETAIL_NONE,
            value: 0,
            digest: [0; 32],
            disk_id: blockrep_disk_id::default(),
        };
        match d {
            None => {}
            Some(Detail::SequenceGap { expected }) => {
                (out.detail, out.value) = (BLOCKREP_DETAIL_SEQUENCE_GAP, expected);
            }
            Some(Detail::OtherDisk { expected }) => {
                (out.detail, out.disk_id) = (BLOCKREP_DETAIL_OTHER_DISK, expected.into());
            }
            Some(Detail::EpochBehind { current }) => {
                (out.detail, out.value) = (BLOCKREP_DETAIL_EPOCH_BEHIND, current);
            }
            Some(Detail::DivergedHistory { sequence, held }) => {
                (out.detail, out.value, out.digest) =
                    (BLOCKREP_DETAIL_DIVERGED_HISTORY, sequence, held.0);
            }
            Some(Detail::Conflict { sequence, held }) => {
                (out.detail, out.value, out.digest) = (BLOCKREP_DETAIL_CONFLICT, sequence, held.0);
            }
            Some(Detail::NotRetained { oldest }) => {
                (out.detail, out.value) = (BLOCKREP_DETAIL_NOT_RETAINED, oldest);
            }
        }
        out
    }
}

/// Writes the typed detail of the calling thread's last failed call to
/// `*out` (`BLOCKREP_DETAIL_NONE` when it had none), so a transport can
/// react to a gap, a conflict or an older epoch without parsing messages.
/// Thread-safe: each thread has its own. A null `out` is refused (and
/// becomes the last error, without detail).
///
/// # Safety
/// `out` null (refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn blockrep_last_error_detail(
    out: *mut blockrep_error_detail,
) -> blockrep_status {
    let d = LAST_DETAIL.with(Cell::get);
    guard(|| write_out(out, d.into()))
}

/// Runs `f`, turning its error or panic into a status and the thread's
/// last-error message. Success leaves the message alone, so the hot path
/// (a mark) touches no thread-local state.
#[inline]
pub(crate) fn guard(f: impl FnOnce() -> Result<(), Error>) -> blockrep_status {
    let (status, msg) = match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => return blockrep_status::BLOCKREP_STATUS_OK,
        Ok(Err(e)) => {
            LAST_DETAIL.with(|l| l.set(e.detail()));
            (e.kind().into(), e.to_string())
        }
        Err(p) => {
            let what = p
                .downcast_ref::<&str>()
                .map(ToString::to_string)
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            LAST_DETAIL.with(|l| l.set(None));
            (
                blockrep_status::BLOCKREP_STATUS_INTERNAL,
                format!("internal error: {what}"),
            )
        }
    };
    LAST_ERROR.with(|l| *l.borrow_mut() = msg);
    status
}

/// The message of the calling thread's last failed call (empty when none
/// failed yet), as every string blockrep returns: its length without the
/// NUL goes to `*out_len`; with `buf` null and `len` 0 that is all (a size
/// query); else `buf` must hold more than that many bytes (a smaller
/// buffer is refused with `BLOCKREP_STATUS_INVALID_ARGUMENT` and left
/// untouched) and receives the message and a NUL. This call never changes
/// the last error itself. Thread-safe: each thread has its own.
///
/// # Safety
/// `buf` null or `len` writable bytes; `out_len` writable (null refused).
#[no_mangle]
pub unsafe extern "C" fn blockrep_last_error(
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> blockrep_status {
    let r = catch_unwind(|| LAST_ERROR.with(|l| string_out(&l.borrow(), buf, len, out_len)));
    match r {
        Ok(Ok(())) => blockrep_status::BLOCKREP_STATUS_OK,
        Ok(Err(e)) => e.kind().into(),
        Err(_) => blockrep_status::BLOCKREP_STATUS_INTERNAL,
    }
}

/// The library version as a static NUL-terminated string ("MAJOR.MINOR.PATCH").
/// Never freed; thread-safe.
#[no_mangle]
pub extern "C" fn blockrep_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}
