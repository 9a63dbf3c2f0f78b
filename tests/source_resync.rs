//! Digest resync: after tracking was lost, or after the replica left the
//! chain, only the blocks that differ are sent, in a new epoch; a failed
//! resync leaves deltas refused until a resync succeeds.

mod common;

use blockrep::io::{Dir, MemDir, MemStorage, Storage};
use blockrep::log::{MappedLog, ReadOptions, WriterOptions};
use blockrep::replica::Replica;
use blockrep::source::{CycleOptions, Pipeline, Primary, Progress, Spool, TransferOptions};
use blockrep::{DiskId, ErrorKind, Geometry, Tracker};
use common::{first_diff, realistic_block, Reads, Rng};
use std::sync::Arc;

const ID: DiskId = DiskId([8; 16]);

fn ship(p: &Pipeline, r: &mut Option<Replica>, rdir: &Arc<dyn Dir>) {
    while let Some(l) = p.spool().next_to_ship() {
        let f = p.spool().open_log(l.point.sequence).unwrap();
        let mut b = vec![0u8; l.bytes as usize];
        f.read_at(&mut b, 0).unwrap();
        let log = MappedLog::from_bytes(b, &l.name, &ReadOptions::default()).unwrap();
        match r {
            None => *r = Some(Replica::create(rdir.clone(), &log).unwrap()),
            Some(r) => {
                r.apply(&log).unwrap();
            }
        }
        p.spool().ack(l.point.sequence, &l.point.digest).unwrap();
    }
}

fn image(s: &dyn Fn(&mut [u8], u64), len: u64) -> Vec<u8> {
    let mut b = vec![0u8; len as usize];
    s(&mut b, 0);
    b
}

/// Blocks that differ between two images.
fn differing_blocks(a: &[u8], b: &[u8], bs: usize) -> u64 {
    a.chunks(bs)
        .zip(b.chunks(bs))
        .filter(|(x, y)| x != y)
        .count() as u64
}

#[test]
fn resync_sends_only_the_blocks_that_differ_in_a_new_epoch() {
    let g = Geometry::new(16 << 20, 4096).unwrap();
    let mem = MemStorage::zeroed(g.size()).unwrap();
    let mut rng = Rng(12);
    for b in 0..g.block_count() {
        mem.write_at(&realistic_block(&mut rng, 4096), b * 4096)
            .unwrap();
    }
    // Reads are counted; this disk never fails one.
    let disk = Arc::new(Reads::new(mem, 0));
    let opts = WriterOptions::default();
    let start = blockrep::source::ChainPoint::start(1, g);
    let spool_dir: Arc<dyn Dir> = Arc::new(MemDir::new());
    let spool = Spool::create(spool_dir.clone(), ID, start, 1 << 40).unwrap();
    let p = Pipeline::new(Primary::new(Tracker::new(g), disk.clone()), spool, opts).unwrap();
    p.initial_sync(opts.into()).unwrap();
    let rdir: Arc<dyn Dir> = Arc::new(MemDir::new());
    let mut replica = None;
    ship(&p, &mut replica, &rdir);
    // Two tracked cycles, both applied; then the replica rolls back one
    // point (an unplanned failover test, say), leaving the chain.
    for _ in 0..2 {
        for _ in 0..20 {
            let off = rng.below(g.size() - 8192);
            let _g = p.primary().write_guard(off, 8192).unwrap();
            disk.inner
                .write_at(&realistic_block(&mut rng, 8192), off)
                .unwrap();
        }
        p.cycle(&CycleOptions::default()).unwrap();
    }
    ship(&p, &mut replica, &rdir);
    let r = replica.as_ref().unwrap();
    r.rollback(r.points()[1].sequence).unwrap();
    // Tracking is lost: writes the tracker never sees, zeros among them.
    for i in 0..40 {
        let off = rng.below(g.block_count()) * 4096;
        let d = if i % 5 == 0 {
            vec![0u8; 4096]
        } else {
            realistic_block(&mut rng, 4096)
        };
        disk.inner.write_at(&d, off).unwrap();
    }
    let src = disk.inner.to_vec();
    let rep = image(&|b, o| r.read_at(b, o).unwrap(), g.size());
    let truth = differing_blocks(&src, &rep, 4096);
    assert!(truth > 50, "only {truth} blocks differ");
    let remote = r.block_digests(0).unwrap();
    let remote = blockrep::log::BlockDigests::decode(&remote.encode()).unwrap();

    // A resync that fails half way (a read error) leaves the chain
    // restarted: deltas are refused, also after reopening the spool.
    let fail = Reads::new(MemStorage::from_vec(src.clone()), 5);
    {
        let spool = Spool::open(spool_dir.clone(), 1 << 40).unwrap();
        let q = Pipeline::new(Primary::new(Tracker::new(g), Arc::new(fail)), spool, opts).unwrap();
        assert!(q.resync(&remote, opts.into()).is_err());
        let e = q.cycle(&CycleOptions::default()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ResyncRequired);
    }
    let spool = Spool::open(spool_dir, 1 << 40).unwrap();
    assert!(spool.resync_required());
    let p = Pipeline::new(Primary::new(Tracker::new(g), disk.clone()), spool, opts).unwrap();
    assert_eq!(
        p.cycle(&CycleOptions::default()).unwrap_err().kind(),
        ErrorKind::ResyncRequired
    );

    let mut reports = Vec::new();
    let mut on_progress = |pr: Progress| reports.push(pr);
    let t = TransferOptions {
        writer: opts,
        progress: Some(&mut on_progress),
        ..TransferOptions::default()
    };
    let report = p.resync(&remote, t).unwrap();
    assert_eq!(
        report.blocks, truth,
        "blocks sent against blocks that differ"
    );
    assert_eq!(report.summary.trailer.blocks, truth);
    assert_eq!(report.summary.header.epoch, 2);
    assert!(reports.windows(2).all(|w| w[0].done <= w[1].done));
    assert_eq!(
        reports.last().map(|p| (p.done, p.total)),
        Some((g.size(), g.size()))
    );
    assert!(!p.spool().resync_required());
    ship(&p, &mut replica, &rdir);
    let r = replica.as_ref().unwrap();
    assert_eq!(r.status().epoch, 2);
    assert_eq!(
        first_diff(&image(&|b, o| r.read_at(b, o).unwrap(), g.size()), &src),
        None
    );
    // Deltas follow in the new epoch.
    {
        let _g = p.primary().write_guard(4096, 100).unwrap();
        disk.inner.write_at(&[0xee; 100], 4096).unwrap();
    }
    p.cycle(&CycleOptions::default()).unwrap();
    ship(&p, &mut replica, &rdir);
    let r = replica.as_ref().unwrap();
    assert_eq!(
        first_diff(
            &image(&|b, o| r.read_at(b, o).unwrap(), g.size()),
            &disk.inner.to_vec()
        ),
        None
    );
}
