//! A minimal HTTP/1.1 client for the block protocol, over plain tokio
//! `TcpStream`s, for `https://` URLs rustls over them (see SECURITY.md,
//! "TLS"), or for `unix:` URLs a Unix socket to the http-disk-server on this
//! host (its `--unix-socket`).
//!
//! Why hand-written rather than hyper's client: the protocol subset is tiny
//! (`HEAD /`, `GET /` with `Range`, `PUT /` with `Content-Length`; answers
//! are a status line, a few headers and a `Content-Length` or chunked body),
//! and the latency budget is a fraction of a millisecond per request. Here a
//! request is one `write` syscall (head and small body in one buffer, so no
//! Nagle or delayed-ACK interplay) and a response usually one `read`; there is
//! no background connection task, no channel hop and no body-stream
//! machinery between the NBD request and the socket. It also keeps the
//! workspace free of another HTTP stack in this crate. It never sends
//! `Expect: 100-continue` (the stall that made the reference chain write once
//! per second) and tolerates an interim `100 Continue` anyway.
//!
//! Connections are kept alive and pooled per server ([`Pool`]); a connection
//! is returned to the pool only after a complete response on a keep-alive
//! exchange.
//!
//! # Polling for the answer
//!
//! A task that sleeps in `epoll_wait` while the server answers on another CPU
//! is woken by an inter-processor interrupt; on a small VM that wake-up
//! (IPI, halt exit, reschedule) costs about 26 us, a large share of a
//! loopback round trip. So after sending a request on a plain connection,
//! when it is the only exchange in flight and the NBD side is quiet (one
//! client, one request outstanding: [`crate::activity`]),
//! [`Connection::exchange`] first polls the socket with non-blocking `recv`s
//! for a bounded time, yielding the CPU between attempts, and only then
//! falls back to the runtime. The poll ends early when the NBD client sends
//! more, since the runtime it holds is needed to read that. The bound adapts
//! like the kernel's hybrid block polling ([`PollBudget`]): twice the recent
//! response wait, capped, and no polling at all for servers slower than the
//! cap.

use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use heartbeat_wire::auth::{self, PoolKey};

use crate::activity::{Activity, PollPermit};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio::time::Instant;

/// The largest response head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Idle connections kept per server.
const MAX_IDLE: usize = 64;
/// Most bytes taken from the socket per read into the connection buffer.
const READ_CHUNK: usize = 16 * 1024;

/// Where a block server lives: `http[s]://host:port[/path]`, or
/// `unix:/absolute/path` for a server on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The URL as configured (for logs and error messages).
    pub url: String,
    /// `unix:` URLs: the server's Unix socket, instead of a TCP connection
    /// to `authority` (which is then `localhost`, for the `Host` header).
    pub unix_socket: Option<std::path::PathBuf>,
    /// `host:port` to connect to and to send as `Host`.
    pub authority: String,
    /// Request target, `/` for the reference protocol.
    pub path: String,
    /// `https://`: speak TLS, verifying the server's certificate for `host`.
    pub tls: bool,
    /// The host part without port or IPv6 brackets: the TLS server name
    /// (a DNS name, or an IP address matched against the certificate's IP
    /// SANs).
    pub host: String,
}

impl Endpoint {
    /// Parse `http://host[:port][/path]`, `https://host[:port][/path]` or
    /// `unix:/absolute/socket/path`.
    pub fn parse(url: &str) -> Result<Self, String> {
        let trimmed = url.trim();
        if let Some(socket) = trimmed.strip_prefix("unix:") {
            return Self::parse_unix(trimmed, socket);
        }
        let (tls, rest) = if let Some(rest) = trimmed.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = trimmed.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(format!(
                "URL {trimmed:?} must start with http://, https:// or unix:/"
            ));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err(format!("URL {trimmed:?} has no host"));
        }
        let has_port = match authority.rfind(':') {
            // An IPv6 literal `[::1]` without port has its last colon inside
            // the brackets.
            Some(i) => !authority[i..].contains(']'),
            None => false,
        };
        let (authority, host) = if has_port {
            let colon = authority.rfind(':').expect("has port");
            let port = &authority[colon + 1..];
            port.parse::<u16>()
                .map_err(|_| format!("URL {trimmed:?} has a bad port {port:?}"))?;
            (authority.to_owned(), &authority[..colon])
        } else {
            let port = if tls { 443 } else { 80 };
            (format!("{authority}:{port}"), authority)
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("URL {trimmed:?} has no host"));
        }
        Ok(Self {
            url: trimmed.trim_end_matches('/').to_owned(),
            unix_socket: None,
            authority,
            path: path.to_owned(),
            tls,
            host: host.to_owned(),
        })
    }

    /// `unix:/path`: the whole rest is the socket path (absolute, so that the
    /// daemon's working directory does not matter); requests go to `/`.
    fn parse_unix(url: &str, socket: &str) -> Result<Self, String> {
        if !socket.starts_with('/') {
            return Err(format!(
                "URL {url:?}: a unix: URL names the server's socket by its absolute path, e.g. unix:/run/xha-heartbeat/VOLUME-http.sock"
            ));
        }
        Ok(Self {
            url: url.to_owned(),
            unix_socket: Some(socket.into()),
            authority: "localhost".into(),
            path: "/".into(),
            tls: false,
            host: "localhost".into(),
        })
    }
}

/// One request to send.
#[derive(Debug, Clone, Copy)]
pub enum Request<'a> {
    Head,
    Get { offset: u64, len: u32 },
    Put { offset: u64, data: &'a [u8] },
}

