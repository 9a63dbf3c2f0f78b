//! The replica server over real TLS on loopback: a primary creates its
//! disk with the full log and pushes deltas, one of them cut in two and
//! resumed from the bytes the server holds; the replica equals the source
//! byte for byte. A resume at the wrong offset, a log pushed twice,
//! another primary reaching for the disk, garbage and an oversized head
//! are each refused, and the replica does not change.
#![cfg(feature = "net")]

mod common;
mod net_common;

use blockrep::io::{MemDir, MemStorage, Storage};
use blockrep::net::{Client, Limits, PrimaryConfig, ServerConfig};
use blockrep::source::{AnyTracker, CycleOptions, Pipeline, TransferOptions};
use blockrep::DiskId;
use common::Rng;
use net_common::{files, hex, start, Ca};
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

const ID: DiskId = DiskId([0x5a; 16]);
const SIZE: u64 = 8 << 20;

/// The spooled log `l` of pipeline `p`, whole.
fn log_bytes(p: &Pipeline<AnyTracker>, l: &blockrep::source::SpooledLog) -> Vec<u8> {
    net_common::log_bytes(p.spool(), l.point.sequence)
}

fn put(
    c: &mut Client,
    seq: u64,
    digest: &blockrep::log::Digest,
    body: &[u8],
    range: Option<(u64, u64)>,
) -> blockrep::net::Response {
    let mut headers = vec![("Blockrep-Digest", hex(&digest.0))];
    if let Some((start, total)) = range {
        headers.push((
            "Content-Range",
            format!("bytes {start}-{}/{total}", start + body.len() as u64 - 1),
        ));
    }
    c.request(
        "PUT",
        &format!("/v1/disks/{}/logs/{seq}", hex(&ID.0)),
        &headers,
        &mut &body[..],
        body.len() as u64,
    )
    .unwrap()
}

fn get(c: &mut Client, path: &str) -> blockrep::net::Response {
    c.request("GET", path, &[], &mut &b""[..], 0).unwrap()
}

