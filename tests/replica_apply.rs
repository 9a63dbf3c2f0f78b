//! The replica applier: exact contents after every log, crash safety at
//! every I/O step, and bad logs that change nothing.

mod common;

use blockrep::io::{Dir, Fault, FaultPlan, FsDir, MemDir};
use blockrep::log::{Digest, LogHeader, LogKind, LogWriter, MappedLog, ReadOptions, WriterOptions};
use blockrep::replica::{ApplyOutcome, Replica};
use blockrep::{DiskId, ErrorKind, Extent, Geometry};
use common::Rng;
use std::sync::Arc;

const ID: DiskId = DiskId([9; 16]);

fn geo() -> Geometry {
    Geometry::new(64 * 4096 + 1000, 4096).unwrap() // 65 blocks, the last short
}

/// A source disk in memory and the logs cut from it.
struct Source {
    g: Geometry,
    data: Vec<u8>,
    epoch: u64,
    seq: u64,
    digest: Digest,
}

impl Source {
    fn new(rng: &mut Rng) -> Self {
        let g = geo();
        let mut data = vec![0u8; g.size() as usize];
        for b in 0..g.block_count() {
            if rng.below(3) > 0 {
                let (off, len) = g.extent_bytes(Extent::new(b, 1));
                rng.fill(&mut data[off as usize..(off + len) as usize]);
            }
        }
        Source {
            g,
            data,
            epoch: 1,
            seq: 0,
            digest: Digest::default(),
        }
    }

    fn log(&mut self, kind: LogKind, blocks: &[u64]) -> MappedLog {
        self.seq += 1;
        let mut h = LogHeader::new(ID, self.g, kind, self.epoch, self.seq).unwrap();
        h.base_digest = self.digest;
        let mut w = LogWriter::new(
            Vec::new(),
            h,
            WriterOptions {
                record_bytes: 16 << 10,
                threads: 1,
            },
        )
        .unwrap();
        for &b in blocks {
            let (off, len) = self.g.extent_bytes(Extent::new(b, 1));
            w.add_block(b, &self.data[off as usize..(off + len) as usize])
                .unwrap();
        }
        let (bytes, summary) = w.finish().unwrap();
        self.digest = summary.trailer.digest;
        MappedLog::from_bytes(bytes, format!("log-{}", self.seq), &ReadOptions::default()).unwrap()
    }

    fn full(&mut self) -> MappedLog {
        let all: Vec<u64> = (0..self.g.block_count()).collect();
        self.log(LogKind::Full, &all)
    }

    /// Rewrites some blocks (random data, zeros, partial) and returns a
    /// delta log of them.
    fn change(&mut self, rng: &mut Rng) -> MappedLog {
        let mut blocks: Vec<u64> = (0..1 + rng.below(12))
            .map(|_| rng.below(self.g.block_count()))
            .collect();
        blocks.sort_unstable();
        blocks.dedup();
        for &b in &blocks {
            let (off, len) = self.g.extent_bytes(Extent::new(b, 1));
            let s = &mut self.data[off as usize..(off + len) as usize];
            match rng.below(3) {
                0 => s.fill(0),
                1 => rng.fill(s),
                _ => s[..len as usize / 2].fill(rng.next() as u8),
            }
        }
        self.log(LogKind::Delta, &blocks)
    }
}

/// Where two images first differ, for assertion messages.
fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    if a.len() != b.len() {
        return Some(a.len().min(b.len()));
    }
    a.iter().zip(b).position(|(x, y)| x != y)
}

fn image(r: &Replica, g: Geometry) -> Vec<u8> {
    let mut buf = vec![0u8; g.size() as usize];
    r.read_at(&mut buf, 0).unwrap();
    buf
}

