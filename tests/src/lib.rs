//! Shared helpers for the end-to-end tests and benchmarks: find (and build)
//! the real binaries, spawn them on loopback, wait for their readiness lines,
//! make temp disks, and kill processes for real.
//!
//! Every spawned daemon is killed (SIGKILL) and reaped when its handle drops,
//! so a failing test never leaves servers behind.

pub mod cluster;
pub mod supervisor;
pub mod vm;

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Which cargo profile the daemons are built with: tests use `debug`,
/// benchmarks `release`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Profile {
    Debug,
    Release,
}

impl Profile {
    fn dir(self) -> &'static str {
        match self {
            Profile::Debug => "debug",
            Profile::Release => "release",
        }
    }
}

/// The workspace root (the folder holding the top `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate sits inside the workspace")
        .to_path_buf()
}

/// `../shared` beside the workspace: read-only reference material and fixtures.
pub fn shared_dir() -> PathBuf {
    workspace_root().join("../shared")
}

/// The cargo target directory, honouring `CARGO_TARGET_DIR`.
pub fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        let dir = PathBuf::from(dir);
        return if dir.is_absolute() {
            dir
        } else {
            workspace_root().join(dir)
        };
    }
    workspace_root().join("target")
}

/// Path of a workspace binary, built once per test process (cargo is a no-op
/// when it is already fresh). Building here rather than trusting a stale file
/// keeps `cargo test` honest after an edit.
pub fn binary(name: &str, profile: Profile) -> PathBuf {
    static BUILT: OnceLock<Mutex<Vec<(String, Profile)>>> = OnceLock::new();
    let built = BUILT.get_or_init(|| Mutex::new(Vec::new()));
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    let path = target_dir().join(profile.dir()).join(name);
    if !built.iter().any(|(n, p)| n == name && *p == profile) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(workspace_root())
            .args(["build", "--quiet", "--bin", name]);
        if profile == Profile::Release {
            cmd.arg("--release");
        }
        let status = cmd
            .status()
            .unwrap_or_else(|e| panic!("cannot run cargo to build {name}: {e}"));
        assert!(status.success(), "cargo build --bin {name} failed");
        built.push((name.to_owned(), profile));
    }
    assert!(path.exists(), "{} missing after build", path.display());
    path
}

/// Fails the test with a clear message when a system tool is missing: the
/// tests need real peers and must not pass by skipping them.
pub fn require_tool(tool: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        found,
        "required tool `{tool}` is not installed; run `bash .ci/run` or install the packages it lists"
    );
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port on 127.0.0.1")
}

/// A temporary directory holding a backing file of a given size.
pub struct TempDisk {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
    pub size: u64,
}

impl TempDisk {
    /// A zero-filled disk.
    pub fn zeroed(size: u64) -> Self {
        let dir = tempfile::tempdir_in(scratch_root()).expect("create temp dir");
        let path = dir.path().join("disk.img");
        let file = std::fs::File::create(&path).expect("create disk file");
        file.set_len(size).expect("size disk file");
        Self { dir, path, size }
    }

    /// A disk filled with pseudo-random bytes from `seed`.
    pub fn random(size: u64, seed: u64) -> Self {
        let disk = Self::zeroed(size);
        std::fs::write(&disk.path, pseudo_random_bytes(size as usize, seed)).expect("fill disk");
        disk
    }

    pub fn read(&self, offset: u64, len: usize) -> Vec<u8> {
        let file = std::fs::File::open(&self.path).expect("open disk file");
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, offset)
            .expect("read disk file");
        buf
    }

    pub fn contents(&self) -> Vec<u8> {
        std::fs::read(&self.path).expect("read disk file")
    }

    /// A path for sockets, logs and the like inside this disk's temp dir.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Where temp disks live: a real filesystem (O_DIRECT works there), not tmpfs.
fn scratch_root() -> PathBuf {
    let root = std::env::var_os("HEARTBEAT_TEST_TMP")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("test-scratch"));
    std::fs::create_dir_all(&root).expect("create scratch dir");
    root
}

/// Deterministic bytes (xorshift) so failures are reproducible.
pub fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A spawned daemon: stdout is watched for readiness lines, stderr goes to a
/// log file that is printed if the test fails while waiting.
pub struct Daemon {
    pub name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    pub log_path: PathBuf,
}

