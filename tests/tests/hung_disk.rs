//! A disk that really hangs, end to end. nbdkit (file plugin, pause filter)
//! serves an image file and nbdfuse mounts it as a regular file: the server
//! under test does real kernel I/O on it (FUSE, buffered with O_DSYNC), and a
//! 'p' on the pause filter's control socket leaves that I/O blocked in the
//! kernel until an 'r'.
//!
//! Asserted: a write on a hung disk ends its HTTP request within the I/O
//! deadline plus a margin (the I/O watchdog shuts the client's socket), the
//! server stops serving and says why, withholds the systemd watchdog ping
//! while the call is stuck, and after the resume the stuck write has landed
//! whole or not at all; a libnbd client in front (through nbd-http-server)
//! rides out a short hang without an error; a call stuck past the stuck
//! bound exits the process with code 75, or only logs so with
//! `--debug-no-fence`.
//!
//! Not covered: failover to a standby during the hang. The file arbiter
//! locks the `--disk` path itself, and a lock on the FUSE file does not
//! conflict with one on the image file under it (two inodes), so a standby
//! that reaches the same data without hanging cannot share the lock.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use heartbeat_tests::cluster::{fetch_status, monotonic_now, HeartbeatClient};
use heartbeat_tests::{
    auth_header, poll_until, pseudo_random_bytes, require_tool, response_content_length,
    run_with_timeout, start_disk_server, start_nbd_server, test_key_file, Daemon, DiskServerConfig,
    NbdServerConfig, TempDisk,
};
use heartbeat_wire::{Role, ServerStatus};

const SIZE: u64 = 4 << 20;
const BLOCK: usize = 4096;
/// `--io-deadline-ms` of every server here.
const DEADLINE: Duration = Duration::from_millis(500);
/// How late a request on a hung disk may end: the deadline, the watchdog's
/// tick, and room for a loaded test machine.
const ENDS_WITHIN: Duration = Duration::from_millis(500 + 3000);
/// The server's stuck bound for this deadline: max(10 x deadline, 30 s).
const STUCK_AFTER: Duration = Duration::from_secs(30);
/// `WATCHDOG_USEC` given to the servers: they ping at half of it.
const SD_WATCHDOG: Duration = Duration::from_millis(400);

/// Fails with the package to install when FUSE or nbdfuse is missing: these
/// tests must not pass by skipping.
fn require_fuse() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: the hung-disk tests need FUSE (load the `fuse` module; in a container, pass /dev/fuse)"
    );
    assert!(
        nix::unistd::access(
            "/dev/fuse",
            nix::unistd::AccessFlags::R_OK | nix::unistd::AccessFlags::W_OK
        )
        .is_ok(),
        "/dev/fuse is not readable and writable by this user: run the hung-disk tests as root"
    );
    for tool in ["nbdfuse", "nbdkit"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "`{tool}` is not installed: the hung-disk tests need the `nbdfuse` and `nbdkit` packages (scripts/install-deps.sh installs them)"
        );
    }
}

/// An image file behind nbdkit's pause filter, mounted by nbdfuse as the
/// regular file [`PausableDisk::path`]. Dropping it resumes, unmounts (lazily
/// if the mount is busy or hung) and ends nbdfuse, so a failing test never
/// leaves a hung mount behind.
struct PausableDisk {
    /// The FUSE file: what the server under test opens.
    path: PathBuf,
    mount_dir: PathBuf,
    control: PathBuf,
    log: PathBuf,
    nbdfuse: Child,
}

