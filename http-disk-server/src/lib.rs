//! `http-disk-server`: serves one disk (a DRBD device or an image file) over
//! the reference HTTP block protocol, but only while it holds the role its
//! arbiter grants; otherwise it listens and answers 503 with a hint.
//!
//! Layout: [`disk`] (positioned durable I/O), [`range_lock`], [`arbiter`]
//! (who serves), [`gate`] (grants -> "may this request touch the disk"),
//! [`http`] (the protocol), [`connection`] (a thread per client connection),
//! [`io_watchdog`] (the deadline of disk calls), [`liveness`] (systemd
//! notify, freeze detector), [`metrics`]. [`run`] wires them together.

pub mod aligned;
pub mod arbiter;
pub mod connection;
pub mod disk;
pub mod gate;
pub mod http;
pub mod io_watchdog;
pub mod liveness;
pub mod local_socket;
pub mod metrics;
pub mod range_lock;
pub mod tls;

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::arbiter::{Arbiter, ArbiterContext, ArbiterKind, Grant};
use crate::connection::{Accepted, ClientStream, ConnSettings};
use crate::disk::{DirectIo, DiskProbe, FileDisk};
use crate::gate::{DiskOpener, Gate};
use crate::http::{DiskService, HttpConfig};
use crate::io_watchdog::{IoWatchdog, WatchdogConfig};
use crate::liveness::{DiskHealth, FreezeDetector};
use crate::local_socket::LocalListener;

