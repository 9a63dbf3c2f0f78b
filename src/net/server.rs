//! The replica server (docs/PROTOCOL.md): many disks of many primaries,
//! each primary identified by its certificate and confined to its own
//! storage root; logs streamed to disk as they arrive, verified whole,
//! then applied with the replica's crash-safe apply; an upload cut
//! anywhere resumes from the bytes the server holds.
//!
//! One thread per connection, blocking I/O: no async runtime, and every
//! wait bounded by a timeout. A disk takes one upload at a time.

use super::http::{read_head_by, write_response, Head, Read1};
use super::identity::{AllowList, Identity};
use super::tls::{handshake_refusal, server_config, TlsFiles};
use crate::error::{Detail, Error, ErrorKind, Result};
use crate::id::DiskId;
use crate::io::FsDir;
use crate::log::Digest;
use crate::replica::{ApplyOutcome, Replica};
use crate::serde_impls::{hex, unhex};
use crate::status::DiskStatus;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// One authorised primary: its allow-list entry and where its disks live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrimaryConfig {
    /// The allow-list entry (`dr1.example`, `*.site-a.example`).
    pub identity: String,
    /// The directory holding its disks, one directory per disk.
    pub root: PathBuf,
}

/// The limits against a client that misbehaves (docs/PROTOCOL.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// The longest request head.
    pub head_bytes: usize,
    /// The longest log.
    pub max_log: u64,
    /// A read (handshake, head, body) stalled this long ends the connection.
    pub read_timeout: Duration,
    /// A connection idle between requests this long is closed.
    pub idle_timeout: Duration,
    /// Connections open at once, in all.
    pub connections: usize,
    /// Connections open at once per identity.
    pub per_identity: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            head_bytes: 16 << 10,
            max_log: 1 << 40,
            read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            connections: 2048,
            per_identity: 32,
        }
    }
}

/// What a server runs with.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where it listens.
    pub listen: SocketAddr,
    /// Its certificate and key, and the CA of the primaries' certificates.
    pub tls: TlsFiles,
    /// The authorised primaries.
    pub primaries: Vec<PrimaryConfig>,
    /// The limits.
    pub limits: Limits,
    /// Identities (allow-list entries) that may read `/metrics`; they hold
    /// no disks.
    pub monitors: Vec<String>,
}

/// One disk held for a primary.
struct Disk {
    dir: PathBuf,
    /// The replica once it exists; held for the whole of an upload, so a
    /// disk takes one at a time.
    replica: Mutex<Option<Replica>>,
}

struct Shared {
    tls: Arc<rustls::ServerConfig>,
    allow: AllowList,
    roots: HashMap<String, PathBuf>,
    limits: Limits,
    disks: Mutex<HashMap<(String, DiskId), Arc<Disk>>>,
    connections: AtomicUsize,
    per_identity: Mutex<HashMap<String, usize>>,
    /// The open connections' sockets, shut down when the server stops so
    /// no connection outlives it (an upload cut there resumes later).
    open: Mutex<HashMap<u64, TcpStream>>,
    next_connection: std::sync::atomic::AtomicU64,
    monitors: Vec<String>,
    metrics: Metrics,
}

/// The counters `/metrics` reports (Prometheus text format).
#[derive(Default)]
struct Metrics {
    bytes_received: std::sync::atomic::AtomicU64,
    logs_applied: std::sync::atomic::AtomicU64,
    apply_nanos: std::sync::atomic::AtomicU64,
    /// Refusals by reason (handshake reasons, limits, HTTP statuses).
    refusals: Mutex<std::collections::BTreeMap<String, u64>>,
}

impl Metrics {
    fn refused(&self, reason: &str) {
        *self.refusals.lock().entry(reason.to_string()).or_insert(0) += 1;
    }
}

/// A replica server bound to its address.
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("listen", &self.listener.local_addr().ok())
            .finish()
    }
}

