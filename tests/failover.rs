//! Failover: a planned failover and failback round trip, an unplanned
//! failover to an older point while the old primary had writes that never
//! shipped, and a test failover while logs keep applying. Disks are
//! compared byte for byte after every step, and the blocks reverse
//! replication sends are counted against the true divergence.

mod common;

use blockrep::failover::{test_failover, Failover};
use blockrep::io::{Dir, Fault, FaultPlan, MemDir, MemStorage, Storage};
use blockrep::log::{LogKind, ReadOptions, WriterOptions};
use blockrep::replica::{AdoptAt, Replica};
use blockrep::source::{ChainPoint, CycleOptions, Pipeline, Primary, Spool, TransferOptions};
use blockrep::tracker::BlockSet;
use blockrep::{DiskId, Geometry, Tracker};
use common::{first_diff, Rng};

/// Power lost with and without a torn write, and an I/O error.
const FAULTS: [Fault; 3] = [
    Fault::PowerLoss { torn: false },
    Fault::PowerLoss { torn: true },
    Fault::Error,
];
/// Power lost with and without a torn write.
const POWER_LOSS: [Fault; 2] = [
    Fault::PowerLoss { torn: false },
    Fault::PowerLoss { torn: true },
];
use std::sync::Arc;

const ID: DiskId = DiskId([0x66; 16]);

fn geo() -> Geometry {
    Geometry::new(4 << 20, 4096).unwrap()
}

fn mem_dir() -> Arc<dyn Dir> {
    Arc::new(MemDir::new())
}

fn read_all(s: &dyn Storage) -> Vec<u8> {
    let mut b = vec![0u8; geo().size() as usize];
    s.read_at(&mut b, 0).unwrap();
    b
}

/// A pipeline over `disk` whose chain starts at `at` (sequence 0 for a
/// new disk, the failover point for a new primary).
fn pipeline(disk: Arc<dyn Storage>, at: ChainPoint) -> Pipeline {
    let spool = Spool::create(mem_dir(), ID, at, 1 << 30).unwrap();
    Pipeline::new(
        Primary::new(Tracker::new(geo()), disk),
        spool,
        WriterOptions::default(),
    )
    .unwrap()
}

fn start() -> ChainPoint {
    blockrep::source::ChainPoint::start(1, geo())
}

/// The chain point a replica (or promoted replica) holds.
fn point_of(r: &Replica) -> ChainPoint {
    let s = r.status();
    ChainPoint {
        epoch: s.epoch,
        sequence: s.applied,
        digest: s.digest,
        created_ns: 0,
        geometry: s.geometry,
    }
}

fn adopt_at(r: &Replica) -> AdoptAt {
    let s = r.status();
    AdoptAt {
        disk_id: s.disk_id,
        epoch: s.epoch,
        sequence: s.applied,
        digest: s.digest,
        geometry: s.geometry,
    }
}

/// The transport: every unshipped log to `replica` (created from a full
/// log when `None`), acknowledged. Returns the blocks of the logs shipped.
fn ship(p: &Pipeline, rdir: &Arc<dyn Dir>, replica: &mut Option<Replica>) -> u64 {
    let mut blocks = 0;
    while let Some(l) = p.spool().next_to_ship() {
        let f = p.spool().open_log(l.point.sequence).unwrap();
        let mut b = vec![0u8; l.bytes as usize];
        f.read_at(&mut b, 0).unwrap();
        let log =
            blockrep::log::MappedLog::from_bytes(b, &l.name, &ReadOptions::default()).unwrap();
        blocks += log.trailer().blocks;
        match replica {
            None => *replica = Some(Replica::create(rdir.clone(), &log).unwrap()),
            Some(r) => {
                r.apply(&log).unwrap();
            }
        }
        p.spool().ack(l.point.sequence, &l.point.digest).unwrap();
    }
    blocks
}

