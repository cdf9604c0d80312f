//! Data-path benchmark: fio's `nbd` engine, in one run, against
//! (a) our chain nbd-http-server -> http-disk-server -> file, as on the host
//!     that serves: nbd-http-server reaches its own host's server by
//!     `unix:` URL (`--unix-socket`), and
//! (b) `nbdkit file` on the same file (the no-proxy limit), plain and with
//!     every write forced to FUA (a durable write, which ours always is).
//!
//! Prints p50/p99 total latency (fio's `lat`: submission plus completion) at
//! queue depth 1, IOPS at queue depth 8
//! and with three clients at once, and the ratios the data-path issue sets as
//! bars. Then, unless `--no-placement` (or on one CPU), the qd1 512 B points
//! again with fio and the servers held to fixed CPUs, alike for both paths:
//! where the time goes when the scheduler's choices are taken out. Last,
//! unless `--no-floor`, the qd1 points on two more paths in front of
//! `nbdkit file`: a byte relay (`socat`, no protocol work at all), and
//! nbdkit's `nbd` plugin (an NBD proxy in C). Both are two hops over Unix
//! sockets with no HTTP and no MAC: the floor of any design that puts a
//! second process in the path, on this machine. That table also has our
//! chain over loopback TCP (`http://` URL), as on the hosts that do not serve.
//! Each point of the main table is run `--repeat` times (default 3) on
//! every path, the paths taking turns, and the bars are judged on the
//! medians: on a small VM one run's p50 depends on where the scheduler
//! happened to put the processes, and that changes from run to run (every
//! run's p50 is printed too).
//! Usage:
//!   cargo run --release -p heartbeat-tests --bin bench-datapath -- [--seconds N] [--repeat N] [--markdown] [--no-placement] [--no-floor]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use heartbeat_tests::{
    binary, free_port, require_tool, run_with_timeout, start_disk_server, start_nbd_server, Daemon,
    DiskServerConfig, NbdServerConfig, Profile, TempDisk,
};
use nix::unistd::Pid;

const DISK_SIZE: u64 = 4 * 1024 * 1024;

/// One fio measurement point.
#[derive(Debug, Clone, Copy)]
struct Point {
    op: Op,
    block: u64,
    iodepth: u32,
    clients: u32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Read,
    Write,
}

