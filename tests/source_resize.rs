//! A disk resized while replicating: the next log ships the new size, the
//! replica grows or shrinks with it, older points keep their own size for
//! views and rollbacks, and a crash at every step of a resizing apply
//! leaves the old point or the new one.

mod common;

use blockrep::io::{Dir, Fault, FaultPlan, MemDir, MemStorage, Storage};
use blockrep::log::WriterOptions;
use blockrep::log::{Digest, LogHeader, LogKind, LogWriter, MappedLog, ReadOptions};
use blockrep::replica::Replica;
use blockrep::source::{CycleOptions, Pipeline, Primary, Spool};
use blockrep::{DiskId, ErrorKind, Geometry, Tracker};
use common::{first_diff, Rng};
use std::sync::Arc;

const ID: DiskId = DiskId([0x33; 16]);

fn log_of(spool: &Spool, seq: u64) -> MappedLog {
    let l = spool
        .pending()
        .into_iter()
        .find(|l| l.point.sequence == seq)
        .unwrap();
    let f = spool.open_log(seq).unwrap();
    let mut b = vec![0u8; l.bytes as usize];
    f.read_at(&mut b, 0).unwrap();
    MappedLog::from_bytes(b, &l.name, &ReadOptions::default()).unwrap()
}

fn image(r: &Replica) -> Vec<u8> {
    let mut b = vec![0u8; r.status().geometry.size() as usize];
    r.read_at(&mut b, 0).unwrap();
    b
}

struct Run {
    /// The disk at each point, by sequence.
    points: Vec<(u64, Vec<u8>)>,
    /// The logs, by sequence (1 is the full log).
    logs: Vec<MappedLog>,
}

/// Replicates a disk through grow, write, shrink, write; returns every
/// point's content and log.
fn replicate() -> Run {
    let g = Geometry::new(4 << 20, 4096).unwrap();
    let mut d = vec![0u8; g.size() as usize];
    let mut rng = Rng(8);
    rng.fill(&mut d);
    let disk = Arc::new(MemStorage::from_vec(d));
    let start = blockrep::source::ChainPoint::start(1, g);
    let dir: Arc<dyn Dir> = Arc::new(MemDir::new());
    let spool = Spool::create(dir, ID, start, 1 << 30).unwrap();
    let opts = WriterOptions::default();
    let mut p = Pipeline::new(Primary::new(Tracker::new(g), disk.clone()), spool, opts).unwrap();
    let mut run = Run {
        points: Vec::new(),
        logs: Vec::new(),
    };
    let s = p.initial_sync(opts.into()).unwrap();
    run.points.push((1, disk.to_vec()));
    run.logs.push(log_of(p.spool(), s.summary.header.sequence));
    let write = |p: &Pipeline, rng: &mut Rng| common::write_near_end(p, &*disk, rng, u64::MAX, 5);
    for size in [0, (6 << 20) + 1000, 0, (3 << 20) + 500, 0, (5 << 20) + 7] {
        if size > 0 {
            // The hypervisor resizes the disk with its I/O drained.
            disk.set_len(size).unwrap();
            p.resize(size).unwrap();
        }
        write(&p, &mut rng);
        let r = p.cycle(&CycleOptions::default()).unwrap();
        let seq = r.summary.header.sequence;
        assert_eq!(r.summary.header.geometry.size(), disk.len().unwrap());
        run.points.push((seq, disk.to_vec()));
        run.logs.push(log_of(p.spool(), seq));
    }
    run
}

