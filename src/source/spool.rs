//! The spool: delta logs waiting on the primary until the transport has
//! delivered them.
//!
//! A spool lives in a [`Dir`]: a state record (`spool.state`, format in
//! docs/FORMAT.md, "Spool state") holding the disk's identity and the last
//! log the transport acknowledged, and one file per unacknowledged log
//! (`log-<sequence>`), written through [`LogFile`] so a crash never leaves
//! a log that looks complete but is not. The logs always form an unbroken
//! chain after the acknowledged one; the chain's head is where the next
//! cycle builds on.
//!
//! **Bounded.** When the logs waiting exceed the byte limit,
//! [`fold_back`](Spool::fold_back) hands the blocks of the logs not yet
//! given to the transport back to the tracker and deletes those logs. All
//! of them go, not only the oldest: each log builds on the content digest
//! of the one before, so a later log cannot outlive an earlier one. The
//! next cycle then ships the union in one log, chained on the last log the
//! transport has. Nothing is lost and the spool holds at most the limit,
//! the logs in flight and one more log.
//!
//! **Identity.** A log is known by its sequence *and* content digest. An
//! acknowledgement names both ([`ack`](Spool::ack)) and is refused when the
//! spooled log under that sequence has other content. A log that may have
//! reached the replica (handed to the transport, or spooled before a
//! restart) is never folded back until the replica's answer for it is
//! known ([`reconcile`](Spool::reconcile) or an ack): folding it would cut
//! a new log under the same sequence, and a replica that applied the old
//! one would hold content the primary no longer knows of.
//!
//! **Restarts.** After a restart (or a reconnect) the transport asks the
//! replica what it holds and hands the answer to
//! [`reconcile`](Spool::reconcile) before shipping: a log delivered whose
//! acknowledgement was lost is then acknowledged by its digest, not sent
//! again.

use super::Source;
use crate::error::{Detail, Error, ErrorKind, Result};
use crate::frame;
use crate::geometry::{Extent, Geometry};
use crate::id::DiskId;
use crate::io::{Dir, DirLock, Storage};
use crate::le::{get_u32, get_u64, put_u32, put_u64};
use crate::log::{Consistency, GroupInfo, WriterOptions};
use crate::log::{Digest, LogFile, LogHeader, LogKind, LogSummary, MappedLog, ReadOptions};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;

const STATE: &str = "spool.state";
const MAGIC: [u8; 8] = *b"BRSPOOL\0";
const VERSION: u32 = 1;
const STATE_LEN: usize = 120;

fn log_name(sequence: u64) -> String {
    format!("log-{sequence:020}")
}

/// A position in a disk's chain of logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct ChainPoint {
    /// The epoch of the log.
    pub epoch: u64,
    /// Its sequence (0: before the first log).
    pub sequence: u64,
    /// The content digest after it.
    pub digest: Digest,
    /// When its point was cut (ns since the Unix epoch; 0 before the first).
    pub created_ns: u64,
    /// The disk's geometry at that point.
    pub geometry: Geometry,
}

impl ChainPoint {
    /// The start of a chain in `epoch`, before its first log: sequence 0,
    /// a zero digest, for a disk of `geometry`.
    pub fn start(epoch: u64, geometry: Geometry) -> Self {
        ChainPoint {
            epoch,
            sequence: 0,
            digest: Digest::default(),
            created_ns: 0,
            geometry,
        }
    }
}

/// A log in the spool.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpooledLog {
    /// Where it leads to.
    pub point: ChainPoint,
    /// Full, delta or resync.
    pub kind: LogKind,
    /// Crash- or app-consistent.
    pub consistency: Consistency,
    /// The consistency group cut it belongs to, if any.
    pub group: Option<GroupInfo>,
    /// Its size in bytes.
    pub bytes: u64,
    /// Its file name in the spool directory.
    pub name: String,
    /// Its path, when the spool is on a file system.
    pub path: Option<PathBuf>,
}

/// What [`Spool::fold_back`] did.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FoldBack {
    /// Logs deleted.
    pub logs: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Blocks handed back to the tracker.
    pub blocks: u64,
}

