//! An Azurite blob server (Microsoft's Azure Storage emulator, installed
//! by scripts/test.sh from npm) on loopback for the Azure tests, with the
//! test container made by a real Shared Key request.
#![allow(dead_code)]

#[path = "spawn.rs"]
mod spawn;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{SystemTime, UNIX_EPOCH};

/// The emulator's account and its published key.
pub const ACCOUNT: &str = "devstoreaccount1";
const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// The test container.
pub const CONTAINER: &str = "brtest";

/// An Azurite blob server on a loopback port, storing under `root`.
pub struct Azurite {
    child: Child,
    pub addr: SocketAddr,
    pub root: PathBuf,
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Azurite {
    /// Starts the server with the container `brtest` made; `None` (and a
    /// note) where Azurite is not installed outside CI.
    pub fn start(root: &Path) -> Option<Azurite> {
        let installed = Command::new("azurite-blob")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !installed {
            assert!(
                std::env::var_os("CI").is_none(),
                "azurite is not installed (scripts/test.sh installs it)"
            );
            eprintln!("note: azurite is not installed; skipped");
            return None;
        }
        std::fs::create_dir_all(root).unwrap();
        let (child, addr) = spawn::spawn_listening("azurite", |port| {
            let mut c = Command::new("azurite-blob");
            c.args([
                "--silent",
                "--skipApiVersionCheck",
                "--blobHost",
                "127.0.0.1",
            ])
            .args(["--blobPort", &port.to_string(), "--location"])
            .arg(root);
            c
        });
        let a = Azurite {
            child,
            addr,
            root: root.to_path_buf(),
        };
        a.create_container();
        Some(a)
    }

    /// The `object_store` options that point the client here.
    pub fn options(&self) -> Vec<(String, String)> {
        [
            ("azure_storage_account_name", ACCOUNT.to_string()),
            ("azure_storage_account_key", KEY.to_string()),
            (
                "azure_storage_endpoint",
                format!("http://{}/{ACCOUNT}", self.addr),
            ),
            ("azure_allow_http", "true".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// `PUT ?restype=container`, signed with the account's Shared Key.
    fn create_container(&self) {
        let date = http_date(SystemTime::now());
        let version = "2021-08-06";
        // VERB, eleven standard headers (all empty here), the x-ms-
        // headers, the resource (the emulator names its account twice).
        let to_sign = format!(
            "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n\
             /{ACCOUNT}/{ACCOUNT}/{CONTAINER}\nrestype:container"
        );
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &base64_decode(KEY));
        let signature = base64_encode(ring::hmac::sign(&key, to_sign.as_bytes()).as_ref());
        let request = format!(
            "PUT /{ACCOUNT}/{CONTAINER}?restype=container HTTP/1.1\r\nHost: {}\r\n\
             x-ms-date: {date}\r\nx-ms-version: {version}\r\n\
             Authorization: SharedKey {ACCOUNT}:{signature}\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n",
            self.addr
        );
        let mut s = TcpStream::connect(self.addr).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        assert!(
            answer.starts_with("HTTP/1.1 201"),
            "azurite refused the container: {answer}"
        );
    }
}

/// `Tue, 01 Dec 2026 01:10:00 GMT`.
fn http_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap().as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    // (Unsigned: no date before 1970 is asked.)
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    let mon = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(month - 1) as usize];
    format!(
        "{weekday}, {day:02} {mon} {year} {:02}:{:02}:{:02} GMT",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(b: &[u8]) -> String {
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn base64_decode(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|&c| c != b'=') {
        acc = acc << 6 | B64.iter().position(|&x| x == c).unwrap() as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

#[test]
fn the_date_and_base64_are_right() {
    assert_eq!(
        http_date(UNIX_EPOCH + std::time::Duration::from_secs(1_796_088_600)),
        "Tue, 01 Dec 2026 01:30:00 GMT"
    );
    assert_eq!(
        base64_encode(b"any carnal pleas"),
        "YW55IGNhcm5hbCBwbGVhcw=="
    );
    assert_eq!(
        base64_decode("YW55IGNhcm5hbCBwbGVhcw=="),
        b"any carnal pleas"
    );
}
