//! Retention: tagging points, pruning by policy, rolling back.

use super::state::Phase;
use super::{undo_name, Replica};
use crate::error::{Error, ErrorKind, Result};
use crate::log::{BlockLookup, Consistency, LogFile, LogHeader, LogKind, MappedLog, WriterOptions};
use std::time::Duration;

/// Which points to keep. A point is kept when any rule keeps it; the latest
/// point and pinned points are always kept. Dropping the oldest point
/// deletes one undo log; dropping a point between kept ones merges its undo
/// log into the next point's, so app-consistent points can outlive the
/// crash-consistent points around them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Keep the newest this many points.
    pub keep_last: usize,
    /// Keep points younger than this.
    pub keep_for: Option<Duration>,
    /// Keep the newest this many app-consistent points.
    pub keep_app_last: usize,
    /// Keep app-consistent points younger than this.
    pub keep_app_for: Option<Duration>,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        RetentionPolicy {
            keep_last: 24,
            keep_for: None,
            keep_app_last: 7,
            keep_app_for: None,
        }
    }
}

impl Replica {
    /// Marks point `sequence` app-consistent with `label` (the integration
    /// quiesced the guest for it).
    pub fn tag_app_consistent(&self, sequence: u64, label: &str) -> Result<()> {
        if label.len() > 255 {
            return Err(Error::invalid("a point label has at most 255 bytes"));
        }
        let mut st = self.s.state.lock();
        self.finish_interrupted(&mut st)?;
        let mut next = st.clone();
        let p = next
            .points
            .iter_mut()
            .find(|p| p.sequence == sequence)
            .ok_or_else(|| {
                Error::out_of_range(format!("point {sequence} is not retained"))
                    .with_sequence(sequence)
            })?;
        p.consistency = Consistency::App;
        label.clone_into(&mut p.label);
        next.store(&*self.s.dir)?;
        *st = next;
        Ok(())
    }

    /// The points [`prune`](Replica::prune) would drop under `policy` at
    /// `now_ns` (ns since the Unix epoch), oldest first, dropping none: a
    /// dry run. `prune` drops by this very plan, so the two agree unless
    /// the replica changes in between (an apply adds a point, a view pins
    /// one).
    pub fn prune_plan(&self, policy: &RetentionPolicy, now_ns: u64) -> Result<Vec<u64>> {
        let mut st = self.s.state.lock();
        self.finish_interrupted(&mut st)?;
        let (oldest, middle) = self.plan(&st, policy, now_ns);
        Ok(st.points[..oldest]
            .iter()
            .map(|p| p.sequence)
            .chain(middle)
            .collect())
    }

    /// What a prune drops: how many of the oldest points (each deletes one
    /// undo log), and the points between kept ones whose undo log merges
    /// into the next point's.
    fn plan(
        &self,
        st: &super::state::State,
        policy: &RetentionPolicy,
        now_ns: u64,
    ) -> (usize, Vec<u64>) {
        let pins = self.pinned();
        let n = st.points.len();
        let app: Vec<usize> = (0..n)
            .filter(|&i| st.points[i].consistency == Consistency::App)
            .collect();
        let young = |i: usize, d: Option<Duration>| {
            d.is_some_and(|d| now_ns.saturating_sub(st.points[i].created_ns) < d.as_nanos() as u64)
        };
        let kept = |i: usize| {
            i + 1 == n
                || i + policy.keep_last.max(1) >= n
                || young(i, policy.keep_for)
                || (app.contains(&i)
                    && (app.iter().rev().take(policy.keep_app_last).any(|&a| a == i)
                        || young(i, policy.keep_app_for)))
                || pins.contains(&st.points[i].sequence)
        };
        let drop_count = (0..n).take_while(|&i| !kept(i)).count();
        // Points between kept ones (an old app-consistent point and the
        // newest, say) go by merging their undo log into the next one's,
        // which `merge_drop` refuses when the disk was resized between
        // them: such a point is kept, so the plan leaves it out too.
        let undo = self.s.undo.read();
        let geometry = |s: u64| undo.get(&s).map(|u| u.header().geometry);
        let middle = (drop_count + 1..n.saturating_sub(1))
            .filter(|&i| !kept(i))
            .filter(|&i| {
                let (k, x) = (st.points[i].sequence, st.points[i + 1].sequence);
                // A missing undo log stays in the plan: the prune fails
                // on it, saying so, rather than the plan hiding it.
                match (geometry(k), geometry(x)) {
                    (Some(a), Some(b)) => a == b,
                    _ => true,
                }
            })
            .map(|i| st.points[i].sequence)
            .collect();
        (drop_count, middle)
    }

