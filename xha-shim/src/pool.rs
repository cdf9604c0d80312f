//! Pool-level operations on a statefile target: initialise it the way
//! `writestatefile setinit` does, and read it whole for inspection.

use serde::Serialize;

use crate::emulator::emulated_host_uuid;
use crate::statefile::{
    host_offset, DecodeError, GlobalSection, HostSection, PoolState, StatefileImage, StatefileUuid,
    GLOBAL_IO_LEN, HOST_IO_LEN, MAX_HOSTS, STATEFILE_SIZE,
};
use crate::target::{AlignedBuf, StatefileTarget};

/// What pool initialisation writes.
#[derive(Debug, Clone)]
pub struct InitSpec {
    pub gen_uuid: StatefileUuid,
    pub config_hosts: usize,
    pub master: StatefileUuid,
    pub pool_state: PoolState,
    /// UUIDs of hosts 0..config_hosts; the other sections get none.
    pub host_uuids: Vec<StatefileUuid>,
}

impl InitSpec {
    /// A pool of `config_hosts` emulated hosts, host 0 the master.
    pub fn emulated(config_hosts: usize, gen_uuid: StatefileUuid) -> Self {
        let host_uuids: Vec<_> = (0..config_hosts).map(emulated_host_uuid).collect();
        InitSpec {
            gen_uuid,
            config_hosts,
            master: host_uuids.first().copied().unwrap_or(StatefileUuid::ZERO),
            pool_state: PoolState::Init,
            host_uuids,
        }
    }
}

/// One write of the whole 266,240-byte image (zeros) at offset 0, then the
/// global section, then all 64 host sections: the order of `setinit`.
pub fn initialise(target: &mut dyn StatefileTarget, spec: &InitSpec) -> std::io::Result<()> {
    assert!(spec.config_hosts <= MAX_HOSTS);
    target.write_at(&AlignedBuf::zeroed(STATEFILE_SIZE as usize), 0)?;
    let global = GlobalSection {
        gen_uuid: spec.gen_uuid,
        pool_state: spec.pool_state,
        master: spec.master,
        config_hosts: spec.config_hosts as u32,
    };
    target.write_at(&AlignedBuf::from_slice(&global.encode()), 0)?;
    for i in 0..MAX_HOSTS {
        let uuid = spec
            .host_uuids
            .get(i)
            .copied()
            .unwrap_or(StatefileUuid::ZERO);
        let section = HostSection::initial(i, uuid);
        target.write_at(&AlignedBuf::from_slice(&section.encode()), host_offset(i))?;
    }
    Ok(())
}

/// Reads the global section and every host section with the I/O sizes xhad
/// uses (512 B and 1 KiB), into a whole-image buffer.
pub fn read_statefile(target: &mut dyn StatefileTarget) -> std::io::Result<StatefileImage> {
    let mut image = vec![0u8; STATEFILE_SIZE as usize];
    let mut g = AlignedBuf::zeroed(GLOBAL_IO_LEN);
    target.read_at(&mut g, 0)?;
    image[..GLOBAL_IO_LEN].copy_from_slice(&g);
    let mut h = AlignedBuf::zeroed(HOST_IO_LEN);
    for i in 0..MAX_HOSTS {
        let off = host_offset(i);
        target.read_at(&mut h, off)?;
        image[off as usize..off as usize + HOST_IO_LEN].copy_from_slice(&h);
    }
    Ok(StatefileImage::decode(&image))
}

/// `inspect` output: the global section and every configured host.
#[derive(Debug, Serialize)]
pub struct Inspection {
    pub target: String,
    pub global: Result<GlobalSection, String>,
    pub hosts: Vec<HostRow>,
    /// Sections beyond config_hosts that fail to decode (initialisation
    /// writes all 64).
    pub unconfigured_bad: Vec<String>,
    pub all_checksums_ok: bool,
}

#[derive(Debug, Serialize)]
pub struct HostRow {
    pub index: usize,
    pub section: Result<HostSection, String>,
}

fn err_string(e: &DecodeError) -> String {
    e.to_string()
}

