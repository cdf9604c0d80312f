//! The drivers around [`EmulatedHost`]: one cycle against a target, the real
//! multi-host run (one thread per host, like one xhad per host), a target that
//! injects faults, and the report.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::emulator::{EmulatedHost, HostConfig, HostLive, HostReport, ReadNext, Verdict};
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
/// judged as it stands (its thread is left behind, to end with the process).
pub fn run_emulation(
    cfg: EmulationConfig,
    targets: Vec<Box<dyn StatefileTarget>>,
) -> EmulationReport {
    let duration = cfg.duration;
    let run = Emulation::start(cfg, targets);
    run.clock.sleep(duration);
    run.finish()
}

/// A run in progress: one thread per host, observable while it runs.
pub struct Emulation {
    clock: Arc<RealClock>,
    stop: Arc<AtomicBool>,
    duration: Duration,
    timeouts: Timeouts,
    accelerated: bool,
    hosts: Vec<(Arc<Mutex<EmulatedHost>>, String)>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Emulation {
    /// Starts every host's thread; they stop by themselves after the
    /// configured duration.
    pub fn start(cfg: EmulationConfig, targets: Vec<Box<dyn StatefileTarget>>) -> Self {
        assert_eq!(cfg.hosts.len(), targets.len(), "one target per host");
        assert!(!cfg.hosts.is_empty(), "at least one host");
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
        Emulation {
            clock,
            stop,
            duration: cfg.duration,
            timeouts,
            accelerated,
            hosts,
            threads,
        }
    }

    /// Time since the run started.
    pub fn elapsed(&self) -> Duration {
        self.clock.now()
    }

    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// Every host as it stands now.
    pub fn live(&self) -> Vec<HostLive> {
        let now = self.clock.now().min(self.duration);
        self.hosts
            .iter()
            .map(|(h, _)| h.lock().unwrap().live(now))
            .collect()
    }

    /// Stops the hosts (at once if the run is cut short), waits a little for
    /// a cycle in progress, and judges everyone at the end of the run.
    pub fn finish(self) -> EmulationReport {
        let end = self.clock.now().min(self.duration);
        self.stop.store(true, Ordering::Relaxed);
        // Threads end at `end` unless stuck in a call; wait for them a little
        // past the end (a cycle in progress finishes), not forever.
        let deadline = self.clock.now() + Duration::from_secs(2);
        while self.clock.now() < deadline && self.threads.iter().any(|t| !t.is_finished()) {
            self.clock.sleep(Duration::from_millis(20));
        }
        // Judge everyone at the end of the run: a host whose thread stopped
        // then must not be blamed for the cycles it was told not to run, and
        // a host still stuck has been stuck at least until then.
        let reports: Vec<HostReport> = self
            .hosts
            .iter()
            .map(|(h, name)| h.lock().unwrap().finish(end, name.clone()))
            .collect();
        let any_hurt = reports.iter().any(|r| r.verdict.is_hurt());
        EmulationReport {
            duration_ms: end.as_millis() as u64,
            timeouts: self.timeouts,
            accelerated: self.accelerated,
            hosts: reports,
            any_hurt,
        }
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
    /// Acknowledge writes without applying them (a lying or caching path).
    pub drop_writes: bool,
    /// Reads of the section at this offset come back with a bad checksum
    /// (a torn or damaged section as some path delivers it).
    pub corrupt_reads_at: Option<u64>,
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
        self.inner.read_at(buf, offset)?;
        if self.active() && self.plan.corrupt_reads_at == Some(offset) {
            buf[8] ^= 0xff;
        }
        Ok(())
    }

    fn write_at(&mut self, buf: &AlignedBuf, offset: u64) -> io::Result<()> {
        if self.active() {
            self.clock.sleep(self.plan.write_delay);
            if self.plan.fail_writes {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            if self.plan.drop_writes {
                return Ok(());
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

#[cfg(test)]
mod tests {
    //! Whole pools on one in-memory statefile, driven by `run_cycle` with a
    //! fake clock per host: minutes of xhad time in milliseconds.

    use super::*;
    use crate::emulator::{emulated_host_uuid, HostEvent};
    use crate::pool::{initialise, InitSpec};
    use crate::statefile::{host_offset, StatefileUuid, STATEFILE_SIZE};
    use crate::target::MemTarget;

    const S: fn(u64) -> Duration = Duration::from_secs;

    struct SimHost {
        host: Mutex<EmulatedHost>,
        clock: Arc<FakeClock>,
        target: Box<dyn StatefileTarget>,
        bufs: CycleBuffers,
    }

    /// A scripted change to the shared image at a given time.
    type ImageEvent = (Duration, Box<dyn Fn(&mut Vec<u8>)>);

    struct Sim {
        image: MemTarget,
        hosts: Vec<SimHost>,
        events: Vec<ImageEvent>,
    }

    impl Sim {
        fn new(n: usize, timeouts: Timeouts, faults: &[(usize, FaultPlan)]) -> Self {
            let mut image = MemTarget::new(STATEFILE_SIZE as usize);
            initialise(&mut image, &InitSpec::emulated(n, StatefileUuid::random())).unwrap();
            let hosts = (0..n)
                .map(|i| {
                    let clock = Arc::new(FakeClock::default());
                    let target: Box<dyn StatefileTarget> =
                        match faults.iter().find(|(h, _)| *h == i) {
                            Some((_, plan)) => Box::new(FaultyTarget {
                                inner: image.clone(),
                                clock: clock.clone(),
                                plan: plan.clone(),
                            }),
                            None => Box::new(image.clone()),
                        };
                    let cfg = HostConfig {
                        index: i,
                        uuid: emulated_host_uuid(i),
                        config_hosts: n,
                        timeouts,
                        accelerated: false,
                        jitter: Duration::from_millis(500),
                        expected_gen_uuid: None,
                    };
                    SimHost {
                        host: Mutex::new(EmulatedHost::new(cfg)),
                        clock,
                        target,
                        bufs: CycleBuffers::default(),
                    }
                })
                .collect();
            Sim {
                image,
                hosts,
                events: Vec::new(),
            }
        }

        /// Always advances the host that is furthest behind, so the shared
        /// image sees the hosts' I/O in (almost) global time order.
        fn run(mut self, end: Duration) -> Vec<HostReport> {
            while let Some(i) = (0..self.hosts.len())
                .filter(|&i| self.hosts[i].clock.now() < end)
                .min_by_key(|&i| self.hosts[i].clock.now())
            {
                let h = &mut self.hosts[i];
                let now = h.clock.now();
                self.events.retain(|(at, change)| {
                    if *at <= now {
                        change(&mut self.image.image.lock().unwrap());
                        false
                    } else {
                        true
                    }
                });
                let (due, poll) = {
                    let e = h.host.lock().unwrap();
                    (e.cycle_due(now), e.poll_period())
                };
                if due {
                    run_cycle(&h.host, &mut *h.target, &*h.clock, &mut h.bufs);
                } else {
                    h.clock.sleep(poll);
                }
            }
            self.hosts
                .iter()
                .map(|h| {
                    h.host
                        .lock()
                        .unwrap()
                        .finish(h.clock.now().max(end), "sim".into())
                })
                .collect()
        }
    }

    fn verdicts(r: &[HostReport]) -> Vec<Verdict> {
        r.iter().map(|h| h.verdict).collect()
    }

    fn left(r: &HostReport) -> Vec<(usize, u64)> {
        r.events
            .iter()
            .filter_map(|e| match e {
                HostEvent::LeftSfdomain { host, at_ms } => Some((*host, *at_ms)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn healthy_pool() {
        let r = Sim::new(3, Timeouts::derive(60), &[]).run(S(300));
        assert_eq!(verdicts(&r), vec![Verdict::Ok; 3]);
        for h in &r {
            // One cycle every 3 s +- 0.5 s jitter, on 500 ms polls.
            assert!((85..=105).contains(&h.cycles), "{h:?}");
            assert_eq!(h.successful_cycles, h.cycles);
            assert_eq!(
                h.last_sequence as u64,
                h.cycles - 1,
                "no write in the first cycle"
            );
            assert!(h.longest_gap_ms <= 4000, "{}", h.longest_gap_ms);
            assert_eq!(h.sfdomain_at_end.to_string(), "0,1,2");
            assert!(h.events.is_empty(), "{:?}", h.events);
            assert_eq!(h.read_latency.count as u64, 4 * h.cycles);
        }
    }

    #[test]
    fn a_writer_whose_writes_fail() {
        let plan = FaultPlan {
            from: S(100),
            fail_writes: true,
            ..FaultPlan::default()
        };
        let r = Sim::new(3, Timeouts::derive(60), &[(1, plan)]).run(S(300));
        // The writer knows at once.
        assert_eq!(r[1].verdict, Verdict::SfAccessLost);
        let lost_at = r[1]
            .events
            .iter()
            .find_map(|e| match e {
                HostEvent::SfAccessLost { at_ms, .. } => Some(*at_ms),
                _ => None,
            })
            .unwrap();
        assert!((100_000..104_000).contains(&lost_at), "{lost_at}");
        // The others drop it from their sfdomain T2 after its last write, and
        // were warned at T2/2; they keep the statefile.
        for i in [0, 2] {
            let l = left(&r[i]);
            assert_eq!(l.len(), 1, "{:?}", r[i].events);
            assert_eq!(l[0].0, 1);
            assert!((157_000..164_000).contains(&l[0].1), "{l:?}");
            assert_eq!(r[i].verdict, Verdict::LatencyWarning);
            assert!(r[i].sf_access_at_end);
            assert_eq!(r[i].sfdomain_at_end.to_string(), "0,2");
        }
    }

    #[test]
    fn a_writer_whose_writes_are_silently_lost() {
        // The device acknowledges but never applies host 2's writes: host 2
        // sees its own sequence stand still and loses access T2 later.
        let plan = FaultPlan {
            from: S(60),
            drop_writes: true,
            ..FaultPlan::default()
        };
        let r = Sim::new(3, Timeouts::derive(60), &[(2, plan)]).run(S(200));
        assert_eq!(r[2].verdict, Verdict::SfAccessLost);
        assert!(!r[2].sf_access_at_end);
        let reason = r[2]
            .events
            .iter()
            .find_map(|e| match e {
                HostEvent::SfAccessLost { at_ms, reason } => Some((*at_ms, reason.clone())),
                _ => None,
            })
            .unwrap();
        assert!(reason.1.contains("own sequence"), "{reason:?}");
        assert!((117_000..124_000).contains(&reason.0), "{reason:?}");
        for i in [0, 1] {
            assert_eq!(left(&r[i]).iter().map(|l| l.0).collect::<Vec<_>>(), vec![2]);
        }
    }

    #[test]
    fn slow_writes_cross_the_warning_only() {
        // 31 s per write: over T2/2 = 30 s, and the cycle (31 s + fast reads)
        // still starts well within Ws = 75 s.
        let plan = FaultPlan {
            from: S(30),
            write_delay: S(31),
            ..FaultPlan::default()
        };
        let r = Sim::new(3, Timeouts::derive(60), &[(0, plan)]).run(S(300));
        assert_eq!(r[0].verdict, Verdict::LatencyWarning, "{:?}", r[0].events);
        assert!(r[0].write_latency.max_ms >= 31_000.0);
        assert!(r[0].longest_gap_ms > 31_000 && r[0].longest_gap_ms < 40_000);
        assert!(r.iter().all(|h| !h.verdict.is_hurt()), "{:?}", verdicts(&r));
    }

    #[test]
    fn slow_reads_overrun_the_watchdog() {
        // 20 s per read: each call is under T2/2, but one cycle of 4 reads
        // takes 80 s and the next cannot start within Ws = 75 s.
        let plan = FaultPlan {
            from: S(30),
            read_delay: S(20),
            ..FaultPlan::default()
        };
        let r = Sim::new(3, Timeouts::derive(60), &[(1, plan)]).run(S(300));
        assert_eq!(r[1].verdict, Verdict::WouldFence, "{:?}", r[1].events);
        let fired = r[1]
            .events
            .iter()
            .find_map(|e| match e {
                HostEvent::WatchdogExpired {
                    at_ms,
                    cycle_started_ms,
                } => Some((*at_ms, *cycle_started_ms)),
                _ => None,
            })
            .unwrap();
        assert_eq!(fired.0 - fired.1, 75_000);
        assert!(r[1].read_latency.max_ms < 30_000.0);
        // Its sequence moves every ~83 s: the others drop it from their
        // sfdomain (and so would xhad's fault handler).
        assert!(left(&r[0]).iter().any(|l| l.0 == 1), "{:?}", r[0].events);
    }

    #[test]
    fn a_corrupt_section_costs_every_host_the_statefile() {
        // Every host's reads of host 2's section come back corrupt for 50 s.
        let plan = FaultPlan {
            from: S(100),
            until: Some(S(150)),
            corrupt_reads_at: Some(host_offset(2)),
            ..FaultPlan::default()
        };
        let faults: Vec<_> = (0..3).map(|i| (i, plan.clone())).collect();
        let r = Sim::new(3, Timeouts::derive(60), &faults).run(S(250));
        assert_eq!(verdicts(&r), vec![Verdict::SfAccessLost; 3]);
        for h in &r {
            assert!(h.errors.corrupt_pieces >= 3, "{:?}", h.errors);
            assert!(h.errors.failed_full_reads >= 1);
            assert!(h
                .errors
                .messages
                .iter()
                .any(|m| m.contains("host section 2: checksum")));
            let lost = h
                .events
                .iter()
                .find_map(|e| match e {
                    HostEvent::SfAccessLost { at_ms, reason } => Some((*at_ms, reason.clone())),
                    _ => None,
                })
                .unwrap();
            assert!(lost.1.contains("corrupt"), "{lost:?}");
            assert!((100_000..106_000).contains(&lost.0), "{lost:?}");
            // Writing stopped meanwhile; after the fault, a full read, a
            // write and a read back restore access.
            assert!(
                h.events.iter().any(
                    |e| matches!(e, HostEvent::SfAccessRegained { at_ms } if *at_ms >= 150_000)
                ),
                "{:?}",
                h.events
            );
            assert!(h.sf_access_at_end);
            assert!(h.longest_gap_ms >= 48_000, "{}", h.longest_gap_ms);
        }
    }

    #[test]
    fn a_corrupt_global_section_on_disk_stays() {
        // Nobody rewrites the global section, so damage on disk is permanent.
        let mut sim = Sim::new(3, Timeouts::derive(60), &[]);
        sim.events
            .push((S(100), Box::new(|img: &mut Vec<u8>| img[40] ^= 0xff)));
        let r = sim.run(S(200));
        assert_eq!(verdicts(&r), vec![Verdict::SfAccessLost; 3]);
        for h in &r {
            assert!(!h.sf_access_at_end);
            assert!(h
                .errors
                .messages
                .iter()
                .any(|m| m.contains("global section: checksum")));
            assert!(h.last_sequence < 40, "no writes after the damage");
        }
    }
}
