//! The C ABI: opaque handles, `_new`/`_free` pairs, a status code per call,
//! outputs through out-parameters written only on success, and a
//! thread-local message for the last error. Nothing else in the crate sees
//! these types. `include/blockrep.h` is generated from this module by
//! cbindgen (see `cbindgen.toml`; a test fails when it drifts).
//!
//! The layer only translates: every export converts its arguments through
//! `convert` (handles, out-parameters, buffers, strings: one policy
//! each), calls the core, and converts the result back. One file per
//! handle type holds every `blockrep_TYPE_*` function.
//!
//! Every export catches panics: none crosses into C. A handle passed to
//! `_free` twice is refused (`BLOCKREP_STATUS_MISUSE`); a pointer to a
//! handle of another type, or to one already freed whose memory was not
//! reused, is refused by its tag.

#![allow(non_camel_case_types)]

mod blockset;
mod convert;
mod error;
mod failover;
mod group;
mod incoming;
mod log;
mod pipeline;
mod ptracker;
mod replica;
#[cfg(feature = "net")]
mod shipper;
mod status;
#[cfg(feature = "s3")]
mod store;
mod test_failover;
mod tracker;
mod types;
mod view;

pub use blockset::*;
pub use error::*;
pub use failover::*;
pub use group::*;
pub use incoming::*;
pub use log::*;
pub use pipeline::*;
pub use ptracker::*;
pub use replica::*;
pub use status::*;
pub use test_failover::*;
pub use tracker::*;
pub use types::*;
pub use view::*;
