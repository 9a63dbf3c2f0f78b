//! `blockrep_pipeline_*`: the primary side of one disk. Write begin/end
//! pairs around guest writes, cycles into the spool, shipping, resync,
//! consistency groups, resize, and reverse replication after a failover.

use super::blockset::blockrep_blockset;
use super::convert::{
    borrow, borrow_mut, bytes_out, digest_in, disk_id_in, free, handle, handle_out, need, opt_out,
    opt_path_in, path_in, string_out, write_out,
};
use super::error::{blockrep_status, guard};
use super::ptracker::blockrep_open_state;
use super::status::{blockrep_disk_status, now_ns};
use super::types::{blockrep_consistency, blockrep_disk_id, blockrep_log_kind, consistency_of};
use crate::error::{Error, ErrorKind, Result};
use crate::io::{FileStorage, FsDir};
use crate::log::BlockDigests;
use crate::source::{
    AnyTracker, CycleOptions, CycleReport, Pipeline, PipelineBuilder, SpooledLog, TransferOptions,
};
use crate::status::DiskStatus;
use crate::tracker::{BlockSet, FrozenSet};
use std::ffi::c_char;
use std::sync::Arc;

/// One replicated disk on the primary: its tracking (in memory or in a
/// tracker file), copy-before-write, and the spool of logs to ship.
/// `_write_begin`/`_write_end`, `_zero_begin`/`_zero_end` may run from
/// any number of threads at once; cycles run one at a time (a second
/// caller waits); the spool calls may run concurrently with both. Only
/// `_close` and `_free` need the handle to themselves.
pub struct blockrep_pipeline {
    inner: Pipeline<AnyTracker>,
}
handle!(blockrep_pipeline, Pipeline<AnyTracker>, "pipeline");

/// What a cycle (or an initial sync, or a resync) wrote.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct blockrep_cycle_info {
    /// The log's sequence.
    pub sequence: u64,
    /// Its epoch.
    pub epoch: u64,
    /// Blocks it ships (data, zero and copies).
    pub blocks: u64,
    /// Its size in bytes.
    pub bytes: u64,
    /// Logs folded back from an overflowing spool before the cut.
    pub folded_logs: u64,
}

/// A log waiting in the spool.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct blockrep_spooled_log {
    /// Its sequence.
    pub sequence: u64,
    /// Its epoch.
    pub epoch: u64,
    /// Its size in bytes.
    pub bytes: u64,
    /// When its point was cut (ns since the Unix epoch).
    pub created_ns: u64,
    /// Full, delta or resync.
    pub kind: blockrep_log_kind,
    /// Crash- or app-consistent.
    pub consistency: blockrep_consistency,
    /// The content digest after it: with `sequence`, the log's identity,
    /// which `blockrep_pipeline_ack` names.
    pub digest: [u8; 32],
}

/// The pipeline's state, for a console.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct blockrep_pipeline_status {
    /// Logs not yet acknowledged, and their bytes.
    pub pending_logs: u64,
    /// Bytes of the logs not yet acknowledged.
    pub pending_bytes: u64,
    /// Of the pending logs, those handed to the transport.
    pub in_flight_logs: u64,
    /// The spool's byte limit.
    pub limit_bytes: u64,
    /// When the oldest pending point was cut (0: none pending).
    pub oldest_pending_ns: u64,
    /// The last acknowledged sequence (what the replica holds).
    pub acked_sequence: u64,
    /// When that point was cut: now minus this is the achieved RPO.
    pub acked_ns: u64,
    /// The sequence the next log builds on.
    pub head_sequence: u64,
    /// The epoch of the chain's head.
    pub epoch: u64,
    /// Logs folded back into the tracker since the pipeline was opened.
    pub folded_logs: u64,
    /// Blocks marked in the tracker now.
    pub dirty_blocks: u64,
    /// 1 when the chain waits for a resync (deltas are refused).
    pub resync_required: u32,
}

/// The builder for the disk at `disk_path` (opened read-only: the guest
/// writes it, the pipeline only reads), its spool in `spool_dir`.
fn builder(
    disk_path: &str,
    spool_dir: &str,
    spool_limit: u64,
    tracker_path: Option<&str>,
) -> Result<PipelineBuilder> {
    let disk = Arc::new(FileStorage::open_read_only(disk_path)?);
    let b = Pipeline::builder(disk, Arc::new(FsDir::new(spool_dir)?)).spool_limit(spool_limit);
    Ok(match tracker_path {
        Some(p) => b.tracker_file(p),
        None => b,
    })
}

