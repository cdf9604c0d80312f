//! http-disk-server's request handling: its hyper service
//! (`http_disk_server::http::DiskService`) on an in-memory duplex stream,
//! fed arbitrary request bytes in arbitrary chunkings, over an in-memory disk.
//!
//! Input: `[mode: u8][chunking seed: u16][request bytes...]`; mode bit 0
//! picks a standby server (the gate never granted) instead of a serving one,
//! bits 1-2 the authentication policy: off (reference clients), compat (a
//! pool key; requests without `x-heartbeat-auth` are served, those with it
//! must verify) or required.
//!
//! Invariants, checked on every response the service returns:
//! - no panic, no hang (the connection finishes within 4 s after the client
//!   stops sending), and whatever reaches the client starts as HTTP/1.x;
//! - the disk is never touched outside its size; a GET never writes; a PUT
//!   writes exactly its Content-Range when answered 200 and nothing
//!   otherwise;
//! - status codes are the protocol's (no 500 from a healthy disk, 503 only
//!   from the standby, with its hint, 401 only under a key); a block request
//!   carrying an `x-heartbeat-auth` header (which the fuzzer cannot sign), or
//!   none when the key is required, is never served; every response carries the role and
//!   epoch headers and a Content-Length equal to its body (HEAD /: the disk
//!   size with no body);
//! - a 206 carries `Content-Range: bytes a-b/<size>` matching its body, which
//!   holds the disk's bytes there; a 200 GET / without Range is the whole
//!   disk; a 416 carries `Content-Range: bytes */<size>`.

#![no_main]

use std::convert::Infallible;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use heartbeat_fuzz::{chunk_sizes, Input};
use heartbeat_wire::{ContentRange, HEADER_EPOCH, HEADER_ROLE, HEADER_SERVING_URL};
use http_body_util::{BodyExt, Full};
use http_disk_server::arbiter::Grant;
use http_disk_server::disk::{Disk, DiskError};
use http_disk_server::gate::{DiskOpener, Gate};
use heartbeat_wire::auth::{PoolKey, PoolKeys, Verifier, HEADER_AUTH};
use http_disk_server::http::{AuthPolicy, DiskService, HttpConfig};
use http_disk_server::io_watchdog::{IoWatchdog, WatchdogConfig};
use http_disk_server::liveness::{DiskHealth, FreezeDetector};
use http_disk_server::range_lock::RangeLock;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

/// Not a multiple of 512, so unaligned ends are exercised.
const DISK_SIZE: u64 = 65_536 + 300;
const MAX_REQUEST: u64 = 32 * 1024;
const PEER_URL: &str = "http://peer.example:8076";

/// A disk in memory that refuses (by panicking) any access outside it, and
/// remembers the writes of the current request.
struct MemDisk {
    bytes: Mutex<Vec<u8>>,
    writes: Mutex<Vec<(u64, usize)>>,
}

impl MemDisk {
    fn span(&self, offset: u64, len: usize) -> std::ops::Range<usize> {
        let end = offset.checked_add(len as u64).expect("offset + len overflows");
        assert!(end <= DISK_SIZE, "disk access {offset}+{len} beyond {DISK_SIZE}");
        offset as usize..end as usize
    }
}

impl Disk for MemDisk {
    fn name(&self) -> &str {
        "fuzz-mem-disk"
    }
    fn size(&self) -> u64 {
        DISK_SIZE
    }
    fn io_alignment(&self) -> u64 {
        512
    }
    fn read_at(&self, offset: u64, len: usize) -> Result<Bytes, DiskError> {
        let span = self.span(offset, len);
        Ok(Bytes::copy_from_slice(&self.bytes.lock().unwrap()[span]))
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        let span = self.span(offset, data.len());
        self.bytes.lock().unwrap()[span].copy_from_slice(data);
        self.writes.lock().unwrap().push((offset, data.len()));
        Ok(())
    }
}

