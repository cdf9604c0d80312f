//! The HTTP block protocol spoken between `nbd-http-server` (client) and
//! `http-disk-server` (server), defined once so both ends agree.
//!
//! The base protocol is the reference one (XCP-ng's http-nbd-transfer):
//! `HEAD /` for the size, `GET /` with `Range: bytes=a-b`, `PUT /` with
//! `Content-Range: bytes a-b/<size or *>`. Everything else here (role and epoch
//! headers, the status document) is an additive extension that a reference
//! client never has to look at.

pub mod auth;
pub mod config_file;
pub mod nbd;
pub mod range;
pub mod sd_notify;
pub mod status;

pub use range::{ByteRange, ContentRange, RangeError};
pub use status::{RequestCounters, Role, ServerStatus};

/// Path of the block device resource (the reference protocol only knows `/`).
pub const DISK_PATH: &str = "/";
/// JSON status document (extension).
pub const STATUS_PATH: &str = "/v1/status";
/// Prometheus text metrics (extension).
pub const METRICS_PATH: &str = "/metrics";

/// Response header: the role of the answering server (`serving` or `standby`).
pub const HEADER_ROLE: &str = "x-heartbeat-role";
/// Response header: the epoch of the answering server; it grows with every
/// takeover, so a client that sees two servers claim the role picks the newest.
pub const HEADER_EPOCH: &str = "x-heartbeat-epoch";
/// Response header on a standby's 503: the URL of the server it believes serves.
pub const HEADER_SERVING_URL: &str = "x-heartbeat-serving-url";

/// Largest body a single request may carry unless configured otherwise; the
/// reference server caps requests at the same size.
pub const DEFAULT_MAX_REQUEST_BYTES: u64 = 128 * 1024 * 1024;
