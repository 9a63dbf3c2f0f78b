//! Consistency groups: one instant over several disks (a write that led to
//! another on a second disk is never left out while the later one is in),
//! group cycles failing or crashing at every spool step, and group applies
//! on the replica all or none after a crash at every step.

mod common;

use blockrep::io::{Dir, Fault, FaultPlan, MemDir, MemStorage, Storage};
use blockrep::log::{MappedLog, ReadOptions, WriterOptions};
use blockrep::replica::{Replica, ReplicaGroup};
use blockrep::source::{
    ChainPoint, ConsistencyGroup, CycleOptions, Pipeline, Primary, Spool, Tracking,
};
use blockrep::tracker::PersistentTracker;
use blockrep::{DiskId, Geometry, Tracker};
use common::{first_diff, Rng, StopOnDrop};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const A: DiskId = DiskId([0xa; 16]);
const B: DiskId = DiskId([0xb; 16]);

fn geo() -> Geometry {
    Geometry::new(1 << 20, 4096).unwrap()
}

fn start() -> ChainPoint {
    blockrep::source::ChainPoint::start(1, geo())
}

/// A pipeline that joined consistency groups.
fn grouped_pipeline<T: Tracking>(
    primary: Primary<T>,
    spool: Spool,
    opts: WriterOptions,
) -> blockrep::Result<Pipeline<T>> {
    let mut p = Pipeline::new(primary, spool, opts)?;
    p.join_group();
    Ok(p)
}

fn opts() -> WriterOptions {
    WriterOptions {
        record_bytes: 64 << 10,
        threads: 1,
    }
}

