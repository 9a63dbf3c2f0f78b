//! Streaming delta-log reader over any `Read`.

use super::format::{
    corrupt_at, decode_extents, record_hasher, Codec, DigestChain, LogExtent, RecordHead, Trailer,
    COPY_LEN, END_MAGIC, EXTENT_LEN, FOOTER_LEN, HEADER_FIXED, RECORD_FIXED, RECORD_TAG,
    TRAILER_FIXED, TRAILER_TAG,
};
use super::{LogHeader, LogSummary};
use crate::error::{Error, ErrorKind, Result};
use crate::geometry::{Extent, Geometry};
use crate::id::DiskId;
use crate::le::get_u64;
use bytes::Bytes;
use std::io::Read;

/// What a reader expects of a log, and how it treats an incomplete one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// Refuse a log of another disk.
    pub disk: Option<DiskId>,
    /// Refuse a log of another epoch.
    pub epoch: Option<u64>,
    /// What a truncated or corrupt record means.
    pub tail: TailPolicy,
}

/// What a reader does at a truncated or corrupt record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TailPolicy {
    /// Fail: the log is damaged (a log received or applied must be whole).
    #[default]
    Refuse,
    /// Stop quietly there and report the log incomplete: yields exactly the
    /// verified prefix (what survived of a log being written at a crash).
    StopAtDamage,
}

/// One verified record: its extents and their raw data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Byte offset of the record in the log.
    pub offset: u64,
    /// How its payload was stored.
    pub codec: Codec,
    /// Its extents, ascending.
    pub extents: Vec<LogExtent>,
    /// The data extents' bytes, concatenated in order (zero extents have
    /// none).
    pub data: Bytes,
}

/// One block of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Block<'a> {
    /// A zero block.
    Zero,
    /// A block's data.
    Data(&'a [u8]),
    /// A copy of this earlier block of the log (carried as data).
    CopyOf(u64),
}

impl Record {
    /// Every block of the record, in order.
    pub fn blocks(&self, geometry: Geometry) -> impl Iterator<Item = (u64, Block<'_>)> + '_ {
        let mut at = 0usize;
        self.extents.iter().flat_map(move |e| {
            let start_at = at;
            at += e.payload_len(geometry) as usize;
            let data = &self.data;
            let source = e
                .copy
                .then(|| get_u64(&data[start_at..start_at + COPY_LEN as usize], 0));
            (e.extent.start..e.extent.end()).scan(start_at, move |pos, b| {
                if e.zero {
                    return Some((b, Block::Zero));
                }
                if let Some(s) = source {
                    return Some((b, Block::CopyOf(s + (b - e.extent.start))));
                }
                let len = geometry.block_len(b) as usize;
                let slice = &data[*pos..*pos + len];
                *pos += len;
                Some((b, Block::Data(slice)))
            })
        })
    }
}

/// Reads and checks a delta log from any `Read`, record by record.
///
/// The header is checked when the reader is made; each record (layout,
/// bounds, salted CRC, decompression, raw CRC) before it is handed out; the
/// trailer (counts, chain, digest, index, CRC, end magic) when reached.
pub struct LogReader<R: Read> {
    r: R,
    pos: u64,
    header: LogHeader,
    opts: ReadOptions,
    prev_end: u64,
    done: bool,
    complete: bool,
    counts: Trailer,
    chain: crc32fast::Hasher,
    digest: DigestChain,
    /// The runs of blocks carried as data so far: copies must come from
    /// them.
    data_runs: Vec<Extent>,
}

impl<R: Read> LogReader<R> {
    /// Reads and checks the header, and the disk and epoch expected.
    pub fn new(mut r: R, opts: ReadOptions) -> Result<Self> {
        let mut prefix = [0u8; 24];
        read_exact(&mut r, &mut prefix, 0)?;
        let len = LogHeader::announced_len(&prefix)?;
        let mut b = vec![0u8; len];
        b[..24].copy_from_slice(&prefix);
        read_exact(&mut r, &mut b[24..], 24)?;
        let header = LogHeader::decode(&b)?;
        if let Some(d) = opts.disk {
            if header.disk_id != d {
                return Err(Error::mismatch(format!(
                    "log is for disk {}, expected {d}",
                    header.disk_id
                ))
                .with_sequence(header.sequence));
            }
        }
        if let Some(e) = opts.epoch {
            if header.epoch != e {
                return Err(Error::mismatch(format!(
                    "log is of epoch {}, expected {e}",
                    header.epoch
                ))
                .with_sequence(header.sequence));
            }
        }
        debug_assert!(len >= HEADER_FIXED);
        Ok(LogReader {
            r,
            pos: len as u64,
            digest: DigestChain::new(&header),
            header,
            opts,
            prev_end: 0,
            done: false,
            complete: false,
            counts: Trailer::default(),
            chain: crc32fast::Hasher::new(),
            data_runs: Vec::new(),
        })
    }

