//! Replication of a running QEMU disk from its dirty bitmaps:
//! qemu-storage-daemon serves a qcow2 writable over NBD, qemu-io writes
//! into it (random 4 KiB writes, 1 MiB runs, zero writes, discards) while
//! cycles run. At each cut the test reads the frozen view itself (the
//! source's `on_cut` hook) and every point of the replica must equal it
//! byte for byte; at the end the replica equals the disk, also for
//! `qemu-img compare`.
//!
//! Faults: qemu-storage-daemon killed (SIGKILL) in the middle of a cycle (its
//! persistent bitmap is then inconsistent or gone: a digest resync, exact);
//! blockrep's side dying after a cut (a panic out of the hook, leaving
//! QEMU's nodes, job, export and bitmaps as a killed process would): the
//! next open removes them and goes on, exact.
#![cfg(feature = "qemu")]

mod common;

use blockrep::io::FsDir;
use blockrep::log::{MappedLog, ReadOptions};
use blockrep::nbd::{NbdClient, NbdOptions};
use blockrep::qemu::{CutViews, QemuConfig, QemuCycle, QemuDisk, QemuDiskState, QemuSource, Qmp};
use blockrep::replica::Replica;
use blockrep::source::{ChainPoint, CycleOptions, Spool};
use blockrep::{DiskId, ErrorKind, Geometry};
use common::Rng;
use parking_lot::Mutex;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SIZE: u64 = 32 << 20;
const ID: DiskId = DiskId([0x9e; 16]);

/// qemu-storage-daemon serving `image` as node `disk0`, exported writable
/// over NBD as `disk0`, with QMP; killed (SIGKILL) when dropped.
struct Qsd {
    child: Child,
    qmp: PathBuf,
    nbd: PathBuf,
}

impl Qsd {
    fn start(dir: &Path, image: &Path) -> Qsd {
        Self::start_many(dir, &[image])
    }

    /// Node `disk{i}` (export `disk{i}`) for each of `images`.
    fn start_many(dir: &Path, images: &[&Path]) -> Qsd {
        let (qmp, nbd) = (dir.join("qmp.sock"), dir.join("qsd-nbd.sock"));
        let _ = std::fs::remove_file(&qmp);
        let _ = std::fs::remove_file(&nbd);
        let mut c = Command::new("qemu-storage-daemon");
        for (i, image) in images.iter().enumerate() {
            c.arg("--blockdev")
                .arg(format!(
                    "driver=file,node-name=file{i},filename={}",
                    image.display()
                ))
                .arg("--blockdev")
                .arg(format!("driver=qcow2,node-name=disk{i},file=file{i}"));
        }
        c.arg("--nbd-server")
            .arg(format!("addr.type=unix,addr.path={}", nbd.display()));
        for i in 0..images.len() {
            c.arg("--export").arg(format!(
                "type=nbd,id=exp{i},node-name=disk{i},name=disk{i},writable=on"
            ));
        }
        let child = c
            .arg("--chardev")
            .arg(format!(
                "socket,path={},server=on,wait=off,id=qmp0",
                qmp.display()
            ))
            .args(["--monitor", "chardev=qmp0"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("qemu-storage-daemon is required (apt-get install qemu-utils): {e}")
            });
        let t = Instant::now();
        // The files appear at bind, before listen: ready is a connection taken.
        while !(std::os::unix::net::UnixStream::connect(&qmp).is_ok()
            && std::os::unix::net::UnixStream::connect(&nbd).is_ok())
        {
            assert!(t.elapsed() < Duration::from_secs(20), "qsd did not start");
            std::thread::sleep(Duration::from_millis(5));
        }
        Qsd { child, qmp, nbd }
    }
}

