//! Running `drbdsetup`: one-shot commands with a timeout, and the long-lived
//! `events2` child.
//!
//! Thin on purpose: decisions live in `promoter.rs`. What this module adds is
//! the timeout (a `drbdsetup primary` can block for seconds inside the kernel's
//! two-phase commit), kill-on-drop for every child, and the exit-code classes
//! from drbdsetup's `check_error`:
//! - 0: done (also "nothing to do", e.g. already Primary);
//! - 11, 17 (and 5, 16): the state change was refused: another Primary, no
//!   quorum, no UpToDate data... For an election this means "lost";
//! - 10, 20, 121: configuration or environment error (unknown resource,
//!   netlink failure, module not loaded): logged loudly;
//! - anything else: failed.
//!
//! DRBD 8.4 note: its `drbdsetup primary|secondary` addresses a minor, not
//! a resource name (`drbdsetup primary 0`; with the resource name it exits 20,
//! "Cannot determine minor"), and its `events2` knows no `--full`. The runner
//! builds both forms from [`Drbdsetup::kernel`]; callers always pass the
//! resource name. [`KernelGeneration::detect`] reads `/proc/drbd`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use crate::events2::{parse_line, Line};
use crate::promoter::CommandOutcome;
use crate::status::{parse_status, ResourceStatus};

/// Class of a drbdsetup exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitClass {
    Done,
    /// Refused state change: lost the race, no quorum, no UpToDate data.
    Refused,
    /// Configuration or environment error.
    ConfigError,
    Other,
}

pub fn classify_exit(code: i32) -> ExitClass {
    match code {
        0 => ExitClass::Done,
        5 | 11 | 16 | 17 => ExitClass::Refused,
        10 | 20 | 121 => ExitClass::ConfigError,
        _ => ExitClass::Other,
    }
}

/// Errors of a drbdsetup run. Each names the full command line (and so the
/// resource) and says what to look at next.
#[derive(Debug, Error)]
pub enum DrbdsetupError {
    #[error("`{command}` refused the state change (exit {code}): {stderr}; another host is Primary or quorum/UpToDate data is missing, waiting for the next may_promote")]
    Refused {
        command: String,
        code: i32,
        stderr: String,
    },
    #[error("`{command}` failed with a configuration or environment error (exit {code}): {stderr}; check that the resource is configured on this host and the DRBD module is loaded")]
    ConfigError {
        command: String,
        code: i32,
        stderr: String,
    },
    #[error("`{command}` did not finish within {timeout:?} and was killed; the state change may still complete, events2 will show it")]
    Timeout { command: String, timeout: Duration },
    #[error("`{command}` failed (exit {code:?}): {stderr}")]
    Failed {
        command: String,
        code: Option<i32>,
        stderr: String,
    },
    #[error("could not run `{command}`: {source}; check the drbdsetup path")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` printed JSON that does not parse: {source}")]
    BadStatus {
        command: String,
        #[source]
        source: serde_json::Error,
    },
}

impl DrbdsetupError {
    /// How the election sees this error.
    pub fn outcome(&self) -> CommandOutcome {
        match self {
            DrbdsetupError::Refused { .. } => CommandOutcome::Lost,
            DrbdsetupError::ConfigError { .. } => CommandOutcome::ConfigError,
            DrbdsetupError::Timeout { .. } => CommandOutcome::TimedOut,
            DrbdsetupError::Failed { .. }
            | DrbdsetupError::Spawn { .. }
            | DrbdsetupError::BadStatus { .. } => CommandOutcome::Failed,
        }
    }
}

/// The election's view of a command result.
pub fn outcome<T>(result: &Result<T, DrbdsetupError>) -> CommandOutcome {
    match result {
        Ok(_) => CommandOutcome::Done,
        Err(e) => e.outcome(),
    }
}

/// Which DRBD kernel generation drbdsetup talks to: it decides how the
/// state-change commands name the resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelGeneration {
    /// DRBD 9: `drbdsetup primary <resource>`.
    V9,
    /// DRBD 8.4: `drbdsetup primary <minor>` (one volume per resource; the
    /// minor of its device), no `events2 --full`, no `secondary --force`.
    V84 { minor: u32 },
}

