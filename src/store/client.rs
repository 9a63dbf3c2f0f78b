//! The object store as blockrep's threads use it: blocking calls on a
//! small tokio runtime of the target's own (nothing global in the host
//! process), over the `object_store` crate's S3 and Azure clients with
//! their retries and backoff, HTTPS through rustls with ring; or a
//! directory, or a replica server's vault (`store::dir`, `store::vault`).

use super::dir::DirObjects;
use crate::error::{Error, ErrorKind, Result};
use crate::io::Storage;
use crate::seal::{Binding, SealKey, SealWriter};
use bytes::Bytes;
use futures_util::StreamExt;
use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::azure::MicrosoftAzureBuilder;
use object_store::client::{HttpClient, HttpConnector};
use object_store::path::Path;
use object_store::{
    ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig,
    UpdateVersion, WriteMultipart,
};
use std::sync::Arc;
use std::time::Duration;

/// How to reach an object store.
#[derive(Clone)]
pub struct StoreConfig {
    /// `s3://bucket/prefix`, `az://container/prefix` (Azure Blob
    /// Storage), `file:///directory`, or (feature `net`) a replica
    /// server's vault `blockrep://host:port/prefix`. For S3, credentials,
    /// region and endpoint come from the environment as the AWS tools take
    /// them (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT` and
    /// `AWS_ALLOW_HTTP` for an S3-compatible store); for Azure from the
    /// `AZURE_STORAGE_*` variables; then from `options`.
    pub url: String,
    /// Further options. For S3 and Azure, `object_store`'s
    /// (`aws_endpoint`, `aws_region`, `aws_allow_http`,
    /// `azure_storage_account_name`, `azure_storage_account_key`,
    /// `azure_storage_endpoint`, ...), over the environment's; for a
    /// vault, `tls_cert`, `tls_key`, `tls_ca` (PEM files, required) and
    /// `server_name` (the URL's host by default).
    pub options: Vec<(String, String)>,
    /// One request (a part, a manifest) waits at most this long.
    pub timeout: Duration,
    /// Retries of a failed request, with backoff, before a call fails.
    pub retries: usize,
    /// A PEM file of further CAs to trust for HTTPS (a private store's).
    pub extra_ca: Option<std::path::PathBuf>,
}

/// Option values are never shown (a secret access key may be one).
impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("url", &self.url)
            .field(
                "options",
                &self
                    .options
                    .iter()
                    .map(|(k, _)| k.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .field("extra_ca", &self.extra_ca)
            .finish()
    }
}

impl StoreConfig {
    /// A configuration for `url` with the defaults (60 s per request, 4
    /// retries).
    pub fn new(url: impl Into<String>) -> Self {
        StoreConfig {
            url: url.into(),
            options: Vec::new(),
            timeout: Duration::from_secs(60),
            retries: 4,
            extra_ca: None,
        }
    }
}

/// How a conditional write ended.
#[derive(Debug)]
pub(crate) enum Written {
    /// Written; the object's new version.
    Done(Option<String>),
    /// The condition did not hold: someone else wrote (or created) it.
    Lost,
}

/// Where the objects are, with blocking calls.
pub(crate) struct ObjectClient {
    backend: Backend,
    /// Where the store is, for messages (`s3://bucket/prefix`, never a
    /// credential).
    pub(crate) url: String,
}

/// The stores built in: S3 and Azure Blob (and what speaks them), a
/// directory, and a replica server's vault.
enum Backend {
    Cloud(CloudObjects),
    Dir(DirObjects),
    #[cfg(feature = "net")]
    Vault(Box<super::vault::VaultObjects>),
}

/// An S3 bucket or Azure container, and a prefix, through `object_store`,
/// on a runtime of its own.
struct CloudObjects {
    store: Arc<dyn ObjectStore>,
    rt: tokio::runtime::Runtime,
    prefix: Path,
}

impl std::fmt::Debug for ObjectClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectClient")
            .field("url", &self.url)
            .finish()
    }
}

