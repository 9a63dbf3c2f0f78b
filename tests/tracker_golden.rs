//! The tracker file format against a committed golden file.
//!
//! `tests/golden/tracker_v2.brt` is what a fixed sequence of operations
//! writes. A change to the bytes fails here until the format version is
//! bumped on purpose and the file regenerated with `BLOCKREP_BLESS=1`.
//! `tracker_v1.brt`, the previous version, must be refused (it recorded no
//! disk identity, so its disk may have changed unseen).

use blockrep::io::DiskIdentity;
use blockrep::tracker::{OpenState, PersistentTracker};
use blockrep::{DiskId, ErrorKind, Geometry};

const GOLDEN: &str = "tests/golden/tracker_v2.brt";
const V1: &str = "tests/golden/tracker_v1.brt";

/// The disk's identity at the reference's clean close.
const DISK: DiskIdentity = DiskIdentity {
    device: 0x0801,
    inode: 123_456,
    size: 4 << 20,
    modified_ns: 1_700_000_000_123_456_789,
    changed_ns: 1_700_000_000_987_654_321,
};

fn geo() -> Geometry {
    Geometry::new(4 << 20, 4096).unwrap() // 1024 blocks, 4 regions of 1 MiB
}

fn write_reference(path: &std::path::Path) {
    let pt = PersistentTracker::create(path, DiskId([7; 16]), geo(), 1 << 20).unwrap();
    for b in [1u64, 2, 70, 1023] {
        pt.begin_write(b * 4096, 4096).unwrap().finish();
    }
    let f = pt.cut();
    pt.commit(f.generation()).unwrap();
    pt.begin_write(70 * 4096, 10).unwrap().finish();
    pt.begin_write(300 * 4096, 4096 * 3).unwrap().finish();
    pt.close(Some(DISK)).unwrap();
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

#[test]
fn writer_produces_the_golden_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.brt");
    write_reference(&p);
    let got = std::fs::read(&p).unwrap();
    if std::env::var_os("BLOCKREP_BLESS").is_some() {
        std::fs::write(GOLDEN, &got).unwrap();
    }
    let want = std::fs::read(GOLDEN).unwrap();
    assert_eq!(got.len(), want.len());
    let first_diff = got.iter().zip(&want).position(|(a, b)| a != b);
    assert_eq!(
        first_diff, None,
        "tracker file format changed; bump the version"
    );
}

/// Decodes the golden file by the byte tables of docs/FORMAT.md alone.
#[test]
fn golden_file_matches_the_documented_layout() {
    let b = std::fs::read(GOLDEN).unwrap();
    assert_eq!(&b[0..8], b"BRTRACK\0");
    assert_eq!(u32_at(&b, 8), 2, "version");
    assert_eq!(
        u32_at(&b, 12),
        2,
        "flags: closed cleanly, disk identity recorded"
    );
    assert_eq!(&b[16..32], &[7; 16]);
    assert_eq!(u64_at(&b, 32), 4 << 20);
    assert_eq!(u32_at(&b, 40), 4096);
    assert_eq!(u32_at(&b, 44), 20);
    assert_eq!(u64_at(&b, 48), 2, "generation after one cut");
    let slot = b[56] as usize;
    assert_eq!(slot, 1, "close writes the slot that was inactive");
    let (w, iw) = (u64_at(&b, 64) as usize, u64_at(&b, 72) as usize);
    assert_eq!((w, iw), (16, 1));
    assert_eq!(u64_at(&b, 88), DISK.device);
    assert_eq!(u64_at(&b, 96), DISK.inode);
    assert_eq!(u64_at(&b, 104), DISK.size);
    assert_eq!(u64_at(&b, 112), DISK.modified_ns as u64);
    assert_eq!(u64_at(&b, 120), DISK.changed_ns as u64);
    assert!(b[128..252].iter().all(|&x| x == 0), "reserved");
    assert_eq!(crc32fast::hash(&b[..252]), u32_at(&b, 252));
    let s = (w * 8).div_ceil(4096) * 4096;
    let start = 4096 + slot * s;
    assert_eq!(crc32fast::hash(&b[start..start + w * 8]), u32_at(&b, 80));
    let mut dirty = Vec::new();
    for i in 0..w {
        let v = u64_at(&b, start + i * 8);
        dirty.extend(
            (0..64)
                .filter(|k| v >> k & 1 == 1)
                .map(|k| (i * 64 + k) as u64),
        );
    }
    assert_eq!(dirty, vec![70, 300, 301, 302]);
    let intent = 4096 + 2 * s;
    assert_eq!(u64_at(&b, intent), 0, "clean close clears the intent map");
    assert_eq!(b.len(), intent + 4096);
    // And the library reads it as the same set.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("g.brt");
    std::fs::copy(GOLDEN, &p).unwrap();
    // The disk changed since the close: tracking was lost.
    let touched = DiskIdentity {
        modified_ns: DISK.modified_ns + 1,
        ..DISK
    };
    for seen in [Some(touched), None] {
        let e = PersistentTracker::open(&p, DiskId([7; 16]), geo(), seen).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ResyncRequired, "{e}");
    }
    let (pt, st) = PersistentTracker::open(&p, DiskId([7; 16]), geo(), Some(DISK)).unwrap();
    assert!(matches!(st, OpenState::Clean { dirty: 4 }));
    assert_eq!(pt.cut().blocks().collect::<Vec<_>>(), dirty);
}

/// A version 1 file is refused as unsupported; opened through
/// `open_or_create` it is recreated and tracking is reported lost.
#[test]
fn version_1_is_refused_and_costs_a_resync() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("v1.brt");
    std::fs::copy(V1, &p).unwrap();
    let e = PersistentTracker::open(&p, DiskId([7; 16]), geo(), None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    let (_, st) =
        PersistentTracker::open_or_create(&p, DiskId([7; 16]), geo(), 1 << 20, None).unwrap();
    assert!(matches!(st, OpenState::Invalid(ref e) if e.kind() == ErrorKind::Unsupported));
}
