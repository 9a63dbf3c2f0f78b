//! What the object-store tests share, whatever the store (S3, Azure Blob,
//! a replica server's vault): a primary whose disk carries a plain-text
//! marker, shipping sealed; hydrates compared byte for byte; the scan for
//! the marker in what the store keeps; and the scenarios every store must
//! pass (cycles through a faulty link, a second writer fenced).
#![allow(dead_code)]

use super::common::Rng;
use super::net_common::proxy::Proxy;
use blockrep::io::{Dir, FsDir, MemDir, MemStorage, Storage};
use blockrep::seal::{Keyring, SealKey};
use blockrep::source::{AnyTracker, CycleOptions, Pipeline, TransferOptions};
use blockrep::store::{
    hydrate, read_manifest, StoreConfig, StoreShipper, StoreShipperConfig, WriterId,
};
use blockrep::{DiskId, ErrorKind};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const ID: DiskId = DiskId([0x5e; 16]);
pub const SIZE: u64 = 8 << 20;
/// Written into the disk: must never appear in the store.
pub const MARKER: &[u8] = b"PLAINTEXT-MARKER-THAT-MUST-NOT-LEAK!";

/// A primary: its pipeline and disk.
pub type Primary = (Arc<Pipeline<AnyTracker>>, Arc<dyn Storage>);

pub fn keys() -> Keyring {
    Keyring::new(SealKey::from_bytes([0x42; 32]))
}

pub fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    wait_said(what, &mut done, &|| String::new());
}

/// Waits for `p`'s spool to be shipped whole by `s`.
pub fn wait_shipped(what: &str, p: &Pipeline<AnyTracker>, s: &StoreShipper) {
    wait_said(what, &mut || p.status().pending_logs == 0, &|| {
        format!("{:?}", s.status())
    });
}

