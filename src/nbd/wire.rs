//! The NBD protocol's bytes, declared once: magics, option, reply, command
//! and flag numbers, and the encoders and decoders of its messages. The
//! protocol is NetworkBlockDevice/nbd's `doc/proto.md`; every value on the
//! wire is big-endian. Decoders take untrusted bytes and return a typed
//! error for anything short, long or unknown; they never panic.

use crate::{Error, Result};

/// The server's first eight bytes.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// Newstyle negotiation: the server's next eight bytes, and the prefix of
/// every option the client sends.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// The prefix of every option reply.
pub const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// The prefix of every transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// The prefix of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// The prefix of a structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flag: fixed newstyle.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Handshake flag: no 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flag: fixed newstyle.
pub const CLIENT_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag: no zeroes.
pub const CLIENT_NO_ZEROES: u32 = 1 << 1;

/// `NBD_OPT_EXPORT_NAME`.
pub const OPT_EXPORT_NAME: u32 = 1;
/// `NBD_OPT_ABORT`.
pub const OPT_ABORT: u32 = 2;
/// `NBD_OPT_LIST`.
pub const OPT_LIST: u32 = 3;
/// `NBD_OPT_STARTTLS`.
pub const OPT_STARTTLS: u32 = 5;
/// `NBD_OPT_INFO`.
pub const OPT_INFO: u32 = 6;
/// `NBD_OPT_GO`.
pub const OPT_GO: u32 = 7;
/// `NBD_OPT_STRUCTURED_REPLY`.
pub const OPT_STRUCTURED_REPLY: u32 = 8;
/// `NBD_OPT_SET_META_CONTEXT`.
pub const OPT_SET_META_CONTEXT: u32 = 10;

/// `NBD_REP_ACK`.
pub const REP_ACK: u32 = 1;
/// `NBD_REP_SERVER`.
pub const REP_SERVER: u32 = 2;
/// `NBD_REP_INFO`.
pub const REP_INFO: u32 = 3;
/// `NBD_REP_META_CONTEXT`.
pub const REP_META_CONTEXT: u32 = 4;
/// Option replies with this bit set are errors.
pub const REP_FLAG_ERROR: u32 = 1 << 31;
/// `NBD_REP_ERR_UNSUP`.
pub const REP_ERR_UNSUP: u32 = REP_FLAG_ERROR | 1;
/// `NBD_REP_ERR_INVALID`.
pub const REP_ERR_INVALID: u32 = REP_FLAG_ERROR | 3;
/// `NBD_REP_ERR_UNKNOWN`.
pub const REP_ERR_UNKNOWN: u32 = REP_FLAG_ERROR | 6;

/// `NBD_INFO_EXPORT`: size and transmission flags.
pub const INFO_EXPORT: u16 = 0;
/// `NBD_INFO_BLOCK_SIZE`: minimum, preferred and maximum block sizes.
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Transmission flag: the other flags are valid.
pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
/// Transmission flag: the export is read-only.
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
/// Transmission flag: `NBD_CMD_FLUSH` is supported.
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
/// Transmission flag: `NBD_CMD_FLAG_FUA` is supported.
pub const TFLAG_SEND_FUA: u16 = 1 << 3;
/// Transmission flag: `NBD_CMD_WRITE_ZEROES` is supported.
pub const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;

/// `NBD_CMD_READ`.
pub const CMD_READ: u16 = 0;
/// `NBD_CMD_WRITE`.
pub const CMD_WRITE: u16 = 1;
/// `NBD_CMD_DISC`.
pub const CMD_DISC: u16 = 2;
/// `NBD_CMD_FLUSH`.
pub const CMD_FLUSH: u16 = 3;
/// `NBD_CMD_WRITE_ZEROES`.
pub const CMD_WRITE_ZEROES: u16 = 6;
/// `NBD_CMD_BLOCK_STATUS`.
pub const CMD_BLOCK_STATUS: u16 = 7;
/// Command flag: force unit access.
pub const CMD_FLAG_FUA: u16 = 1 << 0;