impl Server {
    /// Loads the certificates, checks the configuration and binds.
    pub fn bind(config: &ServerConfig) -> Result<Server> {
        let entries: Vec<&str> = config
            .primaries
            .iter()
            .map(|p| p.identity.as_str())
            .chain(config.monitors.iter().map(String::as_str))
            .collect();
        let allow = AllowList::new(&entries)?;
        let mut roots = HashMap::new();
        for p in &config.primaries {
            std::fs::create_dir_all(&p.root)
                .map_err(|e| Error::io("create a primary's root", e).with_path(&p.root))?;
            if roots.insert(p.identity.clone(), p.root.clone()).is_some() {
                return Err(Error::invalid(format!(
                    "primary {} is listed twice",
                    p.identity
                )));
            }
        }
        let listener = TcpListener::bind(config.listen)
            .map_err(|e| Error::io(format!("listen on {}", config.listen), e))?;
        Ok(Server {
            listener,
            shared: Arc::new(Shared {
                tls: server_config(&config.tls)?,
                allow,
                roots,
                limits: config.limits.clone(),
                disks: Mutex::new(HashMap::new()),
                connections: AtomicUsize::new(0),
                per_identity: Mutex::new(HashMap::new()),
                open: Mutex::new(HashMap::new()),
                next_connection: std::sync::atomic::AtomicU64::new(0),
                monitors: config.monitors.clone(),
                metrics: Metrics::default(),
            }),
        })
    }

    /// The address it listens on (the port, when 0 was asked).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener
            .local_addr()
            .map_err(|e| Error::io("local address", e))
    }

    /// Serves until `stop` is set (checked every 50 ms): a thread per
    /// connection. When it returns, every connection is shut down.
    pub fn run(&self, stop: &AtomicBool) -> Result<()> {
        self.listener
            .set_nonblocking(true)
            .map_err(|e| Error::io("listen", e))?;
        while !stop.load(Ordering::Relaxed) {
            match self.listener.accept() {
                Ok((tcp, peer)) => {
                    let shared = self.shared.clone();
                    if shared.connections.fetch_add(1, Ordering::SeqCst)
                        >= shared.limits.connections
                    {
                        shared.connections.fetch_sub(1, Ordering::SeqCst);
                        log(&format!("refused {peer}: too many connections"));
                        shared.metrics.refused("too many connections");
                        continue;
                    }
                    let n = shared.next_connection.fetch_add(1, Ordering::SeqCst);
                    if let Ok(clone) = tcp.try_clone() {
                        shared.open.lock().insert(n, clone);
                    }
                    std::thread::spawn(move || {
                        if let Err(e) = connection(&shared, tcp, peer) {
                            log(&format!("{peer}: {e}"));
                        }
                        shared.open.lock().remove(&n);
                        shared.connections.fetch_sub(1, Ordering::SeqCst);
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => log(&format!("accept: {e}")),
            }
        }
        // Stopping: every connection ends. An apply under way finishes
        // (it is not interrupted); its answer may not reach the client,
        // which learns the outcome from `resume` when it reconnects.
        for (_, tcp) in self.shared.open.lock().drain() {
            let _ = tcp.shutdown(std::net::Shutdown::Both);
        }
        Ok(())
    }
}

/// The server's log: one line on standard error.
fn log(line: &str) {
    eprintln!("blockrep serve: {line}");
}

/// A socket whose reads fail once `until` passed: a handshake trickled in
/// a byte at a time never outlasts it.
struct Deadline<'a> {
    tcp: &'a mut TcpStream,
    until: std::time::Instant,
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if std::time::Instant::now() > self.until {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "too slow",
            ));
        }
        self.tcp.read(buf)
    }
}

impl Write for Deadline<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tcp.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.tcp.flush()
    }
}

/// Counts a connection against its identity's limit while alive.
struct Slot<'a> {
    shared: &'a Shared,
    identity: String,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if let Some(n) = self.shared.per_identity.lock().get_mut(&self.identity) {
            *n -= 1;
        }
    }
}

type Tls = rustls::StreamOwned<rustls::ServerConnection, TcpStream>;