/// The spool's state, for a console.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct SpoolStatus {
    /// Logs not yet acknowledged.
    pub pending_logs: u64,
    /// Their bytes.
    pub pending_bytes: u64,
    /// Of those, logs handed to the transport (in flight).
    pub in_flight_logs: u64,
    /// The byte limit.
    pub limit_bytes: u64,
    /// When the oldest unacknowledged point was cut (ns since the Unix
    /// epoch), if any.
    pub oldest_pending_ns: Option<u64>,
    /// The last point the transport acknowledged: what the replica holds.
    /// A disaster now loses what was written since its cut, so
    /// `now - acked.created_ns` is the achieved RPO.
    pub acked: ChainPoint,
    /// The chain's head: what the next log builds on.
    pub head: ChainPoint,
    /// Logs folded back into the tracker since the spool was opened.
    pub folded_logs: u64,
    /// The chain was restarted and waits for a resync log.
    pub resync_required: bool,
}

struct Inner {
    disk_id: DiskId,
    /// Set by a restart until a resync (or full) log is spooled: a delta
    /// built on a tracker would miss what differs.
    resync_required: bool,
    acked: ChainPoint,
    logs: VecDeque<SpooledLog>,
    /// Logs up to this sequence were handed to the transport since the
    /// last rewind.
    handed: u64,
    /// Logs up to this sequence may have reached the replica (handed out
    /// at some time, or spooled before the spool was opened) and the
    /// replica's answer is not known: they are never folded back.
    exposed: u64,
    folded: u64,
}

impl Inner {
    fn head(&self) -> ChainPoint {
        self.logs.back().map_or(self.acked, |l| l.point)
    }
    fn pending_bytes(&self) -> u64 {
        self.logs.iter().map(|l| l.bytes).sum()
    }
}

/// A bounded, crash-safe spool of one disk's logs; see the module docs.
/// All methods take `&self` and may be called from several threads (the
/// transport's and the cycle's).
pub struct Spool {
    /// Keeps other spools (processes) off the directory.
    _lock: DirLock,
    dir: Arc<dyn Dir>,
    limit: u64,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("status", &self.status())
            .finish()
    }
}

impl Spool {
    /// Creates an empty spool in `dir` for a disk whose chain starts at
    /// `start` (sequence 0 and a zero digest for a disk never replicated),
    /// holding at most about `limit_bytes` of unshipped logs.
    pub fn create(
        dir: Arc<dyn Dir>,
        disk_id: DiskId,
        start: ChainPoint,
        limit_bytes: u64,
    ) -> Result<Self> {
        let lock = dir.lock()?;
        if dir.exists(STATE) {
            return Err(Error::new(
                ErrorKind::Misuse,
                "the directory already holds a spool",
            ));
        }
        store_state(&*dir, disk_id, &start, false)?;
        Ok(Spool {
            _lock: lock,
            dir,
            limit: limit_bytes,
            inner: Mutex::new(Inner {
                disk_id,
                resync_required: false,
                acked: start,
                logs: VecDeque::new(),
                handed: start.sequence,
                exposed: start.sequence,
                folded: 0,
            }),
        })
    }

