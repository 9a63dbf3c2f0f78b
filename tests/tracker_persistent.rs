//! The persistent tracker across crashes and bad files.
//!
//! The crash test runs a child process (this test binary again, see
//! `child_marker`) that marks writes and reports each acknowledged one on
//! stdout, kills it with SIGKILL at a random moment, reopens the file and
//! checks that every acknowledged, not yet committed block is resent.

mod common;

use blockrep::tracker::{OpenState, PersistentTracker, INTENT_REGION_DEFAULT};
use blockrep::{DiskId, ErrorKind, Geometry};
use common::Rng;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};

const CHILD_ENV: &str = "BLOCKREP_TRACKER_CHILD";
const DISK: u64 = 1 << 30;
const BS: u32 = 4096;
const REGION: u32 = 1 << 20;

fn geo() -> Geometry {
    Geometry::new(DISK, BS).unwrap()
}

fn id() -> DiskId {
    DiskId([7; 16])
}

/// The child: marks writes in a few hot areas, cuts and commits now and
/// then, and reports each step once it is done. Does nothing unless run by
/// the crash test.
#[test]
fn child_marker() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let seed: u64 = std::env::var("BLOCKREP_SEED").unwrap().parse().unwrap();
    let (pt, _) = PersistentTracker::open_or_create(&path, id(), geo(), REGION, None).unwrap();
    let mut rng = Rng(seed | 1);
    let mut step = 0u64;
    loop {
        step += 1;
        if step.is_multiple_of(97) {
            // A cycle: cut, then either its log became durable (commit) or
            // the cycle failed (reclaim). The decision is printed first, so
            // a kill during the commit still counts as shipped: the log was
            // durable before commit was called.
            let f = pt.cut();
            if rng.next().is_multiple_of(2) {
                println!("C {} ship", f.generation());
                pt.commit(f.generation()).unwrap();
            } else {
                println!("C {} fail", f.generation());
                pt.reclaim(&f);
            }
            continue;
        }
        // Writes cluster in 8 areas of 8 MiB, as guests' do.
        let area = rng.next() % 8 * (DISK / 8);
        let off = area + rng.next() % (8 << 20) / 512 * 512;
        let len = (1 + rng.next() % 64) * 512;
        let len = len.min(DISK - off);
        let guard = pt.begin_write(off, len).unwrap();
        // (the guest write would be submitted and completed here)
        drop(guard);
        println!("A {off} {len}");
    }
}

/// What the parent knows: the step of each block's last acknowledgement.
#[derive(Default)]
struct Model {
    step: u64,
    last_ack: HashMap<u64, u64>,
}

impl Model {
    fn apply(&mut self, line: &str) {
        let f: Vec<&str> = line.split_whitespace().collect();
        self.step += 1;
        match f.as_slice() {
            ["A", off, len] => {
                let (off, len): (u64, u64) = (off.parse().unwrap(), len.parse().unwrap());
                for b in off / u64::from(BS)..=(off + len - 1) / u64::from(BS) {
                    self.last_ack.insert(b, self.step);
                }
            }
            // Shipped: every block acknowledged so far is in a durable log.
            ["C", _, "ship"] => self.last_ack.clear(),
            _ => {}
        }
    }
}

fn run_child(path: &Path, seed: u64, lines: usize, model: &mut Model) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_marker", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, path)
        .env("BLOCKREP_SEED", seed.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let mut seen = 0;
    while seen < lines {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() != 0, "child ended early");
        if line.ends_with('\n') {
            model.apply(&line);
            seen += 1;
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Whatever the child printed before it died was acknowledged.
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    for l in rest.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
        model.apply(l);
    }
}

