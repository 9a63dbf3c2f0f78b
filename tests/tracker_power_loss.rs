//! The persistent tracker under the power-loss harness: its file lives in a
//! [`MemDir`] whose fault plan drops, at a power loss, every byte not
//! flushed (and tears the write it hits at sector granularity). A script of
//! writes (completed, and some still in flight), cuts, commits, a failed
//! cycle handed back, a resize, a clean close and a reopen runs with the
//! power lost at every step; after each loss the tracker reopened from the
//! durable bytes must hold every block of every write that was submitted
//! and is not in a committed log cut after it completed (invariant 8).
//! Faults that only fail one step (EIO, ENOSPC) must leave the tracker
//! usable, never panicking, with the same guarantee at the end.

mod common;

use blockrep::io::{Dir, Fault, FaultPlan, MemDir};
use blockrep::tracker::{OpenState, PersistentTracker};
use blockrep::{DiskId, ErrorKind, Geometry, Result};
use std::collections::BTreeSet;
use std::sync::Arc;

const ID: DiskId = DiskId([9; 16]);
const NAME: &str = "disk.brt";
const MIB: u64 = 1 << 20;
const REGION: u32 = 1 << 20;
const BS: u64 = 4096;

fn geo(size: u64) -> Geometry {
    Geometry::new(size, BS as u32).unwrap()
}

/// A write as the model knows it: its blocks, and the model step at which
/// it completed (`None`: still in flight, so it may be on the disk).
struct Write {
    blocks: std::ops::Range<u64>,
    completed: Option<usize>,
}

/// What the guest and the replica know, updated only when a call returned.
#[derive(Default)]
struct Model {
    step: usize,
    writes: Vec<Write>,
    /// Committed cuts: the step of the cut and its blocks.
    committed: Vec<(usize, BTreeSet<u64>)>,
    /// Whether a resize began (the file may then have either geometry).
    resized: bool,
}

impl Model {
    fn tick(&mut self) -> usize {
        self.step += 1;
        self.step
    }

    /// The blocks that must be tracked: those of every write not in a
    /// committed cut taken after it completed.
    fn must_track(&self) -> BTreeSet<u64> {
        let mut need = BTreeSet::new();
        for w in &self.writes {
            for b in w.blocks.clone() {
                let safe = w.completed.is_some_and(|done| {
                    self.committed
                        .iter()
                        .any(|(cut, set)| *cut > done && set.contains(&b))
                });
                if !safe {
                    need.insert(b);
                }
            }
        }
        need
    }
}

fn blocks(off: u64, len: u64) -> std::ops::Range<u64> {
    off / BS..(off + len).div_ceil(BS)
}

/// One completed write: begun, (submitted and completed), guard dropped.
fn write(pt: &PersistentTracker, m: &mut Model, off: u64, len: u64) -> Result<()> {
    let g = pt.begin_write(off, len)?;
    // Submitted from here: it may reach the disk.
    let i = m.writes.len();
    m.writes.push(Write {
        blocks: blocks(off, len),
        completed: None,
    });
    drop(g);
    m.writes[i].completed = Some(m.tick());
    Ok(())
}

/// A write submitted that never completes before the power goes.
fn in_flight(pt: &PersistentTracker, m: &mut Model, off: u64, len: u64) -> Result<()> {
    std::mem::forget(pt.begin_write(off, len)?);
    m.writes.push(Write {
        blocks: blocks(off, len),
        completed: None,
    });
    Ok(())
}

/// A cycle: cut, then the log is durable (commit) or the cycle failed.
fn cycle(pt: &PersistentTracker, m: &mut Model, ship: bool) -> Result<()> {
    let f = pt.cut();
    let at = m.tick();
    if ship {
        // The log is durable in the spool before commit is called: its
        // blocks are safe whatever commit then does.
        m.committed.push((at, f.blocks().collect()));
        pt.commit(f.generation())?;
    } else {
        pt.reclaim(&f);
    }
    Ok(())
}