fn connection(shared: &Shared, tcp: TcpStream, peer: SocketAddr) -> Result<()> {
    let io = |e| Error::io("connection", e);
    tcp.set_nonblocking(false).map_err(io)?;
    tcp.set_read_timeout(Some(shared.limits.read_timeout))
        .map_err(io)?;
    tcp.set_write_timeout(Some(shared.limits.read_timeout))
        .map_err(io)?;
    let mut conn = rustls::ServerConnection::new(shared.tls.clone())
        .map_err(|e| Error::invalid(format!("TLS: {e}")))?;
    let mut tcp = tcp;
    // The whole handshake within the read timeout, however slowly its
    // bytes trickle in.
    let mut timed = Deadline {
        tcp: &mut tcp,
        until: std::time::Instant::now() + shared.limits.read_timeout,
    };
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(&mut timed) {
            let why = match e.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                    "handshake timed out".to_string()
                }
                _ => e
                    .get_ref()
                    .and_then(|i| i.downcast_ref::<rustls::Error>())
                    .map_or_else(|| format!("handshake: {e}"), handshake_refusal),
            };
            let _ = conn.write_tls(&mut tcp);
            log(&format!("refused {peer}: {why}"));
            shared.metrics.refused(&why);
            return Ok(());
        }
    }
    let cert = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.clone().into_owned());
    let mut s = rustls::StreamOwned::new(conn, tcp);
    let identity = match cert.map(|c| shared.allow.identify(&c)) {
        Some(Ok(id)) => id,
        Some(Err(e)) => {
            log(&format!("refused {peer}: {}", e.message()));
            shared.metrics.refused("not in the allowed list");
            let _ = error_response(&mut s, 403, &e);
            linger(&mut s);
            return Ok(());
        }
        None => return Ok(()),
    };
    {
        let mut per = shared.per_identity.lock();
        let n = per.entry(identity.as_str().to_string()).or_insert(0);
        if *n >= shared.limits.per_identity {
            drop(per);
            shared
                .metrics
                .refused("too many connections of one identity");
            let e = Error::new(
                ErrorKind::Misuse,
                format!("{identity} has too many connections open"),
            );
            let _ = error_response_with(&mut s, 503, &e, &[("Retry-After", "5".into())]);
            linger(&mut s);
            return Ok(());
        }
        *n += 1;
    }
    let _slot = Slot {
        shared,
        identity: identity.as_str().to_string(),
    };
    loop {
        s.sock
            .set_read_timeout(Some(shared.limits.idle_timeout))
            .map_err(io)?;
        let head = match read_head_by(
            &mut s,
            shared.limits.head_bytes,
            true,
            Some(shared.limits.read_timeout),
        ) {
            Ok(Read1::Closed) => return Ok(()),
            Ok(Read1::Head(h, rest)) => (h, rest),
            Err(e) => {
                let status = if e.kind() == ErrorKind::OutOfRange {
                    431
                } else {
                    400
                };
                let _ = error_response(&mut s, status, &e);
                return Ok(());
            }
        };
        s.sock
            .set_read_timeout(Some(shared.limits.read_timeout))
            .map_err(io)?;
        let keep = route(shared, &identity, &mut s, head.0, head.1)?;
        if !keep {
            return Ok(());
        }
    }
}

/// Ends a connection whose request body was not read (a refusal before
/// the body): closes the sending side after the answer, then reads and
/// drops what the client still sends, for at most 2 s and 64 MiB, so its
/// kernel does not answer the unread bytes with a reset that would discard
/// the answer before the client reads it (HTTP's "lingering close").
fn linger(s: &mut Tls) {
    s.conn.send_close_notify();
    let _ = s.conn.complete_io(&mut s.sock);
    let _ = s.sock.shutdown(std::net::Shutdown::Write);
    let _ = s.sock.set_read_timeout(Some(Duration::from_secs(2)));
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let mut left: u64 = 64 << 20;
    let mut buf = vec![0u8; 64 << 10];
    while left > 0 && std::time::Instant::now() < deadline {
        match s.sock.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n as u64),
        }
    }
}

