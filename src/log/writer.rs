//! Writing delta logs: a streaming writer over any `Write`, and a builder
//! that accepts blocks in any order.

use super::format::{
    encode_extent, lz4_bound, record_hasher, Codec, DigestChain, LogExtent, RecordHead, Trailer,
    COPY_LEN, MAX_RECORD_EXTENTS, MAX_RECORD_RAW,
};
use super::pool::EncodePool;
use super::LogHeader;
use crate::error::{Error, ErrorKind, Result};
use crate::geometry::Extent;
use std::collections::BTreeMap;
use std::io::Write;

/// Tuning of a [`LogWriter`]. The bytes written depend only on
/// `record_bytes`, never on `threads`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterOptions {
    /// Raw bytes gathered into one record before it is compressed (at most
    /// 1 MiB; a record always holds at least one block).
    pub record_bytes: usize,
    /// Threads compressing records; 1 compresses inline.
    pub threads: usize,
}

impl Default for WriterOptions {
    /// Records of 1 MiB, the most the format allows: fewer starts with an
    /// empty LZ4 window (the full log of the bench image: 1.006x the size
    /// of `lz4 -1` at 1 MiB, 1.051x at 256 KiB); compression threads as
    /// many as cores.
    fn default() -> Self {
        WriterOptions {
            record_bytes: 1 << 20,
            threads: std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
        }
    }
}

/// What a finished log holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSummary {
    /// The log's header.
    pub header: LogHeader,
    /// Its trailer (counts, digest, index).
    pub trailer: Trailer,
    /// Total bytes written.
    pub bytes: u64,
}

/// What [`LogWriter::push`] adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Zero,
    Data,
    /// Copies of the blocks from this one on.
    Copy(u64),
}

/// A record being gathered, then encoded. Its buffers are reused for later
/// records, so the steady state allocates (and zero-fills) nothing.
#[derive(Default)]
pub(super) struct Pending {
    extents: Vec<LogExtent>,
    raw: Vec<u8>,
    /// The source block that would extend the last extent, when a copy.
    copy_next: Option<u64>,
    /// Record header and extent table, once encoded.
    head: Vec<u8>,
    /// LZ4 output; kept at its full length between uses.
    lz4: Vec<u8>,
    /// Whether the payload is `lz4[..lz4_len]` (else `raw`, or nothing).
    lz4_len: Option<usize>,
    raw_crc: u32,
    crc: u32,
    /// For a digest-only writer, the raw bytes are counted and checksummed
    /// here instead of gathered in `raw`.
    counted: usize,
    counted_crc: crc32fast::Hasher,
}

impl Pending {
    /// Appends raw bytes: gathered, or for a digest-only writer only
    /// counted into the raw CRC (the digest needs nothing else).
    fn append(&mut self, bytes: &[u8], digest_only: bool) {
        if digest_only {
            self.counted += bytes.len();
            self.counted_crc.update(bytes);
        } else {
            self.raw.extend_from_slice(bytes);
        }
    }

    /// The raw bytes of the record so far.
    fn raw_len(&self) -> usize {
        self.raw.len() + self.counted
    }

    /// Compresses (LZ4 when it saves space), and computes the header and
    /// both checksums: all the per-record work that can run in parallel.
    pub(super) fn encode(&mut self, salt: u64) {
        self.lz4_len = None;
        let codec = if self.raw.is_empty() {
            Codec::Zero
        } else {
            let bound = lz4_bound(self.raw.len());
            // Grown to what this record needs, not to the largest record
            // the format allows: a log of small records (a short cycle's)
            // then zero-fills kilobytes, not a megabyte, per buffer.
            if self.lz4.len() < bound {
                self.lz4.resize(bound, 0);
            }
            match lz4_flex::block::compress_into(&self.raw, &mut self.lz4) {
                Ok(n) if n < self.raw.len() => {
                    self.lz4_len = Some(n);
                    Codec::Lz4
                }
                _ => Codec::Raw,
            }
        };
        self.raw_crc = if self.raw.is_empty() {
            0
        } else {
            crc32fast::hash(&self.raw)
        };
        let head = RecordHead {
            codec,
            extents: self.extents.len(),
            stored: self.payload().len(),
            raw: self.raw.len(),
            raw_crc: self.raw_crc,
        };
        self.head.clear();
        head.encode(&mut self.head);
        for e in &self.extents {
            encode_extent(e, &mut self.head);
        }
        let mut h = record_hasher(salt);
        h.update(&self.head);
        h.update(self.payload());
        self.crc = h.finalize();
    }

