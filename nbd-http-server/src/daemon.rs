//! Command line, listeners, the kernel device, readiness lines and signal
//! handling.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use heartbeat_wire::nbd;
use heartbeat_wire::sd_notify::{notify_status, sd_notify, watchdog_interval};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::attach::{self, KernelDevice};
use crate::handshake::{BlockSize, ExportInfo};
use crate::kernel::DeviceConfig;
use crate::server::{serve_connection, Client, ServeConfig};
use crate::transmission::Limits;
use crate::upstream::{
    FailoverDeadline, HttpUpstream, HttpUpstreamConfig, DEFAULT_RESPONSE_POLL_US,
};

/// Largest read or write accepted in one NBD request (the advertised maximum
/// block size): the size the NBD spec says portable clients stay within.
pub const MAX_REQUEST: u32 = 32 * 1024 * 1024;

const DEADLINE_HELP: &str = "Per-request deadline in milliseconds: a request not served by any \
upstream within it fails with EIO. Default: (Ws - t2) / (3N + 4) with XHA's statefile watchdog \
Ws = 75 s, cycle interval t2 = 3 s and N = number of --urls (hosts), clamped to [2 s, 10 s]; \
a host's worst-case cycle of 1 write + 3 x (N+1) reads must fit inside Ws. N=1: 10 s, N=3: 5.5 s, \
N=8: 2.6 s.";

/// NBD server backed by http-disk-server, with failover across several URLs.
#[derive(Debug, Clone, Parser)]
#[command(name = "nbd-http-server", version, about)]
pub struct Cli {
    /// Unix socket to serve NBD on (reference flag).
    #[arg(long)]
    pub socket_path: Option<PathBuf>,

    /// Volume name: the NBD export name (the empty default name works too).
    #[arg(long)]
    pub nbd_name: String,

    /// Block server URLs, comma separated: http://HOST:PORT[,...] or
    /// https://HOST:PORT[,...] (with --tls-ca). This host's own
    /// http-disk-server may be given as unix:/PATH, its --unix-socket, in
    /// place of its http:// URL: the same requests and MACs, without the TCP
    /// stack.
    #[arg(long, value_delimiter = ',', required = true)]
    pub urls: Vec<String>,

    /// Export size in bytes. Without it the size comes from `HEAD /`; with it
    /// the server starts and answers even when no upstream does.
    #[arg(long)]
    pub device_size: Option<u64>,

    /// Extra TCP listener `tcp:ADDR:PORT` (repeatable or comma separated).
    #[arg(long = "listen", value_delimiter = ',')]
    pub listen: Vec<String>,

    #[arg(long, help = DEADLINE_HELP)]
    pub request_deadline_ms: Option<u64>,

    /// TCP connect timeout to an upstream, in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub connect_timeout_ms: u64,

    /// Fixed part of the per-attempt upstream timeout, in milliseconds; the
    /// attempt timeout adds the transfer time at 50 MB/s. An attempt that
    /// times out fails over; the request goes on until its deadline.
    #[arg(long, default_value_t = 500)]
    pub request_timeout_ms: u64,

    /// After sending an upstream request, poll the connection for the answer
    /// for up to N microseconds before sleeping (0: never). This saves the
    /// cross-CPU wake-up of a sleeping thread per request at the cost of up
    /// to N us of CPU per request; whether it pays depends on the machine
    /// (on one VM it made loopback TCP writes slower: measure, and set 0 if
    /// so). It happens only when one NBD client is connected with a single
    /// request outstanding, and stops when that client sends more. The budget
    /// adapts to twice the recent answer time; servers answering slower than
    /// N on average (remote hosts, synchronous replication) are not polled.
    /// Plain http:// and unix: only.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_RESPONSE_POLL_US)]
    pub upstream_poll_us: u64,

    /// Attach the kernel device /dev/nbdN: `auto` attaches when the kernel
    /// has an NBD driver and otherwise serves the sockets only, with a
    /// warning; `required` makes a missing driver fatal (the systemd unit);
    /// `never` is --no-attach.
    #[arg(long, value_enum, default_value = "auto")]
    pub attach: AttachMode,

    /// Do not attach /dev/nbdN; serve the sockets only (tests, hosts
    /// without the nbd module). Same as --attach never.
    #[arg(long)]
    pub no_attach: bool,

