//! Opens arbitrary bytes as a persistent tracker file. It must return a
//! tracker or a typed error, never panic.
//!
//! When the first input byte is odd, the header and checkpoint CRCs are
//! recomputed first (layout from docs/FORMAT.md), so mutations reach the
//! checks behind the checksums.
#![no_main]

use blockrep::tracker::PersistentTracker;
use blockrep::{DiskId, Geometry};
use libfuzzer_sys::fuzz_target;
use std::io::Write;

fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// The header's length and where its CRC lies (version 2, docs/FORMAT.md).
const HEADER_LEN: usize = 256;
const HEADER_CRC_AT: usize = HEADER_LEN - 4;

fn fix_crcs(b: &mut [u8]) {
    if b.len() < HEADER_LEN {
        return;
    }
    // Checkpoint CRC over the active slot, when the slot lies in the input.
    let words = u64::from_le_bytes(b[64..72].try_into().unwrap());
    let slot_len = (words.saturating_mul(8).saturating_add(4095)) & !4095;
    let start = 4096u64.saturating_add(if b[56] == 1 { slot_len } else { 0 });
    if let Some(end) = start.checked_add(words.saturating_mul(8)) {
        if end <= b.len() as u64 {
            let crc = crc32fast::hash(&b[start as usize..end as usize]);
            b[80..84].copy_from_slice(&crc.to_le_bytes());
        }
    }
    let crc = crc32fast::hash(&b[..HEADER_CRC_AT]);
    b[HEADER_CRC_AT..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    debug_assert_eq!(get_u32(b, HEADER_CRC_AT), crc);
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let mut bytes = rest.to_vec();
    if mode & 1 == 1 {
        fix_crcs(&mut bytes);
    }
    let path = std::env::temp_dir().join(format!("blockrep-fuzz-{}.brt", std::process::id()));
    std::fs::File::create(&path).unwrap().write_all(&bytes).unwrap();

    // With the identity the header claims: reaches the deeper checks.
    if let Ok(h) = PersistentTracker::read_header(&path) {
        // With the disk identity it recorded (when it did), and without.
        for seen in [h.disk_identity, None] {
            if let Ok((pt, _state)) = PersistentTracker::open(&path, h.disk_id, h.geometry, seen) {
                let _ = pt.begin_write(0, 1).map(|g| g.finish());
                let f = pt.cut();
                let _ = pt.commit(f.generation());
                let _ = pt.close(seen);
            }
        }
    }
    // With a fixed identity: mismatches must be errors too.
    let g = Geometry::new(1 << 20, 4096).unwrap();
    let _ = PersistentTracker::open(&path, DiskId([1; 16]), g, None);
    let _ = std::fs::remove_file(&path);
});
