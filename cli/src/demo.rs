//! `blockrep demo`: blockrep's main job end to end on a real image file.

use super::{human, now_ns, Progress};
use blockrep::failover::{test_failover, Failover};
use blockrep::io::{FileStorage, FsDir, Storage};
use blockrep::log::{MappedLog, ReadOptions};
use blockrep::net::{Shipper, ShipperConfig, TlsFiles};
use blockrep::replica::{Replica, RetentionPolicy};
use blockrep::source::{ChainPoint, CycleOptions, Pipeline, Primary, Spool, Tracking};
use blockrep::tracker::PersistentTracker;
use blockrep::{DiskId, Error, Geometry, Result, Tracker};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BS: u64 = 4096;
const ID: DiskId = DiskId(*b"blockrep-demo-01");

/// Options of the demo.
pub struct DemoOptions {
    pub size: u64,
    pub seconds: u64,
    pub dir: Option<PathBuf>,
}

#[derive(Default)]
struct Stats {
    cycles: u64,
    blocks: u64,
    shipped: u64,
    rpo_max_ns: u64,
    rpo_sum_ns: u64,
    rpo_n: u64,
    checks: Vec<(String, bool)>,
    initial: Duration,
    delta_time: Duration,
}

impl Stats {
    /// One sample of the achieved RPO.
    fn rpo(&mut self, ns: u64) {
        self.rpo_max_ns = self.rpo_max_ns.max(ns);
        self.rpo_sum_ns += ns;
        self.rpo_n += 1;
    }
}

/// A small deterministic generator.
pub(super) struct Rng(pub(super) u64);
impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub(super) fn fill(&mut self, b: &mut [u8]) {
        for c in b.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
    /// Disk-like content: about 40 % zero blocks, 30 % text, 30 % random.
    pub(super) fn block(&mut self, b: &mut [u8]) {
        match self.next() % 10 {
            0..=3 => b.fill(0),
            4..=6 => {
                const WORDS: [&[u8]; 6] =
                    [b"replica ", b"block ", b"the ", b"disk\n", b"log ", b"of "];
                let mut at = 0;
                while at < b.len() {
                    let w = WORDS[(self.next() % 6) as usize];
                    let n = w.len().min(b.len() - at);
                    b[at..at + n].copy_from_slice(&w[..n]);
                    at += n;
                }
            }
            _ => self.fill(b),
        }
    }
}

/// The transport: every unshipped log to the replica in `rdir` (created
/// from the full log), acknowledged; RPO sampled at each acknowledgement.
fn ship<T: Tracking>(
    p: &Pipeline<T>,
    rdir: &Path,
    replica: &mut Option<Replica>,
    stats: &mut Stats,
) -> Result<()> {
    while let Some(l) = p.spool().next_to_ship() {
        let path = l.path.clone().expect("spool on a file system");
        let log = MappedLog::open(&path, &ReadOptions::default())?;
        match replica {
            None => *replica = Some(Replica::create(Arc::new(FsDir::new(rdir)?), &log)?),
            Some(r) => {
                r.apply(&log)?;
                stats.shipped += l.bytes;
            }
        }
        p.spool().ack(l.point.sequence, &l.point.digest)?;
        stats.rpo(now_ns().saturating_sub(l.point.created_ns));
    }
    Ok(())
}

/// Compares two storages of `size` bytes chunk by chunk.
pub(super) fn same(a: &dyn Storage, b: &dyn Storage, size: u64) -> Result<bool> {
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut off = 0;
    while off < size {
        let n = (size - off).min(1 << 20) as usize;
        a.read_at(&mut x[..n], off)?;
        b.read_at(&mut y[..n], off)?;
        if x[..n] != y[..n] {
            return Ok(false);
        }
        off += n as u64;
    }
    Ok(true)
}

/// `qemu-img compare`, when installed.
fn qemu_compare(a: &Path, b: &Path) -> Option<bool> {
    std::process::Command::new("qemu-img")
        .args(["compare", "-q", "-f", "raw", "-F", "raw"])
        .arg(a)
        .arg(b)
        .status()
        .ok()
        .map(|s| s.success())
}