/// Guest writes through `p`'s guards; returns the blocks written.
fn scribble(p: &Pipeline, disk: &dyn Storage, rng: &mut Rng, n: usize) -> BlockSet {
    let g = geo();
    let mut blocks = Vec::new();
    for _ in 0..n {
        let off = rng.below(g.size() - 20_000);
        let mut d = vec![0u8; 1 + rng.below(20_000) as usize];
        rng.fill(&mut d);
        let _g = p.primary().write_guard(off, d.len() as u64).unwrap();
        disk.write_at(&d, off).unwrap();
        let e = g.blocks_for_range(off, d.len() as u64).unwrap();
        blocks.extend(e.start..e.end());
    }
    BlockSet::from_blocks(g.block_count(), blocks).unwrap()
}

/// A primary disk, its pipeline, the replica's directory and the replica.
type Replicated = (Arc<dyn Storage>, Pipeline, Arc<dyn Dir>, Option<Replica>);

/// A primary disk of random content, replicated once to a new replica.
fn replicated(rng: &mut Rng) -> Replicated {
    let mut init = vec![0u8; geo().size() as usize];
    rng.fill(&mut init);
    let disk: Arc<dyn Storage> = Arc::new(MemStorage::from_vec(init));
    let p = pipeline(disk.clone(), start());
    p.initial_sync(TransferOptions::default()).unwrap();
    let dir = mem_dir();
    let mut rep = None;
    ship(&p, &dir, &mut rep);
    (disk, p, dir, rep)
}

#[test]
fn planned_failover_reverse_replication_and_failback_round_trip() {
    let mut rng = Rng(31);
    let (disk_a, pa, dir_b, mut rep_b) = replicated(&mut rng);
    for _ in 0..3 {
        scribble(&pa, &*disk_a, &mut rng, 10);
        pa.cycle(&CycleOptions::default()).unwrap();
        ship(&pa, &dir_b, &mut rep_b);
    }
    // Planned failover: writes stopped, a last cycle ships everything.
    scribble(&pa, &*disk_a, &mut rng, 5);
    pa.cycle(&CycleOptions::default()).unwrap();
    ship(&pa, &dir_b, &mut rep_b);
    let rep_b = rep_b.unwrap();
    let fo_b = Failover::promote(rep_b.clone(), None).unwrap();
    let disk_b = fo_b.disk();
    assert_eq!(first_diff(&read_all(&*disk_b), &read_all(&*disk_a)), None);
    let pb = pipeline(disk_b.clone(), point_of(&rep_b));
    let c = fo_b.commit().unwrap();
    assert!(c.divergence().is_empty());
    assert_eq!(rep_b.points().len(), 1);
    // A log for the promoted replica no longer applies.
    assert!(ship_one_more_is_refused(&pa, &*disk_a, &rep_b, &mut rng));

    // The new primary runs; then reverse replication to the old one.
    let written_b = scribble(&pb, &*disk_b, &mut rng, 12);
    let diverged_a = pa.divergence().unwrap();
    let report = pb.reverse_sync(&diverged_a.union(&c.divergence())).unwrap();
    assert_eq!(report.summary.header.kind, LogKind::Resync);
    // The true divergence at block granularity: what either side wrote
    // since the failover point (the old side's unshipped test write too).
    let truth = written_b.union(&diverged_a);
    assert_eq!(report.blocks, truth.count());
    let dir_a = mem_dir();
    let rep_a = Replica::adopt(dir_a.clone(), disk_a.clone(), adopt_at(&rep_b)).unwrap();
    drop(pa);
    ship(&pb, &dir_a, &mut Some(rep_a.clone()));
    assert_eq!(first_diff(&read_all(&*disk_a), &read_all(&*disk_b)), None);
    assert_eq!(rep_a.status().epoch, 2);

    // More writes on B, replicated to A in the new epoch.
    scribble(&pb, &*disk_b, &mut rng, 8);
    pb.cycle(&CycleOptions::default()).unwrap();
    ship(&pb, &dir_a, &mut Some(rep_a.clone()));
    assert_eq!(first_diff(&read_all(&*disk_a), &read_all(&*disk_b)), None);

    // Failback: planned failover back to A, reverse replication to B.
    pb.cycle(&CycleOptions::default()).unwrap();
    ship(&pb, &dir_a, &mut Some(rep_a.clone()));
    let fo_a = Failover::promote(rep_a.clone(), None).unwrap();
    let disk_a2 = fo_a.disk();
    let pa2 = pipeline(disk_a2.clone(), point_of(&rep_a));
    let ca = fo_a.commit().unwrap();
    let diverged_b = pb.divergence().unwrap();
    assert!(diverged_b.is_empty(), "everything shipped before failback");
    let report = pa2
        .reverse_sync(&diverged_b.union(&ca.divergence()))
        .unwrap();
    assert_eq!(report.blocks, 0);
    let dir_b2 = mem_dir();
    let rep_b2 = Replica::adopt(dir_b2.clone(), disk_b.clone(), adopt_at(&rep_a)).unwrap();
    drop(pb);
    ship(&pa2, &dir_b2, &mut Some(rep_b2.clone()));
    // The original direction again.
    scribble(&pa2, &*disk_a2, &mut rng, 10);
    pa2.cycle(&CycleOptions::default()).unwrap();
    ship(&pa2, &dir_b2, &mut Some(rep_b2.clone()));
    assert_eq!(first_diff(&read_all(&*disk_b), &read_all(&*disk_a2)), None);
    assert_eq!(rep_b2.status().epoch, 3);
}

