//! Role arbitration: who may serve the volume right now.
//!
//! An [`Arbiter`] runs as one task for the life of the server. It decides
//! when this server holds the role and publishes its decision as a [`Grant`]
//! on a `watch` channel; the HTTP layer reads that channel and serves only
//! under a `Serving` grant. The contract, in order of a server's life:
//!
//! 1. **Start**: the server calls [`Arbiter::run`] once, on its own task,
//!    after the listener is bound. The arbiter starts in `Standby`.
//! 2. **Publish**: the arbiter sends `Grant::Serving { epoch }` once it holds
//!    the role (DRBD Primary, the file lock, ...), and `Grant::Standby` when
//!    it loses it. Every new `Serving` grant must carry an epoch strictly
//!    greater than any the arbiter published before, and should be greater
//!    than any other server's (the file arbiter keeps it in a sidecar file;
//!    DRBD can derive it from the cluster). The server opens the disk for I/O
//!    only after a `Serving` grant and closes it when the grant ends.
//! 3. **Step down**: when the server finds the disk hung (an operation past
//!    its deadline), failing (EIO), or itself frozen (the process was stopped
//!    longer than the watchdog allows), it first stops all I/O, waits (bounded)
//!    for operations in flight, closes its disk descriptor, and only then sends
//!    a [`StepDownRequest`] on [`ArbiterContext::step_down`]. The arbiter must
//!    then release the role (demote, unlock), publish `Standby`, and may
//!    compete again later (after a pause, so a healthier peer can win). A
//!    request whose epoch is older than the current grant is stale: ignore it.
//! 4. **Shutdown**: on SIGTERM the server stops accepting, drains, closes the
//!    disk, and then flips [`ArbiterContext::shutdown`] to `true`. The arbiter
//!    releases the role in an orderly way, publishes `Standby`, and returns.
//!    The server waits for it only a bounded time.
//!
//! Implementations: [`file`] (one machine, OFD lock), [`none`] (always
//! serving, for tests and benchmarks) and [`drbd`] (DRBD decides, through
//! the `linstor` crate's promoter).

pub mod drbd;
pub mod file;
pub mod none;

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

/// The arbiter's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// Not allowed to serve.
    Standby {
        /// Why, in words an operator understands (shown in 503 bodies and status).
        reason: String,
        /// Where the role is believed to be held, for the client's next try.
        serving_url: Option<String>,
    },
    /// Allowed to serve; see the module doc for the epoch rule.
    Serving { epoch: u64 },
}

impl Grant {
    pub fn standby(reason: impl Into<String>) -> Self {
        Grant::Standby {
            reason: reason.into(),
            serving_url: None,
        }
    }
}

/// Why the server gives up the role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepDownCause {
    /// A disk operation did not finish within the I/O deadline.
    IoHang {
        op: &'static str,
        deadline: Duration,
    },
    /// The disk reported a failure (EIO or similar).
    DeviceFailure(String),
    /// The disk could not be opened after the role was granted.
    OpenFailed(String),
    /// The process did not run for `stalled` (SIGSTOP, host freeze).
    Frozen { stalled: Duration },
}

impl fmt::Display for StepDownCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StepDownCause::IoHang { op, deadline } => {
                write!(
                    f,
                    "a disk {op} took longer than the {deadline:?} I/O deadline"
                )
            }
            StepDownCause::DeviceFailure(e) => write!(f, "the disk failed: {e}"),
            StepDownCause::OpenFailed(e) => write!(f, "the disk could not be opened: {e}"),
            StepDownCause::Frozen { stalled } => {
                write!(f, "this process was frozen for {stalled:?}")
            }
        }
    }
}

/// "Release the role you granted with `epoch`."
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepDownRequest {
    pub epoch: u64,
    pub cause: StepDownCause,
}

/// Everything an arbiter gets from the server.
pub struct ArbiterContext {
    /// Publish decisions here.
    pub grant: watch::Sender<Grant>,
    /// Step-down requests from the HTTP/disk layer (see the module doc).
    pub step_down: mpsc::UnboundedReceiver<StepDownRequest>,
    /// Becomes `true` when the server shuts down.
    pub shutdown: watch::Receiver<bool>,
    /// The URL other hosts use to reach this server.
    pub advertise_url: String,
    /// The disk (or device) the role is about.
    pub disk: PathBuf,
}

impl ArbiterContext {
    pub fn publish(&self, grant: Grant) {
        self.grant.send_if_modified(|g| {
            if *g == grant {
                false
            } else {
                *g = grant;
                true
            }
        });
    }
}

/// Resolves once shutdown is requested (immediately if it already was).
/// Takes the field, not the context, so it can sit in a `select!` beside
/// `ctx.step_down.recv()`.
pub async fn shutdown_signal(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

pub type ArbiterFuture = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// A way of deciding the role. See the module doc for the contract.
pub trait Arbiter: Send + 'static {
    /// Short name for status and metrics: `file`, `drbd`, `none`.
    fn name(&self) -> &'static str;
    /// Run until shutdown. An `Err` return is fatal for the server.
    fn run(self: Box<Self>, ctx: ArbiterContext) -> ArbiterFuture;
}

/// Which arbiter the command line asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ArbiterKind {
    /// OFD lock on the disk file; ONE MACHINE ONLY, never multi-host safe.
    File,
    /// DRBD decides (Primary serves).
    Drbd,
    /// Always serving; a single server, for tests and benchmarks only.
    None,
}
