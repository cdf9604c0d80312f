//! The XHA statefile, format version 2 (reference section 1.1).
//!
//! One global section followed by 64 host sections, each in a 4 KiB slot. Only
//! the head of each slot is ever transferred: 512 bytes for the global section
//! (its struct is 104 bytes), 1024 bytes for a host section (632 bytes). All
//! fields are little-endian and sit at the offsets of the upstream C structs on
//! x86-64; this module encodes and decodes them by offset, never by layout.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use thiserror::Error;

/// `MAX_HOST_NUM`: host sections in every statefile, whatever the pool size.
pub const MAX_HOSTS: usize = 64;
/// `LENGTH_GLOBAL`: slot of the global section.
pub const LENGTH_GLOBAL: u32 = 4096;
/// `LENGTH_HOST_SPECIFIC`: slot of one host section.
pub const LENGTH_HOST_SPECIFIC: u32 = 4096;
/// Size of the whole statefile: 266,240 bytes (260 KiB).
pub const STATEFILE_SIZE: u64 =
    LENGTH_GLOBAL as u64 + MAX_HOSTS as u64 * LENGTH_HOST_SPECIFIC as u64;
/// Format version written and accepted.
pub const VERSION: u32 = 2;

/// Size of the global struct; every global read/write is this rounded up to 512.
pub const GLOBAL_STRUCT_LEN: usize = 104;
/// Size of the host struct; every host read/write is this rounded up to 512.
pub const HOST_STRUCT_LEN: usize = 632;
/// `IOUNIT`: lengths are rounded up to it and offsets are multiples of it.
pub const IO_UNIT: usize = 512;
/// I/O length of the global section: 512 bytes.
pub const GLOBAL_IO_LEN: usize = round_up(GLOBAL_STRUCT_LEN, IO_UNIT);
/// I/O length of a host section: 1024 bytes.
pub const HOST_IO_LEN: usize = round_up(HOST_STRUCT_LEN, IO_UNIT);

/// `'loop'`.
pub const GLOBAL_SIG: u32 = 0x6c6f_6f70;
/// `'pdne'`.
pub const GLOBAL_END_MARKER: u32 = 0x7064_6e65;
/// `'tsoh'`.
pub const HOST_SIG: u32 = 0x7473_6f68;
/// `'hdne'`.
pub const HOST_END_MARKER: u32 = 0x6864_6e65;
/// Inverse signature of the global section as it is on disk.
pub const GLOBAL_SIG_INV: u32 = sig_inv(GLOBAL_SIG);
/// Inverse signature of a host section as it is on disk.
pub const HOST_SIG_INV: u32 = sig_inv(HOST_SIG);

// The values seen on disk; a change in `sig_inv` must not go unnoticed.
const _: () = assert!(GLOBAL_SIG_INV == 0xf272_1211);
const _: () = assert!(HOST_SIG_INV == 0xf171_9212);
const _: () = assert!(GLOBAL_IO_LEN == 512 && HOST_IO_LEN == 1024);
const _: () = assert!(STATEFILE_SIZE == 266_240);

const fn round_up(n: usize, unit: usize) -> usize {
    n.div_ceil(unit) * unit
}

/// xhad computes `(~sig) >> 3` on a signed int, so the shift is arithmetic and
/// the sign bit of `~sig` is smeared into the top three bits.
pub const fn sig_inv(sig: u32) -> u32 {
    ((!sig as i32) >> 3) as u32
}

/// Byte offset of the global section.
pub const fn global_offset() -> u64 {
    0
}

/// Byte offset of host `index`'s section: 4096 * (index + 1).
pub const fn host_offset(index: usize) -> u64 {
    LENGTH_HOST_SPECIFIC as u64 * (index as u64 + 1)
}

/// Field offsets of the global section.
pub mod global_field {
    pub const SIG: usize = 0;
    pub const SIG_INV: usize = 4;
    pub const CHECKSUM: usize = 8;
    pub const VERSION: usize = 12;
    pub const LENGTH_GLOBAL: usize = 16;
    pub const LENGTH_HOST_SPECIFIC: usize = 20;
    pub const MAX_HOSTS: usize = 24;
    pub const GEN_UUID: usize = 28;
    pub const POOL_STATE: usize = 60;
    pub const MASTER: usize = 64;
    pub const CONFIG_HOSTS: usize = 96;
    pub const END_MARKER: usize = 100;
}

