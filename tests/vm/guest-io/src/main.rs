//! Statefile-style block I/O for the test VMs, the way XCP-ng's xhad does it
//! on an NBD device: `open(O_RDWR | O_DIRECT | O_SYNC)`, 4096-aligned buffers,
//! 512-aligned offsets, one request at a time.
//!
//! ```text
//! guest-io write  DEV OFFSET LEN SEED         one write(2) of LEN pattern bytes
//! guest-io verify DEV OFFSET LEN SEED [UNIT]  O_DIRECT reads of UNIT (512) bytes, compared
//! guest-io lbs    DEV                         print the logical block size (BLKSSZGET)
//! guest-io loop   DEV OFFSET SECONDS SEED     xhad's cycle: 1 KiB write + 2 x 512 B reads,
//!                                             checked, until SECONDS pass or /tmp/stop-loop
//!                                             exists; prints the longest operation
//! guest-io lat    DEV OFFSET COUNT            COUNT 512 B reads and COUNT 1 KiB writes:
//!                                             latency p50/p99/max in microseconds
//! guest-io http-put    HOST:PORT OFFSET LEN SEED   PUT LEN pattern bytes at OFFSET (HTTP,
//!                                                  Content-Range), expect 200
//! guest-io http-verify HOST:PORT OFFSET LEN SEED   GET with Range, expect 206 and the pattern
//! ```
//!
//! The HTTP commands exist because the guest has no curl and busybox `nc`
//! closes the connection at the end of its input, before the answer.
//!
//! The pattern is the xorshift sequence of `heartbeat_tests::pseudo_random_bytes`
//! so the host can check the backing file with the same function. Exit status
//! 0 on success, 1 on a failed check, 2 on a usage or I/O error; the last line
//! on stdout says which.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::process::ExitCode;

// x86_64 Linux values (the guest and the host are both x86_64).
const O_DIRECT: i32 = 0o40000;
const O_SYNC: i32 = 0o4010000;
const BLKSSZGET: u64 = 0x1268;
const ALIGN: usize = 4096;

extern "C" {
    fn ioctl(fd: i32, request: u64, ...) -> i32;
}

/// A zeroed buffer aligned for O_DIRECT.
struct AlignedBuf {
    ptr: *mut u8,
    layout: Layout,
}

