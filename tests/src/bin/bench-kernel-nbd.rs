//! Kernel NBD benchmark, one VM boot (QEMU TCG, so absolute figures are
//! slow; compare the ratios of one run):
//!
//! * latency of xhad's operations (512 B O_DIRECT|O_SYNC reads, 1 KiB
//!   O_DIRECT|O_SYNC writes, queue depth 1) through the guest kernel's
//!   `/dev/nbdN`: attached by our nbd-http-server (in the guest) to
//!   http-disk-server on the host, against Debian's nbd-client on
//!   `nbdkit file` on the host (the no-proxy limit);
//! * the failover stall: a writer doing xhad's cycle on our device while
//!   the serving http-disk-server (`file` arbiter, two on one file) is
//!   SIGKILLed; the longest single operation, and whether any failed.
//!
//! Both paths cross QEMU user networking (guest to 10.0.2.2). nbdkit
//! advertises FLUSH, so the kernel adds a flush round trip to each O_SYNC
//! write there; our device does not (writes are durable when acknowledged).
//!
//!   cargo run --release -p heartbeat-tests --bin bench-kernel-nbd -- [--count 300]
//!
//! Needs tests/vm/install-vm-deps.sh (qemu-system-x86, nbdkit).

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use heartbeat_tests::cluster::DiskCluster;
use heartbeat_tests::{
    binary, free_port, require_tool, run_with_timeout, target_dir, workspace_root, Daemon, Profile,
    TempDisk,
};

const DISK_SIZE: u64 = 4 * 1024 * 1024;

