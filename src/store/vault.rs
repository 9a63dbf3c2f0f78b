//! A replica server's vault as an object store (`blockrep://host:port/
//! prefix`, features `s3` and `net`): the primary's shipper writes sealed
//! objects to the server over the mutually authenticated transport, and
//! the server keeps them as files without ever holding the pair's key
//! (docs/PROTOCOL.md, "Vault"). A stolen replica server disk then holds
//! only sealed logs and manifests.
//!
//! TLS comes from the store options `tls_cert`, `tls_key` and `tls_ca`
//! (PEM files, as for the shipper), and `server_name` (the host of the
//! URL by default).

use super::client::{StoreConfig, Written};
use super::dir::check_name;
use crate::error::{Error, ErrorKind, Result};
use crate::net::client::{Client, Response};
use crate::net::shipper::refusal;
use crate::net::tls::{client_config, TlsFiles};
use bytes::Bytes;
use object_store::PutMode;
use parking_lot::Mutex;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The most bytes asked of one ranged read.
const RANGE: usize = 8 << 20;
/// The most bytes sent in one request (the server's limit is 64 MiB).
const MAX_PART: usize = 32 << 20;

/// The vault of one primary on one replica server, under a prefix.
pub(crate) struct VaultObjects {
    addr: SocketAddr,
    server_name: String,
    tls: Arc<rustls::ClientConfig>,
    prefix: String,
    timeout: Duration,
    retries: usize,
    /// One connection, kept between calls and made again after a cut.
    conn: Mutex<Option<Client>>,
}

impl VaultObjects {
    /// The vault of `url` (nothing is sent before the first call).
    pub(crate) fn open(config: &StoreConfig, url: &url::Url) -> Result<VaultObjects> {
        let option = |k: &str| {
            config
                .options
                .iter()
                .rev()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
        };
        let file = |k: &str| {
            option(k).map(PathBuf::from).ok_or_else(|| {
                Error::invalid(format!(
                    "{}: the store option {k} (a PEM file) is required for a vault",
                    config.url
                ))
            })
        };
        let tls = client_config(&TlsFiles {
            cert: file("tls_cert")?,
            key: file("tls_key")?,
            ca: file("tls_ca")?,
        })?;
        let host = url
            .host_str()
            .ok_or_else(|| Error::invalid(format!("{}: no server", config.url)))?;
        let port = url.port().unwrap_or(7443);
        let addr = (host.trim_matches(['[', ']']), port)
            .to_socket_addrs()
            .map_err(|e| Error::io(format!("resolve {host}"), e))?
            .next()
            .ok_or_else(|| Error::invalid(format!("{host}: no address")))?;
        let prefix = url.path().trim_matches('/').to_string();
        if !prefix.is_empty() {
            check_name(&prefix)?;
        }
        Ok(VaultObjects {
            addr,
            server_name: option("server_name").unwrap_or_else(|| host.to_string()),
            tls,
            prefix,
            timeout: config.timeout,
            retries: config.retries,
            conn: Mutex::new(None),
        })
    }

    /// The request path of `name` (checked: the server checks again).
    fn path(&self, name: &str) -> Result<String> {
        check_name(name)?;
        Ok(if self.prefix.is_empty() {
            format!("/v1/vault/{name}")
        } else {
            format!("/v1/vault/{}/{name}", self.prefix)
        })
    }

