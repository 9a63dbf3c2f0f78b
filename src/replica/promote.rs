//! The replica side of a failover: a record of the promotion (its phase
//! and point), the crash-safe commit that turns the replica's image into
//! the new primary's disk, and adopting an existing disk as a replica
//! (the old primary, for reverse replication). Format of the record in
//! docs/FORMAT.md ("Failover record").

use super::state::{Phase, PointInfo, State};
use super::{undo_name, Replica, CHUNK};
use crate::error::{Error, ErrorKind, Result};
use crate::frame;
use crate::geometry::BlockSet;
use crate::geometry::{Extent, Geometry};
use crate::id::DiskId;
use crate::io::{Dir, Storage};
use crate::le::{get_u32, get_u64, put_u32, put_u64};
use crate::log::{Consistency, Digest};
use std::sync::Arc;

pub(crate) const FAILOVER: &str = "failover";
/// Writes of the promoted disk before commit.
pub(crate) const OVERLAY: &str = "failover.overlay";
const MAGIC: [u8; 8] = *b"BRFAILO\0";
const VERSION: u32 = 1;
const FIXED: usize = 40;

/// Where a failover of this replica stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailoverPhase {
    /// Promoted at a point; writes go to an overlay; the point may still
    /// change; no log applies.
    Promoted,
    /// The commit is under way (finished on open after a crash).
    Committing,
    /// The image is the new primary's disk; the replica's history is gone.
    Committed,
}

/// The durable record of a failover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FailoverRecord {
    pub phase: FailoverPhase,
    /// The failover point.
    pub point: u64,
    /// (Committing and after) blocks the promoted disk wrote since the
    /// point, and blocks of later points the commit rolls back.
    pub written: Vec<Extent>,
    pub rolled_back: Vec<Extent>,
}

impl FailoverRecord {
    fn encode(&self) -> Vec<u8> {
        let mut b = frame::start(MAGIC, VERSION, FIXED);
        b[12] = match self.phase {
            FailoverPhase::Promoted => 1,
            FailoverPhase::Committing => 2,
            FailoverPhase::Committed => 3,
        };
        put_u64(&mut b, 16, self.point);
        put_u32(&mut b, 24, self.written.len() as u32);
        put_u32(&mut b, 28, self.rolled_back.len() as u32);
        for e in self.written.iter().chain(&self.rolled_back) {
            b.extend_from_slice(&e.start.to_le_bytes());
            b.extend_from_slice(&e.count.to_le_bytes());
        }
        frame::seal(b)
    }

    fn decode(b: &[u8]) -> Result<Self> {
        let bad = |m: &str| Error::corrupt(format!("failover record: {m}"));
        let end = frame::open(b, MAGIC, VERSION, FIXED, "failover record")?;
        let phase = match b[12] {
            1 => FailoverPhase::Promoted,
            2 => FailoverPhase::Committing,
            3 => FailoverPhase::Committed,
            _ => return Err(bad("unknown phase")),
        };
        let (nw, nr) = (get_u32(b, 24) as usize, get_u32(b, 28) as usize);
        if end != FIXED + (nw + nr) * 16 {
            return Err(bad("length does not match the extent counts"));
        }
        let all: Vec<Extent> = b[FIXED..end]
            .chunks_exact(16)
            .map(|c| Extent::new(get_u64(c, 0), get_u64(c, 8)))
            .collect();
        // Each is checked against the geometry where it is used; here that
        // it is an extent at all.
        if all
            .iter()
            .any(|e| e.count == 0 || e.start.checked_add(e.count).is_none())
        {
            return Err(bad("an extent is empty or overflows"));
        }
        let mut all = all.into_iter();
        let written = all.by_ref().take(nw).collect();
        Ok(FailoverRecord {
            phase,
            point: get_u64(b, 16),
            written,
            rolled_back: all.collect(),
        })
    }
}

/// The point an adopted disk is declared to hold (see [`Replica::adopt`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdoptAt {
    /// The disk.
    pub disk_id: DiskId,
    /// The epoch of the point.
    pub epoch: u64,
    /// Its sequence.
    pub sequence: u64,
    /// Its content digest.
    pub digest: Digest,
    /// The disk's geometry.
    pub geometry: Geometry,
}

