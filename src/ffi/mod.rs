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

mod failover;
mod group;
mod log;
mod pipeline;
mod ptracker;
mod replica;
mod status;
mod tracker;

pub use failover::{
    blockrep_adopt_point, blockrep_disk_status, blockrep_failover, blockrep_failover_adopt_point,
    blockrep_failover_commit, blockrep_failover_free, blockrep_failover_promote,
    blockrep_failover_read, blockrep_failover_start_pipeline, blockrep_failover_switch,
    blockrep_failover_write, blockrep_pipeline_disk_status, blockrep_pipeline_divergence,
    blockrep_pipeline_reverse_sync, blockrep_replica_adopt, blockrep_replica_disk_status,
    blockrep_role, blockrep_test_failover, blockrep_test_failover_free,
    blockrep_test_failover_open, blockrep_test_failover_read, blockrep_test_failover_write,
};
pub use group::{
    blockrep_group_cycle, blockrep_pipeline_join_group, blockrep_pipeline_resize,
    blockrep_replica_group, blockrep_replica_group_apply, blockrep_replica_group_free,
    blockrep_replica_group_open, blockrep_replica_tag,
};
pub use log::{
    blockrep_consistency, blockrep_log_info, blockrep_log_kind, blockrep_log_verify,
    blockrep_log_writer, blockrep_log_writer_add_block, blockrep_log_writer_add_zero,
    blockrep_log_writer_commit, blockrep_log_writer_create, blockrep_log_writer_free,
};
pub use pipeline::{
    blockrep_cycle_info, blockrep_pipeline, blockrep_pipeline_ack, blockrep_pipeline_close,
    blockrep_pipeline_create, blockrep_pipeline_cycle, blockrep_pipeline_free,
    blockrep_pipeline_get_status, blockrep_pipeline_initial_sync, blockrep_pipeline_log_path,
    blockrep_pipeline_log_read, blockrep_pipeline_next_log, blockrep_pipeline_open,
    blockrep_pipeline_resync, blockrep_pipeline_rewind, blockrep_pipeline_status,
    blockrep_pipeline_write_begin, blockrep_pipeline_write_end, blockrep_pipeline_zero_begin,
    blockrep_pipeline_zero_end, blockrep_spooled_log,
};
pub use ptracker::{
    blockrep_open_state, blockrep_ptracker, blockrep_ptracker_begin_write, blockrep_ptracker_close,
    blockrep_ptracker_commit, blockrep_ptracker_cut, blockrep_ptracker_end_write,
    blockrep_ptracker_free, blockrep_ptracker_open, blockrep_ptracker_reclaim,
};
pub use replica::{
    blockrep_incoming, blockrep_incoming_apply, blockrep_incoming_free, blockrep_incoming_write,
    blockrep_point, blockrep_replica, blockrep_replica_apply, blockrep_replica_block_digests,
    blockrep_replica_create, blockrep_replica_export, blockrep_replica_free,
    blockrep_replica_get_info, blockrep_replica_info, blockrep_replica_open,
    blockrep_replica_points, blockrep_replica_prune, blockrep_replica_receive,
    blockrep_replica_rollback, blockrep_view, blockrep_view_free, blockrep_view_open,
    blockrep_view_read,
};

pub use status::{
    blockrep_detail, blockrep_error_detail, blockrep_last_error, blockrep_last_error_detail,
    blockrep_status, blockrep_version,
};
pub use tracker::{
    blockrep_blockset, blockrep_blockset_count, blockrep_blockset_extents, blockrep_blockset_free,
    blockrep_blockset_generation, blockrep_blockset_union, blockrep_extent, blockrep_tracker,
    blockrep_tracker_cut, blockrep_tracker_free, blockrep_tracker_mark, blockrep_tracker_new,
    blockrep_tracker_reclaim,
};
