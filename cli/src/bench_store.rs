//! `blockrep bench --store`: the object store target against its
//! baselines, on an `s3s-fs` server on loopback (the bench starts it):
//!
//! * upload: the image's full log sealed as it streams into a multipart
//!   upload, against a bare multipart upload of the same (unsealed) bytes
//!   through the same client (throughput ratio; target at least 0.8);
//! * hydrate: a replica built from the store at its latest point (a base
//!   and a 1 % log: downloaded, opened, verified, applied, synced),
//!   against downloading the same objects into files and syncing them
//!   (time ratio; target at most 1.3).
//!
//! Each ratio is measured in one run; the figure is the median of `RUNS`
//! runs, with its spread.

use super::bench::{line, median, same_files, spread, sync_file, timed, verify, BS};
use blockrep::io::{FileStorage, FsDir, Storage};
use blockrep::seal::{Binding, Keyring, ObjectKind, SealKey};
use blockrep::source::{CycleOptions, Pipeline};
use blockrep::store::{
    hydrate, read_manifest, StoreConfig, StoreShipper, StoreShipperConfig, WriterId,
};
use blockrep::{DiskId, Error, Geometry, Result};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const RUNS: usize = 3;
const ID: DiskId = DiskId(*b"blockrep-store01");
const PART: usize = 16 << 20;

/// The s3s-fs server, killed when dropped.
struct Server(Child, SocketAddr);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn s3s_fs() -> Option<PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    let p = home.join("bin/s3s-fs");
    if p.exists() {
        return Some(p);
    }
    super::bench::have("s3s-fs").then(|| PathBuf::from("s3s-fs"))
}