    /// Opens the spool in `dir`: removes partial files and logs already
    /// acknowledged, checks every remaining log and that they form an
    /// unbroken chain after the acknowledged point. A damaged or missing
    /// log is an error of kind `ResyncRequired`: its blocks are known
    /// nowhere else.
    pub fn open(dir: Arc<dyn Dir>, limit_bytes: u64) -> Result<Self> {
        let lock = dir.lock()?;
        let bytes = dir.read_all(STATE)?;
        let (disk_id, acked, mut resync_required) =
            decode_state(&bytes).map_err(|e| match dir.path_of(STATE) {
                Some(p) => e.with_path(p),
                None => e,
            })?;
        let mut logs = VecDeque::new();
        let mut head = acked;
        let mut removed = false;
        for name in dir.list()? {
            if std::path::Path::new(&name)
                .extension()
                .is_some_and(|e| e == "partial" || e == "tmp")
            {
                dir.remove(&name)?;
                removed = true;
                continue;
            }
            let Some(seq) = name
                .strip_prefix("log-")
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            if seq <= acked.sequence {
                dir.remove(&name)?;
                removed = true;
                continue;
            }
            let lost = |m: String| {
                let e = Error::new(ErrorKind::ResyncRequired, m).with_sequence(seq);
                match dir.path_of(&name) {
                    Some(p) => e.with_path(p),
                    None => e,
                }
            };
            let log = read_log(&*dir, &name)
                .map_err(|e| lost(format!("spooled log unreadable: {}", e.message())))?;
            let h = log.header();
            if h.disk_id != disk_id
                || h.sequence != seq
                || seq != head.sequence + 1
                || h.base_sequence != head.sequence
                || h.base_digest != head.digest
            {
                return Err(lost(format!(
                    "spooled log {seq} does not follow log {} of the chain",
                    head.sequence
                )));
            }
            let entry = entry_of(&dir, &name, h, log.trailer().digest, log.bytes().len());
            resync_required &= entry.kind == LogKind::Delta;
            head = entry.point;
            logs.push_back(entry);
        }
        if removed {
            dir.sync()?;
        }
        Ok(Spool {
            _lock: lock,
            dir,
            limit: limit_bytes,
            inner: Mutex::new(Inner {
                disk_id,
                resync_required,
                acked,
                handed: acked.sequence,
                // Any of them may have been shipped before the restart.
                exposed: head.sequence,
                logs,
                folded: 0,
            }),
        })
    }

    /// The disk.
    pub fn disk_id(&self) -> DiskId {
        self.inner.lock().disk_id
    }

    /// The chain's head: the point the next log builds on.
    pub fn head(&self) -> ChainPoint {
        self.inner.lock().head()
    }

    /// A [`Source`] positioned at the chain's head.
    pub fn source(&self) -> Source {
        let st = self.inner.lock();
        let h = st.head();
        Source {
            disk_id: st.disk_id,
            epoch: h.epoch,
            geometry: h.geometry,
            sequence: h.sequence,
            digest: h.digest,
        }
    }

    /// Starts writing the next log. `header` must follow the head (as
    /// [`Source`] makes it); finish with [`LogFile::commit`] and hand the
    /// summary to [`push`](Self::push).
    pub fn begin(&self, header: LogHeader, opts: WriterOptions) -> Result<LogFile> {
        let seq = header.sequence;
        {
            let st = self.inner.lock();
            check_next(&st, &header)?;
        }
        LogFile::create_in(self.dir.clone(), &log_name(seq), header, opts)
    }

    /// Records a log committed after [`begin`](Self::begin).
    pub fn push(&self, summary: &LogSummary) -> Result<()> {
        let mut st = self.inner.lock();
        let h = &summary.header;
        check_next(&st, h)?;
        let name = log_name(h.sequence);
        if !self.dir.exists(&name) {
            return Err(Error::new(
                ErrorKind::Misuse,
                format!("log {} was not committed to the spool", h.sequence),
            ));
        }
        let entry = entry_of(
            &self.dir,
            &name,
            h,
            summary.trailer.digest,
            summary.bytes as usize,
        );
        if entry.kind != LogKind::Delta {
            st.resync_required = false;
        }
        st.logs.push_back(entry);
        Ok(())
    }

    /// Records the log of `summary` as made and already applied by its
    /// replica without passing through the spool (a local replica made in
    /// one pass, see [`Pipeline::initial_sync_into`](super::Pipeline::initial_sync_into)):
    /// the chain's head and acknowledged point move to it, durably. It
    /// must follow the head, with no log pending.
    pub fn push_delivered(&self, summary: &LogSummary) -> Result<()> {
        let mut st = self.inner.lock();
        let h = &summary.header;
        check_next(&st, h)?;
        if !st.logs.is_empty() {
            return Err(Error::new(
                ErrorKind::Misuse,
                format!(
                    "log {} was delivered past {} pending logs",
                    h.sequence,
                    st.logs.len()
                ),
            )
            .with_sequence(h.sequence));
        }
        let point = ChainPoint {
            epoch: h.epoch,
            sequence: h.sequence,
            digest: summary.trailer.digest,
            created_ns: h.created_ns,
            geometry: h.geometry,
        };
        // `check_next` refused a delta while a resync is required.
        store_state(&*self.dir, st.disk_id, &point, false)?;
        st.resync_required = false;
        st.acked = point;
        st.handed = h.sequence;
        st.exposed = st.exposed.max(h.sequence);
        Ok(())
    }