/// HTTP block server for one replicated volume.
///
/// Drop-in compatible with the reference `http-disk-server --disk --ip --port`:
/// prints `Server ready!` on stdout once it listens, in any role.
///
/// Arbiters: `drbd` (default for DRBD devices, major 147) lets DRBD decide;
/// `file` (default otherwise) uses an OFD lock on the disk file and is SAFE ON
/// ONE MACHINE ONLY, never across hosts; `none` always serves (one server, tests
/// and benchmarks only).
#[derive(Debug, Clone, Parser)]
#[command(name = "http-disk-server", version)]
pub struct Args {
    /// Block device or regular file to export.
    #[arg(long)]
    pub disk: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    pub ip: IpAddr,
    /// TCP port to listen on.
    #[arg(long, default_value_t = 8076)]
    pub port: u16,
    /// More logging (debug level).
    #[arg(short, long)]
    pub verbose: bool,
    /// TOML file setting any of these flags under its long name
    /// (`disk = "/dev/drbd/by-res/vol/0"`, `port = 8076`); flags on the
    /// command line win. E.g. /etc/xha-heartbeat/<volume>.toml.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Debug mode, like XHA's: act on nothing destructive. The DRBD arbiter
    /// logs "DEBUG MODE: would ..." instead of `secondary --force` and instead
    /// of exiting non-zero when it cannot demote, and a disk stuck in the
    /// kernel is logged instead of exiting. The status JSON shows it. Never
    /// in production: a host that cannot demote stays Primary.
    #[arg(long)]
    pub debug_no_fence: bool,
    /// Largest byte count one GET or PUT may carry.
    #[arg(long, default_value_t = heartbeat_wire::DEFAULT_MAX_REQUEST_BYTES)]
    pub max_request_bytes: u64,
    /// Who decides whether this server serves. Default: drbd for DRBD devices,
    /// else file. `file` is single-machine only, never multi-host safe.
    #[arg(long, value_enum)]
    pub arbiter: Option<ArbiterKind>,
    /// URL other hosts use to reach this server (default http://IP:PORT).
    #[arg(long)]
    pub advertise_url: Option<String>,
    /// Longest a single disk operation may take; past it the request fails
    /// with 500 and this server steps down.
    #[arg(long, default_value_t = 2000)]
    pub io_deadline_ms: u64,
    /// O_DIRECT policy: auto = block devices direct, files buffered (+O_DSYNC).
    #[arg(long, value_enum, default_value = "auto")]
    pub direct_io: DirectIo,
    /// File arbiter: sidecar holding the epoch and serving URL (default <disk>.epoch).
    #[arg(long)]
    pub epoch_file: Option<PathBuf>,
    /// A gap this long between two ticks of the freeze detector (process
    /// stopped, host frozen) makes the server step down before serving again.
    #[arg(long, default_value_t = 3000)]
    pub freeze_threshold_ms: u64,
    /// Close connections that do not send a complete request head within this.
    #[arg(long, default_value_t = 10_000)]
    pub header_timeout_ms: u64,
    /// On SIGTERM, how long in-flight requests may take to finish.
    #[arg(long, default_value_t = 5_000)]
    pub shutdown_grace_ms: u64,
    /// DRBD arbiter: the resource (default: from a /dev/drbd/by-res/RES/VOL
    /// path, or the minor of /dev/drbdN looked up with `drbdsetup status`).
    #[arg(long)]
    pub drbd_resource: Option<String>,
    /// DRBD arbiter: the drbdsetup binary.
    #[arg(long, default_value = "drbdsetup")]
    pub drbdsetup: PathBuf,
    /// DRBD arbiter: explicit = `drbdsetup primary`/`secondary` (auto-promote
    /// no); auto = opening the device read-write promotes (auto-promote yes).
    #[arg(long, value_enum, default_value = "explicit")]
    pub drbd_promote: arbiter::drbd::DrbdPromote,
    /// DRBD arbiter: multiplies the disk-state delay before promoting
    /// (UpToDate 0 s, Consistent 1 s, Outdated 2 s, Inconsistent 3 s, else 6 s).
    #[arg(long, default_value_t = 0.5)]
    pub drbd_sleep_factor: f64,
    /// DRBD arbiter: limit for one `drbdsetup primary|secondary|status` run.
    #[arg(long, default_value_t = 10_000)]
    pub drbd_command_timeout_ms: u64,
    /// DRBD arbiter: NODE=URL, the server URL of the DRBD peer named NODE,
    /// for the hint a standby gives (repeatable).
    #[arg(long, value_parser = arbiter::drbd::parse_peer_url)]
    pub peer_url: Vec<(String, String)>,
    /// DRBD arbiter: derive `may_promote` when drbdsetup does not report it
    /// (DRBD 8.4 kernels): not Primary, no peer Primary, UpToDate data
    /// reachable. For tests and two-node 8.4 setups only: without DRBD 9
    /// quorum a partitioned pair may both promote (split brain).
    #[arg(long)]
    pub drbd_derive_may_promote: bool,
    /// DRBD arbiter: run `drbdsetup events2` without `--full`, which DRBD
    /// 8.4's drbdsetup does not know (change lines then carry only the
    /// changed keys).
    #[arg(long)]
    pub drbd_events2_plain: bool,
    /// DRBD arbiter: the DRBD kernel generation. 8.4's drbdsetup addresses
    /// `primary`/`secondary` by the device minor (taken from --disk) and has
    /// no `events2 --full`; auto reads /proc/drbd.
    #[arg(long, value_enum, default_value = "auto")]
    pub drbd_kernel: arbiter::drbd::DrbdKernel,
    /// Pool key file (lines `id:hex`, mode 0600): every block request must
    /// carry a MAC made with one of its keys. Default: /etc/xha-heartbeat/pool.key
    /// if it exists. See SECURITY.md for creating and rotating it.
    #[arg(long)]
    pub auth_key_file: Option<PathBuf>,
    /// Compatibility mode for reference clients: serve block requests that
    /// carry no MAC (with a key file, requests that do carry one must still
    /// verify). Without a key file the server refuses to start unless this
    /// is given. Anyone who reaches the port can then write the statefile.
    #[arg(long)]
    pub allow_unauthenticated: bool,
    /// Accepted clock difference for a request's MAC timestamp, either way.
    /// The hosts of a pool run NTP.
    #[arg(long, default_value_t = heartbeat_wire::auth::DEFAULT_WINDOW.as_millis() as u64)]
    pub auth_window_ms: u64,
    /// Most request nonces remembered (those inside the window); when full
    /// of live nonces, new requests are refused with 429.
    #[arg(long, default_value_t = heartbeat_wire::auth::DEFAULT_REPLAY_CAPACITY)]
    pub auth_replay_capacity: usize,
    /// Most open client connections; more are accepted and closed at once.
    #[arg(long, default_value_t = 256)]
    pub max_connections: usize,
    /// Most open connections from one IP address; more are closed at once.
    #[arg(long, default_value_t = 128)]
    pub max_connections_per_ip: usize,
    /// Largest request head (request line and headers) in bytes; at least 8192.
    #[arg(long, default_value_t = 16 * 1024)]
    pub max_header_bytes: usize,
    /// PEM certificate chain (leaf first): with --tls-key, the listener
    /// speaks TLS only (block requests, /status and /metrics alike) and the
    /// default advertise URL is https://. See SECURITY.md, "TLS".
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Also serve on this Unix socket, for this host's nbd-http-server (which
    /// names it `unix:PATH` in its --urls): the same requests and the same
    /// MAC check as on TCP, never TLS, without the TCP stack. Created mode
    /// 0600 (a stale socket from a killed server is replaced) and removed at
    /// exit.
    #[arg(long, value_name = "PATH")]
    pub unix_socket: Option<PathBuf>,
}