impl PausableDisk {
    fn mount(backing: &Path, work_dir: &Path) -> Self {
        require_fuse();
        let mount_dir = work_dir.join("fuse");
        std::fs::create_dir_all(&mount_dir).expect("create the FUSE mount point");
        let path = mount_dir.join("disk");
        let control = work_dir.join("pause.sock");
        let pid_file = work_dir.join("nbdfuse.pid");
        let log = work_dir.join("nbdfuse.log");
        let log_file = std::fs::File::create(&log).expect("create nbdfuse log");
        // nbdfuse stays in the foreground; -P writes the pid file once it serves.
        let nbdfuse = Command::new("nbdfuse")
            .arg("-P")
            .arg(&pid_file)
            .arg(&path)
            .args(["--command", "nbdkit", "-s", "--filter=pause", "file"])
            .arg(backing)
            .arg(format!("pause-control={}", control.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file.try_clone().expect("dup log")))
            .stderr(Stdio::from(log_file))
            .spawn()
            .expect("spawn nbdfuse (package `nbdfuse`)");
        let mut disk = Self {
            path,
            mount_dir,
            control,
            log,
            nbdfuse,
        };
        let size = std::fs::metadata(backing).expect("stat backing file").len();
        let ready = poll_until(Duration::from_secs(10), || {
            if let Ok(Some(status)) = disk.nbdfuse.try_wait() {
                panic!(
                    "nbdfuse exited ({status}) before mounting; log:\n{}",
                    disk.log()
                );
            }
            let pid_written =
                std::fs::read_to_string(&pid_file).is_ok_and(|s| !s.trim().is_empty());
            let mounted =
                std::fs::metadata(&disk.path).is_ok_and(|m| m.is_file() && m.len() == size);
            (pid_written && mounted && disk.control.exists()).then_some(())
        });
        assert!(
            ready.is_some(),
            "nbdfuse did not mount {} within 10 s; log:\n{}",
            disk.path.display(),
            disk.log()
        );
        disk
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One command on the pause filter's control socket; it echoes the
    /// command in upper case once it has taken effect.
    fn control_command(&self, command: u8) -> std::io::Result<()> {
        let mut s = UnixStream::connect(&self.control)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(&[command])?;
        let mut ack = [0u8];
        s.read_exact(&mut ack)?;
        if ack[0] != command.to_ascii_uppercase() {
            return Err(std::io::Error::other(format!(
                "pause filter answered {:?} to {:?}",
                ack[0] as char, command as char
            )));
        }
        Ok(())
    }

    /// Stop all I/O on the disk until the guard is resumed or dropped.
    /// Declare the guard after the servers that use the disk: it is then
    /// dropped (resumed) first, and their stuck threads can be reaped.
    fn pause(&self) -> Paused<'_> {
        self.control_command(b'p').unwrap_or_else(|e| {
            panic!(
                "pause {}: {e}; nbdfuse log:\n{}",
                self.path.display(),
                self.log()
            )
        });
        Paused {
            disk: self,
            resumed: false,
        }
    }
}

impl Drop for PausableDisk {
    fn drop(&mut self) {
        let _ = self.control_command(b'r');
        let unmounted = run_with_timeout(
            Command::new("umount").arg(&self.mount_dir),
            Duration::from_secs(10),
        )
        .is_ok_and(|(status, _, _)| status.success());
        if !unmounted {
            // Busy or hung: detach it from the tree now so that nothing
            // (the temp dir's removal included) walks into it.
            let _ = run_with_timeout(
                Command::new("umount").arg("-l").arg(&self.mount_dir),
                Duration::from_secs(10),
            );
        }
        // nbdfuse exits once unmounted. If it does not, killing it closes
        // /dev/fuse, which aborts the connection and fails any request
        // still pending instead of leaving it hung.
        if poll_until(Duration::from_secs(5), || {
            self.nbdfuse.try_wait().ok().flatten()
        })
        .is_none()
        {
            let _ = self.nbdfuse.kill();
            let _ = self.nbdfuse.wait();
        }
    }
}

/// The disk is paused while this lives.
struct Paused<'a> {
    disk: &'a PausableDisk,
    resumed: bool,
}

impl Paused<'_> {
    fn resume(mut self) {
        self.resumed = true;
        self.disk.control_command(b'r').unwrap_or_else(|e| {
            panic!(
                "resume {}: {e}; nbdfuse log:\n{}",
                self.disk.path.display(),
                self.disk.log()
            )
        });
    }
}

impl Drop for Paused<'_> {
    fn drop(&mut self) {
        if !self.resumed {
            let _ = self.disk.control_command(b'r');
        }
    }
}

/// How one HTTP request ended.
#[derive(Debug)]
enum Outcome {
    Answered {
        status: u16,
        body: Vec<u8>,
    },
    /// End of stream or reset before a complete answer.
    Closed(String),
}

