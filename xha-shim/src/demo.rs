//! `xha-shim demo`: the whole chain on one machine under XHA's load. Three
//! http-disk-servers share one statefile image (file arbiter), one
//! nbd-http-server per host knows all their URLs, and one emulated xhad
//! statefile thread per host runs against its own nbd-http-server. Partway
//! the serving http-disk-server is SIGKILLed; a standby takes over, the
//! killed one comes back as a standby. At the end: would XHA have fenced a
//! host or cut one off its statefile?

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::daemons::{
    free_port, interrupted, DaemonBinaries, LocalDaemon, HTTP_DISK_SERVER, NBD_HTTP_SERVER,
    READY_TIMEOUT,
};
use crate::emulator::{emulated_host_uuid, HostConfig, HostEvent, HostLive, HostReport, Verdict};
use crate::heartbeat::{Emulation, EmulationConfig, EmulationReport};
use crate::pool::{initialise, InitSpec};
use crate::statefile::StatefileUuid;
use crate::status::{poll_servers, serving_state, ServerView, ServingState};
use crate::target::{open_target, StatefileTarget};
use crate::timeouts::Timeouts;

/// Size of the demo's statefile volume (what XCP-ng provisions).
pub const STATEFILE_VOLUME_BYTES: u64 = 4 << 20;
/// http-disk-servers in failover mode.
pub const DISK_SERVERS: usize = 3;
const EXPORT_NAME: &str = "statefile";
const STATUS_POLL: Duration = Duration::from_millis(250);
const STATUS_TIMEOUT: Duration = Duration::from_millis(300);
const REDRAW: Duration = Duration::from_millis(500);
const LINE_EVERY: Duration = Duration::from_secs(1);

/// What to run.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    pub hosts: usize,
    pub duration: Duration,
    pub kill_every: Duration,
    /// Failover mode: the killed server comes back this long after the kill.
    pub restart_after: Duration,
    /// `false`: one server, one URL, down for `outage` once killed.
    pub failover: bool,
    pub outage: Duration,
    pub timeouts: Timeouts,
    pub accelerated: bool,
    pub jitter: Duration,
    pub binaries: DaemonBinaries,
    /// Keep the work directory (logs, statefile image) afterwards.
    pub keep_dir: bool,
    pub output: Output,
}

/// How the run is shown while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// ANSI redraw of a table (stdout is a terminal).
    LiveTable,
    /// A compact line per second (stdout is a pipe or file).
    Lines,
    /// Nothing until the JSON report.
    Quiet,
}

