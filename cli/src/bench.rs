//! `blockrep bench`: blockrep's incremental cycle and initial replication
//! against the tools users run today, on one workload built here, every
//! result verified by comparison. One machine-readable line per figure
//! (`bench NAME seconds=S ...`), then a table.

use super::{human, now_ns};
use blockrep::io::{FileStorage, FsDir, Storage};
use blockrep::nbd::{NbdClient, NbdOptions};
use blockrep::replica::{Replica, RetentionPolicy};
use blockrep::source::{
    ChainPoint, CycleOptions, Pipeline, Primary, Source, Spool, TransferOptions,
};
use blockrep::{DiskId, Error, Geometry, Result, Tracker};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

pub(super) const BS: u64 = 4096;
const ID: DiskId = DiskId(*b"blockrep-bench-1");

/// Options of the harness.
pub struct BenchOptions {
    pub size: u64,
    pub dir: Option<PathBuf>,
    /// Repetitions of each timed step (the table gives medians).
    pub repeat: usize,
    /// Drop the page cache before every timed step (needs root).
    pub drop_caches: bool,
}

pub(super) fn run_cmd(c: &mut Command) -> Result<()> {
    let out = c
        .output()
        .map_err(|e| Error::io(format!("run {:?}", c.get_program()), e))?;
    if !out.status.success() {
        return Err(Error::new(
            blockrep::ErrorKind::Io,
            format!(
                "{:?} failed: {}",
                c.get_program(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(())
}

pub(super) fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok()
}

/// Times `f`, in seconds.
pub(super) fn timed(f: impl FnOnce() -> Result<()>) -> Result<f64> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_secs_f64())
}

pub(super) fn sync_file(p: &Path) -> Result<()> {
    FileStorage::open(p)?.sync()
}

pub(super) fn same_files(a: &Path, b: &Path, size: u64) -> Result<bool> {
    let (x, y) = (
        FileStorage::open_read_only(a)?,
        FileStorage::open_read_only(b)?,
    );
    Ok(y.len()? == size && super::demo::same(&x, &y, size)?)
}

pub(super) fn verify(what: &str, ok: bool) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::mismatch(format!(
            "{what}: the copy differs from the source"
        )))
    }
}

/// Prints the machine-readable line of one figure.
pub(super) fn line(name: &str, seconds: f64, extra: &str) {
    println!("bench {name} seconds={seconds:.4}{extra}");
}

/// Before every timed step: everything written so far on disk and, when
/// the bench may (as root), the page cache dropped, so no step pays for an
/// earlier one's writeback and both sides of a comparison start cold.
pub(super) struct Settle {
    drop_caches: bool,
}

impl Settle {
    pub(super) fn new(drop_caches: bool) -> Self {
        let drop_caches = drop_caches && Self::drop().is_ok();
        if !drop_caches {
            eprintln!(
                "  page cache kept between steps (dropping it needs root, \
                 or --keep-cache was given): figures move more"
            );
        }
        Settle { drop_caches }
    }

    fn drop() -> std::io::Result<()> {
        std::fs::write("/proc/sys/vm/drop_caches", "3")
    }

    /// Syncs everything, then drops the page cache if it may.
    pub(super) fn now(&self) -> Result<()> {
        // SAFETY: sync(2) takes no arguments and cannot fail.
        unsafe { libc::sync() };
        if self.drop_caches {
            Self::drop().map_err(|e| Error::io("drop the page cache", e))?;
        }
        Ok(())
    }
}

/// CPU seconds (user and system) this process and its waited-for children
/// have used so far.
pub(super) fn cpu_seconds() -> f64 {
    [libc::RUSAGE_SELF, libc::RUSAGE_CHILDREN]
        .into_iter()
        .map(|who| {
            // SAFETY: rusage is plain integers, for which all zeroes is a
            // value.
            let mut u: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: getrusage writes one rusage through the pointer, which
            // points to `u`, live and writable.
            if unsafe { libc::getrusage(who, &raw mut u) } != 0 {
                return 0.0;
            }
            let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 * 1e-6;
            t(u.ru_utime) + t(u.ru_stime)
        })
        .sum()
}

