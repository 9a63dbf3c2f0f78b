//! A directory as an object store: the `file://` target (a mounted NAS,
//! a local disk) and the replica server's vault (`blockrep://`, where
//! the server keeps each primary's sealed objects without its key).
//!
//! Objects are files under the root, named as in the object-store
//! layout; every write lands in a hidden temporary file, is synced and
//! renamed into place (and the directory synced), so a reader sees a
//! whole object or none and a crash leaves no half object. A version
//! (the `ETag` of the conditional writes) is the BLAKE3 of the content:
//! a conditional write compares it under an exclusive `flock` of the
//! root's `.lock`, so two processes (two primaries, or a server and a
//! hydrate on its host) cannot both replace a manifest.

use super::client::Written;
use crate::error::{Error, ErrorKind, Result};
use crate::hex::hex;
use crate::io::sync_parent_dir;
use object_store::PutMode;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The longest object name, and of one of its components (a file name).
const MAX_NAME: usize = 1024;
const MAX_COMPONENT: usize = 255;

/// Objects stored as files under one directory.
#[derive(Debug, Clone)]
pub(crate) struct DirObjects {
    root: PathBuf,
}

/// Makes temporary names unique within the process.
static TEMP: AtomicU64 = AtomicU64::new(0);

/// Checks `name` is an object name of the layout: components of letters,
/// digits, `.`, `_` and `-`, none empty or starting with a dot (so no
/// `..`, and no name reaches the hidden files kept beside the objects).
/// What a hostile peer sends the vault goes through here first.
pub(crate) fn check_name(name: &str) -> Result<()> {
    let bad = |why: &str| {
        Error::invalid(format!(
            "object name {:?}: {why}",
            name.chars().take(80).collect::<String>()
        ))
    };
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(bad("empty or longer than 1024 bytes"));
    }
    for c in name.split('/') {
        if c.is_empty() || c.len() > MAX_COMPONENT || c.starts_with('.') {
            return Err(bad("an empty, over-long or hidden component"));
        }
        if !c
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(bad("only letters, digits, '.', '_' and '-' are allowed"));
        }
    }
    Ok(())
}

/// The version of an object holding `bytes`.
pub(crate) fn version_of(bytes: &[u8]) -> String {
    hex(&blake3::hash(bytes).as_bytes()[..16])
}

/// Holds an exclusive `flock` on a file until dropped.
struct Flock(File);

impl Flock {
    fn take(path: &Path) -> Result<Flock> {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| Error::io("open the store's lock", e).with_path(path))?;
        loop {
            // SAFETY: flock on a descriptor this function owns, open for
            // the call's duration; it touches no memory.
            let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
            if r == 0 {
                return Ok(Flock(f));
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(Error::io("lock the store", e).with_path(path));
            }
        }
    }
}

