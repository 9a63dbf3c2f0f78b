//! The replica applier: exact contents after every log, crash safety at
//! every I/O step, and bad logs that change nothing.

mod common;

use blockrep::io::{Dir, Fault, FaultPlan, FsDir, MemDir};
use blockrep::log::{
    Digest, LogHeader, LogWriter, MappedLog, ReadOptions, TailPolicy, WriterOptions,
};
use blockrep::replica::{ApplyOutcome, Replica};
use blockrep::{DiskId, ErrorKind, Geometry};
use common::{first_diff, Rng, Source};
use std::sync::Arc;

fn image(r: &Replica, g: Geometry) -> Vec<u8> {
    let mut buf = vec![0u8; g.size() as usize];
    r.read_at(&mut buf, 0).unwrap();
    buf
}

/// The outcome of applying `log` for the first time: its identity.
fn applied(log: &MappedLog) -> ApplyOutcome {
    ApplyOutcome::Applied {
        sequence: log.header().sequence,
        digest: log.trailer().digest,
    }
}

#[test]
fn replica_equals_the_source_after_every_log() {
    let mut rng = Rng(17);
    let mut src = Source::new(&mut rng);
    let dir: Arc<dyn Dir> = Arc::new(MemDir::new());
    let r = Replica::create(dir.clone(), &src.full()).unwrap();
    assert_eq!(first_diff(&image(&r, src.g), &src.data), None);
    for i in 0..20 {
        let log = src.change(&mut rng);
        assert_eq!(r.apply(&log).unwrap(), applied(&log));
        assert_eq!(
            first_diff(&image(&r, src.g), &src.data),
            None,
            "after log {i}"
        );
        // Applying it again is recognised and changes nothing.
        assert_eq!(
            r.apply(&log).unwrap(),
            ApplyOutcome::AlreadyApplied {
                sequence: log.header().sequence,
                digest: log.trailer().digest
            }
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
        let base = Arc::new(MemDir::new());
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
        let steps = common::at_every_step(&[fault], |plan, at| {
            let faulty = Arc::new(base.recover(plan));
            let r = Replica::open(faulty.clone()).unwrap();
            let res = r.apply(&log);
            let Some((n, _)) = at else {
                res.unwrap();
                return;
            };
            assert!(res.is_err(), "step {n}: {res:?}");
            if matches!(fault, Fault::Error | Fault::NoSpace) {
                // Still open: at the previous point (or about to undo), and
                // a retry succeeds.
                assert!(r.status().applied == n_seq - 1, "step {n}");
                assert_eq!(
                    first_diff(&image(&r, src.g), &before),
                    None,
                    "step {n}: image after a failed apply"
                );
                assert_eq!(r.apply(&log).unwrap(), applied(&log));
                assert_eq!(first_diff(&image(&r, src.g), &after), None);
                return;
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
        });
        assert!(steps > 5, "{steps} steps");
    }
}

#[test]
fn bad_logs_change_nothing() {
    let mut rng = Rng(31);
    let mut src = Source::new(&mut rng);
    let dir: Arc<dyn Dir> = Arc::new(MemDir::new());
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

#[test]
fn logs_from_a_stream_are_spooled_and_verified_first() {
    let mut rng = Rng(61);
    let mut src = Source::new(&mut rng);
    let dir: Arc<dyn Dir> = Arc::new(MemDir::new());
    let r = Replica::create(dir.clone(), &src.full()).unwrap();
    let before = (image(&r, src.g), r.points());
    let log = src.change(&mut rng);
    let bytes = log.bytes().to_vec();
    // Chunks pushed by a transport, abandoned half way: nothing left.
    {
        let mut incoming = r.receive().unwrap();
        incoming.write(&bytes[..100]).unwrap();
        assert!(dir.list().unwrap().iter().any(|n| n.contains("incoming")));
    }
    assert!(!dir.list().unwrap().iter().any(|n| n.contains("incoming")));
    // A transfer cut short: refused, nothing changed, no spool left behind.
    let e = r
        .apply_stream(&bytes[..bytes.len() - 7], &ReadOptions::default())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt);
    assert_eq!((image(&r, src.g), r.points()), before);
    assert!(!dir.list().unwrap().iter().any(|n| n.contains("incoming")));
    // The whole stream applies.
    let opts = ReadOptions {
        disk: Some(common::ID),
        epoch: Some(1),
        tail: TailPolicy::Refuse,
    };
    assert_eq!(r.apply_stream(&bytes[..], &opts).unwrap(), applied(&log));
    assert_eq!(first_diff(&image(&r, src.g), &src.data), None);
}

#[test]
fn a_resync_log_starts_a_new_epoch() {
    let mut rng = Rng(67);
    let mut src = Source::new(&mut rng);
    let dir: Arc<dyn Dir> = Arc::new(MemDir::new());
    let r = Replica::create(dir, &src.full()).unwrap();
    r.apply(&src.change(&mut rng)).unwrap();
    // Tracking was lost on the primary: it sends the differing blocks as a
    // resync log of epoch 2.
    src.epoch = 2;
    let blocks: Vec<u64> = (0..src.g.block_count()).step_by(7).collect();
    for &b in &blocks {
        src.data[(b * 4096) as usize] ^= 0xff;
    }
    let resync = src.log(blockrep::log::LogKind::Resync, &blocks);
    assert_eq!(r.apply(&resync).unwrap(), applied(&resync));
    assert_eq!(resync.header().sequence, 3);
    assert_eq!(r.status().epoch, 2);
    assert_eq!(first_diff(&image(&r, src.g), &src.data), None);
    // Logs of the old epoch no longer apply.
    let mut old = Source {
        g: src.g,
        data: src.data.clone(),
        epoch: 1,
        seq: 3,
        digest: r.status().digest,
    };
    assert_eq!(
        r.apply(&old.change(&mut rng)).unwrap_err().kind(),
        ErrorKind::Mismatch
    );
    // The new epoch's deltas do.
    r.apply(&src.change(&mut rng)).unwrap();
    assert_eq!(first_diff(&image(&r, src.g), &src.data), None);
}

/// Creating a replica where one exists is refused before anything is
/// touched: the image, every point and every undo log read back as before
/// (a script run twice must not destroy the replica it created).
#[test]
fn create_where_a_replica_exists_leaves_it_untouched() {
    let mut rng = Rng(1205);
    let mut src = Source::new(&mut rng);
    let tmp = tempfile::tempdir().unwrap();
    let dir: Arc<dyn Dir> = Arc::new(FsDir::new(tmp.path()).unwrap());
    let full = src.full();
    let r = Replica::create(dir.clone(), &full).unwrap();
    for _ in 0..3 {
        r.apply(&src.change(&mut rng)).unwrap();
    }
    let points = r.points();
    let files: Vec<(String, Vec<u8>)> = dir
        .list()
        .unwrap()
        .into_iter()
        .map(|n| (n.clone(), dir.read_all(&n).unwrap()))
        .collect();
    drop(r);
    let e = Replica::create(dir.clone(), &full).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Misuse, "{e}");
    let again: Vec<(String, Vec<u8>)> = dir
        .list()
        .unwrap()
        .into_iter()
        .map(|n| (n.clone(), dir.read_all(&n).unwrap()))
        .collect();
    assert_eq!(files, again, "the directory changed");
    let r = Replica::open(dir).unwrap();
    assert_eq!(r.points(), points);
    assert_eq!(first_diff(&image(&r, src.g), &src.data), None);
}

/// A bad stream: what it is, its bytes, the point expected, the error.
type BadStream<'a> = (&'a str, Vec<u8>, Option<(u64, Digest)>, ErrorKind);

