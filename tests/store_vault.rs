//! The replica server's vault (`blockrep://`): a primary ships sealed
//! logs through the mutually authenticated transport, through a proxy
//! that cuts connections; the server keeps them without the key, so its
//! disk holds no plain block; every point hydrates exactly, over the
//! network and from the server's own directory (`file://`, a failover on
//! the replica server's host); another primary sees none of it; hostile
//! names, oversized bodies, a second writer and tampering on the server's
//! disk are each refused.
#![cfg(all(feature = "s3", feature = "net"))]

mod common;
mod net_common;

use blockrep::io::{FsDir, MemDir, MemStorage, Storage};
use blockrep::net::{PrimaryConfig, ServerConfig};
use blockrep::seal::{Keyring, SealKey};
use blockrep::source::{AnyTracker, CycleOptions, Pipeline, TransferOptions};
use blockrep::store::{
    compact, hydrate, read_manifest, StoreConfig, StorePolicy, StoreShipper, StoreShipperConfig,
    WriterId,
};
use blockrep::{DiskId, ErrorKind};
use common::Rng;
use net_common::proxy::{Faults, Proxy};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ID: DiskId = DiskId([0x7a; 16]);
const SIZE: u64 = 8 << 20;
/// Written into the disk: must never appear on the server's disk.
const MARKER: &[u8] = b"PLAINTEXT-MARKER-THAT-MUST-NOT-LEAK!";

/// The vault of the primary with the certificate `d/stem.crt` on the
/// server at `addr`, under `prefix`.
fn vault(d: &Path, addr: SocketAddr, stem: &str, prefix: &str) -> StoreConfig {
    let mut c = StoreConfig::new(format!("blockrep://{addr}/{prefix}"));
    for (k, v) in [
        ("tls_cert", d.join(format!("{stem}.crt"))),
        ("tls_key", d.join(format!("{stem}.key"))),
        ("tls_ca", d.join("ca.crt")),
    ] {
        c.options.push((k.into(), v.display().to_string()));
    }
    c.options.push(("server_name".into(), "localhost".into()));
    c.timeout = Duration::from_secs(5);
    c.retries = 2;
    c
}

fn keys() -> Keyring {
    Keyring::new(SealKey::from_bytes([0x42; 32]))
}

/// The server of `net_common::site`, with a second primary
/// (`host2.site-b.example`, as `host2`) storing under `d/site-b`.
fn two_primaries(d: &Path) -> ServerConfig {
    let (mut config, ca) = net_common::site_ca(d);
    ca.leaf(d, "host2", &["host2.site-b.example"], false);
    config.primaries.push(PrimaryConfig {
        identity: "*.site-b.example".into(),
        root: d.join("site-b"),
        retention: blockrep::replica::RetentionPolicy::default(),
    });
    config
}

