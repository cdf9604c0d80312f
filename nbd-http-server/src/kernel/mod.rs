//! Attaching the kernel's NBD client (`/dev/nbdN`) to a socket we serve.
//!
//! # Contract with the NBD server
//!
//! The caller makes a connected stream socket pair (`UnixStream::pair()`),
//! serves one end with the NBD server and hands the other end to [`attach`]
//! (or [`reconnect`]). The kernel does **no handshake**: it speaks the
//! transmission phase only, from its first byte (28-byte requests, simple
//! 16-byte replies; no structured replies). So the server must be told to
//! skip the handshake for that connection, and must serve exactly the export
//! described by the [`DeviceConfig`] given here (size, block size, and the
//! transmission flags in [`DeviceConfig::server_flags`], which decide whether
//! the kernel sends FLUSH and FUA). After `NBD_CMD_DISC` the server must
//! close its end: the kernel (the ioctl path's `NBD_DO_IT` in particular)
//! waits for EOF before it lets the device go.
//!
//! # Lifetime and the restart case
//!
//! With netlink (the normal path) the device belongs to the kernel, not to
//! this process: it stays configured after we exit. When the server end of
//! the socket closes (daemon killed or restarted), the kernel marks the
//! connection dead and holds new I/O for [`DeviceConfig::dead_conn_timeout`]
//! waiting for a new socket; after that it fails I/O with EIO but keeps the
//! device. A new daemon finds its device by backend identifier
//! ([`survey`] + [`DeviceStatus::backend`]) and hands a fresh socket with
//! [`reconnect`] (`NBD_CMD_RECONFIGURE`), so the path xhad holds open never
//! disappears. Two kernel behaviours (6.1 `drivers/block/nbd.c`) to know:
//!
//! * RECONFIGURE only replaces connections the kernel already considers
//!   dead; a socket given while the old one is alive is silently dropped
//!   (the server end of the new pair then reads EOF at once). Reconnect
//!   only after the old server end is closed.
//! * With a request timeout and one connection, a request that times out
//!   makes the kernel shut that connection down and wait for a reconnect
//!   (then requeue the request). The server sees EOF and must hand a new
//!   socket pair over with [`reconnect`]. So the request timeout must be
//!   longer than the server's own per-request deadline, which is what
//!   bounds latency (it answers EIO in time).
//!
//! The ioctl fallback (kernels without the `nbd` genetlink family, < 4.12)
//! has none of this: the device lives only while a thread of this process
//! sits in `NBD_DO_IT`.
//!
//! # Choosing a device
//!
//! [`choose_free_device`] never picks a device that is connected, nor one
//! that some process still has open (xhad holding a disconnected
//! `/dev/nbdN` would otherwise see another volume appear under its fd).
//! Such devices are reported in [`DeviceStatus`], never reused; a connected
//! device whose connecting process is dead is only taken over by
//! [`reconnect`] with the matching backend identifier.
//!
//! # Why hand-written generic netlink
//!
//! The `nbd` family needs five commands and a dozen attributes. The
//! `nbd-netlink` crate covers CONNECT only (no RECONFIGURE, STATUS or
//! backend identifier) and pins an old `neli` (0.6) whose API has since
//! been rewritten; using `neli` directly would bring a macro-heavy type
//! layer for ~150 lines of byte layout. [`genl`] encodes and decodes the
//! messages as plain bytes (unit-tested without the module), and
//! `netlink` is a thin blocking socket around it.

pub mod genl;
mod ioctl;
mod netlink;

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

pub use netlink::NbdNetlink;

/// How the device is configured. See the module docs for how the two
/// timeouts interact with the server's own deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceConfig {
    /// Device size in bytes (a multiple of `block_size`).
    pub size_bytes: u64,
    /// Logical block size: 512 for the XHA statefile (xhad's 512-byte
    /// O_DIRECT reads fail with EINVAL on anything larger).
    pub block_size: u32,
    /// Kernel request timeout (`NBD_ATTR_TIMEOUT`, whole seconds, rounded up).
    pub request_timeout: Duration,
    /// How long I/O waits for a reconnect after the connection died
    /// (`NBD_ATTR_DEAD_CONN_TIMEOUT`): the restart window.
    pub dead_conn_timeout: Duration,
    /// NBD transmission flags of the export (`NBD_FLAG_HAS_FLAGS`, ...).
    pub server_flags: u16,
    /// Names the device's backend (`/sys/block/nbdN/backend`): how a
    /// restarted daemon finds its device, and what RECONFIGURE checks.
    pub backend_id: String,
}

