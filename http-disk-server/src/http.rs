//! The HTTP block protocol: one handler per request, the role checked on
//! every request, disk I/O done inline on the connection's own thread under
//! the [`IoWatchdog`]'s deadline.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use heartbeat_wire::auth::{self, AuthError, SignedParts, Verified, Verifier};
use heartbeat_wire::{
    range::RangeRequest, ByteRange, ContentRange, RangeError, ServerStatus, HEADER_EPOCH,
    HEADER_ROLE, HEADER_SERVING_URL, METRICS_PATH, STATUS_PATH,
};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use crate::aligned::AlignedBuf;
use crate::arbiter::StepDownCause;
use crate::disk::{covering_span, Disk, DiskError};
use crate::gate::{Gate, GateState};
use crate::io_watchdog::{ClientSocket, IoWatchdog};
use crate::liveness::FreezeDetector;
use crate::metrics::{Metrics, Op};
use crate::range_lock::{LockMode, RangeLock};

pub type Body = Full<Bytes>;

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub device: String,
    pub arbiter: &'static str,
    pub max_request_bytes: u64,
    /// Longest pause between two body chunks of a PUT.
    pub body_idle_timeout: Duration,
    /// Size known before the disk is opened (for status while standby).
    pub probed_size: u64,
    /// `--debug-no-fence` (shown in the status).
    pub debug_no_fence: bool,
}

/// Who may send block requests (see SECURITY.md).
#[derive(Debug, Clone)]
pub enum AuthPolicy {
    /// Every block request (HEAD, GET, PUT on `/`) needs a valid
    /// `x-heartbeat-auth` MAC; anything else gets 401 before any disk I/O.
    Required(Arc<Verifier>),
    /// Compatibility mode with a key (`--allow-unauthenticated` and a key
    /// file): a request without the header is served, one with the header
    /// must verify. For migrating from reference clients.
    Compat(Arc<Verifier>),
    /// Compatibility mode without a key: nothing is checked. Only with
    /// `--allow-unauthenticated`.
    Off,
}

impl AuthPolicy {
    pub fn describe(&self) -> &'static str {
        match self {
            AuthPolicy::Required(_) => "required",
            AuthPolicy::Compat(_) => "compat (unauthenticated requests accepted)",
            AuthPolicy::Off => "off (no key; anyone may write)",
        }
    }
}

/// Log at most one line per this interval for refused or unauthenticated
/// requests: a flood must not flood the log too.
const AUTH_LOG_INTERVAL_MS: u64 = 10_000;

/// Rate-limited warning: returns how many events were suppressed since the
/// last line, or None when this one is suppressed too.
fn rate_limited(
    last_ms: &std::sync::atomic::AtomicU64,
    suppressed: &std::sync::atomic::AtomicU64,
) -> Option<u64> {
    let now = auth::unix_ms_now();
    let last = last_ms.load(Ordering::Relaxed);
    if now.saturating_sub(last) >= AUTH_LOG_INTERVAL_MS
        && last_ms
            .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    {
        Some(suppressed.swap(0, Ordering::AcqRel))
    } else {
        suppressed.fetch_add(1, Ordering::AcqRel);
        None
    }
}

static REFUSED_LAST_LOG: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static REFUSED_SUPPRESSED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static UNAUTH_LAST_LOG: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static UNAUTH_SUPPRESSED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub struct DiskService {
    pub cfg: HttpConfig,
    pub auth: AuthPolicy,
    pub gate: Arc<Gate>,
    pub locks: Arc<RangeLock>,
    pub metrics: Metrics,
    pub watchdog: Arc<IoWatchdog>,
    pub freeze: Arc<FreezeDetector>,
}

/// A finished answer, before role headers are added.
struct Answer {
    status: StatusCode,
    headers: Vec<(header::HeaderName, HeaderValue)>,
    body: Bytes,
}

impl Answer {
    fn text(status: StatusCode, msg: impl Into<String>) -> Self {
        let mut m = msg.into();
        m.push('\n');
        Self {
            status,
            headers: vec![(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            )],
            body: Bytes::from(m),
        }
    }