/// A cycle of the old primary after the failover: its log is refused by
/// the promoted replica.
fn ship_one_more_is_refused(
    pa: &Pipeline,
    disk_a: &dyn Storage,
    rep_b: &Replica,
    rng: &mut Rng,
) -> bool {
    scribble(pa, disk_a, rng, 1);
    pa.cycle(&CycleOptions::default()).unwrap();
    let l = pa.spool().next_to_ship().unwrap();
    let log = pa.spool().read(&l).unwrap();
    pa.spool().rewind();
    rep_b.apply(&log).is_err()
}

#[test]
fn unplanned_failover_to_an_older_point_converges_exactly() {
    let mut rng = Rng(37);
    let (disk_a, pa, dir_b, mut rep_b) = replicated(&mut rng);
    let mut at = vec![(1u64, read_all(&*disk_a))];
    for _ in 0..3 {
        scribble(&pa, &*disk_a, &mut rng, 10);
        let r = pa.cycle(&CycleOptions::default()).unwrap();
        ship(&pa, &dir_b, &mut rep_b);
        at.push((r.summary.header.sequence, read_all(&*disk_a)));
    }
    // Writes that never ship: one log spooled, more in the tracker.
    scribble(&pa, &*disk_a, &mut rng, 6);
    pa.cycle(&CycleOptions::default()).unwrap();
    scribble(&pa, &*disk_a, &mut rng, 4);
    // Disaster. Promote B at an older point, look at another, settle.
    let rep_b = rep_b.unwrap();
    let (older, oldest) = (at[2].0, at[1].0);
    let fo = Failover::promote(rep_b.clone(), Some(older)).unwrap();
    assert_eq!(first_diff(&read_all(&*fo.disk()), &at[2].1), None);
    fo.disk().write_at(&[9u8; 5000], 0).unwrap(); // discarded by the switch
    fo.switch(oldest).unwrap();
    assert_eq!(first_diff(&read_all(&*fo.disk()), &at[1].1), None);
    fo.switch(older).unwrap();
    assert_eq!(first_diff(&read_all(&*fo.disk()), &at[2].1), None);
    let disk_b = fo.disk();
    let pb = pipeline(disk_b.clone(), fo.chain_point().unwrap());
    let written_b = scribble(&pb, &*disk_b, &mut rng, 8);
    let c = fo.commit().unwrap();
    assert_eq!(c.written, written_b);
    assert!(!c.rolled_back.is_empty(), "point 4 was rolled back");
    // Reverse replication sends the union of both sides' changes.
    let diverged_a = pa.divergence().unwrap();
    let send = diverged_a.union(&c.divergence());
    let report = pb.reverse_sync(&send).unwrap();
    assert_eq!(report.blocks, send.count());
    let dir_a = mem_dir();
    let rep_a = Replica::adopt(dir_a.clone(), disk_a.clone(), fo.adopt_at().unwrap()).unwrap();
    drop(pa);
    ship(&pb, &dir_a, &mut Some(rep_a));
    assert_eq!(first_diff(&read_all(&*disk_a), &read_all(&*disk_b)), None);
}