fn check(stats: &mut Stats, name: &str, ok: bool) -> Result<()> {
    eprintln!("  {} {name}", if ok { "ok  " } else { "FAIL" });
    stats.checks.push((name.to_owned(), ok));
    if ok {
        Ok(())
    } else {
        Err(Error::mismatch(format!("check failed: {name}")))
    }
}

fn check_equal(stats: &mut Stats, name: &str, a: &Path, b: &Path, size: u64) -> Result<()> {
    let eq = same(
        &FileStorage::open_read_only(a)?,
        &FileStorage::open_read_only(b)?,
        size,
    )?;
    check(stats, &format!("{name}: byte for byte"), eq)?;
    if let Some(q) = qemu_compare(a, b) {
        check(stats, &format!("{name}: qemu-img compare"), q)?;
    }
    Ok(())
}

/// Guest-like writers on `disk` through `p`'s guards until `stop`:
/// random 4 KiB writes, sequential 64 KiB runs, zero writes.
fn writers<T: Tracking>(
    p: &Pipeline<T>,
    disk: &dyn Storage,
    stop: &AtomicBool,
    writes: &AtomicU64,
) {
    let size = p.primary().tracker().geometry().size();
    std::thread::scope(|s| {
        for t in 0..2u64 {
            s.spawn(move || {
                let mut rng = Rng(0x9e37_79b9 ^ ((t + 1) * 0x1234_5678) ^ now_ns());
                let mut buf = vec![0u8; 64 << 10];
                while !stop.load(Ordering::Relaxed) {
                    let kind = rng.next() % 10;
                    let (len, zero) = match kind {
                        0..=6 => (BS, false),
                        7..=8 => (64 << 10, false),
                        _ => (16 << 10, true),
                    };
                    let off = rng.next() % (size / BS - len / BS) * BS;
                    let b = &mut buf[..len as usize];
                    if zero {
                        b.fill(0);
                    } else {
                        for c in b.chunks_mut(BS as usize) {
                            rng.block(c);
                        }
                    }
                    let g = if zero {
                        p.primary().zero_guard(off, len)
                    } else {
                        p.primary().write_guard(off, len)
                    };
                    let Ok(g) = g else { return };
                    if disk.write_at(b, off).is_err() {
                        return;
                    }
                    drop(g);
                    writes.fetch_add(1, Ordering::Relaxed);
                    // A guest that also computes.
                    std::thread::sleep(Duration::from_micros(200));
                }
            });
        }
    });
}

/// How logs reach the replica.
enum Link<'a> {
    /// Through the replica server, by the shipper on its own thread.
    Server(&'a Shipper),
    /// Applied here to the replica in a directory (the legs after a
    /// failover, whose replicas are adopted disks).
    Local {
        rdir: &'a Path,
        replica: &'a mut Option<Replica>,
    },
}