    /// Sends one request, connecting first if need be; a failed
    /// connection or a cut is tried again `retries` times, with backoff.
    fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> Result<Response> {
        let mut wait = Duration::from_millis(200);
        let mut attempt = 0;
        loop {
            let mut conn = self.conn.lock();
            let r = match conn.take() {
                Some(c) => Ok(c),
                None => {
                    Client::connect(self.addr, &self.server_name, self.tls.clone(), self.timeout)
                }
            }
            .and_then(|mut c| {
                let r = c.request(method, path, headers, &mut &body[..], body.len() as u64)?;
                if r.head.header("connection") != Some("close") {
                    *conn = Some(c);
                }
                Ok(r)
            });
            drop(conn);
            match r {
                Err(e) if e.kind() == ErrorKind::Io && attempt < self.retries => {
                    attempt += 1;
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_secs(10));
                }
                r => return r,
            }
        }
    }

    /// The object `name` whole, with its version; `None` if absent.
    pub(crate) fn get(&self, name: &str, limit: u64) -> Result<Option<(Bytes, Option<String>)>> {
        let r = self.request("GET", &self.path(name)?, &[], &[])?;
        match r.head.status {
            200 => {}
            404 => return Ok(None),
            _ => return Err(refusal(&r)),
        }
        if r.body.len() as u64 > limit {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!("{name} holds {} bytes, more than {limit}", r.body.len()),
            ));
        }
        let etag = r
            .head
            .header("etag")
            .map(|v| v.trim_matches('"').to_string());
        Ok(Some((Bytes::from(r.body), etag)))
    }

    /// Streams `name` into `sink` by ranged reads; returns its size.
    pub(crate) fn get_into(
        &self,
        name: &str,
        sink: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<u64> {
        let path = self.path(name)?;
        let mut at = 0u64;
        loop {
            let range = format!("bytes={at}-{}", at + RANGE as u64 - 1);
            let r = self.request("GET", &path, &[("Range", range)], &[])?;
            if r.head.status != 206 {
                return Err(refusal(&r));
            }
            let size = r
                .head
                .header("content-range")
                .and_then(|v| v.rsplit_once('/'))
                .and_then(|(_, t)| t.parse::<u64>().ok())
                .ok_or_else(|| {
                    Error::invalid(format!("{name}: a range answer without its size"))
                })?;
            sink(&r.body)?;
            at += r.body.len() as u64;
            if at >= size || r.body.is_empty() {
                return Ok(at);
            }
        }
    }

    /// Writes `bytes` as `name`, under the condition `mode` sets.
    pub(crate) fn put(&self, name: &str, bytes: &[u8], mode: &PutMode) -> Result<Written> {
        let mut headers = Vec::new();
        match mode {
            PutMode::Overwrite => {}
            PutMode::Create => headers.push(("If-None-Match", "*".to_string())),
            PutMode::Update(v) => headers.push((
                "If-Match",
                format!("\"{}\"", v.e_tag.as_deref().unwrap_or_default()),
            )),
        }
        let r = self.request("PUT", &self.path(name)?, &headers, bytes)?;
        match r.head.status {
            200 => Ok(Written::Done(
                r.head
                    .header("etag")
                    .map(|v| v.trim_matches('"').to_string()),
            )),
            412 => Ok(Written::Lost),
            _ => Err(refusal(&r)),
        }
    }

    /// Writes a large object in parts of `part` bytes (at most 32 MiB),
    /// appended on the server and placed whole by a last request.
    pub(crate) fn put_stream(
        &self,
        name: &str,
        part: usize,
        fill: &mut dyn FnMut() -> Result<Vec<u8>>,
    ) -> Result<u64> {
        let path = self.path(name)?;
        let part = part.clamp(1 << 20, MAX_PART);
        let mut at = 0u64;
        let mut buf = Vec::new();
        let mut ended = false;
        loop {
            while !ended && buf.len() < part {
                let b = fill()?;
                ended = b.is_empty();
                buf.extend_from_slice(&b);
            }
            let send = buf.len().min(part);
            if send == 0 && at > 0 {
                break;
            }
            let r = self.request("PUT", &format!("{path}?append={at}"), &[], &buf[..send])?;
            let held = r.json().ok().and_then(|j| j["bytes"].as_u64());
            match (r.head.status, held) {
                (200, Some(n)) if n == at + send as u64 => {}
                // A retry after a cut whose first attempt had landed.
                (416, Some(n)) if n == at + send as u64 && at > 0 => {}
                _ => return Err(refusal(&r)),
            }
            at += send as u64;
            buf.drain(..send);
            if ended && buf.is_empty() {
                break;
            }
        }
        let r = self.request("PUT", &format!("{path}?commit={at}"), &[], &[])?;
        if r.head.status != 200 {
            return Err(refusal(&r));
        }
        Ok(at)
    }

    /// Deletes `name` (absent is fine).
    pub(crate) fn delete(&self, name: &str) -> Result<()> {
        let r = self.request("DELETE", &self.path(name)?, &[], &[])?;
        match r.head.status {
            200 | 404 => Ok(()),
            _ => Err(refusal(&r)),
        }
    }

    /// The names (relative to the prefix) of every object under `dir`.
    pub(crate) fn list(&self, dir: &str) -> Result<Vec<String>> {
        let r = self.request("GET", &format!("{}?list", self.path(dir)?), &[], &[])?;
        if r.head.status != 200 {
            return Err(refusal(&r));
        }
        let names: Vec<String> = serde_json::from_slice(&r.body)
            .map_err(|e| Error::invalid(format!("a vault list that is not JSON: {e}")))?;
        let skip = if self.prefix.is_empty() {
            0
        } else {
            self.prefix.len() + 1
        };
        Ok(names
            .into_iter()
            .filter_map(|n| n.get(skip..).map(str::to_string))
            .collect())
    }
}
