//! Lowercase hex, the one text form of ids, digests and keys (in key
//! files, JSON, object names, URLs and headers).

use std::fmt::Write;

/// The `N` bytes a hex string of exactly `2 * N` digits names (either
/// case); `None` for anything else.
pub(crate) fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        // `get` (not indexing): a multi-byte character is refused, not a
        // panic.
        let pair = s.get(i * 2..i * 2 + 2)?;
        if !pair.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        *b = u8::from_str_radix(pair, 16).ok()?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let b = [0u8, 1, 0xab, 0xff];
        assert_eq!(hex(&b), "0001abff");
        assert_eq!(unhex::<4>("0001ABff"), Some(b));
        assert_eq!(unhex::<4>("0001abf"), None);
        assert_eq!(unhex::<4>("0001abfff"), None);
        // from_str_radix alone would take a sign.
        assert_eq!(unhex::<4>("+001abff"), None);
        assert_eq!(unhex::<2>("é00"), None);
        assert_eq!(unhex::<2>("0g00"), None);
    }
}