/// Send `request` on a new connection and wait (at most 20 s) for the answer
/// or the end of the connection; returns how it ended and how long it took.
fn exchange(port: u16, request: &[u8]) -> (Outcome, Duration) {
    let started = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to http-disk-server");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request).expect("send request");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    let outcome = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4) {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len = response_content_length(&head);
            if buf.len() >= end + len {
                let status = head[9..12].parse().expect("status code");
                break Outcome::Answered {
                    status,
                    body: buf[end..end + len].to_vec(),
                };
            }
        }
        match s.read(&mut chunk) {
            Ok(0) => break Outcome::Closed("end of stream".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("no answer and no close within 20 s: the request hangs with the disk")
            }
            Err(e) => break Outcome::Closed(e.to_string()),
        }
    };
    (outcome, started.elapsed())
}

fn put_request(offset: u64, data: &[u8]) -> Vec<u8> {
    let range = format!("bytes {offset}-{}/*", offset + data.len() as u64 - 1);
    let auth = auth_header(&test_key_file(), "PUT", &range, data);
    let mut r = format!(
        "PUT / HTTP/1.1\r\nHost: t\r\nContent-Range: {range}\r\nContent-Length: {}\r\nx-heartbeat-auth: {auth}\r\nConnection: close\r\n\r\n",
        data.len()
    )
    .into_bytes();
    r.extend_from_slice(data);
    r
}

fn get_request(offset: u64, len: usize) -> Vec<u8> {
    let range = format!("bytes={offset}-{}", offset + len as u64 - 1);
    let auth = auth_header(&test_key_file(), "GET", &range, b"");
    format!("GET / HTTP/1.1\r\nHost: t\r\nRange: {range}\r\nx-heartbeat-auth: {auth}\r\nConnection: close\r\n\r\n")
        .into_bytes()
}

/// A PUT that must succeed.
fn put_ok(port: u16, offset: u64, data: &[u8]) {
    match exchange(port, &put_request(offset, data)).0 {
        Outcome::Answered { status: 200, .. } => {}
        other => panic!("PUT at {offset} failed: {other:?}"),
    }
}

fn get_ok(port: u16, offset: u64, len: usize) -> Vec<u8> {
    match exchange(port, &get_request(offset, len)).0 {
        Outcome::Answered { status: 206, body } => body,
        other => panic!("GET at {offset} failed: {other:?}"),
    }
}

/// A PUT on the paused disk: it must end (closed, or a 500) after the
/// deadline and well before the disk comes back. Returns how it ended.
fn put_on_hung_disk(port: u16, offset: u64, data: &[u8]) -> String {
    let (outcome, took) = exchange(port, &put_request(offset, data));
    assert!(
        took <= ENDS_WITHIN,
        "a PUT on the hung disk took {took:?} to end ({outcome:?}); the watchdog should end it within {ENDS_WITHIN:?}"
    );
    assert!(
        took >= DEADLINE,
        "a PUT on the paused disk ended after {took:?}, before the {DEADLINE:?} deadline: the disk did not hang ({outcome:?})"
    );
    match outcome {
        Outcome::Closed(why) => format!("connection closed ({why}) after {took:?}"),
        Outcome::Answered { status: 500, body } => {
            format!("500 after {took:?}: {}", String::from_utf8_lossy(&body))
        }
        other => panic!("a PUT on the hung disk must end closed or with 500, not {other:?}"),
    }
}

fn disk_server(disk: &Path, arbiter: &str, extra: &[&str]) -> DiskServerConfig {
    let mut cfg = DiskServerConfig::new(disk);
    cfg.arbiter = Some(arbiter.into());
    cfg.extra = ["--io-deadline-ms", &DEADLINE.as_millis().to_string()]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect();
    cfg
}

/// `(role, epoch, standby_reason)` as `/v1/status` says; `None` when the
/// server does not answer.
type Seen = Option<(Role, u64, Option<String>)>;

/// Polls a server's `/v1/status` every 20 ms on its own thread and keeps
/// every change, so that a state that lasts a second is not missed however
/// slow the test thread is.
struct RoleWatch {
    seen: Arc<Mutex<Vec<(Instant, Seen)>>>,
    stop: Arc<AtomicBool>,
}

