//! `http-disk-server --unix-socket` with nbd-http-server's `unix:` URLs: the
//! co-located server reached without the TCP stack. Real binaries, real NBD
//! clients (qemu-io, fio), real processes killed for real.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use heartbeat_tests::cluster::{DiskCluster, HeartbeatClient};
use heartbeat_tests::*;

const SIZE: u64 = 8 << 20;

fn unix_server(disk: &TempDisk, socket: &Path, extra: &[&str]) -> (Daemon, DiskServerConfig) {
    let mut cfg = DiskServerConfig::new(&disk.path);
    cfg.extra = vec!["--unix-socket".into(), socket.display().to_string()];
    cfg.extra.extend(extra.iter().map(|a| a.to_string()));
    let server = start_disk_server(&cfg, disk.dir.path()).expect("start http-disk-server");
    (server, cfg)
}

fn unix_url(socket: &Path) -> String {
    format!("unix:{}", socket.display())
}

#[test]
fn nbd_clients_reach_the_disk_through_the_unix_socket() {
    require_tool("qemu-io");
    require_tool("fio");
    let disk = TempDisk::zeroed(SIZE);
    let socket = disk.file("hds.sock");
    let (mut server, _) = unix_server(&disk, &socket, &[]);
    let meta = std::fs::symlink_metadata(&socket).expect("socket file");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    let nbd_cfg = NbdServerConfig::new(disk.file("nbd.sock"), vec![unix_url(&socket)]);
    let nbd = start_nbd_server(&nbd_cfg, disk.dir.path()).expect("start nbd-http-server");
    for (offset, len, pattern) in [(0u64, 512u64, 0x11u8), (3 * 512 + 7, 4096, 0x22)] {
        let (status, out, err) = run_with_timeout(
            Command::new("qemu-io").args([
                "-f",
                "raw",
                &nbd_cfg.uri(),
                "-c",
                &format!("write -P {pattern:#x} {offset} {len}"),
                "-c",
                &format!("read -P {pattern:#x} {offset} {len}"),
            ]),
            Duration::from_secs(120),
        )
        .unwrap();
        assert!(
            status.success() && !out.contains("Pattern verification failed"),
            "qemu-io {offset}+{len}: {out} {err}"
        );
        assert!(
            disk.read(offset, len as usize)
                .iter()
                .all(|&b| b == pattern),
            "backing file at {offset}+{len} does not hold {pattern:#x}"
        );
    }
    // Many requests in flight over the one transport.
    let (status, out, err) = run_with_timeout(
        Command::new("fio").args([
            "--name=verify",
            "--ioengine=nbd",
            &format!("--uri={}", nbd_cfg.uri()),
            "--rw=randrw",
            "--bs=4k",
            "--iodepth=8",
            "--size=8M",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
        ]),
        Duration::from_secs(300),
    )
    .unwrap();
    assert!(
        status.success() && !out.contains("verify: bad"),
        "fio: {out}\n{err}"
    );
    assert!(
        nbd.log().contains(&unix_url(&socket)),
        "nbd-http-server does not name the unix: upstream it uses"
    );

    // A clean stop removes the socket file.
    server.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(20)).is_some());
    assert!(!socket.exists(), "socket file left behind by a clean stop");
}

#[test]
fn the_unix_socket_demands_the_mac_too() {
    require_tool("curl");
    let disk = TempDisk::zeroed(SIZE);
    let socket = disk.file("hds.sock");
    let (_server, _) = unix_server(&disk, &socket, &[]);
    let data = disk.file("data");
    std::fs::write(&data, pseudo_random_bytes(512, 9)).unwrap();
    let curl = |args: &[&str]| {
        let out = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--unix-socket",
            ])
            .arg(&socket)
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let put = format!("@{}", data.display());
    let code = curl(&[
        "-X",
        "PUT",
        "-H",
        "Content-Range: bytes 0-511/*",
        "--data-binary",
        &put,
        "http://localhost/",
    ]);
    assert_eq!(code, "401", "an unsigned write over the Unix socket");
    assert_eq!(
        curl(&["-H", "Range: bytes=0-511", "http://localhost/"]),
        "401",
        "an unsigned read over the Unix socket"
    );
    assert_eq!(
        disk.read(0, 512),
        vec![0u8; 512],
        "the refused write changed the disk"
    );
}

#[test]
fn a_path_that_is_not_a_socket_is_refused_and_left_alone() {
    let disk = TempDisk::zeroed(SIZE);
    let path = disk.file("not-a-socket");
    std::fs::write(&path, b"keep me").unwrap();
    let mut cfg = DiskServerConfig::new(&disk.path);
    cfg.extra = vec!["--unix-socket".into(), path.display().to_string()];
    let err = start_disk_server(&cfg, disk.dir.path())
        .err()
        .expect("must not start");
    assert!(
        format!("{err:#}").contains("is not a socket"),
        "unclear error: {err:#}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
}

#[test]
fn a_relative_unix_url_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(binary("nbd-http-server", Profile::Debug))
        .args(["--socket-path"])
        .arg(dir.path().join("nbd.sock"))
        .args([
            "--nbd-name",
            "hb",
            "--urls",
            "unix:hds.sock",
            "--device-size",
            "1048576",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("absolute path"), "unclear error: {err}");
}

/// The local server (Unix socket) and a remote one (TCP) fail over to each
/// other like any two servers: the stale socket file of a SIGKILLed server
/// refuses connections at once, and the restarted server replaces it.
#[test]
fn failover_between_the_unix_socket_and_a_tcp_server_loses_nothing() {
    require_tool("nbdinfo");
    let disk = TempDisk::zeroed(4 << 20);
    let dir = disk.dir.path().to_path_buf();
    let socket = disk.file("local.sock");
    let mut cluster = DiskCluster::start(&disk.path, 0, &dir, Profile::Debug, &[]).unwrap();
    for extra in [
        vec!["--unix-socket".to_string(), socket.display().to_string()],
        vec![],
    ] {
        let mut config = DiskServerConfig::new(&disk.path);
        config.arbiter = Some("file".into());
        config.extra = extra;
        cluster.configs.push(config);
        cluster.servers.push(None);
        let i = cluster.servers.len() - 1;
        cluster.restart(i).unwrap();
        // The local server starts first and takes the role.
        cluster.wait_for_serving(Duration::from_secs(10)).unwrap();
    }
    assert_eq!(cluster.serving().unwrap(), 0);
    let urls = vec![unix_url(&socket), cluster.configs[1].url()];
    let nbd_cfg = NbdServerConfig::new(dir.join("nbd.sock"), urls);
    let nbd = start_nbd_server(&nbd_cfg, &dir).unwrap();
    let client = HeartbeatClient::start(&nbd_cfg.uri(), 0, 4096, 50, &dir).unwrap();

    for (round, (victim, heir)) in [(0usize, 1usize), (1, 0)].into_iter().enumerate() {
        std::thread::sleep(Duration::from_millis(500));
        cluster.servers[victim].as_mut().unwrap().kill_now();
        let next = cluster
            .wait_for_serving(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("round {round}: no takeover: {e}"));
        assert_eq!(next, heir, "round {round}");
        cluster.restart(victim).unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    let report = client.finish().unwrap();
    report.assert_clean_run();
    assert!(
        report.writes_acked >= 5,
        "too few writes: {}",
        report.writes_acked
    );
    let log = nbd.log();
    let to_unix = format!("failover: now serving from {}", unix_url(&socket));
    assert!(
        log.contains(&to_unix),
        "no failover back to the Unix socket:\n{log}"
    );
}
