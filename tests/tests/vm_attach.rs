//! `xha-shim attach` / `detach` with the kernel device, in a QEMU VM (this
//! host's kernel has no nbd driver): xha-shim, nbd-http-server and
//! http-disk-server are copied into the guest (xha-shim finds the daemons
//! beside itself), the replica's http-disk-server runs on the host (10.0.2.2
//! from the guest). Scenario: tests/vm/scenarios/xha-attach.sh. The host
//! checks that the guest's writes landed in the backing file.

use heartbeat_tests::vm::{guest_io, one_vm_test_at_a_time, VmSpec};
use heartbeat_tests::{
    binary, pseudo_random_bytes, start_disk_server, DiskServerConfig, Profile, TempDisk,
};

const DISK_SIZE: u64 = 4 * 1024 * 1024;

#[test]
fn xha_shim_attaches_the_kernel_device_and_detaches_it_in_a_vm() {
    let _serial = one_vm_test_at_a_time();
    let io = guest_io();
    let disk = TempDisk::zeroed(DISK_SIZE);
    let mut cfg = DiskServerConfig::new(&disk.path);
    cfg.arbiter = Some("none".into());
    cfg.profile = Profile::Release;
    // The guest's nbd-http-server has no pool key (issue 7): compatibility mode.
    cfg.auth = heartbeat_tests::ServerAuth::Unauthenticated;
    let server = start_disk_server(&cfg, disk.dir.path()).unwrap();
    let files = [
        binary("xha-shim", Profile::Release),
        binary("nbd-http-server", Profile::Release),
        binary("http-disk-server", Profile::Release),
        io,
    ];
    let seed = 31u64;
    let run = VmSpec::new("xha-attach.sh", &files)
        .param("urls", cfg.url().replace("127.0.0.1", "10.0.2.2"))
        .param("size", DISK_SIZE)
        .param("seed", seed)
        .boot();
    run.assert_pass_with_logs("xha-attach", &[("host http-disk-server log", server.log())]);
    assert!(
        disk.read(0, 266_240) == pseudo_random_bytes(266_240, seed),
        "the guest's 260 KiB write through xha-shim's path did not land in {}",
        disk.path.display()
    );
    assert!(
        disk.read(270_336, 1024) == pseudo_random_bytes(1024, seed + 1),
        "the guest's 1 KiB write after the restart did not land in {}",
        disk.path.display()
    );
}
