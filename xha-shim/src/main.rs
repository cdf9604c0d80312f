//! `xha-shim`: initialise, inspect and exercise an XHA statefile on a path or
//! an NBD export.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use xha_shim::daemons::{catch_interrupts, DaemonBinaries};
use xha_shim::demo::{run_demo, DemoConfig, Output};
use xha_shim::emulator::{emulated_host_uuid, HostConfig};
use xha_shim::heartbeat::{run_emulation, EmulationConfig};
use xha_shim::pool::{initialise, read_statefile, InitSpec, Inspection};
use xha_shim::statefile::{PoolState, StatefileUuid, MAX_HOSTS};
use xha_shim::status::{StatusReport, STATUS_TIMEOUT};
use xha_shim::target::open_target;
use xha_shim::timeouts::{
    Timeouts, DEFAULT_JITTER, DEFAULT_TIMEOUT_BASE_SECS, MIN_TIMEOUT_BASE_SECS,
};

/// The XHA side of the heartbeat proxy: statefile tools and a heartbeat
/// emulator that behaves like xhad's statefile thread.
///
/// A TARGET is a path (file or block device; opened O_RDWR|O_DIRECT, plus
/// O_SYNC on an NBD device, like XCP-ng's xhad) or an NBD URI
/// (nbd+unix:///NAME?socket=PATH or nbd://HOST:PORT/NAME).
#[derive(Parser)]
#[command(name = "xha-shim", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Init(InitArgs),
    Inspect(InspectArgs),
    Heartbeat(HeartbeatArgs),
    Demo(DemoArgs),
    Status(StatusArgs),
    Attach(AttachArgs),
    Detach(DetachArgs),
    /// LINSTOR side of the heartbeat volumes: provision them, list their URLs.
    Linstor {
        #[command(subcommand)]
        command: linstor::rest::cli::Command,
    },
}

