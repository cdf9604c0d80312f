//! Request counters and latency histograms, lock-free on the request path,
//! rendered as Prometheus text and as the status document's counters.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use heartbeat_wire::RequestCounters;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Head,
    Other,
}

const OPS: [(Op, &str); 4] = [
    (Op::Read, "read"),
    (Op::Write, "write"),
    (Op::Head, "head"),
    (Op::Other, "other"),
];

/// Status codes counted individually; anything else lands in the last slot.
const STATUSES: [u16; 11] = [200, 206, 400, 404, 405, 411, 413, 416, 500, 503, 0];

/// Histogram bucket upper bounds in microseconds (the last is +Inf).
const BUCKETS_US: [u64; 18] = [
    25,
    50,
    75,
    100,
    150,
    200,
    300,
    500,
    750,
    1_000,
    2_000,
    5_000,
    10_000,
    50_000,
    100_000,
    500_000,
    1_000_000,
    u64::MAX,
];

#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS_US.len()],
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn observe(&self, us: u64) {
        let i = BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(BUCKETS_US.len() - 1);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Default)]
pub struct Metrics {
    requests: [[AtomicU64; STATUSES.len()]; OPS.len()],
    latency: [Histogram; 2], // read, write
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
}

fn op_index(op: Op) -> usize {
    OPS.iter()
        .position(|(o, _)| *o == op)
        .unwrap_or(OPS.len() - 1)
}

fn status_index(status: u16) -> usize {
    STATUSES
        .iter()
        .position(|&s| s == status)
        .unwrap_or(STATUSES.len() - 1)
}

impl Metrics {
    pub fn record(&self, op: Op, status: u16, latency_us: u64, bytes: u64) {
        self.requests[op_index(op)][status_index(status)].fetch_add(1, Ordering::Relaxed);
        let ok = status == 200 || status == 206;
        match op {
            Op::Read if ok => {
                self.latency[0].observe(latency_us);
                self.bytes_read.fetch_add(bytes, Ordering::Relaxed);
            }
            Op::Write if ok => {
                self.latency[1].observe(latency_us);
                self.bytes_written.fetch_add(bytes, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    fn count(&self, op: Op, pred: impl Fn(u16) -> bool) -> u64 {
        STATUSES
            .iter()
            .enumerate()
            .filter(|(_, &s)| pred(s))
            .map(|(i, _)| self.requests[op_index(op)][i].load(Ordering::Relaxed))
            .sum()
    }

    pub fn counters(&self) -> RequestCounters {
        let all = |pred: &dyn Fn(u16) -> bool| -> u64 {
            OPS.iter().map(|(op, _)| self.count(*op, pred)).sum()
        };
        RequestCounters {
            reads: self.count(Op::Read, |s| s == 206 || s == 200),
            writes: self.count(Op::Write, |s| s == 200),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
            rejected: all(&|s| (400..500).contains(&s)),
            io_errors: all(&|s| s == 500),
            refused_standby: all(&|s| s == 503),
        }
    }

    /// Quantile `q` of successful read and write latencies, as the upper
    /// bound of the bucket it falls in (microseconds).
    pub fn latency_quantile_us(&self, q: f64) -> Option<u64> {
        let counts: Vec<u64> = (0..BUCKETS_US.len())
            .map(|i| {
                self.latency
                    .iter()
                    .map(|h| h.buckets[i].load(Ordering::Relaxed))
                    .sum()
            })
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(BUCKETS_US[i].min(BUCKETS_US[BUCKETS_US.len() - 2] * 10));
            }
        }
        None
    }

    pub fn render_prometheus(&self, role: &str, epoch: u64, role_changes: u64) -> String {
        let mut s = String::with_capacity(4096);
        s.push_str("# HELP http_disk_requests_total Requests by operation and HTTP status.\n");
        s.push_str("# TYPE http_disk_requests_total counter\n");
        for (oi, (_, name)) in OPS.iter().enumerate() {
            for (si, status) in STATUSES.iter().enumerate() {
                let n = self.requests[oi][si].load(Ordering::Relaxed);
                if n > 0 {
                    let st = if *status == 0 {
                        "other".to_string()
                    } else {
                        status.to_string()
                    };
                    let _ = writeln!(
                        s,
                        "http_disk_requests_total{{op=\"{name}\",status=\"{st}\"}} {n}"
                    );
                }
            }
        }
        s.push_str(
            "# HELP http_disk_request_duration_seconds Latency of successful reads and writes.\n",
        );
        s.push_str("# TYPE http_disk_request_duration_seconds histogram\n");
        for (h, name) in self.latency.iter().zip(["read", "write"]) {
            let mut cum = 0;
            for (i, b) in BUCKETS_US.iter().enumerate() {
                cum += h.buckets[i].load(Ordering::Relaxed);
                let le = if *b == u64::MAX {
                    "+Inf".to_string()
                } else {
                    format!("{}", *b as f64 / 1e6)
                };
                let _ = writeln!(
                    s,
                    "http_disk_request_duration_seconds_bucket{{op=\"{name}\",le=\"{le}\"}} {cum}"
                );
            }
            let _ = writeln!(
                s,
                "http_disk_request_duration_seconds_sum{{op=\"{name}\"}} {}",
                h.sum_us.load(Ordering::Relaxed) as f64 / 1e6
            );
            let _ = writeln!(
                s,
                "http_disk_request_duration_seconds_count{{op=\"{name}\"}} {}",
                h.count.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            s,
            "# TYPE http_disk_bytes_read_total counter\nhttp_disk_bytes_read_total {}",
            self.bytes_read.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            s,
            "# TYPE http_disk_bytes_written_total counter\nhttp_disk_bytes_written_total {}",
            self.bytes_written.load(Ordering::Relaxed)
        );
        s.push_str("# HELP http_disk_role Current role (1 for the role this server is in).\n# TYPE http_disk_role gauge\n");
        for r in ["serving", "standby", "stepping"] {
            let _ = writeln!(s, "http_disk_role{{role=\"{r}\"}} {}", u8::from(r == role));
        }
        let _ = writeln!(s, "# TYPE http_disk_epoch gauge\nhttp_disk_epoch {epoch}");
        let _ = writeln!(s, "# TYPE http_disk_role_changes_total counter\nhttp_disk_role_changes_total {role_changes}");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_quantiles() {
        let m = Metrics::default();
        for _ in 0..98 {
            m.record(Op::Write, 200, 60, 1024);
        }
        m.record(Op::Write, 200, 4000, 1024);
        m.record(Op::Read, 206, 4000, 512);
        m.record(Op::Write, 413, 1, 0);
        m.record(Op::Read, 503, 1, 0);
        let c = m.counters();
        assert_eq!(
            (c.writes, c.reads, c.rejected, c.refused_standby),
            (99, 1, 1, 1)
        );
        assert_eq!(c.bytes_written, 99 * 1024);
        assert_eq!(m.latency_quantile_us(0.5), Some(75));
        assert_eq!(m.latency_quantile_us(0.99), Some(5000));
        let text = m.render_prometheus("serving", 3, 1);
        assert!(text.contains("http_disk_requests_total{op=\"write\",status=\"200\"} 99"));
        assert!(
            text.contains("http_disk_request_duration_seconds_bucket{op=\"write\",le=\"+Inf\"} 99")
        );
        assert!(text.contains("http_disk_epoch 3"));
    }
}
