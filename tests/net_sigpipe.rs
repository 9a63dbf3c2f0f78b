//! The transport never raises SIGPIPE: a host process that keeps the
//! default action (every C program does) is not killed when a peer closes
//! a connection under a write. Its own test binary, since it changes the
//! process's signal disposition.
#![cfg(feature = "net")]

mod net_common;

use blockrep::net::{client_config, Client};
use net_common::{files, start};
use std::time::Duration;

#[test]
fn a_peer_closing_under_a_write_is_an_error_not_a_signal() {
    // SAFETY: restores the default action of SIGPIPE, as a C host has it;
    // no other test runs in this binary.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let mut config = net_common::site(d);
    config.limits.max_log = 1 << 20;
    let server = start(&config);
    let tls = client_config(&files(d, "host1", "ca.crt")).unwrap();
    // A body far over the limit: the server answers 413 and closes while
    // the client is still sending 64 MiB.
    for _ in 0..3 {
        let mut c = Client::connect(
            server.addr,
            "localhost",
            tls.clone(),
            Duration::from_secs(10),
        )
        .unwrap();
        let body = vec![7u8; 64 << 20];
        let r = c.request(
            "PUT",
            &format!("/v1/disks/{}/logs/1", "5a".repeat(16)),
            &[("Blockrep-Digest", "00".repeat(32))],
            &mut &body[..],
            body.len() as u64,
        );
        match r {
            Ok(r) => assert_eq!(r.head.status, 413),
            Err(e) => assert_eq!(e.kind(), blockrep::ErrorKind::Io, "{e}"),
        }
    }
    // Still alive, and the server still serves.
    let mut c = Client::connect(server.addr, "localhost", tls, Duration::from_secs(10)).unwrap();
    let r = c
        .request("GET", "/v1/disks", &[], &mut std::io::empty(), 0)
        .unwrap();
    assert_eq!(r.head.status, 200);
}
