//! `blockrep serve --config FILE`: the replica server on the secondary
//! site, configured in TOML, running until SIGTERM or SIGINT; SIGHUP
//! reloads the file (certificates, primaries, limits, health). Each
//! primary's root is locked (`.lock` in it, holding the pid) for the
//! server's life, so a second server on the same root is refused.
//!
//! ```toml
//! listen = "0.0.0.0:8443"
//! certificate = "/etc/blockrep/server.crt"
//! key = "/etc/blockrep/server.key"
//! client_ca = "/etc/blockrep/primaries-ca.crt"
//! monitors = ["prometheus.dr.example"]   # may read /metrics (optional)
//!
//! [[primary]]
//! identity = "*.site-a.example"
//! root = "/srv/blockrep/site-a"
//! keep_last = 24               # retention of its replicas' points, pruned
//! keep_app_last = 7            # after every apply (keep_for_secs and
//!                              # keep_app_for_secs too; all optional)
//! max_disk_bytes = 17592186044416  # the largest disk its logs may
//!                              # declare (optional; 16 TiB)
//!
//! [limits]                 # all optional
//! read_timeout_secs = 30
//! idle_timeout_secs = 120
//! connections = 2048
//! per_identity = 32
//! max_log_bytes = 1099511627776
//! reserve_percent = 5      # of the file system kept free: pushes get 507
//! abandoned_upload_secs = 86400
//! min_body_rate = 1024     # bytes/s over each read timeout, else cut
//!
//! [health]                 # optional
//! warning_behind_secs = 900      # the latest point older: warning
//! critical_silence_secs = 3600   # nothing received: critical
//! ```

use blockrep::net::{
    HealthPolicy, Limits, PrimaryConfig, Server, ServerConfig, TlsFiles, DEFAULT_MAX_DISK,
};
use blockrep::replica::RetentionPolicy;
use blockrep::{Error, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct File {
    listen: String,
    certificate: PathBuf,
    key: PathBuf,
    client_ca: PathBuf,
    primary: Vec<Primary>,
    /// Identities that may read `/metrics`.
    #[serde(default)]
    monitors: Vec<String>,
    #[serde(default)]
    limits: LimitsFile,
    #[serde(default)]
    health: HealthFile,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct HealthFile {
    warning_behind_secs: Option<u64>,
    critical_silence_secs: Option<u64>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct Primary {
    identity: String,
    root: PathBuf,
    /// Retention of its replicas' points (defaults: the library's).
    keep_last: Option<usize>,
    keep_for_secs: Option<u64>,
    keep_app_last: Option<usize>,
    keep_app_for_secs: Option<u64>,
    /// The largest disk its logs may declare.
    max_disk_bytes: Option<u64>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    read_timeout_secs: Option<u64>,
    idle_timeout_secs: Option<u64>,
    connections: Option<usize>,
    per_identity: Option<usize>,
    max_log_bytes: Option<u64>,
    reserve_percent: Option<u8>,
    abandoned_upload_secs: Option<u64>,
    min_body_rate: Option<u64>,
}

/// The server's configuration from the TOML file at `path`.
pub fn load(path: &Path) -> Result<ServerConfig> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io("read the configuration", e).with_path(path))?;
    let f: File =
        toml::from_str(&text).map_err(|e| Error::invalid(format!("{}: {e}", path.display())))?;
    let listen = f
        .listen
        .parse()
        .map_err(|_| Error::invalid(format!("listen {:?}: an address and port", f.listen)))?;
    if f.primary.is_empty() {
        return Err(Error::invalid(format!(
            "{}: no [[primary]]: nobody could replicate here",
            path.display()
        )));
    }
    if f.limits.reserve_percent.is_some_and(|r| r > 100) {
        return Err(Error::invalid(format!(
            "{}: reserve_percent is a percentage (0 to 100)",
            path.display()
        )));
    }
    let d = Limits::default();
    let h = HealthPolicy::default();
    let secs = |v: Option<u64>, def: Duration| v.map_or(def, Duration::from_secs);
    Ok(ServerConfig {
        listen,
        tls: TlsFiles {
            cert: f.certificate,
            key: f.key,
            ca: f.client_ca,
        },
        primaries: f
            .primary
            .into_iter()
            .map(|p| {
                let r = RetentionPolicy::default();
                PrimaryConfig {
                    identity: p.identity,
                    root: p.root,
                    retention: RetentionPolicy {
                        keep_last: p.keep_last.unwrap_or(r.keep_last),
                        keep_for: p.keep_for_secs.map(Duration::from_secs).or(r.keep_for),
                        keep_app_last: p.keep_app_last.unwrap_or(r.keep_app_last),
                        keep_app_for: p
                            .keep_app_for_secs
                            .map(Duration::from_secs)
                            .or(r.keep_app_for),
                    },
                    max_disk: p.max_disk_bytes.unwrap_or(DEFAULT_MAX_DISK),
                }
            })
            .collect(),
        limits: Limits {
            read_timeout: secs(f.limits.read_timeout_secs, d.read_timeout),
            idle_timeout: secs(f.limits.idle_timeout_secs, d.idle_timeout),
            connections: f.limits.connections.unwrap_or(d.connections),
            per_identity: f.limits.per_identity.unwrap_or(d.per_identity),
            max_log: f.limits.max_log_bytes.unwrap_or(d.max_log),
            reserve_percent: f.limits.reserve_percent.unwrap_or(d.reserve_percent),
            abandoned_upload: secs(f.limits.abandoned_upload_secs, d.abandoned_upload),
            min_body_rate: f.limits.min_body_rate.unwrap_or(d.min_body_rate),
            ..d
        },
        monitors: f.monitors,
        health: HealthPolicy {
            warning_behind: secs(f.health.warning_behind_secs, h.warning_behind),
            critical_silence: secs(f.health.critical_silence_secs, h.critical_silence),
        },
    })
}

static RELOAD: AtomicBool = AtomicBool::new(false);

extern "C" fn on_hup(_: libc::c_int) {
    RELOAD.store(true, Ordering::Relaxed);
}

/// Runs the server of the configuration at `path` until SIGTERM or
/// SIGINT; SIGHUP reloads the configuration (certificates, primaries,
/// limits) without dropping a connection. A configuration that does not
/// load is refused with its reason, and the server goes on as it was.
pub fn run(path: &Path) -> Result<()> {
    let config = load(path)?;
    let server = Server::bind(&config)?;
    let stop = crate::failover::stop_flag();
    // SAFETY: the handler only stores to an atomic (async-signal-safe).
    unsafe {
        libc::signal(
            libc::SIGHUP,
            on_hup as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
    println!(
        "blockrep serve: listening on {} for {} primar{}",
        server.local_addr()?,
        config.primaries.len(),
        if config.primaries.len() == 1 {
            "y"
        } else {
            "ies"
        }
    );
    std::thread::scope(|s| -> Result<()> {
        let serving = s.spawn(|| server.run(stop));
        while !serving.is_finished() {
            std::thread::sleep(Duration::from_millis(100));
            if RELOAD.swap(false, Ordering::Relaxed) {
                match load(path).and_then(|c| server.reload(&c)) {
                    Ok(()) => eprintln!("blockrep serve: configuration reloaded"),
                    Err(e) => eprintln!("blockrep serve: reload refused, going on as before: {e}"),
                }
            }
        }
        serving
            .join()
            .map_err(|_| Error::invalid("the server's thread panicked"))?
    })?;
    eprintln!("blockrep serve: stopped");
    Ok(())
}