/// Structured reply flag: the last chunk of its request.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
/// `NBD_REPLY_TYPE_NONE`.
pub const REPLY_TYPE_NONE: u16 = 0;
/// `NBD_REPLY_TYPE_OFFSET_DATA`.
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
/// `NBD_REPLY_TYPE_OFFSET_HOLE`.
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
/// `NBD_REPLY_TYPE_BLOCK_STATUS`.
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
/// Reply types with this bit set are errors.
pub const REPLY_TYPE_FLAG_ERROR: u16 = 1 << 15;
/// `NBD_REPLY_TYPE_ERROR`.
pub const REPLY_TYPE_ERROR: u16 = REPLY_TYPE_FLAG_ERROR | 1;
/// `NBD_REPLY_TYPE_ERROR_OFFSET`.
pub const REPLY_TYPE_ERROR_OFFSET: u16 = REPLY_TYPE_FLAG_ERROR | 2;

/// Size of a transmission request.
pub const REQUEST_LEN: usize = 28;
/// Size of an option reply's header.
pub const OPTION_REPLY_LEN: usize = 20;
/// Size of a simple reply's header.
pub const SIMPLE_REPLY_LEN: usize = 16;
/// Size of a structured reply chunk's header.
pub const CHUNK_HEADER_LEN: usize = 20;

/// The name of an NBD error number, as the protocol defines them.
pub fn errno_name(e: u32) -> &'static str {
    match e {
        1 => "EPERM",
        5 => "EIO",
        12 => "ENOMEM",
        22 => "EINVAL",
        28 => "ENOSPC",
        75 => "EOVERFLOW",
        95 => "ENOTSUP",
        108 => "ESHUTDOWN",
        _ => "unknown error",
    }
}

/// The name of an option, for messages.
pub fn option_name(opt: u32) -> String {
    match opt {
        OPT_EXPORT_NAME => "NBD_OPT_EXPORT_NAME".into(),
        OPT_ABORT => "NBD_OPT_ABORT".into(),
        OPT_LIST => "NBD_OPT_LIST".into(),
        OPT_STARTTLS => "NBD_OPT_STARTTLS".into(),
        OPT_INFO => "NBD_OPT_INFO".into(),
        OPT_GO => "NBD_OPT_GO".into(),
        OPT_STRUCTURED_REPLY => "NBD_OPT_STRUCTURED_REPLY".into(),
        OPT_SET_META_CONTEXT => "NBD_OPT_SET_META_CONTEXT".into(),
        o => format!("option {o}"),
    }
}

/// The name of an option error reply, for messages.
pub fn rep_error_name(rep: u32) -> &'static str {
    match rep & !REP_FLAG_ERROR {
        1 => "unsupported",
        2 => "refused by policy",
        3 => "invalid",
        4 => "not available on this platform",
        5 => "TLS required",
        6 => "unknown export",
        7 => "server shutting down",
        8 => "block size negotiation required",
        9 => "request too big",
        _ => "error",
    }
}

/// A big-endian reader over untrusted bytes: every take is checked.
pub(crate) struct Be<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Be<'a> {
    /// Reads `bytes`, naming them `what` in errors.
    pub(crate) fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Be { bytes, what }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.bytes.len() < n {
            return Err(Error::corrupt(format!(
                "NBD {}: {} bytes where at least {n} more were expected",
                self.what,
                self.bytes.len()
            )));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    pub(crate) fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u64(&mut self) -> Result<u64> {
        Ok((u64::from(self.u32()?) << 32) | u64::from(self.u32()?))
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        self.take(n)
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }

    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len()
    }
}