/// The HTTP status for an error from the library.
fn status_of(e: &Error) -> u16 {
    match (e.kind(), e.detail()) {
        (_, Some(Detail::SequenceGap { .. })) => 412,
        (_, Some(_)) | (ErrorKind::Misuse, _) => 409,
        (ErrorKind::NoSpace, _) => 507,
        (ErrorKind::Corrupt | ErrorKind::InvalidArgument | ErrorKind::Mismatch, _) => 400,
        (ErrorKind::OutOfRange, _) => 413,
        _ => 500,
    }
}

fn error_response(s: &mut Tls, status: u16, e: &Error) -> std::io::Result<()> {
    error_response_with(s, status, e, &[])
}

fn error_response_with(
    s: &mut Tls,
    status: u16,
    e: &Error,
    extra: &[(&str, String)],
) -> std::io::Result<()> {
    let body = serde_json::json!({"error": {
        "kind": e.kind(),
        "detail": e.detail(),
        "message": e.to_string(),
    }});
    write_response(
        s,
        status,
        "application/json",
        extra,
        body.to_string().as_bytes(),
    )
}

fn json_response(s: &mut Tls, body: &serde_json::Value) -> std::io::Result<()> {
    write_response(s, 200, "application/json", &[], body.to_string().as_bytes())
}

fn parse_disk(s: &str) -> Option<DiskId> {
    unhex(s).map(DiskId)
}

fn parse_digest(s: &str) -> Option<Digest> {
    unhex(s).map(Digest)
}

impl Shared {
    /// The disk `id` of `identity`, opened (its replica, if it exists)
    /// the first time.
    fn disk(&self, identity: &Identity, id: DiskId) -> Result<Arc<Disk>> {
        let key = (identity.as_str().to_string(), id);
        let mut disks = self.disks.lock();
        if let Some(d) = disks.get(&key) {
            return Ok(d.clone());
        }
        let root = self
            .roots
            .get(identity.as_str())
            .ok_or_else(|| Error::invalid(format!("{identity} has no storage root")))?;
        let dir = root.join(hex(&id.0));
        let replica_dir = dir.join("replica");
        let replica = if replica_dir.join("state").exists() {
            Some(Replica::open(Arc::new(FsDir::new(&replica_dir)?))?)
        } else {
            None
        };
        let d = Arc::new(Disk {
            dir,
            replica: Mutex::new(replica),
        });
        disks.insert(key, d.clone());
        Ok(d)
    }

    /// The disks `identity` holds.
    fn disk_ids(&self, identity: &Identity) -> Vec<DiskId> {
        let Some(root) = self.roots.get(identity.as_str()) else {
            return Vec::new();
        };
        let mut ids: Vec<DiskId> = std::fs::read_dir(root)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| parse_disk(e.file_name().to_str()?))
            .filter(|id| root.join(hex(&id.0)).join("replica/state").exists())
            .collect();
        ids.sort();
        ids
    }
}

/// The partial upload of a disk, if any: its sequence, digest, path and
/// bytes held.
fn partial(dir: &Path) -> Option<(u64, Digest, PathBuf, u64)> {
    let uploads = dir.join("uploads");
    std::fs::read_dir(&uploads).ok()?.flatten().find_map(|e| {
        let name = e.file_name().into_string().ok()?;
        let stem = name.strip_suffix(".partial")?;
        let (seq, digest) = stem.split_once('-')?;
        let len = e.metadata().ok()?.len();
        Some((seq.parse().ok()?, parse_digest(digest)?, e.path(), len))
    })
}

