//! Consistency groups on the primary: one cut over several disks at one
//! instant, their logs sharing a group id so the replica applies them all
//! or none.

use super::{CycleOptions, CycleReport, FoldBack, Pipeline, Tracking};
use crate::error::{Error, Result};
use crate::log::{GroupInfo, LogKind};
use crate::tracker::Tracker;
use std::collections::BTreeMap;

/// Several disks of one machine replicated at the same instants.
///
/// A group cycle holds write completions on every member for the moment
/// of the cuts (writers wait microseconds in their guards' drop), so a
/// write that completed on one disk before a write it led to on another
/// is never left out while the later one is in. Each member's log is
/// written in full before any is pushed to its spool; a failure discards
/// them all and hands every block back.
pub struct ConsistencyGroup<'a, T: Tracking = Tracker> {
    members: Vec<&'a Pipeline<T>>,
}

impl<T: Tracking> std::fmt::Debug for ConsistencyGroup<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsistencyGroup")
            .field("members", &self.members.len())
            .finish()
    }
}

impl<'a, T: Tracking> ConsistencyGroup<'a, T> {
    /// A group of distinct disks (at least one).
    pub fn new(members: Vec<&'a Pipeline<T>>) -> Result<Self> {
        if members.is_empty() || members.len() > u32::MAX as usize {
            return Err(Error::invalid("a consistency group has 1 to 2^32-1 disks"));
        }
        let mut ids: Vec<_> = members.iter().map(|p| p.spool.disk_id()).collect();
        ids.sort();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return Err(Error::invalid("a disk is twice in the consistency group"));
        }
        Ok(ConsistencyGroup { members })
    }

    /// After a restart: a group cut that a crash interrupted after some
    /// members spooled their logs and before others did is folded back
    /// into those members' trackers (its logs were never shipped). Returns
    /// the logs folded. [`cycle`](Self::cycle) calls it first.
    pub fn recover(&self) -> Result<FoldBack> {
        let _locks = self.lock_all();
        self.recover_locked()
    }

    fn recover_locked(&self) -> Result<FoldBack> {
        // Per group cut: its size, and the members (index, sequence) whose
        // newest log belongs to it.
        type Tails = BTreeMap<[u8; 16], (u32, Vec<(usize, u64)>)>;
        let mut tails = Tails::new();
        for (i, p) in self.members.iter().enumerate() {
            if let Some(l) = p.spool.pending().last() {
                if let Some(g) = l.group {
                    let e = tails.entry(g.id).or_insert((g.members, Vec::new()));
                    e.1.push((i, l.point.sequence));
                }
            }
        }
        let mut done = FoldBack::default();
        for (want, have) in tails.into_values() {
            if have.len() as u32 >= want {
                continue;
            }
            for (i, seq) in have {
                let p = self.members[i];
                let f = p
                    .spool
                    .fold_back_from(seq, &mut |e| p.primary.mark_durable(e))?;
                done.logs += f.logs;
                done.bytes += f.bytes;
                done.blocks += f.blocks;
            }
        }
        Ok(done)
    }

    /// Locks every member's cycles, in address order so that two groups
    /// sharing a disk cannot deadlock.
    fn lock_all(&self) -> Vec<parking_lot::MutexGuard<'a, ()>> {
        let mut order: Vec<&'a Pipeline<T>> = self.members.clone();
        order.sort_by_key(|p| *p as *const Pipeline<T> as usize);
        order.into_iter().map(|p| p.cycles.lock()).collect()
    }

    /// One group cycle: every member cut at one instant, each writing its
    /// log with the same group id; all pushed to their spools or none.
    pub fn cycle(&self, cycle: &CycleOptions) -> Result<Vec<CycleReport>> {
        let _locks = self.lock_all();
        self.recover_locked()?;
        let mut folded = Vec::with_capacity(self.members.len());
        for p in &self.members {
            folded.push(if p.spool.over_limit() {
                Some(p.spool.fold_back(&mut |e| p.primary.mark_durable(e))?)
            } else {
                None
            });
        }
        let group = GroupInfo {
            id: crate::id::DiskId::random()?.0,
            members: self.members.len() as u32,
        };
        let opts = CycleOptions {
            group: Some(group),
            ..cycle.clone()
        };
        // The instant: completions held on every member while all cut.
        for p in &self.members {
            p.primary.set_hold(true);
        }
        let mut handles: Vec<_> = self
            .members
            .iter()
            .map(|p| p.primary.begin_cycle())
            .collect();
        for p in &self.members {
            p.primary.set_hold(false);
        }
        let mut written = Vec::with_capacity(self.members.len());
        let mut failure = None;
        for (p, h) in self.members.iter().zip(handles.iter_mut()) {
            let r = (|| {
                let header = p.source().header_for(LogKind::Delta, &opts)?;
                let seq = header.sequence;
                let mut f = p.spool.begin(header, p.writer)?;
                h.fill(&mut f)?;
                let summary = f.commit().map_err(|e| e.with_sequence(seq))?;
                Ok::<_, Error>(summary)
            })();
            match r {
                Ok(s) => written.push(s),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failure {
            for (p, s) in self.members.iter().zip(&written) {
                // Never pushed, so never shipped; the blocks go back with
                // the handles.
                let _ = p.spool.discard_unpushed(s.header.sequence);
            }
            return Err(e);
        }
        let mut reports = Vec::with_capacity(self.members.len());
        for (((p, h), summary), folded) in self.members.iter().zip(handles).zip(written).zip(folded)
        {
            p.spool.push(&summary)?;
            let blocks = h.blocks();
            h.complete();
            reports.push(CycleReport {
                summary,
                blocks,
                folded,
            });
        }
        Ok(reports)
    }
}
