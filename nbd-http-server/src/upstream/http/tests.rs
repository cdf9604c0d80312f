//! Failover against in-process HTTP servers that misbehave on purpose.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use super::*;
use crate::upstream::UpstreamError;

#[derive(Debug, Clone)]
enum Behaviour {
    /// Serve the disk; epoch header if `Some`.
    Serve(Option<u64>),
    /// Accept, read the request, close without answering.
    Reset,
    /// Accept and never answer.
    Hang,
    /// 503 with a hint (standby).
    Standby(Option<String>),
    /// Answer every GET/PUT with this status (HEAD still 200).
    Status(u16),
    /// Serve HEAD, but answer reads with half the bytes.
    ShortBody,
    /// Serve like `Serve(None)`, but close a keep-alive connection that
    /// stays idle this long (hyper's `header_read_timeout` does this).
    ServeClosingIdle(Duration),
}

struct TestServer {
    url: String,
    disk: Arc<Mutex<Vec<u8>>>,
    requests: Arc<AtomicUsize>,
    /// Connections accepted.
    connections: Arc<AtomicUsize>,
    behaviour: Arc<Mutex<Behaviour>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    async fn start(behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let disk = Arc::new(Mutex::new(vec![0u8; 1 << 16]));
        let requests = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let behaviour = Arc::new(Mutex::new(behaviour));
        let (d, r, b, c) = (
            disk.clone(),
            requests.clone(),
            behaviour.clone(),
            connections.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let (d, r, b) = (d.clone(), r.clone(), b.clone());
                tokio::spawn(async move {
                    let _ = handle(s, d, r, b).await;
                });
            }
        });
        Self {
            url,
            disk,
            requests,
            connections,
            behaviour,
            task,
        }
    }

    fn set(&self, b: Behaviour) {
        *self.behaviour.lock().unwrap() = b;
    }
}

async fn handle(
    mut s: TcpStream,
    disk: Arc<Mutex<Vec<u8>>>,
    requests: Arc<AtomicUsize>,
    behaviour: Arc<Mutex<Behaviour>>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    loop {
        // Read one request head (and body, by Content-Length).
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let idle_close = match *behaviour.lock().unwrap() {
                Behaviour::ServeClosingIdle(d) if buf.is_empty() => Some(d),
                _ => None,
            };
            let n = match idle_close {
                Some(d) => match tokio::time::timeout(d, s.read(&mut chunk)).await {
                    Ok(r) => r?,
                    Err(_) => return Ok(()), // idle too long: close
                },
                None => s.read(&mut chunk).await?,
            };
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let header = |name: &str| {
            head.lines().find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_owned())
            })
        };
        let body_len: usize = header("content-length").map_or(0, |v| v.parse().unwrap());
        while buf.len() < head_end + body_len {
            let mut chunk = [0u8; 65536];
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body: Vec<u8> = buf[head_end..head_end + body_len].to_vec();
        buf.drain(..head_end + body_len);
        requests.fetch_add(1, Ordering::SeqCst);
        let method = head.split(' ').next().unwrap_or("").to_owned();
        let b = behaviour.lock().unwrap().clone();
        let size = disk.lock().unwrap().len();
        let (status, extra, payload): (u16, String, Vec<u8>) = match b {
            Behaviour::Reset => return Ok(()),
            Behaviour::Hang => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return Ok(());
            }
            Behaviour::Standby(hint) => (
                503,
                hint.map(|h| format!("x-heartbeat-serving-url: {h}\r\n"))
                    .unwrap_or_default()
                    + "x-heartbeat-role: standby\r\nRetry-After: 1\r\n",
                Vec::new(),
            ),
            Behaviour::Status(code) if method != "HEAD" => (code, String::new(), b"nope".to_vec()),
            Behaviour::Serve(_)
            | Behaviour::Status(_)
            | Behaviour::ShortBody
            | Behaviour::ServeClosingIdle(_) => {
                let epoch = match b {
                    Behaviour::Serve(Some(e)) => format!("x-heartbeat-epoch: {e}\r\n"),
                    _ => String::new(),
                };
                match method.as_str() {
                    "HEAD" => {
                        let h = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nAccept-Ranges: bytes\r\n{epoch}x-heartbeat-role: serving\r\n\r\n"
                        );
                        s.write_all(h.as_bytes()).await?;
                        continue;
                    }
                    "GET" => {
                        let range = header("range").unwrap();
                        let (a, z) = range
                            .strip_prefix("bytes=")
                            .unwrap()
                            .split_once('-')
                            .unwrap();
                        let (a, z): (usize, usize) = (a.parse().unwrap(), z.parse().unwrap());
                        let mut data = disk.lock().unwrap()[a..=z].to_vec();
                        if matches!(b, Behaviour::ShortBody) {
                            data.truncate(data.len() / 2);
                        }
                        (
                            206,
                            format!("Content-Range: bytes {a}-{z}/{size}\r\n{epoch}"),
                            data,
                        )
                    }
                    "PUT" => {
                        let cr = header("content-range").unwrap();
                        let a: usize = cr
                            .strip_prefix("bytes ")
                            .unwrap()
                            .split('-')
                            .next()
                            .unwrap()
                            .parse()
                            .unwrap();
                        if a + body.len() > size {
                            (416, String::new(), Vec::new())
                        } else {
                            disk.lock().unwrap()[a..a + body.len()].copy_from_slice(&body);
                            (200, epoch, b"Ok.".to_vec())
                        }
                    }
                    _ => (405, String::new(), Vec::new()),
                }
            }
        };
        let h = format!(
            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\n{extra}\r\n",
            payload.len()
        );
        let mut out = h.into_bytes();
        out.extend_from_slice(&payload);
        s.write_all(&out).await?;
    }
}

