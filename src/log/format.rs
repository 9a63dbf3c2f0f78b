//! The byte layout of a delta log (docs/FORMAT.md, "Delta log"): header,
//! record header and trailer encoding, and the checks every reader applies.

use super::{Consistency, Digest, GroupInfo, LogHeader, LogKind};
use crate::error::{Error, ErrorKind, Result};
use crate::geometry::{Extent, Geometry};
use crate::id::DiskId;
use crate::le::{get_u32, get_u64, put_u32, put_u64};

pub(crate) const MAGIC: [u8; 8] = *b"BRDELTA\0";
pub(crate) const END_MAGIC: [u8; 8] = *b"BRDEND\0\0";
pub(crate) const VERSION: u16 = 1;
pub(crate) const RECORD_TAG: [u8; 4] = *b"BRRC";
pub(crate) const TRAILER_TAG: [u8; 4] = *b"BRTR";

/// Incompatible feature bit: the log may hold copy extents.
pub(crate) const INCOMPAT_COPIES: u32 = 1;
/// Incompatible feature bits this build understands.
pub(crate) const KNOWN_INCOMPAT: u32 = INCOMPAT_COPIES;

/// Fixed part of the header, before the label.
pub(crate) const HEADER_FIXED: usize = 144;

/// Where each header field is (docs/FORMAT.md, "Header"): the one table
/// encode and decode both use. The label follows at `HEADER_FIXED`, then
/// the CRC.
mod hdr {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 8;
    pub const LEN: usize = 10;
    pub const INCOMPAT: usize = 12;
    pub const COMPAT: usize = 16;
    pub const KIND: usize = 20;
    pub const CONSISTENCY: usize = 21;
    pub const LABEL_LEN: usize = 22;
    pub const DISK_ID: usize = 24;
    pub const EPOCH: usize = 40;
    pub const SALT: usize = 48;
    pub const SEQUENCE: usize = 56;
    pub const BASE_SEQUENCE: usize = 64;
    pub const BASE_DIGEST: usize = 72;
    pub const DISK_SIZE: usize = 104;
    pub const BLOCK_SIZE: usize = 112;
    pub const GROUP_MEMBERS: usize = 116;
    pub const GROUP_ID: usize = 120;
    pub const CREATED: usize = 136;
}

/// Where each field of a record's fixed header is (docs/FORMAT.md,
/// "Records"); the extent table follows at `RECORD_FIXED`.
mod rec {
    pub const TAG: usize = 0;
    pub const CODEC: usize = 4;
    pub const RESERVED: usize = 5;
    pub const EXTENTS: usize = 6;
    pub const STORED: usize = 8;
    pub const RAW: usize = 12;
    pub const RAW_CRC: usize = 16;
    pub const RESERVED2: usize = 20;
}

/// Where each fixed trailer field is (docs/FORMAT.md, "Trailer"); the
/// index entries follow at `TRAILER_FIXED`.
mod trl {
    pub const TAG: usize = 0;
    pub const RESERVED: usize = 4;
    pub const RECORDS: usize = 8;
    pub const BLOCKS: usize = 16;
    pub const DATA_BLOCKS: usize = 24;
    pub const RAW_BYTES: usize = 32;
    pub const CHAIN: usize = 40;
    pub const RESERVED2: usize = 44;
    pub const DIGEST: usize = 48;
    pub const OFFSET: usize = 80;
    pub const INDEX_LEN: usize = 88;
}
/// Longest label, in bytes.
pub const MAX_LABEL: usize = 255;
/// Most extents one record carries.
pub const MAX_RECORD_EXTENTS: usize = 1024;
/// Most raw payload bytes one record carries.
pub const MAX_RECORD_RAW: usize = 1 << 20;
/// Record header before the extent table.
pub(crate) const RECORD_FIXED: usize = 24;
pub(crate) const EXTENT_LEN: usize = 16;
/// Trailer bytes before the index.
pub(crate) const TRAILER_FIXED: usize = 96;
pub(crate) const FOOTER_LEN: usize = 16;