impl Drop for Qsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A guest: qemu-io batches over NBD until stopped (random 4 KiB writes,
/// 1 MiB runs, zero writes, discards); returns how many batches ran.
fn guest(nbd: PathBuf, seed: u64, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut rng = Rng(seed);
        let mut batches = 0;
        while !stop.load(Ordering::SeqCst) {
            let mut c = Command::new("qemu-io");
            c.args(["-f", "raw"])
                .arg(format!("nbd+unix:///disk0?socket={}", nbd.display()));
            for _ in 0..8 {
                let kind = rng.below(10);
                let cmd = match kind {
                    0..=5 => format!(
                        "write -P {} {} 4k",
                        1 + rng.below(254),
                        rng.below(SIZE / 4096) * 4096
                    ),
                    6 | 7 => format!(
                        "write -P {} {} 1M",
                        1 + rng.below(254),
                        rng.below(SIZE / 4096 - 256) * 4096
                    ),
                    8 => format!("write -z {} 64k", rng.below(SIZE / 65536) * 65536),
                    _ => format!("discard {} 64k", rng.below(SIZE / 65536) * 65536),
                };
                c.arg("-c").arg(cmd);
            }
            // A batch may fail while the daemon is being killed.
            let _ = c.stdout(Stdio::null()).stderr(Stdio::null()).status();
            batches += 1;
        }
        batches
    })
}

/// Reads an export whole: the expected state of a cut.
fn read_export(nbd: &Path, export: &str) -> Vec<u8> {
    let mut c = NbdClient::connect_unix(
        nbd,
        &NbdOptions {
            export: export.into(),
            ..NbdOptions::default()
        },
    )
    .unwrap();
    let mut buf = vec![0u8; c.size() as usize];
    c.read(0, &mut buf).unwrap();
    c.disconnect();
    buf
}

/// The test's side of a source: the expected state of each cut, and a
/// fault to inject at the next cut.
#[derive(Default)]
struct Cuts {
    expected: Mutex<Vec<Vec<u8>>>,
    /// 1: SIGKILL the daemon (its pid) after reading; 2: panic.
    fault: AtomicUsize,
    pid: Mutex<Option<u32>>,
}

fn config(dir: &Path, qsd: &Qsd, cuts: &Arc<Cuts>) -> QemuConfig {
    let mut c = QemuConfig::new(&qsd.qmp, dir.join("work"));
    c.nbd_socket = Some(qsd.nbd.clone());
    c.timeout = Duration::from_secs(30);
    let cuts = cuts.clone();
    c.on_cut = Some(Arc::new(move |v: &CutViews| {
        let (_, export) = &v.exports[0];
        let bytes = read_export(&v.nbd_socket, export);
        cuts.expected.lock().push(bytes);
        match cuts.fault.swap(0, Ordering::SeqCst) {
            1 => {
                let pid = cuts.pid.lock().expect("pid set");
                // SAFETY: kill has no memory preconditions.
                unsafe { libc::kill(pid.cast_signed(), libc::SIGKILL) };
                std::thread::sleep(Duration::from_millis(100));
            }
            2 => panic!("blockrep dies after the cut"),
            _ => {}
        }
    }));
    c
}

/// Applies every log of the spool to the replica in `rdir` (created by
/// the first) and checks the replica against each cut's expected state.
fn ship(spool: &Spool, rdir: &Path, replica: &mut Option<Replica>, cuts: &Cuts) {
    while let Some(l) = spool.next_to_ship() {
        let log = MappedLog::open(l.path.as_ref().unwrap(), &ReadOptions::default()).unwrap();
        match replica {
            None => {
                *replica =
                    Some(Replica::create(Arc::new(FsDir::new(rdir).unwrap()), &log).unwrap());
            }
            Some(r) => {
                r.apply(&log).unwrap();
            }
        }
        spool.ack(l.point.sequence, &l.point.digest).unwrap();
    }
    let expected = cuts.expected.lock().last().cloned().unwrap();
    let got = std::fs::read(rdir.join("image")).unwrap();
    assert_eq!(got.len(), expected.len());
    if let Some(at) = common::first_diff(&got, &expected) {
        panic!("the replica differs from the cut at byte {at}");
    }
}

