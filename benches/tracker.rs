//! Tracker benchmarks, each beside its baseline in the same group.
//!
//! * `mark_dirty` / `mark_clean`: marking an already-dirty and a clean 4 KiB
//!   block, one and two threads, against a plain non-atomic `Vec<u64>` bit
//!   set doing the same byte-to-block work (two threads: one private bit set
//!   each, the ideal).
//! * `cut`: cut plus iteration of a 1 TiB disk in 64 KiB blocks at 0.1 %,
//!   1 % and 10 % dirty, random single blocks and clustered 1 MiB runs,
//!   against a linear scan of all leaf words that takes and coalesces the
//!   same bits.
//! * `primary_cut`: the cut of a primary with copy-before-write (the time
//!   a guard that starts during a cut may wait for) of a 64 GiB disk in
//!   4 KiB blocks at 0.1 % and 1 % dirty, against the tracker's bare cut
//!   of the same set.
//! * `write_guard`: the guard with no cycle in flight, against the bare mark.
//!
//! Run: `cargo bench --bench tracker`.

#[path = "../tests/common/mod.rs"]
mod common;

use blockrep::{Geometry, Tracker};
use common::Rng;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

const BATCH: usize = 1024;

/// The non-atomic baseline: the same byte-range-to-bits work on a `Vec<u64>`.
struct PlainBits {
    size: u64,
    shift: u32,
    words: Vec<u64>,
}

impl PlainBits {
    fn new(size: u64, block: u32) -> Self {
        let blocks = size.div_ceil(u64::from(block));
        PlainBits {
            size,
            shift: block.trailing_zeros(),
            words: vec![0; blocks.div_ceil(64) as usize],
        }
    }

    #[inline]
    fn mark(&mut self, offset: u64, len: u64) -> bool {
        let Some(end) = offset.checked_add(len) else {
            return false;
        };
        if len == 0 || end > self.size {
            return false;
        }
        let (first, last) = (offset >> self.shift, (end - 1) >> self.shift);
        for b in first..=last {
            self.words[(b >> 6) as usize] |= 1 << (b & 63);
        }
        true
    }
}

fn offsets(n: usize, blocks: u64, block: u64, seed: u64) -> Vec<u64> {
    let mut rng = Rng(seed);
    (0..n).map(|_| rng.next() % blocks * block).collect()
}

fn mark_dirty(c: &mut Criterion) {
    // 64 GiB in 4 KiB blocks: a 2 MiB bit map, every bit already set.
    let size = 64u64 << 30;
    let geo = Geometry::new(size, 4096).unwrap();
    let offs = offsets(BATCH, geo.block_count(), 4096, 1);
    let mut g = c.benchmark_group("mark_dirty");
    g.throughput(Throughput::Elements(BATCH as u64));

    let mut plain = PlainBits::new(size, 4096);
    plain.words.fill(u64::MAX);
    g.bench_function("plain_bitset/1thread", |b| {
        b.iter(|| {
            for &o in &offs {
                black_box(plain.mark(black_box(o), 4096));
            }
        });
    });
    let t = Tracker::new(geo);
    t.mark(0, size).unwrap();
    g.bench_function("tracker/1thread", |b| {
        b.iter(|| {
            for &o in &offs {
                black_box(t.mark(black_box(o), 4096)).unwrap();
            }
        });
    });

    g.throughput(Throughput::Elements(2 * BATCH as u64));
    let offs2 = [offs.clone(), offsets(BATCH, geo.block_count(), 4096, 2)];
    g.bench_function("plain_bitset/2threads", |b| {
        b.iter_custom(|iters| {
            let mut plains = [PlainBits::new(size, 4096), PlainBits::new(size, 4096)];
            for p in &mut plains {
                p.words.fill(u64::MAX);
            }
            let mut parts = plains.iter_mut().zip(&offs2);
            let work = [(); 2].map(|()| {
                let (p, o) = parts.next().expect("two threads");
                move || {
                    for _ in 0..iters {
                        for &x in o {
                            black_box(p.mark(black_box(x), 4096));
                        }
                    }
                }
            });
            on_two_threads(work)
        });
    });
    g.bench_function("tracker/2threads", |b| {
        b.iter_custom(|iters| {
            let t = &t;
            on_two_threads([&offs2[0], &offs2[1]].map(|o| {
                move || {
                    for _ in 0..iters {
                        for &x in o {
                            black_box(t.mark(black_box(x), 4096)).unwrap();
                        }
                    }
                }
            }))
        });
    });
    g.finish();
}

/// Runs `work[i]` on thread i, both released together; returns the wall
/// time until both are done.
fn on_two_threads<W: FnOnce() + Send>(work: [W; 2]) -> Duration {
    let barrier = Barrier::new(3);
    std::thread::scope(|s| {
        for w in work {
            let barrier = &barrier;
            s.spawn(move || {
                barrier.wait();
                w();
                barrier.wait();
            });
        }
        barrier.wait();
        let start = Instant::now();
        barrier.wait();
        start.elapsed()
    })
}

