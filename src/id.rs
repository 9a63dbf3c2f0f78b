//! Identifiers: the 128-bit disk id, and random values for ids and salts.

use crate::error::{Error, Result};
use crate::hex::{hex, unhex};
use std::fmt;

/// The 128-bit identity of a replicated disk, fixed when replication is
/// enabled and carried by every tracker file and log of that disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct DiskId(pub [u8; 16]);

impl DiskId {
    /// A new random disk id.
    pub fn random() -> Result<Self> {
        let mut b = [0; 16];
        fill_random(&mut b)?;
        Ok(DiskId(b))
    }

    /// The id as 16 bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for DiskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl std::str::FromStr for DiskId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        unhex(s)
            .map(DiskId)
            .ok_or_else(|| Error::invalid(format!("disk id {s:?} is not 32 hex digits")))
    }
}

/// Fills `buf` from the kernel's random source.
pub fn fill_random(buf: &mut [u8]) -> Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: the pointer and length describe `rest`, a live, writable
        // slice that getrandom fills at most `rest.len()` bytes of.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Error::io("getrandom", e));
        }
        done += n.unsigned_abs();
    }
    Ok(())
}

/// A random `u64`.
pub fn random_u64() -> Result<u64> {
    let mut b = [0; 8];
    fill_random(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_randomness() {
        let a = DiskId::random().unwrap();
        let b = DiskId::random().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.to_string().parse::<DiskId>().unwrap(), a);
        assert!("xyz".parse::<DiskId>().is_err());
        assert!("zz".repeat(16).parse::<DiskId>().is_err());
    }
}
