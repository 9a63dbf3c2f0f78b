//! `blockrep bench --link MBIT`: the 1 % cycle of the bench image from cut
//! to applied on a replica server across a link of MBIT megabits per
//! second (a token-bucket relay, [`Link`]), against QEMU's dirty-bitmap
//! flow reading the same blocks over NBD through a link of the same rate
//! (a qcow2 with a persistent bitmap exported by `qemu-nbd -B`, mapped by
//! `nbdinfo`, the dirty extents copied into a raw replica and synced).
//!
//! Two kinds of guest data: disk-like (the bench image's own mix of zero,
//! text and random blocks) and random (incompressible: the worst case for
//! blockrep, whose logs are LZ4-compressed and zero-elided, and no
//! different for NBD, which sends raw bytes). Each ratio is measured in
//! one run; the figure is the median of `RUNS` runs, with its spread.

use super::bench::{
    have, line, median, same_files, spread, sync_file, timed, verify, QemuFlow, BS,
};
use super::bench_net::bench_server;
use super::link::Link;
use blockrep::io::{FileStorage, FsDir, Storage};
use blockrep::net::{Shipper, ShipperConfig};
use blockrep::source::{CycleOptions, Pipeline, Tracking};
use blockrep::{DiskId, Error, Geometry, Result};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const RUNS: usize = 3;
const ID: DiskId = DiskId(*b"blockrep-link-01");

/// Waits until every log of `p`'s spool is acknowledged by the server.
fn drained<T: Tracking>(p: &Pipeline<T>, shipper: &Shipper) -> Result<()> {
    let t = Instant::now();
    while p.status().pending_logs > 0 {
        if t.elapsed() > Duration::from_secs(1200) {
            return Err(Error::invalid(format!(
                "the logs did not ship: {:?}",
                shipper.status()
            )));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// The bench; see the module docs.
pub fn run(dir: &Path, size: u64, megabits: f64) -> Result<()> {
    if !(have("qemu-img") && have("qemu-io") && have("qemu-nbd") && have("nbdinfo")) {
        return Err(Error::invalid(
            "the link bench compares with QEMU's flow: it needs qemu-img, qemu-io, \
             qemu-nbd (qemu-utils) and nbdinfo (libnbd-bin)",
        ));
    }
    let size = size / BS * BS;
    let g = Geometry::new(size, BS as u32)?;
    let src = dir.join("source.img");
    eprintln!(
        "blockrep bench --link {megabits} in {} ({} image)",
        dir.display(),
        super::human(size)
    );
    super::demo::make_image(&src, size)?;
    sync_file(&src)?;
    let (server, files, root) = bench_server(dir)?;
    let addr = server.local_addr()?;
    let image = root.join(ID.to_string()).join("replica").join("image");
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| -> Result<()> {
        s.spawn(|| server.run(&stop));
        let result = (|| {
            let disk: Arc<dyn Storage> = Arc::new(FileStorage::open(&src)?);
            let p = Pipeline::builder(disk.clone(), Arc::new(FsDir::new(dir.join("spool"))?))
                .create(ID, 1)?;
            let shipper_to = |to| {
                let mut c = ShipperConfig::new(to, "localhost", files("bench.site-a"));
                c.retry_min = Duration::from_millis(10);
                Shipper::start(p.shared_spool(), c)
            };
            // The initial replication, untimed and straight to the server.
            eprintln!("  initial replication (not timed)");
            p.initial_sync(Default::default())?;
            let direct = shipper_to(addr)?;
            drained(&p, &direct)?;
            direct.stop();
            verify("initial replication", same_files(&src, &image, size)?)?;
            eprintln!("  QEMU's side: qcow2 with a bitmap (not timed)");
            let qemu = QemuFlow::new(dir, &src)?;
            let link = Link::start(addr, megabits)?;
            let shipper = shipper_to(link.addr())?;
            let mut rng = super::demo::Rng(0x5eed ^ super::now_ns());
            let mut rows = Vec::new();
            for (kind, disk_like) in [("disk_like", true), ("random", false)] {
                let (mut ours, mut theirs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
                let (mut dirty, mut log_bytes) = (0, 0);
                for _ in 0..RUNS {
                    let mut blocks: Vec<u64> = (0..g.block_count() / 100)
                        .map(|_| rng.next() % g.block_count())
                        .collect();
                    blocks.sort_unstable();
                    blocks.dedup();
                    let mut data = vec![0u8; BS as usize];
                    for &b in &blocks {
                        if disk_like {
                            rng.block(&mut data);
                            if data.iter().any(|&x| x != 0) {
                                rng.fill(&mut data[..8]); // not identical blocks
                            }
                        } else {
                            rng.fill(&mut data);
                        }
                        let guard = p.primary().write_guard(b * BS, BS)?;
                        disk.write_at(&data, b * BS)?;
                        drop(guard);
                    }
                    disk.sync()?;
                    qemu.guest_writes(&blocks)?;
                    dirty = blocks.len() as u64 * BS;
                    let t_b = timed(|| {
                        log_bytes = p.cycle(&CycleOptions::default())?.summary.bytes;
                        drained(&p, &shipper)
                    })?;
                    verify("blockrep over the link", same_files(&src, &image, size)?)?;
                    let t_q = timed(|| qemu.incremental_copy(Some(megabits)))?;
                    verify("QEMU's flow over the link", qemu.target_matches()?)?;
                    qemu.clear()?;
                    eprintln!("  {kind}: blockrep {t_b:.3} s, QEMU {t_q:.3} s");
                    ours.push(t_b);
                    theirs.push(t_q);
                    ratios.push(t_b / t_q);
                }
                let (b, q) = (median(&ours), median(&theirs));
                line(
                    &format!("link.1%.{kind}.blockrep"),
                    b,
                    &format!(
                        " spread={} dirty_bytes={dirty} log_bytes={log_bytes} megabits={megabits}",
                        spread(&ours)
                    ),
                );
                line(
                    &format!("link.1%.{kind}.qemu_bitmap"),
                    q,
                    &format!(
                        " spread={} blockrep_ratio={:.3} ratio_spread={}",
                        spread(&theirs),
                        median(&ratios),
                        spread(&ratios)
                    ),
                );
                rows.push((kind, b, q, median(&ratios)));
            }
            shipper.stop();
            println!();
            println!(
                "| 1 % cycle across {megabits} Mbit/s | blockrep s (cut to applied) \
                 | QEMU bitmap + NBD s | blockrep / QEMU (median of {RUNS}) |"
            );
            println!("| --- | --- | --- | --- |");
            for (kind, b, q, r) in rows {
                println!("| {kind} data | {b:.3} | {q:.3} | {r:.3} |");
            }
            Ok(())
        })();
        stop.store(true, Ordering::SeqCst);
        result
    })
}
