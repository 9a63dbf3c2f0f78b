//! The NBD client: the fixed newstyle handshake (structured replies, meta
//! contexts, `NBD_OPT_GO` with `NBD_OPT_EXPORT_NAME` as the fallback),
//! then reads and block status, one request in flight.
//!
//! The server is not trusted: every length it sends is bounded before
//! anything is allocated, every chunk must fall inside its request and a
//! read must be covered exactly once. After a protocol error the
//! connection is closed for good (its byte stream can no longer be
//! trusted) and every later call says so.

use super::wire::{self, Be, OptionReply, ReplyHeader, Request, StatusExtent};
use crate::{Error, ErrorKind, Result};
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

/// The longest option reply or non-data chunk accepted (error messages,
/// export information).
const MAX_SMALL_PAYLOAD: u32 = 64 << 10;
/// The longest block status chunk accepted: a million extents.
const MAX_STATUS_PAYLOAD: u32 = 4 + (8 << 20);
/// Read requests in flight at once ([`NbdClient::read_many`]).
pub const WINDOW: usize = 64;
/// The request size used when the server names no maximum (the protocol
/// says 32 MiB is safe).
const DEFAULT_MAX_REQUEST: u32 = 32 << 20;
/// The longest block status request: 4 GiB less one 64 KiB step, so it
/// stays aligned for servers that want it.
const MAX_STATUS_REQUEST: u32 = u32::MAX - 0xffff;

/// The byte stream to a server: a Unix or TCP socket, a TLS session, or
/// anything else that reads and writes (a fuzzer's bytes).
pub trait Transport: Read + Write + Send {}
impl<T: Read + Write + Send> Transport for T {}

/// What to ask of the server.
#[derive(Debug, Clone)]
pub struct NbdOptions {
    /// The export's name (`""` is the default export).
    pub export: String,
    /// Metadata contexts to select, such as `base:allocation` or
    /// `qemu:dirty-bitmap:NAME`; each must be granted or the connection
    /// fails, naming it.
    pub contexts: Vec<String>,
    /// Read and write timeout of the socket (`None`: none).
    pub timeout: Option<Duration>,
    /// TLS (`NBD_OPT_STARTTLS`, with the `net` feature): the client
    /// configuration (its roots verify the server's certificate; its
    /// certificate is presented when the server asks, as `qemu-nbd
    /// --tls-creds` with `verify-peer=on` does) and the server's name.
    #[cfg(feature = "net")]
    pub tls: Option<(std::sync::Arc<rustls::ClientConfig>, String)>,
}

impl Default for NbdOptions {
    fn default() -> Self {
        NbdOptions {
            export: String::new(),
            contexts: Vec::new(),
            timeout: Some(Duration::from_secs(60)),
            #[cfg(feature = "net")]
            tls: None,
        }
    }
}

/// What the server said about the export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    /// Size in bytes.
    pub size: u64,
    /// Transmission flags (`wire::TFLAG_*`).
    pub flags: u16,
    /// The minimum block size (1 when the server names none).
    pub min_block: u32,
    /// The largest request the server takes.
    pub max_request: u32,
    /// Structured replies were negotiated.
    pub structured: bool,
    /// The metadata contexts granted, with the server's id of each.
    pub contexts: Vec<(String, u32)>,
}

/// One extent of a block status map: `len` bytes from `offset` with the
/// context's `flags`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NbdExtent {
    /// Byte offset.
    pub offset: u64,
    /// Byte length.
    pub len: u64,
    /// The context's flags for these bytes.
    pub flags: u32,
}

/// `base:allocation`: the bytes are a hole (unallocated).
pub const STATE_HOLE: u32 = 1 << 0;
/// `base:allocation`: the bytes read as zeros.
pub const STATE_ZERO: u32 = 1 << 1;
/// `qemu:dirty-bitmap:NAME`: the bytes are dirty in the bitmap.
pub const STATE_DIRTY: u32 = 1 << 0;

/// A connection to one export of an NBD server.
pub struct NbdClient {
    conn: Option<Box<dyn Transport>>,
    info: ExportInfo,
    cookie: u64,
}

