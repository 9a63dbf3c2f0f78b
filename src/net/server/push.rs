//! `PUT /v1/disks/{disk}/logs/{sequence}`: a log streamed to its
//! partial file, resumable at the bytes held, then verified and applied.

use super::claim::PushClaim;
use super::connection::{
    error_response, error_response_with, json_response, json_response_status, linger, status_of,
    Tls,
};
use super::routes::partial;
use super::space::check_reserve;
use super::{Disk, Shared};
use crate::error::{Error, ErrorKind, Result};
use crate::hex::hex;
use crate::id::DiskId;
use crate::io::FsDir;
use crate::net::http::Head;
use crate::net::identity::Identity;
use crate::replica::{ApplyOutcome, Replica};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

/// `PUT /v1/disks/{disk}/logs/{sequence}`: streams the body into the
/// disk's partial file (appending at the offset `Content-Range` names,
/// which must be the bytes held), then verifies and applies the log whole.
/// A push that leaves the disk with nothing (a refused first log) leaves
/// no directory and no entry behind.
pub(super) fn push(
    shared: &Shared,
    identity: &Identity,
    s: &mut Tls,
    head: &Head,
    rest: Vec<u8>,
    id: DiskId,
    seq: u64,
) -> Result<bool> {
    let conf = shared.conf();
    let fail = |s: &mut Tls, status: u16, e: Error| -> Result<bool> {
        let _ = error_response(s, status, &e);
        linger(s);
        Ok(false)
    };
    let claim = match PushClaim::parse(head, id, seq, conf.limits.max_log) {
        Ok(c) => c,
        Err((status, e)) => {
            shared.metrics.refused(&format!("http {status}"));
            return fail(s, status, e);
        }
    };
    let (digest, body_len, start, total) = (claim.digest, claim.len, claim.start, claim.total);
    // Handed back on every way out, forgetting the disk if it was left
    // with nothing.
    let disk = Pushed {
        shared,
        identity,
        id,
        disk: Some(shared.disk_to_push(identity, id)?),
    };
    let Some(upload) = disk.upload.try_lock() else {
        let e = Error::new(ErrorKind::Misuse, "an upload of this disk is under way");
        let _ = error_response_with(s, 503, &e, &[("Retry-After", "1".into())]);
        linger(s);
        return Ok(false);
    };
    let uploads = disk.dir.join("uploads");
    crate::io::create_private_dir(&uploads)?;
    // One partial per disk: another log's partial is superseded, and so is
    // this log's when the whole log comes again (no Content-Range): the
    // client restarts it (after a crash between the last byte and the
    // apply, say, the partial may hold the whole log).
    let restart = claim.restart;
    let held = match partial(&disk.dir) {
        Some((p_seq, p_digest, path, bytes)) if p_seq == seq && p_digest == digest && !restart => {
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
        drop(upload);
        let _ = error_response_with(s, 416, &e, &[("Content-Range", format!("bytes */{have}"))]);
        linger(s);
        return Ok(false);
    }
    // The rest of the body, and the apply's staging copy of the whole
    // log, must fit above the reserve; else nothing is written.
    if let Err(e) = check_reserve(
        &disk.dir,
        (total - have).saturating_add(total),
        conf.limits.reserve_percent,
    ) {
        shared.metrics.refused("free space below the reserve");
        drop(upload);
        return fail(s, 507, e);
    }
    // Buffered: a TLS read yields at most a record (16 KiB); the file
    // takes them a MiB at a time.
    let mut file = std::io::BufWriter::with_capacity(
        1 << 20,
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            // An incoming log holds disk data: the owner's alone.
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io("open the partial upload", e).with_path(&path))?,
    );
    // The body: what came with the head, then the stream, to the file as
    // it arrives.
    let mut left = body_len;
    let first = rest.len().min(usize::try_from(left).unwrap_or(usize::MAX));
    let mut received = file
        .write_all(&rest[..first])
        .map_err(|e| Error::io("write the upload", e));
    left -= first as u64;
    let mut buf = vec![0u8; 256 << 10];
    let mut pace = Pace::new(conf.limits.read_timeout, conf.limits.min_body_rate);
    while received.is_ok() && left > 0 {
        let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        if let Err(e) = pace.check() {
            shared.metrics.refused("body too slow");
            received = Err(e);
            break;
        }
        received = match s.read(&mut buf[..want]) {
            Ok(0) => Err(Error::invalid("the connection closed inside the body")),
            Ok(n) => {
                left -= n as u64;
                shared.metrics.received(n);
                pace.got(n);
                *disk.last_received.lock() = std::time::Instant::now();
                file.write_all(&buf[..n])
                    .map_err(|e| Error::io("write the upload", e).with_path(&path))
            }
            Err(e) => Err(Error::io("read the body", e)),
        };
    }
    // What arrived reaches the file, whatever ended the body.
    let flushed = file
        .flush()
        .map_err(|e| Error::io("write the upload", e).with_path(&path));
    if received.is_ok() {
        received = flushed;
    }
    if let Err(e) = received {
        if e.kind() == ErrorKind::NoSpace {
            // The file system filled under the upload (another writer):
            // the partial goes, so no half-written file remains, and the
            // client is told to come back.
            drop(file);
            let _ = std::fs::remove_file(&path);
            shared.metrics.refused("no space left");
            drop(upload);
            return fail(s, 507, e);
        }
        received = Err(e);
    }
    // Whatever arrived is kept, durably, for a resume.
    let synced = file.get_ref().sync_all();
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
    // The log must be the one the request named, of a disk this primary
    // may hold, before anything is applied or held.
    let max_disk = conf.max_disk(identity);
    let header = crate::log::LogHeader::read_file(&path)
        .and_then(|h| claim.check_header(&h, max_disk).map(|()| h));
    let group = match header {
        Ok(h) => h.group,
        Err(e) => {
            drop(upload);
            let _ = std::fs::remove_file(&path);
            shared.metrics.refused(&format!("http {}", status_of(&e)));
            error_response(s, status_of(&e), &e).map_err(|e| Error::io("respond", e))?;
            return Ok(true);
        }
    };
    // A member of a consistency group waits for the others.
    if let Some(group) = group {
        drop(upload);
        let root = disk.dir.parent().map(Path::to_path_buf).unwrap_or_default();
        let upload = super::group::Held {
            disk: id,
            sequence: seq,
            digest,
            path: path.clone(),
        };
        let r = super::group::hold_and_try(shared, identity, &root, &upload, group);
        let sent = match r {
            Ok(Some(o)) => json_response(
                s,
                &serde_json::json!({
                    "sequence": o.sequence(),
                    "digest": o.digest(),
                    "outcome": if o.applied_now() { "applied" } else { "already_applied" },
                }),
            ),
            Ok(None) => json_response_status(
                s,
                202,
                &serde_json::json!({"sequence": seq, "digest": digest, "outcome": "held"}),
            ),
            Err(e) => {
                shared.metrics.refused(&format!("http {}", status_of(&e)));
                error_response(s, status_of(&e), &e)
            }
        };
        sent.map_err(|e| Error::io("respond", e))?;
        return Ok(true);
    }
    let apply_started = std::time::Instant::now();
    let current = disk.replica.lock().clone();
    let applied = match current {
        Some(r) => r
            .apply_file_checked(&path, |log| claim.check_log(log, max_disk))
            .inspect(|o| {
                if o.applied_now() {
                    shared.prune(identity, &r);
                }
            }),
        None => {
            let dir = Arc::new(FsDir::new(disk.dir.join("replica"))?);
            Replica::create_from_file_checked(dir, &path, |log| claim.check_log(log, max_disk)).map(
                |r| {
                    let o = ApplyOutcome::Applied {
                        sequence: r.status().applied,
                        digest: r.status().digest,
                    };
                    *disk.replica.lock() = Some(r);
                    o
                },
            )
        }
    };
    let _ = std::fs::remove_file(&path);
    let m = &shared.metrics;
    m.applied(
        apply_started.elapsed(),
        applied.as_ref().is_ok_and(ApplyOutcome::applied_now),
    );
    if let Err(e) = &applied {
        m.refused(&format!("http {}", status_of(e)));
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

/// A push's hold on its disk: handed back when dropped, and the disk
/// forgotten if the push left it with nothing.
struct Pushed<'a> {
    shared: &'a Shared,
    identity: &'a Identity,
    id: DiskId,
    disk: Option<Arc<Disk>>,
}

impl std::ops::Deref for Pushed<'_> {
    type Target = Disk;
    fn deref(&self) -> &Disk {
        self.disk.as_ref().expect("held until dropped")
    }
}

impl Drop for Pushed<'_> {
    fn drop(&mut self) {
        if let Some(d) = self.disk.take() {
            self.shared.forget_if_empty(self.identity, self.id, d);
        }
    }
}

/// The minimum body rate: bytes counted per window of the read timeout;
/// a window that ends below the rate ends the upload.
struct Pace {
    window: std::time::Duration,
    min_rate: u64,
    since: std::time::Instant,
    bytes: u64,
}

impl Pace {
    fn new(window: std::time::Duration, min_rate: u64) -> Self {
        Pace {
            window,
            min_rate,
            since: std::time::Instant::now(),
            bytes: 0,
        }
    }

    fn got(&mut self, n: usize) {
        self.bytes += n as u64;
    }

    fn check(&mut self) -> Result<()> {
        let took = self.since.elapsed();
        if took < self.window {
            return Ok(());
        }
        let rate = self.bytes as f64 / took.as_secs_f64();
        if rate < self.min_rate as f64 {
            return Err(Error::new(
                ErrorKind::Io,
                format!(
                    "the body arrives at {rate:.0} bytes/s, under the minimum of {} bytes/s",
                    self.min_rate
                ),
            ));
        }
        *self = Pace::new(self.window, self.min_rate);
        Ok(())
    }
}