#[test]
fn a_test_failover_stays_at_its_point_while_ten_logs_apply() {
    let mut rng = Rng(41);
    let g = geo();
    let (disk, pa, dir_b, rep) = replicated(&mut rng);
    let rep = rep.unwrap();
    let at = read_all(&*disk);
    let test = test_failover(&rep, None, Arc::new(MemStorage::new())).unwrap();
    test.write_at(&[7u8; 10_000], 123_456).unwrap();
    let mut expect = at.clone();
    expect[123_456..133_456].fill(7);
    for _ in 0..10 {
        scribble(&pa, &*disk, &mut rng, 5);
        pa.cycle(&CycleOptions::default()).unwrap();
        ship(&pa, &dir_b, &mut Some(rep.clone()));
        let mut b = vec![0u8; g.size() as usize];
        test.read_at(&mut b, 0).unwrap();
        assert_eq!(first_diff(&b, &expect), None);
    }
    drop(test);
    let mut b = vec![0u8; g.size() as usize];
    rep.read_at(&mut b, 0).unwrap();
    assert_eq!(first_diff(&b, &read_all(&*disk)), None);
    assert_eq!(rep.points().len(), 11);
}

/// A replica with a few points, as a base every crash run copies.
fn replicated_base() -> (Arc<MemDir>, Vec<(u64, Vec<u8>)>) {
    let mut rng = Rng(43);
    let g = geo();
    let mut init = vec![0u8; g.size() as usize];
    rng.fill(&mut init);
    let disk: Arc<dyn Storage> = Arc::new(MemStorage::from_vec(init));
    let pa = pipeline(disk.clone(), start());
    pa.initial_sync(TransferOptions::default()).unwrap();
    let base = Arc::new(MemDir::new());
    let dir: Arc<dyn Dir> = base.clone();
    let mut rep = None;
    ship(&pa, &dir, &mut rep);
    let mut at = vec![(1u64, read_all(&*disk))];
    for _ in 0..3 {
        scribble(&pa, &*disk, &mut rng, 8);
        let r = pa.cycle(&CycleOptions::default()).unwrap();
        ship(&pa, &dir, &mut rep);
        at.push((r.summary.header.sequence, read_all(&*disk)));
    }
    (base, at)
}

#[test]
fn a_crash_at_every_step_of_promotion_and_commit_can_be_retried() {
    let (base, at) = replicated_base();
    let (point, ref want_at_point) = at[1];
    // The promoted disk's writes, replayed on every attempt.
    let writes: Vec<(u64, Vec<u8>)> = (0..5u8)
        .map(|i| (u64::from(i) * 300_000 + 77, vec![i + 1; 9000]))
        .collect();
    let mut want = want_at_point.clone();
    for (off, d) in &writes {
        want[*off as usize..*off as usize + d.len()].copy_from_slice(d);
    }
    let attempt = |dir: Arc<dyn Dir>| -> blockrep::Result<()> {
        let r = Replica::open(dir)?;
        let fo = Failover::promote(r, Some(point))?;
        if fo.is_committed() {
            return Ok(());
        }
        for (off, d) in &writes {
            fo.disk().write_at(d, *off)?;
        }
        fo.commit()?;
        Ok(())
    };
    // Power lost (torn or not), or an I/O error (the process goes on, then
    // restarts), at every step.
    let steps = common::at_every_step(&FAULTS, |plan, at| {
        let dir = Arc::new(base.recover(plan));
        let result = attempt(dir.clone());
        let Some((n, fault)) = at else {
            return result.unwrap();
        };
        assert!(
            result.is_err(),
            "step {n} {fault:?}: the fault went unnoticed"
        );
        // Back up: open (finishing a commit under way), retry the
        // failover; the disk ends at the point plus the writes, exactly.
        let dir: Arc<dyn Dir> = Arc::new(dir.recover(&FaultPlan::counting()));
        attempt(dir.clone()).unwrap();
        let r = Replica::open(dir).unwrap();
        let fo = Failover::promote(r.clone(), None).unwrap();
        assert!(fo.is_committed(), "step {n} {fault:?}");
        assert_eq!(
            first_diff(&read_all(&*fo.disk()), &want),
            None,
            "step {n} {fault:?}"
        );
        assert_eq!(r.points().len(), 1, "step {n} {fault:?}");
    });
    assert!(steps > 10, "only {steps} steps");
}

