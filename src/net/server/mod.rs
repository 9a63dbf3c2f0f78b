//! The replica server (docs/PROTOCOL.md): many disks of many primaries,
//! each primary identified by its certificate and confined to its own
//! storage root; logs streamed to disk as they arrive, verified whole,
//! then applied with the replica's crash-safe apply; an upload cut
//! anywhere resumes from the bytes the server holds.
//!
//! One thread per connection, blocking I/O: no async runtime, and every
//! wait bounded by a timeout. A disk takes one upload at a time.

mod claim;
mod connection;
mod group;
mod health;
mod metrics;
mod push;
mod routes;
mod space;
#[cfg(feature = "s3")]
mod vault;

use super::identity::{AllowList, Identity};
use super::tls::{server_config, TlsFiles};
use crate::error::{Error, Result};
use crate::hex::{hex, unhex};
use crate::id::DiskId;
use crate::io::FsDir;
use crate::log::Digest;
use crate::replica::{Replica, RetentionPolicy};
use connection::connection;
pub use health::{Health, HealthPolicy};
use metrics::Metrics;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// One authorised primary: its allow-list entry and where its disks live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrimaryConfig {
    /// The allow-list entry (`dr1.example`, `*.site-a.example`).
    pub identity: String,
    /// The directory holding its disks, one directory per disk.
    pub root: PathBuf,
    /// Which points its replicas keep: pruned after every apply.
    pub retention: RetentionPolicy,
    /// The largest disk (bytes) its logs may declare: a log of a larger
    /// disk is refused before anything is created.
    pub max_disk: u64,
}

/// The largest disk a primary may replicate unless its configuration
/// says otherwise: 16 TiB, above the VM disks of common hypervisors' usual
/// use and far below what would exhaust a server.
pub const DEFAULT_MAX_DISK: u64 = 16 << 40;

impl PrimaryConfig {
    /// A primary matching allow-list entry `identity` whose disks live
    /// under `root`, with the default retention and disk size limit.
    pub fn new(identity: impl Into<String>, root: impl Into<PathBuf>) -> Self {
        PrimaryConfig {
            identity: identity.into(),
            root: root.into(),
            retention: RetentionPolicy::default(),
            max_disk: DEFAULT_MAX_DISK,
        }
    }
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
    /// The share of the file system (percent) a push may not eat into:
    /// below it, pushes are refused with 507 and a `Retry-After`.
    pub reserve_percent: u8,
    /// A partial upload untouched this long is removed (its space
    /// reclaimed); a resume then starts that log again.
    pub abandoned_upload: Duration,
    /// A body arriving slower than this (bytes per second, averaged over
    /// each read timeout) is cut: what arrived is kept for a resume, and
    /// the disk is free for another upload.
    pub min_body_rate: u64,
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
            reserve_percent: 5,
            abandoned_upload: Duration::from_secs(24 * 3600),
            min_body_rate: 1024,
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
    /// When a disk's health degrades.
    pub health: HealthPolicy,
}

/// One disk held for a primary.
struct Disk {
    dir: PathBuf,
    /// When a byte of this disk last arrived (or the server started).
    last_received: Mutex<std::time::Instant>,
    /// Held for the whole of an upload, so a disk takes one at a time.
    upload: Mutex<()>,
    /// The replica once it exists (a handle: locked only to clone it, so
    /// statuses are read while an upload runs).
    replica: Mutex<Option<Replica>>,
}

/// What a configuration makes of the server: replaced whole by a reload;
/// a connection takes its TLS, identity and limits at its start, a push
/// its limits at its start, so neither changes under them.
struct Conf {
    listen: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    allow: AllowList,
    roots: HashMap<String, PathBuf>,
    retention: HashMap<String, RetentionPolicy>,
    max_disk: HashMap<String, u64>,
    limits: Limits,
    monitors: Vec<String>,
    health: HealthPolicy,
}

impl Conf {
    /// The largest disk `identity`'s logs may declare (none for an
    /// identity that holds no disks).
    fn max_disk(&self, identity: &Identity) -> u64 {
        self.max_disk.get(identity.as_str()).copied().unwrap_or(0)
    }

    /// Loads the certificates and checks the configuration.
    fn load(config: &ServerConfig) -> Result<Conf> {
        let entries: Vec<&str> = config
            .primaries
            .iter()
            .map(|p| p.identity.as_str())
            .chain(config.monitors.iter().map(String::as_str))
            .collect();
        let allow = AllowList::new(&entries)?;
        let mut roots = HashMap::new();
        let mut retention = HashMap::new();
        let mut max_disk = HashMap::new();
        for p in &config.primaries {
            retention.insert(p.identity.clone(), p.retention);
            max_disk.insert(p.identity.clone(), p.max_disk);
            crate::io::create_private_dir(&p.root)?;
            if roots.insert(p.identity.clone(), p.root.clone()).is_some() {
                return Err(Error::invalid(format!(
                    "primary {} is listed twice",
                    p.identity
                )));
            }
        }
        Ok(Conf {
            listen: config.listen,
            tls: server_config(&config.tls)?,
            allow,
            roots,
            retention,
            max_disk,
            limits: config.limits.clone(),
            monitors: config.monitors.clone(),
            health: config.health,
        })
    }
}

