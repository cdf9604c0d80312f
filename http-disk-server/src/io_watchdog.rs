//! The I/O deadline, enforced from outside the call.
//!
//! Every client connection has its own thread and calls the disk inline: one
//! thread wake-up per request instead of three (the hand-off to a blocking
//! pool and back cost ~110 µs per write on a 2-vCPU VM; BENCHMARKS.md). A
//! call then blocks its thread for as long as the device hangs, so nothing on
//! that thread can notice the deadline. This watchdog, a plain thread that
//! depends on no async runtime, scans the calls in flight. For a call past
//! the deadline it steps the server down (no new I/O, the arbiter releases
//! the role), shuts the connection's socket so that its client fails over at
//! once instead of waiting, and withholds the systemd watchdog ping. A call
//! still stuck long after that exits the process with [`EXIT_DISK_STUCK`],
//! unless in debug mode. Note what that exit can and cannot do: a thread in
//! uninterruptible sleep keeps the process a zombie holding its descriptors
//! (port, disk, lock) until the call returns; the exit stops it from serving
//! and tells the service manager, which restarts it once the kernel lets go.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::arbiter::StepDownCause;
use crate::gate::Gate;
use crate::liveness::DiskHealth;

/// Exit code when a disk operation is stuck in the kernel for good: the
/// service manager restarts us once the kernel releases the process.
pub const EXIT_DISK_STUCK: i32 = 75;

/// The socket of the connection a call serves. Shut down (not closed: the
/// connection's thread still owns the descriptor) when the call overruns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientSocket(pub RawFd);

#[derive(Debug, Clone)]
pub struct WatchdogConfig {
    /// Longest a disk call may take.
    pub deadline: Duration,
    /// A call still running this long after its deadline exits the process.
    pub stuck_exit_after: Duration,
    /// `--debug-no-fence`: log the stuck-disk exit instead of exiting.
    pub debug_no_fence: bool,
    /// The disk, for messages.
    pub device: String,
}

/// One disk call in flight.
#[derive(Debug)]
struct Call {
    op: &'static str,
    offset: u64,
    epoch: u64,
    started: Instant,
    socket: Option<ClientSocket>,
    overdue: bool,
    stuck_reported: bool,
}

/// What a scan decided for one call; carried out by [`IoWatchdog::scan`]'s
/// caller so that the decisions can be tested without side effects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Past the deadline: step down, shut the socket, withhold the watchdog.
    Overdue {
        op: &'static str,
        offset: u64,
        epoch: u64,
        socket: Option<ClientSocket>,
    },
    /// Stuck for `stuck_exit_after` past the deadline: exit (or log, in debug mode).
    Stuck { op: &'static str, offset: u64 },
}

pub struct IoWatchdog {
    cfg: WatchdogConfig,
    calls: Mutex<Registry>,
    gate: Arc<Gate>,
    health: Arc<DiskHealth>,
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    calls: HashMap<u64, Call>,
}

/// A registered call; [`CallTicket::finish`] (or drop) unregisters it.
#[must_use = "finish the ticket when the disk call returns"]
pub struct CallTicket<'a> {
    watchdog: &'a IoWatchdog,
    id: u64,
    done: bool,
}

impl IoWatchdog {
    pub fn new(cfg: WatchdogConfig, gate: Arc<Gate>, health: Arc<DiskHealth>) -> Arc<Self> {
        Arc::new(Self {
            cfg,
            calls: Mutex::default(),
            gate,
            health,
        })
    }

    pub fn deadline(&self) -> Duration {
        self.cfg.deadline
    }