impl Op {
    fn fio_rw(self) -> &'static str {
        match self {
            Op::Read => "randread",
            Op::Write => "randwrite",
        }
    }
    fn json_key(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Measured {
    p50_us: f64,
    p99_us: f64,
    iops: f64,
}

impl Measured {
    /// Each figure's median over repeated runs of one point.
    fn median(samples: &[Measured]) -> Measured {
        let median_of = |f: fn(&Measured) -> f64| {
            let mut v: Vec<f64> = samples.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            let mid = v.len() / 2;
            if v.len() % 2 == 1 {
                v[mid]
            } else {
                (v[mid - 1] + v[mid]) / 2.0
            }
        };
        Measured {
            p50_us: median_of(|m| m.p50_us),
            p99_us: median_of(|m| m.p99_us),
            iops: median_of(|m| m.iops),
        }
    }
}

/// The repeated runs of one point on one path, and their median.
#[derive(Debug, Clone, Default)]
struct Sampled {
    runs: Vec<Measured>,
    median: Measured,
}

impl Sampled {
    fn new(runs: Vec<Measured>) -> Self {
        Self {
            median: Measured::median(&runs),
            runs,
        }
    }

    /// The p50 of every run, for the report ("95.7, 110.2, 142.0").
    fn p50s(&self) -> String {
        let v: Vec<String> = self
            .runs
            .iter()
            .map(|m| format!("{:.1}", m.p50_us))
            .collect();
        v.join(", ")
    }
}

fn run_fio(uri: &str, point: Point, seconds: u64) -> Result<Measured> {
    run_fio_on(uri, point, seconds, None)
}

/// [`run_fio`] with fio's jobs held to one CPU (`--cpus_allowed`) if given.
fn run_fio_on(uri: &str, point: Point, seconds: u64, cpu: Option<usize>) -> Result<Measured> {
    let mut cmd = Command::new("fio");
    if let Some(cpu) = cpu {
        cmd.arg(format!("--cpus_allowed={cpu}"));
    }
    cmd.args([
        "--name=bench",
        "--ioengine=nbd",
        &format!("--uri={uri}"),
        &format!("--rw={}", point.op.fio_rw()),
        &format!("--bs={}", point.block),
        &format!("--iodepth={}", point.iodepth),
        &format!("--numjobs={}", point.clients),
        "--group_reporting",
        &format!("--size={DISK_SIZE}"),
        "--time_based",
        &format!("--runtime={seconds}"),
        "--ramp_time=1",
        "--randrepeat=0",
        "--lat_percentiles=1",
        "--output-format=json",
    ]);
    let (status, out, err) = run_with_timeout(&mut cmd, Duration::from_secs(seconds + 60))?;
    if !status.success() {
        bail!("fio failed for {point:?} on {uri}: {err}");
    }
    let json_start = out.find('{').context("fio printed no JSON")?;
    let doc: serde_json::Value =
        serde_json::from_str(&out[json_start..]).context("parse fio JSON")?;
    let job = &doc["jobs"][0][point.op.json_key()];
    // Total latency, not completion latency: with the nbd engine a reply can
    // arrive while fio is still inside the submit call, and `clat` then
    // shows impossible figures (a 12 us round trip through two daemons).
    // `lat_ns` carries percentiles only with --lat_percentiles=1.
    let pct = |p: &str| job["lat_ns"]["percentile"][p].as_f64().unwrap_or(f64::NAN) / 1000.0;
    if job["total_ios"].as_u64().unwrap_or(0) == 0 {
        bail!("fio completed no I/O for {point:?} on {uri}: {err}");
    }
    Ok(Measured {
        p50_us: pct("50.000000"),
        p99_us: pct("99.000000"),
        iops: job["iops"].as_f64().unwrap_or(0.0),
    })
}

/// `nbdkit file` on `disk` (every write forced to FUA if asked), serving
/// `socket`.
fn start_nbdkit(disk: &Path, socket: &Path, force_fua: bool, log: &Path) -> Result<Daemon> {
    let file = format!("file={}", disk.display());
    let plugin: Vec<&str> = if force_fua {
        vec!["--filter=fua", "file", &file, "fuamode=force"]
    } else {
        vec!["file", &file]
    };
    spawn_nbdkit("nbdkit", socket, &plugin, log)
}

/// `nbdkit nbd` on `socket`, forwarding every request to the NBD server on
/// `backend`: a second hop with nothing else in it.
fn start_nbdkit_proxy(backend: &Path, socket: &Path, log: &Path) -> Result<Daemon> {
    let backend = format!("socket={}", backend.display());
    spawn_nbdkit("nbdkit-proxy", socket, &["nbd", &backend], log)
}

/// `socat` relaying every connection on `socket` to `backend` byte for byte
/// (one forked relay per connection): a second process in the path and
/// nothing else, the cheapest second hop there is.
fn start_relay(backend: &Path, socket: &Path, log: &Path) -> Result<Daemon> {
    let args = [
        format!("UNIX-LISTEN:{},fork", socket.display()),
        format!("UNIX-CONNECT:{}", backend.display()),
    ];
    let daemon = Daemon::spawn("socat", Path::new("socat"), &args, log.to_path_buf())?;
    heartbeat_tests::poll_until(Duration::from_secs(10), || socket.exists().then_some(()))
        .with_context(|| format!("socat did not create its socket {}", socket.display()))?;
    Ok(daemon)
}

/// The libnbd URI of the default export on a Unix socket.
fn unix_uri(socket: &Path) -> String {
    format!("nbd+unix:///?socket={}", socket.display())
}

/// nbdkit in the foreground on the Unix socket `socket`, with `plugin` (the
/// filters, plugin name and its parameters); returns once the socket exists.
fn spawn_nbdkit(name: &str, socket: &Path, plugin: &[&str], log: &Path) -> Result<Daemon> {
    let mut args = vec![
        "-f".to_string(),
        "-U".into(),
        socket.display().to_string(),
        "--exit-with-parent".into(),
    ];
    args.extend(plugin.iter().map(|a| a.to_string()));
    let daemon = Daemon::spawn(name, Path::new("/usr/bin/nbdkit"), &args, log.to_path_buf())?;
    heartbeat_tests::poll_until(Duration::from_secs(10), || socket.exists().then_some(()))
        .with_context(|| format!("{name} did not create its socket {}", socket.display()))?;
    Ok(daemon)
}

/// The whole number after `flag`, if the flag is given.
fn count_flag(args: &[String], flag: &str) -> Result<Option<u64>> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(|s| {
            s.parse()
                .with_context(|| format!("{flag} takes a whole number"))
        })
        .transpose()
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let seconds = count_flag(&args, "--seconds")?.unwrap_or(10);
    let repeat = count_flag(&args, "--repeat")?.unwrap_or(3).max(1) as usize;
    let markdown = args.iter().any(|a| a == "--markdown");
    let floor = !args.iter().any(|a| a == "--no-floor");
    for tool in ["fio", "nbdkit"] {
        require_tool(tool);
    }
    if floor {
        require_tool("socat");
    }

    let disk = TempDisk::random(DISK_SIZE, 7);
    let dir = disk.dir.path().to_path_buf();

    let mut server_cfg = DiskServerConfig::new(&disk.path);
    server_cfg.arbiter = Some("none".into());
    server_cfg.profile = Profile::Release;
    server_cfg.port = free_port();
    let local_socket = dir.join("http-disk-server.sock");
    server_cfg.extra = vec!["--unix-socket".into(), local_socket.display().to_string()];
    // The benchmark keeps up 20,000+ signed requests a second for minutes;
    // the default replay cache (sized for heartbeat traffic: 8,700 a second
    // over the 30 s window) then fills, the server answers 429, and
    // requests starve. A million nonces cover 35,000 a second.
    server_cfg
        .extra
        .extend(["--auth-replay-capacity".into(), (1u32 << 20).to_string()]);
    let disk_server = start_disk_server(&server_cfg, &dir)?;
    let start_chain = |socket: &str, url: String| {
        let mut cfg = NbdServerConfig::new(dir.join(socket), vec![url]);
        cfg.profile = Profile::Release;
        cfg.device_size = Some(DISK_SIZE);
        start_nbd_server(&cfg, &dir).map(|daemon| (daemon, cfg.uri()))
    };
    let (nbd_server, chain_uri) =
        start_chain("chain.sock", format!("unix:{}", local_socket.display()))?;
    let (_nbd_tcp_server, chain_tcp_uri) = start_chain("chain-tcp.sock", server_cfg.url())?;

    let plain_sock = dir.join("nbdkit.sock");
    let nbdkit = start_nbdkit(&disk.path, &plain_sock, false, &dir.join("nbdkit.log"))?;
    let plain_uri = unix_uri(&plain_sock);
    let fua_sock = dir.join("nbdkit-fua.sock");
    let nbdkit_fua = start_nbdkit(&disk.path, &fua_sock, true, &dir.join("nbdkit-fua.log"))?;
    let fua_uri = unix_uri(&fua_sock);

    eprintln!(
        "chain: {} ; http-disk-server unix:{} (and {} for the TCP chain) ; baseline nbdkit {}",
        binary("nbd-http-server", Profile::Release).display(),
        local_socket.display(),
        server_cfg.url(),
        plain_uri
    );

    let qd1 = |op, block| Point {
        op,
        block,
        iodepth: 1,
        clients: 1,
    };
    let mut plan = Vec::new();
    for block in [512u64, 1024, 4096] {
        for op in [Op::Write, Op::Read] {
            plan.push((format!("{} {block} B qd1", op.json_key()), qd1(op, block)));
        }
    }
    for op in [Op::Write, Op::Read] {
        let deep = Point {
            op,
            block: 4096,
            iodepth: 8,
            clients: 1,
        };
        plan.push((format!("{} 4096 B qd8", op.json_key()), deep));
    }
    for op in [Op::Write, Op::Read] {
        let three = Point {
            op,
            block: 4096,
            iodepth: 1,
            clients: 3,
        };
        plan.push((format!("{} 4096 B 3 clients qd1", op.json_key()), three));
    }

    let mut rows = Vec::new();
    for (name, point) in plan {
        // Writes are compared with the durable (FUA) baseline, which is what ours always is.
        let mut paths = vec![&chain_uri, &plain_uri];
        if point.op == Op::Write {
            paths.push(&fua_uri);
        }
        let mut runs = vec![Vec::new(); paths.len()];
        for round in 0..repeat {
            // The paths take turns, each round starting with the next one, so
            // that a change in the machine's state during the point (the
            // scheduler's placement, the disk's latency) falls on all of them.
            for k in 0..paths.len() {
                let i = (round + k) % paths.len();
                runs[i].push(run_fio(paths[i], point, seconds)?);
            }
        }
        let mut sampled = runs.into_iter().map(Sampled::new);
        rows.push(Row {
            ours: sampled.next().expect("ours"),
            plain: sampled.next().expect("plain"),
            fua: sampled.next(),
            name,
            point,
        });
    }

    print_report(&rows, seconds, repeat, markdown);

    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus >= 2 && !args.iter().any(|a| a == "--no-placement") {
        let paths = Paths {
            chain_uri: &chain_uri,
            chain_pids: vec![disk_server.pid(), nbd_server.pid()],
            plain_uri: &plain_uri,
            plain_pid: nbdkit.pid(),
            fua_uri: &fua_uri,
            fua_pid: nbdkit_fua.pid(),
        };
        let study = placement_study(&paths, seconds, cpus)?;
        print_placement(&study, markdown);
    }

    if floor {
        let relay_sock = dir.join("relay.sock");
        let _relay = start_relay(&plain_sock, &relay_sock, &dir.join("relay.log"))?;
        let relay_fua_sock = dir.join("relay-fua.sock");
        let _relay_fua = start_relay(&fua_sock, &relay_fua_sock, &dir.join("relay-fua.log"))?;
        let proxy_sock = dir.join("proxy.sock");
        let _proxy = start_nbdkit_proxy(&plain_sock, &proxy_sock, &dir.join("proxy.log"))?;
        let proxy_fua_sock = dir.join("proxy-fua.sock");
        let _proxy_fua =
            start_nbdkit_proxy(&fua_sock, &proxy_fua_sock, &dir.join("proxy-fua.log"))?;
        let mut floor = Vec::new();
        for block in [512u64, 1024, 4096] {
            for op in [Op::Write, Op::Read] {
                let point = qd1(op, block);
                let (direct, relay, proxy, baseline_name) = match op {
                    Op::Write => (
                        &fua_uri,
                        unix_uri(&relay_fua_sock),
                        unix_uri(&proxy_fua_sock),
                        "nbdkit+FUA",
                    ),
                    Op::Read => (
                        &plain_uri,
                        unix_uri(&relay_sock),
                        unix_uri(&proxy_sock),
                        "nbdkit",
                    ),
                };
                floor.push(FloorRow {
                    name: format!("{} {block} B qd1", op.json_key()),
                    baseline_name,
                    ours: run_fio(&chain_uri, point, seconds)?,
                    ours_tcp: run_fio(&chain_tcp_uri, point, seconds)?,
                    relay: run_fio(&relay, point, seconds)?,
                    proxy: run_fio(&proxy, point, seconds)?,
                    direct: run_fio(direct, point, seconds)?,
                });
            }
        }
        print_floor(&floor, markdown);
    }
    Ok(())
}