/// The server's greeting: `NBDMAGIC`, `IHAVEOPT`, the handshake flags.
pub fn greeting(flags: u16) -> [u8; 18] {
    let mut b = [0u8; 18];
    b[..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    b[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    b[16..].copy_from_slice(&flags.to_be_bytes());
    b
}

/// An option reply: its header and data.
pub fn option_reply(option: u32, reply: u32, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(OPTION_REPLY_LEN + data.len());
    v.extend_from_slice(&REPLY_MAGIC.to_be_bytes());
    v.extend_from_slice(&option.to_be_bytes());
    v.extend_from_slice(&reply.to_be_bytes());
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    v
}

/// A simple reply's header (a read's data follows it on success).
pub fn simple_reply(error: u32, cookie: u64) -> [u8; SIMPLE_REPLY_LEN] {
    let mut b = [0u8; SIMPLE_REPLY_LEN];
    b[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&error.to_be_bytes());
    b[8..].copy_from_slice(&cookie.to_be_bytes());
    b
}

/// An option request: `IHAVEOPT`, the option, its data's length, the data.
pub fn option_request(option: u32, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + data.len());
    v.extend_from_slice(&IHAVEOPT.to_be_bytes());
    v.extend_from_slice(&option.to_be_bytes());
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    v
}

/// The data of `NBD_OPT_GO` or `NBD_OPT_INFO`: the export name and the
/// information requested (block sizes).
pub fn go_data(export: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + export.len());
    v.extend_from_slice(&(export.len() as u32).to_be_bytes());
    v.extend_from_slice(export.as_bytes());
    v.extend_from_slice(&1u16.to_be_bytes());
    v.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    v
}

/// The data of `NBD_OPT_SET_META_CONTEXT`: the export name and the
/// contexts asked for.
pub fn meta_context_data(export: &str, contexts: &[String]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&(export.len() as u32).to_be_bytes());
    v.extend_from_slice(export.as_bytes());
    v.extend_from_slice(&(contexts.len() as u32).to_be_bytes());
    for c in contexts {
        v.extend_from_slice(&(c.len() as u32).to_be_bytes());
        v.extend_from_slice(c.as_bytes());
    }
    v
}

/// The header of an option reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionReply {
    /// The option it answers.
    pub option: u32,
    /// `NBD_REP_*`.
    pub reply: u32,
    /// Bytes of data that follow.
    pub len: u32,
}

impl OptionReply {
    /// Decodes the 20-byte header.
    pub fn decode(b: &[u8; OPTION_REPLY_LEN]) -> Result<OptionReply> {
        let mut r = Be::new(b, "option reply");
        if r.u64()? != REPLY_MAGIC {
            return Err(Error::corrupt("NBD option reply: bad magic"));
        }
        Ok(OptionReply {
            option: r.u32()?,
            reply: r.u32()?,
            len: r.u32()?,
        })
    }
}

/// A transmission request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// `NBD_CMD_FLAG_*`.
    pub flags: u16,
    /// `NBD_CMD_*`.
    pub command: u16,
    /// The cookie the reply carries back.
    pub cookie: u64,
    /// Byte offset.
    pub offset: u64,
    /// Byte length.
    pub len: u32,
}

impl Request {
    /// The 28 bytes on the wire.
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.command.to_be_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.len.to_be_bytes());
        b
    }

    /// Decodes the 28 bytes a client sent.
    pub fn decode(b: &[u8; REQUEST_LEN]) -> Result<Request> {
        let mut r = Be::new(b, "request");
        if r.u32()? != REQUEST_MAGIC {
            return Err(Error::corrupt("NBD request: bad magic"));
        }
        Ok(Request {
            flags: r.u16()?,
            command: r.u16()?,
            cookie: r.u64()?,
            offset: r.u64()?,
            len: r.u32()?,
        })
    }
}

/// The header of a reply: simple (error and cookie; a read's data follows
/// on success) or a structured chunk (its payload follows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyHeader {
    /// A simple reply.
    Simple {
        /// 0, or an NBD error number.
        error: u32,
        /// The request's cookie.
        cookie: u64,
    },
    /// One chunk of a structured reply.
    Chunk {
        /// `NBD_REPLY_FLAG_*`.
        flags: u16,
        /// `NBD_REPLY_TYPE_*`.
        kind: u16,
        /// The request's cookie.
        cookie: u64,
        /// Bytes of payload that follow.
        len: u32,
    },
}

