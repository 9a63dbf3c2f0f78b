//! A replica built from the store on any host: the base at or before the
//! point wanted, then the logs after it, each opened (authenticated
//! against its place in the chain) as it downloads and verified whole by
//! the replica before it applies. A replica already in the directory (a
//! standby following the store, or a hydrate that was killed) goes on
//! from its own point.

use super::client::{ObjectClient, StoreConfig, Written};
use super::layout;
use super::manifest::{ChainEntry, Manifest, MANIFEST_LIMIT};
use crate::error::{Error, ErrorKind, Result};
use crate::id::DiskId;
use crate::io::Dir;
use crate::log::ReadOptions;
use crate::replica::{ApplyOutcome, Replica};
use crate::seal::{Binding, Keyring, ObjectKind, Opener};
use std::sync::Arc;

/// What a hydrate did.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HydrateReport {
    /// The replica's point now.
    pub sequence: u64,
    /// Logs applied by this call (a base counts as one).
    pub applied: u64,
    /// Sealed bytes downloaded.
    pub bytes: u64,
    /// The manifest's generation read.
    pub generation: u64,
}

/// Reads `disk`'s manifest and its version; `None` if the store holds no
/// such disk.
pub(crate) fn load(
    client: &ObjectClient,
    keys: &Keyring,
    disk: DiskId,
) -> Result<Option<(Manifest, Option<String>)>> {
    let Some((bytes, etag)) = client.get(&layout::manifest(disk), MANIFEST_LIMIT as u64 * 2)?
    else {
        return Ok(None);
    };
    Ok(Some((Manifest::open(keys, disk, &bytes)?, etag)))
}

/// Seals `m` and writes it as `disk`'s manifest, over what is there, only
/// if nothing is (`Create`), or only over the version read (`Update`).
pub(crate) fn store(
    client: &ObjectClient,
    keys: &Keyring,
    disk: DiskId,
    m: &Manifest,
    mode: object_store::PutMode,
) -> Result<Written> {
    let sealed = m.seal(keys, disk)?;
    client.put(&layout::manifest(disk), bytes::Bytes::from(sealed), mode)
}

/// [`load`], where the disk must be in the store.
pub(crate) fn load_existing(
    client: &ObjectClient,
    keys: &Keyring,
    disk: DiskId,
) -> Result<(Manifest, Option<String>)> {
    load(client, keys, disk)?.ok_or_else(|| {
        Error::new(
            ErrorKind::OutOfRange,
            format!("{} holds no disk {disk}", client.url),
        )
    })
}

/// `disk`'s manifest in the store at `config`; `None` if there is none.
pub fn read_manifest(
    config: &StoreConfig,
    keys: &Keyring,
    disk: DiskId,
) -> Result<Option<Manifest>> {
    let client = ObjectClient::open(config)?;
    Ok(load(&client, keys, disk)?.map(|(m, _)| m))
}

/// Builds (or brings forward) the replica of `disk` in `dir` from the
/// store, at point `point` (the latest without). `seen_generation` is the
/// highest manifest generation the caller saw before (0 at first): a
/// lower one is a replayed manifest and is refused.
pub fn hydrate(
    config: &StoreConfig,
    keys: &Keyring,
    disk: DiskId,
    dir: Arc<dyn Dir>,
    point: Option<u64>,
    seen_generation: u64,
) -> Result<HydrateReport> {
    hydrate_with(
        &ObjectClient::open(config)?,
        keys,
        disk,
        dir,
        point,
        seen_generation,
    )
}

/// [`hydrate`] through a client already open.
pub(crate) fn hydrate_with(
    client: &ObjectClient,
    keys: &Keyring,
    disk: DiskId,
    dir: Arc<dyn Dir>,
    point: Option<u64>,
    seen_generation: u64,
) -> Result<HydrateReport> {
    let (m, _) = load_existing(client, keys, disk)?;
    if m.generation < seen_generation {
        return Err(Error::new(
            ErrorKind::Unauthentic,
            format!(
                "the store's manifest of disk {disk} is generation {}, older than {seen_generation} \
                 seen before (replayed)",
                m.generation
            ),
        ));
    }
    let (base, logs) = m.path_to(point)?;
    let mut report = HydrateReport {
        sequence: 0,
        applied: 0,
        bytes: 0,
        generation: m.generation,
    };
    let opts = ReadOptions {
        disk: Some(disk),
        ..ReadOptions::default()
    };
    let replica = if Replica::exists(&*dir) {
        Replica::open(dir.clone())?
    } else {
        let (replica, bytes) = create_from_base(client, keys, disk, dir.clone(), base, &opts)?;
        report.bytes += bytes;
        report.applied += 1;
        replica
    };
    let st = replica.status();
    let target = logs.last().map_or(base.sequence, |l| l.sequence);
    if st.applied > target {
        return Err(Error::new(
            ErrorKind::Misuse,
            format!(
                "the replica in the directory is at point {}, past {target}: read an older point \
                 through its retained points, or hydrate into a new directory",
                st.applied
            ),
        ));
    }
    let held_in_chain = m
        .bases
        .iter()
        .chain(&m.logs)
        .any(|e| e.sequence == st.applied && e.digest().ok() == Some(st.digest));
    if !held_in_chain {
        return Err(Error::mismatch(format!(
            "the replica in the directory is at point {} with content the store's chain does not \
             reach (another history, or behind its oldest base)",
            st.applied
        ))
        .with_sequence(st.applied));
    }
    // From the replica's own point: the logs after it up to the target,
    // one after the other.
    let todo: Vec<&ChainEntry> = m
        .logs
        .iter()
        .filter(|l| l.sequence > st.applied && l.sequence <= target)
        .collect();
    let contiguous = todo
        .iter()
        .enumerate()
        .all(|(i, l)| l.sequence == st.applied + 1 + i as u64);
    if !contiguous || todo.last().map_or(st.applied, |l| l.sequence) != target {
        return Err(Error::new(
            ErrorKind::OutOfRange,
            format!(
                "the store holds no logs from the replica's point {} to {target} (a base replaced \
                 them): hydrate into a new directory",
                st.applied
            ),
        )
        .with_sequence(st.applied));
    }
    for l in todo {
        let mut incoming = replica.receive()?;
        report.bytes += fetch(client, disk, l, ObjectKind::Log, keys, &mut |b| {
            incoming.write(b)
        })?;
        match incoming.apply(&opts)? {
            ApplyOutcome::Applied { .. } | ApplyOutcome::AlreadyApplied { .. } => {}
        }
        report.applied += 1;
    }
    report.sequence = replica.status().applied;
    Ok(report)
}

