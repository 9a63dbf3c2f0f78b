//! The replica: a disk's copy on the secondary site, its history of
//! recovery points, and a crash-safe applier of delta logs.
//!
//! A replica lives in a [`Dir`]: the image (`image`, or a storage the
//! caller gives), the state record (`state`) and one undo log per point
//! (`undo-<sequence>`). The image always holds the newest point; undo log N,
//! in the delta-log format, holds what log N overwrote, so it turns point N
//! back into point N-1.
//!
//! Applying log N: verify the whole log (it is a [`MappedLog`], validated
//! when opened) and that it follows the replica (disk, epoch, sequence,
//! digest); write and sync undo N and rename it into place, which records
//! "applying N"; write the blocks; sync; record "at N". Opening after a
//! crash in between rolls back with undo N first, so the replica is at
//! exactly N-1 or N.

mod group;
mod promote;
mod retention;
mod state;
mod view;

pub use group::ReplicaGroup;
pub use promote::{AdoptAt, FailoverPhase};
pub(crate) use promote::{FailoverRecord, OVERLAY};
pub use retention::RetentionPolicy;
pub use state::PointInfo;
pub use view::{OverlayView, PointView};

use crate::error::{Detail, Error, ErrorKind, Result};
use crate::geometry::BlockSet;
use crate::geometry::{Extent, Geometry};
use crate::io::{Dir, DirLock, ReadAhead, Storage, WriteBehind};
use crate::log::{
    block_digests, BlockDigests, Digest, LogFile, LogHeader, LogKind, LogReader, LogSummary,
    MappedLog, ReadOptions, WriterOptions,
};
use parking_lot::{Mutex, RwLock};
use state::{Phase, State};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const IMAGE: &str = "image";
/// Raw bytes per undo-log record: a view reading one block from an undo
/// log decodes the record that holds it, so small records keep views near
/// the image's speed (benches/apply.rs, `view_read`: 2.2x the image at 64
/// KiB, 1.4x at 16 KiB); applies were within noise of 64 KiB.
const UNDO_RECORD_BYTES: usize = 16 << 10;
/// Bytes read or zeroed at a time.
const CHUNK: u64 = 1 << 20;

fn undo_name(seq: u64) -> String {
    format!("undo-{seq:020}")
}

/// What [`Replica::apply`] did, naming the log by its identity: sequence
/// and content digest. A transport acknowledges exactly this pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// The log was applied; the replica is at its sequence.
    Applied {
        /// The log's sequence.
        sequence: u64,
        /// The content digest after it.
        digest: Digest,
    },
    /// The same log (same sequence and digest) was applied before;
    /// nothing changed.
    AlreadyApplied {
        /// The log's sequence.
        sequence: u64,
        /// The content digest after it, as the replica recorded it.
        digest: Digest,
    },
}

impl ApplyOutcome {
    /// The log's sequence.
    pub fn sequence(&self) -> u64 {
        match *self {
            ApplyOutcome::Applied { sequence, .. }
            | ApplyOutcome::AlreadyApplied { sequence, .. } => sequence,
        }
    }

    /// The content digest after the log, which the acknowledgement names.
    pub fn digest(&self) -> Digest {
        match *self {
            ApplyOutcome::Applied { digest, .. } | ApplyOutcome::AlreadyApplied { digest, .. } => {
                digest
            }
        }
    }

    /// Whether this call applied it (not an earlier one).
    pub fn applied_now(&self) -> bool {
        matches!(self, ApplyOutcome::Applied { .. })
    }
}

/// A disk's replica; see the module docs.
///
/// A handle: cloning it is cheap and every clone works on the same replica
/// (applies serialise inside), so views, exports and received logs keep
/// their own clone.
#[derive(Clone)]
pub struct Replica {
    s: Arc<Shared>,
}

/// The replica's state, shared by every handle.
struct Shared {
    /// Keeps other handles (processes) off the directory.
    _lock: DirLock,
    dir: Arc<dyn Dir>,
    image: Arc<dyn Storage>,
    /// The latest point's size in bytes (the block size never changes);
    /// kept apart so readers need no lock. Changed under `state` after
    /// the undo log that restores the old size is registered.
    size: AtomicU64,
    block_size: u32,
    state: Mutex<State>,
    /// The undo logs of the retained points, by sequence. A view holds this
    /// for reading while it looks a block up and reads the image; an apply
    /// registers its undo log here before it writes the image, so a view
    /// never sees a block of a newer point.
    undo: RwLock<BTreeMap<u64, Arc<MappedLog>>>,
    /// Points pinned by open views, exports and rollbacks, with counts.
    /// Locked after `state` when both are needed.
    pins: Mutex<BTreeMap<u64, usize>>,
    /// Set once the replica was promoted (failover): no log applies.
    failover: Mutex<Option<FailoverRecord>>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("state", &*self.s.state.lock())
            .finish()
    }
}