impl Replica {
    /// Makes `image`, a disk that held point `at` and has since changed in
    /// blocks a reverse replication will send, a replica in `dir` at that
    /// point, with no older history. The next log it takes is a resync
    /// log building on `at` (so its epoch is newer).
    pub fn adopt(dir: Arc<dyn Dir>, image: Arc<dyn Storage>, at: AdoptAt) -> Result<Self> {
        let lock = dir.lock()?;
        if dir.exists(super::state::STATE) {
            return Err(Error::new(
                ErrorKind::Misuse,
                "the directory already holds a replica",
            ));
        }
        if image.len()? != at.geometry.size() {
            return Err(Error::mismatch(format!(
                "the disk holds {} bytes, the point {}",
                image.len()?,
                at.geometry.size()
            )));
        }
        let now = crate::status::now_ns();
        let st = State {
            disk_id: at.disk_id,
            epoch: at.epoch,
            geometry: at.geometry,
            applied: at.sequence,
            digest: at.digest,
            phase: Phase::Idle,
            points: vec![PointInfo {
                sequence: at.sequence,
                epoch: at.epoch,
                created_ns: now,
                consistency: Consistency::Crash,
                label: "adopted".into(),
                digest: at.digest,
                undo_bytes: 0,
            }],
        };
        st.store(&*dir)?;
        Ok(Replica::assemble(dir, lock, image, st))
    }

    /// The failover phase, if this replica was promoted.
    pub fn failover_phase(&self) -> Option<(FailoverPhase, u64)> {
        self.s.failover.lock().as_ref().map(|r| (r.phase, r.point))
    }

    /// Stores (or with `None` removes) the failover record, durably.
    pub(crate) fn store_failover(&self, rec: Option<FailoverRecord>) -> Result<()> {
        let mut cur = self.s.failover.lock();
        match &rec {
            Some(r) => self.s.dir.store_atomic(FAILOVER, &r.encode())?,
            None => {
                self.s.dir.remove(FAILOVER)?;
                self.s.dir.sync()?;
            }
        }
        *cur = rec;
        Ok(())
    }

    /// Loads the failover record at open and finishes a commit a crash
    /// interrupted.
    pub(super) fn load_failover(&self) -> Result<()> {
        if !self.s.dir.exists(FAILOVER) {
            return Ok(());
        }
        let rec =
            FailoverRecord::decode(&self.s.dir.read_all(FAILOVER)?).map_err(|e| {
                match self.s.dir.path_of(FAILOVER) {
                    Some(p) => e.with_path(p),
                    None => e,
                }
            })?;
        let committing = rec.phase == FailoverPhase::Committing;
        *self.s.failover.lock() = Some(rec.clone());
        if committing {
            self.finish_commit(rec)?;
        }
        Ok(())
    }

    /// The blocks the points after `point` changed (what rolling back to
    /// `point` undoes), from their undo logs' indexes.
    pub(crate) fn blocks_after(&self, point: u64) -> Result<BlockSet> {
        let n = self.s.state.lock().geometry.block_count();
        let undo = self.s.undo.read();
        let mut set = BlockSet::new(n);
        for (_, log) in undo.range(point + 1..) {
            let p = log.present()?;
            let clipped = BlockSet::from_extents(
                n,
                p.extents()
                    .filter(|e| e.start < n)
                    .map(|e| Extent::new(e.start, e.count.min(n - e.start))),
            )?;
            set = set.union(&clipped);
        }
        Ok(set)
    }

    /// Commits a failover recorded as committing: rolls back to the point,
    /// copies the overlay's written blocks into the image, keeps only the
    /// point as history, records it committed and removes the overlay.
    /// Each step is idempotent, so a crash anywhere is finished on open.
    pub(crate) fn finish_commit(&self, mut rec: FailoverRecord) -> Result<()> {
        self.rollback(rec.point)?;
        let g = self.s.state.lock().geometry;
        for &e in &rec.written {
            g.check_extent(e).map_err(|x| {
                Error::corrupt(format!("failover record: {}", x.message())).with_sequence(rec.point)
            })?;
        }
        if !rec.written.is_empty() {
            let overlay = self.s.dir.open(OVERLAY)?;
            let mut buf = Vec::new();
            for &e in &rec.written {
                let (off, len) = g.extent_bytes(e);
                let mut done = 0;
                while done < len {
                    let n = (len - done).min(CHUNK);
                    buf.resize(n as usize, 0);
                    overlay.read_at(&mut buf, off + done)?;
                    self.s.image.write_at(&buf, off + done)?;
                    done += n;
                }
            }
            self.s.image.sync()?;
        }
        self.forget_history()?;
        rec.phase = FailoverPhase::Committed;
        self.store_failover(Some(rec))?;
        self.s.dir.remove(OVERLAY)?;
        self.s.dir.sync()
    }

