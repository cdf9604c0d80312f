//! Where the statefile lives: a path (file or block device) opened the way
//! XCP-ng's xhad opens it, or an NBD export reached by our own small client.
//!
//! Every transfer uses a 4096-aligned buffer whose length is a multiple of 512
//! at a 512-aligned offset, as xhad's O_DIRECT I/O requires.

use std::alloc::{self, Layout};
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::{Deref, DerefMut};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::statefile::IO_UNIT;

/// `IOALIGN`: alignment of xhad's I/O buffer.
pub const BUFFER_ALIGN: usize = 4096;
/// Block major of the Linux NBD driver; xhad adds O_SYNC for it.
pub const NBD_MAJOR: u32 = 43;

/// A zeroed heap buffer aligned to 4096 bytes, its length a multiple of 512.
pub struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// The buffer owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    pub fn zeroed(len: usize) -> Self {
        assert!(
            len > 0 && len.is_multiple_of(IO_UNIT),
            "I/O length {len} is not a positive multiple of {IO_UNIT}"
        );
        let layout = Self::layout(len);
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = std::ptr::NonNull::new(raw).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, len }
    }

    pub fn from_slice(data: &[u8]) -> Self {
        let mut buf = Self::zeroed(data.len());
        buf.copy_from_slice(data);
        buf
    }

    fn layout(len: usize) -> Layout {
        Layout::from_size_align(len, BUFFER_ALIGN).expect("valid layout")
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with this very layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.len)) }
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `len` initialised bytes owned by this buffer.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBuf({} bytes)", self.len)
    }
}

