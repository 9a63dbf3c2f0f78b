//! The shipper over real TLS: a primary's cycles reach the server while
//! writers run; the server goes away (the shipper says so and backs off)
//! and comes back on the same address (the shipper resumes from what it
//! holds). The replica equals the source byte for byte each time.
#![cfg(feature = "net")]

mod common;
mod net_common;

use blockrep::io::{MemDir, MemStorage, Storage};
use blockrep::net::{Shipper, ShipperConfig, TlsFiles};
use blockrep::source::{AnyTracker, CycleOptions, Pipeline, TransferOptions};
use blockrep::DiskId;
use common::Rng;
use net_common::{files, start};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const ID: DiskId = DiskId([0x3c; 16]);
const SIZE: u64 = 8 << 20;

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn scribble(p: &Pipeline<AnyTracker>, disk: &dyn Storage, rng: &mut Rng) {
    for _ in 0..15 {
        let off = rng.below(SIZE - 50_000);
        let mut w = vec![0u8; 1 + rng.below(50_000) as usize];
        rng.fill(&mut w);
        let _g = p.primary().write_guard(off, w.len() as u64).unwrap();
        disk.write_at(&w, off).unwrap();
    }
}

fn replica_equals(root: &Path, disk: &dyn Storage) -> bool {
    let hex = ID.to_string();
    let Ok(image) = std::fs::read(root.join(hex).join("replica/image")) else {
        return false;
    };
    let mut want = vec![0u8; SIZE as usize];
    disk.read_at(&mut want, 0).unwrap();
    image == want
}

#[test]
fn the_shipper_replicates_and_resumes_after_the_server_comes_back() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let mut config = net_common::site(d);
    // The server keeps the three newest points of each replica.
    config.primaries[0].retention.keep_last = 3;
    config.primaries[0].retention.keep_app_last = 0;
    let root = d.join("site-a");
    let server = start(&config);
    let addr = server.addr;

    let disk: Arc<dyn Storage> = Arc::new(MemStorage::zeroed(SIZE).unwrap());
    let mut rng = Rng(23);
    let p = Arc::new(
        Pipeline::builder(disk.clone(), Arc::new(MemDir::new()))
            .create(ID, 1)
            .unwrap(),
    );
    p.initial_sync(TransferOptions::default()).unwrap();
    let tls: TlsFiles = files(d, "host1", "ca.crt");
    let mut sc = ShipperConfig::new(addr, "localhost", tls);
    sc.retry_min = Duration::from_millis(20);
    sc.retry_max = Duration::from_millis(200);
    sc.timeout = Duration::from_secs(10);
    let lines = Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
    let sink = lines.clone();
    sc.log = Some(Arc::new(move |l: &str| sink.lock().push(l.to_string())));
    let shipper = Shipper::start(p.shared_spool(), sc.clone()).unwrap();
    for _ in 0..3 {
        scribble(&p, &*disk, &mut rng);
        p.cycle(&CycleOptions::default()).unwrap();
    }
    wait_for("the cycles to ship", || p.status().pending_logs == 0);
    assert!(replica_equals(&root, &*disk));
    let mut c = net_common::connect(d, addr, "host1").unwrap();
    let points = c
        .request(
            "GET",
            &format!("/v1/disks/{ID}/points"),
            &[],
            &mut std::io::empty(),
            0,
        )
        .unwrap()
        .json()
        .unwrap();
    let kept: Vec<u64> = points
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(kept, [2, 3, 4], "pruned to the server's retention");
    drop(c);
    let shipped = shipper.status();
    assert_eq!(shipped.logs_shipped, 4);
    assert!(
        shipped.connected && shipped.last_error.is_none(),
        "{shipped:?}"
    );

    // The server goes away: cycles pile up in the spool, and the shipper
    // says it cannot reach the server.
    drop(server);
    for _ in 0..2 {
        scribble(&p, &*disk, &mut rng);
        p.cycle(&CycleOptions::default()).unwrap();
    }
    wait_for("the shipper to notice", || {
        let s = shipper.status();
        !s.connected && s.last_error.is_some()
    });
    assert_eq!(p.status().pending_logs, 2);
    // Retries every 20 to 200 ms for a while: the same failure is said
    // once (the cut upload's broken pipe, then the refused connects).
    std::thread::sleep(Duration::from_millis(800));
    assert!(shipper.status().pending_logs == 2);
    let said_before = {
        let said = lines.lock();
        assert!((1..=2).contains(&said.len()), "{said:?}");
        assert!(
            said.last().unwrap().contains("Connection refused"),
            "{said:?}"
        );
        said.len()
    };
    // Back on the same address: the shipper resumes, nothing applied twice.
    config.listen = addr;
    let _server = start(&config);
    wait_for("the shipper to catch up", || p.status().pending_logs == 0);
    assert!(replica_equals(&root, &*disk));
    let s = shipper.status();
    assert_eq!(s.logs_shipped, 6, "{s:?}");
    assert!(s.connections >= 2, "{s:?}");
    assert!(s.rpo_ns.is_some() && s.pending_logs == 0, "{s:?}");
    {
        let said = lines.lock();
        assert_eq!(said.len(), said_before + 1, "{said:?}");
        assert!(
            said[said_before].starts_with("shipping again (after "),
            "{said:?}"
        );
    }

    // A bandwidth limit, set while running: 2 MiB of new data at 1 MiB/s
    // cannot ship in less than about two seconds (less a burst of a tenth
    // of a second); then unlimited again.
    let rate: u64 = 1 << 20;
    shipper
        .set_bandwidth(blockrep::net::Bandwidth::fixed(rate))
        .unwrap();
    assert_eq!(shipper.status().bandwidth_limit, Some(rate));
    let mut big = vec![0u8; 2 << 20];
    rng.fill(&mut big);
    {
        let _g = p.primary().write_guard(0, big.len() as u64).unwrap();
        disk.write_at(&big, 0).unwrap();
    }
    let report = p.cycle(&CycleOptions::default()).unwrap();
    let started = Instant::now();
    wait_for("the limited log to ship", || p.status().pending_logs == 0);
    let took = started.elapsed().as_secs_f64();
    let least = report.summary.bytes as f64 / rate as f64 - 0.2;
    assert!(
        took >= least,
        "{} bytes in {took:.2}s",
        report.summary.bytes
    );
    shipper
        .set_bandwidth(blockrep::net::Bandwidth::unlimited())
        .unwrap();
    assert_eq!(shipper.status().bandwidth_limit, None);
    assert!(replica_equals(&root, &*disk));
    shipper.stop();

    // Tracking lost: the primary restarts with nothing tracked while
    // writes it never saw changed the disk. The server's digests, fetched
    // over the same transport, drive a resync that ships like any log.
    drop(p);
    let mut lost = vec![0u8; 300 << 10];
    rng.fill(&mut lost);
    disk.write_at(&lost, 5 << 20).unwrap();
    let p = Arc::new(
        Pipeline::builder(disk.clone(), Arc::new(MemDir::new()))
            .create(ID, 1)
            .unwrap(),
    );
    let remote = blockrep::net::remote_digests(&sc, ID).unwrap();
    let report = p.resync(&remote, TransferOptions::default()).unwrap();
    assert!(
        report.blocks >= 75 && report.blocks < 200,
        "{}",
        report.blocks
    );
    let shipper = Shipper::start(p.shared_spool(), sc).unwrap();
    wait_for("the resync to ship", || p.status().pending_logs == 0);
    assert!(replica_equals(&root, &*disk));
    shipper.stop();
}