    fn payload(&self) -> &[u8] {
        match self.lz4_len {
            Some(n) => &self.lz4[..n],
            None => &self.raw,
        }
    }
}

/// Streams a delta log to `W`. Blocks must come in ascending order; use
/// [`LogBuilder`] for any order. Nothing is written out of order and the
/// writer never seeks, so `W` may be a pipe or a socket.
pub struct LogWriter<W: Write> {
    out: W,
    written: u64,
    header: LogHeader,
    opts: WriterOptions,
    /// Blocks below this were already added.
    next_block: u64,
    cur: Pending,
    /// Compression workers, when more than one thread is asked for.
    pool: Option<EncodePool>,
    /// Records already written, kept for their buffers.
    free: Vec<Pending>,
    trailer: Trailer,
    digest: DigestChain,
    chain: crc32fast::Hasher,
    /// Recent data blocks, to store repeats as copies (when the header
    /// allows copies).
    window: CopyWindow,
    /// Records are only counted into the digest: nothing is compressed or
    /// written (see [`LogWriter::digest_only`]).
    digest_only: bool,
}

/// Bytes of recent data blocks a writer remembers to find repeats.
const WINDOW_BYTES: usize = 8 << 20;

/// The last [`WINDOW_BYTES`] of full data blocks written, in a ring, with
/// each one's CRC32 pointing at its newest copy. A candidate is compared
/// byte for byte, so a CRC collision never makes a wrong copy.
#[derive(Default)]
struct CopyWindow {
    ring: Vec<u8>,
    /// Bytes ever put in the ring.
    written: usize,
    /// CRC32 of a block's content -> (block, position in `written` terms).
    seen: std::collections::HashMap<u32, (u64, usize)>,
}

impl CopyWindow {
    /// An earlier data block with exactly `data`'s content (a whole block;
    /// the block size divides the window), if remembered; otherwise
    /// remembers `block` as holding it.
    fn find_or_remember(&mut self, block: u64, data: &[u8]) -> Option<u64> {
        let crc = crc32fast::hash(data);
        let len = data.len();
        if let Some(&(source, at)) = self.seen.get(&crc) {
            // The ring holds the bytes from `written - WINDOW_BYTES` on.
            let i = at % WINDOW_BYTES;
            if self.written - at <= WINDOW_BYTES && self.ring.get(i..i + len) == Some(data) {
                return Some(source);
            }
        }
        let i = self.written % WINDOW_BYTES;
        if self.ring.len() < i + len {
            self.ring.resize(i + len, 0);
        }
        self.ring[i..i + len].copy_from_slice(data);
        self.seen.insert(crc, (block, self.written));
        self.written += len;
        None
    }
}

/// Whether every byte of `b` is zero.
pub(crate) fn is_zero(b: &[u8]) -> bool {
    let mut chunks = b.chunks_exact(64);
    for c in &mut chunks {
        let mut acc = 0u64;
        for w in c.chunks_exact(8) {
            acc |= u64::from_le_bytes(w.try_into().expect("8 bytes"));
        }
        if acc != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&x| x == 0)
}

