//! Exercises `nbd_http_server::kernel` against the real kernel NBD client
//! (run inside the test VM: tests/vm/scenarios/kernel-attach.sh). A tiny
//! in-memory NBD server serves the transmission phase (no handshake, as the
//! kernel expects) on one end of a socket pair; the other end is attached.
//!
//! Steps, each printed as `STEP <name> ok` (first failure exits non-zero):
//! 1. netlink attach, 512-byte logical blocks, scheduler `none`, backend id;
//! 2. xhad-style O_DIRECT|O_SYNC 1 KiB write, 512-byte reads back;
//! 3. STATUS shows the device connected and it is never chosen as free;
//! 4. restart: the server end dies while a read is pending, a new socket
//!    pair is handed over with RECONFIGURE, the pending read completes;
//! 5. a RECONFIGURE with another backend id is refused;
//! 6. disconnect, STATUS shows it free;
//! 7. the ioctl fallback on another device, I/O, disconnect.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nbd_http_server::kernel::{self, AttachMethod, DeviceConfig};

const SIZE: u64 = 4 << 20;
// NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA
const FLAGS: u16 = 1 | 4 | 8;
const BACKEND: &str = "http-nbd:vmtest";

type Disk = Arc<Mutex<Vec<u8>>>;

/// Serves NBD transmission-phase requests from `disk` until EOF or DISC.
fn serve(mut sock: UnixStream, disk: Disk) {
    let mut hdr = [0u8; 28];
    loop {
        if sock.read_exact(&mut hdr).is_err() {
            return;
        }
        let magic = u32::from_be_bytes(hdr[0..4].try_into().unwrap());
        let kind = u16::from_be_bytes(hdr[6..8].try_into().unwrap());
        let handle = &hdr[8..16];
        let offset = u64::from_be_bytes(hdr[16..24].try_into().unwrap()) as usize;
        let len = u32::from_be_bytes(hdr[24..28].try_into().unwrap()) as usize;
        assert_eq!(magic, 0x2560_9513, "bad request magic from the kernel");
        let mut reply = Vec::with_capacity(16 + len);
        reply.extend_from_slice(&0x6744_6698u32.to_be_bytes());
        reply.extend_from_slice(&0u32.to_be_bytes());
        reply.extend_from_slice(handle);
        match kind {
            0 => reply.extend_from_slice(&disk.lock().unwrap()[offset..offset + len]),
            1 => {
                let mut data = vec![0u8; len];
                if sock.read_exact(&mut data).is_err() {
                    return;
                }
                disk.lock().unwrap()[offset..offset + len].copy_from_slice(&data);
            }
            2 => return,
            _ => {} // FLUSH, TRIM: nothing to do in memory
        }
        if sock.write_all(&reply).is_err() {
            return;
        }
    }
}

/// A socket pair: one end served from `disk` on a thread, the other for the kernel.
fn served_pair(disk: &Disk) -> (OwnedFd, std::thread::JoinHandle<()>, UnixStream) {
    let (server, client) = UnixStream::pair().expect("socketpair");
    let control = server.try_clone().expect("clone server end");
    let disk = Arc::clone(disk);
    let thread = std::thread::spawn(move || serve(server, disk));
    (OwnedFd::from(client), thread, control)
}

struct Aligned(*mut u8, Layout);
impl Aligned {
    fn new(len: usize) -> Self {
        let layout = Layout::from_size_align(len, 4096).unwrap();
        // SAFETY: non-zero size.
        Self(unsafe { alloc_zeroed(layout) }, layout)
    }
    fn buf(&mut self) -> &mut [u8] {
        // SAFETY: valid for layout.size() bytes, uniquely owned.
        unsafe { std::slice::from_raw_parts_mut(self.0, self.1.size()) }
    }
}
impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout.
        unsafe { dealloc(self.0, self.1) }
    }
}

fn open_direct(index: u32) -> std::fs::File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT | libc::O_SYNC)
        .open(kernel::device_path(index))
        .expect("open /dev/nbdN O_RDWR|O_DIRECT|O_SYNC")
}

fn write_read_back(index: u32, offset: u64, fill: u8) {
    let dev = open_direct(index);
    let mut w = Aligned::new(1024);
    w.buf().fill(fill);
    dev.write_all_at(w.buf(), offset)
        .expect("1 KiB O_DIRECT write");
    let mut r = Aligned::new(512);
    for half in 0..2 {
        dev.read_exact_at(r.buf(), offset + half * 512)
            .expect("512 B O_DIRECT read");
        assert!(r.buf().iter().all(|b| *b == fill), "read back other bytes");
    }
}

