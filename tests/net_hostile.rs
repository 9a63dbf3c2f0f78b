//! The replica server against an authenticated but hostile or buggy
//! primary (issue 27): what a push claims (disk, sequence, digest, its
//! place in the log) is checked against the log before anything is
//! created or applied, every number the peer sends is checked, and the
//! server keeps serving the other requests afterwards.
#![cfg(feature = "net")]

mod common;
mod net_common;

use blockrep::io::{MemDir, MemStorage, Storage};
use blockrep::log::{LogHeader, LogKind, LogWriter, WriterOptions};
use blockrep::net::{Client, Response};
use blockrep::source::{AnyTracker, Pipeline, TransferOptions};
use blockrep::{DiskId, Geometry};
use common::Rng;
use net_common::{hex, site, start};
use std::path::Path;
use std::sync::Arc;

const A: DiskId = DiskId([0xa1; 16]);
const B: DiskId = DiskId([0xb2; 16]);

/// A PUT of `body` to `/v1/disks/{disk}/logs/{seq}` with `headers`, the
/// `Content-Length` header saying `len`.
fn put(
    c: &mut Client,
    disk: DiskId,
    seq: u64,
    headers: &[(&str, String)],
    body: &[u8],
    len: u64,
) -> Response {
    c.request(
        "PUT",
        &format!("/v1/disks/{}/logs/{seq}", hex(&disk.0)),
        headers,
        &mut &body[..],
        len,
    )
    .unwrap()
}

fn push(c: &mut Client, disk: DiskId, seq: u64, digest: &[u8; 32], log: &[u8]) -> Response {
    put(
        c,
        disk,
        seq,
        &[("Blockrep-Digest", hex(digest))],
        log,
        log.len() as u64,
    )
}

fn get(c: &mut Client, path: &str) -> Response {
    c.request("GET", path, &[], &mut &b""[..], 0).unwrap()
}

fn said(r: &Response) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// The full log of an 8 MiB disk `id` with some data: its bytes and digest.
fn full_log(id: DiskId) -> (Vec<u8>, [u8; 32]) {
    let (log, digest, _) = full_log_of(id);
    (log, digest)
}

/// [`full_log`], and the disk.
fn full_log_of(id: DiskId) -> (Vec<u8>, [u8; 32], Arc<dyn Storage>) {
    let disk: Arc<dyn Storage> = Arc::new(MemStorage::zeroed(8 << 20).unwrap());
    let mut data = vec![0u8; 1 << 20];
    Rng(7).fill(&mut data);
    disk.write_at(&data, 4096).unwrap();
    let p: Pipeline<AnyTracker> = Pipeline::builder(disk.clone(), Arc::new(MemDir::new()))
        .create(id, 1)
        .unwrap();
    p.initial_sync(TransferOptions::default()).unwrap();
    let l = p.spool().next_to_ship().unwrap();
    (net_common::log_bytes(p.spool(), 1), l.point.digest.0, disk)
}