/// The script. At an error it stops (`tolerant` false: the power is
/// gone) or goes on with the next step (`tolerant`: one step failed, the
/// tracker must stay usable), the model as of the calls that returned.
fn script(dir: &Arc<dyn Dir>, m: &mut Model, tolerant: bool) -> Result<()> {
    // Runs one step; an error ends the script unless tolerated.
    macro_rules! step {
        ($e:expr) => {
            match $e {
                Ok(v) => Some(v),
                Err(_) if tolerant => None,
                Err(e) => return Err(e),
            }
        };
    }
    let created = PersistentTracker::create_in(dir.clone(), NAME, ID, geo(16 * MIB), REGION);
    let Some(mut pt) = step!(created) else {
        return Ok(()); // nothing tracked yet, nothing written
    };
    step!(write(&pt, m, 0, 8192));
    step!(write(&pt, m, MIB + 512, 100));
    step!(write(&pt, m, 5 * MIB, 64 << 10));
    step!(cycle(&pt, m, true)); // regions 0, 1, 5 clean again
    step!(write(&pt, m, 5 * MIB + 4096, 4096));
    step!(write(&pt, m, 9 * MIB - 4096, 8192)); // spans regions 8 and 9
    step!(cycle(&pt, m, false)); // a failed cycle: handed back
    m.resized = true;
    if step!(pt.resize(20 * MIB)).is_some() {
        // The grown range is new content: like a write completed now.
        let now = m.tick();
        m.writes.push(Write {
            blocks: blocks(16 * MIB, 4 * MIB),
            completed: Some(now),
        });
    }
    step!(write(&pt, m, 18 * MIB, 4096));
    step!(write(&pt, m, 2 * MIB, 4096));
    let outstanding = pt.cut(); // a cycle whose log is not durable yet
    m.tick();
    let g = pt.geometry();
    step!(pt.close(None));
    drop(outstanding);
    let Some((pt, state)) = step!(PersistentTracker::open_in(dir.clone(), NAME, ID, g, None))
    else {
        return Ok(());
    };
    let clean = matches!(state, OpenState::Clean { .. });
    assert!(clean || tolerant, "{state:?}");
    step!(write(&pt, m, 7 * MIB, 4096));
    step!(in_flight(&pt, m, 3 * MIB, 4096));
    step!(cycle(&pt, m, true));
    step!(in_flight(&pt, m, 10 * MIB, 12288));
    step!(write(&pt, m, 10 * MIB + 8192, 4096));
    step!(cycle(&pt, m, true));
    step!(write(&pt, m, 11 * MIB, 4096));
    // The process dies here: an unclean stop with writes in flight.
    drop(pt);
    Ok(())
}

/// Reopens the tracker from what survived and checks the guarantee.
fn check(dir: &Arc<dyn Dir>, m: &Model, what: &str) {
    let need = m.must_track();
    if !dir.exists(NAME) {
        assert!(
            need.is_empty(),
            "{what}: no tracker file, but {need:?} unshipped"
        );
        return;
    }
    let sizes = if m.resized {
        vec![20 * MIB, 16 * MIB]
    } else {
        vec![16 * MIB]
    };
    for size in sizes {
        match PersistentTracker::open_in(dir.clone(), NAME, ID, geo(size), None) {
            Ok((pt, _)) => {
                let tracked: BTreeSet<u64> = pt.tracker().snapshot().blocks().collect();
                let blocks = geo(size).block_count();
                let missing: Vec<u64> = need
                    .iter()
                    .filter(|&&b| b < blocks && !tracked.contains(&b))
                    .copied()
                    .collect();
                assert!(missing.is_empty(), "{what}: blocks lost: {missing:?}");
                return;
            }
            // The resize's new file did not become durable: the disk's
            // size tells the integration, which resyncs the grown range;
            // the old range is checked with the old geometry.
            Err(e) if e.kind() == ErrorKind::Mismatch && m.resized => {}
            Err(e) => panic!("{what}: the tracker could not be reopened: {e}"),
        }
    }
    panic!("{what}: no geometry fits the tracker file");
}

#[test]
fn every_submitted_write_survives_a_power_loss_at_every_step() {
    let faults = [
        Fault::PowerLoss { torn: false },
        Fault::PowerLoss { torn: true },
    ];
    let steps = common::at_every_step(&faults, |plan, at| {
        let mem = Arc::new(MemDir::with_plan(plan));
        let dir: Arc<dyn Dir> = mem.clone();
        let mut m = Model::default();
        let r = script(&dir, &mut m, false);
        if at.is_none() {
            r.unwrap();
        }
        let what = format!("{at:?}");
        let after: Arc<dyn Dir> = Arc::new(mem.recover(&FaultPlan::counting()));
        check(&after, &m, &what);
    });
    assert!(steps > 30, "the script is too short to prove much: {steps}");
    eprintln!("power lost at each of {steps} steps, torn and not");
}

#[test]
fn a_failed_step_leaves_a_usable_tracker_that_still_tracks_everything() {
    let faults = [Fault::Error, Fault::NoSpace];
    common::at_every_step(&faults, |plan, at| {
        let mem = Arc::new(MemDir::with_plan(plan));
        let dir: Arc<dyn Dir> = mem.clone();
        let mut m = Model::default();
        script(&dir, &mut m, true).unwrap();
        // The process restarts: it finds what its writes left (the page
        // cache), under a plan that injects nothing more.
        let after: Arc<dyn Dir> = Arc::new(mem.recover(&FaultPlan::counting()));
        check(&after, &m, &format!("{at:?}"));
    });
}

