//! Round trips of delta logs over random block sets, geometries, codecs
//! and contents, compared byte for byte; and a log through a pipe.

mod common;

use blockrep::log::{
    BlockLookup, LogBuilder, LogHeader, LogKind, LogWriter, MappedLog, ReadOptions, WriterOptions,
};
use blockrep::{DiskId, Extent, Geometry};
use common::{read_all, realistic_block, Rng};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::Arc;

fn header(g: Geometry, salt: u64) -> LogHeader {
    let mut h = LogHeader::new(DiskId([3; 16]), g, LogKind::Delta, 2, 9).unwrap();
    h.salt = salt;
    h.created_ns = 1;
    h
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    #[test]
    fn any_order_round_trip(
        shift in 12u32..=16,
        blocks in 1u64..300,
        tail in 0u64..4096,
        seed in any::<u64>(),
        picks in 0usize..200,
        zero_runs in 0usize..5,
        record_kib in prop::sample::select(vec![4usize, 16, 64, 256, 1024]),
        threads in 1usize..4,
    ) {
        let bs = 1u64 << shift;
        let size = if tail > 0 && blocks > 1 { (blocks - 1) * bs + tail } else { blocks * bs };
        let g = Geometry::new(size, bs as u32).unwrap();
        let mut rng = Rng(seed | 1);
        let mut model: BTreeMap<u64, Option<Vec<u8>>> = BTreeMap::new();
        let mut builder = LogBuilder::new();
        for _ in 0..zero_runs {
            let s = rng.below(g.block_count());
            let n = 1 + rng.below((g.block_count() - s).min(20));
            let e = Extent::new(s, n);
            if builder.add_zero(e).is_ok() {
                for b in s..s + n { model.insert(b, None); }
            }
        }
        for _ in 0..picks {
            let b = rng.below(g.block_count());
            if model.contains_key(&b) { continue; }
            let data = realistic_block(&mut rng, g.block_len(b) as usize);
            builder.add_block(b, &data).unwrap();
            let zero = data.iter().all(|&x| x == 0);
            model.insert(b, (!zero).then_some(data));
        }
        let opts = WriterOptions { record_bytes: record_kib << 10, threads };
        let (bytes, summary) = builder.write_to(Vec::new(), header(g, seed), opts).unwrap();
        prop_assert_eq!(summary.bytes, bytes.len() as u64);
        prop_assert_eq!(summary.trailer.blocks, model.len() as u64);
        let (got, complete) = read_all(&bytes, g);
        prop_assert!(complete);
        prop_assert_eq!(&got, &model);

        // Random access through the mapped reader, every block of the disk.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.log");
        std::fs::write(&p, &bytes).unwrap();
        let m = MappedLog::open(&p, &ReadOptions::default()).unwrap();
        for b in 0..g.block_count() {
            let mut buf = vec![0xAAu8; g.block_len(b) as usize];
            let found = m.read_block(b, &mut buf).unwrap();
            match model.get(&b) {
                None => prop_assert_eq!(found, BlockLookup::Absent),
                Some(None) => { prop_assert_eq!(found, BlockLookup::Zero); prop_assert!(buf.iter().all(|&x| x == 0)); }
                Some(Some(d)) => { prop_assert_eq!(found, BlockLookup::Data); prop_assert_eq!(&buf, d); }
            }
        }
    }
}

#[test]
fn threads_never_change_the_bytes() {
    let g = Geometry::new(64 << 20, 4096).unwrap();
    let mut rng = Rng(77);
    let blocks: Vec<(u64, Vec<u8>)> = (0..g.block_count())
        .step_by(3)
        .map(|b| (b, realistic_block(&mut rng, 4096)))
        .collect();
    let write = |threads| {
        let mut w = LogWriter::new(
            Vec::new(),
            header(g, 5),
            WriterOptions {
                record_bytes: 64 << 10,
                threads,
            },
        )
        .unwrap();
        for (b, d) in &blocks {
            w.add_block(*b, d).unwrap();
        }
        w.finish().unwrap().0
    };
    let one = write(1);
    for t in [2, 3, 8] {
        assert!(write(t) == one, "{t} threads wrote other bytes");
    }
}

