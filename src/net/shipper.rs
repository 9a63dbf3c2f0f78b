//! The shipper: a spool (a pipeline's, or a group member's) pushed to a
//! replica server from a thread of its own (no async runtime, nothing global in the host
//! process), memory bounded whatever the log size (each log streams from
//! its spool file).
//!
//! After every (re)connection it asks the server what it holds
//! (`GET .../resume`), reconciles the spool with it by sequence *and*
//! digest, and goes on from there: a partial upload continues at the
//! bytes the server holds. A log is acknowledged only when the server
//! answered that it applied it (or held it already). Failures back off
//! exponentially with jitter, capped; the status says what happened last,
//! and the log lines about failures are rate-limited (the same failure is
//! said once a minute, with how often it recurred). The bandwidth follows
//! a limit and its schedule, changeable while running.

use super::bandwidth::Bandwidth;
use super::client::Client;
use super::tls::{client_config, TlsFiles};
use crate::error::{Error, ErrorKind, Result};
use crate::hex::{hex, unhex};
use crate::io::Storage;
use crate::log::{BlockDigests, Digest};
use crate::retry::{backoff, pause, spool_progress, Reporter, Worker};
use crate::source::{Spool, Throttle};
use parking_lot::Mutex;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use crate::status::LogSink;

/// Where and how to ship.
#[derive(Clone)]
pub struct ShipperConfig {
    /// The replica server's address.
    pub server: SocketAddr,
    /// The name its certificate must carry.
    pub server_name: String,
    /// This primary's certificate and key, and the CA of the server's.
    pub tls: TlsFiles,
    /// Every network read and write waits at most this long.
    pub timeout: Duration,
    /// The first wait after a failure; doubled each time up to `retry_max`.
    pub retry_min: Duration,
    /// The longest wait between attempts.
    pub retry_max: Duration,
    /// The bandwidth limit and its schedule.
    pub bandwidth: Bandwidth,
    /// Where its log lines go (connected, failures, recoveries); none by
    /// default (a library prints nothing of its own accord).
    pub log: Option<LogSink>,
}

impl std::fmt::Debug for ShipperConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShipperConfig")
            .field("server", &self.server)
            .field("server_name", &self.server_name)
            .field("tls", &self.tls)
            .field("timeout", &self.timeout)
            .field("retry_min", &self.retry_min)
            .field("retry_max", &self.retry_max)
            .field("bandwidth", &self.bandwidth)
            .field("log", &self.log.is_some())
            .finish()
    }
}

impl ShipperConfig {
    /// A configuration with the default timeout (30 s) and backoff (0.2 s
    /// to 30 s).
    pub fn new(server: SocketAddr, server_name: impl Into<String>, tls: TlsFiles) -> Self {
        ShipperConfig {
            server,
            server_name: server_name.into(),
            tls,
            timeout: Duration::from_secs(30),
            retry_min: Duration::from_millis(200),
            retry_max: Duration::from_secs(30),
            bandwidth: Bandwidth::unlimited(),
            log: None,
        }
    }
}

/// What a console shows of a shipper.
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShipperStatus {
    /// Connected to the server now.
    pub connected: bool,
    /// The last failure (connection, refusal), cleared by the next log
    /// shipped.
    pub last_error: Option<String>,
    /// Logs the server applied (or held) since the start.
    pub logs_shipped: u64,
    /// Log bytes sent since the start, every attempt counted (a cut
    /// upload's bytes too).
    pub bytes_sent: u64,
    /// Of `bytes_sent`, those sent again after a cut: bytes of a log sent
    /// before that the server did not hold when the upload resumed (they
    /// were in flight when the connection broke).
    pub bytes_resent: u64,
    /// Connections made since the start.
    pub connections: u64,
    /// Logs in the spool not yet acknowledged, and their bytes.
    pub pending_logs: u64,
    /// Bytes of the logs not yet acknowledged.
    pub pending_bytes: u64,
    /// The achieved recovery point objective: the age of the latest point
    /// the server acknowledged (ns), `None` before the first.
    pub rpo_ns: Option<u64>,
    /// The bandwidth limit in force now (bytes per second), `None` when
    /// unlimited.
    pub bandwidth_limit: Option<u64>,
}