/// A directory whose files' syncs can be slowed: a sync then reports its
/// start and holds for a while, and the moment it completed is recorded.
struct SlowDir {
    inner: MemDir,
    slow: Arc<Slow>,
}

#[derive(Default)]
struct Slow {
    armed: std::sync::atomic::AtomicBool,
    started: parking_lot::Mutex<Option<std::sync::mpsc::Sender<()>>>,
    done: parking_lot::Mutex<Option<std::time::Instant>>,
}

struct SlowFile {
    inner: Arc<dyn blockrep::io::Storage>,
    slow: Arc<Slow>,
}

impl blockrep::io::Storage for SlowFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.inner.write_at(buf, offset)
    }
    fn sync(&self) -> Result<()> {
        if self.slow.armed.load(std::sync::atomic::Ordering::SeqCst) {
            if let Some(tx) = self.slow.started.lock().take() {
                tx.send(()).unwrap();
            }
            std::thread::sleep(std::time::Duration::from_millis(300));
            self.inner.sync()?;
            *self.slow.done.lock() = Some(std::time::Instant::now());
            return Ok(());
        }
        self.inner.sync()
    }
    fn len(&self) -> Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> Result<()> {
        self.inner.set_len(len)
    }
}

impl Dir for SlowDir {
    fn open(&self, name: &str) -> Result<Arc<dyn blockrep::io::Storage>> {
        Ok(Arc::new(SlowFile {
            inner: self.inner.open(name)?,
            slow: self.slow.clone(),
        }))
    }
    fn create(&self, name: &str) -> Result<Arc<dyn blockrep::io::Storage>> {
        self.inner.create(name)
    }
    fn exists(&self, name: &str) -> bool {
        self.inner.exists(name)
    }
    fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.inner.rename(from, to)
    }
    fn remove(&self, name: &str) -> Result<()> {
        self.inner.remove(name)
    }
    fn sync(&self) -> Result<()> {
        self.inner.sync()
    }
    fn list(&self) -> Result<Vec<String>> {
        self.inner.list()
    }
    fn path_of(&self, _name: &str) -> Option<std::path::PathBuf> {
        None
    }
}

/// A second writer to a cold region returns only once the region's intent
/// bit is durable, even while the first writer is still flushing it (the
/// bit used to be published before the flush).
#[test]
fn a_second_writer_waits_for_the_intent_bit_to_be_durable() {
    let slow = Arc::new(Slow::default());
    let dir: Arc<dyn Dir> = Arc::new(SlowDir {
        inner: MemDir::new(),
        slow: slow.clone(),
    });
    let pt = PersistentTracker::create_in(dir, NAME, ID, geo(16 * MIB), REGION).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    *slow.started.lock() = Some(tx);
    slow.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    std::thread::scope(|s| {
        let first = s.spawn(|| pt.begin_write(3 * MIB, 4096).unwrap().finish());
        rx.recv().unwrap(); // the first writer is flushing the bit now
        pt.begin_write(3 * MIB + 8192, 4096).unwrap().finish();
        let returned = std::time::Instant::now();
        let durable = slow.done.lock().expect("the flush completed");
        assert!(
            returned >= durable,
            "the second writer went ahead of the flush"
        );
        first.join().unwrap();
    });
}

/// A failed flush publishes nothing: the next writer to that region
/// flushes the bit itself (it used to find it published and skip it).
#[test]
fn a_failed_intent_flush_is_retried_by_the_next_writer() {
    let probe = FaultPlan::counting();
    let dir: Arc<dyn Dir> = Arc::new(MemDir::with_plan(&probe));
    drop(PersistentTracker::create_in(dir, NAME, ID, geo(16 * MIB), REGION).unwrap());
    let created = probe.ops();
    // The first begin_write writes the intent word (created + 1) and syncs
    // it (created + 2): that sync fails.
    let plan = FaultPlan::at(created + 2, Fault::Error);
    let dir: Arc<dyn Dir> = Arc::new(MemDir::with_plan(&plan));
    let pt = PersistentTracker::create_in(dir, NAME, ID, geo(16 * MIB), REGION).unwrap();
    assert!(pt.begin_write(6 * MIB, 4096).is_err());
    assert!(plan.fired());
    let before = plan.ops();
    pt.begin_write(6 * MIB, 4096).unwrap().finish();
    assert_eq!(plan.ops(), before + 2, "the bit was not flushed again");
    // Hot now: no flush.
    pt.begin_write(6 * MIB + 4096, 4096).unwrap().finish();
    assert_eq!(plan.ops(), before + 2);
}
