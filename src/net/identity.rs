//! Which primary a client certificate names. The server lists authorised
//! names; an entry may begin with one wildcard label (`*.site-a.example`),
//! which matches exactly one more label (`host1.site-a.example`, not
//! `a.b.site-a.example` nor `site-a.example`), as Hyper-V Replica's
//! authorisation entries do. The identity of a client is the first entry
//! one of its certificate's DNS names matches: every host under a wildcard
//! entry is one primary, owning the same disks.

use crate::error::{Error, ErrorKind, Result};
use rustls::pki_types::CertificateDer;

/// An authorised primary: the allow-list entry its certificate matched.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity(String);

impl Identity {
    /// The identity of an allow-list entry (the server's own bookkeeping:
    /// a primary's root found on disk at start).
    pub(crate) fn of_entry(entry: &str) -> Identity {
        Identity(entry.to_string())
    }

    /// The entry, as configured (`*.site-a.example`, `dr1.example`).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone)]
enum Pattern {
    /// A whole name, lowercase.
    Exact(String),
    /// `*.SUFFIX`: the suffix with its leading dot, lowercase.
    Wildcard(String),
}

/// The server's list of authorised primaries.
#[derive(Debug, Clone, Default)]
pub struct AllowList {
    entries: Vec<(Identity, Pattern)>,
}

/// A DNS name of letters, digits, hyphens and dots, each label 1 to 63
/// bytes, 253 in all.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

impl AllowList {
    /// The list from its configured entries: DNS names, or `*.` and a DNS
    /// name of at least two labels. Anything else is refused, naming it.
    pub fn new<S: AsRef<str>>(entries: &[S]) -> Result<Self> {
        let mut out = Vec::new();
        for e in entries {
            let e = e.as_ref();
            let lower = e.to_ascii_lowercase();
            let pattern = match lower.strip_prefix("*.") {
                Some(suffix) if valid_name(suffix) && suffix.contains('.') => {
                    Pattern::Wildcard(format!(".{suffix}"))
                }
                None if valid_name(&lower) => Pattern::Exact(lower),
                _ => {
                    return Err(Error::invalid(format!(
                    "allowed primary {e:?}: a DNS name, or `*.` and a name of two labels or more"
                )))
                }
            };
            out.push((Identity(e.to_string()), pattern));
        }
        Ok(AllowList { entries: out })
    }

    /// The identity `name` (a DNS name the certificate presents) has, if
    /// any entry allows it. A presented wildcard name matches nothing.
    fn matching(&self, name: &str) -> Option<&Identity> {
        let name = name.to_ascii_lowercase();
        if name.contains('*') || !valid_name(&name) {
            return None;
        }
        self.entries
            .iter()
            .find(|(_, p)| match p {
                Pattern::Exact(e) => *e == name,
                Pattern::Wildcard(suffix) => name
                    .strip_suffix(suffix.as_str())
                    .is_some_and(|label| !label.is_empty() && !label.contains('.')),
            })
            .map(|(id, _)| id)
    }

    /// The identity of a client whose certificate (already verified by the
    /// TLS handshake against the primaries' CA) is `cert`: the first entry
    /// one of its DNS names matches. Refused (`Misuse`, "not in the allowed
    /// list", with the names presented) when none does.
    pub fn identify(&self, cert: &CertificateDer<'_>) -> Result<Identity> {
        let ee = webpki::EndEntityCert::try_from(cert)
            .map_err(|e| Error::invalid(format!("client certificate: {e}")))?;
        let names: Vec<&str> = ee.valid_dns_names().collect();
        for entry in &self.entries {
            if names
                .iter()
                .any(|n| self.matching(n).is_some_and(|id| *id == entry.0))
            {
                return Ok(entry.0.clone());
            }
        }
        Err(Error::new(
            ErrorKind::Misuse,
            format!(
                "client certificate for {} is not in the allowed list",
                if names.is_empty() {
                    "no DNS name".to_string()
                } else {
                    names.join(", ")
                }
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_one_label_wildcards() {
        let l = AllowList::new(&["dr1.example", "*.Site-A.example"]).unwrap();
        let id = |n: &str| l.matching(n).map(|i| i.as_str().to_string());
        assert_eq!(id("dr1.example").as_deref(), Some("dr1.example"));
        assert_eq!(id("DR1.example").as_deref(), Some("dr1.example"));
        assert_eq!(
            id("host1.site-a.example").as_deref(),
            Some("*.Site-A.example")
        );
        for refused in [
            "site-a.example",
            "a.b.site-a.example",
            "host1.site-b.example",
            "*.site-a.example",
            "evil.example.dr1.example",
            "",
            "host1..site-a.example",
        ] {
            assert_eq!(id(refused), None, "{refused}");
        }
    }

    #[test]
    fn malformed_entries_are_refused() {
        for bad in [
            "*",
            "*.",
            "*.example",
            "a.*.example",
            "**.a.example",
            "a b",
            "",
        ] {
            assert!(AllowList::new(&[bad]).is_err(), "{bad:?}");
        }
    }
}
