//! Several http-disk-servers on one backing file (the `file` arbiter), the
//! nbd-http-server in front of them, libnbd heartbeat clients, and the role
//! each server reports: the pieces of every failover test and benchmark.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use heartbeat_wire::{Role, ServerStatus, STATUS_PATH};

use crate::{start_disk_server, Daemon, DiskServerConfig, Profile};

/// `GET /v1/status` from one server, with bounded timeouts (a stopped or
/// unreachable server answers `Err`; a killed one is refused at once).
/// The bounds are generous rather than short: tests take one answer from a
/// live server as its role, and a loaded machine can delay that answer (or
/// drop a SYN, retransmitted after 1 s) well past a few hundred ms.
pub fn fetch_status(url: &str) -> Result<ServerStatus> {
    let authority = url.trim_start_matches("http://").trim_end_matches('/');
    let addr: SocketAddr = authority
        .parse()
        .with_context(|| format!("bad URL {url}"))?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    stream.set_write_timeout(Some(Duration::from_secs(3)))?;
    write!(
        stream,
        "GET {STATUS_PATH} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("no header end in status answer from {url}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("status from {url}: {}", head.lines().next().unwrap_or(""));
    }
    serde_json::from_str(body).with_context(|| format!("status JSON from {url}: {body}"))
}

/// http-disk-servers sharing one file, each on its own loopback port.
pub struct DiskCluster {
    pub configs: Vec<DiskServerConfig>,
    pub servers: Vec<Option<Daemon>>,
    pub log_dir: PathBuf,
}

impl DiskCluster {
    /// Start `n` servers with the `file` arbiter on `disk`. `extra` is added to
    /// every server's flags.
    pub fn start(
        disk: &Path,
        n: usize,
        log_dir: &Path,
        profile: Profile,
        extra: &[String],
    ) -> Result<Self> {
        let mut cluster = Self {
            configs: Vec::new(),
            servers: Vec::new(),
            log_dir: log_dir.to_path_buf(),
        };
        for _ in 0..n {
            let mut config = DiskServerConfig::new(disk);
            config.arbiter = Some("file".into());
            config.profile = profile;
            config.extra = extra.to_vec();
            cluster.configs.push(config);
            cluster.servers.push(None);
        }
        for i in 0..n {
            cluster.restart(i)?;
        }
        Ok(cluster)
    }

    pub fn urls(&self) -> Vec<String> {
        self.configs.iter().map(|c| c.url()).collect()
    }

    /// (Re)start server `i` on its port; waits for `Server ready!`.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        self.servers[i] = None;
        let daemon = start_disk_server(&self.configs[i], &self.log_dir)?;
        self.servers[i] = Some(daemon);
        Ok(())
    }

    /// The role every server reports (`None` when it does not answer).
    pub fn roles(&self) -> Vec<Option<(Role, u64)>> {
        self.urls()
            .iter()
            .map(|u| fetch_status(u).ok().map(|s| (s.role, s.epoch)))
            .collect()
    }

    /// Index of the one server that says it serves; `Err` when none or several do.
    pub fn serving(&self) -> Result<usize> {
        let roles = self.roles();
        let serving: Vec<usize> = roles
            .iter()
            .enumerate()
            .filter(|(_, r)| matches!(r, Some((Role::Serving, _))))
            .map(|(i, _)| i)
            .collect();
        match serving.as_slice() {
            [one] => Ok(*one),
            [] => bail!("no server serves: {roles:?}"),
            _ => bail!("several servers serve at once: {roles:?}"),
        }
    }

    /// Poll until exactly one server serves; fails at once if two ever do.
    pub fn wait_for_serving(&self, timeout: Duration) -> Result<usize> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            match self.serving() {
                Ok(i) => return Ok(i),
                Err(e) if e.to_string().contains("several") => return Err(e),
                Err(e) if std::time::Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

/// Result of one libnbd heartbeat client run (see `tests/clients/nbd_heartbeat_client.py`).
#[derive(Debug, serde::Deserialize)]
pub struct ClientReport {
    pub client_id: u32,
    pub writes_acked: u64,
    /// `[start_monotonic_s, latency_s, op, ok]`
    pub requests: Vec<(f64, f64, String, bool)>,
    pub errors: Vec<serde_json::Value>,
    pub mismatches: Vec<serde_json::Value>,
    pub last_acked_seq: Option<u64>,
    pub final_ok: Option<bool>,
}

impl ClientReport {
    /// The client saw no error, read back only what it wrote, and its final
    /// read-back matched its last acknowledged write.
    pub fn assert_clean_run(&self) {
        assert!(
            self.errors.is_empty(),
            "client saw errors: {:?}",
            self.errors
        );
        assert!(
            self.mismatches.is_empty(),
            "client read back other data (stale or lost writes): {:?}",
            self.mismatches
        );
        assert_eq!(
            self.final_ok,
            Some(true),
            "final read-back differs from the last acknowledged write"
        );
    }

    /// Longest single request among those that started in `[from, to]`
    /// (CLOCK_MONOTONIC seconds).
    pub fn longest_wait_between(&self, from: f64, to: f64) -> f64 {
        self.requests
            .iter()
            .filter(|r| r.0 >= from && r.0 <= to)
            .map(|r| r.1)
            .fold(0.0, f64::max)
    }
}

/// A running libnbd heartbeat client process.
pub struct HeartbeatClient {
    child: Child,
    stop_file: PathBuf,
}

impl HeartbeatClient {
    /// Start a client writing `length` bytes at `offset` every `interval_ms`.
    pub fn start(
        uri: &str,
        client_id: u32,
        offset: u64,
        interval_ms: u64,
        work_dir: &Path,
    ) -> Result<Self> {
        let script = crate::workspace_root().join("tests/clients/nbd_heartbeat_client.py");
        let stop_file = work_dir.join(format!("client-{client_id}.stop"));
        let ready_file = work_dir.join(format!("client-{client_id}.ready"));
        let _ = std::fs::remove_file(&stop_file);
        let _ = std::fs::remove_file(&ready_file);
        let child = Command::new("/usr/bin/python3")
            .arg(&script)
            .args(["--uri", uri])
            .args(["--client-id", &client_id.to_string()])
            .args(["--offset", &offset.to_string()])
            .args(["--interval-ms", &interval_ms.to_string()])
            .args(["--duration-s", "3600"])
            .arg("--stop-file")
            .arg(&stop_file)
            .arg("--ready-file")
            .arg(&ready_file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("start /usr/bin/python3 heartbeat client (python3-libnbd installed?)")?;
        let mut client = Self { child, stop_file };
        if crate::poll_until(Duration::from_secs(10), || {
            ready_file.exists().then_some(())
        })
        .is_none()
        {
            let _ = client.child.kill();
            let out = client.child.wait_with_output()?;
            bail!(
                "heartbeat client {client_id} did not connect to {uri}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(client)
    }

    /// Ask the client to stop and collect its report.
    pub fn finish(self) -> Result<ClientReport> {
        std::fs::write(&self.stop_file, b"")?;
        let out = self.child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "heartbeat client failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        serde_json::from_slice(&out.stdout).context("parse heartbeat client report")
    }
}

/// CLOCK_MONOTONIC now, in seconds: the clock the Python clients stamp with.
pub fn monotonic_now() -> f64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("clock_gettime");
    ts.tv_sec() as f64 + ts.tv_nsec() as f64 / 1e9
}
