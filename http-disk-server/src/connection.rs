//! One thread per client connection.
//!
//! A connection's requests are parsed, checked and carried to the disk on its
//! own thread, which runs a single-threaded runtime for it alone. The bytes
//! of a request wake this thread, and the disk call and the answer follow on
//! it: no hand-off to another thread, each of which would be one more
//! wake-up (tens of µs on a VM, where the qd1 latency of the whole chain is
//! a few hundred). Disk calls may block the thread; the
//! [`IoWatchdog`](crate::io_watchdog::IoWatchdog) enforces their deadline from
//! outside. The price is a thread per connection: connections are few (a
//! couple per pool host) and capped by `--max-connections`.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::http::DiskService;
use crate::io_watchdog::ClientSocket;
use crate::ConnectionSlot;

/// Stack of a connection thread: the request path is shallow, but debug
/// builds have large frames; the memory is reserved, not used.
const CONNECTION_STACK: usize = 1024 * 1024;

/// Per-connection HTTP settings from the flags.
#[derive(Debug, Clone, Copy)]
pub struct ConnSettings {
    pub max_buf: usize,
    pub header_timeout: Duration,
}

/// An accepted connection and its slot under the connection limits.
pub struct Accepted {
    pub stream: ClientStream,
    /// The peer for logs: `ADDR:PORT`, or the Unix socket's path.
    pub peer: String,
    pub slot: ConnectionSlot,
}

/// A client's socket: TCP (plain or TLS) or, from this host, `--unix-socket`.
pub enum ClientStream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

/// [`ClientStream`] between the accepting runtime and the connection's own.
enum StdStream {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl ClientStream {
    fn into_std(self) -> std::io::Result<StdStream> {
        Ok(match self {
            ClientStream::Tcp(s) => StdStream::Tcp(s.into_std()?),
            ClientStream::Unix(s) => StdStream::Unix(s.into_std()?),
        })
    }
}

/// Serve `conn` on a thread of its own until the peer leaves or the server
/// stops (then gracefully: in-flight requests finish). Failing to start the
/// thread closes the connection with a warning. `tls` applies to TCP
/// connections only.
pub fn spawn(
    conn: Accepted,
    svc: Arc<DiskService>,
    stop: watch::Receiver<bool>,
    settings: ConnSettings,
    tls: Option<TlsAcceptor>,
) {
    let Accepted { stream, peer, slot } = conn;
    // Leave the accepting runtime; the connection's own runtime adopts it.
    let stream = match stream.into_std() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "cannot take over an accepted connection; closing it");
            return;
        }
    };
    let thread_name = format!("conn-{peer}");
    let peer_for_error = peer.clone();
    let started = std::thread::Builder::new()
        .name(thread_name)
        .stack_size(CONNECTION_STACK)
        .spawn(move || {
            let _slot = slot;
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "cannot start the runtime of a connection (out of file descriptors?); closing it");
                    return;
                }
            };
            runtime.block_on(serve(stream, peer, svc, stop, settings, tls));
        });
    if let Err(e) = started {
        tracing::warn!(peer = %peer_for_error, error = %e, "cannot start a thread for a connection; closing it. Raise the process's thread limit or lower --max-connections");
    }
}

async fn serve(
    stream: StdStream,
    peer: String,
    svc: Arc<DiskService>,
    stop: watch::Receiver<bool>,
    settings: ConnSettings,
    tls: Option<TlsAcceptor>,
) {
    let registered = match stream {
        StdStream::Tcp(s) => {
            let socket = ClientSocket(s.as_raw_fd());
            tokio::net::TcpStream::from_std(s).map(|s| (ClientStream::Tcp(s), socket))
        }
        StdStream::Unix(s) => {
            let socket = ClientSocket(s.as_raw_fd());
            tokio::net::UnixStream::from_std(s).map(|s| (ClientStream::Unix(s), socket))
        }
    };
    let (stream, socket) = match registered {
        Ok(x) => x,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "cannot register a connection with its runtime; closing it");
            return;
        }
    };
    let result = match (stream, tls) {
        (ClientStream::Unix(stream), _) => serve_http(stream, socket, svc, stop, settings).await,
        (ClientStream::Tcp(stream), None) => serve_http(stream, socket, svc, stop, settings).await,
        (ClientStream::Tcp(stream), Some(acceptor)) => {
            // The handshake gets the header timeout: a peer that connects
            // and says nothing (or speaks plain HTTP) is dropped like a slow
            // request head.
            match tokio::time::timeout(settings.header_timeout, acceptor.accept(stream)).await {
                Ok(Ok(s)) => serve_http(s, socket, svc, stop, settings).await,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// HTTP/1.1 with keep-alive over `io` (plain TCP, TLS or Unix) until the peer
/// leaves or `stop` turns true.
async fn serve_http<I>(
    io: I,
    socket: ClientSocket,
    svc: Arc<DiskService>,
    mut stop: watch::Receiver<bool>,
    settings: ConnSettings,
) -> hyper::Result<()>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .max_buf_size(settings.max_buf)
        .header_read_timeout(settings.header_timeout)
        .keep_alive(true)
        .serve_connection(
            TokioIo::new(io),
            service_fn(move |req| Arc::clone(&svc).handle(req, Some(socket))),
        );
    tokio::pin!(conn);
    let stopping = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::select! {
        r = conn.as_mut() => r,
        _ = stopping => {
            conn.as_mut().graceful_shutdown();
            conn.as_mut().await
        }
    }
}
