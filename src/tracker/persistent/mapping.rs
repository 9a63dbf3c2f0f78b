//! The tracker file's bytes while it is open: read and written in memory,
//! made durable a range at a time. Two kinds: a memory map of a file on a
//! file system (the product), and a copy in memory over any [`Storage`]
//! (the crash tests: a [`MemDir`](crate::io::MemDir) under a fault plan
//! drops at a power loss what was not flushed, and tears the write that
//! the power loss hits at sector granularity).
//!
//! Callers hold the tracker's lock that guards the part they touch, so the
//! mapping itself needs no locking of its own for correctness.

use crate::error::{Error, Result};
use crate::io::{Dir, Storage};
use memmap2::MmapMut;
use parking_lot::Mutex;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The open tracker file: bytes, writes and a flush of a range.
pub(super) trait Mapping: Send + Sync {
    /// The file's length.
    fn len(&self) -> u64;
    /// Copies the bytes at `off` into `buf`.
    fn read(&self, off: u64, buf: &mut [u8]);
    /// Writes `src` at `off` (visible at once, durable after a flush).
    fn write(&self, off: u64, src: &[u8]);
    /// Makes the bytes in `off..off + len` durable.
    fn flush(&self, off: u64, len: u64) -> Result<()>;
}

/// Opens the file `name` in `dir`: mapped when it is on a file system,
/// copied into memory otherwise.
pub(super) fn open(dir: &dyn Dir, name: &str) -> Result<Box<dyn Mapping>> {
    match dir.path_of(name) {
        Some(p) => Ok(Box::new(FileMap::open(&p)?)),
        None => Ok(Box::new(MemMap::open(dir.open(name)?)?)),
    }
}

fn check(off: u64, len: usize, total: u64) {
    // The offsets come from a layout validated against the file's length:
    // a range outside is a bug in this module, not bad input.
    assert!(
        off.checked_add(len as u64).is_some_and(|end| end <= total),
        "tracker file access {off}+{len} past {total}"
    );
}

/// A shared memory map of a tracker file.
struct FileMap {
    map: MmapMut,
    /// The mapping's start; written only through [`Mapping::write`], whose
    /// callers hold the lock guarding the range.
    base: *mut u8,
    path: PathBuf,
}

// SAFETY: `base` points into `map`, which lives as long as `self` and is
// never remapped. Reads and writes through it copy bytes under the
// tracker's locks (module docs), and the other fields are thread-safe.
unsafe impl Send for FileMap {}
// SAFETY: as for `Send`.
unsafe impl Sync for FileMap {}

impl FileMap {
    fn open(path: &Path) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Error::io("open tracker file", e).with_path(path))?;
        // SAFETY: the file belongs to this tracker while it is open;
        // docs/FORMAT.md says one tracker at a time, and that truncating it
        // behind an open tracker is not supported (it would fault).
        let mut map = unsafe { MmapMut::map_mut(&file) }
            .map_err(|e| Error::io("map tracker file", e).with_path(path))?;
        let base = map.as_mut_ptr();
        Ok(FileMap {
            map,
            base,
            path: path.to_path_buf(),
        })
    }
}

impl Mapping for FileMap {
    fn len(&self) -> u64 {
        self.map.len() as u64
    }

    fn read(&self, off: u64, buf: &mut [u8]) {
        check(off, buf.len(), self.len());
        // SAFETY: the range lies within the mapping (checked), which
        // outlives the call; writers of this range hold the lock the caller
        // holds, so the bytes do not change during the copy.
        unsafe {
            std::ptr::copy_nonoverlapping(self.base.add(off as usize), buf.as_mut_ptr(), buf.len());
        }
    }

    fn write(&self, off: u64, src: &[u8]) {
        check(off, src.len(), self.len());
        // SAFETY: the range lies within the mapping (checked), and the
        // caller holds the lock guarding it, so no other access overlaps.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.base.add(off as usize), src.len());
        }
    }

    fn flush(&self, off: u64, len: u64) -> Result<()> {
        self.map
            .flush_range(off as usize, len as usize)
            .map_err(|e| {
                Error::io("flush tracker file", e)
                    .with_path(&self.path)
                    .with_offset(off)
            })
    }
}

/// A tracker file copied into memory; a flush writes the range back to the
/// storage and syncs it.
struct MemMap {
    view: Mutex<Vec<u8>>,
    storage: Arc<dyn Storage>,
}

impl MemMap {
    fn open(storage: Arc<dyn Storage>) -> Result<Self> {
        let len = storage.len()?;
        let mut view = vec![
            0u8;
            usize::try_from(len).map_err(|_| {
                Error::invalid(format!(
                    "a tracker file of {len} bytes does not fit in memory"
                ))
            })?
        ];
        storage.read_at(&mut view, 0)?;
        Ok(MemMap {
            view: Mutex::new(view),
            storage,
        })
    }
}

impl Mapping for MemMap {
    fn len(&self) -> u64 {
        self.view.lock().len() as u64
    }

    fn read(&self, off: u64, buf: &mut [u8]) {
        let v = self.view.lock();
        check(off, buf.len(), v.len() as u64);
        buf.copy_from_slice(&v[off as usize..off as usize + buf.len()]);
    }

    fn write(&self, off: u64, src: &[u8]) {
        let mut v = self.view.lock();
        check(off, src.len(), v.len() as u64);
        v[off as usize..off as usize + src.len()].copy_from_slice(src);
    }

    fn flush(&self, off: u64, len: u64) -> Result<()> {
        let bytes = {
            let v = self.view.lock();
            check(off, len as usize, v.len() as u64);
            v[off as usize..(off + len) as usize].to_vec()
        };
        self.storage.write_at(&bytes, off)?;
        self.storage.sync()
    }
}
