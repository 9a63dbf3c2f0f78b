//! Which request goes where: the disk list, a disk's status, points,
//! resume state and digests, `/metrics`, and pushes (in [`super::push`]).

use super::connection::{error_response, json_response, linger, status_of, Tls};
use super::metrics::metrics_text;
use super::push::push;
use super::{parse_digest, parse_disk, Shared};
use crate::error::{Error, ErrorKind, Result};
use crate::log::Digest;
use crate::net::http::{response_head, write_response, Head};
use crate::net::identity::Identity;
use crate::replica::Replica;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The partial upload of a disk, if any: its sequence, digest, path and
/// bytes held.
pub(super) fn partial(dir: &Path) -> Option<(u64, Digest, PathBuf, u64)> {
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
pub(super) fn route(
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
    #[cfg(feature = "s3")]
    if path == "/v1/vault" || path.starts_with("/v1/vault/") || path.starts_with("/v1/vault?") {
        return super::vault::vault(shared, identity, s, &head, rest);
    }
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
        ("GET", ["", "metrics"])
            if shared
                .conf()
                .monitors
                .iter()
                .any(|m| m == identity.as_str()) =>
        {
            let text = metrics_text(shared);
            write_response(s, 200, "text/plain; version=0.0.4", &[], text.as_bytes())
                .map_err(|e| Error::io("respond", e))?;
            Ok(true)
        }
        ("GET", ["", "v1", "disks"]) => {
            let list: Vec<serde_json::Value> = shared
                .disk_ids(identity)
                .into_iter()
                .filter_map(|id| shared.disk(identity, id).ok().flatten())
                .filter_map(|d| {
                    let r = d.replica.lock().clone()?;
                    Some(d.status_json(&r, &shared.conf().health))
                })
                .collect();
            reply(s, Ok(serde_json::Value::Array(list)))
        }
        ("GET", ["", "v1", "disks", disk, rest @ ..]) => {
            let Some(id) = parse_disk(disk) else {
                // Not a disk id: no such disk (404), as PROTOCOL.md says.
                let _ = error_response(s, 404, &not_found());
                return Ok(true);
            };
            let Some(d) = shared.disk(identity, id)? else {
                // Nothing held of it: a shipper's first question, answered
                // (nothing applied, no partial) without making the disk.
                if rest == ["resume"] {
                    let dir = shared.disk_dir(identity, id)?;
                    return reply(s, Ok(resume_json(None, &dir)));
                }
                let e = not_found();
                let _ = error_response(s, 404, &e);
                return Ok(true);
            };
            let replica = d.replica.lock().clone();
            let r = match (replica, rest) {
                (None, ["resume"]) => Ok(resume_json(None, &d.dir)),
                (Some(r), []) => Ok(d.status_json(&r, &shared.conf().health)),
                (Some(r), ["points"]) => Ok(serde_json::json!(r.points())),
                (Some(r), ["resume"]) => Ok(resume_json(Some(&r), &d.dir)),
                (Some(r), ["digests"]) => return digests(s, &r),
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

/// `GET .../digests`: the latest point's block digests, for a resync,
/// streamed as they are computed (a list is 32 bytes per block: held
/// whole, a large disk's would exhaust the server). A failure before the
/// head is answered; one after it ends the connection, and the client
/// sees a short body.
fn digests(s: &mut Tls, r: &Replica) -> Result<bool> {
    let mut started = false;
    let sent = r.write_block_digests(s, 0, |out, len| {
        started = true;
        let head = response_head(200, "application/octet-stream", &[], len);
        out.write_all(head.as_bytes())
            .map_err(|e| Error::io("respond", e))
    });
    match sent {
        Ok(_) => {
            s.flush().map_err(|e| Error::io("respond", e))?;
            Ok(true)
        }
        Err(e) if !started => {
            error_response(s, status_of(&e), &e).map_err(|e| Error::io("respond", e))?;
            Ok(true)
        }
        Err(e) => Err(e),
    }
}

/// `GET .../resume`: the latest applied log and the partial upload.
pub(super) fn resume_json(r: Option<&Replica>, dir: &Path) -> serde_json::Value {
    let applied = r.map(|r| {
        let st = r.status();
        serde_json::json!({"sequence": st.applied, "digest": st.digest, "epoch": st.epoch})
    });
    let partial = partial(dir).map(|(seq, digest, _, bytes)| {
        serde_json::json!({"sequence": seq, "digest": digest, "bytes": bytes})
    });
    let held = dir
        .parent()
        .zip(
            dir.file_name()
                .and_then(|n| n.to_str())
                .and_then(parse_disk),
        )
        .and_then(|(root, id)| super::group::held_for(root, id));
    let held = held.map(|h| serde_json::json!({"sequence": h.sequence, "digest": h.digest}));
    serde_json::json!({"applied": applied, "partial": partial, "held": held})
}