impl RoleWatch {
    fn start(url: String) -> Self {
        let seen = Arc::new(Mutex::new(Vec::<(Instant, Seen)>::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (thread_seen, thread_stop) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            while !thread_stop.load(Ordering::Relaxed) {
                let now: Seen = fetch_status(&url)
                    .ok()
                    .map(|s| (s.role, s.epoch, s.standby_reason));
                let mut seen = thread_seen.lock().unwrap();
                if seen.last().map(|(_, s)| s) != Some(&now) {
                    seen.push((Instant::now(), now));
                }
                drop(seen);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Self { seen, stop }
    }

    fn seen(&self) -> Vec<(Instant, Seen)> {
        self.seen.lock().unwrap().clone()
    }

    /// Wait for a state matching `pred`; returns when it was first seen.
    fn wait_for(&self, timeout: Duration, what: &str, pred: impl Fn(&Seen) -> bool) -> Instant {
        poll_until(timeout, || {
            self.seen()
                .into_iter()
                .find(|(_, s)| pred(s))
                .map(|(t, _)| t)
        })
        .unwrap_or_else(|| {
            panic!(
                "{what} not seen within {timeout:?}; states: {:?}",
                self.states()
            )
        })
    }

    fn states(&self) -> Vec<Seen> {
        self.seen().into_iter().map(|(_, s)| s).collect()
    }
}

impl Drop for RoleWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The service manager's notify socket, recording when `WATCHDOG=1` pings
/// arrive (and never killing: the test wants to see them stop).
struct PingRecorder {
    socket_path: PathBuf,
    pings: Arc<Mutex<Vec<Instant>>>,
    stop: Arc<AtomicBool>,
}

impl PingRecorder {
    fn new(dir: &Path) -> Self {
        let socket_path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let pings = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (thread_pings, thread_stop) = (pings.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !thread_stop.load(Ordering::Relaxed) {
                if let Ok(n) = socket.recv(&mut buf) {
                    if String::from_utf8_lossy(&buf[..n])
                        .lines()
                        .any(|l| l == "WATCHDOG=1")
                    {
                        thread_pings.lock().unwrap().push(Instant::now());
                    }
                }
            }
        });
        Self {
            socket_path,
            pings,
            stop,
        }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("NOTIFY_SOCKET", self.socket_path.display().to_string()),
            ("WATCHDOG_USEC", SD_WATCHDOG.as_micros().to_string()),
        ]
    }

    fn pings_between(&self, from: Instant, to: Instant) -> usize {
        self.pings
            .lock()
            .unwrap()
            .iter()
            .filter(|&&t| t >= from && t <= to)
            .count()
    }
}

impl Drop for PingRecorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn names_the_hang(reason: &Option<String>) -> bool {
    reason
        .as_deref()
        .is_some_and(|r| r.contains("write took longer than") && r.contains("I/O deadline"))
}

fn status(cfg: &DiskServerConfig) -> ServerStatus {
    fetch_status(&cfg.url()).unwrap_or_else(|e| panic!("status of {}: {e:#}", cfg.url()))
}

fn wait_for_log(daemon: &Daemon, timeout: Duration, needle: &str) -> Instant {
    poll_until(timeout, || daemon.log().contains(needle).then(Instant::now)).unwrap_or_else(|| {
        panic!(
            "{} did not log {needle:?} within {timeout:?}; log:\n{}",
            daemon.name,
            daemon.log()
        )
    })
}

/// One server (file arbiter) on the FUSE file. Pause the disk, PUT: the
/// request ends after the deadline, the server steps down naming the hang and
/// stops pinging the service manager; the file arbiter retakes the role
/// after its retake delay (a lone server, the disk still hung), and the
/// server refuses it while the write is stuck. Resume: the stuck write lands
/// whole, pings come back, the server serves under a newer epoch and what it
/// reads is what the image file holds.
#[test]
fn a_write_on_a_hung_disk_ends_within_the_deadline_and_steps_the_server_down() {
    let disk = TempDisk::random(SIZE, 71);
    let dir = disk.dir.path().to_path_buf();
    let fuse = PausableDisk::mount(&disk.path, &dir);
    let epoch_file = dir.join("disk.epoch");
    let pings = PingRecorder::new(&dir);
    let mut cfg = disk_server(
        &fuse.path,
        "file",
        &["--epoch-file", &epoch_file.display().to_string()],
    );
    cfg.env = pings.env();
    let started = Instant::now();
    let server = start_disk_server(&cfg, &dir).expect("start http-disk-server on the FUSE file");
    let first = status(&cfg);
    assert_eq!((first.role, first.epoch), (Role::Serving, 1), "{first:?}");

    // The FUSE file is the image: a write through the server lands in it.
    let healthy = pseudo_random_bytes(BLOCK, 1);
    put_ok(cfg.port, 0, &healthy);
    assert_eq!(
        disk.read(0, BLOCK),
        healthy,
        "the write did not reach the image file"
    );
    let pinging = poll_until(Duration::from_secs(5), || {
        (pings.pings_between(started, Instant::now()) >= 2).then_some(())
    });
    assert!(
        pinging.is_some(),
        "a healthy server sends WATCHDOG=1 every {:?}",
        SD_WATCHDOG / 2
    );

    let watch = RoleWatch::start(cfg.url());
    let hung_at = 64 * 1024;
    let old = disk.read(hung_at, BLOCK);
    let new = pseudo_random_bytes(BLOCK, 2);
    let paused = fuse.pause();
    let ended = put_on_hung_disk(cfg.port, hung_at, &new);
    eprintln!("PUT on the hung disk: {ended}");

    let stepped_down = watch.wait_for(Duration::from_secs(5), "not serving, naming the hang", |s| {
        matches!(s, Some((role, 1, reason)) if *role != Role::Serving && names_the_hang(reason))
    });
    wait_for_log(&server, Duration::from_secs(5), "did not finish within");

    // A lone server: the file arbiter competes again after its retake delay
    // and wins, but the server refuses the role while the first write still
    // hangs (it releases it again, naming the stuck call), so no request is
    // served on the hung disk. Three retake delays pass.
    watch.wait_for(
        Duration::from_secs(10),
        "the role refused, naming the stuck call",
        |s| matches!(s, Some((_, _, Some(reason))) if reason.contains("have not returned")),
    );
    std::thread::sleep(Duration::from_millis(3000));
    let resumed_at = Instant::now();
    let while_hung: Vec<Seen> = watch
        .seen()
        .into_iter()
        .filter(|(t, _)| *t > stepped_down)
        .map(|(_, s)| s)
        .collect();
    assert!(
        while_hung
            .iter()
            .flatten()
            .all(|(role, _, _)| *role != Role::Serving),
        "served while a write was still stuck on the disk: {while_hung:?}"
    );
    assert_eq!(
        pings.pings_between(stepped_down + Duration::from_millis(300), resumed_at),
        0,
        "WATCHDOG=1 sent while a disk write was stuck past its deadline"
    );
    assert!(
        server.log().contains("withholding the watchdog ping"),
        "no log line about the withheld watchdog ping; log:\n{}",
        server.log()
    );
    paused.resume();

    // The stuck write returns: the disk path is healthy again.
    let pinged = poll_until(Duration::from_secs(5), || {
        (pings.pings_between(resumed_at, Instant::now()) > 0).then_some(())
    });
    assert!(
        pinged.is_some(),
        "no WATCHDOG=1 within 5 s of the disk coming back"
    );
    let landed = disk.read(hung_at, BLOCK);
    assert!(
        landed == new || landed == old,
        "the write that hung left a torn block in the image file"
    );
    eprintln!(
        "the write that hung {} the image file",
        if landed == new {
            "landed in"
        } else {
            "did not reach"
        }
    );
    assert_eq!(
        disk.read(0, BLOCK),
        healthy,
        "an earlier write was disturbed"
    );

    // Serving again once the write returned, under a newer epoch, and it works.
    let serving_again = watch.wait_for(
        Duration::from_secs(10),
        "serving again after the disk came back",
        |s| matches!(s, Some((Role::Serving, e, _)) if *e > 1),
    );
    assert!(
        serving_again > resumed_at,
        "served before the disk came back"
    );
    let after = status(&cfg);
    assert!(after.role == Role::Serving && after.epoch > 1, "{after:?}");
    let fresh = pseudo_random_bytes(BLOCK, 3);
    put_ok(cfg.port, 128 * 1024, &fresh);
    assert_eq!(disk.read(128 * 1024, BLOCK), fresh);
    assert_eq!(get_ok(cfg.port, 128 * 1024, BLOCK), fresh);
    assert_eq!(
        get_ok(cfg.port, hung_at, BLOCK),
        landed,
        "the server reads other bytes than the image holds"
    );
    let epoch_record = std::fs::read_to_string(&epoch_file).expect("read the epoch file");
    assert!(
        epoch_record.contains(&format!("epoch={}", after.epoch)),
        "epoch file: {epoch_record}"
    );

    let seen = watch.states();
    let epochs: Vec<u64> = seen.iter().flatten().map(|(_, e, _)| *e).collect();
    assert!(
        epochs.windows(2).all(|w| w[1] >= w[0]),
        "epoch went back: {seen:?}"
    );
    assert!(
        seen.iter()
            .flatten()
            .filter(|(role, _, _)| *role == Role::Serving)
            .all(|(_, e, _)| *e == 1 || *e == after.epoch),
        "served under an epoch it then gave up: {seen:?}"
    );
    eprintln!("roles seen: {seen:#?}");
    eprintln!("final status: {after:?}");
}

/// The bytes the heartbeat client writes for `seq` (mirrors the Python client).
fn client_pattern(client_id: u32, seq: u64, len: usize) -> Vec<u8> {
    let head = format!("client={client_id} seq={seq:012} ");
    head.as_bytes().iter().copied().cycle().take(len).collect()
}

/// Creates the heartbeat client's stop file when dropped, so that a failing
/// test does not leave the client looping for its hour (`finish` creates it
/// on success).
struct StopClientOnDrop(PathBuf);

impl Drop for StopClientOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.0, b"");
    }
}

