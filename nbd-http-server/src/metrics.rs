//! Prometheus metrics of the daemon, served as text at `/metrics` on
//! `--metrics-listen ADDR:PORT` (off by default).
//!
//! One process serves one volume, so the counters are a process-wide static
//! ([`metrics`]): the NBD layer, the upstream and the kernel device record
//! into it without being handed anything. Recording is a few relaxed atomic
//! adds; only the upstream switch (rare) takes a lock.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, warn};

/// NBD commands, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NbdCommand {
    Read = 0,
    Write = 1,
    Flush = 2,
    /// Requests refused by the parser (bad range, unknown command).
    Rejected = 3,
}

const COMMANDS: [&str; 4] = ["read", "write", "flush", "rejected"];

/// Upstream failures, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    /// Connect, send or receive failed, or the attempt timed out.
    Transport = 0,
    /// The server answered but cannot serve now (503 standby, 5xx).
    Unavailable = 1,
    /// The server refused the request itself (4xx).
    Rejected = 2,
    /// A request ran out of its deadline (the client sees EIO).
    Deadline = 3,
    /// A probe round found no serving server.
    NoServer = 4,
}

const ERROR_KINDS: [&str; 5] = [
    "transport",
    "unavailable",
    "rejected",
    "deadline",
    "no_server",
];

/// Upper bounds of the latency buckets, in microseconds.
const BUCKETS_US: [u64; 14] = [
    250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 10_000_000,
];

#[derive(Debug)]
struct Histogram {
    /// Per bucket (not cumulative); the last slot is +Inf.
    buckets: [AtomicU64; BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    const fn new() -> Self {
        Self {
            buckets: [const { AtomicU64::new(0) }; BUCKETS_US.len() + 1],
            sum_us: AtomicU64::new(0),
        }
    }

    fn observe(&self, took: Duration) {
        let us = took.as_micros().min(u64::MAX as u128) as u64;
        let slot = BUCKETS_US.partition_point(|&b| b < us);
        self.buckets[slot].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }
}

/// Every metric of the daemon.
#[derive(Debug)]
pub struct NbdMetrics {
    /// [command][0 = ok, 1 = error]
    requests: [[AtomicU64; 2]; 4],
    latency: [Histogram; 4],
    in_flight: AtomicI64,
    upstream_errors: [AtomicU64; 5],
    failovers: AtomicU64,
    last_failover_us: AtomicU64,
    kernel_reconnects: AtomicU64,
    /// Current upstream URL and epoch.
    upstream: Mutex<Option<(String, u64)>>,
}

static METRICS: NbdMetrics = NbdMetrics::new();

/// The process's metrics.
pub fn metrics() -> &'static NbdMetrics {
    &METRICS
}

/// One NBD request being served: counted in flight until finished or dropped.
#[must_use]
pub struct RequestTimer {
    command: NbdCommand,
    started: Instant,
    done: bool,
}

impl RequestTimer {
    pub fn finish(mut self, ok: bool) {
        let m = metrics();
        let c = self.command as usize;
        m.requests[c][usize::from(!ok)].fetch_add(1, Relaxed);
        m.latency[c].observe(self.started.elapsed());
        self.done = true;
    }
}

impl Drop for RequestTimer {
    fn drop(&mut self) {
        if !self.done {
            // Cancelled (connection gone): neither ok nor error was seen.
            metrics().requests[self.command as usize][1].fetch_add(1, Relaxed);
        }
        metrics().in_flight.fetch_sub(1, Relaxed);
    }
}

impl NbdMetrics {
    const fn new() -> Self {
        Self {
            requests: [const { [const { AtomicU64::new(0) }; 2] }; 4],
            latency: [const { Histogram::new() }; 4],
            in_flight: AtomicI64::new(0),
            upstream_errors: [const { AtomicU64::new(0) }; 5],
            failovers: AtomicU64::new(0),
            last_failover_us: AtomicU64::new(0),
            kernel_reconnects: AtomicU64::new(0),
            upstream: Mutex::new(None),
        }
    }

