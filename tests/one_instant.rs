//! Every point is one instant under load (DESIGN invariant 2, issue 26).
//!
//! Writer threads rewrite runs of 1 to 12 blocks of their own region one
//! write after another, each block stamped with its thread, the write's
//! number and its place, while the pipeline cycles back to back and each
//! log is applied to a replica. Every point is then checked twice:
//!
//! * per thread, it holds writes `1..=k` of that thread and at most part of
//!   write `k + 1`, nothing else (no torn, foreign or misplaced block);
//! * across threads, one instant separates what is in from what is out:
//!   every write with content in the point began before every write not
//!   wholly in the point ended (ticks of one global counter, taken before a
//!   write's guard and after its completion).
//!
//! The same run goes through every way a write is guarded: the in-memory
//! tracker, the persistent tracker, [`AnyTracker`] from the builder, a
//! consistency group of two disks (each thread's region spans both), and
//! the C ABI's begin and end calls. The last points retained are read back
//! through views at the end and must equal what the replica showed when
//! they were new. Writers are let go in bursts as each cycle starts (see
//! [`BURST`]). On the code before the fix (the flag raised after the take)
//! every in-memory, persistent and `AnyTracker` run of 100 cycles failed,
//! within 2 to 16 cycles, and four of five C ABI runs did; the group's
//! hold on completions kept its runs correct. `BLOCKREP_INSTANT_CYCLES`
//! sets the cycles per run (150 by default).

mod common;

use blockrep::io::{Dir, FileStorage, MemDir, MemStorage, Storage};
use blockrep::log::{MappedLog, ReadOptions, WriterOptions};
use blockrep::replica::{Replica, RetentionPolicy};
use blockrep::source::{
    AnyTracker, ChainPoint, ConsistencyGroup, CycleOptions, Pipeline, Primary, Spool, Tracking,
};
use blockrep::tracker::PersistentTracker;
use blockrep::{DiskId, Geometry, Tracker};
use common::{Rng, StopOnDrop};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

const THREADS: u64 = 4;
/// Blocks each thread owns (over all disks).
const REGION: u64 = 256;
const BS: u64 = 4096;
/// The longest run one write covers.
const MAX_RUN: u64 = 12;
const MAGIC: u64 = 0x504d_4154_5354_5242; // "BRSTSTAMP"-ish, never zero
/// Points kept on the replica, read back through views at the end.
const KEEP: usize = 8;
/// Writes each thread may begin per cycle: the burst is let go as a cycle
/// starts, so writes complete and begin while the cut is under way, and
/// the frozen sets stay sparse (a write to a clean block next to one to a
/// frozen block is what a torn cut shows on).
const BURST: u64 = 8;

fn cycles() -> u64 {
    std::env::var("BLOCKREP_INSTANT_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150)
}

/// Where the blocks of thread `t` live when the region spans `disks` disks
/// of equal size: region block `r` is on disk `r / (REGION / disks)`.
#[derive(Clone, Copy)]
struct Layout {
    disks: u64,
}

impl Layout {
    fn per_disk(self) -> u64 {
        REGION / self.disks
    }

    fn geometry(self) -> Geometry {
        Geometry::new(THREADS * self.per_disk() * BS, BS as u32).unwrap()
    }

    /// Disk and block of region block `r` of thread `t`.
    fn place(self, t: u64, r: u64) -> (usize, u64) {
        let per = self.per_disk();
        ((r / per) as usize, t * per + r % per)
    }
}

/// A block as write `k` of thread `t` leaves region block `r`: a 32-byte
/// stamp repeated, so a torn block is seen.
fn stamped(t: u64, k: u64, r: u64) -> Vec<u8> {
    let mut s = [0u8; 32];
    for (i, v) in [MAGIC, t, k, r].into_iter().enumerate() {
        s[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
    }
    s.repeat((BS / 32) as usize)
}

/// The write number stamped in a block of thread `t`'s region block `r`
/// (0: never written), or what is wrong with it.
fn stamp_of(block: &[u8], t: u64, r: u64) -> Result<u64, String> {
    if block.iter().all(|&b| b == 0) {
        return Ok(0);
    }
    let u = |i: usize| u64::from_le_bytes(block[i * 8..i * 8 + 8].try_into().unwrap());
    let (magic, bt, k, br) = (u(0), u(1), u(2), u(3));
    if magic != MAGIC || bt != t || br != r || block != stamped(t, k, r).as_slice() {
        return Err(format!(
            "thread {t} block {r}: torn or foreign (stamp thread {bt} write {k} block {br})"
        ));
    }
    Ok(k)
}

/// One write of a thread's history: its run and the ticks around it.
#[derive(Clone, Copy)]
struct WriteRec {
    first: u64,
    count: u64,
    /// Taken before the write's guard.
    begin: u64,
    /// Taken after its completion; `u64::MAX` while in flight.
    end: u64,
}

/// Every thread's writes, in order, the clock their ticks come from, and
/// how many writes each thread may have begun.
struct History {
    clock: AtomicU64,
    threads: Vec<Mutex<Vec<WriteRec>>>,
    allowed: AtomicU64,
}

impl History {
    fn new() -> Self {
        History {
            clock: AtomicU64::new(1),
            threads: (0..THREADS).map(|_| Mutex::new(Vec::new())).collect(),
            allowed: AtomicU64::new(BURST),
        }
    }

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst)
    }
}