#[test]
fn a_crash_at_every_step_of_reverse_replication_can_be_retried() {
    let (base, at) = replicated_base();
    // The new primary at the latest point, with writes, and its reverse log.
    let dir_b: Arc<dyn Dir> = Arc::new(base.recover(&FaultPlan::counting()));
    let rep_b = Replica::open(dir_b).unwrap();
    let fo = Failover::promote(rep_b.clone(), None).unwrap();
    let disk_b = fo.disk();
    let pb = pipeline(disk_b.clone(), point_of(&rep_b));
    fo.commit().unwrap();
    let mut rng = Rng(47);
    scribble(&pb, &*disk_b, &mut rng, 10);
    // The old primary changed blocks after the point too (never shipped).
    let mut old = at.last().unwrap().1.clone();
    let mut old_changed = Vec::new();
    for b in [3u64, 500, 900] {
        old[b as usize * 4096..][..4096].fill(0xee);
        old_changed.push(b);
    }
    let diverged_a = BlockSet::from_blocks(geo().block_count(), old_changed).unwrap();
    pb.reverse_sync(&diverged_a).unwrap();
    let l = pb.spool().next_to_ship().unwrap();
    let log = pb.spool().read(&l).unwrap();
    let want = read_all(&*disk_b);
    let adopt = adopt_at(&rep_b);
    let steps = common::at_every_step(&POWER_LOSS, |plan, at| {
        let dir_a = Arc::new(MemDir::with_plan(plan));
        let disk_a = Arc::new(blockrep::io::FaultStorage::new(
            MemStorage::from_vec(old.clone()),
            plan,
        ));
        let result =
            Replica::adopt(dir_a.clone(), disk_a.clone(), adopt).and_then(|r| r.apply(&log));
        let Some((n, fault)) = common::expect_fault(result, at) else {
            return;
        };
        // Restart A: open its replica (or adopt again if the crash came
        // first), apply the log again; A ends equal to B.
        let dir_a: Arc<dyn Dir> = Arc::new(dir_a.recover(&FaultPlan::counting()));
        let disk_a: Arc<dyn Storage> = Arc::new(MemStorage::from_vec(disk_a.inner().to_vec()));
        let r = if dir_a.exists("state") {
            Replica::open_with_image(dir_a, disk_a.clone()).unwrap()
        } else {
            Replica::adopt(dir_a, disk_a.clone(), adopt).unwrap()
        };
        r.apply(&log).unwrap();
        assert_eq!(
            first_diff(&read_all(&*disk_a), &want),
            None,
            "step {n} {fault:?}"
        );
    });
    assert!(steps > 5, "only {steps} steps");
}

/// Hooks that record their calls and fail where told.
struct Hooks {
    calls: Vec<String>,
    fail_before: Option<usize>,
}