/// Whether disk `id` of the site's primary has a replica, and the files
/// left in its upload directory.
fn left_behind(root: &Path, id: DiskId) -> (bool, Vec<String>) {
    let dir = root.join(hex(&id.0));
    let uploads = std::fs::read_dir(dir.join("uploads"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    (dir.join("replica/state").exists(), uploads)
}

#[test]
fn a_push_must_be_the_log_it_names() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let config = site(d);
    let root = config.primaries[0].root.clone();
    let server = start(&config);
    let mut c = net_common::connect(d, server.addr, "host1").unwrap();
    let (log, digest, disk) = full_log_of(A);

    // Disk A's log pushed as disk B: refused, and B holds nothing.
    let r = push(&mut c, B, 1, &digest, &log);
    assert_eq!(r.head.status, 409, "{}", said(&r));
    assert!(said(&r).contains("pushed as disk"), "{}", said(&r));
    assert_eq!(
        r.json().unwrap()["error"]["detail"]["other_disk"]["expected"],
        hex(&B.0)
    );
    assert_eq!(left_behind(&root, B), (false, vec![]));

    // As another sequence than its own.
    let mut c = net_common::connect(d, server.addr, "host1").unwrap();
    let r = push(&mut c, A, 2, &digest, &log);
    assert_eq!(r.head.status, 400, "{}", said(&r));
    assert!(said(&r).contains("log 1 pushed as log 2"), "{}", said(&r));
    assert_eq!(left_behind(&root, A), (false, vec![]));

    // With a digest that is not its own.
    let mut c = net_common::connect(d, server.addr, "host1").unwrap();
    let r = push(&mut c, A, 1, &[0x11; 32], &log);
    assert_eq!(r.head.status, 400, "{}", said(&r));
    assert!(said(&r).contains("has digest"), "{}", said(&r));
    assert_eq!(left_behind(&root, A), (false, vec![]));

    // The log as it is: applied.
    let mut c = net_common::connect(d, server.addr, "host1").unwrap();
    let r = push(&mut c, A, 1, &digest, &log);
    assert_eq!(r.head.status, 200, "{}", said(&r));
    assert_eq!(r.json().unwrap()["outcome"], "applied");
    assert_eq!(left_behind(&root, A), (true, vec![]));
    let list = get(&mut c, "/v1/disks").json().unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    // The digest list, streamed as it is computed, is the disk's.
    let r = get(&mut c, &format!("/v1/disks/{}/digests", hex(&A.0)));
    assert_eq!(r.head.status, 200);
    let list = blockrep::log::BlockDigests::decode(&r.body).unwrap();
    let g = list.geometry;
    assert_eq!(
        list.blocks,
        blockrep::log::block_digests(&*disk, g, 1).unwrap()
    );
    assert_eq!(
        r.body.len() as u64,
        blockrep::log::BlockDigests::encoded_len(g)
    );
}

#[test]
fn a_disk_larger_than_allowed_is_refused_before_anything_exists() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let mut config = site(d);
    let root = config.primaries[0].root.clone();
    let server = start(&config);
    // A full log of a few hundred bytes declaring a 32 TiB disk (the
    // default bound is 16 TiB).
    let g = Geometry::new(32 << 40, 4096).unwrap();
    let h = LogHeader::new(A, g, LogKind::Full, 1, 1).unwrap();
    let (log, summary) = LogWriter::new(Vec::new(), h, WriterOptions::default())
        .unwrap()
        .finish()
        .unwrap();
    assert!(log.len() < 1024, "{} bytes", log.len());
    let mut c = net_common::connect(d, server.addr, "host1").unwrap();
    let r = push(&mut c, A, 1, &summary.trailer.digest.0, &log);
    assert_eq!(r.head.status, 413, "{}", said(&r));
    assert!(said(&r).contains("hold at most"), "{}", said(&r));
    assert_eq!(left_behind(&root, A), (false, vec![]));
    let mut c = net_common::connect(d, server.addr, "host1").unwrap();
    let r = get(&mut c, &format!("/v1/disks/{}/digests", hex(&A.0)));
    assert_ne!(r.head.status, 200, "no replica, no digests");

    // The limit is the primary's own: lowered below an 8 MiB disk, that
    // disk is refused too; the server goes on serving.
    drop(server);
    config.primaries[0].max_disk = 4 << 20;
    let server = start(&config);
    let (log, digest) = full_log(B);
    let mut c = net_common::connect(d, server.addr, "host1").unwrap();
    let r = push(&mut c, B, 1, &digest, &log);
    assert_eq!(r.head.status, 413, "{}", said(&r));
    assert_eq!(left_behind(&root, B), (false, vec![]));
    let r = get(&mut c, "/v1/disks");
    assert_eq!(r.head.status, 200);
}

#[test]
fn content_ranges_are_checked_never_wrapped() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let config = site(d);
    let root = config.primaries[0].root.clone();
    let server = start(&config);
    let (_, digest) = full_log(A);
    // `5-3` with a huge length: `b + 1 - a` wrapped to an endless body.
    let body = [0u8; 10];
    for (range, len) in [
        ("bytes 5-3/10", u64::MAX),
        ("bytes 5-3/10", 10),
        ("bytes 0-9/5", 10),
        (
            "bytes 0-18446744073709551615/18446744073709551615",
            u64::MAX,
        ),
    ] {
        let mut c = net_common::connect(d, server.addr, "host1").unwrap();
        let headers = [
            ("Blockrep-Digest", hex(&digest)),
            ("Content-Range", range.to_string()),
        ];
        let r = put(&mut c, A, 1, &headers, &body, len);
        assert_eq!(r.head.status, 400, "{range} / {len}: {}", said(&r));
        assert_eq!(left_behind(&root, A).1, Vec::<String>::new(), "{range}");
    }
    let mut c = net_common::connect(d, server.addr, "host1").unwrap();
    assert_eq!(get(&mut c, "/v1/disks").head.status, 200);
}

#[test]
fn a_damaged_log_is_refused_without_naming_the_servers_files() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let config = site(d);
    let root = config.primaries[0].root.clone();
    let server = start(&config);
    let (mut log, digest) = full_log(A);
    let mid = log.len() / 2;
    log[mid] ^= 0x40;
    let mut c = net_common::connect(d, server.addr, "host1").unwrap();
    let r = push(&mut c, A, 1, &digest, &log);
    assert_eq!(r.head.status, 400, "{}", said(&r));
    let body = said(&r);
    assert!(body.contains("corrupt"), "{body}");
    let root_str = d.to_str().unwrap();
    assert!(
        !body.contains(root_str) && !body.contains(".partial") && !body.contains("uploads"),
        "a server path in the answer: {body}"
    );
    assert_eq!(left_behind(&root, A), (false, vec![]));
}