impl Drop for Flock {
    fn drop(&mut self) {
        // SAFETY: as in `take`; closing the file would release it too.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

impl DirObjects {
    /// The objects under `root`, created if missing.
    pub(crate) fn open(root: &Path) -> Result<DirObjects> {
        std::fs::create_dir_all(root)
            .map_err(|e| Error::io("create the store's directory", e).with_path(root))?;
        Ok(DirObjects {
            root: root.to_path_buf(),
        })
    }

    /// The directory, for messages.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    fn file(&self, name: &str) -> Result<PathBuf> {
        check_name(name)?;
        Ok(self.root.join(name))
    }

    /// The object `name` whole, with its version; `None` if absent. At
    /// most `limit` bytes.
    pub(crate) fn get(&self, name: &str, limit: u64) -> Result<Option<(Vec<u8>, String)>> {
        let path = self.file(name)?;
        let Some((mut f, len)) = open_existing(&path)? else {
            return Ok(None);
        };
        if len > limit {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!("{name} holds {len} bytes, more than {limit}"),
            ));
        }
        let mut b = Vec::with_capacity(len as usize);
        f.read_to_end(&mut b)
            .map_err(|e| Error::io("read", e).with_path(&path))?;
        let v = version_of(&b);
        Ok(Some((b, v)))
    }

    /// Up to `len` bytes of `name` from `offset`, and the object's size;
    /// `None` if absent.
    pub(crate) fn get_range(
        &self,
        name: &str,
        offset: u64,
        len: usize,
    ) -> Result<Option<(Vec<u8>, u64)>> {
        let path = self.file(name)?;
        let Some((mut f, size)) = open_existing(&path)? else {
            return Ok(None);
        };
        let n = usize::try_from(size.saturating_sub(offset))
            .unwrap_or(usize::MAX)
            .min(len);
        let mut b = vec![0u8; n];
        f.seek(SeekFrom::Start(offset))
            .and_then(|_| f.read_exact(&mut b))
            .map_err(|e| Error::io("read", e).with_path(&path))?;
        Ok(Some((b, size)))
    }

    /// Writes `bytes` as `name`: over anything there, only if nothing is
    /// (`Create`), or only over the version given (`Update`).
    pub(crate) fn put(&self, name: &str, bytes: &[u8], mode: &PutMode) -> Result<Written> {
        let path = self.file(name)?;
        let temp = self.temp(&path)?;
        write_synced(&temp, bytes)?;
        let version = version_of(bytes);
        let lock = self.lock()?;
        let holds = match mode {
            PutMode::Overwrite => true,
            PutMode::Create => open_existing(&path)?.is_none(),
            PutMode::Update(v) => self
                .get(name, u64::MAX)?
                .is_some_and(|(_, now)| v.e_tag.as_deref() == Some(now.as_str())),
        };
        if !holds {
            drop(lock);
            let _ = std::fs::remove_file(&temp);
            return Ok(Written::Lost);
        }
        let placed = place(&temp, &path);
        drop(lock);
        placed?;
        Ok(Written::Done(Some(version)))
    }

    /// Appends `bytes` at `offset` to the pending upload of `name`
    /// (offset 0 starts it again); the upload's size is returned. An
    /// offset other than its size is refused with that size.
    pub(crate) fn append(&self, name: &str, offset: u64, bytes: &[u8]) -> Result<u64> {
        let path = self.upload_path(name)?;
        let mut f = if offset == 0 {
            File::create(&path)
        } else {
            OpenOptions::new().append(true).open(&path)
        }
        .map_err(|e| Error::io("open the upload", e).with_path(&path))?;
        let have = size_of(&f, &path)?;
        if have != offset {
            return Err(Error::new(
                ErrorKind::OutOfRange,
                format!("the upload of {name} holds {have} bytes, not {offset}"),
            )
            .with_offset(have));
        }
        f.write_all(bytes)
            .map_err(|e| Error::io("write the upload", e).with_path(&path))?;
        Ok(have + bytes.len() as u64)
    }

    /// Places the pending upload of `name`, which must hold `total` bytes,
    /// as the object (synced first).
    pub(crate) fn commit(&self, name: &str, total: u64) -> Result<()> {
        let path = self.upload_path(name)?;
        let f = File::open(&path).map_err(|e| Error::io("open the upload", e).with_path(&path))?;
        let have = size_of(&f, &path)?;
        if have != total {
            return Err(Error::new(
                ErrorKind::OutOfRange,
                format!("the upload of {name} holds {have} bytes, not {total}"),
            ));
        }
        f.sync_all()
            .map_err(|e| Error::io("sync the upload", e).with_path(&path))?;
        let target = self.file(name)?;
        if let Some(d) = target.parent() {
            std::fs::create_dir_all(d).map_err(|e| Error::io("create", e).with_path(d))?;
        }
        place(&path, &target)?;
        sync_parent_dir(&path)
    }

    /// Writes a large object from `fill`, called for the next bytes until
    /// it returns none; placed whole once all is written and synced.
    pub(crate) fn put_stream(
        &self,
        name: &str,
        fill: &mut dyn FnMut() -> Result<Vec<u8>>,
    ) -> Result<u64> {
        let mut at = 0;
        loop {
            let b = fill()?;
            if b.is_empty() && at > 0 {
                break;
            }
            at = self.append(name, at, &b)?;
            if b.is_empty() {
                break;
            }
        }
        self.commit(name, at)?;
        Ok(at)
    }

    /// Deletes `name` (absent is fine).
    pub(crate) fn delete(&self, name: &str) -> Result<()> {
        let path = self.file(name)?;
        match std::fs::remove_file(&path) {
            Ok(()) => sync_parent_dir(&path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("delete", e).with_path(&path)),
        }
    }

    /// The names of every object under `dir` (`""` for all), sorted.
    pub(crate) fn list(&self, dir: &str) -> Result<Vec<String>> {
        let start = if dir.is_empty() {
            self.root.clone()
        } else {
            self.file(dir)?
        };
        let mut out = Vec::new();
        let mut todo = vec![(start, dir.to_string())];
        while let Some((path, name)) = todo.pop() {
            let entries = match std::fs::read_dir(&path) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("list", e).with_path(&path)),
            };
            for e in entries {
                let e = e.map_err(|e| Error::io("list", e).with_path(&path))?;
                let Ok(file) = e.file_name().into_string() else {
                    continue;
                };
                if file.starts_with('.') {
                    continue;
                }
                let child = if name.is_empty() {
                    file
                } else {
                    format!("{name}/{file}")
                };
                let kind = e
                    .file_type()
                    .map_err(|e| Error::io("list", e).with_path(&path))?;
                if kind.is_dir() {
                    todo.push((e.path(), child));
                } else if kind.is_file() {
                    out.push(child);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Bytes held by pending uploads untouched for `age`, removed.
    pub(crate) fn reclaim_uploads(&self, age: std::time::Duration) -> u64 {
        let mut freed = 0;
        let Ok(entries) = std::fs::read_dir(self.root.join(".uploads")) else {
            return 0;
        };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            let idle = m.modified().ok().and_then(|t| t.elapsed().ok());
            if idle.is_some_and(|i| i >= age) && std::fs::remove_file(e.path()).is_ok() {
                freed += m.len();
            }
        }
        freed
    }

    fn lock(&self) -> Result<Flock> {
        Flock::take(&self.root.join(".lock"))
    }

    /// A fresh hidden name beside `path` (its directory created).
    fn temp(&self, path: &Path) -> Result<PathBuf> {
        let dir = path.parent().unwrap_or(&self.root);
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create", e).with_path(dir))?;
        let n = TEMP.fetch_add(1, Ordering::Relaxed);
        Ok(dir.join(format!(".tmp-{}-{n}", std::process::id())))
    }

    /// Where the pending upload of `name` is kept.
    fn upload_path(&self, name: &str) -> Result<PathBuf> {
        check_name(name)?;
        let dir = self.root.join(".uploads");
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("create", e).with_path(&dir))?;
        Ok(dir.join(version_of(name.as_bytes())))
    }
}

