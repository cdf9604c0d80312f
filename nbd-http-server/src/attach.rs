//! The daemon side of the kernel device: attach `/dev/nbdN` to a socket pair
//! served in transmission mode, keep it connected, publish
//! `/dev/http-nbd/<volume>`, and detach on an orderly stop.
//!
//! The protocol with the kernel is in [`crate::kernel`]; this module decides
//! *when* to call it:
//!
//! * start: a device whose backend identifier is this volume's (a previous
//!   daemon crashed or was killed while xhad held the device) gets a fresh
//!   socket with RECONFIGURE; otherwise a free device is attached. Devices of
//!   other volumes, even orphaned ones, are reported and never taken;
//! * the kernel closing its end (it does so when a request outlives the
//!   kernel request timeout, then waits for a new socket): hand over a new
//!   pair to the same device, so the path xhad holds stays valid;
//! * stop: stop reading new requests, answer those in flight, then
//!   NBD_CMD_DISCONNECT and remove the link.
//!
//! # Timeouts
//!
//! The server's own per-request deadline (`--request-deadline-ms`, from XHA's
//! budget) is what bounds latency: it answers EIO in time. The kernel's
//! request timeout is a backstop for a wedged daemon and must be longer, or
//! the kernel would drop healthy connections that are about to answer EIO;
//! see [`kernel_request_timeout`]. The dead-connection timeout is the window
//! for a restarted daemon to reconnect while I/O waits; see
//! [`DEFAULT_DEAD_CONN_TIMEOUT`].

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::kernel::{self, AttachMethod, AttachedDevice, DeviceConfig, KernelError};
use crate::server::{serve_transmission_only, Client, ServeConfig};
use crate::upstream::Upstream;

/// Where the stable device names go (what XCP-ng's LinstorSR gives xhad).
pub const DEFAULT_LINK_DIR: &str = "/dev/http-nbd";

/// How long I/O waits for a new connection after the old one died (the
/// kernel's `dead_conn_timeout`): the restart window. systemd restarts the
/// daemon after 500 ms (`RestartSec`), a hung one after the 3 s watchdog,
/// and a start takes about a second; 10 s covers that twice over. A daemon
/// that does not come back surfaces as EIO after 10 s, inside XHA's 30 s
/// statefile warning (T2/2), so xhad still sees a failure it can act on.
pub const DEFAULT_DEAD_CONN_TIMEOUT: Duration = Duration::from_secs(10);

/// A kernel connection that ends this soon after it was handed over was
/// dropped by the kernel at once (RECONFIGURE ignores a socket while the old
/// connection is alive), not by a request timeout, which takes seconds.
const DROPPED_AT_ONCE: Duration = Duration::from_millis(1000);
/// How often to retry a connection the kernel dropped at once before giving up.
const HANDOVER_ATTEMPTS: u32 = 10;

/// The kernel request timeout for a server deadline: 2 s longer, so the
/// server's EIO always wins the race, rounded up to whole seconds (the
/// kernel's unit).
pub fn kernel_request_timeout(server_deadline: Duration) -> Duration {
    let t = server_deadline + Duration::from_secs(2);
    Duration::from_secs(t.as_secs() + u64::from(t.subsec_nanos() > 0))
}

/// The backend identifier of a volume's device: how a restarted daemon
/// finds it (`/sys/block/nbdN/backend`).
pub fn backend_id(volume: &str) -> String {
    format!("http-nbd:{volume}")
}

/// Whether this kernel has an NBD driver at all: the `nbd` generic netlink
/// family, or (old kernels, ioctl only) a `/dev/nbd0`.
pub fn kernel_has_nbd() -> bool {
    match kernel::NbdNetlink::open() {
        Ok(_) => true,
        Err(KernelError::FamilyMissing) => Path::new("/dev/nbd0").exists(),
        // Present but unusable (e.g. EPERM): attaching will say why.
        Err(_) => true,
    }
}

/// A connection to the kernel being served.
struct Connection {
    task: JoinHandle<()>,
    since: Instant,
}

/// The attached device of this daemon.
pub struct KernelDevice {
    volume: String,
    config: DeviceConfig,
    index: u32,
    /// Kept for the ioctl fallback, whose device lives with this object.
    ioctl: Option<AttachedDevice>,
    link: Option<PathBuf>,
    connection: Option<Connection>,
    serve: Arc<ServeConfig>,
}

