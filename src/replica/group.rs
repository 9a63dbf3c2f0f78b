//! Consistency groups on the replica: the logs of one group cut, one per
//! disk, applied all or none.
//!
//! Before the first member is applied, a journal (`group-journal` in the
//! group's directory, format in docs/FORMAT.md, "Group journal") records
//! every member's point before and after. Once all are applied it is
//! removed. Opening the group with a journal present rolls back the
//! members that reached their new point, so after a crash at any step
//! every member is at its old point or every member at its new one.

use super::{ApplyOutcome, Replica};
use crate::error::{Error, Result};
use crate::frame;
use crate::id::DiskId;
use crate::io::Dir;
use crate::le::{get_u32, get_u64, put_u32, put_u64};
use crate::log::{MappedLog, ReadOptions};
use std::path::Path;
use std::sync::Arc;

const JOURNAL: &str = "group-journal";
const MAGIC: [u8; 8] = *b"BRGROUP\0";
const VERSION: u32 = 1;
const FIXED: usize = 32;
const MEMBER: usize = 32;

/// The replicas of a machine's disks, applied as one.
pub struct ReplicaGroup {
    dir: Arc<dyn Dir>,
    members: Vec<Replica>,
}

impl std::fmt::Debug for ReplicaGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaGroup")
            .field("members", &self.members)
            .finish()
    }
}

/// One member's move in a group apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Move {
    disk_id: DiskId,
    before: u64,
    after: u64,
}

impl ReplicaGroup {
    /// Groups replicas of distinct disks, keeping the journal in `dir`, and
    /// finishes an interrupted group apply (rolling its members back).
    pub fn open(dir: Arc<dyn Dir>, members: Vec<Replica>) -> Result<Self> {
        let mut ids: Vec<_> = members.iter().map(|r| r.status().disk_id).collect();
        ids.sort();
        if members.is_empty() || ids.windows(2).any(|w| w[0] == w[1]) {
            return Err(Error::invalid(
                "a replica group has at least one member and each disk once",
            ));
        }
        let g = ReplicaGroup { dir, members };
        if g.dir.exists(JOURNAL) {
            let moves = decode(&g.dir.read_all(JOURNAL)?)?;
            g.roll_back(&moves)?;
        }
        Ok(g)
    }

    /// The member replicas.
    pub fn members(&self) -> &[Replica] {
        &self.members
    }

    /// Applies one group cut: one log per member, all of the same group.
    /// Every log is checked against its replica first; on any error the
    /// members already applied are rolled back. A cut applied before is
    /// recognised and skipped. Outcomes come in the members' order.
    pub fn apply(&self, logs: &[&MappedLog]) -> Result<Vec<ApplyOutcome>> {
        let first = logs.first().map(|l| l.header().group);
        let group = match first {
            Some(Some(g)) if logs.len() == self.members.len() => g,
            _ => {
                return Err(Error::mismatch(format!(
                "a group apply takes one log of the same group per member ({} members, {} logs)",
                self.members.len(),
                logs.len()
            )))
            }
        };
        if group.members as usize != self.members.len()
            || logs.iter().any(|l| l.header().group != Some(group))
        {
            return Err(Error::mismatch(
                "the logs are not all of one group cut of this group's size",
            ));
        }
        // Each member's log, and whether it is due.
        let mut plan = Vec::with_capacity(self.members.len());
        for r in &self.members {
            let id = r.status().disk_id;
            let log = logs
                .iter()
                .find(|l| l.header().disk_id == id)
                .ok_or_else(|| Error::mismatch(format!("no log for member disk {id}")))?;
            let due = r.expects(log)?;
            plan.push((r, *log, due));
        }
        let due = plan.iter().filter(|p| p.2.is_none()).count();
        if due == 0 {
            return Ok(plan.iter().map(|p| p.2.expect("all applied")).collect());
        }
        if due != plan.len() {
            return Err(Error::mismatch(
                "part of this group cut is applied and part is not",
            ));
        }
        let moves: Vec<Move> = plan
            .iter()
            .map(|(r, log, _)| Move {
                disk_id: log.header().disk_id,
                before: r.status().applied,
                after: log.header().sequence,
            })
            .collect();
        self.dir.store_atomic(JOURNAL, &encode(&group.id, &moves))?;
        let mut outcomes = Vec::with_capacity(plan.len());
        for (r, log, _) in &plan {
            match r.apply(log) {
                Ok(o) => outcomes.push(o),
                Err(e) => {
                    // Undo the others now; if that fails too, the journal
                    // stays and the next open finishes it.
                    let _ = self.roll_back(&moves);
                    return Err(e);
                }
            }
        }
        self.dir.remove(JOURNAL)?;
        self.dir.sync()?;
        Ok(outcomes)
    }

