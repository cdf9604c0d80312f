//! `xha-shim attach` / `detach` with the real daemons, in --no-kernel-device
//! mode (this host has no nbd driver; the kernel path runs in the VM test
//! tests/tests/vm_attach.rs). Each test has its own run and link
//! directories and loopback ports, and checks that nothing is left running.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{build_daemons, processes_mentioning};

fn xha_shim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xha-shim"))
        .args(args)
        // The notes asserted on are info/warn lines.
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .expect("run xha-shim")
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Alive and not a zombie: the daemons outlive xha-shim and are reparented
/// to a PID 1 that may not reap them.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        let state = s[s.rfind(')').unwrap() + 1..].split_whitespace().next();
        !matches!(state, Some("Z" | "X"))
    })
}

fn wait_dead(pid: i32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// One volume's world: a 4 MiB disk, run and link directories, a port.
struct Volume {
    dir: tempfile::TempDir,
    name: &'static str,
    port: u16,
}

impl Volume {
    fn new(name: &'static str) -> Self {
        build_daemons();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("disk"), vec![0u8; 4 << 20]).unwrap();
        // The daemons need a pool key (SECURITY.md): one per volume, mode 0600.
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let secret: [u8; 32] = rand::random();
            let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(dir.path().join("pool.key"))
                .and_then(|mut f| writeln!(f, "test:{hex}"))
                .unwrap();
        }
        Volume {
            dir,
            name,
            port: free_port(),
        }
    }
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
    fn run_dir(&self) -> String {
        self.path("run").display().to_string()
    }
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
    fn attach_args(&self, disk: &Path) -> Vec<String> {
        [
            "attach",
            "--volume",
            self.name,
            "--urls",
            &self.url(),
            "--disk",
            &disk.display().to_string(),
            "--ip",
            "127.0.0.1",
            "--port",
            &self.port.to_string(),
            "--run-dir",
            &self.run_dir(),
            "--link-dir",
            &self.path("links").display().to_string(),
            "--no-kernel-device",
            "--auth-key-file",
            &self.path("pool.key").display().to_string(),
        ]
        .map(String::from)
        .to_vec()
    }
    fn attach_with(&self, disk: &Path, extra: &[&str]) -> Output {
        let mut args = self.attach_args(disk);
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        xha_shim(&args)
    }
    fn attach(&self) -> Output {
        self.attach_with(&self.path("disk"), &[])
    }
    fn detach(&self) -> Output {
        xha_shim(&[
            "detach",
            "--volume",
            self.name,
            "--run-dir",
            &self.run_dir(),
            "--link-dir",
            &self.path("links").display().to_string(),
        ])
    }
    fn pid(&self, daemon: &str) -> Option<i32> {
        let f = self.path(&format!("run/{daemon}-{}.pid", self.name));
        std::fs::read_to_string(f).ok()?.trim().parse().ok()
    }
    fn uri(&self) -> String {
        format!(
            "nbd+unix:///{}?socket={}/{}.socket",
            self.name,
            self.run_dir(),
            self.name
        )
    }
    /// No daemon whose command line mentions this volume's directory.
    fn assert_nothing_running(&self) {
        let needle = self.dir.path().display().to_string();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left: Vec<String> = processes_mentioning(&needle)
                .into_iter()
                .filter(|p| {
                    p.split(':')
                        .next()
                        .and_then(|pid| pid.parse().ok())
                        .is_some_and(alive)
                })
                .collect();
            if left.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "still running: {left:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Volume {
    /// A failed test must not leave daemons behind either.
    fn drop(&mut self) {
        let _ = self.detach();
    }
}

fn nbdinfo_size(uri: &str) -> Output {
    Command::new("nbdinfo")
        .args(["--size", uri])
        .output()
        .expect("run nbdinfo (libnbd-bin)")
}