/// The authentication policy from the flags: a key file (explicit, or the
/// default path when it exists) makes MACs required; `--allow-unauthenticated`
/// relaxes that; with neither a key nor the flag the server refuses to start,
/// so that a server never silently accepts writes from anyone.
pub fn auth_policy(args: &Args) -> anyhow::Result<http::AuthPolicy> {
    use heartbeat_wire::auth::{self, PoolKeys, Verifier};
    let key_file = auth::resolve_key_file(args.auth_key_file.as_deref());
    let Some(path) = key_file else {
        if args.allow_unauthenticated {
            for line in [
                "COMPATIBILITY MODE: no pool key and --allow-unauthenticated: block requests are NOT authenticated",
                "anyone who can reach this port can read and overwrite the statefile and fence the pool",
                "install a pool key (SECURITY.md) and drop --allow-unauthenticated",
            ] {
                tracing::warn!(disk = %args.disk.display(), "{line}");
            }
            return Ok(http::AuthPolicy::Off);
        }
        anyhow::bail!(
            "no pool key: --auth-key-file not given and {key} does not exist; refusing to serve a disk anyone could write. Create the key on every host (SECURITY.md: `umask 077; mkdir -p /etc/xha-heartbeat; echo \"k1:$(openssl rand -hex 32)\" > {key}`), or pass --allow-unauthenticated for reference clients (unsafe)",
            key = auth::DEFAULT_KEY_FILE,
        );
    };
    let keys = PoolKeys::load(&path)?;
    let verifier = Arc::new(Verifier::new(
        keys,
        Duration::from_millis(args.auth_window_ms),
        args.auth_replay_capacity,
    ));
    let ids = verifier.keys().ids().join(",");
    if args.allow_unauthenticated {
        tracing::warn!(disk = %args.disk.display(), key_file = %path.display(), keys = %ids, "COMPATIBILITY MODE: --allow-unauthenticated: requests WITHOUT a MAC are served (anyone who reaches this port can write); requests with one must verify");
        Ok(http::AuthPolicy::Compat(verifier))
    } else {
        tracing::info!(disk = %args.disk.display(), key_file = %path.display(), keys = %ids, "block requests need a MAC from the pool key");
        Ok(http::AuthPolicy::Required(verifier))
    }
}

/// Open connections, in total and per peer address.
#[derive(Debug, Default)]
pub struct ConnectionCount {
    total: AtomicUsize,
    per_ip: std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>,
}

/// One admitted connection; releases its slot when dropped.
pub struct ConnectionSlot {
    count: Arc<ConnectionCount>,
    ip: IpAddr,
}