/// Times `f`: wall seconds and CPU seconds.
pub(super) fn timed_cpu(f: impl FnOnce() -> Result<()>) -> Result<(f64, f64)> {
    let c = cpu_seconds();
    let w = timed(f)?;
    Ok((w, cpu_seconds() - c))
}

/// The median of `v` (not empty), for every bench of the command.
pub(super) fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// "min..max" of some figures, for the spread beside a median.
pub(super) fn spread(v: &[f64]) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{lo:.3}..{hi:.3}")
}

/// One comparison, measured once per repetition: blockrep's figure and the
/// peer's, each pair taken in the same repetition.
struct Row {
    step: &'static str,
    peer: String,
    /// The most blockrep / peer may be (issue #17's targets).
    target: Option<f64>,
    unit: &'static str,
    runs: Vec<(f64, f64)>,
}

/// The comparisons of one bench run, in the order first measured.
#[derive(Default)]
struct Rows(Vec<Row>);

impl Rows {
    fn add(
        &mut self,
        step: &'static str,
        peer: &str,
        target: Option<f64>,
        blockrep: f64,
        other: f64,
    ) {
        self.add_in("s", step, peer, target, blockrep, other);
    }

    fn add_in(
        &mut self,
        unit: &'static str,
        step: &'static str,
        peer: &str,
        target: Option<f64>,
        blockrep: f64,
        other: f64,
    ) {
        let run = (blockrep, other);
        match self.0.iter_mut().find(|r| r.step == step && r.peer == peer) {
            Some(r) => r.runs.push(run),
            None => self.0.push(Row {
                step,
                peer: peer.to_string(),
                target,
                unit,
                runs: vec![run],
            }),
        }
    }

    /// The table: medians, the spread of the ratio over the repetitions,
    /// and each target met or missed.
    fn print(&self) {
        println!();
        println!(
            "| step | peer | blockrep | peer | blockrep / peer (median) | spread (min..max) | runs | target |"
        );
        println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
        for r in &self.0 {
            let ratios: Vec<f64> = r.runs.iter().map(|(b, p)| b / p).collect();
            let b: Vec<f64> = r.runs.iter().map(|x| x.0).collect();
            let p: Vec<f64> = r.runs.iter().map(|x| x.1).collect();
            let m = median(&ratios);
            let target = match r.target {
                Some(t) if m <= t => format!("<= {t}: met"),
                Some(t) => format!("<= {t}: **missed**"),
                None => "-".into(),
            };
            // Bytes whole, seconds to the millisecond.
            let shown = |v: f64| match r.unit {
                "B" => format!("{v:.0} B"),
                u => format!("{v:.3} {u}"),
            };
            println!(
                "| {} | {} | {} | {} | {m:.3} | {} | {} | {target} |",
                r.step,
                r.peer,
                shown(median(&b)),
                shown(median(&p)),
                spread(&ratios),
                r.runs.len(),
            );
        }
    }
}

/// The tools a comparison needs that are not installed, with the package
/// that brings each (Debian's names).
fn missing(tools: &[(&str, &str)]) -> Option<String> {
    let m: Vec<String> = tools
        .iter()
        .filter(|(t, _)| !have(t))
        .map(|(t, pkg)| format!("{t} (apt-get install {pkg})"))
        .collect();
    (!m.is_empty()).then(|| m.join(", "))
}

/// One cycle's dirty blocks: `pct` of the image's blocks, at random.
fn dirty_blocks(g: Geometry, pct: f64, rng: &mut u64) -> Vec<u64> {
    let n = ((g.block_count() as f64) * pct) as u64;
    let mut blocks: Vec<u64> = (0..n).map(|_| xorshift(rng) % g.block_count()).collect();
    blocks.sort_unstable();
    blocks.dedup();
    blocks
}

/// The benches' workload generator (xorshift64).
pub(super) fn xorshift(rng: &mut u64) -> u64 {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    *rng
}