impl KernelGeneration {
    /// Parse the `version:` line of `/proc/drbd` (`version: 8.4.11 (api:1/...`).
    /// `Some(true)` for an 8.x kernel, `Some(false)` for 9 or later.
    pub fn is_84_proc_drbd(text: &str) -> Option<bool> {
        let line = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("version:"))?;
        let version = line.split_whitespace().next()?;
        let major: u32 = version.split('.').next()?.parse().ok()?;
        Some(major < 9)
    }

    /// The loaded kernel module's generation, from `/proc/drbd`; `None` when
    /// it cannot be read (module not loaded) or does not parse.
    pub fn detect(minor: Option<u32>) -> Option<Self> {
        let text = std::fs::read_to_string("/proc/drbd").ok()?;
        Some(match Self::is_84_proc_drbd(&text)? {
            true => KernelGeneration::V84 {
                minor: minor.unwrap_or(0),
            },
            false => KernelGeneration::V9,
        })
    }
}

/// How to run drbdsetup.
#[derive(Debug, Clone)]
pub struct Drbdsetup {
    /// Path of the binary (tests use a fake script).
    pub binary: PathBuf,
    /// Limit for one-shot commands. `primary` may legitimately take a few
    /// seconds (twopc retries, waiting for a lost peer to be noticed).
    pub timeout: Duration,
    /// Run `events2` with `--full` (then the model must use
    /// `ChangeLines::Full`). Ignored for 8.4, which has no `--full`.
    pub events2_full: bool,
    /// How `primary`/`secondary` name the resource.
    pub kernel: KernelGeneration,
}

impl Default for Drbdsetup {
    fn default() -> Self {
        Drbdsetup {
            binary: PathBuf::from("drbdsetup"),
            timeout: Duration::from_secs(10),
            events2_full: true,
            kernel: KernelGeneration::V9,
        }
    }
}

impl Drbdsetup {
    pub fn new(binary: impl Into<PathBuf>, timeout: Duration) -> Self {
        Drbdsetup {
            binary: binary.into(),
            timeout,
            ..Drbdsetup::default()
        }
    }

    fn command_line(&self, args: &[&str]) -> String {
        let mut line = self.binary.display().to_string();
        for arg in args {
            line.push(' ');
            line.push_str(arg);
        }
        line
    }

