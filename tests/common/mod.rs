//! Helpers shared by the integration tests.
#![allow(dead_code)]

use blockrep::io::Storage;
use blockrep::log::{
    Block, Digest, LogHeader, LogKind, LogReader, LogWriter, MappedLog, ReadOptions, WriterOptions,
};
use blockrep::Result;
use blockrep::{DiskId, Extent, Geometry};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

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

/// Reads a whole log into block -> content (`None` for zero blocks),
/// copies resolved.
pub fn read_all(bytes: &[u8], g: Geometry) -> (BTreeMap<u64, Option<Vec<u8>>>, bool) {
    let mut r = LogReader::new(bytes, ReadOptions::default()).unwrap();
    let mut out: BTreeMap<u64, Option<Vec<u8>>> = BTreeMap::new();
    while let Some(rec) = r.next_record().unwrap() {
        for (b, d) in rec.blocks(g) {
            let d = match d {
                Block::Zero => None,
                Block::Data(d) => Some(d.to_vec()),
                Block::CopyOf(s) => out[&s].clone(),
            };
            assert!(out.insert(b, d).is_none(), "block {b} twice");
        }
    }
    (out, r.is_complete())
}

pub const ID: DiskId = DiskId([9; 16]);

pub fn geo() -> Geometry {
    Geometry::new(64 * 4096 + 1000, 4096).unwrap() // 65 blocks, the last short
}

/// A source disk in memory and the logs cut from it.
pub struct Source {
    pub g: Geometry,
    pub data: Vec<u8>,
    pub epoch: u64,
    pub seq: u64,
    pub digest: Digest,
}

impl Source {
    pub fn new(rng: &mut Rng) -> Self {
        let g = geo();
        let mut data = vec![0u8; g.size() as usize];
        for b in 0..g.block_count() {
            if rng.below(3) > 0 {
                let (off, len) = g.extent_bytes(Extent::new(b, 1));
                rng.fill(&mut data[off as usize..(off + len) as usize]);
            }
        }
        Source {
            g,
            data,
            epoch: 1,
            seq: 0,
            digest: Digest::default(),
        }
    }

    pub fn log(&mut self, kind: LogKind, blocks: &[u64]) -> MappedLog {
        self.seq += 1;
        let mut h = LogHeader::new(ID, self.g, kind, self.epoch, self.seq).unwrap();
        h.base_digest = self.digest;
        let mut w = LogWriter::new(
            Vec::new(),
            h,
            WriterOptions {
                record_bytes: 16 << 10,
                threads: 1,
            },
        )
        .unwrap();
        for &b in blocks {
            let (off, len) = self.g.extent_bytes(Extent::new(b, 1));
            w.add_block(b, &self.data[off as usize..(off + len) as usize])
                .unwrap();
        }
        let (bytes, summary) = w.finish().unwrap();
        self.digest = summary.trailer.digest;
        MappedLog::from_bytes(bytes, format!("log-{}", self.seq), &ReadOptions::default()).unwrap()
    }

    pub fn full(&mut self) -> MappedLog {
        let all: Vec<u64> = (0..self.g.block_count()).collect();
        self.log(LogKind::Full, &all)
    }

    /// Rewrites some blocks (random data, zeros, partial) and returns a
    /// delta log of them.
    pub fn change(&mut self, rng: &mut Rng) -> MappedLog {
        let mut blocks: Vec<u64> = (0..=rng.below(12))
            .map(|_| rng.below(self.g.block_count()))
            .collect();
        blocks.sort_unstable();
        blocks.dedup();
        for &b in &blocks {
            let (off, len) = self.g.extent_bytes(Extent::new(b, 1));
            let s = &mut self.data[off as usize..(off + len) as usize];
            match rng.below(3) {
                0 => s.fill(0),
                1 => rng.fill(s),
                _ => s[..len as usize / 2].fill(rng.next() as u8),
            }
        }
        self.log(LogKind::Delta, &blocks)
    }
}

