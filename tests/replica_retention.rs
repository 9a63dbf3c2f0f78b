//! Retention points: views at every point, overlays, pruning, rollback,
//! exports, each compared with the source state the point must equal.

mod common;

use blockrep::io::{Dir, Fault, FaultPlan, FsDir, MemDir, MemStorage, Storage};
use blockrep::replica::{Replica, RetentionPolicy};
use blockrep::ErrorKind;
use common::{first_diff, Rng, Source};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Every retained point, read through a view, equals its source state.
fn check_points(r: &Replica, states: &BTreeMap<u64, Vec<u8>>, what: &str) {
    for p in r.points() {
        let want = &states[&p.sequence];
        let v = r.view(p.sequence).unwrap();
        let mut got = vec![0u8; want.len()];
        v.read_at(&mut got, 0).unwrap();
        assert_eq!(first_diff(&got, want), None, "{what}: point {}", p.sequence);
        // An unaligned piece: a block's end, whole blocks, a block's start.
        let mut piece = vec![0u8; 10_000];
        v.read_at(&mut piece, 3000).unwrap();
        assert_eq!(
            &piece[..],
            &want[3000..13_000],
            "{what}: piece of point {}",
            p.sequence
        );
    }
}

#[test]
fn model_views_overlays_prune_and_rollback() {
    let mut rng = Rng(41);
    let mut src = Source::new(&mut rng);
    let dir: Arc<dyn Dir> = Arc::new(MemDir::new());
    let r = Replica::create(dir.clone(), &src.full()).unwrap();
    let mut states = BTreeMap::new();
    states.insert(src.seq, src.data.clone());
    for round in 0..6 {
        // A view with an overlay stays at its point while logs apply.
        let at = r.points()[rng.below(r.points().len() as u64) as usize].sequence;
        let ov = r
            .view(at)
            .unwrap()
            .with_overlay(Arc::new(MemStorage::new()))
            .unwrap();
        let mut model = states[&at].clone();
        for _ in 0..4 {
            let log = src.change(&mut rng);
            r.apply(&log).unwrap();
            states.insert(src.seq, src.data.clone());
            let off = rng.below(model.len() as u64 - 10_000);
            let len = 1 + rng.below(9000) as usize;
            let mut w = vec![0u8; len];
            rng.fill(&mut w);
            ov.write_at(&w, off).unwrap();
            model[off as usize..off as usize + len].copy_from_slice(&w);
            let mut got = vec![0u8; model.len()];
            ov.read_at(&mut got, 0).unwrap();
            assert_eq!(
                first_diff(&got, &model),
                None,
                "round {round}: overlay on point {at}"
            );
        }
        // The pinned point survives a prune that would drop it.
        let policy = RetentionPolicy {
            keep_last: 3,
            keep_for: None,
            keep_app_last: 0,
            keep_app_for: None,
        };
        let plan = r.prune_plan(&policy, 0).unwrap();
        let dropped = r.prune(&policy, 0).unwrap();
        assert_eq!(plan, dropped, "round {round}: the dry run named what went");
        assert!(
            !dropped.contains(&at) && r.points().iter().any(|p| p.sequence == at),
            "round {round}"
        );
        drop(ov);
        check_points(&r, &states, &format!("round {round} after prune"));
        // The replica itself never saw the overlay's writes.
        let mut img = vec![0u8; src.data.len()];
        r.read_at(&mut img, 0).unwrap();
        assert_eq!(first_diff(&img, &src.data), None);
        if round % 2 == 1 {
            let pts = r.points();
            let to = pts[pts.len() / 2].sequence;
            r.rollback(to).unwrap();
            assert_eq!(r.status().applied, to);
            assert!(r.points().iter().all(|p| p.sequence <= to));
            // The source goes back too: the next log builds on `to`.
            src.data = states[&to].clone();
            src.seq = to;
            src.digest = r.status().digest;
            states.retain(|&s, _| s <= to);
            check_points(&r, &states, &format!("round {round} after rollback"));
        }
    }
    // Reopen: every point still reads back.
    drop(r);
    let r = Replica::open(dir).unwrap();
    check_points(&r, &states, "after reopen");
}

