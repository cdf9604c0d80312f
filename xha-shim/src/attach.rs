//! `xha-shim attach` and `detach`: what XCP-ng's storage driver (LinstorSR,
//! `_attach_using_http_nbd` and its detach) does to give xhad a statefile
//! path, for our daemons.
//!
//! Attach stops leftovers of the volume, starts http-disk-server when this
//! host holds a replica and waits for `Server ready!`, starts
//! nbd-http-server and waits for ``NBD `/dev/nbdN` is now attached.``, and
//! publishes `/dev/http-nbd/<volume>`. Detach stops both with SIGTERM to
//! their process groups (SIGKILL after a bounded wait).
//!
//! The daemons must outlive `xha-shim attach`, so they run in their own
//! session and never hold a pipe to it: stdout goes to a file in the run
//! directory, which attach reads for the readiness line. No pipe means no
//! SIGPIPE and no blocked write once attach has exited, and the readiness
//! lines stay on disk, so a later attach can learn the device of a daemon it
//! did not start.
//!
//! Pid files are trusted only when the process they name is alive and its
//! `/proc/PID/cmdline` is exactly the command line recorded beside the pid
//! file when attach started it: a reused pid, or a pid file pointing at
//! anything else, is never signalled.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tracing::{info, warn};

use crate::daemons::{DaemonBinaries, HTTP_DISK_SERVER, NBD_HTTP_SERVER};

pub const DEFAULT_RUN_DIR: &str = "/run/xha-heartbeat";
pub const DEFAULT_LINK_DIR: &str = "/dev/http-nbd";
/// SM's statefile size; the redo log uses 256 MiB.
pub const DEFAULT_DEVICE_SIZE: u64 = 4 << 20;
/// SM waits this long for each readiness line.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// SIGTERM to SIGKILL; http-disk-server drains for up to 5 s by default.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);

const POLL: Duration = Duration::from_millis(20);
const LOG_TAIL_LINES: usize = 20;

/// A volume name as LINSTOR and SM use it (`xcp-persistent-ha-statefile`):
/// it becomes part of file names, so no `/` and no leading dot or dash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeName(String);

impl FromStr for VolumeName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > 128 {
            return Err(format!("volume name {s:?} must have 1 to 128 characters"));
        }
        if s.starts_with(['.', '-']) {
            return Err(format!("volume name {s:?} must not start with `.` or `-`"));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(format!(
                "volume name {s:?} contains {c:?}; use letters, digits, `.`, `_` and `-`"
            ));
        }
        Ok(VolumeName(s.to_owned()))
    }
}

impl fmt::Display for VolumeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl VolumeName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Daemon {
    HttpDiskServer,
    NbdHttpServer,
}

impl Daemon {
    pub fn name(self) -> &'static str {
        match self {
            Daemon::HttpDiskServer => HTTP_DISK_SERVER,
            Daemon::NbdHttpServer => NBD_HTTP_SERVER,
        }
    }
}

impl fmt::Display for Daemon {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The stdout line a daemon prints once it is usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadyLine {
    /// http-disk-server: a line ending `Server ready!` (SM's test).
    ServerReady,
    /// nbd-http-server without the kernel device: `NBD server ready on ...`.
    NbdListening,
    /// nbd-http-server: ``NBD `/dev/nbdN` is now attached.``
    NbdAttached,
}

/// What a readiness line told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ready {
    Yes,
    Device(PathBuf),
}

impl ReadyLine {
    pub fn describe(self) -> &'static str {
        match self {
            ReadyLine::ServerReady => "`Server ready!`",
            ReadyLine::NbdListening => "`NBD server ready on ...`",
            ReadyLine::NbdAttached => "``NBD `/dev/nbdN` is now attached.``",
        }
    }

    pub fn matches(self, line: &str) -> Option<Ready> {
        let line = line.trim_end();
        match self {
            ReadyLine::ServerReady => line.ends_with("Server ready!").then_some(Ready::Yes),
            ReadyLine::NbdListening => line
                .starts_with("NBD server ready on ")
                .then_some(Ready::Yes),
            ReadyLine::NbdAttached => parse_attached(line).map(Ready::Device),
        }
    }

    /// The last complete line of `stdout` that matches.
    pub fn find_last(self, stdout: &str) -> Option<Ready> {
        complete_lines(stdout).rev().find_map(|l| self.matches(l))
    }
}

