//! `blockrep bench`'s transport figure: a full log shipped to a replica
//! server over loopback TLS (the shipper, the server's verify and apply)
//! against a plain TCP copy of the same bytes into a file, synced. The
//! server's own apply time (from `/metrics`) is taken out, so the ratio
//! compares moving the bytes. Medians of three runs.

use super::bench::{median, xorshift};
use blockrep::io::{FileStorage, MemDir, Storage};
use blockrep::net::{
    client_config, Client, HealthPolicy, Limits, PrimaryConfig, Server, ServerConfig, Shipper,
    ShipperConfig, TlsFiles,
};
use blockrep::source::{Pipeline, TransferOptions};
use blockrep::{DiskId, Error, Result};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const RUNS: usize = 3;

/// One counter of the server's `/metrics` (read as `monitor`).
fn metric(addr: std::net::SocketAddr, monitor: &TlsFiles, name: &str) -> Result<f64> {
    let mut c = Client::connect(
        addr,
        "localhost",
        client_config(monitor)?,
        Duration::from_secs(30),
    )?;
    let r = c.request("GET", "/metrics", &[], &mut std::io::empty(), 0)?;
    String::from_utf8_lossy(&r.body)
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .ok_or_else(|| Error::invalid(format!("no {name} in /metrics")))
}

/// The bench's PKI in `dir/pki` (a server, a primary, a monitor), and the
/// files of one of its names.
fn bench_pki(dir: &Path) -> Result<impl Fn(&str) -> TlsFiles> {
    let pki = dir.join("pki");
    let _ = std::fs::remove_dir_all(&pki);
    crate::remote::certs(
        &pki,
        &["localhost".into()],
        &["bench.site-a".into(), "monitor.bench".into()],
        1,
    )?;
    Ok(move |name: &str| TlsFiles {
        cert: pki.join(format!("{name}.crt")),
        key: pki.join(format!("{name}.key")),
        ca: pki.join("ca.crt"),
    })
}

/// A replica server on a loopback port for the primary `bench.site-a`
/// (and the monitor `monitor.bench`), its disks under `dir/server-root`;
/// returns it, the PKI's files by name, and that root.
pub(super) fn bench_server(
    dir: &Path,
) -> Result<(Server, impl Fn(&str) -> TlsFiles, std::path::PathBuf)> {
    let files = bench_pki(dir)?;
    let root = dir.join("server-root");
    let server = Server::bind(&ServerConfig {
        listen: "127.0.0.1:0".parse().expect("an address"),
        tls: files("localhost"),
        primaries: vec![PrimaryConfig::new("bench.site-a", root.clone())],
        limits: Limits::default(),
        monitors: vec!["monitor.bench".into()],
        health: HealthPolicy::default(),
    })?;
    Ok((server, files, root))
}