/// A reader that hands out at most `step` bytes a call, as a network does.
struct Trickle<'a> {
    b: &'a [u8],
    step: usize,
}

impl std::io::Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.step).min(self.b.len());
        buf[..n].copy_from_slice(&self.b[..n]);
        self.b = &self.b[n..];
        Ok(n)
    }
}

#[test]
fn a_replica_streamed_from_a_full_log_is_exact_and_a_bad_stream_leaves_nothing() {
    let mut rng = Rng(23);
    let mut src = Source::new(&mut rng);
    let full = src.full();
    let bytes = full.bytes().to_vec();
    let point = (full.header().sequence, full.trailer().digest);
    let opts = ReadOptions::default();
    let empty = |dir: &MemDir| dir.list().unwrap().iter().all(|n| n == "lock");

    // Whole, in odd pieces: the image is the source's, and reopens so.
    let dir: Arc<dyn Dir> = Arc::new(MemDir::new());
    let stream = Trickle {
        b: &bytes,
        step: 7919,
    };
    let r = Replica::create_streamed(dir.clone(), stream, &opts, Some(point), None).unwrap();
    assert_eq!(first_diff(&image(&r, src.g), &src.data), None);
    assert_eq!((r.status().applied, r.status().digest), point);
    drop(r);
    let r = Replica::open(dir).unwrap();
    assert_eq!(first_diff(&image(&r, src.g), &src.data), None);

    // Each bad stream is refused and leaves no replica and no image.
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x10;
    let other = (point.0 + 1, point.1);
    let cases: Vec<BadStream> = vec![
        (
            "truncated",
            bytes[..bytes.len() - 9].to_vec(),
            None,
            ErrorKind::Corrupt,
        ),
        (
            "cut in a record",
            bytes[..bytes.len() / 3].to_vec(),
            None,
            ErrorKind::Corrupt,
        ),
        ("a flipped bit", flipped, None, ErrorKind::Corrupt),
        (
            "bytes after its end",
            [bytes.clone(), vec![0]].concat(),
            None,
            ErrorKind::Corrupt,
        ),
        (
            "another point",
            bytes.clone(),
            Some(other),
            ErrorKind::Mismatch,
        ),
    ];
    for (what, b, expect, kind) in cases {
        let dir = Arc::new(MemDir::new());
        let stream = Trickle { b: &b, step: 65536 };
        let e = Replica::create_streamed(dir.clone(), stream, &opts, expect, None).unwrap_err();
        assert_eq!(e.kind(), kind, "{what}: {e}");
        assert!(empty(&dir), "{what} left {:?}", dir.list().unwrap());
        assert!(Replica::open(dir).is_err(), "{what} made a replica");
    }
    // Another disk's log, when the disk is named.
    let dir = Arc::new(MemDir::new());
    let other_disk = ReadOptions {
        disk: Some(DiskId([0xee; 16])),
        ..ReadOptions::default()
    };
    let e = Replica::create_streamed(dir.clone(), &bytes[..], &other_disk, None, None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Mismatch, "{e}");
    assert!(empty(&dir));
}
