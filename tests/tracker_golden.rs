//! The tracker file format against a committed golden file.
//!
//! `tests/golden/tracker_v1.brt` is what a fixed sequence of operations
//! writes. A change to the bytes fails here until the format version is
//! bumped on purpose and the file regenerated with `BLOCKREP_BLESS=1`.

use blockrep::tracker::{OpenState, PersistentTracker};
use blockrep::{DiskId, Geometry};

const GOLDEN: &str = "tests/golden/tracker_v1.brt";

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
    pt.close().unwrap();
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
    assert_eq!(u32_at(&b, 8), 1, "version");
    assert_eq!(u32_at(&b, 12), 0, "flags: closed cleanly");
    assert_eq!(&b[16..32], &[7; 16]);
    assert_eq!(u64_at(&b, 32), 4 << 20);
    assert_eq!(u32_at(&b, 40), 4096);
    assert_eq!(u32_at(&b, 44), 20);
    assert_eq!(u64_at(&b, 48), 2, "generation after one cut");
    let slot = b[56] as usize;
    assert_eq!(slot, 1, "close writes the slot that was inactive");
    let (w, iw) = (u64_at(&b, 64) as usize, u64_at(&b, 72) as usize);
    assert_eq!((w, iw), (16, 1));
    assert_eq!(crc32fast::hash(&b[..124]), u32_at(&b, 124));
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
    let (pt, st) = PersistentTracker::open(&p, DiskId([7; 16]), geo()).unwrap();
    assert!(matches!(st, OpenState::Clean { dirty: 4 }));
    assert_eq!(pt.cut().blocks().collect::<Vec<_>>(), dirty);
}