/// Ships the full log of `src` over TLS and copies the same bytes over
/// TCP, `RUNS` times each; returns the two medians in seconds and the
/// log's size.
pub fn transport(dir: &Path, src: &Path) -> Result<(f64, f64, u64)> {
    let (server, files, root) = bench_server(dir)?;
    let addr = server.local_addr()?;
    let stop = AtomicBool::new(false);
    let disk: Arc<dyn Storage> = Arc::new(FileStorage::open_read_only(src)?);
    std::thread::scope(|s| -> Result<(f64, f64, u64)> {
        s.spawn(|| server.run(&stop));
        let result = (|| {
            let mut tls_runs = Vec::new();
            let mut tcp_runs = Vec::new();
            let mut log_bytes = 0;
            for run in 0..RUNS {
                // A disk of its own each run: the full log creates it.
                let id = DiskId([0xb0 + run as u8; 16]);
                let p = Pipeline::builder(disk.clone(), Arc::new(MemDir::new())).create(id, 1)?;
                log_bytes = p.initial_sync(TransferOptions::default())?.summary.bytes;
                // The same bytes over plain TCP into a file, synced.
                let log = p.spool().open_log(1)?;
                tcp_runs.push(tcp_copy(&*log, log_bytes, &dir.join("tcp-copy.bin"))?);
                drop(log);
                let before = metric(
                    addr,
                    &files("monitor.bench"),
                    "blockrep_apply_seconds_total",
                )?;
                let t = Instant::now();
                let shipper = Shipper::start(p.shared_spool(), {
                    let mut c = ShipperConfig::new(addr, "localhost", files("bench.site-a"));
                    c.retry_min = Duration::from_millis(10);
                    c
                })?;
                while p.status().pending_logs > 0 {
                    if t.elapsed() > Duration::from_secs(600) {
                        return Err(Error::invalid(format!(
                            "the log did not ship: {:?}",
                            shipper.status()
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                let took = t.elapsed().as_secs_f64();
                shipper.stop();
                let apply = metric(
                    addr,
                    &files("monitor.bench"),
                    "blockrep_apply_seconds_total",
                )? - before;
                tls_runs.push(took - apply);
                let _ = std::fs::remove_dir_all(root.join(id.to_string()));
            }
            Ok((median(&tls_runs), median(&tcp_runs), log_bytes))
        })();
        stop.store(true, Ordering::SeqCst);
        result
    })
}

/// Sends `len` bytes of `log` over a loopback TCP connection to a thread
/// writing them to `out` and syncing it; seconds until synced.
fn tcp_copy(log: &dyn Storage, len: u64, out: &Path) -> Result<f64> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| Error::io("listen", e))?;
    let addr = listener.local_addr().map_err(|e| Error::io("listen", e))?;
    let out = out.to_path_buf();
    let t = Instant::now();
    let receiver = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut c, _) = listener.accept()?;
        let mut f = std::fs::File::create(&out)?;
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = c.read(&mut buf)?;
            if n == 0 {
                break;
            }
            f.write_all(&buf[..n])?;
        }
        f.sync_all()
    });
    let mut c = std::net::TcpStream::connect(addr).map_err(|e| Error::io("connect", e))?;
    let mut buf = vec![0u8; 256 << 10];
    let mut at = 0;
    while at < len {
        let n = (len - at).min(buf.len() as u64) as usize;
        log.read_at(&mut buf[..n], at)?;
        c.write_all(&buf[..n]).map_err(|e| Error::io("send", e))?;
        at += n as u64;
    }
    drop(c);
    receiver
        .join()
        .map_err(|_| Error::invalid("the receiver panicked"))?
        .map_err(|e| Error::io("receive", e))?;
    Ok(t.elapsed().as_secs_f64())
}

/// A process's resident memory now and at its peak (bytes), and its CPU
/// time (seconds), from /proc.
fn proc_usage(pid: u32) -> Result<(u64, u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| Error::io("read the server's /proc status", e))?;
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |k| k * 1024)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| Error::io("read the server's /proc stat", e))?;
    // Fields after the command's closing parenthesis: utime and stime are
    // the 12th and 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    Ok((kb("VmRSS:"), kb("VmHWM:"), (ticks(11) + ticks(12)) / hz))
}

