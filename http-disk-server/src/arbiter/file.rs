//! The `file` arbiter: an exclusive open-file-description lock on the disk
//! file decides the one serving process **on one machine**.
//!
//! SINGLE MACHINE ONLY. OFD locks are kept by one kernel; two hosts sharing a
//! file over a network filesystem, or each holding its own copy, are NOT
//! arbitrated by this. Use it for demos, tests and single-host setups; across
//! hosts only DRBD's quorum (`--arbiter drbd`) is safe.
//!
//! How it works: every server opens the disk file and asks for a write lock
//! on the whole file with `F_OFD_SETLKW` from a dedicated thread. One gets
//! it and serves; the others block in the kernel and get it the instant the
//! holder's last descriptor for that open file description closes, which the
//! kernel does when the holder dies, however it dies. OFD locks (unlike
//! classic POSIX locks) belong to the open file description, so they conflict
//! between two descriptors even inside one process, and closing some other
//! descriptor of the same file does not drop them by accident; unlike
//! `flock`, they are byte-range locks that also work on the NFS-less local
//! files we use.
//!
//! The epoch lives in a sidecar file (`<disk>.epoch` by default) that only the
//! lock holder writes: the new holder reads the old epoch, adds one, and
//! writes it with its advertise URL (write to a temporary file, fsync, rename,
//! fsync the directory), all before it publishes `Serving`. Standbys read the
//! URL from it for the hint in their 503 answers.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::oneshot;

use super::{Arbiter, ArbiterContext, ArbiterFuture, Grant};

/// How often a standby re-reads the sidecar for the serving URL hint.
const HINT_REFRESH: Duration = Duration::from_secs(1);

pub struct FileArbiter {
    lock_path: PathBuf,
    epoch_path: PathBuf,
    /// After stepping down, wait this long before competing again, so that a
    /// healthy standby wins the lock rather than us.
    retake_delay: Duration,
}

/// The sidecar's content.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpochRecord {
    pub epoch: u64,
    pub url: Option<String>,
}

impl EpochRecord {
    pub fn parse(text: &str) -> Self {
        let mut rec = EpochRecord::default();
        for line in text.lines() {
            match line.split_once('=') {
                Some(("epoch", v)) => rec.epoch = v.trim().parse().unwrap_or(0),
                Some(("url", v)) if !v.trim().is_empty() => rec.url = Some(v.trim().to_owned()),
                _ => {}
            }
        }
        rec
    }

    pub fn render(&self) -> String {
        format!(
            "epoch={}\nurl={}\n",
            self.epoch,
            self.url.as_deref().unwrap_or("")
        )
    }

    pub fn read(path: &Path) -> Self {
        std::fs::read_to_string(path)
            .map(|t| Self::parse(&t))
            .unwrap_or_default()
    }

    /// Durably replace the sidecar. Only the lock holder calls this.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let tmp = path.with_extension("epoch.tmp");
        let mut f = File::create(&tmp)
            .with_context(|| format!("cannot create epoch file {}", tmp.display()))?;
        f.write_all(self.render().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        File::open(dir)?.sync_all()?;
        Ok(())
    }
}

/// Default sidecar path: `<disk>.epoch`.
pub fn default_epoch_path(disk: &Path) -> PathBuf {
    let mut s = disk.as_os_str().to_owned();
    s.push(".epoch");
    PathBuf::from(s)
}

/// How a lock attempt waits.
#[derive(Clone, Copy, PartialEq, Eq)]
enum LockWait {
    /// Return at once; `Ok(None)` when another description holds the lock.
    No,
    /// Block until the lock is ours (on a dedicated thread).
    Yes,
}

/// Take a write lock on the whole file with a new open file description.
fn lock_file(path: &Path, wait: LockWait) -> std::io::Result<Option<File>> {
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    // SAFETY: zeroed flock is a valid value; we fill the fields we need.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = 0;
    fl.l_len = 0; // to the end of the file, however large it grows
    fl.l_pid = 0; // required for OFD locks
    let cmd = match wait {
        LockWait::No => libc::F_OFD_SETLK,
        LockWait::Yes => libc::F_OFD_SETLKW,
    };
    loop {
        // SAFETY: valid fd and a valid flock pointer.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), cmd, &fl) };
        if rc == 0 {
            return Ok(Some(file));
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) | Some(libc::EACCES) if wait == LockWait::No => return Ok(None),
            _ => return Err(err),
        }
    }
}