/// Builds reqwest clients on rustls with ring, trusting the system's roots
/// and any extra CA given.
#[derive(Debug)]
struct RingConnector {
    timeout: Duration,
    roots: Arc<rustls::RootCertStore>,
}

impl HttpConnector for RingConnector {
    fn connect(&self, _options: &ClientOptions) -> object_store::Result<HttpClient> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| generic(&e))?
            .with_root_certificates(self.roots.clone())
            .with_no_client_auth();
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(self.timeout.min(Duration::from_secs(10)))
            .timeout(self.timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| generic(&e))?;
        Ok(HttpClient::new(client))
    }
}

fn generic(e: &dyn std::fmt::Display) -> object_store::Error {
    object_store::Error::Generic {
        store: "object store",
        source: e.to_string().into(),
    }
}

fn roots(extra: Option<&std::path::Path>) -> Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_native_certs::load_native_certs().certs {
        // A system certificate rustls cannot parse is skipped, as the
        // platform's own tools do.
        let _ = roots.add(c);
    }
    if let Some(p) = extra {
        let pem =
            std::fs::read(p).map_err(|e| Error::io("read the store's CA file", e).with_path(p))?;
        let mut found = 0;
        for c in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
            let c: rustls::pki_types::CertificateDer<'static> = c.map_err(|_| {
                Error::new(ErrorKind::InvalidArgument, "the store's CA file is not PEM")
                    .with_path(p)
            })?;
            roots.add(c).map_err(|_| {
                Error::new(
                    ErrorKind::InvalidArgument,
                    "a certificate in the store's CA file is invalid",
                )
                .with_path(p)
            })?;
            found += 1;
        }
        if found == 0 {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "the store's CA file holds no certificate",
            )
            .with_path(p));
        }
    }
    Ok(roots)
}

/// An object store error as blockrep's, saying which object; the message
/// of `object_store` names the request, never a credential.
fn failed(what: &str, path: &Path, e: &object_store::Error) -> Error {
    Error::new(ErrorKind::Io, format!("{what} {path}: {e}"))
}