fn setup(dir: &Path) -> (PathBuf, Arc<Spool>) {
    let image = dir.join("disk.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&image)
        .arg(SIZE.to_string()));
    run(Command::new("qemu-io")
        .args([
            "-f",
            "qcow2",
            "-c",
            "write -P 0x5a 0 3M",
            "-c",
            "write -P 0x77 20M 1M",
        ])
        .arg(&image));
    std::fs::create_dir_all(dir.join("work")).unwrap();
    let g = Geometry::new(SIZE, 4096).unwrap();
    let spool = Spool::create(
        Arc::new(FsDir::new(dir.join("spool")).unwrap()),
        ID,
        ChainPoint::start(1, g),
        1 << 30,
    )
    .unwrap();
    (image, Arc::new(spool))
}

fn disks(spool: &Arc<Spool>) -> Vec<QemuDisk> {
    vec![QemuDisk {
        node: "disk0".into(),
        spool: spool.clone(),
    }]
}

fn written(c: QemuCycle) -> usize {
    match c {
        QemuCycle::Written(logs) => logs.len(),
        QemuCycle::Deferred { node } => panic!("deferred on {node}"),
    }
}

/// blockrep's names in QEMU (nodes, bitmaps, jobs, exports).
fn leftovers(q: &mut Qmp) -> Vec<String> {
    let mut names = Vec::new();
    let nodes = q
        .execute("query-named-block-nodes", serde_json::json!({"flat": true}))
        .unwrap();
    for n in nodes.as_array().unwrap() {
        names.extend(n["node-name"].as_str().map(str::to_string));
        for b in n["dirty-bitmaps"].as_array().into_iter().flatten() {
            names.extend(b["name"].as_str().map(|s| format!("bitmap {s}")));
        }
    }
    for what in ["query-jobs", "query-block-exports"] {
        let v = q.execute(what, serde_json::json!({})).unwrap();
        for j in v.as_array().unwrap() {
            names.extend(j["id"].as_str().map(str::to_string));
        }
    }
    names.retain(|n| n.contains("blockrep-"));
    names
}

fn compare_with_qemu_img(image: &Path, replica_image: &Path) {
    run(Command::new("qemu-img")
        .args(["compare", "-U", "-q", "-f", "qcow2", "-F", "raw"])
        .arg(image)
        .arg(replica_image));
}

#[test]
fn cycles_while_the_guest_writes_equal_each_frozen_view() {
    let dir = tempfile::tempdir().unwrap();
    let (image, spool) = setup(dir.path());
    let qsd = Qsd::start(dir.path(), &image);
    let cuts = Arc::new(Cuts::default());
    let mut src = QemuSource::open(config(dir.path(), &qsd, &cuts), disks(&spool)).unwrap();
    assert_eq!(src.states()[0].1, QemuDiskState::Initial);
    let rdir = dir.path().join("replica");
    let mut replica = None;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = guest(qsd.nbd.clone(), 7, stop.clone());
    for _ in 0..8 {
        assert_eq!(written(src.cycle(&CycleOptions::default()).unwrap()), 1);
        ship(&spool, &rdir, &mut replica, &cuts);
        assert!(matches!(src.states()[0].1, QemuDiskState::Tracking { .. }));
        std::thread::sleep(Duration::from_millis(150));
    }
    stop.store(true, Ordering::SeqCst);
    assert!(writer.join().unwrap() > 0);
    src.cycle(&CycleOptions::default()).unwrap();
    ship(&spool, &rdir, &mut replica, &cuts);
    // Only the current bitmap is left in QEMU.
    let left = leftovers(src.qmp());
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0], "bitmap blockrep-e1-s9", "{left:?}");
    // Every retained point, read back through its view (the undo logs),
    // equals the frozen view of its cut: four 1 MiB windows each (the
    // guest writes everywhere; a whole view of an old point takes 5 to 25
    // seconds in a debug build).
    let replica = replica.unwrap();
    let expected = cuts.expected.lock();
    let points = replica.points();
    assert_eq!(points.len(), expected.len());
    for p in points {
        let view = replica.view(p.sequence).unwrap();
        let want = &expected[(p.sequence - 1) as usize];
        for mib in [0u64, 2, 20, 29] {
            let at = mib << 20;
            let mut got = vec![0u8; 1 << 20];
            view.read_at(&mut got, at).unwrap();
            let at = at as usize;
            if let Some(d) = common::first_diff(&got, &want[at..at + (1 << 20)]) {
                panic!(
                    "point {} differs from its cut at byte {}",
                    p.sequence,
                    at + d
                );
            }
        }
    }
    drop(expected);
    src.close().unwrap();
    compare_with_qemu_img(&image, &rdir.join("image"));
}

