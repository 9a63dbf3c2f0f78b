//! Just enough HTTP/1.1 for docs/PROTOCOL.md, on any byte stream: a
//! request or response head read with a size limit (httparse), bodies
//! framed by `Content-Length` only (no chunked encoding: a log's length is
//! known before it is sent), and responses written whole.

use crate::error::{Error, ErrorKind, Result};
use std::io::{Read, Write};

/// The most headers a head may carry.
const MAX_HEADERS: usize = 32;

/// A request or response head: its first line's parts and its headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The method (requests).
    pub method: String,
    /// The path (requests).
    pub path: String,
    /// The status code (responses).
    pub status: u16,
    /// The headers, names lowercase, in order.
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// The value of header `name` (lowercase), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// `Content-Length`, 0 when absent; malformed is an error.
    pub fn content_length(&self) -> Result<u64> {
        match self.header("content-length") {
            None => Ok(0),
            Some(v) => v
                .trim()
                .parse()
                .map_err(|_| Error::invalid(format!("Content-Length {v:?} is not a number"))),
        }
    }
}

/// What reading a head gave.
#[derive(Debug)]
pub enum Read1 {
    /// A head, and the body bytes read past it.
    Head(Head, Vec<u8>),
    /// The peer closed the connection before sending a byte.
    Closed,
}

/// Reads one head (a request when `request`, else a response) of at most
/// `limit` bytes. Bytes read past the head's end are returned for the
/// body. A head over the limit is `OutOfRange`; a malformed one
/// `InvalidArgument`.
pub fn read_head(s: &mut impl Read, limit: usize, request: bool) -> Result<Read1> {
    read_head_by(s, limit, request, None)
}

/// [`read_head`], refusing a head not complete `within` its first byte (a
/// client trickling a byte at a time never times out a single read).
pub fn read_head_by(
    s: &mut impl Read,
    limit: usize,
    request: bool,
    within: Option<std::time::Duration>,
) -> Result<Read1> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let mut deadline = None;
    loop {
        if deadline.is_some_and(|d| std::time::Instant::now() > d) {
            return Err(Error::new(
                ErrorKind::Io,
                "a request head too slow to arrive",
            ));
        }
        let n = s
            .read(&mut chunk)
            .map_err(|e| Error::io("read a request head", e))?;
        if n == 0 {
            if buf.is_empty() {
                return Ok(Read1::Closed);
            }
            return Err(Error::invalid("the connection closed inside a head"));
        }
        if deadline.is_none() {
            deadline = within.map(|w| std::time::Instant::now() + w);
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let parsed: std::result::Result<Option<(usize, String, String, u16)>, httparse::Error> =
            if request {
                let mut r = httparse::Request::new(&mut headers);
                r.parse(&buf).map(|st| match st {
                    httparse::Status::Complete(len) => Some((
                        len,
                        r.method.unwrap_or("").to_string(),
                        r.path.unwrap_or("").to_string(),
                        0,
                    )),
                    httparse::Status::Partial => None,
                })
            } else {
                let mut r = httparse::Response::new(&mut headers);
                r.parse(&buf).map(|st| match st {
                    httparse::Status::Complete(len) => {
                        Some((len, String::new(), String::new(), r.code.unwrap_or(0)))
                    }
                    httparse::Status::Partial => None,
                })
            };
        match parsed {
            Ok(Some((len, method, path, status))) => {
                let headers = headers
                    .iter()
                    .take_while(|h| !h.name.is_empty())
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                let rest = buf[len..].to_vec();
                return Ok(Read1::Head(
                    Head {
                        method,
                        path,
                        status,
                        headers,
                    },
                    rest,
                ));
            }
            Ok(None) if buf.len() > limit => {
                return Err(Error::new(
                    ErrorKind::OutOfRange,
                    format!("a head longer than {limit} bytes"),
                ))
            }
            Ok(None) => {}
            Err(e) => return Err(Error::invalid(format!("malformed HTTP head: {e}"))),
        }
    }
}

/// The reason phrase of the status codes this protocol uses.
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        416 => "Range Not Satisfiable",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        507 => "Insufficient Storage",
        _ => "",
    }
}

/// Writes a whole response: status, `Content-Type`, `Content-Length`,
/// `extra` headers, the body.
pub fn write_response(
    s: &mut impl Write,
    status: u16,
    content_type: &str,
    extra: &[(&str, String)],
    body: &[u8],
) -> std::io::Result<()> {
    let head = response_head(status, content_type, extra, body.len() as u64);
    if body.len() <= 64 << 10 {
        // Head and body in one write, so a small answer leaves in one TLS
        // record and one segment.
        let mut all = head.into_bytes();
        all.extend_from_slice(body);
        s.write_all(&all)?;
    } else {
        s.write_all(head.as_bytes())?;
        s.write_all(body)?;
    }
    s.flush()
}

/// The head of a response whose body of `len` bytes follows (written by
/// the caller as it is produced: a body too large to hold).
pub fn response_head(
    status: u16,
    content_type: &str,
    extra: &[(&str, String)],
    len: u64,
) -> String {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\n",
        reason(status),
    );
    for (n, v) in extra {
        head.push_str(n);
        head.push_str(": ");
        head.push_str(v);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    head
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse_with_limits() {
        let req = b"PUT /v1/disks/ab/logs/3 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
        let Read1::Head(h, rest) = read_head(&mut &req[..], 1024, true).unwrap() else {
            panic!("no head")
        };
        assert_eq!(
            (h.method.as_str(), h.path.as_str()),
            ("PUT", "/v1/disks/ab/logs/3")
        );
        assert_eq!(h.content_length().unwrap(), 5);
        assert_eq!(rest, b"hello");
        assert!(matches!(
            read_head(&mut &b""[..], 1024, true),
            Ok(Read1::Closed)
        ));
        let long = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(5000));
        let e = read_head(&mut long.as_bytes(), 1024, true).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::OutOfRange);
        let e = read_head(&mut &b"\x16\x03\x01garbage\r\n\r\n"[..], 1024, true).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        let bad_len = b"PUT / HTTP/1.1\r\nContent-Length: 9223372036854775808000\r\n\r\n";
        let Read1::Head(h, _) = read_head(&mut &bad_len[..], 1024, true).unwrap() else {
            panic!("no head")
        };
        assert!(h.content_length().is_err());
    }
}