/// Field offsets of a host section.
pub mod host_field {
    pub const SIG: usize = 0;
    pub const SIG_INV: usize = 4;
    pub const CHECKSUM: usize = 8;
    pub const SEQUENCE: usize = 12;
    pub const HOST_INDEX: usize = 16;
    pub const HOST_UUID: usize = 20;
    pub const EXCLUDED: usize = 52;
    pub const STARTING: usize = 56;
    pub const SINCE_LAST_HB_RECEIPT: usize = 60;
    pub const SINCE_LAST_SF_UPDATE: usize = 316;
    pub const SINCE_XAPI_RESTART_FIRST_ATTEMPTED: usize = 572;
    pub const CURRENT_LIVESET: usize = 576;
    pub const PROPOSED_LIVESET: usize = 584;
    pub const HBDOMAIN: usize = 592;
    pub const SFDOMAIN: usize = 600;
    pub const LOCK_REQUEST: usize = 608;
    pub const LOCK_GRANT: usize = 612;
    pub const SM_PHASE: usize = 620;
    pub const WEIGHT: usize = 624;
    pub const END_MARKER: usize = 628;
}

/// A UUID as the statefile stores it: 32 ASCII hex characters, dashes removed.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct StatefileUuid(pub [u8; 32]);

impl StatefileUuid {
    pub const ZERO: StatefileUuid = StatefileUuid([0; 32]);

    pub fn random() -> Self {
        let v: u128 = rand::random();
        format!("{v:032x}").parse().expect("32 hex digits")
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0; 32]
    }

    /// Stable seed for per-host pseudo-random choices (the cycle jitter).
    pub fn seed(&self) -> u64 {
        // FNV-1a: stable across runs and platforms, unlike std's hasher.
        self.0.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
        })
    }
}

impl fmt::Display for StatefileUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_zero() {
            return f.write_str("-");
        }
        // Bytes written by others may be anything; show them escaped, never panic.
        for &b in &self.0 {
            match b {
                0 => break,
                0x20..=0x7e => write!(f, "{}", b as char)?,
                _ => write!(f, "\\x{b:02x}")?,
            }
        }
        Ok(())
    }
}

impl fmt::Debug for StatefileUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StatefileUuid({self})")
    }
}

impl Serialize for StatefileUuid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error("`{0}` is not a UUID: expected 32 hex digits, dashes allowed")]
pub struct UuidParseError(String);

impl FromStr for StatefileUuid {
    type Err = UuidParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex: Vec<u8> = s.bytes().filter(|&b| b != b'-').collect();
        if hex.len() != 32 || !hex.iter().all(u8::is_ascii_hexdigit) {
            return Err(UuidParseError(s.to_string()));
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(&hex.to_ascii_lowercase());
        Ok(StatefileUuid(out))
    }
}

/// `pool_state` of the global section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolState {
    None,
    Init,
    Active,
    Invalid,
    Unknown(u32),
}

impl PoolState {
    pub fn from_raw(raw: u32) -> Self {
        match raw {
            0 => PoolState::None,
            1 => PoolState::Init,
            2 => PoolState::Active,
            3 => PoolState::Invalid,
            n => PoolState::Unknown(n),
        }
    }

    pub fn raw(self) -> u32 {
        match self {
            PoolState::None => 0,
            PoolState::Init => 1,
            PoolState::Active => 2,
            PoolState::Invalid => 3,
            PoolState::Unknown(n) => n,
        }
    }
}

impl fmt::Display for PoolState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolState::None => f.write_str("none"),
            PoolState::Init => f.write_str("init"),
            PoolState::Active => f.write_str("active"),
            PoolState::Invalid => f.write_str("invalid"),
            PoolState::Unknown(n) => write!(f, "unknown({n})"),
        }
    }
}

impl Serialize for PoolState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A set of host indexes 0..64, stored on disk as `u32[2]` (hosts 0-31 in the
/// first word).
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct HostBitmap(pub u64);

impl HostBitmap {
    pub fn contains(self, index: usize) -> bool {
        index < MAX_HOSTS && self.0 & (1 << index) != 0
    }

    pub fn insert(&mut self, index: usize) {
        assert!(index < MAX_HOSTS, "host index {index} out of range");
        self.0 |= 1 << index;
    }

    pub fn first_n(n: usize) -> Self {
        match n {
            0 => HostBitmap(0),
            n if n >= MAX_HOSTS => HostBitmap(u64::MAX),
            n => HostBitmap((1u64 << n) - 1),
        }
    }

    pub fn indexes(self) -> impl Iterator<Item = usize> {
        (0..MAX_HOSTS).filter(move |&i| self.contains(i))
    }
}

impl fmt::Display for HostBitmap {
    /// Comma-separated indexes, e.g. `0,1,3`; `-` when empty.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list: Vec<String> = self.indexes().map(|i| i.to_string()).collect();
        if list.is_empty() {
            f.write_str("-")
        } else {
            f.write_str(&list.join(","))
        }
    }
}

