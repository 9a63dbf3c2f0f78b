//! Disk geometry: size, block size, and the mapping between bytes and blocks.

use crate::error::{Error, Result};
use std::fmt;

pub(crate) mod set;

pub use set::{BlockSet, Extents};

/// The smallest block size blockrep tracks: 4 KiB.
pub const MIN_BLOCK_SIZE: u32 = 4096;
/// The largest block size blockrep tracks: 1 MiB.
pub const MAX_BLOCK_SIZE: u32 = 1 << 20;
/// The largest disk blockrep accepts: 1 EiB. Keeps every byte and block
/// computation far from `u64` overflow.
pub const MAX_DISK_SIZE: u64 = 1 << 60;

/// The size of a disk and the block size it is tracked and shipped in.
///
/// The last block is short when the size is not a multiple of the block size;
/// it still counts as one whole block for tracking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Geometry {
    size: u64,
    block_shift: u32,
}

/// A run of consecutive blocks: `count` blocks starting at block `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Extent {
    /// The first block.
    pub start: u64,
    /// How many blocks; never zero in extents blockrep hands out.
    pub count: u64,
}

impl Extent {
    /// A run of `count` blocks from `start`.
    pub fn new(start: u64, count: u64) -> Self {
        Extent { start, count }
    }

    /// One past the last block.
    pub fn end(&self) -> u64 {
        self.start + self.count
    }

    /// Whether `block` lies in this extent.
    pub fn contains(&self, block: u64) -> bool {
        block >= self.start && block < self.end()
    }
}

impl fmt::Display for Extent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}..{})", self.start, self.end())
    }
}

impl Geometry {
    /// A geometry of `size` bytes in blocks of `block_size` bytes.
    ///
    /// The block size must be a power of two from 4 KiB to 1 MiB; the size
    /// must be at least one byte and at most [`MAX_DISK_SIZE`].
    pub fn new(size: u64, block_size: u32) -> Result<Self> {
        if !block_size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size)
        {
            return Err(Error::invalid(format!(
                "block size {block_size} is not a power of two from {MIN_BLOCK_SIZE} to {MAX_BLOCK_SIZE}"
            )));
        }
        Self::check_size(size)?;
        Ok(Geometry {
            size,
            block_shift: block_size.trailing_zeros(),
        })
    }

    fn check_size(size: u64) -> Result<()> {
        if size == 0 || size > MAX_DISK_SIZE {
            return Err(Error::invalid(format!(
                "disk size {size} is not between 1 byte and {MAX_DISK_SIZE}"
            )));
        }
        Ok(())
    }

    /// The same block size with a new disk size.
    pub fn resized(&self, size: u64) -> Result<Self> {
        Self::check_size(size)?;
        Ok(Geometry { size, ..*self })
    }

    /// The disk size in bytes.
    #[inline]
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The block size in bytes.
    #[inline]
    pub fn block_size(&self) -> u32 {
        1 << self.block_shift
    }

    /// log2 of the block size.
    #[inline]
    pub fn block_shift(&self) -> u32 {
        self.block_shift
    }

    /// The number of blocks, counting a short last block as one.
    #[inline]
    pub fn block_count(&self) -> u64 {
        self.size.div_ceil(u64::from(self.block_size()))
    }

    /// The blocks that a write of `len` bytes at `offset` touches, partial
    /// blocks included.
    ///
    /// Zero length is an invalid argument; a range that overflows or passes
    /// the end of the disk is out of range.
    #[inline]
    pub fn blocks_for_range(&self, offset: u64, len: u64) -> Result<Extent> {
        match offset.checked_add(len) {
            Some(end) if len != 0 && end <= self.size => {
                let start = offset >> self.block_shift;
                let last = (end - 1) >> self.block_shift;
                Ok(Extent::new(start, last - start + 1))
            }
            _ => Err(self.bad_range(offset, len)),
        }
    }

    #[cold]
    #[inline(never)]
    fn bad_range(&self, offset: u64, len: u64) -> Error {
        if len == 0 {
            return Error::invalid("zero-length range").with_offset(offset);
        }
        match offset.checked_add(len) {
            None => {
                Error::out_of_range(format!("range of {len} bytes overflows")).with_offset(offset)
            }
            Some(end) => Error::out_of_range(format!(
                "range of {len} bytes ends at {end}, past the disk size {}",
                self.size
            ))
            .with_offset(offset),
        }
    }

    /// The byte offset of `block`.
    #[inline]
    pub fn block_offset(&self, block: u64) -> u64 {
        block << self.block_shift
    }

    /// The length in bytes of `block`: the block size, or less for a short
    /// last block. Zero for a block past the end.
    pub fn block_len(&self, block: u64) -> u32 {
        let off = self.block_offset(block);
        (self.size.saturating_sub(off)).min(u64::from(self.block_size())) as u32
    }

    /// The byte range `(offset, len)` an extent covers, clipped to the disk.
    pub fn extent_bytes(&self, extent: Extent) -> (u64, u64) {
        let off = self.block_offset(extent.start).min(self.size);
        let end = self.block_offset(extent.end()).min(self.size);
        (off, end - off)
    }

    /// Checks that `extent` is non-empty and lies within the disk.
    pub fn check_extent(&self, extent: Extent) -> Result<()> {
        if extent.count == 0 {
            return Err(Error::invalid(format!(
                "empty extent at block {}",
                extent.start
            )));
        }
        match extent.start.checked_add(extent.count) {
            Some(end) if end <= self.block_count() => Ok(()),
            _ => Err(Error::out_of_range(format!(
                "extent {} blocks from {} passes the end of a {}-block disk",
                extent.count,
                extent.start,
                self.block_count()
            ))),
        }
    }
}

