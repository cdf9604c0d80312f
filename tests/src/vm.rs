//! QEMU test VMs (tests/vm/): building the shared initramfs and guest-io,
//! booting one VM or a pair joined by a datagram link, and reading the
//! `VMTEST PASS|FAIL` lines of their serial consoles.
//!
//! VMs run under TCG (this host's KVM cannot boot a stock kernel), so they
//! are CPU-bound and slow down 2-3x when the machine is busy. Two rules keep
//! them inside their timeouts on a 2-core machine:
//! - one VM test at a time, in this process ([`VmTestSlot`] takes a mutex)
//!   and across processes (it also holds an `flock` on
//!   `target/vm-cache/.vm-test.lock`: another `cargo test` running VM tests
//!   waits instead of halving both tests' CPU);
//! - generous host-side limits ([`ONE_VM_TIMEOUT`], [`TWO_VM_TIMEOUT`]):
//!   a scenario that fails still says why from inside the guest long
//!   before, and the limit only catches a hung guest.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crate::{free_port, require_tool, run_with_timeout, target_dir, workspace_root};

/// Host-side limit for one single-VM scenario (about 20-40 s on a quiet
/// machine, boot included).
pub const ONE_VM_TIMEOUT: Duration = Duration::from_secs(150);
/// Host-side limit for a two-VM scenario (both VMs share the CPUs).
pub const TWO_VM_TIMEOUT: Duration = Duration::from_secs(240);

/// `tests/vm`.
pub fn vm_dir() -> PathBuf {
    workspace_root().join("tests/vm")
}

/// The right to run VMs, held for a whole test: see the module doc.
/// On drop it prints how long the test held it (the test's own time,
/// without the wait for the slot).
pub struct VmTestSlot {
    _guard: MutexGuard<'static, ()>,
    _file: std::fs::File,
    since: Instant,
}

impl Drop for VmTestSlot {
    fn drop(&mut self) {
        eprintln!(
            "VM test {} took {:.1} s",
            std::thread::current().name().unwrap_or("?"),
            self.since.elapsed().as_secs_f64()
        );
    }
}

/// Waits for the VM slot of this process and of this machine's target dir.
pub fn one_vm_test_at_a_time() -> VmTestSlot {
    static LOCK: Mutex<()> = Mutex::new(());
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = target_dir().join("vm-cache");
    std::fs::create_dir_all(&dir).expect("create target/vm-cache");
    let path = dir.join(".vm-test.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    // SAFETY: flock on a descriptor we own; released when the file closes.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(
        rc,
        0,
        "flock {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    VmTestSlot {
        _guard: guard,
        _file: file,
        since: Instant::now(),
    }
}

/// Builds the shared initramfs (tests/vm/build-initramfs.sh) and the guest
/// I/O tool once per test process; returns the guest-io binary.
pub fn guest_io() -> PathBuf {
    static GUEST_IO: OnceLock<PathBuf> = OnceLock::new();
    GUEST_IO
        .get_or_init(|| {
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
        })
        .clone()
}

/// What to boot: a scenario of tests/vm/scenarios, files copied into the
/// guest, `vmt_*` parameters and extra run-vm.sh arguments.
#[derive(Debug, Clone)]
pub struct VmSpec {
    pub scenario: String,
    pub files: Vec<PathBuf>,
    pub params: Vec<(String, String)>,
    pub extra: Vec<String>,
    pub timeout: Duration,
}

impl VmSpec {
    pub fn new(scenario: &str, files: &[PathBuf]) -> Self {
        VmSpec {
            scenario: scenario.to_owned(),
            files: files.to_vec(),
            params: Vec::new(),
            extra: Vec::new(),
            timeout: ONE_VM_TIMEOUT,
        }
    }

    pub fn param(mut self, key: &str, value: impl ToString) -> Self {
        self.params.push((key.to_owned(), value.to_string()));
        self
    }

