//! The replica server's vault (`blockrep://`): a primary ships sealed
//! logs through the mutually authenticated transport, through a proxy
//! that cuts connections; the server keeps them without the key, so its
//! disk holds no plain block; every point hydrates exactly, over the
//! network and from the server's own directory (`file://`, a failover on
//! the replica server's host); another primary sees none of it; hostile
//! names, an object over the limit, a second writer and tampering on the
//! server's disk are each refused.
#![cfg(all(feature = "s3", feature = "net"))]

mod common;
#[path = "common/store_flow.rs"]
mod flow;
mod net_common;

use blockrep::net::{PrimaryConfig, ServerConfig};
use blockrep::store::{read_manifest, StoreConfig};
use blockrep::ErrorKind;
use flow::{assert_no_marker, keys, snapshot, ID};
use net_common::proxy::{Faults, Proxy};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// The vault of the primary with the certificate `d/stem.crt` on the
/// server at `addr`, under `prefix`.
fn vault(d: &Path, addr: SocketAddr, stem: &str, prefix: &str) -> StoreConfig {
    let mut options: Vec<(String, String)> = [
        ("tls_cert", d.join(format!("{stem}.crt"))),
        ("tls_key", d.join(format!("{stem}.key"))),
        ("tls_ca", d.join("ca.crt")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.display().to_string()))
    .collect();
    options.push(("server_name".into(), "localhost".into()));
    flow::test_config(format!("blockrep://{addr}/{prefix}"), options)
}

/// The server of `net_common::site`, with a second primary
/// (`host2.site-b.example`, as `host2`) storing under `d/site-b`.
fn two_primaries(d: &Path) -> ServerConfig {
    let (mut config, ca) = net_common::site_ca(d);
    ca.leaf(d, "host2", &["host2.site-b.example"], false);
    config
        .primaries
        .push(PrimaryConfig::new("*.site-b.example", d.join("site-b")));
    config
}

fn hydrated(config: &StoreConfig, dir: &Path, point: Option<u64>) -> blockrep::Result<Vec<u8>> {
    flow::hydrated(config, &keys(), dir, point)
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
    let direct = vault(d, server.addr, "host1", "fleet");
    let faulty = vault(d, proxy.addr, "host1", "fleet");
    let states = flow::cycles_through_faults(&direct, &faulty, &proxy, &d.join("site-a"), d);

    // Every point from the server's disk directly (a failover on its host).
    let local = on_server_disk(d, "fleet");
    for (i, want) in states.iter().enumerate() {
        let point = i as u64 + 1;
        let got = hydrated(&local, &d.join(format!("disk{point}")), Some(point)).unwrap();
        assert!(got == *want, "point {point} from the server's disk differs");
    }

    // Retention through the vault: points 1 and 2 fold into a base at 3
    // and their objects are deleted on the server.
    flow::compaction_keeps_the_newest_three(&direct, &states, d);

    // The server's disk holds no plain block (the compacted base too):
    // nothing under its root (vault, uploads, anything) carries the marker.
    assert_no_marker(&d.join("site-a"));
}

#[test]
fn the_vault_refuses_other_primaries_hostile_requests_a_second_writer_and_tampering() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let server = net_common::start(&two_primaries(d));
    let config = vault(d, server.addr, "host1", "");
    // A second writer of the same disk (another process with the first's
    // certificate): fenced, nothing of it acknowledged or stored.
    let ((_, disk), _, _) = flow::a_second_writer_is_fenced(&config);
    // Two racing to create a disk: the vault's conditional create decides.
    flow::two_writers_racing_one_wins(&vault(d, server.addr, "host1", "race"), d);
    let latest = snapshot(&*disk);
    assert_eq!(hydrated(&config, &d.join("ok"), None).unwrap(), latest);

    // Another primary of the server, with the key even: its vault is its
    // own, and holds nothing of the first's.
    let other = vault(d, server.addr, "host2", "");
    assert!(read_manifest(&other, &keys(), ID).unwrap().is_none());
    let e = hydrated(&other, &d.join("other"), None).unwrap_err();
    assert!(e.to_string().contains("holds no disk"), "{e}");

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

    // An object too large to send whole: 413 (PROTOCOL.md's limit), a
    // range of it still served.
    let big = d.join("site-a/vault/big");
    std::fs::File::create(&big)
        .unwrap()
        .set_len((64 << 20) + 1)
        .unwrap();
    let mut c = net_common::connect(d, server.addr, "host1").unwrap();
    let r = c
        .request("GET", "/v1/vault/big", &[], &mut &b""[..], 0)
        .unwrap();
    assert_eq!(r.head.status, 413, "{}", String::from_utf8_lossy(&r.body));
    let r = c
        .request(
            "GET",
            "/v1/vault/big",
            &[("Range", "bytes=0-9".into())],
            &mut &b""[..],
            0,
        )
        .unwrap();
    assert_eq!((r.head.status, r.body.len()), (206, 10));
    std::fs::remove_file(&big).unwrap();

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
