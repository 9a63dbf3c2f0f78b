//! Consistency groups across the network: two disks of one machine cut
//! together, each member log pushed by its own shipper. The server holds
//! a member until the whole cut arrived (202 `held`, the replica not
//! touched), then applies the cut all at once; both replicas equal their
//! sources at every point shipped. A server restarted with a complete cut
//! held applies it at start.
#![cfg(feature = "net")]

mod common;
mod net_common;

use blockrep::io::{MemDir, MemStorage, Storage};
use blockrep::net::{Shipper, ShipperConfig};
use blockrep::source::{AnyTracker, ConsistencyGroup, CycleOptions, Pipeline, TransferOptions};
use blockrep::DiskId;
use common::Rng;
use net_common::{files, start};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SIZE: u64 = 4 << 20;
const IDS: [DiskId; 2] = [DiskId([0xa1; 16]), DiskId([0xb2; 16])];

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn image(root: &Path, id: DiskId) -> Vec<u8> {
    std::fs::read(root.join(id.to_string()).join("replica/image")).unwrap_or_default()
}

fn content(d: &dyn Storage) -> Vec<u8> {
    let mut b = vec![0u8; SIZE as usize];
    d.read_at(&mut b, 0).unwrap();
    b
}

fn scribble(p: &Pipeline<AnyTracker>, disk: &dyn Storage, rng: &mut Rng) {
    for _ in 0..10 {
        let off = rng.below(SIZE - 20_000);
        let mut w = vec![0u8; 1 + rng.below(20_000) as usize];
        rng.fill(&mut w);
        let _g = p.primary().write_guard(off, w.len() as u64).unwrap();
        disk.write_at(&w, off).unwrap();
    }
}

