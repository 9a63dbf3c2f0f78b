//! Replication from QEMU's own dirty bitmaps (the `qemu` feature), for
//! hosts that cannot hook the guest's writes: QEMU tracks them in a
//! persistent dirty bitmap, blockrep cuts a point with a fleecing
//! transaction over QMP and reads the dirty extents over NBD.
//!
//! * [`Qmp`]: the QEMU Machine Protocol client;
//! * [`QemuSource`]: the cycles of one node or of a group of nodes cut at
//!   one instant, into spools like any other source.

mod qmp;
mod source;
mod view;

pub use qmp::Qmp;
pub use source::{
    bitmap_name, node_size, CutViews, OnCut, QemuConfig, QemuCycle, QemuDisk, QemuDiskState,
    QemuSource,
};
