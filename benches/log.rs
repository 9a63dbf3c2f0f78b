//! Delta-log benchmarks on realistic content (256 MiB: about 40 % zero
//! blocks, 30 % text-like, 30 % random), each beside its baseline:
//!
//! * `log_write`: the log writer, one thread and all cores, against bare
//!   `lz4_flex` block compression of the same bytes in the same 256 KiB
//!   chunks (no framing) and a memcpy of them (the limit);
//! * `log_read`: streaming read plus verify, against bare `lz4_flex`
//!   decompression of those chunks and the memcpy.
//!
//! * `log_seal` (with the `seal` feature): the one-thread writer into a
//!   `Vec`, against the same writer into a `SealWriter` (AES-256-GCM
//!   chunks of 1 MiB): sealing's cost on one core; and opening the sealed
//!   log alone.
//!
//! Before the groups it prints the log's size against `lz4 -1` of the same
//! bytes (the command-line tool, when installed). Run:
//! `cargo bench --bench log`.

#[path = "../tests/common/mod.rs"]
mod common;

use blockrep::log::{verify, LogHeader, LogKind, LogWriter, ReadOptions, WriterOptions};
use blockrep::{DiskId, Geometry};
use common::Rng;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;

const SIZE: usize = 256 << 20;
const BLOCK: usize = 4096;
const CHUNK: usize = 256 << 10;

/// Disk-like content: runs of zero, text-like and random blocks.
fn workload() -> Vec<u8> {
    const WORDS: [&[u8]; 12] = [
        b"the ",
        b"replica ",
        b"block ",
        b"log ",
        b"disk\n",
        b"of ",
        b"write ",
        b"epoch ",
        b"{\"id\": ",
        b"42, ",
        b"error: ",
        b"INFO ",
    ];
    let mut rng = Rng(0x5eed);
    let mut data = vec![0u8; SIZE];
    let mut b = 0;
    while b < SIZE / BLOCK {
        let run = 1 + (rng.next() % 16) as usize;
        let kind = rng.next() % 10;
        for blk in b..(b + run).min(SIZE / BLOCK) {
            let out = &mut data[blk * BLOCK..(blk + 1) * BLOCK];
            match kind {
                0..=3 => {}
                4..=6 => {
                    let mut at = 0;
                    while at < BLOCK {
                        let w = WORDS[(rng.next() % 12) as usize];
                        let n = w.len().min(BLOCK - at);
                        out[at..at + n].copy_from_slice(&w[..n]);
                        at += n;
                    }
                }
                _ => {
                    for c in out.chunks_mut(8) {
                        c.copy_from_slice(&rng.next().to_le_bytes());
                    }
                }
            }
        }
        b += run;
    }
    data
}

fn geometry() -> Geometry {
    Geometry::new(SIZE as u64, BLOCK as u32).unwrap()
}

fn write_log(data: &[u8], threads: usize) -> Vec<u8> {
    write_log_with(data, threads, true)
}

/// `copies`: repeated blocks stored once (the default) or not looked for.
fn write_log_with(data: &[u8], threads: usize, copies: bool) -> Vec<u8> {
    let mut h = LogHeader::new(DiskId([1; 16]), geometry(), LogKind::Full, 1, 1).unwrap();
    h.copies = copies;
    let opts = WriterOptions {
        record_bytes: CHUNK,
        threads,
    };
    let mut w = LogWriter::new(Vec::with_capacity(SIZE), h, opts).unwrap();
    for (i, blk) in data.chunks(BLOCK).enumerate() {
        w.add_block(i as u64, blk).unwrap();
    }
    w.finish().unwrap().0
}

fn bare_compress(data: &[u8]) -> Vec<Vec<u8>> {
    data.chunks(CHUNK)
        .map(|c| {
            let mut out = vec![0u8; lz4_flex::block::get_maximum_output_size(c.len())];
            let n = lz4_flex::block::compress_into(c, &mut out).unwrap();
            out.truncate(n);
            out
        })
        .collect()
}