impl DeviceConfig {
    /// Statefile defaults: 512-byte blocks, 30 s request timeout (above any
    /// server deadline), 15 s for a restarted daemon to reconnect.
    pub fn new(size_bytes: u64, backend_id: impl Into<String>, server_flags: u16) -> Self {
        Self {
            size_bytes,
            block_size: 512,
            request_timeout: Duration::from_secs(30),
            dead_conn_timeout: Duration::from_secs(15),
            server_flags,
            backend_id: backend_id.into(),
        }
    }

    fn request_timeout_secs(&self) -> u64 {
        secs_rounded_up(self.request_timeout)
    }

    fn dead_conn_timeout_secs(&self) -> u64 {
        secs_rounded_up(self.dead_conn_timeout)
    }

    fn validate(&self) -> Result<(), KernelError> {
        let bs = self.block_size;
        if !(512..=4096).contains(&bs) || !bs.is_power_of_two() {
            return Err(KernelError::Config(format!(
                "block size {bs} is not a power of two in 512..=4096"
            )));
        }
        // bs is a power of two here.
        if self.size_bytes == 0 || self.size_bytes & (u64::from(bs) - 1) != 0 {
            return Err(KernelError::Config(format!(
                "device size {} is not a non-zero multiple of the block size {bs}",
                self.size_bytes
            )));
        }
        Ok(())
    }
}

fn secs_rounded_up(d: Duration) -> u64 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.max(1)
}

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("the kernel has no `nbd` generic netlink family: load the module (modprobe nbd) or use the ioctl interface")]
    FamilyMissing,
    #[error("netlink: {what}: {source}")]
    Netlink { what: String, source: io::Error },
    #[error("the kernel refused {command}: {} (errno {errno}); the reason is in the kernel log (dmesg)", io::Error::from_raw_os_error(*errno))]
    Refused { command: &'static str, errno: i32 },
    #[error("{0}")]
    Protocol(String),
    #[error("/dev/nbd{index}: {what}: {source}")]
    Ioctl {
        index: u32,
        what: &'static str,
        source: io::Error,
    },
    #[error("invalid NBD device configuration: {0}")]
    Config(String),
    #[error("no free NBD device: {0}")]
    NoFreeDevice(String),
}

/// `/dev/nbdN`.
pub fn device_path(index: u32) -> PathBuf {
    PathBuf::from(format!("/dev/nbd{index}"))
}

fn sysfs(index: u32, file: &str) -> PathBuf {
    PathBuf::from(format!("/sys/block/nbd{index}/{file}"))
}

/// How the device was attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMethod {
    Netlink,
    Ioctl,
}

/// An attached `/dev/nbdN`. Dropping it does **not** detach a netlink
/// device (it outlives the process on purpose); an ioctl device ends when
/// the process exits.
pub struct AttachedDevice {
    index: u32,
    session: Option<ioctl::IoctlSession>,
}

impl AttachedDevice {
    pub fn index(&self) -> u32 {
        self.index
    }

    pub fn path(&self) -> PathBuf {
        device_path(self.index)
    }

    pub fn method(&self) -> AttachMethod {
        if self.session.is_some() {
            AttachMethod::Ioctl
        } else {
            AttachMethod::Netlink
        }
    }

    /// For an ioctl attachment, whether `NBD_DO_IT` still runs (the device
    /// is up); `None` for netlink (ask [`survey`]).
    pub fn ioctl_running(&self) -> Option<bool> {
        self.session.as_ref().map(ioctl::IoctlSession::is_running)
    }

    /// Detaches the device (NBD_CMD_DISCONNECT, or NBD_DISCONNECT and the end
    /// of NBD_DO_IT). The server sees NBD_CMD_DISC, then EOF.
    pub fn disconnect(self) -> Result<(), KernelError> {
        match self.session {
            Some(session) => session.disconnect(self.index),
            None => disconnect(self.index),
        }
    }
}

