//! `blockrep_store_*`: a pipeline's spool shipped to an object store
//! (docs/FORMAT.md, "Object store layout"), sealed with the pair's key
//! handed over as bytes, and a replica hydrated from the store. Present
//! when the library is built with the `s3` feature (as `cargo cinstall`
//! builds it).

use super::convert::{
    borrow, bytes_in, disk_id_in, free, handle, handle_out, need, path_in, slice_in, str_in,
    string_out, struct_in, write_out,
};
use super::error::{blockrep_status, guard};
use super::pipeline::blockrep_pipeline;
use super::types::{blockrep_disk_id, blockrep_log_fn, log_sink};
use crate::error::{Error, Result};
use crate::io::FsDir;
use crate::seal::{Keyring, SealKey};
use crate::store::{hydrate, StoreConfig, StoreShipper, StoreShipperConfig, WriterId};
use std::ffi::{c_char, c_void};
use std::sync::Arc;
use std::time::Duration;

/// A running store shipper. Its calls may come from any thread; `_free`
/// stops it (after the request under way) and needs the handle to itself.
pub struct blockrep_store_shipper {
    inner: StoreShipper,
}
handle!(blockrep_store_shipper, StoreShipper, "store shipper");

/// One `object_store` S3 option (`aws_endpoint`, `aws_region`, ...).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct blockrep_store_option {
    /// The option's name.
    pub key: *const c_char,
    /// Its value.
    pub value: *const c_char,
}

/// Where the store is and the pair's keys.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct blockrep_store_config {
    /// `s3://bucket/prefix` (credentials, region and endpoint from the
    /// `AWS_*` environment, then from `options`), `az://container/prefix`
    /// (Azure Blob Storage, `AZURE_STORAGE_*`), `file:///directory`, or
    /// a replica server's vault `blockrep://host:port/prefix` (options
    /// `tls_cert`, `tls_key`, `tls_ca`: PEM files; `server_name`).
    pub url: *const c_char,
    /// Further options; null when `options_len` is 0. Copied.
    pub options: *const blockrep_store_option,
    /// How many options.
    pub options_len: usize,
    /// The pair's current key: `key_len` (32) bytes. Copied, and zeroed
    /// in the library's copy when it is dropped; the caller keeps its own.
    pub key: *const u8,
    /// Its length: 32.
    pub key_len: usize,
    /// Older keys, still needed to open points sealed before a rotation:
    /// `old_keys_len` keys of 32 bytes, one after the other; null when 0.
    pub old_keys: *const u8,
    /// How many older keys.
    pub old_keys_len: usize,
    /// One request waits at most this long; 0 is 60 s.
    pub timeout_ms: u64,
}

/// How the store shipper writes.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct blockrep_store_shipper_config {
    /// The store and the keys.
    pub store: blockrep_store_config,
    /// This primary's writer id (16 bytes the integration keeps with the
    /// pipeline, the same at every start: a second primary with another
    /// id is fenced).
    pub writer_id: [u8; 16],
    /// Take the disk over from the writer that holds it (after a
    /// failover to this site).
    pub take_over: bool,
    /// Log lines; null for none.
    pub log: blockrep_log_fn,
    /// Passed to `log`.
    pub log_ctx: *mut c_void,
}

/// A store shipper's state, for a console.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct blockrep_store_shipper_status {
    /// Whether a failure happened since the last log shipped
    /// (`blockrep_store_shipper_last_error` says which).
    pub failing: bool,
    /// Another writer holds the disk: the shipper stopped for good.
    pub fenced: bool,
    /// Logs the store took since the start.
    pub logs_shipped: u64,
    /// Sealed bytes uploaded, every attempt counted.
    pub bytes_sent: u64,
    /// The manifest's generation last written or read.
    pub generation: u64,
    /// Logs waiting in the spool.
    pub pending_logs: u64,
    /// Their bytes.
    pub pending_bytes: u64,
    /// Whether `rpo_ns` is set.
    pub has_rpo: bool,
    /// The age of the latest point the store holds, in ns.
    pub rpo_ns: u64,
}

fn keys_in(c: &blockrep_store_config) -> Result<Keyring> {
    let mut ring = Keyring::new(SealKey::from_slice(bytes_in(c.key, c.key_len)?)?);
    let old = bytes_in(c.old_keys, c.old_keys_len * crate::seal::KEY_LEN)?;
    for k in old.chunks(crate::seal::KEY_LEN) {
        ring = ring.with_old(SealKey::from_slice(k)?);
    }
    Ok(ring)
}

