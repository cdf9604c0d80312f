//! Liveness: the systemd notify protocol (re-exported from
//! `heartbeat_wire::sd_notify`, shared with nbd-http-server) and a freeze
//! detector.
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

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use heartbeat_wire::sd_notify::{notify_status, sd_notify, watchdog_interval};

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
}
