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