    /// Run one command; return stdout on exit 0.
    async fn run(&self, args: &[&str]) -> Result<Vec<u8>, DrbdsetupError> {
        let command = self.command_line(args);
        let child = Command::new(&self.binary)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| DrbdsetupError::Spawn {
                command: command.clone(),
                source,
            })?;
        // On timeout the future, and with it the child, is dropped: killed.
        let output = match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Err(_) => {
                tracing::warn!(%command, timeout = ?self.timeout, "drbdsetup timed out, killed");
                return Err(DrbdsetupError::Timeout {
                    command,
                    timeout: self.timeout,
                });
            }
            Ok(Err(source)) => return Err(DrbdsetupError::Spawn { command, source }),
            Ok(Ok(output)) => output,
        };
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        let Some(code) = output.status.code() else {
            return Err(DrbdsetupError::Failed {
                command,
                code: None,
                stderr: format!("killed by a signal ({}) {stderr}", output.status),
            });
        };
        match classify_exit(code) {
            ExitClass::Done => Ok(output.stdout),
            ExitClass::Refused => {
                tracing::info!(%command, code, %stderr, "state change refused");
                Err(DrbdsetupError::Refused {
                    command,
                    code,
                    stderr,
                })
            }
            ExitClass::ConfigError => {
                tracing::error!(%command, code, %stderr, "drbdsetup configuration/environment error");
                Err(DrbdsetupError::ConfigError {
                    command,
                    code,
                    stderr,
                })
            }
            ExitClass::Other => {
                tracing::error!(%command, code, %stderr, "drbdsetup failed");
                Err(DrbdsetupError::Failed {
                    command,
                    code: Some(code),
                    stderr,
                })
            }
        }
    }

    /// The arguments of a state change of `resource`: `primary r0` (DRBD 9)
    /// or `primary 0` (8.4, the minor).
    pub fn state_change_args(&self, change: StateChange, resource: &str) -> Vec<String> {
        let target = match self.kernel {
            KernelGeneration::V9 => resource.to_owned(),
            KernelGeneration::V84 { minor } => minor.to_string(),
        };
        let words: &[&str] = match change {
            StateChange::Primary => &["primary"],
            StateChange::Secondary => &["secondary"],
            StateChange::SecondaryForce => &["secondary", "--force"],
        };
        words
            .iter()
            .map(|w| (*w).to_owned())
            .chain([target])
            .collect()
    }

    async fn state_change(
        &self,
        change: StateChange,
        resource: &str,
    ) -> Result<(), DrbdsetupError> {
        let args = self.state_change_args(change, resource);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run(&args).await.map(drop)
    }

    /// `drbdsetup primary <resource>` (never `--force`).
    pub async fn primary(&self, resource: &str) -> Result<(), DrbdsetupError> {
        self.state_change(StateChange::Primary, resource).await
    }

    /// `drbdsetup secondary <resource>`.
    pub async fn secondary(&self, resource: &str) -> Result<(), DrbdsetupError> {
        self.state_change(StateChange::Secondary, resource).await
    }

    /// `drbdsetup secondary --force <resource>`: DRBD fails the I/O of
    /// remaining openers so the demotion goes through (DRBD 9 only: 8.4's
    /// drbdsetup rejects the option, and the caller escalates).
    pub async fn secondary_force(&self, resource: &str) -> Result<(), DrbdsetupError> {
        self.state_change(StateChange::SecondaryForce, resource)
            .await
    }

    /// `drbdsetup status <resource> --json`.
    pub async fn status(&self, resource: &str) -> Result<Vec<ResourceStatus>, DrbdsetupError> {
        let args = ["status", resource, "--json"];
        let stdout = self.run(&args).await?;
        parse_status(&String::from_utf8_lossy(&stdout)).map_err(|source| {
            DrbdsetupError::BadStatus {
                command: self.command_line(&args),
                source,
            }
        })
    }

    /// Start `drbdsetup events2 [--full] <resource>`.
    pub fn events2(&self, resource: &str) -> Result<Events2Child, DrbdsetupError> {
        let mut args = vec!["events2"];
        if self.events2_full && self.kernel == KernelGeneration::V9 {
            args.push("--full");
        }
        args.push(resource);
        let command = self.command_line(&args);
        let mut child = Command::new(&self.binary)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            // Its complaints belong in our log stream (journal).
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| DrbdsetupError::Spawn {
                command: command.clone(),
                source,
            })?;
        let stdout = child.stdout.take().expect("stdout is piped");
        Ok(Events2Child {
            command,
            lines: BufReader::new(stdout).lines(),
            _child: child,
        })
    }
}

/// The state changes the election runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateChange {
    Primary,
    Secondary,
    SecondaryForce,
}

/// A running `drbdsetup events2`; killed when dropped.
#[derive(Debug)]
pub struct Events2Child {
    command: String,
    lines: Lines<BufReader<ChildStdout>>,
    _child: Child,
}

impl Events2Child {
    /// The next parsed line; `Ok(None)` when the child closed its output.
    pub async fn next_line(&mut self) -> Result<Option<Line>, DrbdsetupError> {
        match self.lines.next_line().await {
            Ok(line) => Ok(line.map(|l| parse_line(&l))),
            Err(source) => Err(DrbdsetupError::Spawn {
                command: self.command.clone(),
                source,
            }),
        }
    }
}

/// Exponential backoff for respawning `events2`.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            next: initial,
        }
    }

    /// The delay to wait now; the following one doubles, up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// What [`Events2Feed::next`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedItem {
    /// A new `events2` child started: reset the model, it replays the state.
    Started,
    Line(Line),
}

/// `events2` for one resource, respawned with backoff whenever it ends.
/// The respawn delay starts short (a lost event stream delays failover) and
/// resets once a child delivered a complete initial dump.
#[derive(Debug)]
pub struct Events2Feed {
    drbdsetup: Drbdsetup,
    resource: String,
    child: Option<Events2Child>,
    backoff: Backoff,
    started_once: bool,
}