impl blockrep::failover::PlanHooks for Hooks {
    fn before_group(
        &mut self,
        i: usize,
        g: &blockrep::failover::PlanGroup,
        _: blockrep::failover::PlanMode,
    ) -> blockrep::Result<()> {
        self.calls.push(format!("before {}", g.name));
        if self.fail_before == Some(i) {
            return Err(blockrep::Error::invalid("the network is not ready"));
        }
        Ok(())
    }
    fn after_group(
        &mut self,
        _: usize,
        g: &blockrep::failover::PlanGroup,
        _: blockrep::failover::PlanMode,
        machines: &[blockrep::failover::MachineFailover],
    ) -> blockrep::Result<()> {
        self.calls
            .push(format!("after {} ({} machines)", g.name, machines.len()));
        Ok(())
    }
    fn test_overlay(&mut self, m: &str, d: usize) -> blockrep::Result<Arc<dyn Storage>> {
        self.calls.push(format!("overlay {m}/{d}"));
        Ok(Arc::new(MemStorage::new()))
    }
}

#[test]
fn a_recovery_plan_stops_at_the_failing_hook_and_reports() {
    use blockrep::failover::{DiskFailover, PlanGroup, PlanMachine, PlanMode, RecoveryPlan};
    use blockrep::status::{DiskStatus, Role};
    // Three machines' disks, replicated.
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let (base, _) = replicated_base();
        let dir: Arc<dyn Dir> = Arc::new(base.recover(&FaultPlan::counting()));
        replicas.push(Replica::open(dir).unwrap());
    }
    let machine = |name: &str, r: &Replica| PlanMachine {
        name: name.into(),
        disks: vec![(r.clone(), None)],
    };
    let plan = RecoveryPlan {
        groups: vec![
            PlanGroup {
                name: "database".into(),
                machines: vec![machine("db", &replicas[0])],
            },
            PlanGroup {
                name: "apps".into(),
                machines: vec![machine("app1", &replicas[1]), machine("app2", &replicas[2])],
            },
        ],
    };
    // A test run goes through and changes nothing.
    let mut hooks = Hooks {
        calls: Vec::new(),
        fail_before: None,
    };
    let report = plan.run(PlanMode::Test, &mut hooks);
    assert!(report.succeeded());
    assert_eq!(
        hooks.calls,
        [
            "before database",
            "overlay db/0",
            "after database (1 machines)",
            "before apps",
            "overlay app1/0",
            "overlay app2/0",
            "after apps (2 machines)"
        ]
    );
    assert!(matches!(
        report.groups[1].1[1].disks[0],
        DiskFailover::Test(_)
    ));
    drop(report);
    assert!(replicas.iter().all(|r| r.failover_phase().is_none()));
    // An unplanned run whose hook fails before the second group: the first
    // group is failed over, the second untouched, and the report says so.
    let mut hooks = Hooks {
        calls: Vec::new(),
        fail_before: Some(1),
    };
    let report = plan.run(PlanMode::Unplanned, &mut hooks);
    let failure = report.failure.as_ref().unwrap();
    assert_eq!(failure.group, (1, "apps".to_string()));
    assert_eq!(failure.step, "before hook");
    assert_eq!(report.groups.len(), 1);
    assert_eq!(report.groups[0].1[0].machine, "db");
    assert_eq!(
        hooks.calls,
        [
            "before database",
            "after database (1 machines)",
            "before apps"
        ]
    );
    assert!(replicas[0].failover_phase().is_some());
    assert!(replicas[1].failover_phase().is_none() && replicas[2].failover_phase().is_none());
    // The console view of each disk.
    let s = DiskStatus::of_replica(&replicas[0], u64::MAX);
    assert_eq!((s.role, s.latest_point), (Role::Promoted, 4));
    #[cfg(feature = "serde")]
    assert!(serde_json::to_string(&s)
        .unwrap()
        .contains("\"role\":\"promoted\""));
    assert_eq!(DiskStatus::of_replica(&replicas[1], 0).role, Role::Replica);
}

