//! Writers mark while a cutter cuts in a loop: every block lands in exactly
//! one frozen set, and never before it was marked.

mod common;

use blockrep::{Geometry, Tracker};
use common::Rng;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

#[test]
fn concurrent_marks_and_cuts_lose_and_invent_nothing() {
    const WRITERS: usize = 3;
    let bs = 4096u64;
    let blocks = 1_000_003u64; // segments and words do not line up
    let g = Geometry::new(blocks * bs - 100, bs as u32).unwrap();
    let t = Arc::new(Tracker::new(g));
    let announced: Arc<Vec<AtomicBool>> =
        Arc::new((0..blocks).map(|_| AtomicBool::new(false)).collect());
    let done = Arc::new(AtomicUsize::new(0));

    let mut handles = Vec::new();
    for w in 0..WRITERS as u64 {
        let (t, announced, done) = (t.clone(), announced.clone(), done.clone());
        handles.push(std::thread::spawn(move || {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (w + 1));
            // This writer's segment, split into ranges of 1 to 40 blocks.
            let (lo, hi) = (
                blocks * w / WRITERS as u64,
                blocks * (w + 1) / WRITERS as u64,
            );
            let mut ranges = Vec::new();
            let mut b = lo;
            while b < hi {
                let n = (1 + rng.next() % 40).min(hi - b);
                ranges.push((b, n));
                b += n;
            }
            for i in (1..ranges.len()).rev() {
                ranges.swap(i, (rng.next() % (i as u64 + 1)) as usize);
            }
            for (i, (b, n)) in ranges.into_iter().enumerate() {
                if i % 32 == 0 {
                    std::thread::yield_now();
                }
                for x in b..b + n {
                    announced[x as usize].store(true, Ordering::SeqCst);
                }
                let len = (n * bs).min(g.size() - b * bs);
                t.mark(b * bs, len).unwrap();
            }
            done.fetch_add(1, Ordering::SeqCst);
        }));
    }

    let mut seen = vec![0u8; blocks as usize];
    let mut cuts = 0;
    loop {
        let finished = done.load(Ordering::SeqCst) == WRITERS;
        let f = t.cut();
        for b in f.blocks() {
            assert!(
                announced[b as usize].load(Ordering::SeqCst),
                "block {b} in a set before it was marked"
            );
            seen[b as usize] += 1;
        }
        cuts += 1;
        if finished {
            break;
        }
    }
    for h in handles {
        h.join().unwrap();
    }
    for b in t.cut().blocks() {
        seen[b as usize] += 1;
    }
    if let Some(b) = seen.iter().position(|&n| n != 1) {
        panic!("block {b} was handed out {} times", seen[b]);
    }
    assert!(cuts > 10, "the cutter ran {cuts} times only");
}
