//! A disk's manifest in the store: who writes the disk, its chain (bases
//! and the logs after them) and what awaits deletion. Sealed; replaced
//! only by a conditional write on the version read, so two writers never
//! both advance it (docs/FORMAT.md, "Object store layout").

use crate::error::{Error, ErrorKind, Result};
use crate::geometry::Geometry;
use crate::hex::{hex, unhex};
use crate::id::DiskId;
use crate::log::Digest;
use crate::seal::{Binding, Keyring};
use serde::{Deserialize, Serialize};

/// The manifest format written and read.
pub const MANIFEST_FORMAT: u32 = 1;
/// The most plain bytes a manifest may hold (bounds what a reader loads).
pub(crate) const MANIFEST_LIMIT: usize = 64 << 20;

/// One object of the chain: a base image or a log, named for its point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainEntry {
    /// The point's epoch.
    pub epoch: u64,
    /// The point's sequence.
    pub sequence: u64,
    /// The content digest at the point (hex).
    pub digest: String,
    /// The object's name under the disk's prefix.
    pub object: String,
    /// Its sealed size.
    pub bytes: u64,
    /// The key that sealed it (hex id).
    pub key_id: String,
    /// When the point was made (ns since the Unix epoch).
    pub created_ns: u64,
    /// A compacted base's own full-log digest (hex), which differs from
    /// the chain's digest at its point; absent for logs and for the
    /// initial full log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_digest: Option<String>,
}

impl ChainEntry {
    /// The point's digest.
    pub fn digest(&self) -> Result<Digest> {
        digest_of(&self.digest)
    }

    /// The digest the object's own log carries in its trailer: the
    /// point's, or a compacted base's own.
    pub fn own_digest(&self) -> Result<Digest> {
        self.log_digest
            .as_deref()
            .map_or_else(|| self.digest(), digest_of)
    }
}

fn digest_of(s: &str) -> Result<Digest> {
    unhex::<32>(s).map(Digest).ok_or_else(|| {
        Error::new(
            ErrorKind::Corrupt,
            "a digest in the manifest is not 32 bytes",
        )
    })
}

/// An object no longer in the chain, deleted once its grace period ends
/// (a reader that started before it left may still be reading it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Garbage {
    /// The object's name under the disk's prefix.
    pub object: String,
    /// When it left the chain (ns since the Unix epoch).
    pub since_ns: u64,
}

/// A disk's manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`].
    pub format: u32,
    /// The disk (hex).
    pub disk_id: String,
    /// Raised by one at every update; a reader refuses one lower than it
    /// saw (a replayed old manifest).
    pub generation: u64,
    /// The writer that holds the disk (hex id): the only one allowed to
    /// advance it.
    pub writer: String,
    /// The disk's size in bytes.
    pub size: u64,
    /// Its block size.
    pub block_size: u32,
    /// Base images, oldest first: full logs each standing for a point.
    pub bases: Vec<ChainEntry>,
    /// The logs after the oldest base, in sequence order.
    pub logs: Vec<ChainEntry>,
    /// Objects out of the chain awaiting deletion.
    pub garbage: Vec<Garbage>,
}

impl Manifest {
    /// A manifest for a new chain starting at `base`.
    pub fn new(disk: DiskId, writer: &WriterId, geometry: Geometry, base: ChainEntry) -> Self {
        Manifest {
            format: MANIFEST_FORMAT,
            disk_id: hex(&disk.0),
            generation: 1,
            writer: hex(&writer.0),
            size: geometry.size(),
            block_size: geometry.block_size(),
            bases: vec![base],
            logs: Vec::new(),
            garbage: Vec::new(),
        }
    }

    /// The latest point: the last log, or the last base without logs
    /// after it.
    pub fn head(&self) -> Option<&ChainEntry> {
        let base = self.bases.last();
        match self.logs.last() {
            Some(l) if base.is_none_or(|b| l.sequence > b.sequence) => Some(l),
            _ => base,
        }
    }

