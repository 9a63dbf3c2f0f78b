//! Replication of running QEMU disks from their own dirty bitmaps: no
//! write hook, only QMP and NBD.
//!
//! Per block node (a disk), blockrep keeps one persistent dirty bitmap
//! named for the point it tracks changes since: `blockrep-e{epoch}-s{seq}`
//! for the spool's head. A cycle, for every node of the source at once:
//!
//! 1. a temporary qcow2 overlay backed by the node (`blockdev-create`,
//!    `blockdev-add`), the fleecing target;
//! 2. one `transaction`: add the next bitmap, disable the current one,
//!    start a `blockdev-backup` with `sync: none` into the overlay. From
//!    that instant the overlay reads as the disk did then (QEMU copies
//!    what the guest overwrites into it first); the guest never pauses;
//! 3. the overlay exported read-only over NBD with the current bitmap;
//!    exactly its dirty extents (block status on
//!    `qemu:dirty-bitmap:NAME`) are read into the next log of the spool
//!    (the first log: every allocated extent, from `base:allocation`);
//! 4. the export, the job and the overlay removed, then the current
//!    bitmap; the next one is current.
//!
//! When a cycle fails before its logs are pushed, the bitmaps are put
//! back as they were (the new one merged into the current one, which is
//! enabled again), so nothing written meanwhile is lost. Names carry the
//! `blockrep-` prefix: what an aborted run left (exports, jobs, overlays,
//! bitmaps) is recognised and removed at the next [`QemuSource::open`].
//! A bitmap that is missing (QEMU exited uncleanly, or someone removed
//! it), inconsistent, or not the one for the spool's head makes that disk
//! require a digest resync ([`QemuSource::resync`]), never a silent gap.

use super::qmp::Qmp;
use super::view::{NbdView, ALLOCATION};
use crate::geometry::{Extent, Geometry};
use crate::log::{BlockDigests, GroupInfo, LogKind, LogSummary, WriterOptions};
use crate::nbd::{NbdClient, NbdOptions, STATE_DIRTY};
use crate::source::TransferOptions;
use crate::source::{copy_disk, send_blocks, ChainPoint, CycleOptions, Spool};
use crate::{Error, ErrorKind, Result};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The prefix of every name blockrep gives inside QEMU.
const PREFIX: &str = "blockrep-";

/// The frozen views of one cut, while they are exported: the NBD socket
/// and, per disk, its node and the export's name.
#[derive(Debug, Clone)]
pub struct CutViews {
    /// QEMU's NBD server.
    pub nbd_socket: PathBuf,
    /// (node, export name) of every disk.
    pub exports: Vec<(String, String)>,
}

/// Called at each cut with the frozen views, before blockrep reads them.
pub type OnCut = Arc<dyn Fn(&CutViews) + Send + Sync>;

/// Where the source finds QEMU and puts its temporary files.
#[derive(Clone)]
pub struct QemuConfig {
    /// QEMU's QMP socket.
    pub qmp: PathBuf,
    /// A directory for the fleecing overlays, which QEMU opens: on the
    /// same host, writable by QEMU, with room for what the guest
    /// overwrites during a cycle.
    pub work_dir: PathBuf,
    /// The Unix socket of QEMU's NBD server when one already runs (QEMU
    /// has at most one); `None`: blockrep starts one at
    /// `work_dir/nbd.sock` and stops it when closed.
    pub nbd_socket: Option<PathBuf>,
    /// Bounds every QMP and NBD exchange and every wait for a QEMU job.
    pub timeout: Duration,
    /// How logs are written.
    pub writer: WriterOptions,
    /// Called at each cut while the frozen views are exported, before
    /// they are read: an integration that verifies or backs up the same
    /// instant reads them here (the tests take the expected state so).
    pub on_cut: Option<OnCut>,
}

impl std::fmt::Debug for QemuConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QemuConfig")
            .field("qmp", &self.qmp)
            .field("work_dir", &self.work_dir)
            .field("nbd_socket", &self.nbd_socket)
            .field("timeout", &self.timeout)
            .field("writer", &self.writer)
            .field("on_cut", &self.on_cut.is_some())
            .finish()
    }
}

