//! The frame of blockrep's small state files (replica state, spool state,
//! group journal, failover record, block digest list): an 8-byte magic and
//! a u32 version first, the format's fields, then the CRC32 of every byte
//! before it as the last 4 bytes (docs/FORMAT.md gives each layout).

use crate::error::{Error, ErrorKind, Result};
use crate::le::{get_u32, put_u32};

/// A frame of `fixed` zero bytes with `magic` and `version` written.
pub(crate) fn start(magic: [u8; 8], version: u32, fixed: usize) -> Vec<u8> {
    let mut b = vec![0u8; fixed];
    b[0..8].copy_from_slice(&magic);
    put_u32(&mut b, 8, version);
    b
}

/// Appends the CRC32 of the frame so far.
pub(crate) fn seal(mut b: Vec<u8>) -> Vec<u8> {
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// Checks a frame of the format `what`: at least `fixed` bytes before the
/// CRC, the magic, the version (a newer one is unsupported, not corrupt)
/// and the CRC. Returns the length before the CRC.
pub(crate) fn open(
    b: &[u8],
    magic: [u8; 8],
    version: u32,
    fixed: usize,
    what: &str,
) -> Result<usize> {
    let bad = |at: usize, m: &str| Error::corrupt(format!("{what}: {m}")).with_offset(at as u64);
    if b.len() < fixed + 4 {
        return Err(bad(0, "truncated"));
    }
    if b[0..8] != magic {
        return Err(bad(0, "bad magic"));
    }
    if get_u32(b, 8) != version {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!("{what} version {}", get_u32(b, 8)),
        )
        .with_offset(8));
    }
    let n = b.len() - 4;
    if crc32fast::hash(&b[..n]) != get_u32(b, n) {
        return Err(bad(n, "checksum mismatch (torn or corrupt)"));
    }
    Ok(n)
}