/// The `blockrep_disks_open` gauge, read as the monitor.
fn disks_open(d: &Path, addr: std::net::SocketAddr) -> u64 {
    let mut m = net_common::connect(d, addr, "monitor").unwrap();
    let text = said(&get(&mut m, "/metrics"));
    text.lines()
        .find_map(|l| l.strip_prefix("blockrep_disks_open "))
        .unwrap_or_else(|| panic!("no disks_open in {text}"))
        .parse()
        .unwrap()
}

#[test]
fn asking_about_or_refused_pushes_to_unknown_disks_leave_nothing() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let (mut config, ca) = net_common::site_ca(d);
    ca.leaf(d, "monitor", &["monitor.example"], false);
    config.monitors = vec!["monitor.example".into()];
    let root = config.primaries[0].root.clone();
    let server = start(&config);
    let mut c = net_common::connect(d, server.addr, "host1").unwrap();
    for bad in ["zz", "0123", &"g".repeat(32)] {
        let r = get(&mut c, &format!("/v1/disks/{bad}/points"));
        assert_eq!(r.head.status, 404, "{bad}: {}", said(&r));
    }
    let mut rng = Rng(5);
    for i in 0..200 {
        let mut id = [0u8; 16];
        rng.fill(&mut id);
        let what = ["", "/points", "/resume", "/digests"][i % 4];
        let r = get(&mut c, &format!("/v1/disks/{}{what}", hex(&id)));
        // `resume` of a disk never pushed: nothing held.
        let want = if what == "/resume" { 200 } else { 404 };
        assert_eq!(r.head.status, want, "{what}: {}", said(&r));
    }
    // Refused pushes: another disk's log, a log too large, a damaged log.
    let (log, digest) = full_log(A);
    for i in 0..30u8 {
        let mut c = net_common::connect(d, server.addr, "host1").unwrap();
        let r = match i % 3 {
            0 => push(&mut c, DiskId([i; 16]), 1, &digest, &log),
            1 => push(&mut c, A, 2, &digest, &log),
            _ => push(&mut c, A, 1, &[i; 32], &log),
        };
        assert!(matches!(r.head.status, 400 | 409), "{}", said(&r));
    }
    // The root holds the server's lock file, and nothing else, once the
    // last request's thread has handed its disk back (just after its
    // answer).
    let leftover = || -> Vec<_> {
        std::fs::read_dir(&root)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| !p.ends_with(".lock"))
            .flat_map(|p| walk(&p))
            .collect()
    };
    let settled = |done: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !done() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    settled(&|| leftover().is_empty());
    assert_eq!(leftover(), Vec::<std::path::PathBuf>::new(), "left behind");
    settled(&|| disks_open(d, server.addr) == 0);
    assert_eq!(disks_open(d, server.addr), 0);
    // A disk that exists is held; one pushed in two parts keeps its
    // partial (for the resume) and its entry.
    let mut c = net_common::connect(d, server.addr, "host1").unwrap();
    assert_eq!(push(&mut c, A, 1, &digest, &log).head.status, 200);
    let (log_b, digest_b) = full_log(B);
    let half = log_b.len() / 2;
    let r = put(
        &mut c,
        B,
        1,
        &[
            ("Blockrep-Digest", hex(&digest_b)),
            (
                "Content-Range",
                format!("bytes 0-{}/{}", half - 1, log_b.len()),
            ),
        ],
        &log_b[..half],
        half as u64,
    );
    assert_eq!(r.head.status, 200, "{}", said(&r));
    assert_eq!(disks_open(d, server.addr), 2);
    assert_eq!(left_behind(&root, B).1.len(), 1, "the partial stays");
}

#[test]
fn a_body_in_another_framing_is_refused_not_misread() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let config = site(d);
    let root = config.primaries[0].root.clone();
    let server = start(&config);
    let (log, digest) = full_log(A);
    // The whole log, announced as chunked besides its length.
    let mut c = net_common::connect(d, server.addr, "host1").unwrap();
    let headers = [
        ("Blockrep-Digest", hex(&digest)),
        ("Transfer-Encoding", "chunked".to_string()),
    ];
    let r = put(&mut c, A, 1, &headers, &log, log.len() as u64);
    assert_eq!(r.head.status, 501, "{}", said(&r));
    assert!(said(&r).contains("Transfer-Encoding"), "{}", said(&r));
    assert_eq!(left_behind(&root, A), (false, vec![]));
    let mut c = net_common::connect(d, server.addr, "host1").unwrap();
    assert_eq!(push(&mut c, A, 1, &digest, &log).head.status, 200);
}

/// Every path under `p`.
fn walk(p: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![p.to_path_buf()];
    for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
        out.extend(walk(&e.path()));
    }
    out
}