    /// Directory of the stable device name: DIR/<nbd-name> -> /dev/nbdN.
    #[arg(long, default_value = attach::DEFAULT_LINK_DIR)]
    pub device_link_dir: PathBuf,

    /// Do not create the DIR/<nbd-name> link.
    #[arg(long)]
    pub no_device_link: bool,

    /// Kernel request timeout in seconds, a backstop for a wedged daemon
    /// (the kernel then drops the connection and this daemon reconnects).
    /// Default: the request deadline + 2 s, so the daemon's EIO comes first.
    #[arg(long)]
    pub kernel_timeout_secs: Option<u64>,

    /// How long the kernel holds I/O for a restarted daemon to reconnect
    /// before failing it with EIO, in seconds.
    #[arg(long, default_value_t = attach::DEFAULT_DEAD_CONN_TIMEOUT.as_secs())]
    pub dead_conn_timeout_secs: u64,

    /// Pool key file (lines `id:hex`, mode 0600): every upstream request is
    /// signed with its first key (`x-heartbeat-auth`). Default:
    /// /etc/xha-heartbeat/pool.key if it exists; without a key requests go
    /// unsigned, which only a server in compatibility mode accepts.
    #[arg(long)]
    pub auth_key_file: Option<PathBuf>,

    /// PEM file of the CA certificate(s) that signed the block servers'
    /// certificates; required when a URL is https://. The server name
    /// checked is the URL's host (a DNS name or an IP address SAN).
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,

    /// More logging (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// TOML file setting any of these flags under its long name
    /// (`nbd-name = "vol"`, `urls = ["http://a:8076", "http://b:8076"]`,
    /// `verbose = 1`); flags on the command line win. E.g.
    /// /etc/xha-heartbeat/<volume>.toml.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (NBD requests,
    /// latency, upstream errors and failovers, kernel reconnects). Off by
    /// default; the page is unauthenticated, so bind it to a management address.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// `--config FILE` ([`heartbeat_wire::config_file`]).
impl heartbeat_wire::config_file::WithConfigFile for Cli {}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    Auto,
    Required,
    Never,
}

pub fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

enum Listener {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener, String),
}

impl Listener {
    fn describe(&self) -> String {
        match self {
            Listener::Unix(_, p) => format!("unix:{}", p.display()),
            Listener::Tcp(_, a) => format!("tcp:{a}"),
        }
    }
}

/// The key requests are signed with: the first of the key file, or None
/// (with a loud warning) when there is no key file at all. A key file that
/// exists but cannot be used (permissions, syntax) is fatal.
fn load_signing_key(
    volume: &str,
    explicit: Option<&std::path::Path>,
) -> Result<Option<Arc<heartbeat_wire::auth::PoolKey>>> {
    use heartbeat_wire::auth::{self, PoolKeys};
    let Some(path) = auth::resolve_key_file(explicit) else {
        warn!(volume = %volume, "no pool key (--auth-key-file not given, {} absent): upstream requests are NOT signed; only an http-disk-server in compatibility mode (--allow-unauthenticated) will serve them", auth::DEFAULT_KEY_FILE);
        return Ok(None);
    };
    let keys = PoolKeys::load(&path).with_context(|| format!("volume {volume}"))?;
    let key = keys.signing_key().clone();
    info!(volume = %volume, key_file = %path.display(), key = %key.id, "signing upstream requests with the pool key");
    Ok(Some(Arc::new(key)))
}