impl<W: Write> LogWriter<W> {
    /// Starts a log: checks and writes the header.
    pub fn new(mut out: W, header: LogHeader, opts: WriterOptions) -> Result<Self> {
        header.check()?;
        if opts.record_bytes == 0 || opts.record_bytes > MAX_RECORD_RAW {
            return Err(Error::invalid(format!(
                "record size {} is not between 1 and {MAX_RECORD_RAW} bytes",
                opts.record_bytes
            )));
        }
        let h = header.encode();
        let salt = header.salt;
        out.write_all(&h)
            .map_err(|e| Error::io("write log header", e))?;
        Ok(LogWriter {
            out,
            written: h.len() as u64,
            digest: DigestChain::new(&header),
            header,
            opts: WriterOptions {
                threads: opts.threads.max(1),
                ..opts
            },
            next_block: 0,
            cur: Pending::default(),
            // The writing thread encodes too, so one worker fewer.
            pool: (opts.threads > 1).then(|| EncodePool::new(opts.threads - 1, salt)),
            free: Vec::new(),
            trailer: Trailer::default(),
            chain: crc32fast::Hasher::new(),
            window: CopyWindow::default(),
            digest_only: false,
        })
    }
}

impl LogWriter<std::io::Sink> {
    /// A writer that writes nothing and compresses nothing, yet ends with
    /// the digest (and counts) of the log [`new`](LogWriter::new) would
    /// write with the same blocks and `record_bytes` and the header
    /// without copies: the identity of a point whose blocks went somewhere
    /// else (a local replica's image written as the disk is read). Repeats
    /// are not looked for (that costs a pass through an 8 MiB window per
    /// block, and an image holds every block anyway), so the summary's
    /// header says `copies: false`. Its `bytes` is 0 and its trailer's
    /// index, chain and offset describe no file.
    pub fn digest_only(mut header: LogHeader, opts: WriterOptions) -> Result<Self> {
        header.copies = false;
        let mut w = LogWriter::new(
            std::io::sink(),
            header,
            WriterOptions { threads: 1, ..opts },
        )?;
        w.digest_only = true;
        w.written = 0;
        Ok(w)
    }
}

impl<W: Write> LogWriter<W> {
    /// The header being written.
    pub fn header(&self) -> &LogHeader {
        &self.header
    }

