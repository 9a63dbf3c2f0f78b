//! A replication pair's keys: one sealing key (256 bits), named by an id
//! derived from it, kept in a key file or handed over by the integration;
//! a keyring holds the current key and the older ones still needed to open
//! what they sealed.

use crate::error::{Error, ErrorKind, Result};
use crate::hex::{hex, unhex};
use std::fmt;
use std::path::Path;

/// The length of a sealing key in bytes.
pub const KEY_LEN: usize = 32;

/// The first word of a key file (docs/FORMAT.md, "Key file").
const KEY_FILE_TAG: &str = "blockrep-seal-key-v1";

/// A key's name: 16 bytes derived from the key by BLAKE3 (never the key
/// itself), written in every sealed object's header so the right key is
/// picked, and safe to show in logs and errors.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 16]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// A sealing key. Its bytes are zeroed when dropped and never shown:
/// `Debug` prints the id only.
pub struct SealKey {
    bytes: [u8; KEY_LEN],
    id: KeyId,
}

impl SealKey {
    /// The key made of `bytes` (from the integration's own key store).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        let d = blake3::derive_key("blockrep seal v1 key id", &bytes);
        let mut id = [0; 16];
        id.copy_from_slice(&d[..16]);
        SealKey {
            bytes,
            id: KeyId(id),
        }
    }

    /// The key made of `bytes`, which must be exactly [`KEY_LEN`] long.
    pub fn from_slice(bytes: &[u8]) -> Result<Self> {
        let b: [u8; KEY_LEN] = bytes.try_into().map_err(|_| {
            Error::new(
                ErrorKind::InvalidArgument,
                format!("a sealing key is {KEY_LEN} bytes, not {}", bytes.len()),
            )
        })?;
        Ok(Self::from_bytes(b))
    }

    /// A new key from the kernel's random source.
    pub fn generate() -> Result<Self> {
        let mut b = [0; KEY_LEN];
        crate::id::fill_random(&mut b)?;
        Ok(Self::from_bytes(b))
    }

    /// The key's id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The key's bytes, for the sealing code only.
    pub(crate) fn secret(&self) -> &[u8; KEY_LEN] {
        &self.bytes
    }

    /// Reads a key file: `blockrep-seal-key-v1 <64 hex digits>` and a
    /// newline. What is wrong with a bad file is said without its content.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io("read the key file", e).with_path(path))?;
        let bad = |what: &str| {
            Error::new(
                ErrorKind::Corrupt,
                format!("not a blockrep key file: {what}"),
            )
            .with_path(path)
        };
        let mut words = text.split_whitespace();
        if words.next() != Some(KEY_FILE_TAG) {
            return Err(bad(&format!("it does not start with {KEY_FILE_TAG}")));
        }
        let digits = words.next().ok_or_else(|| bad("no key"))?;
        match unhex::<KEY_LEN>(digits) {
            Some(b) if words.next().is_none() => Ok(Self::from_bytes(b)),
            _ => Err(bad("the key is not 64 hex digits")),
        }
    }

    /// Writes the key to a new file at `path`, readable by its owner only
    /// (mode 0600), synced. An existing file is never overwritten.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = path.as_ref();
        let digits = hex(&self.bytes);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::io("create the key file", e).with_path(path))?;
        f.write_all(format!("{KEY_FILE_TAG} {digits}\n").as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| Error::io("write the key file", e).with_path(path))
    }
}

impl Clone for SealKey {
    fn clone(&self) -> Self {
        Self::from_bytes(self.bytes)
    }
}

impl Drop for SealKey {
    fn drop(&mut self) {
        for b in &mut self.bytes {
            // SAFETY: `b` is a valid, aligned, exclusive reference into
            // this key's own array; a volatile write keeps the compiler
            // from eliding the zeroing of memory about to be freed.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealKey({})", self.id)
    }
}

/// The keys of a pair: the current one seals; it and the older ones open.
/// After a rotation the older keys stay until every point they sealed is
/// pruned.
#[derive(Debug, Clone)]
pub struct Keyring {
    keys: Vec<SealKey>,
}

impl Keyring {
    /// A keyring whose current key is `current`.
    pub fn new(current: SealKey) -> Self {
        Keyring {
            keys: vec![current],
        }
    }

    /// Adds an older key (for opening only).
    #[must_use]
    pub fn with_old(mut self, key: SealKey) -> Self {
        if self.get(key.id()).is_none() {
            self.keys.push(key);
        }
        self
    }

    /// The key that seals.
    pub fn current(&self) -> &SealKey {
        &self.keys[0]
    }

    /// The key named `id`, if held.
    pub fn get(&self, id: KeyId) -> Option<&SealKey> {
        self.keys.iter().find(|k| k.id == id)
    }

    /// The ids of every key held, the current one first.
    pub fn ids(&self) -> Vec<KeyId> {
        self.keys.iter().map(SealKey::id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_round_trips_and_hides_the_key() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k");
        let k = SealKey::generate().unwrap();
        k.save(&p).unwrap();
        assert!(k.save(&p).is_err(), "an existing file is never overwritten");
        let mode = std::fs::metadata(&p).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        let back = SealKey::load(&p).unwrap();
        assert_eq!(back.id(), k.id());
        assert_eq!(back.secret(), k.secret());
        let shown = format!("{k:?}");
        let hex = hex(k.secret());
        assert!(!shown.contains(&hex[..8]));
        std::fs::write(&p, format!("{KEY_FILE_TAG} {}\n", &hex[..60])).unwrap();
        let e = SealKey::load(&p).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt);
        assert!(!e.to_string().contains(&hex[..8]), "{e}");
    }

    #[test]
    fn ids_differ_per_key_and_the_ring_finds_old_keys() {
        let a = SealKey::from_bytes([1; 32]);
        let b = SealKey::from_bytes([2; 32]);
        assert_ne!(a.id(), b.id());
        let ring = Keyring::new(b.clone()).with_old(a.clone());
        assert_eq!(ring.current().id(), b.id());
        assert!(ring.get(a.id()).is_some());
        assert!(ring.get(SealKey::from_bytes([3; 32]).id()).is_none());
        assert!(SealKey::from_slice(&[0; 31]).is_err());
    }
}