#[test]
fn a_group_cut_applies_whole_once_every_member_arrived() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let mut config = net_common::site(d);
    let root = d.join("site-a");
    let server = start(&config);
    let addr = server.addr;
    let mut rng = Rng(31);
    let disks: Vec<Arc<dyn Storage>> = (0..2)
        .map(|_| Arc::new(MemStorage::zeroed(SIZE).unwrap()) as Arc<dyn Storage>)
        .collect();
    let pipes: Vec<Pipeline<AnyTracker>> = IDS
        .iter()
        .zip(&disks)
        .map(|(id, disk)| {
            let p = Pipeline::builder(disk.clone(), Arc::new(MemDir::new()))
                .grouped()
                .create(*id, 1)
                .unwrap();
            p.initial_sync(TransferOptions::default()).unwrap();
            p
        })
        .collect();
    let config_of = |addr| {
        let mut sc = ShipperConfig::new(addr, "localhost", files(d, "host1", "ca.crt"));
        sc.retry_min = Duration::from_millis(20);
        sc.retry_max = Duration::from_millis(200);
        sc.timeout = Duration::from_secs(5);
        sc
    };
    let mut shippers: Vec<Shipper> = pipes
        .iter()
        .map(|p| Shipper::start(p.shared_spool(), config_of(addr)).unwrap())
        .collect();
    wait_for("the full logs", || {
        pipes.iter().all(|p| p.status().pending_logs == 0)
    });
    let group = ConsistencyGroup::new(pipes.iter().collect()).unwrap();

    // Two group cuts, both members shipping.
    for _ in 0..2 {
        for (p, disk) in pipes.iter().zip(&disks) {
            scribble(p, &**disk, &mut rng);
        }
        group.cycle(&CycleOptions::default()).unwrap();
    }
    wait_for("the group cuts", || {
        pipes.iter().all(|p| p.status().pending_logs == 0)
    });
    for (id, disk) in IDS.iter().zip(&disks) {
        assert!(image(&root, *id) == content(&**disk), "disk {id}");
    }

    // One member's shipper stops: the other's log is held, its replica
    // untouched, until the first ships again.
    shippers.remove(1).stop();
    let before: Vec<Vec<u8>> = IDS.iter().map(|id| image(&root, *id)).collect();
    for (p, disk) in pipes.iter().zip(&disks) {
        scribble(p, &**disk, &mut rng);
    }
    group.cycle(&CycleOptions::default()).unwrap();
    wait_for("the first member held", || {
        std::fs::read_dir(root.join("groups")).is_ok_and(|d| d.flatten().count() == 1)
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(pipes[0].status().pending_logs, 1, "acknowledged while held");
    for (id, b) in IDS.iter().zip(&before) {
        assert!(
            image(&root, *id) == *b,
            "disk {id} changed before its group"
        );
    }
    // The server restarts with the cut incomplete; then the second member
    // arrives and the cut applies whole.
    drop(shippers);
    drop(server);
    config.listen = addr;
    let server = start(&config);
    let mut shippers: Vec<Shipper> = pipes
        .iter()
        .map(|p| Shipper::start(p.shared_spool(), config_of(addr)).unwrap())
        .collect();
    wait_for("the held cut", || {
        pipes.iter().all(|p| p.status().pending_logs == 0)
    });
    for (id, disk) in IDS.iter().zip(&disks) {
        assert!(image(&root, *id) == content(&**disk), "disk {id}");
    }
    // The held logs go once the cut applied.
    let left = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(root.join("groups"))
            .unwrap()
            .flatten()
            .flat_map(|c| std::fs::read_dir(c.path()).into_iter().flatten().flatten())
            .map(|f| f.path())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !left().is_empty() {
        assert!(Instant::now() < deadline, "held logs left: {:?}", left());
        std::thread::sleep(Duration::from_millis(20));
    }

    // A server that stops with a complete cut held (here: the second
    // member's log put beside the first's, as a push that completed the
    // set would have before the server died) applies it at its start.
    shippers.remove(1).stop();
    for (p, disk) in pipes.iter().zip(&disks) {
        scribble(p, &**disk, &mut rng);
    }
    group.cycle(&CycleOptions::default()).unwrap();
    wait_for("the first member held again", || !left().is_empty());
    drop(shippers);
    drop(server);
    let l = pipes[1].spool().next_to_ship().unwrap();
    let bytes = net_common::log_bytes(pipes[1].spool(), l.point.sequence);
    let cut = left()[0].parent().unwrap().to_path_buf();
    let name = format!(
        "{}-{:020}-{:x}.log",
        IDS[1], l.point.sequence, l.point.digest
    );
    std::fs::write(cut.join(name), &bytes).unwrap();
    let _server = start(&config);
    for (id, disk) in IDS.iter().zip(&disks) {
        assert!(
            image(&root, *id) == content(&**disk),
            "disk {id} after the start"
        );
    }
    assert!(left().is_empty(), "{:?}", left());
    let last_shippers: Vec<Shipper> = pipes
        .iter()
        .map(|p| Shipper::start(p.shared_spool(), config_of(addr)).unwrap())
        .collect();
    wait_for("both acknowledged", || {
        pipes.iter().all(|p| p.status().pending_logs == 0)
    });

    // A member log pushed under another disk of the same primary is
    // refused, not held where it would apply to its own disk.
    drop(last_shippers);
    for (p, disk) in pipes.iter().zip(&disks) {
        scribble(p, &**disk, &mut rng);
    }
    group.cycle(&CycleOptions::default()).unwrap();
    let l = pipes[0].spool().next_to_ship().unwrap();
    let bytes = net_common::log_bytes(pipes[0].spool(), l.point.sequence);
    let mut c = net_common::connect(d, addr, "host1").unwrap();
    let r = c
        .request(
            "PUT",
            &format!("/v1/disks/{}/logs/{}", IDS[1], l.point.sequence),
            &[("Blockrep-Digest", format!("{:x}", l.point.digest))],
            &mut &bytes[..],
            l.bytes,
        )
        .unwrap();
    assert_eq!(r.head.status, 409, "{}", String::from_utf8_lossy(&r.body));
    assert!(left().is_empty(), "{:?}", left());
}