impl ConnectionCount {
    /// A slot for a connection from `ip`, or None when a limit is reached.
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        max_total: usize,
        max_per_ip: usize,
    ) -> Option<ConnectionSlot> {
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let mine = per_ip.get(&ip).copied().unwrap_or(0);
        if self.total.load(Ordering::Acquire) >= max_total || mine >= max_per_ip {
            return None;
        }
        per_ip.insert(ip, mine + 1);
        self.total.fetch_add(1, Ordering::AcqRel);
        Some(ConnectionSlot {
            count: Arc::clone(self),
            ip,
        })
    }

    pub fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut per_ip = self.count.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
        self.count.total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// `--config FILE` ([`heartbeat_wire::config_file`]).
impl heartbeat_wire::config_file::WithConfigFile for Args {}

impl Args {
    pub fn advertise_url(&self) -> String {
        let scheme = if self.tls_cert.is_some() {
            "https"
        } else {
            "http"
        };
        self.advertise_url.clone().unwrap_or_else(|| match self.ip {
            IpAddr::V6(ip) => format!("{scheme}://[{ip}]:{}", self.port),
            IpAddr::V4(ip) => format!("{scheme}://{ip}:{}", self.port),
        })
    }
}

/// Reason shown before the arbiter's first decision.
pub const STARTING: &str = "starting: the arbiter has not decided yet";

/// Pick and build the arbiter.
pub fn make_arbiter(args: &Args, probe: &DiskProbe) -> anyhow::Result<Box<dyn Arbiter>> {
    let kind = args.arbiter.unwrap_or(if probe.is_drbd() {
        ArbiterKind::Drbd
    } else {
        ArbiterKind::File
    });
    Ok(match kind {
        ArbiterKind::File => Box::new(arbiter::file::FileArbiter::new(
            &args.disk,
            args.epoch_file.clone(),
        )),
        ArbiterKind::None => Box::new(arbiter::none::NoArbiter),
        ArbiterKind::Drbd => Box::new(arbiter::drbd::DrbdArbiter::new(
            &args.disk,
            arbiter::drbd::DrbdConfig {
                resource: args.drbd_resource.clone(),
                drbdsetup: args.drbdsetup.clone(),
                command_timeout: Duration::from_millis(args.drbd_command_timeout_ms.max(1)),
                promote: args.drbd_promote,
                sleep_factor: args.drbd_sleep_factor.max(0.0),
                peer_urls: args.peer_url.iter().cloned().collect(),
                // The server drains for one I/O deadline; allow for that twice.
                release_timeout: Duration::from_millis(args.io_deadline_ms.max(1)) * 2
                    + Duration::from_secs(1),
                derive_may_promote: args.drbd_derive_may_promote,
                events2_plain: args.drbd_events2_plain,
                kernel: args.drbd_kernel,
                debug_no_fence: args.debug_no_fence,
            },
        )),
    })
}