/// `blockrep bench --disks N`: `blockrep serve` as its own process takes N
/// small disks (4 MiB, one shipper each, all in this process) writing and
/// cycling for `seconds`; prints the server's memory per disk (resident,
/// less its idle size) and CPU seconds per GB received, and checks every
/// replica against its disk.
pub fn many_disks(dir: &Path, n: usize, seconds: u64) -> Result<()> {
    const SIZE: u64 = 4 << 20;
    let files = bench_pki(dir)?;
    let server = files("localhost");
    let root = dir.join("server-root");
    let config = dir.join("serve.toml");
    let text = format!(
        "listen = \"127.0.0.1:0\"\ncertificate = \"{}\"\nkey = \"{}\"\n\
         client_ca = \"{}\"\nmonitors = [\"monitor.bench\"]\n\
         [[primary]]\nidentity = \"bench.site-a\"\nroot = \"{}\"\n\
         [limits]\nper_identity = {}\nconnections = {}\n",
        server.cert.display(),
        server.key.display(),
        server.ca.display(),
        root.display(),
        n + 16,
        n + 64,
    );
    std::fs::write(&config, text).map_err(|e| Error::io("write", e).with_path(&config))?;
    let (mut child, addr) = super::demo::spawn_serve(&config, std::process::Stdio::null())?;
    let result = (|| {
        let pid = child.id();
        let (idle_rss, _, _) = proc_usage(pid)?;
        eprintln!("bench: {n} disks of 4 MiB against blockrep serve (pid {pid})");
        let mut rng = 0x5eed_u64;
        let mut next = move || xorshift(&mut rng);
        let mut disks = Vec::with_capacity(n);
        let mut pipes = Vec::with_capacity(n);
        let mut shippers = Vec::with_capacity(n);
        for i in 0..n {
            let disk: Arc<dyn Storage> = Arc::new(blockrep::io::MemStorage::zeroed(SIZE)?);
            let mut b = vec![0u8; 64 << 10];
            b.iter_mut().for_each(|x| *x = next() as u8);
            disk.write_at(&b, 0)?;
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
            let p = Arc::new(
                Pipeline::builder(disk.clone(), Arc::new(MemDir::new())).create(DiskId(id), 1)?,
            );
            p.initial_sync(TransferOptions::default())?;
            let mut c = ShipperConfig::new(addr, "localhost", files("bench.site-a"));
            c.retry_min = Duration::from_millis(50);
            shippers.push(Shipper::start(p.shared_spool(), c)?);
            disks.push(disk);
            pipes.push(p);
        }
        let drain = |what: &str| -> Result<()> {
            let t = Instant::now();
            while pipes.iter().any(|p| p.status().pending_logs > 0) {
                if t.elapsed() > Duration::from_secs(600) {
                    return Err(Error::invalid(format!("{what} did not ship in 10 min")));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(())
        };
        drain("the initial logs")?;
        let bytes_of = || {
            metric(
                addr,
                &files("monitor.bench"),
                "blockrep_bytes_received_total",
            )
        };
        let (_, _, cpu0) = proc_usage(pid)?;
        let bytes0 = bytes_of()?;
        let started = Instant::now();
        let mut cycles = 0u64;
        let mut rss_max = 0;
        while started.elapsed() < Duration::from_secs(seconds) {
            let round = Instant::now();
            for (p, disk) in pipes.iter().zip(&disks) {
                let mut b = vec![0u8; 4096];
                for _ in 0..4 {
                    b.iter_mut().for_each(|x| *x = next() as u8);
                    let off = next() % (SIZE / 4096) * 4096;
                    let g = p.primary().write_guard(off, 4096)?;
                    disk.write_at(&b, off)?;
                    drop(g);
                }
                p.cycle(&blockrep::source::CycleOptions::default())?;
                cycles += 1;
            }
            rss_max = rss_max.max(proc_usage(pid)?.0);
            if let Some(rest) = Duration::from_secs(1).checked_sub(round.elapsed()) {
                std::thread::sleep(rest);
            }
        }
        drain("the cycles")?;
        let (rss, hwm, cpu1) = proc_usage(pid)?;
        let gb = (bytes_of()? - bytes0) / 1e9;
        // Every replica equals its disk.
        for (p, disk) in pipes.iter().zip(&disks) {
            let image = root
                .join(p.spool().disk_id().to_string())
                .join("replica/image");
            let got = std::fs::read(&image).map_err(|e| Error::io("read", e).with_path(&image))?;
            let mut want = vec![0u8; SIZE as usize];
            disk.read_at(&mut want, 0)?;
            if got != want {
                return Err(Error::mismatch(format!(
                    "{}: the replica differs",
                    image.display()
                )));
            }
        }
        let connections: u64 = shippers.iter().map(|s| s.status().connections).sum();
        drop(shippers);
        let per_disk = |r: u64| r.saturating_sub(idle_rss) as f64 / n as f64 / 1048576.0;
        println!(
            "bench server.disks={n} seconds={:.1} cycles={cycles} idle_rss_mib={:.1} rss_mib={:.1} \
             rss_max_mib={:.1} hwm_mib={:.1} mib_per_disk={:.3} mib_per_disk_max={:.3} \
             gb_received={gb:.4} cpu_seconds={:.2} cpu_seconds_per_gb={:.1} connections={connections}",
            started.elapsed().as_secs_f64(),
            idle_rss as f64 / 1048576.0,
            rss as f64 / 1048576.0,
            rss_max as f64 / 1048576.0,
            hwm as f64 / 1048576.0,
            per_disk(rss),
            per_disk(rss_max.max(rss)),
            cpu1 - cpu0,
            (cpu1 - cpu0) / gb.max(1e-9),
        );
        Ok(())
    })();
    // SAFETY: signals our own child, not yet reaped.
    unsafe {
        libc::kill(
            libc::pid_t::try_from(child.id()).unwrap_or(0),
            libc::SIGTERM,
        );
    }
    let _ = child.wait();
    result
}
