//! The upstream: where NBD requests go. One trait, like an nbdkit plugin
//! (`pread`, `pwrite`, `flush`), each call bounded by a deadline; the NBD
//! layer is glue around it.

use std::future::Future;
use std::sync::Mutex;

use heartbeat_wire::nbd;
use tokio::time::Instant;

pub mod http;
pub mod http1;

pub use http::{FailoverDeadline, HttpUpstream, HttpUpstreamConfig, DEFAULT_RESPONSE_POLL_US};

/// Why an upstream call failed. Each maps to one NBD error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// The server refused the request itself (4xx): retrying elsewhere would
    /// not help.
    #[error("volume {volume}: {url} refused {what} with HTTP {status}: {detail}")]
    Rejected {
        volume: String,
        url: String,
        what: String,
        status: u16,
        detail: String,
    },
    /// No server completed the request before its deadline.
    #[error("volume {volume}: {what} not served within {waited_ms} ms (last error: {last_error}); check that an http-disk-server is serving at one of {urls}")]
    Unavailable {
        volume: String,
        what: String,
        waited_ms: u128,
        last_error: String,
        urls: String,
    },
}

impl UpstreamError {
    /// The NBD error value the client sees.
    pub fn nbd_error(&self) -> u32 {
        match self {
            UpstreamError::Rejected { .. } => nbd::EINVAL,
            UpstreamError::Unavailable { .. } => nbd::EIO,
        }
    }
}

/// A block store reached by offset. Implementations never cache: every read
/// returns the latest acknowledged write, and a write is durable when its
/// future resolves `Ok`.
pub trait Upstream: Send + Sync + 'static {
    /// Exactly `len` bytes from `offset`, or an error; never a short read.
    fn read_at(
        &self,
        offset: u64,
        len: u32,
        deadline: Instant,
    ) -> impl Future<Output = Result<Vec<u8>, UpstreamError>> + Send;

    /// Write `data` at `offset`; durable when `Ok`.
    fn write_at<'a>(
        &'a self,
        offset: u64,
        data: &'a [u8],
        deadline: Instant,
    ) -> impl Future<Output = Result<(), UpstreamError>> + Send + 'a;

    /// Make every acknowledged write durable.
    fn flush(&self, deadline: Instant) -> impl Future<Output = Result<(), UpstreamError>> + Send;
}

/// An in-memory upstream, for tests of the NBD layer.
#[derive(Debug)]
pub struct MemoryUpstream {
    data: Mutex<Vec<u8>>,
}

impl MemoryUpstream {
    pub fn new(size: usize) -> Self {
        Self {
            data: Mutex::new(vec![0; size]),
        }
    }

    pub fn snapshot(&self) -> Vec<u8> {
        self.data.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Upstream for MemoryUpstream {
    async fn read_at(&self, offset: u64, len: u32, _: Instant) -> Result<Vec<u8>, UpstreamError> {
        let data = self.data.lock().unwrap_or_else(|e| e.into_inner());
        let start = offset as usize;
        Ok(data[start..start + len as usize].to_vec())
    }

    async fn write_at<'a>(
        &'a self,
        offset: u64,
        bytes: &'a [u8],
        _: Instant,
    ) -> Result<(), UpstreamError> {
        let mut data = self.data.lock().unwrap_or_else(|e| e.into_inner());
        let start = offset as usize;
        data[start..start + bytes.len()].copy_from_slice(bytes);
        Ok(())
    }

    async fn flush(&self, _: Instant) -> Result<(), UpstreamError> {
        Ok(())
    }
}