/// How a test writes: takes the guard (or begins), writes `data` to disk
/// `disk` at `offset`, completes.
trait Guarded: Sync {
    fn write(&self, disk: usize, offset: u64, data: &[u8]);
}

/// Writes until `stop`, thread `t`'s writes one after another. The next
/// write's run and data are made before the current write begins, so one
/// write follows another as closely as a guest's do.
fn writer(t: u64, layout: Layout, w: &dyn Guarded, h: &History, stop: &AtomicBool) {
    let mut rng = Rng(0x9e37_79b9 ^ ((t + 1) * 7919));
    let per = layout.per_disk();
    let mut plan = |k: u64| {
        let count = 1 + rng.below(MAX_RUN);
        let first = rng.below(layout.disks) * per + rng.below(per - count + 1);
        let mut data = Vec::with_capacity((count * BS) as usize);
        for r in first..first + count {
            data.extend_from_slice(&stamped(t, k, r));
        }
        (first, count, data)
    };
    let mut next = plan(1);
    let mut k = 1;
    while !stop.load(Ordering::Relaxed) {
        if k > h.allowed.load(Ordering::Acquire) {
            std::thread::yield_now();
            continue;
        }
        let (first, count, data) = std::mem::replace(&mut next, plan(k + 1));
        let (disk, block) = layout.place(t, first);
        let begin = h.tick();
        h.threads[t as usize].lock().push(WriteRec {
            first,
            count,
            begin,
            end: u64::MAX,
        });
        w.write(disk, block * BS, &data);
        let end = h.tick();
        h.threads[t as usize].lock()[k as usize - 1].end = end;
        k += 1;
    }
}

/// Replays each thread's writes as points are checked in order.
struct Checker {
    layout: Layout,
    /// Per thread: the write number each region block holds after the
    /// writes replayed so far, and how many were replayed.
    state: Vec<(Vec<u64>, usize)>,
}

impl Checker {
    fn new(layout: Layout) -> Self {
        Checker {
            layout,
            state: (0..THREADS)
                .map(|_| (vec![0; REGION as usize], 0))
                .collect(),
        }
    }