/// A libnbd client through nbd-http-server, writing with FUA and verifying
/// every 50 ms, while the one server's disk hangs for 2.5 s: the server
/// steps down (closing the connection) and comes back; nbd-http-server
/// retries until the disk answers. The client sees latency, never an error,
/// and every read is its last acknowledged write.
#[test]
fn a_libnbd_client_rides_out_a_short_hang_without_an_error() {
    require_tool("nbdinfo");
    let disk = TempDisk::zeroed(SIZE);
    let dir = disk.dir.path().to_path_buf();
    let fuse = PausableDisk::mount(&disk.path, &dir);
    let epoch_file = dir.join("disk.epoch");
    let cfg = disk_server(
        &fuse.path,
        "file",
        &["--epoch-file", &epoch_file.display().to_string()],
    );
    let _server = start_disk_server(&cfg, &dir).expect("start http-disk-server on the FUSE file");
    let nbd_cfg = NbdServerConfig::new(dir.join("nbd.sock"), vec![cfg.url()]);
    let _nbd = start_nbd_server(&nbd_cfg, &dir).expect("start nbd-http-server");
    let offset = 8192;
    let client =
        HeartbeatClient::start(&nbd_cfg.uri(), 0, offset, 50, &dir).expect("start libnbd client");
    let _stop_client = StopClientOnDrop(dir.join("client-0.stop"));
    std::thread::sleep(Duration::from_millis(500));

    let paused = fuse.pause();
    let paused_at = monotonic_now();
    std::thread::sleep(Duration::from_millis(2500));
    let resumed_at = monotonic_now();
    paused.resume();
    std::thread::sleep(Duration::from_millis(1500));
    let report = client.finish().expect("libnbd client report");

    report.assert_clean_run();
    let seq = report
        .last_acked_seq
        .expect("the client acknowledged writes");
    assert_eq!(
        disk.read(offset, 1024),
        client_pattern(report.client_id, seq, 1024),
        "the image file does not hold the last acknowledged write"
    );
    let longest = report.longest_wait_between(paused_at - 0.2, resumed_at);
    assert!(
        longest >= 1.0,
        "no request waited through the hang (longest {longest:.3} s): the disk did not hang"
    );
    let writes_after = report
        .requests
        .iter()
        .filter(|r| r.0 > resumed_at + 0.2 && r.2 == "write" && r.3)
        .count();
    assert!(
        writes_after >= 5,
        "the client did not go on writing after the hang: {writes_after} writes"
    );
    let st = status(&cfg);
    assert_eq!(st.role, Role::Serving, "{st:?}");
    assert!(
        st.epoch >= 2,
        "the server never stepped down during the hang: {st:?}"
    );
    eprintln!(
        "longest client wait across the hang: {longest:.3} s; server now {:?} epoch {}; writes acked {}",
        st.role, st.epoch, report.writes_acked
    );
}