#[test]
fn the_replica_follows_resizes_and_old_points_keep_their_size() {
    let run = replicate();
    let dir: Arc<dyn Dir> = Arc::new(MemDir::new());
    let r = Replica::create(dir, &run.logs[0]).unwrap();
    for (log, (seq, want)) in run.logs.iter().zip(&run.points).skip(1) {
        r.apply(log).unwrap();
        assert_eq!(first_diff(&image(&r), want), None, "point {seq}");
    }
    // Every point reads back at its own size.
    for (seq, want) in &run.points {
        let v = r.view(*seq).unwrap();
        assert_eq!(v.geometry().size(), want.len() as u64, "point {seq}");
        let mut b = vec![0u8; want.len()];
        v.read_at(&mut b, 0).unwrap();
        assert_eq!(first_diff(&b, want), None, "view of point {seq}");
        let mut past = [0u8; 1];
        assert!(v.read_at(&mut past, want.len() as u64).is_err());
    }
    // Rolling back across the shrink and the grow restores size and bytes.
    for (seq, want) in run.points.iter().rev().skip(1) {
        r.rollback(*seq).unwrap();
        assert_eq!(r.status().geometry.size(), want.len() as u64);
        assert_eq!(first_diff(&image(&r), want), None, "rolled back to {seq}");
    }
    // A log of another block size never applies.
    let h = {
        let g = Geometry::new(4 << 20, 8192).unwrap();
        let mut h = LogHeader::new(ID, g, LogKind::Delta, 1, 2).unwrap();
        h.base_sequence = 1;
        h.base_digest = r.status().digest;
        h
    };
    let (bytes, _) = LogWriter::new(Vec::new(), h, WriterOptions::default())
        .unwrap()
        .finish()
        .unwrap();
    let bad = MappedLog::from_bytes(bytes, "bad", &ReadOptions::default()).unwrap();
    assert_eq!(r.apply(&bad).unwrap_err().kind(), ErrorKind::Mismatch);
}

#[test]
fn a_crash_at_every_step_of_a_resizing_apply_leaves_old_or_new() {
    let run = replicate();
    // Base: the replica at each point before a resizing log (grow: 2 to 3,
    // shrink: 4 to 5).
    for target in [3usize, 5] {
        let base = Arc::new(MemDir::new());
        let r = Replica::create(base.clone(), &run.logs[0]).unwrap();
        for log in &run.logs[1..target - 1] {
            r.apply(log).unwrap();
        }
        drop(r);
        let (old, new) = (&run.points[target - 2].1, &run.points[target - 1].1);
        let faults = [
            Fault::PowerLoss { torn: false },
            Fault::PowerLoss { torn: true },
        ];
        let steps = common::at_every_step(&faults, |plan, at| {
            let dir = Arc::new(base.recover(plan));
            let result = Replica::open(dir.clone()).and_then(|r| r.apply(&run.logs[target - 1]));
            let Some((n, fault)) = at else {
                result.unwrap();
                return;
            };
            assert!(result.is_err(), "log {target} step {n} {fault:?}");
            let r = Replica::open(Arc::new(dir.recover(&FaultPlan::counting()))).unwrap();
            let img = image(&r);
            assert!(
                img == *old || img == *new,
                "log {target} step {n}: neither the old point nor the new (size {})",
                img.len()
            );
            r.apply(&run.logs[target - 1]).unwrap();
            assert_eq!(first_diff(&image(&r), new), None, "log {target} step {n}");
        });
        assert!(steps > 5, "only {steps} steps");
    }
}

/// A disk and its chain of logs written by hand with [`LogWriter`] (as an
/// embedder or the C ABI may write them): each log holds only the blocks
/// named, so a grow need not carry the old short last block.
struct HandChain {
    g: Geometry,
    data: Vec<u8>,
    seq: u64,
    digest: Digest,
}

impl HandChain {
    /// Resizes the disk: bytes past the old end read as zeros.
    fn resize(&mut self, size: u64) {
        self.g = Geometry::new(size, 4096).unwrap();
        self.data.resize(size as usize, 0);
    }

    /// Fills block `b` with new random bytes.
    fn write(&mut self, rng: &mut Rng, b: u64) {
        let (off, len) = self.g.extent_bytes(blockrep::Extent::new(b, 1));
        rng.fill(&mut self.data[off as usize..(off + len) as usize]);
    }

    /// The next log, of the disk's current size, holding `blocks`.
    fn log(&mut self, kind: LogKind, blocks: &[u64]) -> MappedLog {
        self.seq += 1;
        let mut h = LogHeader::new(ID, self.g, kind, 1, self.seq).unwrap();
        h.base_digest = self.digest;
        let mut w = LogWriter::new(Vec::new(), h, WriterOptions::default()).unwrap();
        for &b in blocks {
            let (off, len) = self.g.extent_bytes(blockrep::Extent::new(b, 1));
            w.add_block(b, &self.data[off as usize..(off + len) as usize])
                .unwrap();
        }
        let (bytes, summary) = w.finish().unwrap();
        self.digest = summary.trailer.digest;
        MappedLog::from_bytes(bytes, format!("log-{}", self.seq), &ReadOptions::default()).unwrap()
    }
}