impl Replica {
    /// Whether `dir` holds a replica: its state exists. A directory left
    /// by a creation that did not finish (a partial image, no state) holds
    /// none, and [`create`](Self::create) starts over in it.
    pub fn exists(dir: &dyn Dir) -> bool {
        dir.exists(state::STATE)
    }

    /// Creates a replica in `dir` from a full log, with the image in `dir`.
    ///
    /// A directory that holds a replica already is refused before anything
    /// in it is touched; the image is written under a temporary name and
    /// renamed into place, so neither a second call nor a crash can damage
    /// an existing replica.
    pub fn create(dir: Arc<dyn Dir>, full: &MappedLog) -> Result<Self> {
        let lock = dir.lock()?;
        Self::create_locked(dir, lock, full)
    }

    /// Creates a replica in `dir` from a full log that stands for a point
    /// of a chain whose content digest is `chain_digest`: a base image
    /// compacted from the chain holds the same blocks as that point under
    /// another log digest, and the chain's later logs build on the
    /// chain's digest. The caller vouches for the pairing (the object
    /// store's sealed manifest does); the full log is verified whole as
    /// usual.
    pub fn create_rebased(
        dir: Arc<dyn Dir>,
        full: &MappedLog,
        chain_digest: Digest,
    ) -> Result<Self> {
        let lock = dir.lock()?;
        Self::create_inner(dir, lock, full, Some(chain_digest))
    }

    fn create_locked(dir: Arc<dyn Dir>, lock: DirLock, full: &MappedLog) -> Result<Self> {
        Self::create_inner(dir, lock, full, None)
    }

    fn create_inner(
        dir: Arc<dyn Dir>,
        lock: DirLock,
        full: &MappedLog,
        chain_digest: Option<Digest>,
    ) -> Result<Self> {
        Self::create_filled(dir, lock, chain_digest, |image| {
            Self::fill_image(image, &mut full.reader()?, true)
        })
    }

    /// Creates a replica in `dir` from a full log read from `r` as it
    /// arrives (a download, a pipe), with no copy of the log: each record
    /// is verified and written to the image as it comes, the trailer
    /// verified at the end. The replica exists only once the whole log
    /// verified and stands for `expect` (its sequence and its digest), when
    /// given; a log truncated, altered or of another point leaves none.
    /// `chain_digest` is as for [`create_rebased`](Self::create_rebased).
    pub fn create_streamed(
        dir: Arc<dyn Dir>,
        r: impl Read,
        opts: &ReadOptions,
        expect: Option<(u64, Digest)>,
        chain_digest: Option<Digest>,
    ) -> Result<Self> {
        let lock = dir.lock()?;
        let strict = ReadOptions {
            tail: crate::log::TailPolicy::Refuse,
            ..opts.clone()
        };
        Self::create_filled(dir, lock, chain_digest, |image| {
            let mut reader = LogReader::new(r, strict)?;
            let st = Self::fill_image(image, &mut reader, true)?;
            let mut more = [0u8; 1];
            let mut rest = reader.into_inner();
            if rest
                .read(&mut more)
                .map_err(|e| Error::io("read the full log", e))?
                != 0
            {
                return Err(
                    Error::corrupt("bytes after the full log's end").with_sequence(st.applied)
                );
            }
            match expect {
                Some((seq, digest)) if (st.applied, st.digest) != (seq, digest) => {
                    Err(Error::mismatch(format!(
                        "the full log stands for point {} (digest {}), not {seq} (digest {digest})",
                        st.applied, st.digest
                    ))
                    .with_sequence(st.applied))
                }
                _ => Ok(st),
            }
        })
    }

    /// Makes the image with `fill`, then the replica of the state it
    /// returns; a failure removes the image made.
    fn create_filled(
        dir: Arc<dyn Dir>,
        lock: DirLock,
        chain_digest: Option<Digest>,
        fill: impl FnOnce(&dyn Storage) -> Result<State>,
    ) -> Result<Self> {
        refuse_existing(&*dir)?;
        let partial = format!("{IMAGE}.partial");
        let image = dir.create(&partial)?;
        let mut st = match fill(&*image) {
            Ok(st) => st,
            Err(e) => {
                drop(image);
                let _ = dir.remove(&partial);
                return Err(e);
            }
        };
        if let Some(d) = chain_digest {
            st.digest = d;
            for p in &mut st.points {
                p.digest = d;
            }
        }
        dir.rename(&partial, IMAGE)?;
        dir.sync()?;
        // The replica exists once its state does; a crash before leaves none.
        st.store(&*dir)?;
        Ok(Replica::assemble(dir, lock, image, st))
    }