/// Which authentication policy a service runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Auth {
    Off,
    Compat,
    Required,
}

struct Fixture {
    rt: tokio::runtime::Runtime,
    disk: Arc<MemDisk>,
    /// Indexed by `[standby as usize][Auth as usize]`.
    services: Vec<Vec<Arc<DiskService>>>,
    _grants: Vec<watch::Sender<Grant>>,
}

fn policy(auth: Auth) -> AuthPolicy {
    let verifier = || {
        let key = PoolKey::new("k1", b"fuzzing-pool-key-0123456789abcdef").unwrap();
        Arc::new(Verifier::new(PoolKeys::new(vec![key]).unwrap(), Duration::from_secs(30), 1024))
    };
    match auth {
        Auth::Off => AuthPolicy::Off,
        Auth::Compat => AuthPolicy::Compat(verifier()),
        Auth::Required => AuthPolicy::Required(verifier()),
    }
}

fn service(rt: &tokio::runtime::Runtime, grant: Grant, auth: Auth, disk: Arc<MemDisk>) -> (Arc<DiskService>, watch::Sender<Grant>) {
    let (step_tx, _step_rx) = mpsc::unbounded_channel();
    let _in_runtime = rt.enter(); // the gate keeps the runtime's handle
    let gate = Gate::new(step_tx, Duration::from_secs(1));
    let serving = matches!(grant, Grant::Serving { .. });
    let (grant_tx, grant_rx) = watch::channel(grant);
    let opener: DiskOpener = Arc::new(move || Ok(Arc::clone(&disk) as Arc<dyn Disk>));
    rt.spawn(Arc::clone(&gate).follow(grant_rx, opener));
    rt.block_on(async {
        while (gate.snapshot().role() == heartbeat_wire::Role::Serving) != serving
            || !gate.settled.load(std::sync::atomic::Ordering::Acquire)
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    // Generous: only a real hang may trip the deadline. The scanning thread
    // is not started: a fuzz input must never step the server down by time.
    let watchdog = IoWatchdog::new(
        WatchdogConfig {
            deadline: Duration::from_secs(30),
            stuck_exit_after: Duration::from_secs(3600),
            debug_no_fence: false,
            device: "fuzz-mem-disk".into(),
        },
        Arc::clone(&gate),
        Arc::new(DiskHealth::default()),
    );
    let svc = Arc::new(DiskService {
        cfg: HttpConfig {
            device: "fuzz-mem-disk".into(),
            arbiter: "fuzz",
            max_request_bytes: MAX_REQUEST,
            body_idle_timeout: Duration::from_secs(30),
            probed_size: DISK_SIZE,
            debug_no_fence: false,
        },
        auth: policy(auth),
        gate,
        locks: RangeLock::new(),
        metrics: Default::default(),
        watchdog,
        // No ticker runs here: make the freeze detector never fire.
        freeze: FreezeDetector::new(Duration::from_millis(100), Duration::from_secs(1 << 40)),
    });
    (svc, grant_tx)
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let pattern = (0..DISK_SIZE).map(|i| (i * 7 + i / 251) as u8).collect();
        let disk = Arc::new(MemDisk {
            bytes: Mutex::new(pattern),
            writes: Mutex::new(Vec::new()),
        });
        let mut services = Vec::new();
        let mut grants = Vec::new();
        for standby in [false, true] {
            let mut row = Vec::new();
            for auth in [Auth::Off, Auth::Compat, Auth::Required] {
                let grant = if standby {
                    Grant::Standby {
                        reason: "fuzzing the standby".into(),
                        serving_url: Some(PEER_URL.into()),
                    }
                } else {
                    Grant::Serving { epoch: 7 }
                };
                let (svc, g) = service(&rt, grant, auth, Arc::clone(&disk));
                row.push(svc);
                grants.push(g);
            }
            services.push(row);
        }
        Fixture {
            rt,
            disk,
            services,
            _grants: grants,
        }
    })
}

