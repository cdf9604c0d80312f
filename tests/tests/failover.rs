//! Failover with real processes: three http-disk-servers (`file` arbiter) on
//! one file, one nbd-http-server given all three URLs, and a libnbd client
//! that writes, reads back and verifies while the serving process is killed
//! for real. No timing is asserted here (that is the failover benchmark's
//! job); what is asserted is that the client never sees an error, never reads
//! anything but its last acknowledged write, and that at most one server
//! serves at any moment.

use std::time::Duration;

use heartbeat_tests::cluster::{ClientReport, DiskCluster, HeartbeatClient};
use heartbeat_tests::supervisor::WatchdogSupervisor;
use heartbeat_tests::{require_tool, start_nbd_server, NbdServerConfig, Profile, TempDisk};
use nix::sys::signal::Signal;

const DISK_SIZE: u64 = 4 * 1024 * 1024;
const CLIENT_OFFSET: u64 = 4096;

/// The bytes the heartbeat client writes for `seq` (mirrors the Python client).
fn client_pattern(client_id: u32, seq: u64, len: usize) -> Vec<u8> {
    let head = format!("client={client_id} seq={seq:012} ");
    head.as_bytes().iter().copied().cycle().take(len).collect()
}

fn assert_clean(report: &ClientReport, disk: &TempDisk, offset: u64) {
    report.assert_clean_run();
    let seq = report.last_acked_seq.expect("client acknowledged writes");
    assert_eq!(
        disk.read(offset, 1024),
        client_pattern(report.client_id, seq, 1024),
        "the backing file does not hold the last acknowledged write"
    );
}

#[test]
fn sigkill_of_the_serving_process_20_times_loses_nothing() {
    require_tool("nbdinfo");
    let disk = TempDisk::zeroed(DISK_SIZE);
    let dir = disk.dir.path().to_path_buf();
    let mut cluster = DiskCluster::start(&disk.path, 3, &dir, Profile::Debug, &[]).unwrap();
    let first = cluster.wait_for_serving(Duration::from_secs(10)).unwrap();
    let nbd_cfg = NbdServerConfig::new(dir.join("nbd.sock"), cluster.urls());
    let _nbd = start_nbd_server(&nbd_cfg, &dir).unwrap();
    let client = HeartbeatClient::start(&nbd_cfg.uri(), 0, CLIENT_OFFSET, 50, &dir).unwrap();

    let mut serving = first;
    let mut epochs = Vec::new();
    for round in 0..20 {
        std::thread::sleep(Duration::from_millis(300));
        cluster.servers[serving].as_mut().unwrap().kill_now();
        let next = cluster
            .wait_for_serving(Duration::from_secs(10))
            .unwrap_or_else(|e| {
                panic!("round {round}: no takeover after SIGKILL of server {serving}: {e}")
            });
        assert_ne!(
            next, serving,
            "round {round}: the killed server cannot serve"
        );
        let epoch = cluster.roles()[next].unwrap().1;
        epochs.push(epoch);
        cluster.restart(serving).unwrap();
        // The restarted server must come back as a standby, not take the role.
        assert_eq!(
            cluster.serving().unwrap(),
            next,
            "round {round}: restarted server took the role"
        );
        serving = next;
    }
    std::thread::sleep(Duration::from_millis(300));
    let report = client.finish().unwrap();
    assert_clean(&report, &disk, CLIENT_OFFSET);
    assert!(
        report.writes_acked >= 20,
        "too few writes acknowledged: {}",
        report.writes_acked
    );
    assert!(
        epochs.windows(2).all(|w| w[1] > w[0]),
        "epoch must grow with every takeover: {epochs:?}"
    );
}

#[test]
fn sigstop_of_the_serving_process_is_ended_by_the_watchdog() {
    require_tool("nbdinfo");
    let disk = TempDisk::zeroed(DISK_SIZE);
    let dir = disk.dir.path().to_path_buf();
    let watchdog = Duration::from_secs(2);
    let mut cluster = DiskCluster::start(&disk.path, 0, &dir, Profile::Debug, &[]).unwrap();
    let mut supervisors = Vec::new();
    for i in 0..3 {
        let sup = WatchdogSupervisor::new(&dir, &format!("srv{i}"), watchdog).unwrap();
        let mut config = heartbeat_tests::DiskServerConfig::new(&disk.path);
        config.arbiter = Some("file".into());
        config.env = sup.env();
        cluster.configs.push(config);
        cluster.servers.push(None);
        cluster.restart(i).unwrap();
        sup.watch(cluster.servers[i].as_ref().unwrap().pid().as_raw());
        supervisors.push(sup);
    }
    let serving = cluster.wait_for_serving(Duration::from_secs(10)).unwrap();
    let nbd_cfg = NbdServerConfig::new(dir.join("nbd.sock"), cluster.urls());
    let _nbd = start_nbd_server(&nbd_cfg, &dir).unwrap();
    let client = HeartbeatClient::start(&nbd_cfg.uri(), 0, CLIENT_OFFSET, 50, &dir).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let (ready, pings, _) = supervisors[serving].snapshot();
    assert!(ready, "server did not send READY=1 to the service manager");
    assert!(pings > 0, "server sent no WATCHDOG=1 pings");

    cluster.servers[serving]
        .as_ref()
        .unwrap()
        .signal(Signal::SIGSTOP);
    let next = heartbeat_tests::poll_until(Duration::from_secs(15), || {
        cluster.serving().ok().filter(|&i| i != serving)
    })
    .expect("no other server took over after the watchdog ended the stopped one");
    let (_, _, fired) = supervisors[serving].snapshot();
    assert!(
        fired.is_some(),
        "the watchdog never fired on the stopped server"
    );
    assert!(
        cluster.servers[serving]
            .as_mut()
            .unwrap()
            .wait_exit(Duration::from_secs(5))
            .is_some(),
        "the stopped server is still alive after the watchdog kill"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(cluster.serving().unwrap(), next);
    let report = client.finish().unwrap();
    assert_clean(&report, &disk, CLIENT_OFFSET);
}