fn upstream(urls: Vec<String>) -> HttpUpstream {
    let mut c = HttpUpstreamConfig::new("testvol", urls);
    c.connect_timeout = Duration::from_millis(100);
    c.request_timeout = Duration::from_millis(200);
    c.probe_timeout = Duration::from_millis(200);
    HttpUpstream::new(c).unwrap()
}

fn soon(secs: u64) -> Instant {
    Instant::now() + Duration::from_secs(secs)
}

/// A URL nothing listens on (connection refused).
async fn dead_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    format!("http://{}", l.local_addr().unwrap())
}

#[tokio::test]
async fn discovers_size_and_round_trips() {
    let a = TestServer::start(Behaviour::Serve(None)).await;
    let up = upstream(vec![a.url.clone()]);
    assert_eq!(up.discover(soon(5)).await.unwrap(), 1 << 16);
    up.write_at(1000, b"hello", soon(5)).await.unwrap();
    assert_eq!(&a.disk.lock().unwrap()[1000..1005], b"hello");
    assert_eq!(up.read_at(1000, 5, soon(5)).await.unwrap(), b"hello");
    up.flush(soon(5)).await.unwrap();
}

#[tokio::test]
async fn keep_alive_reuses_one_connection() {
    let a = TestServer::start(Behaviour::Serve(None)).await;
    let up = upstream(vec![a.url.clone()]);
    for i in 0..20u64 {
        up.write_at(i * 512, &[i as u8; 512], soon(5))
            .await
            .unwrap();
        assert_eq!(
            up.read_at(i * 512, 512, soon(5)).await.unwrap(),
            vec![i as u8; 512]
        );
    }
    assert_eq!(up.current_url().as_deref(), Some(a.url.as_str()));
}

#[tokio::test]
async fn refused_and_reset_servers_fail_over() {
    let dead = dead_url().await;
    let reset = TestServer::start(Behaviour::Reset).await;
    let good = TestServer::start(Behaviour::Serve(None)).await;
    let up = upstream(vec![dead, reset.url.clone(), good.url.clone()]);
    up.write_at(0, b"abc", soon(5)).await.unwrap();
    assert_eq!(up.current_url().as_deref(), Some(good.url.as_str()));
    assert_eq!(&good.disk.lock().unwrap()[..3], b"abc");
}

