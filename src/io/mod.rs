//! A small storage trait and its backends.
//!
//! Everything blockrep reads or writes block data through (source disks,
//! replica images, overlays) is a [`Storage`]: positional reads and writes
//! that may run from many threads at once, plus sync, length and hole
//! punching. Three backends: [`FileStorage`] (a file or block device),
//! [`MemStorage`] (memory, for tests and small overlays) and [`FaultStorage`]
//! (wraps another and fails or loses power at a chosen operation).

mod ahead;
mod dir;
mod fault;
mod file;
mod memory;

pub(crate) use ahead::{ReadAhead, WriteBehind};
#[cfg(feature = "net")]
pub(crate) use dir::LOCK as LOCK_FILE;
pub use dir::{create_private_dir, split_path, Dir, DirLock, FsDir, MemDir};
pub use fault::{Fault, FaultPlan, FaultStorage};
pub use file::FileStorage;
pub use memory::MemStorage;

use crate::error::Result;
use std::sync::Arc;

/// The alignment of buffer, offset and length under which
/// [`Storage::read_uncached`] may bypass the cache.
pub const UNCACHED_ALIGN: usize = 4096;

/// A buffer of `len` bytes at an address aligned to [`UNCACHED_ALIGN`],
/// carved from `store` (grown as needed; no `unsafe` allocation).
pub(crate) fn aligned_buf(store: &mut Vec<u8>, len: usize) -> &mut [u8] {
    if store.len() < len + UNCACHED_ALIGN {
        store.resize(len + UNCACHED_ALIGN, 0);
    }
    let at = store.as_ptr().align_offset(UNCACHED_ALIGN);
    &mut store[at..at + len]
}

/// What [`Storage::advise`] tells a backend about a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advice {
    /// It will be read soon: start reading it (files:
    /// `posix_fadvise(WILLNEED)`), so many scattered reads wait for the
    /// disk together instead of one after another.
    WillRead,
    /// It was written and will be synced: start writing it back now
    /// (files: `sync_file_range(SYNC_FILE_RANGE_WRITE)`), so a long copy's
    /// writes go to the disk while it reads, not all at its final sync.
    WriteBack,
}

/// Positional block storage, safe to share between threads.
///
/// Reads and writes are exact: a read past the end is an error, never a short
/// buffer. A write past the end extends the storage where the backend can.
pub trait Storage: Send + Sync {
    /// Fills `buf` from `offset`; the whole range must lie within [`len`](Storage::len).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;
    /// Writes all of `buf` at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()>;
    /// Makes every completed write durable.
    fn sync(&self) -> Result<()>;
    /// The current length in bytes.
    fn len(&self) -> Result<u64>;
    /// Whether the storage is empty.
    fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Grows (with zeros) or shrinks the storage to `len` bytes.
    fn set_len(&self, len: u64) -> Result<()>;
    /// Deallocates `len` bytes at `offset` so they read as zeros, where the
    /// backend can. Returns `false` when it cannot and nothing was changed;
    /// the caller then writes zeros itself.
    fn punch_hole(&self, offset: u64, len: u64) -> Result<bool> {
        let _ = (offset, len);
        Ok(false)
    }
    /// The next range `(start, len)` at or after `offset` that may hold
    /// data; `None` past the last one. Backends that know their holes
    /// (files, through `SEEK_DATA` and `SEEK_HOLE`) skip them; the default
    /// treats everything as data.
    fn next_data(&self, offset: u64) -> Result<Option<(u64, u64)>> {
        let len = self.len()?;
        Ok((offset < len).then(|| (offset, len - offset)))
    }
    /// Tells the backend what is coming for `len` bytes at `offset`, so it
    /// may start the I/O early (see [`Advice`]). A hint: it never fails
    /// and changes no content; the default ignores it.
    fn advise(&self, advice: Advice, offset: u64, len: u64) {
        let _ = (advice, offset, len);
    }
    /// [`read_at`](Storage::read_at) for a pass that reads much of the
    /// storage once (an initial copy): the backend may bypass its cache
    /// where `buf`'s address, `offset` and the length are multiples of
    /// [`UNCACHED_ALIGN`] (files: `O_DIRECT`), so the pass neither evicts
    /// what the guest has cached nor pays for copying through the cache.
    /// Reads see every write completed before the call, as `read_at` does.
    fn read_uncached(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.read_at(buf, offset)
    }
    /// What identifies the storage's current content without reading it,
    /// so a tracker closed cleanly can tell at open whether anything wrote
    /// to the disk while nothing was tracking. `None`: this storage offers
    /// no such signal (block devices, for one): the integration must then
    /// guarantee that no write happens while the disk is not tracked, or
    /// run a digest resync after any such time.
    fn identity(&self) -> Result<Option<DiskIdentity>> {
        Ok(None)
    }
}