impl KernelDevice {
    /// Attaches (or, after a restart, reconnects to) this volume's device and
    /// starts serving it. `link_dir`: where to put the stable symlink.
    pub async fn start<U: Upstream>(
        config: DeviceConfig,
        serve: Arc<ServeConfig>,
        upstream: Arc<U>,
        shutdown: watch::Receiver<bool>,
        link_dir: Option<&Path>,
    ) -> Result<Self> {
        let volume = serve.export.name.clone();
        let backend = config.backend_id.clone();
        let statuses = blocking(kernel::survey)
            .await
            .with_context(|| format!("volume {volume}: cannot list the NBD devices"))?;
        for s in statuses.iter().filter(|s| s.orphaned()) {
            if s.backend.as_deref() != Some(backend.as_str()) {
                warn!(volume = %volume, device = %kernel::device_path(s.index).display(),
                    "left alone: connected by dead pid {} for backend {:?}, open by {:?}; it is not this volume's (backend {backend}); disconnect it by hand if it is stale",
                    s.pid.unwrap_or(0), s.backend.as_deref().unwrap_or("(none)"), s.openers);
            }
        }
        let mut device = KernelDevice {
            volume: volume.clone(),
            config: config.clone(),
            index: 0,
            ioctl: None,
            link: None,
            connection: None,
            serve: serve.clone(),
        };
        if let Some(mine) = kernel::find_by_backend(&statuses, &backend) {
            device.index = mine.index;
            info!(volume = %volume, device = %device.path().display(), openers = ?mine.openers,
                "found this volume's device from an earlier run; reconnecting instead of attaching a new one");
            device.hand_over(&upstream, &shutdown).await?;
        } else {
            let (server_end, kernel_end) = socket_pair(&volume)?;
            // Serve before the kernel has the socket: attaching reads the
            // partition table through it.
            let conn = spawn_serve(server_end, &serve, &upstream, &shutdown, "kernel")?;
            let cfg = config.clone();
            let attached = match blocking(move || kernel::attach(kernel_end, &cfg, None)).await {
                Ok(a) => a,
                Err(e) => {
                    conn.task.abort();
                    return Err(anyhow::Error::new(e).context(format!(
                        "volume {volume}: cannot attach a /dev/nbdN device (needs root and the nbd module; --no-attach serves the socket only)"
                    )));
                }
            };
            device.index = attached.index();
            info!(volume = %volume, device = %device.path().display(), method = ?attached.method(),
                size = config.size_bytes, block_size = config.block_size,
                request_timeout_s = config.request_timeout.as_secs(),
                dead_conn_timeout_s = config.dead_conn_timeout.as_secs(), backend = %backend,
                "attached");
            if attached.method() == AttachMethod::Ioctl {
                warn!(volume = %volume, "no nbd netlink family (kernel < 4.12): ioctl attach; the device ends with this process and a restart cannot reconnect to it");
                device.ioctl = Some(attached);
            }
            device.connection = Some(conn);
        }
        if let Some(dir) = link_dir {
            device.link = Some(publish_link(dir, &volume, &device.path())?);
        }
        Ok(device)
    }

    pub fn index(&self) -> u32 {
        self.index
    }

    pub fn path(&self) -> PathBuf {
        kernel::device_path(self.index)
    }

    pub fn link(&self) -> Option<&Path> {
        self.link.as_deref()
    }

    /// Serves until `shutdown` flips (returns Ok) or the device is lost
    /// (Err). When the kernel drops the connection (a request outlived the
    /// kernel timeout), hands a new socket pair to the same device;
    /// `healthy` is false meanwhile.
    pub async fn supervise<U: Upstream>(
        &mut self,
        upstream: Arc<U>,
        mut shutdown: watch::Receiver<bool>,
        healthy: Arc<AtomicBool>,
    ) -> Result<()> {
        loop {
            let Some(conn) = self.connection.as_mut() else {
                bail!("volume {}: no kernel connection", self.volume);
            };
            tokio::select! {
                _ = &mut conn.task => {}
                _ = shutdown.changed() => return Ok(()),
            }
            if *shutdown.borrow() {
                return Ok(());
            }
            healthy.store(false, Ordering::Relaxed);
            let lived = conn.since.elapsed();
            self.connection = None;
            if self.ioctl.is_some() {
                bail!(
                    "volume {}: the kernel closed the connection of {} (ioctl attach, which cannot reconnect); restart to attach again",
                    self.volume,
                    self.path().display()
                );
            }
            warn!(volume = %self.volume, device = %self.path().display(), lived_ms = lived.as_millis() as u64,
                "the kernel closed its connection (a request outlived the kernel timeout, or the device was disconnected); handing over a new one");
            self.hand_over(&upstream, &shutdown).await?;
            healthy.store(true, Ordering::Relaxed);
        }
    }

