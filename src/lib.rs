//! # blockrep
//!
//! Block-level disaster-recovery replication for hypervisors and storage
//! agents: change tracking on the primary, delta logs shipped between sites,
//! a crash-safe replica with retention points, and failover.
//!
//! ## The front door
//!
//! What an integration holds: a [`Pipeline`](source::Pipeline) per
//! protected disk on the primary (built with
//! [`Pipeline::builder`](source::Pipeline::builder): tracking, copy before
//! write, cycles, the spool), a [`Replica`](replica::Replica) per disk on
//! the secondary (apply, points, views, export), a
//! [`Failover`](failover::Failover) when the replica becomes the disk, and
//! a [`DiskStatus`](status::DiskStatus) of either for a console. These are
//! cheap-to-clone handles or plain reports.
//!
//! ## The parts underneath
//!
//! Each module is one concern, usable alone by an integration that does
//! its own composition:
//!
//! * [`geometry`]: disk size, block size, byte ranges to blocks, block sets;
//! * [`io`]: the [`Storage`](io::Storage) and [`Dir`](io::Dir) traits with
//!   file, memory and fault-injecting backends;
//! * [`tracker`]: the lock-free dirty-block tracker, in memory or persistent;
//! * [`log`]: the delta log shipped between sites: writer, readers, format;
//! * [`replica`]: the crash-safe applier and the retention points;
//! * [`source`]: the primary side; besides the pipeline, the low-level
//!   [`Source`](source::Source) (cycles into any writer) and
//!   [`Spool`](source::Spool);
//! * [`failover`]: promotion, commit, reverse replication, recovery plans;
//! * [`status`]: what a console shows per disk (`Serialize` with the
//!   `serde` feature);
//! * `nbd` (feature `qemu`): a client of QEMU's NBD exports: reads, block
//!   status, dirty bitmaps;
//! * `qemu` (feature `qemu`): replication of a running QEMU disk from its
//!   dirty bitmaps, over QMP and NBD;
//! * `seal` (feature `seal`): logs, bases and manifests encrypted and
//!   authenticated at rest with the replication pair's key;
//! * `store` (feature `s3`): an S3-compatible object store as the
//!   target, and a replica hydrated from it on any host;
//! * [`ffi`]: the C ABI, which only translates (see `include/blockrep.h`).
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
mod hex;
pub mod id;
pub mod io;
mod le;
pub mod log;
#[cfg(feature = "qemu")]
pub mod nbd;
#[cfg(feature = "net")]
pub mod net;
#[cfg(feature = "qemu")]
pub mod qemu;
pub mod replica;
#[cfg(any(feature = "net", feature = "s3"))]
mod retry;
#[cfg(feature = "seal")]
pub mod seal;
#[cfg(feature = "serde")]
mod serde_impls;
pub mod source;
pub mod status;
#[cfg(feature = "s3")]
pub mod store;
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