    /// Bytes handed to the output so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    fn check_next(&self, extent: Extent) -> Result<()> {
        self.header.geometry.check_extent(extent)?;
        if extent.start < self.next_block {
            return Err(Error::invalid(format!(
                "block {} added after block {}: a log writer takes blocks in ascending order",
                extent.start,
                self.next_block - 1
            )));
        }
        Ok(())
    }

    /// Adds one block's content; all-zero content becomes a zero extent.
    /// `data` must be exactly the block's length (shorter for a short last
    /// block).
    pub fn add_block(&mut self, block: u64, data: &[u8]) -> Result<()> {
        self.check_next(Extent::new(block, 1))?;
        let want = self.header.geometry.block_len(block) as usize;
        if data.len() != want {
            return Err(Error::invalid(format!(
                "block {block} has {} bytes, its length is {want}",
                data.len()
            )));
        }
        if is_zero(data) {
            return self.push(Extent::new(block, 1), Kind::Zero, &[]);
        }
        if self.header.copies && data.len() == self.header.geometry.block_size() as usize {
            if let Some(source) = self.window.find_or_remember(block, data) {
                return self.push(Extent::new(block, 1), Kind::Copy(source), &[]);
            }
        }
        self.push(Extent::new(block, 1), Kind::Data, data)
    }

    /// Adds the contiguous blocks of `extent` from `data` (their bytes, the
    /// last block possibly short); zero blocks among them are elided.
    pub fn add_extent(&mut self, extent: Extent, data: &[u8]) -> Result<()> {
        self.check_next(extent)?;
        let (_, len) = self.header.geometry.extent_bytes(extent);
        if data.len() as u64 != len {
            return Err(Error::invalid(format!(
                "extent {extent} has {} bytes, its length is {len}",
                data.len()
            )));
        }
        let bs = self.header.geometry.block_size() as usize;
        for (i, chunk) in data.chunks(bs).enumerate() {
            self.add_block(extent.start + i as u64, chunk)?;
        }
        Ok(())
    }

    /// Adds zero blocks (a discard or a zero write): no payload is stored.
    pub fn add_zero(&mut self, extent: Extent) -> Result<()> {
        self.check_next(extent)?;
        self.push(extent, Kind::Zero, &[])
    }

    fn push(&mut self, extent: Extent, kind: Kind, data: &[u8]) -> Result<()> {
        // Records end once they reach `record_bytes` (at most 1 MiB) and data
        // comes a power-of-two block at a time, so this only guards the limit.
        if self.cur.raw_len() + data.len() + COPY_LEN as usize > MAX_RECORD_RAW {
            self.seal()?;
        }
        self.next_block = extent.end();
        self.trailer.blocks += extent.count;
        if kind == Kind::Data {
            self.trailer.data_blocks += extent.count;
        }
        let (zero, copy) = (kind == Kind::Zero, matches!(kind, Kind::Copy(_)));
        let mut left = extent;
        while left.count > 0 {
            // Extend the record's last extent when contiguous and alike (a
            // copy also from the next source block).
            let room = u64::from(u32::MAX);
            let cur = &mut self.cur;
            let source = match kind {
                Kind::Copy(s) => Some(s + (left.start - extent.start)),
                _ => None,
            };
            match cur.extents.last_mut() {
                Some(last)
                    if last.zero == zero
                        && last.copy == copy
                        && last.extent.end() == left.start
                        && last.extent.count < room
                        && source.is_none_or(|s| cur.copy_next == Some(s)) =>
                {
                    let n = left.count.min(room - last.extent.count);
                    last.extent.count += n;
                    cur.copy_next = source.map(|s| s + n);
                    left = Extent::new(left.start + n, left.count - n);
                }
                _ => {
                    if cur.extents.len() == MAX_RECORD_EXTENTS {
                        self.seal()?;
                        continue;
                    }
                    let n = left.count.min(room);
                    cur.extents.push(LogExtent {
                        extent: Extent::new(left.start, n),
                        zero,
                        copy,
                    });
                    if let Some(s) = source {
                        cur.append(&s.to_le_bytes(), self.digest_only);
                    }
                    cur.copy_next = source.map(|s| s + n);
                    left = Extent::new(left.start + n, left.count - n);
                }
            }
        }
        if kind == Kind::Data {
            self.cur.append(data, self.digest_only);
        }
        if self.cur.raw_len() >= self.opts.record_bytes {
            self.seal()?;
        }
        Ok(())
    }

    /// Closes the current record and hands it to the encoder: inline, or
    /// to the workers, writing whatever came back in order meanwhile.
    fn seal(&mut self) -> Result<()> {
        if self.cur.extents.is_empty() {
            return Ok(());
        }
        let next = self.free.pop().unwrap_or_default();
        let mut p = std::mem::replace(&mut self.cur, next);
        if self.digest_only {
            // The digest needs each record's extents and raw CRC only.
            p.raw_crc = std::mem::take(&mut p.counted_crc).finalize();
            return self.write_and_recycle(p);
        }
        let Some(mut pool) = self.pool.take() else {
            p.encode(self.header.salt);
            return self.write_and_recycle(p);
        };
        let r = self.feed(&mut pool, p);
        self.pool = Some(pool);
        r
    }

    fn feed(&mut self, pool: &mut EncodePool, p: Pending) -> Result<()> {
        // A few records per worker queued keeps them busy; past that this
        // thread encodes too, and past twice that it waits, bounding memory.
        let limit = self.opts.threads * 4;
        if !pool.submit(p, self.header.salt, limit) {
            return Err(Error::new(ErrorKind::Io, "log compression worker stopped"));
        }
        loop {
            let wait = pool.in_flight() >= 2 * limit;
            match pool.next_ready(wait) {
                Some(p) => self.write_and_recycle(p)?,
                None if wait => {
                    return Err(Error::new(ErrorKind::Io, "log compression worker stopped"))
                }
                None => return Ok(()),
            }
        }
    }

    /// Waits for every record still with the workers and writes them.
    fn drain(&mut self) -> Result<()> {
        let Some(mut pool) = self.pool.take() else {
            return Ok(());
        };
        while let Some(p) = pool.next_ready(true) {
            self.write_and_recycle(p)?;
        }
        if pool.in_flight() != 0 {
            return Err(Error::new(ErrorKind::Io, "log compression worker stopped"));
        }
        Ok(())
    }

    fn write_and_recycle(&mut self, mut p: Pending) -> Result<()> {
        self.write_record(&p)?;
        p.extents.clear();
        p.raw.clear();
        p.counted = 0;
        p.copy_next = None;
        self.free.push(p);
        Ok(())
    }

    fn write_record(&mut self, p: &Pending) -> Result<()> {
        self.trailer
            .index
            .push((p.extents[0].extent.start, self.written));
        if !self.digest_only {
            for part in [&p.head[..], p.payload(), &p.crc.to_le_bytes()] {
                self.out
                    .write_all(part)
                    .map_err(|e| Error::io("write log record", e).with_offset(self.written))?;
                self.written += part.len() as u64;
            }
        }
        self.trailer.records += 1;
        self.trailer.raw_bytes += p.raw_len() as u64;
        self.chain.update(&p.crc.to_le_bytes());
        self.digest.record(&p.extents, p.raw_crc);
        Ok(())
    }

    /// Writes the remaining records and the trailer; returns the output and
    /// what was written. Without this the log has no trailer and every
    /// reader rejects it as incomplete.
    pub fn finish(mut self) -> Result<(W, LogSummary)> {
        self.seal()?;
        self.drain()?;
        self.trailer.chain = self.chain.clone().finalize();
        self.trailer.digest = self.digest.finish();
        self.trailer.offset = self.written;
        let t = self.trailer.encode();
        self.out
            .write_all(&t)
            .and_then(|()| self.out.flush())
            .map_err(|e| Error::io("write log trailer", e).with_offset(self.written))?;
        if !self.digest_only {
            self.written += t.len() as u64;
        }
        Ok((
            self.out,
            LogSummary {
                header: self.header,
                trailer: self.trailer,
                bytes: self.written,
            },
        ))
    }
}