#[test]
fn writer_refuses_bad_input() {
    let g = Geometry::new(10_000, 4096).unwrap();
    let mut w = LogWriter::new(Vec::new(), header(g, 1), WriterOptions::default()).unwrap();
    assert!(w.add_block(0, &[1; 100]).is_err(), "short block");
    assert!(w.add_block(2, &[1; 4096]).is_err(), "last block is short");
    w.add_block(2, &[1; 10_000 - 8192]).unwrap();
    assert!(w.add_block(1, &[1; 4096]).is_err(), "descending");
    assert!(w.add_block(3, &[1; 4096]).is_err(), "past the end");
    let mut h = header(g, 1);
    h.label = "x".repeat(256);
    assert!(LogWriter::new(Vec::new(), h, WriterOptions::default()).is_err());
    let mut b = LogBuilder::new();
    b.add_block(1, &[1; 4096]).unwrap();
    assert!(b.add_block(1, &[1; 4096]).is_err());
    assert!(b.add_zero(Extent::new(0, 2)).is_err());
}

#[test]
fn log_through_a_pipe_between_threads() {
    let g = Geometry::new(256 << 20, 65536).unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    let mut rng = Rng(99);
    let mut blocks: Vec<(u64, Vec<u8>)> = Vec::new();
    for b in 0..g.block_count() {
        if rng.below(3) == 0 {
            blocks.push((b, realistic_block(&mut rng, 65536)));
        }
    }
    let expect: BTreeMap<u64, Option<Vec<u8>>> = blocks
        .iter()
        .map(|(b, d)| (*b, (!d.iter().all(|&x| x == 0)).then(|| d.clone())))
        .collect();
    let producer = std::thread::spawn(move || {
        let mut w = LogWriter::new(writer, header(g, 42), WriterOptions::default()).unwrap();
        for (b, d) in &blocks {
            w.add_block(*b, d).unwrap();
        }
        w.finish().unwrap().1
    });
    let mut r = blockrep::log::LogReader::new(
        reader,
        ReadOptions {
            disk: Some(DiskId([3; 16])),
            ..Default::default()
        },
    )
    .unwrap();
    let mut got: BTreeMap<u64, Option<Vec<u8>>> = BTreeMap::new();
    while let Some(rec) = r.next_record().unwrap() {
        for (b, d) in rec.blocks(g) {
            let d = match d {
                blockrep::log::Block::Zero => None,
                blockrep::log::Block::Data(d) => Some(d.to_vec()),
                blockrep::log::Block::CopyOf(s) => got[&s].clone(),
            };
            got.insert(b, d);
        }
    }
    let summary = producer.join().unwrap();
    assert!(r.is_complete());
    assert_eq!(r.trailer().unwrap(), &summary.trailer);
    assert_eq!(got, expect);
}

#[test]
fn log_file_appears_only_when_committed() {
    use blockrep::log::LogFile;
    let dir = tempfile::tempdir().unwrap();
    let g = Geometry::new(1 << 20, 4096).unwrap();
    let path = dir.path().join("seq-7.brlog");
    let partial = dir.path().join("seq-7.brlog.partial");
    {
        let mut f = LogFile::create(&path, header(g, 1), WriterOptions::default()).unwrap();
        f.add_block(3, &[1u8; 4096]).unwrap();
        assert!(partial.exists() && !path.exists());
        // Dropped without commit: nothing that looks like a log is left.
    }
    assert!(!partial.exists() && !path.exists());
    let mut f = LogFile::create(&path, header(g, 1), WriterOptions::default()).unwrap();
    f.add_block(3, &[1u8; 4096]).unwrap();
    let summary = f.commit().unwrap();
    assert!(path.exists() && !partial.exists());
    assert_eq!(std::fs::metadata(&path).unwrap().len(), summary.bytes);
    let m = MappedLog::open(&path, &ReadOptions::default()).unwrap();
    let mut buf = vec![0u8; 4096];
    assert_eq!(m.read_block(3, &mut buf).unwrap(), BlockLookup::Data);
    assert_eq!(buf, vec![1u8; 4096]);
}