impl Events2Feed {
    pub fn new(drbdsetup: Drbdsetup, resource: impl Into<String>) -> Self {
        Events2Feed {
            drbdsetup,
            resource: resource.into(),
            child: None,
            backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(5)),
            started_once: false,
        }
    }

    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The next item. Never ends: errors are logged and lead to a respawn.
    pub async fn next(&mut self) -> FeedItem {
        loop {
            let Some(child) = self.child.as_mut() else {
                if self.started_once {
                    tokio::time::sleep(self.backoff.next_delay()).await;
                }
                self.started_once = true;
                match self.drbdsetup.events2(&self.resource) {
                    Ok(child) => {
                        self.child = Some(child);
                        return FeedItem::Started;
                    }
                    Err(e) => {
                        tracing::error!(resource = %self.resource, "events2 did not start: {e}");
                        continue;
                    }
                }
            };
            match child.next_line().await {
                Ok(Some(line)) => {
                    if line == Line::EndOfInitialState {
                        self.backoff.reset();
                    }
                    return FeedItem::Line(line);
                }
                Ok(None) => {
                    tracing::warn!(resource = %self.resource, "events2 ended; respawning");
                    self.child = None;
                }
                Err(e) => {
                    tracing::warn!(resource = %self.resource, "events2 read failed: {e}; respawning");
                    self.child = None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;
    use std::time::Instant;

    /// A fake drbdsetup: behaviour chosen by the resource name, every call
    /// appended to `calls` in its directory.
    fn fake_drbdsetup(dir: &Path) -> PathBuf {
        let fixtures = format!("{}/../../shared/fixtures/drbd", env!("CARGO_MANIFEST_DIR"));
        let calls = dir.join("calls");
        let script = format!(
            r#"#!/bin/sh
[ -n "$FAKE_DRBDSETUP_PROBE" ] && exit 0
echo "$*" >> '{calls}'
for last; do :; done
case "$1:$last" in
  events2:once) cat '{fixtures}/events2-v84-primary-now.txt' ;;
  events2:*) cat '{fixtures}/events2-v84-secondary-now.txt' '{fixtures}/events2-v84-failover-stream.txt'; exec sleep 30 ;;
  status:*) if [ "$2" = ok ]; then cat '{fixtures}/status-v9.json'; else echo '['; echo ']'; echo "$2: No such resource" >&2; exit 10; fi ;;
  *:ok) exit 0 ;;
  primary:7) echo '0: State change failed: (-1) Multiple primaries not allowed by config' >&2; exit 11 ;;
  *:lost) echo 'lost: State change failed: (-1) Multiple primaries not allowed by config' >&2; exit 11 ;;
  *:noquorum) printf 'r0: State change failed: (-25) No quorum\nadditional info from kernel:\n1 of 3 nodes visible, need 2 for quorum\n' >&2; exit 11 ;;
  *:missing) echo 'missing: Failure: (158) Unknown resource' >&2; exit 10 ;;
  *:odd) exit 3 ;;
  *:hang) exec sleep 30 ;;
