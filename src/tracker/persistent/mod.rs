//! A tracker that survives restarts: a tracker file holding a checkpoint
//! of the dirty set and a coarse write-intent map, mapped while open.
//!
//! The file layout is specified in docs/FORMAT.md ("Tracker file"). The
//! module is split along its concerns: [`format`] (the bytes), [`mapping`]
//! (the open file: a memory map, or a copy in memory over any storage for
//! the crash tests), [`intent`] (the write-intent map) and this lifecycle.
//!
//! * Opening sets the **in-use** flag (flushed) before any write is tracked;
//!   [`close`](PersistentTracker::close) writes a checkpoint and clears it.
//! * Before a write to a **cold** region (1 to 4 MiB) is submitted, the
//!   region's intent bit is set and flushed; writes to hot regions cost two
//!   atomic counter updates and the in-memory mark.
//! * A region's intent bit is cleared lazily once the region has no write in
//!   flight, no dirty block and no block in a cut whose log is not yet
//!   committed: its blocks are safe elsewhere.
//! * After an unclean stop the blocks to resend are the checkpoint plus
//!   every block of every region with its intent bit set. A file that cannot
//!   be trusted is an error, never an empty set.
//! * A clean close records what identifies the disk's content (for a file:
//!   device, inode, size, times; see [`DiskIdentity`]); an open that finds
//!   the disk changed since reports that tracking was lost
//!   ([`ErrorKind::ResyncRequired`]): the writes made while nothing tracked
//!   are unknown.

mod format;
mod intent;
mod mapping;

pub use format::TrackerHeader;

use super::open_writes::OpenWrites;
use super::{BlockSet, FrozenSet, Tracker};
use crate::error::{Error, ErrorKind, Result, ResultExt};
use crate::geometry::{Extent, Geometry};
use crate::id::DiskId;
use crate::io::{split_path, Dir, DiskIdentity, Storage};
use crate::le::{get_u64, put_u64};
use format::{zero_crc, Layout, HEADER_LEN, PAGE, REGION_SHIFTS};
use intent::IntentMap;
use mapping::Mapping;
use parking_lot::Mutex;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The default write-intent region: 4 MiB.
pub const INTENT_REGION_DEFAULT: u32 = 4 << 20;

/// How a tracker file was found when opened.
#[derive(Debug)]
pub enum OpenState {
    /// A new file was created; nothing was tracked before.
    Created,
    /// The last stop was clean; the checkpointed dirty blocks (`dirty` of
    /// them) are marked again.
    Clean {
        /// How many blocks the checkpoint held.
        dirty: u64,
    },
    /// The last stop was unclean; `resend` (the checkpoint plus every intent
    /// region) is marked again, so the next cycle ships it.
    Recovered {
        /// The blocks that may differ from the replica.
        resend: BlockSet,
    },
    /// The file could not be trusted, or the disk changed while nothing
    /// tracked it, and the file was recreated empty: tracking was lost and
    /// a digest resync is required. Holds why.
    Invalid(Error),
}

struct State {
    header: TrackerHeader,
    /// Cuts whose logs are not yet committed: their blocks are safe nowhere
    /// else yet, so their regions keep their intent bits.
    outstanding: Vec<FrozenSet>,
}

/// A [`Tracker`] backed by a tracker file; see the module docs.
///
/// Dropping it without [`close`](Self::close) is an unclean stop: the next
/// open resends the checkpoint and every region with its intent bit set.
pub struct PersistentTracker {
    tracker: Tracker,
    dir: Arc<dyn Dir>,
    name: String,
    path: PathBuf,
    /// The open file; the header and checkpoint slots are written under
    /// `state`, the intent map under the intent map's lock.
    file: Box<dyn Mapping>,
    layout: Layout,
    intent: IntentMap,
    unguarded: OpenWrites,
    /// Set when the file was renamed into place (a resize) but the
    /// directory sync failed: until one succeeds, the name may still lead
    /// to the old file after a power loss, so writes wait for it.
    dir_unsynced: AtomicBool,
    state: Mutex<State>,
}