/// Run the server until SIGTERM/SIGINT. Returns Ok for an orderly exit.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let auth = auth_policy(&args)?;
    if args.debug_no_fence {
        tracing::warn!(disk = %args.disk.display(), "DEBUG MODE (--debug-no-fence): no `secondary --force`, no escalation exit, no stuck-disk exit; each is logged as \"DEBUG MODE: would ...\" instead. A host that cannot demote stays Primary: never in production");
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls::acceptor(cert, key)?),
        _ => None,
    };
    let probe = DiskProbe::probe(&args.disk)?;
    let arbiter = make_arbiter(&args, &probe)?;
    let arbiter_name = arbiter.name();
    let advertise_url = args.advertise_url();
    let addr = SocketAddr::new(args.ip, args.port);
    let listener = TcpListener::bind(addr).await.with_context(|| {
        format!(
            "cannot listen on {addr} for disk {}: is another server already using the port?",
            args.disk.display()
        )
    })?;
    let local = args
        .unix_socket
        .as_deref()
        .map(|path| LocalListener::bind(path, &args.disk))
        .transpose()?;
    let io_deadline = Duration::from_millis(args.io_deadline_ms.max(1));

    let (step_tx, step_rx) = mpsc::unbounded_channel();
    let (grant_tx, grant_rx) = watch::channel(Grant::standby(STARTING));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let gate = Gate::new(step_tx, io_deadline);
    let freeze = FreezeDetector::new(
        Duration::from_millis(100),
        Duration::from_millis(args.freeze_threshold_ms.max(200)),
    );
    let health = Arc::new(DiskHealth::default());
    let watchdog = IoWatchdog::new(
        WatchdogConfig {
            deadline: io_deadline,
            stuck_exit_after: (io_deadline * 10).max(Duration::from_secs(30)),
            debug_no_fence: args.debug_no_fence,
            device: args.disk.display().to_string(),
        },
        Arc::clone(&gate),
        Arc::clone(&health),
    );
    watchdog
        .spawn()
        .context("cannot start the I/O watchdog thread")?;
    let service = Arc::new(DiskService {
        auth,
        cfg: HttpConfig {
            device: args.disk.display().to_string(),
            arbiter: arbiter_name,
            max_request_bytes: args.max_request_bytes,
            body_idle_timeout: Duration::from_millis(args.header_timeout_ms.max(100)),
            probed_size: probe.size,
            debug_no_fence: args.debug_no_fence,
        },
        gate: Arc::clone(&gate),
        locks: range_lock::RangeLock::new(),
        metrics: Default::default(),
        watchdog,
        freeze: Arc::clone(&freeze),
    });

    let disk_path = args.disk.clone();
    let direct = args.direct_io;
    let open_health = Arc::clone(&health);
    let opener: DiskOpener = Arc::new(move || {
        refuse_while_a_call_is_stuck(&open_health, &disk_path)?;
        Ok(Arc::new(FileDisk::open(&disk_path, direct)?) as Arc<dyn disk::Disk>)
    });
    let follower = tokio::spawn(Arc::clone(&gate).follow(grant_rx, opener));
    let arbiter_task = tokio::spawn(arbiter.run(ArbiterContext {
        grant: grant_tx,
        step_down: step_rx,
        shutdown: shutdown_rx.clone(),
        advertise_url: advertise_url.clone(),
        disk: args.disk.clone(),
    }));
    spawn_freeze_ticker(Arc::clone(&freeze), Arc::clone(&gate));
    spawn_watchdog(Arc::clone(&health), Arc::clone(&freeze));

    // Give the arbiter a moment to decide, so that a client that starts
    // right after `Server ready!` finds the server serving (or a standby with
    // a real reason) rather than "starting". The listener already accepts.
    let settle_until = tokio::time::Instant::now() + Duration::from_secs(3);
    while !gate.settled.load(Ordering::Acquire) && tokio::time::Instant::now() < settle_until {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let unix_socket = local.as_ref().map(|l| l.path().display().to_string());
    tracing::info!(disk = %args.disk.display(), %addr, url = %advertise_url, unix_socket = unix_socket.as_deref().unwrap_or("-"), arbiter = arbiter_name, size = probe.size, "listening");
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "Server ready!")?;
        out.flush()?;
    }
    liveness::sd_notify("READY=1");

    let (stop_tx, stop_rx) = watch::channel(false);
    let connections = Arc::new(ConnectionCount::default());
    let mut admission = Admission {
        connections: Arc::clone(&connections),
        max_total: args.max_connections.max(1),
        max_per_ip: args.max_connections_per_ip.max(1),
        settings: ConnSettings {
            max_buf: args.max_header_bytes.max(8192),
            header_timeout: Duration::from_millis(args.header_timeout_ms.max(100)),
        },
        service: Arc::clone(&service),
        stop: stop_rx,
        refused_since_log: 0,
        last_refusal_log: None,
    };
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut arbiter_task = arbiter_task;
    let arbiter_result = loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    admission.admit(ClientStream::Tcp(stream), peer.ip(), peer.to_string(), tls.clone());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed; continuing");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            accepted = local_socket::accept_on(local.as_ref()) => match accepted {
                // Counted as loopback under the limits; never TLS.
                Ok(stream) => admission.admit(
                    ClientStream::Unix(stream),
                    IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
                    unix_socket.clone().unwrap_or_default(),
                    None,
                ),
                Err(e) => {
                    tracing::warn!(error = %e, socket = unix_socket.as_deref().unwrap_or("-"), "accept failed on the Unix socket; continuing");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            _ = sigterm.recv() => break None,
            _ = sigint.recv() => break None,
            r = &mut arbiter_task => break Some(r),
        }
    };
    drop(listener);
    drop(local);
    if let Some(r) = arbiter_result {
        // The arbiter is the authority on the role; without it we must not serve.
        gate.close_for_shutdown().await;
        return match r {
            Ok(Ok(())) => Err(anyhow::anyhow!(
                "the {arbiter_name} arbiter stopped unexpectedly for {}",
                args.disk.display()
            )),
            Ok(Err(e)) => Err(e.context(format!(
                "the {arbiter_name} arbiter failed for {}",
                args.disk.display()
            ))),
            Err(e) => Err(anyhow::anyhow!("the {arbiter_name} arbiter crashed: {e}")),
        };
    }
    tracing::info!(disk = %args.disk.display(), "shutting down: finishing in-flight requests");
    liveness::sd_notify("STOPPING=1");
    let _ = stop_tx.send(true);
    let grace = Duration::from_millis(args.shutdown_grace_ms);
    let drained = tokio::time::timeout(grace, async {
        while connections.open() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.open(),
            "connections still open after {grace:?}; closing them"
        );
    }
    gate.close_for_shutdown().await;
    let _ = shutdown_tx.send(true);
    match tokio::time::timeout(Duration::from_secs(5), arbiter_task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => {
            tracing::error!(error = %format!("{e:#}"), "arbiter failed while releasing the role")
        }
        Ok(Err(e)) => tracing::error!(error = %e, "arbiter crashed while releasing the role"),
        Err(_) => tracing::error!("arbiter did not release the role within 5 s; exiting anyway"),
    }
    follower.abort();
    tracing::info!(disk = %args.disk.display(), "stopped");
    Ok(())
}

