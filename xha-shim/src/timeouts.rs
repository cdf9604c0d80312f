//! XHA's timeouts, derived from one base timeout the way xapi writes them into
//! xhad.conf (reference section 1.3, `Xapi_ha.Timeouts.derive`).

use std::time::Duration;

use serde::Serialize;

/// xapi's default base timeout (`ha_default_timeout_base`).
pub const DEFAULT_TIMEOUT_BASE_SECS: u64 = 60;
/// xapi refuses a base below this.
pub const MIN_TIMEOUT_BASE_SECS: u64 = 10;
/// The accelerated StateFileInterval asked for during fault handling.
pub const ACCELERATED_INTERVAL: Duration = Duration::from_millis(400);
/// The SF thread polls this often for the start of the next cycle.
pub const SF_POLL: Duration = Duration::from_millis(500);
/// Sleep after a read attempt in which some piece failed.
pub const READ_RETRY_SLEEP: Duration = Duration::from_secs(1);
/// Attempts at reading the whole statefile in one cycle.
pub const READ_ATTEMPTS: u32 = 3;
/// Half-width of the per-host jitter added to every StateFileInterval.
pub const DEFAULT_JITTER: Duration = Duration::from_millis(500);

/// The timeouts of xhad.conf that matter to the statefile, plus the network
/// ones for completeness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Timeouts {
    /// HeartbeatInterval (t1).
    #[serde(with = "ms")]
    pub heartbeat_interval: Duration,
    /// StateFileInterval (t2).
    #[serde(with = "ms")]
    pub statefile_interval: Duration,
    /// HeartbeatTimeout (T1).
    #[serde(with = "ms")]
    pub heartbeat_timeout: Duration,
    /// StateFileTimeout (T2).
    #[serde(with = "ms")]
    pub statefile_timeout: Duration,
    /// HeartbeatWatchdogTimeout (Wh).
    #[serde(with = "ms")]
    pub heartbeat_watchdog_timeout: Duration,
    /// StateFileWatchdogTimeout (Ws).
    #[serde(with = "ms")]
    pub statefile_watchdog_timeout: Duration,
    /// BootJoinTimeout and EnableJoinTimeout.
    #[serde(with = "ms")]
    pub join_timeout: Duration,
}

impl Timeouts {
    /// xapi's integer formulas for base `t` seconds (xapi's `t` is an int).
    pub fn derive(t: u64) -> Self {
        let secs = Duration::from_secs;
        Timeouts {
            heartbeat_interval: secs(((t + 10) / 10).min(3)),
            statefile_interval: secs((t / 20).max(2)),
            heartbeat_timeout: secs(t),
            statefile_timeout: secs(t),
            heartbeat_watchdog_timeout: secs(t),
            statefile_watchdog_timeout: secs(t + 15),
            join_timeout: secs(t + 60),
        }
    }

    /// Replaces the statefile timings (for tests and experiments that cannot
    /// wait a minute); the watchdog follows T2 + 15 s unless given too.
    pub fn with_overrides(
        mut self,
        interval: Option<Duration>,
        statefile_timeout: Option<Duration>,
        watchdog: Option<Duration>,
    ) -> Self {
        if let Some(i) = interval {
            self.statefile_interval = i;
        }
        if let Some(t) = statefile_timeout {
            self.statefile_timeout = t;
            self.statefile_watchdog_timeout = t + Duration::from_secs(15);
        }
        if let Some(w) = watchdog {
            self.statefile_watchdog_timeout = w;
        }
        self
    }

    /// xhad's "State-File approaching timeout" threshold: T2/2.
    pub fn latency_warning(&self) -> Duration {
        self.statefile_timeout / 2
    }
}

mod ms {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_base_matches_the_xapi_table() {
        let t = Timeouts::derive(60);
        assert_eq!(t.heartbeat_interval, Duration::from_secs(3));
        assert_eq!(t.statefile_interval, Duration::from_secs(3));
        assert_eq!(t.heartbeat_timeout, Duration::from_secs(60));
        assert_eq!(t.statefile_timeout, Duration::from_secs(60));
        assert_eq!(t.heartbeat_watchdog_timeout, Duration::from_secs(60));
        assert_eq!(t.statefile_watchdog_timeout, Duration::from_secs(75));
        assert_eq!(t.join_timeout, Duration::from_secs(120));
        assert_eq!(t.latency_warning(), Duration::from_secs(30));
    }

    #[test]
    fn small_and_large_bases_use_integer_formulas() {
        let t = Timeouts::derive(10);
        assert_eq!(t.heartbeat_interval, Duration::from_secs(2));
        assert_eq!(t.statefile_interval, Duration::from_secs(2));
        assert_eq!(t.statefile_watchdog_timeout, Duration::from_secs(25));
        let t = Timeouts::derive(45);
        assert_eq!(t.heartbeat_interval, Duration::from_secs(3));
        assert_eq!(t.statefile_interval, Duration::from_secs(2));
        let t = Timeouts::derive(120);
        assert_eq!(t.statefile_interval, Duration::from_secs(6));
    }

    #[test]
    fn overrides() {
        let t = Timeouts::derive(60).with_overrides(
            Some(Duration::from_millis(100)),
            Some(Duration::from_secs(2)),
            None,
        );
        assert_eq!(t.statefile_interval, Duration::from_millis(100));
        assert_eq!(t.statefile_watchdog_timeout, Duration::from_secs(17));
        let t = t.with_overrides(None, None, Some(Duration::from_secs(3)));
        assert_eq!(t.statefile_watchdog_timeout, Duration::from_secs(3));
    }
}