/// One qd1 point on our chain (Unix and TCP hop), on the byte relay, on the
/// NBD proxy, and direct.
struct FloorRow {
    name: String,
    baseline_name: &'static str,
    ours: Measured,
    ours_tcp: Measured,
    relay: Measured,
    proxy: Measured,
    direct: Measured,
}

/// A table's title, and in Markdown its header row.
fn print_heading(title: &str, columns: &[&str], markdown: bool) {
    println!("\n{title}\n");
    if markdown {
        println!("| {} |", columns.join(" | "));
        println!("|{}", "---|".repeat(columns.len()));
    }
}

fn print_floor(rows: &[FloorRow], markdown: bool) {
    print_heading(
        "Two-hop floor (no bar): ours over its Unix and over a TCP hop; a byte relay (socat) and an NBD proxy (nbdkit nbd) in front of the baseline, Unix sockets, no HTTP, no MAC; p50 in microseconds",
        &["point", "ours", "ours (TCP)", "relay", "nbd proxy", "direct", "ours / direct", "ours (TCP) / direct", "relay / direct", "nbd proxy / direct"],
        markdown,
    );
    for row in rows {
        let (o, t, r, p, d) = (
            row.ours.p50_us,
            row.ours_tcp.p50_us,
            row.relay.p50_us,
            row.proxy.p50_us,
            row.direct.p50_us,
        );
        if markdown {
            println!(
                "| {} | {o:.1} | {t:.1} | {r:.1} | {p:.1} | {d:.1} ({}) | {:.2}x | {:.2}x | {:.2}x | {:.2}x |",
                row.name,
                row.baseline_name,
                o / d,
                t / d,
                r / d,
                p / d
            );
        } else {
            println!(
                "{:<16} ours {o:>7.1} | TCP {t:>7.1} | relay {r:>7.1} | nbd proxy {p:>7.1} | direct {d:>7.1} ({}) | ours/direct {:.2}x TCP/direct {:.2}x relay/direct {:.2}x proxy/direct {:.2}x",
                row.name,
                row.baseline_name,
                o / d,
                t / d,
                r / d,
                p / d
            );
        }
    }
}

