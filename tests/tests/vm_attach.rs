//! `xha-shim attach` / `detach` with the kernel device, in a QEMU VM (this
//! host's kernel has no nbd driver): xha-shim, nbd-http-server and
//! http-disk-server are copied into the guest (xha-shim finds the daemons
//! beside itself), the replica's http-disk-server runs on the host (10.0.2.2
//! from the guest). Scenario: tests/vm/scenarios/xha-attach.sh. The host
//! checks that the guest's writes landed in the backing file.
//!
//! The small VM helpers (building the initramfs and guest-io, one boot) are
//! the same steps as in vm_kernel_nbd.rs, which owns its copies.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use heartbeat_tests::{
    binary, pseudo_random_bytes, require_tool, run_with_timeout, start_disk_server, target_dir,
    workspace_root, DiskServerConfig, Profile, TempDisk,
};

const DISK_SIZE: u64 = 4 * 1024 * 1024;
const VM_TIMEOUT: Duration = Duration::from_secs(120);

fn vm_dir() -> PathBuf {
    workspace_root().join("tests/vm")
}

/// The initramfs (tests/vm/build-initramfs.sh) and guest-io.
fn guest_io() -> PathBuf {
    for tool in ["qemu-system-x86_64", "cpio", "gzip", "apt-get", "dpkg-deb"] {
        require_tool(tool);
    }
    let (status, out, err) = run_with_timeout(
        Command::new("bash").arg(vm_dir().join("build-initramfs.sh")),
        Duration::from_secs(600),
    )
    .expect("run tests/vm/build-initramfs.sh");
    assert!(
        status.success(),
        "tests/vm/build-initramfs.sh failed ({status}); run tests/vm/install-vm-deps.sh first?\n{out}\n{err}"
    );
    let guest_target = target_dir().join("vm-cache/guest-io-target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--quiet", "--release", "--manifest-path"])
        .arg(vm_dir().join("guest-io/Cargo.toml"))
        .arg("--target-dir")
        .arg(&guest_target)
        .status()
        .expect("run cargo build for tests/vm/guest-io");
    assert!(status.success(), "cargo build of tests/vm/guest-io failed");
    guest_target.join("release/guest-io")
}

#[test]
fn xha_shim_attaches_the_kernel_device_and_detaches_it_in_a_vm() {
    let io = guest_io();
    let disk = TempDisk::zeroed(DISK_SIZE);
    let mut cfg = DiskServerConfig::new(&disk.path);
    cfg.arbiter = Some("none".into());
    cfg.profile = Profile::Release;
    // The guest's nbd-http-server has no pool key (issue 7): compatibility mode.
    cfg.auth = heartbeat_tests::ServerAuth::Unauthenticated;
    let server = start_disk_server(&cfg, disk.dir.path()).unwrap();
    let files = [
        binary("xha-shim", Profile::Release),
        binary("nbd-http-server", Profile::Release),
        binary("http-disk-server", Profile::Release),
        io,
    ];
    let seed = 31u64;
    let mut cmd = Command::new("bash");
    cmd.arg(vm_dir().join("run-vm.sh"))
        .arg("--scenario")
        .arg(vm_dir().join("scenarios/xha-attach.sh"))
        .args(["--timeout", &VM_TIMEOUT.as_secs().to_string()]);
    for f in &files {
        cmd.arg("--file").arg(f);
    }
    for (k, v) in [
        ("urls", cfg.url().replace("127.0.0.1", "10.0.2.2")),
        ("size", DISK_SIZE.to_string()),
        ("seed", seed.to_string()),
    ] {
        cmd.args(["--param", &format!("{k}={v}")]);
    }
    let (status, serial, stderr) = run_with_timeout(&mut cmd, VM_TIMEOUT + Duration::from_secs(60))
        .expect("run tests/vm/run-vm.sh");
    if !serial
        .lines()
        .any(|l| l.trim_end() == "VMTEST PASS xha-attach")
    {
        panic!(
            "VM scenario xha-attach did not pass (run-vm.sh {status})\n--- serial ---\n{serial}\n--- run-vm.sh stderr ---\n{stderr}\n--- host http-disk-server log ---\n{}",
            server.log()
        );
    }
    assert!(
        disk.read(0, 266_240) == pseudo_random_bytes(266_240, seed),
        "the guest's 260 KiB write through xha-shim's path did not land in {}",
        disk.path.display()
    );
    assert!(
        disk.read(270_336, 1024) == pseudo_random_bytes(1024, seed + 1),
        "the guest's 1 KiB write after the restart did not land in {}",
        disk.path.display()
    );
}