/// A running shipper; stopped (and its thread joined) when dropped.
pub struct Shipper {
    status: Arc<Mutex<ShipperStatus>>,
    spool: Arc<Spool>,
    bandwidth: Arc<Mutex<Bandwidth>>,
    worker: Worker,
}

impl std::fmt::Debug for Shipper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shipper")
            .field("status", &*self.status.lock())
            .finish()
    }
}

impl Shipper {
    /// Starts shipping `spool` (a pipeline's
    /// [`shared_spool`](crate::source::Pipeline::shared_spool)). The
    /// certificate files are read and the bandwidth schedule checked now
    /// (an error returns at once); the connection is made on the shipper's
    /// thread, and retried until [`stop`](Self::stop).
    pub fn start(spool: Arc<Spool>, config: ShipperConfig) -> Result<Shipper> {
        let tls = client_config(&config.tls)?;
        config.bandwidth.validate()?;
        let stop = Arc::new(AtomicBool::new(false));
        let status = Arc::new(Mutex::new(ShipperStatus::default()));
        let bandwidth = Arc::new(Mutex::new(config.bandwidth.clone()));
        let ctx = Context {
            spool: spool.clone(),
            report: Reporter::new(config.log.clone()),
            config,
            tls,
            stop: stop.clone(),
            status: status.clone(),
            bandwidth: bandwidth.clone(),
            throttle: Throttle::new(u64::MAX),
        };
        let worker = Worker::spawn("blockrep-shipper", stop, move || run(&ctx))?;
        Ok(Shipper {
            status,
            spool,
            bandwidth,
            worker,
        })
    }

    /// The status now.
    pub fn status(&self) -> ShipperStatus {
        // The spool is read under the status lock, which an
        // acknowledgement holds too: pending logs and logs shipped agree.
        let held = self.status.lock();
        let (pending_logs, pending_bytes, rpo_ns) = spool_progress(&self.spool);
        let mut s = held.clone();
        drop(held);
        (s.pending_logs, s.pending_bytes, s.rpo_ns) = (pending_logs, pending_bytes, rpo_ns);
        s.bandwidth_limit = self.bandwidth.lock().limit_now();
        s
    }

    /// Changes the bandwidth limit and its schedule; the upload under way
    /// follows at once.
    pub fn set_bandwidth(&self, bandwidth: Bandwidth) -> Result<()> {
        bandwidth.validate()?;
        *self.bandwidth.lock() = bandwidth;
        Ok(())
    }

    /// Stops after the request under way (bounded by the timeout).
    pub fn stop(mut self) {
        self.worker.halt();
    }
}

/// What the shipper's thread works with.
struct Context {
    spool: Arc<Spool>,
    config: ShipperConfig,
    tls: Arc<rustls::ClientConfig>,
    stop: Arc<AtomicBool>,
    status: Arc<Mutex<ShipperStatus>>,
    bandwidth: Arc<Mutex<Bandwidth>>,
    /// Paces the bodies sent; its rate follows `bandwidth`.
    throttle: Throttle,
    report: Reporter,
}

impl Context {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// A failure: in the status at once; in the log once a minute at most
    /// while it recurs (with how often it did).
    fn failed(&self, e: &Error) {
        let msg = self.report.failed(e);
        self.status.lock().last_error = Some(msg);
    }

    /// The bandwidth limit now, applied to the throttle; `None` when
    /// unlimited.
    fn pace(&self) -> Option<&Throttle> {
        let limit = self.bandwidth.lock().limit_now()?;
        if self.throttle.bytes_per_sec() != limit {
            self.throttle.set_bytes_per_sec(limit);
        }
        Some(&self.throttle)
    }
}

fn run(ctx: &Context) {
    let config = &ctx.config;
    let mut wait = config.retry_min;
    let mut sent = Sent::default();
    while !ctx.stopped() {
        let mut progressed = false;
        let r = session(ctx, &mut sent, &mut progressed);
        ctx.status.lock().connected = false;
        match r {
            Ok(()) => return,
            Err(e) => ctx.failed(&e),
        }
        if progressed {
            wait = config.retry_min;
        }
        if !pause(backoff(wait), &ctx.stop) {
            return;
        }
        wait = (wait * 2).min(config.retry_max);
    }
}

