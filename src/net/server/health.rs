//! Replication health per disk, as Hyper-V Replica reports it: normal,
//! warning (the replica behind by more than a configured time), critical
//! (a resync required, or nothing received for a configured time).

use crate::status::DiskStatus;
use std::time::Duration;

/// When a disk's health degrades.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Warning when the latest point is older than this (the primary's
    /// cycles are not arriving).
    pub warning_behind: Duration,
    /// Critical when no byte of this disk arrived for this long (since
    /// the server started, at the most).
    pub critical_silence: Duration,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy {
            warning_behind: Duration::from_secs(15 * 60),
            critical_silence: Duration::from_secs(60 * 60),
        }
    }
}

/// A disk's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Points arrive as configured.
    Normal = 0,
    /// Behind.
    Warning = 1,
    /// Silent, or in need of a resync.
    Critical = 2,
}

/// The health of a disk of status `st`, silent for `silent`, and why.
pub(super) fn health_of(
    policy: &HealthPolicy,
    st: &DiskStatus,
    silent: Duration,
) -> (Health, Vec<String>) {
    let mut why = Vec::new();
    let mut h = Health::Normal;
    if st.resync_required {
        h = Health::Critical;
        why.push("a resync is required".to_string());
    }
    if silent > policy.critical_silence {
        h = Health::Critical;
        why.push(format!("nothing received for {} s", silent.as_secs()));
    }
    let behind = Duration::from_nanos(st.rpo_ns.unwrap_or(0));
    if behind > policy.warning_behind {
        h = h.max(Health::Warning);
        why.push(format!(
            "the latest point is {} s old (more than {} s)",
            behind.as_secs(),
            policy.warning_behind.as_secs()
        ));
    }
    (h, why)
}
