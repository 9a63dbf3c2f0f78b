//! The sealed-object format against a committed golden file.
//!
//! `tests/golden/sealed_v1.brseal` is what a fixed key, salt and binding
//! seal of a fixed text. A change to the bytes fails here until the
//! format version is bumped on purpose and the file regenerated with
//! `BLOCKREP_BLESS=1`.
#![cfg(feature = "seal")]

use blockrep::log::Digest;
use blockrep::seal::{open_bytes, Binding, Keyring, ObjectKind, SealKey, SealWriter};
use blockrep::DiskId;

const GOLDEN: &str = "tests/golden/sealed_v1.brseal";

fn key() -> SealKey {
    SealKey::from_bytes(*b"golden sealing key, 32 bytes!!!!")
}

fn binding() -> Binding {
    Binding::point(
        ObjectKind::Log,
        DiskId(*b"golden-disk-id!!"),
        7,
        42,
        Digest([0x11; 32]),
    )
}

/// Two full chunks and a short last one.
fn plain() -> Vec<u8> {
    (0..2 * 4096 + 100u32).map(|i| (i % 251) as u8).collect()
}

fn reference() -> Vec<u8> {
    let mut w =
        SealWriter::with_fixed_salt(Vec::new(), &key(), &binding(), 4096, [0x5a; 24]).unwrap();
    w.append(&plain()).unwrap();
    w.finish().unwrap().0
}

#[test]
fn writer_produces_the_golden_bytes() {
    let got = reference();
    if std::env::var_os("BLOCKREP_BLESS").is_some() {
        std::fs::write(GOLDEN, &got).unwrap();
    }
    let want = std::fs::read(GOLDEN).expect("golden file (regenerate with BLOCKREP_BLESS=1)");
    assert_eq!(got, want, "the sealed format changed: bump its version");
}

#[test]
fn the_golden_file_opens_to_its_text() {
    let want = std::fs::read(GOLDEN).unwrap();
    let keys = Keyring::new(key());
    assert_eq!(
        open_bytes(&keys, &binding(), &want, 1 << 20).unwrap(),
        plain()
    );
    // The header's fields at their documented offsets (docs/FORMAT.md).
    assert_eq!(&want[0..8], b"BRSEAL\0\0");
    assert_eq!(u16::from_le_bytes([want[8], want[9]]), 1);
    assert_eq!(want[10], 1, "AES-256-GCM, per-object key");
    assert_eq!(want[11], 1, "a log");
    assert_eq!(u32::from_le_bytes(want[12..16].try_into().unwrap()), 4096);
    assert_eq!(&want[16..32], &key().id().0);
    assert_eq!(&want[32..56], &[0x5a; 24]);
    assert_eq!(want.len(), 64 + plain().len() + 3 * 16);
}