/// The device in ``NBD `/dev/nbdN` is now attached.``
pub fn parse_attached(line: &str) -> Option<PathBuf> {
    let rest = &line[line.find("NBD `")? + "NBD `".len()..];
    let dev = rest.strip_suffix("` is now attached.")?;
    (dev.starts_with("/dev/") && !dev.contains('`')).then(|| PathBuf::from(dev))
}

/// Lines ended by a newline: a line still being written is not read.
fn complete_lines(text: &str) -> impl DoubleEndedIterator<Item = &str> {
    let done = text.rfind('\n').map_or("", |i| &text[..i]);
    done.split('\n').filter(|l| !l.is_empty())
}

/// Where one volume's pid files, command lines, logs and socket live.
#[derive(Debug, Clone)]
pub struct RunLayout {
    pub run_dir: PathBuf,
    pub volume: VolumeName,
}

impl RunLayout {
    fn file(&self, daemon: Daemon, ext: &str) -> PathBuf {
        self.run_dir
            .join(format!("{}-{}.{ext}", daemon.name(), self.volume))
    }
    pub fn pid_file(&self, d: Daemon) -> PathBuf {
        self.file(d, "pid")
    }
    /// The argv attach started the daemon with, NUL separated, as in
    /// /proc/PID/cmdline.
    pub fn cmdline_file(&self, d: Daemon) -> PathBuf {
        self.file(d, "cmdline")
    }
    pub fn stdout_file(&self, d: Daemon) -> PathBuf {
        self.file(d, "out")
    }
    pub fn log_file(&self, d: Daemon) -> PathBuf {
        self.file(d, "log")
    }
    pub fn socket(&self) -> PathBuf {
        self.run_dir.join(format!("{}.socket", self.volume))
    }
    fn lock_file(&self) -> PathBuf {
        self.run_dir.join(format!("{}.lock", self.volume))
    }
    pub fn nbd_uri(&self) -> String {
        format!(
            "nbd+unix:///{}?socket={}",
            self.volume,
            self.socket().display()
        )
    }
}

/// argv as /proc/PID/cmdline shows it.
pub fn encode_cmdline(argv: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for a in argv {
        out.extend_from_slice(a.as_bytes());
        out.push(0);
    }
    out
}

/// The fields of /proc/PID/stat that matter here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub state: char,
    pub pgrp: i32,
}

/// Parses /proc/PID/stat; the command name in parentheses may hold spaces
/// and parentheses, so fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let _ppid = f.next()?;
    let pgrp = f.next()?.parse().ok()?;
    Some(ProcStat { state, pgrp })
}

fn proc_stat(pid: i32) -> Option<ProcStat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Running, not a zombie waiting for a parent that may never reap it.
fn alive(pid: i32) -> bool {
    proc_stat(pid).is_some_and(|s| !matches!(s.state, 'Z' | 'X' | 'x'))
}

/// What a pid file says about a daemon of the volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    Absent,
    /// Unreadable, or names a process that is gone.
    Stale {
        why: String,
    },
    /// Names a live process that is not our daemon for this volume.
    Foreign {
        pid: i32,
        why: String,
    },
    Ours {
        pid: i32,
        argv: Vec<u8>,
    },
}

