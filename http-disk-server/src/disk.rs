//! The exported disk: a block device or a regular file, read and written with
//! positioned, durable I/O.
//!
//! [`Disk`] is the narrow boundary the HTTP layer talks to (one call per
//! request, blocking, run on the connection's own thread); [`FileDisk`] is the real
//! implementation and tests substitute slow or failing ones.
//!
//! Caching policy: a block device is always opened O_DIRECT, because its page
//! cache can be stale after a DRBD role change (another host wrote the blocks
//! while we were secondary). A regular file can only change through this
//! kernel, so its page cache is coherent and `auto` uses buffered I/O; that is
//! also what the `nbdkit file` baseline does. Writes are always O_DSYNC: a
//! write is acknowledged only once it is durable.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::aligned::AlignedBuf;

/// Alignment of the byte span a buffered request is locked over; also the
/// smallest logical block size we assume.
pub const SECTOR: u64 = 512;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{op} of {len} bytes at offset {offset} on {disk} failed: {source}")]
    Io {
        op: &'static str,
        disk: String,
        offset: u64,
        len: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("{len} bytes at offset {offset} lie outside {disk} ({size} bytes)")]
    OutOfRange {
        disk: String,
        offset: u64,
        len: u64,
        size: u64,
    },
}

impl DiskError {
    /// Whether the error says the device itself is failing (EIO and friends),
    /// as opposed to a request we should never have issued. A failing device
    /// must not keep the role.
    pub fn is_device_failure(&self) -> bool {
        match self {
            DiskError::Io { source, .. } => !matches!(
                source.raw_os_error(),
                Some(libc::EINVAL) | Some(libc::EFBIG)
            ),
            DiskError::OutOfRange { .. } => false,
        }
    }
}

/// One exported disk. Methods block; call them on a connection's own thread
/// under the I/O watchdog (never on a shared async worker).
pub trait Disk: Send + Sync + 'static {
    /// Path or name, for messages.
    fn name(&self) -> &str;
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Granularity of what a request physically touches: a request on
    /// `[a, b)` reads or writes the covering span aligned to this. Range
    /// locks are taken over that span so read-modify-write cannot tear.
    fn io_alignment(&self) -> u64;
    /// Read exactly `len` bytes at `offset`.
    fn read_at(&self, offset: u64, len: usize) -> Result<Bytes, DiskError>;
    /// Write all of `data` at `offset`; returns once the data is durable.
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), DiskError>;
}

/// `[start, end)` covering `[offset, offset + len)` aligned to `align` (a power of two).
pub fn covering_span(offset: u64, len: u64, align: u64) -> (u64, u64) {
    debug_assert!(align.is_power_of_two());
    let start = offset & !(align - 1);
    let end = (offset + len).div_ceil(align) * align;
    (start, end)
}

/// How the user asked us to cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DirectIo {
    /// O_DIRECT for block devices, buffered (+O_DSYNC) for regular files.
    Auto,
    /// O_DIRECT everywhere (falls back to buffered, loudly, where refused).
    Always,
    /// Never O_DIRECT (unsafe for DRBD devices across role changes).
    Never,
}

/// What the path is, found without opening it for writing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskProbe {
    pub path: PathBuf,
    pub size: u64,
    /// `Some((major, minor))` for a block device.
    pub block_device: Option<(u64, u64)>,
}

/// DRBD's block device major number.
pub const DRBD_MAJOR: u64 = 147;

nix::ioctl_read!(blk_getsize64, 0x12, 114, u64);
nix::ioctl_read_bad!(blk_sszget, nix::request_code_none!(0x12, 104), libc::c_int);

impl DiskProbe {
    pub fn probe(path: &Path) -> anyhow::Result<Self> {
        use anyhow::Context;
        let meta = std::fs::metadata(path).with_context(|| {
            format!(
                "cannot stat disk {}: check the --disk path exists",
                path.display()
            )
        })?;
        let ft = meta.file_type();
        if ft.is_block_device() {
            let rdev = meta.rdev();
            let (major, minor) = (libc::major(rdev) as u64, libc::minor(rdev) as u64);
            // sysfs gives the size without opening the device (opening a DRBD
            // device may promote it or fail on a secondary).
            let sys = format!("/sys/dev/block/{major}:{minor}/size");
            let size = match std::fs::read_to_string(&sys) {
                Ok(s) => s.trim().parse::<u64>().ok().map(|sectors| sectors * 512),
                Err(_) => None,
            };
            let size = match size {
                Some(s) => s,
                None => {
                    let f = File::open(path).with_context(|| {
                        format!(
                            "cannot open block device {} to read its size",
                            path.display()
                        )
                    })?;
                    block_device_size(&f)
                        .with_context(|| format!("BLKGETSIZE64 failed on {}", path.display()))?
                }
            };
            Ok(Self {
                path: path.to_owned(),
                size,
                block_device: Some((major, minor)),
            })
        } else if ft.is_file() {
            Ok(Self {
                path: path.to_owned(),
                size: meta.len(),
                block_device: None,
            })
        } else {
            anyhow::bail!(
                "disk {} is neither a block device nor a regular file; pass a device or an image file to --disk",
                path.display()
            )
        }
    }