#[test]
fn a_daemon_killed_mid_cycle_is_resynced_and_blockrep_killed_after_a_cut_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let (image, spool) = setup(dir.path());
    let mut qsd = Qsd::start(dir.path(), &image);
    let cuts = Arc::new(Cuts::default());
    let rdir = dir.path().join("replica");
    let mut replica = None;
    let mut src = QemuSource::open(config(dir.path(), &qsd, &cuts), disks(&spool)).unwrap();
    for _ in 0..3 {
        let stop = Arc::new(AtomicBool::new(false));
        let writer = guest(qsd.nbd.clone(), 11, stop.clone());
        std::thread::sleep(Duration::from_millis(200));
        src.cycle(&CycleOptions::default()).unwrap();
        stop.store(true, Ordering::SeqCst);
        writer.join().unwrap();
        ship(&spool, &rdir, &mut replica, &cuts);
    }

    // The daemon dies in the middle of a cycle: the cycle fails, nothing
    // is spooled; the restarted daemon's bitmap cannot be trusted.
    let head = spool.head();
    *cuts.pid.lock() = Some(qsd.child.id());
    cuts.fault.store(1, Ordering::SeqCst);
    assert!(src.cycle(&CycleOptions::default()).is_err());
    assert_eq!(spool.head(), head);
    drop(src);
    drop(qsd);
    qsd = Qsd::start(dir.path(), &image);
    let mut src = QemuSource::open(config(dir.path(), &qsd, &cuts), disks(&spool)).unwrap();
    assert!(
        matches!(src.states()[0].1, QemuDiskState::ResyncRequired { .. }),
        "{:?}",
        src.states()
    );
    let e = src.cycle(&CycleOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ResyncRequired);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = guest(qsd.nbd.clone(), 13, stop.clone());
    let remote = replica.as_ref().unwrap().block_digests(0).unwrap();
    let logs = src.resync(&[("disk0".into(), remote)]).unwrap();
    assert_eq!(logs.len(), 1);
    ship(&spool, &rdir, &mut replica, &cuts);
    assert!(matches!(src.states()[0].1, QemuDiskState::Tracking { .. }));
    std::thread::sleep(Duration::from_millis(200));
    src.cycle(&CycleOptions::default()).unwrap();
    ship(&spool, &rdir, &mut replica, &cuts);

    // blockrep dies right after a cut (overlay, job, export and two
    // bitmaps left in QEMU); the next open removes the debris and merges
    // the bitmaps, so what the guest wrote meanwhile is in the next log.
    cuts.fault.store(2, Ordering::SeqCst);
    let died = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = src.cycle(&CycleOptions::default());
    }));
    assert!(died.is_err());
    drop(src);
    cuts.expected.lock().pop();
    let debris = leftovers(&mut Qmp::connect(&qsd.qmp, Duration::from_secs(10)).unwrap());
    assert!(debris.len() > 2, "{debris:?}");
    let mut src = QemuSource::open(config(dir.path(), &qsd, &cuts), disks(&spool)).unwrap();
    assert!(matches!(src.states()[0].1, QemuDiskState::Tracking { .. }));
    let left = leftovers(src.qmp());
    assert_eq!(left.len(), 1, "{left:?}");
    std::thread::sleep(Duration::from_millis(200));
    src.cycle(&CycleOptions::default()).unwrap();
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    ship(&spool, &rdir, &mut replica, &cuts);
    src.cycle(&CycleOptions::default()).unwrap();
    ship(&spool, &rdir, &mut replica, &cuts);
    src.close().unwrap();
    compare_with_qemu_img(&image, &rdir.join("image"));
}