/// A write stuck past `max(10 x deadline, 30 s)` after its deadline: the
/// server without `--debug-no-fence` exits with code 75 (its process can
/// only finish exiting once the stuck call returns: a thread blocked in the
/// kernel cannot be killed), the one with it stays up, logs "DEBUG MODE:
/// would exit with code 75" and serves again once the disk is back.
#[test]
fn a_write_stuck_past_the_stuck_bound_exits_75_unless_debug_no_fence() {
    let disk = TempDisk::random(SIZE, 73);
    let dir = disk.dir.path().to_path_buf();
    let fuse = PausableDisk::mount(&disk.path, &dir);
    // Two servers on one file need an arbiter that lets both serve.
    let fenced_cfg = disk_server(&fuse.path, "none", &[]);
    let debug_cfg = disk_server(&fuse.path, "none", &["--debug-no-fence"]);
    let mut fenced = start_disk_server(&fenced_cfg, &dir).expect("start the fenced server");
    let mut debug = start_disk_server(&debug_cfg, &dir).expect("start the --debug-no-fence server");
    assert!(
        status(&debug_cfg).debug_no_fence,
        "the status must show debug mode"
    );

    let hung_writes = [
        ("fenced", &fenced_cfg, 0, pseudo_random_bytes(BLOCK, 4)),
        ("debug", &debug_cfg, 65536, pseudo_random_bytes(BLOCK, 5)),
    ];
    let old: Vec<Vec<u8>> = hung_writes
        .iter()
        .map(|(_, _, offset, _)| disk.read(*offset, BLOCK))
        .collect();
    let paused = fuse.pause();
    let hung_since = Instant::now();
    for (name, cfg, offset, data) in &hung_writes {
        let ended = put_on_hung_disk(cfg.port, *offset, data);
        eprintln!("PUT on the hung disk, {name} server: {ended}");
    }

    let bound = DEADLINE + STUCK_AFTER;
    let limit = bound + Duration::from_secs(15);
    let exiting = wait_for_log(
        &fenced,
        limit,
        "exiting so that the service manager restarts this server",
    );
    let would = wait_for_log(&debug, limit, "DEBUG MODE: would exit with code 75");
    for (name, at) in [("exit", exiting), ("debug-mode line", would)] {
        let after = at - hung_since;
        assert!(
            after >= bound,
            "the stuck-disk {name} came {after:?} after the hang, before the {bound:?} bound"
        );
    }
    assert!(
        debug.try_exit_status().is_none(),
        "the --debug-no-fence server exited; log:\n{}",
        debug.log()
    );
    let st = status(&debug_cfg);
    assert!(st.debug_no_fence, "{st:?}");
    eprintln!(
        "--debug-no-fence server past the stuck bound, disk still hung: {:?} epoch {}",
        st.role, st.epoch
    );
    assert!(
        fetch_status(&fenced_cfg.url()).is_err(),
        "the fenced server still answers after deciding to exit"
    );
    // Until the stuck call returns, the exit cannot complete: report how
    // the process looks meanwhile (not asserted: up to the kernel).
    let proc_status = std::fs::read_to_string(format!("/proc/{}/status", fenced.pid()))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("State:") || l.starts_with("Threads:"))
        .collect::<Vec<_>>()
        .join(", ");
    eprintln!(
        "fenced server after deciding to exit, disk still hung: reaped {:?}, {proc_status}",
        fenced.try_exit_status()
    );

    paused.resume();
    let code = fenced
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| {
            panic!(
                "the fenced server did not exit once the disk came back; log:\n{}",
                fenced.log()
            )
        });
    assert_eq!(
        code.code(),
        Some(75),
        "exit status {code}; log:\n{}",
        fenced.log()
    );

    // The debug server is still there and serves again once the disk is back.
    let serving = poll_until(Duration::from_secs(10), || {
        fetch_status(&debug_cfg.url())
            .ok()
            .filter(|s| s.role == Role::Serving)
    })
    .expect("the --debug-no-fence server does not serve after the disk came back");
    assert!(serving.epoch >= 2, "{serving:?}");
    let data = pseudo_random_bytes(BLOCK, 6);
    put_ok(debug_cfg.port, 131072, &data);
    assert_eq!(disk.read(131072, BLOCK), data);
    // Writes to the FUSE file are serialised (the inode lock is held until
    // nbdkit answers), so once that write is acknowledged the hung ones are done.
    for ((name, _, offset, new), old) in hung_writes.iter().zip(&old) {
        let landed = disk.read(*offset, BLOCK);
        assert!(
            landed == *new || landed == *old,
            "the write that hung on the {name} server left a torn block"
        );
    }
}
