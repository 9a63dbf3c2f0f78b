//! Opens a spool directory whose state is valid and whose `log-N` files
//! come from the input: the chain check over the spooled logs must give a
//! spool or a typed error, never panic, and an opened spool's chain must
//! be unbroken after its acknowledged point.
//!
//! The input is split into up to four files at `0xFF 0xFE` markers; the
//! first byte of each piece picks its sequence number. Pieces are also
//! offered as whole, valid logs built from the input, so the chain check
//! itself (not only the log reader) is reached.
#![no_main]

use blockrep::io::{Dir, MemDir, Storage};
use blockrep::log::{Digest, LogHeader, LogKind, LogWriter, WriterOptions};
use blockrep::source::{ChainPoint, Spool};
use blockrep::{DiskId, Geometry};
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

const ID: DiskId = DiskId([4; 16]);

fn geo() -> Geometry {
    Geometry::new(64 << 10, 4096).unwrap()
}

/// A valid delta log `seq` building on `base` (digest from the input).
fn log(seq: u64, base: u64, digest_byte: u8, fill: u8) -> Vec<u8> {
    let mut h = LogHeader::new(ID, geo(), LogKind::Delta, 1, seq).unwrap();
    h.base_sequence = base;
    h.base_digest = Digest([digest_byte; 32]);
    let opts = WriterOptions { record_bytes: 4096, threads: 1 };
    let mut w = LogWriter::new(Vec::new(), h, opts).unwrap();
    w.add_block(u64::from(fill % 16), &[fill; 4096]).unwrap();
    w.finish().unwrap().0
}

fuzz_target!(|data: &[u8]| {
    let dir = Arc::new(MemDir::new());
    let start = ChainPoint {
        epoch: 1,
        sequence: 3,
        digest: Digest::default(),
        created_ns: 0,
        geometry: geo(),
    };
    drop(Spool::create(dir.clone(), ID, start, 1 << 20).unwrap());
    let mut pieces: Vec<&[u8]> = Vec::new();
    let mut rest = data;
    while pieces.len() < 4 {
        match rest.windows(2).position(|w| w == [0xff, 0xfe]) {
            Some(i) => {
                pieces.push(&rest[..i]);
                rest = &rest[i + 2..];
            }
            None => {
                pieces.push(rest);
                break;
            }
        }
    }
    for p in pieces {
        let Some((&ctl, body)) = p.split_first() else { continue };
        let seq = u64::from(ctl % 8) + 1;
        let bytes = if ctl & 0x80 != 0 && body.len() >= 2 {
            // A valid log; whether it chains is up to the input.
            log(seq, u64::from(body[0] % 8), body[1] & 1, body[1])
        } else {
            body.to_vec()
        };
        let f = dir.create(&format!("log-{seq:020}")).unwrap();
        f.write_at(&bytes, 0).unwrap();
    }
    if let Ok(spool) = Spool::open(dir, 1 << 20) {
        let pending = spool.pending();
        let mut prev = spool.status().acked.sequence;
        for l in &pending {
            assert_eq!(l.point.sequence, prev + 1, "chain broken: {pending:?}");
            prev = l.point.sequence;
        }
    }
});
