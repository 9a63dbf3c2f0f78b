//! `blockrep serve` as an operator runs it: a TOML configuration, real
//! certificates, curl (a client blockrep did not write) querying it and
//! pushing a full log with a primary's certificate; without a certificate
//! curl is refused; SIGTERM stops it cleanly.

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

fn write_certs(d: &Path) {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Distinct names: OpenSSL (curl) takes a leaf whose issuer name equals
    // its subject for self-signed.
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "blockrep test CA");
    let ca = CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap();
    std::fs::write(d.join("ca.crt"), ca.pem()).unwrap();
    for (stem, name) in [("server", "localhost"), ("host1", "host1.site-a.example")] {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.signed_by(&key, &ca).unwrap();
        std::fs::write(d.join(format!("{stem}.crt")), cert.pem()).unwrap();
        std::fs::write(d.join(format!("{stem}.key")), key.serialize_pem()).unwrap();
    }
}

fn curl(d: &Path, port: &str, with_cert: bool, extra: &[&str], path: &str) -> (bool, String) {
    let mut c = Command::new("curl");
    c.args([
        "--silent",
        "--show-error",
        "--fail-with-body",
        "--max-time",
        "20",
    ])
    .arg("--cacert")
    .arg(d.join("ca.crt"));
    if with_cert {
        c.arg("--cert")
            .arg(d.join("host1.crt"))
            .arg("--key")
            .arg(d.join("host1.key"));
    }
    let out = c
        .args(extra)
        .arg(format!("https://localhost:{port}{path}"))
        .output()
        .expect("curl is required");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn serve_answers_curl_with_a_client_certificate_and_stops_on_sigterm() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    write_certs(d);
    let root = d.join("site-a");
    let config = d.join("server.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ncertificate = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n\
             [[primary]]\nidentity = \"*.site-a.example\"\nroot = \"{}\"\n",
            d.join("server.crt").display(),
            d.join("server.key").display(),
            d.join("ca.crt").display(),
            root.display()
        ),
    )
    .unwrap();
    let mut server = Command::new(env!("CARGO_BIN_EXE_blockrep"))
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(server.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let port = line
        .split("127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();

    // The primary's disk, its full log made and inspected by the command.
    let img = d.join("disk.raw");
    let data: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&img, &data).unwrap();
    let log = d.join("full.brlog");
    {
        use blockrep::io::{FileStorage, Storage};
        let disk = FileStorage::open_read_only(&img).unwrap();
        let g = blockrep::Geometry::new(disk.len().unwrap(), 4096).unwrap();
        let mut src = blockrep::source::Source::enable(blockrep::DiskId([7; 16]), 1, g);
        let f = std::fs::File::create(&log).unwrap();
        src.initial_sync(&disk, f, blockrep::log::WriterOptions::default())
            .unwrap();
    }
    let inspect = Command::new(env!("CARGO_BIN_EXE_blockrep"))
        .args(["log", "inspect", "--json"])
        .arg(&log)
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let digest = info["digest"].as_str().unwrap().to_string();
    let disk_id = info["disk_id"].as_str().unwrap().to_string();

    // No client certificate: refused in the handshake.
    let (ok, text) = curl(d, &port, false, &[], "/v1/disks");
    assert!(!ok, "served without a client certificate: {text}");
    // With the primary's certificate: the list, a push, the status.
    let (ok, text) = curl(d, &port, true, &[], "/v1/disks");
    assert!(ok, "{text}");
    assert_eq!(text.trim(), "[]");
    let (ok, text) = curl(
        d,
        &port,
        true,
        &[
            "-X",
            "PUT",
            "--data-binary",
            &format!("@{}", log.display()),
            "-H",
            &format!("Blockrep-Digest: {digest}"),
            "-H",
            "Content-Type: application/octet-stream",
        ],
        &format!("/v1/disks/{disk_id}/logs/1"),
    );
    assert!(ok, "{text}");
    assert!(text.contains("\"outcome\":\"applied\""), "{text}");
    let (ok, text) = curl(d, &port, true, &[], &format!("/v1/disks/{disk_id}"));
    assert!(ok && text.contains("\"latest_point\":1"), "{text}");
    let replica = root.join(&disk_id).join("replica");
    assert!(std::fs::read(replica.join("image")).unwrap() == data);

    // SIGTERM: a clean stop.
    let pid = libc::pid_t::try_from(server.id()).unwrap();
    // SAFETY: kill takes plain integers and touches no memory.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    assert!(server.wait().unwrap().success());
}