/// Each point's sequence and the disk's content at it.
type Points = Vec<(u64, Vec<u8>)>;

/// A replica through grows whose logs leave out the old short last block
/// (which a later log then writes whole), an in-place grow and a shrink;
/// returns its directory, the replica and every point's content.
fn grown_chain() -> (Arc<dyn Dir>, Replica, Points) {
    const B: u64 = 4096;
    let mut rng = Rng(20);
    let mut c = HandChain {
        g: Geometry::new(3 * B + 1000, 4096).unwrap(),
        data: vec![0; 3 * B as usize + 1000],
        seq: 0,
        digest: Digest::default(),
    };
    for b in 0..4 {
        c.write(&mut rng, b);
    }
    let mut points = vec![(1, c.data.clone())];
    let dir: Arc<dyn Dir> = Arc::new(MemDir::new());
    let r = Replica::create(dir.clone(), &c.log(LogKind::Full, &[0, 1, 2, 3])).unwrap();
    // Each step: a new size (0: unchanged), then the blocks written and
    // shipped.
    let steps: [(u64, &[u64]); 8] = [
        (0, &[0, 3]),
        (7 * B + 2000, &[1, 5]), // 4 blocks (the last of 1000 bytes) to 8
        (0, &[3, 6]),            // block 3 whole now
        (7 * B + 3500, &[2]),    // the last block grows in place
        (0, &[6]),               // and is written at its new length
        (5 * B + 700, &[0]),     // shrink, cutting block 5 short
        (9 * B, &[8]),           // grow past it, leaving it out
        (0, &[4, 5]),            // block 5 whole now
    ];
    for (size, blocks) in steps {
        if size > 0 {
            c.resize(size);
        }
        for &b in blocks {
            c.write(&mut rng, b);
        }
        let log = c.log(LogKind::Delta, blocks);
        r.apply(&log).unwrap();
        points.push((c.seq, c.data.clone()));
    }
    (dir, r, points)
}

/// Every retained point of `r`, byte for byte at its own size, through a
/// view and an export; then rolling back to each point restores its size
/// and bytes.
fn check_every_point(r: &Replica, points: &[(u64, Vec<u8>)]) {
    let tmp = tempfile::tempdir().unwrap();
    for (seq, want) in points {
        let v = r.view(*seq).unwrap();
        assert_eq!(v.geometry().size(), want.len() as u64, "point {seq}");
        let mut b = vec![0u8; want.len()];
        v.read_at(&mut b, 0)
            .unwrap_or_else(|e| panic!("view of point {seq}: {e}"));
        assert_eq!(first_diff(&b, want), None, "view of point {seq}");
        let path = tmp.path().join(format!("point-{seq}"));
        r.export(*seq, &path)
            .unwrap_or_else(|e| panic!("export of point {seq}: {e}"));
        assert_eq!(first_diff(&std::fs::read(&path).unwrap(), want), None);
    }
    for (seq, want) in points.iter().rev().skip(1) {
        r.rollback(*seq).unwrap();
        assert_eq!(first_diff(&image(r), want), None, "rolled back to {seq}");
    }
}

#[test]
fn old_points_read_back_after_a_grow_whose_log_skips_the_old_short_block() {
    let (_, r, points) = grown_chain();
    check_every_point(&r, &points);
}