/// Starts replicating the disk image (or block device) at `disk_path`:
/// its size is the disk's, in blocks of `block_size` bytes. Creates the
/// spool in directory `spool_dir` (at most about `spool_limit` bytes of
/// unshipped logs) for disk `*disk_id` in epoch `epoch`, and, when
/// `tracker_path` is not null, a tracker file there (else tracking is in
/// memory and lost at exit). Run `blockrep_pipeline_initial_sync` next. The
/// handle (`*out`) is the caller's; release it with `_close` or `_free`.
///
/// # Safety
/// Paths NUL-terminated (`tracker_path` may be null), `disk_id`
/// readable, `out` writable.
#[no_mangle]
pub unsafe extern "C" fn blockrep_pipeline_create(
    disk_path: *const c_char,
    spool_dir: *const c_char,
    disk_id: *const blockrep_disk_id,
    epoch: u64,
    block_size: u32,
    spool_limit: u64,
    tracker_path: *const c_char,
    out: *mut *mut blockrep_pipeline,
) -> blockrep_status {
    guard(|| {
        let (disk_path, spool_dir) = (path_in(disk_path)?, path_in(spool_dir)?);
        let tracker_path = opt_path_in(tracker_path)?;
        let id = disk_id_in(disk_id)?;
        need(out, "out")?;
        let b = builder(disk_path, spool_dir, spool_limit, tracker_path)?;
        handle_out(out, b.block_size(block_size).create(id, epoch)?)
    })
}

/// Reopens a pipeline after a restart: the spool in `spool_dir` (logs
/// already acknowledged are dropped, the rest are shipped again) and the
/// tracker file at `tracker_path`. `*out_state` says how the tracker was
/// found; `BLOCKREP_OPEN_INVALID` (or a null `tracker_path`: tracking in
/// memory did not survive) means tracking was lost: get the replica's
/// block digests and call `blockrep_pipeline_resync` before any cycle.
///
/// # Safety
/// Paths NUL-terminated (`tracker_path` may be null), outputs writable.
#[no_mangle]
pub unsafe extern "C" fn blockrep_pipeline_open(
    disk_path: *const c_char,
    spool_dir: *const c_char,
    spool_limit: u64,
    tracker_path: *const c_char,
    out_state: *mut blockrep_open_state,
    out: *mut *mut blockrep_pipeline,
) -> blockrep_status {
    guard(|| {
        let (disk_path, spool_dir) = (path_in(disk_path)?, path_in(spool_dir)?);
        let tracker_path = opt_path_in(tracker_path)?;
        need(out, "out")?;
        need(out_state, "out_state")?;
        let (p, state) = builder(disk_path, spool_dir, spool_limit, tracker_path)?.open()?;
        write_out(out_state, (&state).into())?;
        handle_out(out, p)
    })
}

/// Call before submitting a guest write of `len` bytes at `offset`; on
/// success pair it with `blockrep_pipeline_write_end` over the same range
/// once the write completed (failed or not). While a cycle reads, it
/// first saves the old content of blocks the cycle still needs.
/// Thread-safe.
///
/// # Safety
/// `p` null (refused) or live.
#[no_mangle]
pub unsafe extern "C" fn blockrep_pipeline_write_begin(
    p: *const blockrep_pipeline,
    offset: u64,
    len: u64,
) -> blockrep_status {
    guard(|| borrow(p)?.primary().begin_write(offset, len, false))
}

/// Completes a write begun with `blockrep_pipeline_write_begin`: marks its
/// blocks. Thread-safe.
///
/// # Safety
/// `p` null (refused) or live.
#[no_mangle]
pub unsafe extern "C" fn blockrep_pipeline_write_end(
    p: *const blockrep_pipeline,
    offset: u64,
    len: u64,
) -> blockrep_status {
    guard(|| borrow(p)?.primary().end_write(offset, len, false))
}

/// As `blockrep_pipeline_write_begin`, for a write of zeros or a discard
/// that leaves the range reading as zeros: its whole blocks ship as zero
/// extents without being read. Pair with `blockrep_pipeline_zero_end`.
/// Thread-safe.
///
/// # Safety
/// `p` null (refused) or live.
#[no_mangle]
pub unsafe extern "C" fn blockrep_pipeline_zero_begin(
    p: *const blockrep_pipeline,
    offset: u64,
    len: u64,
) -> blockrep_status {
    guard(|| borrow(p)?.primary().begin_write(offset, len, true))
}

/// Completes a zero write or discard begun with
/// `blockrep_pipeline_zero_begin`. Thread-safe.
///
/// # Safety
/// `p` null (refused) or live.
#[no_mangle]
pub unsafe extern "C" fn blockrep_pipeline_zero_end(
    p: *const blockrep_pipeline,
    offset: u64,
    len: u64,
) -> blockrep_status {
    guard(|| borrow(p)?.primary().end_write(offset, len, true))
}

