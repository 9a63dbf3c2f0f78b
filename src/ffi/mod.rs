//! The C ABI: opaque handles, `_new`/`_free` pairs, a status code per call,
//! outputs through out-parameters written only on success, and a
//! thread-local message for the last error. Nothing else in the crate sees
//! these types. `include/blockrep.h` is generated from this module by
//! cbindgen (see `cbindgen.toml`; a test fails when it drifts).
//!
//! Every export catches panics: none crosses into C. A handle passed to
//! `_free` twice is detected and refused (`BLOCKREP_STATUS_MISUSE`) as long
//! as the memory was not reused by a new handle in between.

#![allow(non_camel_case_types)]

mod ptracker;
mod status;
mod tracker;

pub use ptracker::{
    blockrep_open_state, blockrep_ptracker, blockrep_ptracker_begin_write, blockrep_ptracker_close,
    blockrep_ptracker_commit, blockrep_ptracker_cut, blockrep_ptracker_end_write,
    blockrep_ptracker_free, blockrep_ptracker_open, blockrep_ptracker_reclaim,
};

pub use status::{blockrep_last_error, blockrep_status, blockrep_version};
pub use tracker::{
    blockrep_blockset, blockrep_blockset_count, blockrep_blockset_extents, blockrep_blockset_free,
    blockrep_blockset_generation, blockrep_extent, blockrep_tracker, blockrep_tracker_cut,
    blockrep_tracker_free, blockrep_tracker_mark, blockrep_tracker_new, blockrep_tracker_reclaim,
};
