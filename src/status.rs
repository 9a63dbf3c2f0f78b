//! The status of one disk, primary or replica, as a console shows it: a
//! plain struct. With the `serde` feature it serialises (to JSON, say,
//! with `serde_json`); the C ABI copies it into `blockrep_disk_status`.

use crate::id::DiskId;
use crate::replica::{FailoverPhase, Replica};
use crate::source::{Pipeline, Tracking};

/// A disk's role at this site.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "kebab-case"))]
pub enum Role {
    /// Runs the workload and replicates it.
    Primary,
    /// Holds the copy and applies logs.
    Replica,
    /// A replica promoted by a failover not yet committed.
    Promoted,
    /// A replica whose failover was committed: the new primary's disk.
    FailedOver,
}

impl Role {
    /// The role's name as printed: `primary`, `replica`, `promoted`,
    /// `failed-over`.
    pub fn name(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
            Role::Promoted => "promoted",
            Role::FailedOver => "failed-over",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything a console shows for one disk.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct DiskStatus {
    /// The disk.
    pub disk_id: DiskId,
    /// Its role here.
    pub role: Role,
    /// The replication epoch.
    pub epoch: u64,
    /// The latest point: the chain's head on a primary, the applied point
    /// on a replica (the failover point once promoted).
    pub latest_point: u64,
    /// How much writing a disaster now would lose, in ns: now minus the
    /// cut time of the last point the replica holds (on a primary: the
    /// last acknowledged one). `None` before the first point.
    pub rpo_ns: Option<u64>,
    /// Logs waiting to ship (primary), and their bytes.
    pub pending_logs: u64,
    /// Bytes waiting to ship (primary).
    pub pending_bytes: u64,
    /// Blocks marked in the tracker (primary).
    pub dirty_blocks: u64,
    /// Whether a digest resync is required before replication goes on.
    pub resync_required: bool,
}

impl DiskStatus {
    /// The status of a primary disk at `now_ns` (ns since the Unix epoch).
    pub fn of_pipeline<T: Tracking>(p: &Pipeline<T>, now_ns: u64) -> Self {
        let s = p.status();
        DiskStatus {
            disk_id: p.spool().disk_id(),
            role: Role::Primary,
            epoch: s.head.epoch,
            latest_point: s.head.sequence,
            rpo_ns: (s.acked.created_ns > 0).then(|| now_ns.saturating_sub(s.acked.created_ns)),
            pending_logs: s.pending_logs,
            pending_bytes: s.pending_bytes,
            dirty_blocks: p.primary().marked().count(),
            resync_required: s.resync_required,
        }
    }

    /// The status of a replica at `now_ns`.
    pub fn of_replica(r: &Replica, now_ns: u64) -> Self {
        let s = r.status();
        let (role, latest) = match r.failover_phase() {
            None => (Role::Replica, s.applied),
            Some((FailoverPhase::Committed, p)) => (Role::FailedOver, p),
            Some((_, p)) => (Role::Promoted, p),
        };
        let cut = r
            .points()
            .into_iter()
            .find(|p| p.sequence == latest)
            .map_or(0, |p| p.created_ns);
        DiskStatus {
            disk_id: s.disk_id,
            role,
            epoch: s.epoch,
            latest_point: latest,
            rpo_ns: (cut > 0).then(|| now_ns.saturating_sub(cut)),
            pending_logs: 0,
            pending_bytes: 0,
            dirty_blocks: 0,
            resync_required: false,
        }
    }
}

#[cfg(all(test, feature = "serde"))]
mod tests {
    use super::*;

    /// The JSON a console reads: field names, the role's name, the disk
    /// id in hex, `null` for no RPO.
    #[test]
    fn serialises_with_the_documented_names() {
        let s = DiskStatus {
            disk_id: DiskId([0xab; 16]),
            role: Role::FailedOver,
            epoch: 3,
            latest_point: 17,
            rpo_ns: None,
            pending_logs: 2,
            pending_bytes: 4096,
            dirty_blocks: 9,
            resync_required: true,
        };
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            format!(
                "{{\"disk_id\":\"{}\",\"role\":\"failed-over\",\"epoch\":3,\"latest_point\":17,\
                 \"rpo_ns\":null,\"pending_logs\":2,\"pending_bytes\":4096,\"dirty_blocks\":9,\
                 \"resync_required\":true}}",
                "ab".repeat(16)
            )
        );
    }
}

/// Nanoseconds since the Unix epoch, now: the clock of every point's
/// `created_ns` and of the RPOs computed from it.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Where a shipper's log lines go (connected again, failures said once a
/// minute, recoveries).
pub type LogSink = std::sync::Arc<dyn Fn(&str) + Send + Sync>;
