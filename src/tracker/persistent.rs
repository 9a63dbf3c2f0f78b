//! A tracker that survives restarts: a memory-mapped file holding a
//! checkpoint of the dirty set and a coarse write-intent map.
//!
//! The file layout is specified in docs/FORMAT.md ("Tracker file").
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

use super::{BlockSet, FrozenSet, Tracker};
use crate::error::{Error, ErrorKind, Result, ResultExt};
use crate::geometry::{Extent, Geometry};
use crate::id::DiskId;
use crate::le::{get_u32, get_u64, put_u32, put_u64};
use memmap2::MmapMut;
use parking_lot::Mutex;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// The default write-intent region: 4 MiB.
pub const INTENT_REGION_DEFAULT: u32 = 4 << 20;
const REGION_SHIFTS: std::ops::RangeInclusive<u32> = 20..=22;

const MAGIC: [u8; 8] = *b"BRTRACK\0";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 128;
const HEADER_CRC_AT: usize = HEADER_LEN - 4;
const PAGE: u64 = 4096;
const FLAG_IN_USE: u32 = 1;
const KNOWN_FLAGS: u32 = FLAG_IN_USE;

/// Where each part of a tracker file lies, derived from its geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    words: u64,
    regions: u64,
    intent_words: u64,
    slots: [u64; 2],
    intent: u64,
    len: u64,
}

fn page_up(n: u64) -> Option<u64> {
    n.checked_add(PAGE - 1).map(|n| n & !(PAGE - 1))
}

impl Layout {
    fn new(geometry: Geometry, region_shift: u32) -> Option<Layout> {
        let words = geometry.block_count().div_ceil(64);
        let regions = geometry.size().div_ceil(1 << region_shift);
        let intent_words = regions.div_ceil(64);
        let slot_len = page_up(words.checked_mul(8)?)?;
        let slot0 = PAGE;
        let slot1 = slot0.checked_add(slot_len)?;
        let intent = slot1.checked_add(slot_len)?;
        let len = intent.checked_add(page_up(intent_words * 8)?)?;
        Some(Layout {
            words,
            regions,
            intent_words,
            slots: [slot0, slot1],
            intent,
            len,
        })
    }
}

/// The header of a tracker file, as [`PersistentTracker::read_header`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackerHeader {
    /// The disk the file tracks.
    pub disk_id: DiskId,
    /// The disk's geometry when the file was last written.
    pub geometry: Geometry,
    /// The size of one write-intent region in bytes.
    pub region_size: u32,
    /// The generation the next cut closes.
    pub generation: u64,
    /// Set while a tracker has the file open; still set after an unclean stop.
    pub in_use: bool,
    /// Which checkpoint slot (0 or 1) is current.
    pub active_slot: u8,
    /// CRC32 of the current checkpoint slot.
    pub checkpoint_crc: u32,
}

