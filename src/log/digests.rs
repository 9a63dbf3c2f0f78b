//! Strong per-block digests of a disk, for the resync after tracking was
//! lost: the replica computes them and ships the list; the primary compares
//! its own and sends only the blocks that differ. Format in docs/FORMAT.md
//! ("Block digest list").

use super::Digest;
use crate::error::{Error, ErrorKind, Result};
use crate::frame;
use crate::geometry::BlockSet;
use crate::geometry::{Extent, Geometry};
use crate::id::DiskId;
use crate::io::Storage;
use crate::le::{get_u32, get_u64, put_u32, put_u64};

const MAGIC: [u8; 8] = *b"BRDIGST\0";
const VERSION: u32 = 1;
const FIXED: usize = 112;
/// Bytes read at a time per thread.
const CHUNK: u64 = 1 << 20;

/// The BLAKE3 digest of every block of a disk at one point of its chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDigests {
    /// The disk.
    pub disk_id: DiskId,
    /// The epoch of the point digested.
    pub epoch: u64,
    /// The sequence of the point digested.
    pub sequence: u64,
    /// Its content digest.
    pub digest: Digest,
    /// The disk's geometry.
    pub geometry: Geometry,
    /// One digest per block.
    pub blocks: Vec<[u8; 32]>,
}

/// Digests every block of `disk` on `threads` threads (0: all cores).
/// Holes (where the backend knows them) are not read.
pub fn block_digests(
    disk: &dyn Storage,
    geometry: Geometry,
    threads: usize,
) -> Result<Vec<[u8; 32]>> {
    let n = geometry.block_count();
    let len = usize::try_from(n).map_err(|_| Error::out_of_range("too many blocks"))?;
    let mut out = vec![[0u8; 32]; len];
    digest_blocks(disk, geometry, 0, &mut out, threads)?;
    Ok(out)
}

/// Digests blocks `first..first + out.len()` into `out` on `threads`
/// threads (0: all cores).
pub(crate) fn digest_blocks(
    disk: &dyn Storage,
    geometry: Geometry,
    first: u64,
    out: &mut [[u8; 32]],
    threads: usize,
) -> Result<()> {
    let threads = match threads {
        0 => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
        t => t,
    }
    .min(out.len().max(1));
    let per = out.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let jobs: Vec<_> = out
            .chunks_mut(per)
            .enumerate()
            .map(|(i, slice)| {
                let at = first + (i * per) as u64;
                s.spawn(move || digest_range(disk, geometry, at, slice))
            })
            .collect();
        jobs.into_iter().try_for_each(|j| {
            j.join()
                .unwrap_or_else(|_| Err(Error::new(ErrorKind::Io, "a digest thread panicked")))
        })
    })
}

impl BlockDigests {
    /// Writes the list to the file at `path` crash-safely: through a
    /// temporary file, synced, renamed into place, the directory synced. A
    /// crash leaves the old file or the new one, whole.
    pub fn store(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        let (dir, name) = crate::io::split_path(path.as_ref())?;
        dir.store_atomic(&name, &self.encode())
    }

    /// The blocks whose digest differs from `other`'s (same geometry).
    pub fn differing(&self, other: &[[u8; 32]]) -> Result<BlockSet> {
        if other.len() != self.blocks.len() {
            return Err(Error::mismatch(format!(
                "{} block digests against {}",
                other.len(),
                self.blocks.len()
            )));
        }
        let n = self.geometry.block_count();
        let mut runs = Vec::new();
        let mut b = 0u64;
        while b < n {
            if self.blocks[b as usize] == other[b as usize] {
                b += 1;
            } else {
                let start = b;
                while b < n && self.blocks[b as usize] != other[b as usize] {
                    b += 1;
                }
                runs.push(Extent::new(start, b - start));
            }
        }
        BlockSet::from_extents(n, runs)
    }