#[test]
fn old_points_read_back_from_undo_logs_without_the_old_short_block() {
    let (dir, r, points) = grown_chain();
    drop(r);
    // Undo logs as written before they kept the old short last block on a
    // grow: the grows' undo logs without it (their logs do not write it).
    let mut rewritten = 0;
    for (seq, want) in &points[1..] {
        let name = format!("undo-{seq:020}");
        let undo =
            MappedLog::from_bytes(dir.read_all(&name).unwrap(), &name, &ReadOptions::default())
                .unwrap();
        let g = undo.header().geometry;
        if want.len() as u64 <= g.size() || g.size().is_multiple_of(4096) {
            continue;
        }
        let short = g.block_count() - 1;
        let mut w =
            LogWriter::new(Vec::new(), undo.header().clone(), WriterOptions::default()).unwrap();
        for b in undo.present().unwrap().blocks().filter(|&b| b != short) {
            let mut buf = vec![0u8; g.block_len(b) as usize];
            undo.read_block(b, &mut buf).unwrap();
            w.add_block(b, &buf).unwrap();
        }
        let (bytes, _) = w.finish().unwrap();
        dir.remove(&name).unwrap();
        let f = dir.create(&name).unwrap();
        f.write_at(&bytes, 0).unwrap();
        f.sync().unwrap();
        rewritten += 1;
    }
    assert_eq!(rewritten, 3);
    let r = Replica::open(dir).unwrap();
    check_every_point(&r, &points);
}

/// Hands every log not yet shipped to the replica (created from the full
/// log) and acknowledges it.
fn ship_all(spool: &Spool, dir: &Arc<dyn Dir>, replica: &mut Option<Replica>) {
    while let Some(l) = spool.next_to_ship() {
        let log = log_of(spool, l.point.sequence);
        match replica {
            None => *replica = Some(Replica::create(dir.clone(), &log).unwrap()),
            Some(r) => {
                r.apply(&log).unwrap();
            }
        }
        spool.ack(l.point.sequence, &l.point.digest).unwrap();
    }
}

#[test]
fn a_cycle_over_the_spool_limit_after_a_shrink_folds_logs_past_the_new_end() {
    let g = Geometry::new((2 << 20) + 1000, 4096).unwrap();
    let mut d = vec![0u8; g.size() as usize];
    let mut rng = Rng(21);
    rng.fill(&mut d);
    let disk = Arc::new(MemStorage::from_vec(d));
    let start = blockrep::source::ChainPoint::start(1, g);
    let limit = 64 << 10;
    let spool = Spool::create(Arc::new(MemDir::new()), ID, start, limit).unwrap();
    let opts = WriterOptions::default();
    let mut p = Pipeline::new(Primary::new(Tracker::new(g), disk.clone()), spool, opts).unwrap();
    p.initial_sync(opts.into()).unwrap();
    let rdir: Arc<dyn Dir> = Arc::new(MemDir::new());
    let mut replica = None;
    ship_all(p.spool(), &rdir, &mut replica);
    // Random writes of 9000 bytes within `span` bytes of the end.
    let write = |p: &Pipeline, rng: &mut Rng, span: u64| {
        common::write_near_end(p, &*disk, rng, span, 6);
    };
    // The link is down: logs of blocks near the end pile up past the
    // spool's limit.
    for _ in 0..3 {
        write(&p, &mut rng, 200_000);
        p.cycle(&CycleOptions::default()).unwrap();
    }
    assert!(p.spool().over_limit());
    // The disk shrinks, cutting off most of those blocks and the last one
    // in part.
    let new = g.size() - 150_000;
    assert!(!new.is_multiple_of(4096));
    disk.set_len(new).unwrap();
    p.resize(new).unwrap();
    write(&p, &mut rng, 50_000);
    let pending = p.spool().pending();
    let past_end = pending.iter().any(|l| {
        let log = log_of(p.spool(), l.point.sequence);
        let last = log.extents().unwrap().last().unwrap().extent;
        last.end() > new.div_ceil(4096)
    });
    assert!(past_end, "no pending log holds blocks past the new end");
    let r = p
        .cycle(&CycleOptions::default())
        .expect("a cycle after the shrink folds the spool back");
    let folded = r.folded.expect("the spool was over its limit");
    assert_eq!(folded.logs, pending.len() as u64);
    assert_eq!(r.summary.header.geometry.size(), new);
    write(&p, &mut rng, 50_000);
    p.cycle(&CycleOptions::default()).unwrap();
    // The link is back: the replica equals the disk.
    ship_all(p.spool(), &rdir, &mut replica);
    let r = replica.as_ref().unwrap();
    assert_eq!(r.status().applied, p.spool().head().sequence);
    assert_eq!(first_diff(&image(r), &disk.to_vec()), None);
}
