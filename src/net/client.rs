//! The client side of docs/PROTOCOL.md: one TLS connection to a replica
//! server, requests sent with their body streamed from any reader, and
//! responses read with a size limit. What the shipper is built on.

use super::http::{read_head, Head, Read1};
use super::sock::Sock;
use super::tls::handshake_refusal;
use crate::error::{Error, ErrorKind, Result};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// The largest response body read: JSON answers, and a block digest list
/// (32 bytes a block: 1 GiB is a 128 TiB disk of 4 KiB blocks).
const MAX_RESPONSE: u64 = 1 << 30;

/// A response: status, headers, body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The head (status and headers).
    pub head: Head,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// The body as JSON.
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
            .map_err(|e| Error::invalid(format!("response is not JSON: {e}")))
    }
}

/// A connection to a replica server.
pub struct Client {
    s: rustls::StreamOwned<rustls::ClientConnection, Sock>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("peer", &self.s.sock.peer_addr().ok())
            .finish()
    }
}

impl Client {
    /// Connects to `addr` and completes the handshake, checking the
    /// server's certificate is valid for `server_name`. Every read and
    /// write waits at most `timeout`. A refused handshake says why.
    pub fn connect(
        addr: SocketAddr,
        server_name: &str,
        config: Arc<rustls::ClientConfig>,
        timeout: Duration,
    ) -> Result<Client> {
        let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
            .map_err(|_| Error::invalid(format!("{server_name:?} is not a server name")))?;
        let mut tcp = Sock::new(
            TcpStream::connect_timeout(&addr, timeout)
                .map_err(|e| Error::io(format!("connect to {addr}"), e))?,
        );
        let io = |e| Error::io("socket", e);
        tcp.set_read_timeout(Some(timeout)).map_err(io)?;
        tcp.set_write_timeout(Some(timeout)).map_err(io)?;
        tcp.set_nodelay(true).map_err(io)?;
        let mut conn = rustls::ClientConnection::new(config, name)
            .map_err(|e| Error::invalid(format!("TLS: {e}")))?;
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp).map_err(|e| {
                let why = e
                    .get_ref()
                    .and_then(|i| i.downcast_ref::<rustls::Error>())
                    .map_or_else(|| e.to_string(), handshake_refusal);
                Error::new(ErrorKind::Io, format!("TLS handshake with {addr}: {why}"))
            })?;
        }
        Ok(Client {
            s: rustls::StreamOwned::new(conn, tcp),
        })
    }

    /// Sends a request with `len` bytes of body from `body` and reads the
    /// response. A server that closes the connection before answering (a
    /// refusal after its handshake, a cut) is an I/O error.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: &mut dyn Read,
        len: u64,
    ) -> Result<Response> {
        let io = |what: &'static str| move |e| Error::io(what, e);
        let mut head =
            format!("{method} {path} HTTP/1.1\r\nHost: blockrep\r\nContent-Length: {len}\r\n");
        for (n, v) in headers {
            head.push_str(n);
            head.push_str(": ");
            head.push_str(v);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        self.s
            .write_all(head.as_bytes())
            .map_err(io("send a request"))?;
        let sent = self.send_body(body, len);
        // A server refusing the request (a wrong offset, too large) answers
        // and closes without reading the body: its answer is the result.
        let answer = read_head(&mut self.s, 16 << 10, false);
        let (head, rest) = match (sent, answer) {
            (_, Ok(Read1::Head(h, rest))) => (h, rest),
            (Err(e), _) | (Ok(()), Err(e)) => return Err(e),
            (Ok(()), Ok(Read1::Closed)) => {
                return Err(Error::new(
                    ErrorKind::Io,
                    "the server closed the connection without an answer",
                ))
            }
        };
        Ok(Response {
            body: self.read_body(&head, rest)?,
            head,
        })
    }

    /// Streams `len` bytes of `body`.
    fn send_body(&mut self, body: &mut dyn Read, len: u64) -> Result<()> {
        let io = |what: &'static str| move |e| Error::io(what, e);
        let mut left = len;
        let mut buf = vec![0u8; 256 << 10];
        while left > 0 {
            let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
            let n = body.read(&mut buf[..want]).map_err(io("read the body"))?;
            if n == 0 {
                return Err(Error::invalid("the body ended before its length"));
            }
            self.s.write_all(&buf[..n]).map_err(io("send the body"))?;
            left -= n as u64;
        }
        self.s.flush().map_err(io("send the body"))
    }

    /// A response's body: `rest` (read with the head) and what follows, to
    /// its `Content-Length`.
    fn read_body(&mut self, head: &Head, rest: Vec<u8>) -> Result<Vec<u8>> {
        let io = |what: &'static str| move |e| Error::io(what, e);
        let n = head.content_length()?;
        if n > MAX_RESPONSE {
            return Err(Error::new(
                ErrorKind::OutOfRange,
                format!("a response of {n} bytes"),
            ));
        }
        let mut body = rest;
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        if body.len() < n {
            let mut more = vec![0u8; n - body.len()];
            self.s
                .read_exact(&mut more)
                .map_err(io("read a response"))?;
            body.extend_from_slice(&more);
        }
        body.truncate(n);
        Ok(body)
    }
}
