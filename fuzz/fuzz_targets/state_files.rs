//! Arbitrary bytes as the small state files blockrep reads back: the spool
//! state, a replica state, a failover record, a group journal, a block
//! digest list. Opening must give a value or a typed error, never panic.
//!
//! The first byte picks the file (low bits) and, when its top bit is set,
//! recomputes the trailing CRC32 every one of these files ends with
//! (docs/FORMAT.md, the frame), so mutations reach the decoders behind the
//! checksum instead of stopping at it.
#![no_main]

use blockrep::io::{Dir, MemDir, Storage};
use blockrep::log::{BlockDigests, LogHeader, LogKind, LogWriter, MappedLog, ReadOptions, WriterOptions};
use blockrep::replica::{Replica, ReplicaGroup};
use blockrep::source::Spool;
use blockrep::{DiskId, Geometry};
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

fn put(dir: &MemDir, name: &str, bytes: &[u8]) {
    let f = dir.create(name).unwrap();
    f.write_at(bytes, 0).unwrap();
}

/// A replica of a 64 KiB disk in `dir`.
fn replica(dir: &Arc<MemDir>) -> Replica {
    let g = Geometry::new(64 << 10, 4096).unwrap();
    let h = LogHeader::new(DiskId([1; 16]), g, LogKind::Full, 1, 1).unwrap();
    let mut w = LogWriter::new(Vec::new(), h, WriterOptions { record_bytes: 65536, threads: 1 }).unwrap();
    w.add_block(0, &[7u8; 4096]).unwrap();
    w.add_zero(blockrep::Extent::new(1, 15)).unwrap();
    let log = MappedLog::from_bytes(w.finish().unwrap().0, "full", &ReadOptions::default()).unwrap();
    Replica::create(dir.clone(), &log).unwrap()
}

/// Replaces the last four bytes with the CRC32 of the bytes before them.
fn fix_crc(b: &mut [u8]) {
    if b.len() >= 4 {
        let n = b.len() - 4;
        let crc = crc32fast::hash(&b[..n]);
        b[n..].copy_from_slice(&crc.to_le_bytes());
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, bytes)) = data.split_first() else { return };
    let mut owned = bytes.to_vec();
    if ctl & 0x80 != 0 {
        fix_crc(&mut owned);
    }
    let bytes = &owned[..];
    let which = ctl & 0x7f;
    let dir = Arc::new(MemDir::new());
    match which % 5 {
        0 => {
            put(&dir, "spool.state", bytes);
            let _ = Spool::open(dir, 1 << 20);
        }
        1 => {
            let _ = BlockDigests::decode(bytes);
        }
        2 => {
            drop(replica(&dir));
            put(&dir, "failover", bytes);
            let _ = Replica::open(dir);
        }
        3 => {
            let r = replica(&dir);
            let gdir = Arc::new(MemDir::new());
            put(&gdir, "group-journal", bytes);
            let _ = ReplicaGroup::open(gdir, vec![r]);
        }
        _ => {
            drop(replica(&dir));
            put(&dir, "state", bytes);
            let _ = Replica::open(dir);
        }
    }
});