impl std::fmt::Debug for PersistentTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PersistentTracker")
            .field("path", &self.path)
            .field("tracker", &self.tracker)
            .finish()
    }
}

/// A write announced to a [`PersistentTracker`]; dropping it (or
/// [`finish`](WriteGuard::finish)) marks the blocks. Drop it after the write
/// completed, whether it succeeded or not.
#[must_use = "dropping the guard marks the write as completed"]
pub struct WriteGuard<'a> {
    pt: &'a PersistentTracker,
    extent: Extent,
    regions: (u64, u64),
}

impl WriteGuard<'_> {
    /// Marks the write as completed (same as dropping the guard).
    pub fn finish(self) {}
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        self.pt.finish_write(self.extent, self.regions);
    }
}

/// Creates the file `name` in `dir` for `header` (empty checkpoint, clear
/// intent map) and makes it and its directory entry durable. On error the
/// file is removed again (as far as the error allows), so no half-written
/// file is left to be taken for a damaged tracker.
fn create_file(dir: &dyn Dir, name: &str, header: &TrackerHeader) -> Result<()> {
    let f = dir.create(name)?;
    let written = (|| {
        f.set_len(header.layout().len)?;
        f.write_at(&header.encode(), 0)?;
        f.sync()?;
        dir.sync()
    })();
    if written.is_err() {
        let _ = dir.remove(name);
    }
    written
}

fn check_region(region_size: u32) -> Result<()> {
    if !region_size.is_power_of_two() || !REGION_SHIFTS.contains(&region_size.trailing_zeros()) {
        return Err(Error::invalid(format!(
            "intent region {region_size} is not 1, 2 or 4 MiB"
        )));
    }
    Ok(())
}

impl PersistentTracker {
    /// Creates (or overwrites) a tracker file for a disk, clean and in use.
    ///
    /// `region_size` is the write-intent granularity: a power of two from
    /// 1 MiB to 4 MiB.
    pub fn create(
        path: impl AsRef<Path>,
        disk_id: DiskId,
        geometry: Geometry,
        region_size: u32,
    ) -> Result<Self> {
        let (dir, name) = split_path(path.as_ref())?;
        Self::create_in(dir, &name, disk_id, geometry, region_size)
    }

    /// [`create`](Self::create) for the file `name` in `dir` (any [`Dir`]:
    /// a file system, or memory under a fault plan for crash tests).
    pub fn create_in(
        dir: Arc<dyn Dir>,
        name: &str,
        disk_id: DiskId,
        geometry: Geometry,
        region_size: u32,
    ) -> Result<Self> {
        check_region(region_size)?;
        let layout = Layout::new(geometry, region_size.trailing_zeros())
            .ok_or_else(|| Error::invalid("tracker layout overflows"))?;
        let header = TrackerHeader::new(disk_id, geometry, region_size, zero_crc(layout.words * 8));
        create_file(&*dir, name, &header)?;
        let file = mapping::open(&*dir, name)?;
        Ok(Self::assemble(dir, name, file, header, layout))
    }

    /// Reads and validates the header of a tracker file without opening it.
    pub fn read_header(path: impl AsRef<Path>) -> Result<TrackerHeader> {
        let path = path.as_ref();
        let f = crate::io::FileStorage::open_read_only(path)?;
        Self::header_of(&f).at_path(path).map(|(h, _)| h)
    }

    fn header_of(f: &dyn Storage) -> Result<(TrackerHeader, Layout)> {
        let len = f.len()?;
        let mut b = [0u8; HEADER_LEN];
        let n = (len as usize).min(HEADER_LEN);
        f.read_at(&mut b[..n], 0)?;
        TrackerHeader::decode(&b[..n], len)
    }