    fn with(mut self, name: header::HeaderName, value: impl TryInto<HeaderValue>) -> Self {
        if let Ok(v) = value.try_into() {
            self.headers.push((name, v));
        }
        self
    }
}

fn range_error_answer(e: &RangeError) -> Answer {
    Answer::text(StatusCode::BAD_REQUEST, format!("{e}"))
}

impl DiskService {
    /// Answer one request. `client`: the connection's socket, which the
    /// watchdog shuts if a disk call for this request overruns.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        client: Option<ClientSocket>,
    ) -> Result<Response<Body>, Infallible> {
        let started = Instant::now();
        let path = req.uri().path();
        let (op, answer, bytes) = if path == STATUS_PATH || path == METRICS_PATH {
            let a = if req.method() != Method::GET && req.method() != Method::HEAD {
                Answer::text(
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!("{path} answers GET only"),
                )
                .with(header::ALLOW, "GET, HEAD")
            } else if path == STATUS_PATH {
                self.status_answer()
            } else {
                self.metrics_answer()
            };
            (Op::Other, a, 0)
        } else if path != "/" {
            let a = Answer::text(
                StatusCode::NOT_FOUND,
                format!("no resource {path}: the disk is at /, status at {STATUS_PATH}, metrics at {METRICS_PATH}"),
            );
            (Op::Other, a, 0)
        } else {
            let op = match *req.method() {
                Method::GET => Op::Read,
                Method::PUT => Op::Write,
                Method::HEAD => Op::Head,
                _ => Op::Other,
            };
            let (a, n) = self.disk_request(op, req, client).await;
            (op, a, n)
        };
        let status = answer.status.as_u16();
        self.metrics
            .record(op, status, started.elapsed().as_micros() as u64, bytes);
        Ok(self.finish(answer))
    }

    fn finish(&self, a: Answer) -> Response<Body> {
        let st = self.gate.snapshot();
        let len = a.body.len();
        let mut resp = Response::new(Full::new(a.body));
        *resp.status_mut() = a.status;
        let h = resp.headers_mut();
        for (k, v) in a.headers {
            h.insert(k, v);
        }
        if !h.contains_key(header::CONTENT_LENGTH) {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
        h.insert(HEADER_ROLE, HeaderValue::from_static(st.role().as_str()));
        h.insert(HEADER_EPOCH, HeaderValue::from(st.epoch()));
        resp
    }

    fn standby_answer(&self, st: &GateState) -> Answer {
        let GateState::NotServing {
            reason,
            serving_url,
            ..
        } = st
        else {
            unreachable!("standby_answer on a serving gate")
        };
        let mut msg = format!(
            "{} is not served by this server ({}): {reason}",
            self.cfg.device,
            st.role().as_str()
        );
        if let Some(u) = serving_url {
            msg.push_str(&format!("; try {u}"));
        } else {
            msg.push_str("; retry shortly or try the other servers");
        }
        let mut a =
            Answer::text(StatusCode::SERVICE_UNAVAILABLE, msg).with(header::RETRY_AFTER, "1");
        if let Some(u) = serving_url {
            a = a.with(header::HeaderName::from_static(HEADER_SERVING_URL), &**u);
        }
        a
    }

    /// The role check every block request goes through. Returns the epoch
    /// and disk when serving.
    fn admit(&self) -> Result<(u64, Arc<dyn Disk>), Answer> {
        let st = self.gate.snapshot();
        match st {
            GateState::Serving { epoch, disk } => {
                if let Some(stalled) = self.freeze.stalled() {
                    self.gate
                        .step_down(epoch, StepDownCause::Frozen { stalled });
                    return Err(self.standby_answer(&self.gate.snapshot()));
                }
                Ok((epoch, disk))
            }
            other => Err(self.standby_answer(&other)),
        }
    }

    async fn disk_request(
        &self,
        op: Op,
        req: Request<Incoming>,
        client: Option<ClientSocket>,
    ) -> (Answer, u64) {
        if op == Op::Other {
            let a = Answer::text(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("method {} is not supported on the disk; use HEAD, GET with Range, or PUT with Content-Range", req.method()),
            )
            .with(header::ALLOW, "HEAD, GET, PUT");
            return (a, 0);
        }
        // Authentication comes first: before the role check (a standby's
        // hint goes to pool members only) and before any disk I/O.
        let verified = match self.authenticate(op, &req) {
            Ok(v) => v,
            Err(a) => return (a, 0),
        };
        let (_, disk) = match self.admit() {
            Ok(x) => x,
            Err(a) => return (a, 0),
        };
        let size = disk.size();
        drop(disk); // a PUT body may take a while: do not pin the disk meanwhile
        match op {
            Op::Head => (
                Answer::text(StatusCode::OK, "")
                    .with(header::ACCEPT_RANGES, "bytes")
                    .with(header::CONTENT_LENGTH, size)
                    .with_empty_body(),
                0,
            ),
            Op::Read => match self.read(&req, size, client).await {
                Ok((a, n)) => (a, n),
                Err(a) => (a, 0),
            },
            Op::Write => match self.write(req, size, verified, client).await {
                Ok(n) => (Answer::text(StatusCode::OK, "Ok."), n),
                Err(a) => (a, 0),
            },
            Op::Other => unreachable!(),
        }
    }

    fn unsatisfiable(&self, what: String, size: u64) -> Answer {
        Answer::text(
            StatusCode::RANGE_NOT_SATISFIABLE,
            format!("{what} lies outside {} ({size} bytes)", self.cfg.device),
        )
        .with(header::CONTENT_RANGE, format!("bytes */{size}"))
    }

    fn too_large(&self, len: u64) -> Answer {
        Answer::text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "request of {len} bytes exceeds the limit of {} bytes per request; split it",
                self.cfg.max_request_bytes
            ),
        )
    }

    async fn read(
        &self,
        req: &Request<Incoming>,
        size: u64,
        client: Option<ClientSocket>,
    ) -> Result<(Answer, u64), Answer> {
        let (range, partial) = match req.headers().get(header::RANGE) {
            Some(v) => {
                let v = v.to_str().map_err(|_| {
                    Answer::text(StatusCode::BAD_REQUEST, "Range header is not ASCII")
                })?;
                let rr = RangeRequest::parse(v).map_err(|e| range_error_answer(&e))?;
                let r = rr
                    .resolve(size)
                    .ok_or_else(|| self.unsatisfiable(format!("range {v:?}"), size))?;
                (Some(r), true)
            }
            None => (ByteRange::from_offset_len(0, size), false),
        };
        let Some(range) = range else {
            // GET of an empty device without Range.
            return Ok((Answer::text(StatusCode::OK, "").with_empty_body(), 0));
        };
        if range.len() > self.cfg.max_request_bytes {
            return Err(self.too_large(range.len()));
        }
        let len = range.len() as usize;
        let offset = range.offset();
        let data = self
            .run_io(
                "read",
                client,
                offset,
                range.len(),
                LockMode::Shared,
                |disk| disk.read_at(offset, len),
            )
            .await?;
        let mut a = Answer {
            status: if partial {
                StatusCode::PARTIAL_CONTENT
            } else {
                StatusCode::OK
            },
            headers: vec![
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                ),
                (header::ACCEPT_RANGES, HeaderValue::from_static("bytes")),
            ],
            body: data,
        };
        if partial {
            a = a.with(header::CONTENT_RANGE, range.to_content_range(size));
        }
        Ok((a, range.len()))
    }

    /// Check the request's MAC under the configured policy. `Ok(Some)`: a
    /// verified request whose body (PUT) is still to be compared with the
    /// signed digest; `Ok(None)`: compatibility mode, no header.
    fn authenticate(&self, op: Op, req: &Request<Incoming>) -> Result<Option<Verified>, Answer> {
        let (verifier, required) = match &self.auth {
            AuthPolicy::Off => return Ok(None),
            AuthPolicy::Required(v) => (v, true),
            AuthPolicy::Compat(v) => (v, false),
        };
        let h = req.headers();
        let header_value = h.get(auth::HEADER_AUTH).map(|v| v.to_str().unwrap_or(""));
        if header_value.is_none() && !required {
            if let Some(suppressed) = rate_limited(&UNAUTH_LAST_LOG, &UNAUTH_SUPPRESSED) {
                tracing::warn!(device = %self.cfg.device, suppressed, "COMPATIBILITY MODE: serving a request WITHOUT authentication (--allow-unauthenticated); anyone who reaches this port can write the statefile");
            }
            return Ok(None);
        }
        let range_header = match op {
            Op::Read => h.get(header::RANGE),
            Op::Write => h.get(header::CONTENT_RANGE),
            _ => None,
        };
        let parts = SignedParts {
            method: req.method().as_str(),
            path: req.uri().path(),
            range: range_header.and_then(|v| v.to_str().ok()).unwrap_or(""),
        };
        verifier
            .check(&parts, header_value, auth::unix_ms_now(), op == Op::Write)
            .map(Some)
            .map_err(|e| self.auth_refusal(&e))
    }

    fn auth_refusal(&self, e: &AuthError) -> Answer {
        if e.is_overload() {
            tracing::warn!(device = %self.cfg.device, "{e}");
            return Answer::text(StatusCode::TOO_MANY_REQUESTS, format!("{e}"))
                .with(header::RETRY_AFTER, "1");
        }
        if let Some(suppressed) = rate_limited(&REFUSED_LAST_LOG, &REFUSED_SUPPRESSED) {
            tracing::warn!(device = %self.cfg.device, suppressed, "refused a block request: {e}");
        }
        Answer::text(
            StatusCode::UNAUTHORIZED,
            format!("{e}; nothing was read or written"),
        )
        .with(header::WWW_AUTHENTICATE, "x-heartbeat-auth v1")
        // An unauthenticated peer does not get to keep a connection slot.
        .with(header::CONNECTION, "close")
    }

    async fn write(
        &self,
        req: Request<Incoming>,
        size: u64,
        verified: Option<Verified>,
        client: Option<ClientSocket>,
    ) -> Result<u64, Answer> {
        let h = req.headers();
        let cr = h.get(header::CONTENT_RANGE).ok_or_else(|| {
            Answer::text(
                StatusCode::BAD_REQUEST,
                "PUT needs a Content-Range: bytes FIRST-LAST/SIZE header saying where the body goes",
            )
        })?;
        let cr = cr.to_str().map_err(|_| {
            Answer::text(StatusCode::BAD_REQUEST, "Content-Range header is not ASCII")
        })?;
        let cr = ContentRange::parse(cr).map_err(|e| range_error_answer(&e))?;
        let range = cr.range;
        if range.len() > self.cfg.max_request_bytes {
            return Err(self.too_large(range.len()));
        }
        if !range.fits_in(size) {
            return Err(self.unsatisfiable(format!("write range {range}"), size));
        }
        if let Some(claimed) = cr.complete_length {
            if claimed != size {
                return Err(Answer::text(
                    StatusCode::BAD_REQUEST,
                    format!("Content-Range claims a device of {claimed} bytes but {} has {size}; check the client's --device-size", self.cfg.device),
                ));
            }
        }
        let chunked = h.get_all(header::TRANSFER_ENCODING).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.to_ascii_lowercase().contains("chunked"))
        });
        match h.get(header::CONTENT_LENGTH) {
            None if !chunked => {
                return Err(Answer::text(
                    StatusCode::LENGTH_REQUIRED,
                    "PUT needs Content-Length or chunked Transfer-Encoding",
                ))
            }
            Some(cl) => {
                let n = cl.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok());
                if n != Some(range.len()) {
                    return Err(Answer::text(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "Content-Length {} does not match the {} bytes of Content-Range {range}; nothing was written",
                            cl.to_str().unwrap_or("?"),
                            range.len()
                        ),
                    ));
                }
            }
            None => {}
        }
        let data = self
            .read_body(req.into_body(), range.len() as usize)
            .await?;
        if let Some(v) = &verified {
            v.check_body(data.as_ref())
                .map_err(|e| self.auth_refusal(&e))?;
        }
        let offset = range.offset();
        self.run_io(
            "write",
            client,
            offset,
            range.len(),
            LockMode::Exclusive,
            |disk| disk.write_at(offset, data.as_ref()),
        )
        .await?;
        Ok(range.len())
    }

    /// The whole body, exactly `len` bytes, or a 400. Nothing touches the
    /// disk before this returns Ok.
    async fn read_body(&self, mut body: Incoming, len: usize) -> Result<WriteData, Answer> {
        let mut single: Option<Bytes> = None;
        let mut buf: Option<AlignedBuf> = None;
        let mut got = 0usize;
        // Besides the idle bound between chunks, the whole body must arrive
        // within the idle bound plus its size at 1 MB/s: a client trickling
        // a byte now and then cannot hold a request open for long.
        let body_deadline = tokio::time::Instant::now()
            + self.cfg.body_idle_timeout
            + Duration::from_micros(len as u64);
        loop {
            let wait = tokio::time::Instant::now() + self.cfg.body_idle_timeout;
            let frame = match tokio::time::timeout_at(wait.min(body_deadline), body.frame()).await {
                Err(_) => {
                    return Err(Answer::text(
                        StatusCode::REQUEST_TIMEOUT,
                        format!(
                            "body too slow: {got} of {len} bytes received (idle limit {:?}, whole-body limit that plus 1 s per MB); nothing was written",
                            self.cfg.body_idle_timeout
                        ),
                    ))
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    return Err(Answer::text(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "body broken after {got} of {len} bytes ({e}); nothing was written"
                        ),
                    ))
                }
                Ok(Some(Ok(f))) => f,
            };
            let Ok(data) = frame.into_data() else {
                continue; // trailers
            };
            if data.is_empty() {
                continue;
            }
            if got + data.len() > len {
                return Err(Answer::text(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "body is longer than the {len} bytes of Content-Range; nothing was written"
                    ),
                ));
            }
            let n = data.len();
            if got == 0 && n == len {
                single = Some(data); // the common case: no copy at all
            } else {
                let b = buf.get_or_insert_with(|| AlignedBuf::zeroed(len));
                b[got..got + n].copy_from_slice(&data);
            }
            got += n;
        }
        if got != len {
            return Err(Answer::text(
                StatusCode::BAD_REQUEST,
                format!("body has {got} bytes but Content-Range says {len}; nothing was written"),
            ));
        }
        Ok(match (single, buf) {
            (Some(b), _) => WriteData::Bytes(b),
            (None, Some(b)) => WriteData::Aligned(b),
            (None, None) => WriteData::Bytes(Bytes::new()),
        })
    }

    /// Run one disk call inline on this connection's thread, holding the
    /// range lock over the span it touches, under the watchdog's deadline.
    /// Past the deadline the watchdog steps this server down and shuts the
    /// client's socket; the call's answer is then a 500 (if the client is
    /// still there to read it).
    async fn run_io<T>(
        &self,
        op: &'static str,
        client: Option<ClientSocket>,
        offset: u64,
        len: u64,
        mode: LockMode,
        call: impl FnOnce(&dyn Disk) -> Result<T, DiskError>,
    ) -> Result<T, Answer> {
        let deadline = self.watchdog.deadline();
        let (epoch, disk) = self.admit()?;
        let (start, end) = covering_span(offset, len, disk.io_alignment());
        let Ok(_guard) = tokio::time::timeout(deadline, self.locks.acquire(start, end, mode)).await
        else {
            return Err(Answer::text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{}: an overlapping request held bytes {start}-{end} longer than {deadline:?}; retry", self.cfg.device),
            ));
        };
        // The role may have gone while we waited for the lock.
        if !self.gate.may_do_io(epoch) {
            return Err(self.standby_answer(&self.gate.snapshot()));
        }
        let ticket = self.watchdog.begin(op, offset, epoch, client);
        // Blocks this connection's thread only; a hung device is the
        // watchdog's to handle.
        let result = call(&*disk);
        if ticket.finish() {
            return Err(Answer::text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "{}: disk {op} at offset {offset} did not finish within {deadline:?}; this server stepped down, retry on the next serving server",
                    self.cfg.device
                ),
            ));
        }
        result.map_err(|e| {
            tracing::error!(device = %self.cfg.device, error = %e, "disk {op} failed");
            if e.is_device_failure() {
                self.gate
                    .step_down(epoch, StepDownCause::DeviceFailure(e.to_string()));
            }
            Answer::text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{e}; the request was not completed, retry on the serving server"),
            )
        })
    }

    pub fn status(&self) -> ServerStatus {
        let st = self.gate.snapshot();
        let (size, standby_reason, serving_url) = match &st {
            GateState::Serving { disk, .. } => (disk.size(), None, None),
            GateState::NotServing {
                reason,
                serving_url,
                ..
            } => (
                self.cfg.probed_size,
                Some(reason.to_string()),
                serving_url.as_ref().map(|u| u.to_string()),
            ),
        };
        let last = self.gate.last_role_change_unix_ms.load(Ordering::Relaxed);
        ServerStatus {
            version: env!("CARGO_PKG_VERSION").to_string(),
            device: self.cfg.device.clone(),
            size,
            role: st.role(),
            epoch: st.epoch(),
            arbiter: self.cfg.arbiter.to_string(),
            last_role_change_unix_ms: (last != 0).then_some(last),
            standby_reason,
            serving_url,
            counters: self.metrics.counters(),
            latency_p50_us: self.metrics.latency_quantile_us(0.5),
            latency_p99_us: self.metrics.latency_quantile_us(0.99),
            debug_no_fence: self.cfg.debug_no_fence,
        }
    }

    fn status_answer(&self) -> Answer {
        let body = serde_json::to_vec(&self.status()).unwrap_or_default();
        Answer {
            status: StatusCode::OK,
            headers: vec![(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body: Bytes::from(body),
        }
    }

    fn metrics_answer(&self) -> Answer {
        let st = self.gate.snapshot();
        let text = self.metrics.render_prometheus(
            st.role().as_str(),
            st.epoch(),
            self.gate.role_changes.load(Ordering::Relaxed),
        );
        Answer {
            status: StatusCode::OK,
            headers: vec![(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            )],
            body: Bytes::from(text),
        }
    }
}

impl Answer {
    fn with_empty_body(mut self) -> Self {
        self.body = Bytes::new();
        self.headers.retain(|(k, _)| k != header::CONTENT_TYPE);
        self
    }
}

/// A complete, validated PUT body.
enum WriteData {
    Bytes(Bytes),
    Aligned(AlignedBuf),
}

impl AsRef<[u8]> for WriteData {
    fn as_ref(&self) -> &[u8] {
        match self {
            WriteData::Bytes(b) => b,
            WriteData::Aligned(b) => b,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arbiter::Grant;
    use tokio::sync::{mpsc, watch};

    /// A disk whose every call sleeps `delay` (a hung or slow device).
    struct SlowDisk {
        delay: Duration,
    }

    impl Disk for SlowDisk {
        fn name(&self) -> &str {
            "slow-test-disk"
        }
        fn size(&self) -> u64 {
            1 << 20
        }
        fn io_alignment(&self) -> u64 {
            512
        }
        fn read_at(&self, _offset: u64, len: usize) -> Result<Bytes, DiskError> {
            std::thread::sleep(self.delay);
            Ok(Bytes::from(vec![0u8; len]))
        }
        fn write_at(&self, _offset: u64, _data: &[u8]) -> Result<(), DiskError> {
            std::thread::sleep(self.delay);
            Ok(())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hung_disk_fails_the_request_and_steps_down() {
        let (step_tx, mut step_rx) = mpsc::unbounded_channel();
        let gate = Gate::new(step_tx, Duration::from_millis(100));
        let (grant_tx, grant_rx) = watch::channel(Grant::Serving { epoch: 4 });
        let opener: crate::gate::DiskOpener = Arc::new(|| {
            Ok(Arc::new(SlowDisk {
                delay: Duration::from_secs(3),
            }) as Arc<dyn Disk>)
        });
        tokio::spawn(Arc::clone(&gate).follow(grant_rx, opener));
        while gate.snapshot().role() != heartbeat_wire::Role::Serving {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let health = Arc::new(crate::liveness::DiskHealth::default());
        let watchdog = IoWatchdog::new(
            crate::io_watchdog::WatchdogConfig {
                deadline: Duration::from_millis(100),
                stuck_exit_after: Duration::from_secs(60),
                debug_no_fence: false,
                device: "slow-test-disk".into(),
            },
            Arc::clone(&gate),
            Arc::clone(&health),
        );
        watchdog.spawn().unwrap();
        let svc = DiskService {
            auth: AuthPolicy::Off,
            cfg: HttpConfig {
                device: "slow-test-disk".into(),
                arbiter: "test",
                max_request_bytes: 1 << 20,
                body_idle_timeout: Duration::from_secs(1),
                probed_size: 1 << 20,
                debug_no_fence: false,
            },
            gate: Arc::clone(&gate),
            locks: RangeLock::new(),
            metrics: Metrics::default(),
            watchdog,
            freeze: FreezeDetector::new(Duration::from_millis(100), Duration::from_secs(60)),
        };
        // The client's end of the connection: the watchdog shuts it when the
        // call overruns, long before the call returns.
        let (server_end, mut client_end) = std::os::unix::net::UnixStream::pair().unwrap();
        let socket = ClientSocket(std::os::fd::AsRawFd::as_raw_fd(&server_end));
        let reader = std::thread::spawn(move || {
            let started = std::time::Instant::now();
            let mut buf = [0u8; 1];
            let n = std::io::Read::read(&mut client_end, &mut buf).unwrap();
            (n, started.elapsed())
        });
        let r = svc
            .run_io("write", Some(socket), 0, 512, LockMode::Exclusive, |d| {
                d.write_at(0, &[0; 512])
            })
            .await;
        let (n, waited) = reader.join().unwrap();
        assert_eq!(n, 0, "the client's connection was shut");
        // The 100 ms deadline against the 3 s call: wide apart, so that a
        // loaded machine cannot blur the two.
        assert!(
            waited < Duration::from_secs(2),
            "shut at the deadline, not when the call returned ({waited:?})"
        );
        let a = r.expect_err("past the deadline the request fails");
        assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            health.healthy(),
            "the call has returned: nothing is overdue any more"
        );
        // No new I/O is admitted, and the arbiter is asked to release epoch 4
        // (after the drain bound, since the op still holds the disk).
        assert_ne!(gate.snapshot().role(), heartbeat_wire::Role::Serving);
        let req = tokio::time::timeout(Duration::from_secs(5), step_rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(req.epoch, 4);
        assert!(matches!(req.cause, StepDownCause::IoHang { .. }));
        let refused = svc
            .run_io("read", None, 0, 512, LockMode::Shared, |d| {
                d.read_at(0, 512)
            })
            .await;
        assert_eq!(
            refused.err().unwrap().status,
            StatusCode::SERVICE_UNAVAILABLE
        );
        // The same epoch is never served again; a new grant is.
        grant_tx.send(Grant::Serving { epoch: 4 }).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_ne!(gate.snapshot().role(), heartbeat_wire::Role::Serving);
        grant_tx.send(Grant::Serving { epoch: 5 }).unwrap();
        tokio::time::timeout(Duration::from_secs(5), async {
            while gate.snapshot().role() != heartbeat_wire::Role::Serving {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap();
    }
}