    pub fn params(mut self, params: &[(&str, String)]) -> Self {
        for (k, v) in params {
            self.params.push(((*k).to_owned(), v.clone()));
        }
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn boot(&self) -> VmRun {
        VmRun::boot(self)
    }
}

/// One VM run: exit status, serial console, run-vm.sh's stderr, wall time.
#[derive(Debug)]
pub struct VmRun {
    pub name: String,
    pub status: std::process::ExitStatus,
    pub serial: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl VmRun {
    pub fn boot(spec: &VmSpec) -> Self {
        let mut cmd = Command::new("bash");
        cmd.arg(vm_dir().join("run-vm.sh"))
            .arg("--scenario")
            .arg(vm_dir().join("scenarios").join(&spec.scenario))
            .args(["--timeout", &spec.timeout.as_secs().to_string()]);
        for f in &spec.files {
            cmd.arg("--file").arg(f);
        }
        for (k, v) in &spec.params {
            cmd.args(["--param", &format!("{k}={v}")]);
        }
        cmd.args(&spec.extra);
        let started = Instant::now();
        let (status, serial, stderr) =
            run_with_timeout(&mut cmd, spec.timeout + Duration::from_secs(60))
                .expect("run tests/vm/run-vm.sh");
        let run = VmRun {
            name: spec.scenario.clone(),
            status,
            serial,
            stderr,
            elapsed: started.elapsed(),
        };
        eprintln!(
            "VM {} ({}) ran {:.1} s, run-vm.sh {}",
            spec.scenario,
            spec.params
                .iter()
                .find(|(k, _)| k == "mode" || k == "role")
                .map(|(_, v)| v.as_str())
                .unwrap_or("-"),
            run.elapsed.as_secs_f64(),
            run.status
        );
        run
    }

    /// Whether the guest printed `VMTEST PASS name`.
    pub fn passed(&self, name: &str) -> bool {
        let pass = format!("VMTEST PASS {name}");
        self.serial.lines().any(|l| l.trim_end() == pass)
    }

    /// The first `VMTEST FAIL` / `VMTEST TIMEOUT` line, or what is missing.
    pub fn failure(&self) -> &str {
        self.serial
            .lines()
            .find(|l| l.starts_with("VMTEST FAIL") || l.starts_with("VMTEST TIMEOUT"))
            .unwrap_or("no VMTEST PASS/FAIL line (guest crashed or hung?)")
    }

    /// The serial console and run-vm.sh's stderr, for a failure message.
    pub fn report(&self) -> String {
        format!(
            "--- {} serial console (run-vm.sh {}, {:.1} s) ---\n{}\n--- run-vm.sh stderr ---\n{}",
            self.name,
            self.status,
            self.elapsed.as_secs_f64(),
            self.serial,
            self.stderr
        )
    }

    /// Panics with the whole serial log (and `logs`, e.g. host daemons')
    /// unless the guest printed `VMTEST PASS name`.
    pub fn assert_pass(&self, name: &str) {
        self.assert_pass_with_logs(name, &[]);
    }

    pub fn assert_pass_with_logs(&self, name: &str, logs: &[(&str, String)]) {
        if self.passed(name) {
            return;
        }
        let mut msg = format!(
            "VM scenario {name} did not pass: {}\n{}",
            self.failure(),
            self.report()
        );
        for (what, log) in logs {
            msg.push_str(&format!("\n--- {what} ---\n{log}"));
        }
        panic!("{msg}");
    }
}

/// Boots two VMs at once joined by a QEMU datagram link (eth1; vm-a
/// 192.168.77.1, vm-b 192.168.77.2), each with `vmt_role` (a|b),
/// `vmt_hostname` (vm-a|vm-b), `vmt_ip1` and `vmt_peer` set.
pub fn boot_pair(spec: &VmSpec) -> (VmRun, VmRun) {
    let (port_a, port_b) = (free_port(), free_port());
    let side = |role: &str, ip: &str, peer: &str, link: String, mac: &str| {
        let mut s = spec
            .clone()
            .param("role", role)
            .param("hostname", format!("vm-{role}"))
            .param("ip1", ip)
            .param("peer", peer);
        s.extra
            .extend(["--vmnet".into(), link, "--mac-suffix".into(), mac.into()]);
        std::thread::spawn(move || VmRun::boot(&s))
    };
    let a = side(
        "a",
        "192.168.77.1",
        "192.168.77.2",
        format!("{port_a}:{port_b}"),
        "0a",
    );
    let b = side(
        "b",
        "192.168.77.2",
        "192.168.77.1",
        format!("{port_b}:{port_a}"),
        "0b",
    );
    (
        a.join().expect("vm-a thread"),
        b.join().expect("vm-b thread"),
    )
}
