//! One emulated host's statefile thread, as a sans-I/O state machine
//! (reference section 1.3 and 1.4).
//!
//! [`EmulatedHost`] takes the time and the results of I/O as inputs and says
//! what to do next: whether a cycle is due, what to write, which pieces to
//! read, whether to retry after a pause. It also judges the host the way xhad
//! would: SF access lost, other hosts leaving its sfdomain, the statefile
//! watchdog, the "approaching timeout" latency warning. The thin drivers in
//! [`crate::heartbeat`] (real threads and clock) and the simulations in the
//! tests (fake clock) feed it.

use std::io;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::statefile::{
    global_offset, host_offset, GlobalSection, HostBitmap, HostSection, StatefileUuid,
    GLOBAL_IO_LEN, HOST_IO_LEN, MAX_HOSTS,
};
use crate::timeouts::{Timeouts, ACCELERATED_INTERVAL, READ_ATTEMPTS, READ_RETRY_SLEEP, SF_POLL};

/// The default UUID of emulated host `index`: recognisable, and stable so
/// that `init` and `heartbeat` agree without being told.
pub fn emulated_host_uuid(index: usize) -> StatefileUuid {
    format!("e0a1a7ed{index:024x}")
        .parse()
        .expect("32 hex digits")
}

/// What one emulated host is and how it runs.
#[derive(Debug, Clone)]
pub struct HostConfig {
    pub index: usize,
    pub uuid: StatefileUuid,
    /// Hosts in the pool (`config_hosts`); sections 0..config_hosts are read.
    pub config_hosts: usize,
    pub timeouts: Timeouts,
    /// Cycle every 400 ms (xhad's accelerated mode during fault handling).
    pub accelerated: bool,
    /// Half-width of the jitter added to every StateFileInterval.
    pub jitter: Duration,
    /// Refuse a global section of another generation (xhad terminates).
    pub expected_gen_uuid: Option<StatefileUuid>,
}

/// One piece of the statefile a cycle reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Piece {
    Global,
    Host(usize),
}

impl Piece {
    pub fn offset(self) -> u64 {
        match self {
            Piece::Global => global_offset(),
            Piece::Host(i) => host_offset(i),
        }
    }

    #[allow(clippy::len_without_is_empty)]
    pub fn len(self) -> usize {
        match self {
            Piece::Global => GLOBAL_IO_LEN,
            Piece::Host(_) => HOST_IO_LEN,
        }
    }
}

/// What to do after a read attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadNext {
    /// Sleep, then read these pieces again.
    Retry { after: Duration, pieces: Vec<Piece> },
    /// The cycle's read phase is over (succeeded or given up).
    Finished,
}

/// The judgement on one host, worst first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    WouldFence,
    SfAccessLost,
    LatencyWarning,
    Ok,
}

impl Verdict {
    /// The host would be fenced or lose the statefile.
    pub fn is_hurt(self) -> bool {
        matches!(self, Verdict::WouldFence | Verdict::SfAccessLost)
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::WouldFence => "would-fence",
            Verdict::SfAccessLost => "sf-access-lost",
            Verdict::LatencyWarning => "latency-warning",
            Verdict::Ok => "ok",
        })
    }
}

/// A notable moment in a host's run, for the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum HostEvent {
    SfAccessLost {
        at_ms: u64,
        reason: String,
    },
    SfAccessRegained {
        at_ms: u64,
    },
    /// Another host's sequence was not seen changing for T2.
    LeftSfdomain {
        at_ms: u64,
        host: usize,
    },
    RejoinedSfdomain {
        at_ms: u64,
        host: usize,
    },
    /// No cycle started within Ws of the previous one.
    WatchdogExpired {
        at_ms: u64,
        cycle_started_ms: u64,
    },
    LatencyWarning {
        at_ms: u64,
        reason: String,
    },
}

