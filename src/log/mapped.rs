//! Random access to a log file through a memory map and the trailer's index.

use super::format::{
    corrupt_at, decode_extents, LogExtent, RecordHead, Trailer, COPY_LEN, EXTENT_LEN, RECORD_FIXED,
};
use super::reader::{decode_payload_slice, LogReader, ReadOptions, TailPolicy};
use super::LogHeader;
use crate::error::{Error, Result};
use crate::geometry::set::BucketIndex;
use crate::geometry::BlockSet;
use crate::io::Dir;
use crate::le::get_u64;
use bytes::Bytes;
use memmap2::Mmap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// What a log holds for one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockLookup {
    /// The log does not hold the block.
    Absent,
    /// The log holds the block as zeros (the buffer was zeroed).
    Zero,
    /// The log holds the block's data (copied into the buffer).
    Data,
}

/// The bytes behind a [`MappedLog`].
enum Backing {
    Map(Mmap),
    Bytes(Bytes),
}

impl std::ops::Deref for Backing {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Backing::Map(m) => m,
            Backing::Bytes(b) => b,
        }
    }
}

/// A complete log, mapped from a file (or held in memory) and validated
/// once; any block is then read through the trailer's index without a scan.
pub struct MappedLog {
    map: Backing,
    path: PathBuf,
    header: LogHeader,
    trailer: Trailer,
    /// The blocks the log holds, built on first lookup, so a block it does
    /// not hold is answered without decoding any record.
    present: std::sync::OnceLock<(BlockSet, BucketIndex)>,
    /// The record `read_block` decoded last (its offset and raw bytes), so
    /// reads of neighbouring blocks (a guest booting from a view reads
    /// mostly in order) decode it once.
    last: parking_lot::Mutex<Option<(u64, Bytes)>>,
}

impl std::fmt::Debug for MappedLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedLog")
            .field("path", &self.path)
            .field("header", &self.header)
            .finish()
    }
}

