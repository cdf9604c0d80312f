//! Liveness: the systemd notify protocol (by hand; it is one datagram) and a
//! freeze detector.
//!
//! The watchdog ping is sent only while the runtime runs (the ping is a task
//! on it) and the disk path is healthy (no disk operation is past its
//! deadline), so a server with a hung disk gets restarted by systemd.
//!
//! The freeze detector notices that the monotonic clock jumped much further
//! than expected between two ticks: the process was SIGSTOPped or the host
//! was frozen. Meanwhile another server may have taken over, so a resumed
//! server steps down before it serves anything else; request handlers check
//! [`FreezeDetector::stalled`] themselves, because after a resume they may
//! run before the ticker does.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Send one notify message (`READY=1`, `WATCHDOG=1`, `STATUS=...`) to
/// `$NOTIFY_SOCKET`, if set. Errors are ignored: not being supervised is fine.
pub fn sd_notify(msg: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let addr = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        SocketAddr::from_abstract_name(name)
    } else {
        SocketAddr::from_pathname(std::path::Path::new(&path))
    };
    if let Ok(addr) = addr {
        let _ = sock.send_to_addr(msg.as_bytes(), &addr);
    }
}

pub fn notify_status(status: &str) {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        sd_notify(&format!("STATUS={}", status.replace('\n', " ")));
    }
}

/// The watchdog interval systemd asked for, if it asked us (not a parent).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Disk operations that overran their deadline and have not returned.
#[derive(Default)]
pub struct DiskHealth {
    pub overdue_ops: AtomicUsize,
}

impl DiskHealth {
    pub fn healthy(&self) -> bool {
        self.overdue_ops.load(Ordering::Acquire) == 0
    }
}

pub struct FreezeDetector {
    base: Instant,
    last_tick_ns: AtomicU64,
    pub tick: Duration,
    pub threshold: Duration,
}

impl FreezeDetector {
    pub fn new(tick: Duration, threshold: Duration) -> Arc<Self> {
        Arc::new(Self {
            base: Instant::now(),
            last_tick_ns: AtomicU64::new(0),
            tick,
            threshold,
        })
    }

    fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    /// How long since the last tick, if longer than the threshold. Consumes
    /// the stall: a second call right after returns `None`.
    pub fn stalled(&self) -> Option<Duration> {
        let now = self.now_ns();
        let last = self.last_tick_ns.load(Ordering::Acquire);
        let gap = Duration::from_nanos(now.saturating_sub(last));
        if gap <= self.threshold {
            return None;
        }
        // Only one caller reports a given stall.
        self.last_tick_ns
            .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| gap)
    }

    /// Record a tick; returns the stall if the previous one was too long ago.
    pub fn on_tick(&self) -> Option<Duration> {
        let stall = self.stalled();
        self.last_tick_ns.store(self.now_ns(), Ordering::Release);
        stall
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_a_gap_once() {
        let f = FreezeDetector::new(Duration::from_millis(10), Duration::from_millis(50));
        assert_eq!(f.on_tick(), None);
        std::thread::sleep(Duration::from_millis(120));
        let s = f.stalled().expect("a 120 ms gap exceeds 50 ms");
        assert!(s >= Duration::from_millis(100));
        assert_eq!(f.stalled(), None, "the same stall is reported once");
        assert_eq!(f.on_tick(), None);
    }

    #[test]
    fn abstract_and_path_sockets_receive_notifications() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let rx = UnixDatagram::bind(&path).unwrap();
        // The env var is process-wide; this is the only test that sets it.
        std::env::set_var("NOTIFY_SOCKET", &path);
        sd_notify("READY=1");
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("http-disk-server-test-{}", std::process::id());
        let arx =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        std::env::set_var("NOTIFY_SOCKET", format!("@{name}"));
        sd_notify("WATCHDOG=1");
        let n = arx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
        std::env::remove_var("NOTIFY_SOCKET");
    }
}
