//! The serving gate: turns the arbiter's grants into "may this request touch
//! the disk", owns the open disk while serving, and runs step-downs.
//!
//! The disk is opened only after a `Serving` grant and closed before the
//! arbiter is told to release the role, so the descriptor is never used for
//! I/O without the role.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use heartbeat_wire::Role;
use tokio::sync::{mpsc, watch};

use crate::arbiter::{Grant, StepDownCause, StepDownRequest};
use crate::disk::Disk;

/// Opens the disk for I/O once the role is granted.
pub type DiskOpener = Arc<dyn Fn() -> anyhow::Result<Arc<dyn Disk>> + Send + Sync>;

#[derive(Clone)]
pub enum GateState {
    Serving {
        epoch: u64,
        disk: Arc<dyn Disk>,
    },
    NotServing {
        role: Role,
        /// The last epoch this server held (0 if never).
        epoch: u64,
        reason: Arc<str>,
        serving_url: Option<Arc<str>>,
    },
}

impl GateState {
    pub fn role(&self) -> Role {
        match self {
            GateState::Serving { .. } => Role::Serving,
            GateState::NotServing { role, .. } => *role,
        }
    }

    pub fn epoch(&self) -> u64 {
        match self {
            GateState::Serving { epoch, .. } | GateState::NotServing { epoch, .. } => *epoch,
        }
    }
}

