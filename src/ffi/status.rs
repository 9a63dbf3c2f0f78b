//! The status of a disk for a console, primary or replica, as C reads it:
//! a copy of the core's `DiskStatus`.

use super::types::blockrep_disk_id;
use crate::status::{DiskStatus, Role};

/// A disk's role at this site (`blockrep_disk_status.role`).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum blockrep_role {
    /// Runs the workload and replicates it.
    BLOCKREP_ROLE_PRIMARY = 1,
    /// Holds the copy and applies logs.
    BLOCKREP_ROLE_REPLICA = 2,
    /// A replica promoted by a failover not yet committed.
    BLOCKREP_ROLE_PROMOTED = 3,
    /// A replica whose failover was committed: the new primary's disk.
    BLOCKREP_ROLE_FAILED_OVER = 4,
}

/// Everything a console shows for one disk, primary or replica.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct blockrep_disk_status {
    /// The disk.
    pub disk_id: blockrep_disk_id,
    /// Its role here.
    pub role: blockrep_role,
    /// The replication epoch.
    pub epoch: u64,
    /// The chain's head on a primary; the applied point on a replica (the
    /// failover point once promoted).
    pub latest_point: u64,
    /// Whether `rpo_ns` is set (false before the first point).
    pub has_rpo: bool,
    /// How much writing a disaster now would lose, in ns.
    pub rpo_ns: u64,
    /// Logs waiting to ship (primary).
    pub pending_logs: u64,
    /// Their bytes (primary).
    pub pending_bytes: u64,
    /// Blocks marked in the tracker (primary).
    pub dirty_blocks: u64,
    /// Whether a digest resync is required before replication goes on.
    pub resync_required: bool,
}

impl From<&DiskStatus> for blockrep_disk_status {
    fn from(s: &DiskStatus) -> Self {
        blockrep_disk_status {
            disk_id: s.disk_id.into(),
            role: match s.role {
                Role::Primary => blockrep_role::BLOCKREP_ROLE_PRIMARY,
                Role::Replica => blockrep_role::BLOCKREP_ROLE_REPLICA,
                Role::Promoted => blockrep_role::BLOCKREP_ROLE_PROMOTED,
                Role::FailedOver => blockrep_role::BLOCKREP_ROLE_FAILED_OVER,
            },
            epoch: s.epoch,
            latest_point: s.latest_point,
            has_rpo: s.rpo_ns.is_some(),
            rpo_ns: s.rpo_ns.unwrap_or(0),
            pending_logs: s.pending_logs,
            pending_bytes: s.pending_bytes,
            dirty_blocks: s.dirty_blocks,
            resync_required: s.resync_required,
        }
    }
}

pub(super) use crate::status::now_ns;