fn protocol(msg: impl Into<String>) -> Error {
    Error::corrupt(format!("NBD server broke the protocol: {}", msg.into()))
}

fn server_error(what: &str, errno: u32, message: &str) -> Error {
    let message = if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    };
    Error::new(
        ErrorKind::Io,
        format!(
            "NBD {what} failed with {} ({errno}){message}",
            wire::errno_name(errno)
        ),
    )
}

/// Reads exactly `buf`, naming `what` when the stream fails or ends.
fn read_exact(conn: &mut dyn Transport, buf: &mut [u8], what: &str) -> Result<()> {
    conn.read_exact(buf)
        .map_err(|e| Error::io(format!("NBD: read the {what}"), e))
}

fn read_vec(conn: &mut dyn Transport, len: u32, max: u32, what: &str) -> Result<Vec<u8>> {
    if len > max {
        return Err(protocol(format!("{what} of {len} bytes (at most {max})")));
    }
    let mut v = vec![0u8; len as usize];
    read_exact(conn, &mut v, what)?;
    Ok(v)
}

impl NbdClient {
    /// Connects to a server's Unix socket and negotiates.
    pub fn connect_unix(path: &Path, options: &NbdOptions) -> Result<NbdClient> {
        let s = std::os::unix::net::UnixStream::connect(path)
            .map_err(|e| Error::io("NBD: connect", e).with_path(path))?;
        let io = |e| Error::io("NBD: set the socket's timeouts", e);
        s.set_read_timeout(options.timeout).map_err(io)?;
        s.set_write_timeout(options.timeout).map_err(io)?;
        Self::handshake(Box::new(s), options)
    }

    /// Connects to a server's TCP address and negotiates.
    pub fn connect_tcp(addr: std::net::SocketAddr, options: &NbdOptions) -> Result<NbdClient> {
        let s = match options.timeout {
            Some(t) => std::net::TcpStream::connect_timeout(&addr, t),
            None => std::net::TcpStream::connect(addr),
        }
        .map_err(|e| Error::io(format!("NBD: connect to {addr}"), e))?;
        let io = |e| Error::io("NBD: set up the socket", e);
        s.set_nodelay(true).map_err(io)?;
        s.set_read_timeout(options.timeout).map_err(io)?;
        s.set_write_timeout(options.timeout).map_err(io)?;
        Self::handshake(Box::new(s), options)
    }

