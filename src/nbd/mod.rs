//! Reading a disk from an NBD server (the `qemu` feature): QEMU exports a
//! running disk this way (`qemu-nbd`, `qemu-storage-daemon`, a VM's
//! `nbd-server-start`), with its dirty bitmaps readable through the
//! `qemu:dirty-bitmap:NAME` metadata context and its allocation through
//! `base:allocation`.
//!
//! * [`wire`]: the protocol's numbers and messages, declared once;
//! * [`NbdClient`]: the handshake, reads and block status over any
//!   byte stream (Unix socket, TCP).

mod client;
pub mod wire;

pub use client::{
    ExportInfo, NbdClient, NbdExtent, NbdOptions, Transport, STATE_DIRTY, STATE_HOLE, STATE_ZERO,
    WINDOW,
};