    /// Encodes the list for shipping.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = ListHead::of(self).encode();
        b.reserve(self.blocks.len() * 32 + 4);
        for d in &self.blocks {
            b.extend_from_slice(d);
        }
        frame::seal(b)
    }

    /// The length of the encoded list of a disk of `geometry`.
    pub fn encoded_len(geometry: Geometry) -> u64 {
        FIXED as u64 + geometry.block_count() * 32 + 4
    }

    /// Decodes and checks a shipped list.
    pub fn decode(b: &[u8]) -> Result<Self> {
        let bad = |at: usize, m: &str| {
            Error::corrupt(format!("block digest list: {m}")).with_offset(at as u64)
        };
        let n = frame::open(b, MAGIC, VERSION, FIXED, "block digest list")?;
        if get_u32(b, 12) != 0 || get_u32(b, 92) != 0 || get_u64(b, 104) != 0 {
            return Err(bad(12, "reserved bytes are not zero"));
        }
        let geometry =
            Geometry::new(get_u64(b, 80), get_u32(b, 88)).map_err(|e| bad(80, e.message()))?;
        let count = get_u64(b, 96);
        if count != geometry.block_count() || (n - FIXED) as u64 != count * 32 {
            return Err(bad(
                96,
                "block count does not match the geometry or the length",
            ));
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&b[16..32]);
        let mut digest = [0u8; 32];
        digest.copy_from_slice(&b[48..80]);
        let blocks = b[FIXED..n]
            .chunks_exact(32)
            .map(|c| c.try_into().expect("32 bytes"))
            .collect();
        Ok(BlockDigests {
            disk_id: DiskId(id),
            epoch: get_u64(b, 32),
            sequence: get_u64(b, 40),
            digest: Digest(digest),
            geometry,
            blocks,
        })
    }
}

/// What names a digest list: everything but its digests.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ListHead {
    pub disk_id: DiskId,
    pub epoch: u64,
    pub sequence: u64,
    pub digest: Digest,
    pub geometry: Geometry,
}

impl ListHead {
    fn of(l: &BlockDigests) -> Self {
        ListHead {
            disk_id: l.disk_id,
            epoch: l.epoch,
            sequence: l.sequence,
            digest: l.digest,
            geometry: l.geometry,
        }
    }

    /// The list's fixed part (docs/FORMAT.md, "Block digest list").
    fn encode(&self) -> Vec<u8> {
        let mut b = frame::start(MAGIC, VERSION, FIXED);
        b[16..32].copy_from_slice(&self.disk_id.0);
        put_u64(&mut b, 32, self.epoch);
        put_u64(&mut b, 40, self.sequence);
        b[48..80].copy_from_slice(&self.digest.0);
        put_u64(&mut b, 80, self.geometry.size());
        put_u32(&mut b, 88, self.geometry.block_size());
        put_u64(&mut b, 96, self.geometry.block_count());
        b
    }
}

/// Digests a list streams at a time: 2 MiB of digests, whatever the disk.
const STREAM_BLOCKS: u64 = 1 << 16;

/// Writes the encoded digest list of `disk` (the bytes
/// [`BlockDigests::encode`] gives) to `out` as it is computed, on
/// `threads` threads (0: all cores): memory stays bounded by
/// [`STREAM_BLOCKS`] digests whatever the disk's size. Returns the bytes
/// written, [`BlockDigests::encoded_len`].
pub(crate) fn write_digests(
    out: &mut dyn std::io::Write,
    head: &ListHead,
    disk: &dyn Storage,
    threads: usize,
) -> Result<u64> {
    write_digests_by(out, head, disk, threads, STREAM_BLOCKS)
}

/// [`write_digests`], `chunk` digests at a time.
fn write_digests_by(
    out: &mut dyn std::io::Write,
    head: &ListHead,
    disk: &dyn Storage,
    threads: usize,
    chunk: u64,
) -> Result<u64> {
    let io = |e| Error::io("send block digests", e);
    let mut crc = crc32fast::Hasher::new();
    let mut put = |b: &[u8]| -> Result<()> {
        crc.update(b);
        out.write_all(b).map_err(io)
    };
    put(&head.encode())?;
    let n = head.geometry.block_count();
    let mut digests = vec![[0u8; 32]; chunk.min(n) as usize];
    let mut first = 0;
    while first < n {
        let count = (n - first).min(chunk) as usize;
        digest_blocks(disk, head.geometry, first, &mut digests[..count], threads)?;
        put(digests[..count].as_flattened())?;
        first += count as u64;
    }
    let crc = crc.finalize();
    out.write_all(&crc.to_le_bytes()).map_err(io)?;
    Ok(BlockDigests::encoded_len(head.geometry))
}

