//! Helpers shared by the integration tests.
#![allow(dead_code)]

use blockrep::log::{LogReader, ReadOptions};
use blockrep::Geometry;
use std::collections::BTreeMap;

/// A small deterministic generator, so a failure reproduces.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// Content like a disk's: zeros, text-like (compressible) or random.
pub fn realistic_block(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    match rng.below(10) {
        0..=3 => {}
        4..=6 => {
            const WORDS: [&[u8]; 8] = [
                b"block ",
                b"replica ",
                b"the ",
                b"log ",
                b"disk\n",
                b"of ",
                b"write ",
                b"epoch ",
            ];
            let mut at = 0;
            while at < len {
                let w = WORDS[rng.below(8) as usize];
                let n = w.len().min(len - at);
                b[at..at + n].copy_from_slice(&w[..n]);
                at += n;
            }
        }
        _ => rng.fill(&mut b),
    }
    b
}

/// Reads a whole log into block -> content (`None` for zero blocks).
pub fn read_all(bytes: &[u8], g: Geometry) -> (BTreeMap<u64, Option<Vec<u8>>>, bool) {
    let mut r = LogReader::new(bytes, ReadOptions::default()).unwrap();
    let mut out = BTreeMap::new();
    while let Some(rec) = r.next_record().unwrap() {
        for (b, d) in rec.blocks(g) {
            assert!(
                out.insert(b, d.map(|d| d.to_vec())).is_none(),
                "block {b} twice"
            );
        }
    }
    (out, r.is_complete())
}
