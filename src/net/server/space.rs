//! The storage the server writes to: a free-space reserve kept under the
//! primaries' roots (a push that would eat into it is refused before a
//! byte is written, so the primary keeps spooling and no half-written file
//! remains), and partial uploads abandoned too long removed.

use super::{log, parse_disk, Shared};
use crate::error::{Error, ErrorKind, Result};
use std::path::Path;
use std::time::{Duration, SystemTime};

/// A file system's size and the bytes an unprivileged writer may still
/// use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Space {
    pub total: u64,
    pub available: u64,
}

/// The space of the file system holding `path`.
pub(super) fn space_of(path: &Path) -> Result<Space> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::invalid("a path with a NUL byte").with_path(path))?;
    // SAFETY: statvfs is plain old data; all zeroes is a valid value that
    // the call overwrites.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path alive for the call and `st` a
    // valid, writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &raw mut st) } != 0 {
        return Err(Error::io("free space", std::io::Error::last_os_error()).with_path(path));
    }
    let unit = st.f_frsize;
    Ok(Space {
        total: st.f_blocks * unit,
        available: st.f_bavail * unit,
    })
}

/// Refuses (kind `NoSpace`) a write of `need` bytes under `root` that
/// would leave less than `percent` % of its file system free.
pub(super) fn check_reserve(root: &Path, need: u64, percent: u8) -> Result<()> {
    let s = space_of(root)?;
    let reserve = s.total / 100 * u64::from(percent.min(100));
    if s.available.saturating_sub(need) < reserve || s.available < need {
        return Err(Error::new(
            ErrorKind::NoSpace,
            format!(
                "free space below the reserve: {} MiB free, {} MiB needed, {} MiB ({percent} %) kept free",
                s.available >> 20,
                need >> 20,
                reserve >> 20
            ),
        )
        .with_path(root));
    }
    Ok(())
}

/// Removes the partial uploads untouched for longer than `after` under
/// every primary's root, except those of a disk whose upload is under way
/// (its lock is held). Returns the bytes reclaimed.
pub(super) fn reclaim_abandoned(shared: &Shared, after: Duration) -> u64 {
    let now = SystemTime::now();
    let mut reclaimed = 0;
    let conf = shared.conf();
    for (identity, root) in &conf.roots {
        #[cfg(feature = "s3")]
        {
            let vault = root.join(super::vault::DIR);
            if vault.is_dir() {
                if let Ok(v) = crate::store::dir::DirObjects::open(&vault) {
                    reclaimed += v.reclaim_uploads(after);
                }
            }
        }
        let Ok(dirs) = std::fs::read_dir(root) else {
            continue;
        };
        for disk_dir in dirs.flatten() {
            let Some(id) = disk_dir.file_name().to_str().and_then(parse_disk) else {
                continue;
            };
            // The disk map stays locked while this disk is swept, so no
            // upload can start on it meanwhile; one running holds the
            // replica's lock, and is left alone.
            let disks = shared.disks.lock();
            let busy = disks
                .get(&(identity.clone(), id))
                .map(|d| d.upload.try_lock().is_none());
            if busy == Some(true) {
                continue;
            }
            let Ok(uploads) = std::fs::read_dir(disk_dir.path().join("uploads")) else {
                continue;
            };
            for f in uploads.flatten() {
                let Ok(meta) = f.metadata() else { continue };
                let old = meta
                    .modified()
                    .ok()
                    .and_then(|m| now.duration_since(m).ok())
                    .is_some_and(|age| age > after);
                if old && std::fs::remove_file(f.path()).is_ok() {
                    log(&format!(
                        "removed {} ({} bytes), abandoned for more than {}s",
                        f.path().display(),
                        meta.len(),
                        after.as_secs()
                    ));
                    reclaimed += meta.len();
                }
            }
            drop(disks);
        }
    }
    reclaimed
}