pub fn inspect(layout: &RunLayout, daemon: Daemon) -> Recorded {
    let pid_file = layout.pid_file(daemon);
    let text = match fs::read_to_string(&pid_file) {
        Ok(t) => t,
        Err(e) if e.kind() == ErrorKind::NotFound => return Recorded::Absent,
        Err(e) => {
            return Recorded::Stale {
                why: format!("cannot read {}: {e}", pid_file.display()),
            }
        }
    };
    let pid = match text.trim().parse::<i32>() {
        Ok(p) if p > 1 => p,
        _ => {
            return Recorded::Stale {
                why: format!("{} holds {:?}, not a pid", pid_file.display(), text.trim()),
            }
        }
    };
    if !alive(pid) {
        return Recorded::Stale {
            why: format!("pid {pid} from {} is not running", pid_file.display()),
        };
    }
    let recorded = match fs::read(layout.cmdline_file(daemon)) {
        Ok(r) => r,
        Err(e) => {
            return Recorded::Foreign {
                pid,
                why: format!(
                    "its command line record {} is unreadable ({e}), so it cannot be verified",
                    layout.cmdline_file(daemon).display()
                ),
            }
        }
    };
    let actual = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let program_ok = actual
        .split(|b| *b == 0)
        .next()
        .and_then(|p| Path::new(std::str::from_utf8(p).ok()?).file_name())
        .is_some_and(|n| n == daemon.name());
    if actual != recorded || !program_ok {
        return Recorded::Foreign {
            pid,
            why: format!(
                "its command line is `{}`, not the {daemon} that xha-shim started for volume {}",
                String::from_utf8_lossy(&actual)
                    .replace('\0', " ")
                    .trim_end(),
                layout.volume
            ),
        };
    }
    Recorded::Ours { pid, argv: actual }
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

fn forget(layout: &RunLayout, daemon: Daemon) -> Result<()> {
    remove_if_exists(&layout.pid_file(daemon))?;
    remove_if_exists(&layout.cmdline_file(daemon))
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a
/// reader never sees half a pid.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming {} into place", tmp.display()))
}

fn signal(pid: i32, sig: libc::c_int) {
    // The daemons lead their own process group (setsid); signal the group
    // so anything they started goes too, as SM's killpg does.
    let target = match proc_stat(pid) {
        Some(s) if s.pgrp == pid => -pid,
        _ => pid,
    };
    // SAFETY: kill(2) with a pid verified to be our daemon.
    unsafe {
        libc::kill(target, sig);
    }
}

fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
    true
}

/// How stopping a daemon went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stopped {
    NotRunning,
    Terminated { pid: i32 },
    Killed { pid: i32 },
}

/// Stops the daemon the pid file names, if it is ours: SIGTERM to its
/// group, SIGKILL after `timeout`. Its pid and command line files go.
pub fn stop(layout: &RunLayout, daemon: Daemon, timeout: Duration) -> Result<Stopped> {
    let vol = &layout.volume;
    let outcome = match inspect(layout, daemon) {
        Recorded::Absent => return Ok(Stopped::NotRunning),
        Recorded::Stale { why } => {
            info!("volume {vol}: {daemon}: {why}; removing the stale pid file");
            Stopped::NotRunning
        }
        Recorded::Foreign { pid, why } => {
            warn!(
                "volume {vol}: pid file {} names pid {pid}, but {why}; not signalling it, removing the pid file",
                layout.pid_file(daemon).display()
            );
            Stopped::NotRunning
        }
        Recorded::Ours { pid, .. } => {
            signal(pid, libc::SIGTERM);
            if wait_gone(pid, timeout) {
                Stopped::Terminated { pid }
            } else {
                warn!("volume {vol}: {daemon} (pid {pid}) still runs {timeout:?} after SIGTERM; sending SIGKILL");
                signal(pid, libc::SIGKILL);
                if !wait_gone(pid, Duration::from_secs(5)) {
                    bail!(
                        "volume {vol}: {daemon} (pid {pid}) survived SIGKILL (stuck in the kernel?); \
                         see /proc/{pid}/stack and its log {}",
                        layout.log_file(daemon).display()
                    );
                }
                Stopped::Killed { pid }
            }
        }
    };
    forget(layout, daemon)?;
    Ok(outcome)
}

/// The last lines of a file, for error messages.
pub fn tail(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let shown = all[all.len().saturating_sub(lines)..].join("\n");
            if shown.is_empty() {
                "(empty)".into()
            } else {
                shown
            }
        }
        Err(e) => format!("(cannot read: {e})"),
    }
}

/// A daemon this attach started.
struct Spawned {
    daemon: Daemon,
    pid: i32,
    child: Child,
}