/// The harness; see the module docs.
pub fn run(o: BenchOptions) -> Result<()> {
    let work = super::demo::WorkDir::new(o.dir.as_deref(), "bench")?;
    let dir = work.path().to_path_buf();
    let size = o.size / BS * BS;
    let reps = o.repeat.max(1);
    let g = Geometry::new(size, BS as u32)?;
    let src = dir.join("source.img");
    eprintln!(
        "blockrep bench in {} ({} image, {reps} repetitions of each step)",
        dir.display(),
        human(size)
    );
    super::demo::make_image(&src, size)?;
    sync_file(&src)?;
    let settle = Settle::new(o.drop_caches);
    let mut rows = Rows::default();
    let rm = |p: &Path| {
        if p.is_dir() {
            std::fs::remove_dir_all(p).ok();
        } else {
            std::fs::remove_file(p).ok();
        }
    };
    let qemu_img = missing(&[("qemu-img", "qemu-utils")]);
    if let Some(m) = &qemu_img {
        eprintln!("  missing {m}: no qemu-img convert comparison");
    }

    // Initial replication: blockrep in one pass into a local replica (the
    // image written as the disk is read, the full log's digest computed on
    // the way) and through the spool (the full log written for shipping,
    // then the replica built from it), against cp and qemu-img convert,
    // each from a fresh start in every repetition.
    let disk: Arc<dyn Storage> = Arc::new(FileStorage::open(&src)?);
    let rdir = dir.join("replica");
    let cp = dir.join("cp.img");
    let pipeline = |spool: &Path| -> Result<Pipeline> {
        rm(spool);
        let spool = Spool::create(
            Arc::new(FsDir::new(spool)?),
            ID,
            ChainPoint::start(1, g),
            1 << 40,
        )?;
        Pipeline::new(
            Primary::new(Tracker::new(g), disk.clone()),
            spool,
            Default::default(),
        )
    };
    let mut kept = None;
    for _ in 0..reps {
        // The previous repetition's pipeline stops before its spool goes.
        drop(kept.take());
        rm(&rdir);
        rm(&cp);
        let p = pipeline(&dir.join("spool"))?;
        let mut replica = None;
        settle.now()?;
        let t_init = timed(|| {
            let (_, r) = p.initial_sync_into(Arc::new(FsDir::new(&rdir)?), Default::default())?;
            replica = Some(r);
            Ok(())
        })?;
        verify(
            "blockrep initial replication",
            same_files(&src, &rdir.join("image"), size)?,
        )?;
        line("initial.blockrep", t_init, "");
        let spooled_dir = dir.join("replica-spooled");
        rm(&spooled_dir);
        let ps = pipeline(&dir.join("spool-spooled"))?;
        settle.now()?;
        let t_spooled = timed(|| {
            ps.initial_sync(Default::default())?;
            super::ops::apply_spool(ps.spool(), &spooled_dir, &mut None)
        })?;
        verify(
            "blockrep initial replication through the spool",
            same_files(&src, &spooled_dir.join("image"), size)?,
        )?;
        line("initial.blockrep_spooled", t_spooled, "");
        drop(ps);
        rm(&spooled_dir);
        rm(&dir.join("spool-spooled"));
        settle.now()?;
        let t_cp = timed(|| {
            run_cmd(Command::new("cp").arg("--sparse=auto").arg(&src).arg(&cp))?;
            sync_file(&cp)
        })?;
        verify("cp", same_files(&src, &cp, size)?)?;
        line(
            "initial.cp",
            t_cp,
            &format!(" blockrep_ratio={:.3}", t_init / t_cp),
        );
        rows.add(
            "initial replication",
            "cp --sparse=auto and fsync",
            Some(1.0),
            t_init,
            t_cp,
        );
        rows.add(
            "initial replication through the spool",
            "cp --sparse=auto and fsync",
            None,
            t_spooled,
            t_cp,
        );
        if qemu_img.is_none() {
            let conv = dir.join("convert.img");
            settle.now()?;
            let t = timed(|| {
                run_cmd(
                    Command::new("qemu-img")
                        .args(["convert", "-O", "raw"])
                        .arg(&src)
                        .arg(&conv),
                )?;
                sync_file(&conv)
            })?;
            verify("qemu-img convert", same_files(&src, &conv, size)?)?;
            line(
                "initial.qemu_img_convert",
                t,
                &format!(" blockrep_ratio={:.3}", t_init / t),
            );
            rows.add(
                "initial replication",
                "qemu-img convert -O raw and fsync",
                None,
                t_init,
                t,
            );
            rm(&conv);
        }
        kept = Some((p, replica.expect("created")));
    }
    // The full log's size (as shipped, default records), written nowhere.
    let log_len = Source::enable(ID, 1, g)
        .initial_sync(&*disk, std::io::sink(), TransferOptions::default())?
        .1
        .bytes;
    let (p, replica) = kept.expect("one repetition at least");
    // The full log's size against lz4 -1 of the same bytes.
    match missing(&[("lz4", "lz4")]) {
        None => {
            let lz = dir.join("source.lz4");
            run_cmd(
                Command::new("lz4")
                    .args(["-1", "-q", "-f"])
                    .arg(&src)
                    .arg(&lz),
            )?;
            let lz_len = std::fs::metadata(&lz)
                .map_err(|e| Error::io("stat", e).with_path(&lz))?
                .len();
            println!(
                "bench size.log_vs_lz4 log_bytes={log_len} lz4_bytes={lz_len} ratio={:.3}",
                log_len as f64 / lz_len as f64
            );
            rows.add_in(
                "B",
                "full log size",
                "lz4 -1 of the image",
                Some(1.0),
                log_len as f64,
                lz_len as f64,
            );
            rm(&lz);
        }
        Some(m) => eprintln!("  missing {m}: no log size comparison"),
    }

    // Incremental cycles at 0.1 %, 1 % and 10 % of the 4 KiB blocks.
    let rsync_dst = dir.join("rsync.img");
    let bare_dst = dir.join("bare.img");
    std::fs::rename(&cp, &rsync_dst).map_err(|e| Error::io("rename", e).with_path(&cp))?;
    run_cmd(
        Command::new("cp")
            .arg("--sparse=auto")
            .arg(&src)
            .arg(&bare_dst),
    )?;
    let rsync = match missing(&[("rsync", "rsync")]) {
        None => true,
        Some(m) => {
            eprintln!("  missing {m}: no rsync comparison");
            false
        }
    };
    let qemu = match missing(&[
        ("qemu-img", "qemu-utils"),
        ("qemu-io", "qemu-utils"),
        ("qemu-nbd", "qemu-utils"),
        ("nbdinfo", "libnbd-bin"),
    ]) {
        None => Some(QemuFlow::new(&dir, &src)?),
        Some(m) => {
            eprintln!("  missing {m}: no comparison with QEMU's dirty-bitmap flow");
            None
        }
    };
    let mut qsource = match missing(&[("qemu-storage-daemon", "qemu-utils")]) {
        None if qemu.is_some() => Some(super::bench_qemu::QemuSourceFlow::new(&dir, &src, size)?),
        None => None,
        Some(m) => {
            eprintln!("  missing {m}: no QEMU source");
            None
        }
    };
    let mut rng = 0x5eed_u64 ^ now_ns();
    for (pct, label, target) in [(0.001, "0.1%", 1.5), (0.01, "1%", 1.3), (0.1, "10%", 1.5)] {
        for _ in 0..reps {
            let blocks = dirty_blocks(g, pct, &mut rng);
            cycle_repetition(
                &CycleRun {
                    p: &p,
                    replica: &replica,
                    disk: &*disk,
                    src: &src,
                    rdir: &rdir,
                    bare_dst: &bare_dst,
                    rsync_dst: rsync.then_some(&*rsync_dst),
                    qemu: qemu.as_ref(),
                    size,
                    settle: &settle,
                },
                qsource.as_mut(),
                &blocks,
                (label, target),
                &mut rng,
                &mut rows,
            )?;
        }
    }

    // The transport: a full log over loopback TLS (shipper to server, its
    // apply taken out) against a plain TCP copy of the same bytes.
    settle.now()?;
    let (t_tls, t_tcp, log_bytes) = super::bench_net::transport(&dir, &src)?;
    line(
        "ship.tls_vs_tcp",
        t_tls,
        &format!(
            " tcp_seconds={t_tcp:.4} log_bytes={log_bytes} throughput_ratio={:.3}",
            t_tcp / t_tls
        ),
    );
    rows.add(
        "ship a full log over TLS (apply excluded)",
        "plain TCP copy into a synced file",
        None,
        t_tls,
        t_tcp,
    );
    rows.print();
    Ok(())
}

