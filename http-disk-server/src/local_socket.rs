//! `--unix-socket`: the listener for this host's own nbd-http-server.
//!
//! The same HTTP service as the TCP listener, with the same MAC check; only
//! the transport differs, so the local client skips the TCP stack (on a
//! small VM, a loopback TCP round trip costs tens of µs more than a Unix
//! one). The socket file is created mode 0600 and removed when the server
//! ends.

use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use tokio::net::{UnixListener, UnixStream};

/// A bound Unix listener; its socket file goes when this is dropped.
pub struct LocalListener {
    listener: UnixListener,
    path: PathBuf,
}

impl LocalListener {
    /// Bind `path`, replacing a stale socket that a killed server left (one
    /// that nothing answers on). A socket another server still listens on,
    /// or any other kind of file, is an error and is left alone.
    pub fn bind(path: &Path, disk: &Path) -> anyhow::Result<Self> {
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    bail!(
                        "cannot listen on {} for disk {}: another server is listening on that socket; stop it or choose another --unix-socket",
                        path.display(),
                        disk.display()
                    );
                }
                std::fs::remove_file(path).with_context(|| {
                    format!("cannot remove the stale socket {}", path.display())
                })?;
            }
            Ok(_) => bail!(
                "cannot listen on {} for disk {}: the path exists and is not a socket; refusing to replace it. Choose another --unix-socket",
                path.display(),
                disk.display()
            ),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("cannot inspect {}", path.display()))
            }
        }
        let listener = UnixListener::bind(path).with_context(|| {
            format!(
                "cannot listen on {} for disk {}: does its directory exist and is it writable?",
                path.display(),
                disk.display()
            )
        })?;
        let bound = Self {
            listener,
            path: path.to_owned(),
        };
        // Only this host's root daemons belong here; the MAC is still checked.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot restrict {} to mode 0600", path.display()))?;
        Ok(bound)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub async fn accept(&self) -> std::io::Result<UnixStream> {
        self.listener.accept().await.map(|(stream, _)| stream)
    }
}

impl Drop for LocalListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The next connection on `listener`; without one, never.
pub async fn accept_on(listener: Option<&LocalListener>) -> std::io::Result<UnixStream> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stale_sockets_are_replaced_live_ones_and_files_refused() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Path::new("/dev/null");
        let path = dir.path().join("hds.sock");

        let first = LocalListener::bind(&path, disk).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let e = LocalListener::bind(&path, disk).err().unwrap().to_string();
        assert!(e.contains("another server is listening"), "{e}");
        assert!(path.exists(), "a live socket must be left alone");
        drop(first);
        assert!(!path.exists(), "the socket file goes with the server");

        // A killed server leaves its socket file behind, with no listener.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        drop(LocalListener::bind(&path, disk).unwrap());

        std::fs::write(&path, b"not a socket").unwrap();
        let e = LocalListener::bind(&path, disk).err().unwrap().to_string();
        assert!(e.contains("is not a socket"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");
    }
}
