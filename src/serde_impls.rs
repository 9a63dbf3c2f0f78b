//! Serialisation of the identifiers and the geometry (the `serde`
//! feature): ids and digests as lowercase hex strings, whole (the
//! `Display` of a digest is abbreviated for people), the geometry as its
//! size and block size.

use crate::geometry::Geometry;
use crate::id::DiskId;
use crate::log::Digest;
use serde::ser::{Serialize, SerializeStruct, Serializer};
use std::fmt::Write;

/// The `N` bytes a hex string of exactly `2 * N` digits names (either
/// case); `None` for anything else.
pub(crate) fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

impl Serialize for DiskId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex(&self.0))
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex(&self.0))
    }
}

impl Serialize for Geometry {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut g = s.serialize_struct("Geometry", 2)?;
        g.serialize_field("size", &self.size())?;
        g.serialize_field("block_size", &self.block_size())?;
        g.end()
    }
}