    /// Gives the device a new socket pair with RECONFIGURE, retrying while
    /// the kernel drops it at once (its old connection not yet dead).
    async fn hand_over<U: Upstream>(
        &mut self,
        upstream: &Arc<U>,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<()> {
        let path = self.path();
        for attempt in 1..=HANDOVER_ATTEMPTS {
            let (server_end, kernel_end) = socket_pair(&self.volume)?;
            let mut conn = spawn_serve(server_end, &self.serve, upstream, shutdown, "kernel")?;
            let (index, cfg) = (self.index, self.config.clone());
            if let Err(e) = blocking(move || kernel::reconnect(index, kernel_end, &cfg)).await {
                conn.task.abort();
                return Err(anyhow::Error::new(e).context(format!(
                    "volume {}: cannot reconnect {} (backend {}); if the device was disconnected, restart to attach a new one",
                    self.volume,
                    path.display(),
                    self.config.backend_id
                )));
            }
            match tokio::time::timeout(DROPPED_AT_ONCE, &mut conn.task).await {
                Err(_) => {
                    info!(volume = %self.volume, device = %path.display(), attempt, "reconnected");
                    crate::metrics::metrics().kernel_reconnected();
                    self.connection = Some(conn);
                    return Ok(());
                }
                Ok(_) => {
                    warn!(volume = %self.volume, device = %path.display(), attempt,
                        "the kernel dropped the new connection at once (its old one is still alive?); retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
        bail!(
            "volume {}: {} keeps refusing new connections: another nbd-http-server may be serving it (backend {}); stop it first",
            self.volume,
            path.display(),
            self.config.backend_id
        )
    }

    /// Orderly stop: the connection finishes the requests in flight (the
    /// caller flipped `shutdown`), then NBD_CMD_DISCONNECT, then the link.
    pub async fn detach(mut self, drain: Duration) -> Result<()> {
        if let Some(conn) = self.connection.take() {
            if tokio::time::timeout(drain, conn.task).await.is_err() {
                warn!(volume = %self.volume, "kernel connection still busy after {drain:?}; disconnecting anyway");
            }
        }
        let openers = blocking(kernel::survey)
            .await
            .ok()
            .and_then(|all| all.into_iter().find(|s| s.index == self.index))
            .map(|s| s.openers)
            .unwrap_or_default();
        if !openers.is_empty() {
            warn!(volume = %self.volume, device = %self.path().display(), ?openers,
                "disconnecting a device that processes still hold open; their I/O fails with EIO from now on");
        }
        let index = self.index;
        let result = match self.ioctl.take() {
            Some(dev) => blocking(move || dev.disconnect()).await,
            None => blocking(move || kernel::disconnect(index)).await,
        };
        if let Some(link) = &self.link {
            remove_link(link, &self.path());
        }
        result.with_context(|| {
            format!(
                "volume {}: cannot disconnect {}",
                self.volume,
                self.path().display()
            )
        })?;
        info!(volume = %self.volume, device = %self.path().display(), "detached");
        Ok(())
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, KernelError> + Send + 'static,
) -> Result<T, KernelError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(KernelError::Protocol(format!("kernel call panicked: {e}"))))
}

fn socket_pair(volume: &str) -> Result<(std::os::unix::net::UnixStream, OwnedFd)> {
    let (server_end, kernel_end) = std::os::unix::net::UnixStream::pair()
        .with_context(|| format!("volume {volume}: socketpair"))?;
    Ok((server_end, OwnedFd::from(kernel_end)))
}

fn spawn_serve<U: Upstream>(
    server_end: std::os::unix::net::UnixStream,
    serve: &Arc<ServeConfig>,
    upstream: &Arc<U>,
    shutdown: &watch::Receiver<bool>,
    peer: &str,
) -> Result<Connection> {
    server_end.set_nonblocking(true)?;
    let socket = Some(server_end.as_raw_fd());
    let stream = tokio::net::UnixStream::from_std(server_end)?;
    let (r, w) = stream.into_split();
    let client = Client {
        reader: r,
        writer: w,
        socket,
        peer: peer.to_owned(),
    };
    let task = tokio::spawn(serve_transmission_only(
        client,
        serve.clone(),
        upstream.clone(),
        shutdown.clone(),
    ));
    Ok(Connection {
        task,
        since: Instant::now(),
    })
}

/// `dir/volume` -> `device`, replaced atomically (a symlink renamed over the
/// old one), so a reader never sees it missing.
pub fn publish_link(dir: &Path, volume: &str, device: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("volume {volume}: cannot create {}", dir.display()))?;
    let link = dir.join(volume);
    let tmp = dir.join(format!(".{volume}.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(device, &tmp)
        .and_then(|()| std::fs::rename(&tmp, &link))
        .with_context(|| {
            format!(
                "volume {volume}: cannot link {} -> {}",
                link.display(),
                device.display()
            )
        })?;
    Ok(link)
}

/// Removes `link` if it still points at `device` (another daemon may have
/// re-pointed it since).
fn remove_link(link: &Path, device: &Path) {
    if std::fs::read_link(link).is_ok_and(|t| t == device) {
        let _ = std::fs::remove_file(link);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::{BlockSize, ExportInfo};
    use crate::transmission::Limits;
    use crate::upstream::MemoryUpstream;
    use heartbeat_wire::nbd::{self, RequestHeader, SimpleReplyHeader};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn kernel_timeout_stays_above_the_server_deadline() {
        assert_eq!(
            kernel_request_timeout(Duration::from_secs(10)),
            Duration::from_secs(12)
        );
        assert_eq!(
            kernel_request_timeout(Duration::from_millis(5500)),
            Duration::from_secs(8)
        );
        assert_eq!(backend_id("hb"), "http-nbd:hb");
    }

    #[test]
    fn link_is_replaced_and_only_removed_when_ours() {
        let dir = std::env::temp_dir().join(format!("attach-link-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let link = publish_link(&dir, "vol", Path::new("/dev/nbd3")).unwrap();
        assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("/dev/nbd3"));
        publish_link(&dir, "vol", Path::new("/dev/nbd5")).unwrap();
        assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("/dev/nbd5"));
        remove_link(&link, Path::new("/dev/nbd3"));
        assert!(std::fs::symlink_metadata(&link).is_ok(), "not ours: kept");
        remove_link(&link, Path::new("/dev/nbd5"));
        assert!(std::fs::symlink_metadata(&link).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// What the kernel does on the other end of the pair: requests from the
    /// first byte, simple replies, and EOF from the server after DISC.
    #[tokio::test]
    async fn socket_pair_speaks_transmission_only() {
        let size = 1u64 << 20;
        let serve = Arc::new(ServeConfig {
            export: ExportInfo {
                name: "vol".into(),
                description: String::new(),
                size,
                transmission_flags: nbd::FLAG_HAS_FLAGS,
                block_size: BlockSize {
                    minimum: 512,
                    preferred: 4096,
                    maximum: 65536,
                },
            },
            limits: Limits {
                size,
                max_request: 65536,
                max_discard: 65536,
            },
            request_deadline: Duration::from_secs(1),
            max_in_flight: 4,
            activity: Arc::default(),
        });
        let upstream = Arc::new(MemoryUpstream::new(size as usize));
        let (_stop, shutdown) = watch::channel(false);
        let (server_end, kernel_end) = socket_pair("vol").unwrap();
        let conn = spawn_serve(server_end, &serve, &upstream, &shutdown, "test").unwrap();
        let kernel_end = std::os::unix::net::UnixStream::from(kernel_end);
        kernel_end.set_nonblocking(true).unwrap();
        let mut k = tokio::net::UnixStream::from_std(kernel_end).unwrap();
        let req = |command, handle, offset, length| {
            RequestHeader {
                flags: 0,
                command,
                handle,
                offset,
                length,
            }
            .encode()
        };
        k.write_all(&req(nbd::CMD_WRITE, 1, 1024, 1024))
            .await
            .unwrap();
        k.write_all(&[7u8; 1024]).await.unwrap();
        let mut h = [0u8; 16];
        k.read_exact(&mut h).await.unwrap();
        assert_eq!(
            SimpleReplyHeader::decode(&h).unwrap(),
            SimpleReplyHeader {
                error: 0,
                handle: 1
            }
        );
        k.write_all(&req(nbd::CMD_READ, 2, 1536, 512))
            .await
            .unwrap();
        k.read_exact(&mut h).await.unwrap();
        assert_eq!(SimpleReplyHeader::decode(&h).unwrap().handle, 2);
        let mut data = [0u8; 512];
        k.read_exact(&mut data).await.unwrap();
        assert_eq!(data, [7u8; 512]);
        k.write_all(&req(nbd::CMD_DISC, 3, 0, 0)).await.unwrap();
        let mut rest = Vec::new();
        k.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "nothing after DISC, then EOF");
        conn.task.await.unwrap();
        assert_eq!(&upstream.snapshot()[1024..2048], &[7u8; 1024]);
    }
}
