//! Replica apply benchmarks on a 1 GiB image, each beside its baselines:
//!
//! * `apply_1pct` / `apply_10pct`: applying a log that rewrites 1 % and
//!   10 % of the 4 KiB blocks, with retention (undo capture, state records,
//!   syncs), against the same log written to the image without undo
//!   capture, and a bare positional write of the same blocks, already
//!   decompressed (the limit). Each iteration ends with a sync; the replica
//!   is rolled back between iterations, outside the timing.
//! * `view_read`: 10 000 random 4 KiB reads through a view ten points back,
//!   against the same reads from the image.
//!
//! Run: `cargo bench --bench apply` (needs about 3 GiB in the temp dir).

#[path = "../tests/common/mod.rs"]
mod common;

use blockrep::io::{Dir, FileStorage, FsDir, Storage};
use blockrep::log::{Block, LogHeader, LogKind, LogWriter, MappedLog, ReadOptions, WriterOptions};
use blockrep::replica::Replica;
use blockrep::{DiskId, Extent, Geometry};
use common::{realistic_block, Rng};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SIZE: u64 = 1 << 30;
const BS: u64 = 4096;

struct Setup {
    _tmp: tempfile::TempDir,
    replica: Replica,
    image: FileStorage,
    g: Geometry,
    seq: u64,
}

fn log_of(
    g: Geometry,
    seq: u64,
    base: blockrep::log::Digest,
    blocks: &[(u64, Vec<u8>)],
    kind: LogKind,
) -> MappedLog {
    let mut h = LogHeader::new(DiskId([1; 16]), g, kind, 1, seq).unwrap();
    h.base_digest = base;
    let mut w = LogWriter::new(Vec::new(), h, WriterOptions::default()).unwrap();
    for (b, d) in blocks {
        w.add_block(*b, d).unwrap();
    }
    MappedLog::from_bytes(w.finish().unwrap().0, "bench", &ReadOptions::default()).unwrap()
}

fn setup() -> Setup {
    let g = Geometry::new(SIZE, BS as u32).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = Rng(7);
    // The full log, written block by block.
    let mut h = LogHeader::new(DiskId([1; 16]), g, LogKind::Full, 1, 1).unwrap();
    h.base_sequence = 0;
    let path = tmp.path().join("full.log");
    let file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let mut w = LogWriter::new(file, h, WriterOptions::default()).unwrap();
    for b in 0..g.block_count() {
        w.add_block(b, &realistic_block(&mut rng, BS as usize))
            .unwrap();
    }
    w.finish().unwrap();
    let full = MappedLog::open(&path, &ReadOptions::default()).unwrap();
    let dir: Arc<dyn Dir> = Arc::new(FsDir::new(tmp.path().join("replica")).unwrap());
    let replica = Replica::create(dir, &full).unwrap();
    std::fs::remove_file(&path).unwrap();
    let image = FileStorage::open(tmp.path().join("replica/image")).unwrap();
    Setup {
        _tmp: tmp,
        replica,
        image,
        g,
        seq: 1,
    }
}

fn random_blocks(g: Geometry, per_mille: u64, seed: u64) -> Vec<(u64, Vec<u8>)> {
    let mut rng = Rng(seed);
    let n = g.block_count() * per_mille / 1000;
    let mut picks: Vec<u64> = (0..n).map(|_| rng.below(g.block_count())).collect();
    picks.sort_unstable();
    picks.dedup();
    picks
        .into_iter()
        .map(|b| (b, realistic_block(&mut rng, BS as usize)))
        .collect()
}

fn apply(c: &mut Criterion) {
    let mut s = setup();
    for (name, per_mille) in [("apply_1pct", 10), ("apply_10pct", 100)] {
        let blocks = random_blocks(s.g, per_mille, per_mille);
        let bytes: u64 = blocks.len() as u64 * BS;
        let log = log_of(
            s.g,
            s.seq + 1,
            s.replica.status().digest,
            &blocks,
            LogKind::Delta,
        );
        // The baselines write behind the replica's back; keep what they
        // overwrite to put it back after them.
        let original: Vec<(u64, Vec<u8>)> = blocks
            .iter()
            .map(|(blk, _)| {
                let mut d = vec![0u8; BS as usize];
                s.image.read_at(&mut d, blk * BS).unwrap();
                (*blk, d)
            })
            .collect();
        let mut g = c.benchmark_group(name);
        g.throughput(Throughput::Bytes(bytes));
        g.sample_size(10);
        g.measurement_time(Duration::from_secs(20));
        g.bench_function("bare_pwrite", |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    for (blk, d) in &blocks {
                        s.image.write_at(d, blk * BS).unwrap();
                    }
                    s.image.sync().unwrap();
                }
                start.elapsed()
            });
        });
        g.bench_function("log_without_undo", |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    for rec in log.reader().unwrap() {
                        let rec = rec.unwrap();
                        for (blk, d) in rec.blocks(s.g) {
                            match d {
                                Block::Data(d) => s.image.write_at(d, blk * BS).unwrap(),
                                // As the applier does: zeros for small runs.
                                Block::Zero => {
                                    s.image.write_at(&[0u8; BS as usize], blk * BS).unwrap();
                                }
                                Block::CopyOf(src) => {
                                    let mut c = [0u8; BS as usize];
                                    s.image.read_at(&mut c, src * BS).unwrap();
                                    s.image.write_at(&c, blk * BS).unwrap();
                                }
                            }
                        }
                    }
                    s.image.sync().unwrap();
                }
                start.elapsed()
            });
        });
        for (blk, d) in &original {
            s.image.write_at(d, blk * BS).unwrap();
        }
        s.image.sync().unwrap();
        g.bench_function("apply_with_retention", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    s.replica.apply(&log).unwrap();
                    total += start.elapsed();
                    s.replica.rollback(s.seq).unwrap();
                }
                total
            });
        });
        g.finish();
    }
    // Ten points, then reads through a view at the oldest of them.
    let mut rng = Rng(99);
    for i in 0..10 {
        let blocks = random_blocks(s.g, 10, 1000 + i);
        let log = log_of(
            s.g,
            s.seq + 1,
            s.replica.status().digest,
            &blocks,
            LogKind::Delta,
        );
        s.replica.apply(&log).unwrap();
        s.seq += 1;
    }
    let view = s.replica.view(s.seq - 10).unwrap();
    let offsets: Vec<u64> = (0..10_000)
        .map(|_| rng.below(s.g.block_count()) * BS)
        .collect();
    let mut g = c.benchmark_group("view_read");
    g.throughput(Throughput::Bytes(offsets.len() as u64 * BS));
    g.sample_size(10);
    let mut buf = vec![0u8; BS as usize];
    g.bench_function(BenchmarkId::new("image", "latest"), |b| {
        b.iter(|| {
            for &o in &offsets {
                s.image.read_at(&mut buf, o).unwrap();
            }
        });
    });
    g.bench_function(BenchmarkId::new("view", "10_points_back"), |b| {
        b.iter(|| {
            for &o in &offsets {
                view.read_at(&mut buf, o).unwrap();
            }
        });
    });
    g.finish();
    let _ = Extent::new(0, 1);
}

criterion_group!(benches, apply);
criterion_main!(benches);