fn wait_said(what: &str, done: &mut dyn FnMut() -> bool, say: &dyn Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {}",
            say()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_shipped(what: &str, p: &Pipeline<AnyTracker>, s: &StoreShipper) {
    wait_said(what, &mut || p.status().pending_logs == 0, &|| {
        format!("{:?}", s.status())
    });
}

fn scribble(p: &Pipeline<AnyTracker>, disk: &dyn Storage, rng: &mut Rng) {
    for _ in 0..12 {
        let off = rng.below(SIZE - 40_000);
        let mut w = vec![0u8; 1 + rng.below(40_000) as usize];
        if rng.below(3) == 0 {
            for c in w.chunks_mut(MARKER.len()) {
                c.copy_from_slice(&MARKER[..c.len()]);
            }
        } else {
            rng.fill(&mut w);
        }
        let _g = p.primary().write_guard(off, w.len() as u64).unwrap();
        disk.write_at(&w, off).unwrap();
    }
}

fn snapshot(disk: &dyn Storage) -> Vec<u8> {
    let mut b = vec![0u8; SIZE as usize];
    disk.read_at(&mut b, 0).unwrap();
    b
}

fn shipper_config(store: StoreConfig, writer: WriterId) -> StoreShipperConfig {
    let mut c = StoreShipperConfig::new(store, keys(), writer);
    // Parts of 5 MiB (the least S3 takes): the full log goes up in two.
    c.part_bytes = 5 << 20;
    c.retry_min = Duration::from_millis(20);
    c.retry_max = Duration::from_millis(300);
    c
}

/// A primary: its pipeline, its disk, and the source at each point.
type Primary = (Arc<Pipeline<AnyTracker>>, Arc<dyn Storage>, Vec<Vec<u8>>);

/// A primary with 6 MiB of random data and markers, its initial full log
/// and `cycles` cycles in its spool; the source at each point.
fn primary(rng: &mut Rng, cycles: usize) -> Primary {
    let disk: Arc<dyn Storage> = Arc::new(MemStorage::zeroed(SIZE).unwrap());
    let mut first = vec![0u8; 6 << 20];
    rng.fill(&mut first);
    disk.write_at(&first, 0).unwrap();
    for i in 0..20u64 {
        disk.write_at(MARKER, i * 300_000 + 7).unwrap();
    }
    let p = Arc::new(
        Pipeline::builder(disk.clone(), Arc::new(MemDir::new()))
            .create(ID, 1)
            .unwrap(),
    );
    p.initial_sync(TransferOptions::default()).unwrap();
    let mut states = vec![snapshot(&*disk)];
    for _ in 0..cycles {
        scribble(&p, &*disk, rng);
        p.cycle(&CycleOptions::default()).unwrap();
        states.push(snapshot(&*disk));
    }
    (p, disk, states)
}

fn hydrated(config: &StoreConfig, dir: &Path, point: Option<u64>) -> blockrep::Result<Vec<u8>> {
    std::fs::create_dir_all(dir).unwrap();
    let d: Arc<dyn blockrep::io::Dir> = Arc::new(FsDir::new(dir).unwrap());
    hydrate(config, &keys(), ID, d, point, 0)?;
    Ok(std::fs::read(dir.join("image")).unwrap())
}

/// [`hydrated`] again after each failure of the transport.
fn hydrated_retrying(config: &StoreConfig, dir: &Path, point: Option<u64>) -> Vec<u8> {
    for _ in 0..40 {
        match hydrated(config, dir, point) {
            Ok(b) => return b,
            Err(e) if e.kind() == ErrorKind::Io => {}
            Err(e) => panic!("{e}"),
        }
    }
    panic!("40 hydrates failed in a row");
}

fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// The server's own directory as a store: what a failover on the replica
/// server's host reads.
fn on_server_disk(d: &Path, prefix: &str) -> StoreConfig {
    let dir = d.join("site-a/vault").join(prefix);
    StoreConfig::new(format!("file://{}", dir.display()))
}

#[test]
fn a_primary_ships_sealed_to_the_vault_through_cuts_and_every_point_hydrates_exactly() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let server = net_common::start(&two_primaries(d));
    let proxy = Proxy::start(
        server.addr,
        Faults {
            cut_within: Some(6 << 20),
            drop_answer_percent: 20,
            stall_per_mille: 2,
            stall: Duration::from_millis(200),
            ..Faults::NONE
        },
        11,
    );
    let mut rng = Rng(3);
    let (p, _disk, states) = primary(&mut rng, 4);
    let writer = WriterId::random().unwrap();
    let shipper = StoreShipper::start(
        p.shared_spool(),
        shipper_config(vault(d, proxy.addr, "host1", "fleet"), writer),
    )
    .unwrap();
    wait_shipped("the logs to reach the vault", &p, &shipper);
    let st = shipper.status();
    assert_eq!(st.logs_shipped, 5, "{st:?}");
    drop(shipper);
    let cuts = proxy.counts.cuts.load(std::sync::atomic::Ordering::SeqCst);
    assert!(cuts > 0, "the proxy cut nothing");

    // Every point, exact: over the network through the same faults, and
    // from the server's disk directly.
    let direct = vault(d, server.addr, "host1", "fleet");
    let m = read_manifest(&direct, &keys(), ID).unwrap().unwrap();
    assert_eq!(m.points(), vec![1, 2, 3, 4, 5]);
    let faulty = vault(d, proxy.addr, "host1", "fleet");
    for (i, want) in states.iter().enumerate() {
        let point = i as u64 + 1;
        let got = hydrated_retrying(&faulty, &d.join(format!("net{point}")), Some(point));
        assert!(got == *want, "point {point} over the network differs");
    }
    let local = on_server_disk(d, "fleet");
    for (i, want) in states.iter().enumerate() {
        let point = i as u64 + 1;
        let got = hydrated(&local, &d.join(format!("disk{point}")), Some(point)).unwrap();
        assert!(got == *want, "point {point} from the server's disk differs");
    }

    // Retention through the vault: points 1 and 2 fold into a base at 3
    // and their objects are deleted on the server; the rest stay exact.
    let work = d.join("compact");
    std::fs::create_dir_all(&work).unwrap();
    let policy = StorePolicy {
        keep_last: 3,
        grace: Duration::ZERO,
    };
    let r = compact(
        &direct,
        &keys(),
        ID,
        Arc::new(FsDir::new(&work).unwrap()),
        policy,
    )
    .unwrap();
    assert_eq!(
        (r.base, r.dropped.clone(), r.deleted),
        (Some(3), vec![1, 2], 3),
        "{r:?}"
    );
    for (i, want) in states.iter().enumerate().skip(2) {
        let point = i as u64 + 1;
        let got = hydrated(&direct, &d.join(format!("kept{point}")), Some(point)).unwrap();
        assert!(got == *want, "point {point} after compaction differs");
    }
    assert!(hydrated(&direct, &d.join("gone"), Some(2)).is_err());

    // The server's disk holds no plain block (the compacted base too): nothing under its root
    // (vault, uploads, anything) carries the marker.
    let all = files_under(&d.join("site-a"));
    assert!(all.len() >= 5, "{all:?}");
    for f in &all {
        let b = std::fs::read(f).unwrap();
        assert!(
            !b.windows(MARKER.len()).any(|w| w == MARKER),
            "plain text in {}",
            f.display()
        );
    }
    // The wrong key opens nothing.
    let wrong = Keyring::new(SealKey::from_bytes([0x43; 32]));
    let w = d.join("wrong");
    std::fs::create_dir_all(&w).unwrap();
    let e = hydrate(
        &direct,
        &wrong,
        ID,
        Arc::new(FsDir::new(&w).unwrap()),
        None,
        0,
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Mismatch, "{e}");
}