impl Daemon {
    /// Spawn `program args...`, logging stderr to `log_path`.
    pub fn spawn(name: &str, program: &Path, args: &[String], log_path: PathBuf) -> Result<Self> {
        Self::spawn_with_env(name, program, args, log_path, &[])
    }

    pub fn spawn_with_env(
        name: &str,
        program: &Path,
        args: &[String],
        log_path: PathBuf,
        env: &[(&str, String)],
    ) -> Result<Self> {
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("create log {}", log_path.display()))?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            );
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawn {}", program.display()))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            name: name.to_owned(),
            child,
            lines,
            log_path,
        })
    }

    /// Wait until a stdout line satisfies `pred`; returns that line.
    pub fn wait_for_line(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(100)))
            {
                Ok(line) if pred(&line) => return Ok(line),
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    bail!(
                        "{} exited ({status:?}) before printing the expected line; log:\n{}",
                        self.name,
                        self.log()
                    );
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not print the expected line within {timeout:?}; log:\n{}",
                    self.name,
                    self.log()
                );
            }
        }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&self, sig: Signal) {
        let _ = kill(self.pid(), sig);
    }

    /// Whether the process has exited (reaps it if so).
    pub fn try_exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Wait for exit up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.try_exit_status() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// SIGKILL and reap.
    pub fn kill_now(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log_path) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SIGKILL also ends a SIGSTOPped child, so stopped servers are reaped too.
        self.kill_now();
    }
}

/// The pool key file every daemon a test process spawns shares by default:
/// one random key, mode 0600, in the scratch directory.
pub fn test_key_file() -> PathBuf {
    static KEY: OnceLock<PathBuf> = OnceLock::new();
    KEY.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("pool-key-")
            .tempdir_in(scratch_root())
            .expect("create key dir")
            .keep();
        let path = dir.join("pool.key");
        let secret: [u8; 32] = rand::random();
        write_key_file(&path, &[("test", &secret)]);
        path
    })
    .clone()
}

/// Write a key file of `(id, secret)` lines with mode 0600.
pub fn write_key_file(path: &Path, keys: &[(&str, &[u8])]) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut text = String::new();
    for (id, secret) in keys {
        text.push_str(&format!(
            "{id}:{}\n",
            heartbeat_wire::auth::encode_hex(secret)
        ));
    }
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .expect("create key file");
    f.write_all(text.as_bytes()).expect("write key file");
}

/// The `x-heartbeat-auth` value for a block request signed with the
/// signing key of `key_file` (what nbd-http-server would send), for tests
/// that speak HTTP themselves. `range` is the Range (GET) or Content-Range
/// (PUT) value, "" for HEAD.
pub fn auth_header(key_file: &Path, method: &str, range: &str, body: &[u8]) -> String {
    let keys = heartbeat_wire::auth::PoolKeys::load(key_file).expect("load key file");
    heartbeat_wire::auth::sign(
        keys.signing_key(),
        &heartbeat_wire::auth::SignedParts {
            method,
            path: "/",
            range,
        },
        body,
    )
}

/// How a spawned http-disk-server authenticates block requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerAuth {
    /// `--auth-key-file PATH` (the default: [`test_key_file`]).
    KeyFile(PathBuf),
    /// `--allow-unauthenticated` without a key: reference clients (curl,
    /// raw sockets) and unkeyed peers.
    Unauthenticated,
    /// No auth flag at all (the daemon's own default applies).
    Flags,
}

/// Options for one http-disk-server.
#[derive(Debug, Clone)]
pub struct DiskServerConfig {
    pub disk: PathBuf,
    pub ip: String,
    pub port: u16,
    pub arbiter: Option<String>,
    pub extra: Vec<String>,
    pub profile: Profile,
    /// Extra environment (e.g. the watchdog's `NOTIFY_SOCKET`).
    pub env: Vec<(&'static str, String)>,
    pub auth: ServerAuth,
}

impl DiskServerConfig {
    pub fn new(disk: &Path) -> Self {
        Self {
            disk: disk.to_path_buf(),
            ip: "127.0.0.1".into(),
            port: free_port(),
            arbiter: None,
            extra: Vec::new(),
            profile: Profile::Debug,
            env: Vec::new(),
            auth: ServerAuth::KeyFile(test_key_file()),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}:{}", self.ip, self.port)
    }

