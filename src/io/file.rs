use super::{short_read, DiskIdentity, Storage};
use crate::error::{Error, Result};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Storage in a file or block device, through positional I/O (`pread`,
/// `pwrite`), so many threads may read and write at once without seeking.
#[derive(Debug)]
pub struct FileStorage {
    file: File,
    path: PathBuf,
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
    /// system allows.
    pub fn create(path: impl AsRef<Path>, len: u64) -> Result<Self> {
        let path = path.as_ref();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
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
