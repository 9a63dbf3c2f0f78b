//! The tracker file's bytes: where each part lies and the header's
//! encoding, declared once for writing and reading. Specified in
//! docs/FORMAT.md ("Tracker file").

use crate::error::{Error, ErrorKind, Result};
use crate::geometry::Geometry;
use crate::id::DiskId;
use crate::io::DiskIdentity;
use crate::le::{get_u32, get_u64, put_u32, put_u64};

pub(super) const MAGIC: [u8; 8] = *b"BRTRACK\0";
/// Version 2 added the disk identity at clean close (version 1 files are
/// refused as unsupported: their disk may have changed unseen, so they
/// cost one digest resync).
pub(super) const VERSION: u32 = 2;
pub(super) const HEADER_LEN: usize = 256;
const HEADER_CRC_AT: usize = HEADER_LEN - 4;
pub(super) const PAGE: u64 = 4096;
/// Intent regions of 1, 2 or 4 MiB.
pub(super) const REGION_SHIFTS: std::ops::RangeInclusive<u32> = 20..=22;
const FLAG_IN_USE: u32 = 1;
const FLAG_IDENTITY: u32 = 2;
const KNOWN_FLAGS: u32 = FLAG_IN_USE | FLAG_IDENTITY;

/// Byte offsets of the header fields.
mod at {
    pub const VERSION: usize = 8;
    pub const FLAGS: usize = 12;
    pub const DISK_ID: usize = 16;
    pub const SIZE: usize = 32;
    pub const BLOCK_SIZE: usize = 40;
    pub const REGION_SHIFT: usize = 44;
    pub const GENERATION: usize = 48;
    pub const ACTIVE_SLOT: usize = 56;
    pub const WORDS: usize = 64;
    pub const INTENT_WORDS: usize = 72;
    pub const CHECKPOINT_CRC: usize = 80;
    pub const DEVICE: usize = 88;
    pub const INODE: usize = 96;
    pub const DISK_SIZE: usize = 104;
    pub const MODIFIED: usize = 112;
    pub const CHANGED: usize = 120;
    /// Reserved, zero: 57..64, 84..88 and 128..252.
    pub const RESERVED: [(usize, usize); 3] = [(57, 64), (84, 88), (128, 252)];
}

/// Where each part of a tracker file lies, derived from its geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Layout {
    /// Bitmap words per checkpoint slot.
    pub words: u64,
    /// Write-intent regions.
    pub regions: u64,
    /// Words of the intent map.
    pub intent_words: u64,
    /// Offsets of the two checkpoint slots.
    pub slots: [u64; 2],
    /// Offset of the intent map.
    pub intent: u64,
    /// The file's length.
    pub len: u64,
}

fn page_up(n: u64) -> Option<u64> {
    n.checked_add(PAGE - 1).map(|n| n & !(PAGE - 1))
}

impl Layout {
    /// The layout for `geometry` and regions of `1 << region_shift` bytes;
    /// `None` when it overflows.
    pub fn new(geometry: Geometry, region_shift: u32) -> Option<Layout> {
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

/// The header of a tracker file, as
/// [`PersistentTracker::read_header`](super::PersistentTracker::read_header)
/// finds it.
#[non_exhaustive]
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
    /// What identified the disk's content at the last clean close, when
    /// the disk offered it; `None` while in use.
    pub disk_identity: Option<DiskIdentity>,
}

impl TrackerHeader {
    /// A new file's header: clean checkpoint, in use, generation 1.
    pub(super) fn new(
        disk_id: DiskId,
        geometry: Geometry,
        region_size: u32,
        checkpoint_crc: u32,
    ) -> Self {
        TrackerHeader {
            disk_id,
            geometry,
            region_size,
            generation: 1,
            in_use: true,
            active_slot: 0,
            checkpoint_crc,
            disk_identity: None,
        }
    }

    pub(super) fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        put_u32(&mut b, at::VERSION, VERSION);
        let mut flags = if self.in_use { FLAG_IN_USE } else { 0 };
        if let Some(d) = &self.disk_identity {
            flags |= FLAG_IDENTITY;
            put_u64(&mut b, at::DEVICE, d.device);
            put_u64(&mut b, at::INODE, d.inode);
            put_u64(&mut b, at::DISK_SIZE, d.size);
            put_u64(&mut b, at::MODIFIED, d.modified_ns.cast_unsigned());
            put_u64(&mut b, at::CHANGED, d.changed_ns.cast_unsigned());
        }
        put_u32(&mut b, at::FLAGS, flags);
        b[at::DISK_ID..at::DISK_ID + 16].copy_from_slice(&self.disk_id.0);
        put_u64(&mut b, at::SIZE, self.geometry.size());
        put_u32(&mut b, at::BLOCK_SIZE, self.geometry.block_size());
        put_u32(&mut b, at::REGION_SHIFT, self.region_size.trailing_zeros());
        put_u64(&mut b, at::GENERATION, self.generation);
        b[at::ACTIVE_SLOT] = self.active_slot;
        let layout = self.layout();
        put_u64(&mut b, at::WORDS, layout.words);
        put_u64(&mut b, at::INTENT_WORDS, layout.intent_words);
        put_u32(&mut b, at::CHECKPOINT_CRC, self.checkpoint_crc);
        let crc = crc32fast::hash(&b[..HEADER_CRC_AT]);
        put_u32(&mut b, HEADER_CRC_AT, crc);
        b
    }

