//! `/v1/vault/...`: each primary's vault, where its shipper keeps sealed
//! objects (logs, bases, the manifest) in the object-store layout, the
//! server holding no key (docs/PROTOCOL.md, "Vault"). A primary reaches
//! only its own vault, under its storage root; names are checked before
//! any file is touched; bodies are bounded; the manifest is replaced only
//! on the version the writer read, so two primaries sharing an identity
//! cannot both advance a disk.

use super::connection::{error_response, json_response, json_response_status, linger, Tls};
use super::space::check_reserve;
use super::Shared;
use crate::error::{Error, ErrorKind, Result};
use crate::net::http::{write_response, Head};
use crate::net::identity::Identity;
use crate::store::dir::{check_name, DirObjects};
use crate::store::Written;
use object_store::{PutMode, UpdateVersion};
use std::io::Read;

/// The most bytes one request carries or one answer returns whole: a
/// larger object goes in appended parts and comes back in ranges.
pub(super) const MAX_BODY: u64 = 64 << 20;

/// The vault's directory under a primary's root.
pub(super) const DIR: &str = "vault";

/// What a request asks, from its path's query.
enum Ask {
    Object,
    List,
    Append(u64),
    Commit(u64),
}

/// Answers a request under `/v1/vault`; false when the connection must
/// close.
pub(super) fn vault(
    shared: &Shared,
    identity: &Identity,
    s: &mut Tls,
    head: &Head,
    rest: Vec<u8>,
) -> Result<bool> {
    let conf = shared.conf();
    let refuse = |s: &mut Tls, status: u16, e: Error| -> Result<bool> {
        let _ = error_response(s, status, &e);
        linger(s);
        Ok(false)
    };
    let (name, ask) = match parse(&head.path) {
        Ok(x) => x,
        Err(e) => return refuse(s, 400, e),
    };
    let Some(root) = conf.roots.get(identity.as_str()) else {
        let e = Error::new(ErrorKind::Misuse, format!("{identity} holds no vault"));
        return refuse(s, 403, e);
    };
    let len = match head.content_length() {
        Ok(n) if n <= MAX_BODY => n,
        Ok(n) => {
            let e = Error::out_of_range(format!("a body of {n} bytes; at most {MAX_BODY}"));
            return refuse(s, 413, e);
        }
        Err(e) => return refuse(s, 400, e),
    };
    if head.method == "PUT" {
        if let Err(e) = check_reserve(root, len, conf.limits.reserve_percent) {
            shared.metrics.refused("free space below the reserve");
            return refuse(s, 507, e);
        }
    }
    let body = match read_body(s, rest, len) {
        Ok(b) => b,
        Err(e) => return refuse(s, 400, e),
    };
    shared.metrics.received(body.len());
    let objects = DirObjects::open(&root.join(DIR))?;
    let answered = match (head.method.as_str(), ask) {
        ("GET", Ask::List) => objects
            .list(&name)
            .and_then(|l| json_response(s, &serde_json::json!(l)).map_err(respond)),
        ("GET", Ask::Object) => get(&objects, s, head, &name),
        ("PUT", Ask::Object) => put(&objects, s, head, &name, &body),
        ("PUT", Ask::Append(at)) => {
            if at.saturating_add(len) > conf.limits.max_log {
                let e = Error::out_of_range(format!(
                    "an object of more than {} bytes",
                    conf.limits.max_log
                ));
                return refuse(s, 413, e);
            }
            match objects.append(&name, at, &body) {
                Ok(n) => json_response(s, &serde_json::json!({"bytes": n})).map_err(respond),
                Err(e) if e.kind() == ErrorKind::OutOfRange => {
                    let held = e.context().offset.unwrap_or(0);
                    json_response_status(
                        s,
                        416,
                        &serde_json::json!({"bytes": held, "error": {"message": e.to_peer_string()}}),
                    )
                    .map_err(respond)
                }
                Err(e) => Err(e),
            }
        }
        ("PUT", Ask::Commit(total)) => objects
            .commit(&name, total)
            .and_then(|()| json_response(s, &serde_json::json!({"bytes": total})).map_err(respond)),
        ("DELETE", Ask::Object) => objects
            .delete(&name)
            .and_then(|()| json_response(s, &serde_json::json!({})).map_err(respond)),
        (m, _) => {
            let e = Error::invalid(format!("{m} {}: not a vault request", head.path));
            let _ = error_response(s, 405, &e);
            return Ok(true);
        }
    };
    match answered {
        Ok(()) => Ok(true),
        Err(e) => {
            let status = match e.kind() {
                ErrorKind::InvalidArgument => 400,
                ErrorKind::OutOfRange => 416,
                ErrorKind::NoSpace => 507,
                _ => 500,
            };
            let _ = error_response(s, status, &e);
            Ok(true)
        }
    }
}

fn respond(e: std::io::Error) -> Error {
    Error::io("respond", e)
}

/// The object name (relative to the vault) and what is asked of it.
fn parse(path: &str) -> Result<(String, Ask)> {
    let (p, query) = path.split_once('?').unwrap_or((path, ""));
    let name = p
        .strip_prefix("/v1/vault")
        .filter(|n| n.is_empty() || n.starts_with('/'))
        .map(|n| n.trim_start_matches('/').trim_end_matches('/'))
        .ok_or_else(|| Error::invalid(format!("{p}: not under /v1/vault")))?;
    let number = |v: &str| {
        v.parse::<u64>()
            .map_err(|_| Error::invalid(format!("{query:?}: not a byte count")))
    };
    let ask = match query.split_once('=') {
        None if query.is_empty() => Ask::Object,
        None if query == "list" => Ask::List,
        Some(("append", v)) => Ask::Append(number(v)?),
        Some(("commit", v)) => Ask::Commit(number(v)?),
        _ => return Err(Error::invalid(format!("{query:?}: not a vault query"))),
    };
    if !(name.is_empty() && matches!(ask, Ask::List)) {
        check_name(name)?;
    }
    Ok((name.to_string(), ask))
}