    /// [`apply`](Self::apply) for log files handed in (a transport's
    /// uploads): each is copied into its member's directory first (the
    /// member whose disk its header names), verified whole there, and the
    /// copies are removed after. Memory stays bounded whatever the sizes.
    pub fn apply_files(&self, paths: &[&Path]) -> Result<Vec<ApplyOutcome>> {
        let mut staged: Vec<(&Replica, String)> = Vec::with_capacity(paths.len());
        let result = (|| {
            let mut logs = Vec::with_capacity(paths.len());
            for path in paths {
                let id = crate::log::LogHeader::read_file(path)?.disk_id;
                let r = self
                    .members
                    .iter()
                    .find(|r| r.status().disk_id == id)
                    .ok_or_else(|| {
                        Error::mismatch(format!("{}: disk {id} is not a member", path.display()))
                    })?;
                let name = super::stage_file(&*r.s.dir, path)?;
                staged.push((r, name));
                let (r, name) = staged.last().expect("just pushed");
                logs.push(MappedLog::open_in(
                    &*r.s.dir,
                    name,
                    &ReadOptions::default(),
                )?);
            }
            let refs: Vec<&MappedLog> = logs.iter().collect();
            self.apply(&refs)
        })();
        for (r, name) in staged {
            let _ = r.s.dir.remove(&name);
        }
        result
    }

    /// Returns every member of `moves` that reached its new point to its
    /// old one, then removes the journal.
    fn roll_back(&self, moves: &[Move]) -> Result<()> {
        for m in moves {
            let r = self
                .members
                .iter()
                .find(|r| r.status().disk_id == m.disk_id)
                .ok_or_else(|| {
                    Error::mismatch(format!(
                        "the group journal names disk {}, not a member",
                        m.disk_id
                    ))
                })?;
            let at = r.status().applied;
            if at == m.after {
                r.rollback(m.before)?;
            } else if at != m.before {
                return Err(Error::corrupt(format!(
                    "disk {} is at point {at}, the group journal says {} or {}",
                    m.disk_id, m.before, m.after
                )));
            }
        }
        self.dir.remove(JOURNAL)?;
        self.dir.sync()
    }
}

fn encode(id: &[u8; 16], moves: &[Move]) -> Vec<u8> {
    let mut b = frame::start(MAGIC, VERSION, FIXED);
    put_u32(&mut b, 12, moves.len() as u32);
    b[16..32].copy_from_slice(id);
    for m in moves {
        let mut e = [0u8; MEMBER];
        e[0..16].copy_from_slice(&m.disk_id.0);
        put_u64(&mut e, 16, m.before);
        put_u64(&mut e, 24, m.after);
        b.extend_from_slice(&e);
    }
    frame::seal(b)
}

fn decode(b: &[u8]) -> Result<Vec<Move>> {
    let end = frame::open(b, MAGIC, VERSION, FIXED, "group journal")?;
    let n = get_u32(b, 12) as usize;
    if end != FIXED + n * MEMBER {
        return Err(Error::corrupt(
            "group journal: length does not match the member count",
        ));
    }
    Ok(b[FIXED..end]
        .chunks_exact(MEMBER)
        .map(|e| {
            let mut id = [0u8; 16];
            id.copy_from_slice(&e[0..16]);
            Move {
                disk_id: DiskId(id),
                before: get_u64(e, 16),
                after: get_u64(e, 24),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_round_trip_and_every_flip_detected() {
        let moves = vec![
            Move {
                disk_id: DiskId([1; 16]),
                before: 4,
                after: 5,
            },
            Move {
                disk_id: DiskId([2; 16]),
                before: 9,
                after: 10,
            },
        ];
        let b = encode(&[7; 16], &moves);
        crate::assert_golden("group_journal_v1", &b);
        assert_eq!(decode(&b).unwrap(), moves);
        for i in 0..b.len() {
            let mut x = b.clone();
            x[i] ^= 0x20;
            assert!(decode(&x).is_err(), "flip at {i}");
        }
        for cut in 0..b.len() {
            assert!(decode(&b[..cut]).is_err(), "cut at {cut}");
        }
    }
}
