//! The NBD client against NBD servers nobody here wrote (nbdkit, qemu-nbd),
//! through the `xha-shim` binary. A missing server fails the test (it must
//! not pass by skipping): `bash scripts/install-deps.sh` installs both.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn require(tool: &str) {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "`{tool}` is not installed (or `{tool} --version` fails): run `bash scripts/install-deps.sh`; \
         these tests need the real NBD servers and do not skip"
    );
}

fn wait_for_socket(sock: &Path) {
    let start = Instant::now();
    while !sock.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{} never appeared",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn xha_shim(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_xha-shim"))
        .args(args)
        .output()
        .expect("run xha-shim")
}

fn exercise(uri: &str) {
    let out = xha_shim(&["init", uri, "--hosts", "3"]);
    assert!(out.status.success(), "{out:?}");
    let out = xha_shim(&[
        "heartbeat",
        "--target",
        uri,
        "--duration",
        "2",
        "--interval-ms",
        "200",
        // T2 = 10 s: "ok" means no call (and no section standing still)
        // over T2/2 = 5 s, not 1 s, which a loaded machine can exceed with
        // nothing wrong in the NBD client.
        "--sf-timeout-ms",
        "10000",
        "--jitter-ms",
        "50",
        "--json",
    ]);
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for h in report["hosts"].as_array().unwrap() {
        assert_eq!(h["verdict"], "ok", "{h}");
        assert!(h["cycles"].as_u64().unwrap() >= 5, "{h}");
    }
    let out = xha_shim(&["inspect", uri, "--json"]);
    assert!(out.status.success(), "{out:?}");
    let ins: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ins["all_checksums_ok"], true);
    assert!(
        ins["hosts"][2]["section"]["Ok"]["sequence"]
            .as_u64()
            .unwrap()
            >= 4
    );
}

#[test]
fn against_nbdkit_memory() {
    require("nbdkit");
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("nbdkit.sock");
    let _server = Server(
        Command::new("nbdkit")
            .args(["--foreground", "--exit-with-parent", "-U"])
            .arg(&sock)
            .args(["memory", "4M"])
            .spawn()
            .expect("start nbdkit"),
    );
    wait_for_socket(&sock);
    exercise(&format!("nbd+unix:///sf?socket={}", sock.display()));
}

#[test]
fn against_qemu_nbd_over_tcp() {
    require("qemu-nbd");
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk");
    std::fs::write(&disk, vec![0u8; 4 << 20]).unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let _server = Server(
        Command::new("qemu-nbd")
            .args([
                "--persistent",
                "--shared=8",
                "--format=raw",
                "--export-name=sf",
                "--bind=127.0.0.1",
            ])
            .arg(format!("--port={port}"))
            .arg(&disk)
            .stderr(Stdio::null())
            .spawn()
            .expect("start qemu-nbd"),
    );
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "qemu-nbd never listened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    exercise(&format!("nbd://127.0.0.1:{port}/sf"));
    // What went over NBD is on the disk, where a path target reads it.
    let out = xha_shim(&["inspect", disk.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
}
