//! The pipeline: cycles into a spool while writers (data, zero writes,
//! discards) race them; app-consistent points; the spool's bound; and a
//! crash at every step of the spool with a persistent tracker.

mod common;

use blockrep::io::{Dir, Fault, FaultPlan, MemDir, MemStorage, Storage};
use blockrep::log::{Digest, LogHeader, LogKind, LogWriter, MappedLog, ReadOptions, WriterOptions};
use blockrep::replica::{ApplyOutcome, Replica};
use blockrep::source::{ChainPoint, CycleOptions, Pipeline, Primary, Spool, TransferOptions};
use blockrep::tracker::PersistentTracker;
use blockrep::{DiskId, Geometry, Result, Tracker};
use common::{first_diff, Reads, Rng, StopOnDrop};
use parking_lot::RwLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

const ID: DiskId = DiskId([7; 16]);

fn start(g: Geometry) -> ChainPoint {
    blockrep::source::ChainPoint::start(1, g)
}

fn opts() -> WriterOptions {
    WriterOptions {
        record_bytes: 64 << 10,
        threads: 1,
    }
}

/// The transport: hands every unshipped log to the replica (reading it in
/// 10 000-byte chunks, as from a socket), creating the replica from the
/// full log, and acknowledges each. Returns the logs shipped.
fn ship_all(spool: &Spool, replica_dir: &Arc<dyn Dir>, replica: &mut Option<Replica>) -> u64 {
    let mut n = 0;
    while let Some(l) = spool.next_to_ship() {
        let f = spool.open_log(l.point.sequence).unwrap();
        let mut bytes = vec![0u8; l.bytes as usize];
        for (i, c) in bytes.chunks_mut(10_000).enumerate() {
            f.read_at(c, i as u64 * 10_000).unwrap();
        }
        let log = MappedLog::from_bytes(bytes, &l.name, &ReadOptions::default()).unwrap();
        match replica {
            None => {
                assert_eq!(l.kind, LogKind::Full);
                *replica = Some(Replica::create(replica_dir.clone(), &log).unwrap());
            }
            Some(r) => {
                let out = r.apply(&log).unwrap();
                assert_eq!(
                    out,
                    ApplyOutcome::Applied {
                        sequence: l.point.sequence,
                        digest: l.point.digest
                    }
                );
            }
        }
        spool.ack(l.point.sequence, &l.point.digest).unwrap();
        n += 1;
    }
    n
}

fn image(r: &Replica, len: u64) -> Vec<u8> {
    let mut b = vec![0u8; len as usize];
    r.read_at(&mut b, 0).unwrap();
    b
}

fn mem_dir() -> Arc<dyn Dir> {
    Arc::new(MemDir::new())
}