/// The whole chain on this machine under XHA's load, a crash of the serving
/// server, and XHA's verdict.
///
/// In a temp directory: a 4 MiB statefile, three http-disk-servers (file
/// arbiter) on 127.0.0.1, one nbd-http-server per host given all their URLs,
/// the statefile initialised through host 0's export, and one emulated xhad
/// statefile thread per host (xhad's default timing: t = 60 s, so t2 = 3 s,
/// T2 = 60 s, Ws = 75 s). Every --kill-every seconds the serving
/// http-disk-server is SIGKILLed; it comes back as a standby a few seconds
/// later. The daemons are taken from the directory of this executable.
///
/// Exit status: 0 no host would have been hurt, 1 XHA would have fenced a
/// host or cut one off the statefile, 2 the demo could not run, 130
/// interrupted.
#[derive(Args)]
struct DemoArgs {
    /// Emulated hosts, each with its own nbd-http-server.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=16))]
    hosts: u16,
    /// How long the heartbeat load runs, in seconds.
    #[arg(long, default_value_t = 60.0)]
    duration: f64,
    /// SIGKILL the serving http-disk-server every this many seconds.
    #[arg(long, default_value_t = 20.0)]
    kill_every: f64,
    /// Bring a killed server back (as a standby) this many seconds later.
    #[arg(long, default_value_t = 3.0)]
    restart_after: f64,
    /// What happens without our failover: one http-disk-server, each
    /// nbd-http-server knows only its URL, and once killed it stays down
    /// for --outage seconds.
    #[arg(long)]
    no_failover: bool,
    /// With --no-failover: how long the killed server stays down, in
    /// seconds (default: StateFileTimeout T2 + 5 s).
    #[arg(long)]
    outage: Option<f64>,
    /// Base timeout t in seconds (xapi's; t2 = max(2, t/20), T2 = t, Ws = T2 + 15).
    #[arg(long, default_value_t = DEFAULT_TIMEOUT_BASE_SECS)]
    timeout_base: u64,
    /// Override StateFileInterval t2, in ms.
    #[arg(long)]
    interval_ms: Option<u64>,
    /// Override StateFileTimeout T2, in ms (Ws follows as T2 + 15 s).
    #[arg(long)]
    sf_timeout_ms: Option<u64>,
    /// Override StateFileWatchdogTimeout Ws, in ms.
    #[arg(long)]
    watchdog_ms: Option<u64>,
    /// Half-width of the per-cycle jitter, in ms.
    #[arg(long, default_value_t = DEFAULT_JITTER.as_millis() as u64)]
    jitter_ms: u64,
    /// Cycle every 400 ms, as xhad does during fault handling.
    #[arg(long)]
    accelerated: bool,
    /// Print only the final report, as JSON (no live table).
    #[arg(long)]
    json: bool,
    /// Keep the work directory (statefile image, daemon logs) afterwards.
    #[arg(long)]
    keep_dir: bool,
    /// Where http-disk-server and nbd-http-server are (default: the
    /// directory of this executable).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

/// Give xhad its statefile path, as XCP-ng's storage driver does.
///
/// Stops leftovers of the volume (pid files in the run directory; a pid is
/// signalled only if /proc/PID/cmdline is exactly the daemon xha-shim started
/// for this volume), starts http-disk-server when --disk is given and waits
/// for `Server ready!`, starts nbd-http-server and waits for
/// ``NBD `/dev/nbdN` is now attached.``, makes sure LINK-DIR/VOLUME points at
/// that device and prints LINK-DIR/VOLUME on stdout. Daemons that already run
/// with the same arguments (and got ready) are kept, so attaching twice gives
/// the same path and the same processes.
///
/// The daemons run in their own sessions and outlive this command; their
/// stdout and stderr go to RUN-DIR/DAEMON-VOLUME.{out,log}.
///
/// Exit status 0 attached (path on stdout), 2 failed (which daemon, which
/// line it waited for, its log tail on stderr; what this command started is
/// stopped again).
#[derive(Args)]
struct AttachArgs {
    /// Volume name (xcp-persistent-ha-statefile, xcp-persistent-redo-log).
    #[arg(long)]
    volume: xha_shim::attach::VolumeName,
    /// Every host's http-disk-server URL, comma separated: http://ADDR:PORT[,...]
    #[arg(long, value_delimiter = ',', required = true)]
    urls: Vec<String>,
    /// This host's replica (e.g. /dev/drbd/by-res/VOLUME/0): start
    /// http-disk-server on it. Without it only nbd-http-server runs.
    #[arg(long, requires_all = ["ip", "port"])]
    disk: Option<PathBuf>,
    /// Address http-disk-server listens on (this host's address in --urls).
    #[arg(long, requires = "disk")]
    ip: Option<String>,
    /// Port http-disk-server listens on (8076 statefile, 8077 redo log).
    #[arg(long, requires = "disk")]
    port: Option<u16>,
    /// Size of the NBD device in bytes (the statefile's 4 MiB; 256 MiB for the redo log).
    #[arg(long, default_value_t = xha_shim::attach::DEFAULT_DEVICE_SIZE)]
    device_size: u64,
    /// Pid files, command line records, daemon logs, the NBD socket.
    #[arg(long, default_value = xha_shim::attach::DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
    /// Directory of the stable device name LINK-DIR/VOLUME -> /dev/nbdN.
    #[arg(long, default_value = xha_shim::attach::DEFAULT_LINK_DIR)]
    link_dir: PathBuf,
    /// How long each daemon may take to print its readiness line, in seconds.
    #[arg(long, default_value_t = xha_shim::attach::DEFAULT_READY_TIMEOUT.as_secs_f64())]
    timeout_s: f64,
    /// How long a leftover daemon gets between SIGTERM and SIGKILL, in seconds.
    #[arg(long, default_value_t = xha_shim::attach::DEFAULT_STOP_TIMEOUT.as_secs_f64())]
    stop_timeout_s: f64,
    /// No /dev/nbdN (hosts without the nbd driver, tests): nbd-http-server
    /// runs with --no-attach, attach waits for `NBD server ready on` and
    /// prints the socket's URI, nbd+unix:///VOLUME?socket=RUN-DIR/VOLUME.socket
    #[arg(long)]
    no_kernel_device: bool,
    /// Pool key file for both daemons (`--auth-key-file`; default: theirs,
    /// /etc/xha-heartbeat/pool.key if it exists). See SECURITY.md.
    #[arg(long)]
    auth_key_file: Option<PathBuf>,
    /// Extra argument for http-disk-server (repeatable), e.g.
    /// --http-disk-server-arg=--drbd-promote=auto
    #[arg(long = "http-disk-server-arg", allow_hyphen_values = true)]
    http_disk_server_args: Vec<String>,
    /// Extra argument for nbd-http-server (repeatable).
    #[arg(long = "nbd-http-server-arg", allow_hyphen_values = true)]
    nbd_http_server_args: Vec<String>,
    /// Where http-disk-server and nbd-http-server are (default: the
    /// directory of this executable).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

/// Stop a volume's daemons started by `attach` and remove its device link.
///
/// SIGTERM to the process group of nbd-http-server (which detaches
/// /dev/nbdN), then of http-disk-server, SIGKILL after --stop-timeout-s;
/// then LINK-DIR/VOLUME, the pid files and the socket go (logs stay). A pid
/// file naming anything but our daemon for this volume is removed, never
/// signalled. Detaching a volume that is not attached succeeds with a note.
#[derive(Args)]
struct DetachArgs {
    /// Volume name, as given to attach.
    #[arg(long)]
    volume: xha_shim::attach::VolumeName,
    /// The run directory given to attach.
    #[arg(long, default_value = xha_shim::attach::DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
    /// The link directory given to attach.
    #[arg(long, default_value = xha_shim::attach::DEFAULT_LINK_DIR)]
    link_dir: PathBuf,
    /// How long each daemon gets between SIGTERM and SIGKILL, in seconds.
    #[arg(long, default_value_t = xha_shim::attach::DEFAULT_STOP_TIMEOUT.as_secs_f64())]
    stop_timeout_s: f64,
}

/// Ask every http-disk-server of a volume for its status and show who serves.
///
/// Exit status 0 when exactly one serves, 1 when none or several do.
#[derive(Args)]
struct StatusArgs {
    /// The servers' URLs, comma separated: http://HOST:PORT[,...]
    #[arg(long, value_delimiter = ',', required = true)]
    urls: Vec<String>,
    /// Per-server timeout, in ms.
    #[arg(long, default_value_t = STATUS_TIMEOUT.as_millis() as u64)]
    timeout_ms: u64,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Initialise a statefile like `ha_set_pool_state init`: one 266,240-byte
/// write of zeros, then the global section, then all 64 host sections.
#[derive(Args)]
struct InitArgs {
    /// The statefile TARGET (path or NBD URI).
    device: String,
    /// Hosts in the pool (config_hosts), 1 to 64.
    #[arg(long)]
    hosts: usize,
    /// Generation UUID (random if absent).
    #[arg(long)]
    gen_uuid: Option<StatefileUuid>,
    /// UUID of host i, repeated in host order (default: the emulator's
    /// e0a1a7ed... UUIDs, so `heartbeat` matches without being told).
    #[arg(long = "host-uuid")]
    host_uuids: Vec<StatefileUuid>,
    /// Index of the master host.
    #[arg(long, default_value_t = 0)]
    master: usize,
    /// Write pool state ACTIVE instead of INIT.
    #[arg(long)]
    active: bool,
}

/// Decode a statefile and show the pool and every configured host.
#[derive(Args)]
struct InspectArgs {
    /// The statefile TARGET (path or NBD URI).
    device: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Emulate N hosts' statefile threads and judge each as xhad would.
///
/// Every host opens its own target once and, every StateFileInterval (+-500 ms
/// jitter seeded from its UUID), writes its own 1 KiB section with sequence+1
/// (once it has read the file whole), then reads the global section and every
/// configured host section, retrying failed pieces up to 3 times with 1 s
/// pauses. Exit status 1 if any host would lose statefile access or be fenced.
#[derive(Args)]
struct HeartbeatArgs {
    /// Statefile TARGET of each host, in host order; one TARGET is shared by
    /// all hosts (each still opens it separately).
    #[arg(long = "target", required = true)]
    targets: Vec<String>,
    /// Hosts to emulate (the statefile's config_hosts if absent).
    #[arg(long)]
    hosts: Option<usize>,
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    /// Base timeout t in seconds, from which all timeouts derive as xapi does
    /// (t2 = max(2, t/20), T2 = t, Ws = T2 + 15).
    #[arg(long, default_value_t = DEFAULT_TIMEOUT_BASE_SECS)]
    timeout_base: u64,
    /// Override StateFileInterval t2, in ms (for tests).
    #[arg(long)]
    interval_ms: Option<u64>,
    /// Override StateFileTimeout T2, in ms (Ws follows as T2 + 15 s).
    #[arg(long)]
    sf_timeout_ms: Option<u64>,
    /// Override StateFileWatchdogTimeout Ws, in ms.
    #[arg(long)]
    watchdog_ms: Option<u64>,
    /// Half-width of the per-cycle jitter, in ms.
    #[arg(long, default_value_t = DEFAULT_JITTER.as_millis() as u64)]
    jitter_ms: u64,
    /// Cycle every 400 ms, as xhad does during fault handling.
    #[arg(long)]
    accelerated: bool,
    /// UUID of host i, repeated in host order (default: the emulator's).
    #[arg(long = "host-uuid")]
    host_uuids: Vec<StatefileUuid>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xha-shim: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Init(a) => init(a),
        Command::Inspect(a) => inspect(a),
        Command::Heartbeat(a) => heartbeat(a),
        Command::Demo(a) => demo(a),
        Command::Status(a) => status(a),
        Command::Attach(a) => attach(a),
        Command::Detach(a) => detach(a),
        Command::Linstor { command } => {
            let code = linstor::rest::cli::execute(
                &command,
                &mut std::io::stdout(),
                &mut std::io::stderr(),
            )?;
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
        }
    }
}

fn seconds(name: &str, v: f64) -> Result<Duration> {
    if !(v > 0.0 && v.is_finite()) {
        bail!("--{name} must be a positive number of seconds, not {v}");
    }
    Ok(Duration::from_secs_f64(v))
}

fn demo(a: DemoArgs) -> Result<ExitCode> {
    if a.timeout_base < MIN_TIMEOUT_BASE_SECS {
        bail!(
            "--timeout-base {} is below xapi's minimum of {MIN_TIMEOUT_BASE_SECS} s; use --interval-ms/--sf-timeout-ms for shorter test timings",
            a.timeout_base
        );
    }
    let timeouts = Timeouts::derive(a.timeout_base).with_overrides(
        a.interval_ms.map(Duration::from_millis),
        a.sf_timeout_ms.map(Duration::from_millis),
        a.watchdog_ms.map(Duration::from_millis),
    );
    let outage = match a.outage {
        Some(o) => seconds("outage", o)?,
        None => timeouts.statefile_timeout + Duration::from_secs(5),
    };
    let binaries = DaemonBinaries::locate(a.bin_dir.as_deref())?;
    catch_interrupts()?;
    let cfg = DemoConfig {
        hosts: a.hosts as usize,
        duration: seconds("duration", a.duration)?,
        kill_every: seconds("kill-every", a.kill_every)?,
        restart_after: seconds("restart-after", a.restart_after)?,
        failover: !a.no_failover,
        outage,
        timeouts,
        accelerated: a.accelerated,
        jitter: Duration::from_millis(a.jitter_ms),
        binaries,
        keep_dir: a.keep_dir,
        output: Output::for_stdout(a.json),
    };
    let report = run_demo(&cfg)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_text());
    }
    Ok(if report.interrupted {
        ExitCode::from(130)
    } else if report.any_hurt {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn attach(a: AttachArgs) -> Result<ExitCode> {
    use xha_shim::attach::{attach, print_line, AttachConfig, DaemonState, LocalReplica};
    for u in &a.urls {
        if !u.starts_with("http://") {
            bail!("--urls: `{u}` is not an http://ADDR:PORT URL");
        }
    }
    let absolute = |p: PathBuf| {
        std::path::absolute(&p).with_context(|| format!("making {} absolute", p.display()))
    };
    let local = match (a.disk, a.ip, a.port) {
        (Some(disk), Some(ip), Some(port)) => Some(LocalReplica {
            disk: absolute(disk)?,
            ip,
            port,
        }),
        (None, None, None) => None,
        _ => bail!("--disk, --ip and --port go together"),
    };
    if a.device_size == 0 || !a.device_size.is_multiple_of(512) {
        bail!(
            "--device-size {} must be a positive multiple of 512",
            a.device_size
        );
    }
    let cfg = AttachConfig {
        volume: a.volume,
        urls: a.urls,
        local,
        device_size: a.device_size,
        run_dir: absolute(a.run_dir)?,
        link_dir: absolute(a.link_dir)?,
        kernel_device: !a.no_kernel_device,
        ready_timeout: seconds("timeout-s", a.timeout_s)?,
        stop_timeout: seconds("stop-timeout-s", a.stop_timeout_s)?,
        binaries: DaemonBinaries::locate(a.bin_dir.as_deref())?,
        http_disk_server_args: with_key(a.http_disk_server_args, a.auth_key_file.as_deref())?,
        nbd_http_server_args: with_key(a.nbd_http_server_args, a.auth_key_file.as_deref())?,
    };
    let done = attach(&cfg)?;
    let say = |name: &str, s: DaemonState| match s {
        DaemonState::Started { pid } => eprintln!("xha-shim: {name} started (pid {pid})"),
        DaemonState::AlreadyRunning { pid } => {
            eprintln!("xha-shim: {name} already running (pid {pid}), kept")
        }
    };
    if let Some(s) = done.http_disk_server {
        say("http-disk-server", s);
    }
    say("nbd-http-server", done.nbd_http_server);
    print_line(&done.path)?;
    Ok(ExitCode::SUCCESS)
}

fn detach(a: DetachArgs) -> Result<ExitCode> {
    use xha_shim::attach::{detach, DetachConfig, Stopped};
    let cfg = DetachConfig {
        volume: a.volume,
        run_dir: std::path::absolute(&a.run_dir).context("making --run-dir absolute")?,
        link_dir: std::path::absolute(&a.link_dir).context("making --link-dir absolute")?,
        stop_timeout: seconds("stop-timeout-s", a.stop_timeout_s)?,
    };
    let done = detach(&cfg)?;
    if done.nothing_to_do() {
        eprintln!(
            "xha-shim: volume {}: nothing to detach (no daemon of ours running, no link)",
            cfg.volume
        );
        return Ok(ExitCode::SUCCESS);
    }
    for (name, s) in [
        ("nbd-http-server", &done.nbd_http_server),
        ("http-disk-server", &done.http_disk_server),
    ] {
        match s {
            Stopped::NotRunning => {}
            Stopped::Terminated { pid } => eprintln!("xha-shim: {name} (pid {pid}) stopped"),
            Stopped::Killed { pid } => {
                eprintln!("xha-shim: {name} (pid {pid}) ignored SIGTERM; killed")
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn status(a: StatusArgs) -> Result<ExitCode> {
    for u in &a.urls {
        if !u.starts_with("http://") {
            bail!("--urls: `{u}` is not an http://HOST:PORT URL");
        }
    }
    let report = StatusReport::poll(&a.urls, Duration::from_millis(a.timeout_ms.max(1)));
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_table(std::time::SystemTime::now()));
    }
    Ok(if report.exactly_one_serves() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn init(a: InitArgs) -> Result<ExitCode> {
    if a.hosts == 0 || a.hosts > MAX_HOSTS {
        bail!(
            "--hosts {} is out of range: a statefile holds 1 to {MAX_HOSTS} hosts",
            a.hosts
        );
    }
    if a.master >= a.hosts {
        bail!("--master {} is not one of the {} hosts", a.master, a.hosts);
    }
    let gen_uuid = a.gen_uuid.unwrap_or_else(StatefileUuid::random);
    let mut spec = InitSpec::emulated(a.hosts, gen_uuid);
    if !a.host_uuids.is_empty() {
        if a.host_uuids.len() != a.hosts {
            bail!(
                "{} --host-uuid given for {} hosts; give one per host or none",
                a.host_uuids.len(),
                a.hosts
            );
        }
        spec.host_uuids = a.host_uuids;
    }
    spec.master = spec.host_uuids[a.master];
    if a.active {
        spec.pool_state = PoolState::Active;
    }
    let mut target = open_target(&a.device)?;
    initialise(&mut *target, &spec).with_context(|| {
        format!(
            "initialising statefile {} (it must be at least 266240 bytes and writable)",
            a.device
        )
    })?;
    println!(
        "initialised statefile {}: generation {}, {} hosts, pool state {}",
        a.device, spec.gen_uuid, spec.config_hosts, spec.pool_state
    );
    Ok(ExitCode::SUCCESS)
}

fn inspect(a: InspectArgs) -> Result<ExitCode> {
    let mut target = open_target(&a.device)?;
    let image =
        read_statefile(&mut *target).with_context(|| format!("reading statefile {}", a.device))?;
    let ins = Inspection::new(a.device.clone(), &image);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&ins)?);
    } else {
        print!("{}", ins.to_table());
    }
    Ok(if ins.all_checksums_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn heartbeat(a: HeartbeatArgs) -> Result<ExitCode> {
    if a.timeout_base < MIN_TIMEOUT_BASE_SECS {
        bail!(
            "--timeout-base {} is below xapi's minimum of {MIN_TIMEOUT_BASE_SECS} s; use --interval-ms/--sf-timeout-ms for shorter test timings",
            a.timeout_base
        );
    }
    if !(a.duration > 0.0 && a.duration.is_finite()) {
        bail!("--duration must be a positive number of seconds");
    }
    let timeouts = Timeouts::derive(a.timeout_base).with_overrides(
        a.interval_ms.map(Duration::from_millis),
        a.sf_timeout_ms.map(Duration::from_millis),
        a.watchdog_ms.map(Duration::from_millis),
    );
    let n = match a.hosts {
        Some(n) => n,
        None => {
            let mut t = open_target(&a.targets[0])?;
            let image = read_statefile(&mut *t)
                .with_context(|| format!("reading statefile {}", a.targets[0]))?;
            let g = image.global.with_context(|| {
                format!(
                    "no --hosts given and the global section of {} is unreadable",
                    a.targets[0]
                )
            })?;
            g.config_hosts as usize
        }
    };
    if n == 0 || n > MAX_HOSTS {
        bail!("{n} hosts is out of range: 1 to {MAX_HOSTS}");
    }
    if a.targets.len() != 1 && a.targets.len() != n {
        bail!(
            "{} --target given for {n} hosts; give one per host, or one for all",
            a.targets.len()
        );
    }
    if !a.host_uuids.is_empty() && a.host_uuids.len() != n {
        bail!(
            "{} --host-uuid given for {n} hosts; give one per host or none",
            a.host_uuids.len()
        );
    }
    let mut targets = Vec::with_capacity(n);
    let mut hosts = Vec::with_capacity(n);
    for i in 0..n {
        let spec = if a.targets.len() == 1 {
            &a.targets[0]
        } else {
            &a.targets[i]
        };
        targets.push(open_target(spec).with_context(|| format!("host {i}"))?);
        hosts.push(HostConfig {
            index: i,
            uuid: a
                .host_uuids
                .get(i)
                .copied()
                .unwrap_or_else(|| emulated_host_uuid(i)),
            config_hosts: n,
            timeouts,
            accelerated: a.accelerated,
            jitter: Duration::from_millis(a.jitter_ms),
            expected_gen_uuid: None,
        });
    }
    let report = run_emulation(
        EmulationConfig {
            hosts,
            duration: Duration::from_secs_f64(a.duration),
        },
        targets,
    );
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_table());
    }
    Ok(if report.any_hurt {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// `args` plus `--auth-key-file=ABSOLUTE-PATH` when a key file is given
/// (absolute: the daemons may run from another directory).
fn with_key(mut args: Vec<String>, key: Option<&std::path::Path>) -> Result<Vec<String>> {
    if let Some(k) = key {
        let k =
            std::path::absolute(k).with_context(|| format!("making {} absolute", k.display()))?;
        args.insert(0, format!("--auth-key-file={}", k.display()));
    }
    Ok(args)
}