fn read_log(spool: &Spool, seq: u64) -> MappedLog {
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

/// Ships every pending log of two spools: full logs create the replicas,
/// group cuts go through the group, others apply alone.
struct Secondary {
    dirs: [Arc<dyn Dir>; 2],
    group_dir: Arc<dyn Dir>,
    group: Option<ReplicaGroup>,
}

impl Secondary {
    fn new() -> Self {
        let d = || -> Arc<dyn Dir> { Arc::new(MemDir::new()) };
        Secondary {
            dirs: [d(), d()],
            group_dir: d(),
            group: None,
        }
    }

    fn ship(&mut self, spools: [&Spool; 2]) {
        if self.group.is_none() {
            let r: Vec<Replica> = (0..2)
                .map(|i| {
                    let l = spools[i].next_to_ship().unwrap();
                    let log = read_log(spools[i], l.point.sequence);
                    spools[i].ack(l.point.sequence, &l.point.digest).unwrap();
                    Replica::create(self.dirs[i].clone(), &log).unwrap()
                })
                .collect();
            self.group = Some(ReplicaGroup::open(self.group_dir.clone(), r).unwrap());
        }
        let g = self.group.as_ref().unwrap();
        loop {
            let next: Vec<_> = spools.iter().map(|s| s.next_to_ship()).collect();
            match (&next[0], &next[1]) {
                (None, None) => break,
                (Some(a), Some(b)) if a.group.is_some() => {
                    assert_eq!(a.group, b.group, "group logs ship together");
                    let (la, lb) = (
                        read_log(spools[0], a.point.sequence),
                        read_log(spools[1], b.point.sequence),
                    );
                    let out = g.apply(&[&la, &lb]).unwrap();
                    assert!(out[0].applied_now());
                    spools[0].ack(a.point.sequence, &a.point.digest).unwrap();
                    spools[1].ack(b.point.sequence, &b.point.digest).unwrap();
                }
                other => panic!("unexpected logs to ship: {other:?}"),
            }
        }
    }

    fn image(&self, i: usize) -> Vec<u8> {
        let r = &self.group.as_ref().unwrap().members()[i];
        let mut b = vec![0u8; r.status().geometry.size() as usize];
        r.read_at(&mut b, 0).unwrap();
        b
    }
}

fn mem_spool(id: DiskId, plan: &FaultPlan) -> (Arc<MemDir>, Spool) {
    let dir = Arc::new(MemDir::with_plan(plan));
    let spool = Spool::create(dir.clone(), id, start(), 1 << 30).unwrap();
    (dir, spool)
}

#[test]
fn a_group_point_never_has_a_later_write_without_the_one_it_followed() {
    let g = geo();
    let disks = [
        Arc::new(MemStorage::zeroed(g.size()).unwrap()),
        Arc::new(MemStorage::zeroed(g.size()).unwrap()),
    ];
    let plan = FaultPlan::counting();
    let pa = grouped_pipeline(
        Primary::new(Tracker::new(g), disks[0].clone()),
        mem_spool(A, &plan).1,
        opts(),
    )
    .unwrap();
    let pb = grouped_pipeline(
        Primary::new(Tracker::new(g), disks[1].clone()),
        mem_spool(B, &plan).1,
        opts(),
    )
    .unwrap();
    pa.initial_sync(opts().into()).unwrap();
    pb.initial_sync(opts().into()).unwrap();
    let mut sec = Secondary::new();
    sec.ship([pa.spool(), pb.spool()]);
    let group = ConsistencyGroup::new(vec![&pa, &pb]).unwrap();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        // A database: its data write (disk A) completes before its commit
        // record (disk B) is issued.
        s.spawn(|| {
            let mut k = 0u64;
            while !stop.load(Ordering::SeqCst) {
                k += 1;
                for (p, d) in [(&pa, &disks[0]), (&pb, &disks[1])] {
                    let guard = p.primary().write_guard(0, 8).unwrap();
                    d.write_at(&k.to_le_bytes(), 0).unwrap();
                    drop(guard);
                }
            }
        });
        // Noise on both disks.
        s.spawn(|| {
            let mut rng = Rng(3);
            while !stop.load(Ordering::SeqCst) {
                let i = rng.below(2) as usize;
                let off = 4096 + rng.below(g.size() - 8192);
                let mut d = vec![0u8; 1 + rng.below(4000) as usize];
                rng.fill(&mut d);
                let p = if i == 0 { &pa } else { &pb };
                let guard = p.primary().write_guard(off, d.len() as u64).unwrap();
                disks[i].write_at(&d, off).unwrap();
                drop(guard);
            }
        });
        let _stop = StopOnDrop(&stop);
        for round in 0..100 {
            let reports = group.cycle(&CycleOptions::default()).unwrap();
            assert_eq!(reports.len(), 2);
            sec.ship([pa.spool(), pb.spool()]);
            let (a, b) = (sec.image(0), sec.image(1));
            let ka = u64::from_le_bytes(a[..8].try_into().unwrap());
            let kb = u64::from_le_bytes(b[..8].try_into().unwrap());
            assert!(
                kb <= ka,
                "round {round}: commit {kb} on B is in the point, its data {kb} on A is not (A has {ka})"
            );
        }
    });
    group.cycle(&CycleOptions::app_consistent("quiet")).unwrap();
    sec.ship([pa.spool(), pb.spool()]);
    for (i, disk) in disks.iter().enumerate() {
        assert_eq!(first_diff(&sec.image(i), &disk.to_vec()), None);
        let last = sec.group.as_ref().unwrap().members()[i]
            .points()
            .pop()
            .unwrap();
        assert_eq!(last.label, "quiet");
    }
}