fn spawn(layout: &RunLayout, daemon: Daemon, program: &Path, args: &[String]) -> Result<Spawned> {
    let vol = &layout.volume;
    let log = layout.log_file(daemon);
    if log.exists() {
        // One previous run kept for post-mortems.
        let _ = fs::rename(&log, log.with_extension("log.1"));
    }
    let stderr = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let out = layout.stdout_file(daemon);
    let stdout = File::create(&out).with_context(|| format!("creating {}", out.display()))?;
    let program_str = program
        .to_str()
        .with_context(|| format!("{daemon} path {} is not UTF-8", program.display()))?
        .to_owned();
    let mut argv = vec![program_str];
    argv.extend(args.iter().cloned());

    let mut cmd = Command::new(program);
    // cwd /: a daemon that lives for days must not pin the filesystem
    // attach happened to run in (paths it gets are absolute).
    cmd.args(args)
        .current_dir("/")
        // Plain log files, no terminal colour codes.
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr));
    // SAFETY: setsid is async-signal-safe. A new session detaches the daemon
    // from our terminal and process group: it outlives attach, and its pid
    // is the group SIGTERM goes to.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("volume {vol}: starting {daemon} ({})", program.display()))?;
    let pid = child.id() as i32;
    let spawned = Spawned { daemon, pid, child };
    // The record first: a pid file is only ever trusted with its record.
    let recorded = write_atomically(&layout.cmdline_file(daemon), &encode_cmdline(&argv))
        .and_then(|()| write_atomically(&layout.pid_file(daemon), format!("{pid}\n").as_bytes()));
    if let Err(e) = recorded {
        let mut s = spawned;
        abandon(layout, &mut s);
        return Err(e.context(format!("volume {vol}: recording {daemon}'s pid")));
    }
    info!(
        "volume {vol}: started {daemon} (pid {pid}): {}",
        argv.join(" ")
    );
    Ok(spawned)
}

/// Kills a daemon that this attach started and gives up on.
fn abandon(layout: &RunLayout, s: &mut Spawned) {
    signal(s.pid, libc::SIGTERM);
    if !wait_gone(s.pid, Duration::from_secs(2)) {
        signal(s.pid, libc::SIGKILL);
    }
    let _ = s.child.wait();
    let _ = forget(layout, s.daemon);
}

enum NotReady {
    Exited(ExitStatus),
    Timeout,
}

fn wait_ready(
    layout: &RunLayout,
    s: &mut Spawned,
    line: ReadyLine,
    timeout: Duration,
) -> Result<Ready, NotReady> {
    let deadline = Instant::now() + timeout;
    let out = layout.stdout_file(s.daemon);
    loop {
        // Exit status first, output second: a line printed just before
        // exiting is still seen, and a daemon that then exited is not ready.
        let exited = s.child.try_wait().ok().flatten();
        let text = fs::read(&out).unwrap_or_default();
        let found = line.find_last(&String::from_utf8_lossy(&text));
        match (exited, found) {
            (Some(status), _) => return Err(NotReady::Exited(status)),
            (None, Some(r)) => return Ok(r),
            (None, None) if Instant::now() >= deadline => return Err(NotReady::Timeout),
            (None, None) => std::thread::sleep(POLL),
        }
    }
}

/// Starts a daemon and waits for its line; on failure it is stopped and
/// the error tells which daemon, which line, and what its logs say.
fn start_ready(
    layout: &RunLayout,
    daemon: Daemon,
    program: &Path,
    args: &[String],
    line: ReadyLine,
    timeout: Duration,
) -> Result<(Spawned, Ready)> {
    let mut s = spawn(layout, daemon, program, args)?;
    match wait_ready(layout, &mut s, line, timeout) {
        Ok(r) => {
            info!(
                "volume {}: {daemon} (pid {}) is ready",
                layout.volume, s.pid
            );
            Ok((s, r))
        }
        Err(why) => {
            let what = match why {
                NotReady::Exited(status) => format!("exited ({status})"),
                NotReady::Timeout => {
                    abandon(layout, &mut s);
                    format!("did not get ready within {timeout:?} and was stopped")
                }
            };
            let _ = s.child.wait();
            let _ = forget(layout, daemon);
            Err(anyhow!(
                "volume {vol}: {daemon} {what} before printing {line} on stdout.\n\
                 command: {program} {args}\n\
                 {daemon} log {log} (last {n} lines):\n{log_tail}\n\
                 {daemon} stdout {out}:\n{out_tail}",
                vol = layout.volume,
                line = line.describe(),
                program = program.display(),
                args = args.join(" "),
                log = layout.log_file(daemon).display(),
                n = LOG_TAIL_LINES,
                log_tail = tail(&layout.log_file(daemon), LOG_TAIL_LINES),
                out = layout.stdout_file(daemon).display(),
                out_tail = tail(&layout.stdout_file(daemon), LOG_TAIL_LINES),
            ))
        }
    }
}

