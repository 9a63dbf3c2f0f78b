//! The shipper to an object store: a spool pushed log by log from a thread
//! of its own. Each log is sealed as it streams from its spool file into
//! an upload (multipart above one part), then named in the manifest by a
//! conditional write; only then is it acknowledged to the spool. After
//! any failure it re-reads the manifest and goes on from what the store
//! holds (by sequence and digest), as the server shipper does.

use super::client::{update_of, ObjectClient, StoreConfig, Written};
use super::layout;
use super::manifest::{ChainEntry, Manifest, WriterId};
use crate::error::{Error, ErrorKind, Result};
use crate::hex::hex;
use crate::log::LogKind;
use crate::retry::{backoff, pause, spool_progress, Reporter, Worker};
use crate::seal::{Binding, Keyring, ObjectKind};
use crate::source::{Spool, SpooledLog};
use object_store::PutMode;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use crate::status::LogSink;

/// Where and how to ship to a store.
#[derive(Clone)]
pub struct StoreShipperConfig {
    /// The store.
    pub store: StoreConfig,
    /// The pair's keys: the current one seals.
    pub keys: Keyring,
    /// This primary's writer id (kept beside its spool).
    pub writer: WriterId,
    /// Take the disk over from another writer that holds it in the store
    /// (after a failover to this site, say); without it, a disk held by
    /// another writer is refused ([`ErrorKind::Fenced`]).
    pub take_over: bool,
    /// The size of an upload's parts (at least 5 MiB).
    pub part_bytes: usize,
    /// The first wait after a failure; doubled each time up to `retry_max`.
    pub retry_min: Duration,
    /// The longest wait between attempts.
    pub retry_max: Duration,
    /// Where its log lines go; none by default.
    pub log: Option<LogSink>,
}

impl std::fmt::Debug for StoreShipperConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreShipperConfig")
            .field("store", &self.store)
            .field("keys", &self.keys.ids())
            .field("writer", &self.writer.hex())
            .field("take_over", &self.take_over)
            .finish_non_exhaustive()
    }
}

impl StoreShipperConfig {
    /// A configuration with 16 MiB parts and backoff from 0.2 s to 30 s.
    pub fn new(store: StoreConfig, keys: Keyring, writer: WriterId) -> Self {
        StoreShipperConfig {
            store,
            keys,
            writer,
            take_over: false,
            part_bytes: 16 << 20,
            retry_min: Duration::from_millis(200),
            retry_max: Duration::from_secs(30),
            log: None,
        }
    }
}

/// What a console shows of a store shipper.
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreShipperStatus {
    /// The last failure, cleared by the next log shipped.
    pub last_error: Option<String>,
    /// Another writer holds the disk: the shipper stopped for good.
    pub fenced: bool,
    /// Logs the store took since the start.
    pub logs_shipped: u64,
    /// Sealed bytes uploaded since the start (every attempt counted).
    pub bytes_sent: u64,
    /// The manifest's generation last written or read.
    pub generation: u64,
    /// Logs in the spool not yet acknowledged.
    pub pending_logs: u64,
    /// Their bytes.
    pub pending_bytes: u64,
    /// The age of the latest point the store holds (ns), `None` before
    /// the first.
    pub rpo_ns: Option<u64>,
}

/// A running store shipper; stopped (and its thread joined) when dropped.
pub struct StoreShipper {
    status: Arc<Mutex<StoreShipperStatus>>,
    spool: Arc<Spool>,
    worker: Worker,
}

impl std::fmt::Debug for StoreShipper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreShipper")
            .field("status", &*self.status.lock())
            .finish()
    }
}

impl StoreShipper {
    /// Starts shipping `spool`. The store's address and options are
    /// checked now (an error returns at once); requests are made on the
    /// shipper's thread, retried until [`stop`](Self::stop), except when
    /// the disk is fenced.
    pub fn start(spool: Arc<Spool>, config: StoreShipperConfig) -> Result<StoreShipper> {
        if config.part_bytes < 5 << 20 {
            return Err(Error::invalid("an upload's parts are at least 5 MiB"));
        }
        let client = ObjectClient::open(&config.store)?;
        let stop = Arc::new(AtomicBool::new(false));
        let status = Arc::new(Mutex::new(StoreShipperStatus::default()));
        let ctx = Context {
            spool: spool.clone(),
            report: Reporter::new(config.log.clone()),
            config,
            client,
            stop: stop.clone(),
            status: status.clone(),
        };
        let worker = Worker::spawn("blockrep-store-shipper", stop, move || run(&ctx))?;
        Ok(StoreShipper {
            status,
            spool,
            worker,
        })
    }