    pub fn args(&self) -> Vec<String> {
        let mut args = vec![
            "--disk".into(),
            self.disk.display().to_string(),
            "--ip".into(),
            self.ip.clone(),
            "--port".into(),
            self.port.to_string(),
        ];
        if let Some(a) = &self.arbiter {
            args.extend(["--arbiter".into(), a.clone()]);
        }
        match &self.auth {
            ServerAuth::KeyFile(p) => {
                args.extend(["--auth-key-file".into(), p.display().to_string()])
            }
            ServerAuth::Unauthenticated => args.push("--allow-unauthenticated".into()),
            ServerAuth::Flags => {}
        }
        args.extend(self.extra.iter().cloned());
        args
    }
}

/// Start http-disk-server and wait for `Server ready!`.
pub fn start_disk_server(config: &DiskServerConfig, log_dir: &Path) -> Result<Daemon> {
    let bin = binary("http-disk-server", config.profile);
    let log = log_dir.join(format!("http-disk-server-{}.log", config.port));
    let mut daemon =
        Daemon::spawn_with_env("http-disk-server", &bin, &config.args(), log, &config.env)?;
    daemon.wait_for_line(Duration::from_secs(20), |l| l == "Server ready!")?;
    Ok(daemon)
}

/// Options for one nbd-http-server.
#[derive(Debug, Clone)]
pub struct NbdServerConfig {
    pub socket: PathBuf,
    pub name: String,
    pub urls: Vec<String>,
    pub device_size: Option<u64>,
    pub extra: Vec<String>,
    pub profile: Profile,
    /// `--auth-key-file` (default: [`test_key_file`]); None passes no
    /// auth flag (unsigned requests unless the default key path exists).
    pub auth_key_file: Option<PathBuf>,
}

impl NbdServerConfig {
    pub fn new(socket: PathBuf, urls: Vec<String>) -> Self {
        Self {
            socket,
            name: "statefile".into(),
            urls,
            device_size: None,
            extra: Vec::new(),
            profile: Profile::Debug,
            auth_key_file: Some(test_key_file()),
        }
    }

    /// The libnbd URI of the Unix socket export.
    pub fn uri(&self) -> String {
        format!("nbd+unix:///{}?socket={}", self.name, self.socket.display())
    }

    pub fn args(&self) -> Vec<String> {
        let mut args = vec![
            "--socket-path".into(),
            self.socket.display().to_string(),
            "--nbd-name".into(),
            self.name.clone(),
            "--urls".into(),
            self.urls.join(","),
        ];
        if let Some(size) = self.device_size {
            args.extend(["--device-size".into(), size.to_string()]);
        }
        if let Some(key) = &self.auth_key_file {
            args.extend(["--auth-key-file".into(), key.display().to_string()]);
        }
        args.extend(self.extra.iter().cloned());
        args
    }
}

/// Start nbd-http-server and wait for its `NBD server ready on ...` line.
pub fn start_nbd_server(config: &NbdServerConfig, log_dir: &Path) -> Result<Daemon> {
    let bin = binary("nbd-http-server", config.profile);
    let log = log_dir.join(format!("nbd-http-server-{}.log", config.name));
    let mut daemon = Daemon::spawn("nbd-http-server", &bin, &config.args(), log)?;
    daemon.wait_for_line(Duration::from_secs(20), |l| {
        l.starts_with("NBD server ready on")
    })?;
    Ok(daemon)
}

/// Run a command to completion with a timeout; returns (status, stdout, stderr).
pub fn run_with_timeout(
    cmd: &mut Command,
    timeout: Duration,
) -> Result<(std::process::ExitStatus, String, String)> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {cmd:?}"))?;
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let out_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{cmd:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ok((
        status,
        out_thread.join().unwrap_or_default(),
        err_thread.join().unwrap_or_default(),
    ))
}

/// The Content-Length of a raw HTTP response head (0 when absent), for the
/// tests that speak HTTP over plain sockets.
pub fn response_content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0)
}

/// Poll `f` until it returns `Some` or the timeout passes.
pub fn poll_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