/// The body: what came with the head, then the rest from the stream.
fn read_body(s: &mut Tls, mut rest: Vec<u8>, len: u64) -> Result<Vec<u8>> {
    let len = usize::try_from(len).map_err(|_| Error::out_of_range("a body too large"))?;
    rest.truncate(len);
    if rest.len() < len {
        let have = rest.len();
        rest.resize(len, 0);
        s.read_exact(&mut rest[have..])
            .map_err(|e| Error::io("read the body", e))?;
    }
    Ok(rest)
}

/// `GET`: the object whole (if at most [`MAX_BODY`]) or the range asked.
fn get(objects: &DirObjects, s: &mut Tls, head: &Head, name: &str) -> Result<()> {
    let not_found = |s: &mut Tls| {
        let e = Error::invalid(format!("no object {name}"));
        error_response(s, 404, &e).map_err(respond)
    };
    if let Some(range) = head.header("range") {
        let (from, to) = parse_range(range)?;
        let want = usize::try_from((to - from + 1).min(MAX_BODY)).unwrap_or(0);
        let Some((bytes, size)) = objects.get_range(name, from, want)? else {
            return not_found(s);
        };
        if from >= size && size > 0 {
            return Err(Error::out_of_range(format!(
                "{range}: {name} holds {size} bytes"
            )));
        }
        let last = (from + bytes.len() as u64).max(1) - 1;
        let cr = format!("bytes {from}-{last}/{size}");
        return write_response(
            s,
            206,
            "application/octet-stream",
            &[("Content-Range", cr)],
            &bytes,
        )
        .map_err(respond);
    }
    let got = match objects.get(name, MAX_BODY) {
        // Too large to send whole: 413, as PROTOCOL.md's limits table says
        // (416 is for a range outside the object).
        Err(e) if e.kind() == ErrorKind::Corrupt => {
            let e = Error::out_of_range(format!(
                "{name} is larger than {MAX_BODY} bytes: ask for ranges"
            ));
            return error_response(s, 413, &e).map_err(respond);
        }
        r => r?,
    };
    let Some((bytes, version)) = got else {
        return not_found(s);
    };
    write_response(
        s,
        200,
        "application/octet-stream",
        &[("ETag", format!("\"{version}\""))],
        &bytes,
    )
    .map_err(respond)
}

/// `PUT`: the object whole, under the condition of `If-None-Match: *` or
/// `If-Match`; 412 when it does not hold.
fn put(objects: &DirObjects, s: &mut Tls, head: &Head, name: &str, body: &[u8]) -> Result<()> {
    let mode = match (head.header("if-none-match"), head.header("if-match")) {
        (Some("*"), None) => PutMode::Create,
        (None, Some(v)) => PutMode::Update(UpdateVersion {
            e_tag: Some(v.trim().trim_matches('"').to_string()),
            version: None,
        }),
        (None, None) => PutMode::Overwrite,
        _ => {
            return Err(Error::invalid(
                "If-None-Match takes only *, and not with If-Match",
            ))
        }
    };
    match objects.put(name, body, &mode)? {
        Written::Done(v) => {
            let v = v.unwrap_or_default();
            write_response(
                s,
                200,
                "application/json",
                &[("ETag", format!("\"{v}\""))],
                serde_json::json!({"etag": v}).to_string().as_bytes(),
            )
            .map_err(respond)
        }
        Written::Lost => {
            let e = Error::new(
                ErrorKind::Fenced,
                format!("{name} changed since it was read"),
            );
            error_response(s, 412, &e).map_err(respond)
        }
    }
}

/// `bytes=a-b` (both given, `a <= b`).
fn parse_range(v: &str) -> Result<(u64, u64)> {
    v.strip_prefix("bytes=")
        .and_then(|r| r.split_once('-'))
        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
        .filter(|(a, b)| a <= b)
        .ok_or_else(|| Error::invalid(format!("Range {v:?}: bytes=first-last expected")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_queries_parse_and_hostile_names_are_refused() {
        let (n, a) = parse("/v1/vault/p/disks/ab/manifest").unwrap();
        assert_eq!(n, "p/disks/ab/manifest");
        assert!(matches!(a, Ask::Object));
        assert!(matches!(parse("/v1/vault?list").unwrap().1, Ask::List));
        assert!(matches!(
            parse("/v1/vault/x?append=5").unwrap().1,
            Ask::Append(5)
        ));
        assert!(matches!(
            parse("/v1/vault/x?commit=9").unwrap().1,
            Ask::Commit(9)
        ));
        for bad in [
            "/v1/vault/../x",
            "/v1/vault/a/../../etc/passwd",
            "/v1/vault/.uploads/x",
            "/v1/vault",
            "/v1/vault/x?append=-1",
            "/v1/vault/x?drop",
            "/v1/vaultx/y",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_range("bytes=3-9").unwrap(), (3, 9));
        for bad in ["bytes=9-3", "bytes=-3", "items=1-2", "bytes=1-"] {
            assert!(parse_range(bad).is_err(), "{bad}");
        }
    }
}
