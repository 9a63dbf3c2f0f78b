//! `blockrep bench`'s QEMU source: the bench image as a qcow2 served by
//! qemu-storage-daemon, the guest's writes through its NBD export, and
//! blockrep's cycle from QEMU's dirty bitmap (fleecing transaction, the
//! dirty extents read over NBD, a verified, compressed log spooled and
//! applied to a local replica with its retention), timed from the cut to
//! the applied point.

use super::bench::{run_cmd, BS};
use blockrep::io::FsDir;
use blockrep::qemu::{QemuConfig, QemuCycle, QemuDisk, QemuSource};
use blockrep::replica::{Replica, RetentionPolicy};
use blockrep::source::{ChainPoint, CycleOptions, Spool};
use blockrep::{DiskId, Error, Geometry, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ID: DiskId = DiskId(*b"blockrep-bench-q");

/// The daemon, the source and its local replica.
pub(super) struct QemuSourceFlow {
    daemon: Child,
    nbd: PathBuf,
    qcow2: PathBuf,
    source: Option<QemuSource>,
    spool: Arc<Spool>,
    replica: Option<Replica>,
    rdir: PathBuf,
}

impl QemuSourceFlow {
    /// Converts `src` into a qcow2, serves it, and replicates it once
    /// (the full log; not timed).
    pub(super) fn new(dir: &Path, src: &Path, size: u64) -> Result<Self> {
        let qcow2 = dir.join("qsd.qcow2");
        run_cmd(
            Command::new("qemu-img")
                .args(["convert", "-O", "qcow2"])
                .arg(src)
                .arg(&qcow2),
        )?;
        let (qmp, nbd) = (dir.join("qsd-qmp.sock"), dir.join("qsd-nbd.sock"));
        let daemon = Command::new("qemu-storage-daemon")
            .arg("--blockdev")
            .arg(format!(
                "driver=file,node-name=file0,filename={}",
                qcow2.display()
            ))
            .args(["--blockdev", "driver=qcow2,node-name=disk0,file=file0"])
            .arg("--nbd-server")
            .arg(format!("addr.type=unix,addr.path={}", nbd.display()))
            .args([
                "--export",
                "type=nbd,id=exp0,node-name=disk0,name=disk0,writable=on",
            ])
            .arg("--chardev")
            .arg(format!(
                "socket,path={},server=on,wait=off,id=qmp0",
                qmp.display()
            ))
            .args(["--monitor", "chardev=qmp0"])
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| Error::io("run qemu-storage-daemon", e))?;
        let t = Instant::now();
        // The files appear at bind, before listen: ready is a connection taken.
        while !(std::os::unix::net::UnixStream::connect(&qmp).is_ok()
            && std::os::unix::net::UnixStream::connect(&nbd).is_ok())
        {
            if t.elapsed() > Duration::from_secs(20) {
                return Err(Error::invalid("qemu-storage-daemon did not start"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let g = Geometry::new(size, BS as u32)?;
        let spool = Arc::new(Spool::create(
            Arc::new(FsDir::new(dir.join("qsd-spool"))?),
            ID,
            ChainPoint::start(1, g),
            1 << 40,
        )?);
        let work = dir.join("qsd-work");
        std::fs::create_dir_all(&work).map_err(|e| Error::io("create", e).with_path(&work))?;
        let mut config = QemuConfig::new(&qmp, &work);
        config.nbd_socket = Some(nbd.clone());
        let mut source = QemuSource::open(
            config,
            vec![QemuDisk {
                node: "disk0".into(),
                spool: spool.clone(),
            }],
        )?;
        source.cycle(&CycleOptions::default())?;
        let rdir = dir.join("qsd-replica");
        let mut replica = None;
        super::ops::apply_spool(&spool, &rdir, &mut replica)?;
        Ok(QemuSourceFlow {
            daemon,
            nbd,
            qcow2,
            source: Some(source),
            spool,
            replica,
            rdir,
        })
    }

    /// The guest writes `blocks` through the daemon's export (qemu-io
    /// over NBD), as the QEMU flow's guest writes them.
    pub(super) fn guest_writes(&self, blocks: &[u64]) -> Result<()> {
        let uri = format!("nbd+unix:///disk0?socket={}", self.nbd.display());
        super::bench::qemu_io_writes(&["-f".as_ref(), "raw".as_ref(), uri.as_ref()], blocks)
    }

    /// The timed part: one cycle from QEMU's bitmap, its log applied to
    /// the replica, retention kept.
    pub(super) fn cycle(&mut self) -> Result<u64> {
        let source = self.source.as_mut().expect("open until dropped");
        let bytes = match source.cycle(&CycleOptions::default())? {
            QemuCycle::Written(logs) => logs.iter().map(|l| l.bytes).sum(),
            QemuCycle::Deferred { node } => {
                return Err(Error::invalid(format!("{node}: the spool is full")))
            }
        };
        super::ops::apply_spool(&self.spool, &self.rdir, &mut self.replica)?;
        let replica = self
            .replica
            .as_ref()
            .ok_or_else(|| Error::invalid("no replica: the full log was not applied"))?;
        replica.prune(
            &RetentionPolicy {
                keep_last: 4,
                ..Default::default()
            },
            super::now_ns(),
        )?;
        Ok(bytes)
    }

    /// Whether the replica equals the daemon's disk (`qemu-img compare
    /// -U`, the daemon keeping the image open).
    pub(super) fn matches(&self) -> bool {
        Command::new("qemu-img")
            .args(["compare", "-U", "-q", "-f", "qcow2", "-F", "raw"])
            .arg(&self.qcow2)
            .arg(self.rdir.join("image"))
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for QemuSourceFlow {
    fn drop(&mut self) {
        if let Some(s) = self.source.take() {
            let _ = s.close();
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}