pub(crate) const EXTENT_ZERO: u32 = 1;
pub(crate) const EXTENT_COPY: u32 = 2;
/// Payload bytes of a copy extent: its source's first block.
pub(crate) const COPY_LEN: u64 = 8;

/// How a record's payload is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Codec {
    /// No payload: every extent of the record is zero blocks.
    Zero = 0,
    /// The payload is the raw data.
    Raw = 1,
    /// The payload is one LZ4 block of the raw data.
    Lz4 = 2,
}

/// The largest LZ4 output for `raw` input bytes.
pub(crate) fn lz4_bound(raw: usize) -> usize {
    lz4_flex::block::get_maximum_output_size(raw)
}

pub(crate) fn corrupt_at(offset: u64, msg: impl Into<String>) -> Error {
    Error::corrupt(msg).with_offset(offset)
}

impl LogHeader {
    /// Encodes the header, label and CRC included.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let label = self.label.as_bytes();
        let len = HEADER_FIXED + label.len() + 4;
        let mut b = vec![0u8; len];
        b[hdr::MAGIC..hdr::MAGIC + 8].copy_from_slice(&MAGIC);
        b[hdr::VERSION..hdr::VERSION + 2].copy_from_slice(&VERSION.to_le_bytes());
        b[hdr::LEN..hdr::LEN + 2].copy_from_slice(&(len as u16).to_le_bytes());
        let incompat = if self.copies { INCOMPAT_COPIES } else { 0 };
        put_u32(&mut b, hdr::INCOMPAT, incompat);
        put_u32(&mut b, hdr::COMPAT, 0);
        b[hdr::KIND] = self.kind as u8;
        b[hdr::CONSISTENCY] = self.consistency as u8;
        b[hdr::LABEL_LEN..hdr::LABEL_LEN + 2].copy_from_slice(&(label.len() as u16).to_le_bytes());
        b[hdr::DISK_ID..hdr::DISK_ID + 16].copy_from_slice(&self.disk_id.0);
        put_u64(&mut b, hdr::EPOCH, self.epoch);
        put_u64(&mut b, hdr::SALT, self.salt);
        put_u64(&mut b, hdr::SEQUENCE, self.sequence);
        put_u64(&mut b, hdr::BASE_SEQUENCE, self.base_sequence);
        b[hdr::BASE_DIGEST..hdr::BASE_DIGEST + 32].copy_from_slice(&self.base_digest.0);
        put_u64(&mut b, hdr::DISK_SIZE, self.geometry.size());
        put_u32(&mut b, hdr::BLOCK_SIZE, self.geometry.block_size());
        let (gid, gcount) = self.group.map_or(([0; 16], 0), |g| (g.id, g.members));
        put_u32(&mut b, hdr::GROUP_MEMBERS, gcount);
        b[hdr::GROUP_ID..hdr::GROUP_ID + 16].copy_from_slice(&gid);
        put_u64(&mut b, hdr::CREATED, self.created_ns);
        b[HEADER_FIXED..HEADER_FIXED + label.len()].copy_from_slice(label);
        let crc = crc32fast::hash(&b[..len - 4]);
        put_u32(&mut b, len - 4, crc);
        b
    }

    /// The total header length announced by its first 24 bytes, checked
    /// against the format's bounds before anything is allocated.
    pub(crate) fn announced_len(prefix: &[u8; 24]) -> Result<usize> {
        if prefix[hdr::MAGIC..hdr::MAGIC + 8] != MAGIC {
            return Err(corrupt_at(0, "not a delta log: bad magic"));
        }
        let version = u16::from_le_bytes([prefix[hdr::VERSION], prefix[hdr::VERSION + 1]]);
        if version != VERSION {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!("delta log version {version}, this build reads {VERSION}"),
            )
            .with_offset(hdr::VERSION as u64));
        }
        let len = usize::from(u16::from_le_bytes([prefix[hdr::LEN], prefix[hdr::LEN + 1]]));
        let label = usize::from(u16::from_le_bytes([
            prefix[hdr::LABEL_LEN],
            prefix[hdr::LABEL_LEN + 1],
        ]));
        if label > MAX_LABEL || len != HEADER_FIXED + label + 4 {
            return Err(corrupt_at(
                hdr::LEN as u64,
                format!("header length {len} with a label of {label} bytes"),
            ));
        }
        Ok(len)
    }

    /// The header at the start of the log file `path` (one handed in,
    /// before the whole log is verified), checked.
    pub(crate) fn read_file(path: &std::path::Path) -> Result<LogHeader> {
        use std::io::Read;
        let io = |e| Error::io("read the log's header", e).with_path(path);
        let mut f = std::fs::File::open(path).map_err(io)?;
        let mut prefix = [0u8; 24];
        f.read_exact(&mut prefix).map_err(io)?;
        let len = Self::announced_len(&prefix)?;
        let mut b = vec![0u8; len];
        b[..24].copy_from_slice(&prefix);
        f.read_exact(&mut b[24..]).map_err(io)?;
        Self::decode(&b).map_err(|e| e.with_path(path))
    }

    /// Decodes a whole header (as long as [`announced_len`] said).
    pub(crate) fn decode(b: &[u8]) -> Result<LogHeader> {
        let len = b.len();
        if crc32fast::hash(&b[..len - 4]) != get_u32(b, len - 4) {
            return Err(corrupt_at(len as u64 - 4, "header checksum mismatch"));
        }
        let incompat = get_u32(b, hdr::INCOMPAT);
        if incompat & !KNOWN_INCOMPAT != 0 {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!("unknown incompatible features {incompat:#x}"),
            )
            .with_offset(hdr::INCOMPAT as u64));
        }
        let at = |field: usize| field as u64;
        let kind = LogKind::from_u8(b[hdr::KIND]).ok_or_else(|| {
            corrupt_at(at(hdr::KIND), format!("unknown log kind {}", b[hdr::KIND]))
        })?;
        let consistency = Consistency::from_u8(b[hdr::CONSISTENCY]).ok_or_else(|| {
            corrupt_at(
                at(hdr::CONSISTENCY),
                format!("unknown consistency {}", b[hdr::CONSISTENCY]),
            )
        })?;
        let geometry = Geometry::new(get_u64(b, hdr::DISK_SIZE), get_u32(b, hdr::BLOCK_SIZE))
            .map_err(|e| corrupt_at(at(hdr::DISK_SIZE), format!("geometry: {}", e.message())))?;
        let label = std::str::from_utf8(&b[HEADER_FIXED..len - 4])
            .map_err(|_| corrupt_at(HEADER_FIXED as u64, "label is not UTF-8"))?
            .to_owned();
        let gcount = get_u32(b, hdr::GROUP_MEMBERS);
        let mut gid = [0u8; 16];
        gid.copy_from_slice(&b[hdr::GROUP_ID..hdr::GROUP_ID + 16]);
        let group = (gcount != 0).then_some(GroupInfo {
            id: gid,
            members: gcount,
        });
        if gcount == 0 && gid != [0; 16] {
            return Err(corrupt_at(at(hdr::GROUP_ID), "group id without members"));
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&b[hdr::DISK_ID..hdr::DISK_ID + 16]);
        let mut base_digest = [0u8; 32];
        base_digest.copy_from_slice(&b[hdr::BASE_DIGEST..hdr::BASE_DIGEST + 32]);
        Ok(LogHeader {
            disk_id: DiskId(id),
            epoch: get_u64(b, hdr::EPOCH),
            salt: get_u64(b, hdr::SALT),
            sequence: get_u64(b, hdr::SEQUENCE),
            base_sequence: get_u64(b, hdr::BASE_SEQUENCE),
            base_digest: Digest(base_digest),
            geometry,
            kind,
            consistency,
            label,
            group,
            created_ns: get_u64(b, hdr::CREATED),
            copies: incompat & INCOMPAT_COPIES != 0,
        })
    }
}