/// Writes what a cycle wrote to the optional output `out`.
pub(super) fn info_out(out: *mut blockrep_cycle_info, r: &CycleReport) {
    opt_out(
        out,
        blockrep_cycle_info {
            sequence: r.summary.header.sequence,
            epoch: r.summary.header.epoch,
            blocks: r.blocks,
            bytes: r.summary.bytes,
            folded_logs: r.folded.map_or(0, |f| f.logs),
        },
    );
}

/// Writes the full log of the disk into the spool (the chain's first log;
/// writes may run meanwhile and go into the next cycle). `out` may be null.
///
/// # Safety
/// `p` null (refused) or live; `out` null or writable.
#[no_mangle]
pub unsafe extern "C" fn blockrep_pipeline_initial_sync(
    p: *const blockrep_pipeline,
    out: *mut blockrep_cycle_info,
) -> blockrep_status {
    guard(|| {
        let r = borrow(p)?.initial_sync(TransferOptions::default())?;
        info_out(out, &r);
        Ok(())
    })
}

/// One cycle: cuts at this instant (writers keep running), writes the
/// changed blocks as the next log into the spool. `consistency`: a
/// `blockrep_consistency` (app-consistent when the integration quiesced
/// the guest); `label` may be
/// null. On failure the blocks stay tracked. `out` may be null.
///
/// # Safety
/// `p` live; `label` null or NUL-terminated UTF-8; `out` null or writable.
#[no_mangle]
pub unsafe extern "C" fn blockrep_pipeline_cycle(
    p: *const blockrep_pipeline,
    consistency: u32,
    label: *const c_char,
    out: *mut blockrep_cycle_info,
) -> blockrep_status {
    guard(|| {
        let pipeline = borrow(p)?;
        let consistency = consistency_of(consistency)?;
        let c = CycleOptions {
            consistency,
            label: label_in(label)?,
            group: None,
        };
        let r = pipeline.cycle(&c)?;
        info_out(out, &r);
        Ok(())
    })
}

/// A cycle's label: null for none.
pub(super) fn label_in(label: *const c_char) -> Result<String> {
    Ok(if label.is_null() {
        String::new()
    } else {
        super::convert::str_in(label, "label")?.to_owned()
    })
}

fn spooled_out(out: *mut blockrep_spooled_log, l: &SpooledLog) -> Result<()> {
    write_out(
        out,
        blockrep_spooled_log {
            sequence: l.point.sequence,
            epoch: l.point.epoch,
            bytes: l.bytes,
            created_ns: l.point.created_ns,
            kind: l.kind.into(),
            consistency: l.consistency.into(),
            digest: l.point.digest.0,
        },
    )
}

/// The oldest log not yet handed to the transport, now counted as in
/// flight: writes it to `*out` and 1 to `*out_found`, or 0 to
/// `*out_found` when every log was handed out. Read it with
/// `blockrep_pipeline_log_read` (or open `blockrep_pipeline_log_path`),
/// deliver it, then `blockrep_pipeline_ack`.
///
/// # Safety
/// `p` live; outputs writable.
#[no_mangle]
pub unsafe extern "C" fn blockrep_pipeline_next_log(
    p: *const blockrep_pipeline,
    out: *mut blockrep_spooled_log,
    out_found: *mut u32,
) -> blockrep_status {
    guard(|| {
        let pipeline = borrow(p)?;
        need(out, "out")?;
        need(out_found, "out_found")?;
        match pipeline.spool().next_to_ship() {
            Some(l) => {
                spooled_out(out, &l)?;
                write_out(out_found, 1)
            }
            None => write_out(out_found, 0),
        }
    })
}

/// The path of spooled log `sequence`, as every string blockrep returns:
/// its length without the NUL goes to `*out_len`; with `buf` null and
/// `len` 0 that is all (a size query); else `buf` must hold more than that
/// many bytes (a smaller buffer is refused, `BLOCKREP_STATUS_INVALID_ARGUMENT`,
/// and left untouched) and receives the path and a NUL.
///
/// # Safety
/// `p` live; `buf` null or `len` writable bytes; `out_len` writable.
#[no_mangle]
pub unsafe extern "C" fn blockrep_pipeline_log_path(
    p: *const blockrep_pipeline,
    sequence: u64,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> blockrep_status {
    guard(|| {
        let pipeline = borrow(p)?;
        need(out_len, "out_len")?;
        let path = pipeline
            .spool()
            .pending()
            .into_iter()
            .find(|l| l.point.sequence == sequence)
            .and_then(|l| l.path)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::OutOfRange,
                    format!("log {sequence} is not spooled"),
                )
            })?;
        let s = path
            .to_str()
            .ok_or_else(|| Error::invalid("spool path is not UTF-8"))?;
        string_out(s, buf, len, out_len)
    })
}