/// A group of two nodes with dependent writes: block `i` is written on
/// the first disk, and only once that write completed, block `i` on the
/// second. No point may hold the second write without the first: every
/// cut's views, and every replica point, keep that order.
#[test]
fn a_group_is_cut_at_one_instant() {
    // Blocks 1024.. of both disks start as zeros (setup wrote below 4 MiB
    // and at 20 MiB).
    const FIRST: u64 = 1024;
    let dir = tempfile::tempdir().unwrap();
    let mut images = Vec::new();
    let mut spools = Vec::new();
    for i in 0..2 {
        let d = dir.path().join(format!("d{i}"));
        std::fs::create_dir_all(&d).unwrap();
        let (image, spool) = setup(&d);
        images.push(image);
        spools.push(spool);
    }
    std::fs::create_dir_all(dir.path().join("work")).unwrap();
    let refs: Vec<&Path> = images.iter().map(PathBuf::as_path).collect();
    let qsd = Qsd::start_many(dir.path(), &refs);
    let views: Arc<Mutex<Vec<[Vec<u8>; 2]>>> = Arc::default();
    let mut config = QemuConfig::new(&qsd.qmp, dir.path().join("work"));
    config.nbd_socket = Some(qsd.nbd.clone());
    {
        let views = views.clone();
        config.on_cut = Some(Arc::new(move |v: &CutViews| {
            let a = read_export(&v.nbd_socket, &v.exports[0].1);
            let b = read_export(&v.nbd_socket, &v.exports[1].1);
            views.lock().push([a, b]);
        }));
    }
    let disks = (0..2)
        .map(|i| QemuDisk {
            node: format!("disk{i}"),
            spool: spools[i].clone(),
        })
        .collect();
    let mut src = QemuSource::open(config, disks).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (nbd, stop) = (qsd.nbd.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) && i < 1000 {
                for disk in ["disk0", "disk1"] {
                    run(Command::new("qemu-io")
                        .args(["-f", "raw"])
                        .arg(format!("nbd+unix:///{disk}?socket={}", nbd.display()))
                        .arg("-c")
                        .arg(format!(
                            "write -P {} {} 4k",
                            1 + i % 250,
                            (FIRST + i) * 4096
                        ))
                        .stdout(Stdio::null()));
                }
                i += 1;
            }
            i
        })
    };
    let rdirs = [dir.path().join("r0"), dir.path().join("r1")];
    let mut replicas: [Option<Replica>; 2] = [None, None];
    let cuts = Arc::new(Cuts::default());
    let ordered = |a: &[u8], b: &[u8]| {
        (0..1000u64).all(|i| {
            let at = ((FIRST + i) * 4096) as usize;
            b[at] == 0 || a[at] != 0
        })
    };
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(150));
        let logs = match src.cycle(&CycleOptions::default()).unwrap() {
            QemuCycle::Written(logs) => logs,
            QemuCycle::Deferred { node } => panic!("deferred on {node}"),
        };
        assert_eq!(logs.len(), 2);
        let g = (logs[0].header.group, logs[1].header.group);
        assert!(g.0.is_some() && g.0 == g.1, "one group cut: {g:?}");
        let [a, b] = views.lock().last().cloned().unwrap();
        assert!(
            ordered(&a, &b),
            "a cut holds a second write without its first"
        );
        for i in 0..2 {
            cuts.expected
                .lock()
                .push(if i == 0 { a.clone() } else { b.clone() });
            ship(&spools[i], &rdirs[i], &mut replicas[i], &cuts);
        }
        let (ra, rb) = (
            std::fs::read(rdirs[0].join("image")).unwrap(),
            std::fs::read(rdirs[1].join("image")).unwrap(),
        );
        assert!(ordered(&ra, &rb));
    }
    stop.store(true, Ordering::SeqCst);
    assert!(writer.join().unwrap() > 0);
    src.close().unwrap();
}
