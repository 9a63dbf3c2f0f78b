//! `blockrep qemu replicate`: a running QEMU's disks replicated from its
//! own dirty bitmaps (no write hook), until stopped. Each node has a spool
//! under `--spool DIR/NODE` (created the first time, with a new disk id);
//! its logs go to a replica server (`--to URL`, one shipper per disk), to
//! an object store (`--to s3://...`, sealed with `--key`), or to local
//! replicas (`--replica DIR/NODE`). A disk whose bitmap was lost
//! is resynced by digests fetched from where its replica is. One status
//! line per cycle (JSON with `--json`).

use super::failover::stop_flag;
use super::remote::Remote;
use blockrep::io::FsDir;
use blockrep::log::BlockDigests;
use blockrep::net::{remote_digests, Shipper};
use blockrep::qemu::{node_size, QemuConfig, QemuCycle, QemuDisk, QemuSource, Qmp};
use blockrep::replica::Replica;
use blockrep::seal::Keyring;
use blockrep::source::{ChainPoint, CycleOptions, Spool};
use blockrep::store::{hydrate, StoreConfig, StoreShipper, StoreShipperConfig, WriterId};
use blockrep::{DiskId, Error, ErrorKind, Geometry, Result};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where the logs go.
pub enum Target {
    /// A replica server.
    Server(Remote),
    /// An object store.
    Store {
        config: StoreConfig,
        keys: Keyring,
        take_over: bool,
    },
    /// Local replicas, one directory per node under this one.
    Replicas(PathBuf),
}

/// The command's options.
pub struct ReplicateOptions {
    pub qmp: PathBuf,
    pub nodes: Vec<String>,
    pub spool: PathBuf,
    pub target: Target,
    pub interval: Duration,
    pub nbd: Option<PathBuf>,
    pub spool_limit: u64,
    /// Stop after this many cycles (`None`: until SIGTERM or SIGINT).
    pub cycles: Option<u64>,
    pub json: bool,
}

const BLOCK: u32 = 4096;

/// A node's spool: opened, or created for a new disk of `size` bytes.
fn spool_for(dir: &Path, size: u64, limit: u64) -> Result<Arc<Spool>> {
    let fs = Arc::new(FsDir::new(dir)?);
    let spool = if dir.join("spool.state").exists() {
        Spool::open(fs, limit)?
    } else {
        let g = Geometry::new(size, BLOCK)?;
        Spool::create(fs, DiskId::random()?, ChainPoint::start(1, g), limit)?
    };
    Ok(Arc::new(spool))
}

/// Applies every unacknowledged log of `spool` to the replica in `dir`
/// (created by the first), then acknowledges it.
fn apply_local(spool: &Spool, dir: &Path) -> Result<()> {
    let fs = Arc::new(FsDir::new(dir)?);
    let mut replica = if Replica::exists(&*fs) {
        Some(Replica::open(fs)?)
    } else {
        None
    };
    super::ops::apply_spool(spool, dir, &mut replica)
}

/// The replica's block digests of a disk, from where its replica is.
fn digests(target: &Target, node: &str, disk: DiskId, replicas: &Path) -> Result<BlockDigests> {
    match target {
        Target::Server(remote) => remote_digests(&remote.shipper_config(), disk),
        Target::Replicas(_) => {
            Replica::open(Arc::new(FsDir::new(replicas.join(node))?))?.block_digests(0)
        }
        // The store keeps no digests: a local replica of its head (kept
        // under the spools, brought forward each time) gives them.
        Target::Store { config, keys, .. } => {
            let dir = replicas.join(node);
            let fs = Arc::new(FsDir::new(&dir)?);
            hydrate(config, keys, disk, fs.clone(), None, 0)?;
            Replica::open(fs)?.block_digests(0)
        }
    }
}