impl Request<'_> {
    pub fn method(&self) -> &'static str {
        match self {
            Request::Head => "HEAD",
            Request::Get { .. } => "GET",
            Request::Put { .. } => "PUT",
        }
    }

    /// Bytes moved by the request, for the size term of its timeout.
    pub fn payload_len(&self) -> u64 {
        match self {
            Request::Head => 0,
            Request::Get { len, .. } => *len as u64,
            Request::Put { data, .. } => data.len() as u64,
        }
    }

    /// `GET bytes=0-511` style description for logs.
    pub fn describe(&self) -> String {
        match self {
            Request::Head => "HEAD".into(),
            Request::Get { offset, len } => format!("read of {len} bytes at {offset}"),
            Request::Put { offset, data } => format!("write of {} bytes at {offset}", data.len()),
        }
    }

    /// The request bytes; with `auth`, signed with that pool key
    /// (`x-heartbeat-auth`, see [`heartbeat_wire::auth`]).
    fn encode(&self, endpoint: &Endpoint, auth: Option<&PoolKey>) -> Vec<u8> {
        use std::io::Write;
        let body: &[u8] = match self {
            Request::Put { data, .. } => data,
            _ => &[],
        };
        let mut out = Vec::with_capacity(160 + body.len());
        let _ = write!(
            out,
            "{} {} HTTP/1.1\r\nHost: {}\r\n",
            self.method(),
            endpoint.path,
            endpoint.authority
        );
        let range = match self {
            Request::Head => String::new(),
            Request::Get { offset, len } => {
                let last = offset + *len as u64 - 1;
                let range = format!("bytes={offset}-{last}");
                let _ = write!(out, "Range: {range}\r\n");
                range
            }
            Request::Put { offset, data } => {
                let last = offset + data.len() as u64 - 1;
                let range = format!("bytes {offset}-{last}/*");
                let _ = write!(
                    out,
                    "Content-Range: {range}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n",
                    data.len()
                );
                range
            }
        };
        if let Some(key) = auth {
            let parts = auth::SignedParts {
                method: self.method(),
                path: &endpoint.path,
                range: &range,
            };
            let _ = write!(
                out,
                "{}: {}\r\n",
                auth::HEADER_AUTH,
                auth::sign(key, &parts, body)
            );
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body);
        out
    }
}

/// A parsed response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub role: Option<String>,
    pub epoch: Option<u64>,
    pub serving_url: Option<String>,
    pub content_length: Option<u64>,
    pub body: Vec<u8>,
    /// Whether the connection may carry another request.
    pub keep_alive: bool,
}

/// What went wrong on the wire.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("connect to {0} failed: {1}")]
    Connect(String, io::Error),
    #[error("connect to {0} timed out")]
    ConnectTimeout(String),
    #[error("TLS with {0} failed: {1}")]
    Tls(String, String),
    #[error("no complete answer within the attempt timeout")]
    Timeout,
    #[error("connection closed before any answer")]
    ClosedBeforeAnswer,
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("malformed response: {0}")]
    Protocol(String),
}

/// TLS client settings for `https://` endpoints: the trusted CA(s).
pub type TlsClientConfig = Arc<rustls::ClientConfig>;

/// Build the TLS client settings from a PEM file of CA certificates (ring
/// provider, TLS 1.2 and 1.3, no client certificate).
pub fn tls_client_config(ca_pem: &std::path::Path) -> Result<TlsClientConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let pem = std::fs::read(ca_pem)
        .map_err(|e| format!("cannot read the TLS CA file {}: {e}", ca_pem.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert =
            cert.map_err(|e| format!("bad PEM in the TLS CA file {}: {e}", ca_pem.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("bad CA certificate in {}: {e}", ca_pem.display()))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "the TLS CA file {} holds no certificate",
            ca_pem.display()
        ));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS setup: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// How long to poll for the next response before sleeping in the runtime:
/// hybrid polling. Sans-I/O: it is told the response waits observed and
/// answers with a budget.
///
/// The budget is twice the moving average of the waits, so a typical answer
/// lands inside it, capped at `max`. When the average itself exceeds `max`
/// (a server across a real network, a replicated disk syncing every write)
/// there is no polling: the wake-up saved would be small against the round
/// trip and the polling would only burn CPU. With no history yet it polls up
/// to `max`; `max` zero disables polling.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PollBudget {
    max: Duration,
    /// Moving average of the response waits; None before the first.
    average: Option<Duration>,
}

impl PollBudget {
    /// A new sample's weight in the average is 1/2^SHIFT (1/8, as TCP's
    /// smoothed round-trip time): one slow answer does not switch polling
    /// off, a lasting change does within a few dozen requests.
    const SHIFT: u32 = 3;

    pub fn new(max: Duration) -> Self {
        Self { max, average: None }
    }

    /// Whether this budget can ever be non-zero.
    pub fn enabled(&self) -> bool {
        !self.max.is_zero()
    }

    /// How long to poll for the next response; zero: do not poll.
    pub fn budget(&self) -> Duration {
        match self.average {
            _ if !self.enabled() => Duration::ZERO,
            None => self.max,
            Some(average) if average > self.max => Duration::ZERO,
            Some(average) => (average * 2).min(self.max),
        }
    }

    /// One observed wait, from the request sent to its response head read.
    pub fn record(&mut self, wait: Duration) {
        self.average = Some(match self.average {
            None => wait,
            Some(average) => average - average / (1 << Self::SHIFT) + wait / (1 << Self::SHIFT),
        });
    }
}

/// Response polling for one server's connections: its [`PollBudget`], the
/// count of exchanges in flight, shared by every pool of one upstream, and
/// the NBD side's [`Activity`].
#[derive(Debug, Default)]
pub struct ResponsePoll {
    budget: Mutex<PollBudget>,
    in_flight: Arc<AtomicUsize>,
    activity: Arc<Activity>,
}

impl ResponsePoll {
    /// Poll for at most `max` (zero: never), counting exchanges in
    /// `in_flight`, while `activity` permits.
    pub fn new(max: Duration, in_flight: Arc<AtomicUsize>, activity: Arc<Activity>) -> Self {
        Self {
            budget: Mutex::new(PollBudget::new(max)),
            in_flight,
            activity,
        }
    }