#[derive(Debug, Default, Clone)]
struct Observation {
    sequence: Option<u32>,
    last_change: Option<Duration>,
    in_sfdomain: bool,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct ErrorCounts {
    pub write_errors: u64,
    pub read_errors: u64,
    /// Pieces read whole but refused by decode (signature, checksum ...).
    pub corrupt_pieces: u64,
    /// Cycles whose read failed after all attempts.
    pub failed_full_reads: u64,
    /// The first few distinct messages.
    pub messages: Vec<String>,
}

/// Per-call latency figures in milliseconds.
#[derive(Debug, Default, Clone, Serialize)]
pub struct LatencySummary {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl LatencySummary {
    pub fn of(samples: &[Duration]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        let mut v: Vec<Duration> = samples.to_vec();
        v.sort();
        let pick = |q: f64| {
            let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
            ms_f(v[i])
        };
        LatencySummary {
            count: v.len(),
            p50_ms: pick(0.50),
            p99_ms: pick(0.99),
            max_ms: ms_f(*v.last().unwrap()),
        }
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

fn ms_f(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// The end-of-run report on one host.
#[derive(Debug, Clone, Serialize)]
pub struct HostReport {
    pub index: usize,
    pub uuid: StatefileUuid,
    pub target: String,
    pub cycles: u64,
    pub successful_cycles: u64,
    pub last_sequence: u32,
    pub write_latency: LatencySummary,
    pub read_latency: LatencySummary,
    /// Longest time between two successful cycles (or from the first cycle's
    /// start, or up to the end of the run).
    pub longest_gap_ms: u64,
    pub errors: ErrorCounts,
    /// A call still running when the run ended.
    pub stuck_in_io_ms: Option<u64>,
    pub sf_access_at_end: bool,
    pub sfdomain_at_end: HostBitmap,
    pub events: Vec<HostEvent>,
    pub verdict: Verdict,
}

/// A host as it stands during a run, for a live display.
#[derive(Debug, Clone, Serialize)]
pub struct HostLive {
    pub index: usize,
    /// The sequence number last written to its own section.
    pub sequence: u32,
    pub cycles: u64,
    pub successful_cycles: u64,
    /// Latency of the most recent completed call.
    pub last_latency_ms: Option<f64>,
    pub max_latency_ms: f64,
    /// Longest gap between successful cycles so far, the open one included.
    pub longest_gap_ms: u64,
    /// Age of a call still running, if any.
    pub in_flight_ms: Option<u64>,
    pub sf_access: bool,
    pub verdict: Verdict,
}

const MAX_MESSAGES: usize = 5;

/// One emulated host's statefile thread.
#[derive(Debug)]
pub struct EmulatedHost {
    cfg: HostConfig,
    rng: StdRng,
    interval: Duration,

    last_cycle_start: Option<Duration>,
    current_wait: Duration,
    sequence: u32,
    has_read_once: bool,
    writing_enabled: bool,
    sf_access: bool,
    write_failed_this_cycle: bool,

    observed: Vec<Observation>,
    gen_uuid: Option<StatefileUuid>,

    attempt: u32,
    failed_pieces: Vec<Piece>,
    cycle_corrupt: bool,
    cycle_fatal: Option<String>,
    read_sections: Vec<Option<HostSection>>,
    in_flight_since: Option<Duration>,
    last_latency: Option<Duration>,
    max_latency: Duration,

    cycles: u64,
    successful_cycles: u64,
    first_cycle_start: Option<Duration>,
    last_success: Option<Duration>,
    longest_gap: Duration,
    write_latencies: Vec<Duration>,
    read_latencies: Vec<Duration>,
    errors: ErrorCounts,
    events: Vec<HostEvent>,
    watchdog_expired: bool,
    latency_warned: bool,
    access_lost_ever: bool,
}

impl EmulatedHost {
    pub fn new(cfg: HostConfig) -> Self {
        assert!(cfg.index < cfg.config_hosts && cfg.config_hosts <= MAX_HOSTS);
        let interval = if cfg.accelerated {
            ACCELERATED_INTERVAL
        } else {
            cfg.timeouts.statefile_interval
        };
        let rng = StdRng::seed_from_u64(cfg.uuid.seed());
        let observed = vec![Observation::default(); cfg.config_hosts];
        let read_sections = vec![None; cfg.config_hosts];
        let gen_uuid = cfg.expected_gen_uuid;
        EmulatedHost {
            cfg,
            rng,
            interval,
            last_cycle_start: None,
            current_wait: Duration::ZERO,
            sequence: 0,
            has_read_once: false,
            writing_enabled: true,
            sf_access: false,
            write_failed_this_cycle: false,
            observed,
            gen_uuid,
            attempt: 0,
            failed_pieces: Vec::new(),
            cycle_corrupt: false,
            cycle_fatal: None,
            read_sections,
            in_flight_since: None,
            last_latency: None,
            max_latency: Duration::ZERO,
            cycles: 0,
            successful_cycles: 0,
            first_cycle_start: None,
            last_success: None,
            longest_gap: Duration::ZERO,
            write_latencies: Vec::new(),
            read_latencies: Vec::new(),
            errors: ErrorCounts::default(),
            events: Vec::new(),
            watchdog_expired: false,
            latency_warned: false,
            access_lost_ever: false,
        }
    }

    pub fn index(&self) -> usize {
        self.cfg.index
    }

    pub fn sf_access(&self) -> bool {
        self.sf_access
    }

    pub fn sfdomain(&self) -> HostBitmap {
        let mut b = HostBitmap::default();
        for (i, o) in self.observed.iter().enumerate() {
            if o.in_sfdomain {
                b.insert(i);
            }
        }
        b
    }

    /// How long the driver sleeps between checks for a due cycle: xhad polls
    /// every 500 ms (shorter when the interval itself is shorter).
    pub fn poll_period(&self) -> Duration {
        SF_POLL.min(self.interval)
    }

    /// A cycle starts once the interval plus this cycle's jitter has elapsed
    /// since the previous cycle started; the first one at once.
    pub fn cycle_due(&self, now: Duration) -> bool {
        match self.last_cycle_start {
            None => true,
            Some(start) => now >= start + self.current_wait,
        }
    }

    fn draw_wait(&mut self) -> Duration {
        if self.cfg.accelerated || self.cfg.jitter.is_zero() {
            return self.interval;
        }
        let j = self.cfg.jitter.as_millis() as i64;
        let jitter = self.rng.gen_range(-j..=j);
        let wait = self.interval.as_millis() as i64 + jitter;
        Duration::from_millis(wait.max(0) as u64)
    }

    fn note_error(&mut self, msg: String) {
        if self.errors.messages.len() < MAX_MESSAGES && !self.errors.messages.contains(&msg) {
            self.errors.messages.push(msg);
        }
    }

    fn lose_access(&mut self, now: Duration, reason: String) {
        if self.sf_access || !self.access_lost_ever {
            self.events.push(HostEvent::SfAccessLost {
                at_ms: ms(now),
                reason,
            });
        }
        self.sf_access = false;
        self.access_lost_ever = true;
    }

    fn warn_latency(&mut self, now: Duration, reason: String) {
        if !self.latency_warned {
            self.events.push(HostEvent::LatencyWarning {
                at_ms: ms(now),
                reason,
            });
        }
        self.latency_warned = true;
    }

    /// Starts a cycle: re-arms the watchdog and returns the 1 KiB section to
    /// write first, if this host writes this cycle.
    pub fn begin_cycle(&mut self, now: Duration) -> Option<[u8; HOST_IO_LEN]> {
        self.tick(now);
        self.last_cycle_start = Some(now);
        self.first_cycle_start.get_or_insert(now);
        self.current_wait = self.draw_wait();
        self.cycles += 1;
        self.write_failed_this_cycle = false;
        if !(self.has_read_once && self.writing_enabled) {
            return None;
        }
        self.sequence = self.sequence.wrapping_add(1);
        Some(self.own_section(now).encode())
    }

    fn own_section(&self, now: Duration) -> HostSection {
        let mut s = HostSection::initial(self.cfg.index, self.cfg.uuid);
        s.sequence = self.sequence;
        let t2 = self.cfg.timeouts.statefile_timeout;
        for (i, o) in self.observed.iter().enumerate() {
            s.since_last_sf_update[i] = match o.last_change {
                Some(at) if now.saturating_sub(at) < t2 => {
                    now.saturating_sub(at).as_millis() as i32
                }
                _ => -1,
            };
        }
        let all = HostBitmap::first_n(self.cfg.config_hosts);
        s.current_liveset = all;
        s.proposed_liveset = all;
        // No network heartbeat is emulated: every host is taken as heard.
        s.hbdomain = all;
        s.sfdomain = self.sfdomain();
        s.weight = 1;
        s
    }

    /// Offset of this host's own section.
    pub fn own_offset(&self) -> u64 {
        host_offset(self.cfg.index)
    }

    /// A call to the device starts now (so a call that never returns is seen).
    pub fn io_started(&mut self, now: Duration) {
        self.in_flight_since = Some(now);
    }

    fn io_finished(&mut self, now: Duration, latency: Duration) {
        self.in_flight_since = None;
        self.last_latency = Some(latency);
        self.max_latency = self.max_latency.max(latency);
        let limit = self.cfg.timeouts.latency_warning();
        if latency > limit {
            self.warn_latency(
                now,
                format!(
                    "a call took {} ms, over T2/2 = {} ms",
                    ms(latency),
                    ms(limit)
                ),
            );
        }
        self.tick(now);
    }

    pub fn write_done(&mut self, now: Duration, latency: Duration, result: io::Result<()>) {
        self.write_latencies.push(latency);
        if let Err(e) = result {
            self.errors.write_errors += 1;
            self.write_failed_this_cycle = true;
            let msg = format!("write of own section: {e}");
            self.note_error(msg.clone());
            self.lose_access(now, msg);
        }
        self.io_finished(now, latency);
    }

    /// The pieces of the first read attempt: global, then every configured host.
    pub fn start_read(&mut self) -> Vec<Piece> {
        self.attempt = 1;
        self.failed_pieces.clear();
        self.cycle_corrupt = false;
        self.cycle_fatal = None;
        self.read_sections.iter_mut().for_each(|s| *s = None);
        std::iter::once(Piece::Global)
            .chain((0..self.cfg.config_hosts).map(Piece::Host))
            .collect()
    }

    pub fn read_done(
        &mut self,
        now: Duration,
        piece: Piece,
        latency: Duration,
        result: io::Result<&[u8]>,
    ) {
        self.read_latencies.push(latency);
        let failure = match result {
            Err(e) => {
                self.errors.read_errors += 1;
                Some(format!("read of {piece:?}: {e}"))
            }
            Ok(bytes) => match piece {
                Piece::Global => match GlobalSection::decode(bytes) {
                    Ok(g) => self.check_global(&g),
                    Err(e) => {
                        self.count_decode_error(e.check.is_corruption());
                        if !e.check.is_corruption() {
                            self.cycle_fatal = Some(e.to_string());
                        }
                        Some(e.to_string())
                    }
                },
                Piece::Host(i) => match HostSection::decode(i, bytes) {
                    Ok(s) => {
                        self.read_sections[i] = Some(s);
                        None
                    }
                    Err(e) => {
                        self.count_decode_error(true);
                        Some(e.to_string())
                    }
                },
            },
        };
        if let Some(msg) = failure {
            self.note_error(msg);
            self.failed_pieces.push(piece);
        }
        self.io_finished(now, latency);
    }

    fn count_decode_error(&mut self, corruption: bool) {
        self.errors.corrupt_pieces += 1;
        if corruption {
            self.cycle_corrupt = true;
        }
    }

    fn check_global(&mut self, g: &GlobalSection) -> Option<String> {
        match self.gen_uuid {
            None => {
                self.gen_uuid = Some(g.gen_uuid);
                None
            }
            Some(expected) if expected != g.gen_uuid => {
                // xhad terminates on a generation mismatch; retrying is moot.
                let msg = format!(
                    "global section: generation UUID {} is not ours ({expected})",
                    g.gen_uuid
                );
                self.cycle_fatal = Some(msg.clone());
                Some(msg)
            }
            Some(_) => None,
        }
    }

    /// Ends a read attempt: retry the failed pieces after a pause, or finish.
    pub fn attempt_done(&mut self, now: Duration) -> ReadNext {
        self.tick(now);
        if !self.failed_pieces.is_empty()
            && self.cycle_fatal.is_none()
            && self.attempt < READ_ATTEMPTS
        {
            self.attempt += 1;
            let mut pieces = std::mem::take(&mut self.failed_pieces);
            pieces.sort_by_key(|p| p.offset());
            pieces.dedup();
            self.cycle_corrupt = false;
            return ReadNext::Retry {
                after: READ_RETRY_SLEEP,
                pieces,
            };
        }
        if self.failed_pieces.is_empty() {
            self.full_read_succeeded(now);
        } else {
            self.errors.failed_full_reads += 1;
            // Writing stops until a full read succeeds again.
            self.writing_enabled = false;
            let what = if self.cycle_corrupt {
                "corrupt section"
            } else {
                "I/O error"
            };
            let reason = match &self.cycle_fatal {
                Some(f) => format!("statefile unusable (xhad would terminate): {f}"),
                None => format!("full read failed after {READ_ATTEMPTS} attempts ({what})"),
            };
            self.lose_access(now, reason);
        }
        ReadNext::Finished
    }

    fn full_read_succeeded(&mut self, now: Duration) {
        self.has_read_once = true;
        self.writing_enabled = true;
        let t2 = self.cfg.timeouts.statefile_timeout;
        for i in 0..self.cfg.config_hosts {
            let seq = self.read_sections[i].as_ref().map(|s| s.sequence);
            let o = &mut self.observed[i];
            if seq != o.sequence || o.last_change.is_none() {
                o.sequence = seq;
                o.last_change = Some(now);
            }
            let fresh = now.saturating_sub(o.last_change.unwrap()) < t2;
            if fresh && !o.in_sfdomain {
                o.in_sfdomain = true;
                if i != self.cfg.index && self.successful_cycles > 0 {
                    self.events.push(HostEvent::RejoinedSfdomain {
                        at_ms: ms(now),
                        host: i,
                    });
                }
            }
        }
        // Own sequence: the section read back is the one this host wrote
        // before the read, unless the write failed or did not happen.
        let own = &self.observed[self.cfg.index];
        // A write that failed this cycle keeps access lost until a later
        // cycle writes and sees its own sequence change.
        if own.in_sfdomain && !self.write_failed_this_cycle && !self.sf_access {
            if self.access_lost_ever {
                self.events
                    .push(HostEvent::SfAccessRegained { at_ms: ms(now) });
            }
            self.sf_access = true;
        }
        if !self.write_failed_this_cycle {
            self.successful_cycles += 1;
            let since = self.last_success.or(self.first_cycle_start).unwrap_or(now);
            self.longest_gap = self.longest_gap.max(now.saturating_sub(since));
            self.last_success = Some(now);
        }
    }

    /// Applies every rule that fires with the passage of time alone.
    pub fn tick(&mut self, now: Duration) {
        let t = self.cfg.timeouts;
        if let Some(start) = self.last_cycle_start {
            let deadline = start + t.statefile_watchdog_timeout;
            if now > deadline && !self.watchdog_expired {
                self.watchdog_expired = true;
                self.events.push(HostEvent::WatchdogExpired {
                    at_ms: ms(deadline),
                    cycle_started_ms: ms(start),
                });
            }
        }
        if let Some(since) = self.in_flight_since {
            let age = now.saturating_sub(since);
            if age > t.latency_warning() {
                self.warn_latency(
                    since + t.latency_warning(),
                    format!("a call has been running for {} ms, over T2/2", ms(age)),
                );
            }
        }
        for i in 0..self.observed.len() {
            let o = &self.observed[i];
            let Some(changed) = o.last_change else {
                continue;
            };
            if !o.in_sfdomain {
                continue;
            }
            let age = now.saturating_sub(changed);
            if age > t.latency_warning() {
                self.warn_latency(
                    changed + t.latency_warning(),
                    format!(
                        "host {i} not updated for over T2/2 = {} ms",
                        ms(t.latency_warning())
                    ),
                );
            }
            if age >= t.statefile_timeout {
                let at = changed + t.statefile_timeout;
                self.observed[i].in_sfdomain = false;
                if i == self.cfg.index {
                    self.lose_access(
                        at,
                        format!(
                            "own sequence not seen changing for T2 = {} ms",
                            ms(t.statefile_timeout)
                        ),
                    );
                } else {
                    self.events.push(HostEvent::LeftSfdomain {
                        at_ms: ms(at),
                        host: i,
                    });
                }
            }
        }
    }

    pub fn verdict(&self) -> Verdict {
        if self.watchdog_expired {
            Verdict::WouldFence
        } else if self.access_lost_ever {
            Verdict::SfAccessLost
        } else if self.latency_warned {
            Verdict::LatencyWarning
        } else {
            Verdict::Ok
        }
    }

    /// The host as it stands at `now`, judged up to then (the rules that
    /// fire with time alone are applied, as xhad's threads would).
    pub fn live(&mut self, now: Duration) -> HostLive {
        self.tick(now);
        let since = self.last_success.or(self.first_cycle_start).unwrap_or(now);
        let open_gap = now.saturating_sub(since);
        HostLive {
            index: self.cfg.index,
            sequence: self.sequence,
            cycles: self.cycles,
            successful_cycles: self.successful_cycles,
            last_latency_ms: self.last_latency.map(ms_f),
            max_latency_ms: ms_f(self.max_latency),
            longest_gap_ms: ms(self.longest_gap.max(open_gap)),
            in_flight_ms: self.in_flight_since.map(|s| ms(now.saturating_sub(s))),
            sf_access: self.sf_access,
            verdict: self.verdict(),
        }
    }

    /// Judges the run up to `now` and reports.
    pub fn finish(&mut self, now: Duration, target: String) -> HostReport {
        self.tick(now);
        let since = self.last_success.or(self.first_cycle_start).unwrap_or(now);
        self.longest_gap = self.longest_gap.max(now.saturating_sub(since));
        HostReport {
            index: self.cfg.index,
            uuid: self.cfg.uuid,
            target,
            cycles: self.cycles,
            successful_cycles: self.successful_cycles,
            last_sequence: self.sequence,
            write_latency: LatencySummary::of(&self.write_latencies),
            read_latency: LatencySummary::of(&self.read_latencies),
            longest_gap_ms: ms(self.longest_gap),
            errors: self.errors.clone(),
            stuck_in_io_ms: self.in_flight_since.map(|s| ms(now.saturating_sub(s))),
            sf_access_at_end: self.sf_access,
            sfdomain_at_end: self.sfdomain(),
            events: self.events.clone(),
            verdict: self.verdict(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::statefile::{GlobalSection, PoolState};

    fn cfg(index: usize, n: usize) -> HostConfig {
        HostConfig {
            index,
            uuid: emulated_host_uuid(index),
            config_hosts: n,
            timeouts: Timeouts::derive(60),
            accelerated: false,
            jitter: Duration::from_millis(500),
            expected_gen_uuid: None,
        }
    }

    fn global() -> [u8; GLOBAL_IO_LEN] {
        GlobalSection {
            gen_uuid: "00000000000000000000000000000001".parse().unwrap(),
            pool_state: PoolState::Active,
            master: emulated_host_uuid(0),
            config_hosts: 2,
        }
        .encode()
    }

    fn section(i: usize, seq: u32) -> [u8; HOST_IO_LEN] {
        let mut s = HostSection::initial(i, emulated_host_uuid(i));
        s.sequence = seq;
        s.encode()
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    /// Feeds one read attempt: each piece either the given bytes or EIO.
    fn feed(
        h: &mut EmulatedHost,
        now: Duration,
        pieces: &[Piece],
        bytes: impl Fn(Piece) -> Option<Vec<u8>>,
    ) -> ReadNext {
        for &p in pieces {
            let data = bytes(p);
            let r = match &data {
                Some(d) => Ok(&d[..]),
                None => Err(io::Error::from_raw_os_error(libc::EIO)),
            };
            h.read_done(now, p, Duration::from_millis(1), r);
        }
        h.attempt_done(now)
    }

    fn healthy(seqs: [u32; 2]) -> impl Fn(Piece) -> Option<Vec<u8>> {
        move |p| {
            Some(match p {
                Piece::Global => global().to_vec(),
                Piece::Host(i) => section(i, seqs[i]).to_vec(),
            })
        }
    }

    #[test]
    fn writes_only_after_a_first_full_read() {
        let mut h = EmulatedHost::new(cfg(0, 2));
        assert!(h.cycle_due(S(0)));
        assert!(
            h.begin_cycle(S(0)).is_none(),
            "no write before the first read"
        );
        let pieces = h.start_read();
        assert_eq!(pieces, vec![Piece::Global, Piece::Host(0), Piece::Host(1)]);
        assert_eq!(
            feed(&mut h, S(0), &pieces, healthy([0, 0])),
            ReadNext::Finished
        );
        assert!(h.sf_access());
        assert!(!h.cycle_due(S(2)));
        assert!(h.cycle_due(S(4)));
        let w = h.begin_cycle(S(4)).expect("writes now");
        let s = HostSection::decode(0, &w).unwrap();
        assert_eq!(
            (s.sequence, s.host_index, s.host_uuid),
            (1, 0, emulated_host_uuid(0))
        );
        assert_eq!(s.sfdomain.to_string(), "0,1");
    }

    #[test]
    fn retries_only_failed_pieces_then_gives_up() {
        let mut h = EmulatedHost::new(cfg(1, 2));
        h.begin_cycle(S(0));
        let pieces = h.start_read();
        let fail_host0 = |p: Piece| (p != Piece::Host(0)).then(|| healthy([0, 0])(p)).flatten();
        let next = feed(&mut h, S(0), &pieces, fail_host0);
        assert_eq!(
            next,
            ReadNext::Retry {
                after: S(1),
                pieces: vec![Piece::Host(0)]
            }
        );
        let ReadNext::Retry { pieces, .. } = feed(&mut h, S(1), &[Piece::Host(0)], fail_host0)
        else {
            panic!("second retry expected")
        };
        assert_eq!(feed(&mut h, S(2), &pieces, fail_host0), ReadNext::Finished);
        assert!(!h.sf_access());
        assert_eq!(h.verdict(), Verdict::SfAccessLost);
        // No full read yet: no write, even later.
        assert!(h.begin_cycle(S(4)).is_none());

        // A retry that succeeds completes the read.
        let mut h = EmulatedHost::new(cfg(1, 2));
        h.begin_cycle(S(0));
        let pieces = h.start_read();
        let ReadNext::Retry { pieces, .. } = feed(&mut h, S(0), &pieces, fail_host0) else {
            panic!()
        };
        assert_eq!(
            feed(&mut h, S(1), &pieces, healthy([0, 0])),
            ReadNext::Finished
        );
        assert!(h.sf_access());
        assert_eq!(h.verdict(), Verdict::Ok);
    }

    #[test]
    fn full_read_failure_stops_writing_until_a_full_read() {
        let mut h = EmulatedHost::new(cfg(0, 2));
        h.begin_cycle(S(0));
        let p = h.start_read();
        feed(&mut h, S(0), &p, healthy([0, 0]));
        assert!(h.begin_cycle(S(3)).is_some());
        let p = h.start_read();
        let corrupt = |p: Piece| match p {
            Piece::Host(1) => Some(vec![0u8; HOST_IO_LEN]),
            other => healthy([1, 0])(other),
        };
        let mut next = feed(&mut h, S(3), &p, corrupt);
        let mut t = 3;
        while let ReadNext::Retry { pieces, .. } = next {
            t += 1;
            next = feed(&mut h, S(t), &pieces, corrupt);
        }
        assert!(!h.sf_access());
        assert!(
            h.begin_cycle(S(8)).is_none(),
            "writing stops after a failed full read"
        );
        let p = h.start_read();
        feed(&mut h, S(8), &p, healthy([1, 0]));
        let w = h.begin_cycle(S(11)).expect("writing resumes");
        assert_eq!(HostSection::decode(0, &w).unwrap().sequence, 2);
        let report = h.finish(S(11), "t".into());
        assert!(
            report
                .errors
                .messages
                .iter()
                .any(|m| m.contains("host section 1: signature")),
            "{report:?}"
        );
    }

    #[test]
    fn generation_mismatch_is_not_retried() {
        let mut c = cfg(0, 2);
        c.expected_gen_uuid = Some("000000000000000000000000000000ff".parse().unwrap());
        let mut h = EmulatedHost::new(c);
        h.begin_cycle(S(0));
        let p = h.start_read();
        assert_eq!(feed(&mut h, S(0), &p, healthy([0, 0])), ReadNext::Finished);
        assert_eq!(h.verdict(), Verdict::SfAccessLost);
    }

    #[test]
    fn jitter_is_per_host_and_bounded() {
        let waits = |i: usize| {
            let mut h = EmulatedHost::new(cfg(i, 4));
            (0..50).map(|_| h.draw_wait()).collect::<Vec<_>>()
        };
        let a = waits(0);
        assert_eq!(a, waits(0), "seeded from the host UUID");
        assert_ne!(a, waits(1));
        assert!(a
            .iter()
            .all(|w| *w >= Duration::from_millis(2500) && *w <= Duration::from_millis(3500)));
        assert!(a.iter().any(|w| *w != S(3)));
        let mut c = cfg(0, 2);
        c.accelerated = true;
        let mut h = EmulatedHost::new(c);
        assert_eq!(h.draw_wait(), Duration::from_millis(400));
    }

    #[test]
    fn latency_summary_percentiles() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let s = LatencySummary::of(&v);
        assert_eq!(
            (s.count, s.p50_ms, s.p99_ms, s.max_ms),
            (100, 50.0, 99.0, 100.0)
        );
        assert_eq!(LatencySummary::of(&[]).count, 0);
    }
}