#[test]
fn a_group_cycle_over_the_spool_limit_after_a_shrink_folds_logs_past_the_new_end() {
    let g = geo();
    let mut rng = Rng(27);
    let disks = [(); 2].map(|()| {
        let mut d = vec![0u8; g.size() as usize];
        rng.fill(&mut d);
        Arc::new(MemStorage::from_vec(d))
    });
    let limit = 32 << 10;
    let pipeline = |id: DiskId, disk: &Arc<MemStorage>| {
        let spool = Spool::create(Arc::new(MemDir::new()), id, start(), limit).unwrap();
        grouped_pipeline(Primary::new(Tracker::new(g), disk.clone()), spool, opts()).unwrap()
    };
    let (mut pa, pb) = (pipeline(A, &disks[0]), pipeline(B, &disks[1]));
    pa.initial_sync(opts().into()).unwrap();
    pb.initial_sync(opts().into()).unwrap();
    let mut sec = Secondary::new();
    sec.ship([pa.spool(), pb.spool()]);
    // Random writes of 9000 bytes within `span` bytes of each disk's end.
    let write = |ps: [&Pipeline; 2], rng: &mut Rng, span: u64| {
        for (p, disk) in ps.into_iter().zip(&disks) {
            common::write_near_end(p, &**disk, rng, span, 6);
        }
    };
    // The link is down: group logs of blocks near the end pile up past
    // the spools' limit.
    for _ in 0..3 {
        write([&pa, &pb], &mut rng, 200_000);
        let group = ConsistencyGroup::new(vec![&pa, &pb]).unwrap();
        group.cycle(&CycleOptions::default()).unwrap();
    }
    assert!(pa.spool().over_limit());
    // Disk A shrinks, cutting off most of those blocks and its last one in
    // part.
    let new = g.size() - 150_000;
    assert!(!new.is_multiple_of(4096));
    disks[0].set_len(new).unwrap();
    pa.resize(new).unwrap();
    write([&pa, &pb], &mut rng, 50_000);
    let group = ConsistencyGroup::new(vec![&pa, &pb]).unwrap();
    let reports = group
        .cycle(&CycleOptions::default())
        .expect("a group cycle after the shrink folds the spools back");
    assert!(reports[0].folded.is_some_and(|f| f.logs > 0));
    assert_eq!(reports[0].summary.header.geometry.size(), new);
    write([&pa, &pb], &mut rng, 50_000);
    group.cycle(&CycleOptions::default()).unwrap();
    // The link is back: each replica equals its disk.
    sec.ship([pa.spool(), pb.spool()]);
    for (i, disk) in disks.iter().enumerate() {
        assert_eq!(first_diff(&sec.image(i), &disk.to_vec()), None, "disk {i}");
    }
}

/// Two disks whose group was replicated once, as a base every crash run
/// starts from a copy of.
struct Base {
    disks: [Vec<u8>; 2],
    spools: [Arc<MemDir>; 2],
    replicas: [Arc<MemDir>; 2],
    group_dir: Arc<MemDir>,
}

fn base() -> Base {
    let g = geo();
    let mut rng = Rng(11);
    let disks: [Arc<MemStorage>; 2] = std::array::from_fn(|_| {
        let mut d = vec![0u8; g.size() as usize];
        rng.fill(&mut d);
        Arc::new(MemStorage::from_vec(d))
    });
    let plan = FaultPlan::counting();
    let (sa, spa) = mem_spool(A, &plan);
    let (sb, spb) = mem_spool(B, &plan);
    let pa =
        grouped_pipeline(Primary::new(Tracker::new(g), disks[0].clone()), spa, opts()).unwrap();
    let pb =
        grouped_pipeline(Primary::new(Tracker::new(g), disks[1].clone()), spb, opts()).unwrap();
    pa.initial_sync(opts().into()).unwrap();
    pb.initial_sync(opts().into()).unwrap();
    let d = || Arc::new(MemDir::with_plan(&plan));
    let (ra, rb, gd) = (d(), d(), d());
    let mut sec = Secondary {
        dirs: [ra.clone(), rb.clone()],
        group_dir: gd.clone(),
        group: None,
    };
    sec.ship([pa.spool(), pb.spool()]);
    Base {
        disks: [disks[0].to_vec(), disks[1].to_vec()],
        spools: [sa, sb],
        replicas: [ra, rb],
        group_dir: gd,
    }
}