#[test]
fn rollback_past_a_pinned_point_is_refused_and_tags_stick() {
    let mut rng = Rng(43);
    let mut src = Source::new(&mut rng);
    let dir: Arc<dyn Dir> = Arc::new(MemDir::new());
    let r = Replica::create(dir.clone(), &src.full()).unwrap();
    for _ in 0..4 {
        r.apply(&src.change(&mut rng)).unwrap();
    }
    let v = r.view(4).unwrap();
    let e = r.rollback(2).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Misuse);
    drop(v);
    r.tag_app_consistent(3, "db quiesced").unwrap();
    assert!(r.view(99).is_err());
    // App-consistent points have their own schedule.
    let mut states = BTreeMap::new();
    for p in r.points() {
        let mut img = vec![0u8; src.data.len()];
        r.view(p.sequence).unwrap().read_at(&mut img, 0).unwrap();
        states.insert(p.sequence, img);
    }
    let policy = RetentionPolicy {
        keep_last: 1,
        keep_for: None,
        keep_app_last: 1,
        keep_app_for: None,
    };
    // 1 and 2 are the oldest; 4 lies between the app point and the newest.
    // The dry run names them and drops nothing; the prune drops them.
    assert_eq!(r.prune_plan(&policy, 0).unwrap(), vec![1, 2, 4]);
    assert_eq!(r.points().len(), 5);
    assert_eq!(r.prune(&policy, 0).unwrap(), vec![1, 2, 4]);
    let p = r.points();
    assert_eq!(p.iter().map(|p| p.sequence).collect::<Vec<_>>(), vec![3, 5]);
    assert_eq!(p[0].label, "db quiesced");
    assert_eq!(p[0].undo_bytes, 0);
    check_points(&r, &states, "after merging point 4 away");
    drop(r);
    let r = Replica::open(dir).unwrap();
    assert_eq!(r.points()[0].label, "db quiesced");
}

/// An operation on a replica the crash test interrupts.
type Op = fn(&Replica) -> blockrep::Result<()>;

/// For every n: lose power at the n-th write or sync of a rollback and of
/// a prune; the replica reopens at a retained point, exactly, and every
/// older point still reads back exactly.
#[test]
fn crash_at_every_step_of_rollback_and_prune() {
    let mut rng = Rng(47);
    let mut src = Source::new(&mut rng);
    let base = Arc::new(MemDir::new());
    let r = Replica::create(base.clone(), &src.full()).unwrap();
    let mut states = BTreeMap::new();
    states.insert(src.seq, src.data.clone());
    for _ in 0..5 {
        r.apply(&src.change(&mut rng)).unwrap();
        states.insert(src.seq, src.data.clone());
    }
    r.tag_app_consistent(3, "app").unwrap();
    drop(r);
    let ops: [(&str, Op); 3] = [
        ("prune with merges", |r| {
            let p = RetentionPolicy {
                keep_last: 1,
                keep_for: None,
                keep_app_last: 1,
                keep_app_for: None,
            };
            assert_eq!(r.prune(&p, 0)?, vec![1, 2, 4, 5]);
            Ok(())
        }),
        ("rollback", |r| r.rollback(2)),
        ("prune", |r| {
            let p = RetentionPolicy {
                keep_last: 2,
                keep_for: None,
                keep_app_last: 0,
                keep_app_for: None,
            };
            r.prune(&p, 0).map(|_| ())
        }),
    ];
    let faults = [
        Fault::PowerLoss { torn: false },
        Fault::PowerLoss { torn: true },
    ];
    for (name, op) in ops {
        let steps = common::at_every_step(&faults, |plan, at| {
            let d = Arc::new(base.recover(plan));
            let res = op(&Replica::open(d.clone()).unwrap());
            let Some((n, fault)) = at else {
                return res.unwrap();
            };
            assert!(res.is_err(), "{name} step {n} {fault:?}");
            let r = Replica::open(Arc::new(d.recover(&FaultPlan::counting()))).unwrap();
            let applied = r.status().applied;
            let mut img = vec![0u8; src.data.len()];
            r.read_at(&mut img, 0).unwrap();
            assert_eq!(
                first_diff(&img, &states[&applied]),
                None,
                "{name} step {n}: image at {applied}"
            );
            check_points(&r, &states, &format!("{name} step {n}"));
        });
        assert!(steps > 3, "{name}: {steps} steps");
    }
}