    /// The unacknowledged logs, oldest first.
    pub fn pending(&self) -> Vec<SpooledLog> {
        self.inner.lock().logs.iter().cloned().collect()
    }

    /// The oldest log not yet handed to the transport, now counted as in
    /// flight (it will not be folded back). `None` when all are handed.
    pub fn next_to_ship(&self) -> Option<SpooledLog> {
        let mut st = self.inner.lock();
        let handed = st.handed;
        let next = st
            .logs
            .iter()
            .find(|l| l.point.sequence > handed)
            .cloned()?;
        st.handed = next.point.sequence;
        st.exposed = st.exposed.max(st.handed);
        Some(next)
    }

    /// Forgets what was handed to the transport (it reconnected): shipping
    /// starts again at the oldest unacknowledged log. The logs handed out
    /// stay exposed (never folded back) until [`reconcile`](Self::reconcile)
    /// or an ack says what the replica holds.
    pub fn rewind(&self) {
        let mut st = self.inner.lock();
        st.handed = st.acked.sequence;
    }

    /// Reads and checks a spooled log whole.
    pub fn read(&self, log: &SpooledLog) -> Result<MappedLog> {
        read_log(&*self.dir, &log.name)
    }

    /// Opens a spooled log for reading, as bytes the transport reads in
    /// chunks.
    pub fn open_log(&self, sequence: u64) -> Result<Arc<dyn Storage>> {
        let st = self.inner.lock();
        let l = st
            .logs
            .iter()
            .find(|l| l.point.sequence == sequence)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::OutOfRange,
                    format!("log {sequence} is not in the spool"),
                )
                .with_sequence(sequence)
            })?;
        self.dir.open(&l.name)
    }

    /// The replica has every log up to `sequence`, whose content digest
    /// is `digest` (as the replica reports it): records it durably, then
    /// deletes those logs. Acknowledging the acknowledged point again, or
    /// an older sequence, does nothing; a sequence past the head is misuse;
    /// a digest other than the spooled log's is refused as a
    /// [`Detail::Conflict`] and changes nothing (the replica holds another
    /// log under that sequence).
    pub fn ack(&self, sequence: u64, digest: &Digest) -> Result<()> {
        let mut st = self.inner.lock();
        self.ack_locked(&mut st, sequence, digest)
    }

    fn ack_locked(&self, st: &mut Inner, sequence: u64, digest: &Digest) -> Result<()> {
        let acked = Self::point_of(st, sequence, digest)?;
        if sequence <= st.acked.sequence {
            return Ok(());
        }
        store_state(&*self.dir, st.disk_id, &acked, st.resync_required)?;
        st.acked = acked;
        st.handed = st.handed.max(sequence);
        st.exposed = st.exposed.max(sequence);
        while st
            .logs
            .front()
            .is_some_and(|l| l.point.sequence <= sequence)
        {
            let l = st.logs.pop_front().expect("front exists");
            // A leftover file is removed on the next open.
            let _ = self.dir.remove(&l.name);
        }
        Ok(())
    }

    /// Takes the replica's answer to "what do you hold" (after a restart
    /// or a reconnect): its latest `sequence` and content `digest`. Logs up
    /// to it are acknowledged (by digest); the logs after it are known not
    /// applied, so they may be folded back again; shipping restarts after
    /// it. A replica behind the acknowledged point, past the spool's head,
    /// or holding other content than the spool's log of that sequence has
    /// a diverged history: an error of kind `Mismatch` with a typed
    /// [`Detail`], and nothing changes.
    pub fn reconcile(&self, sequence: u64, digest: &Digest) -> Result<()> {
        let mut st = self.inner.lock();
        let head = st.head();
        if sequence < st.acked.sequence || sequence > head.sequence {
            return Err(Error::mismatch(format!(
                "the replica holds log {sequence}; the spool has logs {} to {} (acknowledged to {})",
                st.acked.sequence, head.sequence, st.acked.sequence
            ))
            .with_sequence(sequence)
            .with_detail(Detail::SequenceGap {
                expected: st.acked.sequence,
            }));
        }
        self.ack_locked(&mut st, sequence, digest)?;
        st.exposed = sequence;
        st.handed = sequence;
        Ok(())
    }

    /// The acknowledged point or the spooled log with `sequence`, checked
    /// to have content `digest`. An older sequence than the acknowledged
    /// one gives the acknowledged point (it cannot be checked any more).
    fn point_of(st: &Inner, sequence: u64, digest: &Digest) -> Result<ChainPoint> {
        let held = match sequence.cmp(&st.acked.sequence) {
            std::cmp::Ordering::Less => return Ok(st.acked),
            std::cmp::Ordering::Equal => st.acked,
            std::cmp::Ordering::Greater => {
                match st.logs.iter().find(|l| l.point.sequence == sequence) {
                    Some(l) => l.point,
                    None => {
                        return Err(Error::new(
                            ErrorKind::Misuse,
                            format!(
                                "acknowledged log {sequence}, the spool's head is {}",
                                st.head().sequence
                            ),
                        )
                        .with_sequence(sequence))
                    }
                }
            }
        };
        if held.digest != *digest {
            return Err(Error::mismatch(format!(
                "the replica reports content {digest} for log {sequence}, the spool's log \
                 leads to {}",
                held.digest
            ))
            .with_sequence(sequence)
            .with_detail(Detail::Conflict {
                sequence,
                held: held.digest,
            }));
        }
        Ok(held)
    }

    /// Whether the logs waiting exceed the limit.
    pub fn over_limit(&self) -> bool {
        self.inner.lock().pending_bytes() > self.limit
    }

    /// Hands the blocks of every delta log that cannot have reached the
    /// replica (never handed to the transport, nor spooled before the spool
    /// was opened, unless [`reconcile`](Self::reconcile) since said they
    /// were not applied) to `mark` (which must make them durable in the
    /// tracker), then
    /// deletes those logs, newest first, so a crash at any point leaves an
    /// unbroken chain. Logs up to the newest full or resync log stay: they
    /// start a chain and cannot be rebuilt from a tracker.
    pub fn fold_back(&self, mark: &mut dyn FnMut(Extent) -> Result<()>) -> Result<FoldBack> {
        let mut st = self.inner.lock();
        let keep = st
            .logs
            .iter()
            .rposition(|l| l.point.sequence <= st.exposed || l.kind != LogKind::Delta)
            .map_or(0, |i| i + 1);
        self.fold(&mut st, keep, mark)
    }

    /// Folds back the logs from `sequence` on (the tail of an incomplete
    /// consistency-group cut), as [`fold_back`](Self::fold_back) does.
    pub(crate) fn fold_back_from(
        &self,
        sequence: u64,
        mark: &mut dyn FnMut(Extent) -> Result<()>,
    ) -> Result<FoldBack> {
        let mut st = self.inner.lock();
        let keep = st
            .logs
            .iter()
            .take_while(|l| l.point.sequence < sequence)
            .count();
        if st
            .logs
            .iter()
            .skip(keep)
            .any(|l| l.point.sequence <= st.handed)
        {
            return Err(Error::new(
                ErrorKind::Misuse,
                format!("log {sequence} was handed to the transport: it cannot be folded back"),
            ));
        }
        self.fold(&mut st, keep, mark)
    }

    fn fold(
        &self,
        st: &mut Inner,
        keep: usize,
        mark: &mut dyn FnMut(Extent) -> Result<()>,
    ) -> Result<FoldBack> {
        let mut done = FoldBack::default();
        for l in st.logs.iter().skip(keep) {
            let log = read_log(&*self.dir, &l.name)?;
            for e in log.extents()? {
                mark(e.extent)?;
                done.blocks += e.extent.count;
            }
        }
        while st.logs.len() > keep {
            let l = st.logs.back().expect("more than keep");
            self.dir.remove(&l.name)?;
            self.dir.sync()?;
            done.logs += 1;
            done.bytes += l.bytes;
            st.logs.pop_back();
        }
        st.folded += done.logs;
        Ok(done)
    }

    /// Removes the committed file of log `sequence` that was never pushed
    /// (a consistency-group cut that failed on another disk).
    pub(crate) fn discard_unpushed(&self, sequence: u64) -> Result<()> {
        let st = self.inner.lock();
        if st.logs.iter().any(|l| l.point.sequence == sequence) {
            return Err(Error::new(
                ErrorKind::Misuse,
                format!("log {sequence} is in the spool"),
            ));
        }
        self.dir.remove(&log_name(sequence))?;
        self.dir.sync()
    }

    /// Drops every log and restarts the chain at `start`, the point the
    /// replica holds, before a resync whose log builds on it. Until a
    /// resync log is spooled, delta logs are refused (also after a
    /// restart): they would miss what differs.
    pub fn restart(&self, start: ChainPoint) -> Result<()> {
        let mut st = self.inner.lock();
        store_state(&*self.dir, st.disk_id, &start, true)?;
        st.resync_required = true;
        st.acked = start;
        st.handed = start.sequence;
        st.exposed = start.sequence;
        for l in std::mem::take(&mut st.logs) {
            let _ = self.dir.remove(&l.name);
        }
        self.dir.sync()
    }

    /// Whether a resync log must come next.
    pub fn resync_required(&self) -> bool {
        self.inner.lock().resync_required
    }

    /// Pending logs and bytes, the acknowledged point and the head.
    pub fn status(&self) -> SpoolStatus {
        let st = self.inner.lock();
        SpoolStatus {
            pending_logs: st.logs.len() as u64,
            pending_bytes: st.pending_bytes(),
            in_flight_logs: st
                .logs
                .iter()
                .filter(|l| l.point.sequence <= st.handed)
                .count() as u64,
            limit_bytes: self.limit,
            oldest_pending_ns: st.logs.front().map(|l| l.point.created_ns),
            acked: st.acked,
            head: st.head(),
            folded_logs: st.folded,
            resync_required: st.resync_required,
        }
    }
}