    /// Creates a replica in `dir` whose image `fill` writes (into a new,
    /// empty file; `fill` sets its length and syncs it) while it makes the
    /// full log's summary, which the replica then stands for: a local
    /// replica made in the same pass that reads the disk, with no log
    /// written anywhere. The caller vouches that the image holds what the
    /// log would ([`Source::initial_sync_into`](crate::source::Source::initial_sync_into)
    /// writes both from one read). A failure leaves no replica.
    pub(crate) fn create_seeded(
        dir: Arc<dyn Dir>,
        fill: impl FnOnce(&dyn Storage) -> Result<LogSummary>,
    ) -> Result<(Self, LogSummary)> {
        let lock = dir.lock()?;
        let mut summary = None;
        let r = Self::create_filled(dir, lock, None, |image| {
            let s = fill(image)?;
            if s.header.kind != LogKind::Full {
                return Err(Error::new(
                    ErrorKind::Misuse,
                    format!(
                        "a replica starts from a full log, not a {:?} log",
                        s.header.kind
                    ),
                ));
            }
            let st = state_of_full(&s.header, s.trailer.digest);
            summary = Some(s);
            Ok(st)
        })?;
        Ok((r, summary.expect("filled")))
    }

    /// [`create`](Self::create) from the full log file at `path` (from
    /// outside: a caller's path), copied into `dir` first so memory stays
    /// bounded and no foreign file is mapped.
    pub fn create_from_file(dir: Arc<dyn Dir>, path: impl AsRef<Path>) -> Result<Self> {
        Self::create_from_file_checked(dir, path, |_| Ok(()))
    }

    /// [`create_from_file`](Self::create_from_file), with `check` run on
    /// the verified log before anything of the replica exists: a caller
    /// refuses a log that is not the one it was told of (the replica
    /// server checks the disk, sequence, digest and size a push claims).
    pub fn create_from_file_checked(
        dir: Arc<dyn Dir>,
        path: impl AsRef<Path>,
        check: impl FnOnce(&MappedLog) -> Result<()>,
    ) -> Result<Self> {
        let lock = dir.lock()?;
        refuse_existing(&*dir)?;
        let staged = stage_file(&*dir, path.as_ref())?;
        let r = MappedLog::open_in(&*dir, &staged, &ReadOptions::default())
            .and_then(|full| check(&full).map(|()| full))
            .and_then(|full| Self::create_locked(dir.clone(), lock, &full));
        let _ = dir.remove(&staged);
        r
    }

    /// Creates a replica from a full log onto a caller-given image (a block
    /// device, say), whose content is overwritten.
    pub fn create_with_image(
        dir: Arc<dyn Dir>,
        image: Arc<dyn Storage>,
        full: &MappedLog,
    ) -> Result<Self> {
        let lock = dir.lock()?;
        refuse_existing(&*dir)?;
        let st = Self::fill_image(&*image, &mut full.reader()?, false)?;
        // The replica exists once its state does; a crash before leaves none.
        st.store(&*dir)?;
        Ok(Replica::assemble(dir, lock, image, st))
    }

    /// Writes the full log's point onto `image` and syncs it; returns the
    /// state recording that point. `fresh`: the image was just created, so
    /// it reads as zeros already.
    fn fill_image<R: Read>(
        image: &dyn Storage,
        log: &mut LogReader<R>,
        fresh: bool,
    ) -> Result<State> {
        let h = log.header().clone();
        if h.kind != LogKind::Full {
            return Err(Error::mismatch(format!(
                "a replica starts from a full log, not a {:?} log",
                h.kind
            ))
            .with_sequence(h.sequence));
        }
        image.set_len(h.geometry.size())?;
        write_records(image, h.geometry, log, fresh)?;
        let digest = log
            .trailer()
            .ok_or_else(|| {
                Error::corrupt("the full log ended before its trailer").with_sequence(h.sequence)
            })?
            .digest;
        image.sync()?;
        Ok(state_of_full(&h, digest))
    }

    /// The handle over a locked directory: the lock lives as long as the
    /// last clone.
    fn assemble(dir: Arc<dyn Dir>, lock: DirLock, image: Arc<dyn Storage>, st: State) -> Self {
        Replica {
            s: Arc::new(Shared {
                _lock: lock,
                dir,
                image,
                size: AtomicU64::new(st.geometry.size()),
                block_size: st.geometry.block_size(),
                state: Mutex::new(st),
                undo: RwLock::new(BTreeMap::new()),
                pins: Mutex::new(BTreeMap::new()),
                failover: Mutex::new(None),
            }),
        }
    }

    /// Opens the replica in `dir` (image in `dir`), finishing or undoing an
    /// operation a crash interrupted.
    pub fn open(dir: Arc<dyn Dir>) -> Result<Self> {
        let image = dir.open(IMAGE)?;
        Self::open_with_image(dir, image)
    }

    /// Opens the replica in `dir` with a caller-given image.
    pub fn open_with_image(dir: Arc<dyn Dir>, image: Arc<dyn Storage>) -> Result<Self> {
        let lock = dir.lock()?;
        let st = State::load(&*dir)?;
        let r = Replica::assemble(dir, lock, image, st);
        r.recover()?;
        let st = r.s.state.lock();
        let mut undo = r.s.undo.write();
        for p in st.points.iter().skip(1) {
            undo.insert(p.sequence, Arc::new(r.read_undo(p.sequence)?));
        }
        drop((undo, st));
        r.load_failover()?;
        Ok(r)
    }