/// One extent of a record: a run of blocks, zero, carrying data, or a
/// copy of blocks earlier in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogExtent {
    /// The blocks.
    pub extent: Extent,
    /// Whether the blocks are zeros (no payload).
    pub zero: bool,
    /// Whether the blocks are copies of as many blocks carried as data
    /// earlier in the log; the payload holds the source's first block
    /// (8 bytes) instead of the data.
    pub copy: bool,
}

impl LogExtent {
    /// Payload bytes the extent takes in its record.
    pub(crate) fn payload_len(&self, g: Geometry) -> u64 {
        match (self.zero, self.copy) {
            (true, _) => 0,
            (_, true) => COPY_LEN,
            _ => g.extent_bytes(self.extent).1,
        }
    }

    fn flags(&self) -> u32 {
        if self.zero {
            EXTENT_ZERO
        } else if self.copy {
            EXTENT_COPY
        } else {
            0
        }
    }
}

/// The decoded fixed part of a record header.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecordHead {
    pub codec: Codec,
    pub extents: usize,
    pub stored: usize,
    pub raw: usize,
    pub raw_crc: u32,
}

impl RecordHead {
    /// Checks the fixed record header at `offset` against the format bounds.
    pub(crate) fn decode(b: &[u8; RECORD_FIXED], offset: u64) -> Result<RecordHead> {
        let at = |field: usize| offset + field as u64;
        if b[rec::TAG..rec::TAG + 4] != RECORD_TAG {
            return Err(corrupt_at(offset, "expected a record tag"));
        }
        let codec = match b[rec::CODEC] {
            0 => Codec::Zero,
            1 => Codec::Raw,
            2 => Codec::Lz4,
            c => return Err(corrupt_at(at(rec::CODEC), format!("unknown codec {c}"))),
        };
        if b[rec::RESERVED] != 0 || get_u32(b, rec::RESERVED2) != 0 {
            return Err(corrupt_at(
                at(rec::RESERVED),
                "reserved record bytes are not zero",
            ));
        }
        let extents = usize::from(u16::from_le_bytes([b[rec::EXTENTS], b[rec::EXTENTS + 1]]));
        let stored = get_u32(b, rec::STORED) as usize;
        let raw = get_u32(b, rec::RAW) as usize;
        if extents == 0 || extents > MAX_RECORD_EXTENTS {
            return Err(corrupt_at(
                at(rec::EXTENTS),
                format!("{extents} extents in a record"),
            ));
        }
        let ok = match codec {
            Codec::Zero => stored == 0 && raw == 0,
            Codec::Raw => raw > 0 && raw <= MAX_RECORD_RAW && stored == raw,
            Codec::Lz4 => {
                raw > 0 && raw <= MAX_RECORD_RAW && stored > 0 && stored <= lz4_bound(raw)
            }
        };
        if !ok {
            return Err(corrupt_at(
                at(rec::STORED),
                format!("{codec:?} record with {stored} stored and {raw} raw bytes"),
            ));
        }
        Ok(RecordHead {
            codec,
            extents,
            stored,
            raw,
            raw_crc: get_u32(b, rec::RAW_CRC),
        })
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        let mut b = [0u8; RECORD_FIXED];
        b[rec::TAG..rec::TAG + 4].copy_from_slice(&RECORD_TAG);
        b[rec::CODEC] = self.codec as u8;
        b[rec::EXTENTS..rec::EXTENTS + 2].copy_from_slice(&(self.extents as u16).to_le_bytes());
        put_u32(&mut b, rec::STORED, self.stored as u32);
        put_u32(&mut b, rec::RAW, self.raw as u32);
        put_u32(&mut b, rec::RAW_CRC, self.raw_crc);
        out.extend_from_slice(&b);
    }
}