fn check_next(st: &Inner, h: &LogHeader) -> Result<()> {
    if st.resync_required && h.kind == LogKind::Delta {
        return Err(Error::new(
            ErrorKind::ResyncRequired,
            "the chain was restarted: a resync log must come before any delta",
        )
        .with_sequence(h.sequence));
    }
    let head = st.head();
    if h.disk_id != st.disk_id
        || h.sequence != head.sequence + 1
        || h.base_sequence != head.sequence
        || h.base_digest != head.digest
        || h.epoch < head.epoch
    {
        return Err(Error::new(
            ErrorKind::Misuse,
            format!(
                "log {} of disk {} does not follow the spool's head, log {} of disk {}",
                h.sequence, h.disk_id, head.sequence, st.disk_id
            ),
        )
        .with_sequence(h.sequence));
    }
    Ok(())
}

fn entry_of(
    dir: &Arc<dyn Dir>,
    name: &str,
    h: &LogHeader,
    digest: Digest,
    bytes: usize,
) -> SpooledLog {
    SpooledLog {
        point: ChainPoint {
            epoch: h.epoch,
            sequence: h.sequence,
            digest,
            created_ns: h.created_ns,
            geometry: h.geometry,
        },
        kind: h.kind,
        consistency: h.consistency,
        group: h.group,
        bytes: bytes as u64,
        name: name.to_owned(),
        path: dir.path_of(name),
    }
}