impl FileArbiter {
    pub fn new(disk: &Path, epoch_path: Option<PathBuf>) -> Self {
        Self {
            lock_path: disk.to_owned(),
            epoch_path: epoch_path.unwrap_or_else(|| default_epoch_path(disk)),
            retake_delay: Duration::from_secs(1),
        }
    }

    pub fn with_retake_delay(mut self, d: Duration) -> Self {
        self.retake_delay = d;
        self
    }

    fn standby_grant(&self, own_url: &str) -> Grant {
        let rec = EpochRecord::read(&self.epoch_path);
        Grant::Standby {
            reason: format!(
                "another process on this machine holds the lock on {} (epoch {}); waiting to take over",
                self.lock_path.display(),
                rec.epoch
            ),
            serving_url: rec.url.filter(|u| u != own_url),
        }
    }

    /// Wait as a standby until the lock is ours. `None` when shutdown came first.
    async fn wait_for_lock(
        &self,
        ctx: &mut ArbiterContext,
    ) -> anyhow::Result<Option<std::io::Result<File>>> {
        ctx.publish(self.standby_grant(&ctx.advertise_url));
        let (tx, mut rx) = oneshot::channel();
        let path = self.lock_path.clone();
        // A plain thread, not spawn_blocking: it may block forever, and
        // the runtime must not wait for it at shutdown. If we stop
        // waiting, the send fails, the File drops, and the lock goes.
        std::thread::Builder::new()
            .name("file-arbiter-lock".into())
            .spawn(move || {
                let locked = lock_file(&path, LockWait::Yes).and_then(|f| {
                    f.ok_or_else(|| {
                        std::io::Error::other("blocking lock returned without the lock")
                    })
                });
                let _ = tx.send(locked);
            })
            .context("cannot start the file lock thread")?;
        loop {
            tokio::select! {
                r = &mut rx => return Ok(Some(r.context("file lock thread vanished")?)),
                _ = super::shutdown_signal(&mut ctx.shutdown) => {
                    ctx.publish(Grant::standby("shutting down"));
                    return Ok(None);
                }
                _ = tokio::time::sleep(HINT_REFRESH) => {
                    ctx.publish(self.standby_grant(&ctx.advertise_url));
                }
            }
        }
    }

    async fn run_inner(self, mut ctx: ArbiterContext) -> anyhow::Result<()> {
        loop {
            // Try without waiting first, so that a free lock is taken before
            // the first decision is published: a lone server then says
            // `Server ready!` as a server that serves, not as a standby.
            let lock_path = self.lock_path.clone();
            let first_try =
                tokio::task::spawn_blocking(move || lock_file(&lock_path, LockWait::No))
                    .await
                    .context("file lock attempt panicked")?;
            let lock = match first_try {
                Ok(Some(file)) => Ok(file),
                Ok(None) => match self.wait_for_lock(&mut ctx).await? {
                    Some(lock) => lock,
                    None => return Ok(()), // shutdown while waiting
                },
                Err(e) => Err(e),
            };
            let lock = lock.with_context(|| {
                format!(
                    "cannot lock {} for arbitration: check that the disk exists and is writable",
                    self.lock_path.display()
                )
            })?;
            // We hold the lock: bump the epoch durably before serving.
            let prev = EpochRecord::read(&self.epoch_path);
            let rec = EpochRecord {
                epoch: prev.epoch + 1,
                url: Some(ctx.advertise_url.clone()),
            };
            let epoch_path = self.epoch_path.clone();
            let rec2 = rec.clone();
            tokio::task::spawn_blocking(move || rec2.write(&epoch_path))
                .await
                .context("epoch writer panicked")?
                .with_context(|| {
                    format!(
                        "cannot record the new epoch for {}: make the directory of {} writable or pass --epoch-file",
                        self.lock_path.display(),
                        self.epoch_path.display()
                    )
                })?;
            tracing::info!(disk = %self.lock_path.display(), epoch = rec.epoch, "file lock acquired; serving");
            ctx.publish(Grant::Serving { epoch: rec.epoch });
            loop {
                tokio::select! {
                    req = ctx.step_down.recv() => {
                        let Some(req) = req else {
                            drop(lock);
                            return Ok(());
                        };
                        if req.epoch != rec.epoch {
                            continue; // stale request from an earlier grant
                        }
                        drop(lock);
                        tracing::warn!(
                            disk = %self.lock_path.display(), epoch = rec.epoch, cause = %req.cause,
                            retake_delay = ?self.retake_delay,
                            "released the file lock; another process may take over"
                        );
                        ctx.publish(Grant::standby(format!(
                            "stepped down because {}; competing again in {:?}",
                            req.cause, self.retake_delay
                        )));
                        tokio::select! {
                            _ = tokio::time::sleep(self.retake_delay) => {}
                            _ = super::shutdown_signal(&mut ctx.shutdown) => return Ok(()),
                        }
                        break;
                    }
                    _ = super::shutdown_signal(&mut ctx.shutdown) => {
                        drop(lock);
                        ctx.publish(Grant::standby("shutting down"));
                        tracing::info!(disk = %self.lock_path.display(), "file lock released for shutdown");
                        return Ok(());
                    }
                }
            }
        }
    }
}

