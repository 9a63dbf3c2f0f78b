use super::{short_read, Advice, DiskIdentity, Storage};
use crate::error::{Error, Result};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Storage in a file or block device, through positional I/O (`pread`,
/// `pwrite`), so many threads may read and write at once without seeking.
#[derive(Debug)]
pub struct FileStorage {
    file: File,
    path: PathBuf,
    /// The same file opened with `O_DIRECT` for uncached reads, once the
    /// first is asked for; `None` where the file system refuses it.
    direct: OnceLock<Option<File>>,
}

impl FileStorage {
    /// Opens an existing file for reading and writing.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Error::io("open", e).with_path(path))?;
        Ok(Self::from_file(file, path))
    }

    /// Opens an existing file read-only; writes fail.
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| Error::io("open", e).with_path(path))?;
        Ok(Self::from_file(file, path))
    }

    /// Creates (or truncates) a file of `len` bytes, sparse where the file
    /// system allows. A new file has mode 0600 (before the umask): it holds
    /// disk data or logs, which only the owner may read; an existing one
    /// keeps its mode.
    pub fn create(path: impl AsRef<Path>, len: u64) -> Result<Self> {
        let path = path.as_ref();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::io("create", e).with_path(path))?;
        let s = Self::from_file(file, path);
        s.set_len(len)?;
        Ok(s)
    }

    /// Wraps an open file; `path` is used in error messages only.
    pub fn from_file(file: File, path: impl AsRef<Path>) -> Self {
        FileStorage {
            file,
            path: path.as_ref().to_path_buf(),
            direct: OnceLock::new(),
        }
    }

    /// The path this storage was opened with.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The underlying file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The file opened again, read-only, with `O_DIRECT`: through
    /// `/proc/self/fd`, so it is this very file even if its path moved.
    fn direct(&self) -> Option<&File> {
        self.direct
            .get_or_init(|| {
                OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_DIRECT)
                    .open(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
                    .ok()
            })
            .as_ref()
    }

    fn err(&self, what: &str, e: std::io::Error, offset: u64) -> Error {
        Error::io(what, e).with_path(&self.path).with_offset(offset)
    }
}

/// The coarse real-time clock that file systems stamp times from, in ns.
fn coarse_now_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &raw mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