pub(crate) fn encode_extent(e: &LogExtent, out: &mut Vec<u8>) {
    out.extend_from_slice(&e.extent.start.to_le_bytes());
    out.extend_from_slice(&(e.extent.count as u32).to_le_bytes());
    out.extend_from_slice(&e.flags().to_le_bytes());
}

/// Decodes and checks a record's extent table: each extent non-empty,
/// inside the disk, after `prev_end` (extents ascend through the whole log),
/// and the data and copy extents' payload adding up to `head.raw`. Copy
/// extents are allowed when `copies` (the header's feature bit).
pub(crate) fn decode_extents(
    b: &[u8],
    head: &RecordHead,
    geometry: Geometry,
    mut prev_end: u64,
    offset: u64,
    copies: bool,
) -> Result<(Vec<LogExtent>, u64)> {
    let mut out = Vec::with_capacity(head.extents);
    let mut raw = 0u64;
    for (i, c) in b.chunks_exact(EXTENT_LEN).enumerate() {
        let at = offset + (i * EXTENT_LEN) as u64;
        let start = get_u64(c, 0);
        let count = u64::from(get_u32(c, 8));
        let flags = get_u32(c, 12);
        let known = if copies { EXTENT_COPY } else { 0 } | EXTENT_ZERO;
        if flags & !known != 0 || flags == EXTENT_ZERO | EXTENT_COPY {
            return Err(corrupt_at(
                at + 12,
                format!("unknown extent flags {flags:#x}"),
            ));
        }
        let extent = Extent::new(start, count);
        geometry
            .check_extent(extent)
            .map_err(|e| corrupt_at(at, e.message().to_owned()))?;
        if start < prev_end {
            return Err(corrupt_at(
                at,
                format!("extent at block {start} overlaps or precedes block {prev_end}"),
            ));
        }
        prev_end = extent.end();
        let e = LogExtent {
            extent,
            zero: flags & EXTENT_ZERO != 0,
            copy: flags & EXTENT_COPY != 0,
        };
        raw += e.payload_len(geometry);
        out.push(e);
    }
    let data = out.iter().any(|e| !e.zero);
    if raw != head.raw as u64 || data != (head.codec != Codec::Zero) {
        return Err(corrupt_at(
            offset,
            format!(
                "extents hold {raw} data bytes, the record says {} ({:?})",
                head.raw, head.codec
            ),
        ));
    }
    Ok((out, prev_end))
}