esac
"#,
            calls = calls.display()
        );
        let path = dir.join("drbdsetup");
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        wait_until_executable(&path);
        path
    }

    /// Tests run in parallel threads: a child another test forks while we
    /// write the script inherits our write descriptor until it execs, and
    /// running the script meanwhile fails with ETXTBSY. Once one run
    /// succeeds nobody can hold it open for writing any more.
    fn wait_until_executable(path: &Path) {
        for _ in 0..500 {
            match std::process::Command::new(path)
                .env("FAKE_DRBDSETUP_PROBE", "1")
                .status()
            {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Ok(st) if st.success() => return,
                other => panic!("fake drbdsetup {} does not run: {other:?}", path.display()),
            }
        }
        panic!(
            "fake drbdsetup {} stayed busy (ETXTBSY) for 5 s",
            path.display()
        );
    }

    fn setup() -> (tempfile::TempDir, Drbdsetup) {
        let dir = tempfile::tempdir().unwrap();
        let bin = fake_drbdsetup(dir.path());
        (dir, Drbdsetup::new(bin, Duration::from_secs(5)))
    }

    fn calls(dir: &tempfile::TempDir) -> String {
        std::fs::read_to_string(dir.path().join("calls")).unwrap_or_default()
    }

    #[test]
    fn exit_code_classes() {
        assert_eq!(classify_exit(0), ExitClass::Done);
        assert_eq!(classify_exit(11), ExitClass::Refused);
        assert_eq!(classify_exit(17), ExitClass::Refused);
        assert_eq!(classify_exit(10), ExitClass::ConfigError);
        assert_eq!(classify_exit(20), ExitClass::ConfigError);
        assert_eq!(classify_exit(121), ExitClass::ConfigError);
        assert_eq!(classify_exit(1), ExitClass::Other);
    }

    /// Every `# exit N` in state-change-errors.txt classifies as its message says.
    #[test]
    fn state_change_errors_fixture() {
        let text = crate::events2::tests::fixture("state-change-errors.txt");
        let mut message = String::new();
        let mut checked = 0;
        for line in text.lines() {
            if let Some(code) = line.strip_prefix("# exit ") {
                let class = classify_exit(code.trim().parse().unwrap());
                let expected = if message.contains("Failure: (") {
                    ExitClass::ConfigError
                } else {
                    ExitClass::Refused
                };
                assert_eq!(class, expected, "{message}");
                message.clear();
                checked += 1;
            } else if !line.starts_with('#') {
                message.push_str(line);
            }
        }
        assert_eq!(checked, 8);
        let refused = crate::events2::tests::fixture("primary-refused-v84.txt");
        let code: i32 = refused.trim().rsplit(' ').next().unwrap().parse().unwrap();
        assert_eq!(classify_exit(code), ExitClass::Refused);
    }

    #[tokio::test]
    async fn primary_done_lost_config_other() {
        let (dir, drbd) = setup();
        drbd.primary("ok").await.unwrap();
        let lost = drbd.primary("lost").await.unwrap_err();
        assert_eq!(lost.outcome(), CommandOutcome::Lost);
        assert!(lost.to_string().contains("Multiple primaries"), "{lost}");
        assert!(lost.to_string().contains("primary lost"), "{lost}");
        let noq = drbd.primary("noquorum").await.unwrap_err();
        assert_eq!(noq.outcome(), CommandOutcome::Lost);
        assert!(noq.to_string().contains("need 2 for quorum"), "{noq}");
        let missing = drbd.primary("missing").await.unwrap_err();
        assert_eq!(missing.outcome(), CommandOutcome::ConfigError);
        assert!(missing.to_string().contains("Unknown resource"));
        let odd = drbd.secondary("odd").await.unwrap_err();
        assert!(matches!(odd, DrbdsetupError::Failed { code: Some(3), .. }));
        assert_eq!(outcome(&drbd.secondary("ok").await), CommandOutcome::Done);
        drbd.secondary_force("ok").await.unwrap();
        let calls = calls(&dir);
        assert!(calls.contains("primary ok\n"));
        assert!(calls.contains("secondary --force ok\n"));
    }

    #[test]
    fn state_change_names_resource_on_9_and_minor_on_84() {
        let mut drbd = Drbdsetup::new("drbdsetup", Duration::from_secs(1));
        let line = |d: &Drbdsetup, c| d.state_change_args(c, "hb").join(" ");
        assert_eq!(line(&drbd, StateChange::Primary), "primary hb");
        assert_eq!(
            line(&drbd, StateChange::SecondaryForce),
            "secondary --force hb"
        );
        drbd.kernel = KernelGeneration::V84 { minor: 3 };
        assert_eq!(line(&drbd, StateChange::Primary), "primary 3");
        assert_eq!(line(&drbd, StateChange::Secondary), "secondary 3");
        assert_eq!(
            line(&drbd, StateChange::SecondaryForce),
            "secondary --force 3"
        );
    }

    #[test]
    fn proc_drbd_version_line() {
        let v84 = "version: 8.4.11 (api:1/proto:86-101)\nsrcversion: F73C670A7EC572DB9CF3E5B \n 0: cs:Connected ro:Primary/Secondary ds:UpToDate/UpToDate C r-----\n";
        assert_eq!(KernelGeneration::is_84_proc_drbd(v84), Some(true));
        let v9 = "version: 9.2.12 (api:2/proto:86-122)\nGIT-hash: 1234\nTransports (api:21): tcp (9.2.12)\n";
        assert_eq!(KernelGeneration::is_84_proc_drbd(v9), Some(false));
        assert_eq!(KernelGeneration::is_84_proc_drbd("garbage"), None);
        assert_eq!(KernelGeneration::is_84_proc_drbd(""), None);
    }

    /// 8.4: the minor on the command line, the same exit-code classes, and
    /// `events2` without `--full` even when asked for.
    #[tokio::test]
    async fn drbd84_commands_address_the_minor() {
        let (dir, mut drbd) = setup();
        drbd.kernel = KernelGeneration::V84 { minor: 7 };
        let lost = drbd.primary("hb").await.unwrap_err();
        assert_eq!(lost.outcome(), CommandOutcome::Lost);
        assert!(lost.to_string().contains("primary 7"), "{lost}");
        drbd.secondary("hb").await.unwrap();
        let mut child = drbd.events2("hb").unwrap();
        child.next_line().await.unwrap().expect("a line");
        drop(child);
        let calls = calls(&dir);
        assert!(calls.contains("primary 7\n"), "{calls}");
        assert!(calls.contains("secondary 7\n"), "{calls}");
        assert!(calls.contains("events2 hb\n"), "{calls}");
        assert!(!calls.contains("primary hb"), "{calls}");
    }

    #[tokio::test]
    async fn hang_hits_timeout_and_is_killed() {
        let (_dir, mut drbd) = setup();
        drbd.timeout = Duration::from_millis(300);
        let start = Instant::now();
        let err = drbd.primary("hang").await.unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(5));
        assert_eq!(err.outcome(), CommandOutcome::TimedOut);
        assert!(err.to_string().contains("primary hang"));
    }

    #[tokio::test]
    async fn missing_binary_is_a_spawn_error() {
        let drbd = Drbdsetup::new("/nonexistent/drbdsetup", Duration::from_secs(1));
        let err = drbd.primary("r0").await.unwrap_err();
        assert!(matches!(err, DrbdsetupError::Spawn { .. }));
        assert_eq!(err.outcome(), CommandOutcome::Failed);
    }

    #[tokio::test]
    async fn status_json() {
        let (_dir, drbd) = setup();
        let statuses = drbd.status("ok").await.unwrap();
        assert_eq!(statuses[0].name, "1-single-0");
        let err = drbd.status("nope").await.unwrap_err();
        assert_eq!(err.outcome(), CommandOutcome::ConfigError);
        assert!(err.to_string().contains("No such resource"));
    }

    #[tokio::test]
    async fn events2_streams_fixture_into_model() {
        let (dir, drbd) = setup();
        let mut child = drbd.events2("r0").unwrap();
        let mut model =
            crate::model::ResourceModel::new("r0", crate::model::ModelOptions::default());
        let mut changes = Vec::new();
        // 5 dump lines + 2 stream lines; the child then hangs (a live stream).
        for _ in 0..7 {
            let line = child.next_line().await.unwrap().expect("a line");
            changes.extend(model.apply(&line));
        }
        assert!(changes.last().unwrap().new.role == crate::events2::Role::Primary);
        assert!(calls(&dir).contains("events2 --full r0"));
        drop(child); // kills the `sleep`
    }

    #[tokio::test]
    async fn feed_respawns_after_eof() {
        let (_dir, drbd) = setup();
        let mut feed = Events2Feed::new(drbd, "once").with_backoff(Backoff::new(
            Duration::from_millis(10),
            Duration::from_millis(50),
        ));
        let mut items = Vec::new();
        while items.iter().filter(|i| **i == FeedItem::Started).count() < 2 {
            items.push(feed.next().await);
        }
        // Started, 5 lines (ending with `exists -`), EOF, Started again.
        assert_eq!(items.len(), 7, "{items:?}");
        assert_eq!(items[5], FeedItem::Line(Line::EndOfInitialState));
        assert_eq!(items[6], FeedItem::Started);
    }

    #[test]
    fn backoff_doubles_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(200), Duration::from_secs(1));
        let seen: Vec<_> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(seen, vec![200, 400, 800, 1000, 1000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(200));
    }
}
