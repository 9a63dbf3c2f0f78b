//! The delta log: the changed blocks of one disk at one instant, the unit
//! shipped between sites. Format in docs/FORMAT.md ("Delta log").
//!
//! * [`LogWriter`] streams a log to any `Write` (file, pipe, socket) without
//!   seeking; blocks come in ascending order. [`LogBuilder`] takes blocks in
//!   any order and feeds a writer sorted. [`LogFile`] writes `NAME.partial`,
//!   syncs, renames and syncs the directory.
//! * [`LogReader`] streams a log from any `Read`, checking every record
//!   before handing it out; [`verify`] is the check alone.
//! * [`MappedLog`] maps a log file, validates it once and then reads any
//!   block through the trailer's index.
//!
//! ```
//! use blockrep::log::{Block, LogHeader, LogKind, LogReader, LogWriter, ReadOptions, WriterOptions};
//! use blockrep::{DiskId, Geometry};
//!
//! let geometry = Geometry::new(1 << 20, 4096)?;
//! let header = LogHeader::new(DiskId([1; 16]), geometry, LogKind::Delta, 1, 5)?;
//! let mut w = LogWriter::new(Vec::new(), header, WriterOptions::default())?;
//! w.add_block(3, &[7u8; 4096])?;
//! w.add_block(4, &[0u8; 4096])?;      // stored as a zero extent, no payload
//! let (bytes, summary) = w.finish()?;
//! assert_eq!(summary.trailer.blocks, 2);
//!
//! let mut r = LogReader::new(&bytes[..], ReadOptions::default())?;
//! let record = r.next_record()?.unwrap();
//! let blocks: Vec<_> = record.blocks(geometry).collect();
//! assert_eq!(blocks[0], (3, Block::Data(&[7u8; 4096][..])));
//! assert_eq!(blocks[1], (4, Block::Zero));
//! assert!(r.next_record()?.is_none() && r.is_complete());
//! # Ok::<(), blockrep::Error>(())
//! ```

mod digests;
mod file;
mod format;
mod mapped;
mod pool;
mod reader;
mod writer;

pub use digests::{block_digests, BlockDigests};
pub(crate) use digests::{digest_blocks, write_digests, ListHead};
pub use file::LogFile;
pub use format::{Codec, LogExtent, Trailer, MAX_LABEL, MAX_RECORD_EXTENTS, MAX_RECORD_RAW};
pub use mapped::{BlockLookup, MappedLog};
pub use reader::Block;
pub use reader::{verify, LogReader, ReadOptions, Record, TailPolicy};
pub(crate) use writer::is_zero;
pub use writer::{LogBuilder, LogSummary, LogWriter, WriterOptions};

use crate::error::{Error, Result};
use crate::geometry::Geometry;
use crate::id::DiskId;
use std::fmt;

/// A 256-bit content digest: identifies the replica state a log builds on
/// and the state it leads to (a chain over every log applied, not a hash of
/// the whole disk).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Digest(pub [u8; 32]);

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

/// Shortened for people (the first 8 bytes and an ellipsis); `{:x}` gives
/// all 64 hex digits, as the wire protocol carries it.
impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}…", crate::hex::hex(&self.0[..8]))
    }
}

/// All 32 bytes in lowercase hex.
impl fmt::LowerHex for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::hex::hex(&self.0))
    }
}

/// What a log holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
#[repr(u8)]
pub enum LogKind {
    /// The whole disk: creates a replica.
    Full = 1,
    /// The blocks changed since the previous log.
    Delta = 2,
    /// The blocks that differed after tracking was lost; starts a new epoch.
    Resync = 3,
    /// Old contents saved by the replica before applying a log.
    Undo = 4,
}

impl LogKind {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => LogKind::Full,
            2 => LogKind::Delta,
            3 => LogKind::Resync,
            4 => LogKind::Undo,
            _ => return None,
        })
    }
}

/// The consistency of the point a log creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
#[repr(u8)]
pub enum Consistency {
    /// As after a power cut: what the disk held at one instant.
    Crash = 1,
    /// The guest was quiesced by the integration for this point.
    App = 2,
}

impl Consistency {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Consistency::Crash),
            2 => Some(Consistency::App),
            _ => None,
        }
    }
}

/// Membership of a consistency group: logs cut at the same instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupInfo {
    /// The group's cut id, shared by every member log.
    pub id: [u8; 16],
    /// How many disks the group has.
    pub members: u32,
}

/// The header of a delta log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogHeader {
    /// The disk the log belongs to.
    pub disk_id: DiskId,
    /// The replication epoch; logs of an older epoch never apply.
    pub epoch: u64,
    /// Random per file; seeds the record checksums.
    pub salt: u64,
    /// This log's sequence number.
    pub sequence: u64,
    /// The sequence it builds on (0 for a full log).
    pub base_sequence: u64,
    /// The content digest it builds on (zero for a full log).
    pub base_digest: Digest,
    /// The disk's geometry when the log was cut.
    pub geometry: Geometry,
    /// What the log holds.
    pub kind: LogKind,
    /// Crash- or app-consistent.
    pub consistency: Consistency,
    /// A label for the point (UTF-8, at most 255 bytes; may be empty).
    pub label: String,
    /// Consistency group membership, if any.
    pub group: Option<GroupInfo>,
    /// Creation time, nanoseconds since the Unix epoch.
    pub created_ns: u64,
    /// Whether the log may hold copy extents: blocks whose content already
    /// appears earlier in the same log, stored as a reference to it
    /// (incompatible feature bit 0: older readers refuse such logs).
    pub copies: bool,
}

impl LogHeader {
    /// A crash-consistent header with a random salt, the current time, no
    /// label and no group, building on `sequence - 1` with a zero digest;
    /// copies of repeated blocks allowed.
    pub fn new(
        disk_id: DiskId,
        geometry: Geometry,
        kind: LogKind,
        epoch: u64,
        sequence: u64,
    ) -> Result<Self> {
        let created_ns = crate::status::now_ns();
        Ok(LogHeader {
            disk_id,
            epoch,
            salt: crate::id::random_u64()?,
            sequence,
            base_sequence: sequence.saturating_sub(1),
            base_digest: Digest::default(),
            geometry,
            kind,
            consistency: Consistency::Crash,
            label: String::new(),
            group: None,
            created_ns,
            copies: true,
        })
    }

    pub(crate) fn check(&self) -> Result<()> {
        if self.label.len() > MAX_LABEL {
            return Err(Error::invalid(format!(
                "label of {} bytes, at most {MAX_LABEL}",
                self.label.len()
            )));
        }
        if self.group.is_some_and(|g| g.members == 0) {
            return Err(Error::invalid(
                "a consistency group has at least one member",
            ));
        }
        Ok(())
    }
}