    /// Checks the point whose disks read as `images`.
    fn check(&mut self, images: &[Vec<u8>], h: &History) -> Result<(), String> {
        let mut newest_in_began = (0, 0);
        let mut first_out_ends = (u64::MAX, 0);
        for t in 0..THREADS {
            let held: Vec<u64> = (0..REGION)
                .map(|r| {
                    let (d, b) = self.layout.place(t, r);
                    let at = (b * BS) as usize;
                    stamp_of(&images[d][at..at + BS as usize], t, r)
                })
                .collect::<Result<_, _>>()?;
            let m = *held.iter().max().unwrap();
            let (state, done) = &mut self.state[t as usize];
            let want = (m as usize).saturating_sub(1);
            assert!(*done <= want, "thread {t}: points went back in time");
            // Writes `done + 1 ..= m + 1` (the last may not have begun).
            let base = *done;
            let writes: Vec<WriteRec> = {
                let all = h.threads[t as usize].lock();
                all[base..all.len().min(m as usize + 1)].to_vec()
            };
            let at = |k: u64| writes.get((k as usize).checked_sub(base + 1)?).copied();
            // Writes 1..m-1 replayed: the point must be that state, except
            // that blocks of write m may hold m.
            for k in base as u64 + 1..=want as u64 {
                let w = at(k).unwrap();
                for r in w.first..w.first + w.count {
                    state[r as usize] = k;
                }
            }
            *done = want;
            let newest = at(m);
            let in_m = |r: u64| newest.is_some_and(|w| (w.first..w.first + w.count).contains(&r));
            for r in 0..REGION {
                let (got, before) = (held[r as usize], state[r as usize]);
                if got != before && !(in_m(r) && got == m) {
                    return Err(format!(
                        "thread {t}: the point holds its write {m} but region block {r} \
                         holds write {got} where writes 1..{want} leave {before}"
                    ));
                }
            }
            let whole = m == 0 || (0..REGION).all(|r| !in_m(r) || held[r as usize] == m);
            let k = if whole { m } else { m - 1 };
            if let Some(w) = newest.filter(|w| w.begin > newest_in_began.0) {
                newest_in_began = (w.begin, t);
            }
            let first_out_end = at(k + 1).map_or(u64::MAX, |w| w.end);
            if first_out_end < first_out_ends.0 {
                first_out_ends = (first_out_end, t);
            }
        }
        if newest_in_began.0 >= first_out_ends.0 {
            return Err(format!(
                "no one instant: thread {}'s newest write in the point began at tick {}, \
                 after thread {}'s first write not wholly in it ended at tick {}",
                newest_in_began.1, newest_in_began.0, first_out_ends.1, first_out_ends.0
            ));
        }
        Ok(())
    }
}

/// A disk's secondary: its replica, created from the full log.
struct Secondary {
    replica: Option<Replica>,
}

impl Secondary {
    fn new() -> Self {
        Secondary { replica: None }
    }

    /// Applies (or creates from) one log and returns the point's image.
    fn take(&mut self, log: &MappedLog) -> Vec<u8> {
        match &self.replica {
            None => {
                let dir: Arc<dyn Dir> = Arc::new(MemDir::new());
                self.replica = Some(Replica::create(dir, log).unwrap());
            }
            Some(r) => {
                r.apply(log).unwrap();
            }
        }
        self.image()
    }

    fn replica(&self) -> &Replica {
        self.replica.as_ref().unwrap()
    }

    fn image(&self) -> Vec<u8> {
        let r = self.replica();
        let mut b = vec![0u8; r.status().geometry.size() as usize];
        r.read_at(&mut b, 0).unwrap();
        b
    }
}

/// Ships every log pending in `spool` to `sec`; the image of the last.
fn ship(spool: &Spool, sec: &mut Secondary) -> Option<Vec<u8>> {
    let mut image = None;
    while let Some(l) = spool.next_to_ship() {
        let f = spool.open_log(l.point.sequence).unwrap();
        let mut b = vec![0u8; l.bytes as usize];
        f.read_at(&mut b, 0).unwrap();
        let log = MappedLog::from_bytes(b, &l.name, &ReadOptions::default()).unwrap();
        image = Some(sec.take(&log));
        spool.ack(l.point.sequence, &l.point.digest).unwrap();
    }
    image
}