fn sysfs(index: u32, file: &str) -> String {
    std::fs::read_to_string(format!("/sys/block/nbd{index}/{file}"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn step(name: &str) {
    println!("STEP {name} ok");
}

fn main() {
    // A step that hangs must fail the run, not the VM's timeout.
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(60));
        println!("kernel-attach: a step hung for 60 s");
        std::process::exit(3);
    });
    let disk: Disk = Arc::new(Mutex::new(vec![0u8; SIZE as usize]));
    let mut cfg = DeviceConfig::new(SIZE, BACKEND, FLAGS);
    cfg.request_timeout = Duration::from_secs(30);
    cfg.dead_conn_timeout = Duration::from_secs(10);

    // 1. netlink attach
    let (sock, server1, control1) = served_pair(&disk);
    let dev = kernel::attach(sock, &cfg, None).expect("attach");
    let index = dev.index();
    assert_eq!(dev.method(), AttachMethod::Netlink);
    assert_eq!(sysfs(index, "queue/logical_block_size"), "512");
    assert!(
        sysfs(index, "queue/scheduler").contains("[none]"),
        "scheduler {}",
        sysfs(index, "queue/scheduler")
    );
    assert_eq!(sysfs(index, "backend"), BACKEND);
    assert_eq!(sysfs(index, "size"), (SIZE / 512).to_string());
    println!("attached /dev/nbd{index} via netlink");
    step("netlink-attach");

    // 2. statefile-style I/O
    write_read_back(index, 4096, 0xa5);
    assert!(disk.lock().unwrap()[4096..5120].iter().all(|b| *b == 0xa5));
    step("direct-io");

    // 3. status
    let statuses = kernel::survey().expect("survey");
    let me = statuses
        .iter()
        .find(|s| s.index == index)
        .expect("device listed");
    assert!(me.connected, "{me:?}");
    assert_eq!(
        kernel::find_by_backend(&statuses, BACKEND).map(|s| s.index),
        Some(index)
    );
    assert_ne!(kernel::choose_free_device(&statuses), Some(index));
    println!("status: {me:?}");
    step("status");

    // 4. restart: the serving end dies with a read pending, then RECONFIGURE.
    control1
        .shutdown(std::net::Shutdown::Both)
        .expect("shutdown server end");
    drop(control1);
    server1.join().unwrap();
    disk.lock().unwrap()[8192..9216].fill(0x3c);
    let pending = std::thread::spawn(move || {
        let t0 = Instant::now();
        let dev = open_direct(index);
        let mut r = Aligned::new(512);
        let res = dev.read_exact_at(r.buf(), 8192).map(|()| r.buf()[0]);
        (res, t0.elapsed())
    });
    std::thread::sleep(Duration::from_millis(1500));
    let statuses = kernel::survey().expect("survey after the server died");
    let found = kernel::find_by_backend(&statuses, BACKEND)
        .expect("device still connected after the server died");
    assert_eq!(found.index, index);
    let (sock, server2, _control2) = served_pair(&disk);
    kernel::reconnect(index, sock, &cfg).expect("reconfigure with a new socket");
    let (res, waited) = pending.join().unwrap();
    assert_eq!(res.expect("pending read across the restart"), 0x3c);
    println!("pending read completed after {waited:?} (server down ~1.5 s)");
    write_read_back(index, 12288, 0x5a);
    step("reconfigure");

    // 5. another backend id is refused
    let (sock, server_bad, control_bad) = served_pair(&disk);
    let mut other = cfg.clone();
    other.backend_id = "http-nbd:someone-else".into();
    match kernel::reconnect(index, sock, &other) {
        Err(e) => println!("reconfigure with another backend refused: {e}"),
        Ok(()) => panic!("reconfigure with another backend id was accepted"),
    }
    control_bad.shutdown(std::net::Shutdown::Both).ok();
    server_bad.join().unwrap();
    step("backend-check");

    // 6. disconnect
    kernel::disconnect(index).expect("disconnect");
    server2.join().unwrap();
    let t0 = Instant::now();
    loop {
        let s = kernel::survey().expect("survey");
        if s.iter().any(|d| d.index == index && !d.connected) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "still connected after disconnect: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    step("disconnect");

    // 7. ioctl fallback
    let (sock, server3, control3) = served_pair(&disk);
    // The server must close the connection after NBD_CMD_DISC: NBD_DO_IT
    // only returns once the kernel sees EOF, so keep no extra handle open.
    drop(control3);
    let dev = kernel::attach_using(AttachMethod::Ioctl, sock, &cfg, None).expect("ioctl attach");
    let index = dev.index();
    let t0 = Instant::now();
    while sysfs(index, "pid").is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "NBD_DO_IT did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(sysfs(index, "queue/logical_block_size"), "512");
    write_read_back(index, 16384, 0x77);
    assert_eq!(dev.ioctl_running(), Some(true));
    dev.disconnect().expect("ioctl disconnect");
    server3.join().unwrap();
    println!("ioctl attach on /dev/nbd{index} worked");
    step("ioctl");
    println!("kernel-attach: all steps passed");
}