    /// Register a disk call about to start under `epoch`.
    pub fn begin(
        &self,
        op: &'static str,
        offset: u64,
        epoch: u64,
        socket: Option<ClientSocket>,
    ) -> CallTicket<'_> {
        let mut reg = self.lock();
        let id = reg.next_id;
        reg.next_id += 1;
        reg.calls.insert(
            id,
            Call {
                op,
                offset,
                epoch,
                started: Instant::now(),
                socket,
                overdue: false,
                stuck_reported: false,
            },
        );
        CallTicket {
            watchdog: self,
            id,
            done: false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Unregister; returns whether the call overran its deadline.
    fn end(&self, id: u64) -> bool {
        let call = self.lock().calls.remove(&id);
        let overdue = call.is_some_and(|c| c.overdue);
        if overdue {
            self.health.overdue_ops.fetch_sub(1, Ordering::AcqRel);
        }
        overdue
    }

    /// Judge the calls in flight at `now`, marking what is decided so that
    /// each verdict is given once per call. Counts overdue calls in
    /// [`DiskHealth`] and shuts their sockets while the registry is locked
    /// (the descriptor cannot be closed and reused meanwhile: its owner is
    /// blocked in the call, and unregistering needs the lock).
    pub fn scan(&self, now: Instant) -> Vec<Verdict> {
        let mut verdicts = Vec::new();
        let mut reg = self.lock();
        for call in reg.calls.values_mut() {
            let ran = now.saturating_duration_since(call.started);
            if ran > self.cfg.deadline && !call.overdue {
                call.overdue = true;
                self.health.overdue_ops.fetch_add(1, Ordering::AcqRel);
                if let Some(ClientSocket(fd)) = call.socket {
                    // SAFETY: shutdown(2) on a descriptor that stays open
                    // while the registry lock is held (see above); it only
                    // changes the socket's state.
                    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
                }
                verdicts.push(Verdict::Overdue {
                    op: call.op,
                    offset: call.offset,
                    epoch: call.epoch,
                    socket: call.socket,
                });
            }
            if ran > self.cfg.deadline + self.cfg.stuck_exit_after && !call.stuck_reported {
                call.stuck_reported = true;
                verdicts.push(Verdict::Stuck {
                    op: call.op,
                    offset: call.offset,
                });
            }
        }
        verdicts
    }

    /// Act on one verdict.
    fn enforce(&self, verdict: Verdict) {
        let (deadline, device) = (self.cfg.deadline, &self.cfg.device);
        match verdict {
            Verdict::Overdue {
                op, offset, epoch, ..
            } => {
                tracing::error!(device = %device, op, offset, epoch, "a disk {op} at offset {offset} did not finish within {deadline:?}; stepping down and closing its client's connection so that it retries on the next serving server");
                self.gate
                    .step_down(epoch, StepDownCause::IoHang { op, deadline });
            }
            Verdict::Stuck { op, offset } => {
                let stuck_after = self.cfg.stuck_exit_after;
                if self.cfg.debug_no_fence {
                    tracing::error!(device = %device, "DEBUG MODE: would exit with code {EXIT_DISK_STUCK} (a disk {op} at offset {offset} has been stuck in the kernel for {stuck_after:?} past its deadline); staying up, not serving until it finishes");
                } else {
                    tracing::error!(device = %device, "a disk {op} at offset {offset} has been stuck in the kernel for {stuck_after:?} past its deadline; exiting so that the service manager restarts this server");
                    std::process::exit(EXIT_DISK_STUCK);
                }
            }
        }
    }

    /// Start the scanning thread. It ticks at an eighth of the deadline
    /// (5-100 ms), so a step-down comes at most that late.
    pub fn spawn(self: &Arc<Self>) -> std::io::Result<()> {
        let tick =
            (self.cfg.deadline / 8).clamp(Duration::from_millis(5), Duration::from_millis(100));
        let watchdog = Arc::clone(self);
        std::thread::Builder::new()
            .name("io-watchdog".into())
            .spawn(move || loop {
                std::thread::sleep(tick);
                for verdict in watchdog.scan(Instant::now()) {
                    watchdog.enforce(verdict);
                }
            })?;
        Ok(())
    }
}

impl CallTicket<'_> {
    /// The call returned: unregister it. True when it overran its deadline
    /// (the server has stepped down; the answer must be an error).
    pub fn finish(mut self) -> bool {
        self.done = true;
        self.watchdog.end(self.id)
    }
}

impl Drop for CallTicket<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.watchdog.end(self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    fn watchdog(deadline_ms: u64, stuck_ms: u64) -> Arc<IoWatchdog> {
        let (tx, _rx) = mpsc::unbounded_channel();
        let gate = Gate::new(tx, Duration::from_millis(100));
        IoWatchdog::new(
            WatchdogConfig {
                deadline: Duration::from_millis(deadline_ms),
                stuck_exit_after: Duration::from_millis(stuck_ms),
                debug_no_fence: true,
                device: "test-disk".into(),
            },
            gate,
            Arc::new(DiskHealth::default()),
        )
    }

    #[tokio::test]
    async fn a_call_within_its_deadline_draws_no_verdict() {
        let wd = watchdog(100, 1000);
        let t = wd.begin("write", 512, 3, None);
        assert!(wd
            .scan(Instant::now() + Duration::from_millis(99))
            .is_empty());
        assert!(!t.finish(), "not overdue");
        assert!(wd.health.healthy());
        assert!(
            wd.scan(Instant::now() + Duration::from_secs(10)).is_empty(),
            "unregistered"
        );
    }

    #[tokio::test]
    async fn an_overdue_call_is_judged_once_then_stuck_once() {
        let wd = watchdog(100, 1000);
        let t = wd.begin("read", 4096, 7, Some(ClientSocket(-1)));
        let late = Instant::now() + Duration::from_millis(150);
        assert_eq!(
            wd.scan(late),
            vec![Verdict::Overdue {
                op: "read",
                offset: 4096,
                epoch: 7,
                socket: Some(ClientSocket(-1)),
            }]
        );
        assert!(
            !wd.health.healthy(),
            "an overdue call withholds the systemd watchdog"
        );
        assert!(wd.scan(late).is_empty(), "one verdict per call");
        let stuck = Instant::now() + Duration::from_millis(1200);
        assert_eq!(
            wd.scan(stuck),
            vec![Verdict::Stuck {
                op: "read",
                offset: 4096
            }]
        );
        assert!(wd.scan(stuck).is_empty());
        assert!(t.finish(), "the caller learns it overran");
        assert!(wd.health.healthy(), "health recovers when the call returns");
    }

    #[tokio::test]
    async fn a_dropped_ticket_unregisters_its_call() {
        let wd = watchdog(100, 1000);
        {
            let _t = wd.begin("write", 0, 1, None);
            assert_eq!(
                wd.scan(Instant::now() + Duration::from_millis(200)).len(),
                1
            );
        }
        assert!(wd.health.healthy());
        assert!(wd.scan(Instant::now() + Duration::from_secs(10)).is_empty());
    }

    #[tokio::test]
    async fn an_overdue_call_shuts_its_clients_socket() {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        let (ours, mut theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let wd = watchdog(50, 1000);
        let t = wd.begin("write", 0, 1, Some(ClientSocket(ours.as_raw_fd())));
        wd.scan(Instant::now() + Duration::from_millis(60));
        let mut buf = [0u8; 1];
        assert_eq!(
            theirs.read(&mut buf).unwrap(),
            0,
            "the client sees the end of the stream"
        );
        assert!(t.finish());
    }
}