impl TrackerHeader {
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        put_u32(&mut b, 8, VERSION);
        put_u32(&mut b, 12, if self.in_use { FLAG_IN_USE } else { 0 });
        b[16..32].copy_from_slice(&self.disk_id.0);
        put_u64(&mut b, 32, self.geometry.size());
        put_u32(&mut b, 40, self.geometry.block_size());
        put_u32(&mut b, 44, self.region_size.trailing_zeros());
        put_u64(&mut b, 48, self.generation);
        b[56] = self.active_slot;
        let layout = self.layout();
        put_u64(&mut b, 64, layout.words);
        put_u64(&mut b, 72, layout.intent_words);
        put_u32(&mut b, 80, self.checkpoint_crc);
        let crc = crc32fast::hash(&b[..HEADER_CRC_AT]);
        put_u32(&mut b, HEADER_CRC_AT, crc);
        b
    }

    fn layout(&self) -> Layout {
        Layout::new(self.geometry, self.region_size.trailing_zeros())
            .expect("layout of a validated header")
    }

    /// Decodes and validates a header read from a file of `file_len` bytes.
    fn decode(b: &[u8], file_len: u64) -> Result<(TrackerHeader, Layout)> {
        if b.len() < HEADER_LEN {
            return Err(Error::corrupt(format!(
                "truncated tracker file: {} bytes, header needs {HEADER_LEN}",
                b.len()
            )));
        }
        if b[0..8] != MAGIC {
            return Err(Error::corrupt("not a tracker file: bad magic").with_offset(0));
        }
        let version = get_u32(b, 8);
        if version != VERSION {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!("tracker file version {version}, this build reads {VERSION}"),
            )
            .with_offset(8));
        }
        if crc32fast::hash(&b[..HEADER_CRC_AT]) != get_u32(b, HEADER_CRC_AT) {
            return Err(Error::corrupt("tracker header checksum mismatch")
                .with_offset(HEADER_CRC_AT as u64));
        }
        let flags = get_u32(b, 12);
        if flags & !KNOWN_FLAGS != 0 {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!("unknown tracker flags {flags:#x}"),
            )
            .with_offset(12));
        }
        let geometry = Geometry::new(get_u64(b, 32), get_u32(b, 40)).map_err(|e| {
            Error::corrupt(format!("tracker geometry: {}", e.message())).with_offset(32)
        })?;
        let shift = get_u32(b, 44);
        if !REGION_SHIFTS.contains(&shift) {
            return Err(
                Error::corrupt(format!("intent region shift {shift} outside 20..=22"))
                    .with_offset(44),
            );
        }
        let active_slot = b[56];
        if active_slot > 1 {
            return Err(Error::corrupt(format!("active slot {active_slot}")).with_offset(56));
        }
        let layout = Layout::new(geometry, shift)
            .ok_or_else(|| Error::corrupt("tracker layout overflows").with_offset(32))?;
        if get_u64(b, 64) != layout.words || get_u64(b, 72) != layout.intent_words {
            return Err(
                Error::corrupt("tracker word counts do not match its geometry").with_offset(64),
            );
        }
        if file_len != layout.len {
            return Err(Error::corrupt(format!(
                "tracker file is {file_len} bytes, its geometry needs {}",
                layout.len
            )));
        }
        let mut id = [0; 16];
        id.copy_from_slice(&b[16..32]);
        Ok((
            TrackerHeader {
                disk_id: DiskId(id),
                geometry,
                region_size: 1 << shift,
                generation: get_u64(b, 48),
                in_use: flags & FLAG_IN_USE != 0,
                active_slot,
                checkpoint_crc: get_u32(b, 80),
            },
            layout,
        ))
    }
}

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
    /// The file could not be trusted and was recreated empty: tracking was
    /// lost and a digest resync is required. Holds why.
    Invalid(Error),
}

struct State {
    header: TrackerHeader,
    /// Cuts whose logs are not yet committed: their blocks are safe nowhere
    /// else yet, so their regions keep their intent bits.
    outstanding: Vec<FrozenSet>,
}

/// A [`Tracker`] backed by a memory-mapped file; see the module docs.
///
/// Dropping it without [`close`](Self::close) is an unclean stop: the next
/// open resends the checkpoint and every region with its intent bit set.
pub struct PersistentTracker {
    tracker: Tracker,
    path: PathBuf,
    map: MmapMut,
    /// The mapping's start; written only under `state` (header, slots) or
    /// `intent_lock` (intent map).
    base: *mut u8,
    layout: Layout,
    region_shift: u32,
    /// Writes in flight per region.
    inflight: Box<[AtomicU32]>,
    /// In-memory copy of the intent map that writers check without a lock.
    shadow: Box<[AtomicU64]>,
    intent_lock: Mutex<()>,
    state: Mutex<State>,
}

// SAFETY: `base` points into `map`, which lives as long as `self` and is
// never remapped while shared. Every write through `base` happens under
// `state` (header and checkpoint slots) or `intent_lock` (intent map), and
// the other fields are thread-safe types.
unsafe impl Send for PersistentTracker {}
// SAFETY: as for `Send`: shared access only reads through `base` under the
// same locks that guard its writes.
unsafe impl Sync for PersistentTracker {}

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

fn open_rw(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| Error::io("open tracker file", e).with_path(path))
}