    /// Negotiates over a connected stream: fixed newstyle, structured
    /// replies, the contexts asked for, then the export.
    pub fn handshake(mut conn: Box<dyn Transport>, options: &NbdOptions) -> Result<NbdClient> {
        let mut hello = [0u8; 18];
        read_exact(&mut *conn, &mut hello, "server's greeting")?;
        let mut r = Be::new(&hello, "greeting");
        if r.u64()? != wire::NBDMAGIC {
            return Err(protocol(
                "the greeting is not NBDMAGIC (not an NBD server?)",
            ));
        }
        if r.u64()? != wire::IHAVEOPT {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "NBD: the server speaks the oldstyle protocol; newstyle is required",
            ));
        }
        let hflags = r.u16()?;
        if hflags & wire::FLAG_FIXED_NEWSTYLE == 0 {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "NBD: the server does not offer fixed newstyle negotiation",
            ));
        }
        let no_zeroes = hflags & wire::FLAG_NO_ZEROES != 0;
        let cflags =
            wire::CLIENT_FIXED_NEWSTYLE | if no_zeroes { wire::CLIENT_NO_ZEROES } else { 0 };
        write_all(&mut *conn, &cflags.to_be_bytes())?;
        #[cfg(feature = "net")]
        if let Some((config, name)) = &options.tls {
            conn = starttls(conn, config.clone(), name)?;
        }

        let structured = match simple_option(&mut *conn, wire::OPT_STRUCTURED_REPLY, &[])? {
            Ok(()) => true,
            Err(_) if options.contexts.is_empty() => false,
            Err(why) => {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    format!(
                    "NBD: the server refused structured replies ({why}), which block status needs"
                ),
                ))
            }
        };
        let contexts = if options.contexts.is_empty() {
            Vec::new()
        } else {
            set_meta_contexts(&mut *conn, options)?
        };
        let mut info = match go(&mut *conn, &options.export)? {
            Some(info) => info,
            None => export_name(&mut *conn, &options.export, no_zeroes)?,
        };
        info.structured = structured;
        info.contexts = contexts;
        Ok(NbdClient {
            conn: Some(conn),
            info,
            cookie: 0,
        })
    }

    /// What the server said about the export.
    pub fn info(&self) -> &ExportInfo {
        &self.info
    }

    /// The export's size in bytes.
    pub fn size(&self) -> u64 {
        self.info.size
    }

    fn conn(&mut self) -> Result<&mut dyn Transport> {
        match self.conn.as_deref_mut() {
            Some(c) => Ok(c),
            None => Err(Error::new(
                ErrorKind::Misuse,
                "NBD: the connection was closed after an earlier failure",
            )),
        }
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        if offset
            .checked_add(len)
            .is_none_or(|end| end > self.info.size)
        {
            return Err(Error::new(
                ErrorKind::OutOfRange,
                format!(
                    "NBD: {len} bytes at {offset} pass the export's end ({})",
                    self.info.size
                ),
            ));
        }
        Ok(())
    }

    /// Runs one exchange: its outer error (transport or protocol) drops
    /// the connection; its inner one is the server's answer to a request
    /// that went well on the wire, after which the connection serves on.
    fn guarded<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<Result<T>>) -> Result<T> {
        f(self).unwrap_or_else(|e| {
            self.conn = None;
            Err(e)
        })
    }

    fn send(&mut self, command: u16, offset: u64, len: u32) -> Result<u64> {
        self.cookie += 1;
        let req = Request {
            flags: 0,
            command,
            cookie: self.cookie,
            offset,
            len,
        };
        write_all(self.conn()?, &req.encode())?;
        Ok(self.cookie)
    }

    /// Reads `buf.len()` bytes at `offset`, in requests no larger than
    /// the server takes, several in flight.
    pub fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let step = self.info.max_request as usize;
        let mut reads: Vec<(u64, &mut [u8])> = buf
            .chunks_mut(step)
            .enumerate()
            .map(|(i, part)| (offset + (i * step) as u64, part))
            .collect();
        self.read_many(&mut reads)
    }

    /// Reads every `(offset, buffer)` given, up to [`WINDOW`] requests in
    /// flight (the server may answer them in any order): what a cycle
    /// does with many small dirty extents, at the cost of one round trip
    /// per window instead of one per extent. Each buffer must be at most
    /// [`ExportInfo::max_request`]; [`read`](Self::read) splits for you.
    pub fn read_many(&mut self, reads: &mut [(u64, &mut [u8])]) -> Result<()> {
        for (offset, buf) in reads.iter() {
            self.check_range(*offset, buf.len() as u64)?;
            if buf.len() > self.info.max_request as usize {
                return Err(Error::invalid(format!(
                    "NBD: a read of {} bytes (the server takes at most {})",
                    buf.len(),
                    self.info.max_request
                )));
            }
        }
        for window in reads.chunks_mut(WINDOW) {
            self.guarded(|c| c.read_window(window))?;
        }
        Ok(())
    }

    fn read_window(&mut self, reads: &mut [(u64, &mut [u8])]) -> Result<Result<()>> {
        let first = self.cookie + 1;
        for (offset, buf) in reads.iter() {
            self.send(wire::CMD_READ, *offset, buf.len() as u32)?;
        }
        // Per request: the ranges its chunks covered, whether its reply
        // is complete, the server's error.
        let mut covered: Vec<Vec<(u64, u64)>> = vec![Vec::new(); reads.len()];
        let mut done = vec![false; reads.len()];
        let mut failure = None;
        let mut remaining = reads.len();
        while remaining > 0 {
            let conn = self.conn()?;
            let header = reply_header(conn)?;
            let cookie = match header {
                ReplyHeader::Simple { cookie, .. } | ReplyHeader::Chunk { cookie, .. } => cookie,
            };
            let i = cookie
                .checked_sub(first)
                .map(|i| i as usize)
                .filter(|&i| i < reads.len() && !done[i])
                .ok_or_else(|| protocol(format!("a reply for request {cookie}, not in flight")))?;
            let (offset, buf) = &mut reads[i];
            let offset = *offset;
            let finished = match header {
                ReplyHeader::Simple { error: 0, .. } => {
                    read_exact(conn, buf, "read's data")?;
                    covered[i].push((offset, buf.len() as u64));
                    true
                }
                ReplyHeader::Simple { error, .. } => {
                    failure.get_or_insert((offset, error, String::new()));
                    true
                }
                ReplyHeader::Chunk {
                    flags, kind, len, ..
                } => {
                    match kind {
                        wire::REPLY_TYPE_OFFSET_DATA => {
                            if len < 8 || len - 8 > buf.len() as u32 {
                                return Err(protocol(format!(
                                    "a data chunk of {len} bytes for a read of {}",
                                    buf.len()
                                )));
                            }
                            let mut at = [0u8; 8];
                            read_exact(conn, &mut at, "data chunk's offset")?;
                            let at = u64::from_be_bytes(at);
                            let n = u64::from(len - 8);
                            let start = chunk_start(at, n, offset, buf.len())?;
                            read_exact(conn, &mut buf[start..start + n as usize], "read's data")?;
                            covered[i].push((at, n));
                        }
                        wire::REPLY_TYPE_OFFSET_HOLE => {
                            let p = read_vec(conn, len, 12, "hole chunk")?;
                            let mut r = Be::new(&p, "hole chunk");
                            let (at, n) = (r.u64()?, u64::from(r.u32()?));
                            let start = chunk_start(at, n, offset, buf.len())?;
                            buf[start..start + n as usize].fill(0);
                            covered[i].push((at, n));
                        }
                        wire::REPLY_TYPE_NONE if len == 0 => {}
                        k if k & wire::REPLY_TYPE_FLAG_ERROR != 0 => {
                            let p = read_vec(conn, len, MAX_SMALL_PAYLOAD, "error chunk")?;
                            let (errno, message, _) = wire::decode_error_chunk(k, &p)?;
                            failure.get_or_insert((offset, errno, message));
                        }
                        k => return Err(protocol(format!("a reply chunk of type {k} to a read"))),
                    }
                    flags & wire::REPLY_FLAG_DONE != 0
                }
            };
            if finished {
                done[i] = true;
                remaining -= 1;
            }
        }
        if let Some((offset, errno, message)) = failure {
            return Ok(Err(server_error(
                &format!("read at {offset}"),
                errno,
                &message,
            )));
        }
        // Each read exactly covered: chunks inside the request (checked
        // above) that do not overlap and add up to it.
        for ((offset, buf), covered) in reads.iter().zip(&mut covered) {
            covered.sort_unstable();
            let (offset, end) = (*offset, *offset + buf.len() as u64);
            let mut next = offset;
            for &(at, n) in covered.iter() {
                if at != next {
                    return Err(protocol(format!(
                        "the chunks of a read at {offset} leave a gap or overlap at {at}"
                    )));
                }
                next = at + n;
            }
            if next != end {
                return Err(protocol(format!(
                    "the chunks of a read at {offset} end at {next}, not {end}"
                )));
            }
        }
        Ok(Ok(()))
    }

    /// The extents of `context` from `offset`: at least one, covering at
    /// most `len` bytes (the server may answer for less; ask again from
    /// where it stopped), never past the export's end.
    pub fn block_status(&mut self, context: &str, offset: u64, len: u64) -> Result<Vec<NbdExtent>> {
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let id = self
            .info
            .contexts
            .iter()
            .find(|(name, _)| name == context)
            .map(|&(_, id)| id)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Misuse,
                    format!("NBD: the context {context:?} was not negotiated"),
                )
            })?;
        let len = len.min(u64::from(MAX_STATUS_REQUEST)) as u32;
        self.guarded(|c| c.status_one(id, offset, len))
    }

    fn status_one(&mut self, id: u32, offset: u64, len: u32) -> Result<Result<Vec<NbdExtent>>> {
        let cookie = self.send(wire::CMD_BLOCK_STATUS, offset, len)?;
        let mut found: Option<Vec<StatusExtent>> = None;
        let mut failure = None;
        loop {
            let conn = self.conn()?;
            let header = reply_header(conn)?;
            let got = match header {
                ReplyHeader::Simple { cookie, .. } | ReplyHeader::Chunk { cookie, .. } => cookie,
            };
            if got != cookie {
                return Err(protocol(format!(
                    "a reply for request {got} while {cookie} is the only one in flight"
                )));
            }
            match header {
                ReplyHeader::Simple { error: 0, .. } => {
                    return Err(protocol("a simple reply without data to block status"));
                }
                ReplyHeader::Simple { error, .. } => {
                    return Ok(Err(server_error(
                        &format!("block status at {offset}"),
                        error,
                        "",
                    )));
                }
                ReplyHeader::Chunk {
                    flags, kind, len, ..
                } => {
                    match kind {
                        wire::REPLY_TYPE_BLOCK_STATUS => {
                            let p = read_vec(conn, len, MAX_STATUS_PAYLOAD, "block status chunk")?;
                            let (got, extents) = wire::decode_block_status(&p)?;
                            if got == id {
                                if found.is_some() {
                                    return Err(protocol(
                                        "two block status chunks for one context",
                                    ));
                                }
                                found = Some(extents);
                            }
                        }
                        wire::REPLY_TYPE_NONE if len == 0 => {}
                        k if k & wire::REPLY_TYPE_FLAG_ERROR != 0 => {
                            let p = read_vec(conn, len, MAX_SMALL_PAYLOAD, "error chunk")?;
                            let (errno, message, _) = wire::decode_error_chunk(k, &p)?;
                            failure.get_or_insert((errno, message));
                        }
                        k => {
                            return Err(protocol(format!(
                                "a reply chunk of type {k} to block status"
                            )))
                        }
                    }
                    if flags & wire::REPLY_FLAG_DONE != 0 {
                        break;
                    }
                }
            }
        }
        if let Some((errno, message)) = failure {
            return Ok(Err(server_error(
                &format!("block status at {offset}"),
                errno,
                &message,
            )));
        }
        let extents = found.ok_or_else(|| protocol("no extents for the context asked"))?;
        // The last extent may run past the request; it is cut at the
        // request's end, and nothing past the export is believed.
        let end = (offset + u64::from(len)).min(self.info.size);
        let mut out = Vec::with_capacity(extents.len());
        let mut at = offset;
        for e in extents {
            if at >= end {
                break;
            }
            let n = u64::from(e.len).min(end - at);
            out.push(NbdExtent {
                offset: at,
                len: n,
                flags: e.flags,
            });
            at += n;
        }
        Ok(Ok(out))
    }

    /// The whole map of `context` over `len` bytes from `offset`, asking
    /// as often as the server needs, adjacent extents with the same flags
    /// merged.
    pub fn map(&mut self, context: &str, offset: u64, len: u64) -> Result<Vec<NbdExtent>> {
        self.check_range(offset, len)?;
        let mut out: Vec<NbdExtent> = Vec::new();
        let (mut at, end) = (offset, offset + len);
        while at < end {
            for e in self.block_status(context, at, end - at)? {
                match out.last_mut() {
                    Some(l) if l.flags == e.flags && l.offset + l.len == e.offset => l.len += e.len,
                    _ => out.push(e),
                }
                at = e.offset + e.len;
            }
        }
        Ok(out)
    }

    /// Tells the server the client is leaving and closes the connection.
    pub fn disconnect(mut self) {
        if let Ok(()) = self.send(wire::CMD_DISC, 0, 0).map(drop) {
            if let Ok(c) = self.conn() {
                let _ = c.flush();
            }
        }
        self.conn = None;
    }
}