    /// The status now.
    pub fn status(&self) -> StoreShipperStatus {
        let held = self.status.lock();
        let (pending_logs, pending_bytes, rpo_ns) = spool_progress(&self.spool);
        let mut s = held.clone();
        drop(held);
        (s.pending_logs, s.pending_bytes, s.rpo_ns) = (pending_logs, pending_bytes, rpo_ns);
        s
    }

    /// Stops after the request under way.
    pub fn stop(mut self) {
        self.worker.halt();
    }
}

struct Context {
    spool: Arc<Spool>,
    config: StoreShipperConfig,
    client: ObjectClient,
    stop: Arc<AtomicBool>,
    status: Arc<Mutex<StoreShipperStatus>>,
    report: Reporter,
}

impl Context {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn say(&self, line: &str) {
        self.report.say(line);
    }

    fn failed(&self, e: &Error) {
        let msg = self.report.failed(e);
        self.status.lock().last_error = Some(msg);
    }
}

fn run(ctx: &Context) {
    let mut wait = ctx.config.retry_min;
    while !ctx.stopped() {
        let mut progressed = false;
        match session(ctx, &mut progressed) {
            Ok(()) => return,
            Err(e) if e.kind() == ErrorKind::Fenced => {
                ctx.status.lock().fenced = true;
                ctx.failed(&e);
                return;
            }
            Err(e) => ctx.failed(&e),
        }
        if progressed {
            wait = ctx.config.retry_min;
        }
        if !pause(backoff(wait), &ctx.stop) {
            return;
        }
        wait = (wait * 2).min(ctx.config.retry_max);
    }
}

/// The manifest as last read or written, and its version.
struct Held {
    m: Option<Manifest>,
    etag: Option<String>,
}

/// Reads the manifest; refuses one held by another writer unless taking
/// over (then claims it).
fn claim(ctx: &Context) -> Result<Held> {
    let disk = ctx.spool.disk_id();
    let me = ctx.config.writer.hex();
    let Some((m, etag)) = super::hydrate::load(&ctx.client, &ctx.config.keys, disk)? else {
        return Ok(Held {
            m: None,
            etag: None,
        });
    };
    ctx.status.lock().generation = m.generation;
    if m.writer == me {
        return Ok(Held { m: Some(m), etag });
    }
    if !ctx.config.take_over {
        return Err(fenced(&m, &me));
    }
    let mut next = m.clone();
    next.writer.clone_from(&me);
    next.generation += 1;
    match write_manifest(ctx, &next, update_of(etag))? {
        Written::Done(etag) => {
            ctx.say(&format!(
                "took disk {} over from writer {} (manifest generation {})",
                hex(&disk.0),
                m.writer,
                next.generation
            ));
            Ok(Held {
                m: Some(next),
                etag,
            })
        }
        Written::Lost => Err(Error::new(
            ErrorKind::Fenced,
            "another writer changed the manifest while this one took the disk over",
        )),
    }
}

fn fenced(m: &Manifest, me: &str) -> Error {
    Error::new(
        ErrorKind::Fenced,
        format!(
            "disk {} is held in the store by writer {} (this one is {me}); \
             a failover to this site takes it over explicitly",
            m.disk_id, m.writer
        ),
    )
}

fn write_manifest(ctx: &Context, m: &Manifest, mode: PutMode) -> Result<Written> {
    let r = super::hydrate::store(&ctx.client, &ctx.config.keys, ctx.spool.disk_id(), m, mode)?;
    if let Written::Done(_) = r {
        ctx.status.lock().generation = m.generation;
    }
    Ok(r)
}

