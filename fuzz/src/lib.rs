//! Helpers shared by the fuzz targets: a byte reader for the configuration
//! prefix of each input, arbitrary chunkings of a byte stream (a socket
//! delivers bytes in any split), and an allocation meter for the
//! bounded-memory invariants.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Reads the configuration prefix of an input; past the end it yields zeroes,
/// so every input is usable.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    pub fn u64(&mut self) -> u64 {
        (self.u32() as u64) << 32 | self.u32() as u64
    }

    /// Everything not consumed yet.
    pub fn rest(self) -> &'a [u8] {
        self.data
    }
}

/// Splits `len` bytes into chunks whose sizes follow from `seed`: mode 0 is
/// one chunk, mode 1 one byte at a time, otherwise pseudo-random sizes up to
/// a bound that the seed also picks (1..=4096). Never yields an empty chunk.
pub fn chunk_sizes(seed: u16, len: usize) -> Vec<usize> {
    let mut out = Vec::new();
    match seed & 3 {
        0 => {
            if len > 0 {
                out.push(len);
            }
        }
        1 => out.resize(len, 1),
        _ => {
            let bound = [3usize, 17, 64, 4096][(seed >> 2 & 3) as usize];
            // xorshift32: deterministic, so a crash replays exactly.
            let mut x = (seed as u32) << 8 | 0x9e37;
            let mut left = len;
            while left > 0 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let n = (x as usize % bound + 1).min(left);
                out.push(n);
                left -= n;
            }
        }
    }
    out
}

/// The global allocator of every target: the system allocator plus a count
/// of live bytes and their high-water mark.
pub struct MeteredAlloc;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for MeteredAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

fn grew(n: usize) {
    let live = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

#[global_allocator]
static GLOBAL: MeteredAlloc = MeteredAlloc;

/// Measures the most memory held at once, above what was live at `start`,
/// while a piece of code runs (single-threaded targets only).
pub struct AllocMeter {
    base: usize,
}

impl AllocMeter {
    pub fn start() -> Self {
        let base = LIVE.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        Self { base }
    }

    /// Highest number of bytes allocated on top of the start since `start`.
    pub fn peak_growth(&self) -> usize {
        PEAK.load(Ordering::Relaxed).saturating_sub(self.base)
    }
}

/// Whether the bug `id` is listed in `FUZZ_KNOWN_BUGS` (comma-separated).
/// Targets skip the inputs of a listed bug, so that a long exploratory run
/// can look past a bug already reported; `run.sh` never sets it, so CI keeps
/// failing on every open bug (their reproducers are among the seeds).
pub fn known_bug(id: &str) -> bool {
    static KNOWN: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    KNOWN
        .get_or_init(|| {
            std::env::var("FUZZ_KNOWN_BUGS")
                .unwrap_or_default()
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .iter()
        .any(|k| k == id)
}