    pub fn is_drbd(&self) -> bool {
        matches!(self.block_device, Some((DRBD_MAJOR, _)))
    }
}

fn block_device_size(f: &File) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    let mut size = 0u64;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer.
    unsafe { blk_getsize64(f.as_raw_fd(), &mut size) }.map_err(std::io::Error::from)?;
    Ok(size)
}

fn logical_block_size(f: &File) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    let mut bs: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int through the pointer.
    unsafe { blk_sszget(f.as_raw_fd(), &mut bs) }.map_err(std::io::Error::from)?;
    Ok((bs as u64).max(SECTOR))
}

/// The real disk: one file descriptor, positioned I/O.
pub struct FileDisk {
    file: File,
    name: String,
    size: u64,
    /// `Some(block)` when opened O_DIRECT: offsets, lengths and buffers must
    /// be aligned to `block` (buffers to 4096, which covers it).
    direct_block: Option<u64>,
}

impl FileDisk {
    /// Open for I/O. Use only while holding the role.
    pub fn open(path: &Path, mode: DirectIo) -> anyhow::Result<Self> {
        use anyhow::Context;
        let probe = DiskProbe::probe(path)?;
        let is_block = probe.block_device.is_some();
        let want_direct = match mode {
            DirectIo::Always => true,
            DirectIo::Never => false,
            DirectIo::Auto => is_block,
        };
        if is_block && !want_direct {
            tracing::warn!(
                disk = %path.display(),
                "--direct-io never on a block device: its page cache may be stale after a role change; use auto"
            );
        }
        let open = |direct: bool| {
            let mut flags = libc::O_DSYNC;
            if direct {
                flags |= libc::O_DIRECT;
            }
            OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(flags)
                .open(path)
        };
        let (file, direct) = match open(want_direct) {
            Ok(f) => (f, want_direct),
            Err(e) if want_direct && e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::error!(
                    disk = %path.display(),
                    "the filesystem refuses O_DIRECT (EINVAL, e.g. tmpfs); FALLING BACK TO BUFFERED I/O with O_DSYNC. \
                     Put the disk on a filesystem that supports O_DIRECT if other kernels can write it"
                );
                (
                    open(false).with_context(|| format!("cannot open disk {}", path.display()))?,
                    false,
                )
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "cannot open disk {} read-write: check permissions and that no other host holds it",
                        path.display()
                    )
                })
            }
        };
        let size = if is_block {
            block_device_size(&file)
                .with_context(|| format!("BLKGETSIZE64 failed on {}", path.display()))?
        } else {
            file.metadata()?.len()
        };
        let direct_block = if direct {
            Some(if is_block {
                logical_block_size(&file).unwrap_or(SECTOR)
            } else {
                // Filesystems want O_DIRECT aligned to their block size; 4096
                // is what every Linux filesystem we meet accepts.
                4096
            })
        } else {
            None
        };
        tracing::info!(
            disk = %path.display(),
            size,
            direct = direct,
            block = direct_block.unwrap_or(0),
            "disk opened"
        );
        Ok(Self {
            file,
            name: path.display().to_string(),
            size,
            direct_block,
        })
    }

    fn io_err(&self, op: &'static str, offset: u64, len: u64, source: std::io::Error) -> DiskError {
        DiskError::Io {
            op,
            disk: self.name.clone(),
            offset,
            len,
            source,
        }
    }

    fn check(&self, offset: u64, len: u64) -> Result<(), DiskError> {
        if offset.checked_add(len).is_none_or(|end| end > self.size) {
            return Err(DiskError::OutOfRange {
                disk: self.name.clone(),
                offset,
                len,
                size: self.size,
            });
        }
        Ok(())
    }

    fn read_span(&self, start: u64, end: u64) -> Result<AlignedBuf, DiskError> {
        let mut buf = AlignedBuf::zeroed((end - start) as usize);
        self.file
            .read_exact_at(&mut buf, start)
            .map_err(|e| self.io_err("read", start, end - start, e))?;
        Ok(buf)
    }
}