/// What the request asked for, taken before the service consumes it.
struct Asked {
    method: Method,
    path: String,
    range: Option<HeaderValue>,
    content_range: Option<HeaderValue>,
    signed: bool,
}

fn header<'a>(resp: &'a Response<Full<Bytes>>, name: impl header::AsHeaderName) -> Option<&'a str> {
    resp.headers().get(name).map(|v| v.to_str().expect("response header is visible ASCII"))
}

fn check(asked: &Asked, standby: bool, auth: Auth, resp: &Response<Full<Bytes>>, body: &Bytes, disk: &MemDisk) {
    let status = resp.status();
    let writes = std::mem::take(&mut *disk.writes.lock().unwrap());
    let on_disk = asked.path == "/";
    assert!(header(resp, HEADER_ROLE).is_some(), "no role header");
    assert!(header(resp, HEADER_EPOCH).and_then(|e| e.parse::<u64>().ok()).is_some());
    let content_length: u64 = header(resp, header::CONTENT_LENGTH)
        .expect("every response has a Content-Length")
        .parse()
        .expect("numeric Content-Length");
    if asked.method == Method::HEAD && on_disk && status == StatusCode::OK {
        assert_eq!(content_length, DISK_SIZE, "HEAD / must give the disk size");
        assert!(body.is_empty(), "HEAD with a body");
    } else {
        assert_eq!(content_length, body.len() as u64, "Content-Length differs from the body");
    }
    let allowed = [
        StatusCode::OK,
        StatusCode::PARTIAL_CONTENT,
        StatusCode::BAD_REQUEST,
        StatusCode::NOT_FOUND,
        StatusCode::METHOD_NOT_ALLOWED,
        StatusCode::LENGTH_REQUIRED,
        StatusCode::PAYLOAD_TOO_LARGE,
        StatusCode::RANGE_NOT_SATISFIABLE,
        StatusCode::SERVICE_UNAVAILABLE,
        StatusCode::UNAUTHORIZED,
    ];
    assert!(allowed.contains(&status), "unexpected status {status} for {} {}", asked.method, asked.path);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        assert!(standby, "a serving server answered 503");
        assert_eq!(header(resp, HEADER_SERVING_URL), Some(PEER_URL), "503 without the hint");
    }
    let block_request = on_disk && [Method::GET, Method::PUT, Method::HEAD].contains(&asked.method);
    if status == StatusCode::UNAUTHORIZED {
        assert!(auth != Auth::Off && block_request, "401 for {} {} under {auth:?}", asked.method, asked.path);
    }
    // Nobody can sign without the pool key, so these must all be refused.
    let must_refuse = match auth {
        Auth::Off => false,
        Auth::Compat => asked.signed,
        Auth::Required => true,
    };
    if must_refuse && block_request {
        assert_eq!(status, StatusCode::UNAUTHORIZED, "unauthenticated {} served under {auth:?}", asked.method);
    }
    if standby && block_request {
        assert!(
            [StatusCode::SERVICE_UNAVAILABLE, StatusCode::UNAUTHORIZED].contains(&status),
            "standby served the disk"
        );
    }
    if asked.method != Method::PUT || status != StatusCode::OK {
        assert!(writes.is_empty(), "{} answered {status} but wrote {writes:?}", asked.method);
    }
    match (asked.method.clone(), status) {
        (Method::GET, StatusCode::PARTIAL_CONTENT) => {
            assert!(on_disk && asked.range.is_some());
            let cr = ContentRange::parse(header(resp, header::CONTENT_RANGE).expect("206 without Content-Range"))
                .expect("206 Content-Range parses");
            assert_eq!(cr.complete_length, Some(DISK_SIZE));
            assert!(cr.range.fits_in(DISK_SIZE));
            assert_eq!(cr.range.len(), body.len() as u64, "206 body differs from Content-Range");
            let bytes = disk.bytes.lock().unwrap();
            assert_eq!(&bytes[cr.range.first as usize..=cr.range.last as usize], &body[..], "206 body is not the disk's");
        }
        (Method::GET, StatusCode::OK) if on_disk => {
            assert!(asked.range.is_none(), "Range ignored");
            assert_eq!(&disk.bytes.lock().unwrap()[..], &body[..], "GET / is not the whole disk");
        }
        (Method::PUT, StatusCode::OK) if on_disk => {
            let cr = asked.content_range.as_ref().expect("PUT without Content-Range accepted");
            let cr = ContentRange::parse(cr.to_str().unwrap()).expect("accepted Content-Range parses");
            let total: usize = writes.iter().map(|w| w.1).sum();
            assert_eq!(total as u64, cr.range.len(), "PUT wrote {writes:?} for {cr:?}");
            assert_eq!(writes.first().map(|w| w.0), Some(cr.range.first));
        }
        (_, StatusCode::RANGE_NOT_SATISFIABLE) => {
            assert_eq!(header(resp, header::CONTENT_RANGE), Some(format!("bytes */{DISK_SIZE}").as_str()));
        }
        _ => {}
    }
}