/// Makes the replica in `dir` from the base `base` as it downloads: a
/// thread of its own verifies each record and writes it to the image
/// while the next arrives (no staged copy of the base); the replica exists
/// once the whole base verified as the point the manifest names. Returns
/// it and the sealed bytes read.
fn create_from_base(
    client: &ObjectClient,
    keys: &Keyring,
    disk: DiskId,
    dir: Arc<dyn Dir>,
    base: &ChainEntry,
    opts: &ReadOptions,
) -> Result<(Replica, u64)> {
    let expect = Some((base.sequence, base.own_digest()?));
    let chain = if base.log_digest.is_some() {
        Some(base.digest()?)
    } else {
        None
    };
    let (tx, rx) = std::sync::mpsc::sync_channel(8);
    let opts2 = opts.clone();
    let maker = std::thread::Builder::new()
        .name("blockrep-hydrate".into())
        .spawn(move || Replica::create_streamed(dir, Chunks::new(rx), &opts2, expect, chain))
        .map_err(|e| Error::io("start the hydrate's writer", e))?;
    let mut writer_gone = false;
    let fetched = fetch(client, disk, base, ObjectKind::Base, keys, &mut |b| {
        tx.send(Ok(b.to_vec())).map_err(|_| {
            writer_gone = true;
            Error::new(ErrorKind::Io, "the replica's writer stopped")
        })
    });
    if fetched.is_err() {
        // The writer must not take what it has for a whole base.
        let _ = tx.send(Err(()));
    }
    // The end of the stream: only now can the writer verify that nothing
    // follows the base and make the replica.
    drop(tx);
    let made = maker
        .join()
        .map_err(|_| Error::new(ErrorKind::Misuse, "the hydrate's writer panicked"))?;
    match (fetched, made) {
        (Ok(n), Ok(r)) => Ok((r, n)),
        (Err(e), _) if !writer_gone => Err(e),
        // Authentic under the base's binding, yet not the point the
        // manifest names: sealed so by the writer, never to be applied.
        (_, Err(e)) if e.kind() == ErrorKind::Mismatch => Err(Error::new(
            ErrorKind::Unauthentic,
            format!(
                "the base of point {} holds another point: {e}",
                base.sequence
            ),
        )
        .with_sequence(base.sequence)),
        (_, Err(e)) => Err(e.with_sequence(base.sequence)),
        (Err(e), Ok(_)) => Err(e),
    }
}

/// The chunks another thread sends, as a `Read`: `Err` ends it with an
/// error (the download failed), the sender's end with the end of file.
struct Chunks {
    rx: std::sync::mpsc::Receiver<std::result::Result<Vec<u8>, ()>>,
    cur: Vec<u8>,
    at: usize,
}

impl Chunks {
    fn new(rx: std::sync::mpsc::Receiver<std::result::Result<Vec<u8>, ()>>) -> Self {
        Chunks {
            rx,
            cur: Vec::new(),
            at: 0,
        }
    }
}

impl std::io::Read for Chunks {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.cur.len() {
            match self.rx.recv() {
                Ok(Ok(v)) => {
                    self.cur = v;
                    self.at = 0;
                }
                Ok(Err(())) => return Err(std::io::Error::other("the download failed")),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.at);
        buf[..n].copy_from_slice(&self.cur[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Downloads the object of `e` and opens it as it arrives into `sink`;
/// returns the sealed bytes read.
fn fetch(
    client: &ObjectClient,
    disk: DiskId,
    e: &ChainEntry,
    kind: ObjectKind,
    keys: &Keyring,
    sink: &mut dyn FnMut(&[u8]) -> Result<()>,
) -> Result<u64> {
    let binding = Binding::point(kind, disk, e.epoch, e.sequence, e.digest()?);
    let mut opener = Opener::new(keys, &binding);
    let name = format!("{}/{}", layout::disk_dir(disk), e.object);
    let n = client
        .get_into(&name, &mut |b| opener.push(b, sink))
        .map_err(|err| err.with_sequence(e.sequence))?;
    opener
        .finish(sink)
        .map_err(|err| err.with_sequence(e.sequence))?;
    Ok(n)
}
