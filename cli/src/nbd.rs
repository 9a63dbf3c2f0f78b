//! A Network Block Device server on a Unix socket, for one disk: how a
//! test machine (QEMU's `nbd+unix:///?socket=...`, `qemu-img`, `nbdcopy`)
//! reaches a test failover's disk, which lives in this process.
//!
//! Fixed newstyle handshake only (`NBD_OPT_GO`, `NBD_OPT_INFO`,
//! `NBD_OPT_EXPORT_NAME`, `NBD_OPT_LIST`, `NBD_OPT_ABORT`; anything else is
//! answered "unsupported"), simple replies, commands READ, WRITE (with
//! FUA), FLUSH, WRITE_ZEROES and DISC. Every request is checked against
//! the disk's size and a length limit; a malformed one ends the connection
//! with a line on standard error, never the server. The protocol is
//! NetworkBlockDevice/nbd's doc/proto.md; values on the wire are
//! big-endian.

use blockrep::io::Storage;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use blockrep::nbd::wire::{
    greeting, option_reply as encode_option_reply, simple_reply, Request, CMD_DISC, CMD_FLAG_FUA,
    CMD_FLUSH, CMD_READ, CMD_WRITE, CMD_WRITE_ZEROES, FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES,
    IHAVEOPT, INFO_BLOCK_SIZE, INFO_EXPORT, OPT_ABORT, OPT_EXPORT_NAME, OPT_GO, OPT_INFO, OPT_LIST,
    REP_ACK, REP_ERR_INVALID, REP_ERR_UNKNOWN, REP_ERR_UNSUP, REP_INFO, REP_SERVER, REQUEST_LEN,
    TFLAG_HAS_FLAGS, TFLAG_READ_ONLY, TFLAG_SEND_FLUSH, TFLAG_SEND_FUA, TFLAG_SEND_WRITE_ZEROES,
};

const CLIENT_FLAGS_KNOWN: u32 = 0b11;

const EPERM: u32 = 1;
const EIO: u32 = 5;
const EINVAL: u32 = 22;
const ENOSPC: u32 = 28;

/// The longest option a client may send (an export name, info requests).
const MAX_OPTION: u32 = 4096;
/// The longest read or write payload accepted, as advertised.
const MAX_PAYLOAD: u32 = 32 << 20;
/// A client silent this long in the handshake is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// What is served: the disk, its export name, whether writes are refused.
pub struct Export {
    /// The disk.
    pub disk: Arc<dyn Storage>,
    /// The export's name (a client asking for another is refused; the
    /// empty name means this one).
    pub name: String,
    /// Refuse writes.
    pub read_only: bool,
}