pub fn wait_said(what: &str, done: &mut dyn FnMut() -> bool, say: &dyn Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {}",
            say()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Twelve writes through the primary's write guard, a third of them the
/// marker.
pub fn scribble(p: &Pipeline<AnyTracker>, disk: &dyn Storage, rng: &mut Rng) {
    for _ in 0..12 {
        let off = rng.below(SIZE - 40_000);
        let mut w = vec![0u8; 1 + rng.below(40_000) as usize];
        if rng.below(3) == 0 {
            for c in w.chunks_mut(MARKER.len()) {
                c.copy_from_slice(&MARKER[..c.len()]);
            }
        } else {
            rng.fill(&mut w);
        }
        let _g = p.primary().write_guard(off, w.len() as u64).unwrap();
        disk.write_at(&w, off).unwrap();
    }
}

pub fn snapshot(disk: &dyn Storage) -> Vec<u8> {
    let mut b = vec![0u8; SIZE as usize];
    disk.read_at(&mut b, 0).unwrap();
    b
}

pub fn pipeline(disk: Arc<dyn Storage>) -> Pipeline<AnyTracker> {
    Pipeline::builder(disk, Arc::new(MemDir::new()))
        .create(ID, 1)
        .unwrap()
}

/// A primary with 6 MiB of random data (so the initial full log goes up
/// in two parts) and the marker twenty times, its initial full log and
/// `cycles` cycles in its spool; the source at each point.
pub fn primary(rng: &mut Rng, cycles: usize) -> (Primary, Vec<Vec<u8>>) {
    let disk: Arc<dyn Storage> = Arc::new(MemStorage::zeroed(SIZE).unwrap());
    let mut first = vec![0u8; 6 << 20];
    rng.fill(&mut first);
    disk.write_at(&first, 0).unwrap();
    for i in 0..20u64 {
        disk.write_at(MARKER, i * 300_000 + 7).unwrap();
    }
    let p = Arc::new(pipeline(disk.clone()));
    p.initial_sync(TransferOptions::default()).unwrap();
    let mut states = vec![snapshot(&*disk)];
    for _ in 0..cycles {
        scribble(&p, &*disk, rng);
        p.cycle(&CycleOptions::default()).unwrap();
        states.push(snapshot(&*disk));
    }
    ((p, disk), states)
}

pub fn shipper_config(store: StoreConfig, writer: WriterId) -> StoreShipperConfig {
    let mut c = StoreShipperConfig::new(store, keys(), writer);
    // Parts of 5 MiB (the least S3 takes): the full log goes up in two.
    c.part_bytes = 5 << 20;
    c.retry_min = Duration::from_millis(20);
    c.retry_max = Duration::from_millis(300);
    c
}

pub fn work_dir(path: &Path) -> Arc<dyn Dir> {
    std::fs::create_dir_all(path).unwrap();
    Arc::new(FsDir::new(path).unwrap())
}

/// A replica hydrated into `dir` (from what it holds already, if any);
/// its image.
pub fn hydrated(
    config: &StoreConfig,
    keys: &Keyring,
    dir: &Path,
    point: Option<u64>,
) -> blockrep::Result<Vec<u8>> {
    hydrate(config, keys, ID, work_dir(dir), point, 0)?;
    Ok(std::fs::read(dir.join("image")).unwrap())
}

/// [`hydrated`] again after each failure of the transport, as an
/// operator (or `--follow`) would; anything else fails at once.
pub fn hydrated_retrying(config: &StoreConfig, dir: &Path, point: Option<u64>) -> Vec<u8> {
    for _ in 0..40 {
        match hydrated(config, &keys(), dir, point) {
            Ok(b) => return b,
            Err(e) if e.kind() == ErrorKind::Io => {}
            Err(e) => panic!("{e}"),
        }
    }
    panic!("40 hydrates failed in a row");
}

/// Every file under `root`.
pub fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Nothing readable without the key: no file under `root` (the store's
/// own storage, whatever its layout) carries the marker; at least 6 MiB
/// looked at (the random part of the disk is in the store, sealed).
pub fn assert_no_marker(root: &Path) {
    let all = files_under(root);
    let mut seen = 0;
    for f in &all {
        let b = std::fs::read(f).unwrap();
        assert!(
            !b.windows(MARKER.len()).any(|w| w == MARKER),
            "plain text in {}",
            f.display()
        );
        seen += b.len();
    }
    assert!(seen >= 6 << 20, "only {seen} bytes in {all:?}");
}

/// A primary ships five points through `proxy` (whose faults the store
/// must ride out) to `faulty`; the store then holds exactly those points,
/// each of which hydrates to the source's content at its cut, read
/// through the same faults; a standby follows from point 2 to the head;
/// `store_root` (the store's own files) holds no plain text; the wrong
/// key opens nothing. Returns the source at each point.
pub fn cycles_through_faults(
    direct: &StoreConfig,
    faulty: &StoreConfig,
    proxy: &Proxy,
    store_root: &Path,
    scratch: &Path,
) -> Vec<Vec<u8>> {
    let mut rng = Rng(5);
    let ((p, _disk), states) = primary(&mut rng, 4);
    let writer = WriterId::random().unwrap();
    let shipper =
        StoreShipper::start(p.shared_spool(), shipper_config(faulty.clone(), writer)).unwrap();
    wait_shipped("the cycles to ship", &p, &shipper);
    let st = shipper.status();
    assert_eq!(st.logs_shipped, 5, "{st:?}");
    assert!(!st.fenced);
    assert!(
        proxy.counts.cuts.load(Ordering::SeqCst) > 0,
        "the proxy cut nothing"
    );
    drop(shipper);

    // Another host, with only the store and the key: every point, exact,
    // read through the same faults (a failed hydrate is run again and
    // goes on from the replica it left).
    let m = read_manifest(direct, &keys(), ID).unwrap().unwrap();
    assert_eq!(m.points(), vec![1, 2, 3, 4, 5]);
    assert_eq!(m.writer, writer.hex());
    for (i, want) in states.iter().enumerate() {
        let point = i as u64 + 1;
        let got = hydrated_retrying(faulty, &scratch.join(format!("h{point}")), Some(point));
        assert!(
            got == *want,
            "point {point} differs from the source at its cut"
        );
    }
    // A standby following the store: from point 2 to the head.
    let follow = scratch.join("h2");
    assert_eq!(hydrated(direct, &keys(), &follow, None).unwrap(), states[4]);
    assert_no_marker(store_root);
    // The wrong key is refused, naming no key material.
    let wrong = Keyring::new(SealKey::from_bytes([0x43; 32]));
    let e = hydrated(direct, &wrong, &scratch.join("wrong"), None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Mismatch, "{e}");
    states
}

/// A primary ships two points to `config`; a second primary with the
/// same disk id is refused and nothing of it lands; the first goes on.
/// Returns the first primary (whose latest state the store holds), its
/// writer, and the rng to go on writing with.
pub fn a_second_writer_is_fenced(config: &StoreConfig) -> (Primary, WriterId, Rng) {
    let mut rng = Rng(9);
    let ((p, disk), _) = primary(&mut rng, 2);
    let first = WriterId::random().unwrap();
    let a = StoreShipper::start(p.shared_spool(), shipper_config(config.clone(), first)).unwrap();
    wait_shipped("the first primary to ship", &p, &a);
    let before = read_manifest(config, &keys(), ID).unwrap().unwrap();

    let disk2: Arc<dyn Storage> = Arc::new(MemStorage::zeroed(SIZE).unwrap());
    let p2 = Arc::new(pipeline(disk2.clone()));
    scribble(&p2, &*disk2, &mut rng);
    p2.initial_sync(TransferOptions::default()).unwrap();
    let b = StoreShipper::start(
        p2.shared_spool(),
        shipper_config(config.clone(), WriterId::random().unwrap()),
    )
    .unwrap();
    wait_for("the second primary to be fenced", || b.status().fenced);
    let e = b.status().last_error.unwrap();
    assert!(e.contains(&first.hex()), "{e}");
    assert_eq!(
        p2.status().pending_logs,
        1,
        "nothing of the second was acknowledged"
    );
    assert_eq!(read_manifest(config, &keys(), ID).unwrap().unwrap(), before);
    drop(b);
    // The first goes on.
    scribble(&p, &*disk, &mut rng);
    p.cycle(&CycleOptions::default()).unwrap();
    wait_shipped("the first primary to ship again", &p, &a);
    drop(a);
    ((p, disk), first, rng)
}

/// Two primaries with the same disk id start shipping to an empty store
/// at once: both race to create the manifest (a conditional create), one
/// wins and ships everything, the other is fenced with nothing of it
/// named; the store holds the winner's chain, exactly.
pub fn two_writers_racing_one_wins(config: &StoreConfig, scratch: &Path) {
    let mut rng = Rng(21);
    let (a, a_states) = primary(&mut rng, 1);
    let (b, b_states) = primary(&mut rng, 1);
    let (wa, wb) = (WriterId::random().unwrap(), WriterId::random().unwrap());
    let sa = StoreShipper::start(a.0.shared_spool(), shipper_config(config.clone(), wa)).unwrap();
    let sb = StoreShipper::start(b.0.shared_spool(), shipper_config(config.clone(), wb)).unwrap();
    let settled = |s: &StoreShipper, p: &Pipeline<AnyTracker>| {
        s.status().fenced || p.status().pending_logs == 0
    };
    wait_said(
        "one writer to win and the other to be fenced",
        &mut || settled(&sa, &a.0) && settled(&sb, &b.0),
        &|| format!("{:?} / {:?}", sa.status(), sb.status()),
    );
    let (fa, fb) = (sa.status().fenced, sb.status().fenced);
    assert!(fa != fb, "exactly one is fenced: {fa} {fb}");
    let (winner, states, loser) = if fa {
        (wb, b_states, &a)
    } else {
        (wa, a_states, &b)
    };
    assert_eq!(
        loser.0.status().pending_logs,
        2,
        "nothing of the loser acked"
    );
    let m = read_manifest(config, &keys(), ID).unwrap().unwrap();
    assert_eq!((m.writer.clone(), m.points()), (winner.hex(), vec![1, 2]));
    assert!(hydrated(config, &keys(), &scratch.join("race"), None).unwrap() == states[1]);
}

/// A store at `url` with `options`, and the short timeout and few retries
/// a test wants.
pub fn test_config(url: String, options: Vec<(String, String)>) -> StoreConfig {
    let mut c = StoreConfig::new(url);
    c.options = options;
    c.timeout = Duration::from_secs(5);
    c.retries = 2;
    c
}

/// Compaction of the five points of [`cycles_through_faults`] keeping the
/// newest three: 1 and 2 fold into a base at 3 (the first base and logs 2
/// and 3 deleted at once, no grace); the kept points still hydrate
/// exactly, point 2 no more.
pub fn compaction_keeps_the_newest_three(config: &StoreConfig, states: &[Vec<u8>], scratch: &Path) {
    let policy = blockrep::store::StorePolicy {
        keep_last: 3,
        grace: Duration::ZERO,
    };
    let work = work_dir(&scratch.join("compact"));
    let r = blockrep::store::compact(config, &keys(), ID, work, policy).unwrap();
    assert_eq!(
        (r.base, r.dropped.clone(), r.deleted),
        (Some(3), vec![1, 2], 3),
        "{r:?}"
    );
    for (i, want) in states.iter().enumerate().skip(2) {
        let point = i as u64 + 1;
        let got = hydrated(
            config,
            &keys(),
            &scratch.join(format!("kept{point}")),
            Some(point),
        );
        assert!(
            got.unwrap() == *want,
            "point {point} after compaction differs"
        );
    }
    assert!(hydrated(config, &keys(), &scratch.join("gone"), Some(2)).is_err());
}

/// A proxy in front of an HTTP store that cuts uploads at random offsets,
/// drops answers, stalls, and answers "503 Slow Down" (as an overloaded
/// store does): the shipper must retry and resume from the manifest.
pub fn faulty_http_proxy(store: std::net::SocketAddr, seed: u64) -> Proxy {
    use super::net_common::proxy::Faults;
    Proxy::start(
        store,
        Faults {
            cut_within: Some(7 << 20),
            drop_answer_percent: 30,
            stall_per_mille: 2,
            stall: Duration::from_millis(300),
            refuse_percent: 15,
            ..Faults::NONE
        },
        seed,
    )
}