fn report_ratio(data: &[u8]) {
    let log = write_log(data, 1);
    let ratio = data.len() as f64 / log.len() as f64;
    println!(
        "log: {} bytes for {} input bytes, ratio {ratio:.3}",
        log.len(),
        data.len()
    );
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("in.raw");
    std::fs::write(&p, data).unwrap();
    match std::process::Command::new("lz4")
        .args(["-1", "-q", "-f"])
        .arg(&p)
        .arg(p.with_extension("lz4"))
        .status()
    {
        Ok(s) if s.success() => {
            let n = std::fs::metadata(p.with_extension("lz4")).unwrap().len();
            let l = data.len() as f64 / n as f64;
            println!(
                "lz4 -1: {n} bytes, ratio {l:.3}; log / lz4 -1 size = {:.3}",
                log.len() as f64 / n as f64
            );
        }
        _ => println!("lz4 -1: not installed (apt-get install lz4), no comparison"),
    }
}

fn write(c: &mut Criterion) {
    let data = workload();
    report_ratio(&data);
    let mut g = c.benchmark_group("log_write");
    g.throughput(Throughput::Bytes(SIZE as u64));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(8));
    let mut dst = vec![0u8; SIZE];
    g.bench_function("memcpy", |b| {
        b.iter(|| dst.copy_from_slice(black_box(&data)));
    });
    g.bench_function("lz4_bare_compress", |b| {
        b.iter(|| black_box(bare_compress(&data)));
    });
    g.bench_function("writer_1thread", |b| {
        b.iter(|| black_box(write_log(&data, 1)));
    });
    g.bench_function("writer_1thread_no_copies", |b| {
        b.iter(|| black_box(write_log_with(&data, 1, false)));
    });
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    g.bench_function(format!("writer_{cores}threads"), |b| {
        b.iter(|| black_box(write_log(&data, cores)));
    });
    g.finish();
}

fn read(c: &mut Criterion) {
    let data = workload();
    let log = write_log(&data, 2);
    let chunks = bare_compress(&data);
    let mut g = c.benchmark_group("log_read");
    g.throughput(Throughput::Bytes(SIZE as u64));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(8));
    let mut dst = vec![0u8; SIZE];
    g.bench_function("memcpy", |b| {
        b.iter(|| dst.copy_from_slice(black_box(&data)));
    });
    g.bench_function("lz4_bare_decompress", |b| {
        b.iter(|| {
            for (c, out) in chunks.iter().zip(dst.chunks_mut(CHUNK)) {
                lz4_flex::block::decompress_into(c, out).unwrap();
            }
        });
    });
    g.bench_function("reader_verify", |b| {
        b.iter(|| black_box(verify(&log[..], ReadOptions::default()).unwrap()));
    });
    g.finish();
}

#[cfg(feature = "seal")]
fn seal(c: &mut Criterion) {
    use blockrep::seal::{open_bytes, Binding, Keyring, ObjectKind, SealKey, SealWriter};
    let data = workload();
    let keys = Keyring::new(SealKey::from_bytes([7; 32]));
    let binding = Binding::point(
        ObjectKind::Log,
        DiskId([1; 16]),
        1,
        1,
        blockrep::log::Digest([0; 32]),
    );
    let sealed_log = |data: &[u8]| {
        let h = LogHeader::new(DiskId([1; 16]), geometry(), LogKind::Full, 1, 1).unwrap();
        let opts = WriterOptions {
            record_bytes: CHUNK,
            threads: 1,
        };
        let out = SealWriter::new(Vec::with_capacity(SIZE), keys.current(), &binding).unwrap();
        let mut w = LogWriter::new(out, h, opts).unwrap();
        for (i, blk) in data.chunks(BLOCK).enumerate() {
            w.add_block(i as u64, blk).unwrap();
        }
        w.finish().unwrap().0.finish().unwrap().0
    };
    let log = write_log(&data, 1);
    let sealed = sealed_log(&data);
    println!(
        "sealed log: {} bytes for a {} byte log (+{} bytes)",
        sealed.len(),
        log.len(),
        sealed.len() - log.len()
    );
    let mut g = c.benchmark_group("log_seal");
    g.throughput(Throughput::Bytes(SIZE as u64));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(8));
    g.bench_function("writer_1thread", |b| {
        b.iter(|| black_box(write_log(&data, 1)));
    });
    g.bench_function("writer_1thread_sealed", |b| {
        b.iter(|| black_box(sealed_log(&data)));
    });
    g.bench_function("open_sealed_log", |b| {
        b.iter(|| black_box(open_bytes(&keys, &binding, &sealed, usize::MAX).unwrap()));
    });
    g.finish();
}

#[cfg(not(feature = "seal"))]
fn seal(_: &mut Criterion) {}

criterion_group!(benches, write, read, seal);
criterion_main!(benches);