    /// Rolls an interrupted apply or rollback step back to the previous
    /// point, and removes files no point needs.
    fn recover(&self) -> Result<()> {
        let mut st = self.s.state.lock();
        // A complete undo log for the next sequence means an apply stopped
        // after its undo log became durable: the image may hold part of it.
        let next = st.applied + 1;
        if st.phase == Phase::Idle && self.s.dir.exists(&undo_name(next)) {
            st.phase = Phase::Applying(next);
        }
        self.finish_interrupted(&mut st)?;
        self.remove_strays(&st)
    }

    /// Undoes the step `st` says was under way, if any. Also runs before
    /// each operation, for a step whose failure could not be undone at once.
    fn finish_interrupted(&self, st: &mut State) -> Result<()> {
        match st.phase {
            Phase::Applying(n) | Phase::RollingBack(n) => self.undo_step(st, n),
            Phase::Idle => Ok(()),
        }
    }

    /// Applies undo `n` to the image and records the point before it.
    /// Idempotent: a crash during it leaves the phase set and it runs again.
    fn undo_step(&self, st: &mut State, n: u64) -> Result<()> {
        let undo = self.read_undo(n)?;
        let before = undo.header().geometry;
        if before.size() > self.s.image.len()? {
            self.s.image.set_len(before.size())?;
        }
        write_log(&*self.s.image, &undo, false)?;
        if before.size() != self.s.image.len()? {
            self.s.image.set_len(before.size())?;
        }
        self.s.image.sync()?;
        let mut next = st.clone();
        next.phase = Phase::Idle;
        next.geometry = before;
        if let Some(last) = next.points.last() {
            if last.sequence == n {
                next.points.pop();
            }
        }
        if let Some(p) = next.points.last() {
            next.applied = p.sequence;
            next.digest = p.digest;
            next.epoch = p.epoch;
        }
        next.store(&*self.s.dir)?;
        *st = next;
        self.s.undo.write().remove(&n);
        self.s.size.store(before.size(), Ordering::Release);
        self.s.dir.remove(&undo_name(n))?;
        Ok(())
    }

    fn read_undo(&self, n: u64) -> Result<MappedLog> {
        self.read_undo_file(&undo_name(n), n)
    }

    fn read_undo_file(&self, name: &str, n: u64) -> Result<MappedLog> {
        let log = MappedLog::open_in(&*self.s.dir, name, &ReadOptions::default())?;
        if log.header().kind != LogKind::Undo || log.header().sequence != n {
            return Err(Error::corrupt(format!(
                "{name} is not the undo log of point {n}"
            )));
        }
        Ok(log)
    }

    /// Removes partial files and undo logs of points no longer kept, after
    /// finishing a merge the state already recorded (see
    /// [`retention`](self::retention)).
    fn remove_strays(&self, st: &State) -> Result<()> {
        for name in self.s.dir.list()? {
            let Some(base) = name.strip_suffix(".merged") else {
                continue;
            };
            let Some(x) = base
                .strip_prefix("undo-")
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            let pred = st
                .points
                .windows(2)
                .find(|w| w[1].sequence == x)
                .map(|w| w[0].sequence);
            let merged = self.read_undo_file(&name, x)?;
            if pred.is_some() && pred == Some(merged.header().base_sequence) {
                self.s.dir.rename(&name, base)?;
                self.s.dir.sync()?;
            } else {
                self.s.dir.remove(&name)?;
            }
        }
        let keep: Vec<String> = st
            .points
            .iter()
            .skip(1)
            .map(|p| undo_name(p.sequence))
            .collect();
        for name in self.s.dir.list()? {
            let stray =
                name.ends_with(".partial") || (name.starts_with("undo-") && !keep.contains(&name));
            if stray {
                self.s.dir.remove(&name)?;
            }
        }
        Ok(())
    }

    /// The disk's state: id, epoch, geometry, applied sequence, digest.
    pub fn status(&self) -> ReplicaStatus {
        let st = self.s.state.lock();
        ReplicaStatus {
            disk_id: st.disk_id,
            epoch: st.epoch,
            geometry: st.geometry,
            applied: st.applied,
            digest: st.digest,
        }
    }

    /// Whether `h` is the next log for this replica: `None` when it is,
    /// `Some` when it was applied already, an error naming what was
    /// expected otherwise.
    pub(crate) fn expects(&self, log: &MappedLog) -> Result<Option<ApplyOutcome>> {
        let (h, log_digest) = (log.header(), log.trailer().digest);
        let mut st = self.s.state.lock();
        self.finish_interrupted(&mut st)?;
        check_follows(&st, h, &log_digest)
    }

    /// The retention points, oldest first; the last is the latest.
    pub fn points(&self) -> Vec<PointInfo> {
        self.s.state.lock().points.clone()
    }