#[test]
fn repeated_blocks_are_stored_once_as_copies_and_read_back_exactly() {
    use blockrep::io::{Dir, MemDir};
    use blockrep::log::Digest;
    use blockrep::replica::Replica;
    let g = Geometry::new(16 << 20, 4096).unwrap();
    let mut rng = Rng(21);
    let patterns: Vec<Vec<u8>> = (0..200)
        .map(|_| {
            let mut b = vec![0u8; 4096];
            rng.fill(&mut b);
            b
        })
        .collect();
    let write = |kind: LogKind, base: Digest, copies: bool, blocks: &[(u64, usize)]| {
        let seq = if kind == LogKind::Full { 1 } else { 2 };
        let mut h = LogHeader::new(DiskId([3; 16]), g, kind, 2, seq).unwrap();
        h.copies = copies;
        h.base_digest = base;
        let mut w = LogWriter::new(Vec::new(), h, WriterOptions::default()).unwrap();
        let mut next = 0;
        for &(b, p) in blocks {
            if b > next && kind == LogKind::Full {
                w.add_zero(Extent::new(next, b - next)).unwrap();
            }
            w.add_block(b, &patterns[p]).unwrap();
            next = b + 1;
        }
        if kind == LogKind::Full && next < g.block_count() {
            w.add_zero(Extent::new(next, g.block_count() - next))
                .unwrap();
        }
        w.finish().unwrap()
    };
    let full: Vec<(u64, usize)> = (0..3000).map(|b| (b, rng.below(200) as usize)).collect();
    let (with, summary) = write(LogKind::Full, Digest::default(), true, &full);
    let (without, _) = write(LogKind::Full, Digest::default(), false, &full);
    assert!(
        with.len() * 5 < without.len(),
        "{} bytes with copies, {} without",
        with.len(),
        without.len()
    );
    assert_eq!(summary.trailer.data_blocks, 200);
    let (got, complete) = read_all(&with, g);
    assert!(complete);
    for &(b, p) in &full {
        assert_eq!(got[&b].as_deref(), Some(&patterns[p][..]), "block {b}");
    }
    let mapped = MappedLog::from_bytes(with, "full", &ReadOptions::default()).unwrap();
    let mut buf = vec![0u8; 4096];
    for &(b, p) in full.iter().step_by(7) {
        assert_eq!(mapped.read_block(b, &mut buf).unwrap(), BlockLookup::Data);
        assert_eq!(buf, patterns[p], "mapped block {b}");
    }
    // A replica from the full log, then a delta whose copies come from its
    // own earlier blocks, then a rollback through an undo log with copies.
    let dir: Arc<dyn Dir> = Arc::new(MemDir::new());
    let r = Replica::create(dir, &mapped).unwrap();
    let image = |r: &Replica| {
        let mut b = vec![0u8; g.size() as usize];
        r.read_at(&mut b, 0).unwrap();
        b
    };
    let mut model = vec![0u8; g.size() as usize];
    for &(b, p) in &full {
        model[b as usize * 4096..][..4096].copy_from_slice(&patterns[p]);
    }
    assert!(image(&r) == model);
    let before = model.clone();
    let mut delta: Vec<(u64, usize)> = (0..400)
        .map(|_| (rng.below(4000), rng.below(20) as usize))
        .collect();
    delta.sort_unstable_by_key(|d| d.0);
    delta.dedup_by_key(|d| d.0);
    let (bytes, _) = write(LogKind::Delta, r.status().digest, true, &delta);
    let log = MappedLog::from_bytes(bytes, "delta", &ReadOptions::default()).unwrap();
    r.apply(&log).unwrap();
    for &(b, p) in &delta {
        model[b as usize * 4096..][..4096].copy_from_slice(&patterns[p]);
    }
    assert!(image(&r) == model);
    r.rollback(1).unwrap();
    assert!(image(&r) == before);
}