fn map(file: &File, path: &Path) -> Result<MmapMut> {
    // SAFETY: the file is ours for the tracker's lifetime. Another process
    // truncating it while mapped would fault; docs/FORMAT.md says the file
    // belongs to one tracker at a time.
    unsafe { MmapMut::map_mut(file) }.map_err(|e| Error::io("map tracker file", e).with_path(path))
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
        let path = path.as_ref();
        let shift = region_size.trailing_zeros();
        if !region_size.is_power_of_two() || !REGION_SHIFTS.contains(&shift) {
            return Err(Error::invalid(format!(
                "intent region {region_size} is not 1, 2 or 4 MiB"
            )));
        }
        let layout = Layout::new(geometry, shift)
            .ok_or_else(|| Error::invalid("tracker layout overflows"))?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| Error::io("create tracker file", e).with_path(path))?;
        file.set_len(layout.len)
            .map_err(|e| Error::io("size tracker file", e).with_path(path))?;
        let header = TrackerHeader {
            disk_id,
            geometry,
            region_size,
            generation: 1,
            in_use: true,
            active_slot: 0,
            checkpoint_crc: zero_crc(layout.words * 8),
        };
        file.write_all_at(&header.encode(), 0)
            .map_err(|e| Error::io("write tracker header", e).with_path(path))?;
        file.sync_all()
            .map_err(|e| Error::io("sync tracker file", e).with_path(path))?;
        crate::io::sync_parent_dir(path)?;
        let map = map(&file, path)?;
        Ok(Self::assemble(path, map, header, layout))
    }

    /// Reads and validates the header of a tracker file without opening it.
    pub fn read_header(path: impl AsRef<Path>) -> Result<TrackerHeader> {
        let path = path.as_ref();
        let file =
            File::open(path).map_err(|e| Error::io("open tracker file", e).with_path(path))?;
        Self::header_of(&file, path).map(|(h, _)| h)
    }

    fn header_of(file: &File, path: &Path) -> Result<(TrackerHeader, Layout)> {
        let len = file
            .metadata()
            .map_err(|e| Error::io("stat tracker file", e).with_path(path))?
            .len();
        let mut b = [0u8; HEADER_LEN];
        let n = (len as usize).min(HEADER_LEN);
        file.read_exact_at(&mut b[..n], 0)
            .map_err(|e| Error::io("read tracker header", e).with_path(path))?;
        TrackerHeader::decode(&b[..n], len).at_path(path)
    }

    /// Opens an existing tracker file for `disk_id` and `geometry`.
    ///
    /// Returns [`OpenState::Clean`] or [`OpenState::Recovered`]. A file that
    /// cannot be trusted is an error: [`ErrorKind::Corrupt`] (bad checksum,
    /// truncated), [`ErrorKind::Mismatch`] (another disk or geometry) or
    /// [`ErrorKind::Unsupported`] (a newer version); tracking is then lost.
    pub fn open(
        path: impl AsRef<Path>,
        disk_id: DiskId,
        geometry: Geometry,
    ) -> Result<(Self, OpenState)> {
        let path = path.as_ref();
        let file = open_rw(path)?;
        let (header, layout) = Self::header_of(&file, path)?;
        if header.disk_id != disk_id {
            return Err(Error::mismatch(format!(
                "tracker file is for disk {}, not {disk_id}",
                header.disk_id
            ))
            .with_path(path));
        }
        if header.geometry != geometry {
            return Err(Error::mismatch(format!(
                "tracker file geometry is {}, the disk's is {geometry}",
                header.geometry
            ))
            .with_path(path));
        }
        let map = map(&file, path)?;
        let mut pt = Self::assemble(path, map, header.clone(), layout);
        let checkpoint = pt.read_slot(header.active_slot).at_path(path)?;
        let state = if header.in_use {
            let resend = checkpoint.union(&pt.intent_blocks());
            pt.tracker.reclaim(&resend);
            for r in 0..layout.regions {
                if pt.intent_bit(r) {
                    pt.shadow[(r >> 6) as usize].fetch_or(1 << (r & 63), Ordering::Relaxed);
                }
            }
            OpenState::Recovered { resend }
        } else {
            pt.tracker.reclaim(&checkpoint);
            // The checkpoint covers these blocks until the next one is
            // written, so the stale intent map can go.
            pt.clear_intent_map()?;
            OpenState::Clean {
                dirty: checkpoint.count(),
            }
        };
        pt.state.get_mut().header.in_use = true;
        pt.write_header(true)?;
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
    ) -> Result<(Self, OpenState)> {
        let path = path.as_ref();
        if !path.exists() {
            return Ok((
                Self::create(path, disk_id, geometry, region_size)?,
                OpenState::Created,
            ));
        }
        match Self::open(path, disk_id, geometry) {
            Ok(x) => Ok(x),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::Corrupt | ErrorKind::Mismatch | ErrorKind::Unsupported
                ) =>
            {
                Ok((
                    Self::create(path, disk_id, geometry, region_size)?,
                    OpenState::Invalid(e),
                ))
            }
            Err(e) => Err(e),
        }
    }

    fn assemble(path: &Path, mut map: MmapMut, header: TrackerHeader, layout: Layout) -> Self {
        let base = map.as_mut_ptr();
        let region_shift = header.region_size.trailing_zeros();
        PersistentTracker {
            tracker: Tracker::with_generation(header.geometry, header.generation.max(1)),
            path: path.to_path_buf(),
            map,
            base,
            layout,
            region_shift,
            inflight: (0..layout.regions).map(|_| AtomicU32::new(0)).collect(),
            shadow: (0..layout.intent_words)
                .map(|_| AtomicU64::new(0))
                .collect(),
            intent_lock: Mutex::new(()),
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

    /// The file's path.
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
    /// set and flushed first. Thread-safe and lock-free for hot regions.
    pub fn begin_write(&self, offset: u64, len: u64) -> Result<WriteGuard<'_>> {
        let extent = self.tracker.geometry.blocks_for_range(offset, len)?;
        let regions = (
            offset >> self.region_shift,
            (offset + len - 1) >> self.region_shift,
        );
        for r in regions.0..=regions.1 {
            self.inflight[r as usize].fetch_add(1, Ordering::SeqCst);
        }
        let guard = WriteGuard {
            pt: self,
            extent,
            regions,
        };
        for r in regions.0..=regions.1 {
            let bit = 1 << (r & 63);
            if self.shadow[(r >> 6) as usize].load(Ordering::SeqCst) & bit == 0 {
                self.set_intent(r)?;
            }
        }
        Ok(guard)
    }

    /// [`begin_write`](Self::begin_write) for callers that cannot hold a
    /// guard (the C ABI): pair every call with [`end_write`](Self::end_write)
    /// over the same range once the write completed.
    pub fn begin_write_unguarded(&self, offset: u64, len: u64) -> Result<()> {
        std::mem::forget(self.begin_write(offset, len)?);
        Ok(())
    }

    /// Completes a write announced by
    /// [`begin_write_unguarded`](Self::begin_write_unguarded): marks its
    /// blocks. An end without a begin in the same regions is refused.
    pub fn end_write(&self, offset: u64, len: u64) -> Result<()> {
        let extent = self.tracker.geometry.blocks_for_range(offset, len)?;
        let regions = (
            offset >> self.region_shift,
            (offset + len - 1) >> self.region_shift,
        );
        if (regions.0..=regions.1).any(|r| self.inflight[r as usize].load(Ordering::SeqCst) == 0) {
            return Err(Error::new(
                ErrorKind::Misuse,
                format!("end of a write of {len} bytes at {offset} that was never begun"),
            ));
        }
        self.finish_write(extent, regions);
        Ok(())
    }

    fn finish_write(&self, extent: Extent, regions: (u64, u64)) {
        self.tracker.bitmap.set_range(extent.start, extent.count);
        for r in regions.0..=regions.1 {
            self.inflight[r as usize].fetch_sub(1, Ordering::SeqCst);
        }
    }

    #[cold]
    fn set_intent(&self, r: u64) -> Result<()> {
        let w = (r >> 6) as usize;
        let bit = 1u64 << (r & 63);
        {
            let _g = self.intent_lock.lock();
            self.shadow[w].fetch_or(bit, Ordering::SeqCst);
            let v = self.intent_word(w) | bit;
            self.put_intent_word(w, v);
        }
        self.flush(self.layout.intent + w as u64 * 8, 8)
    }

    /// Closes the current generation (see [`Tracker::cut`]). The cut stays
    /// outstanding, keeping its regions' intent bits, until
    /// [`commit`](Self::commit) or [`reclaim`](Self::reclaim).
    pub fn cut(&self) -> FrozenSet {
        let mut st = self.state.lock();
        let frozen = self.tracker.cut();
        st.outstanding.push(frozen.clone());
        st.header.generation = self.tracker.generation();
        self.put_header(&st.header);
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
        self.clear_clean_intents(&st)
    }

    /// Hands a failed cycle's blocks back to the tracker.
    pub fn reclaim(&self, frozen: &FrozenSet) {
        let mut st = self.state.lock();
        self.tracker.reclaim(frozen);
        st.outstanding
            .retain(|f| f.generation() != frozen.generation());
    }

    fn region_dirty(&self, st: &State, r: u64) -> bool {
        let g = self.tracker.geometry();
        let first = (r << self.region_shift) >> g.block_shift();
        let end = (((r + 1) << self.region_shift) >> g.block_shift()).min(g.block_count());
        self.tracker.any_marked(Extent::new(first, end - first))
            || st
                .outstanding
                .iter()
                .any(|f| f.extents_from(first).next().is_some_and(|e| e.start < end))
    }

    /// Clears the intent bit of every region with no write in flight and no
    /// block dirty or outstanding. A writer that raced the clear either sees
    /// the bit gone and sets it again itself, or is seen in flight here.
    fn clear_clean_intents(&self, st: &State) -> Result<()> {
        let _g = self.intent_lock.lock();
        let mut changed = false;
        for w in 0..self.layout.intent_words as usize {
            let mut v = self.shadow[w].load(Ordering::SeqCst);
            let mut cleared = 0;
            while v != 0 {
                let b = v.trailing_zeros();
                v &= v - 1;
                let r = ((w as u64) << 6) | b as u64;
                let bit = 1u64 << b;
                self.shadow[w].fetch_and(!bit, Ordering::SeqCst);
                if self.inflight[r as usize].load(Ordering::SeqCst) != 0 || self.region_dirty(st, r)
                {
                    self.shadow[w].fetch_or(bit, Ordering::SeqCst);
                } else {
                    cleared |= bit;
                }
            }
            if cleared != 0 {
                let v = self.intent_word(w) & !cleared;
                self.put_intent_word(w, v);
                changed = true;
            }
        }
        if changed {
            self.flush(self.layout.intent, self.layout.intent_words * 8)?;
        }
        Ok(())
    }

    /// Stops tracking cleanly: checkpoints every dirty and outstanding block,
    /// clears the intent map and the in-use flag. The next open is clean.
    pub fn close(self) -> Result<()> {
        let st = self.state.lock();
        let mut set = self.tracker.snapshot();
        for f in &st.outstanding {
            set = set.union(f);
        }
        let mut header = st.header.clone();
        drop(st);
        let slot = 1 - header.active_slot;
        header.checkpoint_crc = self.write_slot(slot, &set)?;
        header.active_slot = slot;
        header.generation = self.tracker.generation();
        header.in_use = false;
        self.state.lock().header = header;
        self.write_header(true)?;
        self.clear_intent_map()
    }

    /// Changes the disk size (see [`Tracker::resize`]) and rewrites the file
    /// for the new geometry through a temporary file and a rename, so a
    /// crash leaves either file whole. Drain the disk's I/O first.
    pub fn resize(&mut self, size: u64) -> Result<()> {
        self.tracker.resize(size)?;
        let geometry = self.tracker.geometry();
        let st = self.state.get_mut();
        let mut set = self.tracker.snapshot();
        for f in &st.outstanding {
            set = set.union(f);
        }
        // Clip to the new disk: blocks past the end are gone.
        let clip = Tracker::new(geometry);
        clip.reclaim(&set);
        let set = clip.snapshot();
        let tmp = self.path.with_extension("resize.partial");
        let next =
            PersistentTracker::create(&tmp, st.header.disk_id, geometry, st.header.region_size)?;
        {
            let mut nst = next.state.lock();
            nst.header.checkpoint_crc = next.write_slot(0, &set)?;
            nst.header.generation = self.tracker.generation();
            next.put_header(&nst.header);
        }
        next.flush(0, next.layout.len)?;
        std::fs::rename(&tmp, &self.path)
            .map_err(|e| Error::io("rename resized tracker", e).with_path(&tmp))?;
        crate::io::sync_parent_dir(&self.path)?;
        let outstanding = std::mem::take(&mut st.outstanding);
        let PersistentTracker {
            map,
            base,
            layout,
            inflight,
            shadow,
            state,
            ..
        } = next;
        self.map = map;
        self.base = base;
        self.layout = layout;
        self.inflight = inflight;
        self.shadow = shadow;
        *self.state.get_mut() = State {
            header: state.into_inner().header,
            outstanding,
        };
        Ok(())
    }

    // ---- raw access to the mapping ----

    /// The bytes at `off`; the caller holds the lock guarding that part.
    fn bytes(&self, off: u64, len: u64) -> &[u8] {
        assert!((off + len) as usize <= self.map.len());
        // SAFETY: the range lies within the mapping (checked above), which
        // outlives `&self`; its writers hold the lock the caller holds, so
        // the bytes do not change while the slice lives. Only this range is
        // borrowed, not the whole mapping that other threads write into.
        unsafe { std::slice::from_raw_parts(self.base.add(off as usize), len as usize) }
    }

    fn put_bytes(&self, off: u64, src: &[u8]) {
        assert!(off as usize + src.len() <= self.map.len());
        // SAFETY: the range lies within the mapping (checked above), and the
        // callers hold the lock that guards this part of the file, so no
        // other write overlaps.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.base.add(off as usize), src.len())
        }
    }

    fn flush(&self, off: u64, len: u64) -> Result<()> {
        self.map
            .flush_range(off as usize, len as usize)
            .map_err(|e| {
                Error::io("flush tracker file", e)
                    .with_path(&self.path)
                    .with_offset(off)
            })
    }

    fn put_header(&self, h: &TrackerHeader) {
        self.put_bytes(0, &h.encode());
    }

    fn write_header(&self, flush: bool) -> Result<()> {
        let h = self.state.lock().header.clone();
        self.put_header(&h);
        if flush {
            self.flush(0, HEADER_LEN as u64)?;
        }
        Ok(())
    }

    fn intent_word(&self, w: usize) -> u64 {
        get_u64(self.bytes(self.layout.intent + w as u64 * 8, 8), 0)
    }

    fn put_intent_word(&self, w: usize, v: u64) {
        self.put_bytes(self.layout.intent + w as u64 * 8, &v.to_le_bytes());
    }

    fn intent_bit(&self, r: u64) -> bool {
        self.intent_word((r >> 6) as usize) & (1 << (r & 63)) != 0
    }

    fn clear_intent_map(&self) -> Result<()> {
        {
            let _g = self.intent_lock.lock();
            for w in 0..self.layout.intent_words as usize {
                if self.intent_word(w) != 0 {
                    self.put_intent_word(w, 0);
                }
                self.shadow[w].store(0, Ordering::SeqCst);
            }
        }
        self.flush(self.layout.intent, self.layout.intent_words * 8)
    }

    /// Every block of every region whose intent bit is set in the file.
    fn intent_blocks(&self) -> BlockSet {
        let g = self.tracker.geometry();
        let extents = (0..self.layout.regions)
            .filter(|&r| self.intent_bit(r))
            .map(|r| {
                let first = (r << self.region_shift) >> g.block_shift();
                let end = (((r + 1) << self.region_shift) >> g.block_shift()).min(g.block_count());
                Extent::new(first, end - first)
            });
        BlockSet::from_extents(g.block_count(), extents).expect("regions lie within the disk")
    }

    fn read_slot(&self, slot: u8) -> Result<BlockSet> {
        let off = self.layout.slots[slot as usize];
        let bytes = self.bytes(off, self.layout.words * 8);
        let want = self.state.lock().header.checkpoint_crc;
        if crc32fast::hash(bytes) != want {
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
            if self.bytes(off + at, n) != chunk {
                self.put_bytes(off + at, chunk);
            }
            at += n;
        }
        self.flush(off, total)?;
        Ok(hasher.finalize())
    }
}

