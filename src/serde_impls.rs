//! Serialisation of the identifiers and the geometry (the `serde`
//! feature): ids and digests as lowercase hex strings, whole (the
//! `Display` of a digest is abbreviated for people), the geometry as its
//! size and block size.

use crate::geometry::Geometry;
use crate::hex::hex;
use crate::id::DiskId;
use crate::log::Digest;
use serde::ser::{Serialize, SerializeStruct, Serializer};

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
