//! What an operator types during a disaster: test failover (served over
//! NBD until stopped), planned and unplanned failover, switching points,
//! commit, reverse replication to the old primary and failback.

use crate::nbd;
use crate::ops::{digest_resync, open_replica, Out};
use blockrep::failover::{test_failover, Failover};
use blockrep::io::{FileStorage, FsDir, Storage};
use blockrep::replica::{FailoverPhase, Replica};
use blockrep::{Error, ErrorKind, Result};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn misuse(m: String) -> Error {
    Error::new(ErrorKind::Misuse, m)
}

/// What an operator does to a replica during a disaster.
pub enum FailoverAction {
    /// Promote at a point (the latest when `None`): no log applies any
    /// more; the point is served until the commit.
    Promote(Option<u64>),
    /// Move a promoted, uncommitted replica to another retained point.
    Switch(u64),
    /// Make the promoted point final: the image becomes the new primary's
    /// disk, the history after the point is dropped.
    Commit,
    /// Unplanned failover in one step: promote at the point and commit.
    Now(Option<u64>),
    /// Where the failover stands.
    Status,
}

/// The replica's image path: `--image`, or `image` in its directory.
fn image_path(dir: &Path, image: Option<&str>) -> PathBuf {
    image.map_or_else(|| dir.join("image"), PathBuf::from)
}

/// `blockrep failover promote|switch|commit|now|status DIR`.
pub fn failover(dir: &str, image: Option<&str>, action: FailoverAction, json: bool) -> Result<()> {
    let r = open_replica(dir, image)?;
    let phase = r.failover_phase();
    let mut o = Out::new();
    match action {
        FailoverAction::Status => {
            o.put(
                "phase",
                phase.map_or("not promoted".into(), |(p, _)| {
                    format!("{p:?}").to_lowercase()
                }),
            );
            if let Some((_, point)) = phase {
                o.put("point", point);
            }
            o.put("latest_point", r.status().applied);
        }
        FailoverAction::Promote(point) => {
            let f = Failover::promote(r, point)?;
            o.put("phase", "promoted").put("point", f.point());
        }
        FailoverAction::Switch(point) => {
            if phase.is_none() {
                return Err(misuse(format!("{dir}: not promoted: promote it first")));
            }
            let f = Failover::promote(r, None)?;
            f.switch(point)?;
            o.put("phase", "promoted").put("point", f.point());
        }
        FailoverAction::Commit | FailoverAction::Now(_) => {
            let point = match action {
                FailoverAction::Now(p) => p,
                _ if phase.is_none() => {
                    return Err(misuse(format!(
                        "{dir}: not promoted: promote it first (or fail over now)"
                    )))
                }
                _ => None,
            };
            commit(&mut o, r, point)?;
            o.put(
                "disk",
                image_path(Path::new(dir), image).display().to_string(),
            );
        }
    }
    o.print(json);
    Ok(())
}

/// Promotes `r` at `point` (the recorded or latest point when `None`) and
/// commits; puts the point and the divergence into `o`.
fn commit(o: &mut Out, r: Replica, point: Option<u64>) -> Result<Failover> {
    let f = Failover::promote(r, point)?;
    let c = f.commit()?;
    o.put("phase", "committed")
        .put("point", c.point)
        .put("blocks_to_send_back", c.divergence().count());
    Ok(f)
}

/// `blockrep failover planned DIR --source IMAGE`: the primary is stopped;
/// its image's last changes are sent by digest (only the blocks that
/// differ), then the replica fails over at that final point and commits:
/// nothing written on the primary is lost.
pub fn planned(dir: &str, image: Option<&str>, source: &str, json: bool) -> Result<()> {
    let r = open_replica(dir, image)?;
    if r.failover_phase().is_some() {
        return Err(misuse(format!(
            "{dir}: promoted already: a planned failover starts from a replica"
        )));
    }
    let disk = FileStorage::open_read_only(source)?;
    let log = Path::new(dir).join("planned.brlog");
    let last = digest_resync(&disk, &r, &log)?;
    let mut o = Out::new();
    o.put("final_sync_blocks", last.trailer.blocks);
    commit(&mut o, r, None)?;
    o.put(
        "disk",
        image_path(Path::new(dir), image).display().to_string(),
    );
    o.print(json);
    Ok(())
}

/// `blockrep reverse DIR --to DISK --replica NEWDIR`: after a committed
/// failover of the replica in `dir`, the old primary's disk `to` becomes a
/// replica (in `new_dir`) at the failover point and receives by digest
/// every block that differs from the new primary's disk. Run it again (or
/// `blockrep sync`) to send later changes; failback is the same the other
/// way round.
pub fn reverse(dir: &str, image: Option<&str>, to: &str, new_dir: &str, json: bool) -> Result<()> {
    let r = open_replica(dir, image)?;
    match r.failover_phase() {
        Some((FailoverPhase::Committed, _)) => {}
        _ => {
            return Err(misuse(format!(
                "{dir}: the failover is not committed: commit it first \
                 (blockrep failover commit), then replicate back"
            )))
        }
    }
    let at = Failover::promote(r, None)?.adopt_at()?;
    let new_primary = FileStorage::open_read_only(image_path(Path::new(dir), image))?;
    let old: Arc<dyn Storage> = Arc::new(FileStorage::open(to)?);
    let adopted = Replica::adopt(Arc::new(FsDir::new(new_dir)?), old, at)?;
    let log = Path::new(new_dir).join("reverse.brlog");
    let sent = digest_resync(&new_primary, &adopted, &log)?;
    let mut o = Out::new();
    o.put(
        "from",
        image_path(Path::new(dir), image).display().to_string(),
    )
    .put("to", to)
    .put("replica", new_dir)
    .put("failover_point", at.sequence)
    .put("blocks_sent", sent.trailer.blocks)
    .put("point", adopted.status().applied);
    o.print(json);
    Ok(())
}