impl Arbiter for FileArbiter {
    fn name(&self) -> &'static str {
        "file"
    }

    fn run(self: Box<Self>, ctx: ArbiterContext) -> ArbiterFuture {
        Box::pin(self.run_inner(ctx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arbiter::StepDownRequest;
    use tokio::sync::{mpsc, watch};

    struct Handle {
        grant: watch::Receiver<Grant>,
        step_down: mpsc::UnboundedSender<StepDownRequest>,
        shutdown: watch::Sender<bool>,
        task: tokio::task::JoinHandle<anyhow::Result<()>>,
    }

    fn start(disk: &Path, url: &str) -> Handle {
        let (gtx, grx) = watch::channel(Grant::standby("starting"));
        let (stx, srx) = mpsc::unbounded_channel();
        let (shtx, shrx) = watch::channel(false);
        let arb =
            Box::new(FileArbiter::new(disk, None).with_retake_delay(Duration::from_millis(300)));
        let ctx = ArbiterContext {
            grant: gtx,
            step_down: srx,
            shutdown: shrx,
            advertise_url: url.into(),
            disk: disk.into(),
        };
        Handle {
            grant: grx,
            step_down: stx,
            shutdown: shtx,
            task: tokio::spawn(arb.run(ctx)),
        }
    }

    async fn wait_serving(h: &mut Handle) -> u64 {
        let g = tokio::time::timeout(
            Duration::from_secs(10),
            h.grant.wait_for(|g| matches!(g, Grant::Serving { .. })),
        )
        .await
        .expect("should become serving")
        .unwrap()
        .clone();
        match g {
            Grant::Serving { epoch } => epoch,
            _ => unreachable!(),
        }
    }

    #[test]
    fn epoch_record_round_trip() {
        let r = EpochRecord {
            epoch: 7,
            url: Some("http://10.0.0.1:8076".into()),
        };
        assert_eq!(EpochRecord::parse(&r.render()), r);
        assert_eq!(EpochRecord::parse("garbage"), EpochRecord::default());
        assert_eq!(EpochRecord::parse("epoch=3\nurl=\n").url, None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_holder_and_takeover_with_higher_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk.img");
        std::fs::write(&disk, vec![0u8; 4096]).unwrap();

        let mut a = start(&disk, "http://a");
        let ea = wait_serving(&mut a).await;
        assert_eq!(ea, 1);
        let mut b = start(&disk, "http://b");
        // b stays standby and learns a's URL.
        let hint = tokio::time::timeout(
            Duration::from_secs(10),
            b.grant.wait_for(|g| {
                matches!(
                    g,
                    Grant::Standby {
                        serving_url: Some(_),
                        ..
                    }
                )
            }),
        )
        .await
        .unwrap()
        .unwrap()
        .clone();
        assert!(matches!(hint, Grant::Standby { serving_url: Some(ref u), .. } if u == "http://a"));

        // a steps down: b takes over with a higher epoch.
        a.step_down
            .send(StepDownRequest {
                epoch: ea,
                cause: crate::arbiter::StepDownCause::DeviceFailure("test".into()),
            })
            .unwrap();
        let eb = wait_serving(&mut b).await;
        assert!(eb > ea);
        assert!(matches!(&*a.grant.borrow(), Grant::Standby { .. }));

        // b shuts down: a (competing again after its retake delay) takes over.
        b.shutdown.send(true).unwrap();
        b.task.await.unwrap().unwrap();
        let ea2 = wait_serving(&mut a).await;
        assert!(ea2 > eb);
        a.shutdown.send(true).unwrap();
        a.task.await.unwrap().unwrap();
    }
}