/// Where a chunk of `n` bytes at `at` starts in the buffer of a read of
/// `len` bytes at `offset`; an error if it is not inside.
fn chunk_start(at: u64, n: u64, offset: u64, len: usize) -> Result<usize> {
    let inside = at >= offset && at.checked_add(n).is_some_and(|e| e <= offset + len as u64);
    if !inside || n == 0 {
        return Err(protocol(format!(
            "a chunk of {n} bytes at {at} outside the read of {len} at {offset}"
        )));
    }
    Ok((at - offset) as usize)
}

fn write_all(conn: &mut dyn Transport, bytes: &[u8]) -> Result<()> {
    conn.write_all(bytes)
        .and_then(|()| conn.flush())
        .map_err(|e| Error::io("NBD: send", e))
}

/// Reads a reply header.
fn reply_header(conn: &mut dyn Transport) -> Result<ReplyHeader> {
    let mut first = [0u8; wire::SIMPLE_REPLY_LEN];
    read_exact(conn, &mut first, "reply")?;
    ReplyHeader::decode(&first, || {
        let mut more = [0u8; 4];
        read_exact(conn, &mut more, "reply")?;
        Ok(more)
    })
}

/// `NBD_OPT_STARTTLS`, then the TLS handshake on the same stream; the
/// rest of the negotiation and every transmission go over TLS. A refused
/// certificate says why (unknown CA, expired, another name).
#[cfg(feature = "net")]
fn starttls(
    mut conn: Box<dyn Transport>,
    config: std::sync::Arc<rustls::ClientConfig>,
    name: &str,
) -> Result<Box<dyn Transport>> {
    if let Err(why) = simple_option(&mut *conn, wire::OPT_STARTTLS, &[])? {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!("NBD: the server refused TLS ({why})"),
        ));
    }
    let server = rustls::pki_types::ServerName::try_from(name.to_string())
        .map_err(|_| Error::invalid(format!("NBD: {name:?} is not a server name")))?;
    let mut tls = rustls::ClientConnection::new(config, server)
        .map_err(|e| Error::invalid(format!("NBD: TLS: {e}")))?;
    while tls.is_handshaking() {
        tls.complete_io(&mut conn).map_err(|e| {
            let why = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .map_or_else(|| e.to_string(), crate::net::handshake_refusal);
            Error::new(
                ErrorKind::Io,
                format!("NBD: TLS handshake with {name}: {why}"),
            )
        })?;
    }
    Ok(Box::new(rustls::StreamOwned::new(tls, conn)))
}