impl Storage for FileStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.file.read_exact_at(buf, offset).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                let len = self.len().unwrap_or(0);
                short_read(offset, buf.len(), len).with_path(&self.path)
            } else {
                self.err("read", e, offset)
            }
        })
    }

    fn advise(&self, advice: Advice, offset: u64, len: u64) {
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return;
        };
        let fd = self.file.as_raw_fd();
        // SAFETY: the descriptor is owned by `self.file` and valid for the
        // calls, which read no memory of ours. Hints: their results are moot.
        let _ = unsafe {
            match advice {
                Advice::WillRead => libc::posix_fadvise(fd, offset, len, libc::POSIX_FADV_WILLNEED),
                Advice::WriteBack => {
                    libc::sync_file_range(fd, offset, len, libc::SYNC_FILE_RANGE_WRITE)
                }
            }
        };
    }

    fn read_uncached(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let align = super::UNCACHED_ALIGN;
        let aligned = (buf.as_ptr() as usize).is_multiple_of(align)
            && buf.len().is_multiple_of(align)
            && offset.is_multiple_of(align as u64);
        if let (true, Some(direct)) = (aligned, self.direct()) {
            match direct.read_exact_at(buf, offset) {
                Ok(()) => return Ok(()),
                // A file system may refuse direct I/O at the read (or a
                // device need a larger alignment): the cache serves.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                Err(e) => {
                    // A short read (the end inside a block) goes through
                    // the cache, which reports it.
                    if e.kind() != std::io::ErrorKind::UnexpectedEof {
                        return Err(self.err("read", e, offset));
                    }
                }
            }
        }
        self.read_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| self.err("write", e, offset))
    }

    fn sync(&self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| Error::io("sync", e).with_path(&self.path))
    }

    fn len(&self) -> Result<u64> {
        let meta = self
            .file
            .metadata()
            .map_err(|e| Error::io("stat", e).with_path(&self.path))?;
        if meta.file_type().is_file() {
            return Ok(meta.len());
        }
        // A block device reports its size through seeking to the end.
        let fd = self.file.as_raw_fd();
        // SAFETY: `fd` is a valid descriptor owned by `self.file` for the
        // whole call; lseek does not touch memory.
        let end = unsafe { libc::lseek(fd, 0, libc::SEEK_END) };
        if end < 0 {
            return Err(
                Error::io("seek to end", std::io::Error::last_os_error()).with_path(&self.path)
            );
        }
        Ok(end.cast_unsigned())
    }

    fn set_len(&self, len: u64) -> Result<()> {
        self.file
            .set_len(len)
            .map_err(|e| self.err("set length", e, len))
    }

    fn next_data(&self, offset: u64) -> Result<Option<(u64, u64)>> {
        let len = self.len()?;
        if offset >= len {
            return Ok(None);
        }
        let fd = self.file.as_raw_fd();
        let seek = |whence| {
            // SAFETY: `fd` is owned by `self.file` for the call; lseek does
            // not touch memory.
            unsafe { libc::lseek(fd, offset.cast_signed(), whence) }
        };
        let start = seek(libc::SEEK_DATA);
        if start < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENXIO) => Ok(None), // no data after `offset`
                Some(libc::EINVAL | libc::EOPNOTSUPP) => Ok(Some((offset, len - offset))),
                _ => Err(self.err("seek data", e, offset)),
            };
        }
        let start = start.cast_unsigned();
        // SAFETY: as above.
        let end = unsafe { libc::lseek(fd, start.cast_signed(), libc::SEEK_HOLE) };
        let end = if end < 0 {
            len
        } else {
            end.cast_unsigned().min(len)
        };
        Ok(Some((start, end - start)))
    }

    /// For a regular file: device, inode, size and times, taken once the
    /// coarse clock has passed the file's last change, so a write after
    /// this call always changes a time (file systems stamp times from a
    /// clock that advances in ticks of a few milliseconds). For a block
    /// device: `None`, since writes do not change its node's times.
    fn identity(&self) -> Result<Option<DiskIdentity>> {
        use std::os::unix::fs::MetadataExt;
        for _ in 0..1000 {
            let m = self
                .file
                .metadata()
                .map_err(|e| Error::io("stat", e).with_path(&self.path))?;
            if !m.file_type().is_file() {
                return Ok(None);
            }
            let id = DiskIdentity {
                device: m.dev(),
                inode: m.ino(),
                size: m.len(),
                modified_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
                changed_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
            };
            if coarse_now_ns() > id.modified_ns.max(id.changed_ns) {
                return Ok(Some(id));
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        // The file's times lie in the future (a clock set back): a later
        // write could carry the same times. Claim no signal rather than a
        // false one.
        Ok(None)
    }

    fn punch_hole(&self, offset: u64, len: u64) -> Result<bool> {
        let (Ok(off), Ok(l)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
            return Err(
                Error::out_of_range("hole past the largest file offset").with_offset(offset)
            );
        };
        let fd = self.file.as_raw_fd();
        // SAFETY: `fd` is a valid descriptor owned by `self.file`; fallocate
        // only changes the file's allocation, never our memory.
        let rc = unsafe {
            libc::fallocate(
                fd,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off,
                l,
            )
        };
        if rc == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL) => Ok(false),
            _ => Err(self.err("punch hole", e, offset)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{aligned_buf, UNCACHED_ALIGN};
    use crate::ErrorKind;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// Uncached reads see writes not yet synced (the kernel writes the
    /// range back first) and read exactly what the cache reads, aligned or
    /// not, in the directory's file system and in tmpfs (which refuses
    /// `O_DIRECT`: the cache serves).
    #[test]
    fn uncached_reads_match_cached_reads() {
        let t = tempfile::tempdir().unwrap();
        let mut dirs = vec![t.path().to_path_buf()];
        let shm = tempfile::tempdir_in("/dev/shm").ok();
        dirs.extend(shm.as_ref().map(|d| d.path().to_path_buf()));
        for dir in dirs {
            let len = 5 * UNCACHED_ALIGN + 1000;
            let f = FileStorage::create(dir.join("disk"), len as u64).unwrap();
            f.write_at(&pattern(len, 1), 0).unwrap();
            f.sync().unwrap();
            // Rewritten, not synced: an uncached read must see it.
            f.write_at(&pattern(2 * UNCACHED_ALIGN, 9), UNCACHED_ALIGN as u64)
                .unwrap();
            let mut want = vec![0u8; len];
            f.read_at(&mut want, 0).unwrap();
            // Hints change nothing, in or past the file.
            for advice in [Advice::WillRead, Advice::WriteBack] {
                f.advise(advice, 0, len as u64);
                f.advise(advice, 3 * len as u64, 1 << 40);
            }
            let mut again = vec![0u8; len];
            f.read_at(&mut again, 0).unwrap();
            assert_eq!(again, want);
            let mut store = Vec::new();
            for (off, n) in [
                (0, 4 * UNCACHED_ALIGN),
                (UNCACHED_ALIGN, 2 * UNCACHED_ALIGN),
                (100, 3000),
                (UNCACHED_ALIGN, 4 * UNCACHED_ALIGN + 1000),
            ] {
                let buf = aligned_buf(&mut store, n);
                f.read_uncached(buf, off as u64).unwrap();
                assert_eq!(buf, &want[off..off + n], "{} at {off}", dir.display());
            }
            // An unaligned buffer is read through the cache.
            let mut odd = vec![0u8; UNCACHED_ALIGN + 1];
            f.read_uncached(&mut odd[1..], 0).unwrap();
            assert_eq!(&odd[1..], &want[..UNCACHED_ALIGN]);
        }
    }

    /// A read past the end is refused as with `read_at`, aligned or not.
    #[test]
    fn uncached_reads_past_the_end_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let f = FileStorage::create(t.path().join("disk"), 3 * UNCACHED_ALIGN as u64 + 10).unwrap();
        let mut store = Vec::new();
        for (off, n) in [
            (2 * UNCACHED_ALIGN, 2 * UNCACHED_ALIGN),
            (4 * UNCACHED_ALIGN, UNCACHED_ALIGN),
        ] {
            let buf = aligned_buf(&mut store, n);
            let e = f.read_uncached(buf, off as u64).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::OutOfRange, "{e}");
        }
    }
}
