//! A secondary site for the command's tests: `blockrep certs` makes its
//! PKI and `blockrep serve` runs as its own process.

use super::ok;
use blockrep::net::TlsFiles;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A secondary site: its configuration, and the server process once
/// started.
pub struct Site {
    pub config: PathBuf,
    pub root: PathBuf,
    pub port: u16,
    pub server: Option<Child>,
}

impl Site {
    /// `blockrep certs` in `d/pki`, a configuration listening on a free
    /// loopback port.
    pub fn new(d: &Path) -> Site {
        let pki = d.join("pki");
        ok(&[
            "certs",
            pki.to_str().unwrap(),
            "--server",
            "localhost",
            "--primary",
            "host1.site-a.example",
        ]);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let site = Site {
            config: d.join("server.toml"),
            root: d.join("site-a"),
            port,
            server: None,
        };
        site.configure(&pki);
        site
    }

    /// Writes the configuration with the certificates in `pki`.
    pub fn configure(&self, pki: &Path) {
        std::fs::write(
            &self.config,
            format!(
                "listen = \"127.0.0.1:{}\"\ncertificate = \"{p}/localhost.crt\"\n\
                 key = \"{p}/localhost.key\"\nclient_ca = \"{p}/ca.crt\"\n\
                 [[primary]]\nidentity = \"*.site-a.example\"\nroot = \"{}\"\n",
                self.port,
                self.root.display(),
                p = pki.display()
            ),
        )
        .unwrap();
    }

    /// Starts the server; returns once it listens.
    pub fn start(&mut self) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_blockrep"))
            .args(["serve", "--config"])
            .arg(&self.config)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.contains("listening"), "{line:?}");
        self.server = Some(child);
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.server.take() {
            c.kill().unwrap(); // SIGKILL
            c.wait().unwrap();
        }
    }

    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.port)
    }

    pub fn tls(&self) -> TlsFiles {
        let pki = self.config.parent().unwrap().join("pki");
        TlsFiles {
            cert: pki.join("host1.site-a.example.crt"),
            key: pki.join("host1.site-a.example.key"),
            ca: pki.join("ca.crt"),
        }
    }

    /// `blockrep ARGS` with this primary's certificates in the environment.
    pub fn run(&self, args: &[&str]) -> String {
        let tls = self.tls();
        let out = Command::new(env!("CARGO_BIN_EXE_blockrep"))
            .args(args)
            .env("BLOCKREP_CERT", &tls.cert)
            .env("BLOCKREP_KEY", &tls.key)
            .env("BLOCKREP_CA", &tls.ca)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "blockrep {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn replica_image(&self, id: &str) -> PathBuf {
        self.root.join(id).join("replica/image")
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        self.kill();
    }
}