/// Digests blocks `first..first + out.len()` into `out`.
fn digest_range(disk: &dyn Storage, g: Geometry, first: u64, out: &mut [[u8; 32]]) -> Result<()> {
    let bs = u64::from(g.block_size());
    let end = first + out.len() as u64;
    let zero = |len: u64| *blake3::hash(&vec![0u8; len as usize]).as_bytes();
    let full_zero = zero(bs);
    let mut buf = Vec::new();
    let mut b = first;
    while b < end {
        // Skip a hole: its whole blocks read as zeros.
        let off = g.block_offset(b);
        let data_at = match disk.next_data(off)? {
            Some((start, _)) => start,
            None => g.size(),
        };
        let hole_end = (data_at / bs).min(end);
        while b < hole_end {
            let len = u64::from(g.block_len(b));
            out[(b - first) as usize] = if len == bs { full_zero } else { zero(len) };
            b += 1;
        }
        if b >= end {
            break;
        }
        let n = (end - b).min(CHUNK / bs).max(1);
        let (off, len) = g.extent_bytes(Extent::new(b, n));
        buf.resize(len as usize, 0);
        disk.read_at(&mut buf, off)?;
        for (i, block) in buf.chunks(bs as usize).enumerate() {
            out[(b - first) as usize + i] = *blake3::hash(block).as_bytes();
        }
        b += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::MemStorage;

    #[test]
    fn digests_round_trip_and_every_flip_or_cut_is_detected() {
        let g = Geometry::new(10 * 4096 + 100, 4096).unwrap();
        let disk = MemStorage::zeroed(g.size()).unwrap();
        disk.write_at(&[7u8; 5000], 4096 * 3).unwrap();
        let blocks = block_digests(&disk, g, 3).unwrap();
        assert_eq!(blocks[0], *blake3::hash(&[0u8; 4096]).as_bytes());
        assert_eq!(blocks[10], *blake3::hash(&[0u8; 100]).as_bytes());
        assert_ne!(blocks[3], blocks[0]);
        let d = BlockDigests {
            disk_id: DiskId([3; 16]),
            epoch: 2,
            sequence: 17,
            digest: Digest([9; 32]),
            geometry: g,
            blocks: blocks.clone(),
        };
        let b = d.encode();
        crate::assert_golden("digests_v1", &b);
        assert_eq!(BlockDigests::decode(&b).unwrap(), d);
        for i in 0..b.len() {
            let mut x = b.clone();
            x[i] ^= 0x04;
            assert!(BlockDigests::decode(&x).is_err(), "flip at {i}");
        }
        for cut in 0..b.len() {
            assert!(BlockDigests::decode(&b[..cut]).is_err(), "cut at {cut}");
        }
        let mut other = blocks;
        other[4] = [1; 32];
        other[5] = [1; 32];
        other[9] = [1; 32];
        let set = d.differing(&other).unwrap();
        assert_eq!(set.blocks().collect::<Vec<_>>(), vec![4, 5, 9]);
        // Streamed a few digests at a time (the last chunk short, the
        // last block short), the bytes are the encoded list's.
        for chunk in [1, 3, 11, 64] {
            let mut streamed = Vec::new();
            let n = write_digests_by(&mut streamed, &ListHead::of(&d), &disk, 2, chunk).unwrap();
            assert_eq!(streamed, b, "chunks of {chunk}");
            assert_eq!(n, b.len() as u64);
            assert_eq!(BlockDigests::encoded_len(g), n);
        }
    }
}