    /// The BLAKE3 digest of every block of the latest point, computed on
    /// `threads` threads (0: all cores), for the primary's digest resync.
    /// Applies wait meanwhile.
    pub fn block_digests(&self, threads: usize) -> Result<BlockDigests> {
        let st = self.s.state.lock();
        let blocks = block_digests(&*self.s.image, st.geometry, threads)?;
        Ok(BlockDigests {
            disk_id: st.disk_id,
            epoch: st.epoch,
            sequence: st.applied,
            digest: st.digest,
            geometry: st.geometry,
            blocks,
        })
    }

    /// Streams the encoded block digest list of the latest point (the
    /// bytes [`block_digests`](Self::block_digests) and
    /// [`BlockDigests::encode`] give) to `out` as it is computed, so
    /// memory stays bounded whatever the disk's size. `start` is called
    /// first with the list's length (a transport writes its head). Applies
    /// wait meanwhile, so the list is of one point.
    pub fn write_block_digests(
        &self,
        out: &mut dyn std::io::Write,
        threads: usize,
        start: impl FnOnce(&mut dyn std::io::Write, u64) -> Result<()>,
    ) -> Result<u64> {
        let st = self.s.state.lock();
        start(out, BlockDigests::encoded_len(st.geometry))?;
        let head = crate::log::ListHead {
            disk_id: st.disk_id,
            epoch: st.epoch,
            sequence: st.applied,
            digest: st.digest,
            geometry: st.geometry,
        };
        crate::log::write_digests(out, &head, &*self.s.image, threads)
    }

    /// Reads the latest point.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.s.image.read_at(buf, offset)
    }

    /// Applies a verified log. A log already applied is skipped; a log of
    /// another disk, an older epoch, a gap or another history is an error
    /// naming what was expected, and changes nothing.
    ///
    /// An I/O error (a full disk, say) during the apply returns the error
    /// with the replica still at its previous point, history intact, and a
    /// retry may succeed; a crash is undone on the next open.
    pub fn apply(&self, log: &MappedLog) -> Result<ApplyOutcome> {
        if let Some((_, point)) = self.failover_phase() {
            return Err(Error::new(
                ErrorKind::Misuse,
                format!("the replica was promoted at point {point}: no log applies"),
            )
            .with_sequence(log.header().sequence));
        }
        let mut st = self.s.state.lock();
        self.finish_interrupted(&mut st)?;
        let h = log.header();
        if let Some(done) = check_follows(&st, h, &log.trailer().digest)? {
            return Ok(done);
        }
        let n = h.sequence;
        let undo = self.write_undo(&st, log)?;
        let undo_bytes = undo.bytes().len() as u64;
        // A durable undo-N next to a state at N-1 is the "applying N"
        // record: from here a crash is undone on open.
        st.phase = Phase::Applying(n);
        self.s.undo.write().insert(n, Arc::new(undo));
        let size = h.geometry.size();
        let written = (|| {
            // Grow before the log's blocks land, shrink after.
            if size > st.geometry.size() {
                self.s.image.set_len(size)?;
            }
            write_log(&*self.s.image, log, false)?;
            if size < st.geometry.size() {
                self.s.image.set_len(size)?;
            }
            self.s.image.sync()
        })();
        if let Err(e) = written {
            // Put the previous point back now; if that fails too, the next
            // open does it.
            let _ = self.undo_step(&mut st, n);
            return Err(e.with_sequence(n));
        }
        let mut done = st.clone();
        done.phase = Phase::Idle;
        done.applied = n;
        done.epoch = h.epoch;
        done.geometry = h.geometry;
        done.digest = log.trailer().digest;
        done.points.push(point_of(h, done.digest, undo_bytes));
        if let Err(e) = done.store(&*self.s.dir) {
            // The file may hold "at N" now: store N-1 again (which, with
            // undo-N present, reads as "applying N") before undoing, so a
            // crash during the undo still ends at N-1. If even that fails,
            // the phase left in memory makes the next call (or open) undo N.
            let mut previous = st.clone();
            previous.phase = Phase::Idle;
            if previous.store(&*self.s.dir).is_ok() {
                let _ = self.undo_step(&mut st, n);
            }
            return Err(e.with_sequence(n));
        }
        let done_digest = done.digest;
        *st = done;
        self.s.size.store(size, Ordering::Release);
        Ok(ApplyOutcome::Applied {
            sequence: n,
            digest: done_digest,
        })
    }

    /// Applies the log file at `path` (from outside: a caller's path), as
    /// [`apply`](Self::apply) does. The file is copied into the replica's
    /// directory and verified there, so memory stays bounded whatever the
    /// log's size and no foreign file is mapped.
    pub fn apply_file(&self, path: impl AsRef<Path>) -> Result<ApplyOutcome> {
        self.apply_file_checked(path, |_| Ok(()))
    }

    /// [`apply_file`](Self::apply_file), with `check` run on the verified
    /// log before the replica is touched: a caller refuses a log that is
    /// not the one it was told of.
    pub fn apply_file_checked(
        &self,
        path: impl AsRef<Path>,
        check: impl FnOnce(&MappedLog) -> Result<()>,
    ) -> Result<ApplyOutcome> {
        let staged = stage_file(&*self.s.dir, path.as_ref())?;
        let r = MappedLog::open_in(&*self.s.dir, &staged, &ReadOptions::default())
            .and_then(|log| check(&log).map(|()| log))
            .and_then(|log| self.apply(&log));
        let _ = self.s.dir.remove(&staged);
        r
    }

    /// Applies a log arriving as a stream (from the transport): it is
    /// spooled in the replica's directory and verified whole before the
    /// replica is touched, so a broken transfer changes nothing. `opts` may
    /// name the disk and epoch expected.
    pub fn apply_stream(
        &self,
        mut stream: impl std::io::Read,
        opts: &ReadOptions,
    ) -> Result<ApplyOutcome> {
        let mut incoming = self.receive()?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io("receive log", e)),
            };
            incoming.write(&buf[..n])?;
        }
        incoming.apply(opts)
    }

    /// Starts receiving a log in chunks (as a transport pushes them); see
    /// [`IncomingLog`]. Several may be received at once.
    pub fn receive(&self) -> Result<IncomingLog> {
        let name = incoming_name()?;
        let file = self.s.dir.create(&name)?;
        Ok(IncomingLog {
            replica: self.clone(),
            name,
            file,
            pos: 0,
        })
    }

    /// Writes undo N: the image's current content of every block of `log`,
    /// as `undo-N`, synced and renamed into place. Returns its size.
    fn write_undo(&self, st: &State, log: &MappedLog) -> Result<MappedLog> {
        let h = log.header();
        let name = undo_name(h.sequence);
        let result = (|| {
            let mut uh =
                LogHeader::new(h.disk_id, st.geometry, LogKind::Undo, st.epoch, h.sequence)?;
            // An undo log leads back to `base_sequence` from the point whose
            // digest is `base_digest`.
            uh.base_sequence = st.applied;
            uh.base_digest = log.trailer().digest;
            // Smaller records than shipped logs: a view reading one block
            // decompresses the whole record that holds it.
            let opts = WriterOptions {
                record_bytes: UNDO_RECORD_BYTES,
                ..WriterOptions::default()
            };
            let mut w = LogFile::create_in(self.s.dir.clone(), &name, uh, opts)?;
            let mut buf = Vec::new();
            let saved = undo_blocks(st.geometry, log)?;
            // The blocks replaced are scattered: read ahead so they are
            // read together.
            let g = st.geometry;
            let mut ahead =
                ReadAhead::new(&*self.s.image, saved.extents().map(|e| g.extent_bytes(e)));
            for e in saved.extents() {
                for part in chunks(e, st.geometry.block_size()) {
                    let (off, len) = st.geometry.extent_bytes(part);
                    buf.resize(len as usize, 0);
                    ahead.advance(len);
                    self.s.image.read_at(&mut buf, off)?;
                    w.add_extent(part, &buf)?;
                }
            }
            let summary = w.commit()?;
            // Our own bytes, just written: no need to read them back whole.
            match self.s.dir.path_of(&name) {
                Some(p) => MappedLog::written(Some(&p), None, &summary),
                None => {
                    MappedLog::written(None, Some(self.s.dir.read_all(&name)?.into()), &summary)
                }
            }
        })();
        result.map_err(|e: Error| e.with_sequence(h.sequence))
    }
}