fn mark_clean(c: &mut Criterion) {
    // 1 TiB in 4 KiB blocks: a 32 MiB bit map, cleared before each sample,
    // so random marks nearly always find their bit (and word) clean.
    let size = 1u64 << 40;
    let geo = Geometry::new(size, 4096).unwrap();
    let mut g = c.benchmark_group("mark_clean");
    g.sample_size(20);
    g.throughput(Throughput::Elements(BATCH as u64));
    let mut seed = 10;

    let mut plain = PlainBits::new(size, 4096);
    g.bench_function("plain_bitset/1thread", |b| {
        b.iter_custom(|iters| {
            plain.words.fill(0);
            seed += 1;
            let offs = offsets(BATCH * iters as usize, geo.block_count(), 4096, seed);
            let start = Instant::now();
            for &o in &offs {
                black_box(plain.mark(black_box(o), 4096));
            }
            start.elapsed()
        });
    });
    let t = Tracker::new(geo);
    g.bench_function("tracker/1thread", |b| {
        b.iter_custom(|iters| {
            t.cut();
            seed += 1;
            let offs = offsets(BATCH * iters as usize, geo.block_count(), 4096, seed);
            let start = Instant::now();
            for &o in &offs {
                black_box(t.mark(black_box(o), 4096)).unwrap();
            }
            start.elapsed()
        });
    });

    g.throughput(Throughput::Elements(2 * BATCH as u64));
    let mut plains = [PlainBits::new(size, 4096), PlainBits::new(size, 4096)];
    g.bench_function("plain_bitset/2threads", |b| {
        b.iter_custom(|iters| {
            seed += 2;
            let n = BATCH * iters as usize;
            let offs = [0, 1].map(|k| offsets(n, geo.block_count(), 4096, seed + k));
            for p in &mut plains {
                p.words.fill(0);
            }
            let mut parts = plains.iter_mut().zip(&offs);
            let work = [(); 2].map(|()| {
                let (p, o) = parts.next().expect("two threads");
                move || {
                    for &x in o {
                        black_box(p.mark(black_box(x), 4096));
                    }
                }
            });
            on_two_threads(work)
        });
    });
    g.bench_function("tracker/2threads", |b| {
        b.iter_custom(|iters| {
            t.cut();
            seed += 2;
            let n = BATCH * iters as usize;
            let offs = [0, 1].map(|k| offsets(n, geo.block_count(), 4096, seed + k));
            let t = &t;
            on_two_threads([&offs[0], &offs[1]].map(|o| {
                move || {
                    for &x in o {
                        black_box(t.mark(black_box(x), 4096)).unwrap();
                    }
                }
            }))
        });
    });
    g.finish();
}

/// The dirty blocks of one pattern: `per_mille` of `blocks`, as random
/// single blocks or as runs of `run` blocks.
fn dirty_blocks(blocks: u64, per_ten_thousand: u64, run: u64, seed: u64) -> Vec<(u64, u64)> {
    let mut rng = Rng(seed);
    let runs = blocks * per_ten_thousand / 10_000 / run;
    (0..runs)
        .map(|_| (rng.next() % (blocks - run), run))
        .collect()
}

/// The flat-bitmap baseline of a cut: scan every leaf word, take the
/// non-zero ones and coalesce their bits into runs.
fn scan_cut(words: &[AtomicU64]) -> (u64, u64) {
    let (mut extents, mut blocks) = (0u64, 0u64);
    let mut run_end = u64::MAX; // block after the current run
    for (i, w) in words.iter().enumerate() {
        if w.load(Ordering::Relaxed) == 0 {
            continue;
        }
        let mut v = w.swap(0, Ordering::AcqRel);
        while v != 0 {
            let b = ((i as u64) << 6) | u64::from(v.trailing_zeros());
            v &= v - 1;
            if b != run_end {
                extents += 1;
            }
            run_end = b + 1;
            blocks += 1;
        }
    }
    (extents, blocks)
}

fn cut(c: &mut Criterion) {
    let geo = Geometry::new(1 << 40, 64 << 10).unwrap();
    let blocks = geo.block_count();
    let mut g = c.benchmark_group("cut_1TiB_64KiB");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(3));
    let t = Tracker::new(geo);
    let flat: Vec<AtomicU64> = (0..blocks.div_ceil(64))
        .map(|_| AtomicU64::new(0))
        .collect();
    for (label, per) in [("0.1%", 10), ("1%", 100), ("10%", 1000)] {
        for (pattern, run) in [("random", 1), ("runs1MiB", 16)] {
            let dirty = dirty_blocks(blocks, per, run, per + run);
            let param = format!("{label}/{pattern}");
            g.bench_with_input(
                BenchmarkId::new("linear_scan", &param),
                &dirty,
                |b, dirty| {
                    b.iter_custom(|iters| {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            for &(s, n) in dirty {
                                for x in s..s + n {
                                    flat[(x >> 6) as usize]
                                        .fetch_or(1 << (x & 63), Ordering::Relaxed);
                                }
                            }
                            let start = Instant::now();
                            black_box(scan_cut(&flat));
                            total += start.elapsed();
                        }
                        total
                    });
                },
            );
            g.bench_with_input(BenchmarkId::new("tracker", &param), &dirty, |b, dirty| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        for &(s, n) in dirty {
                            t.mark_extent(blockrep::Extent::new(s, n)).unwrap();
                        }
                        let start = Instant::now();
                        let f = t.cut();
                        let (mut extents, mut count) = (0u64, 0u64);
                        for e in f.extents() {
                            extents += 1;
                            count += e.count;
                        }
                        black_box((extents, count));
                        total += start.elapsed();
                    }
                    total
                });
            });
        }
    }
    g.finish();
}

