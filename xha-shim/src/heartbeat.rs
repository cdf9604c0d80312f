//! The drivers around [`EmulatedHost`]: one cycle against a target, the real
//! multi-host run (one thread per host, like one xhad per host), a target that
//! injects faults, and the report.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::emulator::{EmulatedHost, HostConfig, HostReport, ReadNext, Verdict};
use crate::statefile::{GLOBAL_IO_LEN, HOST_IO_LEN};
use crate::target::{AlignedBuf, StatefileTarget};
use crate::timeouts::Timeouts;

/// Time as the drivers see it: elapsed since the run started.
pub trait Clock: Send + Sync {
    fn now(&self) -> Duration;
    fn sleep(&self, d: Duration);
}

/// The wall clock.
pub struct RealClock {
    start: Instant,
}

impl RealClock {
    pub fn new() -> Self {
        RealClock {
            start: Instant::now(),
        }
    }
}

impl Default for RealClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for RealClock {
    fn now(&self) -> Duration {
        self.start.elapsed()
    }
    fn sleep(&self, d: Duration) {
        std::thread::sleep(d)
    }
}

/// A clock that moves only when slept on: for simulations.
#[derive(Default)]
pub struct FakeClock {
    now: Mutex<Duration>,
}

impl FakeClock {
    pub fn set(&self, t: Duration) {
        *self.now.lock().unwrap() = t;
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Duration {
        *self.now.lock().unwrap()
    }
    fn sleep(&self, d: Duration) {
        *self.now.lock().unwrap() += d;
    }
}

/// Reusable aligned buffers for one host's cycle.
pub struct CycleBuffers {
    global: AlignedBuf,
    host: AlignedBuf,
}

impl Default for CycleBuffers {
    fn default() -> Self {
        CycleBuffers {
            global: AlignedBuf::zeroed(GLOBAL_IO_LEN),
            host: AlignedBuf::zeroed(HOST_IO_LEN),
        }
    }
}

/// One statefile cycle: write own section (if due), read global and every
/// configured host, retrying failed pieces. The host's lock is never held
/// across I/O, so a report can be taken while a call hangs.
pub fn run_cycle(
    host: &Mutex<EmulatedHost>,
    target: &mut dyn StatefileTarget,
    clock: &dyn Clock,
    bufs: &mut CycleBuffers,
) {
    let start = clock.now();
    let (write, own_offset) = {
        let mut h = host.lock().unwrap();
        (h.begin_cycle(start), h.own_offset())
    };
    if let Some(section) = write {
        bufs.host.copy_from_slice(&section);
        let t0 = clock.now();
        host.lock().unwrap().io_started(t0);
        let r = target.write_at(&bufs.host, own_offset);
        let t1 = clock.now();
        host.lock().unwrap().write_done(t1, t1 - t0, r);
    }
    let mut pieces = host.lock().unwrap().start_read();
    loop {
        for piece in pieces {
            let buf = match piece {
                crate::emulator::Piece::Global => &mut bufs.global,
                crate::emulator::Piece::Host(_) => &mut bufs.host,
            };
            let t0 = clock.now();
            host.lock().unwrap().io_started(t0);
            let r = target.read_at(buf, piece.offset());
            let t1 = clock.now();
            host.lock()
                .unwrap()
                .read_done(t1, piece, t1 - t0, r.map(|()| &buf[..]));
        }
        let next = host.lock().unwrap().attempt_done(clock.now());
        match next {
            ReadNext::Finished => return,
            ReadNext::Retry {
                after,
                pieces: again,
            } => {
                clock.sleep(after);
                pieces = again;
            }
        }
    }
}

/// A host's thread until `end`: poll, run due cycles.
pub fn run_host_until(
    host: &Mutex<EmulatedHost>,
    target: &mut dyn StatefileTarget,
    clock: &dyn Clock,
    end: Duration,
    stop: &AtomicBool,
) {
    let mut bufs = CycleBuffers::default();
    loop {
        let now = clock.now();
        if now >= end || stop.load(Ordering::Relaxed) {
            return;
        }
        let (due, poll) = {
            let h = host.lock().unwrap();
            (h.cycle_due(now), h.poll_period())
        };
        if due {
            run_cycle(host, target, clock, &mut bufs);
        } else {
            clock.sleep(poll.min(end.saturating_sub(now)));
        }
    }
}

/// The whole run's settings.
#[derive(Debug, Clone)]
pub struct EmulationConfig {
    pub hosts: Vec<HostConfig>,
    pub duration: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct EmulationReport {
    pub duration_ms: u64,
    pub timeouts: Timeouts,
    pub accelerated: bool,
    pub hosts: Vec<HostReport>,
    /// Any host would be fenced or lose the statefile.
    pub any_hurt: bool,
}

/// Runs every host on its own thread against its own target for the
/// configured duration, then judges. A host stuck in a call at the end is
/// judged as it stands (its thread is left behind; the process exits).
pub fn run_emulation(
    cfg: EmulationConfig,
    targets: Vec<Box<dyn StatefileTarget>>,
) -> EmulationReport {
    assert_eq!(cfg.hosts.len(), targets.len(), "one target per host");
    let clock = Arc::new(RealClock::new());
    let stop = Arc::new(AtomicBool::new(false));
    let timeouts = cfg.hosts[0].timeouts;
    let accelerated = cfg.hosts[0].accelerated;
    let mut hosts = Vec::new();
    let mut threads = Vec::new();
    for (hc, mut target) in cfg.hosts.into_iter().zip(targets) {
        let host = Arc::new(Mutex::new(EmulatedHost::new(hc)));
        let name = target.describe();
        hosts.push((host.clone(), name));
        let (clock, stop) = (clock.clone(), stop.clone());
        let end = cfg.duration;
        threads.push(std::thread::spawn(move || {
            run_host_until(&host, &mut *target, &*clock, end, &stop);
        }));
    }
    // Threads end at `end` unless stuck in a call; wait for them a little past
    // the end (a cycle in progress finishes), not forever.
    let grace = Duration::from_secs(2);
    let deadline = cfg.duration + grace;
    clock.sleep(cfg.duration);
    stop.store(true, Ordering::Relaxed);
    while clock.now() < deadline && threads.iter().any(|t| !t.is_finished()) {
        clock.sleep(Duration::from_millis(20));
    }
    let now = clock.now().min(deadline);
    let reports: Vec<HostReport> = hosts
        .iter()
        .map(|(h, name)| h.lock().unwrap().finish(now, name.clone()))
        .collect();
    let any_hurt = reports.iter().any(|r| r.verdict.is_hurt());
    EmulationReport {
        duration_ms: cfg.duration.as_millis() as u64,
        timeouts,
        accelerated,
        hosts: reports,
        any_hurt,
    }
}

/// Faults injected around a target, each active from `from` on (time since
/// the run started, read from the clock).
#[derive(Debug, Clone, Default)]
pub struct FaultPlan {
    pub from: Duration,
    pub until: Option<Duration>,
    pub read_delay: Duration,
    pub write_delay: Duration,
    pub fail_reads: bool,
    pub fail_writes: bool,
}

/// A target wrapper that sleeps on the given clock or fails with EIO when the
/// plan says so.
pub struct FaultyTarget<T> {
    pub inner: T,
    pub clock: Arc<dyn Clock>,
    pub plan: FaultPlan,
}

impl<T> FaultyTarget<T> {
    fn active(&self) -> bool {
        let now = self.clock.now();
        now >= self.plan.from && self.plan.until.is_none_or(|u| now < u)
    }
}

impl<T: StatefileTarget> StatefileTarget for FaultyTarget<T> {
    fn read_at(&mut self, buf: &mut AlignedBuf, offset: u64) -> io::Result<()> {
        if self.active() {
            self.clock.sleep(self.plan.read_delay);
            if self.plan.fail_reads {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
        }
        self.inner.read_at(buf, offset)
    }

    fn write_at(&mut self, buf: &AlignedBuf, offset: u64) -> io::Result<()> {
        if self.active() {
            self.clock.sleep(self.plan.write_delay);
            if self.plan.fail_writes {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
        }
        self.inner.write_at(buf, offset)
    }

    fn describe(&self) -> String {
        format!("{} (faults injected)", self.inner.describe())
    }
}

impl EmulationReport {
    /// A fixed-width table, one row per host, then each host's events.
    pub fn to_table(&self) -> String {
        use std::fmt::Write;
        let t = &self.timeouts;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} hosts, {:.1} s, t2 {} ms{}, T2 {} ms, Ws {} ms, warn at {} ms",
            self.hosts.len(),
            self.duration_ms as f64 / 1000.0,
            t.statefile_interval.as_millis(),
            if self.accelerated {
                " (accelerated: 400 ms)"
            } else {
                ""
            },
            t.statefile_timeout.as_millis(),
            t.statefile_watchdog_timeout.as_millis(),
            t.latency_warning().as_millis(),
        );
        let _ = writeln!(
            out,
            "{:>4} {:>6} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>6} {:>8} {:>5}  verdict",
            "host", "cycles", "ok", "w p50", "w p99", "w max", "r p50", "r p99", "r max", "gap", "w err", "r err", "corrupt", "SF"
        );
        for h in &self.hosts {
            let _ = writeln!(
                out,
                "{:>4} {:>6} {:>6} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8} {:>6} {:>6} {:>8} {:>5}  {}",
                h.index,
                h.cycles,
                h.successful_cycles,
                h.write_latency.p50_ms,
                h.write_latency.p99_ms,
                h.write_latency.max_ms,
                h.read_latency.p50_ms,
                h.read_latency.p99_ms,
                h.read_latency.max_ms,
                h.longest_gap_ms,
                h.errors.write_errors,
                h.errors.read_errors,
                h.errors.corrupt_pieces,
                if h.sf_access_at_end { "yes" } else { "no" },
                h.verdict,
            );
        }
        let _ = writeln!(
            out,
            "(latencies and gap in ms; SF = statefile access at the end)"
        );
        for h in &self.hosts {
            if let Some(s) = h.stuck_in_io_ms {
                let _ = writeln!(
                    out,
                    "host {}: stuck in a call for {s} ms at the end",
                    h.index
                );
            }
            for e in &h.events {
                let _ = writeln!(
                    out,
                    "host {}: {}",
                    h.index,
                    serde_json::to_string(e).unwrap_or_default()
                );
            }
            for m in &h.errors.messages {
                let _ = writeln!(out, "host {}: error: {m}", h.index);
            }
        }
        let worst = self
            .hosts
            .iter()
            .map(|h| h.verdict)
            .min()
            .unwrap_or(Verdict::Ok);
        let _ = writeln!(
            out,
            "verdict: {}",
            if self.any_hurt {
                format!("HURT (worst: {worst})")
            } else {
                format!("no host hurt (worst: {worst})")
            }
        );
        out
    }
}