    pub(super) fn layout(&self) -> Layout {
        Layout::new(self.geometry, self.region_size.trailing_zeros())
            .expect("layout of a validated header")
    }

    /// Decodes and validates a header read from a file of `file_len` bytes.
    pub(super) fn decode(b: &[u8], file_len: u64) -> Result<(TrackerHeader, Layout)> {
        if b.len() < 12 || b[0..8] != MAGIC {
            if b.len() < 8 {
                return Err(Error::corrupt(format!(
                    "truncated tracker file: {} bytes",
                    b.len()
                )));
            }
            return Err(Error::corrupt("not a tracker file: bad magic").with_offset(0));
        }
        let version = get_u32(b, at::VERSION);
        if version != VERSION {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!("tracker file version {version}, this build reads {VERSION}"),
            )
            .with_offset(at::VERSION as u64));
        }
        if b.len() < HEADER_LEN {
            return Err(Error::corrupt(format!(
                "truncated tracker file: {} bytes, header needs {HEADER_LEN}",
                b.len()
            )));
        }
        if crc32fast::hash(&b[..HEADER_CRC_AT]) != get_u32(b, HEADER_CRC_AT) {
            return Err(Error::corrupt("tracker header checksum mismatch")
                .with_offset(HEADER_CRC_AT as u64));
        }
        let flags = get_u32(b, at::FLAGS);
        if flags & !KNOWN_FLAGS != 0 {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!("unknown tracker flags {flags:#x}"),
            )
            .with_offset(at::FLAGS as u64));
        }
        for (from, to) in at::RESERVED {
            if b[from..to].iter().any(|&x| x != 0) {
                return Err(
                    Error::corrupt("tracker header: reserved bytes are not zero")
                        .with_offset(from as u64),
                );
            }
        }
        let geometry =
            Geometry::new(get_u64(b, at::SIZE), get_u32(b, at::BLOCK_SIZE)).map_err(|e| {
                Error::corrupt(format!("tracker geometry: {}", e.message()))
                    .with_offset(at::SIZE as u64)
            })?;
        let shift = get_u32(b, at::REGION_SHIFT);
        if !REGION_SHIFTS.contains(&shift) {
            return Err(
                Error::corrupt(format!("intent region shift {shift} outside 20..=22"))
                    .with_offset(at::REGION_SHIFT as u64),
            );
        }
        let active_slot = b[at::ACTIVE_SLOT];
        if active_slot > 1 {
            return Err(Error::corrupt(format!("active slot {active_slot}"))
                .with_offset(at::ACTIVE_SLOT as u64));
        }
        let layout = Layout::new(geometry, shift).ok_or_else(|| {
            Error::corrupt("tracker layout overflows").with_offset(at::SIZE as u64)
        })?;
        if get_u64(b, at::WORDS) != layout.words
            || get_u64(b, at::INTENT_WORDS) != layout.intent_words
        {
            return Err(
                Error::corrupt("tracker word counts do not match its geometry")
                    .with_offset(at::WORDS as u64),
            );
        }
        if file_len != layout.len {
            return Err(Error::corrupt(format!(
                "tracker file is {file_len} bytes, its geometry needs {}",
                layout.len
            )));
        }
        let identity = (flags & FLAG_IDENTITY != 0).then(|| DiskIdentity {
            device: get_u64(b, at::DEVICE),
            inode: get_u64(b, at::INODE),
            size: get_u64(b, at::DISK_SIZE),
            modified_ns: get_u64(b, at::MODIFIED).cast_signed(),
            changed_ns: get_u64(b, at::CHANGED).cast_signed(),
        });
        if identity.is_none() && b[at::DEVICE..at::CHANGED + 8].iter().any(|&x| x != 0) {
            return Err(
                Error::corrupt("tracker header: disk identity bytes without the flag")
                    .with_offset(at::DEVICE as u64),
            );
        }
        let mut id = [0; 16];
        id.copy_from_slice(&b[at::DISK_ID..at::DISK_ID + 16]);
        Ok((
            TrackerHeader {
                disk_id: DiskId(id),
                geometry,
                region_size: 1 << shift,
                generation: get_u64(b, at::GENERATION),
                in_use: flags & FLAG_IN_USE != 0,
                active_slot,
                checkpoint_crc: get_u32(b, at::CHECKPOINT_CRC),
                disk_identity: identity,
            },
            layout,
        ))
    }
}

/// CRC32 of `len` zero bytes, the checksum of an empty checkpoint.
pub(super) fn zero_crc(len: u64) -> u32 {
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

    #[test]
    fn header_round_trip_and_every_flip_detected() {
        let g = Geometry::new(64 << 20, 4096).unwrap();
        let mut h = TrackerHeader::new(DiskId([3; 16]), g, 1 << 20, 77);
        h.in_use = false;
        h.disk_identity = Some(DiskIdentity {
            device: 1,
            inode: 2,
            size: 3,
            modified_ns: -4,
            changed_ns: 5,
        });
        let len = h.layout().len;
        let b = h.encode();
        assert_eq!(TrackerHeader::decode(&b, len).unwrap().0, h);
        for i in 0..b.len() {
            let mut x = b;
            x[i] ^= 0x04;
            assert!(TrackerHeader::decode(&x, len).is_err(), "flip at {i}");
        }
        for cut in 0..b.len() {
            assert!(
                TrackerHeader::decode(&b[..cut], len).is_err(),
                "cut at {cut}"
            );
        }
    }
}
