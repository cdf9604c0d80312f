//! The `/v1/status` document served by http-disk-server and read by
//! nbd-http-server's prober and by operator tools.

use serde::{Deserialize, Serialize};

/// What a server is doing with the volume right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Holds the arbiter's grant (DRBD Primary, or the file lock) and serves I/O.
    Serving,
    /// Listens, answers 503 to block requests, and waits for the role.
    Standby,
    /// Giving up the role: no new requests are accepted.
    Stepping,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Serving => "serving",
            Role::Standby => "standby",
            Role::Stepping => "stepping",
        }
    }
}

/// Counters since the server started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCounters {
    pub reads: u64,
    pub writes: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// Requests refused for bad input (4xx).
    pub rejected: u64,
    /// Requests that failed on the device (5xx other than standby 503).
    pub io_errors: u64,
    /// Block requests answered 503 because this server does not serve.
    pub refused_standby: u64,
}

/// The JSON answer of `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerStatus {
    /// Server software version.
    pub version: String,
    /// The disk or device path this server exports.
    pub device: String,
    /// Device size in bytes.
    pub size: u64,
    pub role: Role,
    /// Grows with every takeover; 0 before this server ever served.
    pub epoch: u64,
    /// Which arbiter decides the role (`file`, `drbd`, ...).
    pub arbiter: String,
    /// Unix time in milliseconds of the last role change, if any.
    pub last_role_change_unix_ms: Option<u64>,
    /// Why the server is not serving, when it is not.
    pub standby_reason: Option<String>,
    /// URL of the serving server when known (for standbys).
    pub serving_url: Option<String>,
    pub counters: RequestCounters,
    /// Request latency quantiles in microseconds, when measured.
    #[serde(default)]
    pub latency_p50_us: Option<u64>,
    #[serde(default)]
    pub latency_p99_us: Option<u64>,
    /// `--debug-no-fence`: the server logs the demotions by force, escalation
    /// exits and stuck-disk exits it would perform instead of performing them.
    /// Absent (false) in normal operation.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub debug_no_fence: bool,
}