/// What every repetition of a cycle works on.
struct CycleRun<'a> {
    p: &'a Pipeline<Tracker>,
    replica: &'a Replica,
    disk: &'a dyn Storage,
    src: &'a Path,
    rdir: &'a Path,
    bare_dst: &'a Path,
    rsync_dst: Option<&'a Path>,
    qemu: Option<&'a QemuFlow>,
    size: u64,
    settle: &'a Settle,
}

/// One repetition of an incremental cycle: the guest writes `blocks`
/// (not timed), then blockrep's durable cycle and each peer copy the
/// same blocks, every copy verified.
fn cycle_repetition(
    c: &CycleRun<'_>,
    qsource: Option<&mut super::bench_qemu::QemuSourceFlow>,
    blocks: &[u64],
    (label, target): (&'static str, f64),
    rng: &mut u64,
    rows: &mut Rows,
) -> Result<()> {
    // The guest writes (not timed): tracked by blockrep's tracker.
    let mut data = vec![0u8; BS as usize];
    for &b in blocks {
        for w in data.chunks_mut(8) {
            w.copy_from_slice(&xorshift(rng).to_le_bytes());
        }
        let guard = c.p.primary().write_guard(b * BS, BS)?;
        c.disk.write_at(&data, b * BS)?;
        drop(guard);
    }
    c.disk.sync()?;
    if let Some(q) = c.qemu {
        q.guest_writes(blocks)?;
    }
    let dirty = blocks.len() as u64 * BS;
    let gib = dirty as f64 / f64::from(1u32 << 30);
    // blockrep: cut, read, log into the spool, apply with retention.
    let mut rep = Some(c.replica.clone());
    c.settle.now()?;
    let (t_b, cpu_b) = timed_cpu(|| {
        c.p.cycle(&CycleOptions::default())?;
        super::ops::apply_spool(c.p.spool(), c.rdir, &mut rep)?;
        c.replica.prune(
            &RetentionPolicy {
                keep_last: 4,
                ..Default::default()
            },
            now_ns(),
        )?;
        Ok(())
    })?;
    verify(
        "blockrep cycle",
        same_files(c.src, &c.rdir.join("image"), c.size)?,
    )?;
    line(
        &format!("cycle.{label}.blockrep"),
        t_b,
        &format!(
            " dirty_bytes={dirty} cpu_seconds_per_gib={:.2}",
            cpu_b / gib
        ),
    );
    // The limit: copy exactly the dirty blocks.
    c.settle.now()?;
    let (t_bare, cpu_bare) = timed_cpu(|| {
        let (s, d) = (
            FileStorage::open_read_only(c.src)?,
            FileStorage::open(c.bare_dst)?,
        );
        let mut buf = vec![0u8; BS as usize];
        for &b in blocks {
            s.read_at(&mut buf, b * BS)?;
            d.write_at(&buf, b * BS)?;
        }
        d.sync()
    })?;
    verify("bare copy", same_files(c.src, c.bare_dst, c.size)?)?;
    line(
        &format!("cycle.{label}.bare_copy"),
        t_bare,
        &format!(
            " blockrep_ratio={:.3} cpu_seconds_per_gib={:.2} blockrep_cpu_ratio={:.3}",
            t_b / t_bare,
            cpu_bare / gib,
            cpu_b / cpu_bare.max(1e-9)
        ),
    );
    let step = match label {
        "0.1%" => "cycle 0.1%",
        "1%" => "cycle 1%",
        _ => "cycle 10%",
    };
    rows.add(
        step,
        "bare copy of the dirty blocks and fsync",
        Some(target),
        t_b,
        t_bare,
    );
    rows.add_in(
        "CPU s",
        step,
        "CPU of the bare copy",
        Some(3.0),
        cpu_b,
        cpu_bare.max(1e-9),
    );
    if let Some(dst) = c.rsync_dst {
        c.settle.now()?;
        let t = timed(|| {
            run_cmd(
                Command::new("rsync")
                    .args(["--inplace", "--no-whole-file", "--ignore-times"])
                    .arg(c.src)
                    .arg(dst),
            )?;
            sync_file(dst)
        })?;
        verify("rsync", same_files(c.src, dst, c.size)?)?;
        line(
            &format!("cycle.{label}.rsync"),
            t,
            &format!(" blockrep_speedup={:.1}", t / t_b),
        );
        rows.add(step, "rsync --inplace --no-whole-file -I", None, t_b, t);
    }
    let Some(q) = c.qemu else { return Ok(()) };
    c.settle.now()?;
    let t_qemu = timed(|| q.incremental_copy(None))?;
    verify("QEMU dirty-bitmap copy", q.target_matches()?)?;
    line(
        &format!("cycle.{label}.qemu_bitmap"),
        t_qemu,
        &format!(" blockrep_speedup={:.2}", t_qemu / t_b),
    );
    rows.add(
        step,
        "qcow2 dirty bitmap via qemu-nbd -B",
        None,
        t_b,
        t_qemu,
    );
    q.clear()?;
    // blockrep's QEMU source on the same writes: a retained, verified
    // point from QEMU's own bitmap, against the bare QEMU flow and
    // against blockrep's write-guard cycle.
    let Some(q) = qsource else { return Ok(()) };
    q.guest_writes(blocks)?;
    let mut bytes = 0;
    c.settle.now()?;
    let t = timed(|| {
        bytes = q.cycle()?;
        Ok(())
    })?;
    verify("blockrep's QEMU source", q.matches())?;
    line(
        &format!("cycle.{label}.qemu_source"),
        t,
        &format!(
            " log_bytes={bytes} qemu_bitmap_ratio={:.3} write_guard_ratio={:.3}",
            t / t_qemu,
            t / t_b
        ),
    );
    let qstep = match label {
        "0.1%" => "cycle 0.1% (QEMU source)",
        "1%" => "cycle 1% (QEMU source)",
        _ => "cycle 10% (QEMU source)",
    };
    rows.add(
        qstep,
        "QEMU's flow (bitmap, qemu-nbd, copy)",
        None,
        t,
        t_qemu,
    );
    rows.add(qstep, "blockrep's write-guard cycle", None, t, t_b);
    Ok(())
}

/// QEMU's incremental flow: a qcow2 with a persistent dirty bitmap (4 KiB
/// granularity, like blockrep's blocks) written through qemu-io; the dirty
/// extents are found with `nbdinfo --map` on a `qemu-nbd -B` export and
/// read over NBD into a raw copy.
pub(super) struct QemuFlow {
    dir: PathBuf,
    qcow2: PathBuf,
    target: PathBuf,
}

impl QemuFlow {
    pub(super) fn new(dir: &Path, src: &Path) -> Result<Self> {
        let q = QemuFlow {
            dir: dir.to_path_buf(),
            qcow2: dir.join("qemu.qcow2"),
            target: dir.join("qemu-target.img"),
        };
        run_cmd(
            Command::new("qemu-img")
                .args(["convert", "-O", "qcow2"])
                .arg(src)
                .arg(&q.qcow2),
        )?;
        run_cmd(
            Command::new("qemu-img")
                .args(["bitmap", "--add", "--granularity", "4096"])
                .arg(&q.qcow2)
                .arg("b0"),
        )?;
        run_cmd(
            Command::new("cp")
                .arg("--sparse=auto")
                .arg(src)
                .arg(&q.target),
        )?;
        sync_file(&q.target)?;
        Ok(q)
    }

    /// The same blocks written into the qcow2 by qemu-io (which marks the
    /// bitmap), as a guest would.
    pub(super) fn guest_writes(&self, blocks: &[u64]) -> Result<()> {
        qemu_io_writes(
            &["-f".as_ref(), "qcow2".as_ref(), self.qcow2.as_os_str()],
            blocks,
        )
    }

    /// The timed part: export with the bitmap, map it, copy the dirty
    /// extents, sync, stop the export. On a Unix socket, or with
    /// `link_megabits` over TCP through a [`Link`](super::link::Link) of
    /// that rate (the map and the reads both cross it).
    pub(super) fn incremental_copy(&self, link_megabits: Option<f64>) -> Result<()> {
        let sock = self.dir.join("qemu-nbd.sock");
        let _ = std::fs::remove_file(&sock);
        let mut cmd = Command::new("qemu-nbd");
        cmd.args(["-r", "-t", "-e", "4", "-f", "qcow2", "-B", "b0"]);
        let tcp = match link_megabits {
            None => {
                cmd.arg("--socket").arg(&sock);
                None
            }
            Some(m) => {
                let port = std::net::TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr())
                    .map_err(|e| Error::io("find a free port", e))?
                    .port();
                cmd.args(["-b", "127.0.0.1", "-p", &port.to_string()]);
                Some((std::net::SocketAddr::from(([127, 0, 0, 1], port)), m))
            }
        };
        let mut server = cmd
            .arg(&self.qcow2)
            .spawn()
            .map_err(|e| Error::io("run qemu-nbd", e))?;
        let result = (|| {
            let start = Instant::now();
            let ready = || match tcp {
                None => std::os::unix::net::UnixStream::connect(&sock).is_ok(),
                Some((addr, _)) => std::net::TcpStream::connect(addr).is_ok(),
            };
            while !ready() {
                if start.elapsed().as_secs() > 20 {
                    return Err(Error::new(
                        blockrep::ErrorKind::Io,
                        "qemu-nbd did not start",
                    ));
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            let link = tcp
                .map(|(addr, m)| super::link::Link::start(addr, m))
                .transpose()?;
            let uri = match &link {
                None => format!("nbd+unix:///?socket={}", sock.display()),
                Some(l) => format!("nbd://{}", l.addr()),
            };
            let out = Command::new("nbdinfo")
                .arg("--map=qemu:dirty-bitmap:b0")
                .arg(&uri)
                .output()
                .map_err(|e| Error::io("run nbdinfo", e))?;
            if !out.status.success() {
                return Err(Error::new(blockrep::ErrorKind::Io, "nbdinfo --map failed"));
            }
            let map = String::from_utf8_lossy(&out.stdout);
            let dirty: Vec<(u64, u64)> = map
                .lines()
                .filter_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    (f.len() >= 3 && f[2] == "1").then(|| (f[0].parse().ok(), f[1].parse().ok()))
                })
                .filter_map(|(a, b)| Some((a?, b?)))
                .collect();
            let options = NbdOptions::default();
            let mut nbd = match &link {
                None => NbdClient::connect_unix(&sock, &options)?,
                Some(l) => NbdClient::connect_tcp(l.addr(), &options)?,
            };
            let target = FileStorage::open(&self.target)?;
            let mut buf = Vec::new();
            for (off, len) in dirty {
                let mut done = 0;
                while done < len {
                    let n = (len - done).min(32 << 20);
                    buf.resize(n as usize, 0);
                    nbd.read(off + done, &mut buf)?;
                    target.write_at(&buf, off + done)?;
                    done += n;
                }
            }
            target.sync()
        })();
        let _ = server.kill();
        let _ = server.wait();
        result
    }

    pub(super) fn target_matches(&self) -> Result<bool> {
        Ok(qemu_compare(&self.qcow2, "qcow2", &self.target))
    }

    /// Clears the bitmap for the next round (untimed).
    pub(super) fn clear(&self) -> Result<()> {
        run_cmd(
            Command::new("qemu-img")
                .args(["bitmap", "--clear"])
                .arg(&self.qcow2)
                .arg("b0"),
        )
    }
}

