//! Feeds the input as everything an NBD server says to the client: the
//! handshake and then the replies to a read and two block status
//! requests. The client must return data or a typed error, never panic,
//! never allocate what a length field claims, and hand out only extents
//! that follow each other from the offset asked and stay inside the
//! export.
//!
//! An odd first byte puts a valid negotiation (structured replies, the
//! `base:allocation` context, a 64 KiB export) in front of the rest, so
//! the reply parsers are reached without the fuzzer finding the magics.
#![no_main]

use blockrep::nbd::{wire, NbdClient, NbdOptions};
use libfuzzer_sys::fuzz_target;
use std::io::{Cursor, Read, Write};

/// The server's bytes; what the client sends is dropped.
struct Server(Cursor<Vec<u8>>);

impl Read for Server {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Server {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn negotiation() -> Vec<u8> {
    let mut v = wire::greeting(wire::FLAG_FIXED_NEWSTYLE | wire::FLAG_NO_ZEROES).to_vec();
    v.extend(wire::option_reply(wire::OPT_STRUCTURED_REPLY, wire::REP_ACK, &[]));
    let mut granted = 1u32.to_be_bytes().to_vec();
    granted.extend_from_slice(b"base:allocation");
    v.extend(wire::option_reply(wire::OPT_SET_META_CONTEXT, wire::REP_META_CONTEXT, &granted));
    v.extend(wire::option_reply(wire::OPT_SET_META_CONTEXT, wire::REP_ACK, &[]));
    let mut info = wire::INFO_EXPORT.to_be_bytes().to_vec();
    info.extend_from_slice(&(64u64 << 10).to_be_bytes());
    info.extend_from_slice(&wire::TFLAG_HAS_FLAGS.to_be_bytes());
    v.extend(wire::option_reply(wire::OPT_GO, wire::REP_INFO, &info));
    v.extend(wire::option_reply(wire::OPT_GO, wire::REP_ACK, &[]));
    v
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let mut bytes = if first & 1 == 1 { negotiation() } else { Vec::new() };
    bytes.extend_from_slice(rest);
    let options = NbdOptions {
        contexts: vec!["base:allocation".into()],
        timeout: None,
        ..NbdOptions::default()
    };
    let Ok(mut c) = NbdClient::handshake(Box::new(Server(Cursor::new(bytes))), &options) else {
        return;
    };
    let size = c.size();
    let mut buf = vec![0u8; size.min(64 << 10) as usize];
    let _ = c.read(0, &mut buf);
    for offset in [0, size / 2] {
        if let Ok(extents) = c.block_status("base:allocation", offset, size - offset) {
            let mut at = offset;
            for e in extents {
                assert_eq!(e.offset, at);
                assert!(e.len > 0 && e.offset + e.len <= size);
                at += e.len;
            }
        }
    }
});