/// A name for a log being received into a replica's directory (removed on
/// open if a crash leaves it).
fn incoming_name() -> Result<String> {
    Ok(format!(
        "incoming-{:016x}.partial",
        crate::id::random_u64()?
    ))
}

/// Copies the file at `path` into `dir` under a new incoming name, synced;
/// returns the name. On error nothing is left behind.
fn stage_file(dir: &dyn Dir, path: &Path) -> Result<String> {
    use std::io::Read;
    let name = incoming_name()?;
    let copied = (|| {
        let mut src =
            std::fs::File::open(path).map_err(|e| Error::io("open log", e).with_path(path))?;
        let dst = dir.create(&name)?;
        let mut buf = vec![0u8; CHUNK as usize];
        let mut at = 0u64;
        loop {
            let n = match src.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io("read log", e).with_path(path).with_offset(at)),
            };
            dst.write_at(&buf[..n], at)?;
            at += n as u64;
        }
        dst.sync()
    })();
    match copied {
        Ok(()) => Ok(name),
        Err(e) => {
            let _ = dir.remove(&name);
            Err(e)
        }
    }
}

/// Refuses a directory that holds a replica already (its state record).
fn refuse_existing(dir: &dyn Dir) -> Result<()> {
    if Replica::exists(dir) {
        let e = Error::new(
            ErrorKind::Misuse,
            "the directory already holds a replica: it was left as it was",
        );
        return Err(match dir.path_of(state::STATE) {
            Some(p) => e.with_path(p),
            None => e,
        });
    }
    Ok(())
}