impl ReplyHeader {
    /// Decodes a header from its first 16 bytes and, for a structured
    /// chunk, 4 more (`more` is called for them only then).
    pub fn decode(
        first: &[u8; SIMPLE_REPLY_LEN],
        more: impl FnOnce() -> Result<[u8; 4]>,
    ) -> Result<ReplyHeader> {
        let mut r = Be::new(first, "reply");
        match r.u32()? {
            SIMPLE_REPLY_MAGIC => Ok(ReplyHeader::Simple {
                error: r.u32()?,
                cookie: r.u64()?,
            }),
            STRUCTURED_REPLY_MAGIC => Ok(ReplyHeader::Chunk {
                flags: r.u16()?,
                kind: r.u16()?,
                cookie: r.u64()?,
                len: u32::from_be_bytes(more()?),
            }),
            m => Err(Error::corrupt(format!("NBD reply: bad magic {m:#010x}"))),
        }
    }
}

/// A structured error chunk's payload: the error number and the server's
/// message (and offset, for `NBD_REPLY_TYPE_ERROR_OFFSET`).
pub fn decode_error_chunk(kind: u16, payload: &[u8]) -> Result<(u32, String, Option<u64>)> {
    let mut r = Be::new(payload, "error chunk");
    let error = r.u32()?;
    let n = usize::from(r.u16()?);
    let message = String::from_utf8_lossy(r.bytes(n)?).into_owned();
    let offset = if kind == REPLY_TYPE_ERROR_OFFSET {
        Some(r.u64()?)
    } else {
        None
    };
    Ok((error, message, offset))
}

/// One extent of a block status reply: `len` bytes with the context's
/// status `flags`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusExtent {
    /// Length in bytes.
    pub len: u32,
    /// Flags, meaning per context (`base:allocation`: bit 0 hole, bit 1
    /// zero; `qemu:dirty-bitmap:*`: bit 0 dirty).
    pub flags: u32,
}

/// A block status chunk's payload: the context id and its extents.
pub fn decode_block_status(payload: &[u8]) -> Result<(u32, Vec<StatusExtent>)> {
    let mut r = Be::new(payload, "block status chunk");
    let id = r.u32()?;
    if r.remaining() == 0 || !r.remaining().is_multiple_of(8) {
        return Err(Error::corrupt(format!(
            "NBD block status chunk: {} bytes of extents, not a positive multiple of 8",
            r.remaining()
        )));
    }
    let mut extents = Vec::with_capacity(r.remaining() / 8);
    while r.remaining() > 0 {
        let e = StatusExtent {
            len: r.u32()?,
            flags: r.u32()?,
        };
        if e.len == 0 {
            return Err(Error::corrupt("NBD block status chunk: an empty extent"));
        }
        extents.push(e);
    }
    Ok((id, extents))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips() {
        let r = Request {
            flags: CMD_FLAG_FUA,
            command: CMD_WRITE,
            cookie: 0x0102_0304_0506_0708,
            offset: 1 << 40,
            len: 4096,
        };
        let b = r.encode();
        assert_eq!(&b[..4], &[0x25, 0x60, 0x95, 0x13]);
        assert_eq!(Request::decode(&b).unwrap(), r);
    }

    #[test]
    fn decoders_refuse_short_and_odd_payloads() {
        assert!(decode_block_status(&[0, 0, 0, 1]).is_err());
        assert!(decode_block_status(&[0, 0, 0, 1, 0, 0, 0, 9, 0, 0, 0]).is_err());
        assert!(decode_block_status(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1]).is_err());
        let (id, e) = decode_block_status(&[0, 0, 0, 7, 0, 0, 16, 0, 0, 0, 0, 1]).unwrap();
        assert_eq!(
            (id, e),
            (
                7,
                vec![StatusExtent {
                    len: 4096,
                    flags: 1
                }]
            )
        );
        assert!(decode_error_chunk(REPLY_TYPE_ERROR, &[0, 0, 0, 5, 0, 9, b'x']).is_err());
        assert!(decode_error_chunk(REPLY_TYPE_ERROR_OFFSET, &[0, 0, 0, 5, 0, 1, b'x']).is_err());
        let (e, m, o) =
            decode_error_chunk(REPLY_TYPE_ERROR, &[0, 0, 0, 5, 0, 2, b'n', b'o']).unwrap();
        assert_eq!((e, m.as_str(), o), (5, "no", None));
    }
}
