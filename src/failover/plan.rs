//! Recovery plans: machines failed over group by group, in order, with
//! the integration's hooks around each group.

use super::{test_failover, Failover};
use crate::error::{Error, Result};
use crate::io::Storage;
use crate::replica::{OverlayView, Replica};
use std::sync::Arc;

/// How a plan fails machines over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanMode {
    /// Writable views of the points; replication goes on; nothing changes.
    Test,
    /// The primaries are stopped and their last cycles shipped (the
    /// integration's `before_group` hook does that); promotion at the
    /// latest point loses nothing.
    Planned,
    /// The primaries are gone: promotion at each disk's chosen point (the
    /// latest by default).
    Unplanned,
}

/// One machine: its disks (one consistency group), each with the point
/// to fail over to (`None`: the latest).
#[derive(Clone)]
pub struct PlanMachine {
    /// The machine's name, for reports.
    pub name: String,
    /// Its disks' replicas and their points.
    pub disks: Vec<(Replica, Option<u64>)>,
}

impl std::fmt::Debug for PlanMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlanMachine")
            .field("name", &self.name)
            .field("disks", &self.disks.len())
            .finish()
    }
}

/// Machines failed over together, between the same hooks.
#[derive(Debug, Clone)]
pub struct PlanGroup {
    /// The group's name, for reports.
    pub name: String,
    /// Its machines, in order.
    pub machines: Vec<PlanMachine>,
}

/// An ordered list of groups (databases before the application servers
/// that need them, say).
#[derive(Debug, Clone, Default)]
pub struct RecoveryPlan {
    /// The groups, in the order they fail over.
    pub groups: Vec<PlanGroup>,
}

/// The integration's side of a plan: called before and after each group
/// (to stop primaries and ship their last cycles, boot the machines, run
/// scripts). An error stops the plan there.
pub trait PlanHooks {
    /// Before group `index` fails over.
    fn before_group(&mut self, index: usize, group: &PlanGroup, mode: PlanMode) -> Result<()>;
    /// After group `index` failed over: `machines` are its disks, failed
    /// over (to commit promotions before booting the machines, say).
    fn after_group(
        &mut self,
        index: usize,
        group: &PlanGroup,
        mode: PlanMode,
        machines: &[MachineFailover],
    ) -> Result<()>;
    /// The overlay for a test failover of `disk` (its index) of `machine`:
    /// a sparse file or memory the size of the disk.
    fn test_overlay(&mut self, machine: &str, disk: usize) -> Result<Arc<dyn Storage>>;
}

/// A disk failed over by a plan.
pub enum DiskFailover {
    /// A test failover: a writable view, shared (with a server that
    /// exports it, say); dropping the last reference discards it.
    Test(Arc<OverlayView>),
    /// A promoted replica; commit it when the choice is final.
    Promoted(Failover),
}

impl std::fmt::Debug for DiskFailover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DiskFailover::Test(v) => write!(f, "Test(point {})", v.sequence()),
            DiskFailover::Promoted(p) => write!(f, "Promoted(point {})", p.point()),
        }
    }
}

/// A machine failed over, with its disks in the plan's order.
#[non_exhaustive]
#[derive(Debug)]
pub struct MachineFailover {
    /// The machine's name.
    pub machine: String,
    /// Its disks.
    pub disks: Vec<DiskFailover>,
}

/// Where a plan stopped.
#[non_exhaustive]
#[derive(Debug)]
pub struct PlanFailure {
    /// The group's index and name.
    pub group: (usize, String),
    /// The step that failed: "before hook", "after hook" or "machine NAME".
    pub step: String,
    /// Why.
    pub error: Error,
}

/// What a plan did: every machine failed over, group by group, and the
/// failure that stopped it, if any.
#[non_exhaustive]
#[derive(Debug, Default)]
pub struct PlanReport {
    /// Per group that started: its name and its machines failed over.
    pub groups: Vec<(String, Vec<MachineFailover>)>,
    /// The first failure; the plan stopped there.
    pub failure: Option<PlanFailure>,
}

impl PlanReport {
    /// Whether every group failed over.
    pub fn succeeded(&self) -> bool {
        self.failure.is_none()
    }
}

impl RecoveryPlan {
    /// Runs the plan in `mode`: for each group in order, the before hook,
    /// then each machine's disks (test views or promotions), then the
    /// after hook. Stops at the first failure; the report says what was
    /// done up to there (a machine whose second disk failed keeps its first
    /// one failed over, in the report).
    pub fn run(&self, mode: PlanMode, hooks: &mut dyn PlanHooks) -> PlanReport {
        let mut report = PlanReport::default();
        for (i, group) in self.groups.iter().enumerate() {
            let fail = |step: String, error: Error| PlanFailure {
                group: (i, group.name.clone()),
                step,
                error,
            };
            if let Err(e) = hooks.before_group(i, group, mode) {
                report.failure = Some(fail("before hook".into(), e));
                return report;
            }
            let mut machines = Vec::new();
            for m in &group.machines {
                let mut done = MachineFailover {
                    machine: m.name.clone(),
                    disks: Vec::new(),
                };
                let result = (|| {
                    for (d, (replica, point)) in m.disks.iter().enumerate() {
                        done.disks.push(match mode {
                            PlanMode::Test => {
                                let overlay = hooks.test_overlay(&m.name, d)?;
                                DiskFailover::Test(Arc::new(test_failover(
                                    replica, *point, overlay,
                                )?))
                            }
                            PlanMode::Planned => {
                                DiskFailover::Promoted(Failover::promote(replica.clone(), None)?)
                            }
                            PlanMode::Unplanned => {
                                DiskFailover::Promoted(Failover::promote(replica.clone(), *point)?)
                            }
                        });
                    }
                    Ok::<_, Error>(())
                })();
                machines.push(done);
                if let Err(e) = result {
                    report.groups.push((group.name.clone(), machines));
                    report.failure = Some(fail(format!("machine {}", m.name), e));
                    return report;
                }
            }
            let after = hooks.after_group(i, group, mode, &machines);
            report.groups.push((group.name.clone(), machines));
            if let Err(e) = after {
                report.failure = Some(fail("after hook".into(), e));
                return report;
            }
        }
        report
    }
}