/// The run every way of guarding shares: writers start, `cycle` cuts and
/// ships one point to `secs` and returns its sequence and images (one per
/// disk); each point is checked, the last [`KEEP`] through views at the
/// end, and the final point (writers stopped) must equal the disks.
fn run(
    name: &str,
    layout: Layout,
    w: &dyn Guarded,
    secs: &[Mutex<Secondary>],
    mut cycle: impl FnMut() -> (u64, Vec<Vec<u8>>),
    disks: impl Fn() -> Vec<Vec<u8>>,
) {
    let h = History::new();
    let stop = AtomicBool::new(false);
    let mut checker = Checker::new(layout);
    let mut kept: BTreeMap<u64, Vec<Vec<u8>>> = BTreeMap::new();
    let n = cycles();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (h, stop) = (&h, &stop);
            s.spawn(move || writer(t, layout, w, h, stop));
        }
        let _stop = StopOnDrop(&stop);
        for i in 1..=n {
            h.allowed.fetch_add(BURST, Ordering::Release);
            let (seq, images) = cycle();
            if let Err(e) = checker.check(&images, &h) {
                panic!("{name}: cycle {i}, point {seq}: {e}");
            }
            kept.insert(seq, images);
            if i % 3 == 0 {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            if i % KEEP as u64 == 0 {
                let keep = RetentionPolicy {
                    keep_last: KEEP,
                    ..RetentionPolicy::default()
                };
                for s in secs {
                    s.lock().replica().prune(&keep, 0).unwrap();
                }
                while kept.len() > KEEP {
                    kept.pop_first();
                }
            }
        }
    });
    let writes: usize = h.threads.iter().map(|t| t.lock().len()).sum();
    assert!(
        writes as u64 >= THREADS * n,
        "{name}: too few writes ({writes})"
    );
    // Every retained point, read back through a view, is what the replica
    // showed when it was new.
    for (seq, images) in &kept {
        for (s, want) in secs.iter().zip(images) {
            let v = s.lock().replica().view(*seq).unwrap();
            let mut b = vec![0u8; want.len()];
            v.read_at(&mut b, 0).unwrap();
            assert!(&b == want, "{name}: point {seq} through a view differs");
        }
    }
    // Writers stopped: the last point is the disks.
    let (seq, images) = cycle();
    checker.check(&images, &h).unwrap();
    assert!(
        images == disks(),
        "{name}: the final point {seq} is not the disk"
    );
}

fn writer_options() -> WriterOptions {
    WriterOptions {
        record_bytes: 64 << 10,
        threads: 1,
    }
}

fn id(n: u8) -> DiskId {
    DiskId([n; 16])
}

fn spool(n: u8, g: Geometry) -> Spool {
    Spool::create(
        Arc::new(MemDir::new()),
        id(n),
        ChainPoint::start(1, g),
        1 << 30,
    )
    .unwrap()
}

/// Writes through a pipeline's write guards.
struct Guards<'a, T: Tracking>(Vec<(&'a Pipeline<T>, Arc<MemStorage>)>);

impl<T: Tracking> Guarded for Guards<'_, T> {
    fn write(&self, disk: usize, offset: u64, data: &[u8]) {
        let (p, d) = &self.0[disk];
        let guard = p.primary().write_guard(offset, data.len() as u64).unwrap();
        d.write_at(data, offset).unwrap();
        drop(guard);
    }
}

/// One disk through `tracking`: the run above.
fn one_disk<T: Tracking>(name: &str, tracking: T) {
    let layout = Layout { disks: 1 };
    let g = layout.geometry();
    let disk = Arc::new(MemStorage::zeroed(g.size()).unwrap());
    let p = Pipeline::new(
        Primary::new(tracking, disk.clone()),
        spool(1, g),
        writer_options(),
    )
    .unwrap();
    one_pipeline(name, &p, disk);
}

fn one_pipeline<T: Tracking>(name: &str, p: &Pipeline<T>, disk: Arc<MemStorage>) {
    let layout = Layout { disks: 1 };
    p.initial_sync(writer_options().into()).unwrap();
    let secs = [Mutex::new(Secondary::new())];
    ship(p.spool(), &mut secs[0].lock()).unwrap();
    run(
        name,
        layout,
        &Guards(vec![(p, disk.clone())]),
        &secs,
        || {
            let r = p.cycle(&CycleOptions::default()).unwrap();
            let image = ship(p.spool(), &mut secs[0].lock()).unwrap();
            (r.summary.header.sequence, vec![image])
        },
        || vec![disk.to_vec()],
    );
}

