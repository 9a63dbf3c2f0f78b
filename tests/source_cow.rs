//! Every point is one instant: writers keep writing (to the very blocks
//! being read) while a cycle reads, and the log still equals the disk at
//! the cut, byte for byte.

mod common;

use blockrep::io::{Dir, MemDir, MemStorage, Storage};
use blockrep::log::{MappedLog, ReadOptions, WriterOptions};
use blockrep::replica::Replica;
use blockrep::source::{CycleOptions, Primary, Source};
use blockrep::{DiskId, Geometry, Tracker};
use common::{first_diff, Rng, StopOnDrop};
use parking_lot::RwLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

#[test]
fn points_equal_the_disk_at_the_cut_while_writers_race() {
    let g = Geometry::new(2 << 20, 4096).unwrap(); // 512 blocks: writers collide
    let disk = Arc::new(MemStorage::zeroed(g.size()).unwrap());
    let primary = Primary::new(Tracker::new(g), disk.clone());
    let mut source = Source::enable(DiskId([6; 16]), 1, g);
    let (full, _) = source
        .initial_sync(&*disk, Vec::new(), WriterOptions::default())
        .unwrap();
    let dir: Arc<dyn Dir> = Arc::new(MemDir::new());
    let replica = Replica::create(
        dir,
        &MappedLog::from_bytes(full, "full", &ReadOptions::default()).unwrap(),
    )
    .unwrap();
    // Writers hold the gate for reading around each write; the test takes
    // it for writing to cut at an instant when no write is in flight.
    let gate = RwLock::new(());
    let stop = AtomicBool::new(false);
    let writes = AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..3u64 {
            let (gate, stop, writes, primary, disk) = (&gate, &stop, &writes, &primary, &disk);
            s.spawn(move || {
                let mut rng = Rng(100 + t);
                while !stop.load(Ordering::SeqCst) {
                    let _g = gate.read();
                    let off = rng.below(g.size() - 20_000);
                    let len = 1 + rng.below(20_000);
                    let mut d = vec![0u8; len as usize];
                    rng.fill(&mut d);
                    let guard = primary.write_guard(off, len).unwrap();
                    disk.write_at(&d, off).unwrap();
                    drop(guard);
                    writes.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
        let _stop = StopOnDrop(&stop);
        for round in 0..30 {
            while writes.load(Ordering::SeqCst) < (round + 1) * 20 {
                std::thread::yield_now();
            }
            let (cycle, at_cut) = {
                let _quiet = gate.write();
                (primary.begin_cycle(), disk.to_vec())
            };
            if round % 7 == 3 {
                drop(cycle); // abandoned: its blocks go back to the tracker
                continue;
            }
            // Writers run again while the cycle reads.
            let opts = WriterOptions {
                record_bytes: 16 << 10,
                threads: 1,
            };
            let (log, _) = cycle
                .write_log(&mut source, Vec::new(), opts, &CycleOptions::default())
                .unwrap();
            replica
                .apply(&MappedLog::from_bytes(log, "delta", &ReadOptions::default()).unwrap())
                .unwrap();
            let mut img = vec![0u8; g.size() as usize];
            replica.read_at(&mut img, 0).unwrap();
            assert_eq!(
                first_diff(&img, &at_cut),
                None,
                "round {round}: the point is not the disk at the cut"
            );
        }
    });
    assert!(writes.load(Ordering::SeqCst) >= 600);
}

/// Unguarded begin/end pairs (the C ABI's) are matched by range: an end
/// without its begin, or a second end, is refused and marks nothing, even
/// while another write to the same blocks is in flight.
#[test]
fn an_end_without_its_begin_is_refused() {
    use blockrep::tracker::PersistentTracker;
    use blockrep::ErrorKind;
    let g = Geometry::new(8 << 20, 4096).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let t =
        PersistentTracker::create(dir.path().join("t.brt"), DiskId([6; 16]), g, 1 << 20).unwrap();
    let disk = Arc::new(MemStorage::zeroed(g.size()).unwrap());
    let p = Primary::new(t, disk);
    let misuse = |r: blockrep::Result<()>| assert_eq!(r.unwrap_err().kind(), ErrorKind::Misuse);
    misuse(p.end_write(0, 4096, false));
    p.begin_write(0, 8192, false).unwrap();
    misuse(p.end_write(0, 4096, false)); // another range than the one begun
    assert_eq!(p.tracker().snapshot().count(), 0, "nothing marked yet");
    p.end_write(0, 8192, false).unwrap();
    misuse(p.end_write(0, 8192, false)); // ended twice
    assert_eq!(p.tracker().snapshot().count(), 2);
    // Two writes of one range: two ends, not three.
    p.begin_write(4096, 10, true).unwrap();
    p.begin_write(4096, 10, true).unwrap();
    p.end_write(4096, 10, true).unwrap();
    p.end_write(4096, 10, true).unwrap();
    misuse(p.end_write(4096, 10, true));
}