impl ObjectClient {
    /// Connects (lazily: nothing is sent before the first call) to
    /// `s3://` (or `s3a://`), Azure Blob Storage (`az://`, `azure://`,
    /// `abfs[s]://`, `adl://`), `file://` or, with the feature `net`, a
    /// replica server's vault at `blockrep://`.
    pub(crate) fn open(config: &StoreConfig) -> Result<Self> {
        let url = url::Url::parse(&config.url)
            .map_err(|e| Error::invalid(format!("{}: not a URL: {e}", config.url)))?;
        let backend = match url.scheme() {
            "s3" | "s3a" | "az" | "azure" | "abfs" | "abfss" | "adl" => {
                Backend::Cloud(CloudObjects::open(config, &url)?)
            }
            "file" => {
                let dir = url.to_file_path().map_err(|()| {
                    Error::invalid(format!("{}: not a local directory", config.url))
                })?;
                Backend::Dir(DirObjects::open(&dir)?)
            }
            #[cfg(feature = "net")]
            "blockrep" => Backend::Vault(Box::new(super::vault::VaultObjects::open(config, &url)?)),
            _ => {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    format!(
                        "{}: the stores built in are s3://, az:// (Azure Blob), file:// and \
                         blockrep:// (with the feature net)",
                        config.url
                    ),
                ))
            }
        };
        Ok(ObjectClient {
            backend,
            url: config.url.clone(),
        })
    }

    /// The object `name` whole, with its version; `None` if absent. At
    /// most `limit` bytes.
    pub(crate) fn get(&self, name: &str, limit: u64) -> Result<Option<(Bytes, Option<String>)>> {
        match &self.backend {
            Backend::Cloud(s) => s.get(name, limit),
            Backend::Dir(d) => Ok(d.get(name, limit)?.map(|(b, v)| (Bytes::from(b), Some(v)))),
            #[cfg(feature = "net")]
            Backend::Vault(v) => v.get(name, limit),
        }
    }

    /// Streams the object `name` into `sink`, chunk by chunk as it
    /// arrives. Returns its size.
    pub(crate) fn get_into(
        &self,
        name: &str,
        sink: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<u64> {
        const CHUNK: usize = 8 << 20;
        match &self.backend {
            Backend::Cloud(s) => s.get_into(name, sink),
            Backend::Dir(d) => {
                let mut at = 0u64;
                loop {
                    let Some((b, size)) = d.get_range(name, at, CHUNK)? else {
                        return Err(Error::new(
                            ErrorKind::Io,
                            format!("read {name}: no such object in {}", d.root().display()),
                        ));
                    };
                    sink(&b)?;
                    at += b.len() as u64;
                    if at >= size || b.is_empty() {
                        return Ok(at);
                    }
                }
            }
            #[cfg(feature = "net")]
            Backend::Vault(v) => v.get_into(name, sink),
        }
    }

    /// Writes `bytes` to `name`: over anything there, only if nothing is
    /// there (`Create`), or only over the version given (`Update`).
    pub(crate) fn put(&self, name: &str, bytes: Bytes, mode: PutMode) -> Result<Written> {
        match &self.backend {
            Backend::Cloud(s) => s.put(name, bytes, mode),
            Backend::Dir(d) => d.put(name, &bytes, &mode),
            #[cfg(feature = "net")]
            Backend::Vault(v) => v.put(name, &bytes, &mode),
        }
    }

    /// Writes a large object from `fill`, which is called for the next
    /// bytes until it returns an empty buffer; in parts of `part` bytes
    /// where the store takes parts. A failure leaves nothing at `name`.
    pub(crate) fn put_stream(
        &self,
        name: &str,
        part: usize,
        fill: &mut dyn FnMut() -> Result<Vec<u8>>,
    ) -> Result<u64> {
        match &self.backend {
            Backend::Cloud(s) => s.put_stream(name, part, fill),
            Backend::Dir(d) => d.put_stream(name, fill),
            #[cfg(feature = "net")]
            Backend::Vault(v) => v.put_stream(name, part, fill),
        }
    }

    /// Seals `len` bytes of `file` with `key` into the object `name`, as
    /// they are read (memory bounded by a few parts); returns the sealed
    /// size.
    pub(crate) fn seal_upload(
        &self,
        name: &str,
        file: &dyn Storage,
        len: u64,
        key: &SealKey,
        binding: &Binding,
        part: usize,
    ) -> Result<u64> {
        const READ: usize = 4 << 20;
        let mut sealer = Some(SealWriter::new(Vec::new(), key, binding)?);
        let mut at = 0u64;
        let mut buf = vec![0u8; READ];
        let mut fill = || -> Result<Vec<u8>> {
            loop {
                let Some(s) = sealer.as_mut() else {
                    return Ok(Vec::new());
                };
                if at >= len {
                    let (rest, _) = sealer.take().expect("held").finish()?;
                    return Ok(rest);
                }
                let n = ((len - at) as usize).min(READ);
                file.read_at(&mut buf[..n], at)?;
                at += n as u64;
                s.append(&buf[..n])?;
                let out = std::mem::take(s.get_mut());
                if !out.is_empty() {
                    return Ok(out);
                }
            }
        };
        self.put_stream(name, part, &mut fill)
    }

    /// Deletes `name` (absent is fine).
    pub(crate) fn delete(&self, name: &str) -> Result<()> {
        match &self.backend {
            Backend::Cloud(s) => s.delete(name),
            Backend::Dir(d) => d.delete(name),
            #[cfg(feature = "net")]
            Backend::Vault(v) => v.delete(name),
        }
    }

    /// The names (relative to the prefix) of every object under `dir`.
    pub(crate) fn list(&self, dir: &str) -> Result<Vec<String>> {
        match &self.backend {
            Backend::Cloud(s) => s.list(dir),
            Backend::Dir(d) => d.list(dir),
            #[cfg(feature = "net")]
            Backend::Vault(v) => v.list(dir),
        }
    }
}

