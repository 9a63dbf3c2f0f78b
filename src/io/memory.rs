use super::{short_read, DiskIdentity, Storage};
use crate::error::{Error, Result};
use parking_lot::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// Storage in memory: a growable byte vector behind a lock.
///
/// Holes punched in it read as zeros, so it reports punching as done.
/// Its [`identity`](Storage::identity) is a unique id and a count of the
/// changes made, so a test can show writes made while nothing tracked.
#[derive(Debug)]
pub struct MemStorage {
    data: RwLock<Vec<u8>>,
    /// Unique among the storages of this process, for the identity.
    id: u64,
    /// Writes, resizes and punched holes so far.
    changes: AtomicU64,
}

/// Ids of memory storages, for their identities.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Default for MemStorage {
    fn default() -> Self {
        Self::from_vec(Vec::new())
    }
}

impl MemStorage {
    /// An empty storage.
    pub fn new() -> Self {
        Self::default()
    }

    /// A storage of `len` zero bytes.
    pub fn zeroed(len: u64) -> Result<Self> {
        let len = usize::try_from(len)
            .map_err(|_| Error::invalid(format!("{len} bytes do not fit in memory")))?;
        Ok(Self::from_vec(vec![0; len]))
    }

    /// A storage holding `data`.
    pub fn from_vec(data: Vec<u8>) -> Self {
        MemStorage {
            data: RwLock::new(data),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            changes: AtomicU64::new(0),
        }
    }

    /// A copy of the current content.
    pub fn to_vec(&self) -> Vec<u8> {
        self.data.read().clone()
    }
}

fn range(offset: u64, len: usize) -> Option<(usize, usize)> {
    let start = usize::try_from(offset).ok()?;
    Some((start, start.checked_add(len)?))
}

impl Storage for MemStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let data = self.data.read();
        match range(offset, buf.len()) {
            Some((s, e)) if e <= data.len() => {
                buf.copy_from_slice(&data[s..e]);
                Ok(())
            }
            _ => Err(short_read(offset, buf.len(), data.len() as u64)),
        }
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        let (s, e) = range(offset, buf.len()).ok_or_else(|| {
            Error::out_of_range("write past addressable memory").with_offset(offset)
        })?;
        let mut data = self.data.write();
        if e > data.len() {
            data.resize(e, 0);
        }
        data[s..e].copy_from_slice(buf);
        self.changes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }

    fn len(&self) -> Result<u64> {
        Ok(self.data.read().len() as u64)
    }

    fn set_len(&self, len: u64) -> Result<()> {
        let len = usize::try_from(len)
            .map_err(|_| Error::invalid(format!("{len} bytes do not fit in memory")))?;
        self.data.write().resize(len, 0);
        self.changes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn punch_hole(&self, offset: u64, len: u64) -> Result<bool> {
        let mut data = self.data.write();
        let size = data.len() as u64;
        let start = offset.min(size) as usize;
        let end = offset.saturating_add(len).min(size) as usize;
        data[start..end].fill(0);
        self.changes.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }

    fn identity(&self) -> Result<Option<DiskIdentity>> {
        let data = self.data.read();
        Ok(Some(DiskIdentity {
            device: 0,
            inode: self.id,
            size: data.len() as u64,
            modified_ns: self.changes.load(Ordering::Relaxed).cast_signed(),
            changed_ns: 0,
        }))
    }
}
