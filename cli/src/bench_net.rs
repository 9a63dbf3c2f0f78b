//! `blockrep bench`'s transport figure: a full log shipped to a replica
//! server over loopback TLS (the shipper, the server's verify and apply)
//! against a plain TCP copy of the same bytes into a file, synced. The
//! server's own apply time (from `/metrics`) is taken out, so the ratio
//! compares moving the bytes. Medians of three runs.

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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The server's `blockrep_apply_seconds_total`.
fn apply_seconds(addr: std::net::SocketAddr, monitor: &TlsFiles) -> Result<f64> {
    let mut c = Client::connect(
        addr,
        "localhost",
        client_config(monitor)?,
        Duration::from_secs(10),
    )?;
    let r = c.request("GET", "/metrics", &[], &mut std::io::empty(), 0)?;
    let text = String::from_utf8_lossy(&r.body).to_string();
    text.lines()
        .find_map(|l| l.strip_prefix("blockrep_apply_seconds_total "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| Error::invalid("no apply time in /metrics"))
}

/// Ships the full log of `src` over TLS and copies the same bytes over
/// TCP, `RUNS` times each; returns the two medians in seconds and the
/// log's size.
pub fn transport(dir: &Path, src: &Path) -> Result<(f64, f64, u64)> {
    let pki = dir.join("pki");
    let _ = std::fs::remove_dir_all(&pki);
    crate::remote::certs(
        &pki,
        &["localhost".into()],
        &["bench.site-a".into(), "monitor.bench".into()],
        1,
    )?;
    let files = |name: &str| TlsFiles {
        cert: pki.join(format!("{name}.crt")),
        key: pki.join(format!("{name}.key")),
        ca: pki.join("ca.crt"),
    };
    let root = dir.join("server-root");
    let server = Server::bind(&ServerConfig {
        listen: "127.0.0.1:0".parse().expect("an address"),
        tls: files("localhost"),
        primaries: vec![PrimaryConfig {
            identity: "bench.site-a".into(),
            root: root.clone(),
        }],
        limits: Limits::default(),
        monitors: vec!["monitor.bench".into()],
        health: HealthPolicy::default(),
    })?;
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
                let before = apply_seconds(addr, &files("monitor.bench"))?;
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
                let apply = apply_seconds(addr, &files("monitor.bench"))? - before;
                tls_runs.push(took - apply);
                let _ = std::fs::remove_dir_all(root.join(id.to_string()));
            }
            Ok((median(tls_runs), median(tcp_runs), log_bytes))
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
