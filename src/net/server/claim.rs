//! What a log push claims, parsed once from its request with every number
//! checked (the body's place in the log, the log's length), and what it
//! names (disk, sequence, digest), which the log itself must bear out
//! before anything is applied.

use crate::error::{Detail, Error, ErrorKind, Result};
use crate::id::DiskId;
use crate::log::{Digest, LogHeader, MappedLog};
use crate::net::http::Head;

/// A push, as its request line and headers claim it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PushClaim {
    /// The disk in the URL.
    pub disk: DiskId,
    /// The sequence in the URL.
    pub sequence: u64,
    /// `Blockrep-Digest`: the log's content digest.
    pub digest: Digest,
    /// The body is bytes `start .. start + len` of a log of `total` bytes.
    pub start: u64,
    /// The body's length (`Content-Length`).
    pub len: u64,
    /// The whole log's length.
    pub total: u64,
    /// No `Content-Range`: the whole log (again), superseding what is held.
    pub restart: bool,
}

/// A refusal: the status to answer and why.
pub(super) type Refusal = (u16, Error);

impl PushClaim {
    /// Parses and checks the request of a push of log `sequence` of `disk`:
    /// a digest, a body length, a range inside the declared length, a
    /// length within `max_log`.
    pub fn parse(
        head: &Head,
        disk: DiskId,
        sequence: u64,
        max_log: u64,
    ) -> std::result::Result<PushClaim, Refusal> {
        let bad = |m: String| (400, Error::invalid(m));
        let digest = head
            .header("blockrep-digest")
            .and_then(super::parse_digest)
            .ok_or_else(|| bad("Blockrep-Digest: the log's digest in hex is required".into()))?;
        let len = head.content_length().map_err(|e| (400, e))?;
        let (start, total, restart) = match head.header("content-range") {
            None => (0, len, true),
            Some(v) => {
                let (a, b, t) = parse_range(v)
                    .ok_or_else(|| bad(format!("Content-Range {v:?}: bytes FIRST-LAST/TOTAL")))?;
                // Checked: every number here is the peer's.
                let span = b.checked_sub(a).and_then(|d| d.checked_add(1));
                if span != Some(len) || b >= t {
                    return Err(bad(format!(
                        "Content-Range {v:?} is not a range of {len} bytes inside the log"
                    )));
                }
                (a, t, false)
            }
        };
        if total > max_log {
            return Err((
                413,
                Error::out_of_range(format!("a log of {total} bytes; at most {max_log}")),
            ));
        }
        Ok(PushClaim {
            disk,
            sequence,
            digest,
            start,
            len,
            total,
            restart,
        })
    }

    /// Checks what the log's header says against the claim: its disk, its
    /// sequence, and its disk size against `max_disk`.
    pub fn check_header(&self, h: &LogHeader, max_disk: u64) -> Result<()> {
        if h.disk_id != self.disk {
            return Err(Error::mismatch(format!(
                "a log of disk {} pushed as disk {}",
                h.disk_id, self.disk
            ))
            .with_detail(Detail::OtherDisk {
                expected: self.disk,
            }));
        }
        if h.sequence != self.sequence {
            return Err(Error::mismatch(format!(
                "log {} pushed as log {}",
                h.sequence, self.sequence
            )));
        }
        let size = h.geometry.size();
        if size > max_disk {
            return Err(Error::new(
                ErrorKind::OutOfRange,
                format!("a disk of {size} bytes; this primary's disks hold at most {max_disk}"),
            ));
        }
        Ok(())
    }

    /// Checks a verified log against the claim: its header, and its
    /// content digest against `Blockrep-Digest`.
    pub fn check_log(&self, log: &MappedLog, max_disk: u64) -> Result<()> {
        self.check_header(log.header(), max_disk)?;
        let d = log.trailer().digest;
        if d != self.digest {
            return Err(Error::mismatch(format!(
                "log {} has digest {d}, pushed as {}",
                self.sequence, self.digest
            )));
        }
        Ok(())
    }
}

/// `bytes A-B/T`.
fn parse_range(v: &str) -> Option<(u64, u64, u64)> {
    let r = v.trim().strip_prefix("bytes ")?;
    let (span, total) = r.split_once('/')?;
    let (a, b) = span.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?, total.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(headers: &[(&str, &str)]) -> Head {
        Head {
            method: "PUT".into(),
            path: "/v1/disks/x/logs/1".into(),
            status: 0,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_lowercase(), (*v).to_string()))
                .collect(),
        }
    }

    const D: &str = "0000000000000000000000000000000000000000000000000000000000000000";

    fn claim(headers: &[(&str, &str)]) -> std::result::Result<PushClaim, u16> {
        PushClaim::parse(&head(headers), DiskId([1; 16]), 1, 1 << 20).map_err(|(s, _)| s)
    }

    #[test]
    fn ranges_are_checked_with_the_peers_numbers_never_trusted() {
        let ok = claim(&[
            ("Blockrep-Digest", D),
            ("Content-Length", "3"),
            ("Content-Range", "bytes 5-7/10"),
        ])
        .unwrap();
        assert_eq!((ok.start, ok.len, ok.total, ok.restart), (5, 3, 10, false));
        let whole = claim(&[("Blockrep-Digest", D), ("Content-Length", "10")]).unwrap();
        assert_eq!((whole.start, whole.total, whole.restart), (0, 10, true));
        let max = u64::MAX;
        for (len, range) in [
            // Backwards: `b + 1 - a` would wrap to a huge body.
            (max.to_string(), "bytes 5-3/10".to_string()),
            ("1".into(), "bytes 5-3/10".into()),
            // Past the declared length, or at it.
            ("3".into(), "bytes 8-10/10".into()),
            ("1".into(), "bytes 10-10/10".into()),
            // A span the body does not have.
            ("2".into(), "bytes 5-7/10".into()),
            // Overflowing spans.
            (max.to_string(), format!("bytes 0-{max}/{max}")),
            ("1".into(), format!("bytes {max}-{max}/{max}")),
            ("1".into(), "bytes 0-0/99999999999999999999999".into()),
            ("1".into(), "bytes -1-0/10".into()),
            ("1".into(), "bytes 0-0".into()),
        ] {
            let r = claim(&[
                ("Blockrep-Digest", D),
                ("Content-Length", &len),
                ("Content-Range", &range),
            ]);
            assert_eq!(r, Err(400), "{range} with {len} bytes");
        }
        // Over the longest log.
        let big = claim(&[
            ("Blockrep-Digest", D),
            ("Content-Length", "1"),
            ("Content-Range", "bytes 0-0/2000000"),
        ]);
        assert_eq!(big, Err(413));
        assert_eq!(claim(&[("Content-Length", "1")]), Err(400));
        assert_eq!(
            claim(&[("Blockrep-Digest", D), ("Content-Length", "x")]),
            Err(400)
        );
    }
}