#[test]
fn the_vault_refuses_other_primaries_hostile_requests_a_second_writer_and_tampering() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let server = net_common::start(&two_primaries(d));
    let mut rng = Rng(8);
    let (p, disk, _) = primary(&mut rng, 2);
    let first = WriterId::random().unwrap();
    let config = vault(d, server.addr, "host1", "");
    let a = StoreShipper::start(p.shared_spool(), shipper_config(config.clone(), first)).unwrap();
    wait_shipped("the first primary to ship", &p, &a);
    let before = read_manifest(&config, &keys(), ID).unwrap().unwrap();

    // Another primary of the server, with the key even: its vault is its
    // own, and holds nothing of the first's.
    let other = vault(d, server.addr, "host2", "");
    assert!(read_manifest(&other, &keys(), ID).unwrap().is_none());
    let e = hydrated(&other, &d.join("other"), None).unwrap_err();
    assert!(e.to_string().contains("holds no disk"), "{e}");

    // A second writer of the same disk (another process with the first's
    // certificate): fenced, nothing of it acknowledged or stored.
    let mut rng2 = Rng(99);
    let (p2, _, _) = primary(&mut rng2, 0);
    let b = StoreShipper::start(
        p2.shared_spool(),
        shipper_config(config.clone(), WriterId::random().unwrap()),
    )
    .unwrap();
    wait_said(
        "the second writer to be fenced",
        &mut || b.status().fenced,
        &|| format!("{:?}", b.status()),
    );
    assert_eq!(p2.status().pending_logs, 1);
    assert_eq!(
        read_manifest(&config, &keys(), ID).unwrap().unwrap(),
        before
    );
    drop(b);

    // Hostile requests on the wire, each refused before a file is
    // touched: names leaving the vault or reaching its hidden files,
    // unknown queries.
    for path in [
        "/v1/vault/../site-b/vault/x",
        "/v1/vault/a/../../../etc/passwd",
        "/v1/vault/.lock",
        "/v1/vault/.uploads/x",
        "/v1/vault/x?append=-1",
        "/v1/vault/x?drop=1",
        "/v1/vault/%2e%2e/x",
    ] {
        let mut c = net_common::connect(d, server.addr, "host1").unwrap();
        let r = c.request("PUT", path, &[], &mut &b"x"[..], 1).unwrap();
        assert_eq!(
            r.head.status,
            400,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    // An object over the server's largest log (1 TiB by default).
    let mut c = net_common::connect(d, server.addr, "host1").unwrap();
    let r = c
        .request(
            "PUT",
            "/v1/vault/x?append=1099511627776",
            &[],
            &mut &b"x"[..],
            1,
        )
        .unwrap();
    assert_eq!(r.head.status, 413, "{}", String::from_utf8_lossy(&r.body));
    assert!(!d.join("site-b/vault/x").exists() && !d.join("site-a/vault/x").exists());

    // The first goes on.
    scribble(&p, &*disk, &mut rng);
    p.cycle(&CycleOptions::default()).unwrap();
    wait_shipped("the first primary to ship again", &p, &a);
    drop(a);
    let latest = snapshot(&*disk);
    assert_eq!(hydrated(&config, &d.join("ok"), None).unwrap(), latest);

    // Tampering on the server's disk: refused at hydrate, each kind.
    let m = read_manifest(&config, &keys(), ID).unwrap().unwrap();
    let log_file = |i: usize| {
        d.join("site-a/vault")
            .join(format!("disks/{ID}"))
            .join(&m.logs[i].object)
    };
    let original = std::fs::read(log_file(1)).unwrap();
    let earlier = std::fs::read(log_file(0)).unwrap();
    let mut flipped = original.clone();
    flipped[original.len() / 2] ^= 1;
    for (what, bytes) in [
        ("a flipped bit", flipped),
        (
            "a truncated object",
            original[..original.len() - 100].to_vec(),
        ),
        ("another log in its place", earlier),
    ] {
        std::fs::write(log_file(1), &bytes).unwrap();
        let e = hydrated(&config, &d.join(format!("t-{}", what.len())), None).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unauthentic, "{what}: {e}");
    }
}