    /// Opens an existing tracker file for `disk_id` and `geometry`. `disk`
    /// is the disk's identity now ([`Storage::identity`]); `None` when the
    /// disk offers none.
    ///
    /// Returns [`OpenState::Clean`] or [`OpenState::Recovered`]. A file that
    /// cannot be trusted is an error: [`ErrorKind::Corrupt`] (bad checksum,
    /// truncated), [`ErrorKind::Mismatch`] (another disk or geometry),
    /// [`ErrorKind::Unsupported`] (another version) or
    /// [`ErrorKind::ResyncRequired`] (closed cleanly, but the disk's
    /// identity differs now, or cannot be read now although it was
    /// recorded: something wrote to it while nothing tracked). Tracking is
    /// then lost.
    pub fn open(
        path: impl AsRef<Path>,
        disk_id: DiskId,
        geometry: Geometry,
        disk: Option<DiskIdentity>,
    ) -> Result<(Self, OpenState)> {
        let path = path.as_ref();
        let (dir, name) = split_path(path)?;
        Self::open_in(dir, &name, disk_id, geometry, disk).at_path(path)
    }

    /// [`open`](Self::open) for the file `name` in `dir`.
    pub fn open_in(
        dir: Arc<dyn Dir>,
        name: &str,
        disk_id: DiskId,
        geometry: Geometry,
        disk: Option<DiskIdentity>,
    ) -> Result<(Self, OpenState)> {
        let (header, layout) = Self::header_of(&*dir.open(name)?)?;
        if header.disk_id != disk_id {
            return Err(Error::mismatch(format!(
                "tracker file is for disk {}, not {disk_id}",
                header.disk_id
            )));
        }
        if header.geometry != geometry {
            return Err(Error::mismatch(format!(
                "tracker file geometry is {}, the disk's is {geometry}",
                header.geometry
            )));
        }
        if !header.in_use {
            check_unchanged(header.disk_identity.as_ref(), disk.as_ref())?;
        }
        let file = mapping::open(&*dir, name)?;
        let mut pt = Self::assemble(dir, name, file, header.clone(), layout);
        let checkpoint = pt.read_slot(header.active_slot)?;
        let state = if header.in_use {
            let resend = checkpoint.union(&pt.intent.file_blocks(&*pt.file, geometry));
            pt.tracker.reclaim(&resend);
            pt.intent.adopt_file_bits(&*pt.file);
            OpenState::Recovered { resend }
        } else {
            pt.tracker.reclaim(&checkpoint);
            // The checkpoint covers these blocks until the next one is
            // written, so the stale intent map can go.
            pt.intent.clear_all(&*pt.file)?;
            OpenState::Clean {
                dirty: checkpoint.count(),
            }
        };
        {
            let st = pt.state.get_mut();
            st.header.in_use = true;
            st.header.disk_identity = None;
        }
        pt.write_header()?;
        Ok((pt, state))
    }