/// Admits accepted connections under the limits and starts their threads;
/// over a limit, closes them at once (the peer learns at once, and the
/// kernel backlog does not fill), logging at most once per 10 s.
struct Admission {
    connections: Arc<ConnectionCount>,
    max_total: usize,
    max_per_ip: usize,
    settings: ConnSettings,
    service: Arc<DiskService>,
    stop: watch::Receiver<bool>,
    refused_since_log: u64,
    last_refusal_log: Option<tokio::time::Instant>,
}

impl Admission {
    fn admit(
        &mut self,
        stream: ClientStream,
        ip: IpAddr,
        peer: String,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) {
        let Some(slot) = self.connections.admit(ip, self.max_total, self.max_per_ip) else {
            drop(stream);
            self.refused_since_log += 1;
            let now = tokio::time::Instant::now();
            if !matches!(self.last_refusal_log, Some(t) if now - t < Duration::from_secs(10)) {
                tracing::warn!(%peer, refused = self.refused_since_log, open = self.connections.open(), max_connections = self.max_total, max_connections_per_ip = self.max_per_ip, "connection limit reached: closing new connections");
                self.refused_since_log = 0;
                self.last_refusal_log = Some(now);
            }
            return;
        };
        connection::spawn(
            Accepted { stream, peer, slot },
            Arc::clone(&self.service),
            self.stop.clone(),
            self.settings,
            tls,
        );
    }
}

fn spawn_freeze_ticker(freeze: Arc<FreezeDetector>, gate: Arc<Gate>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(freeze.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Some(stalled) = freeze.on_tick() {
                tracing::error!(?stalled, "this process did not run for {stalled:?} (stopped or frozen); another server may have taken over");
                let st = gate.snapshot();
                if st.role() == heartbeat_wire::Role::Serving {
                    gate.step_down(st.epoch(), arbiter::StepDownCause::Frozen { stalled });
                }
            }
        }
    });
}