#[test]
fn a_primary_status_shows_pending_logs_and_rpo() {
    use blockrep::status::{DiskStatus, Role};
    let mut rng = Rng(53);
    let disk: Arc<dyn Storage> = Arc::new(MemStorage::zeroed(geo().size()).unwrap());
    let p = pipeline(disk.clone(), start());
    p.initial_sync(TransferOptions::default()).unwrap();
    let s = DiskStatus::of_pipeline(&p, 1);
    assert_eq!((s.role, s.pending_logs, s.rpo_ns), (Role::Primary, 1, None));
    ship(&p, &mem_dir(), &mut None);
    scribble(&p, &*disk, &mut rng, 3);
    let s = DiskStatus::of_pipeline(&p, u64::MAX);
    assert!(s.dirty_blocks > 0 && s.rpo_ns.is_some());
    #[cfg(feature = "serde")]
    assert!(serde_json::to_string(&s)
        .unwrap()
        .starts_with("{\"disk_id\":"));
}

#[test]
fn reverse_replication_after_the_old_primary_lost_tracking_uses_digests() {
    let mut rng = Rng(59);
    let (disk_a, pa, dir_b, mut rep_b) = replicated(&mut rng);
    for _ in 0..2 {
        ship(&pa, &dir_b, &mut rep_b);
        scribble(&pa, &*disk_a, &mut rng, 6);
        pa.cycle(&CycleOptions::default()).unwrap();
    }
    ship(&pa, &dir_b, &mut rep_b);
    // The old primary writes, then crashes with its tracking lost.
    scribble(&pa, &*disk_a, &mut rng, 7);
    drop(pa);
    let rep_b = rep_b.unwrap();
    let fo = Failover::promote(rep_b.clone(), None).unwrap();
    let disk_b = fo.disk();
    let pb = pipeline(disk_b.clone(), fo.chain_point().unwrap());
    fo.commit().unwrap();
    scribble(&pb, &*disk_b, &mut rng, 5);
    // The old primary adopts the failover point and sends its digests;
    // the new primary sends exactly the blocks that differ.
    let dir_a = mem_dir();
    let rep_a = Replica::adopt(dir_a.clone(), disk_a.clone(), fo.adopt_at().unwrap()).unwrap();
    let (a, b) = (read_all(&*disk_a), read_all(&*disk_b));
    let truth = a
        .chunks(4096)
        .zip(b.chunks(4096))
        .filter(|(x, y)| x != y)
        .count() as u64;
    let report = pb
        .resync(&rep_a.block_digests(0).unwrap(), TransferOptions::default())
        .unwrap();
    assert_eq!(report.blocks, truth);
    ship(&pb, &dir_a, &mut Some(rep_a));
    assert_eq!(first_diff(&read_all(&*disk_a), &read_all(&*disk_b)), None);
}

/// A replica promoted at an older point and taken up again (another
/// process, the command line) without naming a point stays at the recorded
/// point; it used to move to the latest one, so a later commit committed
/// the wrong point.
#[test]
fn a_promotion_taken_up_again_keeps_its_recorded_point() {
    let mut rng = Rng(41);
    let (disk_a, pa, dir_b, mut rep_b) = replicated(&mut rng);
    let mut at = vec![(1u64, read_all(&*disk_a))];
    for _ in 0..2 {
        scribble(&pa, &*disk_a, &mut rng, 10);
        let r = pa.cycle(&CycleOptions::default()).unwrap();
        ship(&pa, &dir_b, &mut rep_b);
        at.push((r.summary.header.sequence, read_all(&*disk_a)));
    }
    let rep_b = rep_b.unwrap();
    let (older, older_bytes) = &at[1];
    drop(Failover::promote(rep_b.clone(), Some(*older)).unwrap());
    let again = Failover::promote(Replica::open(dir_b.clone()).unwrap(), None).unwrap();
    assert_eq!(again.point(), *older);
    assert_eq!(first_diff(&read_all(&*again.disk()), older_bytes), None);
    let c = again.commit().unwrap();
    assert_eq!(c.point, *older);
    drop(again);
    let committed = Failover::promote(Replica::open(dir_b).unwrap(), None).unwrap();
    assert_eq!(first_diff(&read_all(&*committed.disk()), older_bytes), None);
}
