//! The replica's state record: identity, applied point, the phase of an
//! operation in progress, and the retention points. Format in
//! docs/FORMAT.md ("Replica state"); written atomically (temporary file,
//! sync, rename, directory sync) and checked on every read.

use crate::error::{Error, Result};
use crate::frame;
use crate::geometry::Geometry;
use crate::id::DiskId;
use crate::io::Dir;
use crate::le::{get_u32, get_u64, put_u32, put_u64};
use crate::log::{Consistency, Digest};

const MAGIC: [u8; 8] = *b"BRSTATE\0";
const VERSION: u32 = 1;
const FIXED: usize = 112;
const POINT_FIXED: usize = 72;
pub(crate) const STATE: &str = "state";

/// A retention point: a replica state the user can return to.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct PointInfo {
    /// The sequence of the log that produced the point.
    pub sequence: u64,
    /// The epoch it belongs to.
    pub epoch: u64,
    /// When the point was cut on the primary (ns since the Unix epoch).
    pub created_ns: u64,
    /// Crash- or app-consistent.
    pub consistency: Consistency,
    /// The label given when it was cut (may be empty).
    pub label: String,
    /// The content digest at this point.
    pub digest: Digest,
    /// Size of the undo log that turns this point into the one before it
    /// (0 for the oldest point, which has none).
    pub undo_bytes: u64,
}

/// An operation whose crash must be undone on open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Idle,
    /// Log N is being written over the image; undo N restores N-1.
    Applying(u64),
    /// Undo N is being applied to return from point N to N-1.
    RollingBack(u64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct State {
    pub disk_id: DiskId,
    pub epoch: u64,
    pub geometry: Geometry,
    pub applied: u64,
    pub digest: Digest,
    pub phase: Phase,
    /// Oldest first; the last is the image's current point.
    pub points: Vec<PointInfo>,
}

impl State {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = frame::start(MAGIC, VERSION, FIXED);
        b[16..32].copy_from_slice(&self.disk_id.0);
        put_u64(&mut b, 32, self.epoch);
        put_u64(&mut b, 40, self.geometry.size());
        put_u32(&mut b, 48, self.geometry.block_size());
        let (phase, seq) = match self.phase {
            Phase::Idle => (0, 0),
            Phase::Applying(n) => (1, n),
            Phase::RollingBack(n) => (2, n),
        };
        b[52] = phase;
        put_u64(&mut b, 56, seq);
        put_u64(&mut b, 64, self.applied);
        b[72..104].copy_from_slice(&self.digest.0);
        put_u32(&mut b, 104, self.points.len() as u32);
        for p in &self.points {
            let mut e = [0u8; POINT_FIXED];
            put_u64(&mut e, 0, p.sequence);
            put_u64(&mut e, 8, p.epoch);
            put_u64(&mut e, 16, p.created_ns);
            put_u64(&mut e, 24, p.undo_bytes);
            e[32..64].copy_from_slice(&p.digest.0);
            e[64] = p.consistency as u8;
            e[65] = p.label.len().min(255) as u8;
            b.extend_from_slice(&e);
            b.extend_from_slice(&p.label.as_bytes()[..p.label.len().min(255)]);
        }
        let total = b.len() as u32 + 4;
        put_u32(&mut b, 12, total);
        frame::seal(b)
    }

    pub(crate) fn decode(b: &[u8]) -> Result<State> {
        let bad = |at: usize, m: &str| {
            Error::corrupt(format!("replica state: {m}")).with_offset(at as u64)
        };
        let n = frame::open(b, MAGIC, VERSION, FIXED, "replica state")?;
        if get_u32(b, 12) as usize != b.len() {
            return Err(bad(12, "length does not match the file"));
        }
        let geometry =
            Geometry::new(get_u64(b, 40), get_u32(b, 48)).map_err(|e| bad(40, e.message()))?;
        let phase = match (b[52], get_u64(b, 56)) {
            (0, _) => Phase::Idle,
            (1, s) => Phase::Applying(s),
            (2, s) => Phase::RollingBack(s),
            _ => return Err(bad(52, "unknown phase")),
        };
        let count = get_u32(b, 104) as usize;
        let mut points = Vec::with_capacity(count.min(n / POINT_FIXED));
        let mut at = FIXED;
        for _ in 0..count {
            if at + POINT_FIXED > n {
                return Err(bad(at, "points run past the end"));
            }
            let e = &b[at..at + POINT_FIXED];
            let label_len = e[65] as usize;
            let consistency = match e[64] {
                1 => Consistency::Crash,
                2 => Consistency::App,
                _ => return Err(bad(at + 64, "unknown consistency")),
            };
            if at + POINT_FIXED + label_len > n {
                return Err(bad(at, "label runs past the end"));
            }
            let label = std::str::from_utf8(&b[at + POINT_FIXED..at + POINT_FIXED + label_len])
                .map_err(|_| bad(at + POINT_FIXED, "label is not UTF-8"))?
                .to_owned();
            let mut digest = [0u8; 32];
            digest.copy_from_slice(&e[32..64]);
            points.push(PointInfo {
                sequence: get_u64(e, 0),
                epoch: get_u64(e, 8),
                created_ns: get_u64(e, 16),
                consistency,
                label,
                digest: Digest(digest),
                undo_bytes: get_u64(e, 24),
            });
            at += POINT_FIXED + label_len;
        }
        if at != n {
            return Err(bad(at, "bytes after the last point"));
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&b[16..32]);
        let mut digest = [0u8; 32];
        digest.copy_from_slice(&b[72..104]);
        Ok(State {
            disk_id: DiskId(id),
            epoch: get_u64(b, 32),
            geometry,
            applied: get_u64(b, 64),
            digest: Digest(digest),
            phase,
            points,
        })
    }

    /// Reads and checks the state of `dir`.
    pub(crate) fn load(dir: &dyn Dir) -> Result<State> {
        let b = dir.read_all(STATE)?;
        State::decode(&b).map_err(|e| match dir.path_of(STATE) {
            Some(p) => e.with_path(p),
            None => e,
        })
    }

    /// Replaces the state of `dir` atomically: a crash leaves the old state
    /// or the new one, whole.
    pub(crate) fn store(&self, dir: &dyn Dir) -> Result<()> {
        dir.store_atomic(STATE, &self.encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> State {
        State {
            disk_id: DiskId([4; 16]),
            epoch: 3,
            geometry: Geometry::new(1 << 30, 4096).unwrap(),
            applied: 9,
            digest: Digest([8; 32]),
            phase: Phase::Applying(10),
            points: vec![
                PointInfo {
                    sequence: 8,
                    epoch: 3,
                    created_ns: 5,
                    consistency: Consistency::Crash,
                    label: String::new(),
                    digest: Digest([1; 32]),
                    undo_bytes: 0,
                },
                PointInfo {
                    sequence: 9,
                    epoch: 3,
                    created_ns: 6,
                    consistency: Consistency::App,
                    label: "db quiesced".into(),
                    digest: Digest([8; 32]),
                    undo_bytes: 4242,
                },
            ],
        }
    }

    #[test]
    fn round_trip_and_every_flip_detected() {
        let s = sample();
        let b = s.encode();
        crate::assert_golden("replica_state_v1", &b);
        assert_eq!(State::decode(&b).unwrap(), s);
        for i in 0..b.len() {
            let mut x = b.clone();
            x[i] ^= 0x40;
            assert!(State::decode(&x).is_err(), "flip at {i}");
        }
        for cut in 0..b.len() {
            assert!(State::decode(&b[..cut]).is_err(), "cut at {cut}");
        }
    }
}