#[test]
fn points_are_exact_while_data_zero_and_discard_writers_race_cycles() {
    let g = Geometry::new((2 << 20) + 1234, 4096).unwrap(); // short last block
    let disk = Arc::new(MemStorage::zeroed(g.size()).unwrap());
    let mut rng = Rng(41);
    let mut init = vec![0u8; g.size() as usize];
    rng.fill(&mut init);
    disk.write_at(&init, 0).unwrap();
    let spool = Spool::create(mem_dir(), ID, start(g), 1 << 40).unwrap();
    let p = Pipeline::new(Primary::new(Tracker::new(g), disk.clone()), spool, opts()).unwrap();
    p.initial_sync(opts().into()).unwrap();
    let rdir = mem_dir();
    let mut replica = None;
    ship_all(p.spool(), &rdir, &mut replica);
    let gate = RwLock::new(());
    let stop = AtomicBool::new(false);
    let writes = AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..3u64 {
            let (gate, stop, writes, p, disk) = (&gate, &stop, &writes, &p, &disk);
            s.spawn(move || {
                let mut rng = Rng(200 + t);
                while !stop.load(Ordering::SeqCst) {
                    let _g = gate.read();
                    let off = rng.below(g.size() - 1);
                    let len = 1 + rng.below(30_000.min(g.size() - off));
                    let mut d = vec![0u8; len as usize];
                    // Data writes, zero writes and discards (which leave
                    // zeros on this storage) in equal parts.
                    let guard = if rng.below(3) == 0 {
                        rng.fill(&mut d);
                        p.primary().write_guard(off, len).unwrap()
                    } else {
                        p.primary().zero_guard(off, len).unwrap()
                    };
                    disk.write_at(&d, off).unwrap();
                    drop(guard);
                    writes.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
        let _stop = StopOnDrop(&stop);
        let mut replica = replica;
        for round in 0..24u64 {
            while writes.load(Ordering::SeqCst) < (round + 1) * 15 {
                std::thread::yield_now();
            }
            let (cycle, at_cut) = {
                let _quiet = gate.write();
                (p.begin_cycle().unwrap(), disk.to_vec())
            };
            if round % 9 == 4 {
                drop(cycle); // abandoned: its blocks go back
                continue;
            }
            let c = if round % 4 == 1 {
                CycleOptions::app_consistent(format!("quiesced {round}"))
            } else {
                CycleOptions::default()
            };
            let report = cycle.write(&c).unwrap();
            assert_eq!(report.summary.header.consistency, c.consistency);
            assert_eq!(ship_all(p.spool(), &rdir, &mut replica), 1);
            let r = replica.as_ref().unwrap();
            assert_eq!(
                first_diff(&image(r, g.size()), &at_cut),
                None,
                "round {round}: the point is not the disk at the cut"
            );
            let last = r.points().pop().unwrap();
            assert_eq!((last.consistency, &last.label), (c.consistency, &c.label));
        }
    });
    assert!(writes.load(Ordering::SeqCst) >= 24 * 15);
}

#[test]
fn a_discard_ships_zero_extents_without_reading_them() {
    let g = Geometry::new(64 << 20, 4096).unwrap();
    let mem = MemStorage::zeroed(g.size()).unwrap();
    let mut d = vec![0u8; g.size() as usize];
    Rng(5).fill(&mut d);
    mem.write_at(&d, 0).unwrap();
    let disk = Arc::new(Reads::new(mem, 0));
    let spool = Spool::create(mem_dir(), ID, start(g), 1 << 40).unwrap();
    let p = Pipeline::new(Primary::new(Tracker::new(g), disk.clone()), spool, opts()).unwrap();
    let full = p.initial_sync(opts().into()).unwrap();
    let rdir = mem_dir();
    let mut replica = None;
    ship_all(p.spool(), &rdir, &mut replica);
    // Trim 60 MiB starting mid-block: 2 partial blocks, the rest whole.
    let (off, len) = (1000u64, 60u64 << 20);
    let before = disk.bytes.load(Ordering::SeqCst);
    {
        let _g = p.primary().zero_guard(off, len).unwrap();
        disk.inner.write_at(&vec![0u8; len as usize], off).unwrap();
    }
    let report = p.cycle(&CycleOptions::default()).unwrap();
    let read = disk.bytes.load(Ordering::SeqCst) - before;
    assert_eq!(read, 2 * 4096, "only the two partial blocks are read");
    assert_eq!(report.blocks, len.div_ceil(4096) + 1);
    assert!(
        report.summary.bytes < 16 << 10,
        "a 60 MiB trim made a log of {} bytes (the full log was {})",
        report.summary.bytes,
        full.summary.bytes
    );
    ship_all(p.spool(), &rdir, &mut replica);
    assert_eq!(
        first_diff(
            &image(replica.as_ref().unwrap(), g.size()),
            &disk.inner.to_vec()
        ),
        None
    );
}

#[test]
fn an_overflowing_spool_folds_unshipped_logs_back_and_loses_nothing() {
    let g = Geometry::new(8 << 20, 4096).unwrap();
    let disk = Arc::new(MemStorage::zeroed(g.size()).unwrap());
    let limit = 256 << 10;
    let spool = Spool::create(mem_dir(), ID, start(g), limit).unwrap();
    let p = Pipeline::new(Primary::new(Tracker::new(g), disk.clone()), spool, opts()).unwrap();
    p.initial_sync(opts().into()).unwrap();
    let rdir = mem_dir();
    let mut replica = None;
    ship_all(p.spool(), &rdir, &mut replica);
    let mut rng = Rng(77);
    let mut write = |p: &Pipeline, n: usize| {
        for _ in 0..n {
            let off = rng.below(g.size() - 70_000);
            let mut d = vec![0u8; 1 + rng.below(65_536) as usize];
            rng.fill(&mut d);
            let _g = p.primary().write_guard(off, d.len() as u64).unwrap();
            disk.write_at(&d, off).unwrap();
        }
    };
    // One log goes out and stays in flight (never acknowledged yet).
    write(&p, 4);
    p.cycle(&CycleOptions::default()).unwrap();
    let in_flight = p.spool().next_to_ship().unwrap();
    // The transport is down: cycles pile up until the spool folds back.
    let mut folded = 0;
    for _ in 0..12 {
        write(&p, 4);
        let r = p.cycle(&CycleOptions::default()).unwrap();
        if let Some(f) = r.folded {
            assert!(f.logs > 0 && f.blocks > 0);
            folded += f.logs;
        }
        let st = p.status();
        let pending: Vec<u64> = p
            .spool()
            .pending()
            .iter()
            .map(|l| l.point.sequence)
            .collect();
        assert_eq!(pending[0], in_flight.point.sequence, "in flight stays");
        assert!(
            pending.windows(2).all(|w| w[1] == w[0] + 1),
            "chain unbroken: {pending:?}"
        );
        // At most the limit, the log in flight and the newest log.
        let newest = p.spool().pending().last().unwrap().bytes;
        assert!(st.pending_bytes <= limit + in_flight.bytes + newest);
    }
    assert!(folded > 0, "the spool never overflowed");
    assert_eq!(p.status().folded_logs, folded);
    // The transport comes back: resends from the oldest unacknowledged.
    p.spool().rewind();
    ship_all(p.spool(), &rdir, &mut replica);
    let r = replica.as_ref().unwrap();
    assert_eq!(first_diff(&image(r, g.size()), &disk.to_vec()), None);
    assert_eq!(r.status().applied, p.spool().head().sequence);
    assert_eq!(p.status().pending_logs, 0);
}

/// Everything that lives through a crash of the primary: the guest disk,
/// the tracker file (mmap: the page cache survives a process crash), the
/// spool directory (only what was synced) and the replica site.
struct Site {
    disk: Arc<MemStorage>,
    tracker_path: std::path::PathBuf,
    spool_dir: Arc<MemDir>,
    replica_dir: Arc<dyn Dir>,
    replica: Option<Replica>,
    rng: Rng,
}

const LIMIT: u64 = 96 << 10;

impl Site {
    fn pipeline(&self, g: Geometry) -> Result<Pipeline<PersistentTracker>> {
        let dir: Arc<dyn Dir> = self.spool_dir.clone();
        let (tracker, spool) = if dir.exists("spool.state") {
            let (t, _state) = PersistentTracker::open(&self.tracker_path, ID, g, None)?;
            (t, Spool::open(dir, LIMIT)?)
        } else {
            let t = PersistentTracker::create(&self.tracker_path, ID, g, 1 << 20)?;
            (t, Spool::create(dir, ID, start(g), LIMIT)?)
        };
        Pipeline::new(Primary::new(tracker, self.disk.clone()), spool, opts())
    }

    fn write(&mut self, p: &Pipeline<PersistentTracker>, n: usize) -> Result<()> {
        let g = p.primary().tracker().geometry();
        for _ in 0..n {
            let off = self.rng.below(g.size() - 40_000);
            let mut d = vec![0u8; 1 + self.rng.below(40_000) as usize];
            self.rng.fill(&mut d);
            let _g = p.primary().write_guard(off, d.len() as u64)?;
            self.disk.write_at(&d, off)?;
        }
        Ok(())
    }

    /// The transport after a restart: learns where the replica is, then
    /// ships the rest.
    fn handshake_and_ship(&mut self, p: &Pipeline<PersistentTracker>) {
        if let Some(r) = &self.replica {
            let held = r.status();
            p.spool().reconcile(held.applied, &held.digest).unwrap();
        }
        ship_all(p.spool(), &self.replica_dir, &mut self.replica);
    }

    /// Initial sync, cycles, shipping some, overflowing the spool.
    fn run(&mut self, g: Geometry) -> Result<u64> {
        let p = self.pipeline(g)?;
        if p.spool().head().sequence == 0 {
            p.initial_sync(TransferOptions::from(opts()))?;
        }
        for round in 0..6 {
            self.write(&p, 3)?;
            p.cycle(&CycleOptions::default())?;
            if round % 3 == 0 {
                // Ship one log: replica applies, then the ack is stored.
                if let Some(l) = p.spool().next_to_ship() {
                    let bytes = {
                        let f = p.spool().open_log(l.point.sequence)?;
                        let mut b = vec![0u8; l.bytes as usize];
                        f.read_at(&mut b, 0)?;
                        b
                    };
                    let log = MappedLog::from_bytes(bytes, &l.name, &ReadOptions::default())?;
                    match &self.replica {
                        None => {
                            self.replica = Some(Replica::create(self.replica_dir.clone(), &log)?);
                        }
                        Some(r) => {
                            r.apply(&log)?;
                        }
                    }
                    p.spool().ack(l.point.sequence, &l.point.digest)?;
                }
            }
        }
        Ok(p.status().folded_logs)
    }
}

#[test]
fn a_crash_at_every_step_of_the_spool_loses_nothing() {
    // 16 intent regions, so regions turn clean and folded blocks must be
    // marked durably to survive.
    let g = Geometry::new(16 << 20, 4096).unwrap();
    let t = tempfile::tempdir().unwrap();
    let faults = [Fault::PowerLoss { torn: true }];
    let steps = common::at_every_step(&faults, |plan, at| {
        let n = at.map_or(0, |(n, _)| n);
        let mut site = Site {
            disk: Arc::new(MemStorage::zeroed(g.size()).unwrap()),
            tracker_path: t.path().join(format!("tracker-{n}")),
            spool_dir: Arc::new(MemDir::with_plan(plan)),
            replica_dir: mem_dir(),
            replica: None,
            rng: Rng(0x5eed),
        };
        let result = site.run(g);
        let Some((n, fault)) = at else {
            let folded = result.unwrap();
            assert!(folded > 0, "the run never overflowed the spool");
            return;
        };
        assert!(
            result.is_err(),
            "step {n} {fault:?}: the fault went unnoticed"
        );
        // Restart: the spool as it was durable, the tracker unclean.
        site.spool_dir = Arc::new(site.spool_dir.recover(&FaultPlan::counting()));
        let p = site.pipeline(g).unwrap();
        if p.spool().head().sequence == 0 {
            p.initial_sync(opts().into()).unwrap();
        }
        site.handshake_and_ship(&p);
        p.cycle(&CycleOptions::default()).unwrap();
        site.handshake_and_ship(&p);
        let r = site.replica.as_ref().unwrap();
        assert_eq!(
            first_diff(&image(r, g.size()), &site.disk.to_vec()),
            None,
            "crash at step {n}: the replica misses writes"
        );
    });
    assert!(steps >= 50, "only {steps} steps");
}

/// `tests/golden/spool_v1.state` is what a fixed spool state writes; a
/// change fails here until the version is bumped and the file regenerated
/// with `BLOCKREP_BLESS=1`.
#[test]
fn spool_state_matches_the_golden_file() {
    const GOLDEN: &str = "tests/golden/spool_v1.state";
    let dir = mem_dir();
    let at = ChainPoint {
        epoch: 3,
        sequence: 42,
        digest: Digest([0x5a; 32]),
        created_ns: 1_700_000_000_000_000_000,
        geometry: Geometry::new(100_000, 4096).unwrap(),
    };
    Spool::create(dir.clone(), DiskId(*b"golden-disk-id!!"), at, 1).unwrap();
    let bytes = dir.read_all("spool.state").unwrap();
    if std::env::var_os("BLOCKREP_BLESS").is_some() {
        std::fs::write(GOLDEN, &bytes).unwrap();
    }
    assert_eq!(bytes, std::fs::read(GOLDEN).unwrap(), "spool state changed");
    let reopened = Spool::open(dir, 1).unwrap();
    assert_eq!(reopened.head(), at);
}

#[test]
fn initial_sync_reports_progress_and_pays_its_limits() {
    use blockrep::source::{Progress, Throttle};
    let g = Geometry::new(8 << 20, 4096).unwrap();
    let mem = MemStorage::zeroed(g.size()).unwrap();
    let mut d = vec![0u8; 3 << 20];
    Rng(4).fill(&mut d);
    mem.write_at(&d, 1 << 20).unwrap();
    let spool = Spool::create(mem_dir(), ID, start(g), 1 << 40).unwrap();
    let p = Pipeline::new(Primary::new(Tracker::new(g), Arc::new(mem)), spool, opts()).unwrap();
    // Generous limits: they account every byte without slowing the test.
    let (reads, writes) = (Throttle::new(1 << 40), Throttle::new(1 << 40));
    let mut seen = Vec::new();
    let mut progress = |p: Progress| seen.push(p);
    let report = p
        .initial_sync(TransferOptions {
            writer: opts(),
            read_limit: Some(&reads),
            write_limit: Some(&writes),
            progress: Some(&mut progress),
        })
        .unwrap();
    // MemStorage knows no holes: the whole disk is read, once.
    assert_eq!(reads.consumed(), g.size());
    // The output paid for is the log as records were written out (the
    // last ones, written when it finishes, are not held back).
    assert!(writes.consumed() <= report.summary.bytes && writes.consumed() > 2 << 20);
    assert!(seen.windows(2).all(|w| w[0].done <= w[1].done));
    assert_eq!(
        seen.last(),
        Some(&Progress {
            done: g.size(),
            total: g.size()
        })
    );
}

/// A pipeline over `disk` with a new, empty spool in memory.
fn fresh_pipeline(g: Geometry, disk: Arc<dyn Storage>) -> Pipeline {
    Pipeline::new(
        Primary::new(Tracker::new(g), disk),
        Spool::create(mem_dir(), ID, start(g), 1 << 30).unwrap(),
        opts(),
    )
    .unwrap()
}

/// A disk with every kind of block a full log distinguishes: data, zero
/// blocks amid data, repeats of an earlier block (stored as copies) and
/// a short last block.
fn varied_disk(g: Geometry, rng: &mut Rng) -> Vec<u8> {
    let mut d = vec![0u8; g.size() as usize];
    let bs = g.block_size() as usize;
    for (i, b) in d.chunks_mut(bs).enumerate() {
        match i % 7 {
            0 | 3 => {}
            5 if i > 7 => {
                let (head, _) = b.split_at_mut(8);
                head.copy_from_slice(&[0x5a; 8]);
            }
            _ => rng.fill(b),
        }
    }
    // A run of the same block, as a guest's zero-filled-with-pattern area.
    let pattern: Vec<u8> = (0..bs).map(|i| (i % 251) as u8).collect();
    for b in d.chunks_mut(bs).skip(40).take(30) {
        if b.len() == bs {
            b.copy_from_slice(&pattern);
        }
    }
    d
}

#[test]
fn initial_sync_into_makes_the_replica_a_spooled_full_log_makes() {
    // A short last block, and a sparse file so holes are found by
    // SEEK_DATA as well as zero blocks read as data.
    let g = Geometry::new((3 << 20) + 1000, 4096).unwrap();
    let content = varied_disk(g, &mut Rng(0x1417));
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("disk.img");
    {
        let f = blockrep::io::FileStorage::create(&path, g.size()).unwrap();
        for (i, b) in content.chunks(64 << 10).enumerate() {
            if i % 5 != 2 {
                f.write_at(b, i as u64 * (64 << 10)).unwrap();
            }
        }
    }
    let mut expect = std::fs::read(&path).unwrap();
    let disk: Arc<dyn Storage> = Arc::new(blockrep::io::FileStorage::open(&path).unwrap());

    // The reference: a full log through the spool, shipped.
    let a = fresh_pipeline(g, disk.clone());
    a.initial_sync(opts().into()).unwrap();
    let mut shipped = None;
    ship_all(a.spool(), &mem_dir(), &mut shipped);
    let shipped = shipped.unwrap();

    // In one pass, into a local replica: the same point, the same image.
    let b = fresh_pipeline(g, disk.clone());
    let rdir = mem_dir();
    let (report, local) = b.initial_sync_into(rdir.clone(), opts().into()).unwrap();
    assert_eq!(report.summary.bytes, 0, "no log was written");
    // The point is the full log's without copies (repeats not looked for):
    // written here block by block as the reference.
    let mut h = LogHeader::new(ID, g, LogKind::Full, 1, 1).unwrap();
    h.copies = false;
    let mut w = LogWriter::new(Vec::new(), h, opts()).unwrap();
    for (i, block) in expect.chunks(4096).enumerate() {
        w.add_block(i as u64, block).unwrap();
    }
    let (_, reference) = w.finish().unwrap();
    assert_eq!(report.summary.trailer.digest, reference.trailer.digest);
    assert_eq!(report.summary.trailer.blocks, g.block_count());
    assert_eq!(
        report.summary.trailer.data_blocks,
        reference.trailer.data_blocks
    );
    assert_eq!(local.status().applied, 1);
    assert_eq!(local.status().digest, reference.trailer.digest);
    let (ha, hb) = (a.spool().head(), b.spool().head());
    assert_eq!(
        (hb.epoch, hb.sequence, hb.digest, hb.geometry),
        (ha.epoch, ha.sequence, reference.trailer.digest, ha.geometry)
    );
    assert_eq!(
        first_diff(&image(&local, g.size()), &image(&shipped, g.size())),
        None
    );
    assert_eq!(b.status().pending_logs, 0);
    assert_eq!(b.status().acked, b.status().head);
    assert_eq!(first_diff(&image(&local, g.size()), &expect), None);

    // Once only, and never over a replica.
    let again = b.initial_sync_into(mem_dir(), opts().into()).unwrap_err();
    assert_eq!(again.kind(), blockrep::ErrorKind::Misuse);
    let c = fresh_pipeline(g, disk.clone());
    let over = c
        .initial_sync_into(rdir.clone(), opts().into())
        .unwrap_err();
    assert_eq!(over.kind(), blockrep::ErrorKind::Misuse);
    assert_eq!(c.spool().head().sequence, 0, "the spool moved");
    drop(c);

    // The chain goes on from it: a cycle spooled, applied to the replica.
    let mut rng = Rng(99);
    for _ in 0..20 {
        let off = rng.below(g.size() - 5000);
        let mut d = vec![0u8; 1 + rng.below(5000) as usize];
        rng.fill(&mut d);
        let _w = b.primary().write_guard(off, d.len() as u64).unwrap();
        disk.write_at(&d, off).unwrap();
        expect[off as usize..off as usize + d.len()].copy_from_slice(&d);
    }
    b.cycle(&CycleOptions::default()).unwrap();
    let mut local = Some(local);
    assert_eq!(ship_all(b.spool(), &rdir, &mut local), 1);
    let local = local.unwrap();
    assert_eq!(local.status().applied, 2);
    assert_eq!(first_diff(&image(&local, g.size()), &expect), None);
}

/// A crash (or a failed write) at every step of a local initial sync: on
/// restart the spool and the replica directory hold either nothing (it
/// runs again), the replica without the spool knowing it (a resync from
/// its digests brings it into the chain), or both at point 1; every way
/// ends with the replica exact and the chain going on.
#[test]
fn a_crash_at_every_step_of_a_local_initial_sync_loses_nothing() {
    let g = Geometry::new(320 << 10, 4096).unwrap();
    let content = varied_disk(g, &mut Rng(0x00c0_ffee));
    let faults = [Fault::PowerLoss { torn: true }, Fault::NoSpace];
    let pipeline = |dir: Arc<dyn Dir>, disk: Arc<MemStorage>| -> Result<Pipeline> {
        let spool = if dir.exists("spool.state") {
            Spool::open(dir, 1 << 30)?
        } else {
            Spool::create(dir, ID, start(g), 1 << 30)?
        };
        Pipeline::new(Primary::new(Tracker::new(g), disk), spool, opts())
    };
    let mut outcomes = [0u32; 3];
    let steps = common::at_every_step(&faults, |plan, at| {
        let disk = Arc::new(MemStorage::from_vec(content.clone()));
        let sdir = Arc::new(MemDir::with_plan(plan));
        let rdir = Arc::new(MemDir::with_plan(plan));
        let result = pipeline(sdir.clone(), disk.clone())
            .and_then(|p| p.initial_sync_into(rdir.clone(), opts().into()).map(|_| ()));
        let Some((n, fault)) = common::expect_fault(result, at) else {
            return;
        };
        let sdir: Arc<dyn Dir> = Arc::new(sdir.recover(&FaultPlan::counting()));
        let rdir: Arc<dyn Dir> = Arc::new(rdir.recover(&FaultPlan::counting()));
        let p = pipeline(sdir, disk.clone()).unwrap();
        let mut replica = if p.spool().head().sequence == 1 {
            outcomes[2] += 1;
            let r = Replica::open(rdir.clone()).unwrap();
            let held = r.status();
            p.spool().reconcile(held.applied, &held.digest).unwrap();
            Some(r)
        } else if Replica::exists(&*rdir) {
            outcomes[1] += 1;
            // The replica is durable, the spool never learnt of it.
            let r = Replica::open(rdir.clone()).unwrap();
            let refused = p.initial_sync_into(rdir.clone(), opts().into());
            assert_eq!(refused.unwrap_err().kind(), blockrep::ErrorKind::Misuse);
            p.resync(&r.block_digests(1).unwrap(), opts().into())
                .unwrap();
            Some(r)
        } else {
            outcomes[0] += 1;
            Some(p.initial_sync_into(rdir.clone(), opts().into()).unwrap().1)
        };
        ship_all(p.spool(), &rdir, &mut replica);
        let r = replica.unwrap();
        assert_eq!(
            first_diff(&image(&r, g.size()), &content),
            None,
            "step {n} {fault:?}: the replica differs"
        );
        assert_eq!(r.status().applied, p.spool().head().sequence);
        assert_eq!(r.status().digest, p.spool().head().digest);
        // And the chain goes on.
        let guard = p.primary().write_guard(4096, 4096).unwrap();
        disk.write_at(&[0xee; 4096], 4096).unwrap();
        drop(guard);
        p.cycle(&CycleOptions::default()).unwrap();
        ship_all(p.spool(), &rdir, &mut Some(r.clone()));
        let mut want = content.clone();
        want[4096..8192].fill(0xee);
        assert_eq!(first_diff(&image(&r, g.size()), &want), None, "step {n}");
    });
    assert!(steps >= 8, "only {steps} steps");
    assert!(
        outcomes.iter().all(|&n| n > 0),
        "not every restart case was reached: {outcomes:?}"
    );
}

/// A read of the disk failing at any chunk of a local initial sync: the
/// error comes back, no replica and no image are left, the spool stays at
/// the chain's start, and the next attempt makes the replica exactly.
#[test]
fn a_failed_read_of_a_local_initial_sync_leaves_nothing() {
    let g = Geometry::new(9 << 20, 4096).unwrap();
    let content = varied_disk(g, &mut Rng(0x0bad));
    let mut reads = 0;
    for fail_at in 1.. {
        let disk = Arc::new(Reads::new(MemStorage::from_vec(content.clone()), fail_at));
        let p = fresh_pipeline(g, disk.clone());
        let rdir = mem_dir();
        match p.initial_sync_into(rdir.clone(), opts().into()) {
            Ok((_, r)) => {
                // Past the last read: nothing failed.
                reads = disk.calls.load(Ordering::SeqCst);
                assert_eq!(first_diff(&image(&r, g.size()), &content), None);
                break;
            }
            Err(e) => {
                assert_eq!(e.kind(), blockrep::ErrorKind::Io, "read {fail_at}: {e}");
                assert!(!Replica::exists(&*rdir), "read {fail_at}: a replica");
                assert!(!rdir.exists("image") && !rdir.exists("image.partial"));
                assert_eq!(p.spool().head().sequence, 0);
                let (_, r) = p.initial_sync_into(rdir, opts().into()).unwrap();
                assert_eq!(first_diff(&image(&r, g.size()), &content), None);
            }
        }
    }
    assert!(reads >= 3, "only {reads} reads");
}