/// The blocks an undo log for `log` saves, in the replica's current
/// geometry `old`: those the log writes that exist now; when the log
/// shrinks the disk, every block it cuts off (whole, a partly cut one
/// included); and when it changes the size while the last block is short,
/// that block at its old length.
fn undo_blocks(old: Geometry, log: &MappedLog) -> Result<BlockSet> {
    let count = old.block_count();
    let mut extents: Vec<Extent> = log
        .extents()?
        .iter()
        .filter(|e| e.extent.start < count)
        .map(|e| Extent::new(e.extent.start, e.extent.count.min(count - e.extent.start)))
        .collect();
    let new = log.header().geometry.size();
    if new < old.size() {
        let first = new >> old.block_shift();
        extents.push(Extent::new(first, count - first));
    } else if new > old.size() && !old.size().is_multiple_of(u64::from(old.block_size())) {
        // A grow lengthens the short last block. A view of an older point
        // reads each block from the first undo log after it that holds
        // it, at the point's own length; without this copy that could be
        // a later undo log holding the block at its grown length, which
        // does not fit the point's shorter block.
        extents.push(Extent::new(count - 1, 1));
    }
    BlockSet::from_extents(count, extents)
}

/// Checks that `h` (whose content digest is `digest`) is the next log for
/// the replica in `st`. `Some` when this very log was applied already: a
/// log is known by its sequence *and* digest, so a different log under a
/// sequence already applied is refused ([`Detail::Conflict`]), never taken
/// as applied. Each refusal carries a typed [`Detail`].
fn check_follows(st: &State, h: &LogHeader, digest: &Digest) -> Result<Option<ApplyOutcome>> {
    let seq = h.sequence;
    let refuse = |m: String, d: Option<Detail>| {
        let e = Error::mismatch(m).with_sequence(seq);
        Err(match d {
            Some(d) => e.with_detail(d),
            None => e,
        })
    };
    if h.disk_id != st.disk_id {
        return refuse(
            format!(
                "log is for disk {}, this replica is of {}",
                h.disk_id, st.disk_id
            ),
            Some(Detail::OtherDisk {
                expected: st.disk_id,
            }),
        );
    }
    // A size change is a resize the log ships; the block size is fixed.
    if h.geometry.block_size() != st.geometry.block_size() {
        return refuse(
            format!(
                "log geometry {} differs from the replica's {}",
                h.geometry, st.geometry
            ),
            None,
        );
    }
    let chained = matches!(h.kind, LogKind::Delta | LogKind::Resync);
    if chained && h.epoch == st.epoch && seq <= st.applied {
        return applied_before(st, h, digest);
    }
    match h.kind {
        LogKind::Delta if h.epoch == st.epoch => {}
        LogKind::Resync if h.epoch > st.epoch => {}
        LogKind::Delta | LogKind::Resync => {
            let behind = (h.epoch < st.epoch).then_some(Detail::EpochBehind { current: st.epoch });
            return refuse(
                format!(
                    "{:?} log of epoch {}, the replica is in epoch {}",
                    h.kind, h.epoch, st.epoch
                ),
                behind,
            );
        }
        k => {
            return refuse(
                format!("a {k:?} log does not apply to an existing replica"),
                None,
            )
        }
    }
    if seq != st.applied + 1 || h.base_sequence != st.applied {
        return refuse(
            format!(
                "log {seq} builds on {}, the replica expects log {} next",
                h.base_sequence,
                st.applied + 1
            ),
            Some(Detail::SequenceGap {
                expected: st.applied + 1,
            }),
        );
    }
    if h.base_digest != st.digest {
        return refuse(
            format!(
                "log builds on content {}, the replica holds {}",
                h.base_digest, st.digest
            ),
            Some(Detail::DivergedHistory {
                sequence: st.applied,
                held: st.digest,
            }),
        );
    }
    Ok(None)
}

/// A log of the replica's epoch whose sequence is not past the latest
/// point: applied before if, and only if, the retained point with that
/// sequence has its digest.
fn applied_before(st: &State, h: &LogHeader, digest: &Digest) -> Result<Option<ApplyOutcome>> {
    let seq = h.sequence;
    let e = match st.points.iter().find(|p| p.sequence == seq) {
        Some(p) if p.epoch == h.epoch && p.digest == *digest => {
            return Ok(Some(ApplyOutcome::AlreadyApplied {
                sequence: seq,
                digest: p.digest,
            }))
        }
        Some(p) => Error::mismatch(format!(
            "a different log {seq} was applied: the replica holds content {} there, this log leads to {digest}",
            p.digest
        ))
        .with_detail(Detail::Conflict {
            sequence: seq,
            held: p.digest,
        }),
        None => {
            let oldest = st.points.first().map_or(st.applied, |p| p.sequence);
            Error::mismatch(format!(
                "log {seq} is not past the latest point {} and its point is not retained \
                 (oldest {oldest}): whether it was applied cannot be proved",
                st.applied
            ))
            .with_detail(Detail::NotRetained { oldest })
        }
    };
    Err(e.with_sequence(seq))
}