#[test]
fn in_memory_tracker_points_are_one_instant() {
    one_disk("memory", Tracker::new(Layout { disks: 1 }.geometry()));
}

#[test]
fn persistent_tracker_points_are_one_instant() {
    let g = Layout { disks: 1 }.geometry();
    let t =
        PersistentTracker::create_in(Arc::new(MemDir::new()), "t.brt", id(1), g, 1 << 20).unwrap();
    one_disk("persistent", t);
}

#[test]
fn any_tracker_points_are_one_instant() {
    let g = Layout { disks: 1 }.geometry();
    let disk = Arc::new(MemStorage::zeroed(g.size()).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let p: Pipeline<AnyTracker> = Pipeline::builder(disk.clone(), Arc::new(MemDir::new()))
        .tracker_file(dir.path().join("t.brt"))
        .writer(writer_options())
        .create(id(1), 1)
        .unwrap();
    assert!(matches!(p.primary().tracking(), AnyTracker::File(_)));
    one_pipeline("AnyTracker", &p, disk);
}

#[test]
fn group_points_are_one_instant_over_both_disks() {
    let layout = Layout { disks: 2 };
    let g = layout.geometry();
    let disks: Vec<Arc<MemStorage>> = (0..2)
        .map(|_| Arc::new(MemStorage::zeroed(g.size()).unwrap()))
        .collect();
    let pipelines: Vec<Pipeline> = (0..2u8)
        .map(|i| {
            let mut p = Pipeline::new(
                Primary::new(Tracker::new(g), disks[i as usize].clone()),
                spool(i + 1, g),
                writer_options(),
            )
            .unwrap();
            p.join_group();
            p.initial_sync(writer_options().into()).unwrap();
            p
        })
        .collect();
    let secs: Vec<Mutex<Secondary>> = (0..2).map(|_| Mutex::new(Secondary::new())).collect();
    for (p, s) in pipelines.iter().zip(&secs) {
        ship(p.spool(), &mut s.lock()).unwrap();
    }
    let group = ConsistencyGroup::new(pipelines.iter().collect()).unwrap();
    let guards = Guards(
        pipelines
            .iter()
            .zip(&disks)
            .map(|(p, d)| (p, d.clone()))
            .collect(),
    );
    run(
        "group",
        layout,
        &guards,
        &secs,
        || {
            let reports = group.cycle(&CycleOptions::default()).unwrap();
            let images = pipelines
                .iter()
                .zip(&secs)
                .map(|(p, s)| ship(p.spool(), &mut s.lock()).unwrap())
                .collect();
            (reports[0].summary.header.sequence, images)
        },
        || disks.iter().map(|d| d.to_vec()).collect(),
    );
}

/// The C ABI: writes begun and ended by `blockrep_pipeline_write_begin` and
/// `_end` around a `pwrite` to the image file, cycles by
/// `blockrep_pipeline_cycle`, logs read by `blockrep_pipeline_log_read` and
/// acknowledged by `blockrep_pipeline_ack`.
mod c_abi {
    use super::*;
    use blockrep::ffi::*;
    use std::ffi::CString;

    struct Handle(*mut blockrep_pipeline);
    // SAFETY: the C ABI documents the pipeline handle's begin, end, cycle,
    // log and ack calls as thread-safe.
    unsafe impl Sync for Handle {}
    // SAFETY: as above; the handle is freed once, by its owner.
    unsafe impl Send for Handle {}

    /// Asserts success, with the thread's last error otherwise.
    fn ok(s: blockrep_status) {
        if s != blockrep_status::BLOCKREP_STATUS_OK {
            let mut buf = [0 as std::ffi::c_char; 512];
            let mut n = 0;
            // SAFETY: `buf` holds 512 writable bytes, `n` is writable.
            unsafe { blockrep_last_error(buf.as_mut_ptr(), buf.len(), &raw mut n) };
            // SAFETY: the call wrote a NUL-terminated string.
            let msg = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
            panic!("{s:?}: {}", msg.to_string_lossy());
        }
    }

    struct CWrites<'a> {
        p: &'a Handle,
        disk: FileStorage,
    }

    impl Guarded for CWrites<'_> {
        fn write(&self, _disk: usize, offset: u64, data: &[u8]) {
            let len = data.len() as u64;
            // SAFETY: the handle is live for the whole run.
            ok(unsafe { blockrep_pipeline_write_begin(self.p.0, offset, len) });
            self.disk.write_at(data, offset).unwrap();
            // SAFETY: as above.
            ok(unsafe { blockrep_pipeline_write_end(self.p.0, offset, len) });
        }
    }

    /// Ships every pending log through the C calls; the last image.
    fn ship_c(p: &Handle, sec: &mut Secondary) -> Option<(u64, Vec<u8>)> {
        let mut last = None;
        loop {
            let mut l = std::mem::MaybeUninit::<blockrep_spooled_log>::zeroed();
            let mut found = 0u32;
            // SAFETY: live handle, writable outputs.
            ok(unsafe { blockrep_pipeline_next_log(p.0, l.as_mut_ptr(), &raw mut found) });
            if found == 0 {
                return last;
            }
            // SAFETY: written by the call above (found is 1).
            let l = unsafe { l.assume_init() };
            let mut b = vec![0u8; l.bytes as usize];
            // SAFETY: `b` holds `l.bytes` writable bytes.
            ok(unsafe { blockrep_pipeline_log_read(p.0, l.sequence, 0, b.as_mut_ptr(), b.len()) });
            let log = MappedLog::from_bytes(b, "c", &ReadOptions::default()).unwrap();
            let image = sec.take(&log);
            // SAFETY: the digest is 32 readable bytes.
            ok(unsafe { blockrep_pipeline_ack(p.0, l.sequence, l.digest.as_ptr()) });
            last = Some((l.sequence, image));
        }
    }

    #[test]
    fn c_abi_points_are_one_instant() {
        let layout = Layout { disks: 1 };
        let g = layout.geometry();
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        FileStorage::create(&image, g.size()).unwrap();
        let spool = dir.path().join("spool");
        std::fs::create_dir(&spool).unwrap();
        let c = |p: &std::path::Path| CString::new(p.to_str().unwrap()).unwrap();
        let (ci, cs, ct) = (c(&image), c(&spool), c(&dir.path().join("t.brt")));
        let disk_id = blockrep_disk_id { bytes: [9; 16] };
        let mut raw = std::ptr::null_mut();
        // SAFETY: NUL-terminated paths, readable id, writable output.
        ok(unsafe {
            blockrep_pipeline_create(
                ci.as_ptr(),
                cs.as_ptr(),
                &raw const disk_id,
                1,
                BS as u32,
                1 << 30,
                ct.as_ptr(),
                &raw mut raw,
            )
        });
        let p = Handle(raw);
        // SAFETY: live handle; the output may be null.
        ok(unsafe { blockrep_pipeline_initial_sync(p.0, std::ptr::null_mut()) });
        let secs = [Mutex::new(Secondary::new())];
        ship_c(&p, &mut secs[0].lock()).unwrap();
        let writes = CWrites {
            p: &p,
            disk: FileStorage::open(&image).unwrap(),
        };
        run(
            "C ABI",
            layout,
            &writes,
            &secs,
            || {
                // SAFETY: live handle; null label and output allowed.
                ok(unsafe {
                    blockrep_pipeline_cycle(
                        p.0,
                        blockrep_consistency::BLOCKREP_CONSISTENCY_CRASH as u32,
                        std::ptr::null(),
                        std::ptr::null_mut(),
                    )
                });
                let (seq, image) = ship_c(&p, &mut secs[0].lock()).unwrap();
                (seq, vec![image])
            },
            || vec![std::fs::read(&image).unwrap()],
        );
        // SAFETY: live handle, freed once.
        ok(unsafe { blockrep_pipeline_free(p.0) });
    }
}
