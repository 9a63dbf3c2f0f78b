//! # blockrep
//!
//! Block-level disaster-recovery replication for hypervisors and storage
//! agents: change tracking on the primary, delta logs shipped between sites,
//! a crash-safe replica with retention points, and failover.
//!
//! This crate is built up module by module, one concern each:
//!
//! * [`geometry`]: disk size, block size, byte ranges to blocks;
//! * [`io`]: the [`Storage`](io::Storage) trait with file, memory and
//!   fault-injecting backends;
//! * [`tracker`]: the lock-free dirty-block tracker, in memory or persistent;
//! * [`log`]: the delta log shipped between sites: writer, readers, format;
//! * [`replica`]: the crash-safe applier and the retention points;
//! * [`source`]: the primary side: initial sync, cycles, the spool,
//!   consistency groups, resync;
//! * [`failover`]: promotion, commit and reverse replication;
//! * [`ffi`]: the C ABI.
//!
//! ```
//! use blockrep::{Geometry, Tracker};
//!
//! let tracker = Tracker::new(Geometry::new(1 << 30, 4096)?);
//! tracker.mark(4096 * 10, 8192)?;      // after a guest write completes
//! let frozen = tracker.cut();          // one cycle's dirty set
//! let runs: Vec<_> = frozen.extents().collect();
//! assert_eq!(runs, vec![blockrep::Extent::new(10, 2)]);
//! # Ok::<(), blockrep::Error>(())
//! ```
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod error;
pub mod failover;
pub mod ffi;
mod frame;
pub mod geometry;
pub mod id;
pub mod io;
mod le;
pub mod log;
pub mod replica;
#[cfg(feature = "serde")]
mod serde_impls;
pub mod source;
pub mod status;
pub mod tracker;

pub use error::{Detail, Error, ErrorKind, Result};
pub use geometry::{BlockSet, Extent, Geometry};
pub use id::DiskId;
pub use tracker::{FrozenSet, PersistentTracker, Tracker};

/// Compares `bytes` with the committed golden file `tests/golden/NAME`
/// (rewritten when `BLOCKREP_BLESS` is set): a change to an on-disk
/// format fails until its version is bumped on purpose.
#[cfg(test)]
pub(crate) fn assert_golden(name: &str, bytes: &[u8]) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("BLOCKREP_BLESS").is_some() {
        std::fs::write(&path, bytes).unwrap();
    }
    let want = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        want == bytes,
        "{name} changed: bump its version or bless it"
    );
}

/// The README's Rust examples, compiled and run as doc tests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
