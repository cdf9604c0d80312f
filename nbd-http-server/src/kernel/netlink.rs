//! The netlink socket: a blocking `AF_NETLINK`/`NETLINK_GENERIC` socket with
//! a receive timeout, sending one request and collecting its replies up to
//! the acknowledgement.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use super::genl::{self, Reply};
use super::KernelError;

/// An open generic netlink socket with the `nbd` family resolved.
pub struct NbdNetlink {
    fd: OwnedFd,
    family: u16,
    seq: u32,
}

/// How long to wait for the kernel's answer. The `nbd` commands answer at
/// once (the kernel does not wait for I/O), so this only guards against a bug.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

impl NbdNetlink {
    /// Opens the socket and resolves the `nbd` family. Fails with
    /// [`KernelError::FamilyMissing`] when the `nbd` module is not loaded
    /// (or the kernel predates the netlink interface, 4.12).
    pub fn open() -> Result<Self, KernelError> {
        // SAFETY: plain socket(2); the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                genl::NETLINK_GENERIC,
            )
        };
        if raw < 0 {
            return Err(KernelError::Netlink {
                what: "socket(AF_NETLINK, NETLINK_GENERIC)".into(),
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: raw is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let tv = libc::timeval {
            tv_sec: REPLY_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        // SAFETY: tv lives across the call; the size matches.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const libc::timeval as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(KernelError::Netlink {
                what: "setsockopt(SO_RCVTIMEO)".into(),
                source: io::Error::last_os_error(),
            });
        }
        let mut sock = Self {
            fd,
            family: 0,
            seq: 0,
        };
        let seq = sock.next_seq();
        let replies = sock
            .transact(&genl::get_family(genl::NBD_GENL_FAMILY_NAME, seq), seq)
            .map_err(|e| match e {
                KernelError::Refused { errno, .. } if errno == libc::ENOENT => {
                    KernelError::FamilyMissing
                }
                other => other,
            })?;
        let attrs = replies
            .into_iter()
            .next()
            .ok_or_else(|| KernelError::Protocol("no reply to CTRL_CMD_GETFAMILY".into()))?;
        sock.family = genl::family_id(&attrs).map_err(|e| KernelError::Protocol(e.to_string()))?;
        Ok(sock)
    }

    /// The numeric id of the `nbd` family on this kernel.
    pub fn family(&self) -> u16 {
        self.family
    }

    pub fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends `request` and returns the attribute blocks of the generic
    /// netlink replies that carry `seq`, once the kernel acknowledged it.
    pub fn transact(&mut self, request: &[u8], seq: u32) -> Result<Vec<Vec<u8>>, KernelError> {
        self.send(request)?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: buf is valid for buf.len() bytes.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(KernelError::Netlink {
                    what: "recv from the kernel".into(),
                    source: err,
                });
            }
            let replies = genl::parse_replies(&buf[..n as usize])
                .map_err(|e| KernelError::Protocol(e.to_string()))?;
            for reply in replies {
                match reply {
                    Reply::Ack { seq: s } if s == seq => return Ok(out),
                    Reply::Error { seq: s, errno } if s == seq => {
                        return Err(KernelError::Refused {
                            command: command_name(request),
                            errno,
                        })
                    }
                    Reply::Done { seq: s } if s == seq => return Ok(out),
                    Reply::Genl { seq: s, attrs, .. } if s == seq => out.push(attrs.to_vec()),
                    _ => {} // a stale answer to an earlier request
                }
            }
        }
    }

    fn send(&self, request: &[u8]) -> Result<(), KernelError> {
        // SAFETY: a zeroed sockaddr_nl is valid; pid 0 addresses the kernel.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: request and addr outlive the call; sizes match.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                request.as_ptr().cast(),
                request.len(),
                0,
                &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if n < 0 || n as usize != request.len() {
            return Err(KernelError::Netlink {
                what: format!("send {}", command_name(request)),
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

/// A readable name for the command of a request we built (for errors).
fn command_name(request: &[u8]) -> &'static str {
    let kind = u16::from_ne_bytes([request[4], request[5]]);
    if kind == 0x10 {
        return "CTRL_CMD_GETFAMILY";
    }
    match request.get(16) {
        Some(1) => "NBD_CMD_CONNECT",
        Some(2) => "NBD_CMD_DISCONNECT",
        Some(3) => "NBD_CMD_RECONFIGURE",
        Some(5) => "NBD_CMD_STATUS",
        _ => "netlink request",
    }
}