#[test]
fn exported_point_matches_by_qemu_img_compare() {
    let Ok(out) = std::process::Command::new("qemu-img")
        .arg("--version")
        .output()
    else {
        panic!("qemu-img is required (apt-get install qemu-utils; scripts/test.sh installs it)");
    };
    assert!(out.status.success());
    let mut rng = Rng(53);
    let mut src = Source::new(&mut rng);
    let t = tempfile::tempdir().unwrap();
    let dir: Arc<dyn Dir> = Arc::new(FsDir::new(t.path().join("replica")).unwrap());
    let r = Replica::create(dir, &src.full()).unwrap();
    let mut states = BTreeMap::new();
    for _ in 0..6 {
        r.apply(&src.change(&mut rng)).unwrap();
        states.insert(src.seq, src.data.clone());
    }
    let at = 4;
    let want = t.path().join("want.raw");
    std::fs::write(&want, &states[&at]).unwrap();
    let got = t.path().join("point4.raw");
    r.export(at, &got).unwrap();
    let cmp = std::process::Command::new("qemu-img")
        .args(["compare", "-q", "-f", "raw", "-F", "raw"])
        .arg(&got)
        .arg(&want)
        .status()
        .unwrap();
    assert!(cmp.success(), "qemu-img compare found the export differs");
    // And the latest point is not the exported one: the tool can tell.
    let latest = t.path().join("latest.raw");
    std::fs::write(&latest, &src.data).unwrap();
    let cmp = std::process::Command::new("qemu-img")
        .args(["compare", "-q", "-f", "raw", "-F", "raw"])
        .arg(&got)
        .arg(&latest)
        .status()
        .unwrap();
    assert_eq!(cmp.code(), Some(1));
    // A quick byte check too.
    assert_eq!(std::fs::read(&got).unwrap(), states[&at]);
    let _ = MemStorage::new().len();
}

/// An image that lets the test look through a view right after each
/// write lands, while the apply is still under way.
struct WatchedImage {
    inner: MemStorage,
    after_write: parking_lot::Mutex<Option<Box<dyn Fn() + Send>>>,
}

impl Storage for WatchedImage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> blockrep::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> blockrep::Result<()> {
        self.inner.write_at(buf, offset)?;
        if let Some(f) = &*self.after_write.lock() {
            f();
        }
        Ok(())
    }
    fn sync(&self) -> blockrep::Result<()> {
        self.inner.sync()
    }
    fn len(&self) -> blockrep::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> blockrep::Result<()> {
        self.inner.set_len(len)
    }
}

#[test]
fn a_view_stays_at_its_point_while_a_log_writes_the_image() {
    let mut rng = Rng(59);
    let mut src = Source::new(&mut rng);
    let dir: Arc<dyn Dir> = Arc::new(MemDir::new());
    let image = Arc::new(WatchedImage {
        inner: MemStorage::new(),
        after_write: parking_lot::Mutex::new(None),
    });
    let r = Replica::create_with_image(dir, image.clone(), &src.full()).unwrap();
    for round in 0..20 {
        let want = src.data.clone();
        let view = Arc::new(r.view(src.seq).unwrap());
        let log = src.change(&mut rng);
        let (v, w) = (view.clone(), want.clone());
        *image.after_write.lock() = Some(Box::new(move || {
            let mut got = vec![0u8; w.len()];
            v.read_at(&mut got, 0).unwrap();
            assert_eq!(
                first_diff(&got, &w),
                None,
                "round {round}: the view saw the log being applied"
            );
        }));
        // Also from another thread, as a reader would.
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut got = vec![0u8; want.len()];
                view.read_at(&mut got, 0).unwrap();
                assert_eq!(first_diff(&got, &want), None);
            });
            r.apply(&log).unwrap();
        });
        *image.after_write.lock() = None;
    }
}

#[test]
fn prune_racing_views_never_takes_a_pinned_point() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut rng = Rng(71);
    let mut src = Source::new(&mut rng);
    let dir: Arc<dyn Dir> = Arc::new(MemDir::new());
    let r = Replica::create(dir, &src.full()).unwrap();
    let states = Arc::new(parking_lot::Mutex::new(BTreeMap::new()));
    states.lock().insert(src.seq, src.data.clone());
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut rng = Rng(73);
            let mut opened = 0;
            // Also after the applies end, until enough views were checked.
            while !done.load(Ordering::SeqCst) || opened < 20 {
                let pts = r.points();
                let at = pts[rng.below(pts.len() as u64) as usize].sequence;
                // The point may be pruned before the pin; once pinned, it stays.
                let Ok(v) = r.view(at) else { continue };
                opened += 1;
                let want = states.lock()[&at].clone();
                std::thread::yield_now();
                let mut got = vec![0u8; want.len()];
                v.read_at(&mut got, 0).unwrap();
                assert_eq!(first_diff(&got, &want), None, "view of point {at}");
                assert!(
                    r.points().iter().any(|p| p.sequence == at),
                    "pinned point {at} was pruned"
                );
            }
            assert!(opened > 10, "only {opened} views opened");
        });
        let policy = RetentionPolicy {
            keep_last: 1,
            keep_for: None,
            keep_app_last: 0,
            keep_app_for: None,
        };
        for _ in 0..60 {
            let log = src.change(&mut rng);
            // Known before the point appears, so a reader never misses it.
            states.lock().insert(src.seq, src.data.clone());
            r.apply(&log).unwrap();
            r.prune(&policy, 0).unwrap();
        }
        done.store(true, Ordering::SeqCst);
    });
}