#[test]
fn sigkill_at_random_moments_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.brt");
    let mut rng = Rng(0x00c0_ffee);
    let mut model = Model::default();
    for round in 0..12 {
        let lines = 20 + (rng.next() % 3000) as usize;
        run_child(&path, rng.next(), lines, &mut model);
        let (pt, state) = PersistentTracker::open(&path, id(), geo(), None).unwrap();
        let OpenState::Recovered { resend } = state else {
            panic!("round {round}: a killed tracker must open as recovered, got {state:?}")
        };
        for &b in model.last_ack.keys() {
            assert!(
                resend.contains(b),
                "round {round}: acknowledged block {b} (acknowledged at step {} of {}) not resent",
                model.last_ack[&b],
                model.step,
            );
        }
        // Only the regions that were written may be resent: 8 areas of 8 MiB.
        for b in resend.blocks() {
            let off = b * u64::from(BS) % (DISK / 8);
            assert!(
                off < (8 << 20) + u64::from(REGION),
                "round {round}: block {b} was never near a write"
            );
        }
        // Everything resent is dirty in the reopened tracker, as the next
        // cycle will ship it. Half the rounds ship it (commit); the others
        // crash again with it still outstanding.
        assert_eq!(pt.tracker().snapshot(), resend);
        if round % 2 == 0 {
            let f = pt.cut();
            pt.commit(f.generation()).unwrap();
            model.last_ack.clear();
        }
        drop(pt); // another unclean stop
    }
}

fn fresh(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("t.brt");
    let pt = PersistentTracker::create(&p, id(), geo(), INTENT_REGION_DEFAULT).unwrap();
    pt.begin_write(0, 4096).unwrap().finish();
    pt.close(None).unwrap();
    p
}

fn open_kind(p: &Path) -> ErrorKind {
    PersistentTracker::open(p, id(), geo(), None)
        .map(|_| ())
        .unwrap_err()
        .kind()
}

fn flip(p: &Path, at: u64) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x10], at).unwrap();
}

#[test]
fn every_header_byte_flipped_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = fresh(dir.path());
    for at in 0..128 {
        flip(&p, at);
        let k = open_kind(&p);
        assert!(
            matches!(k, ErrorKind::Corrupt | ErrorKind::Unsupported),
            "byte {at}: {k:?}"
        );
        flip(&p, at);
    }
    assert!(PersistentTracker::open(&p, id(), geo(), None).is_ok());
}

#[test]
fn corrupt_checkpoint_truncation_and_mismatch_each_have_their_kind() {
    let dir = tempfile::tempdir().unwrap();
    let p = fresh(dir.path());
    let h = PersistentTracker::read_header(&p).unwrap();
    assert!(!h.in_use);
    // The active checkpoint slot starts at page 1 or after slot 0.
    let words = geo().block_count() / 64;
    let slot = 4096 + u64::from(h.active_slot) * words * 8;
    flip(&p, slot + 100);
    assert_eq!(open_kind(&p), ErrorKind::Corrupt);
    flip(&p, slot + 100);

    let len = std::fs::metadata(&p).unwrap().len();
    for cut in [0, 10, 127, 4096, len - 1] {
        let q = dir.path().join(format!("cut{cut}.brt"));
        std::fs::copy(&p, &q).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&q)
            .unwrap()
            .set_len(cut)
            .unwrap();
        assert_eq!(open_kind(&q), ErrorKind::Corrupt, "truncated to {cut}");
    }

    let other = Geometry::new(DISK, 8192).unwrap();
    let k = PersistentTracker::open(&p, id(), other, None)
        .map(|_| ())
        .unwrap_err();
    assert_eq!(k.kind(), ErrorKind::Mismatch);
    let k = PersistentTracker::open(&p, DiskId([8; 16]), geo(), None)
        .map(|_| ())
        .unwrap_err();
    assert_eq!(k.kind(), ErrorKind::Mismatch);

    // Untrusted files are never an empty set: open_or_create says Invalid.
    flip(&p, 40);
    let (_, st) =
        PersistentTracker::open_or_create(&p, id(), geo(), INTENT_REGION_DEFAULT, None).unwrap();
    assert!(
        matches!(st, OpenState::Invalid(ref e) if e.kind() == ErrorKind::Corrupt),
        "{st:?}"
    );
}