#[test]
fn attach_is_idempotent_restarts_a_killed_daemon_and_detaches() {
    let v = Volume::new("xcp-persistent-ha-statefile");

    let out = v.attach();
    assert!(out.status.success(), "{}", text(&out));
    let path = String::from_utf8(out.stdout.clone()).unwrap();
    assert_eq!(path.trim(), v.uri(), "{}", text(&out));
    let info = nbdinfo_size(&v.uri());
    assert!(info.status.success(), "{}", text(&info));
    assert_eq!(String::from_utf8_lossy(&info.stdout).trim(), "4194304");
    let http = v
        .pid("http-disk-server")
        .expect("http-disk-server pid file");
    let nbd = v.pid("nbd-http-server").expect("nbd-http-server pid file");
    assert!(alive(http) && alive(nbd));
    // Own sessions: they outlive xha-shim and its terminal.
    for pid in [http, nbd] {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let f: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        assert_eq!(f[3], pid.to_string(), "session id of {pid}: {stat}");
    }

    // Twice: same path, same processes.
    let again = v.attach();
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(again.stdout, out.stdout);
    assert_eq!(v.pid("http-disk-server"), Some(http));
    assert_eq!(v.pid("nbd-http-server"), Some(nbd));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already running"),
        "{}",
        text(&again)
    );

    // A dead nbd-http-server is restarted; the live http-disk-server stays.
    // SAFETY: kill(2) on the daemon this test just attached.
    unsafe { libc::kill(nbd, libc::SIGKILL) };
    assert!(wait_dead(nbd));
    let third = v.attach();
    assert!(third.status.success(), "{}", text(&third));
    assert_eq!(third.stdout, out.stdout);
    let nbd2 = v.pid("nbd-http-server").unwrap();
    assert_ne!(nbd2, nbd);
    assert_eq!(v.pid("http-disk-server"), Some(http));
    let info = nbdinfo_size(&v.uri());
    assert!(info.status.success(), "{}", text(&info));

    let out = v.detach();
    assert!(out.status.success(), "{}", text(&out));
    assert!(wait_dead(http) && wait_dead(nbd2), "{}", text(&out));
    assert_eq!(v.pid("http-disk-server"), None);
    assert_eq!(v.pid("nbd-http-server"), None);
    assert!(!v.path(&format!("run/{}.socket", v.name)).exists());
    v.assert_nothing_running();

    let twice = v.detach();
    assert!(twice.status.success(), "{}", text(&twice));
    assert!(
        String::from_utf8_lossy(&twice.stderr).contains("nothing to detach"),
        "{}",
        text(&twice)
    );
}