#[test]
fn replica_equals_the_source_after_every_log() {
    let mut rng = Rng(17);
    let mut src = Source::new(&mut rng);
    let dir: Arc<dyn Dir> = Arc::new(MemDir::new(&FaultPlan::counting()));
    let r = Replica::create(dir.clone(), &src.full()).unwrap();
    assert_eq!(first_diff(&image(&r, src.g), &src.data), None);
    for i in 0..20 {
        let log = src.change(&mut rng);
        assert_eq!(
            r.apply(&log).unwrap(),
            ApplyOutcome::Applied(log.header().sequence)
        );
        assert_eq!(
            first_diff(&image(&r, src.g), &src.data),
            None,
            "after log {i}"
        );
        // Applying it again is recognised and changes nothing.
        assert_eq!(
            r.apply(&log).unwrap(),
            ApplyOutcome::AlreadyApplied(log.header().sequence)
        );
    }
    let points = r.points();
    assert_eq!(points.len(), 21);
    assert_eq!(points.last().unwrap().sequence, 21);
    assert!(points[1..].iter().all(|p| p.undo_bytes > 0) && points[0].undo_bytes == 0);
    drop(r);
    let r = Replica::open(dir).unwrap();
    assert_eq!(first_diff(&image(&r, src.g), &src.data), None);
    assert_eq!(r.status().applied, 21);
}

#[test]
fn real_directory_with_punched_holes() {
    let mut rng = Rng(5);
    let mut src = Source::new(&mut rng);
    let t = tempfile::tempdir().unwrap();
    let dir: Arc<dyn Dir> = Arc::new(FsDir::new(t.path().join("replica")).unwrap());
    let r = Replica::create(dir.clone(), &src.full()).unwrap();
    for _ in 0..5 {
        r.apply(&src.change(&mut rng)).unwrap();
    }
    assert_eq!(first_diff(&image(&r, src.g), &src.data), None);
    assert_eq!(
        std::fs::read(t.path().join("replica/image")).unwrap(),
        src.data
    );
    drop(r);
    // Reopen maps the undo logs from files.
    let r = Replica::open(dir).unwrap();
    assert_eq!(r.points().len(), 6);
}

/// For every n: lose power (or fail) at the n-th write or sync of an apply;
/// the replica reopens at exactly point N-1 or N.
#[test]
fn crash_at_every_step_of_an_apply() {
    for fault in [
        Fault::PowerLoss { torn: false },
        Fault::PowerLoss { torn: true },
        Fault::Error,
        Fault::NoSpace,
    ] {
        let mut rng = Rng(23);
        let mut src = Source::new(&mut rng);
        let base = Arc::new(MemDir::new(&FaultPlan::counting()));
        let r = Replica::create(base.clone(), &src.full()).unwrap();
        let mut before = src.data.clone();
        for _ in 0..2 {
            r.apply(&src.change(&mut rng)).unwrap();
            before = src.data.clone();
        }
        drop(r);
        let log = src.change(&mut rng);
        let after = src.data.clone();
        let n_seq = log.header().sequence;
        // Count the steps of a clean apply.
        let counting = FaultPlan::counting();
        let probe = base.recover(&counting);
        Replica::open(Arc::new(probe)).unwrap().apply(&log).unwrap();
        let steps = counting.ops();
        assert!(steps > 5, "{steps} steps");
        for n in 1..=steps {
            let plan = FaultPlan::at(n, fault);
            let faulty = Arc::new(base.recover(&plan));
            let r = Replica::open(faulty.clone()).unwrap();
            let res = r.apply(&log);
            assert!(plan.fired() && res.is_err(), "step {n}: {res:?}");
            if matches!(fault, Fault::Error | Fault::NoSpace) {
                // Still open: at the previous point (or about to undo), and
                // a retry succeeds.
                assert!(r.status().applied == n_seq - 1, "step {n}");
                assert_eq!(
                    first_diff(&image(&r, src.g), &before),
                    None,
                    "step {n}: image after a failed apply"
                );
                assert_eq!(r.apply(&log).unwrap(), ApplyOutcome::Applied(n_seq));
                assert_eq!(first_diff(&image(&r, src.g), &after), None);
                continue;
            }
            drop(r);
            let reopened = Replica::open(Arc::new(faulty.recover(&FaultPlan::counting()))).unwrap();
            let st = reopened.status();
            let got = image(&reopened, src.g);
            if st.applied == n_seq {
                assert_eq!(
                    first_diff(&got, &after),
                    None,
                    "step {n}: at N but not N's bytes"
                );
            } else {
                assert_eq!(st.applied, n_seq - 1, "step {n}");
                assert_eq!(
                    first_diff(&got, &before),
                    None,
                    "step {n}: at N-1 but not N-1's bytes"
                );
                // And the log applies on retry.
                reopened.apply(&log).unwrap();
                assert_eq!(first_diff(&image(&reopened, src.g), &after), None);
            }
        }
    }
}

