//! Sealing at rest (feature `seal`): logs, base images and manifests
//! encrypted and authenticated with the replication pair's key before they
//! leave the host, so a copy of the store (or of a stolen replica disk)
//! reveals nothing and no change to it goes unnoticed.
//!
//! An object is sealed in chunks (1 MiB by default) with AES-256-GCM
//! (ring) under a key derived per object from the pair's key and a random
//! 24-byte salt; each chunk's nonce is its position and whether it is the
//! last, and its additional data is the object's header and its
//! [`Binding`] (disk, epoch, sequence, content digest). So a flipped bit,
//! a cut or extended object, chunks swapped within it, an object of
//! another disk or another place in the chain, and the wrong key are each
//! refused with a typed error ([`ErrorKind::Unauthentic`], or
//! [`ErrorKind::Mismatch`] for a key not held). The layout is in
//! docs/FORMAT.md ("Sealed object"); the golden file is
//! `tests/golden/sealed_v1.brseal`.
//!
//! Replays of a whole older object under the same name (an old manifest)
//! cannot be told from the bytes alone: the manifest carries a generation
//! that readers never let go backwards.
//!
//! [`ErrorKind::Unauthentic`]: crate::ErrorKind::Unauthentic
//! [`ErrorKind::Mismatch`]: crate::ErrorKind::Mismatch

mod format;
mod key;
mod stream;

pub use format::{sealed_len, Binding, ObjectKind, DEFAULT_CHUNK};
pub use key::{KeyId, Keyring, SealKey, KEY_LEN};
pub use stream::{OpenReader, Opener, SealWriter};

use crate::error::Result;

/// Seals `plain` whole (a manifest, a test's log) with the keyring's
/// current key.
pub fn seal_bytes(keys: &Keyring, binding: &Binding, plain: &[u8]) -> Result<Vec<u8>> {
    let mut w = SealWriter::new(Vec::new(), keys.current(), binding)?;
    w.append(plain)?;
    Ok(w.finish()?.0)
}