/// Gathers blocks in any order, then writes them sorted and coalesced.
///
/// Holds every block in memory until [`write_to`](Self::write_to); for large
/// logs feed a [`LogWriter`] in ascending order instead.
#[derive(Debug, Default)]
pub struct LogBuilder {
    blocks: BTreeMap<u64, Vec<u8>>,
    /// Zero ranges by first block: (count).
    zeros: BTreeMap<u64, u64>,
}

impl LogBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    fn overlaps_zero(&self, e: Extent) -> bool {
        self.zeros
            .range(..e.end())
            .next_back()
            .is_some_and(|(&s, &n)| s + n > e.start)
    }

    /// Adds a block's content. A block added twice is an error.
    pub fn add_block(&mut self, block: u64, data: &[u8]) -> Result<()> {
        if self.blocks.contains_key(&block) || self.overlaps_zero(Extent::new(block, 1)) {
            return Err(Error::invalid(format!("block {block} added twice")));
        }
        self.blocks.insert(block, data.to_vec());
        Ok(())
    }

    /// Adds zero blocks. Overlapping blocks already added is an error.
    pub fn add_zero(&mut self, extent: Extent) -> Result<()> {
        if extent.count == 0 {
            return Err(Error::invalid("empty zero extent"));
        }
        let end = extent
            .start
            .checked_add(extent.count)
            .ok_or_else(|| Error::out_of_range("zero extent overflows"))?;
        if self.overlaps_zero(extent) || self.blocks.range(extent.start..end).next().is_some() {
            return Err(Error::invalid(format!(
                "zero extent {extent} overlaps blocks added before"
            )));
        }
        self.zeros.insert(extent.start, extent.count);
        Ok(())
    }

    /// Writes every block, in order, as one log.
    pub fn write_to<W: Write>(
        self,
        out: W,
        header: LogHeader,
        opts: WriterOptions,
    ) -> Result<(W, LogSummary)> {
        let mut w = LogWriter::new(out, header, opts)?;
        let mut zeros = self.zeros.into_iter().peekable();
        for (b, data) in self.blocks {
            while let Some((s, n)) = zeros.next_if(|&(s, _)| s < b) {
                w.add_zero(Extent::new(s, n))?;
            }
            w.add_block(b, &data)?;
        }
        for (s, n) in zeros {
            w.add_zero(Extent::new(s, n))?;
        }
        w.finish()
    }
}