    /// Start timing one request; it counts as in flight until finished.
    pub fn start(&self, command: NbdCommand) -> RequestTimer {
        self.in_flight.fetch_add(1, Relaxed);
        RequestTimer {
            command,
            started: Instant::now(),
            done: false,
        }
    }

    pub fn upstream_error(&self, kind: UpstreamErrorKind) {
        self.upstream_errors[kind as usize].fetch_add(1, Relaxed);
    }

    /// The upstream switched servers (`took`: from the failure to the switch);
    /// `failover` is false for the first selection.
    pub fn upstream_selected(&self, url: &str, epoch: u64, failover: Option<Duration>) {
        if let Some(took) = failover {
            self.failovers.fetch_add(1, Relaxed);
            self.last_failover_us
                .store(took.as_micros().min(u64::MAX as u128) as u64, Relaxed);
        }
        *self.upstream.lock().unwrap_or_else(|e| e.into_inner()) = Some((url.to_owned(), epoch));
    }

    pub fn kernel_reconnected(&self) {
        self.kernel_reconnects.fetch_add(1, Relaxed);
    }

    /// The Prometheus text exposition (format 0.0.4) for `volume`.
    pub fn render(&self, volume: &str) -> String {
        let vol = escape(volume);
        let mut out = String::with_capacity(8 * 1024);
        let o = &mut out;
        header(o, "nbd_http_requests_total", "counter", "NBD requests answered, by command and result (error: an NBD error was sent or the connection went away).");
        for (c, name) in COMMANDS.iter().enumerate() {
            for (r, result) in ["ok", "error"].iter().enumerate() {
                let n = self.requests[c][r].load(Relaxed);
                let _ = writeln!(o, "nbd_http_requests_total{{volume=\"{vol}\",command=\"{name}\",result=\"{result}\"}} {n}");
            }
        }
        header(
            o,
            "nbd_http_request_duration_seconds",
            "histogram",
            "Time from receiving an NBD request to its reply being ready.",
        );
        for (c, name) in COMMANDS.iter().enumerate() {
            let h = &self.latency[c];
            let mut cumulative = 0;
            for (i, b) in h.buckets.iter().enumerate() {
                cumulative += b.load(Relaxed);
                let le = match BUCKETS_US.get(i) {
                    Some(us) => format!("{}", *us as f64 / 1e6),
                    None => "+Inf".to_owned(),
                };
                let _ = writeln!(o, "nbd_http_request_duration_seconds_bucket{{volume=\"{vol}\",command=\"{name}\",le=\"{le}\"}} {cumulative}");
            }
            let sum = h.sum_us.load(Relaxed) as f64 / 1e6;
            let _ = writeln!(o, "nbd_http_request_duration_seconds_sum{{volume=\"{vol}\",command=\"{name}\"}} {sum}");
            let _ = writeln!(o, "nbd_http_request_duration_seconds_count{{volume=\"{vol}\",command=\"{name}\"}} {cumulative}");
        }
        header(
            o,
            "nbd_http_requests_in_flight",
            "gauge",
            "NBD requests received and not yet answered.",
        );
        let _ = writeln!(
            o,
            "nbd_http_requests_in_flight{{volume=\"{vol}\"}} {}",
            self.in_flight.load(Relaxed).max(0)
        );
        header(
            o,
            "nbd_http_upstream_errors_total",
            "counter",
            "Failed upstream attempts and requests, by kind.",
        );
        for (k, kind) in ERROR_KINDS.iter().enumerate() {
            let n = self.upstream_errors[k].load(Relaxed);
            let _ = writeln!(
                o,
                "nbd_http_upstream_errors_total{{volume=\"{vol}\",kind=\"{kind}\"}} {n}"
            );
        }
        header(
            o,
            "nbd_http_upstream_failovers_total",
            "counter",
            "Switches from one serving http-disk-server to another.",
        );
        let _ = writeln!(
            o,
            "nbd_http_upstream_failovers_total{{volume=\"{vol}\"}} {}",
            self.failovers.load(Relaxed)
        );
        header(
            o,
            "nbd_http_upstream_last_failover_seconds",
            "gauge",
            "Duration of the last failover, from the failed attempt to the switch.",
        );
        let last = self.last_failover_us.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(
            o,
            "nbd_http_upstream_last_failover_seconds{{volume=\"{vol}\"}} {last}"
        );
        header(o, "nbd_http_upstream_info", "gauge", "1 for the upstream currently used, with its URL and epoch; absent before the first one is found.");
        if let Some((url, epoch)) = &*self.upstream.lock().unwrap_or_else(|e| e.into_inner()) {
            let _ = writeln!(
                o,
                "nbd_http_upstream_info{{volume=\"{vol}\",url=\"{}\",epoch=\"{epoch}\"}} 1",
                escape(url)
            );
        }
        header(
            o,
            "nbd_http_kernel_reconnects_total",
            "counter",
            "New connections handed to the kernel NBD device (after it dropped one).",
        );
        let _ = writeln!(
            o,
            "nbd_http_kernel_reconnects_total{{volume=\"{vol}\"}} {}",
            self.kernel_reconnects.load(Relaxed)
        );
        out
    }
}

