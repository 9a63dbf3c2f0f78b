//! The object store from the command line: a pair's key, a replica
//! hydrated from the store (once, or following it), the store's points,
//! and its retention (compaction).

use super::failover::stop_flag;
use blockrep::io::FsDir;
use blockrep::net::TlsFiles;
use blockrep::seal::{Keyring, SealKey};
use blockrep::store::{compact, hydrate, read_manifest, StoreConfig, StorePolicy};
use blockrep::{DiskId, Error, ErrorKind, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where the store is and the pair's keys.
#[derive(Args, Debug, Clone)]
pub struct StoreArgs {
    /// The pair's key file (made by `blockrep key new`); it seals. Needed
    /// with an object store.
    #[arg(long, env = "BLOCKREP_SEAL_KEY")]
    pub seal_key: Option<PathBuf>,
    /// An older key, still needed to open points sealed before a
    /// rotation (repeatable).
    #[arg(long = "old-seal-key")]
    pub old_seal_keys: Vec<PathBuf>,
    /// A further store option (repeatable): for S3 `aws_endpoint=http://...`,
    /// `aws_allow_http=true`, ... over the AWS_* environment; for Azure
    /// `azure_storage_account_name=`, `azure_storage_account_key=`, ...
    /// over the AZURE_STORAGE_* environment; for a
    /// replica server's vault (blockrep://host:port/prefix) `tls_cert=`,
    /// `tls_key=`, `tls_ca=` (PEM files) and `server_name=`.
    #[arg(long = "store-option", value_parser = parse_option)]
    pub options: Vec<(String, String)>,
    /// A PEM file of further CAs the store's HTTPS certificate may chain to.
    #[arg(long)]
    pub store_ca: Option<PathBuf>,
}

fn parse_option(s: &str) -> std::result::Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s}: KEY=VALUE"))
}

impl StoreArgs {
    /// The keyring: the key, then the older ones.
    pub fn keys(&self) -> Result<Keyring> {
        let key = self.seal_key.as_ref().ok_or_else(|| {
            Error::invalid("an object store needs the pair's key: --seal-key FILE")
        })?;
        let mut ring = Keyring::new(SealKey::load(key)?);
        for k in &self.old_seal_keys {
            ring = ring.with_old(SealKey::load(k)?);
        }
        Ok(ring)
    }

    /// The store at `url`.
    pub fn config(&self, url: &str) -> StoreConfig {
        let mut c = StoreConfig::new(url);
        c.options.clone_from(&self.options);
        c.extra_ca.clone_from(&self.store_ca);
        c
    }

    /// The store at `url`; a replica server's vault (`blockrep://`)
    /// reached with `tls`'s files where no `--store-option` names others.
    pub fn config_with_tls(&self, url: &str, tls: Option<&TlsFiles>) -> StoreConfig {
        let mut c = self.config(url);
        if let (true, Some(t)) = (url.starts_with("blockrep://"), tls) {
            for (k, v) in [
                ("tls_cert", &t.cert),
                ("tls_key", &t.key),
                ("tls_ca", &t.ca),
            ] {
                if !c.options.iter().any(|(n, _)| n == k) {
                    c.options.push((k.into(), v.display().to_string()));
                }
            }
        }
        c
    }
}

/// `blockrep key new FILE`.
pub fn key_new(file: &Path) -> Result<()> {
    let k = SealKey::generate()?;
    k.save(file)?;
    println!("{}: key {}", file.display(), k.id());
    Ok(())
}

/// `blockrep replica hydrate URL DIR`: once, or following the store
/// every `follow` until SIGTERM/SIGINT.
pub fn hydrate_cmd(
    url: &str,
    dir: &Path,
    disk: DiskId,
    store: &StoreArgs,
    point: Option<u64>,
    follow: Option<Duration>,
    json: bool,
) -> Result<()> {
    let config = store.config(url);
    let keys = store.keys()?;
    // The replica's directory, private as the library's (disk data).
    blockrep::io::create_private_dir(dir)?;
    let stop = stop_flag();
    let mut seen = 0;
    loop {
        let started = Instant::now();
        let fs = Arc::new(FsDir::new(dir)?);
        match hydrate(&config, &keys, disk, fs, point, seen) {
            Ok(r) => {
                seen = r.generation;
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"disk": disk.to_string(), "sequence": r.sequence,
                            "applied": r.applied, "bytes": r.bytes, "generation": r.generation,
                            "seconds": started.elapsed().as_secs_f64()})
                    );
                } else {
                    println!(
                        "{}: disk {disk} at point {} ({} applied, {} downloaded, {:.1} s)",
                        dir.display(),
                        r.sequence,
                        r.applied,
                        super::human(r.bytes),
                        started.elapsed().as_secs_f64()
                    );
                }
            }
            // Following, a failure (the store away, an object pruned under
            // a slow read) is said and tried again; what was applied
            // stays applied.
            Err(e)
                if follow.is_some()
                    && !matches!(e.kind(), ErrorKind::Unauthentic | ErrorKind::Mismatch) =>
            {
                eprintln!("blockrep: {e}");
            }
            Err(e) => return Err(e),
        }
        let Some(every) = follow else { return Ok(()) };
        while started.elapsed() < every {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `blockrep store points URL`.
pub fn points(url: &str, disk: DiskId, store: &StoreArgs, json: bool) -> Result<()> {
    let m = read_manifest(&store.config(url), &store.keys()?, disk)?
        .ok_or_else(|| Error::new(ErrorKind::OutOfRange, format!("{url} holds no disk {disk}")))?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&m).map_err(|e| Error::invalid(e.to_string()))?
        );
        return Ok(());
    }
    println!(
        "disk {} (generation {}, writer {}): {} bytes, blocks of {}",
        m.disk_id, m.generation, m.writer, m.size, m.block_size
    );
    for b in &m.bases {
        println!(
            "  base  {:>8}  epoch {}  {}",
            b.sequence,
            b.epoch,
            super::human(b.bytes)
        );
    }
    for l in &m.logs {
        println!(
            "  log   {:>8}  epoch {}  {}",
            l.sequence,
            l.epoch,
            super::human(l.bytes)
        );
    }
    if !m.garbage.is_empty() {
        println!("  {} object(s) awaiting deletion", m.garbage.len());
    }
    Ok(())
}

/// `blockrep store compact URL`.
pub fn compact_cmd(
    url: &str,
    disk: DiskId,
    store: &StoreArgs,
    work: &Path,
    policy: StorePolicy,
    json: bool,
) -> Result<()> {
    blockrep::io::create_private_dir(work)?;
    let r = compact(
        &store.config(url),
        &store.keys()?,
        disk,
        Arc::new(FsDir::new(work)?),
        policy,
    )?;
    if json {
        println!(
            "{}",
            serde_json::json!({"base": r.base, "dropped": r.dropped, "deleted": r.deleted,
                "generation": r.generation})
        );
    } else {
        match r.base {
            Some(b) => println!(
                "disk {disk}: points {:?} folded into a base at {b}; {} object(s) deleted",
                r.dropped, r.deleted
            ),
            None => println!(
                "disk {disk}: nothing to fold; {} object(s) deleted",
                r.deleted
            ),
        }
    }
    Ok(())
}

/// The writer id file of a spool directory.
pub fn writer_file(spool: &Path) -> PathBuf {
    spool.join("store-writer")
}
