//! Retention in the store: the oldest points a policy does not keep are
//! folded into a new base image at the oldest point kept, the objects
//! they used leave the chain into the manifest's garbage list, and
//! garbage older than a grace period is deleted. Every step leaves the
//! chain readable: the new base is uploaded before any manifest names
//! it, the manifest changes by one conditional write, and an object is
//! deleted only after it left the chain longer ago than the grace period
//! (so a reader that read the manifest before can still finish).

use super::client::{update_of, ObjectClient, StoreConfig, Written};
use super::hydrate::{hydrate_with, load_existing, store};
use super::layout;
use super::manifest::{ChainEntry, Garbage, Manifest};
use crate::error::{Error, ErrorKind, Result};
use crate::hex::hex;
use crate::id::DiskId;
use crate::io::Dir;
use crate::log::{LogHeader, LogKind};
use crate::replica::Replica;
use crate::seal::{Binding, Keyring, ObjectKind};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

/// What the store keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorePolicy {
    /// The newest this many points stay reachable (at least 1).
    pub keep_last: usize,
    /// How long an object out of the chain stays before it is deleted: a
    /// reader that read the manifest before it left (a hydrate under way)
    /// must finish within it.
    pub grace: Duration,
}

impl Default for StorePolicy {
    /// 24 points, an hour's grace.
    fn default() -> Self {
        StorePolicy {
            keep_last: 24,
            grace: Duration::from_secs(3600),
        }
    }
}

/// What a compaction did.
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactReport {
    /// The new base's point, if one was made.
    pub base: Option<u64>,
    /// Points that left the chain.
    pub dropped: Vec<u64>,
    /// Objects deleted (their grace period over).
    pub deleted: usize,
    /// The manifest's generation after.
    pub generation: u64,
}

/// Counts the compaction's effects on the store, and stops (as a crash
/// would) after the one a test names.
struct Steps {
    done: u32,
    crash_after: Option<u32>,
}

impl Steps {
    fn did(&mut self) -> Result<()> {
        self.done += 1;
        if self.crash_after == Some(self.done) {
            return Err(Error::new(
                ErrorKind::Io,
                format!("stopped after step {} (a simulated crash)", self.done),
            ));
        }
        Ok(())
    }
}

/// Applies `policy` to `disk` in the store: compacts, then deletes
/// expired garbage. `work` is a local directory for the compaction's
/// replica (kept there between runs, so the next compaction downloads
/// only what is new); the pair's keys seal the new base with the current
/// key. Run by any host holding the key; the writer keeps shipping
/// meanwhile (a conditional write that loses to it is tried again).
pub fn compact(
    config: &StoreConfig,
    keys: &Keyring,
    disk: DiskId,
    work: Arc<dyn Dir>,
    policy: StorePolicy,
) -> Result<CompactReport> {
    compact_until(config, keys, disk, work, policy, None)
}

/// [`compact`], stopping (as a crash would) right after its `n`th effect
/// on the store: for the crash tests.
#[doc(hidden)]
pub fn compact_until(
    config: &StoreConfig,
    keys: &Keyring,
    disk: DiskId,
    work: Arc<dyn Dir>,
    policy: StorePolicy,
    crash_after: Option<u32>,
) -> Result<CompactReport> {
    if policy.keep_last == 0 {
        return Err(Error::invalid("a store keeps at least its latest point"));
    }
    let client = ObjectClient::open(config)?;
    let mut steps = Steps {
        done: 0,
        crash_after,
    };
    let mut report = CompactReport::default();
    for _ in 0..8 {
        match fold(&client, keys, disk, &work, policy, &mut steps, &mut report)? {
            Written::Done(_) => {
                collect(&client, keys, disk, policy, &mut steps, &mut report)?;
                return Ok(report);
            }
            // The writer advanced the manifest meanwhile: again.
            Written::Lost => {}
        }
    }
    Err(Error::new(
        ErrorKind::Io,
        "the manifest kept changing under the compaction (8 tries)",
    ))
}

/// Folds the points the policy drops into a base at the oldest point
/// kept; `Done` also when there was nothing to fold.
fn fold(
    client: &ObjectClient,
    keys: &Keyring,
    disk: DiskId,
    work: &Arc<dyn Dir>,
    policy: StorePolicy,
    steps: &mut Steps,
    report: &mut CompactReport,
) -> Result<Written> {
    let (m, etag) = load_existing(client, keys, disk)?;
    report.generation = m.generation;
    let points = m.points();
    if points.len() <= policy.keep_last {
        return Ok(Written::Done(etag));
    }
    let keep_from = points[points.len() - policy.keep_last];
    if m.bases[0].sequence >= keep_from {
        return Ok(Written::Done(etag));
    }
    let base = match m.bases.iter().find(|b| b.sequence == keep_from) {
        Some(b) => b.clone(),
        None => {
            let b = make_base(client, keys, disk, work, &m, keep_from)?;
            steps.did()?;
            b
        }
    };
    let mut next = m.clone();
    next.generation += 1;
    let now = crate::status::now_ns();
    let (old_bases, kept_bases): (Vec<_>, Vec<_>) = m
        .bases
        .iter()
        .cloned()
        .partition(|b| b.sequence < keep_from);
    let (old_logs, kept_logs): (Vec<_>, Vec<_>) = m
        .logs
        .iter()
        .cloned()
        .partition(|l| l.sequence <= keep_from);
    next.bases = std::iter::once(base.clone())
        .chain(kept_bases.into_iter().filter(|b| b.sequence > keep_from))
        .collect();
    next.logs = kept_logs;
    next.garbage.extend(
        old_bases
            .iter()
            .chain(&old_logs)
            .filter(|e| e.object != base.object)
            .map(|e| Garbage {
                object: e.object.clone(),
                since_ns: now,
            }),
    );
    let r = store(client, keys, disk, &next, update_of(etag))?;
    if let Written::Done(_) = r {
        steps.did()?;
        report.base = Some(keep_from);
        report.dropped = points.iter().copied().filter(|&p| p < keep_from).collect();
        report.generation = next.generation;
    }
    Ok(r)
}

