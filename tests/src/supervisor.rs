//! A stand-in for the service manager's watchdog: the real sd_notify protocol
//! (`NOTIFY_SOCKET` datagrams `READY=1` / `WATCHDOG=1`, `WATCHDOG_USEC`), and
//! a kill when the pings stop, as systemd does with `WatchdogSec=`. systemd
//! does not run on the test machines, so the tests bring their own.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Receives notifications for one process and kills it on a missed watchdog.
pub struct WatchdogSupervisor {
    pub socket_path: PathBuf,
    pub timeout: Duration,
    state: Arc<Mutex<SupervisorState>>,
    stop: Arc<AtomicBool>,
}

#[derive(Debug, Default)]
pub struct SupervisorState {
    pub ready: bool,
    pub pings: u64,
    pub last_ping: Option<Instant>,
    pub pid: Option<i32>,
    /// When the supervisor killed the process for a missed watchdog.
    pub fired_at: Option<Instant>,
}

impl WatchdogSupervisor {
    pub fn new(dir: &Path, name: &str, timeout: Duration) -> std::io::Result<Self> {
        let socket_path = dir.join(format!("notify-{name}.sock"));
        let _ = std::fs::remove_file(&socket_path);
        let socket = UnixDatagram::bind(&socket_path)?;
        socket.set_read_timeout(Some(Duration::from_millis(20)))?;
        let state = Arc::new(Mutex::new(SupervisorState::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (thread_state, thread_stop) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !thread_stop.load(Ordering::Relaxed) {
                if let Ok(n) = socket.recv(&mut buf) {
                    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
                    let mut st = thread_state.lock().unwrap();
                    for line in msg.lines() {
                        match line {
                            "READY=1" => {
                                st.ready = true;
                                st.last_ping = Some(Instant::now());
                            }
                            "WATCHDOG=1" => {
                                st.pings += 1;
                                st.last_ping = Some(Instant::now());
                            }
                            _ => {}
                        }
                    }
                }
                let mut st = thread_state.lock().unwrap();
                if let (Some(pid), Some(last), None) = (st.pid, st.last_ping, st.fired_at) {
                    if last.elapsed() > timeout {
                        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                        st.fired_at = Some(Instant::now());
                    }
                }
            }
        });
        Ok(Self {
            socket_path,
            timeout,
            state,
            stop,
        })
    }

    /// Environment for the supervised process.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("NOTIFY_SOCKET", self.socket_path.display().to_string()),
            ("WATCHDOG_USEC", self.timeout.as_micros().to_string()),
        ]
    }

    /// Start watching `pid` (call after spawning it).
    pub fn watch(&self, pid: i32) {
        // Messages may already have arrived from this pid: keep them.
        let mut st = self.state.lock().unwrap();
        st.pid = Some(pid);
        st.fired_at = None;
        // Like systemd, the watchdog clock starts when the service starts.
        st.last_ping = Some(Instant::now());
    }

    pub fn snapshot(&self) -> (bool, u64, Option<Instant>) {
        let st = self.state.lock().unwrap();
        (st.ready, st.pings, st.fired_at)
    }
}

impl Drop for WatchdogSupervisor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
