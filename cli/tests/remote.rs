//! Two sites as separate processes: `blockrep certs` makes the PKI,
//! `blockrep serve` runs the secondary site. An image is replicated to it
//! by digests (`blockrep sync IMAGE URL`) and queried (`blockrep status
//! URL`); then a primary writing and cycling ships through the library's
//! shipper while the server is killed with SIGKILL at random moments and
//! restarted: at the end the replica equals the source byte for byte, and
//! by `qemu-img compare`.

mod common;

use blockrep::io::{FileStorage, FsDir, Storage};
use blockrep::net::{Shipper, ShipperConfig, TlsFiles};
use blockrep::source::{CycleOptions, Pipeline, TransferOptions};
use blockrep::DiskId;
use common::ok;
use common::site::Site;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn qemu_compare(a: &Path, b: &Path) {
    let out = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(a)
        .arg(b)
        .output()
        .expect("qemu-img is required (qemu-utils)");
    assert!(
        out.status.success(),
        "qemu-img compare: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn an_image_syncs_to_a_server_by_digests_and_status_reads_it() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let mut site = Site::new(d);
    site.start();
    let img = d.join("vm1.raw");
    let mut data: Vec<u8> = (0..8u32 << 20).map(|i| (i / 4096 % 251) as u8).collect();
    std::fs::write(&img, &data).unwrap();
    let id = "5a".repeat(16);
    let url = site.url();
    let sync = |site: &Site| -> serde_json::Value {
        serde_json::from_str(&site.run(&[
            "sync",
            img.to_str().unwrap(),
            &url,
            "--disk",
            &id,
            "--json",
        ]))
        .unwrap()
    };
    let first = sync(&site);
    assert_eq!(first["run"], "initial sync");
    assert_eq!(first["point"], 1);
    // Three blocks change: only they cross the network.
    for b in [3usize, 900, 2047] {
        data[b * 4096..(b + 1) * 4096].fill(0xee);
    }
    std::fs::write(&img, &data).unwrap();
    let second = sync(&site);
    assert_eq!(second["run"], "digest resync");
    assert_eq!(second["point"], 2);
    assert_eq!(second["blocks_sent"], 3);
    assert!(std::fs::read(site.replica_image(&id)).unwrap() == data);
    qemu_compare(&img, &site.replica_image(&id));
    let status: serde_json::Value =
        serde_json::from_str(&site.run(&["status", &url, "--json"])).unwrap();
    assert_eq!(status[0]["disk_id"], id.as_str());
    assert_eq!(status[0]["latest_point"], 2);
    let text = site.run(&["status", &url]);
    assert!(
        text.contains(&id) && text.contains("replica") && text.contains("normal"),
        "{text}"
    );
    // Without certificates the command says what it needs.
    let out = Command::new(env!("CARGO_BIN_EXE_blockrep"))
        .args(["status", &url])
        .env_remove("BLOCKREP_CERT")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cert"));
}

#[test]
fn the_server_killed_at_random_moments_loses_nothing() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let mut site = Site::new(d);
    site.start();
    const SIZE: u64 = 16 << 20;
    let img = d.join("primary.raw");
    std::fs::write(&img, vec![0u8; SIZE as usize]).unwrap();
    let disk: std::sync::Arc<dyn Storage> = std::sync::Arc::new(FileStorage::open(&img).unwrap());
    let id = DiskId([0x42; 16]);
    let p = Pipeline::builder(
        disk.clone(),
        std::sync::Arc::new(FsDir::new(d.join("spool")).unwrap()),
    )
    .create(id, 1)
    .unwrap();
    p.initial_sync(TransferOptions::default()).unwrap();
    let mut sc = ShipperConfig::new(
        format!("127.0.0.1:{}", site.port).parse().unwrap(),
        "localhost",
        site.tls(),
    );
    sc.retry_min = Duration::from_millis(20);
    sc.retry_max = Duration::from_millis(300);
    sc.timeout = Duration::from_secs(10);
    let shipper = Shipper::start(p.shared_spool(), sc).unwrap();
    let mut rng = Rng(0x9e37_79b9);
    let mut kills = 0;
    let started = Instant::now();
    while kills < 6 {
        for _ in 0..8 {
            let off = rng.next() % (SIZE - 65536);
            let len = 1 + rng.next() % 65536;
            let buf: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let _g = p.primary().write_guard(off, len).unwrap();
            disk.write_at(&buf, off).unwrap();
        }
        p.cycle(&CycleOptions::default()).unwrap();
        std::thread::sleep(Duration::from_millis(rng.next() % 300));
        if rng.next().is_multiple_of(2) {
            site.kill();
            kills += 1;
            std::thread::sleep(Duration::from_millis(rng.next() % 200));
            site.start();
        }
        assert!(started.elapsed() < Duration::from_secs(120));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while p.status().pending_logs > 0 {
        assert!(Instant::now() < deadline, "{:?}", shipper.status());
        std::thread::sleep(Duration::from_millis(50));
    }
    let s = shipper.status();
    shipper.stop();
    site.kill();
    let acked = p.spool().status().acked.sequence;
    let replica = site.replica_image(&id.to_string());
    let want = std::fs::read(&img).unwrap();
    assert!(
        std::fs::read(&replica).unwrap() == want,
        "the replica differs"
    );
    qemu_compare(&img, &replica);
    // The replica holds exactly the acknowledged point.
    let info: serde_json::Value = serde_json::from_str(&ok(&[
        "replica",
        "status",
        site.root
            .join(id.to_string())
            .join("replica")
            .to_str()
            .unwrap(),
        "--json",
    ]))
    .unwrap();
    assert_eq!(info["latest_point"], acked, "{info}");
    eprintln!(
        "{kills} kills, {acked} points, {} connections, {} bytes sent, {} re-sent",
        s.connections, s.bytes_sent, s.bytes_resent
    );
}

/// A client of `pki`'s primary certificate.
fn client(site: &Site, pki: &Path) -> blockrep::Result<blockrep::net::Client> {
    client_of(site, pki, pki)
}

/// A client of `pki`'s primary certificate trusting `ca_pki`'s CA.
fn client_of(site: &Site, pki: &Path, ca_pki: &Path) -> blockrep::Result<blockrep::net::Client> {
    let tls = TlsFiles {
        cert: pki.join("host1.site-a.example.crt"),
        key: pki.join("host1.site-a.example.key"),
        ca: ca_pki.join("ca.crt"),
    };
    blockrep::net::Client::connect(
        format!("127.0.0.1:{}", site.port).parse().unwrap(),
        "localhost",
        blockrep::net::client_config(&tls)?,
        Duration::from_secs(10),
    )
}

fn disks(c: &mut blockrep::net::Client) -> u16 {
    c.request("GET", "/v1/disks", &[], &mut std::io::empty(), 0)
        .unwrap()
        .head
        .status
}

#[test]
fn sighup_reloads_certificates_without_dropping_a_connection() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let mut site = Site::new(d);
    site.start();
    let hup = |site: &Site| {
        let pid = libc::pid_t::try_from(site.server.as_ref().unwrap().id()).unwrap();
        // SAFETY: signals the test's own child process.
        unsafe {
            libc::kill(pid, libc::SIGHUP);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let old_pki = d.join("pki");
    let mut before = client(&site, &old_pki).unwrap();
    assert_eq!(disks(&mut before), 200);

    // New certificates from a new CA; the server takes them on SIGHUP.
    let new_pki = d.join("pki2");
    ok(&[
        "certs",
        new_pki.to_str().unwrap(),
        "--server",
        "localhost",
        "--primary",
        "host1.site-a.example",
    ]);
    site.configure(&new_pki);
    hup(&site);
    let mut after = client(&site, &new_pki).unwrap();
    assert_eq!(disks(&mut after), 200);
    // The old CA's primary is refused now (a new connection, which
    // trusts the server's new certificate); the one connected before the
    // reload goes on.
    let refused = client_of(&site, &old_pki, &new_pki).map(|mut c| {
        c.request("GET", "/v1/disks", &[], &mut std::io::empty(), 0)
            .map(|r| r.head.status)
    });
    assert!(!matches!(refused, Ok(Ok(200))), "{refused:?}");
    assert_eq!(disks(&mut before), 200);

    // A configuration that does not load changes nothing.
    std::fs::remove_file(new_pki.join("localhost.key")).unwrap();
    hup(&site);
    assert_eq!(disks(&mut client(&site, &new_pki).unwrap()), 200);
    assert!(site.server.as_mut().unwrap().try_wait().unwrap().is_none());
}