/// This host's replica, served by http-disk-server.
#[derive(Debug, Clone)]
pub struct LocalReplica {
    pub disk: PathBuf,
    pub ip: String,
    pub port: u16,
}

#[derive(Debug, Clone)]
pub struct AttachConfig {
    pub volume: VolumeName,
    pub urls: Vec<String>,
    pub local: Option<LocalReplica>,
    pub device_size: u64,
    pub run_dir: PathBuf,
    pub link_dir: PathBuf,
    /// Attach /dev/nbdN (false: serve the Unix socket only).
    pub kernel_device: bool,
    pub ready_timeout: Duration,
    pub stop_timeout: Duration,
    pub binaries: DaemonBinaries,
    pub http_disk_server_args: Vec<String>,
    pub nbd_http_server_args: Vec<String>,
}

impl AttachConfig {
    fn layout(&self) -> RunLayout {
        RunLayout {
            run_dir: self.run_dir.clone(),
            volume: self.volume.clone(),
        }
    }

    pub fn http_disk_server_argv(&self, local: &LocalReplica) -> Vec<String> {
        let mut a = vec![
            "--disk".into(),
            local.disk.display().to_string(),
            "--ip".into(),
            local.ip.clone(),
            "--port".into(),
            local.port.to_string(),
        ];
        a.extend(self.http_disk_server_args.iter().cloned());
        a
    }

    pub fn nbd_http_server_argv(&self) -> Vec<String> {
        let mut a = vec![
            "--socket-path".into(),
            self.layout().socket().display().to_string(),
            "--nbd-name".into(),
            self.volume.to_string(),
            "--urls".into(),
            self.urls.join(","),
            "--device-size".into(),
            self.device_size.to_string(),
        ];
        if self.kernel_device {
            // `required`: a host without the nbd driver fails now, with the
            // daemon's reason, instead of serving a socket nobody reads.
            a.extend([
                "--attach".into(),
                "required".into(),
                "--device-link-dir".into(),
                self.link_dir.display().to_string(),
            ]);
        } else {
            a.push("--no-attach".into());
        }
        a.extend(self.nbd_http_server_args.iter().cloned());
        a
    }

    fn nbd_ready_line(&self) -> ReadyLine {
        if self.kernel_device {
            ReadyLine::NbdAttached
        } else {
            ReadyLine::NbdListening
        }
    }
}

/// What attach did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// `/dev/http-nbd/<volume>`, or the socket's NBD URI without a kernel
    /// device.
    pub path: String,
    pub http_disk_server: Option<DaemonState>,
    pub nbd_http_server: DaemonState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DaemonState {
    Started { pid: i32 },
    AlreadyRunning { pid: i32 },
}

impl DaemonState {
    pub fn pid(self) -> i32 {
        match self {
            DaemonState::Started { pid } | DaemonState::AlreadyRunning { pid } => pid,
        }
    }
}

/// An exclusive lock on the volume's lock file, so two attaches (or an
/// attach and a detach) of one volume do not interleave.
struct VolumeLock {
    _file: File,
}

impl VolumeLock {
    fn take(layout: &RunLayout) -> Result<Self> {
        let path = layout.lock_file();
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: flock on a descriptor we own; released when it closes.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("locking {}", path.display()));
        }
        Ok(VolumeLock { _file: f })
    }
}