/// What one `/dev/nbdN` is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceStatus {
    pub index: u32,
    /// The kernel has a live configuration (NBD_CMD_STATUS).
    pub connected: bool,
    /// The process that connected it (`/sys/block/nbdN/pid`), if any.
    pub pid: Option<u32>,
    /// Whether that process still exists.
    pub pid_alive: bool,
    /// The backend identifier (`/sys/block/nbdN/backend`), if one was set.
    pub backend: Option<String>,
    /// Processes that have the device open (from /proc/*/fd).
    pub openers: Vec<u32>,
}

impl DeviceStatus {
    /// Connected, but the process that connected it is gone (a crashed
    /// daemon, or a netlink client like `nbd-client -L` that exits by design).
    pub fn orphaned(&self) -> bool {
        self.connected && self.pid.is_some() && !self.pid_alive
    }
}

/// Attaches `sock` (the kernel's end of a socket pair; the server must skip
/// the handshake on the other end) to `/dev/nbd<index>`, or to a device from
/// [`choose_free_device`] when `index` is `None`. Netlink first, ioctl when
/// the kernel has no `nbd` family. Sets the queue scheduler to `none`.
pub fn attach(
    sock: OwnedFd,
    cfg: &DeviceConfig,
    index: Option<u32>,
) -> Result<AttachedDevice, KernelError> {
    match attach_using(AttachMethod::Netlink, sock, cfg, index) {
        Err(AttachError {
            error: KernelError::FamilyMissing,
            sock: Some(sock),
        }) => attach_using(AttachMethod::Ioctl, sock, cfg, index).map_err(|e| e.error),
        other => other.map_err(|e| e.error),
    }
}

/// A failed attach; the socket comes back when the kernel never saw it.
#[derive(Debug)]
pub struct AttachError {
    pub error: KernelError,
    pub sock: Option<OwnedFd>,
}

impl From<KernelError> for AttachError {
    fn from(error: KernelError) -> Self {
        Self { error, sock: None }
    }
}

/// [`attach`] with one given method, no fallback (tests force the ioctl path).
pub fn attach_using(
    method: AttachMethod,
    sock: OwnedFd,
    cfg: &DeviceConfig,
    index: Option<u32>,
) -> Result<AttachedDevice, AttachError> {
    cfg.validate()?;
    let attached = match method {
        AttachMethod::Netlink => {
            let mut nl = match NbdNetlink::open() {
                Ok(nl) => nl,
                Err(error) => {
                    return Err(AttachError {
                        error,
                        sock: Some(sock),
                    })
                }
            };
            let statuses = survey_with(&mut nl)?;
            let index = match index {
                Some(i) => i,
                None => choose_free_device(&statuses).ok_or_else(|| no_free_device(&statuses))?,
            };
            let seq = nl.next_seq();
            let msg = genl::connect(
                nl.family(),
                seq,
                &genl::ConnectAttrs {
                    index: Some(index),
                    size_bytes: cfg.size_bytes,
                    block_size: u64::from(cfg.block_size),
                    timeout_secs: cfg.request_timeout_secs(),
                    dead_conn_timeout_secs: cfg.dead_conn_timeout_secs(),
                    server_flags: u64::from(cfg.server_flags),
                    client_flags: 0,
                    backend_id: Some(cfg.backend_id.clone()),
                    socket_fds: vec![sock.as_raw_fd() as u32],
                },
            );
            let replies = nl.transact(&msg, seq)?;
            let got = match replies.first() {
                Some(attrs) => genl::connected_index(attrs)
                    .map_err(|e| KernelError::Protocol(e.to_string()))?,
                None => index,
            };
            // The kernel took its own reference to the socket.
            drop(sock);
            AttachedDevice {
                index: got,
                session: None,
            }
        }
        AttachMethod::Ioctl => {
            let statuses = survey_sysfs();
            let index = match index {
                Some(i) => i,
                None => choose_free_device(&statuses).ok_or_else(|| no_free_device(&statuses))?,
            };
            let session = ioctl::attach(index, sock, cfg)?;
            AttachedDevice {
                index,
                session: Some(session),
            }
        }
    };
    if let Err(e) = set_scheduler_none(attached.index) {
        tracing::warn!(device = %attached.path().display(), error = %e, "cannot set the queue scheduler to none");
    }
    Ok(attached)
}