#[test]
fn resize_rewrites_the_file_for_the_new_geometry() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.brt");
    let mut pt = PersistentTracker::create(&p, id(), geo(), REGION).unwrap();
    pt.begin_write(4096, 4096).unwrap().finish();
    pt.begin_write(DISK - 4096, 4096).unwrap().finish();
    pt.resize(DISK / 2 + 4096).unwrap();
    pt.begin_write(DISK / 2, 4096).unwrap().finish();
    drop(pt); // unclean
    let g2 = Geometry::new(DISK / 2 + 4096, BS).unwrap();
    assert_eq!(
        PersistentTracker::open(&p, id(), geo(), None)
            .map(|_| ())
            .unwrap_err()
            .kind(),
        ErrorKind::Mismatch
    );
    let (pt, st) = PersistentTracker::open(&p, id(), g2, None).unwrap();
    let OpenState::Recovered { resend } = st else {
        panic!("{st:?}")
    };
    // Block 1 from before the resize, the new last block (grown) and the write after.
    assert!(resend.contains(1) && resend.contains(g2.block_count() - 1));
    assert!(resend.blocks().all(|b| b < g2.block_count()));
    pt.close(None).unwrap();
    let (pt, st) = PersistentTracker::open(&p, id(), g2, None).unwrap();
    assert!(matches!(st, OpenState::Clean { .. }));
    let b: Vec<u64> = pt.cut().blocks().collect();
    assert!(b.contains(&1) && b.contains(&(g2.block_count() - 1)));
}

/// A write made to the disk while no tracker was attached (closed cleanly,
/// disk modified, reopened) is detected: tracking is reported lost, never
/// a clean state with nothing dirty. Writes immediately after the close
/// are caught too (the identity is taken once the clock has moved on).
#[test]
fn writes_while_nothing_tracks_are_detected() {
    use blockrep::io::{FileStorage, Storage};
    let dir = tempfile::tempdir().unwrap();
    let (p, disk_path) = (dir.path().join("t.brt"), dir.path().join("disk.img"));
    let g = Geometry::new(8 << 20, BS).unwrap();
    let disk = FileStorage::create(&disk_path, g.size()).unwrap();
    for round in 0..20u8 {
        let (pt, _) =
            PersistentTracker::open_or_create(&p, id(), g, REGION, disk.identity().unwrap())
                .unwrap();
        pt.begin_write(4096, 4096).unwrap().finish();
        disk.write_at(&[round; 4096], 4096).unwrap();
        pt.close(disk.identity().unwrap()).unwrap();
        // Untouched: clean.
        let (pt, st) = PersistentTracker::open(&p, id(), g, disk.identity().unwrap()).unwrap();
        assert!(matches!(st, OpenState::Clean { dirty: 1 }), "{st:?}");
        pt.close(disk.identity().unwrap()).unwrap();
        // One byte written right after the close, nothing tracking.
        disk.write_at(&[round.wrapping_add(1)], 3 * 4096 + 17)
            .unwrap();
        let e = PersistentTracker::open(&p, id(), g, disk.identity().unwrap())
            .map(|_| ())
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ResyncRequired, "round {round}: {e}");
        let (pt, st) =
            PersistentTracker::open_or_create(&p, id(), g, REGION, disk.identity().unwrap())
                .unwrap();
        assert!(matches!(st, OpenState::Invalid(_)), "{st:?}");
        pt.close(disk.identity().unwrap()).unwrap();
        std::fs::remove_file(&p).unwrap();
    }
    // A disk replaced by a copy (another inode) is detected as well.
    let (pt, _) =
        PersistentTracker::open_or_create(&p, id(), g, REGION, disk.identity().unwrap()).unwrap();
    pt.close(disk.identity().unwrap()).unwrap();
    let copy = dir.path().join("copy.img");
    std::fs::copy(&disk_path, &copy).unwrap();
    std::fs::rename(&copy, &disk_path).unwrap();
    let replaced = FileStorage::open(&disk_path).unwrap();
    let e = PersistentTracker::open(&p, id(), g, replaced.identity().unwrap())
        .map(|_| ())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ResyncRequired);
}