/// Brings the work replica to point `at` and uploads a full log of it as
/// the base standing for that point.
fn make_base(
    client: &ObjectClient,
    keys: &Keyring,
    disk: DiskId,
    work: &Arc<dyn Dir>,
    m: &Manifest,
    at: u64,
) -> Result<ChainEntry> {
    let point = m
        .bases
        .iter()
        .chain(&m.logs)
        .find(|e| e.sequence == at)
        .cloned()
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Corrupt,
                format!("point {at} is not in the manifest"),
            )
        })?;
    // A work replica past the point (an earlier compaction's, after the
    // chain was reset) cannot go back: start it over.
    if Replica::exists(&**work) && Replica::open(work.clone())?.status().applied > at {
        return Err(Error::new(
            ErrorKind::Misuse,
            format!("the compaction's work replica is past point {at}: give an empty directory"),
        ));
    }
    hydrate_with(client, keys, disk, work.clone(), Some(at), 0)?;
    let replica = Replica::open(work.clone())?;
    let st = replica.status();
    let digest = point.digest()?;
    if st.applied != at || st.digest != digest {
        return Err(Error::mismatch(format!(
            "the work replica reached point {} instead of {at}",
            st.applied
        )));
    }
    let mut h = LogHeader::new(disk, st.geometry, LogKind::Full, point.epoch, at)?;
    h.created_ns = point.created_ns;
    h.label = "compacted base".into();
    let staged = "compact-base.partial";
    let file = work.create(staged)?;
    let r = (|| {
        let out = crate::io::StorageWriter::new(file.clone(), 0);
        let (out, summary) = crate::source::full_log(&**replica.image(), h, out)?;
        let (_, len) = out.into_inner();
        file.sync()?;
        let object = layout::base(point.epoch, at, &digest);
        let binding = Binding::point(ObjectKind::Base, disk, point.epoch, at, digest);
        let bytes = client.seal_upload(
            &format!("{}/{object}", layout::disk_dir(disk)),
            &*file,
            len,
            keys.current(),
            &binding,
            16 << 20,
        )?;
        Ok(ChainEntry {
            epoch: point.epoch,
            sequence: at,
            digest: point.digest.clone(),
            object,
            bytes,
            key_id: keys.current().id().to_string(),
            created_ns: point.created_ns,
            log_digest: Some(hex(&summary.trailer.digest.0)),
        })
    })();
    let _ = work.remove(staged);
    r
}

/// Lists orphans (objects no manifest names: an upload whose manifest
/// write never came) as garbage, and deletes garbage past its grace
/// period that the chain does not name.
fn collect(
    client: &ObjectClient,
    keys: &Keyring,
    disk: DiskId,
    policy: StorePolicy,
    steps: &mut Steps,
    report: &mut CompactReport,
) -> Result<()> {
    for _ in 0..8 {
        let (m, etag) = load_existing(client, keys, disk)?;
        let named: BTreeSet<&str> = m
            .bases
            .iter()
            .chain(&m.logs)
            .map(|e| e.object.as_str())
            .collect();
        let listed: BTreeSet<&str> = m.garbage.iter().map(|g| g.object.as_str()).collect();
        let dir = layout::disk_dir(disk);
        let now = crate::status::now_ns();
        let orphans: Vec<String> = client
            .list(&dir)?
            .into_iter()
            .filter_map(|n| n.strip_prefix(&format!("{dir}/")).map(str::to_string))
            .filter(|n| {
                n != "manifest" && !named.contains(n.as_str()) && !listed.contains(n.as_str())
            })
            .collect();
        let grace = u64::try_from(policy.grace.as_nanos()).unwrap_or(u64::MAX);
        let (expired, waiting): (Vec<Garbage>, Vec<Garbage>) = m
            .garbage
            .iter()
            .filter(|g| !named.contains(g.object.as_str()))
            .cloned()
            .partition(|g| now.saturating_sub(g.since_ns) >= grace);
        if orphans.is_empty() && expired.is_empty() && waiting.len() == m.garbage.len() {
            return Ok(());
        }
        for g in &expired {
            client.delete(&format!("{dir}/{}", g.object))?;
            steps.did()?;
        }
        let mut next = m.clone();
        next.generation += 1;
        next.garbage = waiting;
        next.garbage
            .extend(orphans.into_iter().map(|object| Garbage {
                object,
                since_ns: now,
            }));
        if let Written::Done(_) = store(client, keys, disk, &next, update_of(etag))? {
            steps.did()?;
            report.deleted += expired.len();
            report.generation = next.generation;
            return Ok(());
        }
    }
    Err(Error::new(
        ErrorKind::Io,
        "the manifest kept changing under the garbage collection (8 tries)",
    ))
}