    fn budget(&self) -> PollBudget {
        *self.budget.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, wait: Duration) {
        self.budget
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(wait);
    }

    /// Count one exchange in flight until the guard drops (also when the
    /// exchange is cancelled by its timeout).
    fn enter(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            count: &self.in_flight,
        }
    }
}

/// One exchange counted in flight.
#[derive(Debug)]
struct InFlight<'a> {
    count: &'a AtomicUsize,
}

impl InFlight<'_> {
    /// No other exchange is in flight now.
    fn alone(&self) -> bool {
        self.count.load(Ordering::Relaxed) == 1
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What ended [`Connection::poll_for_response`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PollEnd {
    /// Response bytes are in the buffer.
    Data,
    /// The server closed the connection; the read path reports it.
    Closed,
    /// The budget ran out; the read path waits in the runtime.
    Spent,
    /// The NBD client sent more: the runtime must read it, and the read
    /// path waits for the answer there.
    ClientHasMore,
    /// Not polled: a TLS stream, or bytes already buffered.
    Skipped,
}

/// The byte stream under a connection. An enum rather than a trait object so
/// that the plain paths stay direct socket calls (no box, no vtable).
#[derive(Debug)]
enum Stream {
    Plain(TcpStream),
    Unix(UnixStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    /// Write the whole buffer and, for TLS, push the records out.
    async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.write_all(bytes).await,
            Stream::Unix(s) => s.write_all(bytes).await,
            Stream::Tls(s) => {
                s.write_all(bytes).await?;
                s.flush().await
            }
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

/// One keep-alive connection.
#[derive(Debug)]
pub struct Connection {
    stream: Stream,
    buf: Vec<u8>,
    /// Bytes of `buf` already consumed.
    pos: usize,
}

impl Connection {
    /// Connect (and for `https://`, complete the TLS handshake) within
    /// `timeout`. An `https://` endpoint needs `tls`.
    pub async fn connect(
        endpoint: &Endpoint,
        tls: Option<&TlsClientConfig>,
        timeout: Duration,
    ) -> Result<Self, HttpError> {
        let started = Instant::now();
        if let Some(socket) = &endpoint.unix_socket {
            let stream = match tokio::time::timeout(timeout, UnixStream::connect(socket)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(HttpError::Connect(endpoint.url.clone(), e)),
                Err(_) => return Err(HttpError::ConnectTimeout(endpoint.url.clone())),
            };
            return Ok(Self::over(Stream::Unix(stream)));
        }
        let tcp = match tokio::time::timeout(timeout, TcpStream::connect(&endpoint.authority)).await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(HttpError::Connect(endpoint.url.clone(), e)),
            Err(_) => return Err(HttpError::ConnectTimeout(endpoint.url.clone())),
        };
        tcp.set_nodelay(true)?;
        let stream = if endpoint.tls {
            let config = tls.ok_or_else(|| {
                HttpError::Tls(
                    endpoint.url.clone(),
                    "https URL but no TLS CA configured (--tls-ca)".into(),
                )
            })?;
            let name =
                rustls::pki_types::ServerName::try_from(endpoint.host.clone()).map_err(|e| {
                    HttpError::Tls(endpoint.url.clone(), format!("bad server name: {e}"))
                })?;
            let connector = tokio_rustls::TlsConnector::from(Arc::clone(config));
            match tokio::time::timeout_at(started + timeout, connector.connect(name, tcp)).await {
                Ok(Ok(s)) => Stream::Tls(Box::new(s)),
                Ok(Err(e)) => return Err(HttpError::Tls(endpoint.url.clone(), e.to_string())),
                Err(_) => return Err(HttpError::ConnectTimeout(endpoint.url.clone())),
            }
        } else {
            Stream::Plain(tcp)
        };
        Ok(Self::over(stream))
    }

    fn over(stream: Stream) -> Self {
        Self {
            stream,
            buf: Vec::with_capacity(8192),
            pos: 0,
        }
    }

    /// Send one request and read its whole response; when it is the only
    /// exchange in flight, poll for the answer first (see the module docs).
    pub async fn exchange(
        &mut self,
        endpoint: &Endpoint,
        request: &Request<'_>,
        auth: Option<&PoolKey>,
        poll: &ResponsePoll,
    ) -> Result<Response, HttpError> {
        let in_flight = poll.enter();
        let bytes = request.encode(endpoint, auth);
        self.stream.send(&bytes).await?;
        // Only alone, and with the NBD side quiet (see `Activity`): the
        // runtime is current-thread, and polling would hold up every other
        // request it serves or would read. The averages are learnt from
        // these exchanges only, as they are the ones the budget is for (with
        // more in flight, waits include queueing behind the others).
        let budget = poll.budget();
        let permit = if in_flight.alone() && budget.enabled() {
            poll.activity.poll_permit()
        } else {
            None
        };
        // When the wait is learnt from: a permitted exchange the client did
        // not interrupt.
        let mut sent = permit.map(|_| std::time::Instant::now());
        if let Some(permit) = &permit {
            let budget = budget.budget();
            if !budget.is_zero()
                && self.poll_for_response(budget, permit)? == PollEnd::ClientHasMore
            {
                sent = None;
            }
        }
        loop {
            let (head, chunked) = self.read_head().await?;
            if let Some(sent) = sent.take() {
                poll.record(sent.elapsed());
            }
            let head_request = matches!(request, Request::Head);
            let resp = self.read_body(head, chunked, head_request).await?;
            // An interim 1xx is followed by the real answer.
            if (100..200).contains(&resp.status) {
                continue;
            }
            return Ok(resp);
        }
    }

    /// Wait up to `budget` for the first response bytes by polling the
    /// socket, so that an answer arriving within it costs no wake-up of a
    /// sleeping thread; give up early when `permit`'s client sends more.
    /// Bytes read go to `buf` exactly as [`Self::fill`] would put them; a
    /// socket error is returned (reading it clears it, so the read path
    /// would see only a close).
    fn poll_for_response(&mut self, budget: Duration, permit: &PollPermit) -> io::Result<PollEnd> {
        // Never for TLS: the socket carries records that only rustls may
        // consume, and a TLS server is usually remote, where the round trip
        // dwarfs the wake-up.
        let fd = match &self.stream {
            Stream::Plain(tcp) => tcp.as_raw_fd(),
            Stream::Unix(unix) => unix.as_raw_fd(),
            Stream::Tls(_) => return Ok(PollEnd::Skipped),
        };
        if self.pos != self.buf.len() {
            return Ok(PollEnd::Skipped);
        }
        // As in `fill`: everything is consumed, so the buffer starts over.
        self.buf.clear();
        self.pos = 0;
        self.buf.reserve(READ_CHUNK);
        // Not tokio's `TcpStream::try_read`: after one `WouldBlock` it waits
        // for the reactor to report readiness and stops calling `recv`.
        // Reading the fd behind tokio's back is safe for its readiness
        // tracking: new data always raises a fresh edge-triggered event, and
        // a stale "readable" only costs it one `recv` returning EAGAIN.
        let started = std::time::Instant::now();
        loop {
            let spare = &mut self.buf.spare_capacity_mut()[..READ_CHUNK];
            // SAFETY: `spare` is writable memory of `spare.len()` bytes that
            // `self.buf` owns and nothing else references during the call;
            // `fd` is the open socket of `self.stream`, which `&mut self`
            // keeps alive.
            let n = unsafe {
                libc::recv(
                    fd,
                    spare.as_mut_ptr().cast(),
                    spare.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n > 0 {
                // SAFETY: `recv` initialised the first `n` bytes of the spare
                // capacity (n <= READ_CHUNK, which `reserve` made room for).
                unsafe { self.buf.set_len(n as usize) };
                return Ok(PollEnd::Data);
            }
            if n == 0 {
                return Ok(PollEnd::Closed);
            }
            let error = io::Error::last_os_error();
            if !matches!(
                error.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) {
                return Err(error);
            }
            if started.elapsed() >= budget {
                return Ok(PollEnd::Spent);
            }
            if permit.client_has_more() {
                return Ok(PollEnd::ClientHasMore);
            }
            // Yield rather than spin: on a small VM the server (or the NBD
            // client) may need this very CPU to produce the answer, and a
            // pure spin starves it and makes latency worse.
            // SAFETY: `sched_yield` takes no arguments and touches no memory.
            unsafe { libc::sched_yield() };
        }
    }

    async fn fill(&mut self) -> Result<usize, HttpError> {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        // Read into spare capacity: no zero-filling of 16 KiB per read.
        Ok(read_spare(&mut self.stream, &mut self.buf, READ_CHUNK).await?)
    }

    /// The next response head, parsed, and whether its body is chunked.
    async fn read_head(&mut self) -> Result<(Response, bool), HttpError> {
        loop {
            if let Some(head) = parse_head(&self.buf[self.pos..])? {
                self.pos += head.len;
                return Ok((head.response, head.chunked));
            }
            if self.buf.len() - self.pos > MAX_HEAD {
                return Err(HttpError::Protocol("response head too large".into()));
            }
            let had = self.buf.len() - self.pos;
            if self.fill().await? == 0 {
                return Err(if had == 0 {
                    HttpError::ClosedBeforeAnswer
                } else {
                    HttpError::Protocol("connection closed inside the response head".into())
                });
            }
        }
    }

    /// The body of the response `resp` heads, into `resp.body`.
    async fn read_body(
        &mut self,
        mut resp: Response,
        chunked: bool,
        head_request: bool,
    ) -> Result<Response, HttpError> {
        let no_body = head_request || resp.status == 204 || resp.status == 304 || resp.status < 200;
        if no_body {
            return Ok(resp);
        }
        if chunked {
            resp.body = self.read_chunked().await?;
        } else if let Some(len) = resp.content_length {
            resp.body = self.read_exact_body(len as usize).await?;
        } else {
            // No length: the body ends with the connection.
            resp.keep_alive = false;
            let mut body = self.buf[self.pos..].to_vec();
            self.pos = self.buf.len();
            self.stream.read_to_end(&mut body).await?;
            resp.body = body;
        }
        Ok(resp)
    }

    async fn read_exact_body(&mut self, len: usize) -> Result<Vec<u8>, HttpError> {
        let mut body = Vec::with_capacity(len);
        let buffered = (self.buf.len() - self.pos).min(len);
        body.extend_from_slice(&self.buf[self.pos..self.pos + buffered]);
        self.pos += buffered;
        // The rest straight into the body, without zero-filling it first.
        while body.len() < len {
            let want = len - body.len();
            if read_spare(&mut self.stream, &mut body, want).await? == 0 {
                return Err(HttpError::Protocol(format!(
                    "body ended early: Content-Length {len}, connection closed"
                )));
            }
        }
        Ok(body)
    }

    async fn read_line(&mut self) -> Result<String, HttpError> {
        loop {
            if let Some(i) = find(&self.buf[self.pos..], b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[self.pos..self.pos + i]).into_owned();
                self.pos += i + 2;
                return Ok(line);
            }
            if self.buf.len() - self.pos > MAX_HEAD {
                return Err(HttpError::Protocol("chunk header too long".into()));
            }
            if self.fill().await? == 0 {
                return Err(HttpError::Protocol(
                    "connection closed inside a chunked body".into(),
                ));
            }
        }
    }

    async fn read_chunked(&mut self) -> Result<Vec<u8>, HttpError> {
        let mut body = Vec::new();
        loop {
            let line = self.read_line().await?;
            let size_hex = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_hex, 16)
                .map_err(|_| HttpError::Protocol(format!("bad chunk size {size_hex:?}")))?;
            if size == 0 {
                // Trailers end with an empty line.
                while !self.read_line().await?.is_empty() {}
                return Ok(body);
            }
            body.extend(self.read_exact_body(size).await?);
            if !self.read_line().await?.is_empty() {
                return Err(HttpError::Protocol("chunk not followed by CRLF".into()));
            }
        }
    }
}

/// Read at most `max` bytes into the spare capacity of `v` (which must have
/// room for them) and append them; 0 at end of stream.
async fn read_spare(stream: &mut Stream, v: &mut Vec<u8>, max: usize) -> io::Result<usize> {
    v.reserve(max);
    let len = v.len();
    let n = {
        let mut rb = ReadBuf::uninit(&mut v.spare_capacity_mut()[..max]);
        std::future::poll_fn(|cx| Pin::new(&mut *stream).poll_read(cx, &mut rb)).await?;
        rb.filled().len()
    };
    // SAFETY: `poll_read` initialised the first `n` bytes of the spare
    // capacity (what `ReadBuf::filled` reports).
    unsafe { v.set_len(len + n) };
    Ok(n)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(haystack, needle)
}

/// Headers a response may carry before it is refused (http-disk-server
/// sends about ten).
const MAX_HEADERS: usize = 64;

/// A response head at the start of a buffer.
#[derive(Debug)]
pub struct Head {
    pub response: Response,
    /// `Transfer-Encoding: chunked`.
    pub chunked: bool,
    /// Bytes of the head, blank line included.
    pub len: usize,
}

/// Parse the status line and the headers this client cares about from the
/// start of `buf`; None while the head is incomplete.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut headers);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => {
            let start = &buf[..buf.len().min(64)];
            return Err(HttpError::Protocol(format!(
                "bad response head ({e}), starting {:?}",
                String::from_utf8_lossy(start)
            )));
        }
    };
    let mut response = Response {
        status: parsed.code.unwrap_or_default(),
        keep_alive: parsed.version == Some(1),
        ..Response::default()
    };
    let mut chunked = false;
    for header in parsed.headers.iter() {
        let name = header.name;
        let Ok(value) = std::str::from_utf8(header.value) else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            response.content_length = Some(
                value
                    .parse()
                    .map_err(|_| HttpError::Protocol(format!("bad Content-Length {value:?}")))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked |= value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            let v = value.to_ascii_lowercase();
            if v.contains("close") {
                response.keep_alive = false;
            } else if v.contains("keep-alive") {
                response.keep_alive = true;
            }
        } else if name.eq_ignore_ascii_case(heartbeat_wire::HEADER_ROLE) {
            response.role = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case(heartbeat_wire::HEADER_EPOCH) {
            response.epoch = value.parse().ok();
        } else if name.eq_ignore_ascii_case(heartbeat_wire::HEADER_SERVING_URL) && !value.is_empty()
        {
            response.serving_url = Some(value.to_owned());
        }
    }
    Ok(Some(Head {
        response,
        chunked,
        len,
    }))
}

/// Idle keep-alive connections to one server.
#[derive(Debug, Default)]
pub struct Pool {
    idle: Mutex<Vec<Connection>>,
    /// TLS settings for `https://` endpoints.
    tls: Option<TlsClientConfig>,
    /// Polling for this server's answers.
    poll: ResponsePoll,
}

impl Pool {
    /// A pool that can also reach `https://` endpoints (with `tls`) and
    /// polls for answers as `poll` allows.
    pub fn new(tls: Option<TlsClientConfig>, poll: ResponsePoll) -> Self {
        Self {
            idle: Mutex::default(),
            tls,
            poll,
        }
    }

    fn take(&self) -> Option<Connection> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    fn put(&self, conn: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }

    /// Drop every idle connection (after a failure they are suspect).
    pub fn clear(&self) {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// One request on a pooled or new connection, bounded by `deadline`. A
    /// pooled connection the server closed while idle is retried once on a
    /// fresh connection: that failure says nothing about the server.
    pub async fn send(
        &self,
        endpoint: &Endpoint,
        request: &Request<'_>,
        auth: Option<&PoolKey>,
        connect_timeout: Duration,
        deadline: Instant,
    ) -> Result<Response, HttpError> {
        let work = async {
            if let Some(mut conn) = self.take() {
                match conn.exchange(endpoint, request, auth, &self.poll).await {
                    Ok(resp) => return self.finish(conn, resp),
                    Err(HttpError::ClosedBeforeAnswer) => {}
                    Err(HttpError::Io(e))
                        if matches!(
                            e.kind(),
                            io::ErrorKind::BrokenPipe
                                | io::ErrorKind::ConnectionReset
                                | io::ErrorKind::ConnectionAborted
                                // TLS: the peer closed without close_notify.
                                | io::ErrorKind::UnexpectedEof
                        ) => {}
                    Err(e) => return Err(e),
                }
            }
            let mut conn =
                Connection::connect(endpoint, self.tls.as_ref(), connect_timeout).await?;
            let resp = conn.exchange(endpoint, request, auth, &self.poll).await?;
            self.finish(conn, resp)
        };
        match tokio::time::timeout_at(deadline, work).await {
            Ok(r) => r,
            Err(_) => Err(HttpError::Timeout),
        }
    }

    fn finish(&self, conn: Connection, resp: Response) -> Result<Response, HttpError> {
        if resp.keep_alive && conn.pos == conn.buf.len() {
            self.put(conn);
        }
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_endpoints() {
        let e = Endpoint::parse("http://127.0.0.1:8076").unwrap();
        assert_eq!(e.authority, "127.0.0.1:8076");
        assert_eq!(e.path, "/");
        assert_eq!(e.url, "http://127.0.0.1:8076");
        let e = Endpoint::parse("http://host/").unwrap();
        assert_eq!(e.authority, "host:80");
        assert_eq!(e.url, "http://host");
        let e = Endpoint::parse("http://[::1]:99/disk").unwrap();
        assert_eq!(
            (e.authority.as_str(), e.path.as_str()),
            ("[::1]:99", "/disk")
        );
        assert_eq!(
            Endpoint::parse("http://[::1]").unwrap().authority,
            "[::1]:80"
        );
        let e = Endpoint::parse("https://10.0.0.1:8443/").unwrap();
        assert!(e.tls);
        assert_eq!(e.host, "10.0.0.1");
        assert_eq!(e.authority, "10.0.0.1:8443");
        let e = Endpoint::parse("https://[::1]").unwrap();
        assert_eq!(
            (e.host.as_str(), e.authority.as_str()),
            ("::1", "[::1]:443")
        );
        assert!(!Endpoint::parse("http://h:1").unwrap().tls);
        assert!(Endpoint::parse("ftp://h").is_err());
        assert!(Endpoint::parse("http://h:x").is_err());
        assert!(Endpoint::parse("http://").is_err());
        let e = Endpoint::parse("unix:/run/xha-heartbeat/hb-http.sock").unwrap();
        assert_eq!(
            e.unix_socket.as_deref(),
            Some(std::path::Path::new("/run/xha-heartbeat/hb-http.sock"))
        );
        assert_eq!((e.authority.as_str(), e.path.as_str()), ("localhost", "/"));
        assert!(!e.tls);
        let e = Endpoint::parse("unix:hb-http.sock").unwrap_err();
        assert!(e.contains("absolute path"), "{e}");
        assert!(Endpoint::parse("unix:").is_err());
        assert!(Endpoint::parse("http://h:1").unwrap().unix_socket.is_none());
    }

    #[test]
    fn encodes_requests_without_expect() {
        let e = Endpoint::parse("http://10.0.0.1:8076").unwrap();
        let get = String::from_utf8(
            Request::Get {
                offset: 512,
                len: 1024,
            }
            .encode(&e, None),
        )
        .unwrap();
        assert_eq!(
            get,
            "GET / HTTP/1.1\r\nHost: 10.0.0.1:8076\r\nRange: bytes=512-1535\r\n\r\n"
        );
        let put = Request::Put {
            offset: 0,
            data: b"abc",
        }
        .encode(&e, None);
        let put = String::from_utf8(put).unwrap();
        assert!(put.starts_with("PUT / HTTP/1.1\r\n"));
        assert!(put.contains("Content-Range: bytes 0-2/*\r\n"));
        assert!(put.contains("Content-Length: 3\r\n"));
        assert!(!put.to_ascii_lowercase().contains("expect"));
        assert!(put.ends_with("\r\n\r\nabc"));
    }

    #[test]
    fn signed_requests_verify_on_the_server_side() {
        use heartbeat_wire::auth::{PoolKeys, SignedParts, Verifier};
        let keys = PoolKeys::parse(
            "k1:00112233445566778899aabbccddeeff",
            std::path::Path::new("t"),
        )
        .unwrap();
        let e = Endpoint::parse("http://10.0.0.1:8076").unwrap();
        let put = Request::Put {
            offset: 512,
            data: b"abc",
        }
        .encode(&e, Some(keys.signing_key()));
        let text = String::from_utf8(put).unwrap();
        let header = text
            .split("\r\n")
            .find_map(|l| l.strip_prefix("x-heartbeat-auth: "))
            .expect("signed");
        let v = Verifier::new(keys, auth::DEFAULT_WINDOW, 10);
        let parts = SignedParts {
            method: "PUT",
            path: "/",
            range: "bytes 512-514/*",
        };
        v.check(&parts, Some(header), auth::unix_ms_now(), true)
            .unwrap()
            .check_body(b"abc")
            .unwrap();
    }

    fn head(text: &str) -> Result<Response, HttpError> {
        let whole = format!("{text}\r\n\r\n");
        let head = parse_head(whole.as_bytes())?.expect("complete head");
        assert_eq!(head.len, whole.len());
        Ok(head.response)
    }

    #[test]
    fn parses_heads() {
        let r = head(
            "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nX-Heartbeat-Role: standby\r\nx-heartbeat-epoch: 7\r\nx-heartbeat-serving-url: http://b:1\r\nContent-Length: 0",
        )
        .unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.role.as_deref(), Some("standby"));
        assert_eq!(r.epoch, Some(7));
        assert_eq!(r.serving_url.as_deref(), Some("http://b:1"));
        assert!(r.keep_alive);
        let r = head("HTTP/1.0 200 OK\r\nContent-Length: 4194304").unwrap();
        assert_eq!(r.content_length, Some(4194304));
        assert!(!r.keep_alive);
        assert!(
            !head("HTTP/1.1 200 OK\r\nConnection: close")
                .unwrap()
                .keep_alive
        );
        assert!(head("SSH-2.0-OpenSSH").is_err());
        assert!(head("HTTP/1.1 200 OK\r\nContent-Length: x").is_err());
        let chunked = parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n5\r\n")
            .unwrap()
            .unwrap();
        assert!(chunked.chunked);
        // Incomplete: wait for more bytes; the body after the head is not part of it.
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Len")
            .unwrap()
            .is_none());
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\n\r\nbody")
                .unwrap()
                .unwrap()
                .len,
            19
        );
    }

    const US: Duration = Duration::from_micros(1);

    #[test]
    fn poll_budget_follows_twice_the_average_up_to_max() {
        let mut b = PollBudget::new(500 * US);
        // No history: poll up to the cap.
        assert_eq!(b.budget(), 500 * US);
        // The first wait is the average.
        b.record(100 * US);
        assert_eq!(b.budget(), 200 * US);
        // A new wait weighs 1/8.
        b.record(180 * US);
        assert_eq!(b.budget(), 220 * US);
        // Twice the average is capped.
        for _ in 0..50 {
            b.record(400 * US);
        }
        assert_eq!(b.budget(), 500 * US);
        // Faster again: the budget comes down with the average.
        for _ in 0..100 {
            b.record(50 * US);
        }
        assert!(b.budget() <= 101 * US, "{:?}", b.budget());
    }

    #[test]
    fn poll_budget_is_off_while_the_average_exceeds_max() {
        let mut b = PollBudget::new(500 * US);
        b.record(2 * 1000 * US); // a DRBD protocol C write
        assert_eq!(b.budget(), Duration::ZERO);
        // One fast answer does not switch polling back on ...
        b.record(100 * US);
        assert_eq!(b.budget(), Duration::ZERO);
        // ... a lasting change does.
        for _ in 0..30 {
            b.record(100 * US);
        }
        assert!(!b.budget().is_zero());
        // Exactly at the cap still polls.
        let mut b = PollBudget::new(500 * US);
        b.record(500 * US);
        assert_eq!(b.budget(), 500 * US);
    }

    #[test]
    fn poll_budget_is_off_when_max_is_zero() {
        let mut b = PollBudget::new(Duration::ZERO);
        assert!(!b.enabled());
        assert_eq!(b.budget(), Duration::ZERO);
        b.record(10 * US);
        assert_eq!(b.budget(), Duration::ZERO);
        assert_eq!(PollBudget::default().budget(), Duration::ZERO);
    }

    #[test]
    fn in_flight_guards_count_across_pools_and_release_on_drop() {
        let count = Arc::new(AtomicUsize::new(0));
        let a = ResponsePoll::new(500 * US, count.clone(), Arc::default());
        let b = ResponsePoll::new(Duration::ZERO, count.clone(), Arc::default());
        let first = a.enter();
        assert!(first.alone());
        {
            let second = b.enter();
            assert!(!second.alone() && !first.alone());
            assert!(!a.enter().alone());
            assert_eq!(count.load(Ordering::Relaxed), 2);
        }
        assert!(first.alone());
        drop(first);
        assert_eq!(count.load(Ordering::Relaxed), 0);
        assert!(a.enter().alone());
    }

    /// A blocking HTTP server on its own thread, so that it answers while
    /// the test's runtime thread polls. Connections are served one after
    /// the other; `answer` maps a request head to the bytes to send back, or
    /// None to close the connection. Returns the endpoint and the count of
    /// connections accepted.
    fn thread_server(
        answer: impl Fn(&str) -> Option<Vec<u8>> + Send + 'static,
    ) -> (Endpoint, Arc<AtomicUsize>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                counter.fetch_add(1, Ordering::SeqCst);
                let mut buf = Vec::new();
                'requests: loop {
                    let end = loop {
                        if let Some(i) = find(&buf, b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk) {
                            Ok(0) | Err(_) => break 'requests,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end);
                    match answer(&head) {
                        Some(bytes) => {
                            if stream.write_all(&bytes).is_err() {
                                break;
                            }
                        }
                        None => break,
                    }
                }
            }
        });
        (Endpoint::parse(&url).unwrap(), accepted)
    }

    /// Answers `GET` with `len` bytes of a pattern, as a 206.
    fn pattern_answer(len: usize) -> Vec<u8> {
        let mut out =
            format!("HTTP/1.1 206 Partial Content\r\nContent-Length: {len}\r\n\r\n").into_bytes();
        out.extend((0..len).map(|i| (i % 251) as u8));
        out
    }

    async fn connect(endpoint: &Endpoint) -> Connection {
        Connection::connect(endpoint, None, Duration::from_secs(5))
            .await
            .unwrap()
    }

    const GET: Request<'static> = Request::Get { offset: 0, len: 1 };

    /// A permit with no NBD client to watch.
    fn quiet() -> PollPermit {
        Activity::default().poll_permit().unwrap()
    }

    /// A connection with a GET sent to a server that answers it with `len`
    /// pattern bytes only once the returned sender is used.
    async fn sent_to_held_server(len: usize) -> (Connection, std::sync::mpsc::Sender<()>) {
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (endpoint, _) = thread_server(move |_| {
            released.recv().ok()?;
            Some(pattern_answer(len))
        });
        let mut conn = connect(&endpoint).await;
        conn.stream
            .send(&GET.encode(&endpoint, None))
            .await
            .unwrap();
        (conn, release)
    }

    #[tokio::test]
    async fn polling_reads_the_answer_and_the_read_path_goes_on_from_it() {
        // Larger than one read: the body continues on the async path.
        let len = 3 * READ_CHUNK + 17;
        let (endpoint, accepted) = thread_server(move |_| Some(pattern_answer(len)));
        let mut conn = connect(&endpoint).await;
        for _ in 0..3 {
            conn.stream
                .send(&GET.encode(&endpoint, None))
                .await
                .unwrap();
            let end = conn
                .poll_for_response(Duration::from_secs(5), &quiet())
                .unwrap();
            assert_eq!(end, PollEnd::Data);
            let (head, chunked) = conn.read_head().await.unwrap();
            let resp = conn.read_body(head, chunked, false).await.unwrap();
            assert_eq!(resp.status, 206);
            assert_eq!(resp.body.len(), len);
            assert!(resp
                .body
                .iter()
                .enumerate()
                .all(|(i, b)| *b == (i % 251) as u8));
            // Everything consumed: the connection can go back to the pool.
            assert_eq!(conn.pos, conn.buf.len());
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn polling_gives_up_after_its_budget_and_the_answer_still_arrives() {
        // The server answers only once the poll has given up: no race with
        // a sleep that a loaded machine could outlast.
        let (mut conn, release) = sent_to_held_server(512).await;
        let started = std::time::Instant::now();
        let end = conn
            .poll_for_response(Duration::from_millis(2), &quiet())
            .unwrap();
        assert_eq!(end, PollEnd::Spent);
        assert!(started.elapsed() >= Duration::from_millis(2));
        assert!(conn.buf.is_empty());
        release.send(()).unwrap();
        let (head, chunked) = conn.read_head().await.unwrap();
        let resp = conn.read_body(head, chunked, false).await.unwrap();
        assert_eq!(resp.body.len(), 512);
    }

    #[tokio::test]
    async fn polling_stops_when_the_nbd_client_sends_more() {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        // The server does not answer until released: only the client's
        // next request can end the poll before its budget.
        let (mut conn, release) = sent_to_held_server(1).await;
        let (mut nbd_client, nbd_socket) = std::os::unix::net::UnixStream::pair().unwrap();
        let activity = Arc::new(Activity::default());
        let _client = activity.client_entered(Some(nbd_socket.as_raw_fd()));
        let _request = activity.request_started();
        let permit = activity.poll_permit().unwrap();
        nbd_client.write_all(b"the next request").unwrap();
        let started = std::time::Instant::now();
        let end = conn
            .poll_for_response(Duration::from_secs(30), &permit)
            .unwrap();
        assert_eq!(end, PollEnd::ClientHasMore);
        assert!(started.elapsed() < Duration::from_secs(30));
        release.send(()).unwrap();
        let (head, chunked) = conn.read_head().await.unwrap();
        assert_eq!(
            conn.read_body(head, chunked, false).await.unwrap().status,
            206
        );
    }

    #[tokio::test]
    async fn no_polling_while_other_nbd_requests_wait() {
        let (endpoint, _) = thread_server(|_| Some(pattern_answer(1)));
        let activity = Arc::new(Activity::default());
        let pool = Pool::new(
            None,
            ResponsePoll::new(500 * US, Arc::default(), activity.clone()),
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        // Two NBD requests read, one of them being sent: not polled, so
        // nothing is learnt.
        let _requests = (activity.request_started(), activity.request_started());
        pool.send(&endpoint, &GET, None, Duration::from_secs(1), deadline)
            .await
            .unwrap();
        assert_eq!(pool.poll.budget().average, None);
    }

    #[tokio::test]
    async fn polling_leaves_a_close_to_the_read_path() {
        let (endpoint, _) = thread_server(|_| None);
        let mut conn = connect(&endpoint).await;
        conn.stream
            .send(&GET.encode(&endpoint, None))
            .await
            .unwrap();
        let end = conn
            .poll_for_response(Duration::from_secs(5), &quiet())
            .unwrap();
        assert_eq!(end, PollEnd::Closed);
        assert!(matches!(
            conn.read_head().await,
            Err(HttpError::ClosedBeforeAnswer)
        ));
    }

    #[tokio::test]
    async fn polling_returns_a_reset_as_the_error_it_is() {
        use std::io::Read;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            // Read only part of the request: closing with unread bytes
            // makes the kernel send RST instead of FIN.
            let _ = s.read(&mut [0u8; 1]);
        });
        let endpoint = Endpoint::parse(&url).unwrap();
        let mut conn = connect(&endpoint).await;
        conn.stream
            .send(&GET.encode(&endpoint, None))
            .await
            .unwrap();
        let e = conn
            .poll_for_response(Duration::from_secs(5), &quiet())
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}");
    }

    #[tokio::test]
    async fn polling_skips_when_bytes_are_already_buffered() {
        let (endpoint, _) = thread_server(|_| Some(pattern_answer(1)));
        let mut conn = connect(&endpoint).await;
        conn.buf.extend_from_slice(b"HTTP/1.1");
        assert_eq!(
            conn.poll_for_response(Duration::from_secs(5), &quiet())
                .unwrap(),
            PollEnd::Skipped
        );
        assert_eq!(conn.buf, b"HTTP/1.1");
    }

    #[tokio::test]
    async fn lone_exchanges_poll_and_learn_the_wait() {
        let (endpoint, accepted) = thread_server(|_| Some(pattern_answer(512)));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let pool = Pool::new(
            None,
            ResponsePoll::new(500 * US, in_flight.clone(), Arc::default()),
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        let read = Request::Get {
            offset: 0,
            len: 512,
        };
        // Another exchange in flight: no polling, nothing learnt.
        let other = pool.poll.enter();
        let resp = pool
            .send(&endpoint, &read, None, Duration::from_secs(1), deadline)
            .await
            .unwrap();
        assert_eq!(resp.body.len(), 512);
        assert_eq!(pool.poll.budget().average, None);
        drop(other);
        // Alone: learnt from each exchange, on one kept-alive connection.
        for _ in 0..5 {
            let resp = pool
                .send(&endpoint, &read, None, Duration::from_secs(1), deadline)
                .await
                .unwrap();
            assert_eq!(resp.body.len(), 512);
        }
        assert!(pool.poll.budget().average.is_some());
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(in_flight.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn no_polling_and_no_learning_when_disabled() {
        let (endpoint, _) = thread_server(|_| Some(pattern_answer(1)));
        let pool = Pool::new(
            None,
            ResponsePoll::new(Duration::ZERO, Arc::default(), Arc::default()),
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        pool.send(&endpoint, &GET, None, Duration::from_secs(1), deadline)
            .await
            .unwrap();
        assert_eq!(pool.poll.budget(), PollBudget::new(Duration::ZERO));
    }

    #[tokio::test]
    async fn a_timed_out_exchange_leaves_the_in_flight_count() {
        let (endpoint, _) = thread_server(|_| {
            std::thread::sleep(Duration::from_millis(300));
            Some(pattern_answer(1))
        });
        let in_flight = Arc::new(AtomicUsize::new(0));
        let pool = Pool::new(
            None,
            ResponsePoll::new(500 * US, in_flight.clone(), Arc::default()),
        );
        let deadline = Instant::now() + Duration::from_millis(20);
        let r = pool
            .send(&endpoint, &GET, None, Duration::from_secs(1), deadline)
            .await;
        assert!(matches!(r, Err(HttpError::Timeout)), "{r:?}");
        assert_eq!(in_flight.load(Ordering::SeqCst), 0);
    }
}