/// The file at `path` open for reading, and its size; `None` if absent.
fn open_existing(path: &Path) -> Result<Option<(File, u64)>> {
    match File::open(path) {
        Ok(f) => {
            let size = size_of(&f, path)?;
            Ok(Some((f, size)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("open", e).with_path(path)),
    }
}

fn size_of(f: &File, path: &Path) -> Result<u64> {
    Ok(f.metadata()
        .map_err(|e| Error::io("read the size", e).with_path(path))?
        .len())
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).map_err(|e| Error::io("create", e).with_path(path))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io("write", e).with_path(path))
}

/// Renames `from` over `to` and syncs `to`'s directory.
fn place(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(|e| Error::io("rename into place", e).with_path(to))?;
    sync_parent_dir(to)
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::UpdateVersion;

    fn update(v: &str) -> PutMode {
        PutMode::Update(UpdateVersion {
            e_tag: Some(v.into()),
            version: None,
        })
    }

    #[test]
    fn conditional_writes_hold_only_on_the_version_read() {
        let d = tempfile::tempdir().unwrap();
        let o = DirObjects::open(d.path()).unwrap();
        let Written::Done(Some(v1)) = o.put("a/m", b"one", &PutMode::Create).unwrap() else {
            panic!("first create")
        };
        assert!(matches!(
            o.put("a/m", b"two", &PutMode::Create).unwrap(),
            Written::Lost
        ));
        assert!(matches!(
            o.put("a/m", b"two", &update("00")).unwrap(),
            Written::Lost
        ));
        let Written::Done(Some(v2)) = o.put("a/m", b"two", &update(&v1)).unwrap() else {
            panic!("update on the version read")
        };
        assert!(matches!(
            o.put("a/m", b"three", &update(&v1)).unwrap(),
            Written::Lost
        ));
        assert_eq!(o.get("a/m", 10).unwrap().unwrap(), (b"two".to_vec(), v2));
        assert!(o.get("a/m", 2).is_err(), "over the limit");
        assert_eq!(o.list("").unwrap(), vec!["a/m".to_string()], "no temp");
    }

    #[test]
    fn streamed_objects_appear_whole_and_resume_only_at_their_size() {
        let d = tempfile::tempdir().unwrap();
        let o = DirObjects::open(d.path()).unwrap();
        assert_eq!(o.append("x/big", 0, b"abc").unwrap(), 3);
        assert!(o.get("x/big", 10).unwrap().is_none(), "not placed yet");
        let e = o.append("x/big", 2, b"zz").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::OutOfRange);
        assert_eq!(o.append("x/big", 3, b"de").unwrap(), 5);
        assert!(o.commit("x/big", 4).is_err(), "wrong total");
        o.commit("x/big", 5).unwrap();
        assert_eq!(
            o.get_range("x/big", 1, 3).unwrap().unwrap(),
            (b"bcd".to_vec(), 5)
        );
        assert_eq!(
            o.get_range("x/big", 4, 9).unwrap().unwrap(),
            (b"e".to_vec(), 5)
        );
        let mut parts = vec![b"".to_vec(), b"45".to_vec(), b"123".to_vec()];
        assert_eq!(
            o.put_stream("y", &mut || Ok(parts.pop().unwrap())).unwrap(),
            5
        );
        assert_eq!(o.get("y", 9).unwrap().unwrap().0, b"12345");
        o.delete("y").unwrap();
        o.delete("y").unwrap();
        assert_eq!(o.list("x").unwrap(), vec!["x/big".to_string()]);
        assert!(o.list("nothing").unwrap().is_empty());
    }

    #[test]
    fn names_that_leave_the_root_or_reach_hidden_files_are_refused() {
        for bad in [
            "",
            "../x",
            "a/../../x",
            "/abs",
            "a//b",
            ".lock",
            "a/.tmp-1-1",
            ".uploads/x",
            "a b",
            "a\\b",
            "é",
        ] {
            assert_eq!(
                check_name(bad).unwrap_err().kind(),
                ErrorKind::InvalidArgument,
                "{bad:?}"
            );
        }
        check_name("disks/00ff/logs/0000-0001-ab.log").unwrap();
        assert!(check_name(&"a".repeat(256)).is_err());
    }
}