/// The three paths of the benchmark: URIs and the server processes behind them.
struct Paths<'a> {
    chain_uri: &'a str,
    chain_pids: Vec<Pid>,
    plain_uri: &'a str,
    plain_pid: Pid,
    fua_uri: &'a str,
    fua_pid: Pid,
}

/// Where fio and the servers may run in one placement.
#[derive(Debug, Clone, Copy)]
enum Placement {
    /// fio and every server process on CPU 0: no wake-up crosses CPUs.
    OneCpu,
    /// fio on CPU 0, the servers on CPU 1: every client/server hop crosses.
    ClientApart,
}

impl Placement {
    fn label(self) -> &'static str {
        match self {
            Placement::OneCpu => "fio + servers on CPU 0",
            Placement::ClientApart => "fio on CPU 0, servers on CPU 1",
        }
    }
    fn server_cpus(self) -> &'static str {
        match self {
            Placement::OneCpu => "0",
            Placement::ClientApart => "1",
        }
    }
}

/// Hold every thread of `pid` (and the threads it starts later) to `cpus`,
/// a `taskset` CPU list.
fn pin(pid: Pid, cpus: &str) -> Result<()> {
    let status = Command::new("taskset")
        .args(["--all-tasks", "--cpu-list", "--pid", cpus, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .context("run taskset (util-linux)")?;
    if !status.success() {
        bail!("taskset {cpus} for pid {pid} failed: {status}");
    }
    Ok(())
}

/// One placement-study row: qd1 p50 of ours and of the baseline it is held to.
struct PlacementRow {
    placement: Placement,
    name: String,
    ours: Measured,
    baseline: Measured,
    baseline_name: &'static str,
}

/// The qd1 512 B points again with the CPUs fixed, identically for both
/// paths. On a VM whose idle vCPUs halt, each wake-up that lands on the
/// other vCPU costs tens of microseconds; nbdkit's two-process path and our
/// three-process chain meet that cost a different number of times when the
/// scheduler is free. Fixing the placement shows the software's own cost.
fn placement_study(paths: &Paths, seconds: u64, cpus: usize) -> Result<Vec<PlacementRow>> {
    let all_cpus = format!("0-{}", cpus - 1);
    let all_pids = || {
        paths
            .chain_pids
            .iter()
            .copied()
            .chain([paths.plain_pid, paths.fua_pid])
    };
    let mut rows = Vec::new();
    let mut run = || -> Result<()> {
        for placement in [Placement::OneCpu, Placement::ClientApart] {
            for pid in all_pids() {
                pin(pid, placement.server_cpus())?;
            }
            for op in [Op::Write, Op::Read] {
                let point = Point {
                    op,
                    block: 512,
                    iodepth: 1,
                    clients: 1,
                };
                let (baseline_uri, baseline_name) = match op {
                    Op::Write => (paths.fua_uri, "nbdkit+FUA"),
                    Op::Read => (paths.plain_uri, "nbdkit"),
                };
                rows.push(PlacementRow {
                    placement,
                    name: format!("{} 512 B qd1", op.json_key()),
                    ours: run_fio_on(paths.chain_uri, point, seconds, Some(0))?,
                    baseline: run_fio_on(baseline_uri, point, seconds, Some(0))?,
                    baseline_name,
                });
            }
        }
        Ok(())
    };
    let result = run();
    for pid in all_pids() {
        pin(pid, &all_cpus)?;
    }
    result.map(|()| rows)
}

fn print_placement(rows: &[PlacementRow], markdown: bool) {
    print_heading(
        "CPU placement study (no bar: the same qd1 points with the CPUs fixed alike for both paths)",
        &["placement", "point", "ours p50", "baseline p50", "ratio"],
        markdown,
    );
    for row in rows {
        let ratio = row.ours.p50_us / row.baseline.p50_us;
        if markdown {
            println!(
                "| {} | {} | {:.1} us | {:.1} us ({}) | {ratio:.2}x |",
                row.placement.label(),
                row.name,
                row.ours.p50_us,
                row.baseline.p50_us,
                row.baseline_name
            );
        } else {
            println!(
                "{:<32} {:<16} ours {:>7.1} us | {} {:>7.1} us | {ratio:.2}x",
                row.placement.label(),
                row.name,
                row.ours.p50_us,
                row.baseline_name,
                row.baseline.p50_us
            );
        }
    }
}

/// One benchmark point measured on the three paths.
struct Row {
    name: String,
    point: Point,
    ours: Sampled,
    plain: Sampled,
    fua: Option<Sampled>,
}

impl Row {
    /// The baseline the point's bar compares with: durable writes with
    /// nbdkit+FUA, reads with plain nbdkit.
    fn baseline(&self) -> &Sampled {
        self.fua.as_ref().unwrap_or(&self.plain)
    }

    /// The ratio the data-path issue sets a bar on (of the medians), and
    /// whether it is met.
    fn verdict(&self) -> (String, Option<bool>) {
        let is_write = self.point.op == Op::Write;
        let ours = self.ours.median;
        let fua = self.fua.as_ref().map(|f| f.median);
        let plain = self.plain.median;
        match (self.point.iodepth, self.point.clients, fua) {
            (1, 1, Some(fua)) => {
                let r = ours.p50_us / fua.p50_us;
                (format!("p50 {r:.2}x nbdkit+FUA"), Some(r <= 1.5))
            }
            (1, 1, None) => {
                let r = ours.p50_us / plain.p50_us;
                (format!("p50 {r:.2}x nbdkit"), Some(r <= 2.0))
            }
            (8, 1, Some(fua)) if is_write => {
                let r = ours.iops / fua.iops;
                (format!("IOPS {r:.2}x nbdkit+FUA"), Some(r >= 0.5))
            }
            (_, _, Some(fua)) => (
                format!("IOPS {:.2}x nbdkit+FUA", ours.iops / fua.iops),
                None,
            ),
            (_, _, None) => (format!("IOPS {:.2}x nbdkit", ours.iops / plain.iops), None),
        }
    }
}

fn print_report(rows: &[Row], seconds: u64, repeat: usize, markdown: bool) {
    let lat = |m: &Sampled| format!("{:.1} / {:.1}", m.median.p50_us, m.median.p99_us);
    let iops = |m: &Sampled| format!("{:.0}", m.median.iops);
    let or_dash = |m: Option<&Sampled>, f: &dyn Fn(&Sampled) -> String| {
        m.map(f).unwrap_or_else(|| "-".into())
    };
    print_heading(
        &format!("fio nbd engine, {repeat} runs of {seconds} s per point and path, the paths taking turns; medians; 4 MiB file; latency = total (submit + completion) latency in microseconds"),
        &["point", "ours p50 / p99", "nbdkit p50 / p99", "nbdkit+FUA p50 / p99", "ours IOPS", "nbdkit IOPS", "nbdkit+FUA IOPS", "ratio", "bar", "p50 of each run: ours; baseline"],
        markdown,
    );
    for row in rows {
        let (ratio, met) = row.verdict();
        let bar = match met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "(no bar)",
        };
        let (ours, plain) = (&row.ours, &row.plain);
        let runs = format!("{}; {}", ours.p50s(), row.baseline().p50s());
        if markdown {
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {ratio} | {bar} | {runs} |",
                row.name,
                lat(ours),
                lat(plain),
                or_dash(row.fua.as_ref(), &lat),
                iops(ours),
                iops(plain),
                or_dash(row.fua.as_ref(), &iops)
            );
        } else {
            println!(
                "{:<28} ours {:>14} us {:>8} IOPS | nbdkit {:>14} us {:>8} IOPS | nbdkit+FUA {:>14} us {:>8} IOPS | {ratio} [{bar}] | runs {runs}",
                row.name, lat(ours), iops(ours), lat(plain), iops(plain), or_dash(row.fua.as_ref(), &lat), or_dash(row.fua.as_ref(), &iops)
            );
        }
    }
}