/// The state of a replica made from the full log `h` with `digest`.
fn state_of_full(h: &LogHeader, digest: Digest) -> State {
    State {
        disk_id: h.disk_id,
        epoch: h.epoch,
        geometry: h.geometry,
        applied: h.sequence,
        digest,
        phase: Phase::Idle,
        points: vec![point_of(h, digest, 0)],
    }
}

fn point_of(h: &LogHeader, digest: Digest, undo_bytes: u64) -> PointInfo {
    PointInfo {
        sequence: h.sequence,
        epoch: h.epoch,
        created_ns: h.created_ns,
        consistency: h.consistency,
        label: h.label.clone(),
        digest,
        undo_bytes,
    }
}

/// Splits an extent into pieces of at most [`CHUNK`] bytes.
fn chunks(e: Extent, block_size: u32) -> impl Iterator<Item = Extent> {
    let per = (CHUNK / u64::from(block_size)).max(1);
    (0..e.count.div_ceil(per)).map(move |i| {
        let start = e.start + i * per;
        Extent::new(start, per.min(e.end() - start))
    })
}

/// Writes every block of `log` to `image`: data as is, zero extents as
/// written zeros, or punched holes when large (`fresh`: the image is known
/// zero there already).
fn write_log(image: &dyn Storage, log: &MappedLog, fresh: bool) -> Result<()> {
    write_records(image, log.header().geometry, &mut log.reader()?, fresh)
}

/// Writes the records of a log onto `image` (of geometry `g`), each
/// verified by the reader before it is written.
fn write_records<R: Read>(
    image: &dyn Storage,
    g: Geometry,
    log: &mut LogReader<R>,
    fresh: bool,
) -> Result<()> {
    let zeros = vec![0u8; CHUNK as usize];
    let mut copy = Vec::new();
    // Synced at the end: written while the log is still read.
    let mut behind = WriteBehind::new(image);
    for rec in log {
        let rec = rec?;
        let mut at = 0usize;
        for e in &rec.extents {
            let (off, len) = g.extent_bytes(e.extent);
            if e.zero {
                // Punching small holes costs the file system more than
                // writing zeros (an extent-tree update and a discard each):
                // only runs of a megabyte or more are deallocated.
                if fresh || (len >= CHUNK && image.punch_hole(off, len)?) {
                    continue;
                }
                let mut done = 0;
                while done < len {
                    let n = (len - done).min(CHUNK);
                    image.write_at(&zeros[..n as usize], off + done)?;
                    done += n;
                }
                behind.wrote(off, len);
            } else if e.copy {
                // The source blocks come earlier in this log, so the image
                // holds their new content already.
                let source = u64::from_le_bytes(rec.data[at..at + 8].try_into().expect("8 bytes"));
                at += 8;
                let mut done = 0;
                while done < len {
                    let n = (len - done).min(CHUNK) as usize;
                    copy.resize(n, 0);
                    image.read_at(&mut copy, g.block_offset(source) + done)?;
                    image.write_at(&copy, off + done)?;
                    done += n as u64;
                }
                behind.wrote(off, len);
            } else {
                image.write_at(&rec.data[at..at + len as usize], off)?;
                behind.wrote(off, len);
                at += len as usize;
            }
        }
    }
    Ok(())
}

/// A log being received in chunks, spooled to a `.partial` file in the
/// replica's directory; [`apply`](IncomingLog::apply) verifies it whole,
/// then applies it. Dropped before, it leaves nothing behind.
pub struct IncomingLog {
    replica: Replica,
    name: String,
    file: Arc<dyn Storage>,
    pos: u64,
}

impl std::fmt::Debug for IncomingLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncomingLog")
            .field("name", &self.name)
            .field("bytes", &self.pos)
            .finish()
    }
}

impl IncomingLog {
    /// Appends the next chunk.
    pub fn write(&mut self, chunk: &[u8]) -> Result<()> {
        self.file.write_at(chunk, self.pos)?;
        self.pos += chunk.len() as u64;
        Ok(())
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.pos
    }

    /// Makes the log durable, verifies it whole (and against `opts`), and
    /// applies it. On any error the replica is unchanged.
    pub fn apply(self, opts: &ReadOptions) -> Result<ApplyOutcome> {
        let r = &self.replica;
        self.file.sync()?;
        let log = MappedLog::open_in(&*r.s.dir, &self.name, opts)?;
        r.apply(&log)
    }
}

impl Drop for IncomingLog {
    fn drop(&mut self) {
        let _ = self.replica.s.dir.remove(&self.name);
    }
}

/// A replica's identity and position.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct ReplicaStatus {
    /// The disk replicated.
    pub disk_id: crate::id::DiskId,
    /// The current epoch.
    pub epoch: u64,
    /// The disk's geometry.
    pub geometry: crate::geometry::Geometry,
    /// The sequence of the latest applied log.
    pub applied: u64,
    /// The content digest at the latest point.
    pub digest: Digest,
}