/// What identifies a disk's content at one moment without reading it: for a
/// file, its device, inode, size and modification and change times. Equal
/// identities at a tracker's clean close and at its next open mean nothing
/// wrote to the disk in between (a write changes the times; a copy or a
/// replaced file changes the inode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DiskIdentity {
    /// The device holding the file.
    pub device: u64,
    /// The file's inode (for memory storage, a unique id).
    pub inode: u64,
    /// The size in bytes.
    pub size: u64,
    /// The last modification, ns since the Unix epoch (for memory
    /// storage, a count of changes).
    pub modified_ns: i64,
    /// The last inode change, ns since the Unix epoch.
    pub changed_ns: i64,
}

/// Storage behind a reference or a smart pointer is storage.
macro_rules! forward_storage {
    ($($ptr:ty),*) => {$(
        impl<S: Storage + ?Sized> Storage for $ptr {
            fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
                (**self).read_at(buf, offset)
            }
            fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
                (**self).write_at(buf, offset)
            }
            fn sync(&self) -> Result<()> {
                (**self).sync()
            }
            fn len(&self) -> Result<u64> {
                (**self).len()
            }
            fn set_len(&self, len: u64) -> Result<()> {
                (**self).set_len(len)
            }
            fn punch_hole(&self, offset: u64, len: u64) -> Result<bool> {
                (**self).punch_hole(offset, len)
            }
            fn next_data(&self, offset: u64) -> Result<Option<(u64, u64)>> {
                (**self).next_data(offset)
            }
            fn read_uncached(&self, buf: &mut [u8], offset: u64) -> Result<()> {
                (**self).read_uncached(buf, offset)
            }
            fn advise(&self, advice: Advice, offset: u64, len: u64) {
                (**self).advise(advice, offset, len)
            }
            fn identity(&self) -> Result<Option<DiskIdentity>> {
                (**self).identity()
            }
        }
    )*};
}

forward_storage!(&S, Arc<S>, Box<S>);

/// The error for a read that passes the end of a storage of `len` bytes.
pub(crate) fn short_read(offset: u64, want: usize, len: u64) -> crate::Error {
    crate::Error::out_of_range(format!(
        "short read: {want} bytes wanted, storage ends at {len}"
    ))
    .with_offset(offset)
}

/// Syncs the directory holding `path`, so a file created or renamed there
/// survives a crash.
pub fn sync_parent_dir(path: &std::path::Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| crate::Error::io("sync directory", e).with_path(dir))
}

/// A `std::io::Write` that appends to a [`Storage`] from an offset, so
/// streaming writers (a log writer) can target any backend.
pub struct StorageWriter<S: Storage> {
    storage: S,
    pos: u64,
}

impl<S: Storage> StorageWriter<S> {
    /// Writes to `storage` from `offset`.
    pub fn new(storage: S, offset: u64) -> Self {
        StorageWriter {
            storage,
            pos: offset,
        }
    }

    /// The storage, and the offset after the last byte written.
    pub fn into_inner(self) -> (S, u64) {
        (self.storage, self.pos)
    }
}

impl<S: Storage> std::io::Write for StorageWriter<S> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.storage.write_at(buf, self.pos).map_err(|e| {
            // Keep a full device recognisable through the io::Error.
            if e.kind() == crate::ErrorKind::NoSpace {
                std::io::Error::from_raw_os_error(libc::ENOSPC)
            } else {
                std::io::Error::other(e.to_string())
            }
        })?;
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
