//! Faults between the sites: a proxy between the shipper and the server
//! cuts uploads at random byte offsets, cuts answers on their way back
//! (the server applied, the acknowledgement is lost), stalls and delays,
//! while the primary writes and cycles with a spool small enough to fold
//! back. At the end the replica equals the source byte for byte, every
//! sequence was applied exactly once, and the bytes sent again after the
//! cuts are counted and bounded.
#![cfg(feature = "net")]

mod common;
mod net_common;

use blockrep::io::{MemDir, MemStorage, Storage};
use blockrep::log::WriterOptions;
use blockrep::net::{Shipper, ShipperConfig};
use blockrep::source::{AnyTracker, CycleOptions, Pipeline, TransferOptions};
use blockrep::DiskId;
use common::Rng;
use net_common::proxy::{Faults, Proxy};
use net_common::{files, start};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

const ID: DiskId = DiskId([0x7e; 16]);
const SIZE: u64 = 16 << 20;
const RECORD: usize = 256 << 10;

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Incompressible writes through the guards, about 1 MiB.
fn scribble(p: &Pipeline<AnyTracker>, disk: &dyn Storage, rng: &mut Rng) {
    for _ in 0..16 {
        let off = rng.below(SIZE - (128 << 10));
        let mut w = vec![0u8; 1 + rng.below(128 << 10) as usize];
        rng.fill(&mut w);
        let _g = p.primary().write_guard(off, w.len() as u64).unwrap();
        disk.write_at(&w, off).unwrap();
    }
}

#[test]
fn cuts_stalls_and_lost_answers_between_the_sites_lose_nothing() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let (mut config, ca) = net_common::site_ca(d);
    ca.leaf(d, "monitor", &["monitor.example"], false);
    config.limits.read_timeout = Duration::from_secs(5);
    config.monitors = vec!["monitor.example".into()];
    let root = d.join("site-a");
    let server = start(&config);
    let faults = Faults {
        cut_within: Some(3 << 20),
        drop_answer_percent: 25,
        stall_per_mille: 3,
        stall: Duration::from_millis(300),
        delay: Duration::from_micros(100),
        refuse_percent: 0,
    };
    let proxy = Proxy::start(server.addr, faults, 0x5eed_0001);

    let disk: Arc<dyn Storage> = Arc::new(MemStorage::zeroed(SIZE).unwrap());
    let mut rng = Rng(77);
    let mut data = vec![0u8; 4 << 20];
    rng.fill(&mut data);
    disk.write_at(&data, 1 << 20).unwrap();
    let p = Arc::new(
        Pipeline::builder(disk.clone(), Arc::new(MemDir::new()))
            .spool_limit(3 << 20)
            .writer(WriterOptions {
                record_bytes: RECORD,
                threads: 1,
            })
            .create(ID, 1)
            .unwrap(),
    );
    p.initial_sync(TransferOptions::default()).unwrap();
    let mut sc = ShipperConfig::new(proxy.addr, "localhost", files(d, "host1", "ca.crt"));
    sc.retry_min = Duration::from_millis(10);
    sc.retry_max = Duration::from_millis(100);
    sc.timeout = Duration::from_secs(5);
    let shipper = Shipper::start(p.shared_spool(), sc).unwrap();
    let mut folds = 0;
    let mut rounds = 0;
    let deadline = Instant::now() + Duration::from_secs(90);
    while rounds < 25 || proxy.counts.cuts.load(Ordering::SeqCst) < 8 {
        assert!(Instant::now() < deadline, "the faults never happened");
        rounds += 1;
        scribble(&p, &*disk, &mut rng);
        let report = p.cycle(&CycleOptions::default()).unwrap();
        folds += u64::from(report.folded.is_some_and(|f| f.logs > 0));
        std::thread::sleep(Duration::from_millis(40));
    }
    // The link heals: everything reaches the server.
    proxy.set(Faults::NONE);
    scribble(&p, &*disk, &mut rng);
    p.cycle(&CycleOptions::default()).unwrap();
    wait_for("the spool to drain", || p.status().pending_logs == 0);
    let acked = p.spool().status().acked.sequence;
    let s = shipper.status();
    shipper.stop();

    // Byte for byte.
    let image = std::fs::read(root.join(ID.to_string()).join("replica/image")).unwrap();
    let mut want = vec![0u8; SIZE as usize];
    disk.read_at(&mut want, 0).unwrap();
    assert!(image == want, "the replica differs from the source");

    // Every sequence applied once: applies only advance by one, so as
    // many applies as sequences means none skipped and none twice.
    let mut m = net_common::connect(d, server.addr, "monitor").unwrap();
    let text = String::from_utf8(
        m.request("GET", "/metrics", &[], &mut &b""[..], 0)
            .unwrap()
            .body,
    )
    .unwrap();
    assert!(
        text.contains(&format!("blockrep_logs_applied_total {acked}\n")),
        "{acked} logs acknowledged; the server says:\n{text}"
    );
    // Every byte that reached the server was kept: what was sent again is
    // exactly what was lost in flight at the cuts.
    let received: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("blockrep_bytes_received_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(s.bytes_sent - s.bytes_resent, received, "{s:?}");

    let cuts = proxy.counts.cuts.load(Ordering::SeqCst);
    eprintln!(
        "{} connections, {cuts} cuts ({} of answers), {folds} fold-backs, {} logs shipped, \
         {} bytes sent, {} re-sent",
        proxy.counts.connections.load(Ordering::SeqCst),
        proxy.counts.answers_cut.load(Ordering::SeqCst),
        s.logs_shipped,
        s.bytes_sent,
        s.bytes_resent
    );
    assert!(cuts >= 8, "too few faults to prove anything: {cuts}");
    assert!(proxy.counts.answers_cut.load(Ordering::SeqCst) >= 1);
    assert!(s.connections > 5, "{s:?}");
}