/// Our daemon for the volume, if it runs with exactly `argv`; otherwise
/// whatever runs (ours with other arguments) is stopped and stale files go.
fn reuse_or_clear(
    layout: &RunLayout,
    daemon: Daemon,
    argv: Option<&[u8]>,
    stop_timeout: Duration,
) -> Result<Option<i32>> {
    if let (Recorded::Ours { pid, argv: running }, Some(want)) = (inspect(layout, daemon), argv) {
        if running == want {
            return Ok(Some(pid));
        }
        info!(
            "volume {}: {daemon} (pid {pid}) runs with other arguments; restarting it",
            layout.volume
        );
    }
    match stop(layout, daemon, stop_timeout)? {
        Stopped::NotRunning => {}
        Stopped::Terminated { pid } | Stopped::Killed { pid } => {
            info!("volume {}: stopped {daemon} (pid {pid})", layout.volume)
        }
    }
    Ok(None)
}

fn full_argv(program: &Path, args: &[String]) -> Vec<u8> {
    let mut argv = vec![program.display().to_string()];
    argv.extend(args.iter().cloned());
    encode_cmdline(&argv)
}

/// Makes `link` a symlink to `device`, replacing whatever is there.
fn publish_link(link: &Path, device: &Path) -> Result<()> {
    if fs::read_link(link).is_ok_and(|t| t == device) {
        return Ok(());
    }
    let dir = link.parent().context("device link has no directory")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        link.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(device, &tmp)
        .with_context(|| format!("creating symlink {} -> {}", tmp.display(), device.display()))?;
    fs::rename(&tmp, link)
        .with_context(|| format!("renaming {} to {}", tmp.display(), link.display()))
}

/// Starts what is missing and returns the path xhad should open.
pub fn attach(cfg: &AttachConfig) -> Result<Attached> {
    let layout = cfg.layout();
    let vol = &cfg.volume;
    if cfg.urls.is_empty() {
        bail!("volume {vol}: --urls is empty; give every host's http://ADDR:PORT");
    }
    fs::create_dir_all(&cfg.run_dir)
        .with_context(|| format!("creating the run directory {}", cfg.run_dir.display()))?;
    let _lock = VolumeLock::take(&layout)?;

    // 1. http-disk-server, when this host has a replica; a leftover of an
    //    earlier attach that had one is stopped.
    let bins = &cfg.binaries;
    let mut started_http: Option<Spawned> = None;
    let http_state = match &cfg.local {
        Some(local) => {
            let args = cfg.http_disk_server_argv(local);
            let want = full_argv(&bins.http_disk_server, &args);
            match reuse_or_clear(
                &layout,
                Daemon::HttpDiskServer,
                Some(&want),
                cfg.stop_timeout,
            )? {
                Some(pid) => Some(DaemonState::AlreadyRunning { pid }),
                None => {
                    let (s, _) = start_ready(
                        &layout,
                        Daemon::HttpDiskServer,
                        &bins.http_disk_server,
                        &args,
                        ReadyLine::ServerReady,
                        cfg.ready_timeout,
                    )?;
                    let pid = s.pid;
                    started_http = Some(s);
                    Some(DaemonState::Started { pid })
                }
            }
        }
        None => {
            reuse_or_clear(&layout, Daemon::HttpDiskServer, None, cfg.stop_timeout)?;
            None
        }
    };

    // 2. nbd-http-server. A running one is kept only if its stdout shows
    //    it got ready (and, with the kernel device, which device).
    let args = cfg.nbd_http_server_argv();
    let want = full_argv(&bins.nbd_http_server, &args);
    let line = cfg.nbd_ready_line();
    let mut kept = None;
    if let Some(pid) = reuse_or_clear(
        &layout,
        Daemon::NbdHttpServer,
        Some(&want),
        cfg.stop_timeout,
    )? {
        let out = fs::read(layout.stdout_file(Daemon::NbdHttpServer)).unwrap_or_default();
        match line.find_last(&String::from_utf8_lossy(&out)) {
            Some(Ready::Device(d)) if !d.exists() => {
                info!("volume {vol}: nbd-http-server (pid {pid}) attached {} which is gone; restarting it", d.display())
            }
            Some(r) => kept = Some((pid, r)),
            None => info!(
                "volume {vol}: nbd-http-server (pid {pid}) never printed {}; restarting it",
                line.describe()
            ),
        }
        if kept.is_none() {
            stop(&layout, Daemon::NbdHttpServer, cfg.stop_timeout)?;
        }
    }
    let (nbd_state, ready) = match kept {
        Some((pid, r)) => (DaemonState::AlreadyRunning { pid }, r),
        None => match start_ready(
            &layout,
            Daemon::NbdHttpServer,
            &bins.nbd_http_server,
            &args,
            line,
            cfg.ready_timeout,
        ) {
            Ok((s, r)) => (DaemonState::Started { pid: s.pid }, r),
            Err(e) => {
                // Leave nothing behind that this attach started.
                if let Some(mut h) = started_http {
                    abandon(&layout, &mut h);
                }
                return Err(e);
            }
        },
    };

    // 3. The path for xhad.
    let path = match ready {
        Ready::Device(dev) => {
            let link = cfg.link_dir.join(vol.as_str());
            publish_link(&link, &dev)
                .with_context(|| format!("volume {vol}: publishing {}", link.display()))?;
            link.display().to_string()
        }
        Ready::Yes if cfg.kernel_device => unreachable!("the attached line names a device"),
        Ready::Yes => layout.nbd_uri(),
    };
    Ok(Attached {
        path,
        http_disk_server: http_state,
        nbd_http_server: nbd_state,
    })
}

