//! Tracks guest-like writes to a real disk image file and prints what the
//! tracker found, then checks it against the image itself.
//!
//! ```text
//! cargo run --release --example track_image [DIR]
//! ```
//! The image is made in DIR (kept) or in a temporary directory (removed).

use blockrep::io::{FileStorage, Storage};
use blockrep::{Geometry, Tracker};
use std::time::Instant;

const SIZE: u64 = 256 << 20;
const BLOCK: u32 = 4096;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tmp;
    let dir = if let Some(d) = std::env::args().nth(1) {
        std::path::PathBuf::from(d)
    } else {
        tmp = tempfile::tempdir()?;
        tmp.path().to_path_buf()
    };
    std::fs::create_dir_all(&dir)?;
    let image_path = dir.join("disk.img");
    let base_path = dir.join("disk.base.img");

    // A 256 MiB image with content in its first half, then a copy of it.
    let image = FileStorage::create(&image_path, SIZE)?;
    let mut rng = Rng(0x5eed);
    let mut chunk = vec![0u8; 1 << 20];
    for mb in 0..128u64 {
        rng.fill(&mut chunk);
        image.write_at(&chunk, mb << 20)?;
    }
    image.sync()?;
    std::fs::copy(&image_path, &base_path)?;

    // Guest-like writes, each marked after it completes.
    let tracker = Tracker::new(Geometry::new(SIZE, BLOCK)?);
    let started = Instant::now();
    let mut writes = 0u64;
    let mut buf = vec![0u8; 4096];
    for _ in 0..2000 {
        let off = (rng.next() % (SIZE / 4096)) * 4096;
        rng.fill(&mut buf);
        image.write_at(&buf, off)?;
        tracker.mark(off, 4096)?;
        writes += 1;
    }
    rng.fill(&mut chunk);
    image.write_at(&chunk, 200 << 20)?; // one sequential 1 MiB write
    tracker.mark(200 << 20, 1 << 20)?;
    image.write_at(b"unaligned", 12345)?; // a write inside one block
    tracker.mark(12345, 9)?;
    writes += 2;
    let frozen = tracker.cut();
    let elapsed = started.elapsed();

    println!("image: {} ({} MiB)", image_path.display(), SIZE >> 20);
    println!("writes: {writes} in {elapsed:.2?}");
    println!(
        "generation {}: {} dirty blocks in {} extents ({} KiB to ship)",
        frozen.generation(),
        frozen.count(),
        frozen.extents().count(),
        frozen.count() * u64::from(BLOCK) / 1024
    );
    for e in frozen.extents().take(5) {
        println!("  blocks {e}");
    }

    // Every block that differs from the copy must be in the dirty set.
    let base = FileStorage::open_read_only(&base_path)?;
    let (mut a, mut b) = (vec![0u8; BLOCK as usize], vec![0u8; BLOCK as usize]);
    let mut changed = 0u64;
    for block in 0..SIZE / u64::from(BLOCK) {
        image.read_at(&mut a, block * u64::from(BLOCK))?;
        base.read_at(&mut b, block * u64::from(BLOCK))?;
        if a != b {
            changed += 1;
            if !frozen.contains(block) {
                return Err(format!("block {block} changed but was not tracked").into());
            }
        }
    }
    // Every write here changed its bytes, so the sets must be equal.
    if changed != frozen.count() {
        return Err(format!("{} blocks tracked but {changed} changed", frozen.count()).into());
    }
    println!("verified: the dirty set is exactly the {changed} changed blocks");
    Ok(())
}