impl Disk for FileDisk {
    fn name(&self) -> &str {
        &self.name
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn io_alignment(&self) -> u64 {
        self.direct_block.unwrap_or(SECTOR)
    }

    fn read_at(&self, offset: u64, len: usize) -> Result<Bytes, DiskError> {
        self.check(offset, len as u64)?;
        match self.direct_block {
            None => {
                let mut v = vec![0u8; len];
                self.file
                    .read_exact_at(&mut v, offset)
                    .map_err(|e| self.io_err("read", offset, len as u64, e))?;
                Ok(Bytes::from(v))
            }
            Some(block) => {
                let (start, end) = covering_span(offset, len as u64, block);
                let buf = self.read_span(start, end)?;
                let skip = (offset - start) as usize;
                // No copy: the response body points into the aligned buffer.
                Ok(Bytes::from_owner(buf).slice(skip..skip + len))
            }
        }
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        let len = data.len() as u64;
        self.check(offset, len)?;
        let Some(block) = self.direct_block else {
            return self
                .file
                .write_all_at(data, offset)
                .map_err(|e| self.io_err("write", offset, len, e));
        };
        let (start, end) = covering_span(offset, len, block);
        let aligned_mem = (data.as_ptr() as usize) & (crate::aligned::BUFFER_ALIGN - 1) == 0;
        if start == offset && end == offset + len && aligned_mem {
            return self
                .file
                .write_all_at(data, offset)
                .map_err(|e| self.io_err("write", offset, len, e));
        }
        let mut span = if start == offset && end == offset + len {
            // Aligned range, unaligned memory: bounce through an aligned buffer.
            AlignedBuf::zeroed(len as usize)
        } else {
            // Read-modify-write of the covering span; the caller holds the
            // range lock over the whole span, so nobody sees the middle state.
            self.read_span(start, end)?
        };
        let skip = (offset - start) as usize;
        span[skip..skip + data.len()].copy_from_slice(data);
        self.file
            .write_all_at(&span, start)
            .map_err(|e| self.io_err("write", start, end - start, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn covering_span_math() {
        assert_eq!(covering_span(0, 512, 512), (0, 512));
        assert_eq!(covering_span(1, 1, 512), (0, 512));
        assert_eq!(covering_span(511, 2, 512), (0, 1024));
        assert_eq!(covering_span(4096, 1024, 4096), (4096, 8192));
        assert_eq!(covering_span(4095, 1, 4096), (0, 4096));
        assert_eq!(covering_span(8192, 4096, 4096), (8192, 12288));
    }

    fn temp_disk(size: usize) -> tempfile::NamedTempFile {
        // On tmpfs the O_DIRECT case falls back to buffered I/O and still passes.
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).unwrap();
        f.flush().unwrap();
        f
    }

    fn exercise(mode: DirectIo) {
        let f = temp_disk(64 * 1024);
        let disk = FileDisk::open(f.path(), mode).unwrap();
        assert_eq!(disk.size(), 64 * 1024);
        let mut model: Vec<u8> = std::fs::read(f.path()).unwrap();
        // Aligned and unaligned writes, each checked against a model.
        for (off, len) in [
            (0u64, 512usize),
            (1000, 1),
            (4095, 2),
            (8192, 4096),
            (100, 9000),
            (65535, 1),
        ] {
            let data: Vec<u8> = (0..len)
                .map(|i| (i as u8).wrapping_mul(7).wrapping_add(off as u8))
                .collect();
            disk.write_at(off, &data).unwrap();
            model[off as usize..off as usize + len].copy_from_slice(&data);
            let back = disk.read_at(off, len).unwrap();
            assert_eq!(&back[..], &data[..], "mode {mode:?} off {off} len {len}");
        }
        assert_eq!(std::fs::read(f.path()).unwrap(), model);
        assert!(matches!(
            disk.read_at(65535, 2),
            Err(DiskError::OutOfRange { .. })
        ));
        assert!(matches!(
            disk.write_at(65536, &[0]),
            Err(DiskError::OutOfRange { .. })
        ));
    }

    #[test]
    fn buffered_reads_and_writes_match_model() {
        exercise(DirectIo::Auto);
    }

    #[test]
    fn direct_reads_and_writes_match_model() {
        exercise(DirectIo::Always);
    }
}