#[test]
fn a_wrong_disk_names_http_disk_server_and_leaves_nothing_running() {
    let v = Volume::new("wrong-disk");
    let out = v.attach_with(&v.path("no-such-disk"), &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(out.stdout.is_empty(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("http-disk-server exited"), "{err}");
    assert!(err.contains("`Server ready!`"), "{err}");
    assert!(err.contains("no-such-disk"), "{err}");
    assert_eq!(v.pid("http-disk-server"), None);
    assert_eq!(v.pid("nbd-http-server"), None);
    v.assert_nothing_running();
}

#[test]
fn a_failing_nbd_http_server_takes_down_the_http_disk_server_it_came_with() {
    let v = Volume::new("bad-nbd");
    let out = v.attach_with(&v.path("disk"), &["--nbd-http-server-arg=--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nbd-http-server exited"), "{err}");
    assert!(err.contains("`NBD server ready on ...`"), "{err}");
    assert!(err.contains("--no-such-flag"), "{err}");
    assert_eq!(v.pid("http-disk-server"), None);
    assert_eq!(v.pid("nbd-http-server"), None);
    v.assert_nothing_running();
}

#[test]
fn a_daemon_that_never_gets_ready_is_stopped_with_its_group_at_the_timeout() {
    let v = Volume::new("never-ready");
    // Stand-in daemons that say something, never the readiness line, and
    // start a child: the whole process group must go.
    let bins = v.path("bin");
    std::fs::create_dir_all(&bins).unwrap();
    for d in ["http-disk-server", "nbd-http-server"] {
        let p = bins.join(d);
        std::fs::write(
            &p,
            format!(
                "#!/bin/sh\necho starting {d}\necho warming up >&2\nsleep 600 &\necho $! > {}\nwait\n",
                v.path(&format!("{d}.child")).display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let started = Instant::now();
    let out = v.attach_with(
        &v.path("disk"),
        &["--timeout-s", "1", "--bin-dir", &bins.display().to_string()],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("http-disk-server did not get ready within 1s"),
        "{err}"
    );
    assert!(err.contains("`Server ready!`"), "{err}");
    assert!(err.contains("warming up"), "log tail missing: {err}");
    assert!(
        err.contains("starting http-disk-server"),
        "stdout missing: {err}"
    );
    assert_eq!(v.pid("http-disk-server"), None);
    let child: i32 = std::fs::read_to_string(v.path("http-disk-server.child"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(wait_dead(child), "the daemon's child {child} survived");
    assert!(
        !v.path("nbd-http-server.child").exists(),
        "nbd-http-server was started"
    );
    v.assert_nothing_running();
}

#[test]
fn a_pid_file_naming_an_unrelated_process_is_not_signalled() {
    let v = Volume::new("foreign-pid");
    let mut sleeper: Child = Command::new("sleep")
        .arg("600")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let pid = sleeper.id();
    std::fs::create_dir_all(v.path("run")).unwrap();
    for d in ["http-disk-server", "nbd-http-server"] {
        std::fs::write(
            v.path(&format!("run/{d}-{}.pid", v.name)),
            format!("{pid}\n"),
        )
        .unwrap();
    }
    // Even a forged command line record does not make `sleep` ours.
    std::fs::write(
        v.path(&format!("run/nbd-http-server-{}.cmdline", v.name)),
        b"sleep\x00600\x00",
    )
    .unwrap();

    let out = v.attach();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not signalling it"),
        "{}",
        text(&out)
    );
    assert!(sleeper.try_wait().unwrap().is_none(), "sleep was killed");
    assert_ne!(v.pid("nbd-http-server"), Some(pid as i32));

    let out = v.detach();
    assert!(out.status.success(), "{}", text(&out));
    assert!(sleeper.try_wait().unwrap().is_none(), "sleep was killed");

    // And detach alone, with only the foreign pid files.
    std::fs::write(
        v.path(&format!("run/http-disk-server-{}.pid", v.name)),
        format!("{pid}\n"),
    )
    .unwrap();
    let out = v.detach();
    assert!(out.status.success(), "{}", text(&out));
    assert!(sleeper.try_wait().unwrap().is_none(), "sleep was killed");
    assert_eq!(v.pid("http-disk-server"), None, "stale pid file kept");
    v.assert_nothing_running();
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
}

#[test]
fn attach_with_other_arguments_restarts_the_daemons() {
    let v = Volume::new("reconfigured");
    let out = v.attach();
    assert!(out.status.success(), "{}", text(&out));
    let http = v.pid("http-disk-server").unwrap();
    let nbd = v.pid("nbd-http-server").unwrap();
    // A new device size: nbd-http-server restarts, http-disk-server stays.
    let out = v.attach_with(&v.path("disk"), &["--device-size", "1048576"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(v.pid("http-disk-server"), Some(http));
    let nbd2 = v.pid("nbd-http-server").unwrap();
    assert_ne!(nbd2, nbd);
    assert!(wait_dead(nbd));
    let info = nbdinfo_size(&v.uri());
    assert_eq!(String::from_utf8_lossy(&info.stdout).trim(), "1048576");
    assert!(v.detach().status.success());
    v.assert_nothing_running();
}

#[test]
fn kernel_mode_on_a_host_without_nbd_fails_clearly() {
    if Path::new("/sys/module/nbd").exists() || Path::new("/dev/nbd0").exists() {
        eprintln!("skipped: this host has an nbd driver (the VM test covers the kernel path)");
        return;
    }
    let v = Volume::new("no-nbd");
    let out = xha_shim(&[
        "attach",
        "--volume",
        v.name,
        "--urls",
        &v.url(),
        "--run-dir",
        &v.run_dir(),
        "--link-dir",
        &v.path("links").display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nbd-http-server exited"), "{err}");
    assert!(err.contains("is now attached."), "{err}");
    assert!(err.contains("NBD driver"), "{err}");
    assert!(!v.path(&format!("links/{}", v.name)).exists());
    v.assert_nothing_running();
}