async fn drive(svc: Arc<DiskService>, standby: bool, auth: Auth, disk: Arc<MemDisk>, bytes: &[u8], chunks: &[usize]) -> Vec<u8> {
    let (client, server) = tokio::io::duplex(16 * 1024);
    let handler = service_fn(move |req: Request<Incoming>| {
        let svc = Arc::clone(&svc);
        let disk = Arc::clone(&disk);
        async move {
            let asked = Asked {
                method: req.method().clone(),
                path: req.uri().path().to_owned(),
                range: req.headers().get(header::RANGE).cloned(),
                content_range: req.headers().get(header::CONTENT_RANGE).cloned(),
                signed: req.headers().contains_key(HEADER_AUTH),
            };
            disk.writes.lock().unwrap().clear();
            let resp = svc.handle(req, None).await?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await?.to_bytes();
            let resp = Response::from_parts(parts, Full::new(body.clone()));
            if std::env::var_os("FUZZ_DEBUG").is_some() { eprintln!("{} {} -> {} {:?}", asked.method, asked.path, resp.status(), body); }
            check(&asked, standby, auth, &resp, &body, &disk);
            Ok::<_, Infallible>(resp)
        }
    });
    // half_close: the client shuts its side down right after its last
    // request; without it hyper would drop that request unanswered.
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .half_close(true)
        .serve_connection(TokioIo::new(server), handler);
    let (mut rd, mut wr) = tokio::io::split(client);
    let send = async {
        let mut at = 0;
        for &n in chunks {
            if wr.write_all(&bytes[at..at + n]).await.is_err() {
                return;
            }
            at += n;
            tokio::task::yield_now().await;
        }
        let _ = wr.shutdown().await;
    };
    let receive = async {
        let mut out = Vec::new();
        let _ = rd.read_to_end(&mut out).await;
        out
    };
    let (_, _, out) = tokio::join!(conn, send, receive);
    out
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let mut input = Input::new(data);
    let mode = input.u8();
    let standby = mode & 1 == 1;
    let auth = [Auth::Off, Auth::Compat, Auth::Required, Auth::Off][(mode >> 1 & 3) as usize];
    let seed = input.u16();
    let bytes = input.rest();
    let svc = Arc::clone(&f.services[standby as usize][auth as usize]);
    let chunks = chunk_sizes(seed, bytes.len());
    let out = f.rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(4), drive(svc, standby, auth, Arc::clone(&f.disk), bytes, &chunks))
            .await
            .expect("the connection did not finish within 4 s after the client stopped sending")
    });
    if std::env::var_os("FUZZ_DEBUG").is_some() {
        eprintln!("client received {:?}", String::from_utf8_lossy(&out));
    }
    if !out.is_empty() {
        assert!(out.starts_with(b"HTTP/1."), "response does not start as HTTP/1.x");
    }
});