/// Serves `export` on `listener` until `stop` is set (checked every
/// 100 ms), a thread per connection.
pub fn serve(
    listener: &UnixListener,
    export: Arc<Export>,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                let export = export.clone();
                std::thread::spawn(move || {
                    if let Err(e) = connection(stream, &export) {
                        eprintln!("blockrep: nbd client: {e}");
                    }
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

type Res<T> = std::result::Result<T, String>;

fn io(what: &str) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

fn read_exact(s: &mut UnixStream, n: usize, what: &str) -> Res<Vec<u8>> {
    let mut b = vec![0u8; n];
    s.read_exact(&mut b).map_err(io(what))?;
    Ok(b)
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

fn connection(mut s: UnixStream, export: &Export) -> Res<()> {
    s.set_nonblocking(false).map_err(io("socket"))?;
    s.set_read_timeout(Some(HANDSHAKE_TIMEOUT))
        .map_err(io("socket"))?;
    let size = export.disk.len().map_err(|e| e.to_string())?;
    s.write_all(&greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES))
        .map_err(io("greeting"))?;
    let client = be32(&read_exact(&mut s, 4, "client flags")?, 0);
    if client & !CLIENT_FLAGS_KNOWN != 0 || client & 1 == 0 {
        return Err(format!("client flags {client:#x}: fixed newstyle only"));
    }
    let no_zeroes = client & 2 != 0;
    if !handshake(&mut s, export, size, no_zeroes)? {
        return Ok(());
    }
    // Transmission: the client may idle as long as it likes.
    s.set_read_timeout(None).map_err(io("socket"))?;
    transmission(&mut s, export, size)
}

fn option_reply(s: &mut UnixStream, opt: u32, kind: u32, data: &[u8]) -> Res<()> {
    s.write_all(&encode_option_reply(opt, kind, data))
        .map_err(io("option reply"))
}

fn tflags(export: &Export) -> u16 {
    let mut f = TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH | TFLAG_SEND_FUA | TFLAG_SEND_WRITE_ZEROES;
    if export.read_only {
        f |= TFLAG_READ_ONLY;
    }
    f
}

/// The option haggling; true when transmission starts.
fn handshake(s: &mut UnixStream, export: &Export, size: u64, no_zeroes: bool) -> Res<bool> {
    loop {
        let h = read_exact(s, 16, "option header")?;
        if be64(&h, 0) != IHAVEOPT {
            return Err("option without IHAVEOPT".into());
        }
        let (opt, len) = (be32(&h, 8), be32(&h, 12));
        if len > MAX_OPTION {
            return Err(format!("option {opt} of {len} bytes: at most {MAX_OPTION}"));
        }
        let data = read_exact(s, len as usize, "option data")?;
        match opt {
            OPT_EXPORT_NAME => {
                if !names_this(export, &data) {
                    // This option has no error reply: the spec says close.
                    return Err("unknown export name".into());
                }
                let mut r = Vec::with_capacity(134);
                r.extend_from_slice(&size.to_be_bytes());
                r.extend_from_slice(&tflags(export).to_be_bytes());
                if !no_zeroes {
                    r.extend_from_slice(&[0u8; 124]);
                }
                s.write_all(&r).map_err(io("export reply"))?;
                return Ok(true);
            }
            OPT_ABORT => {
                let _ = option_reply(s, opt, REP_ACK, &[]);
                return Ok(false);
            }
            OPT_LIST => {
                let mut d = (export.name.len() as u32).to_be_bytes().to_vec();
                d.extend_from_slice(export.name.as_bytes());
                option_reply(s, opt, REP_SERVER, &d)?;
                option_reply(s, opt, REP_ACK, &[])?;
            }
            OPT_INFO | OPT_GO => {
                // name length, name, count of info requests, requests.
                let Some(name_len) = data.get(..4).map(|b| be32(b, 0) as usize) else {
                    option_reply(s, opt, REP_ERR_INVALID, &[])?;
                    continue;
                };
                let Some(name) = data.get(4..4 + name_len) else {
                    option_reply(s, opt, REP_ERR_INVALID, &[])?;
                    continue;
                };
                let requests: Vec<u16> = data
                    .get(4 + name_len + 2..)
                    .unwrap_or(&[])
                    .chunks_exact(2)
                    .map(|c| be16(c, 0))
                    .collect();
                if !names_this(export, name) {
                    option_reply(s, opt, REP_ERR_UNKNOWN, &[])?;
                    continue;
                }
                let mut info = INFO_EXPORT.to_be_bytes().to_vec();
                info.extend_from_slice(&size.to_be_bytes());
                info.extend_from_slice(&tflags(export).to_be_bytes());
                option_reply(s, opt, REP_INFO, &info)?;
                if requests.contains(&INFO_BLOCK_SIZE) {
                    let mut b = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
                    b.extend_from_slice(&1u32.to_be_bytes());
                    b.extend_from_slice(&4096u32.to_be_bytes());
                    b.extend_from_slice(&MAX_PAYLOAD.to_be_bytes());
                    option_reply(s, opt, REP_INFO, &b)?;
                }
                option_reply(s, opt, REP_ACK, &[])?;
                if opt == OPT_GO {
                    return Ok(true);
                }
            }
            _ => option_reply(s, opt, REP_ERR_UNSUP, &[])?,
        }
    }
}

fn names_this(export: &Export, name: &[u8]) -> bool {
    name.is_empty() || name == export.name.as_bytes()
}

fn reply(s: &mut UnixStream, cookie: u64, error: u32, data: &[u8]) -> Res<()> {
    let mut r = Vec::with_capacity(16 + data.len());
    r.extend_from_slice(&simple_reply(error, cookie));
    r.extend_from_slice(data);
    s.write_all(&r).map_err(io("reply"))
}

/// The errno for a failed disk operation, with the failure on stderr (the
/// client sees only the number).
fn errno(what: &str, offset: u64, e: &blockrep::Error) -> u32 {
    eprintln!("blockrep: nbd {what} at {offset}: {e}");
    if e.kind() == blockrep::ErrorKind::NoSpace {
        ENOSPC
    } else {
        EIO
    }
}

fn transmission(s: &mut UnixStream, export: &Export, size: u64) -> Res<()> {
    let mut buf = Vec::new();
    loop {
        let mut h = [0u8; REQUEST_LEN];
        s.read_exact(&mut h).map_err(io("request"))?;
        let Request {
            flags,
            command: kind,
            cookie,
            offset,
            len,
        } = Request::decode(&h).map_err(|e| e.to_string())?;
        let in_range = offset
            .checked_add(u64::from(len))
            .is_some_and(|e| e <= size);
        match kind {
            CMD_DISC => return Ok(()),
            CMD_READ => {
                if len > MAX_PAYLOAD || !in_range {
                    reply(s, cookie, EINVAL, &[])?;
                    continue;
                }
                buf.resize(len as usize, 0);
                match export.disk.read_at(&mut buf, offset) {
                    Ok(()) => reply(s, cookie, 0, &buf)?,
                    Err(e) => reply(s, cookie, errno("read", offset, &e), &[])?,
                }
            }
            CMD_WRITE => {
                if len > MAX_PAYLOAD {
                    // The payload cannot be skipped safely: end here.
                    return Err(format!("write of {len} bytes: at most {MAX_PAYLOAD}"));
                }
                buf.resize(len as usize, 0);
                s.read_exact(&mut buf).map_err(io("write payload"))?;
                let err = if export.read_only {
                    EPERM
                } else if !in_range {
                    ENOSPC
                } else {
                    write(export, &buf, offset, flags)
                };
                reply(s, cookie, err, &[])?;
            }
            CMD_WRITE_ZEROES => {
                let err = if export.read_only {
                    EPERM
                } else if !in_range {
                    ENOSPC
                } else {
                    let mut err = 0;
                    let zeros = vec![0u8; (len as usize).min(1 << 20)];
                    let mut done = 0u64;
                    while done < u64::from(len) && err == 0 {
                        let n = (u64::from(len) - done).min(zeros.len() as u64) as usize;
                        err = write(export, &zeros[..n], offset + done, 0);
                        done += n as u64;
                    }
                    if err == 0 && flags & CMD_FLAG_FUA != 0 {
                        err = sync(export);
                    }
                    err
                };
                reply(s, cookie, err, &[])?;
            }
            CMD_FLUSH => {
                let err = sync(export);
                reply(s, cookie, err, &[])?;
            }
            _ => reply(s, cookie, EINVAL, &[])?,
        }
    }
}

fn write(export: &Export, buf: &[u8], offset: u64, flags: u16) -> u32 {
    if let Err(e) = export.disk.write_at(buf, offset) {
        return errno("write", offset, &e);
    }
    if flags & CMD_FLAG_FUA != 0 {
        return sync(export);
    }
    0
}

fn sync(export: &Export) -> u32 {
    match export.disk.sync() {
        Ok(()) => 0,
        Err(e) => errno("flush", 0, &e),
    }
}