impl CloudObjects {
    /// The client of `url` (nothing is sent before the first call).
    fn open(config: &StoreConfig, url: &url::Url) -> Result<Self> {
        let retry = RetryConfig {
            max_retries: config.retries,
            retry_timeout: config.timeout * (config.retries as u32 + 1),
            ..RetryConfig::default()
        };
        let connector = RingConnector {
            timeout: config.timeout,
            roots: Arc::new(roots(config.extra_ca.as_deref())?),
        };
        let built = if url.scheme().starts_with("s3") {
            let b = AmazonS3Builder::from_env()
                .with_url(config.url.as_str())
                .with_retry(retry)
                .with_conditional_put(S3ConditionalPut::ETagMatch)
                .with_http_connector(connector);
            configured(b, config, |b, k, v| b.with_config(k, v))?
                .build()
                .map(|s| Arc::new(s) as Arc<dyn ObjectStore>)
        } else {
            // Azure Blob Storage (and what speaks it: Azurite): conditional
            // writes are native there.
            let b = MicrosoftAzureBuilder::from_env()
                .with_url(config.url.as_str())
                .with_retry(retry)
                .with_http_connector(connector);
            configured(b, config, |b, k, v| b.with_config(k, v))?
                .build()
                .map(|s| Arc::new(s) as Arc<dyn ObjectStore>)
        };
        let store = built.map_err(|e| Error::invalid(format!("{}: {e}", config.url)))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("blockrep-store")
            .build()
            .map_err(|e| Error::io("start the object store's runtime", e))?;
        let prefix = Path::from(url.path().trim_matches('/'));
        Ok(CloudObjects { store, rt, prefix })
    }

    /// The full path of `name` under the prefix.
    fn path(&self, name: &str) -> Path {
        let mut p = self.prefix.clone();
        for part in name.split('/') {
            p = p.clone().join(part);
        }
        p
    }

    /// The object `name` whole, with its version; `None` if absent. At
    /// most `limit` bytes.
    fn get(&self, name: &str, limit: u64) -> Result<Option<(Bytes, Option<String>)>> {
        let path = self.path(name);
        self.rt.block_on(async {
            let r = match self.store.get(&path).await {
                Ok(r) => r,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(failed("read", &path, &e)),
            };
            if r.meta.size > limit {
                return Err(Error::new(
                    ErrorKind::Corrupt,
                    format!("{path} holds {} bytes, more than {limit}", r.meta.size),
                ));
            }
            let etag = r.meta.e_tag.clone();
            let bytes = r.bytes().await.map_err(|e| failed("read", &path, &e))?;
            Ok(Some((bytes, etag)))
        })
    }

    /// Streams the object `name` into `sink`, chunk by chunk as it
    /// arrives. Returns its size.
    fn get_into(&self, name: &str, sink: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<u64> {
        let path = self.path(name);
        self.rt.block_on(async {
            let r = self
                .store
                .get(&path)
                .await
                .map_err(|e| failed("read", &path, &e))?;
            let mut s = r.into_stream();
            let mut n = 0;
            while let Some(chunk) = s.next().await {
                let chunk = chunk.map_err(|e| failed("read", &path, &e))?;
                sink(&chunk)?;
                n += chunk.len() as u64;
            }
            Ok(n)
        })
    }

    /// Writes `bytes` to `name`: over anything there, only if nothing is
    /// there (`Create`), or only over the version given (`Update`).
    fn put(&self, name: &str, bytes: Bytes, mode: PutMode) -> Result<Written> {
        let path = self.path(name);
        self.rt.block_on(async {
            let opts = PutOptions {
                mode,
                ..PutOptions::default()
            };
            match self
                .store
                .put_opts(&path, PutPayload::from(bytes), opts)
                .await
            {
                Ok(r) => Ok(Written::Done(r.e_tag)),
                Err(
                    object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. },
                ) => Ok(Written::Lost),
                Err(e) => Err(failed("write", &path, &e)),
            }
        })
    }

