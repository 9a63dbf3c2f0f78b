//! Directories of named storages: a real one, and one in memory whose every
//! mutation counts in a [`FaultPlan`], directory entries included, so crash
//! tests cover creates, renames and removals as well as writes.

use super::{FaultPlan, FaultStorage, FileStorage, MemStorage, Storage};
use crate::error::{Error, ErrorKind, Result};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A directory of named storages with atomic rename, as a replica keeps
/// its image, state and undo logs in.
pub trait Dir: Send + Sync {
    /// Opens an existing file.
    fn open(&self, name: &str) -> Result<Arc<dyn Storage>>;
    /// Creates a file, or truncates an existing one.
    fn create(&self, name: &str) -> Result<Arc<dyn Storage>>;
    /// Whether a file exists.
    fn exists(&self, name: &str) -> bool;
    /// Renames `from` to `to` atomically, replacing `to`.
    fn rename(&self, from: &str, to: &str) -> Result<()>;
    /// Removes a file; a missing file is not an error.
    fn remove(&self, name: &str) -> Result<()>;
    /// Makes the directory's entries (creates, renames, removals) durable.
    fn sync(&self) -> Result<()>;
    /// The names of the files, sorted.
    fn list(&self) -> Result<Vec<String>>;
    /// Where `name` is on the file system, when it is.
    fn path_of(&self, name: &str) -> Option<PathBuf>;
    /// Replaces `name` with `bytes` atomically (through `NAME.tmp`, synced,
    /// renamed, directory synced): a crash leaves the old file or the new
    /// one, whole.
    fn store_atomic(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let tmp = format!("{name}.tmp");
        let f = self.create(&tmp)?;
        f.write_at(bytes, 0)?;
        f.sync()?;
        self.rename(&tmp, name)?;
        self.sync()
    }
    /// Takes the directory for one handle: a second lock of the same
    /// directory, from this process or another, is refused until the first
    /// is dropped, so two replicas (or spools) never work on the same files.
    /// The default, for a directory in memory, takes nothing.
    fn lock(&self) -> Result<DirLock> {
        Ok(DirLock { _file: None })
    }
    /// Reads a whole file into memory.
    fn read_all(&self, name: &str) -> Result<Vec<u8>> {
        let s = self.open(name)?;
        let len = s.len()?;
        let mut buf =
            vec![0u8; usize::try_from(len).map_err(|_| Error::out_of_range("file too large"))?];
        s.read_at(&mut buf, 0)?;
        Ok(buf)
    }
}

/// A directory taken by [`Dir::lock`], released when dropped.
#[derive(Debug)]
pub struct DirLock {
    _file: Option<std::fs::File>,
}

/// The lock file inside a locked directory; not listed.
pub(crate) const LOCK: &str = ".lock";

/// A real directory on a file system.
#[derive(Debug, Clone)]
pub struct FsDir {
    path: PathBuf,
}