#[derive(Debug, Clone)]
pub struct DetachConfig {
    pub volume: VolumeName,
    pub run_dir: PathBuf,
    pub link_dir: PathBuf,
    pub stop_timeout: Duration,
}

/// What detach did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detached {
    pub nbd_http_server: Stopped,
    pub http_disk_server: Stopped,
    pub link_removed: bool,
}

impl Detached {
    pub fn nothing_to_do(&self) -> bool {
        self.nbd_http_server == Stopped::NotRunning
            && self.http_disk_server == Stopped::NotRunning
            && !self.link_removed
    }
}

/// Stops both daemons of the volume (nbd-http-server first: it is the
/// client of the other) and removes the link, pid files and socket.
pub fn detach(cfg: &DetachConfig) -> Result<Detached> {
    let layout = RunLayout {
        run_dir: cfg.run_dir.clone(),
        volume: cfg.volume.clone(),
    };
    let (nbd, http) = if cfg.run_dir.is_dir() {
        let _lock = VolumeLock::take(&layout)?;
        let nbd = stop(&layout, Daemon::NbdHttpServer, cfg.stop_timeout)?;
        let http = stop(&layout, Daemon::HttpDiskServer, cfg.stop_timeout)?;
        let sock = layout.socket();
        if fs::symlink_metadata(&sock).is_ok_and(|m| m.file_type().is_socket()) {
            remove_if_exists(&sock)?;
        }
        (nbd, http)
    } else {
        (Stopped::NotRunning, Stopped::NotRunning)
    };
    let link = cfg.link_dir.join(cfg.volume.as_str());
    let link_removed = if fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()) {
        remove_if_exists(&link)?;
        true
    } else {
        false
    };
    Ok(Detached {
        nbd_http_server: nbd,
        http_disk_server: http,
        link_removed,
    })
}

