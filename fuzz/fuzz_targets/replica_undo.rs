//! Opens a replica whose state is valid and whose undo logs come from the
//! input (one piece replaces the undo log of a retained point): opening,
//! viewing every point and reading every block must give data or a typed
//! error, never panic.
#![no_main]

use blockrep::io::{Dir, MemDir, Storage};
use blockrep::log::{LogHeader, LogKind, LogWriter, MappedLog, ReadOptions, WriterOptions};
use blockrep::replica::Replica;
use blockrep::{DiskId, Geometry};
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

const ID: DiskId = DiskId([6; 16]);

fn geo() -> Geometry {
    Geometry::new(64 << 10, 4096).unwrap()
}

fn log(kind: LogKind, seq: u64, base: blockrep::log::Digest, fill: u8) -> MappedLog {
    let mut h = LogHeader::new(ID, geo(), kind, 1, seq).unwrap();
    h.base_sequence = seq - 1;
    h.base_digest = base;
    let opts = WriterOptions { record_bytes: 4096, threads: 1 };
    let mut w = LogWriter::new(Vec::new(), h, opts).unwrap();
    let mut blocks: Vec<u64> = if kind == LogKind::Full { (0..16).collect() } else { vec![u64::from(fill % 16), 3] };
    blocks.sort_unstable();
    blocks.dedup();
    for b in blocks {
        w.add_block(b, &[fill ^ b as u8; 4096]).unwrap();
    }
    MappedLog::from_bytes(w.finish().unwrap().0, format!("log-{seq}"), &ReadOptions::default()).unwrap()
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, bytes)) = data.split_first() else { return };
    let dir = Arc::new(MemDir::new());
    let r = Replica::create(dir.clone(), &log(LogKind::Full, 1, Default::default(), 1)).unwrap();
    for seq in 2..=4 {
        let d = r.status().digest;
        r.apply(&log(LogKind::Delta, seq, d, seq as u8 * 3)).unwrap();
    }
    drop(r);
    // Replace the undo log of point 2, 3 or 4 with the input.
    let victim = 2 + u64::from(ctl % 3);
    let name = format!("undo-{victim:020}");
    let old = dir.read_all(&name).unwrap();
    let new = if ctl & 0x80 != 0 {
        // A mutation of the real file: reaches past the format checks.
        let mut b = old.clone();
        for pair in bytes.chunks(3) {
            if pair.len() == 3 && !b.is_empty() {
                let at = usize::from(u16::from_le_bytes([pair[0], pair[1]])) % b.len();
                b[at] ^= pair[2] | 1;
            }
        }
        b
    } else {
        bytes.to_vec()
    };
    dir.remove(&name).unwrap();
    dir.create(&name).unwrap().write_at(&new, 0).unwrap();
    let Ok(r) = Replica::open(dir) else { return };
    let r = Arc::new(r);
    let mut buf = vec![0u8; 4096];
    for p in r.points() {
        if let Ok(v) = r.view(p.sequence) {
            for b in 0..16u64 {
                let _ = v.read_at(&mut buf, b * 4096);
            }
        }
    }
});
