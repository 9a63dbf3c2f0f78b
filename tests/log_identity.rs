//! A log is identified by (disk, epoch, sequence, digest), never by its
//! number alone: the replica refuses a different log under a sequence it
//! applied, the spool refuses an acknowledgement of other content, and a
//! log that may have reached the replica is never folded back and re-cut
//! under the same sequence. Each refusal carries a typed detail.

mod common;

use blockrep::io::{Dir, MemDir, MemStorage, Storage};
use blockrep::log::{LogKind, MappedLog, WriterOptions};
use blockrep::replica::{ApplyOutcome, Replica, RetentionPolicy};
use blockrep::source::{CycleOptions, Pipeline, Primary, Spool, SpooledLog};
use blockrep::{Detail, DiskId, ErrorKind, Geometry, Tracker};
use common::{first_diff, Rng, Source};
use std::sync::Arc;

fn image(r: &Replica, len: u64) -> Vec<u8> {
    let mut b = vec![0u8; len as usize];
    r.read_at(&mut b, 0).unwrap();
    b
}

/// Another history from the same point as `s`: same disk, epoch, sequence
/// and content, so its next log carries the next sequence too.
fn fork(s: &Source) -> Source {
    Source {
        g: s.g,
        data: s.data.clone(),
        epoch: s.epoch,
        seq: s.seq,
        digest: s.digest,
    }
}

fn mem_dir() -> Arc<dyn Dir> {
    Arc::new(MemDir::new())
}

#[test]
fn a_different_log_under_an_applied_sequence_is_refused_not_taken_as_applied() {
    let mut rng = Rng(1201);
    let mut src = Source::new(&mut rng);
    let r = Replica::create(mem_dir(), &src.full()).unwrap();
    let mut other = fork(&src);
    let a = src.change(&mut rng);
    let mut b = other.change(&mut rng);
    while b.trailer().digest == a.trailer().digest {
        b = fork(&src).change(&mut rng);
    }
    assert_eq!(a.header().sequence, b.header().sequence);
    assert!(r.apply(&a).unwrap().applied_now());
    let e = r.apply(&b).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Mismatch, "{e}");
    assert_eq!(
        e.detail(),
        Some(Detail::Conflict {
            sequence: 2,
            held: a.trailer().digest
        })
    );
    assert_eq!(first_diff(&image(&r, src.g.size()), &src.data), None);
    assert_eq!(r.status().digest, a.trailer().digest);
    // The same log again is recognised, by its digest.
    assert_eq!(
        r.apply(&a).unwrap(),
        ApplyOutcome::AlreadyApplied {
            sequence: 2,
            digest: a.trailer().digest
        }
    );

    // The other history's next log builds on content the replica lacks.
    let b3 = other.change(&mut rng);
    let e = r.apply(&b3).unwrap_err();
    assert_eq!(
        e.detail(),
        Some(Detail::DivergedHistory {
            sequence: 2,
            held: a.trailer().digest
        }),
        "{e}"
    );
    // A gap names the sequence expected.
    let skipped = src.change(&mut rng);
    let after_gap = src.change(&mut rng);
    let e = r.apply(&after_gap).unwrap_err();
    assert_eq!(e.detail(), Some(Detail::SequenceGap { expected: 3 }), "{e}");
    r.apply(&skipped).unwrap();
    r.apply(&after_gap).unwrap();
    assert_eq!(first_diff(&image(&r, src.g.size()), &src.data), None);

    // Once point 2 is pruned, a log 2 can no longer be proved applied:
    // neither the old one nor a different one is answered "applied".
    r.prune(
        &RetentionPolicy {
            keep_last: 1,
            keep_app_last: 0,
            ..RetentionPolicy::default()
        },
        0,
    )
    .unwrap();
    assert_eq!(r.points().len(), 1);
    for log in [&a, &b] {
        let e = r.apply(log).unwrap_err();
        assert_eq!(e.detail(), Some(Detail::NotRetained { oldest: 4 }), "{e}");
    }
    // The latest point is always retained: its log is still recognised.
    assert!(!r.apply(&after_gap).unwrap().applied_now());
}

#[test]
fn an_older_epoch_is_refused_with_the_current_one() {
    let mut rng = Rng(1202);
    let mut src = Source::new(&mut rng);
    let r = Replica::create(mem_dir(), &src.full()).unwrap();
    let mut old = fork(&src);
    src.epoch = 2;
    let resync = src.log(LogKind::Resync, &[1, 2]);
    r.apply(&resync).unwrap();
    old.seq = 5; // past the replica, so only the epoch is wrong
    let stale = old.change(&mut rng);
    let e = r.apply(&stale).unwrap_err();
    assert_eq!(e.detail(), Some(Detail::EpochBehind { current: 2 }), "{e}");
}

const ID: DiskId = DiskId([12; 16]);

fn read(spool: &Spool, l: &SpooledLog) -> MappedLog {
    spool.read(l).unwrap()
}

