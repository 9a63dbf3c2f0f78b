//! `blockrep bench`: blockrep's incremental cycle and initial replication
//! against the tools users run today, on one workload built here, every
//! result verified by comparison. One machine-readable line per figure
//! (`bench NAME seconds=S ...`), then a table.

use super::{human, now_ns};
use blockrep::io::{FileStorage, FsDir, Storage};
use blockrep::nbd::{NbdClient, NbdOptions};
use blockrep::replica::RetentionPolicy;
use blockrep::source::{ChainPoint, CycleOptions, Pipeline, Primary, Spool};
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

/// The harness; see the module docs.
pub fn run(o: BenchOptions) -> Result<()> {
    let work = super::demo::WorkDir::new(o.dir.as_deref(), "bench")?;
    let dir = work.path().to_path_buf();
    let size = o.size / BS * BS;
    let g = Geometry::new(size, BS as u32)?;
    let src = dir.join("source.img");
    eprintln!(
        "blockrep bench in {} ({} image)",
        dir.display(),
        human(size)
    );
    super::demo::make_image(&src, size)?;
    sync_file(&src)?;

    // Initial replication: blockrep (full log into the spool, then the
    // replica built from it) against cp and qemu-img convert.
    let disk: Arc<dyn Storage> = Arc::new(FileStorage::open(&src)?);
    let start = ChainPoint::start(1, g);
    let spool = Spool::create(Arc::new(FsDir::new(dir.join("spool"))?), ID, start, 1 << 40)?;
    let p = Pipeline::new(
        Primary::new(Tracker::new(g), disk.clone()),
        spool,
        Default::default(),
    )?;
    let rdir = dir.join("replica");
    let mut replica = None;
    let mut log_len = 0;
    let t_init = timed(|| {
        log_len = p.initial_sync(Default::default())?.summary.bytes;
        super::ops::apply_spool(p.spool(), &rdir, &mut replica)
    })?;
    let replica = replica.expect("created");
    verify(
        "blockrep initial replication",
        same_files(&src, &rdir.join("image"), size)?,
    )?;
    line("initial.blockrep", t_init, "");
    let cp = dir.join("cp.img");
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
    let mut rows = vec![("initial replication", "cp".to_string(), t_init, t_cp)];
    if have("qemu-img") {
        let conv = dir.join("convert.img");
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
        rows.push((
            "initial replication",
            "qemu-img convert -O raw".into(),
            t_init,
            t,
        ));
        std::fs::remove_file(&conv).ok();
    }
    // The full log's size against lz4 -1 of the same bytes.
    if have("lz4") {
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
        std::fs::remove_file(&lz).ok();
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
    // Flushed now, so no timed step pays for these copies' writeback.
    sync_file(&bare_dst)?;
    sync_file(&rsync_dst)?;
    let qemu = if have("qemu-img") && have("qemu-io") && have("qemu-nbd") && have("nbdinfo") {
        Some(QemuFlow::new(&dir, &src)?)
    } else {
        eprintln!("  qemu-img, qemu-io, qemu-nbd or nbdinfo missing: no QEMU comparison");
        None
    };
    let mut qsource = if qemu.is_some() && have("qemu-storage-daemon") {
        Some(super::bench_qemu::QemuSourceFlow::new(&dir, &src, size)?)
    } else {
        eprintln!("  qemu-storage-daemon missing: no QEMU source");
        None
    };
    let mut rng = 0x5eed_u64 ^ now_ns();
    for (pct, label) in [(0.001, "0.1%"), (0.01, "1%"), (0.1, "10%")] {
        let n = ((g.block_count() as f64) * pct) as u64;
        let mut blocks: Vec<u64> = (0..n)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng % g.block_count()
            })
            .collect();
        blocks.sort_unstable();
        blocks.dedup();
        // The guest writes (not timed): tracked by blockrep's tracker.
        let mut data = vec![0u8; BS as usize];
        for &b in &blocks {
            for c in data.chunks_mut(8) {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                c.copy_from_slice(&rng.to_le_bytes());
            }
            let guard = p.primary().write_guard(b * BS, BS)?;
            disk.write_at(&data, b * BS)?;
            drop(guard);
        }
        disk.sync()?;
        if let Some(q) = &qemu {
            q.guest_writes(&blocks)?;
        }
        let dirty = blocks.len() as u64 * BS;
        // blockrep: cut, read, log into the spool, apply with retention.
        let mut rep = Some(replica.clone());
        let t_b = timed(|| {
            p.cycle(&CycleOptions::default())?;
            super::ops::apply_spool(p.spool(), &rdir, &mut rep)?;
            replica.prune(
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
            same_files(&src, &rdir.join("image"), size)?,
        )?;
        line(
            &format!("cycle.{label}.blockrep"),
            t_b,
            &format!(" dirty_bytes={dirty}"),
        );
        // The limit: copy exactly the dirty blocks.
        let t_bare = timed(|| {
            let (s, d) = (
                FileStorage::open_read_only(&src)?,
                FileStorage::open(&bare_dst)?,
            );
            let mut buf = vec![0u8; BS as usize];
            for &b in &blocks {
                s.read_at(&mut buf, b * BS)?;
                d.write_at(&buf, b * BS)?;
            }
            d.sync()
        })?;
        verify("bare copy", same_files(&src, &bare_dst, size)?)?;
        line(
            &format!("cycle.{label}.bare_copy"),
            t_bare,
            &format!(" blockrep_ratio={:.3}", t_b / t_bare),
        );
        rows.push((
            "cycle",
            format!("{label} bare copy of the dirty blocks"),
            t_b,
            t_bare,
        ));
        if have("rsync") {
            let t = timed(|| {
                run_cmd(
                    Command::new("rsync")
                        .args(["--inplace", "--no-whole-file", "--ignore-times"])
                        .arg(&src)
                        .arg(&rsync_dst),
                )?;
                sync_file(&rsync_dst)
            })?;
            verify("rsync", same_files(&src, &rsync_dst, size)?)?;
            line(
                &format!("cycle.{label}.rsync"),
                t,
                &format!(" blockrep_speedup={:.1}", t / t_b),
            );
            rows.push((
                "cycle",
                format!("{label} rsync --inplace --no-whole-file -I"),
                t_b,
                t,
            ));
        }
        let mut t_qemu = None;
        if let Some(q) = &qemu {
            let t = timed(|| q.incremental_copy(None))?;
            verify("QEMU dirty-bitmap copy", q.target_matches()?)?;
            line(
                &format!("cycle.{label}.qemu_bitmap"),
                t,
                &format!(" blockrep_speedup={:.2}", t / t_b),
            );
            rows.push((
                "cycle",
                format!("{label} qcow2 dirty bitmap via qemu-nbd -B"),
                t_b,
                t,
            ));
            q.clear()?;
            t_qemu = Some(t);
        }
        // blockrep's QEMU source on the same writes: a retained, verified
        // point from QEMU's own bitmap, against the bare QEMU flow and
        // against blockrep's write-guard cycle.
        if let (Some(q), Some(t_qemu)) = (qsource.as_mut(), t_qemu) {
            q.guest_writes(&blocks)?;
            let mut bytes = 0;
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
            rows.push((
                "cycle (QEMU source)",
                format!("{label} QEMU's flow (bitmap, qemu-nbd, copy)"),
                t,
                t_qemu,
            ));
            rows.push((
                "cycle (QEMU source)",
                format!("{label} blockrep's write-guard cycle"),
                t,
                t_b,
            ));
        }
    }

    // The transport: a full log over loopback TLS (shipper to server, its
    // apply taken out) against a plain TCP copy of the same bytes.
    let (t_tls, t_tcp, log_bytes) = super::bench_net::transport(&dir, &src)?;
    line(
        "ship.tls_vs_tcp",
        t_tls,
        &format!(
            " tcp_seconds={t_tcp:.4} log_bytes={log_bytes} throughput_ratio={:.3}",
            t_tcp / t_tls
        ),
    );
    rows.push((
        "ship a full log over TLS (apply excluded)",
        "plain TCP copy into a synced file".into(),
        t_tls,
        t_tcp,
    ));

    println!();
    println!("| step | peer | blockrep s | peer s | blockrep / peer |");
    println!("| --- | --- | --- | --- | --- |");
    for (step, peer, b, t) in rows {
        println!("| {step} | {peer} | {b:.3} | {t:.3} | {:.3} |", b / t);
    }
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