/// Writes `line` and a newline to stdout and flushes it.
pub fn print_line(line: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_names() {
        assert!("xcp-persistent-ha-statefile".parse::<VolumeName>().is_ok());
        assert!("xcp_persistent.redo-log2".parse::<VolumeName>().is_ok());
        for bad in ["", "a/b", "../x", ".hidden", "-flag", "a b", "é"] {
            assert!(bad.parse::<VolumeName>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ready_lines() {
        assert_eq!(
            ReadyLine::ServerReady.matches("Server ready!"),
            Some(Ready::Yes)
        );
        assert_eq!(
            ReadyLine::ServerReady.matches("Server ready!\r"),
            Some(Ready::Yes)
        );
        assert_eq!(ReadyLine::ServerReady.matches("Server ready?"), None);
        assert_eq!(
            ReadyLine::NbdListening.matches("NBD server ready on unix:/run/x.socket"),
            Some(Ready::Yes)
        );
        assert_eq!(
            ReadyLine::NbdListening.matches("INFO NBD server ready volume=x"),
            None
        );
        assert_eq!(
            ReadyLine::NbdAttached.matches("NBD `/dev/nbd3` is now attached."),
            Some(Ready::Device("/dev/nbd3".into()))
        );
        assert_eq!(
            ReadyLine::NbdAttached.matches("NBD `nbd3` is now attached."),
            None
        );
        assert_eq!(
            ReadyLine::NbdAttached.matches("NBD `/dev/nbd3` is attached."),
            None
        );
        assert_eq!(
            ReadyLine::NbdAttached.matches("NBD server ready on unix:/x"),
            None
        );
    }

    #[test]
    fn only_complete_lines_count_and_the_last_wins() {
        let out = "NBD server ready on unix:/s\nNBD `/dev/nbd0` is now attached.\nNBD `/dev/nbd1` is now attached.\n";
        assert_eq!(
            ReadyLine::NbdAttached.find_last(out),
            Some(Ready::Device("/dev/nbd1".into()))
        );
        assert_eq!(ReadyLine::ServerReady.find_last("Server ready!"), None);
        assert_eq!(
            ReadyLine::ServerReady.find_last("noise\nServer ready!\n"),
            Some(Ready::Yes)
        );
        assert_eq!(ReadyLine::ServerReady.find_last(""), None);
    }

    #[test]
    fn stat_with_odd_command_names() {
        assert_eq!(
            parse_stat("1234 (nbd-http-server) S 1 1234 1234 0 -1 4194560"),
            Some(ProcStat {
                state: 'S',
                pgrp: 1234
            })
        );
        assert_eq!(
            parse_stat("77 (a) b) (c) Z 1 70 70 0"),
            Some(ProcStat {
                state: 'Z',
                pgrp: 70
            })
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn layout_paths_and_uri() {
        let l = RunLayout {
            run_dir: "/run/xha-heartbeat".into(),
            volume: "vol".parse().unwrap(),
        };
        assert_eq!(
            l.pid_file(Daemon::NbdHttpServer),
            Path::new("/run/xha-heartbeat/nbd-http-server-vol.pid")
        );
        assert_eq!(
            l.nbd_uri(),
            "nbd+unix:///vol?socket=/run/xha-heartbeat/vol.socket"
        );
        assert_eq!(encode_cmdline(&["a".into(), "b c".into()]), b"a\0b c\0");
    }

    #[test]
    fn pid_files_of_other_processes_are_foreign_or_stale() {
        let dir = tempfile::tempdir().unwrap();
        let l = RunLayout {
            run_dir: dir.path().into(),
            volume: "v".parse().unwrap(),
        };
        assert_eq!(inspect(&l, Daemon::HttpDiskServer), Recorded::Absent);
        // This test process: alive, but not http-disk-server.
        let me = std::process::id() as i32;
        fs::write(l.pid_file(Daemon::HttpDiskServer), format!("{me}\n")).unwrap();
        assert!(matches!(
            inspect(&l, Daemon::HttpDiskServer),
            Recorded::Foreign { pid, .. } if pid == me
        ));
        // Even with a record that matches this process's command line, the
        // program must be the daemon.
        fs::write(
            l.cmdline_file(Daemon::HttpDiskServer),
            fs::read(format!("/proc/{me}/cmdline")).unwrap(),
        )
        .unwrap();
        assert!(matches!(
            inspect(&l, Daemon::HttpDiskServer),
            Recorded::Foreign { .. }
        ));
        fs::write(l.pid_file(Daemon::HttpDiskServer), "not a pid").unwrap();
        assert!(matches!(
            inspect(&l, Daemon::HttpDiskServer),
            Recorded::Stale { .. }
        ));
        assert_eq!(
            stop(&l, Daemon::HttpDiskServer, Duration::from_secs(1)).unwrap(),
            Stopped::NotRunning
        );
        assert!(!l.pid_file(Daemon::HttpDiskServer).exists());
        assert!(!l.cmdline_file(Daemon::HttpDiskServer).exists());
    }
}