#[test]
fn a_primary_creates_pushes_and_resumes_and_others_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let ca = Ca::new("primaries");
    ca.write_ca(&d.join("ca.crt"));
    ca.leaf(d, "server", &["localhost"], false);
    ca.leaf(d, "host1", &["host1.site-a.example"], false);
    ca.leaf(d, "dr", &["dr.example"], false);
    ca.leaf(d, "monitor", &["monitor.example"], false);
    let (root_a, root_b) = (d.join("site-a"), d.join("dr"));
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: files(d, "server", "ca.crt"),
        primaries: vec![
            PrimaryConfig::new("*.site-a.example", root_a.clone()),
            PrimaryConfig::new("dr.example", root_b.clone()),
        ],
        limits: Limits {
            read_timeout: Duration::from_secs(5),
            ..Limits::default()
        },
        monitors: vec!["monitor.example".into()],
        health: blockrep::net::HealthPolicy::default(),
    };
    let server = start(&config);
    let connect = |stem: &str| net_common::connect(d, server.addr, stem).unwrap();

    // The primary: a disk with content, its full log, then two deltas.
    let disk: Arc<dyn Storage> = Arc::new(MemStorage::zeroed(SIZE).unwrap());
    let mut rng = Rng(11);
    let mut data = vec![0u8; 1 << 20];
    rng.fill(&mut data);
    disk.write_at(&data, 0).unwrap();
    let p = Pipeline::builder(disk.clone(), Arc::new(MemDir::new()))
        .create(ID, 1)
        .unwrap();
    p.initial_sync(TransferOptions::default()).unwrap();
    let mut c = connect("host1");
    let full = p.spool().next_to_ship().unwrap();
    let r = put(&mut c, 1, &full.point.digest, &log_bytes(&p, &full), None);
    assert_eq!(r.head.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json().unwrap()["outcome"], "applied");
    p.spool().ack(1, &full.point.digest).unwrap();

    for round in 0..2u64 {
        for _ in 0..20 {
            let off = rng.below(SIZE - 70_000);
            let mut w = vec![0u8; 1 + rng.below(70_000) as usize];
            rng.fill(&mut w);
            let _g = p.primary().write_guard(off, w.len() as u64).unwrap();
            disk.write_at(&w, off).unwrap();
        }
        p.cycle(&CycleOptions::default()).unwrap();
        let l = p.spool().next_to_ship().unwrap();
        let bytes = log_bytes(&p, &l);
        let seq = l.point.sequence;
        let total = bytes.len() as u64;
        if round == 0 {
            // Cut in two: the first part, then what the server holds.
            let cut = bytes.len() / 3;
            let r = put(
                &mut c,
                seq,
                &l.point.digest,
                &bytes[..cut],
                Some((0, total)),
            );
            assert_eq!(r.head.status, 200, "{}", String::from_utf8_lossy(&r.body));
            let resume = get(&mut c, &format!("/v1/disks/{}/resume", hex(&ID.0)))
                .json()
                .unwrap();
            assert_eq!(resume["partial"]["sequence"], seq);
            assert_eq!(resume["partial"]["bytes"], cut as u64);
            assert_eq!(resume["applied"]["sequence"], 1);
            // A resume at another offset is refused; the partial stays.
            let r = put(
                &mut c,
                seq,
                &l.point.digest,
                &bytes[cut + 1..],
                Some((cut as u64 + 1, total)),
            );
            assert_eq!(r.head.status, 416);
            let mut c2 = connect("host1");
            let r = put(
                &mut c2,
                seq,
                &l.point.digest,
                &bytes[cut..],
                Some((cut as u64, total)),
            );
            assert_eq!(r.head.status, 200, "{}", String::from_utf8_lossy(&r.body));
            assert_eq!(r.json().unwrap()["outcome"], "applied");
            c = c2;
        } else {
            let r = put(&mut c, seq, &l.point.digest, &bytes, None);
            assert_eq!(r.json().unwrap()["outcome"], "applied");
            // The same log again (its acknowledgement lost): recognised.
            let r = put(&mut c, seq, &l.point.digest, &bytes, None);
            assert_eq!(r.head.status, 200);
            assert_eq!(r.json().unwrap()["outcome"], "already_applied");
        }
        p.spool().ack(seq, &l.point.digest).unwrap();
    }
    let status = get(&mut c, &format!("/v1/disks/{}", hex(&ID.0)))
        .json()
        .unwrap();
    assert_eq!(status["latest_point"], 3);
    assert_eq!(status["role"], "replica");
    assert_eq!(status["health"]["state"], "normal", "{status}");
    let points = get(&mut c, &format!("/v1/disks/{}/points", hex(&ID.0)))
        .json()
        .unwrap();
    assert_eq!(points.as_array().unwrap().len(), 3);
    let list = get(&mut c, "/v1/disks").json().unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    // The block digests of the latest point, for a resync: the source's.
    let r = get(&mut c, &format!("/v1/disks/{}/digests", hex(&ID.0)));
    assert_eq!(r.head.status, 200);
    let remote = blockrep::log::BlockDigests::decode(&r.body).unwrap();
    assert_eq!(remote.sequence, 3);
    let g = blockrep::Geometry::new(SIZE, 4096).unwrap();
    assert!(remote.blocks == blockrep::log::block_digests(&*disk, g, 1).unwrap());
    drop(c);

    // The replica on the server's disk equals the source.
    let replica_image = root_a.join(hex(&ID.0)).join("replica/image");
    let mut want = vec![0u8; SIZE as usize];
    disk.read_at(&mut want, 0).unwrap();
    let before = std::fs::read(&replica_image).unwrap();
    assert!(before == want, "the replica differs from the source");

    // Another primary: the disk does not exist for it, and its push of a
    // delta cannot create or touch it.
    let mut other = connect("dr");
    let r = get(&mut other, &format!("/v1/disks/{}", hex(&ID.0)));
    assert_eq!(r.head.status, 404);
    assert_eq!(
        get(&mut other, "/v1/disks").json().unwrap(),
        serde_json::json!([])
    );
    p.cycle(&CycleOptions::default()).unwrap();
    let l = p.spool().next_to_ship().unwrap();
    let r = put(
        &mut other,
        l.point.sequence,
        &l.point.digest,
        &log_bytes(&p, &l),
        None,
    );
    assert_eq!(r.head.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert!(!root_b.join(hex(&ID.0)).join("replica/state").exists());
    assert!(std::fs::read(&replica_image).unwrap() == before);

    // The monitor reads the counters; a primary may not.
    let mut m = connect("monitor");
    let r = get(&mut m, "/metrics");
    assert_eq!(r.head.status, 200);
    let text = String::from_utf8(r.body).unwrap();
    for want in [
        "blockrep_logs_applied_total 3",
        "blockrep_refusals_total{reason=\"http 400\"} 1",
        &format!(
            "blockrep_health{{primary=\"*.site-a.example\",disk=\"{}\"}} 0",
            hex(&ID.0)
        ),
        &format!(
            "blockrep_rpo_seconds{{primary=\"*.site-a.example\",disk=\"{}\"}}",
            hex(&ID.0)
        ),
    ] {
        assert!(text.contains(want), "{want} missing from:\n{text}");
    }
    assert!(text.contains("blockrep_bytes_received_total "));
    assert_eq!(get(&mut connect("host1"), "/metrics").head.status, 404);
    assert_eq!(
        get(&mut m, "/v1/disks").json().unwrap(),
        serde_json::json!([])
    );

    // Garbage after the handshake, and a head over the limit.
    let mut bad = connect("host1");
    let r = bad.request("PUT", "/v1/disks/zz/logs/x", &[], &mut &b""[..], 0);
    assert_eq!(r.unwrap().head.status, 400);
    let mut big = connect("host1");
    let huge = "a".repeat(20_000);
    let r = big.request("GET", "/v1/disks", &[("X-Pad", huge)], &mut &b""[..], 0);
    assert_eq!(r.unwrap().head.status, 431);
    // A length claiming 2^63 bytes.
    let mut liar = connect("host1");
    let r = liar.request(
        "PUT",
        &format!("/v1/disks/{}/logs/9", hex(&ID.0)),
        &[
            ("Blockrep-Digest", "00".repeat(32)),
            ("Content-Range", format!("bytes 0-0/{}", 1u64 << 63)),
        ],
        &mut &b"x"[..],
        1,
    );
    assert_eq!(r.unwrap().head.status, 413);
    // Plain TCP on the TLS port gets nothing but a closed connection.
    let mut plain = std::net::TcpStream::connect(server.addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    plain.write_all(b"GET /v1/disks HTTP/1.1\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(!answer.starts_with(b"HTTP"), "plain HTTP was answered");
    // Still serving, and the replica unchanged.
    let mut c = connect("host1");
    assert_eq!(get(&mut c, "/v1/disks").head.status, 200);
    assert!(std::fs::read(&replica_image).unwrap() == before);
}

/// Limits hold against misbehaving clients: a handshake trickled a byte at
/// a time is cut at the read timeout; a flood of connections beyond the
/// limit is closed at once; an identity over its share gets 503; and once
/// the intruders are gone, a primary is served again.
#[test]
fn floods_tricklers_and_greedy_identities_are_cut_off() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let ca = Ca::new("primaries");
    ca.write_ca(&d.join("ca.crt"));
    ca.leaf(d, "server", &["localhost"], false);
    ca.leaf(d, "host1", &["host1.site-a.example"], false);
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: files(d, "server", "ca.crt"),
        primaries: vec![PrimaryConfig::new("*.site-a.example", d.join("site-a"))],
        limits: Limits {
            read_timeout: Duration::from_secs(3),
            connections: 6,
            per_identity: 2,
            ..Limits::default()
        },
        monitors: Vec::new(),
        health: blockrep::net::HealthPolicy::default(),
    };
    let server = start(&config);
    let closed_within = |s: &mut std::net::TcpStream, limit: Duration| {
        s.set_read_timeout(Some(limit)).unwrap();
        let mut b = [0u8; 256];
        loop {
            match s.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) => {
                    return e.kind() == std::io::ErrorKind::ConnectionReset;
                }
            }
        }
    };
    // A trickler: a byte every 100 ms never completes a handshake; the
    // server hangs up after its read timeout, not at the trickle's pace.
    let mut slow = std::net::TcpStream::connect(server.addr).unwrap();
    let trickle = std::thread::spawn({
        let mut w = slow.try_clone().unwrap();
        move || {
            for b in [0x16u8, 3, 1, 0, 200].iter().cycle().take(100) {
                if w.write_all(&[*b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    });
    assert!(
        closed_within(&mut slow, Duration::from_secs(8)),
        "the trickler was not cut"
    );
    trickle.join().unwrap();
    // Its slot is given back as its thread ends.
    std::thread::sleep(Duration::from_millis(200));

    // A flood: beyond the limit, connections are closed at once, while the
    // six it admitted still wait for their handshakes (3 s).
    let mut flood: Vec<std::net::TcpStream> = (0..40)
        .map(|_| std::net::TcpStream::connect(server.addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let cut = flood
        .iter_mut()
        .map(|s| closed_within(s, Duration::from_millis(20)))
        .filter(|&c| c)
        .count();
    assert_eq!(cut, 34, "connections beyond the limit of 6 stay open");
    drop(flood);

    // One identity may hold two connections; the third is told to wait.
    let connect = || net_common::connect(d, server.addr, "host1");
    // The flood's admitted connections end with their handshake deadline.
    std::thread::sleep(Duration::from_millis(3500));
    let mut a = connect().unwrap();
    let mut b = connect().unwrap();
    assert_eq!(get(&mut a, "/v1/disks").head.status, 200);
    assert_eq!(get(&mut b, "/v1/disks").head.status, 200);
    let mut c = connect().unwrap();
    let r = c
        .request("GET", "/v1/disks", &[], &mut &b""[..], 0)
        .unwrap();
    assert_eq!(r.head.status, 503);
    assert!(r.head.header("retry-after").is_some());
    drop((a, b));
    std::thread::sleep(Duration::from_millis(200));
    let mut again = connect().unwrap();
    assert_eq!(get(&mut again, "/v1/disks").head.status, 200);

    // A body trickled a byte every 100 ms (10 bytes/s, under the 1 KiB/s
    // minimum) is cut after one read timeout, not after its 100 s; the
    // disk is free again at once.
    let started = std::time::Instant::now();
    let r = again.request(
        "PUT",
        &format!("/v1/disks/{}/logs/1", hex(&ID.0)),
        &[("Blockrep-Digest", "00".repeat(32))],
        &mut Trickle,
        1000,
    );
    assert!(r.is_err(), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(30));
    drop(again);
    std::thread::sleep(Duration::from_millis(200));
    let mut after = connect().unwrap();
    let resume = get(&mut after, &format!("/v1/disks/{}/resume", hex(&ID.0)))
        .json()
        .unwrap();
    assert!(
        resume["partial"]["bytes"].as_u64().unwrap() < 100,
        "{resume}"
    );
}

/// A body that comes a byte every 100 ms.
struct Trickle;

impl Read for Trickle {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        std::thread::sleep(Duration::from_millis(100));
        b[0] = 0;
        Ok(1)
    }
}

/// A server for one primary (`host1.site-a.example`'s certificates in
/// `d`) storing under `root`.
fn one_primary(d: &std::path::Path, root: &std::path::Path, limits: Limits) -> ServerConfig {
    ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: files(d, "server", "ca.crt"),
        primaries: vec![PrimaryConfig::new("*.site-a.example", root.to_path_buf())],
        limits,
        monitors: vec![],
        health: blockrep::net::HealthPolicy::default(),
    }
}

/// Storage running out: below the free-space reserve a push is refused
/// with 507 and a `Retry-After` before a byte is written (no partial file,
/// no disk). A partial upload abandoned longer than allowed is removed, a
/// resume at its old offset is then refused, and the log sent again whole
/// applies.
#[test]
fn a_full_store_refuses_pushes_and_abandoned_uploads_are_reclaimed() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let ca = Ca::new("primaries");
    ca.write_ca(&d.join("ca.crt"));
    ca.leaf(d, "server", &["localhost"], false);
    ca.leaf(d, "host1", &["host1.site-a.example"], false);
    let disk: Arc<dyn Storage> = Arc::new(MemStorage::zeroed(SIZE).unwrap());
    let mut data = vec![0u8; 2 << 20];
    Rng(5).fill(&mut data);
    disk.write_at(&data, 4096).unwrap();
    let p = Pipeline::builder(disk.clone(), Arc::new(MemDir::new()))
        .create(ID, 1)
        .unwrap();
    p.initial_sync(TransferOptions::default()).unwrap();
    let full = p.spool().next_to_ship().unwrap();
    let bytes = log_bytes(&p, &full);
    let total = bytes.len() as u64;
    let connect = |addr| net_common::connect(d, addr, "host1").unwrap();

    // The whole file system as the reserve: nothing fits.
    let full_root = d.join("full");
    let server = start(&one_primary(
        d,
        &full_root,
        Limits {
            reserve_percent: 100,
            ..Limits::default()
        },
    ));
    let mut c = connect(server.addr);
    let r = put(&mut c, 1, &full.point.digest, &bytes, None);
    assert_eq!(r.head.status, 507, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.head.header("retry-after"), Some("60"));
    let message = r.json().unwrap()["error"]["message"].to_string();
    assert!(message.contains("reserve"), "{message}");
    let uploads = full_root.join(hex(&ID.0)).join("uploads");
    assert_eq!(std::fs::read_dir(&uploads).map_or(0, Iterator::count), 0);
    assert_eq!(
        get(&mut connect(server.addr), "/v1/disks").json().unwrap(),
        serde_json::json!([])
    );
    drop(server);

    // Abandoned after a second: a third of the log sent, then nothing.
    let root = d.join("site-a");
    let server = start(&one_primary(
        d,
        &root,
        Limits {
            abandoned_upload: Duration::from_secs(1),
            ..Limits::default()
        },
    ));
    let mut c = connect(server.addr);
    let cut = bytes.len() / 3;
    let r = put(
        &mut c,
        1,
        &full.point.digest,
        &bytes[..cut],
        Some((0, total)),
    );
    assert_eq!(r.head.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let resume = |c: &mut Client| {
        get(c, &format!("/v1/disks/{}/resume", hex(&ID.0)))
            .json()
            .unwrap()
    };
    assert_eq!(resume(&mut c)["partial"]["bytes"], cut as u64);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !resume(&mut c)["partial"].is_null() {
        assert!(std::time::Instant::now() < deadline, "never reclaimed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let uploads = root.join(hex(&ID.0)).join("uploads");
    assert_eq!(std::fs::read_dir(&uploads).unwrap().count(), 0);
    let r = put(
        &mut c,
        1,
        &full.point.digest,
        &bytes[cut..],
        Some((cut as u64, total)),
    );
    assert_eq!(r.head.status, 416);
    let mut c = connect(server.addr);
    let r = put(&mut c, 1, &full.point.digest, &bytes, None);
    assert_eq!(r.json().unwrap()["outcome"], "applied");
    let image = std::fs::read(root.join(hex(&ID.0)).join("replica/image")).unwrap();
    let mut want = vec![0u8; SIZE as usize];
    disk.read_at(&mut want, 0).unwrap();
    assert!(image == want, "the replica differs from the source");
    drop(server);

    // Health: the same replica under a policy that nothing satisfies is
    // critical, and says why.
    let mut config = one_primary(d, &root, Limits::default());
    config.health = blockrep::net::HealthPolicy {
        warning_behind: Duration::ZERO,
        critical_silence: Duration::ZERO,
    };
    let server = start(&config);
    std::thread::sleep(Duration::from_millis(20));
    let status = get(
        &mut connect(server.addr),
        &format!("/v1/disks/{}", hex(&ID.0)),
    )
    .json()
    .unwrap();
    assert_eq!(status["health"]["state"], "critical", "{status}");
    let reasons = status["health"]["reasons"].to_string();
    assert!(
        reasons.contains("nothing received") && reasons.contains("old"),
        "{reasons}"
    );
}
