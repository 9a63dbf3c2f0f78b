//! `blockrep_shipper_*`: a pipeline's spool pushed to a replica server
//! (docs/PROTOCOL.md) from a thread of the library's own, over mutually
//! authenticated TLS. Present when the library is built with the `net`
//! feature (as `cargo cinstall` builds it).

use super::convert::{
    borrow, disk_id_in, free, handle, handle_out, need, opt_path_in, path_in, slice_in, str_in,
    string_out, struct_in, write_out,
};
use super::error::{blockrep_status, guard};
use super::pipeline::blockrep_pipeline;
use super::types::blockrep_disk_id;
use super::types::{blockrep_log_fn, log_sink};
use crate::error::{Error, Result};
use crate::net::{Bandwidth, Shipper, ShipperConfig, ShipperStatus, TlsFiles, Window};
use std::ffi::{c_char, c_void};
use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::time::Duration;

/// A running shipper. Its calls may come from any thread; `_free` stops
/// it (after the request under way, bounded by its timeout) and needs the
/// handle to itself.
pub struct blockrep_shipper {
    inner: Shipper,
}
handle!(blockrep_shipper, Shipper, "shipper");

/// A window of the week with its own bandwidth limit.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct blockrep_bandwidth_window {
    /// Days it applies: bit 0 Monday ... bit 6 Sunday.
    pub days: u8,
    /// Start, minutes after midnight (0 to 1439).
    pub from_minute: u16,
    /// End, exclusive (1 to 1440); before the start: runs past midnight.
    pub to_minute: u16,
    /// Bytes per second inside it; 0 is unlimited.
    pub limit: u64,
}

/// The bandwidth the shipper follows.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct blockrep_bandwidth {
    /// Bytes per second outside every window; 0 is unlimited.
    pub limit: u64,
    /// Windows with their own limit (the first holding the moment wins);
    /// null when `windows_len` is 0. Copied: the caller may free them.
    pub windows: *const blockrep_bandwidth_window,
    /// How many windows.
    pub windows_len: usize,
    /// The site's offset from UTC (minutes) the windows are written in.
    pub utc_offset_minutes: i32,
}

/// Where and how to ship.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct blockrep_shipper_config {
    /// The server, `host:port` (a name is resolved once, at start).
    pub server: *const c_char,
    /// The name its certificate must carry; null takes `server`'s host.
    pub server_name: *const c_char,
    /// This primary's certificate (PEM file).
    pub certificate: *const c_char,
    /// Its private key (PEM file).
    pub key: *const c_char,
    /// The CA that signed the server's certificate (PEM file).
    pub ca: *const c_char,
    /// Every network read and write waits at most this long; 0 is 30 s.
    pub timeout_ms: u64,
    /// The bandwidth limit and its schedule.
    pub bandwidth: blockrep_bandwidth,
    /// Log lines (connected again, failures said once a minute); null for
    /// none.
    pub log: blockrep_log_fn,
    /// Passed to `log`.
    pub log_ctx: *mut c_void,
}

/// A shipper's state, for a console.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct blockrep_shipper_status {
    /// Connected to the server now.
    pub connected: bool,
    /// Whether a failure happened since the last log shipped
    /// (`blockrep_shipper_last_error` says which).
    pub failing: bool,
    /// Logs the server applied (or held) since the start.
    pub logs_shipped: u64,
    /// Log bytes sent, every attempt counted.
    pub bytes_sent: u64,
    /// Of those, bytes sent again after a cut.
    pub bytes_resent: u64,
    /// Connections made since the start.
    pub connections: u64,
    /// Logs waiting in the spool, and their bytes.
    pub pending_logs: u64,
    /// Bytes of the logs waiting.
    pub pending_bytes: u64,
    /// Whether `rpo_ns` is set (false before the first acknowledgement).
    pub has_rpo: bool,
    /// The age of the latest point the server acknowledged, in ns.
    pub rpo_ns: u64,
    /// The bandwidth limit in force now; 0 is unlimited.
    pub bandwidth_limit: u64,
}

impl From<&ShipperStatus> for blockrep_shipper_status {
    fn from(s: &ShipperStatus) -> Self {
        blockrep_shipper_status {
            connected: s.connected,
            failing: s.last_error.is_some(),
            logs_shipped: s.logs_shipped,
            bytes_sent: s.bytes_sent,
            bytes_resent: s.bytes_resent,
            connections: s.connections,
            pending_logs: s.pending_logs,
            pending_bytes: s.pending_bytes,
            has_rpo: s.rpo_ns.is_some(),
            rpo_ns: s.rpo_ns.unwrap_or(0),
            bandwidth_limit: s.bandwidth_limit.unwrap_or(0),
        }
    }
}

/// 0 as "unlimited".
fn limit_in(v: u64) -> Option<u64> {
    (v > 0).then_some(v)
}

fn bandwidth_in(b: &blockrep_bandwidth) -> Result<Bandwidth> {
    let windows = slice_in(b.windows, b.windows_len, "windows")?
        .iter()
        .map(|w| Window {
            days: w.days,
            from_minute: w.from_minute,
            to_minute: w.to_minute,
            limit: limit_in(w.limit),
        })
        .collect();
    let bw = Bandwidth {
        limit: limit_in(b.limit),
        windows,
        utc_offset_minutes: b.utc_offset_minutes,
    };
    bw.validate()?;
    Ok(bw)
}

