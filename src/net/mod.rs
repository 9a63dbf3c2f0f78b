//! Between the sites (the `net` feature): the replica server and the
//! shipper speak HTTP/1.1 over mutually authenticated TLS 1.3, as
//! docs/PROTOCOL.md specifies.
//!
//! * [`tls`]: the server's and the client's TLS configurations from PEM
//!   files (rustls with the ring provider, TLS 1.3 only), and what a
//!   refused handshake means, said specifically;
//! * [`identity`]: which primary a client certificate names, against the
//!   server's list of authorised names (one leading wildcard label
//!   allowed);
//! * [`http`]: just enough HTTP/1.1, with limits;
//! * [`server`]: the replica server;
//! * [`client`]: one connection to it;
//! * [`bandwidth`]: the shipper's bandwidth limit and its schedule;
//! * [`shipper`]: a pipeline's spool pushed to the server from a thread of
//!   its own, resuming after any cut.

pub mod bandwidth;
pub mod client;
pub mod http;
pub mod identity;
pub mod server;
pub mod shipper;
mod sock;
pub mod tls;

pub use bandwidth::{Bandwidth, Window};
pub use client::{Client, Response};
pub use identity::{AllowList, Identity};
pub use server::{
    Health, HealthPolicy, Limits, PrimaryConfig, Server, ServerConfig, DEFAULT_MAX_DISK,
};
pub use shipper::{remote_digests, Shipper, ShipperConfig, ShipperStatus};
pub use tls::{client_config, handshake_refusal, server_config, TlsFiles};