fn start(root: &Path) -> Result<Server> {
    let bin = s3s_fs().ok_or_else(|| {
        Error::invalid("the store bench needs s3s-fs: cargo install s3s-fs --features binary")
    })?;
    std::fs::create_dir_all(root.join("bench")).map_err(|e| Error::io("create", e))?;
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| Error::io("pick a port", e))?
        .port();
    let child = Command::new(bin)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", "bench", "--secret-key", "benchsecret"])
        .arg(root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| Error::io("start s3s-fs", e))?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let server = Server(child, addr);
    let t = Instant::now();
    while TcpStream::connect(addr).is_err() {
        if t.elapsed() > Duration::from_secs(20) {
            return Err(Error::invalid("s3s-fs did not start"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(server)
}

fn config(addr: SocketAddr, prefix: &str) -> StoreConfig {
    let mut c = StoreConfig::new(format!("s3://bench/{prefix}"));
    for (k, v) in [
        ("aws_endpoint", format!("http://{addr}")),
        ("aws_allow_http", "true".into()),
        ("aws_access_key_id", "bench".into()),
        ("aws_secret_access_key", "benchsecret".into()),
        ("aws_region", "us-east-1".into()),
    ] {
        c.options.push((k.into(), v));
    }
    c
}

/// The bench; see the module docs.
pub fn run(dir: &Path, size: u64) -> Result<()> {
    let size = size / BS * BS;
    let g = Geometry::new(size, BS as u32)?;
    eprintln!(
        "blockrep bench --store in {} ({} image)",
        dir.display(),
        super::human(size)
    );
    let server = start(&dir.join("s3"))?;
    let src = dir.join("source.img");
    super::demo::make_image(&src, size)?;
    sync_file(&src)?;
    let disk: Arc<dyn Storage> = Arc::new(FileStorage::open(&src)?);
    let p =
        Pipeline::builder(disk.clone(), Arc::new(FsDir::new(dir.join("spool"))?)).create(ID, 1)?;
    eprintln!("  the full log (not timed)");
    p.initial_sync(Default::default())?;
    let keys = Keyring::new(SealKey::generate()?);
    let spool = p.spool();
    let full = spool
        .next_to_ship()
        .ok_or_else(|| Error::invalid("no full log"))?;
    spool.rewind();
    let file = spool.open_log(full.point.sequence)?;
    let binding = Binding::point(
        ObjectKind::Base,
        ID,
        full.point.epoch,
        full.point.sequence,
        full.point.digest,
    );
    let up = config(server.1, "upload");
    let (mut bare, mut sealed, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let tb = timed(|| {
            blockrep::store::bench::upload(&up, "bare", &*file, full.bytes, None, PART).map(drop)
        })?;
        let ts = timed(|| {
            blockrep::store::bench::upload(
                &up,
                "sealed",
                &*file,
                full.bytes,
                Some((keys.current(), &binding)),
                PART,
            )
            .map(drop)
        })?;
        eprintln!(
            "  upload of {}: bare {tb:.3} s, sealed {ts:.3} s",
            super::human(full.bytes)
        );
        bare.push(tb);
        sealed.push(ts);
        ratios.push(tb / ts);
    }
    let mb = full.bytes as f64 / 1e6;
    line(
        "store.upload.bare",
        median(&bare),
        &format!(
            " log_bytes={} mb_per_s={:.1} spread={}",
            full.bytes,
            mb / median(&bare),
            spread(&bare)
        ),
    );
    line(
        "store.upload.sealed",
        median(&sealed),
        &format!(
            " mb_per_s={:.1} spread={} throughput_ratio={:.3} ratio_spread={} target>=0.8 {}",
            mb / median(&sealed),
            spread(&sealed),
            median(&ratios),
            spread(&ratios),
            if median(&ratios) >= 0.8 {
                "met"
            } else {
                "missed"
            }
        ),
    );

    // The chain the hydrates read: the full log and a 1 % cycle, shipped.
    let mut rng = super::demo::Rng(0x5eed ^ super::now_ns());
    let mut data = vec![0u8; BS as usize];
    for _ in 0..g.block_count() / 100 {
        let b = rng.next() % g.block_count();
        rng.block(&mut data);
        let guard = p.primary().write_guard(b * BS, BS)?;
        disk.write_at(&data, b * BS)?;
        drop(guard);
    }
    p.cycle(&CycleOptions::default())?;
    let store = config(server.1, "chain");
    let shipper = StoreShipper::start(
        p.shared_spool(),
        StoreShipperConfig::new(store.clone(), keys.clone(), WriterId::random()?),
    )?;
    eprintln!("  shipping the chain (not timed)");
    let t = Instant::now();
    while p.status().pending_logs > 0 {
        if t.elapsed() > Duration::from_secs(1800) {
            return Err(Error::invalid(format!(
                "the chain did not ship: {:?}",
                shipper.status()
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    shipper.stop();
    let m = read_manifest(&store, &keys, ID)?.ok_or_else(|| Error::invalid("no manifest"))?;
    let (base, logs) = m.path_to(None)?;
    let objects: Vec<String> = std::iter::once(base)
        .chain(logs)
        .map(|e| format!("disks/{ID}/{}", e.object))
        .collect();
    let (mut ours, mut theirs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..RUNS {
        let target = dir.join(format!("hydrated{run}"));
        std::fs::create_dir_all(&target).map_err(|e| Error::io("create", e))?;
        let th = timed(|| {
            hydrate(&store, &keys, ID, Arc::new(FsDir::new(&target)?), None, 0).map(drop)
        })?;
        verify(
            "the hydrated replica",
            same_files(&src, &target.join("image"), size)?,
        )?;
        let down = dir.join(format!("downloaded{run}"));
        std::fs::create_dir_all(&down).map_err(|e| Error::io("create", e))?;
        let td = timed(|| {
            for (i, o) in objects.iter().enumerate() {
                let f = FileStorage::create(down.join(i.to_string()), 0)?;
                let mut at = 0;
                blockrep::store::bench::download(&store, o, &mut |b| {
                    f.write_at(b, at)?;
                    at += b.len() as u64;
                    Ok(())
                })?;
                f.sync()?;
            }
            Ok(())
        })?;
        eprintln!("  hydrate {th:.3} s, download {td:.3} s");
        let _ = std::fs::remove_dir_all(&target);
        let _ = std::fs::remove_dir_all(&down);
        ours.push(th);
        theirs.push(td);
        ratios.push(th / td);
    }
    let r = median(&ratios);
    line(
        "store.download",
        median(&theirs),
        &format!(" objects={} spread={}", objects.len(), spread(&theirs)),
    );
    line(
        "store.hydrate",
        median(&ours),
        &format!(
            " spread={} ratio={r:.3} ratio_spread={} target<=1.3 {}",
            spread(&ours),
            spread(&ratios),
            if r <= 1.3 { "met" } else { "missed" }
        ),
    );
    drop(server);
    Ok(())
}