fn read_log(dir: &dyn Dir, name: &str) -> Result<MappedLog> {
    MappedLog::open_in(dir, name, &ReadOptions::default())
}

const FLAG_RESYNC: u32 = 1;

fn store_state(dir: &dyn Dir, disk_id: DiskId, p: &ChainPoint, resync: bool) -> Result<()> {
    let mut b = frame::start(MAGIC, VERSION, STATE_LEN - 4);
    put_u32(&mut b, 12, if resync { FLAG_RESYNC } else { 0 });
    b[16..32].copy_from_slice(&disk_id.0);
    put_u64(&mut b, 32, p.geometry.size());
    put_u32(&mut b, 40, p.geometry.block_size());
    put_u64(&mut b, 48, p.epoch);
    put_u64(&mut b, 56, p.sequence);
    b[64..96].copy_from_slice(&p.digest.0);
    put_u64(&mut b, 96, p.created_ns);
    dir.store_atomic(STATE, &frame::seal(b))
}

fn decode_state(b: &[u8]) -> Result<(DiskId, ChainPoint, bool)> {
    let bad =
        |at: usize, m: &str| Error::corrupt(format!("spool state: {m}")).with_offset(at as u64);
    if b.len() != STATE_LEN {
        return Err(bad(0, "wrong length"));
    }
    frame::open(b, MAGIC, VERSION, STATE_LEN - 4, "spool state")?;
    if get_u32(b, 12) & !FLAG_RESYNC != 0
        || get_u32(b, 44) != 0
        || get_u32(b, 104) != 0
        || get_u64(b, 108) != 0
    {
        return Err(bad(12, "reserved bytes are not zero"));
    }
    let geometry =
        Geometry::new(get_u64(b, 32), get_u32(b, 40)).map_err(|e| bad(32, e.message()))?;
    let mut id = [0u8; 16];
    id.copy_from_slice(&b[16..32]);
    let mut digest = [0u8; 32];
    digest.copy_from_slice(&b[64..96]);
    Ok((
        DiskId(id),
        ChainPoint {
            epoch: get_u64(b, 48),
            sequence: get_u64(b, 56),
            digest: Digest(digest),
            created_ns: get_u64(b, 96),
            geometry,
        },
        get_u32(b, 12) & FLAG_RESYNC != 0,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::MemDir;

    /// Found by the `spool_open` fuzzer: a log whose header claims a
    /// sequence past the next one while building on the acknowledged point
    /// was taken into the chain, leaving a gap.
    #[test]
    fn a_spooled_log_that_skips_sequences_is_refused() {
        use crate::log::{LogHeader, LogWriter};
        let g = Geometry::new(64 << 10, 4096).unwrap();
        let dir = Arc::new(MemDir::new());
        let start = ChainPoint {
            epoch: 1,
            sequence: 3,
            digest: Digest::default(),
            created_ns: 0,
            geometry: g,
        };
        drop(Spool::create(dir.clone(), DiskId([4; 16]), start, 1 << 20).unwrap());
        let mut h = LogHeader::new(DiskId([4; 16]), g, LogKind::Delta, 1, 7).unwrap();
        h.base_sequence = 3;
        let opts = WriterOptions {
            record_bytes: 4096,
            threads: 1,
        };
        let mut w = LogWriter::new(Vec::new(), h, opts).unwrap();
        w.add_block(1, &[9; 4096]).unwrap();
        let bytes = w.finish().unwrap().0;
        dir.create(&log_name(7))
            .unwrap()
            .write_at(&bytes, 0)
            .unwrap();
        let e = Spool::open(dir, 1 << 20).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ResyncRequired, "{e}");
    }

    #[test]
    fn state_round_trip_and_every_flip_detected() {
        let dir = MemDir::new();
        let p = ChainPoint {
            epoch: 3,
            sequence: 9,
            digest: Digest([7; 32]),
            created_ns: 11,
            geometry: Geometry::new(1 << 30, 4096).unwrap(),
        };
        store_state(&dir, DiskId([5; 16]), &p, true).unwrap();
        let b = dir.read_all(STATE).unwrap();
        assert_eq!(decode_state(&b).unwrap(), (DiskId([5; 16]), p, true));
        for i in 0..b.len() {
            let mut x = b.clone();
            x[i] ^= 0x10;
            assert!(decode_state(&x).is_err(), "flip at {i}");
        }
        for cut in 0..b.len() {
            assert!(decode_state(&b[..cut]).is_err(), "cut at {cut}");
        }
    }
}