/// One statefile device as a host sees it: whole-buffer reads and writes,
/// one at a time. Errors carry the OS errno where there is one.
pub trait StatefileTarget: Send {
    /// Fills `buf` from `offset`; a short read is an error.
    fn read_at(&mut self, buf: &mut AlignedBuf, offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`, durably before returning.
    fn write_at(&mut self, buf: &AlignedBuf, offset: u64) -> io::Result<()>;
    /// Where this target leads, for messages.
    fn describe(&self) -> String;
}

impl<T: StatefileTarget + ?Sized> StatefileTarget for Box<T> {
    fn read_at(&mut self, buf: &mut AlignedBuf, offset: u64) -> io::Result<()> {
        (**self).read_at(buf, offset)
    }
    fn write_at(&mut self, buf: &AlignedBuf, offset: u64) -> io::Result<()> {
        (**self).write_at(buf, offset)
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}

fn check_aligned(offset: u64, len: usize) -> io::Result<()> {
    if !offset.is_multiple_of(IO_UNIT as u64) || !len.is_multiple_of(IO_UNIT) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("unaligned statefile I/O: {len} bytes at offset {offset}"),
        ));
    }
    Ok(())
}

/// How a path was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// O_RDWR|O_DIRECT: upstream xhad on a file or non-NBD device.
    Direct,
    /// O_RDWR|O_DIRECT|O_SYNC: XCP-ng's xhad on an NBD device (major 43).
    DirectSync,
    /// O_RDWR|O_SYNC: the filesystem refused O_DIRECT (tmpfs); not what xhad
    /// would get, so latencies are those of the page cache.
    BufferedSync,
}

/// A file or block device opened once and kept open.
pub struct PathTarget {
    path: PathBuf,
    file: File,
    mode: OpenMode,
}

/// Major number of a Linux `dev_t` (glibc's `gnu_dev_major`).
fn dev_major(dev: u64) -> u32 {
    (((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff)) as u32
}

impl PathTarget {
    pub fn open(path: &Path) -> io::Result<Self> {
        // stat() follows symlinks, like the XCP-ng patch: the statefile path is
        // a symlink to /dev/nbdN.
        let meta = std::fs::metadata(path)
            .map_err(|e| io::Error::new(e.kind(), format!("stat {}: {e}", path.display())))?;
        let is_nbd = meta.file_type().is_block_device() && dev_major(meta.rdev()) == NBD_MAJOR;
        let mode = if is_nbd {
            OpenMode::DirectSync
        } else {
            OpenMode::Direct
        };
        let flags = match mode {
            OpenMode::DirectSync => libc::O_DIRECT | libc::O_SYNC,
            _ => libc::O_DIRECT,
        };
        let opened = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(flags)
            .open(path);
        let (file, mode) = match opened {
            Ok(f) => (f, mode),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::warn!(
                    path = %path.display(),
                    "O_DIRECT refused by the filesystem; falling back to buffered I/O with O_SYNC \
                     (latencies will not be those xhad sees)"
                );
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .custom_flags(libc::O_SYNC)
                    .open(path)
                    .map_err(|e| {
                        io::Error::new(e.kind(), format!("open {}: {e}", path.display()))
                    })?;
                (f, OpenMode::BufferedSync)
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("open {}: {e}", path.display()),
                ))
            }
        };
        Ok(PathTarget {
            path: path.to_path_buf(),
            file,
            mode,
        })
    }

    pub fn mode(&self) -> OpenMode {
        self.mode
    }
}

impl StatefileTarget for PathTarget {
    fn read_at(&mut self, buf: &mut AlignedBuf, offset: u64) -> io::Result<()> {
        check_aligned(offset, buf.len())?;
        // xhad loops forever on a read returning 0 (a hang, then a watchdog
        // fence); we report it instead, as the device being too small.
        self.file.read_exact_at(buf, offset).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                io::Error::new(
                    e.kind(),
                    format!(
                        "{}: end of device inside {} bytes at offset {offset}; the statefile needs 266240 bytes",
                        self.path.display(),
                        buf.len()
                    ),
                )
            } else {
                e
            }
        })
    }

    fn write_at(&mut self, buf: &AlignedBuf, offset: u64) -> io::Result<()> {
        check_aligned(offset, buf.len())?;
        self.file.write_all_at(buf, offset)
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

/// Opens a `--target`: an NBD URI (`nbd://` or `nbd+unix://`) or a path.
pub fn open_target(spec: &str) -> anyhow::Result<Box<dyn StatefileTarget>> {
    if spec.starts_with("nbd://") || spec.starts_with("nbd+unix://") {
        let uri: crate::nbd_client::NbdUri = spec.parse()?;
        let client = crate::nbd_client::NbdClient::connect(&uri)
            .map_err(|e| anyhow::anyhow!("connecting to NBD export {spec}: {e}"))?;
        return Ok(Box::new(client));
    }
    let t = PathTarget::open(Path::new(spec))
        .map_err(|e| anyhow::anyhow!("statefile target {spec}: {e}"))?;
    Ok(Box::new(t))
}

/// A statefile held in memory, for tests and simulations.
#[derive(Clone)]
pub struct MemTarget {
    pub image: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl MemTarget {
    pub fn new(len: usize) -> Self {
        MemTarget {
            image: std::sync::Arc::new(std::sync::Mutex::new(vec![0; len])),
        }
    }
}

impl StatefileTarget for MemTarget {
    fn read_at(&mut self, buf: &mut AlignedBuf, offset: u64) -> io::Result<()> {
        check_aligned(offset, buf.len())?;
        let image = self.image.lock().unwrap();
        let range = offset as usize..offset as usize + buf.len();
        let src = image
            .get(range)
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn write_at(&mut self, buf: &AlignedBuf, offset: u64) -> io::Result<()> {
        check_aligned(offset, buf.len())?;
        let mut image = self.image.lock().unwrap();
        let range = offset as usize..offset as usize + buf.len();
        let dst = image
            .get_mut(range)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOSPC))?;
        dst.copy_from_slice(buf);
        Ok(())
    }

    fn describe(&self) -> String {
        "memory".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buffer() {
        let b = AlignedBuf::zeroed(1024);
        assert_eq!(b.as_ptr() as usize % BUFFER_ALIGN, 0);
        assert!(b.iter().all(|&x| x == 0));
    }

    #[test]
    fn major_of_nbd0() {
        // /dev/nbd0 is 43:0, /dev/nbd15 43:15; large minors spill above bit 20.
        assert_eq!(dev_major(43 << 8), 43);
        assert_eq!(dev_major((43 << 8) | 15), 43);
        assert_eq!(dev_major(8 << 8), 8);
    }

    #[test]
    fn file_target_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sf");
        std::fs::write(&p, vec![0u8; 8192]).unwrap();
        let mut t = PathTarget::open(&p).unwrap();
        let mut w = AlignedBuf::zeroed(1024);
        w[..5].copy_from_slice(b"hello");
        t.write_at(&w, 4096).unwrap();
        let mut r = AlignedBuf::zeroed(1024);
        t.read_at(&mut r, 4096).unwrap();
        assert_eq!(&r[..5], b"hello");
        // Past the end: an error naming the size, not a hang.
        let e = t.read_at(&mut r, 8192).unwrap_err();
        assert!(e.to_string().contains("266240"), "{e}");
        assert!(t.read_at(&mut r, 100).is_err());
    }
}
