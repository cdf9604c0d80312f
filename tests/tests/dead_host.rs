//! A dead host, not just a dead process: the serving http-disk-server runs in
//! its own network namespace (a test host this test creates), and its link
//! is cut so that packets to it vanish without a reset, as when a host
//! freezes or its network dies. Clients must notice the silence within their
//! request timeout, keep their in-flight request alive, and land on the
//! server that the arbiter lets take over.
//!
//! With the `file` arbiter the lock stays with the cut-off process until it
//! dies, so the test kills it (what the cut-off host's watchdog or a fence
//! does). With the `drbd` arbiter no kill is needed: the survivors' DRBD
//! notices the lost peer (ping timeout), keeps quorum (2 of 3), raises
//! may_promote, and one survivor promotes; the cut-off Primary loses quorum
//! and its I/O fails (`on-no-quorum io-error`), so it demotes itself.
//!
//! Needs root (network namespaces, veth); the CI machine runs tests as root.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use heartbeat_tests::cluster::{DiskCluster, HeartbeatClient};
use heartbeat_tests::{
    binary, require_tool, start_nbd_server, Daemon, DiskServerConfig, NbdServerConfig, Profile,
    TempDisk,
};

const DISK_SIZE: u64 = 4 * 1024 * 1024;
const CLIENT_OFFSET: u64 = 8192;

/// A network namespace joined to this one by a veth pair; removed on drop.
struct TestHost {
    ns: String,
    host_if: String,
    guest_if: String,
    guest_ip: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {} (the dead-host test needs root for network namespaces)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestHost {
    fn create() -> Self {
        let id = std::process::id() % 10_000;
        let net = 1 + std::process::id() % 250;
        let host = Self {
            ns: format!("hbdead{id}"),
            host_if: format!("hbd{id}a"),
            guest_if: format!("hbd{id}b"),
            guest_ip: format!("10.213.{net}.2"),
        };
        let host_ip = format!("10.213.{net}.1/30");
        let guest_cidr = format!("{}/30", host.guest_ip);
        ip(&["netns", "add", &host.ns]);
        ip(&[
            "link",
            "add",
            &host.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &host.guest_if,
        ]);
        ip(&["link", "set", &host.guest_if, "netns", &host.ns]);
        ip(&["addr", "add", &host_ip, "dev", &host.host_if]);
        ip(&["link", "set", &host.host_if, "up"]);
        ip(&[
            "-n",
            &host.ns,
            "addr",
            "add",
            &guest_cidr,
            "dev",
            &host.guest_if,
        ]);
        ip(&["-n", &host.ns, "link", "set", &host.guest_if, "up"]);
        ip(&["-n", &host.ns, "link", "set", "lo", "up"]);
        host
    }

    /// Cut the test host off: its side of the link goes down, so packets to
    /// it are dropped silently (no RST, no ICMP).
    fn cut(&self) {
        ip(&["-n", &self.ns, "link", "set", &self.guest_if, "down"]);
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

fn start_in_namespace(host: &TestHost, cfg: &DiskServerConfig, log_dir: &Path) -> Daemon {
    let bin = binary("http-disk-server", cfg.profile);
    // `ip netns exec` execs the server, so the daemon's pid is the server's.
    let mut args = vec!["netns".to_string(), "exec".into(), host.ns.clone()];
    args.push(bin.display().to_string());
    args.extend(cfg.args());
    let log = log_dir.join("http-disk-server-dead-host.log");
    let mut d = Daemon::spawn("http-disk-server (test host)", Path::new("ip"), &args, log)
        .expect("spawn http-disk-server in the test host");
    d.wait_for_line(Duration::from_secs(20), |l| l == "Server ready!")
        .expect("server in the test host ready");
    d
}

#[test]
fn a_cut_off_serving_host_is_replaced_without_client_errors() {
    require_tool("ip");
    let disk = TempDisk::zeroed(DISK_SIZE);
    let dir = disk.dir.path().to_path_buf();
    let host = TestHost::create();

    // The server on the test host starts first, so it holds the role.
    let mut remote = DiskServerConfig::new(&disk.path);
    remote.ip = host.guest_ip.clone();
    remote.port = 8076;
    remote.arbiter = Some("file".into());
    let mut remote_server = start_in_namespace(&host, &remote, &dir);
    let cluster = DiskCluster::start(&disk.path, 2, &dir, Profile::Debug, &[]).unwrap();
    heartbeat_tests::poll_until(Duration::from_secs(10), || {
        heartbeat_tests::cluster::fetch_status(&remote.url())
            .ok()
            .filter(|s| s.role == heartbeat_wire::Role::Serving)
    })
    .expect("the test host's server serves first");

    let mut urls = vec![remote.url()];
    urls.extend(cluster.urls());
    let nbd_cfg = NbdServerConfig::new(dir.join("nbd.sock"), urls);
    let _nbd = start_nbd_server(&nbd_cfg, &dir).unwrap();
    let client = HeartbeatClient::start(&nbd_cfg.uri(), 1, CLIENT_OFFSET, 50, &dir).unwrap();
    std::thread::sleep(Duration::from_millis(500));

    host.cut();
    // The local servers are standbys behind a holder nobody can reach.
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        cluster.serving().is_err(),
        "a standby served while the cut-off holder still held the lock"
    );
    // What the cut-off host's watchdog or a fence would do.
    remote_server.kill_now();
    let next = cluster
        .wait_for_serving(Duration::from_secs(10))
        .expect("a local server takes over once the cut-off holder is gone");
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(cluster.serving().unwrap(), next);

    let report = client.finish().unwrap();
    report.assert_clean_run();
    let longest = report.requests.iter().map(|r| r.1).fold(0.0, f64::max);
    eprintln!("longest request across the cut: {longest:.3} s");
    drop(cluster);
}