#[test]
fn bad_logs_change_nothing() {
    let mut rng = Rng(31);
    let mut src = Source::new(&mut rng);
    let dir: Arc<dyn Dir> = Arc::new(MemDir::new(&FaultPlan::counting()));
    let r = Replica::create(dir.clone(), &src.full()).unwrap();
    r.apply(&src.change(&mut rng)).unwrap();
    let g = src.g;
    let snapshot = |r: &Replica| (image(r, g), r.points(), r.status(), dir.list().unwrap());
    let before = snapshot(&r);

    // Another disk.
    let mut other = Source {
        g: src.g,
        data: src.data.clone(),
        epoch: 1,
        seq: src.seq,
        digest: src.digest,
    };
    let mut h = other.change(&mut rng).header().clone();
    h.disk_id = DiskId([1; 16]);
    let e = r.apply(&relabel(&other, h)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Mismatch);
    // An older epoch.
    let mut gap = Source {
        g: src.g,
        data: src.data.clone(),
        epoch: 0,
        seq: src.seq,
        digest: src.digest,
    };
    assert_eq!(
        r.apply(&gap.change(&mut rng)).unwrap_err().kind(),
        ErrorKind::Mismatch
    );
    // A gap: log N+2 before N+1.
    let mut ahead = Source {
        g: src.g,
        data: src.data.clone(),
        epoch: 1,
        seq: src.seq + 1,
        digest: src.digest,
    };
    let e = r.apply(&ahead.change(&mut rng)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Mismatch);
    assert!(e.to_string().contains("expects log"), "{e}");
    // Another history (right sequence, wrong base digest).
    let mut fork = Source {
        g: src.g,
        data: src.data.clone(),
        epoch: 1,
        seq: src.seq,
        digest: Digest([7; 32]),
    };
    assert_eq!(
        r.apply(&fork.change(&mut rng)).unwrap_err().kind(),
        ErrorKind::Mismatch
    );
    // A second full log.
    let mut again = Source {
        g: src.g,
        data: src.data.clone(),
        epoch: 1,
        seq: src.seq,
        digest: src.digest,
    };
    assert_eq!(
        r.apply(&again.full()).unwrap_err().kind(),
        ErrorKind::Mismatch
    );
    assert_eq!(snapshot(&r), before);

    // Corrupt and truncated logs never become a MappedLog at all.
    let good = src.change(&mut rng);
    let bytes = good.bytes().to_vec();
    for cut in [bytes.len() - 1, bytes.len() / 2, 10] {
        assert!(
            MappedLog::from_bytes(bytes[..cut].to_vec(), "t", &ReadOptions::default()).is_err()
        );
    }
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 1;
    assert!(MappedLog::from_bytes(flipped, "f", &ReadOptions::default()).is_err());
    assert_eq!(snapshot(&r), before);
    // The good one still applies after all that.
    r.apply(&good).unwrap();
    assert_eq!(first_diff(&image(&r, src.g), &src.data), None);
}

/// The same log content under another header (the CRCs are recomputed by
/// writing it again).
fn relabel(src: &Source, mut h: LogHeader) -> MappedLog {
    h.salt = 1;
    let mut w = LogWriter::new(Vec::new(), h, WriterOptions::default()).unwrap();
    w.add_block(0, &src.data[..4096]).unwrap();
    MappedLog::from_bytes(w.finish().unwrap().0, "relabelled", &ReadOptions::default()).unwrap()
}