/// The copy-before-write guard with no cycle in flight, beside the bare
/// mark it wraps (already-dirty blocks, one thread).
fn write_guard(c: &mut Criterion) {
    // BLOCKREP_GUARD_DISK (bytes) shrinks the disk so the bitmap stays in
    // cache and the guard's own cost shows; the default 64 GiB disk makes
    // each mark a likely cache miss, as on a large real disk.
    let size: u64 = std::env::var("BLOCKREP_GUARD_DISK")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64u64 << 30);
    let geo = Geometry::new(size, 4096).unwrap();
    let offs = offsets(BATCH, geo.block_count(), 4096, 5);
    let mut g = c.benchmark_group("write_guard");
    g.throughput(Throughput::Elements(BATCH as u64));
    let t = Tracker::new(geo);
    t.mark(0, size).unwrap();
    g.bench_function("bare_mark", |b| {
        b.iter(|| {
            for &o in &offs {
                black_box(t.mark(black_box(o), 4096)).unwrap();
            }
        });
    });
    let disk: std::sync::Arc<dyn blockrep::io::Storage> =
        std::sync::Arc::new(blockrep::io::MemStorage::new());
    let primary = blockrep::source::Primary::new(Tracker::new(geo), disk);
    primary.tracker().mark(0, size).unwrap();
    g.bench_function("guard_no_cycle", |b| {
        b.iter(|| {
            for &o in &offs {
                drop(black_box(primary.write_guard(black_box(o), 4096).unwrap()));
            }
        });
    });
    // The same through the tracking chosen at run time (the builder's and
    // the C ABI's), and for a disk that joined consistency groups (its
    // completions count themselves for the group cut's drain).
    let disk: std::sync::Arc<dyn blockrep::io::Storage> =
        std::sync::Arc::new(blockrep::io::MemStorage::new());
    let any = blockrep::source::Primary::new(
        blockrep::source::AnyTracker::from(Tracker::new(geo)),
        disk.clone(),
    );
    any.tracker().mark(0, size).unwrap();
    g.bench_function("guard_any_tracker", |b| {
        b.iter(|| {
            for &o in &offs {
                drop(black_box(any.write_guard(black_box(o), 4096).unwrap()));
            }
        });
    });
    let mut grouped = blockrep::source::Primary::new(Tracker::new(geo), disk);
    grouped.join_group();
    grouped.tracker().mark(0, size).unwrap();
    g.bench_function("guard_grouped", |b| {
        b.iter(|| {
            for &o in &offs {
                drop(black_box(grouped.write_guard(black_box(o), 4096).unwrap()));
            }
        });
    });
    g.finish();
}

/// A primary's cut (copy-before-write armed, its frozen set recorded for
/// guards) against the tracker's bare cut of the same dirty set: what the
/// primary adds is what a guard starting during the cut waits for.
fn primary_cut(c: &mut Criterion) {
    let geo = Geometry::new(64 << 30, 4096).unwrap();
    let blocks = geo.block_count();
    let mut g = c.benchmark_group("primary_cut_64GiB_4KiB");
    g.sample_size(20);
    let disk: std::sync::Arc<dyn blockrep::io::Storage> =
        std::sync::Arc::new(blockrep::io::MemStorage::new());
    let primary = blockrep::source::Primary::new(Tracker::new(geo), disk);
    let t = Tracker::new(geo);
    for (label, per) in [("0.1%", 10), ("1%", 100)] {
        let dirty = dirty_blocks(blocks, per, 1, per + 7);
        let mark = |t: &Tracker| {
            for &(s, n) in &dirty {
                t.mark_extent(blockrep::Extent::new(s, n)).unwrap();
            }
        };
        g.bench_function(BenchmarkId::new("tracker_cut", label), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    mark(&t);
                    let start = Instant::now();
                    black_box(t.cut());
                    total += start.elapsed();
                }
                total
            });
        });
        g.bench_function(BenchmarkId::new("primary_cut", label), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    mark(primary.tracker());
                    let start = Instant::now();
                    let cycle = black_box(primary.begin_cycle());
                    total += start.elapsed();
                    drop(cycle); // abandoned: its blocks go back
                    black_box(primary.tracker().cut());
                }
                total
            });
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    mark_dirty,
    mark_clean,
    cut,
    primary_cut,
    write_guard
);
criterion_main!(benches);