    /// Opens the file, or creates it when missing or untrustworthy. The
    /// state says which: [`OpenState::Created`] means an initial sync is
    /// needed, [`OpenState::Invalid`] a digest resync.
    pub fn open_or_create(
        path: impl AsRef<Path>,
        disk_id: DiskId,
        geometry: Geometry,
        region_size: u32,
        disk: Option<DiskIdentity>,
    ) -> Result<(Self, OpenState)> {
        let path = path.as_ref();
        let (dir, name) = split_path(path)?;
        if !dir.exists(&name) {
            return Ok((
                Self::create_in(dir, &name, disk_id, geometry, region_size)?,
                OpenState::Created,
            ));
        }
        match Self::open_in(dir.clone(), &name, disk_id, geometry, disk) {
            Ok(x) => Ok(x),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::Corrupt
                        | ErrorKind::Mismatch
                        | ErrorKind::Unsupported
                        | ErrorKind::ResyncRequired
                ) =>
            {
                Ok((
                    Self::create_in(dir, &name, disk_id, geometry, region_size)?,
                    OpenState::Invalid(e.with_path(path)),
                ))
            }
            Err(e) => Err(e.with_path(path)),
        }
    }

    fn assemble(
        dir: Arc<dyn Dir>,
        name: &str,
        file: Box<dyn Mapping>,
        header: TrackerHeader,
        layout: Layout,
    ) -> Self {
        let region_shift = header.region_size.trailing_zeros();
        PersistentTracker {
            tracker: Tracker::with_generation(header.geometry, header.generation.max(1)),
            path: dir.path_of(name).unwrap_or_else(|| PathBuf::from(name)),
            dir,
            name: name.to_owned(),
            file,
            layout,
            intent: IntentMap::new(&layout, region_shift),
            unguarded: OpenWrites::default(),
            dir_unsynced: AtomicBool::new(false),
            state: Mutex::new(State {
                header,
                outstanding: Vec::new(),
            }),
        }
    }

    /// The disk this tracker belongs to.
    pub fn disk_id(&self) -> DiskId {
        self.state.lock().header.disk_id
    }

    /// The geometry tracked.
    pub fn geometry(&self) -> Geometry {
        self.tracker.geometry()
    }

    /// The file's path (its name, for a file not on a file system).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The in-memory tracker, for read-only queries. Marks must go through
    /// [`begin_write`](Self::begin_write) so intent is recorded.
    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    /// Announces a write of `len` bytes at `offset`; call before submitting
    /// it. When the write touches a cold region, the region's intent bit is
    /// set and flushed first; a concurrent writer to that region waits
    /// until it is durable. Thread-safe and lock-free for hot regions. On
    /// error the write must not be submitted.
    pub fn begin_write(&self, offset: u64, len: u64) -> Result<WriteGuard<'_>> {
        let extent = self.tracker.geometry.blocks_for_range(offset, len)?;
        if self.dir_unsynced.load(Ordering::Acquire) {
            self.sync_dir()?;
        }
        let regions = self.intent.regions_of(offset, len);
        self.intent.begin(&*self.file, regions)?;
        Ok(WriteGuard {
            pt: self,
            extent,
            regions,
        })
    }

    /// [`begin_write`](Self::begin_write) for callers that cannot hold a
    /// guard (the C ABI): pair every call with [`end_write`](Self::end_write)
    /// over the same range once the write completed.
    pub fn begin_write_unguarded(&self, offset: u64, len: u64) -> Result<()> {
        self.begin_raw(offset, len)?;
        self.unguarded.begin(offset, len);
        Ok(())
    }

    /// Completes a write announced by
    /// [`begin_write_unguarded`](Self::begin_write_unguarded) over the same
    /// range: marks its blocks. An end without its begin (or a second end)
    /// is refused as misuse and changes nothing, so it cannot complete
    /// another write still in flight.
    pub fn end_write(&self, offset: u64, len: u64) -> Result<()> {
        self.tracker.geometry.blocks_for_range(offset, len)?;
        self.unguarded.end(offset, len)?;
        self.end_raw(offset, len);
        Ok(())
    }

    /// A begin whose pairing the caller guarantees (the primary's guards).
    pub(crate) fn begin_raw(&self, offset: u64, len: u64) -> Result<()> {
        std::mem::forget(self.begin_write(offset, len)?);
        Ok(())
    }

    /// The end of a [`begin_raw`](Self::begin_raw) over the same range.
    pub(crate) fn end_raw(&self, offset: u64, len: u64) {
        if let Ok(extent) = self.tracker.geometry.blocks_for_range(offset, len) {
            self.finish_write(extent, self.intent.regions_of(offset, len));
        }
    }

    fn finish_write(&self, extent: Extent, regions: (u64, u64)) {
        // Marked before the in-flight count drops, so a clear of the intent
        // bit sees the write either in flight or dirty.
        self.tracker.bitmap.set_range(extent.start, extent.count);
        self.intent.end(regions);
    }

    /// Closes the current generation (see [`Tracker::cut`]). The cut stays
    /// outstanding, keeping its regions' intent bits, until
    /// [`commit`](Self::commit) or [`reclaim`](Self::reclaim).
    pub fn cut(&self) -> FrozenSet {
        let mut st = self.state.lock();
        let frozen = self.tracker.cut();
        st.outstanding.push(frozen.clone());
        st.header.generation = self.tracker.generation();
        // Not flushed: an older generation after a crash is harmless (the
        // checkpoint and intent map decide what is resent).
        self.file.write(0, &st.header.encode());
        frozen
    }

    /// Records that the log of `generation` is durable elsewhere, and clears
    /// the intent bits of the regions that are now clean.
    pub fn commit(&self, generation: u64) -> Result<()> {
        let mut st = self.state.lock();
        let before = st.outstanding.len();
        st.outstanding.retain(|f| f.generation() != generation);
        if st.outstanding.len() == before {
            return Err(Error::new(
                ErrorKind::Misuse,
                format!("generation {generation} is not an outstanding cut"),
            ));
        }
        let g = self.tracker.geometry();
        self.intent.clear_clean(&*self.file, |r| {
            let e = self.intent.region_blocks(g, r);
            self.tracker.any_marked(e)
                || st.outstanding.iter().any(|f| {
                    f.extents_from(e.start)
                        .next()
                        .is_some_and(|x| x.start < e.end())
                })
        })
    }

    /// Hands a failed cycle's blocks back to the tracker.
    pub fn reclaim(&self, frozen: &FrozenSet) {
        let mut st = self.state.lock();
        self.tracker.reclaim(frozen);
        st.outstanding
            .retain(|f| f.generation() != frozen.generation());
    }

    /// Every dirty and outstanding block.
    fn all_dirty(&self, st: &State) -> BlockSet {
        let mut set = self.tracker.snapshot();
        for f in &st.outstanding {
            set = set.union(f);
        }
        set
    }

    /// Stops tracking cleanly: checkpoints every dirty and outstanding
    /// block, records `disk` (the disk's identity now, taken after its last
    /// write; `None` when it offers none) and clears the intent map and the
    /// in-use flag. The next open is clean, if the disk is unchanged.
    pub fn close(self, disk: Option<DiskIdentity>) -> Result<()> {
        if self.dir_unsynced.load(Ordering::Acquire) {
            self.sync_dir()?;
        }
        let mut st = self.state.lock();
        let set = self.all_dirty(&st);
        let slot = 1 - st.header.active_slot;
        let crc = self.write_slot(slot, &set)?;
        st.header.checkpoint_crc = crc;
        st.header.active_slot = slot;
        st.header.generation = self.tracker.generation();
        st.header.in_use = false;
        st.header.disk_identity = disk;
        drop(st);
        self.write_header()?;
        self.intent.clear_all(&*self.file)
    }

    /// Changes the disk size (see [`Tracker::resize`]) and replaces the
    /// file with one for the new geometry, built under a temporary name and
    /// renamed into place, so a crash leaves either file whole. Nothing in
    /// memory changes until the new file is in place: on error the tracker
    /// goes on as before. Drain the disk's I/O first.
    pub fn resize(&mut self, size: u64) -> Result<()> {
        let old = self.tracker.geometry();
        let geometry = old.resized(size)?;
        // The dirty set as the resized tracker will hold it: clipped to a
        // smaller disk, the grown range marked.
        let next_set = {
            let mut t = Tracker::new(old);
            t.reclaim(&self.all_dirty(&self.state.lock()));
            t.resize(size)?;
            t.snapshot()
        };
        let st = self.state.get_mut();
        let mut header = TrackerHeader::new(st.header.disk_id, geometry, st.header.region_size, 0);
        header.generation = self.tracker.generation();
        let layout = header.layout();
        header.checkpoint_crc = zero_crc(layout.words * 8);
        let tmp = format!("{}.resize.partial", self.name);
        create_file(&*self.dir, &tmp, &header)?;
        let file = mapping::open(&*self.dir, &tmp)?;
        let next = Self::assemble(self.dir.clone(), &tmp, file, header, layout);
        let crc = next.write_slot(0, &next_set)?;
        next.state.lock().header.checkpoint_crc = crc;
        next.write_header()?;
        self.dir.rename(&tmp, &self.name)?;
        // The name leads to the new file now: memory follows at once, so
        // no write lands in the old file; its durability waits for the
        // directory sync (retried before the next write if it fails here).
        self.dir_unsynced.store(true, Ordering::Release);
        self.tracker.resize(size)?;
        let outstanding = std::mem::take(&mut self.state.get_mut().outstanding);
        let PersistentTracker {
            file,
            layout,
            intent,
            state,
            ..
        } = next;
        self.file = file;
        self.layout = layout;
        self.intent = intent;
        *self.state.get_mut() = State {
            header: state.into_inner().header,
            outstanding,
        };
        self.sync_dir()
    }

    /// Makes the file's directory entry durable after a rename.
    #[cold]
    fn sync_dir(&self) -> Result<()> {
        self.dir.sync()?;
        self.dir_unsynced.store(false, Ordering::Release);
        Ok(())
    }

    // ---- the header and checkpoint slots ----

    fn write_header(&self) -> Result<()> {
        let h = self.state.lock().header.encode();
        self.file.write(0, &h);
        self.file.flush(0, HEADER_LEN as u64)
    }

    fn read_slot(&self, slot: u8) -> Result<BlockSet> {
        let off = self.layout.slots[slot as usize];
        let mut bytes = vec![0u8; (self.layout.words * 8) as usize];
        self.file.read(off, &mut bytes);
        let want = self.state.lock().header.checkpoint_crc;
        if crc32fast::hash(&bytes) != want {
            return Err(
                Error::corrupt(format!("checkpoint slot {slot} checksum mismatch"))
                    .with_offset(off),
            );
        }
        let blocks = self.tracker.geometry().block_count();
        let mut words = Vec::new();
        for (i, c) in bytes.chunks_exact(8).enumerate() {
            let v = get_u64(c, 0);
            if v != 0 {
                let first = (i as u64) << 6;
                if blocks - first < 64 && v >> (blocks - first) != 0 {
                    return Err(
                        Error::corrupt("checkpoint marks blocks past the end of the disk")
                            .with_offset(off + i as u64 * 8),
                    );
                }
                words.push((i as u64, v));
            }
        }
        Ok(BlockSet::from_words(blocks, words))
    }

    /// Writes `set` into checkpoint `slot`, flushes it, returns its CRC.
    fn write_slot(&self, slot: u8, set: &BlockSet) -> Result<u32> {
        let off = self.layout.slots[slot as usize];
        let mut words = set.words().iter().peekable();
        let mut hasher = crc32fast::Hasher::new();
        let mut page = vec![0u8; PAGE as usize];
        let mut old = vec![0u8; PAGE as usize];
        let total = self.layout.words * 8;
        let mut at = 0;
        while at < total {
            let n = (total - at).min(PAGE);
            page[..n as usize].fill(0);
            let first_word = at / 8;
            while let Some(&&(w, v)) = words.peek() {
                if w >= first_word + n / 8 {
                    break;
                }
                put_u64(&mut page, ((w - first_word) * 8) as usize, v);
                words.next();
            }
            let chunk = &page[..n as usize];
            hasher.update(chunk);
            // Only pages that change are written, so a mostly clean disk
            // does not rewrite the whole slot.
            self.file.read(off + at, &mut old[..n as usize]);
            if old[..n as usize] != *chunk {
                self.file.write(off + at, chunk);
            }
            at += n;
        }
        self.file.flush(off, total)?;
        Ok(hasher.finalize())
    }
}