    /// Writes a large object from `fill`, which is called for the next
    /// bytes until it returns an empty buffer; in parts of `part` bytes
    /// (at least 5 MiB, as S3 requires) uploaded a few at a time. A
    /// failure aborts the upload (nothing is left at `name`).
    fn put_stream(
        &self,
        name: &str,
        part: usize,
        fill: &mut dyn FnMut() -> Result<Vec<u8>>,
    ) -> Result<u64> {
        let path = self.path(name);
        self.rt.block_on(async {
            // Gather up to a part: an object smaller than that goes in
            // one request.
            let mut head = Vec::new();
            let mut total = 0;
            loop {
                let b = fill()?;
                if b.is_empty() {
                    let n = total as u64;
                    let payload: PutPayload = head.into_iter().map(Bytes::from).collect();
                    self.store
                        .put(&path, payload)
                        .await
                        .map_err(|e| failed("write", &path, &e))?;
                    return Ok(n);
                }
                total += b.len();
                head.push(b);
                if total >= part {
                    return self.multipart(&path, part, head, fill).await;
                }
            }
        })
    }

    async fn multipart(
        &self,
        path: &Path,
        part: usize,
        first: Vec<Vec<u8>>,
        fill: &mut dyn FnMut() -> Result<Vec<u8>>,
    ) -> Result<u64> {
        let upload = self
            .store
            .put_multipart(path)
            .await
            .map_err(|e| failed("start uploading", path, &e))?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, part);
        let mut n = 0;
        let r: Result<()> = async {
            for b in first {
                n += b.len() as u64;
                w.write(&b);
            }
            loop {
                w.wait_for_capacity(4)
                    .await
                    .map_err(|e| failed("upload a part of", path, &e))?;
                let b = fill()?;
                if b.is_empty() {
                    return Ok(());
                }
                n += b.len() as u64;
                w.write(&b);
            }
        }
        .await;
        match r {
            Ok(()) => {
                w.finish()
                    .await
                    .map_err(|e| failed("finish uploading", path, &e))?;
                Ok(n)
            }
            Err(e) => {
                let _ = w.abort().await;
                Err(e)
            }
        }
    }

    /// Deletes `name` (absent is fine).
    fn delete(&self, name: &str) -> Result<()> {
        let path = self.path(name);
        self.rt.block_on(async {
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(failed("delete", &path, &e)),
            }
        })
    }

    /// The names (relative to the prefix) of every object under `dir`.
    fn list(&self, dir: &str) -> Result<Vec<String>> {
        let path = self.path(dir);
        let skip = self.prefix.parts().count();
        self.rt.block_on(async {
            let mut s = self.store.list(Some(&path));
            let mut out = Vec::new();
            while let Some(m) = s.next().await {
                let m = m.map_err(|e| failed("list", &path, &e))?;
                let parts: Vec<String> = m
                    .location
                    .parts()
                    .skip(skip)
                    .map(|p| p.as_ref().to_string())
                    .collect();
                out.push(parts.join("/"));
            }
            Ok(out)
        })
    }
}

/// `b` with the options of `config`, each key parsed as the builder's
/// own (so a misspelt option is refused, not ignored).
fn configured<B, K: std::str::FromStr>(
    mut b: B,
    config: &StoreConfig,
    with: impl Fn(B, K, &str) -> B,
) -> Result<B> {
    for (k, v) in &config.options {
        let key = k
            .parse()
            .map_err(|_| Error::invalid(format!("store option {k}: unknown")))?;
        b = with(b, key, v);
    }
    Ok(b)
}

/// An `Update` mode for the version read.
pub(crate) fn update_of(etag: Option<String>) -> PutMode {
    PutMode::Update(UpdateVersion {
        e_tag: etag,
        version: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_no_option_value() {
        let mut c = StoreConfig::new("s3://b/p");
        c.options
            .push(("aws_secret_access_key".into(), "very-secret-value".into()));
        let shown = format!("{c:?}");
        assert!(shown.contains("aws_secret_access_key"), "{shown}");
        assert!(!shown.contains("very-secret-value"), "{shown}");
    }
}
