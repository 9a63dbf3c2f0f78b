//! The sealed object's header and binding, declared once (docs/FORMAT.md,
//! "Sealed object").

use super::key::KeyId;
use crate::error::{Error, ErrorKind, Result};
use crate::id::DiskId;
use crate::le::{get_u32, put_u32, put_u64};
use crate::log::Digest;

/// "BRSEAL\0\0".
pub(crate) const MAGIC: [u8; 8] = *b"BRSEAL\0\0";
/// The format version written and read.
pub(crate) const VERSION: u16 = 1;
/// AES-256-GCM under a key derived per object from the pair's key and the
/// object's salt.
pub(crate) const ALG_AES256GCM_DERIVED: u8 = 1;
/// Header length.
pub(crate) const HEADER_LEN: usize = 64;
/// Binding length.
pub(crate) const BINDING_LEN: usize = 64;
/// The tag after every chunk.
pub(crate) const TAG_LEN: usize = 16;
/// The smallest and largest chunk a reader accepts (a header is read
/// before it is authenticated: its chunk size bounds an allocation).
pub(crate) const MIN_CHUNK: u32 = 4096;
/// See [`MIN_CHUNK`].
pub(crate) const MAX_CHUNK: u32 = 16 << 20;
/// The chunk size written by default.
pub const DEFAULT_CHUNK: u32 = 1 << 20;

/// Header field offsets.
pub(crate) mod at {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 8;
    pub const ALG: usize = 10;
    pub const KIND: usize = 11;
    pub const CHUNK: usize = 12;
    pub const KEY_ID: usize = 16;
    pub const SALT: usize = 32;
    pub const SALT_LEN: usize = 24;
    pub const RESERVED: usize = 56;
}

/// What a sealed object holds; part of its authenticated header, so an
/// object of one kind never opens as another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ObjectKind {
    /// A delta, resync or full log of the chain.
    Log = 1,
    /// A base image: a full log standing for a point of the chain.
    Base = 2,
    /// A disk's manifest in an object store.
    Manifest = 3,
    /// An undo log.
    Undo = 4,
}

impl ObjectKind {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => ObjectKind::Log,
            2 => ObjectKind::Base,
            3 => ObjectKind::Manifest,
            4 => ObjectKind::Undo,
            _ => return None,
        })
    }
}

/// What one object stands for: authenticated with every chunk, so an
/// object opens only where it belongs. A log of another disk, epoch or
/// position in the chain, or a log swapped for another with the same
/// name, fails to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding {
    /// The object's kind.
    pub kind: ObjectKind,
    /// The disk.
    pub disk_id: DiskId,
    /// The epoch of the point (0 where none applies, as for a manifest).
    pub epoch: u64,
    /// The sequence of the point (0 where none applies).
    pub sequence: u64,
    /// The content digest of the point (zero where none applies).
    pub digest: Digest,
}

impl Binding {
    /// The binding of a log or base image at point (`epoch`, `sequence`,
    /// `digest`) of `disk_id`.
    pub fn point(
        kind: ObjectKind,
        disk_id: DiskId,
        epoch: u64,
        sequence: u64,
        digest: Digest,
    ) -> Self {
        Binding {
            kind,
            disk_id,
            epoch,
            sequence,
            digest,
        }
    }

    /// The binding of `disk_id`'s manifest.
    pub fn manifest(disk_id: DiskId) -> Self {
        Self::point(ObjectKind::Manifest, disk_id, 0, 0, Digest([0; 32]))
    }

    pub(crate) fn encode(&self) -> [u8; BINDING_LEN] {
        let mut b = [0; BINDING_LEN];
        b[..16].copy_from_slice(&self.disk_id.0);
        put_u64(&mut b, 16, self.epoch);
        put_u64(&mut b, 24, self.sequence);
        b[32..64].copy_from_slice(&self.digest.0);
        b
    }
}

/// A header's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub kind: ObjectKind,
    pub chunk: u32,
    pub key_id: KeyId,
    pub salt: [u8; at::SALT_LEN],
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0; HEADER_LEN];
        b[at::MAGIC..at::MAGIC + 8].copy_from_slice(&MAGIC);
        b[at::VERSION..at::VERSION + 2].copy_from_slice(&VERSION.to_le_bytes());
        b[at::ALG] = ALG_AES256GCM_DERIVED;
        b[at::KIND] = self.kind as u8;
        put_u32(&mut b, at::CHUNK, self.chunk);
        b[at::KEY_ID..at::KEY_ID + 16].copy_from_slice(&self.key_id.0);
        b[at::SALT..at::SALT + at::SALT_LEN].copy_from_slice(&self.salt);
        b
    }

    /// Parses a header (not yet authenticated: every chunk's tag covers
    /// it). Checks what can be checked before a key is used.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Self> {
        let bad = |what: String| Error::new(ErrorKind::Corrupt, what).with_offset(0);
        if b[at::MAGIC..at::MAGIC + 8] != MAGIC {
            return Err(bad("not a sealed blockrep object (bad magic)".into()));
        }
        let version = u16::from_le_bytes([b[at::VERSION], b[at::VERSION + 1]]);
        if version != VERSION {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!("sealed object version {version}; this build reads {VERSION}"),
            ));
        }
        if b[at::ALG] != ALG_AES256GCM_DERIVED {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!("sealing algorithm {}", b[at::ALG]),
            ));
        }
        let kind = ObjectKind::from_u8(b[at::KIND])
            .ok_or_else(|| bad(format!("unknown object kind {}", b[at::KIND])))?;
        let chunk = get_u32(b, at::CHUNK);
        if !(MIN_CHUNK..=MAX_CHUNK).contains(&chunk) {
            return Err(bad(format!("chunk size {chunk} out of bounds")));
        }
        if b[at::RESERVED..HEADER_LEN].iter().any(|&x| x != 0) {
            return Err(bad("reserved header bytes are not zero".into()));
        }
        let mut key_id = [0; 16];
        key_id.copy_from_slice(&b[at::KEY_ID..at::KEY_ID + 16]);
        let mut salt = [0; at::SALT_LEN];
        salt.copy_from_slice(&b[at::SALT..at::SALT + at::SALT_LEN]);
        Ok(Header {
            kind,
            chunk,
            key_id: KeyId(key_id),
            salt,
        })
    }
}

/// The sealed length of `plain` bytes in chunks of `chunk` bytes: the
/// header, the bytes, and a tag per chunk (an empty object has one empty
/// final chunk).
pub fn sealed_len(plain: u64, chunk: u32) -> u64 {
    let chunks = plain.div_ceil(u64::from(chunk)).max(1);
    HEADER_LEN as u64 + plain + chunks * TAG_LEN as u64
}
