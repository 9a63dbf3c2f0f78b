//! `blockrep_log_*`: writing a log file, verifying one.

use super::convert::{
    borrow_mut, bytes_in, bytes_out, digest_in, disk_id_in, free, handle, handle_out, need,
    path_in, write_out,
};
use super::error::{blockrep_status, guard};
use super::types::{blockrep_disk_id, blockrep_log_kind};
use crate::error::Error;
use crate::geometry::{Extent, Geometry};
use crate::log::{LogFile, LogHeader, LogKind, ReadOptions, WriterOptions};
use std::ffi::c_char;

/// A log file being written (as `PATH.partial` until committed). One thread
/// at a time.
pub struct blockrep_log_writer {
    inner: LogFile,
}
handle!(blockrep_log_writer, LogFile, "log writer");

/// What a log holds, as the C ABI reports it.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct blockrep_log_info {
    /// The disk.
    pub disk_id: blockrep_disk_id,
    /// Epoch and sequence.
    pub epoch: u64,
    /// The log's sequence number.
    pub sequence: u64,
    /// The sequence it builds on.
    pub base_sequence: u64,
    /// Disk size and block size.
    pub disk_size: u64,
    /// Block size in bytes.
    pub block_size: u32,
    /// Full, delta, resync or undo.
    pub kind: blockrep_log_kind,
    /// Blocks held (zero and data) and data blocks.
    pub blocks: u64,
    /// Data (non-zero) blocks held.
    pub data_blocks: u64,
    /// Size of the log in bytes.
    pub bytes: u64,
    /// The content digest after applying it.
    pub digest: [u8; 32],
}

fn kind_of(k: u32) -> Result<LogKind, Error> {
    Ok(match k {
        1 => LogKind::Full,
        2 => LogKind::Delta,
        3 => LogKind::Resync,
        _ => {
            return Err(Error::invalid(format!(
                "log kind {k}: 1 full, 2 delta or 3 resync"
            )))
        }
    })
}

/// Starts writing the log file `path`: for disk `*disk_id` of
/// `size` bytes in `block_size` blocks, of `kind` (1 full, 2 delta,
/// 3 resync), `epoch` and `sequence`, building on `base_digest` (32 bytes;
/// null for a full log). Blocks must then be added in ascending order.
///
/// # Safety
/// `path` NUL-terminated; `disk_id` readable; `base_digest` null or
/// 32 readable bytes; `out` writable. Null where not allowed is refused.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn blockrep_log_writer_create(
    path: *const c_char,
    disk_id: *const blockrep_disk_id,
    size: u64,
    block_size: u32,
    kind: u32,
    epoch: u64,
    sequence: u64,
    base_digest: *const u8,
    out: *mut *mut blockrep_log_writer,
) -> blockrep_status {
    guard(|| {
        let path = path_in(path)?;
        need(out, "out")?;
        let mut h = LogHeader::new(
            disk_id_in(disk_id)?,
            Geometry::new(size, block_size)?,
            kind_of(kind)?,
            epoch,
            sequence,
        )?;
        if !base_digest.is_null() {
            h.base_digest = digest_in(base_digest)?;
        }
        handle_out(out, LogFile::create(path, h, WriterOptions::default())?)
    })
}

/// Adds one block's `len` bytes (the block's length; shorter for a short
/// last block). All-zero data is stored as a zero extent.
///
/// # Safety
/// `w` live (null refused); `data` `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn blockrep_log_writer_add_block(
    w: *mut blockrep_log_writer,
    block: u64,
    data: *const u8,
    len: usize,
) -> blockrep_status {
    guard(|| borrow_mut(w)?.add_block(block, bytes_in(data, len)?))
}

/// Adds `count` zero blocks from `start` (a discard or zero write).
///
/// # Safety
/// `w` live (null refused).
#[no_mangle]
pub unsafe extern "C" fn blockrep_log_writer_add_zero(
    w: *mut blockrep_log_writer,
    start: u64,
    count: u64,
) -> blockrep_status {
    guard(|| borrow_mut(w)?.add_zero(Extent::new(start, count)))
}

/// Finishes the log, makes it durable under its name and frees the
/// writer; writes the content digest after apply to `out_digest` (32
/// bytes) when not null. On failure the partial file is removed and the
/// writer freed too.
///
/// # Safety
/// `w` live (null refused); `out_digest` null or 32 writable bytes.
#[no_mangle]
pub unsafe extern "C" fn blockrep_log_writer_commit(
    w: *mut blockrep_log_writer,
    out_digest: *mut u8,
) -> blockrep_status {
    guard(|| {
        let summary = free(w)?.commit()?;
        if !out_digest.is_null() {
            bytes_out(out_digest, 32)?.copy_from_slice(&summary.trailer.digest.0);
        }
        Ok(())
    })
}

/// Abandons the log: removes the partial file and frees the writer.
///
/// # Safety
/// `w` null (refused) or live.
#[no_mangle]
pub unsafe extern "C" fn blockrep_log_writer_free(w: *mut blockrep_log_writer) -> blockrep_status {
    guard(|| free(w).map(drop))
}

/// Verifies the whole log file `path` (every record and the trailer) and
/// describes it in `*out`. Thread-safe.
///
/// # Safety
/// `path` NUL-terminated; `out` writable. Nulls are refused.
#[no_mangle]
pub unsafe extern "C" fn blockrep_log_verify(
    path: *const c_char,
    out: *mut blockrep_log_info,
) -> blockrep_status {
    guard(|| {
        let path = path_in(path)?;
        need(out, "out")?;
        let f = std::fs::File::open(path).map_err(|e| Error::io("open log", e).with_path(path))?;
        let s = crate::log::verify(std::io::BufReader::new(f), ReadOptions::default())
            .map_err(|e| e.with_path(path))?;
        let info = blockrep_log_info {
            disk_id: s.header.disk_id.into(),
            epoch: s.header.epoch,
            sequence: s.header.sequence,
            base_sequence: s.header.base_sequence,
            disk_size: s.header.geometry.size(),
            block_size: s.header.geometry.block_size(),
            kind: s.header.kind.into(),
            blocks: s.trailer.blocks,
            data_blocks: s.trailer.data_blocks,
            bytes: s.bytes,
            digest: s.trailer.digest.0,
        };
        write_out(out, info)
    })
}