impl FsDir {
    /// Uses `path`, creating it when missing.
    pub fn new(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        create_private_dir(&path)?;
        Ok(FsDir { path })
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Dir for FsDir {
    fn open(&self, name: &str) -> Result<Arc<dyn Storage>> {
        Ok(Arc::new(FileStorage::open(self.path.join(name))?))
    }
    fn create(&self, name: &str) -> Result<Arc<dyn Storage>> {
        Ok(Arc::new(FileStorage::create(self.path.join(name), 0)?))
    }
    fn exists(&self, name: &str) -> bool {
        self.path.join(name).exists()
    }
    fn rename(&self, from: &str, to: &str) -> Result<()> {
        let (a, b) = (self.path.join(from), self.path.join(to));
        std::fs::rename(&a, &b).map_err(|e| Error::io(format!("rename to {to}"), e).with_path(&a))
    }
    fn remove(&self, name: &str) -> Result<()> {
        let p = self.path.join(name);
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io("remove", e).with_path(&p))
            }
            _ => Ok(()),
        }
    }
    fn sync(&self) -> Result<()> {
        std::fs::File::open(&self.path)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io("sync directory", e).with_path(&self.path))
    }
    fn list(&self) -> Result<Vec<String>> {
        let rd = std::fs::read_dir(&self.path)
            .map_err(|e| Error::io("list directory", e).with_path(&self.path))?;
        let mut names = Vec::new();
        for e in rd {
            let e = e.map_err(|e| Error::io("list directory", e).with_path(&self.path))?;
            match e.file_name().to_str() {
                Some(LOCK) | None => {}
                Some(n) => names.push(n.to_owned()),
            }
        }
        names.sort();
        Ok(names)
    }
    fn path_of(&self, name: &str) -> Option<PathBuf> {
        Some(self.path.join(name))
    }
    /// An exclusive `flock` on `.lock` in the directory: advisory, between
    /// blockrep's own opens, released by the kernel when the process dies
    /// (so a crash leaves nothing to clean up). The holder writes its pid
    /// into the file, so a refusal names the process to look at.
    fn lock(&self) -> Result<DirLock> {
        use std::os::unix::fs::{FileExt, OpenOptionsExt};
        use std::os::unix::io::AsRawFd;
        let p = self.path.join(LOCK);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&p)
            .map_err(|e| Error::io("open the lock file", e).with_path(&p))?;
        // SAFETY: flock on a file descriptor this function owns; no memory
        // is involved.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::WouldBlock {
                return Err(Error::io("lock", e).with_path(&p));
            }
            // The holder's pid, when it has written it yet (it writes
            // right after taking the lock, so it may not have).
            let holder = std::fs::read_to_string(&p)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok());
            let msg = match holder {
                Some(pid) if pid == std::process::id() => {
                    format!("in use by another open handle in this process (pid {pid})")
                }
                Some(pid) => format!(
                    "in use by pid {pid} (a blockrep serve, a command or an agent working on it)"
                ),
                None => {
                    "in use: another process, or another open handle in this one, holds it".into()
                }
            };
            return Err(Error::new(ErrorKind::Misuse, msg).with_path(&self.path));
        }
        // Truncated only now, under the lock: the previous holder's pid
        // (it died, or dropped the lock) is replaced, never a live one's.
        let pid = format!("{}\n", std::process::id());
        f.set_len(0)
            .and_then(|()| f.write_all_at(pid.as_bytes(), 0))
            .map_err(|e| Error::io("write the pid into the lock file", e).with_path(&p))?;
        Ok(DirLock { _file: Some(f) })
    }
}

/// Creates `path` and any missing parents with mode 0700 (before the
/// umask), as every directory blockrep creates: they hold disk data and
/// logs, which only the owner may read. Existing directories are left as
/// they are. The mode is set at creation, so no other user ever finds the
/// directory open.
pub fn create_private_dir(path: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| Error::io("create directory", e).with_path(path))
}

type MemFile = Arc<FaultStorage<Arc<MemStorage>>>;

/// The directory holding `path` (on the file system) and the file's name
/// in it, for the [`Dir`] operations (atomic replacement, renames) on a
/// file a caller names by path.
pub fn split_path(path: &Path) -> Result<(Arc<dyn Dir>, String)> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::invalid("the path names no file").with_path(path))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Ok((Arc::new(FsDir::new(parent)?), name.to_owned()))
}

/// A directory in memory for crash tests. File contents and entries both
/// follow the plan: at a power loss, unsynced writes vanish and the entries
/// return to their state at the last [`sync`](Dir::sync).
/// [`recover`](MemDir::recover) then gives the durable directory under a new
/// plan, as a machine coming back up.
pub struct MemDir {
    plan: FaultPlan,
    state: Mutex<MemEntries>,
}

/// One fault wrapper per file, kept while the file is named live or
/// durably, so unsynced writes through any handle are dropped at power loss.
#[derive(Default, Clone)]
struct MemEntries {
    live: BTreeMap<String, MemFile>,
    durable: BTreeMap<String, MemFile>,
}

impl MemDir {
    /// An empty directory that injects no fault (a scratch directory in
    /// memory).
    pub fn new() -> Self {
        Self::with_plan(&FaultPlan::counting())
    }

    /// An empty directory counting its operations in `plan` (crash tests).
    pub fn with_plan(plan: &FaultPlan) -> Self {
        MemDir {
            plan: plan.clone(),
            state: Mutex::new(MemEntries::default()),
        }
    }

    /// A copy of the durable state after a power loss (of the current state
    /// otherwise), counting in `plan`: the machine coming back up. The copy
    /// shares nothing with `self`, so one prepared state serves many runs.
    pub fn recover(&self, plan: &FaultPlan) -> MemDir {
        let st = self.state.lock();
        let entries = if self.plan.powered_off() {
            &st.durable
        } else {
            &st.live
        };
        let entries: BTreeMap<String, MemFile> = entries
            .iter()
            .map(|(n, f)| {
                let copy = Arc::new(MemStorage::from_vec(f.inner().to_vec()));
                (n.clone(), Arc::new(FaultStorage::new(copy, plan)))
            })
            .collect();
        MemDir {
            plan: plan.clone(),
            state: Mutex::new(MemEntries {
                live: entries.clone(),
                durable: entries,
            }),
        }
    }

