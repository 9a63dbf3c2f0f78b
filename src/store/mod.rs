//! Object storage as a target (feature `s3`): a primary ships its spool to
//! an S3-compatible store with no blockrep server in between, and any host
//! with the pair's key builds a replica from it (`hydrate`).
//!
//! Per disk the store holds a sealed manifest (the writer holding the
//! disk, the chain of bases and logs), the logs as immutable sealed
//! objects named by epoch, sequence and digest, and base images (full
//! logs, each standing for a point) so recovery starts near the point it
//! wants. The manifest is only ever replaced by a conditional write on
//! the version read (`If-Match`, or `If-None-Match: *` for the first), so
//! a second primary claiming the disk is refused, and a log is
//! acknowledged to the spool only once the manifest naming it is written.
//! The layout is in docs/FORMAT.md ("Object store layout").

mod client;
mod compact;
pub(crate) mod dir;
mod hydrate;
mod manifest;
mod shipper;
#[cfg(feature = "net")]
mod vault;

pub use client::StoreConfig;
pub(crate) use client::Written;
pub use compact::{compact, compact_until, CompactReport, StorePolicy};
pub use hydrate::{hydrate, read_manifest, HydrateReport};
pub use manifest::{ChainEntry, Garbage, Manifest, WriterId, MANIFEST_FORMAT};
pub use shipper::{StoreShipper, StoreShipperConfig, StoreShipperStatus};

use crate::hex::hex;
use crate::id::DiskId;
use crate::log::Digest;

/// The object names of one disk, declared once.
pub(crate) mod layout {
    use super::{hex, Digest, DiskId};

    /// The disk's directory under the prefix.
    pub fn disk_dir(disk: DiskId) -> String {
        format!("disks/{}", hex(&disk.0))
    }

    /// The disk's manifest.
    pub fn manifest(disk: DiskId) -> String {
        format!("{}/manifest", disk_dir(disk))
    }

    /// A point's name: epoch and sequence (sorting in chain order) and
    /// the first half of its digest (names never collide; the whole
    /// digest is in the manifest and authenticated with the object).
    /// Short, as some stores keep a key in a file name of 255 bytes.
    fn point(epoch: u64, sequence: u64, digest: &Digest) -> String {
        format!("{epoch:016x}-{sequence:016x}-{}", hex(&digest.0[..16]))
    }

    /// A log object, relative to the disk's directory.
    pub fn log(epoch: u64, sequence: u64, digest: &Digest) -> String {
        format!("logs/{}.log", point(epoch, sequence, digest))
    }

    /// A base image, relative to the disk's directory.
    pub fn base(epoch: u64, sequence: u64, digest: &Digest) -> String {
        format!("bases/{}.base", point(epoch, sequence, digest))
    }
}

/// Raw transfers through the store's own client, for `blockrep bench`'s
/// baselines (a bare multipart upload and a bare download of the same
/// bytes); not a stable API.
#[doc(hidden)]
pub mod bench {
    use super::client::ObjectClient;
    use super::StoreConfig;
    use crate::error::Result;
    use crate::io::Storage;
    use crate::seal::{Binding, SealKey};

    /// Uploads `len` bytes of `file` as `name` (relative to the prefix),
    /// sealed with `key` when given, in parts of `part` bytes; returns
    /// the bytes uploaded.
    pub fn upload(
        config: &StoreConfig,
        name: &str,
        file: &dyn Storage,
        len: u64,
        seal: Option<(&SealKey, &Binding)>,
        part: usize,
    ) -> Result<u64> {
        const READ: usize = 4 << 20;
        let client = ObjectClient::open(config)?;
        if let Some((key, binding)) = seal {
            return client.seal_upload(name, file, len, key, binding, part);
        }
        let mut at = 0u64;
        let mut fill = || -> Result<Vec<u8>> {
            let n = ((len - at) as usize).min(READ);
            let mut b = vec![0u8; n];
            file.read_at(&mut b, at)?;
            at += n as u64;
            Ok(b)
        };
        client.put_stream(name, part, &mut fill)
    }

    /// Downloads `name` into `sink` as it arrives; returns its size.
    pub fn download(
        config: &StoreConfig,
        name: &str,
        sink: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<u64> {
        ObjectClient::open(config)?.get_into(name, sink)
    }
}
