//! TLS for both sides: TLS 1.3 only, rustls with the ring provider,
//! certificates and keys from PEM files, and every refused handshake said
//! specifically (unknown CA, expired, name mismatch, no client
//! certificate, not TLS) for the server's log and the shipper's status.
//! Errors name the file and what is wrong with it, never its contents.

use crate::error::{Error, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{CertificateError, RootCertStore};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The PEM files of one side: its certificate chain, its private key, and
/// the CA that signs the other side's certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// This side's certificate (and its intermediates), PEM.
    pub cert: PathBuf,
    /// This side's private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The CA certificate(s) the other side's certificate must chain to.
    pub ca: PathBuf,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A PEM file's bytes; a missing or unreadable file is an I/O error that
/// names it.
fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(format!("read the {what}"), e).with_path(path))
}

fn certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let bad = |m: String| Error::invalid(format!("{what}: {m}")).with_path(path);
    let pem = read_pem(path, what)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| bad(format!("a malformed PEM certificate ({e})")))?;
    if certs.is_empty() {
        return Err(bad("no certificate in it".into()));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    // The error says what is wrong, never a byte of the key.
    let pem = read_pem(path, "private key")?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        Error::invalid(format!("private key: no usable PEM key ({e})")).with_path(path)
    })
}

fn roots(path: &Path) -> Result<Arc<RootCertStore>> {
    let mut store = RootCertStore::empty();
    for c in certs(path, "CA certificate")? {
        store.add(c).map_err(|e| {
            Error::invalid(format!("CA certificate: not a usable trust anchor ({e})"))
                .with_path(path)
        })?;
    }
    Ok(Arc::new(store))
}

fn config_error(what: &str, e: &rustls::Error) -> Error {
    Error::invalid(format!("{what}: {e}"))
}

/// The replica server's configuration: its certificate and key, and
/// client certificates required, verified against `files.ca` (the CA that
/// signs the primaries' certificates).
pub fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>> {
    let p = provider();
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots(&files.ca)?, p.clone())
            .build()
            .map_err(|e| Error::invalid(format!("client verifier: {e}")).with_path(&files.ca))?;
    let chain = certs(&files.cert, "server certificate")?;
    let config = rustls::ServerConfig::builder_with_provider(p)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| config_error("TLS 1.3", &e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key(&files.key)?)
        .map_err(|e| config_error("server certificate and key", &e).with_path(&files.cert))?;
    Ok(Arc::new(config))
}

/// A primary's configuration: its certificate and key for the server to
/// identify it, and the server's certificate verified against `files.ca`.
pub fn client_config(files: &TlsFiles) -> Result<Arc<rustls::ClientConfig>> {
    let chain = certs(&files.cert, "client certificate")?;
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| config_error("TLS 1.3", &e))?
        .with_root_certificates(roots(&files.ca)?)
        .with_client_auth_cert(chain, key(&files.key)?)
        .map_err(|e| config_error("client certificate and key", &e).with_path(&files.cert))?;
    Ok(Arc::new(config))
}

/// Why a handshake failed, in the words an operator needs: the peer's
/// certificate is from an unknown CA, expired, not yet valid, for another
/// name, missing; the peer does not speak TLS (or not 1.3); or the peer
/// refused ours (with the alert it sent).
pub fn handshake_refusal(e: &rustls::Error) -> String {
    use rustls::Error as E;
    match e {
        E::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => "certificate from an unknown CA".into(),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "certificate expired".into()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "certificate not valid yet".into()
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "certificate name mismatch".into()
            }
            CertificateError::Revoked => "certificate revoked".into(),
            CertificateError::BadSignature => "certificate with a bad signature".into(),
            other => format!("invalid certificate ({other:?})"),
        },
        E::NoCertificatesPresented => "no client certificate".into(),
        E::InvalidMessage(_) | E::InappropriateMessage { .. } => "not TLS".into(),
        E::PeerIncompatible(p) => format!("peer incompatible: not TLS 1.3 ({p:?})"),
        E::AlertReceived(a) => format!("the peer refused the handshake ({a:?})"),
        other => format!("handshake failed ({other})"),
    }
}