/// CRC32 of `len` zero bytes, the checksum of an empty checkpoint.
fn zero_crc(len: u64) -> u32 {
    let zeros = [0u8; PAGE as usize];
    let mut h = crc32fast::Hasher::new();
    let mut left = len;
    while left > 0 {
        let n = left.min(PAGE);
        h.update(&zeros[..n as usize]);
        left -= n;
    }
    h.finalize()
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
        pt.close().unwrap();
        assert!(!PersistentTracker::read_header(&p).unwrap().in_use);
        let (pt, st) = PersistentTracker::open(&p, id, geo()).unwrap();
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
        let (_pt, st) = PersistentTracker::open(&p, id, geo()).unwrap();
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
            .close()
            .unwrap();
        let other = DiskId::random().unwrap();
        let kind = |r: Result<(PersistentTracker, OpenState)>| r.map(|_| ()).unwrap_err().kind();
        assert_eq!(
            kind(PersistentTracker::open(&p, other, geo())),
            ErrorKind::Mismatch
        );
        let g2 = Geometry::new(32 << 20, 4096).unwrap();
        assert_eq!(
            kind(PersistentTracker::open(&p, id, g2)),
            ErrorKind::Mismatch
        );
        let (_, st) =
            PersistentTracker::open_or_create(&p, other, geo(), INTENT_REGION_DEFAULT).unwrap();
        assert!(matches!(st, OpenState::Invalid(ref e) if e.kind() == ErrorKind::Mismatch));
    }
}