impl QemuConfig {
    /// A configuration with the defaults: blockrep's own NBD server, a
    /// minute's timeout, the default writer.
    pub fn new(qmp: impl Into<PathBuf>, work_dir: impl Into<PathBuf>) -> Self {
        QemuConfig {
            qmp: qmp.into(),
            work_dir: work_dir.into(),
            nbd_socket: None,
            timeout: Duration::from_secs(60),
            writer: WriterOptions::default(),
            on_cut: None,
        }
    }
}

/// One disk: a QEMU block node and the spool its logs go to.
pub struct QemuDisk {
    /// The node's `node-name` (a format node, such as the qcow2 a guest
    /// device sits on; its bitmaps are persistent when it is a qcow2).
    pub node: String,
    /// The disk's spool; its geometry's size must be the node's.
    pub spool: Arc<Spool>,
}

/// Where a disk's replication stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QemuDiskState {
    /// No log yet: the next cycle writes the full log.
    Initial,
    /// Changes since the spool's head are tracked by this bitmap.
    Tracking {
        /// The bitmap's name.
        bitmap: String,
    },
    /// Changes cannot be known (why): the next log must be a digest
    /// resync against the replica.
    ResyncRequired {
        /// What was found.
        reason: String,
    },
}

/// What one cycle did.
#[derive(Debug, Clone)]
pub enum QemuCycle {
    /// A log per disk, pushed to its spool, all from one instant.
    Written(Vec<LogSummary>),
    /// A spool is over its limit: nothing was cut; the bitmaps keep
    /// accumulating until the transport catches up.
    Deferred {
        /// The node whose spool is full.
        node: String,
    },
}

struct Disk {
    node: String,
    spool: Arc<Spool>,
    persistent: bool,
    state: QemuDiskState,
}

/// Replication of one QEMU node, or of several cut at one instant (the
/// disks of one VM): see the module docs.
///
/// One source per QEMU process: QEMU takes one client per QMP monitor,
/// and the source owns every `blockrep-` name in that QEMU (what it
/// finds at open is removed as debris). Its work directory is its own.
pub struct QemuSource {
    qmp: Qmp,
    config: QemuConfig,
    disks: Vec<Disk>,
    nbd: PathBuf,
    own_nbd: bool,
}

/// A node as `query-named-block-nodes` describes it.
struct NodeInfo {
    driver: String,
    size: u64,
    bitmaps: Vec<BitmapInfo>,
}

struct BitmapInfo {
    name: String,
    recording: bool,
    inconsistent: bool,
}

/// The bitmap that tracks changes since `point`.
pub fn bitmap_name(point: &ChainPoint) -> String {
    format!("{PREFIX}e{}-s{}", point.epoch, point.sequence)
}

fn qemu_error(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Io, msg.into())
}

impl QemuSource {
    /// Connects to QEMU, checks every node (it exists, its size is its
    /// spool's), removes what an aborted run left and finds each disk's
    /// state from its bitmaps (see [`QemuDiskState`]).
    pub fn open(config: QemuConfig, disks: Vec<QemuDisk>) -> Result<QemuSource> {
        if disks.is_empty() {
            return Err(Error::invalid("a QEMU source needs at least one node"));
        }
        if !config.work_dir.is_dir() {
            return Err(Error::invalid(format!(
                "the work directory {} does not exist",
                config.work_dir.display()
            )));
        }
        let qmp = Qmp::connect(&config.qmp, config.timeout)?;
        let (nbd, own_nbd) = match &config.nbd_socket {
            Some(p) => (p.clone(), false),
            None => (config.work_dir.join("nbd.sock"), true),
        };
        let mut s = QemuSource {
            qmp,
            disks: disks
                .into_iter()
                .map(|d| Disk {
                    node: d.node,
                    spool: d.spool,
                    persistent: false,
                    state: QemuDiskState::Initial,
                })
                .collect(),
            nbd,
            own_nbd,
            config,
        };
        s.remove_leftovers()?;
        let nodes = s.nodes()?;
        for d in &mut s.disks {
            let info = nodes
                .iter()
                .find(|(name, _)| *name == d.node)
                .map(|(_, i)| i)
                .ok_or_else(|| {
                    Error::invalid(format!("QEMU has no block node named {:?}", d.node))
                })?;
            let g = d.spool.head().geometry;
            if info.size != g.size() {
                return Err(Error::mismatch(format!(
                    "node {:?} is {} bytes, its spool's disk {}",
                    d.node,
                    info.size,
                    g.size()
                )));
            }
            d.persistent = info.driver == "qcow2";
        }
        s.recover_bitmaps(&nodes)?;
        if s.own_nbd {
            let _ = std::fs::remove_file(&s.nbd);
            let path = s.nbd.to_string_lossy().into_owned();
            s.qmp
                .execute(
                    "nbd-server-start",
                    json!({"addr": {"type": "unix", "data": {"path": path}}}),
                )
                .map_err(|e| {
                    Error::new(
                        e.kind(),
                        format!(
                            "{}; when QEMU's NBD server already runs, give its socket \
                             (QemuConfig::nbd_socket)",
                            e.message()
                        ),
                    )
                })?;
        }
        Ok(s)
    }