/// qemu-io on `target` (its arguments) writes each of `blocks` (4 KiB
/// each, a pattern byte per block), as a guest would.
pub(super) fn qemu_io_writes(target: &[&std::ffi::OsStr], blocks: &[u64]) -> Result<()> {
    let mut child = Command::new("qemu-io")
        .args(target)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .map_err(|e| Error::io("run qemu-io", e))?;
    {
        let stdin = child.stdin.as_mut().expect("piped");
        let mut script = String::new();
        for (i, b) in blocks.iter().enumerate() {
            let _ = writeln!(
                &mut script as &mut dyn std::fmt::Write,
                "write -P {} {} 4k",
                1 + i % 250,
                b * BS
            );
        }
        script.push_str("quit\n");
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| Error::io("feed qemu-io", e))?;
    }
    let st = child.wait().map_err(|e| Error::io("wait for qemu-io", e))?;
    if !st.success() {
        return Err(Error::new(blockrep::ErrorKind::Io, "qemu-io failed"));
    }
    Ok(())
}

fn qemu_compare(a: &Path, fmt: &str, raw: &Path) -> bool {
    Command::new("qemu-img")
        .args(["compare", "-q", "-f", fmt, "-F", "raw"])
        .arg(a)
        .arg(raw)
        .status()
        .is_ok_and(|s| s.success())
}