fn header(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Serve `GET /metrics` on `listener` until `shutdown`. A minimal HTTP/1.1
/// responder: one request per connection, then close.
pub async fn serve(listener: TcpListener, volume: String, mut shutdown: watch::Receiver<bool>) {
    loop {
        let (mut stream, peer) = tokio::select! {
            _ = shutdown.changed() => return,
            a = listener.accept() => match a {
                Ok(x) => x,
                Err(e) => {
                    warn!(volume = %volume, "metrics listener: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let volume = volume.clone();
        tokio::spawn(async move {
            let mut head = Vec::with_capacity(1024);
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                true
            })
            .await;
            if !matches!(read, Ok(true)) {
                debug!(volume = %volume, %peer, "metrics: incomplete request");
                return;
            }
            let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
            let mut parts = line.split(|&b| b == b' ');
            let (method, path) = (
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default(),
            );
            let path = path.split(|&b| b == b'?').next().unwrap_or_default();
            let (status, body) = match (method, path) {
                (b"GET" | b"HEAD", b"/metrics") => ("200 OK", metrics().render(&volume)),
                (b"GET" | b"HEAD", _) => ("404 Not Found", "try /metrics\n".to_owned()),
                _ => ("405 Method Not Allowed", "GET /metrics\n".to_owned()),
            };
            let mut reply = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            if method != b"HEAD" {
                reply.push_str(&body);
            }
            let _ = stream.write_all(reply.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_text_is_prometheus() {
        let m = NbdMetrics::new();
        m.latency[0].observe(Duration::from_micros(100));
        m.latency[0].observe(Duration::from_millis(3));
        m.latency[0].observe(Duration::from_secs(60));
        m.upstream_error(UpstreamErrorKind::Deadline);
        m.upstream_selected("http://a:1", 7, Some(Duration::from_millis(1500)));
        let text = m.render("hb\"x");
        assert!(
            text.contains("command=\"read\",le=\"0.00025\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("command=\"read\",le=\"0.005\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("command=\"read\",le=\"+Inf\"} 3\n"), "{text}");
        assert!(
            text.contains(
                "nbd_http_request_duration_seconds_count{volume=\"hb\\\"x\",command=\"read\"} 3\n"
            ),
            "{text}"
        );
        assert!(text.contains("kind=\"deadline\"} 1\n"), "{text}");
        assert!(
            text.contains("url=\"http://a:1\",epoch=\"7\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("nbd_http_upstream_last_failover_seconds{volume=\"hb\\\"x\"} 1.5\n"),
            "{text}"
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
