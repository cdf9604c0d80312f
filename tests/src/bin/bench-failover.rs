//! Failover benchmark. Three http-disk-servers (`file` arbiter) on one file,
//! and N emulated hosts (1 and 3), each with its own nbd-http-server given all
//! three URLs and a libnbd client writing its 1 KiB section every 100 ms and
//! reading it back. The serving process is SIGKILLed 20 times (then
//! restarted as a standby), and SIGSTOPped a few times under an sd_notify
//! watchdog that kills it when its pings stop.
//!
//! Reported per scenario: the longest time any single request waited around
//! each event (min / median / max over events), client-visible errors, and
//! lost writes (a read-back that was not the last acknowledged write).
//!
//!   cargo run --release -p heartbeat-tests --bin bench-failover -- \
//!       [--kills 20] [--stops 5] [--watchdog-ms 3000] [--markdown]

use std::time::Duration;

use anyhow::{Context, Result};
use heartbeat_tests::cluster::{monotonic_now, ClientReport, DiskCluster, HeartbeatClient};
use heartbeat_tests::supervisor::WatchdogSupervisor;
use heartbeat_tests::{
    require_tool, start_nbd_server, Daemon, DiskServerConfig, NbdServerConfig, Profile, TempDisk,
};
use nix::sys::signal::Signal;

const DISK_SIZE: u64 = 4 * 1024 * 1024;
const INTERVAL_MS: u64 = 100;

#[derive(Clone, Copy, PartialEq)]
enum Fault {
    Kill,
    StopWithWatchdog,
}

struct Outcome {
    label: String,
    stalls_ms: Vec<f64>,
    errors: usize,
    lost: usize,
    acked: u64,
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn run_scenario(fault: Fault, clients: u32, events: usize, watchdog: Duration) -> Result<Outcome> {
    let disk = TempDisk::zeroed(DISK_SIZE);
    let dir = disk.dir.path().to_path_buf();
    let mut cluster = DiskCluster::start(&disk.path, 0, &dir, Profile::Release, &[])?;
    let mut supervisors = Vec::new();
    for i in 0..3 {
        let mut config = DiskServerConfig::new(&disk.path);
        config.arbiter = Some("file".into());
        config.profile = Profile::Release;
        if fault == Fault::StopWithWatchdog {
            let sup = WatchdogSupervisor::new(&dir, &format!("srv{i}"), watchdog)?;
            config.env = sup.env();
            supervisors.push(sup);
        }
        cluster.configs.push(config);
        cluster.servers.push(None);
        restart(&mut cluster, &supervisors, i)?;
    }
    let mut serving = cluster.wait_for_serving(Duration::from_secs(10))?;

    let mut nbd_servers: Vec<Daemon> = Vec::new();
    let mut heartbeat_clients = Vec::new();
    for c in 0..clients {
        let mut cfg = NbdServerConfig::new(dir.join(format!("host{c}.sock")), cluster.urls());
        cfg.name = format!("statefile-host{c}");
        cfg.profile = Profile::Release;
        cfg.device_size = Some(DISK_SIZE);
        nbd_servers.push(start_nbd_server(&cfg, &dir)?);
        let offset = 4096 * (c as u64 + 1);
        heartbeat_clients.push(HeartbeatClient::start(
            &cfg.uri(),
            c,
            offset,
            INTERVAL_MS,
            &dir,
        )?);
    }
    std::thread::sleep(Duration::from_secs(1));

    let mut event_times = Vec::new();
    for round in 0..events {
        event_times.push(monotonic_now());
        match fault {
            Fault::Kill => cluster.servers[serving].as_mut().unwrap().kill_now(),
            Fault::StopWithWatchdog => cluster.servers[serving]
                .as_ref()
                .unwrap()
                .signal(Signal::SIGSTOP),
        }
        let next = heartbeat_tests::poll_until(watchdog + Duration::from_secs(10), || {
            cluster.serving().ok().filter(|&i| i != serving)
        })
        .with_context(|| format!("round {round}: no takeover"))?;
        if fault == Fault::StopWithWatchdog {
            cluster.servers[serving]
                .as_mut()
                .unwrap()
                .wait_exit(Duration::from_secs(5));
        }
        restart(&mut cluster, &supervisors, serving)?;
        serving = next;
        std::thread::sleep(Duration::from_millis(1000));
    }

    let reports: Vec<ClientReport> = heartbeat_clients
        .into_iter()
        .map(|c| c.finish())
        .collect::<Result<_>>()?;
    let window = match fault {
        Fault::Kill => 0.9,
        Fault::StopWithWatchdog => watchdog.as_secs_f64() + 2.0,
    };
    let stalls_ms = event_times
        .iter()
        .map(|&t| {
            reports
                .iter()
                .map(|r| r.longest_wait_between(t - 0.25, t + window))
                .fold(0.0, f64::max)
                * 1000.0
        })
        .collect();
    let label = match fault {
        Fault::Kill => format!("SIGKILL x{events}, {clients} client(s)"),
        Fault::StopWithWatchdog => format!(
            "SIGSTOP x{events}, watchdog {} ms, {clients} client(s)",
            watchdog.as_millis()
        ),
    };
    Ok(Outcome {
        label,
        stalls_ms,
        errors: reports.iter().map(|r| r.errors.len()).sum(),
        lost: reports
            .iter()
            .map(|r| r.mismatches.len() + usize::from(r.final_ok == Some(false)))
            .sum(),
        acked: reports.iter().map(|r| r.writes_acked).sum(),
    })
}

fn restart(cluster: &mut DiskCluster, supervisors: &[WatchdogSupervisor], i: usize) -> Result<()> {
    cluster.restart(i)?;
    if let Some(sup) = supervisors.get(i) {
        sup.watch(cluster.servers[i].as_ref().unwrap().pid().as_raw());
    }
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let kills: usize = arg(&args, "--kills", 20);
    let stops: usize = arg(&args, "--stops", 5);
    let watchdog = Duration::from_millis(arg(&args, "--watchdog-ms", 3000));
    let markdown = args.iter().any(|a| a == "--markdown");
    require_tool("nbdinfo");

    let mut outcomes = Vec::new();
    for clients in [1, 3] {
        outcomes.push(run_scenario(Fault::Kill, clients, kills, watchdog)?);
    }
    for clients in [1, 3] {
        outcomes.push(run_scenario(
            Fault::StopWithWatchdog,
            clients,
            stops,
            watchdog,
        )?);
    }

    if markdown {
        println!("| scenario | stall min / median / max (ms) | client errors | lost writes | writes acked |");
        println!("|---|---|---|---|---|");
    }
    for o in &outcomes {
        let mut s = o.stalls_ms.clone();
        s.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let (min, med, max) = (s[0], s[s.len() / 2], s[s.len() - 1]);
        if markdown {
            println!(
                "| {} | {min:.0} / {med:.0} / {max:.0} | {} | {} | {} |",
                o.label, o.errors, o.lost, o.acked
            );
        } else {
            println!(
                "{:<45} stall ms min {min:>6.0} median {med:>6.0} max {max:>6.0} | errors {} | lost {} | acked {}",
                o.label, o.errors, o.lost, o.acked
            );
        }
    }
    Ok(())
}