fn main() -> Result<()> {
    let mut count = 300u32;
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--count") {
        count = args
            .get(i + 1)
            .context("--count N")?
            .parse()
            .context("--count N")?;
    }
    for tool in ["qemu-system-x86_64", "nbdkit", "cpio", "gzip"] {
        require_tool(tool);
    }
    let vm = workspace_root().join("tests/vm");
    let (status, out, err) = run_with_timeout(
        Command::new("bash").arg(vm.join("build-initramfs.sh")),
        Duration::from_secs(600),
    )?;
    if !status.success() {
        bail!("tests/vm/build-initramfs.sh failed: {out}{err}");
    }
    let guest_target = target_dir().join("vm-cache/guest-io-target");
    let ok = Command::new("cargo")
        .args(["build", "--quiet", "--release", "--manifest-path"])
        .arg(vm.join("guest-io/Cargo.toml"))
        .arg("--target-dir")
        .arg(&guest_target)
        .status()?
        .success();
    if !ok {
        bail!("cargo build of tests/vm/guest-io failed");
    }
    let io = guest_target.join("release/guest-io");
    let nbd_bin = binary("nbd-http-server", Profile::Release);

    // nbdkit file on its own file; our chain on two servers sharing another.
    let kit_disk = TempDisk::zeroed(DISK_SIZE);
    let kit_port = free_port();
    let kit_args: Vec<String> = vec![
        "--foreground".into(),
        "--exit-with-parent".into(),
        "-i".into(),
        "127.0.0.1".into(),
        "-p".into(),
        kit_port.to_string(),
        "file".into(),
        kit_disk.path.display().to_string(),
    ];
    let _nbdkit = Daemon::spawn(
        "nbdkit",
        &PathBuf::from("nbdkit"),
        &kit_args,
        kit_disk.file("nbdkit.log"),
    )?;
    let disk = TempDisk::zeroed(DISK_SIZE);
    let dir = disk.dir.path().to_path_buf();
    let mut cluster = DiskCluster::start(&disk.path, 2, &dir, Profile::Release, &[])?;
    let serving = cluster.wait_for_serving(Duration::from_secs(10))?;
    let urls: Vec<String> = cluster
        .urls()
        .iter()
        .map(|u| u.replace("127.0.0.1", "10.0.2.2"))
        .collect();

    let ctl = std::net::TcpListener::bind("127.0.0.1:0")?;
    let ctl_port = ctl.local_addr()?.port();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let killer = std::thread::spawn(move || -> Option<Duration> {
        ctl.set_nonblocking(true).ok()?;
        let mut s = loop {
            match ctl.accept() {
                Ok((s, _)) => break s,
                Err(_) if done_rx.try_recv().is_err() => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(_) => return None,
            }
        };
        s.set_nonblocking(false).ok()?;
        let mut line = String::new();
        std::io::BufReader::new(s.try_clone().ok()?)
            .read_line(&mut line)
            .ok()?;
        let t0 = Instant::now();
        cluster.servers[serving].as_mut()?.kill_now();
        heartbeat_tests::poll_until(Duration::from_secs(20), || {
            cluster.serving().ok().filter(|&i| i != serving)
        })?;
        let took = t0.elapsed();
        let _ = s.write_all(b"killed\n");
        drop(s);
        let _ = done_rx.recv_timeout(Duration::from_secs(300));
        Some(took)
    });

    let mut cmd = Command::new("bash");
    cmd.arg(vm.join("run-vm.sh"))
        .arg("--scenario")
        .arg(vm.join("scenarios/http-nbd.sh"))
        .args(["--timeout", "240"])
        .arg("--file")
        .arg(&nbd_bin)
        .arg("--file")
        .arg(&io)
        // The guest's nbd-http-server signs its requests with the pool key the
        // host servers were started with, as in production.
        .arg("--file")
        .arg(format!(
            "{}:/etc/xha-heartbeat/pool.key",
            heartbeat_tests::test_key_file().display()
        ));
    for p in [
        "mode=bench".to_string(),
        format!("urls={}", urls.join(",")),
        format!("size={DISK_SIZE}"),
        format!("nbdkit={kit_port}"),
        format!("ctl={ctl_port}"),
        format!("count={count}"),
        "after=6".into(),
    ] {
        cmd.args(["--param", &p]);
    }
    let t0 = Instant::now();
    let (_, serial, _) = run_with_timeout(&mut cmd, Duration::from_secs(300))?;
    let vm_secs = t0.elapsed().as_secs_f64();
    let _ = done_tx.send(());
    let host_takeover = killer.join().ok().flatten();
    if !serial.contains("VMTEST PASS http-nbd-bench") {
        bail!("the bench scenario failed; serial console:\n{serial}");
    }
    println!("# bench-kernel-nbd: QEMU TCG guest, kernel /dev/nbdN, queue depth 1, {count} ops each, VM {vm_secs:.0} s");
    println!("# path             op       n     p50_us  p99_us  max_us");
    let mut p50 = std::collections::BTreeMap::new();
    for line in serial.lines() {
        let Some(rest) = line.strip_prefix("bench ") else {
            continue;
        };
        let words: Vec<&str> = rest.split_whitespace().collect();
        if words.len() == 7 && words[1] == "lat" {
            let field = |k: &str| {
                words
                    .iter()
                    .find_map(|w| w.strip_prefix(k))
                    .unwrap_or("?")
                    .to_string()
            };
            println!(
                "{:<18} {:<8} {:<5} {:>7} {:>7} {:>7}",
                words[0],
                words[2],
                field("n="),
                field("p50_us="),
                field("p99_us="),
                field("max_us=")
            );
            if let Ok(v) = field("p50_us=").parse::<f64>() {
                p50.insert((words[0].to_string(), words[2].to_string()), v);
            }
        } else if words.first() == Some(&"failover-stall") {
            println!(
                "failover (SIGKILL of the serving http-disk-server): {}",
                words[1..].join(" ")
            );
        }
    }
    for op in ["read512", "write1k"] {
        if let (Some(ours), Some(kit)) = (
            p50.get(&("http-nbd".to_string(), op.to_string())),
            p50.get(&("nbdkit-file".to_string(), op.to_string())),
        ) {
            println!("ratio p50 {op}: http-nbd / nbdkit-file = {:.2}", ours / kit);
        }
    }
    if let Some(t) = host_takeover {
        println!(
            "standby serving (seen from the host) {:.0} ms after the kill",
            t.as_secs_f64() * 1000.0
        );
    }
    Ok(())
}