struct Shared {
    conf: parking_lot::RwLock<Arc<Conf>>,
    disks: Mutex<HashMap<(String, DiskId), Arc<Disk>>>,
    connections: AtomicUsize,
    per_identity: Mutex<HashMap<String, usize>>,
    /// The open connections' sockets, shut down when the server stops so
    /// no connection outlives it (an upload cut there resumes later).
    open: Mutex<HashMap<u64, TcpStream>>,
    next_connection: AtomicU64,
    metrics: Metrics,
    started: std::time::Instant,
}

/// A replica server bound to its address.
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
    /// The primaries' roots, each locked for the server's life (a lock
    /// file holding its pid), so a second server on the same storage is
    /// refused at start, naming this one, instead of serving beside it.
    roots: Mutex<HashMap<PathBuf, crate::io::DirLock>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("listen", &self.listener.local_addr().ok())
            .finish()
    }
}

/// Locks the roots of `conf` that `held` does not hold already.
fn lock_roots(
    conf: &Conf,
    held: &HashMap<PathBuf, crate::io::DirLock>,
) -> Result<HashMap<PathBuf, crate::io::DirLock>> {
    use crate::io::Dir;
    let mut taken = HashMap::new();
    for root in conf.roots.values() {
        if held.contains_key(root) || taken.contains_key(root) {
            continue;
        }
        let lock = crate::io::FsDir::new(root)?.lock().map_err(|e| {
            Error::new(
                e.kind(),
                format!(
                    "{}; a second server on the same storage root is refused",
                    e.message()
                ),
            )
            .with_path(root)
        })?;
        taken.insert(root.clone(), lock);
    }
    Ok(taken)
}

impl Server {
    /// Loads the certificates, checks the configuration and binds.
    pub fn bind(config: &ServerConfig) -> Result<Server> {
        let conf = Conf::load(config)?;
        let roots = lock_roots(&conf, &HashMap::new())?;
        let listener = TcpListener::bind(config.listen)
            .map_err(|e| Error::io(format!("listen on {}", config.listen), e))?;
        let server = Server {
            listener,
            shared: Arc::new(Shared {
                conf: parking_lot::RwLock::new(Arc::new(conf)),
                disks: Mutex::new(HashMap::new()),
                connections: AtomicUsize::new(0),
                per_identity: Mutex::new(HashMap::new()),
                open: Mutex::new(HashMap::new()),
                next_connection: AtomicU64::new(0),
                metrics: Metrics::default(),
                started: std::time::Instant::now(),
            }),
            roots: Mutex::new(roots),
        };
        group::recover(&server.shared);
        Ok(server)
    }