/// Reads `len` bytes of spooled log `sequence` at `offset` into `buf`:
/// the transport's chunks. The range must lie within the log.
/// Thread-safe.
///
/// # Safety
/// `p` live; `buf` `len` writable bytes (null refused when `len` > 0).
#[no_mangle]
pub unsafe extern "C" fn blockrep_pipeline_log_read(
    p: *const blockrep_pipeline,
    sequence: u64,
    offset: u64,
    buf: *mut u8,
    len: usize,
) -> blockrep_status {
    guard(|| {
        let pipeline = borrow(p)?;
        let out = bytes_out(buf, len)?;
        if out.is_empty() {
            return Ok(());
        }
        pipeline.spool().open_log(sequence)?.read_at(out, offset)
    })
}

/// The replica has every log up to `sequence`, the last of them with
/// content digest `digest` (32 bytes, as the replica reports it): recorded
/// durably, then those logs are deleted. An acknowledgement naming other
/// content than the spooled log is refused (`BLOCKREP_STATUS_MISMATCH`,
/// detail conflict) and changes nothing. After a restart, acknowledge what
/// the replica reports it holds before shipping. Thread-safe.
///
/// # Safety
/// `p` null (refused) or live; `digest` null (refused) or 32 readable bytes.
#[no_mangle]
pub unsafe extern "C" fn blockrep_pipeline_ack(
    p: *const blockrep_pipeline,
    sequence: u64,
    digest: *const u8,
) -> blockrep_status {
    guard(|| {
        let p = borrow(p)?;
        p.spool().ack(sequence, &digest_in(digest)?)
    })
}

/// The replica's answer to "what do you hold" after a restart or a
/// reconnect: its latest `sequence` and content `digest` (32 bytes, from
/// `blockrep_replica_get_info` or the transport). Logs up to it are
/// acknowledged; the logs after it are known unapplied (they may be
/// folded back again) and shipping restarts after it. A replica behind,
/// ahead or holding other content is refused (`BLOCKREP_STATUS_MISMATCH`
/// with a detail) and nothing changes. Thread-safe.
///
/// # Safety
/// `p` null (refused) or live; `digest` null (refused) or 32 readable bytes.
#[no_mangle]
pub unsafe extern "C" fn blockrep_pipeline_reconcile(
    p: *const blockrep_pipeline,
    sequence: u64,
    digest: *const u8,
) -> blockrep_status {
    guard(|| {
        let p = borrow(p)?;
        p.spool().reconcile(sequence, &digest_in(digest)?)
    })
}

/// The transport reconnected: shipping starts again at the oldest
/// unacknowledged log. Thread-safe.
///
/// # Safety
/// `p` null (refused) or live.
#[no_mangle]
pub unsafe extern "C" fn blockrep_pipeline_rewind(p: *const blockrep_pipeline) -> blockrep_status {
    guard(|| {
        borrow(p)?.spool().rewind();
        Ok(())
    })
}

/// Writes the pipeline's state to `*out`. Thread-safe.
///
/// # Safety
/// `p` live; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn blockrep_pipeline_get_status(
    p: *const blockrep_pipeline,
    out: *mut blockrep_pipeline_status,
) -> blockrep_status {
    guard(|| {
        let pipeline = borrow(p)?;
        let s = pipeline.spool().status();
        write_out(
            out,
            blockrep_pipeline_status {
                pending_logs: s.pending_logs,
                pending_bytes: s.pending_bytes,
                in_flight_logs: s.in_flight_logs,
                limit_bytes: s.limit_bytes,
                oldest_pending_ns: s.oldest_pending_ns.unwrap_or(0),
                acked_sequence: s.acked.sequence,
                acked_ns: s.acked.created_ns,
                head_sequence: s.head.sequence,
                epoch: s.head.epoch,
                folded_logs: s.folded_logs,
                dirty_blocks: pipeline.primary().marked().count(),
                resync_required: u32::from(s.resync_required),
            },
        )
    })
}