/// `blockrep failback DIR --to DISK --replica NEWDIR`: the replica in
/// `dir` (the old primary's disk, adopted by `reverse`) fails over at its
/// latest point and commits, then the other site's disk `to` becomes its
/// replica again, by digest.
pub fn failback(dir: &str, image: Option<&str>, to: &str, new_dir: &str, json: bool) -> Result<()> {
    {
        let r = open_replica(dir, image)?;
        if r.failover_phase().is_none() {
            Failover::promote(r, None)?.commit()?;
        } else {
            // Promoted (or committed) by hand already: finish it.
            let f = Failover::promote(r, None)?;
            if !f.is_committed() {
                f.commit()?;
            }
        }
    }
    reverse(dir, image, to, new_dir, json)
}

/// Set by SIGTERM and SIGINT: the test failovers' servers stop.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// The flag SIGTERM and SIGINT set, their handlers installed (once).
pub fn stop_flag() -> &'static AtomicBool {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe.
        unsafe {
            let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::signal(libc::SIGTERM, handler);
            libc::signal(libc::SIGINT, handler);
        }
    });
    &STOP
}

/// Where a test failover's process records its pid: beside its overlay.
fn pid_file(overlay: &Path) -> PathBuf {
    let mut p = overlay.as_os_str().to_owned();
    p.push(".pid");
    PathBuf::from(p)
}

/// `blockrep failover test start DIR --overlay FILE --socket SOCK`: a
/// writable view of a point, served over NBD on a Unix socket until
/// `failover test stop` (or SIGTERM, SIGINT). Writes go to the overlay
/// file; the replica is not written, and stopping discards the overlay.
/// The replica stays open (locked) meanwhile: logs for it wait.
pub fn test_start(
    dir: &str,
    image: Option<&str>,
    point: Option<u64>,
    overlay: &Path,
    socket: &Path,
) -> Result<()> {
    let pid = pid_file(overlay);
    if overlay.exists() || pid.exists() {
        return Err(misuse(format!(
            "{}: a test failover with this overlay runs already or was not \
             stopped: blockrep failover test stop --overlay {}",
            overlay.display(),
            overlay.display()
        )));
    }
    if socket.exists() {
        return Err(misuse(format!(
            "{}: exists: remove it or choose another socket",
            socket.display()
        )));
    }
    let r = open_replica(dir, image)?;
    let size = r.status().geometry.size();
    let file: Arc<dyn Storage> = Arc::new(FileStorage::create(overlay, size)?);
    let cleanup = || {
        let _ = std::fs::remove_file(socket);
        let _ = std::fs::remove_file(overlay);
        let _ = std::fs::remove_file(&pid);
    };
    let started = (|| {
        let view = test_failover(&r, point, file)?;
        std::fs::write(&pid, std::process::id().to_string())
            .map_err(|e| Error::io("write the pid file", e).with_path(&pid))?;
        let listener =
            UnixListener::bind(socket).map_err(|e| Error::io("listen", e).with_path(socket))?;
        Ok::<_, Error>((view, listener))
    })();
    let (view, listener) = match started {
        Ok(v) => v,
        Err(e) => {
            cleanup();
            return Err(e);
        }
    };
    let stop = stop_flag();
    let point = view.sequence();
    println!(
        "test failover of point {point} of {dir}: nbd+unix:///?socket={}",
        socket.display()
    );
    println!(
        "stop it (discarding its writes): blockrep failover test stop --overlay {}",
        overlay.display()
    );
    let export = Arc::new(nbd::Export {
        disk: Arc::new(view),
        name: String::new(),
        read_only: false,
    });
    let served = nbd::serve(&listener, export, stop);
    cleanup();
    eprintln!("test failover of point {point} stopped; its writes are discarded");
    served.map_err(|e| Error::io("serve", e).with_path(socket))
}

/// `blockrep failover test stop --overlay FILE`: stops the test failover
/// whose overlay is `overlay` and waits until its overlay is gone. A test
/// failover whose process died is cleaned up here.
pub fn test_stop(overlay: &Path) -> Result<()> {
    let pid_path = pid_file(overlay);
    let pid: libc::pid_t = match std::fs::read_to_string(&pid_path) {
        Ok(s) => s
            .trim()
            .parse()
            .map_err(|_| Error::corrupt("not a pid").with_path(&pid_path))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if overlay.exists() {
                std::fs::remove_file(overlay)
                    .map_err(|e| Error::io("remove the overlay", e).with_path(overlay))?;
                println!("no test failover ran; its overlay is removed");
                return Ok(());
            }
            return Err(misuse(format!(
                "{}: no test failover runs with this overlay",
                overlay.display()
            )));
        }
        Err(e) => return Err(Error::io("read the pid file", e).with_path(&pid_path)),
    };
    // SAFETY: kill takes plain integers and touches no memory of ours.
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        // The process is gone: clean up what it left.
        let _ = std::fs::remove_file(overlay);
        let _ = std::fs::remove_file(&pid_path);
        println!("the test failover's process {pid} was gone; its overlay is removed");
        return Ok(());
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while pid_path.exists() {
        if Instant::now() > deadline {
            return Err(Error::new(
                ErrorKind::Io,
                format!("process {pid} did not stop within 30 s"),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("test failover stopped; its writes are discarded");
    Ok(())
}