impl MappedLog {
    /// Reads the log file at `path` into memory and verifies it whole
    /// (every record and the trailer); an incomplete log is an error.
    ///
    /// A path from outside (a caller, the C ABI, the command line) is read,
    /// never mapped: a file truncated by someone else behind a map would
    /// kill the process with SIGBUS, and no check made before can rule that
    /// out. Memory use is the log's size; to apply a large log with bounded
    /// memory, use [`Replica::apply_file`](crate::replica::Replica::apply_file),
    /// which copies it into the replica's directory first.
    pub fn open(path: impl AsRef<Path>, opts: &ReadOptions) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io("read log", e).with_path(path))?;
        Self::validate(Backing::Bytes(bytes.into()), path, opts).map_err(|e| e.with_path(path))
    }

    /// Opens the log `name` in a directory the library owns: mapped when
    /// the directory is on a file system, read otherwise. Mapping is safe
    /// there: such logs are immutable once renamed into place (see
    /// [`LogFile`](super::LogFile)) and their directories belong to
    /// blockrep, so no file is truncated behind the map.
    pub(crate) fn open_in(dir: &dyn Dir, name: &str, opts: &ReadOptions) -> Result<Self> {
        let Some(path) = dir.path_of(name) else {
            return Self::from_bytes(dir.read_all(name)?, name, opts);
        };
        let file = File::open(&path).map_err(|e| Error::io("open log", e).with_path(&path))?;
        // SAFETY: an owned, immutable file (see above): nothing truncates
        // or rewrites it while mapped.
        let map =
            unsafe { Mmap::map(&file) }.map_err(|e| Error::io("map log", e).with_path(&path))?;
        Self::validate(Backing::Map(map), &path, opts).map_err(|e| e.with_path(&path))
    }

    /// Validates a whole log held in memory; `name` is used in errors.
    pub fn from_bytes(
        bytes: impl Into<Bytes>,
        name: impl AsRef<Path>,
        opts: &ReadOptions,
    ) -> Result<Self> {
        Self::validate(Backing::Bytes(bytes.into()), name.as_ref(), opts)
    }

    fn validate(map: Backing, path: &Path, opts: &ReadOptions) -> Result<Self> {
        let strict = ReadOptions {
            tail: TailPolicy::Refuse,
            ..opts.clone()
        };
        let mut r = LogReader::new(&map[..], strict)?;
        while r.next_record()?.is_some() {}
        let trailer = r
            .trailer()
            .cloned()
            .ok_or_else(|| Error::corrupt("log has no trailer"))?;
        let header = r.header().clone();
        drop(r);
        Ok(MappedLog {
            map,
            path: path.to_path_buf(),
            header,
            trailer,
            present: std::sync::OnceLock::new(),
            last: parking_lot::Mutex::new(None),
        })
    }

    /// Opens a log this process just wrote, trusting the writer's summary
    /// instead of reading every record again: maps `path` (or takes
    /// `bytes`) and checks only its length against the summary.
    pub(crate) fn written(
        path: Option<&Path>,
        bytes: Option<Bytes>,
        summary: &super::LogSummary,
    ) -> Result<Self> {
        let (map, path) = match (path, bytes) {
            (Some(p), _) => {
                let file = File::open(p).map_err(|e| Error::io("open log", e).with_path(p))?;
                // SAFETY: as in `open_in`: the file was just written,
                // renamed into place and is never modified again.
                let map = unsafe { Mmap::map(&file) }
                    .map_err(|e| Error::io("map log", e).with_path(p))?;
                (Backing::Map(map), p.to_path_buf())
            }
            (None, Some(b)) => (Backing::Bytes(b), PathBuf::from("(memory)")),
            (None, None) => return Err(Error::invalid("a written log needs a path or its bytes")),
        };
        if map.len() as u64 != summary.bytes {
            return Err(Error::corrupt(format!(
                "log is {} bytes, its writer wrote {}",
                map.len(),
                summary.bytes
            ))
            .with_path(&path));
        }
        Ok(MappedLog {
            map,
            path,
            header: summary.header.clone(),
            trailer: summary.trailer.clone(),
            present: std::sync::OnceLock::new(),
            last: parking_lot::Mutex::new(None),
        })
    }

    /// The file (or name) the log was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The log's header.
    pub fn header(&self) -> &LogHeader {
        &self.header
    }

    /// The log's trailer, index included.
    pub fn trailer(&self) -> &Trailer {
        &self.trailer
    }

    /// The whole log's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// A streaming reader over the mapped bytes.
    pub fn reader(&self) -> Result<LogReader<&[u8]>> {
        LogReader::new(&self.map[..], ReadOptions::default())
    }

    /// The set of blocks the log holds (built once, from the record headers).
    pub fn present(&self) -> Result<&BlockSet> {
        Ok(&self.present_indexed()?.0)
    }

    /// [`present`](Self::present) with an index for lookups in constant
    /// time (a view asks every newer undo log for each block it reads).
    fn present_indexed(&self) -> Result<&(BlockSet, BucketIndex)> {
        if let Some(p) = self.present.get() {
            return Ok(p);
        }
        let g = self.header.geometry;
        let set = BlockSet::from_extents(
            g.block_count(),
            self.extents()?.into_iter().map(|e| e.extent),
        )?;
        let index = set.bucket_index();
        Ok(self.present.get_or_init(|| (set, index)))
    }

    /// Every extent of the log, in order, read from the record headers
    /// through the index without decompressing any payload.
    pub fn extents(&self) -> Result<Vec<LogExtent>> {
        let g = self.header.geometry;
        let mut out = Vec::new();
        for &(_, off) in &self.trailer.index {
            let bytes = self.slice(off, RECORD_FIXED as u64)?;
            let head = RecordHead::decode(bytes.try_into().expect("record header length"), off)?;
            let table_at = off + RECORD_FIXED as u64;
            let table = self.slice(table_at, (head.extents * EXTENT_LEN) as u64)?;
            out.extend(decode_extents(table, &head, g, 0, table_at, self.header.copies)?.0);
        }
        Ok(out)
    }

    /// Reads `block` into `buf`, which must be the block's length. Finds the
    /// record through the index (binary search), then decodes that record
    /// only.
    pub fn read_block(&self, block: u64, buf: &mut [u8]) -> Result<BlockLookup> {
        let g = self.header.geometry;
        let want = g.block_len(block) as usize;
        if want == 0 || buf.len() != want {
            return Err(Error::invalid(format!(
                "buffer of {} bytes for block {block} of {want} bytes",
                buf.len()
            )));
        }
        let (set, index) = self.present_indexed()?;
        if !index.contains(set, block) {
            return Ok(BlockLookup::Absent);
        }
        let i = self
            .trailer
            .index
            .partition_point(|&(first, _)| first <= block);
        if i == 0 {
            return Ok(BlockLookup::Absent);
        }
        let off = self.trailer.index[i - 1].1;
        let bytes = self.slice(off, RECORD_FIXED as u64)?;
        let head = RecordHead::decode(bytes.try_into().expect("record header length"), off)?;
        let table_at = off + RECORD_FIXED as u64;
        let table = self.slice(table_at, (head.extents * EXTENT_LEN) as u64)?;
        let (extents, _) = decode_extents(table, &head, g, 0, table_at, self.header.copies)?;
        let mut data_at = 0u64;
        for e in &extents {
            if e.extent.contains(block) {
                if e.zero {
                    buf.fill(0);
                    return Ok(BlockLookup::Zero);
                }
                let raw = self.raw_record(off, &head, table_at + table.len() as u64)?;
                let at = data_at as usize;
                if e.copy {
                    // Checked when the log was opened: the source is data
                    // earlier in the log, so this recursion ends there.
                    let source = get_u64(&raw[at..at + COPY_LEN as usize], 0);
                    return self.read_block(source + (block - e.extent.start), buf);
                }
                let start = at + g.block_offset(block - e.extent.start) as usize;
                buf.copy_from_slice(&raw[start..start + want]);
                return Ok(BlockLookup::Data);
            }
            data_at += e.payload_len(g);
        }
        Ok(BlockLookup::Absent)
    }

    /// The raw bytes of the record at `off` (its payload at `payload_at`),
    /// decoded and checked, or as decoded last time.
    fn raw_record(&self, off: u64, head: &RecordHead, payload_at: u64) -> Result<Bytes> {
        if let Some((at, raw)) = &*self.last.lock() {
            if *at == off {
                return Ok(raw.clone());
            }
        }
        let payload = self.slice(payload_at, head.stored as u64)?;
        let raw = decode_payload_slice(head, payload, payload_at)?;
        *self.last.lock() = Some((off, raw.clone()));
        Ok(raw)
    }

    fn slice(&self, off: u64, len: u64) -> Result<&[u8]> {
        off.checked_add(len)
            .filter(|&end| end <= self.map.len() as u64)
            .map(|end| &self.map[off as usize..end as usize])
            .ok_or_else(|| {
                corrupt_at(off, "index points past the end of the log").with_path(&self.path)
            })
    }
}