/// One connection's work: resume, then ship until stopped or failed.
fn session(ctx: &Context, sent: &mut Sent, progressed: &mut bool) -> Result<()> {
    let (config, spool, status) = (&ctx.config, &*ctx.spool, &*ctx.status);
    let disk = hex(&spool.disk_id().0);
    let mut c = Client::connect(
        config.server,
        &config.server_name,
        ctx.tls.clone(),
        config.timeout,
    )?;
    {
        let mut s = status.lock();
        s.connected = true;
        s.connections += 1;
    }
    let resume = get_json(&mut c, &format!("/v1/disks/{disk}/resume"))?;
    spool.rewind();
    if let Some(applied) = resume.get("applied").filter(|a| !a.is_null()) {
        let seq = applied["sequence"].as_u64().unwrap_or(0);
        let digest = digest_of(&applied["digest"])?;
        spool.reconcile(seq, &digest)?;
    }
    let mut held = resume
        .get("held")
        .filter(|x| !x.is_null())
        .and_then(|x| Some((x["sequence"].as_u64()?, digest_of(&x["digest"]).ok()?)));
    let mut partial = resume
        .get("partial")
        .filter(|x| !x.is_null())
        .and_then(|x| {
            Some((
                x["sequence"].as_u64()?,
                digest_of(&x["digest"]).ok()?,
                x["bytes"].as_u64()?,
            ))
        });
    while !ctx.stopped() {
        let Some(l) = spool.next_to_ship() else {
            if !pause(Duration::from_millis(50), &ctx.stop) {
                break;
            }
            continue;
        };
        let (seq, digest) = (l.point.sequence, l.point.digest);
        if held.take() == Some((seq, digest)) {
            // The server holds this group member already: wait for the
            // rest of its group.
            wait_for_group(ctx, &mut c, &disk, seq, digest)?;
            *progressed = true;
            continue;
        }
        let from = match partial.take() {
            // A partial holding the whole log (the server stopped before
            // applying it) is sent again whole, which restarts it.
            Some((s, d, bytes)) if s == seq && d == digest && bytes < l.bytes => bytes,
            _ => 0,
        };
        let file = spool.open_log(seq)?;
        let mut headers = vec![("Blockrep-Digest", hex(&digest.0))];
        if from > 0 {
            headers.push((
                "Content-Range",
                format!("bytes {from}-{}/{}", l.bytes - 1, l.bytes),
            ));
        }
        let mut body = StorageReader {
            s: &*file,
            at: from,
            end: l.bytes,
            ctx,
        };
        let resent = sent.resuming(seq, digest, from);
        let r = c.request(
            "PUT",
            &format!("/v1/disks/{disk}/logs/{seq}"),
            &headers,
            &mut body,
            l.bytes - from,
        );
        sent.upto = sent.upto.max(body.at);
        {
            let mut s = status.lock();
            s.bytes_sent += body.at - from;
            s.bytes_resent += resent.min(body.at - from);
        }
        let r = r?;
        if r.head.status == 202 {
            // A member of a consistency group, held until every member
            // arrived: applied with them, or not at all.
            wait_for_group(ctx, &mut c, &disk, seq, digest)?;
            *progressed = true;
            continue;
        }
        if r.head.status != 200 {
            return Err(refusal(&r));
        }
        let answer = r.json()?;
        if answer["sequence"].as_u64() != Some(seq) || digest_of(&answer["digest"])? != digest {
            return Err(Error::new(
                ErrorKind::Mismatch,
                format!("the server answered for another log than {seq}: {answer}"),
            ));
        }
        {
            // Under the status lock: see `Shipper::status`.
            let mut s = status.lock();
            spool.ack(seq, &digest)?;
            s.logs_shipped += 1;
            s.last_error = None;
        }
        *progressed = true;
        ctx.report.recovered();
    }
    Ok(())
}