pub async fn run(cli: Cli) -> Result<()> {
    let volume = cli.nbd_name.clone();
    let attach_mode = if cli.no_attach {
        AttachMode::Never
    } else {
        cli.attach
    };
    // Decided before anything else, so a misconfigured host fails at once.
    let attach_kernel = match attach_mode {
        AttachMode::Never => false,
        AttachMode::Required => {
            if !attach::kernel_has_nbd() {
                bail!("volume {volume}: this kernel has no NBD driver (no nbd netlink family, no /dev/nbd0): run `modprobe nbd`, or pass --no-attach to serve the socket only");
            }
            true
        }
        AttachMode::Auto => {
            let has = attach::kernel_has_nbd();
            if !has {
                warn!(volume = %volume, "this kernel has no NBD driver (no nbd netlink family, no /dev/nbd0): NOT attaching /dev/nbdN, serving the socket only; `modprobe nbd` and restart to get the device (--attach required makes this fatal, --no-attach silences it)");
            }
            has
        }
    };
    if !attach_kernel && cli.socket_path.is_none() && cli.listen.is_empty() {
        bail!("volume {volume}: nothing to serve; pass --socket-path PATH and/or --listen tcp:ADDR:PORT, or let it attach /dev/nbdN");
    }
    let deadline = match cli.request_deadline_ms {
        Some(ms) => Duration::from_millis(ms),
        None => FailoverDeadline::for_hosts(cli.urls.len()).0,
    };
    let mut upstream_config = HttpUpstreamConfig::new(&volume, cli.urls.clone());
    upstream_config.connect_timeout = Duration::from_millis(cli.connect_timeout_ms);
    upstream_config.request_timeout = Duration::from_millis(cli.request_timeout_ms);
    upstream_config.response_poll = Duration::from_micros(cli.upstream_poll_us);
    upstream_config.probe_timeout = upstream_config.connect_timeout + Duration::from_millis(300);
    upstream_config.auth = load_signing_key(&volume, cli.auth_key_file.as_deref())?;
    if let Some(ca) = &cli.tls_ca {
        upstream_config.tls = Some(
            crate::upstream::http1::tls_client_config(ca)
                .map_err(|e| anyhow::anyhow!("volume {volume}: {e}"))?,
        );
    }
    let upstream = Arc::new(HttpUpstream::new(upstream_config).map_err(anyhow::Error::msg)?);
    info!(volume = %volume, urls = %cli.urls.join(","), deadline_ms = deadline.as_millis() as u64, "starting");

    let size = match cli.device_size {
        Some(size) => {
            // Find the serving server in the background so the first request
            // does not pay for the probe; requests work either way.
            let up = upstream.clone();
            tokio::spawn(async move {
                let _ = up.discover(Instant::now() + deadline).await;
            });
            size
        }
        None => {
            let wait = Duration::from_secs(30).max(deadline);
            upstream
                .discover(Instant::now() + wait)
                .await
                .with_context(|| format!("volume {volume}: cannot learn the device size from HEAD /; start an http-disk-server or pass --device-size"))?
        }
    };

    let config = Arc::new(ServeConfig {
        export: ExportInfo {
            name: volume.clone(),
            description: format!("{volume} via {}", cli.urls.join(",")),
            size,
            transmission_flags: nbd::FLAG_HAS_FLAGS
                | nbd::FLAG_SEND_FLUSH
                | nbd::FLAG_SEND_FUA
                | nbd::FLAG_CAN_MULTI_CONN,
            block_size: BlockSize {
                minimum: 512,
                preferred: 4096,
                maximum: MAX_REQUEST,
            },
        },
        limits: Limits {
            size,
            max_request: MAX_REQUEST,
            max_discard: heartbeat_wire::DEFAULT_MAX_REQUEST_BYTES as u32,
        },
        request_deadline: deadline,
        max_in_flight: 256,
        activity: upstream.config().activity.clone(),
    });

    let mut listeners = Vec::new();
    if let Some(path) = &cli.socket_path {
        if path.exists() {
            std::fs::remove_file(path).with_context(|| {
                format!("volume {volume}: remove stale socket {}", path.display())
            })?;
        }
        let l = UnixListener::bind(path).with_context(|| {
            format!(
                "volume {volume}: cannot listen on Unix socket {}",
                path.display()
            )
        })?;
        listeners.push(Listener::Unix(l, path.clone()));
    }
    for spec in &cli.listen {
        let addr = spec.trim().strip_prefix("tcp:").with_context(|| {
            format!("volume {volume}: --listen {spec:?} must look like tcp:ADDR:PORT")
        })?;
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("volume {volume}: cannot listen on TCP {addr}"))?;
        let local = l
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| addr.to_owned());
        listeners.push(Listener::Tcp(l, local));
    }

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    if let Some(addr) = cli.metrics_listen {
        let l = TcpListener::bind(addr).await.with_context(|| {
            format!("volume {volume}: cannot listen for metrics on {addr} (--metrics-listen)")
        })?;
        let local = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
        info!(volume = %volume, listen = %local, "metrics at http://{local}/metrics");
        tokio::spawn(crate::metrics::serve(
            l,
            volume.clone(),
            shutdown_rx.clone(),
        ));
    }

    // Handlers first: a supervisor may send SIGTERM the moment it reads the
    // readiness line, and that must drain, not kill.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let names: Vec<String> = listeners.iter().map(Listener::describe).collect();
    if !names.is_empty() {
        let mut out = std::io::stdout().lock();
        writeln!(out, "NBD server ready on {}", names.join(", "))?;
        out.flush()?;
        info!(volume = %volume, size, listeners = %names.join(", "), "NBD server ready");
    }

    let healthy = Arc::new(AtomicBool::new(true));
    let mut device = None;
    if attach_kernel {
        // Writes are durable when acknowledged (http-disk-server syncs before
        // answering) and nothing is cached here, so the kernel gets neither
        // FLUSH nor FUA: xhad's O_SYNC then costs no extra round trip.
        let mut dev_cfg = DeviceConfig::new(size, attach::backend_id(&volume), nbd::FLAG_HAS_FLAGS);
        dev_cfg.request_timeout = match cli.kernel_timeout_secs {
            Some(s) => Duration::from_secs(s.max(1)),
            None => attach::kernel_request_timeout(deadline),
        };
        dev_cfg.dead_conn_timeout = Duration::from_secs(cli.dead_conn_timeout_secs.max(1));
        let link_dir = (!cli.no_device_link).then_some(cli.device_link_dir.as_path());
        let dev = KernelDevice::start(
            dev_cfg,
            config.clone(),
            upstream.clone(),
            shutdown_rx.clone(),
            link_dir,
        )
        .await?;
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "NBD `{}` is now attached.", dev.path().display())?;
            out.flush()?;
        }
        info!(volume = %volume, device = %dev.path().display(), link = ?dev.link(), "device ready");
        device = Some(dev);
    }
    sd_notify("READY=1");
    notify_status(&match &device {
        Some(d) => format!("serving {}", d.path().display()),
        None => format!("serving {}", names.join(", ")),
    });
    if let Some(interval) = watchdog_interval() {
        let healthy = healthy.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval / 2);
            loop {
                tick.tick().await;
                // Skipped while the kernel connection is being replaced, so
                // a daemon stuck there gets restarted.
                if healthy.load(Ordering::Relaxed) {
                    sd_notify("WATCHDOG=1");
                }
            }
        });
    }
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let mut accept_tasks = Vec::new();
    for listener in listeners {
        let (config, upstream, shutdown, done) = (
            config.clone(),
            upstream.clone(),
            shutdown_rx.clone(),
            done_tx.clone(),
        );
        accept_tasks.push(tokio::spawn(accept_loop(
            listener, config, upstream, shutdown, done,
        )));
    }
    drop(done_tx);

    let supervise = async {
        match device.as_mut() {
            Some(d) => {
                d.supervise(upstream.clone(), shutdown_rx.clone(), healthy.clone())
                    .await
            }
            None => std::future::pending().await,
        }
    };
    let signal = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
        r = supervise => {
            // The device is lost; the kernel keeps it for a restarted daemon.
            let _ = shutdown_tx.send(true);
            return r.and_then(|()| bail!("volume {volume}: the kernel device stopped being served"));
        }
    };
    info!(volume = %volume, "{signal}: no new connections; finishing requests in flight");
    sd_notify("STOPPING=1");
    let _ = shutdown_tx.send(true);
    if let Some(dev) = device.take() {
        dev.detach(deadline + Duration::from_secs(2)).await?;
    }
    for t in accept_tasks {
        let _ = t.await;
    }
    let drained = tokio::time::timeout(deadline + Duration::from_secs(2), done_rx.recv()).await;
    if drained.is_err() {
        warn!(volume = %volume, "some requests were still in flight at exit");
    }
    if let Some(path) = &cli.socket_path {
        let _ = std::fs::remove_file(path);
    }
    info!(volume = %volume, "stopped");
    Ok(())
}