/// Answers one request; false when the connection must close.
fn route(
    shared: &Shared,
    identity: &Identity,
    s: &mut Tls,
    head: Head,
    rest: Vec<u8>,
) -> Result<bool> {
    let path = head.path.clone();
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let reply = |s: &mut Tls, r: Result<serde_json::Value>| -> Result<bool> {
        let sent = match r {
            Ok(v) => json_response(s, &v),
            Err(e) => error_response(s, status_of(&e), &e),
        };
        sent.map_err(|e| Error::io("respond", e))?;
        Ok(true)
    };
    let not_found = || {
        Error::new(
            ErrorKind::Misuse,
            format!("no such disk or resource: {path}"),
        )
    };
    match (head.method.as_str(), parts.as_slice()) {
        ("PUT", ["", "v1", "disks", disk, "logs", seq]) => {
            let (Some(id), Ok(seq)) = (parse_disk(disk), seq.parse::<u64>()) else {
                let e = Error::invalid(format!("{path}: a disk id (32 hex) and a sequence"));
                let _ = error_response(s, 400, &e);
                linger(s);
                return Ok(false);
            };
            push(shared, identity, s, &head, rest, id, seq)
        }
        ("GET", ["", "metrics"]) if shared.monitors.iter().any(|m| m == identity.as_str()) => {
            let text = metrics_text(shared);
            write_response(s, 200, "text/plain; version=0.0.4", &[], text.as_bytes())
                .map_err(|e| Error::io("respond", e))?;
            Ok(true)
        }
        ("GET", ["", "v1", "disks"]) => {
            let list: Vec<serde_json::Value> = shared
                .disk_ids(identity)
                .into_iter()
                .filter_map(|id| shared.disk(identity, id).ok())
                .filter_map(|d| {
                    d.replica
                        .lock()
                        .as_ref()
                        .map(|r| serde_json::json!(DiskStatus::of_replica(r, now_ns())))
                })
                .collect();
            reply(s, Ok(serde_json::Value::Array(list)))
        }
        ("GET", ["", "v1", "disks", disk, rest @ ..]) => {
            let Some(id) = parse_disk(disk) else {
                return reply(s, Err(not_found()));
            };
            let d = shared.disk(identity, id)?;
            let replica = d.replica.lock().clone();
            let r = match (replica, rest) {
                (None, ["resume"]) => Ok(resume_json(None, &d.dir)),
                (Some(r), []) => Ok(serde_json::json!(DiskStatus::of_replica(&r, now_ns()))),
                (Some(r), ["points"]) => Ok(serde_json::json!(r.points())),
                (Some(r), ["resume"]) => Ok(resume_json(Some(&r), &d.dir)),
                (Some(r), ["digests"]) => {
                    // The latest point's block digests, for a resync.
                    let sent = match r.block_digests(0) {
                        Ok(list) => {
                            write_response(s, 200, "application/octet-stream", &[], &list.encode())
                        }
                        Err(e) => error_response(s, status_of(&e), &e),
                    };
                    sent.map_err(|e| Error::io("respond", e))?;
                    return Ok(true);
                }
                _ => {
                    let e = not_found();
                    let _ = error_response(s, 404, &e);
                    return Ok(true);
                }
            };
            reply(s, r)
        }
        _ => {
            let e = Error::invalid(format!("{} {path}: not part of /v1", head.method));
            let _ = error_response(s, 404, &e);
            Ok(head.content_length().unwrap_or(1) == 0)
        }
    }
}