    /// The points a reader can reach: every base, and every log after
    /// the oldest base.
    pub fn points(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .bases
            .iter()
            .chain(&self.logs)
            .map(|e| e.sequence)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The path to `sequence` (latest without): the newest base at or
    /// before it and the logs after that base up to it.
    pub fn path_to(&self, sequence: Option<u64>) -> Result<(&ChainEntry, Vec<&ChainEntry>)> {
        let target = match sequence {
            Some(s) => s,
            None => self
                .head()
                .map(|h| h.sequence)
                .ok_or_else(|| Error::new(ErrorKind::Corrupt, "the manifest holds no point"))?,
        };
        let base = self
            .bases
            .iter()
            .rev()
            .find(|b| b.sequence <= target)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::OutOfRange,
                    format!("no base image at or before point {target}: it was pruned"),
                )
                .with_sequence(target)
            })?;
        let logs: Vec<_> = self
            .logs
            .iter()
            .filter(|l| l.sequence > base.sequence && l.sequence <= target)
            .collect();
        let reached = logs.last().map_or(base.sequence, |l| l.sequence);
        if reached != target
            || logs
                .iter()
                .enumerate()
                .any(|(i, l)| l.sequence != base.sequence + 1 + i as u64)
        {
            return Err(Error::new(
                ErrorKind::OutOfRange,
                format!("point {target} is not in the store's chain"),
            )
            .with_sequence(target));
        }
        Ok((base, logs))
    }

    /// The geometry recorded.
    pub fn geometry(&self) -> Result<Geometry> {
        Geometry::new(self.size, self.block_size)
    }

    /// Checks the manifest is for `disk` and well formed.
    fn check(&self, disk: DiskId) -> Result<()> {
        if self.format != MANIFEST_FORMAT {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "manifest format {}; this build reads {MANIFEST_FORMAT}",
                    self.format
                ),
            ));
        }
        if self.disk_id != hex(&disk.0) {
            return Err(Error::mismatch(format!(
                "the manifest is of disk {}, not {}",
                self.disk_id,
                hex(&disk.0)
            )));
        }
        if self.bases.is_empty() {
            return Err(Error::new(
                ErrorKind::Corrupt,
                "the manifest holds no base image",
            ));
        }
        let ordered = |v: &[ChainEntry]| v.windows(2).all(|w| w[0].sequence < w[1].sequence);
        if !ordered(&self.bases) || !ordered(&self.logs) {
            return Err(Error::new(
                ErrorKind::Corrupt,
                "the manifest's chain is out of order",
            ));
        }
        Ok(())
    }

    /// Seals the manifest.
    pub(crate) fn seal(&self, keys: &Keyring, disk: DiskId) -> Result<Vec<u8>> {
        let json = serde_json::to_vec(self)
            .map_err(|e| Error::new(ErrorKind::Io, format!("encode the manifest: {e}")))?;
        crate::seal::seal_bytes(keys, &Binding::manifest(disk), &json)
    }

    /// Opens and checks a sealed manifest of `disk`.
    pub(crate) fn open(keys: &Keyring, disk: DiskId, sealed: &[u8]) -> Result<Self> {
        let json = crate::seal::open_bytes(keys, &Binding::manifest(disk), sealed, MANIFEST_LIMIT)?;
        let m: Manifest = serde_json::from_slice(&json).map_err(|e| {
            Error::new(
                ErrorKind::Corrupt,
                format!("the manifest is not valid: {e}"),
            )
        })?;
        m.check(disk)?;
        Ok(m)
    }
}

/// A writer's identity: random, kept by the primary beside its spool, so
/// a restarted primary is still the same writer and a second primary
/// with the same disk id is another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterId(pub [u8; 16]);

impl WriterId {
    /// A new random id.
    pub fn random() -> Result<Self> {
        let mut b = [0; 16];
        crate::id::fill_random(&mut b)?;
        Ok(WriterId(b))
    }

    /// The id in the file at `path`, made (and synced) there first if
    /// absent.
    pub fn load_or_create(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let path = path.as_ref();
        match std::fs::read_to_string(path) {
            Ok(s) => unhex::<16>(s.trim()).map(WriterId).ok_or_else(|| {
                Error::new(ErrorKind::Corrupt, "a writer id is 32 hex digits").with_path(path)
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = Self::random()?;
                let tmp = path.with_extension("partial");
                std::fs::write(&tmp, format!("{}\n", hex(&id.0)))
                    .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
                    .and_then(|()| std::fs::rename(&tmp, path))
                    .map_err(|e| Error::io("store the writer id", e).with_path(path))?;
                Ok(id)
            }
            Err(e) => Err(Error::io("read the writer id", e).with_path(path)),
        }
    }

    /// The id in hex.
    pub fn hex(&self) -> String {
        hex(&self.0)
    }
}
