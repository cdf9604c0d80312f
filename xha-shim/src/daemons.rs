//! The workspace's daemons as child processes of `xha-shim demo`: found next
//! to the running executable, started in their own process group, watched
//! for their readiness lines, and killed (the whole group, SIGKILL) when
//! their handle drops, so no path out of the demo leaves one behind.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub const HTTP_DISK_SERVER: &str = "http-disk-server";
pub const NBD_HTTP_SERVER: &str = "nbd-http-server";

/// How long a daemon may take to print its readiness line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Where the daemon binaries are: beside the running `xha-shim`.
#[derive(Debug, Clone)]
pub struct DaemonBinaries {
    pub http_disk_server: PathBuf,
    pub nbd_http_server: PathBuf,
}

impl DaemonBinaries {
    /// Looks in `dir`, or in the running executable's directory.
    pub fn locate(dir: Option<&Path>) -> Result<Self> {
        let dir = match dir {
            Some(d) => d.to_path_buf(),
            None => std::env::current_exe()
                .context("cannot tell where the running xha-shim is (current_exe)")?
                .parent()
                .context("the running xha-shim has no parent directory")?
                .to_path_buf(),
        };
        let find = |name: &str| -> Result<PathBuf> {
            let p = dir.join(name);
            if p.is_file() {
                return Ok(p);
            }
            let release = dir.file_name().is_some_and(|n| n == "release");
            bail!(
                "{name} not found in {} (xha-shim runs the daemons that sit next to it; --bin-dir names another directory); \
                 build them with `cargo build {}--bins` in the workspace",
                dir.display(),
                if release { "--release " } else { "" }
            )
        };
        Ok(DaemonBinaries {
            http_disk_server: find(HTTP_DISK_SERVER)?,
            nbd_http_server: find(NBD_HTTP_SERVER)?,
        })
    }
}

/// A running daemon. Dropping it kills its process group and reaps it.
pub struct LocalDaemon {
    pub name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    pub log_path: PathBuf,
}

impl LocalDaemon {
    /// Starts `program args...` with stdout watched and stderr in `log_path`.
    pub fn spawn(name: &str, program: &Path, args: &[String], log_path: PathBuf) -> Result<Self> {
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating log {}", log_path.display()))?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            // Own group: a terminal's ^C reaches only xha-shim, which then
            // stops the daemons itself, in order.
            .process_group(0);
        // SAFETY: prctl is async-signal-safe; it makes the kernel kill the
        // daemon if xha-shim dies without cleaning up (e.g. SIGKILL).
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        // Keeps draining stdout after readiness so the daemon never blocks on
        // a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Ok(LocalDaemon {
            name: name.to_owned(),
            child,
            lines,
            log_path,
        })
    }

    /// Waits for a stdout line that satisfies `ready`.
    pub fn wait_ready(&mut self, timeout: Duration, ready: impl Fn(&str) -> bool) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(100)))
            {
                Ok(line) if ready(&line) => return Ok(()),
                Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    bail!(
                        "{} exited ({}) before it was ready; its log {}:\n{}",
                        self.name,
                        status.map_or("unknown status".into(), |s| s.to_string()),
                        self.log_path.display(),
                        self.log_tail()
                    );
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} was not ready within {timeout:?}; its log {}:\n{}",
                    self.name,
                    self.log_path.display(),
                    self.log_tail()
                );
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL to the daemon's process group, then reap.
    pub fn kill(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // SAFETY: plain kill(2) on the group this daemon leads.
            unsafe {
                libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL);
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }

    /// The last lines of the daemon's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for LocalDaemon {
    fn drop(&mut self) {
        self.kill();
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn note_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// SIGINT, SIGTERM and SIGHUP set a flag instead of ending the process, so
/// the demo can stop its daemons before it exits.
pub fn catch_interrupts() -> Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic.
        let r = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = note_interrupt as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error()).context("installing signal handlers");
        }
    }
    Ok(())
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("binding an ephemeral port on 127.0.0.1")?
        .port())
}