/// The command; see the module docs.
pub fn replicate(o: &ReplicateOptions) -> Result<()> {
    let stop = stop_flag();
    let timeout = Duration::from_secs(60);
    let mut disks = Vec::with_capacity(o.nodes.len());
    {
        let mut qmp = Qmp::connect(&o.qmp, timeout)?;
        for node in &o.nodes {
            let size = node_size(&mut qmp, node)?;
            disks.push(QemuDisk {
                node: node.clone(),
                spool: spool_for(&o.spool.join(node), size, o.spool_limit)?,
            });
        }
    }
    let spools: Vec<(String, Arc<Spool>)> = disks
        .iter()
        .map(|d| (d.node.clone(), d.spool.clone()))
        .collect();
    let work = o.spool.join(".qemu-work");
    blockrep::io::create_private_dir(&work)?;
    let mut config = QemuConfig::new(&o.qmp, &work);
    config.nbd_socket.clone_from(&o.nbd);
    config.timeout = timeout;
    let open = |disks| QemuSource::open(config.clone(), disks);
    let mut src = Some(open(disks)?);
    let replicas = match &o.target {
        Target::Replicas(dir) => dir.clone(),
        Target::Store { .. } => o.spool.join(".store-resync"),
        Target::Server(_) => PathBuf::new(),
    };
    let shippers: Vec<Shipper> = match &o.target {
        Target::Server(remote) => spools
            .iter()
            .map(|(_, s)| Shipper::start(s.clone(), remote.shipper_config()))
            .collect::<Result<_>>()?,
        _ => Vec::new(),
    };
    let store_shippers: Vec<StoreShipper> = match &o.target {
        Target::Store {
            config,
            keys,
            take_over,
        } => spools
            .iter()
            .map(|(node, s)| {
                let writer =
                    WriterId::load_or_create(super::store::writer_file(&o.spool.join(node)))?;
                let mut c = StoreShipperConfig::new(config.clone(), keys.clone(), writer);
                c.take_over = *take_over;
                c.log = Some(Arc::new(|l: &str| eprintln!("blockrep: {l}")));
                StoreShipper::start(s.clone(), c)
            })
            .collect::<Result<_>>()?,
        _ => Vec::new(),
    };
    for (node, s) in &spools {
        eprintln!(
            "blockrep: replicating QEMU node {node} (disk {}) every {:?}",
            s.disk_id(),
            o.interval
        );
    }
    let mut done = 0u64;
    while !stop.load(Ordering::Relaxed) && o.cycles.is_none_or(|n| done < n) {
        let started = Instant::now();
        // QEMU restarted, or the last cycle lost its connection: open
        // again, which also clears what the failed cycle left.
        if src.is_none() {
            let again = spools
                .iter()
                .map(|(node, spool)| QemuDisk {
                    node: node.clone(),
                    spool: spool.clone(),
                })
                .collect();
            match open(again) {
                Ok(s) => src = Some(s),
                Err(e) => eprintln!("blockrep: QEMU: {e}"),
            }
        }
        if let Some(s) = src.as_mut() {
            let result = match s.cycle(&CycleOptions::default()) {
                Err(e) if e.kind() == ErrorKind::ResyncRequired => {
                    eprintln!("blockrep: {e}: resync by digests");
                    let needs: Vec<(String, BlockDigests)> = spools
                        .iter()
                        .filter(|(node, _)| {
                            s.states().iter().any(|(n, st)| {
                                n == node
                                    && matches!(
                                        st,
                                        blockrep::qemu::QemuDiskState::ResyncRequired { .. }
                                    )
                            })
                        })
                        .map(|(node, spool)| {
                            digests(&o.target, node, spool.disk_id(), &replicas)
                                .map(|d| (node.clone(), d))
                        })
                        .collect::<Result<_>>()?;
                    s.resync(&needs).map(QemuCycle::Written)
                }
                r => r,
            };
            match result {
                Ok(QemuCycle::Written(logs)) => {
                    done += 1;
                    for (log, (node, spool)) in logs.iter().zip(&spools) {
                        let st = spool.status();
                        let took = started.elapsed().as_secs_f64();
                        if o.json {
                            println!(
                                "{}",
                                serde_json::json!({"node": node, "sequence": log.header.sequence,
                                    "epoch": log.header.epoch, "kind": format!("{:?}", log.header.kind),
                                    "blocks": log.trailer.blocks, "log_bytes": log.bytes,
                                    "seconds": took, "pending_logs": st.pending_logs})
                            );
                        } else {
                            println!(
                                "{node}: point {} ({:?}) {} blocks, {} log, {took:.3} s; {} logs pending",
                                log.header.sequence,
                                log.header.kind,
                                log.trailer.blocks,
                                super::human(log.bytes),
                                st.pending_logs
                            );
                        }
                    }
                }
                Ok(QemuCycle::Deferred { node }) => {
                    eprintln!("blockrep: {node}: the spool is full; waiting for the transport");
                }
                Err(e) => {
                    eprintln!("blockrep: cycle failed: {e}");
                    if e.kind() == ErrorKind::Io {
                        src = None;
                    }
                }
            }
        }
        if let Target::Replicas(dir) = &o.target {
            for (node, spool) in &spools {
                apply_local(spool, &dir.join(node))?;
            }
        }
        while started.elapsed() < o.interval && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    if let Some(s) = src {
        s.close()?;
    }
    // What is spooled is shipped before the command ends (bounded).
    let t = Instant::now();
    while !(shippers.is_empty() && store_shippers.is_empty())
        && spools.iter().any(|(_, s)| s.status().pending_logs > 0)
        && !store_shippers.iter().any(|s| s.status().fenced)
        && t.elapsed() < Duration::from_secs(60)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    for s in shippers {
        s.stop();
    }
    for s in store_shippers {
        if let Some(e) = s.status().last_error.filter(|_| s.status().fenced) {
            return Err(Error::new(ErrorKind::Fenced, e));
        }
        s.stop();
    }
    Ok(())
}