    /// Keeps only the latest point: after a commit the image changed under
    /// every older one.
    fn forget_history(&self) -> Result<()> {
        let mut st = self.s.state.lock();
        if st.points.len() <= 1 {
            return Ok(());
        }
        let mut next = st.clone();
        let dropped: Vec<u64> = next
            .points
            .drain(..next.points.len() - 1)
            .map(|p| p.sequence)
            .collect();
        next.points[0].undo_bytes = 0;
        let latest = next.points[0].sequence;
        next.store(&*self.s.dir)?;
        *st = next;
        let mut undo = self.s.undo.write();
        for s in dropped.into_iter().chain([latest]) {
            undo.remove(&s);
            self.s.dir.remove(&undo_name(s))?;
        }
        Ok(())
    }

    /// The image (the failover disk after commit).
    pub(crate) fn image(&self) -> &Arc<dyn Storage> {
        &self.s.image
    }

    /// The replica's directory.
    pub(crate) fn dir(&self) -> &Arc<dyn Dir> {
        &self.s.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Extents read from a record with a valid checksum are still checked:
    /// an empty or overflowing one is corrupt (it used to reach
    /// `Extent::end` unchecked).
    #[test]
    fn overflowing_or_empty_extents_are_corrupt() {
        for bad in [Extent::new(u64::MAX - 1, 5), Extent::new(4, 0)] {
            let r = FailoverRecord {
                phase: FailoverPhase::Committing,
                point: 7,
                written: vec![bad],
                rolled_back: vec![],
            };
            let e = FailoverRecord::decode(&r.encode()).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::Corrupt, "{bad:?}: {e}");
        }
    }

    /// A committing record whose written extent passes the disk's end is
    /// refused on open as corrupt, before any byte is copied.
    #[test]
    fn a_record_past_the_disk_is_refused_on_open() {
        use crate::io::MemDir;
        use crate::log::{LogHeader, LogKind, LogWriter, MappedLog, ReadOptions, WriterOptions};
        let g = Geometry::new(64 << 10, 4096).unwrap();
        let h = LogHeader::new(DiskId([1; 16]), g, LogKind::Full, 1, 1).unwrap();
        let opts = WriterOptions {
            record_bytes: 65536,
            threads: 1,
        };
        let mut w = LogWriter::new(Vec::new(), h, opts).unwrap();
        w.add_block(0, &[7u8; 4096]).unwrap();
        let log =
            MappedLog::from_bytes(w.finish().unwrap().0, "full", &ReadOptions::default()).unwrap();
        let dir = Arc::new(MemDir::new());
        drop(Replica::create(dir.clone(), &log).unwrap());
        let rec = FailoverRecord {
            phase: FailoverPhase::Committing,
            point: 1,
            written: vec![Extent::new(15, 2)],
            rolled_back: vec![],
        };
        dir.store_atomic(FAILOVER, &rec.encode()).unwrap();
        dir.create(OVERLAY).unwrap();
        let e = Replica::open(dir).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Corrupt, "{e}");
    }

    #[test]
    fn record_round_trip_and_every_flip_detected() {
        let r = FailoverRecord {
            phase: FailoverPhase::Committing,
            point: 7,
            written: vec![Extent::new(3, 2), Extent::new(9, 1)],
            rolled_back: vec![Extent::new(100, 5)],
        };
        let b = r.encode();
        crate::assert_golden("failover_v1.rec", &b);
        assert_eq!(FailoverRecord::decode(&b).unwrap(), r);
        for i in 0..b.len() {
            let mut x = b.clone();
            x[i] ^= 0x08;
            assert!(FailoverRecord::decode(&x).is_err(), "flip at {i}");
        }
        for cut in 0..b.len() {
            assert!(FailoverRecord::decode(&b[..cut]).is_err(), "cut at {cut}");
        }
    }
}