/// Writes to both disks through their guards.
fn scribble<T: blockrep::source::Tracking>(
    rng: &mut Rng,
    ps: [&Pipeline<T>; 2],
    disks: &[Arc<MemStorage>; 2],
) {
    for _ in 0..6 {
        let i = rng.below(2) as usize;
        let off = rng.below(geo().size() - 30_000);
        let mut d = vec![0u8; 1 + rng.below(30_000) as usize];
        rng.fill(&mut d);
        let _g = ps[i].primary().write_guard(off, d.len() as u64).unwrap();
        disks[i].write_at(&d, off).unwrap();
    }
}

#[test]
fn a_group_cycle_failing_or_crashing_at_every_spool_step_loses_nothing() {
    let base = base();
    let g = geo();
    let t = tempfile::tempdir().unwrap();
    let faults = [Fault::Error, Fault::PowerLoss { torn: true }];
    let steps = common::at_every_step(&faults, |plan, at| {
        let n = at.map_or(0, |(n, _)| n);
        let spool_dirs = [
            Arc::new(base.spools[0].recover(plan)),
            Arc::new(base.spools[1].recover(plan)),
        ];
        let disks = [
            Arc::new(MemStorage::from_vec(base.disks[0].clone())),
            Arc::new(MemStorage::from_vec(base.disks[1].clone())),
        ];
        let paths = [
            t.path().join(format!("a-{n}")),
            t.path().join(format!("b-{n}")),
        ];
        let open = |i: usize, create: bool| {
            let id = [A, B][i];
            let tracker = if create {
                PersistentTracker::create(&paths[i], id, g, 1 << 20).unwrap()
            } else {
                PersistentTracker::open(&paths[i], id, g, None).unwrap().0
            };
            let dir: Arc<dyn Dir> = spool_dirs[i].clone();
            let spool = Spool::open(dir, 1 << 30).unwrap();
            grouped_pipeline(Primary::new(tracker, disks[i].clone()), spool, opts()).unwrap()
        };
        let (pa, pb) = (open(0, true), open(1, true));
        let mut rng = Rng(0x5eed);
        scribble(&mut rng, [&pa, &pb], &disks);
        let group = ConsistencyGroup::new(vec![&pa, &pb]).unwrap();
        let result = group.cycle(&CycleOptions::default());
        let Some((n, fault)) = common::expect_fault(result, at) else {
            return;
        };
        let mut sec = Secondary {
            dirs: [
                Arc::new(base.replicas[0].recover(&FaultPlan::counting())),
                Arc::new(base.replicas[1].recover(&FaultPlan::counting())),
            ],
            group_dir: Arc::new(base.group_dir.recover(&FaultPlan::counting())),
            group: None,
        };
        let rep: Vec<Replica> = (0..2)
            .map(|i| Replica::open(sec.dirs[i].clone()).unwrap())
            .collect();
        sec.group = Some(ReplicaGroup::open(sec.group_dir.clone(), rep).unwrap());
        let finish = |pa: &Pipeline<PersistentTracker>,
                      pb: &Pipeline<PersistentTracker>,
                      sec: &mut Secondary| {
            let group = ConsistencyGroup::new(vec![pa, pb]).unwrap();
            group.cycle(&CycleOptions::default()).unwrap();
            sec.ship([pa.spool(), pb.spool()]);
            for (i, d) in disks.iter().enumerate() {
                assert_eq!(
                    first_diff(&sec.image(i), &d.to_vec()),
                    None,
                    "step {n} {fault:?}: disk {i} differs"
                );
            }
        };
        if matches!(fault, Fault::PowerLoss { .. }) {
            // Restart: spools as durable, trackers unclean.
            drop(group);
            drop((pa, pb));
            let spool_dirs2 = [
                Arc::new(spool_dirs[0].recover(&FaultPlan::counting())),
                Arc::new(spool_dirs[1].recover(&FaultPlan::counting())),
            ];
            let reopen = |i: usize| {
                let id = [A, B][i];
                let (tracker, _) = PersistentTracker::open(&paths[i], id, g, None).unwrap();
                let dir: Arc<dyn Dir> = spool_dirs2[i].clone();
                let spool = Spool::open(dir, 1 << 30).unwrap();
                grouped_pipeline(Primary::new(tracker, disks[i].clone()), spool, opts()).unwrap()
            };
            let (pa, pb) = (reopen(0), reopen(1));
            finish(&pa, &pb, &mut sec);
        } else {
            drop(group);
            finish(&pa, &pb, &mut sec);
        }
    });
    assert!(steps >= 10, "only {steps} steps");
}

