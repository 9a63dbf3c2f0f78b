//! Files holding disk data or logs are created 0600 and the directories
//! the library creates 0700 (issue 27, item 27), whatever the umask lets
//! through: a replica's image, state and undo logs, a spool's logs and
//! state, and the directories around them.

use blockrep::io::{Dir, FileStorage, FsDir, Storage};
use blockrep::log::{MappedLog, ReadOptions, WriterOptions};
use blockrep::replica::Replica;
use blockrep::source::{ChainPoint, CycleOptions, Pipeline, Primary, Spool};
use blockrep::{DiskId, Geometry, Tracker};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Every entry under `dir`, recursively, with `dir` itself.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[test]
fn replicas_and_spools_are_private_to_their_owner() {
    // SAFETY: umask only sets the process's file-creation mask; this file
    // holds one test, so no other thread creates files meanwhile.
    unsafe { libc::umask(0o022) };
    let t = tempfile::tempdir().unwrap();
    let g = Geometry::new(1 << 20, 4096).unwrap();
    let image = t.path().join("disk.img");
    std::fs::write(&image, vec![7u8; 1 << 20]).unwrap();
    let disk: Arc<dyn Storage> = Arc::new(FileStorage::open(&image).unwrap());
    let sites = t.path().join("sites");
    let spool = Spool::create(
        Arc::new(FsDir::new(sites.join("a/spool")).unwrap()),
        DiskId::random().unwrap(),
        ChainPoint::start(1, g),
        1 << 30,
    )
    .unwrap();
    let opts = WriterOptions::default();
    let p = Pipeline::new(Primary::new(Tracker::new(g), disk.clone()), spool, opts).unwrap();
    p.initial_sync(opts.into()).unwrap();
    let rdir: Arc<dyn Dir> = Arc::new(FsDir::new(sites.join("b/replica")).unwrap());
    let mut replica: Option<Replica> = None;
    for round in 0..3u8 {
        if round > 0 {
            let guard = p.primary().write_guard(8192, 4096).unwrap();
            disk.write_at(&[round; 4096], 8192).unwrap();
            drop(guard);
            p.cycle(&CycleOptions::default()).unwrap();
        }
        // The spool's logs before they are shipped, then applied.
        check(&sites);
        while let Some(l) = p.spool().next_to_ship() {
            let log = MappedLog::open(l.path.as_ref().unwrap(), &ReadOptions::default()).unwrap();
            match &replica {
                None => replica = Some(Replica::create(rdir.clone(), &log).unwrap()),
                Some(r) => {
                    r.apply(&log).unwrap();
                }
            }
            p.spool().ack(l.point.sequence, &l.point.digest).unwrap();
        }
    }
    let mut all = Vec::new();
    walk(&sites, &mut all);
    let names: Vec<String> = all
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().any(|n| n == "image"), "{names:?}");
    assert!(names.iter().any(|n| n.starts_with("undo")), "{names:?}");
    check(&sites);
}

/// Every directory under `dir` is 0700 and every file 0600.
fn check(dir: &Path) {
    let mut all = Vec::new();
    walk(dir, &mut all);
    let wrong: Vec<String> = all
        .iter()
        .filter(|f| mode(f) != if f.is_dir() { 0o700 } else { 0o600 })
        .map(|f| format!("{} {:o}", f.display(), mode(f)))
        .collect();
    assert!(wrong.is_empty(), "not private: {wrong:#?}");
}