/// Where two images first differ, for assertion messages.
pub fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    if a.len() != b.len() {
        return Some(a.len().min(b.len()));
    }
    if a == b {
        // memcmp: fast even in an unoptimised test build.
        return None;
    }
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// Counts bytes read, and fails the n-th read when asked.
pub struct Reads<S> {
    pub inner: S,
    pub bytes: AtomicU64,
    pub calls: AtomicU64,
    pub fail_at: u64,
}

impl<S: Storage> Reads<S> {
    pub fn new(inner: S, fail_at: u64) -> Self {
        Reads {
            inner,
            bytes: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            fail_at,
        }
    }
}

impl<S: Storage> Storage for Reads<S> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        if self.calls.fetch_add(1, Ordering::SeqCst) + 1 == self.fail_at {
            return Err(blockrep::Error::io(
                "read",
                std::io::Error::from_raw_os_error(libc::EIO),
            ));
        }
        self.bytes.fetch_add(buf.len() as u64, Ordering::SeqCst);
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.inner.write_at(buf, offset)
    }
    fn sync(&self) -> Result<()> {
        self.inner.sync()
    }
    fn len(&self) -> Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> Result<()> {
        self.inner.set_len(len)
    }
    fn next_data(&self, offset: u64) -> Result<Option<(u64, u64)>> {
        self.inner.next_data(offset)
    }
}

/// `n` random writes of 9000 bytes through `p`'s guards to `disk`, within
/// the last `span` bytes of the disk (its whole size: anywhere).
pub fn write_near_end<T: blockrep::source::Tracking>(
    p: &blockrep::source::Pipeline<T>,
    disk: &dyn Storage,
    rng: &mut Rng,
    span: u64,
    n: usize,
) {
    let size = p.primary().tracker().geometry().size();
    let span = span.min(size);
    for _ in 0..n {
        let off = size - span + rng.below(span - 9000);
        let mut d = vec![0u8; 9000];
        rng.fill(&mut d);
        let _g = p.primary().write_guard(off, 9000).unwrap();
        disk.write_at(&d, off).unwrap();
    }
}

/// Sets the flag when dropped: stops writer threads however the test
/// thread leaves a scope, so a failed assertion does not wait on them.
pub struct StopOnDrop<'a>(pub &'a std::sync::atomic::AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// The outcome check every crash scenario starts with: the counting run
/// (`at` is `None`) must succeed, and ends the scenario (`None` returned);
/// a run with a fault must fail, and the step and fault are returned.
pub fn expect_fault<T: std::fmt::Debug>(
    result: blockrep::Result<T>,
    at: Option<(u64, blockrep::io::Fault)>,
) -> Option<(u64, blockrep::io::Fault)> {
    let Some((n, fault)) = at else {
        result.unwrap();
        return None;
    };
    assert!(
        result.is_err(),
        "step {n} {fault:?}: the fault went unnoticed"
    );
    Some((n, fault))
}

/// The every-fault loop of the crash tests: runs `scenario` once under a
/// counting plan to learn how many steps it takes, then again with each of
/// `faults` injected at every step. The scenario checks its own outcome;
/// it is told the step and fault (`None` for the counting run). Returns
/// the number of steps.
pub fn at_every_step(
    faults: &[blockrep::io::Fault],
    mut scenario: impl FnMut(&blockrep::io::FaultPlan, Option<(u64, blockrep::io::Fault)>),
) -> u64 {
    let probe = blockrep::io::FaultPlan::counting();
    scenario(&probe, None);
    let steps = probe.ops();
    assert!(steps > 0, "the scenario counted no step");
    for n in 1..=steps {
        for &f in faults {
            let plan = blockrep::io::FaultPlan::at(n, f);
            scenario(&plan, Some((n, f)));
            assert!(plan.fired(), "step {n} ({f:?}) was never reached");
        }
    }
    steps
}