/// Waits (polling `resume`, at most the timeout) until the server applied
/// the group cut holding log `seq` of this disk, then acknowledges it by
/// its digest.
fn wait_for_group(
    ctx: &Context,
    c: &mut Client,
    disk: &str,
    seq: u64,
    digest: Digest,
) -> Result<()> {
    let until = std::time::Instant::now() + ctx.config.timeout;
    while std::time::Instant::now() < until {
        let resume = get_json(c, &format!("/v1/disks/{disk}/resume"))?;
        let applied = resume["applied"]["sequence"].as_u64().unwrap_or(0);
        if applied >= seq {
            let mut s = ctx.status.lock();
            ctx.spool.reconcile(seq, &digest)?;
            s.logs_shipped += 1;
            s.last_error = None;
            return Ok(());
        }
        if !pause(Duration::from_millis(100), &ctx.stop) {
            return Ok(());
        }
    }
    Err(Error::new(
        ErrorKind::Io,
        format!("log {seq} is held by the server until the other members of its group arrive"),
    ))
}

/// The block digests of the latest point the server holds of `disk`, for
/// a digest resync after tracking was lost ([`Pipeline::resync`]; the
/// resync log then ships like any other). Over one connection of its own,
/// with the shipper's configuration.
///
/// [`Pipeline::resync`]: crate::source::Pipeline::resync
pub fn remote_digests(config: &ShipperConfig, disk: crate::DiskId) -> Result<BlockDigests> {
    let mut c = Client::connect(
        config.server,
        &config.server_name,
        client_config(&config.tls)?,
        config.timeout,
    )?;
    let r = c.request(
        "GET",
        &format!("/v1/disks/{}/digests", hex(&disk.0)),
        &[],
        &mut std::io::empty(),
        0,
    )?;
    if r.head.status != 200 {
        return Err(refusal(&r));
    }
    BlockDigests::decode(&r.body)
}

/// How far the log being uploaded was sent: to count the bytes sent again
/// when an upload resumes below it.
#[derive(Debug, Default)]
struct Sent {
    log: Option<(u64, Digest)>,
    upto: u64,
}

impl Sent {
    /// An upload of log `seq` starting at byte `from`: the bytes between
    /// `from` and what was sent of it before are sent again.
    fn resuming(&mut self, seq: u64, digest: Digest, from: u64) -> u64 {
        if self.log != Some((seq, digest)) {
            *self = Sent {
                log: Some((seq, digest)),
                upto: from,
            };
        }
        self.upto.saturating_sub(from)
    }
}

/// A GET answered 200 with JSON; a refusal as an error.
fn get_json(c: &mut Client, path: &str) -> Result<serde_json::Value> {
    let r = c.request("GET", path, &[], &mut std::io::empty(), 0)?;
    if r.head.status != 200 {
        return Err(refusal(&r));
    }
    r.json()
}

/// The server's refusal as an error: its message, or the status.
pub(crate) fn refusal(r: &super::client::Response) -> Error {
    let msg = r
        .json()
        .ok()
        .and_then(|j| j["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| format!("HTTP {}", r.head.status));
    Error::new(
        ErrorKind::Io,
        format!("the server refused ({}): {msg}", r.head.status),
    )
}

fn digest_of(v: &serde_json::Value) -> Result<Digest> {
    v.as_str()
        .and_then(unhex)
        .map(Digest)
        .ok_or_else(|| Error::invalid(format!("not a digest: {v}")))
}

/// A spooled log read from `at` to `end`, as a request body, at the pace
/// of the bandwidth limit.
struct StorageReader<'a> {
    s: &'a dyn Storage,
    at: u64,
    end: u64,
    ctx: &'a Context,
}

impl Read for StorageReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // Small reads under a limit, so a change of it (or a stop) takes
        // effect within a fraction of a second.
        let pace = self.ctx.pace();
        let most = match pace {
            Some(t) => (t.bytes_per_sec() / 10).max(4 << 10).min(buf.len() as u64),
            None => buf.len() as u64,
        };
        let n = usize::try_from((self.end - self.at).min(most)).unwrap_or(buf.len());
        if n == 0 {
            return Ok(0);
        }
        if self.ctx.stopped() {
            return Err(std::io::Error::other("the shipper is stopping"));
        }
        if let Some(t) = pace {
            t.consume(n as u64);
        }
        self.s
            .read_at(&mut buf[..n], self.at)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        self.at += n as u64;
        Ok(n)
    }
}
