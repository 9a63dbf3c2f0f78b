//! The one public error type of blockrep.
//!
//! Every fallible call returns [`Error`]: a small [`ErrorKind`] that callers
//! (and the C ABI) branch on, a message, and the context that locates the
//! problem: a path, a byte offset, a log sequence number.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Shorthand for `std::result::Result<T, blockrep::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, as a stable category.
///
/// Each kind has a numeric [`code`](ErrorKind::code) that the C ABI returns as
/// its status. Codes are never reused or renumbered; new kinds get new codes.
#[non_exhaustive]
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum ErrorKind {
    /// An operating-system I/O call failed (other than a full device).
    Io = 100,
    /// The device or file system has no space left.
    NoSpace = 101,
    /// Stored data failed validation: bad magic, checksum, length or structure.
    Corrupt = 200,
    /// Data is valid but belongs elsewhere: another disk, epoch, geometry or
    /// an out-of-order sequence.
    Mismatch = 201,
    /// Sealed data failed authentication: altered, truncated, extended,
    /// reordered, or standing for another object than the one expected.
    Unauthentic = 202,
    /// An offset, length or block lies outside the disk or overflows.
    OutOfRange = 300,
    /// An argument is impossible on its face (zero length, bad block size).
    InvalidArgument = 301,
    /// The call is not allowed in the current state (double free, wrong role).
    Misuse = 302,
    /// Another writer holds the target (a second primary claiming a disk
    /// in an object store): this one must stop.
    Fenced = 303,
    /// Change tracking cannot be trusted; a digest resync is required.
    ResyncRequired = 400,
    /// The data uses a feature or version this build does not support.
    Unsupported = 500,
}

impl ErrorKind {
    /// The stable numeric code of this kind, as returned through the C ABI.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// A short lower-case name of the kind.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Io => "i/o error",
            ErrorKind::NoSpace => "no space left",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::Mismatch => "mismatch",
            ErrorKind::Unauthentic => "not authentic",
            ErrorKind::OutOfRange => "out of range",
            ErrorKind::InvalidArgument => "invalid argument",
            ErrorKind::Misuse => "misuse",
            ErrorKind::Fenced => "fenced",
            ErrorKind::ResyncRequired => "resync required",
            ErrorKind::Unsupported => "unsupported",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where an error happened, as far as it is known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context {
    /// The file involved.
    pub path: Option<PathBuf>,
    /// The byte offset involved (in a file, log or disk).
    pub offset: Option<u64>,
    /// The log sequence number involved.
    pub sequence: Option<u64>,
}

impl fmt::Display for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = " (";
        if let Some(p) = &self.path {
            write!(f, "{sep}path {}", p.display())?;
            sep = ", ";
        }
        if let Some(o) = self.offset {
            write!(f, "{sep}offset {o}")?;
            sep = ", ";
        }
        if let Some(s) = self.sequence {
            write!(f, "{sep}sequence {s}")?;
            sep = ", ";
        }
        if sep == ", " {
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// What a refused log or acknowledgement conflicts with, in a form a
/// transport can act on without parsing messages. Reached through
/// [`Error::detail`]; the C ABI exposes it through
/// `blockrep_last_error_detail`.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum Detail {
    /// The log does not follow the replica: it expects `expected` next
    /// (built on `expected - 1`).
    SequenceGap {
        /// The sequence the replica takes next.
        expected: u64,
    },
    /// The log (or request) is for another disk than `expected`.
    OtherDisk {
        /// The disk the replica (or spool) holds.
        expected: crate::id::DiskId,
    },
    /// The log's epoch is older than the replica's `current` one.
    EpochBehind {
        /// The replica's epoch.
        current: u64,
    },
    /// The log builds on content the replica does not hold at its base
    /// sequence: the histories diverged.
    DivergedHistory {
        /// The replica's latest sequence.
        sequence: u64,
        /// The replica's content digest there.
        held: crate::log::Digest,
    },
    /// A different log with this sequence was applied (or, for an
    /// acknowledgement, spooled): same sequence, other content.
    Conflict {
        /// The sequence both logs carry.
        sequence: u64,
        /// The digest of the one that is held.
        held: crate::log::Digest,
    },
    /// The sequence is not past the replica's latest point, and its point
    /// is no longer retained: whether this log was applied cannot be
    /// proved, so it is neither applied nor reported as applied.
    NotRetained {
        /// The oldest retained sequence.
        oldest: u64,
    },
}

impl Detail {
    /// A stable number for the variant, as the C ABI reports it (0 is "no
    /// detail"); never reused.
    pub fn code(&self) -> u32 {
        match self {
            Detail::SequenceGap { .. } => 1,
            Detail::OtherDisk { .. } => 2,
            Detail::EpochBehind { .. } => 3,
            Detail::DivergedHistory { .. } => 4,
            Detail::Conflict { .. } => 5,
            Detail::NotRetained { .. } => 6,
        }
    }
}

/// The error of every blockrep operation.
///
/// One pointer wide, so `Result<(), Error>` costs nothing on hot paths such
/// as [`Tracker::mark`](crate::Tracker::mark).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct Error(Box<Inner>);

#[derive(Debug, thiserror::Error)]
#[error("{kind}: {message}{context}")]
struct Inner {
    kind: ErrorKind,
    message: String,
    context: Context,
    detail: Option<Detail>,
    #[source]
    source: Option<io::Error>,
}

impl Error {
    /// A new error of `kind` with a message saying what is wrong.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error(Box::new(Inner {
            kind,
            message: message.into(),
            context: Context::default(),
            detail: None,
            source: None,
        }))
    }

    /// Wraps an OS error; a full device becomes [`ErrorKind::NoSpace`].
    pub fn io(what: impl Into<String>, err: io::Error) -> Self {
        let kind = match err.raw_os_error() {
            Some(libc::ENOSPC | libc::EDQUOT) => ErrorKind::NoSpace,
            _ if err.kind() == io::ErrorKind::StorageFull => ErrorKind::NoSpace,
            _ => ErrorKind::Io,
        };
        Error(Box::new(Inner {
            kind,
            message: format!("{}: {err}", what.into()),
            context: Context::default(),
            detail: None,
            source: Some(err),
        }))
    }

    /// Shorthand for a [`ErrorKind::Corrupt`] error.
    pub fn corrupt(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Corrupt, message)
    }

    /// Shorthand for a [`ErrorKind::Mismatch`] error.
    pub fn mismatch(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Mismatch, message)
    }

    /// Shorthand for an [`ErrorKind::OutOfRange`] error.
    pub fn out_of_range(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::OutOfRange, message)
    }

    /// Shorthand for an [`ErrorKind::InvalidArgument`] error.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }

    /// Attaches the file involved.
    pub fn with_path(mut self, path: impl AsRef<Path>) -> Self {
        self.0.context.path = Some(path.as_ref().to_path_buf());
        self
    }

    /// Attaches the byte offset involved.
    pub fn with_offset(mut self, offset: u64) -> Self {
        self.0.context.offset = Some(offset);
        self
    }

    /// Attaches the log sequence number involved.
    pub fn with_sequence(mut self, sequence: u64) -> Self {
        self.0.context.sequence = Some(sequence);
        self
    }

    /// Attaches a typed detail of what a log conflicts with.
    pub fn with_detail(mut self, detail: Detail) -> Self {
        self.0.detail = Some(detail);
        self
    }

    /// The typed detail of a refused log or acknowledgement, if any.
    pub fn detail(&self) -> Option<Detail> {
        self.0.detail
    }

    /// The category of this error.
    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    /// The message, without kind or context.
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// Where the error happened, as far as known.
    pub fn context(&self) -> &Context {
        &self.0.context
    }

    /// The error as a peer may read it: kind, message, offset and
    /// sequence, but not the file involved (a server's storage paths are
    /// its own).
    pub fn to_peer_string(&self) -> String {
        let context = Context {
            path: None,
            ..self.0.context.clone()
        };
        format!("{}: {}{context}", self.0.kind, self.0.message)
    }
}

