//! The status of one disk, as a console shows it: a plain struct that
//! prints as JSON.

use crate::id::DiskId;
use crate::replica::{FailoverPhase, Replica};
use crate::source::{Pipeline, Tracking};
use std::fmt::Write;

/// A disk's role at this site.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    fn name(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
            Role::Promoted => "promoted",
            Role::FailedOver => "failed-over",
        }
    }
}

/// Everything a console shows for one disk.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// The last error the integration saw for this disk, if any.
    pub last_error: Option<String>,
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
            last_error: p.last_error(),
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
            last_error: r.last_error(),
        }
    }

    /// The status as one JSON object.
    pub fn to_json(&self) -> String {
        let mut j = String::from("{");
        let _ = write!(j, "\"disk_id\":\"{}\"", self.disk_id);
        let _ = write!(j, ",\"role\":\"{}\"", self.role.name());
        let _ = write!(j, ",\"epoch\":{}", self.epoch);
        let _ = write!(j, ",\"latest_point\":{}", self.latest_point);
        match self.rpo_ns {
            Some(r) => {
                let _ = write!(j, ",\"rpo_ns\":{r}");
            }
            None => j.push_str(",\"rpo_ns\":null"),
        }
        let _ = write!(j, ",\"pending_logs\":{}", self.pending_logs);
        let _ = write!(j, ",\"pending_bytes\":{}", self.pending_bytes);
        let _ = write!(j, ",\"dirty_blocks\":{}", self.dirty_blocks);
        let _ = write!(j, ",\"resync_required\":{}", self.resync_required);
        match &self.last_error {
            Some(e) => {
                j.push_str(",\"last_error\":");
                json_string(&mut j, e);
            }
            None => j.push_str(",\"last_error\":null"),
        }
        j.push('}');
        j
    }
}

/// Appends `s` as a JSON string literal.
pub(crate) fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_escaped_and_complete() {
        let s = DiskStatus {
            disk_id: DiskId([0xab; 16]),
            role: Role::Promoted,
            epoch: 3,
            latest_point: 17,
            rpo_ns: None,
            pending_logs: 2,
            pending_bytes: 4096,
            dirty_blocks: 9,
            resync_required: true,
            last_error: Some("disk \"a\"\nfull\u{1}".into()),
        };
        assert_eq!(
            s.to_json(),
            format!(
                "{{\"disk_id\":\"{}\",\"role\":\"promoted\",\"epoch\":3,\"latest_point\":17,\
                 \"rpo_ns\":null,\"pending_logs\":2,\"pending_bytes\":4096,\"dirty_blocks\":9,\
                 \"resync_required\":true,\"last_error\":\"disk \\\"a\\\"\\nfull\\u0001\"}}",
                DiskId([0xab; 16])
            )
        );
    }
}
