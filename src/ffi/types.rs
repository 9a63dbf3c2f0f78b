//! Value types several handles share: the disk id, a log's kind, a
//! point's consistency.

use crate::error::{Error, Result};
use crate::id::DiskId;
use crate::log::{Consistency, LogKind};

/// A disk's 16-byte identifier (random at its first replication).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct blockrep_disk_id {
    /// The identifier's bytes.
    pub bytes: [u8; 16],
}

impl From<DiskId> for blockrep_disk_id {
    fn from(id: DiskId) -> Self {
        blockrep_disk_id { bytes: id.0 }
    }
}

impl From<blockrep_disk_id> for DiskId {
    fn from(id: blockrep_disk_id) -> Self {
        DiskId(id.bytes)
    }
}

/// A log's kind. Values are stable and match the log format's.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum blockrep_log_kind {
    /// The whole disk: creates a replica.
    #[default]
    BLOCKREP_LOG_FULL = 1,
    /// The blocks changed since the previous log.
    BLOCKREP_LOG_DELTA = 2,
    /// The blocks that differed after tracking was lost; a new epoch.
    BLOCKREP_LOG_RESYNC = 3,
    /// Old contents saved by a replica before it applied a log.
    BLOCKREP_LOG_UNDO = 4,
}

impl From<LogKind> for blockrep_log_kind {
    fn from(k: LogKind) -> Self {
        match k {
            LogKind::Full => blockrep_log_kind::BLOCKREP_LOG_FULL,
            LogKind::Delta => blockrep_log_kind::BLOCKREP_LOG_DELTA,
            LogKind::Resync => blockrep_log_kind::BLOCKREP_LOG_RESYNC,
            LogKind::Undo => blockrep_log_kind::BLOCKREP_LOG_UNDO,
        }
    }
}

/// What a point is consistent with. Values are stable and match the log
/// format's.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum blockrep_consistency {
    /// As after a power cut: what the disk held at one instant.
    #[default]
    BLOCKREP_CONSISTENCY_CRASH = 1,
    /// The integration quiesced the guest for this point.
    BLOCKREP_CONSISTENCY_APP = 2,
}

impl From<Consistency> for blockrep_consistency {
    fn from(c: Consistency) -> Self {
        match c {
            Consistency::Crash => blockrep_consistency::BLOCKREP_CONSISTENCY_CRASH,
            Consistency::App => blockrep_consistency::BLOCKREP_CONSISTENCY_APP,
        }
    }
}

/// A consistency passed in by a caller as a `blockrep_consistency` value
/// (taken as an integer: C may pass any).
pub(super) fn consistency_of(c: u32) -> Result<Consistency> {
    match c {
        1 => Ok(Consistency::Crash),
        2 => Ok(Consistency::App),
        c => Err(Error::invalid(format!(
            "consistency {c}: BLOCKREP_CONSISTENCY_CRASH (1) or BLOCKREP_CONSISTENCY_APP (2)"
        ))),
    }
}

/// Receives a shipper's log lines (NUL-terminated, valid during the
/// call), from the shipper's thread: it must be safe to call from there.
pub type blockrep_log_fn =
    Option<unsafe extern "C" fn(ctx: *mut std::ffi::c_void, line: *const std::ffi::c_char)>;

/// The C caller's log callback and its context.
#[cfg(any(feature = "net", feature = "s3"))]
struct CLog {
    f: unsafe extern "C" fn(*mut std::ffi::c_void, *const std::ffi::c_char),
    ctx: *mut std::ffi::c_void,
}

// SAFETY: the callback and its context are called from the shipper's
// thread; the `log` field of a shipper's configuration documents that
// they must allow it.
#[cfg(any(feature = "net", feature = "s3"))]
unsafe impl Send for CLog {}
// SAFETY: as above: the shipper's thread alone calls it.
#[cfg(any(feature = "net", feature = "s3"))]
unsafe impl Sync for CLog {}

#[cfg(any(feature = "net", feature = "s3"))]
impl CLog {
    fn say(&self, line: &str) {
        // A line with a NUL in it (never, in practice) loses that part.
        let c =
            std::ffi::CString::new(line.split('\0').next().unwrap_or_default()).unwrap_or_default();
        // SAFETY: `f` is the caller's callback, given a NUL-terminated
        // string valid during the call and the caller's own context.
        unsafe { (self.f)(self.ctx, c.as_ptr()) };
    }
}

/// The C caller's callback as a shipper's log sink.
#[cfg(any(feature = "net", feature = "s3"))]
pub(crate) fn log_sink(
    f: unsafe extern "C" fn(*mut std::ffi::c_void, *const std::ffi::c_char),
    ctx: *mut std::ffi::c_void,
) -> std::sync::Arc<dyn Fn(&str) + Send + Sync> {
    let log = CLog { f, ctx };
    std::sync::Arc::new(move |line: &str| log.say(line))
}