#[test]
fn a_group_apply_crashing_at_every_step_applies_all_or_none() {
    let base = base();
    let g = geo();
    // One group cut on top of the base, prepared once.
    let disks = [
        Arc::new(MemStorage::from_vec(base.disks[0].clone())),
        Arc::new(MemStorage::from_vec(base.disks[1].clone())),
    ];
    let spool =
        |i: usize| -> Arc<dyn Dir> { Arc::new(base.spools[i].recover(&FaultPlan::counting())) };
    let pa = grouped_pipeline(
        Primary::new(Tracker::new(g), disks[0].clone()),
        Spool::open(spool(0), 1 << 30).unwrap(),
        opts(),
    )
    .unwrap();
    let pb = grouped_pipeline(
        Primary::new(Tracker::new(g), disks[1].clone()),
        Spool::open(spool(1), 1 << 30).unwrap(),
        opts(),
    )
    .unwrap();
    scribble(&mut Rng(5), [&pa, &pb], &disks);
    let reports = ConsistencyGroup::new(vec![&pa, &pb])
        .unwrap()
        .cycle(&CycleOptions::default())
        .unwrap();
    let logs = [
        read_log(pa.spool(), reports[0].summary.header.sequence),
        read_log(pb.spool(), reports[1].summary.header.sequence),
    ];
    let new = [disks[0].to_vec(), disks[1].to_vec()];
    let faults = [
        Fault::PowerLoss { torn: false },
        Fault::PowerLoss { torn: true },
    ];
    let steps = common::at_every_step(&faults, |plan, at| {
        let dirs = [
            Arc::new(base.replicas[0].recover(plan)),
            Arc::new(base.replicas[1].recover(plan)),
            Arc::new(base.group_dir.recover(plan)),
        ];
        let run = || -> blockrep::Result<()> {
            let r: Vec<Replica> = (0..2)
                .map(|i| Replica::open(dirs[i].clone()))
                .collect::<blockrep::Result<_>>()?;
            let group = ReplicaGroup::open(dirs[2].clone(), r)?;
            group.apply(&[&logs[0], &logs[1]])?;
            Ok(())
        };
        let result = run();
        let Some((n, _)) = common::expect_fault(result, at) else {
            return;
        };
        let after: Vec<Arc<MemDir>> = dirs
            .iter()
            .map(|d| Arc::new(d.recover(&FaultPlan::counting())))
            .collect();
        let r: Vec<Replica> = (0..2)
            .map(|i| Replica::open(after[i].clone()).unwrap())
            .collect();
        let group = ReplicaGroup::open(after[2].clone(), r).unwrap();
        let images: Vec<Vec<u8>> = (0..2)
            .map(|i| {
                let mut b = vec![0u8; g.size() as usize];
                group.members()[i].read_at(&mut b, 0).unwrap();
                b
            })
            .collect();
        let at_new = images[0] == new[0];
        assert_eq!(
            images[1] == new[1],
            at_new,
            "step {n}: one member moved alone"
        );
        if !at_new {
            assert_eq!(images[0], base.disks[0], "step {n}");
            assert_eq!(images[1], base.disks[1], "step {n}");
        }
        // Applying again finishes the cut either way.
        group.apply(&[&logs[0], &logs[1]]).unwrap();
        for (i, want) in new.iter().enumerate() {
            let mut b = vec![0u8; g.size() as usize];
            group.members()[i].read_at(&mut b, 0).unwrap();
            assert_eq!(first_diff(&b, want), None, "step {n}: member {i}");
        }
    });
    assert!(steps > 10, "only {steps} steps");
}