impl fmt::Display for Geometry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} bytes in {} blocks of {}",
            self.size,
            self.block_count(),
            self.block_size()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn block_sizes() {
        for bs in [4096, 8192, 65536, 1 << 20] {
            assert_eq!(Geometry::new(1 << 30, bs).unwrap().block_size(), bs);
        }
        for bs in [0, 512, 2048, 4095, 6144, 1 << 21, u32::MAX] {
            let e = Geometry::new(1 << 30, bs).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bs}");
        }
        assert!(Geometry::new(0, 4096).is_err());
        assert!(Geometry::new(MAX_DISK_SIZE + 1, 4096).is_err());
        assert!(Geometry::new(MAX_DISK_SIZE, 4096).is_ok());
    }

    #[test]
    fn short_last_block() {
        let g = Geometry::new(10_000, 4096).unwrap();
        assert_eq!(g.block_count(), 3);
        assert_eq!(g.block_len(0), 4096);
        assert_eq!(g.block_len(2), 10_000 - 8192);
        assert_eq!(g.block_len(3), 0);
        assert_eq!(g.blocks_for_range(9999, 1).unwrap(), Extent::new(2, 1));
        assert_eq!(g.blocks_for_range(4095, 2).unwrap(), Extent::new(0, 2));
        assert_eq!(g.blocks_for_range(0, 10_000).unwrap(), Extent::new(0, 3));
        assert_eq!(g.extent_bytes(Extent::new(1, 2)), (4096, 10_000 - 4096));
    }

    #[test]
    fn bad_ranges() {
        let g = Geometry::new(1 << 20, 4096).unwrap();
        assert_eq!(
            g.blocks_for_range(0, 0).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
        let e = g.blocks_for_range(u64::MAX, 2).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::OutOfRange);
        assert_eq!(e.context().offset, Some(u64::MAX));
        assert_eq!(
            g.blocks_for_range(1 << 20, 1).unwrap_err().kind(),
            ErrorKind::OutOfRange
        );
        assert_eq!(
            g.blocks_for_range((1 << 20) - 1, 2).unwrap_err().kind(),
            ErrorKind::OutOfRange
        );
        assert!(g.check_extent(Extent::new(255, 1)).is_ok());
        assert!(g.check_extent(Extent::new(255, 2)).is_err());
        assert!(g.check_extent(Extent::new(u64::MAX, 2)).is_err());
        assert!(g.check_extent(Extent::new(0, 0)).is_err());
    }
}