impl Inspection {
    pub fn new(target: String, image: &StatefileImage) -> Self {
        let configured = match &image.global {
            Ok(g) => (g.config_hosts as usize).min(MAX_HOSTS),
            Err(_) => MAX_HOSTS,
        };
        let hosts = (0..configured)
            .map(|i| HostRow {
                index: i,
                section: image.hosts[i].clone().map_err(|e| err_string(&e)),
            })
            .collect();
        let unconfigured_bad = image.hosts[configured..]
            .iter()
            .filter_map(|h| h.as_ref().err().map(err_string))
            .collect();
        let all_checksums_ok = image.global.is_ok() && image.hosts.iter().all(|h| h.is_ok());
        Inspection {
            target,
            global: image.global.clone().map_err(|e| err_string(&e)),
            hosts,
            unconfigured_bad,
            all_checksums_ok,
        }
    }

    pub fn to_table(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(out, "statefile {}", self.target);
        match &self.global {
            Ok(g) => {
                let _ = writeln!(out, "pool state      {}", g.pool_state);
                let _ = writeln!(out, "generation uuid {}", g.gen_uuid);
                let _ = writeln!(out, "master          {}", g.master);
                let _ = writeln!(out, "config hosts    {}", g.config_hosts);
            }
            Err(e) => {
                let _ = writeln!(out, "global section  BAD: {e}");
            }
        }
        let _ = writeln!(
            out,
            "{:>4} {:>10} {:<32} {:>3} {:>3} {:<16} {:<16} {:<16} {:<16}",
            "host", "sequence", "uuid", "exc", "sta", "liveset", "hbdomain", "sfdomain", "proposed"
        );
        for row in &self.hosts {
            match &row.section {
                Ok(h) => {
                    let _ = writeln!(
                        out,
                        "{:>4} {:>10} {:<32} {:>3} {:>3} {:<16} {:<16} {:<16} {:<16}",
                        row.index,
                        h.sequence,
                        h.host_uuid.to_string(),
                        h.excluded,
                        h.starting,
                        h.current_liveset.to_string(),
                        h.hbdomain.to_string(),
                        h.sfdomain.to_string(),
                        h.proposed_liveset.to_string(),
                    );
                }
                Err(e) => {
                    let _ = writeln!(out, "{:>4} BAD: {e}", row.index);
                }
            }
        }
        for e in &self.unconfigured_bad {
            let _ = writeln!(out, "unconfigured section BAD: {e}");
        }
        let _ = writeln!(
            out,
            "checksums: {}",
            if self.all_checksums_ok {
                "all sections valid"
            } else {
                "SOME SECTIONS INVALID"
            }
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::statefile::SectionCheck;
    use crate::target::MemTarget;

    #[test]
    fn initialise_then_inspect() {
        let mut t = MemTarget::new(STATEFILE_SIZE as usize);
        t.image.lock().unwrap().fill(0xaa);
        let gen = StatefileUuid::random();
        initialise(&mut t, &InitSpec::emulated(3, gen)).unwrap();
        // The whole image was zeroed first: the tail of each slot is zero.
        assert!(t.image.lock().unwrap()[4096 + 1024..8192]
            .iter()
            .all(|&b| b == 0));
        let image = read_statefile(&mut t).unwrap();
        let g = image.global.as_ref().unwrap();
        assert_eq!(
            (g.gen_uuid, g.config_hosts, g.pool_state),
            (gen, 3, PoolState::Init)
        );
        assert_eq!(g.master, emulated_host_uuid(0));
        for (i, h) in image.hosts.iter().enumerate() {
            let h = h.as_ref().unwrap();
            assert_eq!((h.host_index, h.sequence), (i as u32, 0));
        }
        let ins = Inspection::new("mem".into(), &image);
        assert!(ins.all_checksums_ok);
        assert_eq!(ins.hosts.len(), 3);
        let table = ins.to_table();
        assert!(table.contains("all sections valid"), "{table}");

        t.image.lock().unwrap()[host_offset(1) as usize + 20] ^= 1;
        let image = read_statefile(&mut t).unwrap();
        let e = image.hosts[1].as_ref().unwrap_err();
        assert!(matches!(e.check, SectionCheck::Checksum { .. }));
        let ins = Inspection::new("mem".into(), &image);
        assert!(!ins.all_checksums_ok);
        assert!(ins.to_table().contains("host section 1: checksum"));
    }

    #[test]
    fn too_small_device_fails_init() {
        let mut t = MemTarget::new(4096);
        let e = initialise(&mut t, &InitSpec::emulated(3, StatefileUuid::random())).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
    }
}