fn config_in(c: &blockrep_shipper_config) -> Result<ShipperConfig> {
    let server = str_in(c.server, "server")?;
    let addr = server
        .to_socket_addrs()
        .map_err(|e| Error::io(format!("resolve {server:?}"), e))?
        .next()
        .ok_or_else(|| Error::invalid(format!("{server:?} resolves to no address")))?;
    let name = match opt_path_in(c.server_name)? {
        Some(n) => n.to_string(),
        None => server
            .rsplit_once(':')
            .map_or(server, |(h, _)| h)
            .to_string(),
    };
    let tls = TlsFiles {
        cert: PathBuf::from(path_in(c.certificate)?),
        key: PathBuf::from(path_in(c.key)?),
        ca: PathBuf::from(path_in(c.ca)?),
    };
    let mut config = ShipperConfig::new(addr, name, tls);
    if c.timeout_ms > 0 {
        config.timeout = Duration::from_millis(c.timeout_ms);
    }
    config.bandwidth = bandwidth_in(&c.bandwidth)?;
    if let Some(f) = c.log {
        config.log = Some(log_sink(f, c.log_ctx));
    }
    Ok(config)
}

/// Starts shipping `pipeline`'s spool to the server of `*config` from a
/// thread of the library's own. The certificate files are read now (an
/// error returns at once, naming the file, never its contents); the
/// connection is made on that thread and retried with backoff until
/// `blockrep_shipper_free`. The pipeline may be used (cycles, writes) and
/// even closed meanwhile: the shipper keeps its spool alive.
///
/// # Safety
/// `pipeline` a live pipeline handle; `config` readable with its strings
/// NUL-terminated (`server_name` may be null) and its windows readable;
/// `out` writable.
#[no_mangle]
pub unsafe extern "C" fn blockrep_shipper_start(
    pipeline: *const blockrep_pipeline,
    config: *const blockrep_shipper_config,
    out: *mut *mut blockrep_shipper,
) -> blockrep_status {
    guard(|| {
        let p = borrow(pipeline)?;
        let c = config_in(&struct_in(config, "config")?)?;
        need(out, "out")?;
        handle_out(out, Shipper::start(p.shared_spool(), c)?)
    })
}

/// Changes the bandwidth limit and its schedule; the upload under way
/// follows at once.
///
/// # Safety
/// `s` a live shipper handle; `bandwidth` readable, its windows too.
#[no_mangle]
pub unsafe extern "C" fn blockrep_shipper_set_bandwidth(
    s: *const blockrep_shipper,
    bandwidth: *const blockrep_bandwidth,
) -> blockrep_status {
    guard(|| {
        let s = borrow(s)?;
        s.set_bandwidth(bandwidth_in(&struct_in(bandwidth, "bandwidth")?)?)
    })
}

/// The shipper's state now.
///
/// # Safety
/// `s` a live shipper handle; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn blockrep_shipper_get_status(
    s: *const blockrep_shipper,
    out: *mut blockrep_shipper_status,
) -> blockrep_status {
    guard(|| {
        let st = borrow(s)?.status();
        write_out(out, (&st).into())
    })
}

/// The shipper's last failure (empty when none since the last log
/// shipped), under the string policy: `*out_len` gets its length; with a
/// buffer of more than that, the text and a NUL.
///
/// # Safety
/// `s` a live shipper handle; `buf` null with `len` 0, or `len` writable
/// bytes; `out_len` writable.
#[no_mangle]
pub unsafe extern "C" fn blockrep_shipper_last_error(
    s: *const blockrep_shipper,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> blockrep_status {
    guard(|| {
        let st = borrow(s)?.status();
        string_out(st.last_error.as_deref().unwrap_or(""), buf, len, out_len)
    })
}

/// Fetches from the server of `*config` the block digests of the latest
/// point it holds of disk `*disk_id` and writes them to the file `path`,
/// for `blockrep_pipeline_resync` after tracking was lost (the resync log
/// then ships like any other).
///
/// # Safety
/// `config` readable as for `blockrep_shipper_start`; `disk_id` readable;
/// `path` NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn blockrep_shipper_fetch_digests(
    config: *const blockrep_shipper_config,
    disk_id: *const blockrep_disk_id,
    path: *const c_char,
) -> blockrep_status {
    guard(|| {
        let c = config_in(&struct_in(config, "config")?)?;
        let id = disk_id_in(disk_id)?;
        let path = path_in(path)?;
        crate::net::remote_digests(&c, id)?.store(path)
    })
}

/// Stops the shipper (after the request under way, bounded by its
/// timeout) and releases it. Logs not acknowledged stay in the spool for
/// the next shipper.
///
/// # Safety
/// `s` a live shipper handle, not used after.
#[no_mangle]
pub unsafe extern "C" fn blockrep_shipper_free(s: *mut blockrep_shipper) -> blockrep_status {
    guard(|| free(s).map(Shipper::stop))
}