impl fmt::Debug for HostBitmap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HostBitmap({self})")
    }
}

impl Serialize for HostBitmap {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.indexes())
    }
}

/// The global section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GlobalSection {
    pub gen_uuid: StatefileUuid,
    pub pool_state: PoolState,
    pub master: StatefileUuid,
    pub config_hosts: u32,
}

/// One host section, written only by its owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostSection {
    /// Bumped by one on every write by the owner; the only liveness signal.
    pub sequence: u32,
    pub host_index: u32,
    pub host_uuid: StatefileUuid,
    pub excluded: u32,
    pub starting: u32,
    /// Per host, ms since the last heartbeat was received; -1 once T1 is reached.
    #[serde(skip)]
    pub since_last_hb_receipt: [i32; MAX_HOSTS],
    /// Per host, ms since its sequence last changed; -1 once T2 is reached.
    #[serde(skip)]
    pub since_last_sf_update: [i32; MAX_HOSTS],
    pub since_xapi_restart_first_attempted: i32,
    pub current_liveset: HostBitmap,
    pub proposed_liveset: HostBitmap,
    pub hbdomain: HostBitmap,
    pub sfdomain: HostBitmap,
    pub lock_request: u32,
    pub lock_grant: HostBitmap,
    pub sm_phase: u32,
    pub weight: u32,
}

impl HostSection {
    /// The section pool initialisation writes for host `index`.
    pub fn initial(index: usize, host_uuid: StatefileUuid) -> Self {
        HostSection {
            sequence: 0,
            host_index: index as u32,
            host_uuid,
            excluded: 0,
            starting: 0,
            since_last_hb_receipt: [0; MAX_HOSTS],
            since_last_sf_update: [0; MAX_HOSTS],
            since_xapi_restart_first_attempted: 0,
            current_liveset: HostBitmap(0),
            proposed_liveset: HostBitmap(0),
            hbdomain: HostBitmap(0),
            sfdomain: HostBitmap(0),
            lock_request: 0,
            lock_grant: HostBitmap(0),
            sm_phase: 0,
            weight: 0,
        }
    }
}

/// Which section a decode error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum SectionId {
    Global,
    Host(usize),
}

impl fmt::Display for SectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SectionId::Global => f.write_str("global section"),
            SectionId::Host(i) => write!(f, "host section {i}"),
        }
    }
}

/// The check a section failed, in the order they are made.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SectionCheck {
    #[error("buffer of {len} bytes is shorter than the {need}-byte struct")]
    Short { len: usize, need: usize },
    #[error("signature {found:#010x}, expected {expected:#010x}")]
    Signature { found: u32, expected: u32 },
    #[error("inverse signature {found:#010x}, expected {expected:#010x}")]
    InverseSignature { found: u32, expected: u32 },
    #[error("checksum {stored:#010x} stored, {computed:#010x} computed")]
    Checksum { stored: u32, computed: u32 },
    #[error("end marker {found:#010x}, expected {expected:#010x}")]
    EndMarker { found: u32, expected: u32 },
    #[error("format version {found}, expected {VERSION}")]
    Version { found: u32 },
    #[error("{field} is {found}, expected {expected}")]
    Size {
        field: &'static str,
        found: u32,
        expected: u32,
    },
}

