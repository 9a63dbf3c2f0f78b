//! Certificates for the transport's tests: a CA, and leaf certificates it
//! signs, written as PEM files (rcgen; no openssl needed).
#![allow(dead_code)]

use blockrep::net::{client_config, Client, Server, ServerConfig, TlsFiles};
use blockrep::source::Spool;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A CA, and leaf certificates it signs, written as PEM files in `dir`.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} CA"));
        Ca {
            issuer: CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    pub fn write_ca(&self, path: &Path) {
        std::fs::write(path, self.issuer.pem()).unwrap();
    }

    /// A leaf for `names`, valid now unless `expired`; its PEM files at
    /// `dir/stem.crt` and `dir/stem.key`.
    pub fn leaf(&self, dir: &Path, stem: &str, names: &[&str], expired: bool) {
        let mut p =
            CertificateParams::new(names.iter().map(ToString::to_string).collect::<Vec<_>>())
                .unwrap();
        p.distinguished_name.push(
            rcgen::DnType::CommonName,
            names.first().copied().unwrap_or(stem),
        );
        if expired {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        std::fs::write(dir.join(format!("{stem}.crt")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{stem}.key")), key.serialize_pem()).unwrap();
    }
}

pub fn files(dir: &Path, stem: &str, ca: &str) -> TlsFiles {
    TlsFiles {
        cert: dir.join(format!("{stem}.crt")),
        key: dir.join(format!("{stem}.key")),
        ca: dir.join(ca),
    }
}

/// A replica server running on a thread, stopped when dropped.
pub struct Running {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Binds and runs a server of `config`.
pub fn start(config: &ServerConfig) -> Running {
    let server = Server::bind(config).unwrap();
    let addr = server.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let thread = std::thread::spawn(move || server.run(&s2).unwrap());
    Running {
        addr,
        stop,
        thread: Some(thread),
    }
}
pub mod proxy;

/// One site's PKI and server configuration in `d`: a CA (`ca.crt`), the
/// server's certificate for `localhost` and a primary's
/// (`host1.site-a.example`, as `host1`), and a server for the primaries
/// `*.site-a.example` storing under `d/site-a`, with default limits.
pub fn site(d: &Path) -> ServerConfig {
    site_ca(d).0
}

/// [`site`], and its CA for more leaves.
pub fn site_ca(d: &Path) -> (ServerConfig, Ca) {
    let ca = Ca::new("primaries");
    ca.write_ca(&d.join("ca.crt"));
    ca.leaf(d, "server", &["localhost"], false);
    ca.leaf(d, "host1", &["host1.site-a.example"], false);
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: files(d, "server", "ca.crt"),
        primaries: vec![blockrep::net::PrimaryConfig::new(
            "*.site-a.example",
            d.join("site-a"),
        )],
        limits: blockrep::net::Limits::default(),
        monitors: vec![],
        health: blockrep::net::HealthPolicy::default(),
    };
    (config, ca)
}

/// A connection to the server at `addr` with the certificate `d/stem.crt`,
/// trusting `d/ca.crt` for the server's (named `localhost`).
pub fn connect(d: &Path, addr: std::net::SocketAddr, stem: &str) -> blockrep::Result<Client> {
    Client::connect(
        addr,
        "localhost",
        client_config(&files(d, stem, "ca.crt"))?,
        std::time::Duration::from_secs(10),
    )
}

/// `b` in lowercase hex, as the protocol writes ids and digests.
pub fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    b.iter().fold(String::new(), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

/// The spooled log `sequence` of `spool`, whole.
pub fn log_bytes(spool: &Spool, sequence: u64) -> Vec<u8> {
    let f = spool.open_log(sequence).unwrap();
    let mut b = vec![0u8; usize::try_from(f.len().unwrap()).unwrap()];
    f.read_at(&mut b, 0).unwrap();
    b
}