    /// Takes a new configuration while serving (SIGHUP in `blockrep
    /// serve`): certificates, primaries and their roots, monitors, limits
    /// and health thresholds. New connections use it; connections and
    /// pushes under way finish under the one they started with, so
    /// replication is not dropped. A configuration that does not load (a missing certificate,
    /// a malformed list) changes nothing; the listening address cannot
    /// change without a restart. A primary's new root applies to disks
    /// first opened after the reload.
    pub fn reload(&self, config: &ServerConfig) -> Result<()> {
        if config.listen != self.shared.conf().listen {
            return Err(Error::invalid(format!(
                "listen {} -> {}: a new address needs a restart",
                self.shared.conf().listen,
                config.listen
            )));
        }
        let conf = Conf::load(config)?;
        // A new root is locked before the configuration is taken (a root
        // another server holds refuses the reload); a root left is
        // released.
        let mut roots = self.roots.lock();
        let mut taken = lock_roots(&conf, &roots)?;
        for root in conf.roots.values() {
            if let Some(l) = roots.remove(root) {
                taken.insert(root.clone(), l);
            }
        }
        *roots = taken;
        *self.shared.conf.write() = Arc::new(conf);
        Ok(())
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
        // Abandoned uploads are looked for ten times per allowed age
        // (at most every minute, at least every 100 ms).
        let sweep_every = (self.shared.conf().limits.abandoned_upload / 10)
            .clamp(Duration::from_millis(100), Duration::from_secs(60));
        let mut swept = std::time::Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if swept.elapsed() >= sweep_every {
                let n = space::reclaim_abandoned(
                    &self.shared,
                    self.shared.conf().limits.abandoned_upload,
                );
                self.shared.metrics.reclaimed(n);
                swept = std::time::Instant::now();
            }
            match self.listener.accept() {
                Ok((tcp, peer)) => {
                    let shared = self.shared.clone();
                    if shared.connections.fetch_add(1, Ordering::SeqCst)
                        >= shared.conf().limits.connections
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

fn parse_disk(s: &str) -> Option<DiskId> {
    unhex(s).map(DiskId)
}

fn parse_digest(s: &str) -> Option<Digest> {
    unhex(s).map(Digest)
}

impl Disk {
    /// The replica's status as JSON with its health, or `None` before the
    /// replica exists.
    fn status_json(&self, r: &Replica, policy: &HealthPolicy) -> serde_json::Value {
        let st = crate::status::DiskStatus::of_replica(r, crate::status::now_ns());
        let (h, why) = health::health_of(policy, &st, self.last_received.lock().elapsed());
        let mut v = serde_json::json!(st);
        v["health"] = serde_json::json!({"state": h, "reasons": why});
        v
    }
}

impl Shared {
    /// The configuration now.
    fn conf(&self) -> Arc<Conf> {
        self.conf.read().clone()
    }

    /// Prunes `r` to `identity`'s retention policy after an apply; a
    /// failure is logged (the apply stands, the next one prunes again).
    fn prune(&self, identity: &Identity, r: &Replica) {
        let conf = self.conf();
        if let Some(policy) = conf.retention.get(identity.as_str()) {
            if let Err(e) = r.prune(policy, crate::status::now_ns()) {
                log(&format!("prune disk {}: {e}", r.status().disk_id));
            }
        }
    }

    /// The disk `id` of `identity`, opened (its replica, if it exists)
    /// the first time; `None` when the server holds nothing of it (no
    /// entry is made for a disk that does not exist, so asking about
    /// unknown disks costs no memory).
    fn disk(&self, identity: &Identity, id: DiskId) -> Result<Option<Arc<Disk>>> {
        self.open_disk(identity, id, false)
    }

    /// [`disk`](Self::disk) for a push, which may create it: its entry is
    /// made; the push hands it back through
    /// [`forget_if_empty`](Self::forget_if_empty), which drops the entry
    /// when the push left nothing.
    fn disk_to_push(&self, identity: &Identity, id: DiskId) -> Result<Arc<Disk>> {
        self.open_disk(identity, id, true)?
            .ok_or_else(|| Error::invalid("no disk to push to"))
    }

    fn open_disk(
        &self,
        identity: &Identity,
        id: DiskId,
        create: bool,
    ) -> Result<Option<Arc<Disk>>> {
        let key = (identity.as_str().to_string(), id);
        let mut disks = self.disks.lock();
        if let Some(d) = disks.get(&key) {
            return Ok(Some(d.clone()));
        }
        let dir = self.disk_dir(identity, id)?;
        if !create && !dir.exists() {
            return Ok(None);
        }
        let replica_dir = dir.join("replica");
        let replica = if replica_dir.join("state").exists() {
            Some(Replica::open(Arc::new(FsDir::new(&replica_dir)?))?)
        } else {
            None
        };
        let d = Arc::new(Disk {
            dir,
            last_received: Mutex::new(self.started),
            upload: Mutex::new(()),
            replica: Mutex::new(replica),
        });
        disks.insert(key, d.clone());
        Ok(Some(d))
    }

    /// Where disk `id` of `identity` lives (or would).
    fn disk_dir(&self, identity: &Identity, id: DiskId) -> Result<PathBuf> {
        let conf = self.conf();
        let root = conf
            .roots
            .get(identity.as_str())
            .ok_or_else(|| Error::invalid(format!("{identity} has no storage root")))?;
        Ok(root.join(hex(&id.0)))
    }

    /// After a push of disk `id`: when the disk has no replica and nothing
    /// of an upload (a refused first log, say), its empty directories and
    /// its entry go, so refused requests leave nothing behind. A partial
    /// upload (kept for a resume), a held group log or an upload under way
    /// keeps the disk.
    fn forget_if_empty(&self, identity: &Identity, id: DiskId, mine: Arc<Disk>) {
        let key = (identity.as_str().to_string(), id);
        let mut disks = self.disks.lock();
        // The push's own reference goes under the map's lock, through
        // which every request gets its reference: of two pushes ending
        // together, the last sees it is alone.
        drop(mine);
        let Some(d) = disks.get(&key).cloned() else {
            return;
        };
        // Another request holds the disk (beyond the map's reference and
        // this one): it, or the next push, decides.
        if Arc::strong_count(&d) > 2 {
            return;
        }
        let Some(upload) = d.upload.try_lock() else {
            return;
        };
        if d.replica.lock().is_some() {
            return;
        }
        // Only what a refused push leaves: empty directories, and a
        // replica directory holding nothing but its lock file.
        let replica = d.dir.join("replica");
        if !replica.join("state").exists() {
            let only_lock = std::fs::read_dir(&replica).is_ok_and(|mut it| {
                it.all(|e| e.is_ok_and(|e| e.file_name() == crate::io::LOCK_FILE))
            });
            if only_lock {
                let _ = std::fs::remove_file(replica.join(crate::io::LOCK_FILE));
            }
            let _ = std::fs::remove_dir(&replica);
        }
        let _ = std::fs::remove_dir(d.dir.join("uploads"));
        if std::fs::remove_dir(&d.dir).is_ok() || !d.dir.exists() {
            drop(upload);
            disks.remove(&key);
        }
    }

    /// The disks `identity` holds.
    fn disk_ids(&self, identity: &Identity) -> Vec<DiskId> {
        let conf = self.conf();
        let Some(root) = conf.roots.get(identity.as_str()) else {
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
