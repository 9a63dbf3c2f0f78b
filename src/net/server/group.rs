//! Consistency groups on the server: the member logs of one group cut
//! arrive as their own pushes (each header names the cut and the member
//! count). A complete member log is held in `{root}/groups/{cut}/` until
//! every member's arrived; the push that completes the set applies them
//! all or none (the replica group's journal in the same directory), and
//! the held logs go. A member held but not yet applied is answered 202
//! `held`; its shipper learns the outcome from `resume`.
//!
//! After a crash, [`recover`] finishes what the journal says (the members
//! rolled back to their old point) and applies the complete sets again.

use super::{log, parse_digest, parse_disk, Disk, Shared};
use crate::error::{Error, ErrorKind, Result};
use crate::hex::hex;
use crate::id::DiskId;
use crate::io::FsDir;
use crate::log::{Digest, GroupInfo};
use crate::net::identity::Identity;
use crate::replica::{ApplyOutcome, ReplicaGroup};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A held member log: its disk, sequence, digest and file.
#[derive(Debug, Clone)]
pub(super) struct Held {
    pub disk: DiskId,
    pub sequence: u64,
    pub digest: Digest,
    pub path: PathBuf,
}

/// The directory of a group cut's held logs.
fn cut_dir(root: &Path, cut: &[u8; 16]) -> PathBuf {
    root.join("groups").join(hex(cut))
}

/// The logs held in one cut's directory.
fn held_in(dir: &Path) -> Vec<Held> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let stem = name.strip_suffix(".log")?;
            let mut parts = stem.split('-');
            let disk = parse_disk(parts.next()?)?;
            let sequence = parts.next()?.parse().ok()?;
            let digest = parse_digest(parts.next()?)?;
            Some(Held {
                disk,
                sequence,
                digest,
                path: e.path(),
            })
        })
        .collect()
}

/// The log of `disk` held under `root`, if any (for `resume`).
pub(super) fn held_for(root: &Path, disk: DiskId) -> Option<Held> {
    let cuts = std::fs::read_dir(root.join("groups")).ok()?;
    cuts.flatten()
        .flat_map(|c| held_in(&c.path()))
        .find(|h| h.disk == disk)
}

/// Holds the complete `upload` (a log of a member of `group`, its file
/// the finished partial) and, when it completes the set, applies the cut.
/// Returns this member's outcome when the cut applied now, `None` when it
/// waits for other members.
pub(super) fn hold_and_try(
    shared: &Shared,
    identity: &Identity,
    root: &Path,
    upload: &Held,
    group: GroupInfo,
) -> Result<Option<ApplyOutcome>> {
    let (disk, sequence, digest, path) = (
        upload.disk,
        upload.sequence,
        upload.digest,
        upload.path.as_path(),
    );
    // A member pushed again after its cut applied (its answer lost) is
    // recognised by its digest, not held a second time.
    if let Some(r) = shared.disk_to_push(identity, disk)?.replica.lock().clone() {
        if r.status().applied >= sequence {
            let o = r.apply_file(path);
            let _ = std::fs::remove_file(path);
            return o.map(Some);
        }
    }
    let dir = cut_dir(root, &group.id);
    crate::io::create_private_dir(&dir)?;
    let held = dir.join(format!(
        "{}-{sequence:020}-{}.log",
        hex(&disk.0),
        hex(&digest.0)
    ));
    std::fs::rename(path, &held)
        .map_err(|e| Error::io("hold the group member's log", e).with_path(&held))?;
    crate::io::sync_parent_dir(&held)?;
    let outcomes = try_apply(shared, identity, &dir, group.members as usize)?;
    Ok(outcomes.and_then(|o| o.into_iter().find(|(d, _)| *d == disk).map(|(_, o)| o)))
}

/// Applies the cut held in `dir` when all `members` logs are there.
fn try_apply(
    shared: &Shared,
    identity: &Identity,
    dir: &Path,
    members: usize,
) -> Result<Option<Vec<(DiskId, ApplyOutcome)>>> {
    let mut held = held_in(dir);
    held.sort_by_key(|h| h.disk);
    held.dedup_by_key(|h| h.disk);
    if held.len() < members {
        return Ok(None);
    }
    let disks: Vec<Arc<Disk>> = held
        .iter()
        .map(|h| shared.disk_to_push(identity, h.disk))
        .collect::<Result<_>>()?;
    // Every member's upload slot, in disk order (no two appliers wait on
    // each other); a member uploading its next log is waited for.
    let mut slots = Vec::with_capacity(disks.len());
    for d in &disks {
        match d.upload.try_lock_for(Duration::from_secs(30)) {
            Some(g) => slots.push(g),
            None => {
                return Err(Error::new(
                    ErrorKind::Misuse,
                    "a member of the group is busy with an upload; the group applies later",
                ))
            }
        }
    }
    let replicas = disks
        .iter()
        .zip(&held)
        .map(|(d, h)| {
            d.replica.lock().clone().ok_or_else(|| {
                Error::mismatch(format!(
                    "group member disk {} does not exist here yet: its full log first",
                    h.disk
                ))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let group = ReplicaGroup::open(Arc::new(FsDir::new(dir)?), replicas.clone())?;
    let paths: Vec<&Path> = held.iter().map(|h| h.path.as_path()).collect();
    let started = std::time::Instant::now();
    let applied = group.apply_files(&paths);
    drop(slots);
    match applied {
        Ok(outcomes) => {
            for r in &replicas {
                shared.prune(identity, r);
            }
            shared.metrics.applied(
                started.elapsed(),
                outcomes.iter().any(ApplyOutcome::applied_now),
            );
            let _ = std::fs::remove_dir_all(dir);
            Ok(Some(held.iter().map(|h| h.disk).zip(outcomes).collect()))
        }
        Err(e) => {
            if matches!(e.kind(), ErrorKind::Mismatch | ErrorKind::Corrupt) {
                // A cut that can never apply: its logs go, so the primary
                // sends them again (or resyncs).
                log(&format!("group cut in {} refused: {e}", dir.display()));
                let _ = std::fs::remove_dir_all(dir);
            }
            Err(e)
        }
    }
}

/// At start: every group cut left under a primary's root finishes. An
/// interrupted apply is rolled back by its journal; a complete set is
/// applied again.
pub(super) fn recover(shared: &Shared) {
    let conf = shared.conf();
    for (identity, root) in &conf.roots {
        let Ok(cuts) = std::fs::read_dir(root.join("groups")) else {
            continue;
        };
        let who = Identity::of_entry(identity);
        for c in cuts.flatten() {
            let dir = c.path();
            let held = held_in(&dir);
            if held.is_empty() {
                continue;
            }
            // A complete set applies (an apply it interrupted is rolled
            // back first by the journal); an incomplete one waits.
            let members = crate::log::LogHeader::read_file(&held[0].path)
                .ok()
                .and_then(|h| h.group)
                .map_or(usize::MAX, |g| g.members as usize);
            match try_apply(shared, &who, &dir, members) {
                Ok(Some(_)) => log(&format!("group cut {} applied at start", dir.display())),
                Ok(None) => {}
                Err(e) => log(&format!("group cut {}: {e}", dir.display())),
            }
        }
    }
}
