//! An `s3s-fs` server on loopback for the object-store tests (the library's
//! and the command's), installed by scripts/test.sh.
#![allow(dead_code)]

#[path = "spawn.rs"]
mod spawn;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

/// The test bucket.
pub const BUCKET: &str = "brtest";
/// The test credentials.
pub const ACCESS_KEY: &str = "AKTEST";
/// See [`ACCESS_KEY`].
pub const SECRET_KEY: &str = "SKTEST";

/// An `s3s-fs` server on a loopback port, storing under `root`.
pub struct S3 {
    child: Child,
    pub addr: SocketAddr,
    pub root: PathBuf,
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn s3s_fs() -> Option<PathBuf> {
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|c| c.join("bin/s3s-fs"));
    cargo_bin.filter(|p| p.exists()).or_else(|| {
        Command::new("s3s-fs")
            .arg("--version")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|_| PathBuf::from("s3s-fs"))
    })
}

impl S3 {
    /// Starts the server with bucket `brtest` ready; `None` (and a note) where
    /// s3s-fs is not installed outside CI.
    pub fn start(root: &Path) -> Option<S3> {
        let Some(bin) = s3s_fs() else {
            assert!(
                std::env::var_os("CI").is_none(),
                "s3s-fs is not installed (scripts/test.sh installs it)"
            );
            eprintln!("note: s3s-fs is not installed; skipped");
            return None;
        };
        std::fs::create_dir_all(root.join(BUCKET)).unwrap();
        let (child, addr) = spawn::spawn_listening("s3s-fs", |port| {
            let mut c = Command::new(bin);
            c.args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
                .arg(root);
            c
        });
        Some(S3 {
            child,
            addr,
            root: root.to_path_buf(),
        })
    }

    /// The `AWS_*` environment that points the `object_store` client here.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT", format!("http://{}", self.addr)),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }
}
