//! DRBD 8.4 in two QEMU VMs (TCG; this host's kernel has no drbd module and
//! DRBD 9 is not available here), joined by a QEMU datagram link:
//!
//! * `drbd-pair.sh`: DRBD alone. One node promotes, the other's promotion is
//!   refused with exit code 11 and the message of
//!   `fixtures/drbd/primary-refused-v84.txt`, the Primary dies hard, the
//!   survivor promotes and reads the dead Primary's last write.
//! * `drbd-http.sh`: OUR http-disk-server `--arbiter drbd` on both nodes
//!   (explicit promotion, derived may_promote, DRBD 8.4 detected from
//!   /proc/drbd so `drbdsetup primary|secondary` name the minor). Exactly
//!   one serves; 1 KiB PUT through HTTP reads back; a server whose events2
//!   view missed the peer's promotion runs the real `drbdsetup primary 0`,
//!   the kernel refuses (exit 11) and the log classifies it as refused;
//!   the serving VM powers off hard and the other promotes and serves the
//!   bytes written before; SIGTERM then demotes it (`drbdsetup secondary 0`).
//!
//! What 8.4 cannot show (no quorum, two nodes only, no kernel may_promote;
//! the derived may_promote is not split-brain safe) is listed in
//! tests/vm/README.md; DRBD 9 behaviour is tested against fixtures only.

use heartbeat_tests::vm::{boot_pair, guest_io, one_vm_test_at_a_time, VmSpec, TWO_VM_TIMEOUT};
use heartbeat_tests::{binary, shared_dir, Profile};

#[test]
fn drbd84_pair_refuses_a_second_primary_and_fails_over() {
    let _serial = one_vm_test_at_a_time();
    let spec = VmSpec::new("drbd-pair.sh", &[guest_io()]).timeout(TWO_VM_TIMEOUT);
    let (a, b) = boot_pair(&spec);
    a.assert_pass_with_logs("drbd-a", &[("vm-b", b.report())]);
    b.assert_pass_with_logs("drbd-b", &[("vm-a", a.report())]);

    // The refusal the survivor saw is the one the fixture records.
    let fixture =
        std::fs::read_to_string(shared_dir().join("fixtures/drbd/primary-refused-v84.txt"))
            .expect("read fixtures/drbd/primary-refused-v84.txt");
    for line in fixture.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            b.serial.lines().any(|l| l.trim_end() == line.trim_end()),
            "vm-b did not print the fixture line {line:?}; serial:\n{}",
            b.serial
        );
    }
}

/// Scenario 4: http-disk-server's drbd arbiter on a real DRBD 8.4 pair.
#[test]
fn http_disk_servers_with_the_drbd_arbiter_elect_one_and_fail_over_on_drbd84() {
    let _serial = one_vm_test_at_a_time();
    let files = [binary("http-disk-server", Profile::Release), guest_io()];
    let spec = VmSpec::new("drbd-http.sh", &files).timeout(TWO_VM_TIMEOUT);
    let (a, b) = boot_pair(&spec);
    a.assert_pass_with_logs("drbd-http-a", &[("vm-b", b.report())]);
    b.assert_pass_with_logs("drbd-http-b", &[("vm-a", a.report())]);
    let (winner, loser) = if a.serial.contains("winner crashing") {
        (&a, &b)
    } else {
        (&b, &a)
    };
    assert!(
        winner
            .serial
            .contains("http-put 1024 bytes at 4096 seed 84"),
        "the winner did not write through HTTP:\n{}",
        winner.report()
    );
    for needle in [
        "refused promotion classified: exit 11, lost",
        "took over",
        "http-verify 1024 bytes at 4096 seed 84",
        "SIGTERM: demoted, role Secondary/Unknown",
    ] {
        assert!(
            loser.serial.contains(needle),
            "the survivor's log lacks {needle:?}:\n{}",
            loser.report()
        );
    }
    for line in loser.serial.lines().filter(|l| l.starts_with("took over")) {
        eprintln!("survivor: {line}");
    }
}
