//! The primary side: initial sync skipping holes, delta cycles applied to a
//! replica byte for byte, and cycles failing at every step handing their
//! blocks back.

mod common;

use blockrep::io::{
    Dir, Fault, FaultPlan, FaultStorage, FileStorage, MemDir, MemStorage, Storage, StorageWriter,
};
use blockrep::log::{MappedLog, ReadOptions, WriterOptions};
use blockrep::replica::Replica;
use blockrep::source::{CycleOptions, Source};
use blockrep::{DiskId, Geometry, Tracker};
use common::{first_diff, Reads, Rng};
use std::sync::atomic::Ordering;
use std::sync::Arc;

const ID: DiskId = DiskId([5; 16]);

fn to_log(bytes: Vec<u8>) -> MappedLog {
    MappedLog::from_bytes(bytes, "log", &ReadOptions::default()).unwrap()
}

fn image(r: &Replica, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    r.read_at(&mut b, 0).unwrap();
    b
}

#[test]
fn initial_sync_of_a_sparse_file_reads_only_its_data() {
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("disk.img");
    let size = 256u64 << 20;
    let f = FileStorage::create(&path, size).unwrap();
    let mut rng = Rng(3);
    let mut expect = vec![0u8; size as usize];
    for (off, len) in [
        (0u64, 4096usize),
        (10 << 20, 1 << 20),
        (100 << 20, 12345),
        (size - 4096, 4096),
    ] {
        let mut d = vec![0u8; len];
        rng.fill(&mut d);
        f.write_at(&d, off).unwrap();
        expect[off as usize..off as usize + len].copy_from_slice(&d);
    }
    f.sync().unwrap();
    let disk = Reads::new(f, 0);
    let g = Geometry::new(size, 4096).unwrap();
    let mut src = Source::enable(ID, 1, g);
    let (bytes, summary) = src
        .initial_sync(&disk, Vec::new(), WriterOptions::default())
        .unwrap();
    let read = disk.bytes.load(Ordering::SeqCst);
    // The data is about 1.03 MiB; file systems allocate in 4 KiB or larger
    // units, so allow a little more, but far less than the 256 MiB disk.
    assert!(read < 4 << 20, "read {read} bytes of a sparse 256 MiB file");
    assert_eq!(summary.trailer.blocks, g.block_count());
    let dir: Arc<dyn Dir> = Arc::new(MemDir::new());
    let r = Replica::create(dir, &to_log(bytes)).unwrap();
    assert_eq!(first_diff(&image(&r, size as usize), &expect), None);
}

#[test]
fn cycles_replicate_writes_exactly() {
    let g = Geometry::new(8 << 20, 4096).unwrap();
    let disk = MemStorage::zeroed(g.size()).unwrap();
    let tracker = Tracker::new(g);
    let mut src = Source::enable(ID, 1, g);
    let (full, _) = src
        .initial_sync(&disk, Vec::new(), WriterOptions::default())
        .unwrap();
    let dir: Arc<dyn Dir> = Arc::new(MemDir::new());
    let r = Replica::create(dir, &to_log(full)).unwrap();
    let mut rng = Rng(9);
    for round in 0..10 {
        for _ in 0..20 {
            let off = rng.below(g.size() - 70_000);
            let len = 1 + rng.below(65_536) as usize;
            let mut d = vec![0u8; len];
            if rng.below(4) > 0 {
                rng.fill(&mut d);
            }
            disk.write_at(&d, off).unwrap();
            tracker.mark(off, len as u64).unwrap();
        }
        let (log, summary) = src
            .cycle(
                &tracker,
                &disk,
                Vec::new(),
                WriterOptions::default(),
                &CycleOptions::default(),
            )
            .unwrap();
        assert_eq!(summary.header.sequence, round + 2);
        r.apply(&to_log(log)).unwrap();
        assert_eq!(
            first_diff(&image(&r, g.size() as usize), &disk.to_vec()),
            None,
            "round {round}"
        );
    }
}

/// A cycle failing at every read of the disk and every write of its
/// output hands exactly its blocks back; the next cycle ships them.
#[test]
fn a_cycle_failing_at_every_step_reclaims_its_blocks() {
    let g = Geometry::new(4 << 20, 4096).unwrap();
    let mem = MemStorage::zeroed(g.size()).unwrap();
    let tracker = Tracker::new(g);
    let mut src = Source::enable(ID, 1, g);
    let (full, _) = src
        .initial_sync(&mem, Vec::new(), WriterOptions::default())
        .unwrap();
    let dir: Arc<dyn Dir> = Arc::new(MemDir::new());
    let r = Replica::create(dir, &to_log(full)).unwrap();
    let mut rng = Rng(11);
    let mut write_some = |tracker: &Tracker| {
        for _ in 0..8 {
            let off = rng.below(g.size() - 300_000);
            let mut d = vec![0u8; 1 + rng.below(300_000) as usize];
            rng.fill(&mut d);
            mem.write_at(&d, off).unwrap();
            tracker.mark(off, d.len() as u64).unwrap();
        }
    };
    write_some(&tracker);
    let opts = WriterOptions {
        record_bytes: 64 << 10,
        threads: 1,
    };
    // Count the steps of a clean cycle on a copy.
    let probe = Tracker::new(g);
    probe.reclaim(&tracker.snapshot());
    let counting = FaultPlan::counting();
    let out = FaultStorage::new(MemStorage::new(), &counting);
    let disk = Reads::new(&mem, 0);
    src.clone()
        .cycle(
            &probe,
            &disk,
            StorageWriter::new(&out, 0),
            opts,
            &CycleOptions::default(),
        )
        .unwrap();
    let (reads, writes) = (disk.calls.load(Ordering::SeqCst), counting.ops());
    assert!(reads > 3 && writes > 3, "{reads} reads, {writes} writes");
    for (kind, steps) in [("read", reads), ("write", writes)] {
        for n in 1..=steps {
            let before = tracker.snapshot();
            let plan = if kind == "write" {
                FaultPlan::at(n, Fault::Error)
            } else {
                FaultPlan::counting()
            };
            let out = FaultStorage::new(MemStorage::new(), &plan);
            let disk = Reads::new(&mem, if kind == "read" { n } else { 0 });
            let seq = src.sequence();
            assert!(
                src.cycle(
                    &tracker,
                    &disk,
                    StorageWriter::new(&out, 0),
                    opts,
                    &CycleOptions::default()
                )
                .is_err(),
                "{kind} {n}"
            );
            assert_eq!(
                tracker.snapshot(),
                before,
                "{kind} {n}: the failed cycle's blocks are back"
            );
            assert_eq!(src.sequence(), seq);
        }
    }
    // Nothing was lost: the next cycle ships everything.
    write_some(&tracker);
    let (log, _) = src
        .cycle(&tracker, &mem, Vec::new(), opts, &CycleOptions::default())
        .unwrap();
    r.apply(&to_log(log)).unwrap();
    assert_eq!(
        first_diff(&image(&r, g.size() as usize), &mem.to_vec()),
        None
    );
}