/// The salted CRC of a record: header, extents and payload, seeded with the
/// log's salt so a record spliced in from another log fails.
pub(crate) fn record_hasher(salt: u64) -> crc32fast::Hasher {
    crc32fast::Hasher::new_with_initial((salt ^ (salt >> 32)) as u32)
}

/// What a log's trailer says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Trailer {
    /// Number of records.
    pub records: u64,
    /// Number of blocks, zero and data.
    pub blocks: u64,
    /// Number of data (non-zero) blocks.
    pub data_blocks: u64,
    /// Raw bytes of data blocks.
    pub raw_bytes: u64,
    /// CRC32 over the records' CRCs, in order.
    pub chain: u32,
    /// The replica's content digest once this log is applied.
    pub digest: Digest,
    /// Byte offset of the trailer in the log.
    pub offset: u64,
    /// For each record: its first block and its byte offset.
    pub index: Vec<(u64, u64)>,
}

impl Trailer {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; TRAILER_FIXED];
        b.reserve(self.index.len() * 16 + 4 + FOOTER_LEN);
        b[trl::TAG..trl::TAG + 4].copy_from_slice(&TRAILER_TAG);
        put_u64(&mut b, trl::RECORDS, self.records);
        put_u64(&mut b, trl::BLOCKS, self.blocks);
        put_u64(&mut b, trl::DATA_BLOCKS, self.data_blocks);
        put_u64(&mut b, trl::RAW_BYTES, self.raw_bytes);
        put_u32(&mut b, trl::CHAIN, self.chain);
        b[trl::DIGEST..trl::DIGEST + 32].copy_from_slice(&self.digest.0);
        put_u64(&mut b, trl::OFFSET, self.offset);
        put_u64(&mut b, trl::INDEX_LEN, self.index.len() as u64);
        for &(first, off) in &self.index {
            b.extend_from_slice(&first.to_le_bytes());
            b.extend_from_slice(&off.to_le_bytes());
        }
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b.extend_from_slice(&self.offset.to_le_bytes());
        b.extend_from_slice(&END_MAGIC);
        b
    }

    /// Decodes the fixed trailer part; returns the trailer without its index
    /// and the index length, checked against `max_entries`.
    pub(crate) fn decode_fixed(
        b: &[u8],
        offset: u64,
        max_entries: u64,
    ) -> Result<(Trailer, usize)> {
        debug_assert_eq!(b.len(), TRAILER_FIXED);
        if b[trl::TAG..trl::TAG + 4] != TRAILER_TAG {
            return Err(corrupt_at(offset, "expected the trailer tag"));
        }
        if get_u32(b, trl::RESERVED) != 0 || get_u32(b, trl::RESERVED2) != 0 {
            return Err(corrupt_at(
                offset + trl::RESERVED as u64,
                "reserved trailer bytes are not zero",
            ));
        }
        let n = get_u64(b, trl::INDEX_LEN);
        if n > max_entries {
            return Err(corrupt_at(
                offset + trl::INDEX_LEN as u64,
                format!("index of {n} entries, at most {max_entries} possible"),
            ));
        }
        let mut digest = [0u8; 32];
        digest.copy_from_slice(&b[trl::DIGEST..trl::DIGEST + 32]);
        Ok((
            Trailer {
                records: get_u64(b, trl::RECORDS),
                blocks: get_u64(b, trl::BLOCKS),
                data_blocks: get_u64(b, trl::DATA_BLOCKS),
                raw_bytes: get_u64(b, trl::RAW_BYTES),
                chain: get_u32(b, trl::CHAIN),
                digest: Digest(digest),
                offset: get_u64(b, trl::OFFSET),
                index: Vec::new(),
            },
            n as usize,
        ))
    }

    pub(crate) fn decode_index(b: &[u8]) -> Vec<(u64, u64)> {
        b.chunks_exact(16)
            .map(|c| (get_u64(c, 0), get_u64(c, 8)))
            .collect()
    }
}

/// Computes the content digest chain: the base digest, the log's identity
/// and every extent with its record's raw CRC.
pub(crate) struct DigestChain(blake3::Hasher);

impl DigestChain {
    pub(crate) fn new(h: &LogHeader) -> Self {
        let mut x = blake3::Hasher::new();
        x.update(b"blockrep content digest v1");
        x.update(&h.base_digest.0);
        x.update(&h.disk_id.0);
        x.update(&h.epoch.to_le_bytes());
        x.update(&h.sequence.to_le_bytes());
        x.update(&h.geometry.size().to_le_bytes());
        x.update(&h.geometry.block_size().to_le_bytes());
        DigestChain(x)
    }

    pub(crate) fn record(&mut self, extents: &[LogExtent], raw_crc: u32) {
        for e in extents {
            self.0.update(&e.extent.start.to_le_bytes());
            self.0.update(&e.extent.count.to_le_bytes());
            self.0.update(&[e.flags() as u8]);
        }
        self.0.update(&raw_crc.to_le_bytes());
    }

    pub(crate) fn finish(&self) -> Digest {
        Digest(*self.0.finalize().as_bytes())
    }
}
