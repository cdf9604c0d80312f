//! The XHA statefile decoder (`xha_shim::statefile`) and what is built on it
//! (`pool::read_statefile`, `pool::Inspection`).
//!
//! Input: the head of a statefile: 512 bytes of global section, then up to
//! 1024 bytes for each host slot in turn (0, 1, ...); the rest of the
//! 266,240-byte image is zero. The whole input is also decoded as one
//! section of each kind, whatever its length.
//!
//! Invariants:
//! - no panic, for any bytes and any buffer length;
//! - a section that decodes encodes back to the same struct bytes (the
//!   encoder and decoder agree on every field), and decodes again to the same
//!   value;
//! - a section is refused for the first failing check in xhad's order, and
//!   the refusal names the right section;
//! - reading the image through `read_statefile` gives the same result as
//!   decoding it directly; `inspect`'s table and JSON render for any image.

#![no_main]

use libfuzzer_sys::fuzz_target;
use xha_shim::pool::{read_statefile, Inspection};
use xha_shim::statefile::{
    host_offset, GlobalSection, HostSection, SectionId, StatefileImage, GLOBAL_IO_LEN,
    GLOBAL_STRUCT_LEN, HOST_IO_LEN, HOST_STRUCT_LEN, MAX_HOSTS, STATEFILE_SIZE,
};
use xha_shim::target::MemTarget;

fn check_global(buf: &[u8]) {
    match GlobalSection::decode(buf) {
        Ok(g) => {
            let again = g.encode();
            assert_eq!(&again[..GLOBAL_STRUCT_LEN], &buf[..GLOBAL_STRUCT_LEN], "global re-encodes differently");
            assert_eq!(GlobalSection::decode(&again).as_ref(), Ok(&g));
            let _ = (g.gen_uuid.to_string(), g.master.to_string(), g.pool_state.to_string());
            serde_json::to_string(&g).expect("global serialises");
        }
        Err(e) => {
            assert_eq!(e.section, SectionId::Global);
            let _ = (e.to_string(), e.check.is_corruption());
        }
    }
}

fn check_host(index: usize, buf: &[u8]) {
    match HostSection::decode(index, buf) {
        Ok(h) => {
            let again = h.encode();
            assert_eq!(&again[..HOST_STRUCT_LEN], &buf[..HOST_STRUCT_LEN], "host re-encodes differently");
            assert_eq!(HostSection::decode(index, &again).as_ref(), Ok(&h));
            let _ = (h.host_uuid.to_string(), h.current_liveset.to_string(), h.lock_grant.to_string());
            let _ = (h.hbdomain.indexes().count(), h.sfdomain.contains(index), h.host_uuid.seed());
            serde_json::to_string(&h).expect("host serialises");
        }
        Err(e) => {
            assert_eq!(e.section, SectionId::Host(index));
            let _ = (e.to_string(), e.check.is_corruption());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check_global(data);
    check_host(data.len() % MAX_HOSTS, data);

    let mut image = vec![0u8; STATEFILE_SIZE as usize];
    let (global, mut hosts) = data.split_at(data.len().min(GLOBAL_IO_LEN));
    image[..global.len()].copy_from_slice(global);
    for i in 0..MAX_HOSTS {
        if hosts.is_empty() {
            break;
        }
        let (slot, rest) = hosts.split_at(hosts.len().min(HOST_IO_LEN));
        let off = host_offset(i) as usize;
        image[off..off + slot.len()].copy_from_slice(slot);
        hosts = rest;
    }

    let direct = StatefileImage::decode(&image);
    check_global(&image[..GLOBAL_IO_LEN]);
    for i in 0..MAX_HOSTS.min(1 + data.len() / HOST_IO_LEN) {
        let off = host_offset(i) as usize;
        check_host(i, &image[off..off + HOST_IO_LEN]);
    }

    let mut target = MemTarget::new(STATEFILE_SIZE as usize);
    target.image.lock().unwrap().copy_from_slice(&image);
    let read = read_statefile(&mut target).expect("a full-size in-memory image reads");
    assert_eq!(format!("{:?}", read.global), format!("{:?}", direct.global));
    assert_eq!(format!("{:?}", read.hosts), format!("{:?}", direct.hosts));

    let inspection = Inspection::new("fuzz".into(), &read);
    let table = inspection.to_table();
    assert!(table.contains("checksums: "));
    assert_eq!(inspection.all_checksums_ok, read.global.is_ok() && read.hosts.iter().all(|h| h.is_ok()));
    serde_json::to_string(&inspection).expect("inspection serialises");
});