fn no_free_device(statuses: &[DeviceStatus]) -> KernelError {
    let busy: Vec<String> = statuses
        .iter()
        .map(|s| {
            let mut d = format!("nbd{}", s.index);
            if s.connected {
                d.push_str(" connected");
            }
            if s.orphaned() {
                d.push_str(&format!(" by dead pid {}", s.pid.unwrap_or(0)));
            }
            if let Some(b) = &s.backend {
                d.push_str(&format!(" backend {b}"));
            }
            if !s.openers.is_empty() {
                d.push_str(&format!(" open by {:?}", s.openers));
            }
            d
        })
        .collect();
    KernelError::NoFreeDevice(format!(
        "{} (load nbd with a larger nbds_max, or disconnect a stale device)",
        if busy.is_empty() {
            "no /dev/nbd* devices".to_string()
        } else {
            busy.join(", ")
        }
    ))
}

/// Hands a new socket to a connected device whose old connection died (the
/// restart case), refreshing its timeouts. The kernel refuses it if the
/// device's backend identifier is not `cfg.backend_id`.
pub fn reconnect(index: u32, sock: OwnedFd, cfg: &DeviceConfig) -> Result<(), KernelError> {
    let mut nl = NbdNetlink::open()?;
    let seq = nl.next_seq();
    let msg = genl::reconfigure(
        nl.family(),
        seq,
        &genl::ReconfigureAttrs {
            index,
            timeout_secs: Some(cfg.request_timeout_secs()),
            dead_conn_timeout_secs: Some(cfg.dead_conn_timeout_secs()),
            backend_id: Some(cfg.backend_id.clone()),
            socket_fds: vec![sock.as_raw_fd() as u32],
        },
    );
    nl.transact(&msg, seq)?;
    drop(sock);
    Ok(())
}

/// NBD_CMD_DISCONNECT of `/dev/nbd<index>`.
pub fn disconnect(index: u32) -> Result<(), KernelError> {
    let mut nl = NbdNetlink::open()?;
    let seq = nl.next_seq();
    nl.transact(&genl::disconnect(nl.family(), seq, index), seq)?;
    Ok(())
}

/// Every NBD device with its state: NBD_CMD_STATUS plus sysfs and /proc.
pub fn survey() -> Result<Vec<DeviceStatus>, KernelError> {
    match NbdNetlink::open() {
        Ok(mut nl) => survey_with(&mut nl),
        Err(KernelError::FamilyMissing) => Ok(survey_sysfs()),
        Err(e) => Err(e),
    }
}

fn survey_with(nl: &mut NbdNetlink) -> Result<Vec<DeviceStatus>, KernelError> {
    let seq = nl.next_seq();
    let replies = nl.transact(&genl::status(nl.family(), seq, None), seq)?;
    let mut devices = Vec::new();
    for attrs in &replies {
        devices.extend(genl::device_list(attrs).map_err(|e| KernelError::Protocol(e.to_string()))?);
    }
    devices.sort_unstable();
    let openers = openers_by_device();
    Ok(devices
        .into_iter()
        .map(|(index, connected)| status_of(index, connected, &openers))
        .collect())
}

/// Without netlink: devices from /sys/block, "connected" when sysfs has a pid.
fn survey_sysfs() -> Vec<DeviceStatus> {
    let mut indexes: Vec<u32> = std::fs::read_dir("/sys/block")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("nbd")?.parse().ok())
        .collect();
    indexes.sort_unstable();
    let openers = openers_by_device();
    indexes
        .into_iter()
        .map(|index| {
            let connected = sysfs(index, "pid").exists();
            status_of(index, connected, &openers)
        })
        .collect()
}

fn status_of(index: u32, connected: bool, openers: &[(u32, u32)]) -> DeviceStatus {
    let read = |f: &str| {
        std::fs::read_to_string(sysfs(index, f))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let pid = read("pid").and_then(|s| s.parse().ok());
    DeviceStatus {
        index,
        connected,
        pid,
        pid_alive: pid.is_some_and(|p: u32| PathBuf::from(format!("/proc/{p}")).exists()),
        backend: read("backend"),
        openers: openers
            .iter()
            .filter(|(i, _)| *i == index)
            .map(|(_, p)| *p)
            .collect(),
    }
}

/// `(device index, pid)` for every open file descriptor of `/dev/nbdN`.
fn openers_by_device() -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    let me = std::process::id();
    for proc_entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = proc_entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        for fd in std::fs::read_dir(proc_entry.path().join("fd"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                if let Some(index) = nbd_index_of(&target) {
                    if !out.contains(&(index, pid)) {
                        out.push((index, pid));
                    }
                }
            }
        }
    }
    out
}