/// Reads one option reply for `option`, its data bounded.
fn option_reply(conn: &mut dyn Transport, option: u32) -> Result<(OptionReply, Vec<u8>)> {
    let mut h = [0u8; wire::OPTION_REPLY_LEN];
    read_exact(conn, &mut h, "option reply")?;
    let h = OptionReply::decode(&h)?;
    if h.option != option {
        return Err(protocol(format!(
            "a reply to {} while {} was asked",
            wire::option_name(h.option),
            wire::option_name(option)
        )));
    }
    let data = read_vec(conn, h.len, MAX_SMALL_PAYLOAD, "option reply")?;
    Ok((h, data))
}

/// What an option error reply says: its name and the server's message.
fn refusal(h: &OptionReply, data: &[u8]) -> String {
    let msg = String::from_utf8_lossy(data);
    if msg.trim().is_empty() {
        wire::rep_error_name(h.reply).to_string()
    } else {
        format!("{}: {}", wire::rep_error_name(h.reply), msg.trim())
    }
}

/// Sends an option answered by one ACK; `Ok(Err(why))` when the server
/// refuses it.
fn simple_option(
    conn: &mut dyn Transport,
    option: u32,
    data: &[u8],
) -> Result<std::result::Result<(), String>> {
    write_all(conn, &wire::option_request(option, data))?;
    let (h, data) = option_reply(conn, option)?;
    match h.reply {
        wire::REP_ACK => Ok(Ok(())),
        r if r & wire::REP_FLAG_ERROR != 0 => Ok(Err(refusal(&h, &data))),
        r => Err(protocol(format!(
            "reply {r} to {}",
            wire::option_name(option)
        ))),
    }
}