pub struct Gate {
    state: RwLock<GateState>,
    /// Epoch currently allowed to do I/O; 0 when not serving. Checked again on
    /// the connection thread right before each disk call.
    serving_epoch: AtomicU64,
    /// Highest epoch we stepped down from: a grant at or below it is stale.
    fenced_epoch: AtomicU64,
    step_down_tx: mpsc::UnboundedSender<StepDownRequest>,
    drain_timeout: Duration,
    pub role_changes: AtomicU64,
    pub last_role_change_unix_ms: AtomicU64,
    /// Set once the arbiter's first real decision has been applied.
    pub settled: std::sync::atomic::AtomicBool,
    /// The main runtime: step-downs are started from connection threads and
    /// the I/O watchdog, whose drain task must outlive them.
    runtime: tokio::runtime::Handle,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Gate {
    /// Call inside the main runtime (its handle is kept for step-downs).
    pub fn new(
        step_down_tx: mpsc::UnboundedSender<StepDownRequest>,
        drain_timeout: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            state: RwLock::new(GateState::NotServing {
                role: Role::Standby,
                epoch: 0,
                reason: "starting: the arbiter has not granted the role yet".into(),
                serving_url: None,
            }),
            serving_epoch: AtomicU64::new(0),
            fenced_epoch: AtomicU64::new(0),
            step_down_tx,
            drain_timeout,
            role_changes: AtomicU64::new(0),
            last_role_change_unix_ms: AtomicU64::new(0),
            settled: std::sync::atomic::AtomicBool::new(false),
            runtime: tokio::runtime::Handle::current(),
        })
    }

    pub fn snapshot(&self) -> GateState {
        self.state.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether I/O under `epoch` is still allowed (cheap; call it right
    /// before touching the disk).
    pub fn may_do_io(&self, epoch: u64) -> bool {
        epoch != 0 && self.serving_epoch.load(Ordering::Acquire) == epoch
    }

    fn set(&self, new: GateState) -> GateState {
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        if st.role() != new.role() {
            self.role_changes.fetch_add(1, Ordering::Relaxed);
            self.last_role_change_unix_ms
                .store(unix_ms(), Ordering::Relaxed);
        }
        self.serving_epoch.store(
            match &new {
                GateState::Serving { epoch, .. } => *epoch,
                _ => 0,
            },
            Ordering::Release,
        );
        std::mem::replace(&mut *st, new)
    }

    /// Stop serving under `epoch` now, then (off the caller's path) wait for
    /// in-flight I/O, close the disk, and ask the arbiter to release the role.
    /// Idempotent; a call for an epoch we no longer serve does nothing.
    pub fn step_down(self: &Arc<Self>, epoch: u64, cause: StepDownCause) {
        let old = {
            let st = self.state.read().unwrap_or_else(|e| e.into_inner());
            match &*st {
                GateState::Serving { epoch: e, .. } if *e == epoch => {}
                _ => return,
            }
            drop(st);
            self.fenced_epoch.fetch_max(epoch, Ordering::AcqRel);
            self.set(GateState::NotServing {
                role: Role::Stepping,
                epoch,
                reason: format!("stepping down because {cause}").into(),
                serving_url: None,
            })
        };
        let GateState::Serving { disk, .. } = old else {
            return; // raced with another step-down
        };
        tracing::error!(disk = disk.name(), epoch, %cause, "stepping down: no more I/O from this server; asking the arbiter to release the role");
        let gate = Arc::clone(self);
        self.runtime.spawn(async move {
            gate.drain_and_close(disk).await;
            let _ = gate.step_down_tx.send(StepDownRequest { epoch, cause });
        });
    }

    /// Stop serving for shutdown; returns once the disk is closed (or the
    /// drain timed out).
    pub async fn close_for_shutdown(&self) {
        let old = self.set(GateState::NotServing {
            role: Role::Stepping,
            epoch: self.snapshot().epoch(),
            reason: "shutting down".into(),
            serving_url: None,
        });
        if let GateState::Serving { epoch, disk } = old {
            self.fenced_epoch.fetch_max(epoch, Ordering::AcqRel);
            self.drain_and_close(disk).await;
        }
    }

    /// Wait until no request holds the disk any more (bounded), then drop it.
    async fn drain_and_close(&self, disk: Arc<dyn Disk>) {
        let started = Instant::now();
        while Arc::strong_count(&disk) > 1 {
            if started.elapsed() > self.drain_timeout {
                tracing::error!(
                    disk = disk.name(),
                    in_flight = Arc::strong_count(&disk) - 1,
                    "disk operations still in flight after {:?}; closing our handle anyway (the descriptor closes when they finish; the process exits if they never do)",
                    self.drain_timeout
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        drop(disk);
    }

    /// Follow the arbiter's grants until the channel closes.
    pub async fn follow(self: Arc<Self>, mut grants: watch::Receiver<Grant>, open: DiskOpener) {
        loop {
            let grant = grants.borrow_and_update().clone();
            let decided =
                !matches!(&grant, Grant::Standby { reason, .. } if reason == crate::STARTING);
            self.apply(grant, &open).await;
            if decided {
                self.settled.store(true, Ordering::Release);
            }
            if grants.changed().await.is_err() {
                return;
            }
        }
    }

    async fn apply(self: &Arc<Self>, grant: Grant, open: &DiskOpener) {
        match grant {
            Grant::Serving { epoch } => {
                if epoch <= self.fenced_epoch.load(Ordering::Acquire) {
                    return; // the arbiter has not processed our step-down yet
                }
                if let GateState::Serving { epoch: e, .. } = self.snapshot() {
                    if e == epoch {
                        return;
                    }
                }
                let open = Arc::clone(open);
                let opened = tokio::task::spawn_blocking(move || open())
                    .await
                    .map_err(|e| anyhow::anyhow!("disk open panicked: {e}"))
                    .and_then(|r| r);
                match opened {
                    Ok(disk) => {
                        tracing::info!(disk = disk.name(), epoch, "role granted: serving");
                        crate::liveness::notify_status(&format!("serving epoch {epoch}"));
                        self.set(GateState::Serving { epoch, disk });
                    }
                    Err(e) => {
                        let msg = format!("{e:#}");
                        tracing::error!(epoch, error = %msg, "role granted but the disk cannot be opened; stepping down");
                        self.fenced_epoch.fetch_max(epoch, Ordering::AcqRel);
                        let _ = self.step_down_tx.send(StepDownRequest {
                            epoch,
                            cause: StepDownCause::OpenFailed(msg),
                        });
                    }
                }
            }
            Grant::Standby {
                reason,
                serving_url,
            } => {
                let epoch = self.snapshot().epoch();
                crate::liveness::notify_status(&format!("standby: {reason}"));
                let old = self.set(GateState::NotServing {
                    role: Role::Standby,
                    epoch,
                    reason: reason.into(),
                    serving_url: serving_url.map(Into::into),
                });
                if let GateState::Serving { epoch, disk } = old {
                    tracing::warn!(
                        disk = disk.name(),
                        epoch,
                        "the arbiter revoked the role: standby"
                    );
                    self.fenced_epoch.fetch_max(epoch, Ordering::AcqRel);
                    self.drain_and_close(disk).await;
                }
            }
        }
    }
}