/// Compares the disk's identity recorded at the last clean close with the
/// identity now.
fn check_unchanged(recorded: Option<&DiskIdentity>, now: Option<&DiskIdentity>) -> Result<()> {
    let lost = |m: String| Err(Error::new(ErrorKind::ResyncRequired, m));
    match (recorded, now) {
        // Closed by an integration whose disk offers no identity: it
        // declared that nothing writes while the disk is not tracked.
        (None, _) => Ok(()),
        (Some(_), None) => lost(
            "the disk's identity was recorded at the last clean close but cannot be read now: \
             writes made since cannot be ruled out"
                .into(),
        ),
        (Some(r), Some(n)) if r == n => Ok(()),
        (Some(r), Some(n)) => {
            let what = if r.device != n.device || r.inode != n.inode {
                "it is another file"
            } else if r.size != n.size {
                "its size changed"
            } else {
                "it was modified"
            };
            lost(format!(
                "the disk changed while no tracker was attached ({what}): the writes made \
                 then are unknown"
            ))
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn geo() -> Geometry {
        Geometry::new(64 << 20, 4096).unwrap()
    }

    #[test]
    fn clean_close_and_reopen_keeps_dirty_set() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.brt");
        let id = DiskId::random().unwrap();
        let pt = PersistentTracker::create(&p, id, geo(), INTENT_REGION_DEFAULT).unwrap();
        pt.begin_write(0, 4096).unwrap().finish();
        pt.begin_write(10 << 20, 8192).unwrap().finish();
        let f = pt.cut();
        pt.begin_write(20 << 20, 1).unwrap().finish();
        assert_eq!(f.count(), 3);
        pt.close(None).unwrap();
        assert!(!PersistentTracker::read_header(&p).unwrap().in_use);
        let (pt, st) = PersistentTracker::open(&p, id, geo(), None).unwrap();
        // The uncommitted cut and the later write are both still dirty.
        assert!(matches!(st, OpenState::Clean { dirty: 4 }), "{st:?}");
        let all: Vec<u64> = pt.cut().blocks().collect();
        assert_eq!(all, vec![0, 2560, 2561, 5120]);
        assert!(PersistentTracker::read_header(&p).unwrap().in_use);
    }

    #[test]
    fn unclean_stop_resends_intent_regions() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.brt");
        let id = DiskId::random().unwrap();
        let pt = PersistentTracker::create(&p, id, geo(), 1 << 20).unwrap();
        pt.begin_write(5 << 20, 4096).unwrap().finish();
        let f = pt.cut();
        pt.commit(f.generation()).unwrap(); // region 5 is clean again
        let g = pt.begin_write(7 << 20, 4096).unwrap();
        std::mem::forget(g); // in flight when we "crash"
        drop(pt);
        let (_pt, st) = PersistentTracker::open(&p, id, geo(), None).unwrap();
        let OpenState::Recovered { resend } = st else {
            panic!("{st:?}")
        };
        let want: Vec<u64> = (7 * 256..8 * 256).collect();
        assert_eq!(resend.blocks().collect::<Vec<_>>(), want);
    }

    #[test]
    fn mismatches_and_corruption_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.brt");
        let id = DiskId::random().unwrap();
        PersistentTracker::create(&p, id, geo(), INTENT_REGION_DEFAULT)
            .unwrap()
            .close(None)
            .unwrap();
        let other = DiskId::random().unwrap();
        let kind = |r: Result<(PersistentTracker, OpenState)>| r.map(|_| ()).unwrap_err().kind();
        assert_eq!(
            kind(PersistentTracker::open(&p, other, geo(), None)),
            ErrorKind::Mismatch
        );
        let g2 = Geometry::new(32 << 20, 4096).unwrap();
        assert_eq!(
            kind(PersistentTracker::open(&p, id, g2, None)),
            ErrorKind::Mismatch
        );
        let (_, st) =
            PersistentTracker::open_or_create(&p, other, geo(), INTENT_REGION_DEFAULT, None)
                .unwrap();
        assert!(matches!(st, OpenState::Invalid(ref e) if e.kind() == ErrorKind::Mismatch));
    }
}