fn set_meta_contexts(conn: &mut dyn Transport, options: &NbdOptions) -> Result<Vec<(String, u32)>> {
    let op = wire::OPT_SET_META_CONTEXT;
    write_all(
        conn,
        &wire::option_request(
            op,
            &wire::meta_context_data(&options.export, &options.contexts),
        ),
    )?;
    let mut granted = Vec::new();
    loop {
        let (h, data) = option_reply(conn, op)?;
        match h.reply {
            wire::REP_ACK => break,
            wire::REP_META_CONTEXT => {
                let mut r = Be::new(&data, "meta context reply");
                let id = r.u32()?;
                let name = String::from_utf8_lossy(r.rest()).into_owned();
                if granted.len() >= options.contexts.len() {
                    return Err(protocol("more contexts granted than asked"));
                }
                granted.push((name, id));
            }
            r if r & wire::REP_FLAG_ERROR != 0 => {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    format!(
                        "NBD: the server refused the metadata contexts: {}",
                        refusal(&h, &data)
                    ),
                ))
            }
            r => return Err(protocol(format!("reply {r} to NBD_OPT_SET_META_CONTEXT"))),
        }
    }
    for want in &options.contexts {
        if !granted.iter().any(|(name, _)| name == want) {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!("NBD: the server does not offer the context {want:?} on this export"),
            ));
        }
    }
    Ok(granted)
}