/// `Some(N)` for `/dev/nbdN` (not a partition `/dev/nbdNpM`).
fn nbd_index_of(path: &std::path::Path) -> Option<u32> {
    path.to_str()?.strip_prefix("/dev/nbd")?.parse().ok()
}

/// The lowest device that is not connected and that no process has open.
pub fn choose_free_device(statuses: &[DeviceStatus]) -> Option<u32> {
    statuses
        .iter()
        .filter(|s| !s.connected && s.pid.is_none() && s.openers.is_empty())
        .map(|s| s.index)
        .min()
}

/// The connected device serving `backend_id`, for a restarted daemon.
pub fn find_by_backend<'a>(
    statuses: &'a [DeviceStatus],
    backend_id: &str,
) -> Option<&'a DeviceStatus> {
    statuses
        .iter()
        .find(|s| s.connected && s.backend.as_deref() == Some(backend_id))
}

/// Writes `none` to `/sys/block/nbdN/queue/scheduler`: requests go to the
/// server in the order xhad issues them, with no merging delay.
pub fn set_scheduler_none(index: u32) -> io::Result<()> {
    std::fs::write(sysfs(index, "queue/scheduler"), "none")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(index: u32) -> DeviceStatus {
        DeviceStatus {
            index,
            connected: false,
            pid: None,
            pid_alive: false,
            backend: None,
            openers: Vec::new(),
        }
    }

    #[test]
    fn a_connected_or_open_device_is_never_chosen() {
        let mut connected = dev(0);
        connected.connected = true;
        connected.pid = Some(4242);
        let mut held_open = dev(1);
        held_open.openers = vec![77];
        let mut orphan = dev(2);
        orphan.connected = true;
        orphan.pid = Some(999_999);
        let free = dev(3);
        let statuses = [connected, held_open, orphan.clone(), free];
        assert_eq!(choose_free_device(&statuses), Some(3));
        assert!(orphan.orphaned());
        assert_eq!(choose_free_device(&statuses[..3]), None);
        let err = no_free_device(&statuses[..3]).to_string();
        assert!(err.contains("nbd1 open by [77]"), "{err}");
        assert!(err.contains("nbd2 connected by dead pid 999999"), "{err}");
    }

    #[test]
    fn a_restarted_daemon_finds_its_device_by_backend() {
        let mut mine = dev(5);
        mine.connected = true;
        mine.backend = Some("http-nbd:statefile".into());
        let mut other = dev(1);
        other.connected = true;
        other.backend = Some("http-nbd:redo-log".into());
        let statuses = [other, mine];
        assert_eq!(
            find_by_backend(&statuses, "http-nbd:statefile").map(|s| s.index),
            Some(5)
        );
        assert!(find_by_backend(&statuses, "http-nbd:other").is_none());
    }

    #[test]
    fn timeouts_round_up_to_whole_seconds_and_config_is_checked() {
        assert_eq!(secs_rounded_up(Duration::from_millis(1500)), 2);
        assert_eq!(secs_rounded_up(Duration::from_millis(0)), 1);
        assert_eq!(secs_rounded_up(Duration::from_secs(30)), 30);
        let cfg = DeviceConfig::new(4 << 20, "http-nbd:sf", 1);
        assert!(cfg.validate().is_ok());
        let mut bad = cfg.clone();
        bad.block_size = 1000;
        assert!(bad.validate().is_err());
        let mut bad = cfg;
        bad.size_bytes = 1000;
        assert!(bad.validate().is_err());
    }

    #[test]
    fn partitions_are_not_devices() {
        assert_eq!(nbd_index_of(std::path::Path::new("/dev/nbd12")), Some(12));
        assert_eq!(nbd_index_of(std::path::Path::new("/dev/nbd1p1")), None);
        assert_eq!(nbd_index_of(std::path::Path::new("/dev/sda")), None);
    }
}