    /// Drops the points [`prune_plan`](Replica::prune_plan) names: the
    /// oldest points the policy does not keep, stopping at the first kept
    /// or pinned one, and those between kept ones. `now_ns` is the current
    /// time in ns since the Unix epoch. Returns the sequences dropped.
    pub fn prune(&self, policy: &RetentionPolicy, now_ns: u64) -> Result<Vec<u64>> {
        let mut st = self.s.state.lock();
        self.finish_interrupted(&mut st)?;
        let (drop_count, middle) = self.plan(&st, policy, now_ns);
        let mut dropped = Vec::new();
        for _ in 0..drop_count {
            let mut next = st.clone();
            let gone = next.points.remove(0);
            // The new oldest point needs no undo log: it is the floor.
            let freed = next.points[0].sequence;
            next.points[0].undo_bytes = 0;
            next.store(&*self.s.dir)?;
            *st = next;
            self.s.undo.write().remove(&freed);
            self.s.dir.remove(&undo_name(freed))?;
            dropped.push(gone.sequence);
        }
        for k in middle {
            if self.merge_drop(&mut st, k)? {
                dropped.push(k);
            }
        }
        Ok(dropped)
    }

    /// Drops point `k`, which has points on both sides (P before, X after),
    /// by replacing undo X (X to k) with the merge of undo k and undo X
    /// (X to P): each block from undo k where it holds it, else from undo X.
    ///
    /// Crash-safe: the merged log is made durable as `undo-X.merged`, then
    /// the state without k is stored, then the merged log is renamed over
    /// `undo-X`. On open, a `.merged` file leading back to X's predecessor
    /// in the state is renamed into place; any other is removed.
    ///
    /// Returns `false`, keeping k, when the disk was resized between P and
    /// X (undo k and undo X of different sizes do not merge).
    fn merge_drop(&self, st: &mut super::state::State, k: u64) -> Result<bool> {
        let i = st
            .points
            .iter()
            .position(|p| p.sequence == k)
            .filter(|&i| i > 0 && i + 1 < st.points.len())
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Misuse,
                    format!("point {k} has no neighbours to merge into"),
                )
            })?;
        let (pred, x) = (st.points[i - 1].sequence, st.points[i + 1].sequence);
        let (uk, ux) = {
            let undo = self.s.undo.read();
            let get = |s: u64| {
                undo.get(&s)
                    .cloned()
                    .ok_or_else(|| Error::corrupt(format!("undo log of point {s} is not loaded")))
            };
            (get(k)?, get(x)?)
        };
        if uk.header().geometry != ux.header().geometry {
            return Ok(false);
        }
        let name = undo_name(x);
        let merged_name = format!("{name}.merged");
        let g = uk.header().geometry;
        let summary = {
            let mut h = LogHeader::new(st.disk_id, g, LogKind::Undo, st.points[i + 1].epoch, x)?;
            h.base_sequence = pred;
            h.base_digest = ux.header().base_digest;
            let opts = WriterOptions {
                record_bytes: super::UNDO_RECORD_BYTES,
                ..WriterOptions::default()
            };
            let mut w = LogFile::create_in(self.s.dir.clone(), &merged_name, h, opts)?;
            let all = uk.present()?.union(ux.present()?);
            let mut buf = vec![0u8; g.block_size() as usize];
            for b in all.blocks() {
                let data = &mut buf[..g.block_len(b) as usize];
                if uk.read_block(b, data)? == BlockLookup::Absent {
                    ux.read_block(b, data)?;
                }
                w.add_block(b, data)?;
            }
            w.commit()?
        };
        let mut next = st.clone();
        next.points.remove(i);
        next.points[i].undo_bytes = summary.bytes;
        next.store(&*self.s.dir)?;
        *st = next;
        self.s.dir.rename(&merged_name, &name)?;
        self.s.dir.sync()?;
        let merged = match self.s.dir.path_of(&name) {
            Some(p) => MappedLog::written(Some(&p), None, &summary)?,
            None => MappedLog::written(None, Some(self.s.dir.read_all(&name)?.into()), &summary)?,
        };
        {
            let mut undo = self.s.undo.write();
            undo.remove(&k);
            undo.insert(x, std::sync::Arc::new(merged));
        }
        self.s.dir.remove(&undo_name(k))?;
        Ok(true)
    }

    /// Returns the replica to retained point `sequence`, applying undo logs
    /// newest first; the newer points are gone afterwards. Refused while a
    /// newer point is pinned by a view or an export. Each step is
    /// crash-safe: an interrupted rollback resumes its step on open and
    /// leaves the replica at a retained point.
    pub fn rollback(&self, sequence: u64) -> Result<()> {
        let mut st = self.s.state.lock();
        self.finish_interrupted(&mut st)?;
        if !st.points.iter().any(|p| p.sequence == sequence) {
            return Err(
                Error::out_of_range(format!("point {sequence} is not retained"))
                    .with_sequence(sequence),
            );
        }
        if let Some(p) = self.pinned().into_iter().find(|&p| p > sequence) {
            return Err(Error::new(
                ErrorKind::Misuse,
                format!("point {p} is in use by a view or an export; close it before rolling back past it"),
            )
            .with_sequence(p));
        }
        while st.applied > sequence {
            let n = st.applied;
            let mut step = st.clone();
            step.phase = Phase::RollingBack(n);
            step.store(&*self.s.dir)?;
            *st = step;
            self.undo_step(&mut st, n)?;
        }
        Ok(())
    }
}