fn session(ctx: &Context, progressed: &mut bool) -> Result<()> {
    let spool = &*ctx.spool;
    let mut held = claim(ctx)?;
    spool.rewind();
    if let Some(head) = held.m.as_ref().and_then(Manifest::head) {
        // The store may hold logs the spool has not heard of as acked
        // (a manifest written just before a cut): acknowledge them.
        let (seq, digest) = (head.sequence, head.digest()?);
        if seq > spool.status().acked.sequence {
            spool.reconcile(seq, &digest)?;
        }
    }
    while !ctx.stopped() {
        let Some(l) = spool.next_to_ship() else {
            if !pause(Duration::from_millis(50), &ctx.stop) {
                break;
            }
            continue;
        };
        ship_one(ctx, &mut held, &l)?;
        *progressed = true;
        ctx.report.recovered();
    }
    Ok(())
}

/// Uploads one log and names it in the manifest; acknowledges it.
fn ship_one(ctx: &Context, held: &mut Held, l: &SpooledLog) -> Result<()> {
    let spool = &*ctx.spool;
    let disk = spool.disk_id();
    let p = &l.point;
    let is_base = l.kind == LogKind::Full;
    if let Some(head) = held.m.as_ref().and_then(Manifest::head) {
        if p.sequence <= head.sequence {
            // Named already (reconciled above).
            return Ok(());
        }
        if p.sequence != head.sequence + 1 && !is_base {
            return Err(Error::mismatch(format!(
                "the store's chain ends at {}, the spool's next log is {}",
                head.sequence, p.sequence
            ))
            .with_sequence(p.sequence));
        }
    } else if !is_base {
        return Err(Error::mismatch(format!(
            "the store holds nothing of disk {} and log {} is not a full log",
            hex(&disk.0),
            p.sequence
        ))
        .with_sequence(p.sequence));
    }
    let (object, kind) = if is_base {
        (
            layout::base(p.epoch, p.sequence, &p.digest),
            ObjectKind::Base,
        )
    } else {
        (layout::log(p.epoch, p.sequence, &p.digest), ObjectKind::Log)
    };
    let binding = Binding::point(kind, disk, p.epoch, p.sequence, p.digest);
    let file = spool.open_log(p.sequence)?;
    let bytes = ctx.client.seal_upload(
        &format!("{}/{object}", layout::disk_dir(disk)),
        &*file,
        l.bytes,
        ctx.config.keys.current(),
        &binding,
        ctx.config.part_bytes,
    )?;
    ctx.status.lock().bytes_sent += bytes;
    let entry = ChainEntry {
        epoch: p.epoch,
        sequence: p.sequence,
        digest: hex(&p.digest.0),
        object,
        bytes,
        key_id: ctx.config.keys.current().id().to_string(),
        created_ns: p.created_ns,
        log_digest: None,
    };
    loop {
        let (next, mode) = match &held.m {
            None => (
                Manifest::new(disk, &ctx.config.writer, p.geometry, entry.clone()),
                PutMode::Create,
            ),
            Some(m) => {
                let mut n = m.clone();
                n.generation += 1;
                n.size = p.geometry.size();
                if is_base {
                    n.bases.push(entry.clone());
                } else {
                    n.logs.push(entry.clone());
                }
                (n, update_of(held.etag.clone()))
            }
        };
        match write_manifest(ctx, &next, mode)? {
            Written::Done(etag) => {
                *held = Held {
                    m: Some(next),
                    etag,
                };
                break;
            }
            Written::Lost => {
                // Someone wrote the manifest since it was read: another
                // writer (fenced), or this one's own earlier write whose
                // answer was lost (then the log may be named already).
                *held = claim(ctx)?;
                match held.m.as_ref().and_then(Manifest::head) {
                    Some(h) if h.sequence >= p.sequence => {
                        let named = held.m.as_ref().is_some_and(|m| {
                            m.bases
                                .iter()
                                .chain(&m.logs)
                                .any(|e| e.sequence == p.sequence && e.digest == entry.digest)
                        });
                        if !named {
                            return Err(Error::mismatch(format!(
                                "the store holds another log {} than the spool's",
                                p.sequence
                            ))
                            .with_sequence(p.sequence));
                        }
                        break;
                    }
                    _ => {}
                }
            }
        }
    }
    let mut s = ctx.status.lock();
    spool.ack(p.sequence, &p.digest)?;
    s.logs_shipped += 1;
    s.last_error = None;
    Ok(())
}