/// Opens a whole sealed object held in memory, at most `limit` plain bytes.
pub fn open_bytes(
    keys: &Keyring,
    binding: &Binding,
    sealed: &[u8],
    limit: usize,
) -> Result<Vec<u8>> {
    OpenReader::new(sealed, keys, binding)?.read_to_vec(limit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::Digest;
    use crate::{DiskId, ErrorKind};

    fn keys() -> Keyring {
        Keyring::new(SealKey::from_bytes([7; 32]))
    }

    fn binding() -> Binding {
        Binding::point(ObjectKind::Log, DiskId([9; 16]), 3, 42, Digest([5; 32]))
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 + i / 7) as u8).collect()
    }

    fn seal_with(chunk: u32, plain: &[u8]) -> Vec<u8> {
        let mut w =
            SealWriter::with_chunk(Vec::new(), keys().current(), &binding(), chunk).unwrap();
        // Written in uneven pieces: the chunking must not depend on them.
        for piece in plain.chunks(1000) {
            w.append(piece).unwrap();
        }
        let (out, n) = w.finish().unwrap();
        assert_eq!(n, out.len() as u64);
        assert_eq!(n, sealed_len(plain.len() as u64, chunk));
        out
    }

    fn open(sealed: &[u8]) -> crate::Result<Vec<u8>> {
        open_bytes(&keys(), &binding(), sealed, usize::MAX)
    }

    #[test]
    fn round_trips_at_every_size_around_the_chunk() {
        let c = 4096;
        for n in [0, 1, c - 1, c, c + 1, 2 * c, 3 * c + 17] {
            let plain = pattern(n);
            let sealed = seal_with(c as u32, &plain);
            assert_eq!(open(&sealed).unwrap(), plain, "{n} bytes");
            // And through `Read`, in small reads.
            let mut r = OpenReader::new(&sealed[..], &keys(), &binding()).unwrap();
            let mut back = Vec::new();
            let mut b = [0u8; 777];
            loop {
                let k = std::io::Read::read(&mut r, &mut b).unwrap();
                if k == 0 {
                    break;
                }
                back.extend_from_slice(&b[..k]);
            }
            assert_eq!(back, plain, "{n} bytes through Read");
        }
    }

    #[test]
    fn nothing_of_the_plain_text_shows() {
        let plain = vec![0xA5u8; 3 * 4096];
        let sealed = seal_with(4096, &plain);
        assert!(!sealed.windows(16).any(|w| w == &plain[..16]));
        // Two seals of the same bytes differ (a new salt each time).
        assert_ne!(sealed, seal_with(4096, &plain));
    }

    #[test]
    fn every_flipped_bit_is_refused() {
        let sealed = seal_with(4096, &pattern(2 * 4096 + 100));
        for at in (0..sealed.len())
            .step_by(97)
            .chain([0, 11, 12, 16, 32, 63, 64, sealed.len() - 1])
        {
            let mut bad = sealed.clone();
            bad[at] ^= 0x10;
            let e = open(&bad).unwrap_err();
            assert!(
                matches!(
                    e.kind(),
                    ErrorKind::Unauthentic
                        | ErrorKind::Corrupt
                        | ErrorKind::Unsupported
                        | ErrorKind::Mismatch
                ),
                "byte {at}: {e}"
            );
        }
    }

    #[test]
    fn cut_extended_and_reordered_objects_are_refused() {
        let c = 4096usize;
        let sealed = seal_with(c as u32, &pattern(3 * c));
        let chunk = c + 16;
        // Cut at every chunk boundary and inside chunks.
        for len in [64, 64 + 10, 64 + chunk, 64 + 2 * chunk, sealed.len() - 1] {
            let e = open(&sealed[..len]).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Unauthentic, "cut at {len}: {e}");
        }
        let e = open(&sealed[..10]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unauthentic);
        // Extended by a byte, and by a copy of a chunk.
        let mut longer = sealed.clone();
        longer.push(0);
        assert_eq!(open(&longer).unwrap_err().kind(), ErrorKind::Unauthentic);
        let mut longer = sealed.clone();
        longer.extend_from_slice(&sealed[64..64 + chunk]);
        assert_eq!(open(&longer).unwrap_err().kind(), ErrorKind::Unauthentic);
        // Two chunks swapped.
        let mut swapped = sealed.clone();
        swapped[64..64 + chunk].copy_from_slice(&sealed[64 + chunk..64 + 2 * chunk]);
        swapped[64 + chunk..64 + 2 * chunk].copy_from_slice(&sealed[64..64 + chunk]);
        assert_eq!(open(&swapped).unwrap_err().kind(), ErrorKind::Unauthentic);
        // A chunk of another object (same key, same binding) spliced in.
        let other = seal_with(c as u32, &pattern(3 * c));
        let mut spliced = sealed.clone();
        spliced[64..64 + chunk].copy_from_slice(&other[64..64 + chunk]);
        assert_eq!(open(&spliced).unwrap_err().kind(), ErrorKind::Unauthentic);
    }

    #[test]
    fn objects_open_only_where_they_belong() {
        let sealed = seal_with(4096, &pattern(5000));
        let b = binding();
        for other in [
            Binding {
                disk_id: DiskId([8; 16]),
                ..b
            },
            Binding { epoch: 4, ..b },
            Binding { sequence: 41, ..b },
            Binding {
                digest: Digest([6; 32]),
                ..b
            },
        ] {
            let e = open_bytes(&keys(), &other, &sealed, usize::MAX).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Unauthentic, "{other:?}: {e}");
        }
        let e = open_bytes(
            &keys(),
            &Binding {
                kind: ObjectKind::Base,
                ..b
            },
            &sealed,
            usize::MAX,
        )
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unauthentic);
        let wrong = Keyring::new(SealKey::from_bytes([8; 32]));
        let e = open_bytes(&wrong, &b, &sealed, usize::MAX).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Mismatch);
        assert!(
            e.to_string().contains(&keys().current().id().to_string()),
            "{e}"
        );
        // After a rotation, the old key still opens what it sealed.
        let rotated =
            Keyring::new(SealKey::from_bytes([8; 32])).with_old(SealKey::from_bytes([7; 32]));
        assert_eq!(
            open_bytes(&rotated, &b, &sealed, usize::MAX).unwrap(),
            pattern(5000)
        );
        // A size limit is kept.
        assert_eq!(
            open_bytes(&keys(), &b, &sealed, 4999).unwrap_err().kind(),
            ErrorKind::Corrupt
        );
    }
}