/// Resync after tracking was lost or the replica left the chain: reads the
/// replica's block digest list from the file `digests_path` (written by
/// `blockrep_replica_block_digests`), drops the spool's logs, and spools a
/// resync log of exactly the blocks that differ, in a new epoch. `out` may
/// be null.
///
/// # Safety
/// `p` live; `digests_path` NUL-terminated; `out` null or writable.
#[no_mangle]
pub unsafe extern "C" fn blockrep_pipeline_resync(
    p: *const blockrep_pipeline,
    digests_path: *const c_char,
    out: *mut blockrep_cycle_info,
) -> blockrep_status {
    guard(|| {
        let pipeline = borrow(p)?;
        let path = path_in(digests_path)?;
        let bytes =
            std::fs::read(path).map_err(|e| Error::io("read digests", e).with_path(path))?;
        let d = BlockDigests::decode(&bytes).map_err(|e| e.with_path(path))?;
        let r = pipeline.resync(&d, TransferOptions::default())?;
        info_out(out, &r);
        Ok(())
    })
}

/// The blocks this primary changed that its replica may not hold (its
/// tracker and unacknowledged logs): after a failover, the old primary's
/// part of what reverse replication sends. `*out` is the caller's.
///
/// # Safety
/// `p` live; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn blockrep_pipeline_divergence(
    p: *const blockrep_pipeline,
    out: *mut *mut blockrep_blockset,
) -> blockrep_status {
    guard(|| {
        let set = borrow(p)?.divergence()?;
        handle_out::<blockrep_blockset>(out, FrozenSet::new(0, set))
    })
}

/// Reverse replication from the new primary: spools a resync log, in a
/// new epoch, of every block of `other` (the old primary's divergence
/// unioned with the commit's, see `blockrep_blockset_union`; null for
/// none) and every block this pipeline tracked.
///
/// # Safety
/// `p` live; `other` null or live; `out` null or writable.
#[no_mangle]
pub unsafe extern "C" fn blockrep_pipeline_reverse_sync(
    p: *const blockrep_pipeline,
    other: *const blockrep_blockset,
    out: *mut blockrep_cycle_info,
) -> blockrep_status {
    guard(|| {
        let p = borrow(p)?;
        let other = if other.is_null() {
            BlockSet::new(p.primary().tracker().geometry().block_count())
        } else {
            borrow(other)?.set().clone()
        };
        let r = p.reverse_sync(&other)?;
        info_out(out, &r);
        Ok(())
    })
}

/// The primary's status for a console (role, epoch, latest point, RPO,
/// pending logs) in `*out`. Thread-safe.
///
/// # Safety
/// `p` live; `out` null (refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn blockrep_pipeline_disk_status(
    p: *const blockrep_pipeline,
    out: *mut blockrep_disk_status,
) -> blockrep_status {
    guard(|| write_out(out, (&DiskStatus::of_pipeline(borrow(p)?, now_ns())).into()))
}

/// Lets the pipeline be cut in a consistency group (`blockrep_group_cycle`
/// refuses members that did not join): call it before the disk takes
/// writes. Its write completions then take part in a group cut's hold,
/// which costs two atomic operations each. No other call may run on `p`
/// meanwhile.
///
/// # Safety
/// `p` null (refused) or live, used by no other thread during the call.
#[no_mangle]
pub unsafe extern "C" fn blockrep_pipeline_join_group(
    p: *mut blockrep_pipeline,
) -> blockrep_status {
    guard(|| {
        borrow_mut(p)?.join_group();
        Ok(())
    })
}

/// The disk was resized to `size` bytes (by the integration, with its I/O
/// drained): the next cycle's log ships the new size and the replica
/// follows. No other call may run on `p` meanwhile.
///
/// # Safety
/// `p` null (refused) or live, used by no other thread during the call.
#[no_mangle]
pub unsafe extern "C" fn blockrep_pipeline_resize(
    p: *mut blockrep_pipeline,
    size: u64,
) -> blockrep_status {
    guard(|| borrow_mut(p)?.resize(size))
}

/// Stops the pipeline cleanly and releases it: a tracker file records the
/// blocks still to ship, so the next open is clean. Consumes the handle
/// (also on failure). No other call may run on it meanwhile.
///
/// # Safety
/// `p` null (refused), or a handle not yet released (a second release is
/// refused while the address was not reused).
#[no_mangle]
pub unsafe extern "C" fn blockrep_pipeline_close(p: *mut blockrep_pipeline) -> blockrep_status {
    guard(|| free(p)?.close())
}

/// Releases the pipeline without a clean stop (as a crash would: a
/// tracker file is recovered from its write-intent map on the next open).
///
/// # Safety
/// As `blockrep_pipeline_close`.
#[no_mangle]
pub unsafe extern "C" fn blockrep_pipeline_free(p: *mut blockrep_pipeline) -> blockrep_status {
    guard(|| free(p).map(drop))
}
