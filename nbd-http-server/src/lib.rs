//! `nbd-http-server`: an NBD server whose blocks live on an HTTP block server
//! (`http-disk-server`), with failover across several of them.
//!
//! * [`handshake`] and [`transmission`]: the NBD protocol as sans-I/O state
//!   machines (the wire format itself is `heartbeat_wire::nbd`);
//! * [`upstream`]: the [`upstream::Upstream`] trait and its HTTP
//!   implementation with failover;
//! * [`server`]: the tokio glue between the two;
//! * [`daemon`]: command line, listeners, readiness line, signals.

pub mod daemon;
pub mod handshake;
pub mod kernel;
pub mod server;
pub mod transmission;
pub mod upstream;