fn store_in(c: &blockrep_store_config) -> Result<StoreConfig> {
    let mut s = StoreConfig::new(str_in(c.url, "url")?);
    for o in slice_in(c.options, c.options_len, "options")? {
        s.options.push((
            str_in(o.key, "option key")?.into(),
            str_in(o.value, "option value")?.into(),
        ));
    }
    if c.timeout_ms > 0 {
        s.timeout = Duration::from_millis(c.timeout_ms);
    }
    Ok(s)
}

/// Starts shipping `pipeline`'s spool to the store of `*config`, sealed
/// with its key, from a thread of the library's own; requests are retried
/// with backoff until `blockrep_store_shipper_free`, except when another
/// writer holds the disk (then `fenced` in the status).
///
/// # Safety
/// `pipeline` a live pipeline handle; `config` readable with its strings
/// NUL-terminated, its options and keys readable; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn blockrep_store_shipper_start(
    pipeline: *const blockrep_pipeline,
    config: *const blockrep_store_shipper_config,
    out: *mut *mut blockrep_store_shipper,
) -> blockrep_status {
    guard(|| {
        let p = borrow(pipeline)?;
        let c = struct_in(config, "config")?;
        let mut sc = StoreShipperConfig::new(
            store_in(&c.store)?,
            keys_in(&c.store)?,
            WriterId(c.writer_id),
        );
        sc.take_over = c.take_over;
        if let Some(f) = c.log {
            sc.log = Some(log_sink(f, c.log_ctx));
        }
        need(out, "out")?;
        handle_out(out, StoreShipper::start(p.shared_spool(), sc)?)
    })
}

/// The shipper's state.
///
/// # Safety
/// `s` a live store shipper handle; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn blockrep_store_shipper_get_status(
    s: *const blockrep_store_shipper,
    out: *mut blockrep_store_shipper_status,
) -> blockrep_status {
    guard(|| {
        let st = borrow(s)?.status();
        write_out(
            out,
            blockrep_store_shipper_status {
                failing: st.last_error.is_some(),
                fenced: st.fenced,
                logs_shipped: st.logs_shipped,
                bytes_sent: st.bytes_sent,
                generation: st.generation,
                pending_logs: st.pending_logs,
                pending_bytes: st.pending_bytes,
                has_rpo: st.rpo_ns.is_some(),
                rpo_ns: st.rpo_ns.unwrap_or(0),
            },
        )
    })
}

/// The shipper's last failure, by the string policy of
/// `blockrep_last_error` (an empty string when none).
///
/// # Safety
/// `s` a live store shipper handle; `buf` writable for `len` bytes (or
/// null with `len` 0); `out_len` writable.
#[no_mangle]
pub unsafe extern "C" fn blockrep_store_shipper_last_error(
    s: *const blockrep_store_shipper,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> blockrep_status {
    guard(|| {
        let e = borrow(s)?.status().last_error.unwrap_or_default();
        string_out(&e, buf, len, out_len)
    })
}

/// Stops the shipper and frees its handle.
///
/// # Safety
/// `s` a store shipper handle from `_start`, not used after.
#[no_mangle]
pub unsafe extern "C" fn blockrep_store_shipper_free(
    s: *mut blockrep_store_shipper,
) -> blockrep_status {
    guard(|| free(s).map(StoreShipper::stop))
}

/// Builds (or brings forward) the replica of `disk` in the directory
/// `dir` from the store of `*config`: at point `point`, or the latest
/// when `point` is 0. Every object is authenticated and verified before
/// it applies; a replica already in `dir` goes on from its point. Writes
/// the replica's point to `*out_sequence`.
///
/// # Safety
/// `config` readable as for `_start`; `disk` readable; `dir`
/// NUL-terminated; `out_sequence` writable.
#[no_mangle]
pub unsafe extern "C" fn blockrep_store_hydrate(
    config: *const blockrep_store_config,
    disk: *const blockrep_disk_id,
    dir: *const c_char,
    point: u64,
    out_sequence: *mut u64,
) -> blockrep_status {
    guard(|| {
        let c = struct_in(config, "config")?;
        let (store, keys) = (store_in(&c)?, keys_in(&c)?);
        let disk = disk_id_in(disk)?;
        let dir = path_in(dir)?;
        need(out_sequence, "out_sequence")?;
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create", e).with_path(dir))?;
        let r = hydrate(
            &store,
            &keys,
            disk,
            Arc::new(FsDir::new(dir)?),
            (point > 0).then_some(point),
            0,
        )?;
        write_out(out_sequence, r.sequence)
    })
}