#[tokio::test]
async fn serving_server_that_starts_resetting_is_replaced() {
    let a = TestServer::start(Behaviour::Serve(Some(1))).await;
    let b = TestServer::start(Behaviour::Standby(None)).await;
    let up = upstream(vec![a.url.clone(), b.url.clone()]);
    up.write_at(0, b"one", soon(5)).await.unwrap();
    assert_eq!(up.current_url().as_deref(), Some(a.url.as_str()));
    // Takeover: a dies (resets), b becomes serving with a higher epoch.
    a.set(Behaviour::Reset);
    b.set(Behaviour::Serve(Some(2)));
    up.write_at(0, b"two", soon(5)).await.unwrap();
    assert_eq!(up.current_url().as_deref(), Some(b.url.as_str()));
    assert_eq!(&b.disk.lock().unwrap()[..3], b"two");
}

#[tokio::test]
async fn hung_server_is_abandoned_after_the_attempt_timeout() {
    let a = TestServer::start(Behaviour::Serve(Some(1))).await;
    let b = TestServer::start(Behaviour::Standby(Some(a.url.clone()))).await;
    let up = upstream(vec![a.url.clone(), b.url.clone()]);
    up.write_at(0, b"x", soon(5)).await.unwrap();
    a.set(Behaviour::Hang);
    // b takes over a moment later; the write in flight must not fail.
    let b_behaviour = b.behaviour.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        *b_behaviour.lock().unwrap() = Behaviour::Serve(Some(2));
    });
    up.write_at(10, b"survived", soon(5)).await.unwrap();
    assert_eq!(up.current_url().as_deref(), Some(b.url.as_str()));
    assert_eq!(&b.disk.lock().unwrap()[10..18], b"survived");
}

#[tokio::test]
async fn standby_hint_to_unlisted_url_is_followed() {
    let hidden = TestServer::start(Behaviour::Serve(Some(5))).await;
    let standby = TestServer::start(Behaviour::Standby(Some(hidden.url.clone()))).await;
    let up = upstream(vec![standby.url.clone()]);
    assert_eq!(up.read_at(0, 512, soon(5)).await.unwrap(), vec![0; 512]);
    assert_eq!(up.current_url().as_deref(), Some(hidden.url.as_str()));
}

#[tokio::test]
async fn highest_epoch_wins_and_missing_epoch_is_zero() {
    let reference = TestServer::start(Behaviour::Serve(None)).await;
    let newer = TestServer::start(Behaviour::Serve(Some(3))).await;
    let up = upstream(vec![reference.url.clone(), newer.url.clone()]);
    up.read_at(0, 1, soon(5)).await.unwrap();
    assert_eq!(up.current_url().as_deref(), Some(newer.url.as_str()));
}

#[tokio::test]
async fn server_errors_are_retried_client_errors_are_not() {
    let a = TestServer::start(Behaviour::Serve(Some(5))).await;
    let b = TestServer::start(Behaviour::Standby(None)).await;
    let up = upstream(vec![a.url.clone(), b.url.clone()]);
    up.read_at(0, 4, soon(5)).await.unwrap();
    assert_eq!(up.current_url().as_deref(), Some(a.url.as_str()));
    // a now fails every read with 500 (its HEAD still says 200, epoch 0).
    a.set(Behaviour::Status(500));
    b.set(Behaviour::Serve(Some(6)));
    up.read_at(0, 4, soon(5)).await.unwrap();
    assert_eq!(up.current_url().as_deref(), Some(b.url.as_str()));

    // A lone server answering 500: retried with backoff until the deadline.
    let only = TestServer::start(Behaviour::Status(500)).await;
    let up = upstream(vec![only.url.clone()]);
    let err = up
        .read_at(0, 4, Instant::now() + Duration::from_millis(400))
        .await
        .unwrap_err();
    assert_eq!(err.nbd_error(), heartbeat_wire::nbd::EIO);
    let tries = only.requests.load(Ordering::SeqCst);
    assert!(tries < 60, "{tries} requests in 400 ms: no backoff");

    let c = TestServer::start(Behaviour::Status(416)).await;
    let up = upstream(vec![c.url.clone()]);
    let before = c.requests.load(Ordering::SeqCst);
    let err = up.write_at(0, b"x", soon(5)).await.unwrap_err();
    assert!(
        matches!(err, UpstreamError::Rejected { status: 416, .. }),
        "{err}"
    );
    assert_eq!(err.nbd_error(), heartbeat_wire::nbd::EINVAL);
    // One probe HEAD and one PUT: no retry of the refused request.
    assert_eq!(c.requests.load(Ordering::SeqCst) - before, 2);
}