    /// The log's header.
    pub fn header(&self) -> &LogHeader {
        &self.header
    }

    /// Whether the whole log, trailer included, was read and verified.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// The verified trailer, once the reader reached it.
    pub fn trailer(&self) -> Option<&Trailer> {
        self.complete.then_some(&self.counts)
    }

    /// The underlying reader, positioned after what was consumed.
    pub fn into_inner(self) -> R {
        self.r
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The next verified record, or `None` at the (verified) end.
    ///
    /// With [`TailPolicy::StopAtDamage`] a truncated or corrupt remainder also ends the
    /// log, with [`is_complete`](Self::is_complete) false.
    pub fn next_record(&mut self) -> Result<Option<Record>> {
        if self.done {
            return Ok(None);
        }
        match self.step() {
            Ok(r) => {
                if r.is_none() {
                    self.done = true;
                }
                Ok(r)
            }
            Err(e) => {
                self.done = true;
                if self.opts.tail == TailPolicy::StopAtDamage && e.kind() == ErrorKind::Corrupt {
                    Ok(None)
                } else {
                    Err(e.with_sequence(self.header.sequence))
                }
            }
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<()> {
        read_exact(&mut self.r, buf, self.pos)?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn step(&mut self) -> Result<Option<Record>> {
        let at = self.pos;
        let mut tag = [0u8; 4];
        self.read(&mut tag)?;
        if tag == TRAILER_TAG {
            self.read_trailer(at)?;
            return Ok(None);
        }
        if tag != RECORD_TAG {
            return Err(corrupt_at(at, "expected a record or the trailer"));
        }
        let mut fixed = [0u8; RECORD_FIXED];
        fixed[..4].copy_from_slice(&tag);
        self.read(&mut fixed[4..])?;
        let head = RecordHead::decode(&fixed, at)?;
        let mut table = vec![0u8; head.extents * EXTENT_LEN];
        self.read(&mut table)?;
        let (extents, prev_end) = decode_extents(
            &table,
            &head,
            self.header.geometry,
            self.prev_end,
            at + RECORD_FIXED as u64,
            self.header.copies,
        )?;
        let mut payload = vec![0u8; head.stored];
        let payload_at = self.pos;
        self.read(&mut payload)?;
        let mut crc = [0u8; 4];
        self.read(&mut crc)?;
        let mut h = record_hasher(self.header.salt);
        h.update(&fixed);
        h.update(&table);
        h.update(&payload);
        let crc = u32::from_le_bytes(crc);
        if h.finalize() != crc {
            return Err(corrupt_at(
                at,
                "record checksum mismatch (corrupt, or spliced from another log)",
            ));
        }
        let data = decode_payload(&head, payload, payload_at)?;
        self.check_copies(&extents, &data, at)?;
        self.prev_end = prev_end;
        let c = &mut self.counts;
        c.records += 1;
        for e in &extents {
            c.blocks += e.extent.count;
            if !e.zero && !e.copy {
                c.data_blocks += e.extent.count;
            }
        }
        c.raw_bytes += head.raw as u64;
        c.index.push((extents[0].extent.start, at));
        self.chain.update(&crc.to_le_bytes());
        self.digest.record(&extents, head.raw_crc);
        Ok(Some(Record {
            offset: at,
            codec: head.codec,
            extents,
            data,
        }))
    }

    /// Checks that every copy extent takes blocks carried as data earlier
    /// in the log, and records this record's data runs.
    fn check_copies(&mut self, extents: &[LogExtent], data: &[u8], at: u64) -> Result<()> {
        let g = self.header.geometry;
        let mut pos = 0usize;
        for e in extents {
            if e.copy {
                let source = get_u64(&data[pos..pos + COPY_LEN as usize], 0);
                let end = source.checked_add(e.extent.count);
                let run = self.data_runs.partition_point(|r| r.end() <= source);
                let covered = end.is_some_and(|end| {
                    end <= e.extent.start
                        && self
                            .data_runs
                            .get(run)
                            .is_some_and(|r| r.start <= source && end <= r.end())
                });
                if !covered {
                    return Err(corrupt_at(
                        at,
                        format!(
                            "copy of {} blocks at {} from block {source}, which is not data earlier in the log",
                            e.extent.count, e.extent.start
                        ),
                    ));
                }
            } else if !e.zero {
                match self.data_runs.last_mut() {
                    Some(r) if r.end() == e.extent.start => r.count += e.extent.count,
                    _ => self.data_runs.push(e.extent),
                }
            }
            pos += e.payload_len(g) as usize;
        }
        Ok(())
    }

    fn read_trailer(&mut self, at: u64) -> Result<()> {
        let mut fixed = [0u8; TRAILER_FIXED];
        fixed[..4].copy_from_slice(&TRAILER_TAG);
        self.read(&mut fixed[4..])?;
        let (mut t, n) = Trailer::decode_fixed(&fixed, at, self.counts.records)?;
        if n as u64 != self.counts.records {
            return Err(corrupt_at(
                at + 88,
                format!("index of {n} entries for {} records", self.counts.records),
            ));
        }
        let mut index = vec![0u8; n * 16];
        self.read(&mut index)?;
        let mut tail = [0u8; 4 + FOOTER_LEN];
        self.read(&mut tail)?;
        let mut h = crc32fast::Hasher::new();
        h.update(&fixed);
        h.update(&index);
        if h.finalize() != u32::from_le_bytes(tail[..4].try_into().expect("4 bytes")) {
            return Err(corrupt_at(at, "trailer checksum mismatch"));
        }
        t.index = Trailer::decode_index(&index);
        let footer_offset = u64::from_le_bytes(tail[4..12].try_into().expect("8 bytes"));
        if tail[12..] != END_MAGIC || footer_offset != at {
            return Err(corrupt_at(at, "bad end of log"));
        }
        let want = Trailer {
            chain: self.chain.clone().finalize(),
            digest: self.digest.finish(),
            offset: at,
            ..self.counts.clone()
        };
        if t != want {
            return Err(corrupt_at(at, "trailer does not match the records read"));
        }
        let mut extra = [0u8; 1];
        match self.r.read(&mut extra) {
            Ok(0) => {}
            Ok(_) => return Err(corrupt_at(self.pos, "data after the end of the log")),
            Err(e) => return Err(Error::io("read log", e).with_offset(self.pos)),
        }
        self.counts = t;
        self.complete = true;
        Ok(())
    }
}

impl<R: Read> Iterator for LogReader<R> {
    type Item = Result<Record>;
    fn next(&mut self) -> Option<Result<Record>> {
        self.next_record().transpose()
    }
}

fn read_exact<R: Read>(r: &mut R, buf: &mut [u8], at: u64) -> Result<()> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            corrupt_at(
                at,
                format!("log truncated: {} more bytes expected", buf.len()),
            )
        } else {
            Error::io("read log", e).with_offset(at)
        }
    })
}

/// Decompresses (or takes) a record's payload and checks its raw CRC.
pub(crate) fn decode_payload(head: &RecordHead, payload: Vec<u8>, at: u64) -> Result<Bytes> {
    let raw = match head.codec {
        Codec::Zero => return Ok(Bytes::new()),
        Codec::Raw => payload,
        Codec::Lz4 => decompress(head, &payload, at)?,
    };
    check_raw(head, raw, at)
}

/// [`decode_payload`] of a payload borrowed (from a mapped log): a
/// compressed one is decompressed straight from it, with no copy first.
pub(crate) fn decode_payload_slice(head: &RecordHead, payload: &[u8], at: u64) -> Result<Bytes> {
    let raw = match head.codec {
        Codec::Zero => return Ok(Bytes::new()),
        Codec::Raw => payload.to_vec(),
        Codec::Lz4 => decompress(head, payload, at)?,
    };
    check_raw(head, raw, at)
}

fn decompress(head: &RecordHead, payload: &[u8], at: u64) -> Result<Vec<u8>> {
    let mut raw = vec![0u8; head.raw];
    match lz4_flex::block::decompress_into(payload, &mut raw) {
        Ok(n) if n == head.raw => Ok(raw),
        _ => Err(corrupt_at(
            at,
            "LZ4 payload does not decompress to its raw length",
        )),
    }
}

fn check_raw(head: &RecordHead, raw: Vec<u8>, at: u64) -> Result<Bytes> {
    if crc32fast::hash(&raw) != head.raw_crc {
        return Err(corrupt_at(at, "raw data checksum mismatch"));
    }
    Ok(Bytes::from(raw))
}

/// Reads a whole log and checks everything; the log must be complete.
pub fn verify<R: Read>(r: R, opts: ReadOptions) -> Result<LogSummary> {
    let mut reader = LogReader::new(
        r,
        ReadOptions {
            tail: TailPolicy::Refuse,
            ..opts
        },
    )?;
    while reader.next_record()?.is_some() {}
    let trailer = reader.counts.clone();
    Ok(LogSummary {
        header: reader.header.clone(),
        trailer,
        bytes: reader.pos,
    })
}