impl Output {
    pub fn for_stdout(json: bool) -> Self {
        if json {
            Output::Quiet
        } else if std::io::stdout().is_terminal() {
            Output::LiveTable
        } else {
            Output::Lines
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct KillRecord {
    pub at_ms: u64,
    pub url: String,
    /// Its epoch as last seen serving.
    pub epoch: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RestartRecord {
    pub at_ms: u64,
    pub url: String,
}

/// A server seen serving that was not the one serving before.
#[derive(Debug, Clone, Serialize)]
pub struct TakeoverRecord {
    pub at_ms: u64,
    pub url: String,
    pub epoch: u64,
    /// Since the last kill, as seen by the status poll (every 250 ms).
    pub after_kill_ms: Option<u64>,
    /// The killed server itself serving again after its restart (without
    /// failover): a recovery, not a takeover.
    pub same_server: bool,
}

/// A host XHA would have hurt, and how.
#[derive(Debug, Clone, Serialize)]
pub struct HurtHost {
    pub index: usize,
    pub verdict: Verdict,
    pub what: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    /// `failover` or `no-failover`.
    pub mode: String,
    pub hosts: usize,
    pub servers: Vec<String>,
    pub duration_ms: u64,
    pub interrupted: bool,
    pub kills: Vec<KillRecord>,
    pub restarts: Vec<RestartRecord>,
    pub takeovers: Vec<TakeoverRecord>,
    pub takeover_count: usize,
    pub longest_stall_ms: u64,
    pub longest_stall_host: Option<usize>,
    pub hurt: Vec<HurtHost>,
    pub any_hurt: bool,
    pub verdict: String,
    pub work_dir: Option<String>,
    pub emulation: EmulationReport,
}

/// One http-disk-server slot: a port that stays, a process that comes and goes.
struct DiskServerSlot {
    url: String,
    port: u16,
    process: Option<LocalDaemon>,
    restart_at: Option<Duration>,
    restarts: usize,
}

/// Everything the demo started. Dropping it kills every daemon.
struct LocalCluster {
    dir: PathBuf,
    keep_dir: bool,
    disk: PathBuf,
    binaries: DaemonBinaries,
    servers: Vec<DiskServerSlot>,
    nbd: Vec<LocalDaemon>,
    sockets: Vec<PathBuf>,
}

/// The demo pool's key file, inside its temp directory.
const POOL_KEY_FILE: &str = "pool.key";

/// Write a fresh random pool key (`id:hex`, mode 0600).
fn write_pool_key(path: &std::path::Path) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let secret: [u8; 32] = rand::random();
    let line = format!("demo:{}\n", heartbeat_wire::auth::encode_hex(&secret));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(line.as_bytes()))
        .with_context(|| format!("creating the demo's pool key {}", path.display()))
}

impl LocalCluster {
    fn create(binaries: DaemonBinaries, servers: usize, keep_dir: bool) -> Result<Self> {
        // Removed by our own Drop unless kept, so a failed run can keep its logs.
        let dir = tempfile::Builder::new()
            .prefix("xha-demo-")
            .tempdir()
            .context("creating the demo's temp directory")?
            .keep();
        // The daemons authenticate block requests with a pool key (SECURITY.md);
        // the demo's pool gets its own, mode 0600, in its temp directory.
        write_pool_key(&dir.join(POOL_KEY_FILE))?;
        let disk = dir.join("statefile.img");
        std::fs::File::create(&disk)
            .and_then(|f| f.set_len(STATEFILE_VOLUME_BYTES))
            .with_context(|| format!("creating {}", disk.display()))?;
        let mut slots = Vec::new();
        for _ in 0..servers {
            let port = free_port()?;
            slots.push(DiskServerSlot {
                url: format!("http://127.0.0.1:{port}"),
                port,
                process: None,
                restart_at: None,
                restarts: 0,
            });
        }
        Ok(LocalCluster {
            dir,
            keep_dir,
            disk,
            binaries,
            servers: slots,
            nbd: Vec::new(),
            sockets: Vec::new(),
        })
    }

    fn urls(&self) -> Vec<String> {
        self.servers.iter().map(|s| s.url.clone()).collect()
    }

    /// (Re)starts http-disk-server `i` on its port and waits for `Server ready!`.
    fn start_server(&mut self, i: usize) -> Result<()> {
        let slot = &mut self.servers[i];
        slot.process = None;
        let log = self.dir.join(format!(
            "http-disk-server-{}.{}.log",
            slot.port, slot.restarts
        ));
        let args = vec![
            "--disk".into(),
            self.disk.display().to_string(),
            "--ip".into(),
            "127.0.0.1".into(),
            "--port".into(),
            slot.port.to_string(),
            "--arbiter".into(),
            "file".into(),
            "--auth-key-file".into(),
            self.dir.join(POOL_KEY_FILE).display().to_string(),
        ];
        let mut d = LocalDaemon::spawn(
            HTTP_DISK_SERVER,
            &self.binaries.http_disk_server,
            &args,
            log,
        )?;
        d.wait_ready(READY_TIMEOUT, |l| l == "Server ready!")
            .with_context(|| format!("starting {HTTP_DISK_SERVER} on {}", slot.url))?;
        slot.process = Some(d);
        slot.restart_at = None;
        Ok(())
    }

    fn start_nbd(&mut self, host: usize, urls: &[String]) -> Result<()> {
        let sock = self.dir.join(format!("nbd-{host}.sock"));
        let args = vec![
            "--socket-path".into(),
            sock.display().to_string(),
            "--nbd-name".into(),
            EXPORT_NAME.into(),
            "--urls".into(),
            urls.join(","),
            "--device-size".into(),
            STATEFILE_VOLUME_BYTES.to_string(),
            // The emulated hosts speak NBD over the socket; several
            // /dev/nbdN (and one /dev/http-nbd/statefile link for all) on
            // the machine running the demo would only get in the way.
            "--no-attach".into(),
            "--auth-key-file".into(),
            self.dir.join(POOL_KEY_FILE).display().to_string(),
        ];
        let log = self.dir.join(format!("nbd-http-server-{host}.log"));
        let mut d =
            LocalDaemon::spawn(NBD_HTTP_SERVER, &self.binaries.nbd_http_server, &args, log)?;
        d.wait_ready(READY_TIMEOUT, |l| l.starts_with("NBD server ready on"))
            .with_context(|| format!("starting {NBD_HTTP_SERVER} for host {host}"))?;
        self.nbd.push(d);
        self.sockets.push(sock);
        Ok(())
    }

    fn nbd_uri(&self, host: usize) -> String {
        format!(
            "nbd+unix:///{EXPORT_NAME}?socket={}",
            self.sockets[host].display()
        )
    }

    /// Waits until exactly one server serves; fails on two.
    fn wait_for_one_serving(&self, timeout: Duration) -> Result<Vec<ServerView>> {
        let deadline = Instant::now() + timeout;
        loop {
            let views = poll_servers(&self.urls(), STATUS_TIMEOUT);
            match serving_state(&views) {
                ServingState::One { .. } => return Ok(views),
                s @ ServingState::Several { .. } => bail!("{s}"),
                ServingState::None if Instant::now() >= deadline => {
                    bail!(
                        "no http-disk-server took the role within {timeout:?} (rerun with --keep-dir to keep the logs in {})",
                        self.dir.display()
                    )
                }
                ServingState::None => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn stop_all(&mut self) {
        // Clients first, so no request is left waiting on a dead upstream.
        self.nbd.clear();
        for s in &mut self.servers {
            s.process = None;
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop_all();
        if !self.keep_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Runs the demo; `Err` only when the cluster could not be set up.
pub fn run_demo(cfg: &DemoConfig) -> Result<DemoReport> {
    let n_servers = if cfg.failover { DISK_SERVERS } else { 1 };
    let mut cluster = LocalCluster::create(cfg.binaries.clone(), n_servers, cfg.keep_dir)?;
    let progress = |msg: &str| {
        if cfg.output != Output::Quiet {
            println!("{msg}");
        }
    };
    progress(&format!(
        "demo: work directory {} (daemon logs there)",
        cluster.dir.display()
    ));
    for i in 0..n_servers {
        cluster.start_server(i)?;
    }
    let views = cluster.wait_for_one_serving(Duration::from_secs(10))?;
    progress(&format!(
        "demo: {n_servers} http-disk-server(s) up: {}",
        serving_state(&views)
    ));
    // Without our failover there is one server and each client knows its
    // URL only, as with a single reference server.
    let urls = cluster.urls();
    for h in 0..cfg.hosts {
        cluster.start_nbd(h, &urls)?;
    }
    progress(&format!(
        "demo: {} nbd-http-server(s) up, each with --urls {}",
        cfg.hosts,
        urls.join(",")
    ));

    let gen_uuid = StatefileUuid::random();
    {
        let uri = cluster.nbd_uri(0);
        let mut t = open_target(&uri)?;
        initialise(&mut *t, &InitSpec::emulated(cfg.hosts, gen_uuid)).with_context(|| {
            format!(
                "initialising the statefile through {uri} (rerun with --keep-dir to keep the logs in {})",
                cluster.dir.display()
            )
        })?;
    }
    progress(&format!(
        "demo: statefile initialised through host 0's NBD export (generation {gen_uuid}, {} hosts)",
        cfg.hosts
    ));

    let mut targets: Vec<Box<dyn StatefileTarget>> = Vec::new();
    let mut hosts = Vec::new();
    for i in 0..cfg.hosts {
        targets.push(open_target(&cluster.nbd_uri(i)).with_context(|| format!("host {i}"))?);
        hosts.push(HostConfig {
            index: i,
            uuid: emulated_host_uuid(i),
            config_hosts: cfg.hosts,
            timeouts: cfg.timeouts,
            accelerated: cfg.accelerated,
            jitter: cfg.jitter,
            expected_gen_uuid: Some(gen_uuid),
        });
    }
    let emulation = Emulation::start(
        EmulationConfig {
            hosts,
            duration: cfg.duration,
        },
        targets,
    );
    let mut run = Run::new(cfg, views);
    let was_interrupted = run.drive(&mut cluster, &emulation)?;
    let emulation_report = emulation.finish();
    if cfg.output == Output::LiveTable {
        // Leave the last table on screen.
        run.redraw_lines = 0;
    }
    let work_dir = cfg.keep_dir.then(|| cluster.dir.display().to_string());
    cluster.stop_all();
    Ok(run.report(emulation_report, urls, was_interrupted, work_dir))
}

/// The demo's state while it runs.
struct Run<'a> {
    cfg: &'a DemoConfig,
    views: Vec<ServerView>,
    serving: Option<(String, u64)>,
    next_kill: Option<Duration>,
    kills: Vec<KillRecord>,
    restarts: Vec<RestartRecord>,
    takeovers: Vec<TakeoverRecord>,
    redraw_lines: usize,
}

impl<'a> Run<'a> {
    fn new(cfg: &'a DemoConfig, views: Vec<ServerView>) -> Self {
        let serving = match serving_state(&views) {
            ServingState::One { url, epoch } => Some((url, epoch)),
            _ => None,
        };
        Run {
            cfg,
            views,
            serving,
            next_kill: Some(cfg.kill_every).filter(|k| *k < cfg.duration),
            kills: Vec::new(),
            restarts: Vec::new(),
            takeovers: Vec::new(),
            redraw_lines: 0,
        }
    }

    /// Until the end of the run or an interrupt: poll, kill, restart, show.
    /// Returns whether it was interrupted.
    fn drive(&mut self, cluster: &mut LocalCluster, em: &Emulation) -> Result<bool> {
        let mut next_poll = Duration::ZERO;
        let mut next_show = Duration::ZERO;
        loop {
            if interrupted() {
                return Ok(true);
            }
            let now = em.elapsed();
            if now >= self.cfg.duration {
                self.poll(cluster, now);
                self.show(em, now);
                return Ok(false);
            }
            if now >= next_poll {
                self.poll(cluster, now);
                next_poll = now + STATUS_POLL;
            }
            if self.next_kill.is_some_and(|k| now >= k) {
                self.kill_serving(cluster, now);
            }
            for i in 0..cluster.servers.len() {
                if cluster.servers[i].restart_at.is_some_and(|t| now >= t) {
                    cluster.servers[i].restarts += 1;
                    cluster.start_server(i)?;
                    self.restarts.push(RestartRecord {
                        at_ms: ms(em.elapsed()),
                        url: cluster.servers[i].url.clone(),
                    });
                }
            }
            let period = if self.cfg.output == Output::Lines {
                LINE_EVERY
            } else {
                REDRAW
            };
            if now >= next_show {
                self.show(em, now);
                next_show = now + period;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn poll(&mut self, cluster: &LocalCluster, now: Duration) {
        self.views = poll_servers(&cluster.urls(), STATUS_TIMEOUT);
        if let ServingState::One { url, epoch } = serving_state(&self.views) {
            let new = Some((url.clone(), epoch));
            if let Some((old_url, _)) = self
                .serving
                .as_ref()
                .filter(|s| **s != (url.clone(), epoch))
            {
                let after_kill_ms = self.kills.last().map(|k| ms(now).saturating_sub(k.at_ms));
                self.takeovers.push(TakeoverRecord {
                    at_ms: ms(now),
                    same_server: *old_url == url,
                    url,
                    epoch,
                    after_kill_ms,
                });
            }
            self.serving = new;
        }
    }

    /// SIGKILL of the server that serves (the only one without failover);
    /// put off while none serves.
    fn kill_serving(&mut self, cluster: &mut LocalCluster, now: Duration) {
        let victim = if self.cfg.failover {
            self.views.iter().position(|v| v.serves())
        } else {
            Some(0).filter(|_| cluster.servers[0].process.is_some())
        };
        let Some(i) = victim else {
            return;
        };
        let slot = &mut cluster.servers[i];
        let Some(mut p) = slot.process.take() else {
            return;
        };
        p.kill();
        let epoch = self.views[i].status.as_ref().map_or(0, |s| s.epoch);
        self.kills.push(KillRecord {
            at_ms: ms(now),
            url: slot.url.clone(),
            epoch,
        });
        let down_for = if self.cfg.failover {
            self.cfg.restart_after
        } else {
            self.cfg.outage
        };
        slot.restart_at = Some(now + down_for).filter(|t| *t < self.cfg.duration);
        // Without failover one kill makes the point: the server stays down
        // for the outage.
        let next = self.next_kill.unwrap_or(now) + self.cfg.kill_every;
        self.next_kill = Some(next.max(now + self.cfg.kill_every / 2))
            .filter(|k| self.cfg.failover && *k + Duration::from_secs(1) < self.cfg.duration);
    }

    fn show(&mut self, em: &Emulation, now: Duration) {
        match self.cfg.output {
            Output::Quiet => {}
            Output::Lines => println!("{}", self.compact_line(&em.live(), now)),
            Output::LiveTable => {
                let table = self.table(&em.live(), now);
                let mut out = std::io::stdout().lock();
                if self.redraw_lines > 0 {
                    let _ = write!(out, "\x1b[{}A\x1b[J", self.redraw_lines);
                }
                let _ = write!(out, "{table}");
                let _ = out.flush();
                self.redraw_lines = table.lines().count();
            }
        }
    }

    fn servers_text(&self) -> String {
        self.views
            .iter()
            .map(|v| {
                let port = v.port().map_or(v.url.clone(), |p| format!(":{p}"));
                match &v.status {
                    Some(s) => format!("{port} {} e{}", s.role.as_str(), s.epoch),
                    None => format!("{port} DOWN"),
                }
            })
            .collect::<Vec<_>>()
            .join(" | ")
    }

    fn table(&self, live: &[HostLive], now: Duration) -> String {
        use std::fmt::Write;
        let t = &self.cfg.timeouts;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "xha-shim demo ({}) {:>5.1} s / {:.0} s   t2 {} ms, T2 {} ms, Ws {} ms",
            self.mode(),
            now.as_secs_f64(),
            self.cfg.duration.as_secs_f64(),
            self.interval().as_millis(),
            t.statefile_timeout.as_millis(),
            t.statefile_watchdog_timeout.as_millis(),
        );
        let _ = writeln!(out, "servers: {}", self.servers_text());
        let _ = writeln!(
            out,
            "kills {}, takeovers {}{}",
            self.kills.len(),
            self.takeover_count(),
            self.takeovers
                .last()
                .and_then(|t| t.after_kill_ms)
                .map_or(String::new(), |a| format!(
                    " (last: serving again {:.1} s after the kill)",
                    a as f64 / 1000.0
                ))
        );
        let _ = writeln!(
            out,
            "{:>4} {:>8} {:>7} {:>9} {:>9} {:>10} {:>4}  verdict so far",
            "host", "sequence", "cycles", "last ms", "max ms", "stall ms", "SF"
        );
        for h in live {
            let _ = writeln!(
                out,
                "{:>4} {:>8} {:>7} {:>9} {:>9.2} {:>10} {:>4}  {}{}",
                h.index,
                h.sequence,
                h.cycles,
                h.last_latency_ms.map_or("-".into(), |l| format!("{l:.2}")),
                h.max_latency_ms,
                h.longest_gap_ms,
                if h.sf_access { "yes" } else { "no" },
                h.verdict,
                h.in_flight_ms
                    .filter(|a| *a >= 1000)
                    .map_or(String::new(), |a| format!(" (call waiting {a} ms)")),
            );
        }
        out
    }

    fn compact_line(&self, live: &[HostLive], now: Duration) -> String {
        let hosts: Vec<String> = live
            .iter()
            .map(|h| {
                format!(
                    "h{} seq {} last {} max {:.1} stall {} {}",
                    h.index,
                    h.sequence,
                    h.last_latency_ms.map_or("-".into(), |l| format!("{l:.1}")),
                    h.max_latency_ms,
                    h.longest_gap_ms,
                    h.verdict
                )
            })
            .collect();
        format!(
            "t={:.1}s [{}] kills {} takeovers {} | {}",
            now.as_secs_f64(),
            self.servers_text(),
            self.kills.len(),
            self.takeover_count(),
            hosts.join(" | ")
        )
    }

    /// Another server took the role (not the killed one coming back).
    fn takeover_count(&self) -> usize {
        self.takeovers.iter().filter(|t| !t.same_server).count()
    }

    fn interval(&self) -> Duration {
        if self.cfg.accelerated {
            crate::timeouts::ACCELERATED_INTERVAL
        } else {
            self.cfg.timeouts.statefile_interval
        }
    }

    fn mode(&self) -> &'static str {
        if self.cfg.failover {
            "failover"
        } else {
            "no-failover"
        }
    }

    fn report(
        &self,
        emulation: EmulationReport,
        servers: Vec<String>,
        interrupted: bool,
        work_dir: Option<String>,
    ) -> DemoReport {
        let hurt: Vec<HurtHost> = emulation
            .hosts
            .iter()
            .filter(|h| h.verdict.is_hurt())
            .map(|h| HurtHost {
                index: h.index,
                verdict: h.verdict,
                what: harm(h),
            })
            .collect();
        let longest = emulation.hosts.iter().max_by_key(|h| h.longest_gap_ms);
        let any_hurt = emulation.any_hurt;
        let verdict = if !any_hurt {
            format!(
                "no host hurt: XHA would have fenced no host and no host would have lost the statefile ({} kill(s), {} takeover(s))",
                self.kills.len(),
                self.takeover_count()
            )
        } else {
            let fenced: Vec<String> = hurt
                .iter()
                .filter(|h| h.verdict == Verdict::WouldFence)
                .map(|h| h.index.to_string())
                .collect();
            let lost: Vec<String> = hurt
                .iter()
                .filter(|h| h.verdict == Verdict::SfAccessLost)
                .map(|h| h.index.to_string())
                .collect();
            let mut parts = Vec::new();
            if !fenced.is_empty() {
                parts.push(format!(
                    "XHA would have FENCED host(s) {}",
                    fenced.join(", ")
                ));
            }
            if !lost.is_empty() {
                parts.push(format!(
                    "host(s) {} would have LOST THE STATEFILE",
                    lost.join(", ")
                ));
            }
            parts.join("; ")
        };
        DemoReport {
            mode: self.mode().into(),
            hosts: emulation.hosts.len(),
            servers,
            duration_ms: emulation.duration_ms,
            interrupted,
            kills: self.kills.clone(),
            restarts: self.restarts.clone(),
            takeover_count: self.takeover_count(),
            takeovers: self.takeovers.clone(),
            longest_stall_ms: longest.map_or(0, |h| h.longest_gap_ms),
            longest_stall_host: longest.map(|h| h.index),
            hurt,
            any_hurt,
            verdict,
            work_dir,
            emulation,
        }
    }
}

/// What XHA would have done to a hurt host, from its events.
fn harm(h: &HostReport) -> String {
    let mut what = Vec::new();
    for e in &h.events {
        match e {
            HostEvent::WatchdogExpired {
                at_ms,
                cycle_started_ms,
            } => what.push(format!(
                "fenced by the statefile watchdog at {:.1} s (no cycle since {:.1} s)",
                *at_ms as f64 / 1000.0,
                *cycle_started_ms as f64 / 1000.0
            )),
            HostEvent::SfAccessLost { at_ms, reason } => what.push(format!(
                "lost statefile access at {:.1} s: {reason}",
                *at_ms as f64 / 1000.0
            )),
            _ => {}
        }
    }
    if what.is_empty() {
        what.push(h.verdict.to_string());
    }
    what.join("; ")
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

impl DemoReport {
    /// The emulator's table, then the demo's own summary and verdict.
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let s = |ms: u64| format!("{:.1} s", ms as f64 / 1000.0);
        let mut out = String::new();
        let _ = writeln!(out);
        out.push_str(&self.emulation.to_table());
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "mode: {}{}; servers: {}",
            self.mode,
            if self.mode == "no-failover" {
                " (one http-disk-server, each nbd-http-server knows only its URL)"
            } else {
                ""
            },
            self.servers.join(", ")
        );
        for k in &self.kills {
            let _ = writeln!(
                out,
                "killed (SIGKILL) the serving {} at {} (epoch {})",
                k.url,
                s(k.at_ms),
                k.epoch
            );
        }
        for r in &self.restarts {
            let _ = writeln!(out, "restarted {} at {}", r.url, s(r.at_ms));
        }
        for t in &self.takeovers {
            let _ = writeln!(
                out,
                "{}: {} serving (epoch {}) at {}{}",
                if t.same_server {
                    "served again by the restarted server"
                } else {
                    "takeover"
                },
                t.url,
                t.epoch,
                s(t.at_ms),
                t.after_kill_ms
                    .map_or(String::new(), |a| format!(", {} after the kill", s(a)))
            );
        }
        let t = &self.emulation.timeouts;
        let longest_call = self
            .emulation
            .hosts
            .iter()
            .map(|h| h.write_latency.max_ms.max(h.read_latency.max_ms))
            .fold(0.0, f64::max);
        let _ = writeln!(
            out,
            "takeovers: {}; longest stall (gap between successful cycles): {}{}, \
             where a healthy gap is one interval ({} ms{}); longest single call {:.1} ms; \
             StateFileTimeout T2 {}, watchdog Ws {}",
            self.takeover_count,
            s(self.longest_stall_ms),
            self.longest_stall_host
                .map_or(String::new(), |h| format!(" on host {h}")),
            if self.emulation.accelerated {
                crate::timeouts::ACCELERATED_INTERVAL.as_millis()
            } else {
                t.statefile_interval.as_millis()
            },
            if self.emulation.accelerated {
                ""
            } else {
                " +- jitter"
            },
            longest_call,
            s(t.statefile_timeout.as_millis() as u64),
            s(t.statefile_watchdog_timeout.as_millis() as u64),
        );
        for h in &self.hurt {
            let _ = writeln!(out, "host {}: {}", h.index, h.what);
        }
        if self.interrupted {
            let _ = writeln!(out, "INTERRUPTED after {}", s(self.duration_ms));
        }
        if let Some(d) = &self.work_dir {
            let _ = writeln!(out, "work directory kept: {d}");
        }
        let _ = writeln!(out, "VERDICT: {}", self.verdict);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator::{ErrorCounts, LatencySummary};
    use crate::statefile::HostBitmap;

    fn host(index: usize, verdict: Verdict, events: Vec<HostEvent>) -> HostReport {
        HostReport {
            index,
            uuid: emulated_host_uuid(index),
            target: "t".into(),
            cycles: 10,
            successful_cycles: 10,
            last_sequence: 9,
            write_latency: LatencySummary::of(&[]),
            read_latency: LatencySummary::of(&[]),
            longest_gap_ms: 1000 * (index as u64 + 1),
            errors: ErrorCounts::default(),
            stuck_in_io_ms: None,
            sf_access_at_end: !verdict.is_hurt(),
            sfdomain_at_end: HostBitmap::default(),
            events,
            verdict,
        }
    }

    fn cfg() -> DemoConfig {
        DemoConfig {
            hosts: 3,
            duration: Duration::from_secs(60),
            kill_every: Duration::from_secs(20),
            restart_after: Duration::from_secs(3),
            failover: false,
            outage: Duration::from_secs(65),
            timeouts: Timeouts::derive(60),
            accelerated: false,
            jitter: Duration::from_millis(500),
            binaries: DaemonBinaries {
                http_disk_server: "/x".into(),
                nbd_http_server: "/y".into(),
            },
            keep_dir: false,
            output: Output::Quiet,
        }
    }

    #[test]
    fn the_verdict_names_fenced_and_cut_off_hosts() {
        let hosts = vec![
            host(0, Verdict::Ok, vec![]),
            host(
                1,
                Verdict::WouldFence,
                vec![HostEvent::WatchdogExpired {
                    at_ms: 95_000,
                    cycle_started_ms: 20_000,
                }],
            ),
            host(
                2,
                Verdict::SfAccessLost,
                vec![HostEvent::SfAccessLost {
                    at_ms: 80_000,
                    reason: "own sequence not seen changing".into(),
                }],
            ),
        ];
        let emulation = EmulationReport {
            duration_ms: 100_000,
            timeouts: Timeouts::derive(60),
            accelerated: false,
            hosts,
            any_hurt: true,
        };
        let cfg = cfg();
        let mut run = Run::new(&cfg, Vec::new());
        run.takeovers.push(TakeoverRecord {
            at_ms: 90_000,
            url: "http://a:1".into(),
            epoch: 2,
            after_kill_ms: Some(85_000),
            same_server: true,
        });
        let r = run.report(emulation, vec!["http://a:1".into()], false, None);
        assert_eq!(r.takeover_count, 0, "a restart is not a takeover");
        assert!(r.verdict.contains("FENCED host(s) 1"), "{}", r.verdict);
        assert!(
            r.verdict
                .contains("host(s) 2 would have LOST THE STATEFILE"),
            "{}",
            r.verdict
        );
        assert_eq!(r.longest_stall_host, Some(2));
        assert_eq!(r.hurt.len(), 2);
        assert!(
            r.hurt[0].what.contains("watchdog at 95.0 s"),
            "{:?}",
            r.hurt
        );
        let text = r.to_text();
        assert!(
            text.contains("served again by the restarted server"),
            "{text}"
        );
        assert!(
            text.contains("host 2: lost statefile access at 80.0 s"),
            "{text}"
        );
    }
}
