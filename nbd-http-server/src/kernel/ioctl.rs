//! The ioctl fallback for kernels without the `nbd` netlink family: the
//! socket is handed over with `NBD_SET_SOCK` and the device only lives while
//! a thread sits in `NBD_DO_IT`. No reconfigure: if this process dies, the
//! device is torn down (the netlink path does not have that weakness).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::{DeviceConfig, KernelError};

// _IO(0xab, n) from include/uapi/linux/nbd.h.
const NBD_SET_SOCK: libc::c_ulong = 0xab00;
const NBD_SET_BLKSIZE: libc::c_ulong = 0xab01;
const NBD_DO_IT: libc::c_ulong = 0xab03;
const NBD_CLEAR_SOCK: libc::c_ulong = 0xab04;
const NBD_CLEAR_QUE: libc::c_ulong = 0xab05;
const NBD_SET_SIZE_BLOCKS: libc::c_ulong = 0xab07;
const NBD_DISCONNECT: libc::c_ulong = 0xab08;
const NBD_SET_TIMEOUT: libc::c_ulong = 0xab09;
const NBD_SET_FLAGS: libc::c_ulong = 0xab0a;

fn nbd_ioctl(dev: &File, request: libc::c_ulong, arg: libc::c_ulong) -> io::Result<()> {
    // SAFETY: the NBD ioctls take their argument by value, never as a pointer.
    let rc = unsafe { libc::ioctl(dev.as_raw_fd(), request, arg) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A device attached through ioctls: the thread blocked in `NBD_DO_IT`.
pub struct IoctlSession {
    device: Arc<File>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

pub fn attach(index: u32, sock: OwnedFd, cfg: &DeviceConfig) -> Result<IoctlSession, KernelError> {
    let path = super::device_path(index);
    let device = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|source| KernelError::Ioctl {
            index,
            what: "open",
            source,
        })?;
    let step = |what: &'static str, request, arg| {
        nbd_ioctl(&device, request, arg).map_err(|source| KernelError::Ioctl {
            index,
            what,
            source,
        })
    };
    // NBD_SET_SOCK first: it fails with EBUSY when another task set the
    // device up (or netlink owns it), before anything of theirs is changed.
    step(
        "NBD_SET_SOCK",
        NBD_SET_SOCK,
        sock.as_raw_fd() as libc::c_ulong,
    )?;
    let blocks = cfg.size_bytes / u64::from(cfg.block_size);
    let configured = step(
        "NBD_SET_BLKSIZE",
        NBD_SET_BLKSIZE,
        cfg.block_size as libc::c_ulong,
    )
    .and_then(|()| {
        step(
            "NBD_SET_SIZE_BLOCKS",
            NBD_SET_SIZE_BLOCKS,
            blocks as libc::c_ulong,
        )
    })
    .and_then(|()| {
        step(
            "NBD_SET_TIMEOUT",
            NBD_SET_TIMEOUT,
            cfg.request_timeout_secs() as libc::c_ulong,
        )
    })
    .and_then(|()| {
        step(
            "NBD_SET_FLAGS",
            NBD_SET_FLAGS,
            libc::c_ulong::from(cfg.server_flags),
        )
    });
    if let Err(e) = configured {
        let _ = nbd_ioctl(&device, NBD_CLEAR_SOCK, 0);
        return Err(e);
    }
    // The kernel holds its own reference to the socket now.
    drop(sock);
    let device = Arc::new(device);
    let in_thread = Arc::clone(&device);
    let thread = std::thread::Builder::new()
        .name(format!("nbd{index}-do-it"))
        .spawn(move || {
            let served = nbd_ioctl(&in_thread, NBD_DO_IT, 0);
            let _ = nbd_ioctl(&in_thread, NBD_CLEAR_QUE, 0);
            let _ = nbd_ioctl(&in_thread, NBD_CLEAR_SOCK, 0);
            served
        })
        .map_err(|source| KernelError::Ioctl {
            index,
            what: "spawn the NBD_DO_IT thread",
            source,
        })?;
    Ok(IoctlSession {
        device,
        thread: Some(thread),
    })
}

impl IoctlSession {
    /// `NBD_DISCONNECT`, then waits for `NBD_DO_IT` to return.
    pub fn disconnect(mut self, index: u32) -> Result<(), KernelError> {
        nbd_ioctl(&self.device, NBD_DISCONNECT, 0).map_err(|source| KernelError::Ioctl {
            index,
            what: "NBD_DISCONNECT",
            source,
        })?;
        self.join(index)
    }

    fn join(&mut self, index: u32) -> Result<(), KernelError> {
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(Ok(()))) | None => Ok(()),
            Some(Ok(Err(source))) => Err(KernelError::Ioctl {
                index,
                what: "NBD_DO_IT",
                source,
            }),
            Some(Err(_)) => Err(KernelError::Ioctl {
                index,
                what: "NBD_DO_IT thread",
                source: io::Error::other("panicked"),
            }),
        }
    }

    /// Whether `NBD_DO_IT` is still running (the device is up).
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}
