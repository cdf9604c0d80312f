//! The systemd notify protocol, shared by both daemons: one datagram to
//! `$NOTIFY_SOCKET` (`READY=1`, `WATCHDOG=1`, `STATUS=...`, `STOPPING=1`).
//! Written by hand with std only: the protocol is a single `sendto`, not
//! worth a dependency.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Send one notify message to `$NOTIFY_SOCKET`, if set. Errors are ignored:
/// not being supervised is fine.
pub fn sd_notify(msg: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let addr = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        SocketAddr::from_abstract_name(name)
    } else {
        SocketAddr::from_pathname(std::path::Path::new(&path))
    };
    if let Ok(addr) = addr {
        let _ = sock.send_to_addr(msg.as_bytes(), &addr);
    }
}

/// `STATUS=<status>` (one line), when supervised.
pub fn notify_status(status: &str) {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        sd_notify(&format!("STATUS={}", status.replace('\n', " ")));
    }
}

/// The watchdog interval systemd asked for, if it asked us (not a parent):
/// `$WATCHDOG_USEC`, honoured only when `$WATCHDOG_PID` is unset or ours.
/// Ping at half of it.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abstract_and_path_sockets_receive_notifications() {
        let dir = std::env::temp_dir().join(format!("sd-notify-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let rx = UnixDatagram::bind(&path).unwrap();
        // The env var is process-wide; this is the only test here that sets it.
        std::env::set_var("NOTIFY_SOCKET", &path);
        sd_notify("READY=1");
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("heartbeat-wire-test-{}", std::process::id());
        let arx =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        std::env::set_var("NOTIFY_SOCKET", format!("@{name}"));
        sd_notify("WATCHDOG=1");
        let n = arx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
        std::env::remove_var("NOTIFY_SOCKET");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