/// `NBD_OPT_GO`; `None` when the server does not know the option (the
/// caller falls back to `NBD_OPT_EXPORT_NAME`).
fn go(conn: &mut dyn Transport, export: &str) -> Result<Option<ExportInfo>> {
    let op = wire::OPT_GO;
    write_all(conn, &wire::option_request(op, &wire::go_data(export)))?;
    let mut export_info = None;
    let (mut min_block, mut max_request) = (1, DEFAULT_MAX_REQUEST);
    loop {
        let (h, data) = option_reply(conn, op)?;
        match h.reply {
            wire::REP_ACK => break,
            wire::REP_INFO => {
                let mut r = Be::new(&data, "export information");
                match r.u16()? {
                    wire::INFO_EXPORT => export_info = Some((r.u64()?, r.u16()?)),
                    wire::INFO_BLOCK_SIZE => {
                        let (min, _preferred, max) = (r.u32()?, r.u32()?, r.u32()?);
                        if min == 0 || !min.is_power_of_two() || max < min {
                            return Err(protocol(format!("block sizes min {min}, max {max}")));
                        }
                        min_block = min;
                        // Whole multiples of the minimum, and never more
                        // than a bounded buffer.
                        max_request = max.min(DEFAULT_MAX_REQUEST) / min * min;
                    }
                    _ => {} // information not asked for is ignored
                }
            }
            wire::REP_ERR_UNSUP => return Ok(None),
            r if r & wire::REP_FLAG_ERROR != 0 => {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    format!(
                        "NBD: the export {export:?} was refused: {}",
                        refusal(&h, &data)
                    ),
                ))
            }
            r => return Err(protocol(format!("reply {r} to NBD_OPT_GO"))),
        }
    }
    let (size, flags) =
        export_info.ok_or_else(|| protocol("NBD_OPT_GO ended without the export's size"))?;
    Ok(Some(ExportInfo {
        size,
        flags,
        min_block,
        max_request,
        structured: false,
        contexts: Vec::new(),
    }))
}

/// The old way in: `NBD_OPT_EXPORT_NAME`, answered by size and flags (and
/// 124 zero bytes unless both sides agreed to drop them).
fn export_name(conn: &mut dyn Transport, export: &str, no_zeroes: bool) -> Result<ExportInfo> {
    write_all(
        conn,
        &wire::option_request(wire::OPT_EXPORT_NAME, export.as_bytes()),
    )?;
    let mut b = vec![0u8; if no_zeroes { 10 } else { 134 }];
    read_exact(conn, &mut b, "export's size and flags")?;
    let mut r = Be::new(&b, "export");
    Ok(ExportInfo {
        size: r.u64()?,
        flags: r.u16()?,
        min_block: 1,
        max_request: DEFAULT_MAX_REQUEST,
        structured: false,
        contexts: Vec::new(),
    })
}
