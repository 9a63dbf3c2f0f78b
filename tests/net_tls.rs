//! The transport's TLS through real handshakes on loopback: a primary with
//! a certificate from the primaries' CA is identified by its allow-list
//! entry; no certificate, another CA's, an expired one, a name not in the
//! list and plain TCP are each refused, and said specifically.
#![cfg(feature = "net")]

mod net_common;

use blockrep::net::{client_config, handshake_refusal, server_config, AllowList, TlsFiles};
use net_common::{files, Ca};
use rustls::pki_types::pem::PemObject;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

/// Runs one handshake: the server side on a thread, the client (if given
/// a config) on this one; returns the server's outcome (the client's
/// certificate, or why the handshake failed) and the client's error.
fn handshake(
    server: Arc<rustls::ServerConfig>,
    client: Option<Arc<rustls::ClientConfig>>,
) -> (
    Result<rustls::pki_types::CertificateDer<'static>, String>,
    Option<String>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        let (mut tcp, _) = listener.accept().unwrap();
        tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut conn = rustls::ServerConnection::new(server).unwrap();
        while conn.is_handshaking() {
            if let Err(e) = conn.complete_io(&mut tcp) {
                let refusal = e
                    .get_ref()
                    .and_then(|i| i.downcast_ref::<rustls::Error>())
                    .map_or_else(|| format!("i/o: {e}"), handshake_refusal);
                // Send the alert, if any, before hanging up.
                let _ = conn.write_tls(&mut tcp);
                return Err(refusal);
            }
        }
        let cert = conn.peer_certificates().unwrap()[0].clone().into_owned();
        // Finish the client's side of the exchange.
        let mut s = rustls::Stream::new(&mut conn, &mut tcp);
        s.write_all(b"ok").unwrap();
        s.flush().unwrap();
        Ok(cert)
    });
    let mut tcp = TcpStream::connect(addr).unwrap();
    let client_err = match client {
        Some(cfg) => {
            let name = "localhost".try_into().unwrap();
            let mut conn = rustls::ClientConnection::new(cfg, name).unwrap();
            let mut s = rustls::Stream::new(&mut conn, &mut tcp);
            let mut buf = [0u8; 2];
            s.read_exact(&mut buf).err().map(|e| {
                e.get_ref()
                    .and_then(|i| i.downcast_ref::<rustls::Error>())
                    .map_or_else(|| format!("i/o: {e}"), handshake_refusal)
            })
        }
        None => {
            tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let _ = tcp.read(&mut [0u8; 64]);
            None
        }
    };
    (t.join().unwrap(), client_err)
}

#[test]
fn handshakes_identify_primaries_and_say_why_they_refuse() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let (ca, other) = (Ca::new("primaries"), Ca::new("elsewhere"));
    ca.write_ca(&d.join("ca.crt"));
    other.write_ca(&d.join("other-ca.crt"));
    ca.leaf(d, "server", &["localhost"], false);
    ca.leaf(d, "host1", &["host1.site-a.example"], false);
    ca.leaf(d, "stranger", &["host1.site-b.example"], false);
    ca.leaf(d, "old", &["host2.site-a.example"], true);
    other.leaf(d, "forged", &["host1.site-a.example"], false);
    let server = server_config(&files(d, "server", "ca.crt")).unwrap();
    let allowed = AllowList::new(&["dr.example", "*.site-a.example"]).unwrap();

    // An authorised primary: its identity is the entry it matched.
    let (cert, client_err) = handshake(
        server.clone(),
        Some(client_config(&files(d, "host1", "ca.crt")).unwrap()),
    );
    assert_eq!(client_err, None);
    let id = allowed.identify(&cert.unwrap()).unwrap();
    assert_eq!(id.as_str(), "*.site-a.example");

    // Verified by the CA, but not in the list.
    let (cert, _) = handshake(
        server.clone(),
        Some(client_config(&files(d, "stranger", "ca.crt")).unwrap()),
    );
    let e = allowed.identify(&cert.unwrap()).unwrap_err();
    assert!(e.to_string().contains("not in the allowed list"), "{e}");
    assert!(e.to_string().contains("host1.site-b.example"), "{e}");

    // Refused in the handshake, each for its reason.
    let cases = [
        ("forged", "certificate from an unknown CA"),
        ("old", "certificate expired"),
    ];
    for (stem, why) in cases {
        let (server_side, client_err) = handshake(
            server.clone(),
            Some(client_config(&files(d, stem, "ca.crt")).unwrap()),
        );
        assert_eq!(server_side.unwrap_err(), why, "{stem}");
        assert!(
            client_err.is_some_and(|e| e.contains("refused")),
            "{stem}: the client is told"
        );
    }
    // No client certificate at all.
    let roots = {
        let mut r = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_file_iter(d.join("ca.crt")).unwrap() {
            r.add(c.unwrap()).unwrap();
        }
        r
    };
    let anonymous = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let (server_side, _) = handshake(server.clone(), Some(Arc::new(anonymous)));
    assert_eq!(server_side.unwrap_err(), "no client certificate");
    // Plain HTTP on the TLS port.
    let (server_side, _) = handshake(server.clone(), None);
    assert_eq!(server_side.unwrap_err(), "not TLS");
    // The primary does not trust a server from another CA.
    let (_, client_err) = handshake(
        server,
        Some(client_config(&files(d, "host1", "other-ca.crt")).unwrap()),
    );
    assert_eq!(
        client_err.as_deref(),
        Some("certificate from an unknown CA")
    );
}

/// Errors about key and certificate files name the file and what is wrong
/// with it, and never print the key.
#[test]
fn bad_files_are_named_without_their_contents() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let ca = Ca::new("primaries");
    ca.write_ca(&d.join("ca.crt"));
    ca.leaf(d, "server", &["localhost"], false);
    let key = std::fs::read_to_string(d.join("server.key")).unwrap();
    // A certificate file given as the key, and the key as the certificate.
    let swapped = TlsFiles {
        cert: d.join("server.key"),
        key: d.join("server.crt"),
        ca: d.join("ca.crt"),
    };
    let e = server_config(&swapped).unwrap_err().to_string();
    assert!(
        e.contains("server.key") && e.contains("no certificate"),
        "{e}"
    );
    let body: String = key.lines().nth(1).unwrap().chars().take(20).collect();
    assert!(!e.contains(&body), "key material in {e}");
    let missing = TlsFiles {
        cert: d.join("server.crt"),
        key: d.join("nope.key"),
        ca: d.join("ca.crt"),
    };
    let e = client_config(&missing).unwrap_err().to_string();
    assert!(e.contains("nope.key"), "{e}");
}