/// Adds context to the error of a `Result` without touching the success path.
pub trait ResultExt<T> {
    /// Attaches `path` to the error, if any.
    fn at_path(self, path: impl AsRef<Path>) -> Result<T>;
    /// Attaches `offset` to the error, if any.
    fn at_offset(self, offset: u64) -> Result<T>;
}

impl<T> ResultExt<T> for Result<T> {
    fn at_path(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| e.with_path(path))
    }
    fn at_offset(self, offset: u64) -> Result<T> {
        self.map_err(|e| e.with_offset(offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_includes_kind_message_and_context() {
        let e = Error::corrupt("bad header checksum")
            .with_path("/x/t.bin")
            .with_offset(60)
            .with_sequence(7);
        assert_eq!(
            e.to_string(),
            "corrupt: bad header checksum (path /x/t.bin, offset 60, sequence 7)"
        );
        assert_eq!(
            Error::invalid("zero length").to_string(),
            "invalid argument: zero length"
        );
    }

    #[test]
    fn result_of_unit_is_one_pointer() {
        assert_eq!(
            std::mem::size_of::<Result<()>>(),
            std::mem::size_of::<usize>()
        );
    }

    #[test]
    fn enospc_maps_to_no_space() {
        let e = Error::io("write", io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(e.kind(), ErrorKind::NoSpace);
        let e = Error::io("write", io::Error::from_raw_os_error(libc::EIO));
        assert_eq!(e.kind(), ErrorKind::Io);
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn codes_are_stable() {
        let codes = [
            (ErrorKind::Io, 100),
            (ErrorKind::NoSpace, 101),
            (ErrorKind::Corrupt, 200),
            (ErrorKind::Mismatch, 201),
            (ErrorKind::OutOfRange, 300),
            (ErrorKind::InvalidArgument, 301),
            (ErrorKind::Misuse, 302),
            (ErrorKind::ResyncRequired, 400),
            (ErrorKind::Unsupported, 500),
        ];
        for (k, c) in codes {
            assert_eq!(k.code(), c, "{k}");
        }
    }
}