    /// The plan operations count in.
    pub fn plan(&self) -> &FaultPlan {
        &self.plan
    }

    /// Counts a directory operation; applies it unless the plan fires.
    fn entry_op(&self, op: impl FnOnce(&mut MemEntries) -> Result<()>) -> Result<()> {
        // A one-byte write to a scratch storage stands for the entry update,
        // so entry operations count and fail exactly like writes.
        let probe = FaultStorage::new(MemStorage::new(), &self.plan);
        probe.write_at(&[0], 0)?;
        op(&mut self.state.lock())
    }

    fn not_found(name: &str) -> Error {
        Error::new(ErrorKind::Io, format!("no file {name}"))
    }
}

impl Default for MemDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Dir for MemDir {
    fn open(&self, name: &str) -> Result<Arc<dyn Storage>> {
        if self.plan.powered_off() {
            return Err(Error::io(
                "open",
                std::io::Error::other("device is powered off"),
            ));
        }
        let st = self.state.lock();
        let f = st.live.get(name).ok_or_else(|| Self::not_found(name))?;
        Ok(f.clone())
    }
    fn create(&self, name: &str) -> Result<Arc<dyn Storage>> {
        let f: MemFile = Arc::new(FaultStorage::new(Arc::new(MemStorage::new()), &self.plan));
        let f2 = f.clone();
        self.entry_op(|st| {
            st.live.insert(name.to_owned(), f2);
            Ok(())
        })?;
        Ok(f)
    }
    fn exists(&self, name: &str) -> bool {
        self.state.lock().live.contains_key(name)
    }
    fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.entry_op(|st| {
            let m = st.live.remove(from).ok_or_else(|| Self::not_found(from))?;
            st.live.insert(to.to_owned(), m);
            Ok(())
        })
    }
    fn remove(&self, name: &str) -> Result<()> {
        self.entry_op(|st| {
            st.live.remove(name);
            Ok(())
        })
    }
    fn sync(&self) -> Result<()> {
        let probe = FaultStorage::new(MemStorage::new(), &self.plan);
        probe.sync()?;
        let mut st = self.state.lock();
        st.durable = st.live.clone();
        Ok(())
    }
    fn list(&self) -> Result<Vec<String>> {
        Ok(self.state.lock().live.keys().cloned().collect())
    }
    fn path_of(&self, _name: &str) -> Option<PathBuf> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::Fault;

    #[test]
    fn entries_since_the_last_sync_vanish_at_power_loss() {
        let plan = FaultPlan::at(6, Fault::PowerLoss { torn: false });
        let d = MemDir::with_plan(&plan);
        let a = d.create("a").unwrap(); // 1
        a.write_at(b"hello", 0).unwrap(); // 2
        a.sync().unwrap(); // 3
        d.sync().unwrap(); // 4
        d.rename("a", "b").unwrap(); // 5
        assert!(d.create("c").is_err()); // 6: power lost
        let r = d.recover(&FaultPlan::counting());
        assert_eq!(r.list().unwrap(), vec!["a".to_string()]);
        assert_eq!(r.read_all("a").unwrap(), b"hello");
    }

    #[test]
    fn fs_dir_round_trip() {
        let t = tempfile::tempdir().unwrap();
        let d = FsDir::new(t.path().join("x")).unwrap();
        d.create("f").unwrap().write_at(b"abc", 0).unwrap();
        d.rename("f", "g").unwrap();
        d.sync().unwrap();
        assert_eq!(d.list().unwrap(), vec!["g".to_string()]);
        assert_eq!(d.read_all("g").unwrap(), b"abc");
        d.remove("g").unwrap();
        d.remove("g").unwrap();
        assert!(!d.exists("g"));
    }

    /// A second lock of a directory is refused while the first is held
    /// (another handle of the same directory included) and taken once it
    /// is dropped; the lock file is not listed.
    #[test]
    fn a_directory_is_locked_by_one_handle_at_a_time() {
        let t = tempfile::tempdir().unwrap();
        let a = FsDir::new(t.path()).unwrap();
        let b = FsDir::new(t.path()).unwrap();
        let held = a.lock().unwrap();
        let e = b.lock().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Misuse);
        assert!(e.to_string().contains("in use"), "{e}");
        drop(held);
        let _again = b.lock().unwrap();
        assert!(a.list().unwrap().is_empty());
    }
}