    /// The QMP connection the source uses (QEMU takes one client per
    /// monitor): for an integration's own commands between cycles, such
    /// as freezing the guest's file systems through its agent.
    pub fn qmp(&mut self) -> &mut Qmp {
        &mut self.qmp
    }

    /// Each disk's node and state.
    pub fn states(&self) -> Vec<(String, QemuDiskState)> {
        self.disks
            .iter()
            .map(|d| (d.node.clone(), d.state.clone()))
            .collect()
    }

    /// QEMU's block nodes by name.
    fn nodes(&mut self) -> Result<Vec<(String, NodeInfo)>> {
        query_nodes(&mut self.qmp)
    }

    /// Removes exports, jobs and overlay nodes named by blockrep (left by
    /// an aborted cycle), in the order they depend on each other.
    fn remove_leftovers(&mut self) -> Result<()> {
        let exports = self.qmp.execute("query-block-exports", json!({}))?;
        for e in exports.as_array().into_iter().flatten() {
            if let Some(id) = e["id"].as_str().filter(|id| id.starts_with(PREFIX)) {
                let id = id.to_string();
                self.del_export(&id)?;
            }
        }
        let jobs = self.qmp.execute("query-jobs", json!({}))?;
        for j in jobs.as_array().into_iter().flatten() {
            if let Some(id) = j["id"].as_str().filter(|id| id.starts_with(PREFIX)) {
                let id = id.to_string();
                self.end_job(&id)?;
            }
        }
        // Overlays before their files.
        let nodes = self.nodes()?;
        for stage in [format!("{PREFIX}fl"), format!("{PREFIX}ff")] {
            for (name, _) in nodes.iter().filter(|(n, _)| n.starts_with(&stage)) {
                self.qmp
                    .execute("blockdev-del", json!({"node-name": name}))?;
            }
        }
        for i in 0..self.disks.len() {
            let _ = std::fs::remove_file(self.overlay_path(i));
        }
        Ok(())
    }

    /// Finds each disk's state from its bitmaps and leaves only the one
    /// for its spool's head, enabled (see the module docs).
    fn recover_bitmaps(&mut self, nodes: &[(String, NodeInfo)]) -> Result<()> {
        for i in 0..self.disks.len() {
            let d = &self.disks[i];
            let head = d.spool.head();
            let want = bitmap_name(&head);
            let ours: Vec<&BitmapInfo> = nodes
                .iter()
                .find(|(n, _)| *n == d.node)
                .map(|(_, info)| {
                    info.bitmaps
                        .iter()
                        .filter(|b| b.name.starts_with(PREFIX))
                        .collect()
                })
                .unwrap_or_default();
            let current = ours.iter().find(|b| b.name == want);
            let state = if head.sequence == 0 {
                QemuDiskState::Initial
            } else if d.spool.resync_required() {
                QemuDiskState::ResyncRequired {
                    reason: "the spool was restarted for a resync".into(),
                }
            } else {
                match current {
                    None => QemuDiskState::ResyncRequired {
                        reason: format!(
                            "the bitmap {want} is missing (QEMU exited uncleanly, or it was removed)"
                        ),
                    },
                    Some(b) if b.inconsistent => QemuDiskState::ResyncRequired {
                        reason: format!("the bitmap {want} is marked inconsistent"),
                    },
                    Some(_) => QemuDiskState::Tracking {
                        bitmap: want.clone(),
                    },
                }
            };
            let node = d.node.clone();
            let mut actions = Vec::new();
            if matches!(state, QemuDiskState::Tracking { .. }) {
                // Bitmaps of a cycle cut but not pushed hold changes since
                // the head: merged back (older ones only add blocks the
                // next log sends again).
                let others: Vec<&str> = ours
                    .iter()
                    .filter(|b| b.name != want && !b.inconsistent)
                    .map(|b| b.name.as_str())
                    .collect();
                if current.is_some_and(|b| !b.recording) {
                    actions.push(bitmap_action("block-dirty-bitmap-enable", &node, &want));
                }
                if !others.is_empty() {
                    actions.push(json!({"type": "block-dirty-bitmap-merge",
                        "data": {"node": node, "target": want, "bitmaps": others}}));
                }
            }
            for b in ours
                .iter()
                .filter(|b| !(b.name == want && matches!(state, QemuDiskState::Tracking { .. })))
            {
                actions.push(bitmap_action("block-dirty-bitmap-remove", &node, &b.name));
            }
            if !actions.is_empty() {
                self.qmp.transaction(actions)?;
            }
            self.disks[i].state = state;
        }
        Ok(())
    }