impl AlignedBuf {
    fn new(len: usize) -> Self {
        let layout = Layout::from_size_align(len.max(1), ALIGN).expect("buffer layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "out of memory for a {len}-byte buffer");
        Self { ptr, layout }
    }

    fn as_mut_slice(&mut self, len: usize) -> &mut [u8] {
        assert!(len <= self.layout.size());
        // SAFETY: ptr is valid for layout.size() bytes and uniquely owned.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout in `new`.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn open_statefile_style(dev: &str) -> Result<File, String> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(O_DIRECT | O_SYNC)
        .open(dev)
        .map_err(|e| format!("open {dev} O_RDWR|O_DIRECT|O_SYNC: {e}"))
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`), 10 s
/// limit per socket operation; the status line and the body.
fn http_request(addr: &str, head: &str, body: &[u8]) -> Result<(String, Vec<u8>), String> {
    use std::io::{Read, Write};
    let limit = Some(std::time::Duration::from_secs(10));
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(limit).ok();
    s.set_write_timeout(limit).ok();
    let mut req = head.as_bytes().to_vec();
    req.extend_from_slice(body);
    s.write_all(&req)
        .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)
        .map_err(|e| format!("read the answer of {addr}: {e}"))?;
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no complete answer head from {addr}"))?;
    let head = String::from_utf8_lossy(&answer[..split]).into_owned();
    let status = head.lines().next().unwrap_or("").to_owned();
    Ok((status, answer[split + 4..].to_vec()))
}

fn http_io(put: bool, addr: &str, offset: u64, len: usize, seed: u64) -> Result<bool, String> {
    let want = pattern(len, seed);
    let last = offset + len as u64 - 1;
    if put {
        let head = format!(
            "PUT / HTTP/1.1\r\nHost: {addr}\r\nContent-Range: bytes {offset}-{last}/*\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
        );
        let (status, _) = http_request(addr, &head, &want)?;
        if !status.contains(" 200") {
            println!("PUT {len} bytes at {offset} to {addr}: {status}");
            return Ok(false);
        }
        println!("http-put {len} bytes at {offset} seed {seed}: {status}");
        return Ok(true);
    }
    let head = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nRange: bytes={offset}-{last}\r\nConnection: close\r\n\r\n"
    );
    let (status, body) = http_request(addr, &head, &[])?;
    if !status.contains(" 206") {
        println!("GET {len} bytes at {offset} from {addr}: {status}");
        return Ok(false);
    }
    if body != want {
        println!(
            "GET {len} bytes at {offset} from {addr}: {} bytes, not the pattern of seed {seed}",
            body.len()
        );
        return Ok(false);
    }
    println!("http-verify {len} bytes at {offset} seed {seed}: {status}");
    Ok(true)
}

fn parse(arg: Option<&String>, what: &str) -> Result<u64, String> {
    let s = arg.ok_or_else(|| format!("missing {what}"))?;
    s.parse().map_err(|e| format!("bad {what} {s:?}: {e}"))
}

fn run(args: &[String]) -> Result<bool, String> {
    let cmd = args.get(1).map(String::as_str).unwrap_or("");
    let dev = args.get(2).ok_or("missing DEV")?.as_str();
    match cmd {
        "lbs" => {
            let file = File::open(dev).map_err(|e| format!("open {dev}: {e}"))?;
            let mut size: i32 = 0;
            // SAFETY: BLKSSZGET writes one int through the pointer.
            let rc = unsafe { ioctl(file.as_raw_fd(), BLKSSZGET, &mut size as *mut i32) };
            if rc != 0 {
                return Err(format!(
                    "BLKSSZGET on {dev}: {}",
                    std::io::Error::last_os_error()
                ));
            }
            println!("lbs {size}");
            Ok(true)
        }
        "write" => {
            let offset = parse(args.get(3), "OFFSET")?;
            let len = parse(args.get(4), "LEN")? as usize;
            let seed = parse(args.get(5), "SEED")?;
            let file = open_statefile_style(dev)?;
            let mut buf = AlignedBuf::new(len);
            buf.as_mut_slice(len).copy_from_slice(&pattern(len, seed));
            let n = file
                .write_at(buf.as_mut_slice(len), offset)
                .map_err(|e| format!("write {len} bytes at {offset} on {dev}: {e}"))?;
            if n != len {
                println!("short write: {n} of {len} bytes at {offset}");
                return Ok(false);
            }
            println!("wrote {len} bytes at {offset} seed {seed}");
            Ok(true)
        }
        "verify" => {
            let offset = parse(args.get(3), "OFFSET")?;
            let len = parse(args.get(4), "LEN")? as usize;
            let seed = parse(args.get(5), "SEED")?;
            let unit = match args.get(6) {
                Some(_) => parse(args.get(6), "UNIT")? as usize,
                None => 512,
            };
            let file = open_statefile_style(dev)?;
            let want = pattern(len, seed);
            let mut buf = AlignedBuf::new(unit);
            let mut done = 0;
            while done < len {
                let chunk = unit.min(len - done);
                let at = offset + done as u64;
                let n = file
                    .read_at(buf.as_mut_slice(chunk), at)
                    .map_err(|e| format!("read {chunk} bytes at {at} on {dev}: {e}"))?;
                if n != chunk {
                    println!("short read: {n} of {chunk} bytes at {at}");
                    return Ok(false);
                }
                if buf.as_mut_slice(chunk) != &want[done..done + chunk] {
                    println!("mismatch in the {chunk} bytes at {at}");
                    return Ok(false);
                }
                done += chunk;
            }
            println!("verified {len} bytes at {offset} seed {seed} in {unit}-byte reads");
            Ok(true)
        }
        "http-put" | "http-verify" => {
            let offset = parse(args.get(3), "OFFSET")?;
            let len = parse(args.get(4), "LEN")? as usize;
            let seed = parse(args.get(5), "SEED")?;
            http_io(cmd == "http-put", dev, offset, len, seed)
        }
        "loop" => {
            let offset = parse(args.get(3), "OFFSET")?;
            let seconds = parse(args.get(4), "SECONDS")?;
            let seed = parse(args.get(5), "SEED")?;
            run_loop(dev, offset, seconds, seed)
        }
        "lat" => {
            let offset = parse(args.get(3), "OFFSET")?;
            let count = parse(args.get(4), "COUNT")? as usize;
            let file = open_statefile_style(dev)?;
            let mut buf = AlignedBuf::new(1024);
            let mut reads = Vec::with_capacity(count);
            let mut writes = Vec::with_capacity(count);
            for i in 0..count {
                buf.as_mut_slice(1024)
                    .copy_from_slice(&pattern(1024, i as u64 + 1));
                let t = std::time::Instant::now();
                file.write_at(buf.as_mut_slice(1024), offset)
                    .map_err(|e| format!("write 1024 bytes at {offset} on {dev}: {e}"))?;
                writes.push(t.elapsed().as_micros() as u64);
                let t = std::time::Instant::now();
                file.read_at(buf.as_mut_slice(512), offset)
                    .map_err(|e| format!("read 512 bytes at {offset} on {dev}: {e}"))?;
                reads.push(t.elapsed().as_micros() as u64);
            }
            println!("lat read512 {}", percentiles(&mut reads));
            println!("lat write1k {}", percentiles(&mut writes));
            Ok(true)
        }
        _ => Err(format!(
            "unknown command {cmd:?} (write, verify, lbs, loop, lat)"
        )),
    }
}

fn percentiles(v: &mut [u64]) -> String {
    v.sort_unstable();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    format!(
        "n={} p50_us={} p99_us={} max_us={}",
        v.len(),
        at(0.5),
        at(0.99),
        v[v.len() - 1]
    )
}

/// xhad's statefile cycle on one fd, checked: write this host's 1 KiB
/// section, read it back as two 512 B reads. Any error or mismatch ends
/// the loop with a failure; the longest operation is the stall a failover
/// or restart caused.
fn run_loop(dev: &str, offset: u64, seconds: u64, seed: u64) -> Result<bool, String> {
    let file = open_statefile_style(dev)?;
    let start = std::time::Instant::now();
    let mut buf = AlignedBuf::new(1024);
    let (mut cycles, mut longest, mut longest_at) = (0u64, 0u128, 0f64);
    println!("loop started on {dev} at {offset}");
    while start.elapsed().as_secs() < seconds && !std::path::Path::new("/tmp/stop-loop").exists() {
        let want = pattern(1024, seed + cycles);
        buf.as_mut_slice(1024).copy_from_slice(&want);
        let t = std::time::Instant::now();
        let n = file.write_at(buf.as_mut_slice(1024), offset).map_err(|e| {
            format!(
                "cycle {cycles}: write 1024 bytes at {offset} on {dev} after {:.1} s: {e}",
                start.elapsed().as_secs_f64()
            )
        })?;
        let mut op = t.elapsed();
        if n != 1024 {
            println!("cycle {cycles}: short write {n}");
            return Ok(false);
        }
        for half in 0..2u64 {
            let at = offset + half * 512;
            let t = std::time::Instant::now();
            let n = file.read_at(buf.as_mut_slice(512), at).map_err(|e| {
                format!(
                    "cycle {cycles}: read 512 bytes at {at} on {dev} after {:.1} s: {e}",
                    start.elapsed().as_secs_f64()
                )
            })?;
            op = op.max(t.elapsed());
            if n != 512 || buf.as_mut_slice(512) != &want[half as usize * 512..][..512] {
                println!("cycle {cycles}: read-back mismatch at {at} ({n} bytes)");
                return Ok(false);
            }
        }
        if op.as_micros() > longest {
            longest = op.as_micros();
            longest_at = start.elapsed().as_secs_f64();
        }
        cycles += 1;
        if cycles == 1 {
            std::fs::write("/tmp/loop-running", b"").map_err(|e| e.to_string())?;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    println!(
        "loop ok: {cycles} cycles in {:.1} s, longest operation {:.1} ms at {:.1} s",
        start.elapsed().as_secs_f64(),
        longest as f64 / 1000.0,
        longest_at
    );
    Ok(true)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            println!("error: {e}");
            ExitCode::from(2)
        }
    }
}