impl Link<'_> {
    /// After a cycle: applies and prunes (here), or samples the RPO the
    /// server acknowledged (the shipper ships meanwhile).
    fn after_cycle<T: Tracking>(&mut self, p: &Pipeline<T>, stats: &mut Stats) -> Result<()> {
        match self {
            Link::Server(s) => {
                if let Some(rpo) = s.status().rpo_ns {
                    stats.rpo(rpo);
                }
                Ok(())
            }
            Link::Local { rdir, replica } => {
                ship(p, rdir, replica, stats)?;
                if let Some(rep) = replica {
                    rep.prune(&retention(), now_ns())?;
                }
                Ok(())
            }
        }
    }

    /// Everything cut so far reaches the replica.
    fn drain<T: Tracking>(&mut self, p: &Pipeline<T>, stats: &mut Stats) -> Result<()> {
        match self {
            Link::Server(s) => {
                let deadline = Instant::now() + Duration::from_secs(300);
                while p.status().pending_logs > 0 {
                    if Instant::now() > deadline {
                        return Err(Error::new(
                            blockrep::ErrorKind::Io,
                            format!("the logs did not reach the server: {:?}", s.status()),
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                if let Some(rpo) = s.status().rpo_ns {
                    stats.rpo(rpo);
                }
                Ok(())
            }
            Link::Local { rdir, replica } => ship(p, rdir, replica, stats),
        }
    }
}

/// The demo's retention: the last 8 points, and the last 2 app-consistent.
fn retention() -> RetentionPolicy {
    RetentionPolicy {
        keep_last: 8,
        keep_app_last: 2,
        ..RetentionPolicy::default()
    }
}

/// Runs writers for `secs` while cycling every 250 ms and shipping.
fn run_writes<T: Tracking>(
    p: &Pipeline<T>,
    disk: &dyn Storage,
    link: &mut Link<'_>,
    stats: &mut Stats,
    secs: u64,
) -> Result<()> {
    let stop = AtomicBool::new(false);
    let writes = AtomicU64::new(0);
    let bar = Progress::new("writing and replicating", secs * 1000);
    let start = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        s.spawn(|| writers(p, disk, &stop, &writes));
        let result = (|| {
            while start.elapsed() < Duration::from_secs(secs) {
                std::thread::sleep(Duration::from_millis(250));
                let app = stats.cycles % 4 == 3;
                let opts = if app {
                    CycleOptions::app_consistent(format!("demo {}", stats.cycles))
                } else {
                    CycleOptions::default()
                };
                let t = Instant::now();
                let r = p.cycle(&opts)?;
                stats.cycles += 1;
                stats.blocks += r.blocks;
                link.after_cycle(p, stats)?;
                stats.delta_time += t.elapsed();
                bar.set(start.elapsed().as_millis() as u64);
            }
            Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        result
    })?;
    bar.done();
    // The writers stopped: a last cycle ships everything.
    let r = p.cycle(&CycleOptions::default())?;
    stats.cycles += 1;
    stats.blocks += r.blocks;
    link.drain(p, stats)?;
    eprintln!(
        "  {} guest writes, {} cycles so far",
        writes.load(Ordering::Relaxed),
        stats.cycles
    );
    Ok(())
}

/// Writes an image of `size` bytes with disk-like content, sparse where
/// it holds zeros.
pub(super) fn make_image(path: &Path, size: u64) -> Result<()> {
    let f = FileStorage::create(path, size)?;
    let bar = Progress::new("making the image", size);
    let mut rng = Rng(42);
    let mut chunk = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < size {
        let n = (size - off).min(1 << 20) as usize;
        // Runs of 1 to 16 blocks of one kind, so zeros come in extents.
        let mut b = 0;
        while b < n {
            let run = ((1 + rng.next() % 16) * BS) as usize;
            let end = (b + run).min(n);
            let mut first = vec![0u8; BS as usize];
            rng.block(&mut first);
            for c in chunk[b..end].chunks_mut(BS as usize) {
                c.copy_from_slice(&first[..c.len()]);
                if first.iter().any(|&x| x != 0) {
                    rng.fill(&mut c[..8]); // not identical blocks
                }
            }
            b = end;
        }
        for (i, c) in chunk[..n].chunks(BS as usize).enumerate() {
            if c.iter().any(|&x| x != 0) {
                f.write_at(c, off + (i as u64) * BS)?;
            }
        }
        off += n as u64;
        bar.set(off);
    }
    f.sync()?;
    bar.done();
    Ok(())
}

/// The whole demo; prints the summary table at the end.
pub fn run(o: DemoOptions) -> Result<()> {
    let work = WorkDir::new(o.dir.as_deref(), "demo")?;
    let dir = work.path().to_path_buf();
    let size = o.size / BS * BS;
    let g = Geometry::new(size, BS as u32)?;
    let image = dir.join("primary.img");
    let mut stats = Stats::default();
    eprintln!(
        "blockrep demo in {} ({} disk, {} s of writes)",
        dir.display(),
        human(size),
        o.seconds
    );

    eprintln!("1. a disk image with realistic content");
    make_image(&image, size)?;

    eprintln!("2. the secondary site: blockrep serve as its own process, over mutual TLS");
    let mut site = SecondarySite::start(&dir)?;
    eprintln!(
        "  listening on {}; certificates in {}",
        site.addr,
        dir.join("pki").display()
    );

    eprintln!("3. initial replication across it");
    let disk: Arc<dyn Storage> = Arc::new(FileStorage::open(&image)?);
    let tracker = PersistentTracker::create(
        dir.join("tracker"),
        ID,
        g,
        blockrep::tracker::INTENT_REGION_DEFAULT,
    )?;
    let start = ChainPoint::start(1, g);
    let spool = Spool::create(Arc::new(FsDir::new(dir.join("spool"))?), ID, start, 1 << 30)?;
    let pa = Pipeline::new(
        Primary::new(tracker, disk.clone()),
        spool,
        Default::default(),
    )?;
    let bar = Progress::new("initial sync", size);
    let t = Instant::now();
    let mut progress = |p: blockrep::source::Progress| bar.set(p.done);
    pa.initial_sync(blockrep::source::TransferOptions {
        progress: Some(&mut progress),
        ..Default::default()
    })?;
    bar.done();
    let shipper = Shipper::start(pa.shared_spool(), site.shipper_config())?;
    let mut link = Link::Server(&shipper);
    link.drain(&pa, &mut stats)?;
    stats.initial = t.elapsed();
    let rdir = site.root.join(ID.to_string()).join("replica");
    check_equal(
        &mut stats,
        "replica on the server after initial sync",
        &image,
        &rdir.join("image"),
        size,
    )?;

    eprintln!("4. guest writes while cycles ship logs to the server");
    let initial_bytes = shipper.status().bytes_sent;
    run_writes(&pa, &*disk, &mut link, &mut stats, o.seconds)?;
    stats.shipped += shipper.status().bytes_sent - initial_bytes;
    check_equal(
        &mut stats,
        "replica on the server after delta cycles",
        &image,
        &rdir.join("image"),
        size,
    )?;
    let s = shipper.status();
    eprintln!(
        "  shipper: {} logs, {} sent, {} connection(s), last error: {}",
        s.logs_shipped,
        human(s.bytes_sent),
        s.connections,
        s.last_error.as_deref().unwrap_or("none")
    );
    shipper.stop();
    // The secondary site's operator takes over the replica: the server
    // stops (SIGTERM: a clean shutdown) and releases its directory.
    site.stop()?;
    let rep_b = Replica::open(Arc::new(FsDir::new(&rdir)?))?;
    rep_b.prune(&retention(), now_ns())?;
    let points = rep_b.points();
    eprintln!(
        "  server stopped; {} retention points kept (last 8, 2 app-consistent)",
        points.len()
    );

    eprintln!("5. test failover of an older point on the secondary site");
    let older = points[points.len() / 2].sequence;
    let overlay = Arc::new(FileStorage::create(dir.join("test-overlay"), 0)?);
    let test = test_failover(&rep_b, Some(older), overlay)?;
    let mut pattern = vec![0u8; 1 << 20];
    Rng(5).fill(&mut pattern);
    test.write_at(&pattern, 0)?;
    let mut back = vec![0u8; 1 << 20];
    test.read_at(&mut back, 0)?;
    check(
        &mut stats,
        "test failover reads its own writes",
        back == pattern,
    )?;
    drop(test);
    std::fs::remove_file(dir.join("test-overlay")).ok();
    check_equal(
        &mut stats,
        "replica untouched by the test failover",
        &image,
        &rdir.join("image"),
        size,
    )?;

    eprintln!("6. planned failover to the replica, writes there, reverse replication");
    let fo_b = Failover::promote(rep_b.clone(), None)?;
    let disk_b = fo_b.disk();
    check(
        &mut stats,
        "promoted disk equals the primary",
        same(&*disk_b, &*disk, size)?,
    )?;
    let spool_b = Spool::create(
        Arc::new(FsDir::new(dir.join("spool-b"))?),
        ID,
        fo_b.chain_point()?,
        1 << 30,
    )?;
    let pb = Pipeline::new(
        Primary::new(Tracker::new(g), disk_b.clone()),
        spool_b,
        Default::default(),
    )?;
    let committed = fo_b.commit()?;
    let dir_a = dir.join("replica-a");
    let mut rep_a;
    {
        // The old primary's writes stopped; its divergence is what it
        // still tracks or holds unshipped.
        let diverged = pa.divergence()?;
        drop(pa);
        run_writes_on(&pb, &*disk_b, o.seconds.div_ceil(3));
        let r = pb.reverse_sync(&diverged.union(&committed.divergence()))?;
        eprintln!("  reverse replication sends {} blocks", r.blocks);
        let adopted = Replica::adopt(
            Arc::new(FsDir::new(&dir_a)?),
            disk.clone(),
            fo_b.adopt_at()?,
        )?;
        rep_a = Some(adopted);
        ship(&pb, &dir_a, &mut rep_a, &mut stats)?;
    }
    check_equal(
        &mut stats,
        "old primary equals the new one",
        &image,
        &rdir.join("image"),
        size,
    )?;

    eprintln!("7. failback to the original primary, then replication again");
    pb.cycle(&CycleOptions::default())?;
    ship(&pb, &dir_a, &mut rep_a, &mut stats)?;
    let rep_a = rep_a.expect("adopted");
    let fo_a = Failover::promote(rep_a, None)?;
    let disk_a2 = fo_a.disk();
    let spool_a2 = Spool::create(
        Arc::new(FsDir::new(dir.join("spool-a2"))?),
        ID,
        fo_a.chain_point()?,
        1 << 30,
    )?;
    let pa2 = Pipeline::new(
        Primary::new(Tracker::new(g), disk_a2.clone()),
        spool_a2,
        Default::default(),
    )?;
    let committed = fo_a.commit()?;
    let diverged = pb.divergence()?;
    drop(pb);
    let r = pa2.reverse_sync(&diverged.union(&committed.divergence()))?;
    eprintln!("  failback resync sends {} blocks", r.blocks);
    let dir_b2 = dir.join("replica-b2");
    let image_b: Arc<dyn Storage> = Arc::new(FileStorage::open(rdir.join("image"))?);
    let mut rep_b2 = Some(Replica::adopt(
        Arc::new(FsDir::new(&dir_b2)?),
        image_b,
        fo_a.adopt_at()?,
    )?);
    ship(&pa2, &dir_b2, &mut rep_b2, &mut stats)?;
    run_writes(
        &pa2,
        &*disk_a2,
        &mut Link::Local {
            rdir: &dir_b2,
            replica: &mut rep_b2,
        },
        &mut stats,
        o.seconds.div_ceil(3),
    )?;
    check_equal(
        &mut stats,
        "replica after failback",
        &image,
        &rdir.join("image"),
        size,
    )?;

    summary(&stats, size);
    Ok(())
}

/// Writes on a new primary without shipping (its replica is not set up
/// yet): the reverse replication carries them.
fn run_writes_on<T: Tracking>(p: &Pipeline<T>, disk: &dyn Storage, secs: u64) {
    let stop = AtomicBool::new(false);
    let writes = AtomicU64::new(0);
    std::thread::scope(|s| {
        s.spawn(|| writers(p, disk, &stop, &writes));
        std::thread::sleep(Duration::from_secs(secs));
        stop.store(true, Ordering::Relaxed);
    });
    eprintln!(
        "  {} guest writes on the new primary",
        writes.load(Ordering::Relaxed)
    );
}

fn summary(s: &Stats, size: u64) {
    let dirty = s.blocks * BS;
    let ratio = if dirty > 0 {
        s.shipped as f64 / dirty as f64
    } else {
        0.0
    };
    let rpo_avg = s.rpo_sum_ns.checked_div(s.rpo_n).unwrap_or(0);
    let mbps = |bytes: u64, d: Duration| bytes as f64 / 1e6 / d.as_secs_f64().max(1e-9);
    println!();
    println!("| figure | value |");
    println!("| --- | --- |");
    println!("| disk | {} |", human(size));
    println!(
        "| initial replication | {:.1} s, {:.0} MB/s |",
        s.initial.as_secs_f64(),
        mbps(size, s.initial)
    );
    println!("| cycles | {} |", s.cycles);
    println!(
        "| blocks dirtied (shipped by cycles) | {} ({}) |",
        s.blocks,
        human(dirty)
    );
    println!(
        "| bytes shipped in delta logs | {} ({ratio:.2} of dirty bytes) |",
        human(s.shipped)
    );
    println!(
        "| delta cycles (cut, read, log; and apply, where local) | {:.0} MB/s of dirty data |",
        mbps(dirty, s.delta_time)
    );
    println!(
        "| achieved RPO (acknowledged point's age, sampled at each cycle) | avg {:.0} ms, max {:.0} ms |",
        rpo_avg as f64 / 1e6,
        s.rpo_max_ns as f64 / 1e6
    );
    let passed = s.checks.iter().filter(|c| c.1).count();
    println!("| checks passed | {passed} of {} |", s.checks.len());
    for (name, ok) in &s.checks {
        println!(
            "| check: {name} | {} |",
            if *ok { "passed" } else { "FAILED" }
        );
    }
}

/// Where the demo or the bench works: the directory asked for (kept), or
/// a temporary one removed at the end.
pub(super) struct WorkDir {
    path: PathBuf,
    remove: bool,
}

impl WorkDir {
    pub(super) fn new(keep: Option<&Path>, what: &str) -> Result<Self> {
        let (path, remove) = match keep {
            Some(d) => (d.to_path_buf(), false),
            None => (
                std::env::temp_dir().join(format!("blockrep-{what}-{}", std::process::id())),
                true,
            ),
        };
        std::fs::create_dir_all(&path)
            .map_err(|e| Error::io("create directory", e).with_path(&path))?;
        Ok(WorkDir { path, remove })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// `blockrep serve --config CONFIG` as a child process (this program),
/// its standard error to `stderr`; returns once it listens, with the
/// address it printed.
pub(super) fn spawn_serve(
    config: &Path,
    stderr: std::process::Stdio,
) -> Result<(std::process::Child, std::net::SocketAddr)> {
    use std::io::BufRead;
    let exe = std::env::current_exe().map_err(|e| Error::io("find this program", e))?;
    let mut child = std::process::Command::new(exe)
        .args(["serve", "--config"])
        .arg(config)
        .stdout(std::process::Stdio::piped())
        .stderr(stderr)
        .spawn()
        .map_err(|e| Error::io("start blockrep serve", e))?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        std::io::BufReader::new(out)
            .read_line(&mut line)
            .map_err(|e| Error::io("read the server's address", e))?;
    }
    match line.split_whitespace().find_map(|w| w.parse().ok()) {
        Some(addr) => Ok((child, addr)),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            Err(Error::invalid(format!(
                "the server did not start: {line:?}"
            )))
        }
    }
}

/// The secondary site: `blockrep serve` run as its own process on
/// loopback, with certificates `blockrep certs` makes.
struct SecondarySite {
    server: Option<std::process::Child>,
    addr: std::net::SocketAddr,
    root: PathBuf,
    pki: PathBuf,
}

impl SecondarySite {
    const PRIMARY: &'static str = "primary.site-a.demo";

    fn start(dir: &Path) -> Result<SecondarySite> {
        let pki = dir.join("pki");
        crate::remote::certs(&pki, &["localhost".into()], &[Self::PRIMARY.into()], 30)?;
        let root = dir.join("site-b");
        let config = dir.join("serve.toml");
        let text = format!(
            "listen = \"127.0.0.1:0\"\ncertificate = \"{p}/localhost.crt\"\n\
             key = \"{p}/localhost.key\"\nclient_ca = \"{p}/ca.crt\"\n\
             [[primary]]\nidentity = \"*.site-a.demo\"\nroot = \"{}\"\n",
            root.display(),
            p = pki.display()
        );
        std::fs::write(&config, text)
            .map_err(|e| Error::io("write the configuration", e).with_path(&config))?;
        let log = std::fs::File::create(dir.join("serve.log"))
            .map_err(|e| Error::io("create the server's log", e))?;
        let (child, addr) = spawn_serve(&config, log.into())?;
        Ok(SecondarySite {
            server: Some(child),
            addr,
            root,
            pki,
        })
    }

    fn shipper_config(&self) -> ShipperConfig {
        let mut c = ShipperConfig::new(
            self.addr,
            "localhost",
            TlsFiles {
                cert: self.pki.join(format!("{}.crt", Self::PRIMARY)),
                key: self.pki.join(format!("{}.key", Self::PRIMARY)),
                ca: self.pki.join("ca.crt"),
            },
        );
        c.retry_min = Duration::from_millis(50);
        c.retry_max = Duration::from_secs(2);
        c
    }

    /// SIGTERM, and waits for the clean exit.
    fn stop(&mut self) -> Result<()> {
        let Some(mut c) = self.server.take() else {
            return Ok(());
        };
        let pid = libc::pid_t::try_from(c.id()).unwrap_or(0);
        // SAFETY: signals our own child, which has not been reaped.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let st = c.wait().map_err(|e| Error::io("wait for the server", e))?;
        if st.success() {
            Ok(())
        } else {
            Err(Error::invalid(format!("the server exited with {st}")))
        }
    }
}

impl Drop for SecondarySite {
    fn drop(&mut self) {
        if let Some(mut c) = self.server.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