#[tokio::test]
async fn short_body_is_retried_not_returned() {
    let a = TestServer::start(Behaviour::ShortBody).await;
    let up = upstream(vec![a.url.clone()]);
    let b = a.behaviour.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        *b.lock().unwrap() = Behaviour::Serve(None);
    });
    assert_eq!(up.read_at(0, 1024, soon(5)).await.unwrap().len(), 1024);
}

#[tokio::test]
async fn nothing_answering_fails_with_eio_at_the_deadline() {
    let dead = dead_url().await;
    let hung = TestServer::start(Behaviour::Hang).await;
    let up = upstream(vec![dead, hung.url.clone()]);
    let err = up
        .write_at(0, b"x", Instant::now() + Duration::from_millis(600))
        .await
        .unwrap_err();
    assert!(matches!(err, UpstreamError::Unavailable { .. }), "{err}");
    assert_eq!(err.nbd_error(), heartbeat_wire::nbd::EIO);
    let msg = err.to_string();
    assert!(msg.contains("testvol") && msg.contains(&hung.url), "{msg}");
}

#[tokio::test]
async fn concurrent_failures_share_probe_rounds() {
    let a = TestServer::start(Behaviour::Serve(Some(1))).await;
    let b = TestServer::start(Behaviour::Standby(None)).await;
    let up = Arc::new(upstream(vec![a.url.clone(), b.url.clone()]));
    up.read_at(0, 1, soon(5)).await.unwrap();
    a.set(Behaviour::Reset);
    b.set(Behaviour::Serve(Some(2)));
    let b_before = b.requests.load(Ordering::SeqCst);
    let mut tasks = Vec::new();
    for i in 0..16u64 {
        let up = up.clone();
        tasks.push(tokio::spawn(async move {
            up.write_at(i * 512, &[i as u8; 512], soon(5)).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    // 16 PUTs plus at most a couple of probe HEADs, not one round per request.
    let b_requests = b.requests.load(Ordering::SeqCst) - b_before;
    assert!(b_requests <= 16 + 3, "{b_requests} requests reached b");
}

/// http-disk-server's hyper closes a keep-alive connection that sat idle
/// past its `header_read_timeout` (10 s). The next request finds the pooled
/// connection dead before any response byte: it must be re-sent at once on a
/// fresh connection to the same server, with no probe round (no `HEAD`), no
/// back-off and no error.
#[tokio::test]
async fn pooled_connection_closed_while_idle_is_retried_on_a_fresh_one() {
    let a = TestServer::start(Behaviour::ServeClosingIdle(Duration::from_millis(50))).await;
    let up = upstream(vec![a.url.clone()]);
    up.write_at(512, b"first", soon(5)).await.unwrap();
    // The probe's connection and the pooled one.
    assert_eq!(a.connections.load(Ordering::SeqCst), 2);
    let before = a.requests.load(Ordering::SeqCst);
    for (i, what) in [b"again".as_slice(), b"third".as_slice()]
        .iter()
        .enumerate()
    {
        // Let the server close the idle pooled connection.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let offset = 1024 * (i as u64 + 1);
        up.write_at(offset, what, soon(5)).await.unwrap();
        assert_eq!(&up.read_at(offset, 5, soon(5)).await.unwrap(), what);
    }
    // Two writes and two reads, no HEAD: no probe round ran.
    assert_eq!(a.requests.load(Ordering::SeqCst) - before, 4);
    // Each pause cost exactly one fresh connection.
    assert_eq!(a.connections.load(Ordering::SeqCst), 4);
    assert_eq!(up.current_url().as_deref(), Some(a.url.as_str()));
}