/// A disk call past its deadline has not returned: the device is still hung,
/// and every request served now would hang the same way. Taking the role
/// again (a lone server after its retake delay) must wait until it returns;
/// refusing the grant releases the role, so a healthy peer can win meanwhile.
fn refuse_while_a_call_is_stuck(health: &DiskHealth, disk: &Path) -> anyhow::Result<()> {
    let stuck = health
        .overdue_ops
        .load(std::sync::atomic::Ordering::Acquire);
    if stuck > 0 {
        anyhow::bail!(
            "{stuck} disk call(s) on {} overran the I/O deadline and have not returned; not serving until the device answers again (check the disk or DRBD backing device, dmesg)",
            disk.display()
        );
    }
    Ok(())
}

fn spawn_watchdog(health: Arc<DiskHealth>, freeze: Arc<FreezeDetector>) {
    let Some(interval) = liveness::watchdog_interval() else {
        return;
    };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval / 2);
        loop {
            tick.tick().await;
            if health.healthy() && freeze.stalled().is_none() {
                liveness::sd_notify("WATCHDOG=1");
            } else {
                tracing::warn!("disk path unhealthy: withholding the watchdog ping");
            }
        }
    });
}

#[cfg(test)]
mod config_file_tests {
    use super::*;
    use heartbeat_wire::config_file::WithConfigFile;

    fn parse(file: &str, flags: &[&str]) -> anyhow::Result<Args> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("vol.toml");
        std::fs::write(&path, file)?;
        let mut argv: Vec<std::ffi::OsString> = vec!["http-disk-server".into()];
        argv.extend(flags.iter().map(Into::into));
        argv.extend(["--config".into(), path.into()]);
        Ok(Args::try_parse_from(Args::argv_with_config(argv)?)?)
    }

    #[test]
    fn file_sets_values_and_flags_win() {
        let file = "disk = \"/dev/drbd/by-res/x/0\"\nport = 9000\nverbose = true\narbiter = \"none\"\npeer-url = [\"a=http://a:1\", \"b=http://b:1\"]\ndrbd-sleep-factor = 0.25\n";
        let args = parse(file, &[]).unwrap();
        assert_eq!(args.disk, PathBuf::from("/dev/drbd/by-res/x/0"));
        assert_eq!(args.port, 9000);
        assert!(args.verbose);
        assert_eq!(args.arbiter, Some(ArbiterKind::None));
        assert_eq!(args.peer_url.len(), 2);
        assert_eq!(args.drbd_sleep_factor, 0.25);
        let args = parse(file, &["--port", "9001", "--peer-url", "c=http://c:1"]).unwrap();
        assert_eq!(args.port, 9001);
        assert_eq!(args.peer_url, vec![("c".into(), "http://c:1".into())]);
        assert_eq!(args.disk, PathBuf::from("/dev/drbd/by-res/x/0"));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let e = parse("disk = \"/d\"\nprot = 1\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`prot`") && e.contains("vol.toml"), "{e}");
        assert!(parse("disk = \"/d\"\nport = \"eighty\"\n", &[]).is_err());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn the_role_is_refused_while_a_disk_call_is_past_its_deadline() {
        let health = DiskHealth::default();
        let disk = Path::new("/dev/drbd1000");
        assert!(refuse_while_a_call_is_stuck(&health, disk).is_ok());
        health.overdue_ops.fetch_add(1, Ordering::AcqRel);
        let refused = refuse_while_a_call_is_stuck(&health, disk).unwrap_err();
        let msg = format!("{refused:#}");
        assert!(
            msg.contains("/dev/drbd1000") && msg.contains("have not returned"),
            "{msg}"
        );
        health.overdue_ops.fetch_sub(1, Ordering::AcqRel);
        assert!(refuse_while_a_call_is_stuck(&health, disk).is_ok());
    }
}