impl SectionCheck {
    /// Corruption (bad signature or checksum) as opposed to a well-formed
    /// section of another format; xhad sets `SF_corrupted` only for the former.
    pub fn is_corruption(&self) -> bool {
        !matches!(
            self,
            SectionCheck::Version { .. } | SectionCheck::Size { .. }
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("statefile {section}: {check}")]
pub struct DecodeError {
    pub section: SectionId,
    pub check: SectionCheck,
}

fn get_u32(buf: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(buf[off..off + 4].try_into().unwrap())
}

fn get_i32(buf: &[u8], off: usize) -> i32 {
    get_u32(buf, off) as i32
}

fn put_u32(buf: &mut [u8], off: usize, v: u32) {
    buf[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn get_bitmap(buf: &[u8], off: usize) -> HostBitmap {
    HostBitmap(get_u32(buf, off) as u64 | (get_u32(buf, off + 4) as u64) << 32)
}

fn put_bitmap(buf: &mut [u8], off: usize, v: HostBitmap) {
    put_u32(buf, off, v.0 as u32);
    put_u32(buf, off + 4, (v.0 >> 32) as u32);
}

fn get_uuid(buf: &[u8], off: usize) -> StatefileUuid {
    StatefileUuid(buf[off..off + 32].try_into().unwrap())
}

/// Wrapping sum of the u32 words in `buf[from..to]`.
pub fn checksum(buf: &[u8], from: usize, to: usize) -> u32 {
    buf[from..to].chunks_exact(4).fold(0u32, |sum, w| {
        sum.wrapping_add(u32::from_le_bytes(w.try_into().unwrap()))
    })
}

struct Frame {
    sig: u32,
    sig_inv: u32,
    first_summed: usize,
    end_marker_at: usize,
    end_marker: u32,
    len: usize,
}

const GLOBAL_FRAME: Frame = Frame {
    sig: GLOBAL_SIG,
    sig_inv: GLOBAL_SIG_INV,
    first_summed: global_field::VERSION,
    end_marker_at: global_field::END_MARKER,
    end_marker: GLOBAL_END_MARKER,
    len: GLOBAL_STRUCT_LEN,
};

const HOST_FRAME: Frame = Frame {
    sig: HOST_SIG,
    sig_inv: HOST_SIG_INV,
    first_summed: host_field::SEQUENCE,
    end_marker_at: host_field::END_MARKER,
    end_marker: HOST_END_MARKER,
    len: HOST_STRUCT_LEN,
};

impl Frame {
    /// Signatures, end marker, then the checksum over the filled-in body.
    fn seal(&self, buf: &mut [u8]) {
        put_u32(buf, 0, self.sig);
        put_u32(buf, 4, self.sig_inv);
        put_u32(buf, self.end_marker_at, self.end_marker);
        let sum = checksum(buf, self.first_summed, self.end_marker_at);
        put_u32(buf, 8, sum);
    }

    fn check(&self, buf: &[u8]) -> Result<(), SectionCheck> {
        if buf.len() < self.len {
            return Err(SectionCheck::Short {
                len: buf.len(),
                need: self.len,
            });
        }
        let sig = get_u32(buf, 0);
        if sig != self.sig {
            return Err(SectionCheck::Signature {
                found: sig,
                expected: self.sig,
            });
        }
        let inv = get_u32(buf, 4);
        if inv != self.sig_inv {
            return Err(SectionCheck::InverseSignature {
                found: inv,
                expected: self.sig_inv,
            });
        }
        let stored = get_u32(buf, 8);
        let computed = checksum(buf, self.first_summed, self.end_marker_at);
        if stored != computed {
            return Err(SectionCheck::Checksum { stored, computed });
        }
        let end = get_u32(buf, self.end_marker_at);
        if end != self.end_marker {
            return Err(SectionCheck::EndMarker {
                found: end,
                expected: self.end_marker,
            });
        }
        Ok(())
    }
}

impl GlobalSection {
    /// The 512-byte image written at offset 0.
    pub fn encode(&self) -> [u8; GLOBAL_IO_LEN] {
        use global_field as f;
        let mut buf = [0u8; GLOBAL_IO_LEN];
        put_u32(&mut buf, f::VERSION, VERSION);
        put_u32(&mut buf, f::LENGTH_GLOBAL, LENGTH_GLOBAL);
        put_u32(&mut buf, f::LENGTH_HOST_SPECIFIC, LENGTH_HOST_SPECIFIC);
        put_u32(&mut buf, f::MAX_HOSTS, MAX_HOSTS as u32);
        buf[f::GEN_UUID..f::GEN_UUID + 32].copy_from_slice(&self.gen_uuid.0);
        put_u32(&mut buf, f::POOL_STATE, self.pool_state.raw());
        buf[f::MASTER..f::MASTER + 32].copy_from_slice(&self.master.0);
        put_u32(&mut buf, f::CONFIG_HOSTS, self.config_hosts);
        GLOBAL_FRAME.seal(&mut buf);
        buf
    }

    /// Checks in xhad's order: signature, inverse signature, checksum, end
    /// marker, then version and the section sizes.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        use global_field as f;
        let fail = |check| DecodeError {
            section: SectionId::Global,
            check,
        };
        GLOBAL_FRAME.check(buf).map_err(fail)?;
        let version = get_u32(buf, f::VERSION);
        if version != VERSION {
            return Err(fail(SectionCheck::Version { found: version }));
        }
        for (field, off, expected) in [
            ("length_global", f::LENGTH_GLOBAL, LENGTH_GLOBAL),
            (
                "length_host_specific",
                f::LENGTH_HOST_SPECIFIC,
                LENGTH_HOST_SPECIFIC,
            ),
            ("max_hosts", f::MAX_HOSTS, MAX_HOSTS as u32),
        ] {
            let found = get_u32(buf, off);
            if found != expected {
                return Err(fail(SectionCheck::Size {
                    field,
                    found,
                    expected,
                }));
            }
        }
        Ok(GlobalSection {
            gen_uuid: get_uuid(buf, f::GEN_UUID),
            pool_state: PoolState::from_raw(get_u32(buf, f::POOL_STATE)),
            master: get_uuid(buf, f::MASTER),
            config_hosts: get_u32(buf, f::CONFIG_HOSTS),
        })
    }
}

impl HostSection {
    /// The 1024-byte image written at `host_offset(index)`.
    pub fn encode(&self) -> [u8; HOST_IO_LEN] {
        use host_field as f;
        let mut buf = [0u8; HOST_IO_LEN];
        put_u32(&mut buf, f::SEQUENCE, self.sequence);
        put_u32(&mut buf, f::HOST_INDEX, self.host_index);
        buf[f::HOST_UUID..f::HOST_UUID + 32].copy_from_slice(&self.host_uuid.0);
        put_u32(&mut buf, f::EXCLUDED, self.excluded);
        put_u32(&mut buf, f::STARTING, self.starting);
        for i in 0..MAX_HOSTS {
            put_u32(
                &mut buf,
                f::SINCE_LAST_HB_RECEIPT + 4 * i,
                self.since_last_hb_receipt[i] as u32,
            );
            put_u32(
                &mut buf,
                f::SINCE_LAST_SF_UPDATE + 4 * i,
                self.since_last_sf_update[i] as u32,
            );
        }
        put_u32(
            &mut buf,
            f::SINCE_XAPI_RESTART_FIRST_ATTEMPTED,
            self.since_xapi_restart_first_attempted as u32,
        );
        put_bitmap(&mut buf, f::CURRENT_LIVESET, self.current_liveset);
        put_bitmap(&mut buf, f::PROPOSED_LIVESET, self.proposed_liveset);
        put_bitmap(&mut buf, f::HBDOMAIN, self.hbdomain);
        put_bitmap(&mut buf, f::SFDOMAIN, self.sfdomain);
        put_u32(&mut buf, f::LOCK_REQUEST, self.lock_request);
        put_bitmap(&mut buf, f::LOCK_GRANT, self.lock_grant);
        put_u32(&mut buf, f::SM_PHASE, self.sm_phase);
        put_u32(&mut buf, f::WEIGHT, self.weight);
        HOST_FRAME.seal(&mut buf);
        buf
    }

    /// Decodes the section read from slot `index` (the index only names the
    /// section in errors).
    pub fn decode(index: usize, buf: &[u8]) -> Result<Self, DecodeError> {
        use host_field as f;
        HOST_FRAME.check(buf).map_err(|check| DecodeError {
            section: SectionId::Host(index),
            check,
        })?;
        let mut since_last_hb_receipt = [0i32; MAX_HOSTS];
        let mut since_last_sf_update = [0i32; MAX_HOSTS];
        for i in 0..MAX_HOSTS {
            since_last_hb_receipt[i] = get_i32(buf, f::SINCE_LAST_HB_RECEIPT + 4 * i);
            since_last_sf_update[i] = get_i32(buf, f::SINCE_LAST_SF_UPDATE + 4 * i);
        }
        Ok(HostSection {
            sequence: get_u32(buf, f::SEQUENCE),
            host_index: get_u32(buf, f::HOST_INDEX),
            host_uuid: get_uuid(buf, f::HOST_UUID),
            excluded: get_u32(buf, f::EXCLUDED),
            starting: get_u32(buf, f::STARTING),
            since_last_hb_receipt,
            since_last_sf_update,
            since_xapi_restart_first_attempted: get_i32(buf, f::SINCE_XAPI_RESTART_FIRST_ATTEMPTED),
            current_liveset: get_bitmap(buf, f::CURRENT_LIVESET),
            proposed_liveset: get_bitmap(buf, f::PROPOSED_LIVESET),
            hbdomain: get_bitmap(buf, f::HBDOMAIN),
            sfdomain: get_bitmap(buf, f::SFDOMAIN),
            lock_request: get_u32(buf, f::LOCK_REQUEST),
            lock_grant: get_bitmap(buf, f::LOCK_GRANT),
            sm_phase: get_u32(buf, f::SM_PHASE),
            weight: get_u32(buf, f::WEIGHT),
        })
    }
}

/// A whole statefile image as decoded from 266,240 bytes: every section, each
/// either decoded or with the reason it was refused.
#[derive(Debug, Clone)]
pub struct StatefileImage {
    pub global: Result<GlobalSection, DecodeError>,
    pub hosts: Vec<Result<HostSection, DecodeError>>,
}

impl StatefileImage {
    pub fn decode(image: &[u8]) -> Self {
        assert!(
            image.len() as u64 >= STATEFILE_SIZE,
            "image shorter than the statefile"
        );
        let global = GlobalSection::decode(&image[..GLOBAL_IO_LEN]);
        let hosts = (0..MAX_HOSTS)
            .map(|i| {
                let off = host_offset(i) as usize;
                HostSection::decode(i, &image[off..off + HOST_IO_LEN])
            })
            .collect();
        StatefileImage { global, hosts }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uuid(s: &str) -> StatefileUuid {
        s.parse().unwrap()
    }

    fn sample_global() -> GlobalSection {
        GlobalSection {
            gen_uuid: uuid("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"),
            pool_state: PoolState::Active,
            master: uuid("aaaaaaaabbbbccccddddeeeeeeeeeeee"),
            config_hosts: 3,
        }
    }

    fn sample_host() -> HostSection {
        let mut h = HostSection::initial(2, uuid("11111111222233334444555555555555"));
        h.sequence = 0xfffffffe;
        h.excluded = 1;
        h.starting = 1;
        h.since_last_hb_receipt[0] = 1234;
        h.since_last_hb_receipt[63] = -1;
        h.since_last_sf_update[1] = -1;
        h.since_last_sf_update[62] = 99;
        h.since_xapi_restart_first_attempted = -5;
        h.current_liveset = HostBitmap(0b111);
        h.proposed_liveset = HostBitmap(1 << 40 | 1);
        h.hbdomain = HostBitmap(0b101);
        h.sfdomain = HostBitmap(1 << 63);
        h.lock_request = 7;
        h.lock_grant = HostBitmap(1 << 33);
        h.sm_phase = 4;
        h.weight = 9;
        h
    }

    #[test]
    fn signature_inverses_match_the_disk() {
        assert_eq!(sig_inv(0x6c6f6f70), 0xf2721211);
        assert_eq!(sig_inv(0x74736f68), 0xf1719212);
        assert_eq!(&GLOBAL_SIG.to_le_bytes(), b"pool");
        assert_eq!(&HOST_SIG.to_le_bytes(), b"host");
        assert_eq!(&GLOBAL_END_MARKER.to_le_bytes(), b"endp");
        assert_eq!(&HOST_END_MARKER.to_le_bytes(), b"endh");
    }

    #[test]
    fn sizes_and_offsets() {
        assert_eq!(STATEFILE_SIZE, 266_240);
        assert_eq!(host_offset(0), 4096);
        assert_eq!(host_offset(63) + 4096, STATEFILE_SIZE);
    }

    #[test]
    fn global_round_trip() {
        let g = sample_global();
        let buf = g.encode();
        assert_eq!(GlobalSection::decode(&buf).unwrap(), g);
    }

    #[test]
    fn host_round_trip() {
        let h = sample_host();
        let buf = h.encode();
        assert_eq!(HostSection::decode(2, &buf).unwrap(), h);
    }

    #[test]
    fn uuid_forms() {
        let u = uuid("0F1E2D3C-4b5a-6978-8796-a5b4c3d2e1f0");
        assert_eq!(u.to_string(), "0f1e2d3c4b5a69788796a5b4c3d2e1f0");
        assert!("xyz".parse::<StatefileUuid>().is_err());
        assert!("0f1e2d3c4b5a69788796a5b4c3d2e1f"
            .parse::<StatefileUuid>()
            .is_err());
    }

    // Images built by hand from the documented offsets, not via the encoder,
    // so a mistake made the same way in encode and decode still shows.
    fn poke(buf: &mut [u8], off: usize, v: u32) {
        buf[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn hand_global() -> Vec<u8> {
        let mut b = vec![0u8; 512];
        poke(&mut b, 0, 0x6c6f6f70);
        poke(&mut b, 4, 0xf2721211);
        poke(&mut b, 12, 2);
        poke(&mut b, 16, 4096);
        poke(&mut b, 20, 4096);
        poke(&mut b, 24, 64);
        b[28..60].copy_from_slice(b"00112233445566778899aabbccddeeff");
        poke(&mut b, 60, 2);
        b[64..96].copy_from_slice(b"ffeeddccbbaa99887766554433221100");
        poke(&mut b, 96, 5);
        poke(&mut b, 100, 0x70646e65);
        let mut sum = 0u32;
        for off in (12..100).step_by(4) {
            sum = sum.wrapping_add(u32::from_le_bytes(b[off..off + 4].try_into().unwrap()));
        }
        poke(&mut b, 8, sum);
        b
    }

    fn hand_host() -> Vec<u8> {
        let mut b = vec![0u8; 1024];
        poke(&mut b, 0, 0x74736f68);
        poke(&mut b, 4, 0xf1719212);
        poke(&mut b, 12, 41);
        poke(&mut b, 16, 3);
        b[20..52].copy_from_slice(b"0123456789abcdef0123456789abcdef");
        poke(&mut b, 52, 1);
        poke(&mut b, 56, 0);
        poke(&mut b, 60, 500); // since_last_hb_receipt[0]
        poke(&mut b, 60 + 4 * 63, 0xffffffff); // since_last_hb_receipt[63] = -1
        poke(&mut b, 316 + 4 * 2, 0xffffffff); // since_last_sf_update[2] = -1
        poke(&mut b, 316 + 4 * 3, 2500);
        poke(&mut b, 572, 7);
        poke(&mut b, 576, 0b1111); // current_liveset hosts 0-3
        poke(&mut b, 584, 0b0111);
        poke(&mut b, 588, 1); // proposed_liveset host 32
        poke(&mut b, 592, 0b1011);
        poke(&mut b, 600, 0b1001);
        poke(&mut b, 604, 0x8000_0000); // sfdomain host 63
        poke(&mut b, 608, 1);
        poke(&mut b, 612, 0b10);
        poke(&mut b, 620, 6);
        poke(&mut b, 624, 8);
        poke(&mut b, 628, 0x68646e65);
        let mut sum = 0u32;
        for off in (12..628).step_by(4) {
            sum = sum.wrapping_add(u32::from_le_bytes(b[off..off + 4].try_into().unwrap()));
        }
        poke(&mut b, 8, sum);
        b
    }

    #[test]
    fn decodes_hand_built_global() {
        let g = GlobalSection::decode(&hand_global()).unwrap();
        assert_eq!(g.gen_uuid, uuid("00112233445566778899aabbccddeeff"));
        assert_eq!(g.pool_state, PoolState::Active);
        assert_eq!(g.master, uuid("ffeeddccbbaa99887766554433221100"));
        assert_eq!(g.config_hosts, 5);
        // And the encoder produces the very same bytes.
        assert_eq!(g.encode().as_slice(), hand_global().as_slice());
    }

    #[test]
    fn decodes_hand_built_host() {
        let h = HostSection::decode(3, &hand_host()).unwrap();
        assert_eq!(h.sequence, 41);
        assert_eq!(h.host_index, 3);
        assert_eq!(h.host_uuid, uuid("0123456789abcdef0123456789abcdef"));
        assert_eq!((h.excluded, h.starting), (1, 0));
        assert_eq!(h.since_last_hb_receipt[0], 500);
        assert_eq!(h.since_last_hb_receipt[63], -1);
        assert_eq!(h.since_last_sf_update[2], -1);
        assert_eq!(h.since_last_sf_update[3], 2500);
        assert_eq!(h.since_xapi_restart_first_attempted, 7);
        assert_eq!(h.current_liveset.to_string(), "0,1,2,3");
        assert_eq!(h.proposed_liveset.to_string(), "0,1,2,32");
        assert_eq!(h.hbdomain.to_string(), "0,1,3");
        assert_eq!(h.sfdomain.to_string(), "0,3,63");
        assert_eq!(h.lock_request, 1);
        assert_eq!(h.lock_grant.to_string(), "1");
        assert_eq!((h.sm_phase, h.weight), (6, 8));
        assert_eq!(h.encode().as_slice(), hand_host().as_slice());
    }

    #[test]
    fn checksum_wraps() {
        let mut h = sample_host();
        h.sequence = u32::MAX;
        h.weight = u32::MAX;
        let buf = h.encode();
        assert!(HostSection::decode(2, &buf).is_ok());
    }

    fn global_check(buf: &[u8]) -> SectionCheck {
        let e = GlobalSection::decode(buf).unwrap_err();
        assert_eq!(e.section, SectionId::Global);
        e.check
    }

    fn host_check(buf: &[u8]) -> SectionCheck {
        let e = HostSection::decode(7, buf).unwrap_err();
        assert_eq!(e.section, SectionId::Host(7));
        assert!(
            e.to_string().starts_with("statefile host section 7: "),
            "{e}"
        );
        e.check
    }

    #[test]
    fn each_global_check_fails_with_its_own_error() {
        let mut b = hand_global();
        b[0] ^= 1;
        assert!(matches!(global_check(&b), SectionCheck::Signature { .. }));

        let mut b = hand_global();
        b[4] ^= 1;
        assert!(matches!(
            global_check(&b),
            SectionCheck::InverseSignature { .. }
        ));

        let mut b = hand_global();
        b[8] ^= 1;
        assert!(matches!(global_check(&b), SectionCheck::Checksum { .. }));

        // A body change without a matching checksum: the checksum catches it.
        let mut b = hand_global();
        b[97] ^= 1;
        assert!(matches!(global_check(&b), SectionCheck::Checksum { .. }));

        let mut b = hand_global();
        b[100] ^= 1;
        assert!(matches!(global_check(&b), SectionCheck::EndMarker { .. }));

        // Version and sizes are checked on a well-formed section: re-seal.
        let reseal = |b: &mut Vec<u8>| {
            let s = checksum(b, 12, 100);
            poke(b, 8, s);
        };
        let mut b = hand_global();
        poke(&mut b, 12, 1);
        reseal(&mut b);
        assert_eq!(global_check(&b), SectionCheck::Version { found: 1 });
        assert!(!SectionCheck::Version { found: 1 }.is_corruption());

        for (off, field) in [
            (16, "length_global"),
            (20, "length_host_specific"),
            (24, "max_hosts"),
        ] {
            let mut b = hand_global();
            poke(&mut b, off, 128);
            reseal(&mut b);
            match global_check(&b) {
                SectionCheck::Size {
                    field: f,
                    found: 128,
                    ..
                } => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }

        assert!(matches!(
            global_check(&hand_global()[..100]),
            SectionCheck::Short { .. }
        ));
        assert!(matches!(
            global_check(&[0u8; 512]),
            SectionCheck::Signature { found: 0, .. }
        ));
    }

    #[test]
    fn each_host_check_fails_with_its_own_error() {
        let mut b = hand_host();
        b[3] ^= 0x80;
        assert!(matches!(host_check(&b), SectionCheck::Signature { .. }));

        let mut b = hand_host();
        b[7] ^= 0x80;
        assert!(matches!(
            host_check(&b),
            SectionCheck::InverseSignature { .. }
        ));

        let mut b = hand_host();
        b[12] ^= 1; // sequence changed, checksum not updated
        assert!(matches!(host_check(&b), SectionCheck::Checksum { .. }));

        let mut b = hand_host();
        b[627] ^= 1; // last summed byte (weight)
        assert!(matches!(host_check(&b), SectionCheck::Checksum { .. }));

        let mut b = hand_host();
        b[628] ^= 1;
        assert!(matches!(host_check(&b), SectionCheck::EndMarker { .. }));

        // Bytes past the struct are not covered.
        let mut b = hand_host();
        b[700] = 0xff;
        assert!(HostSection::decode(7, &b).is_ok());

        assert!(matches!(
            host_check(&[0u8; 1024]),
            SectionCheck::Signature { found: 0, .. }
        ));
    }

    #[test]
    fn whole_image_names_the_bad_section() {
        let mut image = vec![0u8; STATEFILE_SIZE as usize];
        image[..512].copy_from_slice(&sample_global().encode());
        for i in 0..MAX_HOSTS {
            let off = host_offset(i) as usize;
            image[off..off + 1024]
                .copy_from_slice(&HostSection::initial(i, StatefileUuid::ZERO).encode());
        }
        image[host_offset(5) as usize + 12] ^= 1;
        let decoded = StatefileImage::decode(&image);
        assert!(decoded.global.is_ok());
        for (i, h) in decoded.hosts.iter().enumerate() {
            if i == 5 {
                let e = h.as_ref().unwrap_err();
                assert_eq!(e.section, SectionId::Host(5));
                assert!(matches!(e.check, SectionCheck::Checksum { .. }));
            } else {
                assert_eq!(h.as_ref().unwrap().host_index, i as u32);
            }
        }
    }
}
