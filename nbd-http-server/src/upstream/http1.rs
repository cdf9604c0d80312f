//! A minimal HTTP/1.1 client for the block protocol, over plain tokio
//! `TcpStream`s or, for `https://` URLs, rustls over them (see SECURITY.md,
//! "TLS").
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

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use heartbeat_wire::auth::{self, PoolKey};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The largest response head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Idle connections kept per server.
const MAX_IDLE: usize = 64;

/// Where a block server lives: `http[s]://host:port[/path]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The URL as configured (for logs and error messages).
    pub url: String,
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
    /// Parse `http://host[:port][/path]` or `https://host[:port][/path]`.
    pub fn parse(url: &str) -> Result<Self, String> {
        let trimmed = url.trim();
        let (tls, rest) = if let Some(rest) = trimmed.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = trimmed.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(format!(
                "URL {trimmed:?} must start with http:// or https://"
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
            authority,
            path: path.to_owned(),
            tls,
            host: host.to_owned(),
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

/// The byte stream under a connection. An enum rather than a trait object so
/// that the plain path stays a direct `TcpStream` call (no box, no vtable).
#[derive(Debug)]
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    /// Write the whole buffer and, for TLS, push the records out.
    async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.write_all(bytes).await,
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
        Ok(Self {
            stream,
            buf: Vec::with_capacity(8192),
            pos: 0,
        })
    }

    /// Send one request and read its whole response.
    pub async fn exchange(
        &mut self,
        endpoint: &Endpoint,
        request: &Request<'_>,
        auth: Option<&PoolKey>,
    ) -> Result<Response, HttpError> {
        let bytes = request.encode(endpoint, auth);
        self.stream.send(&bytes).await?;
        loop {
            let resp = self.read_response(matches!(request, Request::Head)).await?;
            // An interim 1xx is followed by the real answer.
            if (100..200).contains(&resp.status) {
                continue;
            }
            return Ok(resp);
        }
    }

    async fn fill(&mut self) -> Result<usize, HttpError> {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        // Read into spare capacity: no zero-filling of 16 KiB per read.
        Ok(read_spare(&mut self.stream, &mut self.buf, 16 * 1024).await?)
    }

    async fn read_response(&mut self, head_request: bool) -> Result<Response, HttpError> {
        let head_end = loop {
            if let Some(i) = find(&self.buf[self.pos..], b"\r\n\r\n") {
                break self.pos + i + 4;
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
        };
        let head = std::str::from_utf8(&self.buf[self.pos..head_end - 4])
            .map_err(|_| HttpError::Protocol("response head is not UTF-8".into()))?
            .to_owned();
        self.pos = head_end;
        let mut resp = parse_head(&head)?;
        let mut chunked = false;
        for line in head.split("\r\n").skip(1) {
            if let Some((name, value)) = line.split_once(':') {
                let (name, value) = (name.trim(), value.trim());
                if name.eq_ignore_ascii_case("transfer-encoding")
                    && value.to_ascii_lowercase().contains("chunked")
                {
                    chunked = true;
                }
            }
        }
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
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Parse the status line and the headers this client cares about.
pub fn parse_head(head: &str) -> Result<Response, HttpError> {
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|_| version.starts_with("HTTP/1."))
        .ok_or_else(|| HttpError::Protocol(format!("bad status line {status_line:?}")))?;
    let mut resp = Response {
        status,
        keep_alive: version == "HTTP/1.1",
        ..Response::default()
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            resp.content_length = Some(
                value
                    .parse()
                    .map_err(|_| HttpError::Protocol(format!("bad Content-Length {value:?}")))?,
            );
        } else if name.eq_ignore_ascii_case("connection") {
            let v = value.to_ascii_lowercase();
            if v.contains("close") {
                resp.keep_alive = false;
            } else if v.contains("keep-alive") {
                resp.keep_alive = true;
            }
        } else if name.eq_ignore_ascii_case(heartbeat_wire::HEADER_ROLE) {
            resp.role = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case(heartbeat_wire::HEADER_EPOCH) {
            resp.epoch = value.parse().ok();
        } else if name.eq_ignore_ascii_case(heartbeat_wire::HEADER_SERVING_URL) && !value.is_empty()
        {
            resp.serving_url = Some(value.to_owned());
        }
    }
    Ok(resp)
}

/// Idle keep-alive connections to one server.
#[derive(Debug, Default)]
pub struct Pool {
    idle: Mutex<Vec<Connection>>,
    /// TLS settings for `https://` endpoints.
    tls: Option<TlsClientConfig>,
}

impl Pool {
    /// A pool that can also reach `https://` endpoints.
    pub fn new(tls: Option<TlsClientConfig>) -> Self {
        Self {
            idle: Mutex::default(),
            tls,
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
                match conn.exchange(endpoint, request, auth).await {
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
            let resp = conn.exchange(endpoint, request, auth).await?;
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

    #[test]
    fn parses_heads() {
        let r = parse_head(
            "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nX-Heartbeat-Role: standby\r\nx-heartbeat-epoch: 7\r\nx-heartbeat-serving-url: http://b:1\r\nContent-Length: 0",
        )
        .unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.role.as_deref(), Some("standby"));
        assert_eq!(r.epoch, Some(7));
        assert_eq!(r.serving_url.as_deref(), Some("http://b:1"));
        assert!(r.keep_alive);
        let r = parse_head("HTTP/1.0 200 OK\r\nContent-Length: 4194304").unwrap();
        assert_eq!(r.content_length, Some(4194304));
        assert!(!r.keep_alive);
        assert!(
            !parse_head("HTTP/1.1 200 OK\r\nConnection: close")
                .unwrap()
                .keep_alive
        );
        assert!(parse_head("SSH-2.0-OpenSSH").is_err());
        assert!(parse_head("HTTP/1.1 200 OK\r\nContent-Length: x").is_err());
    }
}