    fn overlay_path(&self, i: usize) -> PathBuf {
        self.config
            .work_dir
            .join(format!("{PREFIX}overlay-{i}.qcow2"))
    }

    fn wait(&mut self, what: &str, mut done: impl FnMut(&mut Qmp) -> Result<bool>) -> Result<()> {
        let t = Instant::now();
        while !done(&mut self.qmp)? {
            if t.elapsed() > self.config.timeout {
                return Err(qemu_error(format!(
                    "QEMU: {what} did not finish within {:?}",
                    self.config.timeout
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    fn del_export(&mut self, id: &str) -> Result<()> {
        let listed = |q: &mut Qmp| -> Result<bool> {
            let v = q.execute("query-block-exports", json!({}))?;
            Ok(v.as_array()
                .is_some_and(|a| a.iter().any(|e| e["id"].as_str() == Some(id))))
        };
        if listed(&mut self.qmp)? {
            self.qmp
                .execute("block-export-del", json!({"id": id, "mode": "hard"}))?;
        }
        self.wait(&format!("removing the export {id}"), |q| Ok(!listed(q)?))
    }

    /// Cancels a job and waits until it is gone (dismissing it when it
    /// waits for that).
    fn end_job(&mut self, id: &str) -> Result<()> {
        let status = |q: &mut Qmp| -> Result<Option<String>> {
            let v = q.execute("query-jobs", json!({}))?;
            Ok(v.as_array().and_then(|a| {
                a.iter()
                    .find(|j| j["id"].as_str() == Some(id))
                    .map(|j| j["status"].as_str().unwrap_or_default().to_string())
            }))
        };
        match status(&mut self.qmp)?.as_deref() {
            None => return Ok(()),
            Some("concluded") => {}
            Some(_) => {
                self.qmp
                    .execute("job-cancel", json!({"id": id}))
                    .map(drop)
                    .or_else(|e| {
                        // It may have ended between the query and now.
                        if status(&mut self.qmp)?.is_none() {
                            Ok(())
                        } else {
                            Err(e)
                        }
                    })?;
            }
        }
        self.wait(&format!("ending the job {id}"), |q| {
            match status(q)?.as_deref() {
                None => Ok(true),
                Some("concluded") => {
                    q.execute("job-dismiss", json!({"id": id}))?;
                    Ok(false)
                }
                Some(_) => Ok(false),
            }
        })
    }

    /// Runs a QEMU job to its end; its error, if any, is QEMU's.
    fn run_job(&mut self, id: &str, command: &str, arguments: Value) -> Result<()> {
        self.qmp.execute(command, arguments)?;
        let mut error = None;
        self.wait(&format!("the job {id}"), |q| {
            let v = q.execute("query-jobs", json!({}))?;
            let job = v
                .as_array()
                .and_then(|a| a.iter().find(|j| j["id"].as_str() == Some(id)).cloned());
            match job {
                None => Ok(true),
                Some(j) if j["status"] == "concluded" => {
                    error = j["error"].as_str().map(str::to_string);
                    q.execute("job-dismiss", json!({"id": id}))?;
                    Ok(true)
                }
                Some(_) => Ok(false),
            }
        })?;
        match error {
            Some(e) => Err(qemu_error(format!(
                "QEMU's job {id} ({command}) failed: {e}"
            ))),
            None => Ok(()),
        }
    }

    /// Step 1: the fleecing overlay of disk `i`, backed by its node.
    fn add_overlay(&mut self, i: usize) -> Result<()> {
        let path = self.overlay_path(i);
        std::fs::File::create(&path)
            .map_err(|e| Error::io("create the fleecing overlay", e).with_path(&path))?;
        let (file, overlay) = (format!("{PREFIX}ff{i}"), format!("{PREFIX}fl{i}"));
        self.qmp.execute(
            "blockdev-add",
            json!({"driver": "file", "node-name": file, "filename": path.to_string_lossy()}),
        )?;
        let size = self.disks[i].spool.head().geometry.size();
        let job = format!("{PREFIX}cr{i}");
        self.run_job(
            &job,
            "blockdev-create",
            json!({"job-id": job, "options": {"driver": "qcow2", "file": file, "size": size}}),
        )?;
        let node = self.disks[i].node.clone();
        self.qmp.execute(
            "blockdev-add",
            json!({"driver": "qcow2", "node-name": overlay, "file": file, "backing": node}),
        )?;
        Ok(())
    }

    /// Step 4 (and the clean-up after any failure): the export, the job,
    /// the overlay and its file of disk `i`, whichever exist.
    fn remove_fleece(&mut self, i: usize) -> Result<()> {
        self.del_export(&format!("{PREFIX}ex{i}"))?;
        self.end_job(&format!("{PREFIX}bk{i}"))?;
        let nodes = self.nodes()?;
        for name in [format!("{PREFIX}fl{i}"), format!("{PREFIX}ff{i}")] {
            if nodes.iter().any(|(n, _)| *n == name) {
                self.qmp
                    .execute("blockdev-del", json!({"node-name": name}))?;
            }
        }
        let _ = std::fs::remove_file(self.overlay_path(i));
        Ok(())
    }

    /// One cycle of every disk at one instant; see the module docs. A
    /// disk that requires a resync fails the cycle (its reason given)
    /// until [`resync`](Self::resync) ran; a spool over its limit defers
    /// it.
    pub fn cycle(&mut self, cycle: &CycleOptions) -> Result<QemuCycle> {
        for d in &self.disks {
            if let QemuDiskState::ResyncRequired { reason } = &d.state {
                return Err(Error::new(
                    ErrorKind::ResyncRequired,
                    format!("node {:?}: {reason}", d.node),
                ));
            }
            if d.spool.over_limit() {
                return Ok(QemuCycle::Deferred {
                    node: d.node.clone(),
                });
            }
        }
        self.run_cycle(cycle, &[]).map(QemuCycle::Written)
    }

    /// A digest resync of every disk that requires one (`remotes`: the
    /// replica's block digests of each, in the order of the disks; the
    /// others are cut with them in a delta or full log as usual): the
    /// chain restarts at the replica's point and the log holds exactly the
    /// blocks whose content differs at the cut.
    pub fn resync(&mut self, remotes: &[(String, BlockDigests)]) -> Result<Vec<LogSummary>> {
        for d in &self.disks {
            if matches!(d.state, QemuDiskState::ResyncRequired { .. })
                && !remotes.iter().any(|(n, _)| *n == d.node)
            {
                return Err(Error::invalid(format!(
                    "no replica digests for node {:?}, which requires a resync",
                    d.node
                )));
            }
        }
        self.run_cycle(&CycleOptions::default(), remotes)
    }

    fn run_cycle(
        &mut self,
        cycle: &CycleOptions,
        remotes: &[(String, BlockDigests)],
    ) -> Result<Vec<LogSummary>> {
        let n = self.disks.len();
        // What each disk's log is, and the bitmap for the point it makes.
        let mut plans = Vec::with_capacity(n);
        for d in &self.disks {
            let remote = remotes
                .iter()
                .find(|(node, _)| *node == d.node)
                .map(|(_, r)| r);
            let head = d.spool.head();
            let (kind, next) = match (&d.state, remote) {
                // The chain restarts at the replica's point, in the next
                // epoch (as `Source::resync_blocks` moves it).
                (_, Some(r)) => (
                    LogKind::Resync,
                    ChainPoint {
                        epoch: r.epoch + 1,
                        sequence: r.sequence + 1,
                        ..head
                    },
                ),
                (QemuDiskState::Initial, None) => (
                    LogKind::Full,
                    ChainPoint {
                        sequence: 1,
                        ..head
                    },
                ),
                (_, None) => (
                    LogKind::Delta,
                    ChainPoint {
                        sequence: head.sequence + 1,
                        ..head
                    },
                ),
            };
            let current = match &d.state {
                QemuDiskState::Tracking { bitmap } if kind == LogKind::Delta => {
                    Some(bitmap.clone())
                }
                _ => None,
            };
            plans.push((kind, bitmap_name(&next), current, remote));
        }
        let group = if n > 1 {
            Some(GroupInfo {
                id: crate::id::DiskId::random()?.0,
                members: n as u32,
            })
        } else {
            None
        };
        let opts = CycleOptions {
            group,
            ..cycle.clone()
        };

        // Steps 1 and 2.
        let prepared = (|| {
            for i in 0..n {
                self.add_overlay(i)?;
            }
            let mut actions = Vec::new();
            for (i, (d, (_, next, current, _))) in self.disks.iter().zip(&plans).enumerate() {
                actions.push(json!({"type": "block-dirty-bitmap-add", "data": {
                    "node": d.node, "name": next, "persistent": d.persistent,
                    "granularity": d.spool.head().geometry.block_size()}}));
                if let Some(c) = current {
                    actions.push(bitmap_action("block-dirty-bitmap-disable", &d.node, c));
                }
                actions.push(json!({"type": "blockdev-backup", "data": {
                    "job-id": format!("{PREFIX}bk{i}"), "device": d.node,
                    "target": format!("{PREFIX}fl{i}"), "sync": "none"}}));
            }
            self.qmp.transaction(actions)
        })();
        if let Err(e) = prepared {
            let _ = self.clean_up(n);
            return Err(e);
        }
        // The instant is taken: from here a failure puts the bitmaps back.
        let written = (|| {
            let mut exports = Vec::with_capacity(n);
            for (i, (_, _, current, _)) in plans.iter().enumerate() {
                let export = format!("{PREFIX}ex{i}");
                let bitmaps: Vec<&String> = current.iter().collect();
                self.qmp.execute(
                    "block-export-add",
                    json!({"type": "nbd", "id": export, "node-name": format!("{PREFIX}fl{i}"),
                           "name": export, "writable": false, "bitmaps": bitmaps}),
                )?;
                exports.push((self.disks[i].node.clone(), export));
            }
            if let Some(hook) = &self.config.on_cut {
                hook(&CutViews {
                    nbd_socket: self.nbd.clone(),
                    exports,
                });
            }
            let mut written = Vec::with_capacity(n);
            for (i, (kind, _, current, remote)) in plans.iter().enumerate() {
                match self.write_log(i, *kind, current.as_deref(), *remote, &opts) {
                    Ok(s) => written.push(s),
                    Err(e) => {
                        for s in &written {
                            let _ = self.disks[s.0].spool.discard_unpushed(s.1.header.sequence);
                        }
                        return Err(e);
                    }
                }
            }
            Ok(written)
        })();
        let cleaned = self.clean_up(n);
        let written = match written.and_then(|w| cleaned.map(|()| w)) {
            Ok(w) => w,
            Err(e) => {
                self.roll_back(&plans);
                return Err(e);
            }
        };
        let mut summaries = Vec::with_capacity(n);
        for (i, summary) in written {
            let (_, next, current, _) = &plans[i];
            let made = ChainPoint {
                epoch: summary.header.epoch,
                sequence: summary.header.sequence,
                ..self.disks[i].spool.head()
            };
            if bitmap_name(&made) != *next {
                // Never expected: the bitmap would not match the head.
                let _ = self.disks[i]
                    .spool
                    .discard_unpushed(summary.header.sequence);
                self.roll_back(&plans);
                return Err(Error::new(
                    ErrorKind::Misuse,
                    format!(
                        "node {:?}: the log made {} where {next} was cut",
                        self.disks[i].node,
                        bitmap_name(&made)
                    ),
                ));
            }
            self.disks[i].spool.push(&summary)?;
            if let Some(c) = current {
                let node = self.disks[i].node.clone();
                self.qmp.execute(
                    "block-dirty-bitmap-remove",
                    json!({"node": node, "name": c}),
                )?;
            }
            self.disks[i].state = QemuDiskState::Tracking {
                bitmap: next.clone(),
            };
            summaries.push(summary);
        }
        Ok(summaries)
    }

    /// Removes every disk's fleecing parts; the first failure is returned
    /// after all were tried.
    fn clean_up(&mut self, n: usize) -> Result<()> {
        let mut first = Ok(());
        for i in 0..n {
            if let Err(e) = self.remove_fleece(i) {
                first = first.and(Err(e));
            }
        }
        first
    }

    /// After a failed cycle: each new bitmap merged into the current one,
    /// which records again, and removed; without a current one (a full or
    /// resync log), the new one is removed and the disk stays as it was.
    fn roll_back(&mut self, plans: &[(LogKind, String, Option<String>, Option<&BlockDigests>)]) {
        for (d, (_, next, current, _)) in self.disks.iter().zip(plans) {
            let mut actions = Vec::new();
            if let Some(c) = current {
                actions.push(bitmap_action("block-dirty-bitmap-enable", &d.node, c));
                actions.push(json!({"type": "block-dirty-bitmap-merge",
                    "data": {"node": d.node, "target": c, "bitmaps": [next]}}));
            }
            actions.push(bitmap_action("block-dirty-bitmap-remove", &d.node, next));
            // When this fails too (QEMU gone), the next open finds the
            // bitmaps and recovers the same way.
            let _ = self.qmp.transaction(actions);
        }
    }

    /// Step 3 for disk `i`: export its overlay, read what the log needs,
    /// commit the log (not yet pushed).
    fn write_log(
        &mut self,
        i: usize,
        kind: LogKind,
        current: Option<&str>,
        remote: Option<&BlockDigests>,
        opts: &CycleOptions,
    ) -> Result<(usize, LogSummary)> {
        let export = format!("{PREFIX}ex{i}");
        let mut contexts = vec![ALLOCATION.to_string()];
        if let Some(c) = current {
            contexts.push(format!("qemu:dirty-bitmap:{c}"));
        }
        let client = NbdClient::connect_unix(
            &self.nbd,
            &NbdOptions {
                export: export.clone(),
                contexts,
                timeout: Some(self.config.timeout),
                ..NbdOptions::default()
            },
        )?;
        let view = NbdView::new(client);
        let d = &self.disks[i];
        let g = d.spool.head().geometry;
        let mut t = TransferOptions::from(self.config.writer);
        let result = (|| {
            let mut source = d.spool.source();
            let f = match (kind, remote) {
                (LogKind::Resync, Some(r)) => {
                    d.spool.restart(ChainPoint {
                        epoch: r.epoch,
                        sequence: r.sequence,
                        digest: r.digest,
                        created_ns: 0,
                        geometry: r.geometry,
                    })?;
                    source = d.spool.source();
                    source.geometry = g;
                    let differ = source.resync_blocks(&view, r, &mut t)?;
                    let mut f = d
                        .spool
                        .begin(source.header_for(LogKind::Resync, opts)?, t.writer)?;
                    send_blocks(&view, &mut f, &differ, &mut t)?;
                    f
                }
                (LogKind::Full, _) => {
                    let mut f = d
                        .spool
                        .begin(source.header_for(LogKind::Full, opts)?, t.writer)?;
                    copy_disk(&view, &mut f, &mut t, None)?;
                    f
                }
                _ => {
                    let ctx = format!("qemu:dirty-bitmap:{}", current.unwrap_or_default());
                    let dirty = dirty_blocks(&view.map(&ctx)?, g);
                    let mut f = d
                        .spool
                        .begin(source.header_for(LogKind::Delta, opts)?, t.writer)?;
                    read_dirty(&view, &mut f, &dirty, g)?;
                    f
                }
            };
            f.commit()
        })();
        view.into_client().disconnect();
        result.map(|s| (i, s))
    }

    /// Stops blockrep's NBD server (when it started one). The bitmaps
    /// stay: the next open continues from them.
    pub fn close(mut self) -> Result<()> {
        if self.own_nbd {
            self.qmp.execute("nbd-server-stop", json!({}))?;
            let _ = std::fs::remove_file(&self.nbd);
        }
        Ok(())
    }
}

/// QEMU's block nodes by name, as `query-named-block-nodes` gives them.
fn query_nodes(qmp: &mut Qmp) -> Result<Vec<(String, NodeInfo)>> {
    let v = qmp.execute("query-named-block-nodes", json!({"flat": true}))?;
    let list = v
        .as_array()
        .ok_or_else(|| Error::corrupt("QMP: query-named-block-nodes is not a list"))?;
    Ok(list
        .iter()
        .filter_map(|n| {
            let name = n["node-name"].as_str()?.to_string();
            let bitmaps = n["dirty-bitmaps"]
                .as_array()
                .map(|b| {
                    b.iter()
                        .filter_map(|b| {
                            Some(BitmapInfo {
                                name: b["name"].as_str()?.to_string(),
                                recording: b["recording"].as_bool().unwrap_or(false),
                                inconsistent: b["inconsistent"].as_bool().unwrap_or(false),
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            Some((
                name,
                NodeInfo {
                    driver: n["drv"].as_str().unwrap_or_default().to_string(),
                    size: n["image"]["virtual-size"].as_u64().unwrap_or(0),
                    bitmaps,
                },
            ))
        })
        .collect())
}

/// The size in bytes of QEMU's block node `node` (to create its spool
/// before the first [`QemuSource::open`]).
pub fn node_size(qmp: &mut Qmp, node: &str) -> Result<u64> {
    query_nodes(qmp)?
        .into_iter()
        .find(|(n, _)| n == node)
        .map(|(_, info)| info.size)
        .ok_or_else(|| Error::invalid(format!("QEMU has no block node named {node:?}")))
}

fn bitmap_action(action: &str, node: &str, name: &str) -> Value {
    json!({"type": action, "data": {"node": node, "name": name}})
}

/// Reads the `dirty` blocks of the view and adds them to the log in
/// order, a window of NBD requests in flight at a time: a cycle of many
/// small scattered extents costs a round trip per window, not per extent.
fn read_dirty(
    view: &NbdView,
    f: &mut crate::log::LogFile,
    dirty: &[Extent],
    g: Geometry,
) -> Result<()> {
    /// The largest read: 1 MiB.
    const PART_BYTES: u64 = 1 << 20;
    let per = (PART_BYTES / u64::from(g.block_size())).max(1);
    let parts = dirty.iter().flat_map(|e| {
        (e.start..e.end())
            .step_by(per as usize)
            .map(move |b| Extent::new(b, per.min(e.end() - b)))
    });
    let mut batch: Vec<Extent> = Vec::with_capacity(crate::nbd::WINDOW);
    let mut buf = Vec::new();
    let mut flush = |batch: &mut Vec<Extent>| -> Result<()> {
        let lens: Vec<(u64, usize)> = batch
            .iter()
            .map(|&e| {
                let (off, len) = g.extent_bytes(e);
                (off, len as usize)
            })
            .collect();
        buf.resize(lens.iter().map(|l| l.1).sum(), 0);
        {
            let mut rest = buf.as_mut_slice();
            let mut reads = Vec::with_capacity(lens.len());
            for &(off, len) in &lens {
                let (head, tail) = rest.split_at_mut(len);
                reads.push((off, head));
                rest = tail;
            }
            view.read_many(&mut reads)?;
        }
        let mut at = 0;
        for (e, (_, len)) in batch.drain(..).zip(lens) {
            f.add_extent(e, &buf[at..at + len])?;
            at += len;
        }
        Ok(())
    };
    for part in parts {
        batch.push(part);
        if batch.len() == crate::nbd::WINDOW {
            flush(&mut batch)?;
        }
    }
    if !batch.is_empty() {
        flush(&mut batch)?;
    }
    Ok(())
}

/// The blocks covered by the dirty extents of a bitmap map.
fn dirty_blocks(map: &[crate::nbd::NbdExtent], g: Geometry) -> Vec<Extent> {
    let bs = u64::from(g.block_size());
    let mut out: Vec<Extent> = Vec::new();
    for e in map.iter().filter(|e| e.flags & STATE_DIRTY != 0) {
        let first = e.offset / bs;
        let end = (e.offset + e.len).div_ceil(bs).min(g.block_count());
        if end <= first {
            continue;
        }
        match out.last_mut() {
            Some(l) if l.end() >= first => {
                let new_end = l.end().max(end);
                *l = Extent::new(l.start, new_end - l.start);
            }
            _ => out.push(Extent::new(first, end - first)),
        }
    }
    out
}