/// The Prometheus text of the server's counters, and each disk's RPO.
fn metrics_text(shared: &Shared) -> String {
    use std::fmt::Write;
    let m = &shared.metrics;
    let mut t = String::new();
    let mut metric = |name: &str, help: &str, kind: &str, lines: Vec<(String, String)>| {
        let _ = writeln!(
            t,
            "# HELP blockrep_{name} {help}\n# TYPE blockrep_{name} {kind}"
        );
        for (labels, v) in lines {
            let _ = writeln!(t, "blockrep_{name}{labels} {v}");
        }
    };
    let one = |v: String| vec![(String::new(), v)];
    metric(
        "bytes_received_total",
        "Log bytes received.",
        "counter",
        one(m.bytes_received.load(Ordering::Relaxed).to_string()),
    );
    metric(
        "logs_applied_total",
        "Logs applied.",
        "counter",
        one(m.logs_applied.load(Ordering::Relaxed).to_string()),
    );
    metric(
        "apply_seconds_total",
        "Time spent verifying and applying logs.",
        "counter",
        one(format!(
            "{:.6}",
            m.apply_nanos.load(Ordering::Relaxed) as f64 / 1e9
        )),
    );
    metric(
        "connections",
        "Connections open.",
        "gauge",
        one(shared.connections.load(Ordering::Relaxed).to_string()),
    );
    let refusals = m
        .refusals
        .lock()
        .iter()
        .map(|(r, n)| {
            (
                format!("{{reason=\"{}\"}}", r.replace('"', "'")),
                n.to_string(),
            )
        })
        .collect();
    metric("refusals_total", "Refusals by reason.", "counter", refusals);
    let now = now_ns();
    let rpo = shared
        .disks
        .lock()
        .iter()
        .filter_map(|((who, id), d)| {
            let r = d.replica.try_lock()?.clone()?;
            let st = DiskStatus::of_replica(&r, now);
            let secs = st.rpo_ns? as f64 / 1e9;
            Some((
                format!("{{primary=\"{who}\",disk=\"{}\"}}", hex(&id.0)),
                format!("{secs:.3}"),
            ))
        })
        .collect();
    metric(
        "rpo_seconds",
        "Age of each disk's latest point.",
        "gauge",
        rpo,
    );
    t
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn resume_json(r: Option<&Replica>, dir: &Path) -> serde_json::Value {
    let applied = r.map(|r| {
        let st = r.status();
        serde_json::json!({"sequence": st.applied, "digest": st.digest, "epoch": st.epoch})
    });
    let partial = partial(dir).map(|(seq, digest, _, bytes)| {
        serde_json::json!({"sequence": seq, "digest": digest, "bytes": bytes})
    });
    serde_json::json!({"applied": applied, "partial": partial})
}

/// `PUT /v1/disks/{disk}/logs/{sequence}`: streams the body into the
/// disk's partial file (appending at the offset `Content-Range` names,
/// which must be the bytes held), then verifies and applies the log whole.
fn push(
    shared: &Shared,
    identity: &Identity,
    s: &mut Tls,
    head: &Head,
    rest: Vec<u8>,
    id: DiskId,
    seq: u64,
) -> Result<bool> {
    let fail = |s: &mut Tls, status: u16, e: Error| -> Result<bool> {
        let _ = error_response(s, status, &e);
        linger(s);
        Ok(false)
    };
    let Some(digest) = head.header("blockrep-digest").and_then(parse_digest) else {
        return fail(
            s,
            400,
            Error::invalid("Blockrep-Digest: the log's digest in hex is required"),
        );
    };
    let body_len = match head.content_length() {
        Ok(n) => n,
        Err(e) => return fail(s, 400, e),
    };
    let (start, total) = match head.header("content-range") {
        None => (0, body_len),
        Some(r) => match parse_range(r) {
            Some((a, b, t)) if b + 1 - a == body_len && b < t => (a, t),
            _ => {
                return fail(
                    s,
                    400,
                    Error::invalid(format!("Content-Range {r:?} does not match the body")),
                )
            }
        },
    };
    if total > shared.limits.max_log {
        return fail(
            s,
            413,
            Error::new(
                ErrorKind::OutOfRange,
                format!("a log of {total} bytes; at most {}", shared.limits.max_log),
            ),
        );
    }
    let disk = shared.disk(identity, id)?;
    let Some(mut replica) = disk.replica.try_lock() else {
        let e = Error::new(ErrorKind::Misuse, "an upload of this disk is under way");
        let _ = error_response_with(s, 503, &e, &[("Retry-After", "1".into())]);
        linger(s);
        return Ok(false);
    };
    let uploads = disk.dir.join("uploads");
    std::fs::create_dir_all(&uploads)
        .map_err(|e| Error::io("create the uploads directory", e).with_path(&uploads))?;
    // One partial per disk: another log's partial is superseded.
    let held = match partial(&disk.dir) {
        Some((p_seq, p_digest, path, bytes)) if p_seq == seq && p_digest == digest => {
            Some((path, bytes))
        }
        Some((_, _, path, _)) => {
            let _ = std::fs::remove_file(&path);
            None
        }
        None => None,
    };
    let path = held.as_ref().map_or_else(
        || uploads.join(format!("{seq:020}-{}.partial", hex(&digest.0))),
        |(p, _)| p.clone(),
    );
    let have = held.map_or(0, |(_, b)| b);
    if start != have {
        let e = Error::new(
            ErrorKind::OutOfRange,
            format!("the upload resumes at byte {have}, not {start}"),
        );
        // The disk is free for the resume before this connection lingers.
        drop(replica);
        let _ = error_response_with(s, 416, &e, &[("Content-Range", format!("bytes */{have}"))]);
        linger(s);
        return Ok(false);
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| Error::io("open the partial upload", e).with_path(&path))?;
    // The body: what came with the head, then the stream, to the file as
    // it arrives.
    let mut left = body_len;
    let first = rest.len().min(usize::try_from(left).unwrap_or(usize::MAX));
    let mut received = file
        .write_all(&rest[..first])
        .map_err(|e| Error::io("write the upload", e));
    left -= first as u64;
    let mut buf = vec![0u8; 256 << 10];
    while received.is_ok() && left > 0 {
        let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        received = match s.read(&mut buf[..want]) {
            Ok(0) => Err(Error::invalid("the connection closed inside the body")),
            Ok(n) => {
                left -= n as u64;
                shared
                    .metrics
                    .bytes_received
                    .fetch_add(n as u64, Ordering::Relaxed);
                file.write_all(&buf[..n])
                    .map_err(|e| Error::io("write the upload", e).with_path(&path))
            }
            Err(e) => Err(Error::io("read the body", e)),
        };
    }
    // Whatever arrived is kept, durably, for a resume.
    let synced = file.sync_all();
    received?;
    synced.map_err(|e| Error::io("sync the upload", e).with_path(&path))?;
    if have + body_len < total {
        // A part of the log: more will come.
        json_response(
            s,
            &serde_json::json!({"sequence": seq, "bytes": have + body_len}),
        )
        .map_err(|e| Error::io("respond", e))?;
        return Ok(true);
    }
    let apply_started = std::time::Instant::now();
    let applied = match replica.as_ref() {
        Some(r) => r.apply_file(&path),
        None => {
            let dir = Arc::new(FsDir::new(disk.dir.join("replica"))?);
            Replica::create_from_file(dir, &path).map(|r| {
                let o = ApplyOutcome::Applied {
                    sequence: r.status().applied,
                    digest: r.status().digest,
                };
                *replica = Some(r);
                o
            })
        }
    };
    let _ = std::fs::remove_file(&path);
    let m = &shared.metrics;
    m.apply_nanos.fetch_add(
        u64::try_from(apply_started.elapsed().as_nanos()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
    match &applied {
        Ok(o) if o.applied_now() => {
            m.logs_applied.fetch_add(1, Ordering::Relaxed);
        }
        Ok(_) => {}
        Err(e) => m.refused(&format!("http {}", status_of(e))),
    }
    let response = match applied {
        Ok(o) => json_response(
            s,
            &serde_json::json!({
                "sequence": o.sequence(),
                "digest": o.digest(),
                "outcome": if o.applied_now() { "applied" } else { "already_applied" },
            }),
        ),
        Err(e) => error_response(s, status_of(&e), &e),
    };
    response.map_err(|e| Error::io("respond", e))?;
    Ok(true)
}

/// `bytes A-B/T`.
fn parse_range(v: &str) -> Option<(u64, u64, u64)> {
    let r = v.trim().strip_prefix("bytes ")?;
    let (span, total) = r.split_once('/')?;
    let (a, b) = span.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?, total.parse().ok()?))
}
