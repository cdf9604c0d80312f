//! `nbd-http-server`: an NBD server whose blocks live on an HTTP block server
//! (`http-disk-server`), with failover across several of them.
//!
//! * [`handshake`] and [`transmission`]: the NBD protocol as sans-I/O state
//!   machines (the wire format itself is `heartbeat_wire::nbd`);
//! * [`upstream`]: the [`upstream::Upstream`] trait and its HTTP
//!   implementation with failover;
//! * [`server`]: the tokio glue between the two;
//! * [`activity`]: what the NBD side is doing, for the upstream's answer
//!   polling;
//! * [`kernel`]: attaching `/dev/nbdN` (generic netlink, ioctl fallback);
//! * [`attach`]: the daemon's kernel device: attach or reconnect, keep it
//!   connected, the `/dev/http-nbd/<volume>` link, detach;
//! * [`metrics`]: Prometheus counters, `--metrics-listen`;
//! * [`daemon`]: command line, listeners, readiness line, signals.

pub mod activity;
pub mod attach;
pub mod daemon;
pub mod handshake;
pub mod kernel;
pub mod metrics;
pub mod server;
pub mod transmission;
pub mod upstream;