async fn accept_loop(
    listener: Listener,
    config: Arc<ServeConfig>,
    upstream: Arc<HttpUpstream>,
    mut shutdown: watch::Receiver<bool>,
    done: mpsc::Sender<()>,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            a = accept(&listener) => a,
        };
        let client = match accepted {
            Ok(client) => client,
            Err(e) => {
                warn!(volume = %config.export.name, "accept on {} failed: {e}", listener.describe());
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (config, upstream, shutdown, done) = (
            config.clone(),
            upstream.clone(),
            shutdown.clone(),
            done.clone(),
        );
        tokio::spawn(async move {
            serve_connection(client, config, upstream, shutdown).await;
            drop(done);
        });
    }
}

type AcceptedClient = Client<
    Box<dyn tokio::io::AsyncRead + Unpin + Send>,
    Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
>;

async fn accept(listener: &Listener) -> std::io::Result<AcceptedClient> {
    match listener {
        Listener::Unix(l, path) => {
            let (s, _) = l.accept().await?;
            let socket = Some(s.as_raw_fd());
            let (r, w) = s.into_split();
            Ok(Client {
                reader: Box::new(r),
                writer: Box::new(w),
                socket,
                peer: format!("unix:{}", path.display()),
            })
        }
        Listener::Tcp(l, _) => {
            let (s, peer) = l.accept().await?;
            s.set_nodelay(true)?;
            let socket = Some(s.as_raw_fd());
            let (r, w) = s.into_split();
            Ok(Client {
                reader: Box::new(r),
                writer: Box::new(w),
                socket,
                peer: format!("tcp:{peer}"),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use heartbeat_wire::config_file::WithConfigFile;

    #[test]
    fn default_deadlines_follow_xha_budget() {
        assert_eq!(FailoverDeadline::for_hosts(1).0, Duration::from_secs(10));
        let three = FailoverDeadline::for_hosts(3).0.as_millis();
        assert!((5500..5600).contains(&three), "{three}");
        let eight = FailoverDeadline::for_hosts(8).0.as_millis();
        assert!((2500..2700).contains(&eight), "{eight}");
        assert_eq!(FailoverDeadline::for_hosts(64).0, Duration::from_secs(2));
    }

    fn parse_with_file(file: &str, flags: &[&str]) -> anyhow::Result<Cli> {
        let path = std::env::temp_dir().join(format!(
            "nbd-http-server-config-{}-{}.toml",
            std::process::id(),
            file.len() * 31 + flags.len()
        ));
        std::fs::write(&path, file)?;
        let mut argv: Vec<std::ffi::OsString> = vec!["nbd-http-server".into()];
        argv.extend(flags.iter().map(Into::into));
        argv.extend(["--config".into(), path.clone().into()]);
        let parsed = Cli::argv_with_config(argv);
        let _ = std::fs::remove_file(&path);
        Ok(Cli::try_parse_from(parsed?)?)
    }

    #[test]
    fn config_file_sets_lists_and_flags_replace_them() {
        let file = "nbd-name = \"hb\"\nurls = [\"http://a:1\", \"http://b:1\"]\nlisten = \"tcp:127.0.0.1:0\"\ndevice-size = 4194304\nverbose = 2\nno-attach = true\n";
        let cli = parse_with_file(file, &[]).unwrap();
        assert_eq!(cli.nbd_name, "hb");
        assert_eq!(cli.urls, ["http://a:1", "http://b:1"]);
        assert_eq!(cli.listen, ["tcp:127.0.0.1:0"]);
        assert_eq!(cli.device_size, Some(4194304));
        assert_eq!(cli.verbose, 2);
        assert!(cli.no_attach);
        let cli = parse_with_file(file, &["--urls", "http://c:1,http://d:1", "-v"]).unwrap();
        assert_eq!(cli.urls, ["http://c:1", "http://d:1"]);
        assert_eq!(cli.verbose, 1);
        assert_eq!(cli.nbd_name, "hb");
        let e = parse_with_file("nbd-name = \"hb\"\nurl = \"http://a:1\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`url`") && e.contains(".toml"), "{e}");
        let e = Cli::argv_with_config(vec![
            "x".into(),
            "--config".into(),
            "/nonexistent/hb.toml".into(),
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("/nonexistent/hb.toml"), "{e}");
    }

    #[test]
    fn reference_command_line_parses() {
        let cli = Cli::try_parse_from([
            "nbd-http-server",
            "--socket-path",
            "/run/x.sock",
            "--nbd-name",
            "hb",
            "--urls",
            "http://a:8076,http://b:8076",
            "--device-size",
            "4194304",
        ])
        .unwrap();
        assert_eq!(cli.urls.len(), 2);
        assert_eq!(cli.device_size, Some(4194304));
        let cli = Cli::try_parse_from([
            "nbd-http-server",
            "--nbd-name",
            "hb",
            "--urls",
            "http://a:1",
            "--listen",
            "tcp:127.0.0.1:0,tcp:[::1]:0",
            "--listen",
            "tcp:0.0.0.0:10809",
            "-vv",
        ])
        .unwrap();
        assert_eq!(cli.listen.len(), 3);
        assert_eq!(cli.verbose, 2);
    }
}