/// A pipeline on a zeroed disk of `g` with its spool in `spool_dir`
/// (limit `limit` bytes), and a replica created from its full log.
fn replicated(
    g: Geometry,
    spool_dir: Arc<dyn Dir>,
    limit: u64,
) -> (Pipeline<Tracker>, Arc<MemStorage>, Replica) {
    let disk = Arc::new(MemStorage::zeroed(g.size()).unwrap());
    let spool = Spool::create(
        spool_dir,
        ID,
        blockrep::source::ChainPoint::start(1, g),
        limit,
    )
    .unwrap();
    let opts = WriterOptions {
        record_bytes: 64 << 10,
        threads: 1,
    };
    let p = Pipeline::new(Primary::new(Tracker::new(g), disk.clone()), spool, opts).unwrap();
    p.initial_sync(opts.into()).unwrap();
    let full = p.spool().next_to_ship().unwrap();
    let r = Replica::create(mem_dir(), &read(p.spool(), &full)).unwrap();
    p.spool()
        .ack(full.point.sequence, &full.point.digest)
        .unwrap();
    (p, disk, r)
}

/// The black-box case of the issue: log 2 applied, its acknowledgement
/// lost, the transport reconnects (rewind), the spool overflows and folds
/// back. Before the fix the fold took log 2 too and cut a new log 2 that
/// the replica answered "already applied": blocks lost with nothing
/// reporting it.
#[test]
fn a_lost_acknowledgement_then_fold_back_never_loses_a_block() {
    let g = Geometry::new(4 << 20, 4096).unwrap();
    let (p, disk, r) = replicated(g, mem_dir(), 1);

    let mut rng = Rng(1204);
    let mut write = |p: &Pipeline<Tracker>, n: usize| {
        for _ in 0..n {
            let b = rng.below(g.block_count());
            let mut d = vec![0u8; 4096];
            rng.fill(&mut d);
            let _g = p.primary().write_guard(b * 4096, 4096).unwrap();
            disk.write_at(&d, b * 4096).unwrap();
        }
    };
    // Log 2 reaches the replica; the acknowledgement is lost.
    write(&p, 20);
    p.cycle(&CycleOptions::default()).unwrap();
    let two = p.spool().next_to_ship().unwrap();
    assert!(r.apply(&read(p.spool(), &two)).unwrap().applied_now());
    // Log 3, then the transport reconnects and the spool overflows.
    write(&p, 20);
    p.cycle(&CycleOptions::default()).unwrap();
    p.spool().rewind();
    write(&p, 20);
    let report = p.cycle(&CycleOptions::default()).unwrap();
    let folded = report.folded.expect("the spool is over its limit");
    assert_eq!(folded.logs, 1, "only log 3 may be folded back");
    let pending: Vec<_> = p.spool().pending();
    assert_eq!(pending[0], two, "log 2 stays as it was");

    // The transport ships again: log 2 is recognised by its digest, the
    // re-cut log 3 applies, and the replica equals the disk.
    while let Some(l) = p.spool().next_to_ship() {
        let out = r.apply(&read(p.spool(), &l)).unwrap();
        assert_eq!(out.digest(), l.point.digest);
        p.spool().ack(out.sequence(), &out.digest()).unwrap();
    }
    assert_eq!(first_diff(&image(&r, g.size()), &disk.to_vec()), None);
    assert_eq!(p.status().pending_logs, 0);
}

#[test]
fn an_acknowledgement_of_other_content_is_refused_and_reconcile_after_restart() {
    let g = Geometry::new(1 << 20, 4096).unwrap();
    let dir: Arc<dyn Dir> = mem_dir();
    let (p, disk, r) = replicated(g, dir.clone(), 1 << 30);
    let full_digest = r.status().digest;
    for i in 0..2u8 {
        let guard = p.primary().write_guard(u64::from(i) * 8192, 4096).unwrap();
        disk.write_at(&[i + 1; 4096], u64::from(i) * 8192).unwrap();
        drop(guard);
        p.cycle(&CycleOptions::default()).unwrap();
    }
    let two = p.spool().next_to_ship().unwrap();
    assert_eq!((two.point.sequence, p.spool().pending().len()), (2, 2));
    r.apply(&read(p.spool(), &two)).unwrap();
    // An acknowledgement naming other content: refused, nothing changes.
    let wrong = full_digest;
    let e = p.spool().ack(2, &wrong).unwrap_err();
    assert_eq!(
        e.detail(),
        Some(Detail::Conflict {
            sequence: 2,
            held: two.point.digest
        }),
        "{e}"
    );
    assert_eq!(p.spool().status().acked.sequence, 1);

    // The primary restarts (its tracker is in memory: the spool alone is
    // reopened here). Every spooled log may have been shipped: none is
    // folded back until the replica's answer is known.
    drop(p);
    let spool = Spool::open(dir, 1).unwrap();
    let none = spool
        .fold_back(&mut |_| panic!("nothing may be folded"))
        .unwrap();
    assert_eq!(none.logs, 0);
    let held = r.status();
    assert!(spool.reconcile(held.applied, &wrong).is_err());
    assert_eq!(spool.status().acked.sequence, 1);
    spool.reconcile(held.applied, &held.digest).unwrap();
    assert_eq!(spool.status().acked.sequence, 2);
    // Log 3 is known not applied now: it may be folded back.
    let mut blocks = 0;
    let f = spool.fold_back(&mut |e| {
        blocks += e.count;
        Ok(())
    });
    assert_eq!(f.unwrap().logs, 1);
    assert_eq!(blocks, 1);
    // A replica claiming a sequence the spool never had has diverged.
    let e = spool.reconcile(9, &held.digest).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Mismatch);
}
