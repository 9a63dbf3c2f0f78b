//! One connection: the TLS handshake within a deadline, the client's
//! identity against the allow list and its connection limit, then its
//! requests one after another; and how refusals are answered.

use super::routes::route;
use super::{log, Shared};
use crate::error::{Detail, Error, ErrorKind, Result};
use crate::net::http::{read_head_by, write_response, Read1};
use crate::net::sock::Sock;
use crate::net::tls::handshake_refusal;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A socket whose reads fail once `until` passed: a handshake trickled in
/// a byte at a time never outlasts it.
pub(super) struct Deadline<'a> {
    tcp: &'a mut Sock,
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
pub(super) struct Slot<'a> {
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

/// A connection after its handshake.
pub(super) type Tls = rustls::StreamOwned<rustls::ServerConnection, Sock>;

/// Serves one connection from its handshake to its end.
pub(super) fn connection(shared: &Shared, tcp: TcpStream, peer: SocketAddr) -> Result<()> {
    let io = |e| Error::io("connection", e);
    let conf = shared.conf();
    tcp.set_nonblocking(false).map_err(io)?;
    // Answers go out whole at once: without this, a small answer's second
    // segment waits for the client's delayed acknowledgement (Nagle).
    tcp.set_nodelay(true).map_err(io)?;
    tcp.set_read_timeout(Some(conf.limits.read_timeout))
        .map_err(io)?;
    tcp.set_write_timeout(Some(conf.limits.read_timeout))
        .map_err(io)?;
    let mut conn = rustls::ServerConnection::new(conf.tls.clone())
        .map_err(|e| Error::invalid(format!("TLS: {e}")))?;
    let mut tcp = Sock::new(tcp);
    // The whole handshake within the read timeout, however slowly its
    // bytes trickle in.
    let mut timed = Deadline {
        tcp: &mut tcp,
        until: std::time::Instant::now() + conf.limits.read_timeout,
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
    let identity = match cert.map(|c| conf.allow.identify(&c)) {
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
        if *n >= conf.limits.per_identity {
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
            .set_read_timeout(Some(conf.limits.idle_timeout))
            .map_err(io)?;
        let head = match read_head_by(
            &mut s,
            conf.limits.head_bytes,
            true,
            Some(conf.limits.read_timeout),
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
            .set_read_timeout(Some(conf.limits.read_timeout))
            .map_err(io)?;
        // Bodies are framed by Content-Length only: a body in another
        // framing is refused, never read as something else (and a request
        // with both cannot smuggle a second one past the first).
        if let Some(te) = head.0.header("transfer-encoding") {
            let e = Error::invalid(format!(
                "Transfer-Encoding {te:?} is not implemented: send a Content-Length"
            ));
            shared.metrics.refused("http 501");
            let _ = error_response(&mut s, 501, &e);
            linger(&mut s);
            return Ok(());
        }
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
pub(super) fn linger(s: &mut Tls) {
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
pub(super) fn status_of(e: &Error) -> u16 {
    match (e.kind(), e.detail()) {
        (_, Some(Detail::SequenceGap { .. })) => 412,
        (_, Some(_)) | (ErrorKind::Misuse, _) => 409,
        (ErrorKind::NoSpace, _) => 507,
        (ErrorKind::Corrupt | ErrorKind::InvalidArgument | ErrorKind::Mismatch, _) => 400,
        (ErrorKind::OutOfRange, _) => 413,
        _ => 500,
    }
}

/// An error's JSON answer (docs/PROTOCOL.md, "Errors").
pub(super) fn error_response(s: &mut Tls, status: u16, e: &Error) -> std::io::Result<()> {
    error_response_with(s, status, e, &[])
}

/// An error's JSON answer with extra headers.
pub(super) fn error_response_with(
    s: &mut Tls,
    status: u16,
    e: &Error,
    extra: &[(&str, String)],
) -> std::io::Result<()> {
    let body = serde_json::json!({"error": {
        "kind": e.kind(),
        "detail": e.detail(),
        // What was wrong, not where it lives on the server.
        "message": e.to_peer_string(),
    }});
    // Full storage passes with time (retention, an operator): the
    // client is told when to try again.
    let mut headers = extra.to_vec();
    if status == 507 && !extra.iter().any(|(h, _)| *h == "Retry-After") {
        headers.push(("Retry-After", "60".into()));
    }
    write_response(
        s,
        status,
        "application/json",
        &headers,
        body.to_string().as_bytes(),
    )
}

/// A 200 answer with a JSON body.
pub(super) fn json_response(s: &mut Tls, body: &serde_json::Value) -> std::io::Result<()> {
    json_response_status(s, 200, body)
}

/// An answer of `status` with a JSON body.
pub(super) fn json_response_status(
    s: &mut Tls,
    status: u16,
    body: &serde_json::Value,
) -> std::io::Result<()> {
    write_response(
        s,
        status,
        "application/json",
        &[],
        body.to_string().as_bytes(),
    )
}
