//! The real `http-disk-server --arbiter drbd` against a FAKE `drbdsetup`.
//!
//! The fake is a shell script the test writes: `events2` follows a file the
//! test appends DRBD 9 `--full` lines to (shapes from
//! `fixtures/drbd/events2-v9-full.txt`), `status` prints a JSON file the test
//! writes, and `primary` / `secondary [--force]` log their call and exit with
//! the code in `<dir>/<command>.rc` (0 when absent). On success they append
//! the role change a real DRBD would report to the events file. `secondary`
//! also records how many descriptors the server still had open on the disk,
//! so the tests check that I/O stopped before the demotion.
//!
//! What this cannot show: real DRBD. Promotion races, quorum, auto-promote
//! opens that really promote, EROFS on a Secondary, and the kernel failing
//! I/O after `secondary --force` need real DRBD (the VM scenarios).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use heartbeat_tests::cluster::fetch_status;
use heartbeat_tests::{
    poll_until, pseudo_random_bytes, start_disk_server, Daemon, DiskServerConfig, TempDisk,
};
use heartbeat_wire::{Role, ServerStatus};
use nix::sys::signal::Signal;

const SIZE: u64 = 1 << 20;
const WAIT: Duration = Duration::from_secs(20);

const RES_SECONDARY: &str = "role:Secondary suspended:no force-io-failures:no write-ordering:flush";
const DEVICE_STATS: &str = "size:1024 read:0 written:0 al-writes:0 bm-writes:0 upper-pending:0 lower-pending:0 al-suspended:no";

fn resource_line(kind: &str, role: &str, may_promote: bool) -> String {
    let mp = if may_promote { "yes" } else { "no" };
    format!(
        "{kind} resource name:r0 role:{role} suspended:no force-io-failures:no write-ordering:flush may_promote:{mp} promotion_score:10101"
    )
}

fn device_line(kind: &str, disk: &str, quorum: bool) -> String {
    let q = if quorum { "yes" } else { "no" };
    format!("{kind} device name:r0 volume:0 minor:1000 backing_dev:/dev/vg/r0 disk:{disk} client:no open:no quorum:{q} {DEVICE_STATS}")
}

fn connection_line(kind: &str, peer_role: &str) -> String {
    format!("{kind} connection name:r0 peer-node-id:1 conn-name:node-b connection:Connected role:{peer_role} congested:no ap-in-flight:0 rs-in-flight:0")
}

fn peer_device_line(kind: &str) -> String {
    format!("{kind} peer-device name:r0 peer-node-id:1 conn-name:node-b volume:0 replication:Established peer-disk:UpToDate peer-client:no resync-suspended:no received:0 sent:0 out-of-sync:0 pending:0 unacked:0")
}

/// A complete initial dump, ended by `exists -`.
fn dump(role: &str, may_promote: bool, peer_role: &str) -> String {
    [
        resource_line("exists", role, may_promote),
        device_line("exists", "UpToDate", true),
        connection_line("exists", peer_role),
        peer_device_line("exists"),
        "exists -".to_owned(),
    ]
    .join("\n")
        + "\n"
}

fn status_json(role: &str, peer_role: &str) -> String {
    format!(
        r#"[{{"name":"r0","node-id":0,"role":"{role}","suspended":false,"force-io-failures":false,
  "devices":[{{"volume":0,"minor":1000,"disk-state":"UpToDate","client":false,"quorum":true,"size":1024}}],
  "connections":[{{"peer-node-id":1,"name":"node-b","connection-state":"Connected","peer-role":"{peer_role}",
    "peer_devices":[{{"volume":0,"replication-state":"Established","peer-disk-state":"UpToDate","peer-client":false,"resync-suspended":"no"}}]}}]}}]"#
    )
}

/// The fake `drbdsetup` and its files.
struct FakeDrbd {
    dir: PathBuf,
    script: PathBuf,
}

impl FakeDrbd {
    fn new(disk: &TempDisk) -> Self {
        let dir = disk.file("drbd");
        std::fs::create_dir_all(&dir).unwrap();
        let disk_path = std::fs::canonicalize(&disk.path).unwrap();
        let d = dir.display();
        let script = dir.join("drbdsetup");
        // `tail --pid` ends the events2 child when the server dies, however
        // it dies. The role-change lines are what DRBD 9 reports with --full.
        let text = format!(
            r#"#!/bin/sh
d='{d}'
disk='{disk}'
call="$*"
echo "$call" >> "$d/calls"
rc_of() {{ cat "$d/$1.rc" 2>/dev/null || echo 0; }}
# Completed calls go to `done`, after all their effects.
finish() {{ echo "$call" >> "$d/done"; exit $1; }}
case "$1" in
  events2)
    echo $$ > "$d/events2.pid"
    exec tail -n +1 -s 0.1 --pid=$PPID -f "$d/events" ;;
  status)
    if [ -f "$d/status.json" ]; then cat "$d/status.json"; else echo '[]'; fi
    finish $(rc_of status) ;;
  primary)
    rc=$(rc_of primary)
    if [ "$rc" != 0 ]; then echo "$2: State change failed: (-1) Multiple primaries not allowed by config" >&2; finish $rc; fi
    echo "change resource name:$2 role:Primary {RES_TAIL} may_promote:no promotion_score:10102" >> "$d/events"
    finish 0 ;;
  secondary)
    if [ "$2" = --force ]; then f=secondary-force; r=$3; else f=secondary; r=$2; fi
    n=0
    for fd in /proc/$PPID/fd/*; do
      [ "$(readlink "$fd")" = "$disk" ] && n=$((n+1))
    done
    echo "$n" >> "$d/open-at-secondary"
    rc=$(rc_of $f)
    if [ "$rc" != 0 ]; then echo "$r: State change failed: (-12) Device is held open by someone" >&2; finish $rc; fi
    echo "change resource name:$r {RES_SECONDARY} may_promote:no promotion_score:10101" >> "$d/events"
    finish 0 ;;
  *) echo "fake drbdsetup: unexpected: $*" >&2; exit 20 ;;
esac
"#,
            disk = disk_path.display(),
            RES_TAIL = "suspended:no force-io-failures:no write-ordering:flush",
        );
        std::fs::write(&script, text).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(dir.join("events"), "").unwrap();
        Self { dir, script }
    }

    fn append(&self, lines: &str) {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.join("events"))
            .unwrap();
        f.write_all(lines.as_bytes()).unwrap();
        if !lines.ends_with('\n') {
            f.write_all(b"\n").unwrap();
        }
    }

    fn set_rc(&self, command: &str, rc: i32) {
        std::fs::write(self.dir.join(format!("{command}.rc")), rc.to_string()).unwrap();
    }

    fn clear_rc(&self, command: &str) {
        let _ = std::fs::remove_file(self.dir.join(format!("{command}.rc")));
    }

    fn set_status(&self, json: &str) {
        std::fs::write(self.dir.join("status.json"), json).unwrap();
    }

    fn lines(&self, file: &str) -> Vec<String> {
        std::fs::read_to_string(self.dir.join(file))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Calls started, in order.
    fn calls(&self) -> Vec<String> {
        self.lines("calls")
    }

    /// How many times `call` started.
    fn count(&self, call: &str) -> usize {
        self.calls().iter().filter(|c| *c == call).count()
    }

    /// How many times `call` finished, with all its effects.
    fn done(&self, call: &str) -> usize {
        self.lines("done").iter().filter(|c| *c == call).count()
    }

    /// Wait until `call` started `n` times (`events2` never finishes).
    fn wait_started(&self, call: &str, n: usize, server: &Daemon) {
        poll_until(WAIT, || (self.count(call) >= n).then_some(())).unwrap_or_else(|| {
            panic!(
                "fake drbdsetup was not started with `{call}` {n} time(s); calls: {:?}\nserver log:\n{}",
                self.calls(),
                server.log()
            )
        });
    }

    /// Wait until `call` finished `n` times.
    fn wait_call(&self, call: &str, n: usize, server: &Daemon) {
        poll_until(WAIT, || (self.done(call) >= n).then_some(())).unwrap_or_else(|| {
            panic!(
                "fake drbdsetup was not called with `{call}` {n} time(s); calls: {:?}\nserver log:\n{}",
                self.calls(),
                server.log()
            )
        });
    }

    /// Descriptors the server held on the disk at each `secondary` call.
    fn open_at_secondary(&self) -> Vec<usize> {
        std::fs::read_to_string(self.dir.join("open-at-secondary"))
            .unwrap_or_default()
            .lines()
            .map(|l| l.trim().parse().unwrap())
            .collect()
    }
}

fn start(disk: &TempDisk, fake: &FakeDrbd, extra: &[&str]) -> (Daemon, DiskServerConfig) {
    let mut cfg = DiskServerConfig::new(&disk.path);
    cfg.arbiter = Some("drbd".into());
    // Raw unsigned requests below: compatibility mode.
    cfg.auth = heartbeat_tests::ServerAuth::Unauthenticated;
    cfg.extra = [
        "--drbd-resource",
        "r0",
        "--drbdsetup",
        &fake.script.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(extra.iter().map(|s| s.to_string()))
    .collect();
    let d = start_disk_server(&cfg, disk.dir.path()).expect("start http-disk-server");
    (d, cfg)
}

fn status(cfg: &DiskServerConfig) -> Option<ServerStatus> {
    fetch_status(&cfg.url()).ok()
}

fn wait_role(cfg: &DiskServerConfig, server: &Daemon, role: Role) -> ServerStatus {
    poll_until(WAIT, || status(cfg).filter(|s| s.role == role)).unwrap_or_else(|| {
        panic!(
            "server did not become {role:?}; last status {:?}\nlog:\n{}",
            status(cfg),
            server.log()
        )
    })
}

fn wait_reason(cfg: &DiskServerConfig, server: &Daemon, words: &str) -> ServerStatus {
    poll_until(WAIT, || {
        status(cfg).filter(|s| {
            s.role != Role::Serving
                && s.standby_reason
                    .as_deref()
                    .is_some_and(|r| r.contains(words))
        })
    })
    .unwrap_or_else(|| {
        panic!(
            "no standby reason containing {words:?}; last status {:?}\nlog:\n{}",
            status(cfg),
            server.log()
        )
    })
}

/// One request with `Connection: close`; returns (status, body).
fn request(port: u16, head: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut req = format!("{head}Host: t\r\nConnection: close\r\n\r\n").into_bytes();
    req.extend_from_slice(body);
    s.write_all(&req).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read response");
    let end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response head")
        + 4;
    let code = String::from_utf8_lossy(&out[..end])
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    (code, out[end..].to_vec())
}

fn head(port: u16) -> u16 {
    request(port, "HEAD / HTTP/1.1\r\n", b"").0
}

fn put(port: u16, offset: u64, data: &[u8]) -> u16 {
    let head = format!(
        "PUT / HTTP/1.1\r\nContent-Range: bytes {}-{}/{SIZE}\r\nContent-Length: {}\r\n",
        offset,
        offset + data.len() as u64 - 1,
        data.len()
    );
    request(port, &head, data).0
}

fn get(port: u16, offset: u64, len: u64) -> (u16, Vec<u8>) {
    let head = format!(
        "GET / HTTP/1.1\r\nRange: bytes={}-{}\r\n",
        offset,
        offset + len - 1
    );
    request(port, &head, b"")
}

fn sigterm_and_expect_clean_exit(server: &mut Daemon) {
    server.signal(Signal::SIGTERM);
    let exit = server
        .wait_exit(WAIT)
        .unwrap_or_else(|| panic!("no exit after SIGTERM; log:\n{}", server.log()));
    assert!(
        exit.success(),
        "SIGTERM should end cleanly, got {exit:?}; log:\n{}",
        server.log()
    );
}

/// (1) may_promote with an UpToDate disk: `primary r0`, then serving with
/// working HEAD/GET/PUT; events2 respawned with a fresh dump: still serving;
/// (2) quorum lost: 503 and `secondary r0` with the disk already closed;
/// quorum back: serving again under a higher epoch; SIGTERM demotes again.
#[test]
fn promotes_serves_survives_an_events2_respawn_and_demotes_on_quorum_loss() {
    let disk = TempDisk::zeroed(SIZE);
    let fake = FakeDrbd::new(&disk);
    fake.append(&dump("Secondary", true, "Secondary"));
    let (mut server, cfg) = start(&disk, &fake, &[]);

    fake.wait_call("primary r0", 1, &server);
    let st = wait_role(&cfg, &server, Role::Serving);
    assert!(st.epoch > 0, "a serving grant carries an epoch: {st:?}");
    assert_eq!(st.arbiter, "drbd");
    let first_epoch = st.epoch;

    assert_eq!(head(cfg.port), 200);
    let data = pseudo_random_bytes(1024, 11);
    assert_eq!(put(cfg.port, 4096, &data), 200);
    assert_eq!(disk.read(4096, 1024), data);
    assert_eq!(get(cfg.port, 4096, 1024), (206, data.clone()));

    // events2 dies; the new child dumps the current state (Primary).
    let pid: i32 = std::fs::read_to_string(fake.dir.join("events2.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let fresh = fake.dir.join("events.new");
    std::fs::write(&fresh, dump("Primary", false, "Secondary")).unwrap();
    std::fs::rename(&fresh, fake.dir.join("events")).unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    fake.wait_started("events2 --full r0", 2, &server);
    // Whatever the respawn changed would have happened by the next request
    // cycle; the role must not have moved.
    std::thread::sleep(Duration::from_millis(500));
    let st = status(&cfg).unwrap();
    assert_eq!(
        (st.role, st.epoch),
        (Role::Serving, first_epoch),
        "respawn kept the role"
    );
    assert_eq!(fake.count("secondary r0"), 0, "{:?}", fake.calls());
    assert_eq!(head(cfg.port), 200);

    // Quorum lost: stop serving, then demote.
    fake.append(&device_line("change", "UpToDate", false));
    fake.append(&resource_line("change", "Primary", false));
    fake.wait_call("secondary r0", 1, &server);
    let st = wait_reason(&cfg, &server, "quorum");
    assert_ne!(st.role, Role::Serving);
    assert_eq!(head(cfg.port), 503);
    assert_eq!(put(cfg.port, 4096, &[0xAA; 512]), 503);
    assert_eq!(
        disk.read(4096, 1024),
        data,
        "no write after the role was lost"
    );
    assert_eq!(
        fake.open_at_secondary(),
        vec![0],
        "the server had closed the disk before `secondary`"
    );

    // Quorum back and may_promote: promoted again, with a higher epoch.
    fake.append(&device_line("change", "UpToDate", true));
    fake.append(&resource_line("change", "Secondary", true));
    fake.wait_call("primary r0", 2, &server);
    let st = wait_role(&cfg, &server, Role::Serving);
    assert!(st.epoch > first_epoch, "{} > {first_epoch}", st.epoch);
    assert_eq!(get(cfg.port, 4096, 1024), (206, data));

    sigterm_and_expect_clean_exit(&mut server);
    assert_eq!(fake.count("secondary r0"), 2, "{:?}", fake.calls());
    assert_eq!(fake.open_at_secondary(), vec![0, 0]);
}

/// (3) `primary` refused (exit 11): standby with the reason, no I/O; the
/// attempt is retried and wins once DRBD allows it.
#[test]
fn refused_promotion_stays_standby_and_retries() {
    let disk = TempDisk::random(SIZE, 3);
    let before = disk.contents();
    let fake = FakeDrbd::new(&disk);
    fake.set_rc("primary", 11);
    fake.append(&dump("Secondary", true, "Secondary"));
    let (_server, cfg) = start(&disk, &fake, &[]);

    fake.wait_call("primary r0", 2, &_server);
    let st = wait_reason(&cfg, &_server, "Multiple primaries");
    assert_eq!(st.role, Role::Standby);
    assert!(
        st.standby_reason.as_deref().unwrap().contains("exit 11"),
        "{st:?}"
    );
    assert_eq!(head(cfg.port), 503);
    assert_eq!(put(cfg.port, 0, &[0x55; 1024]), 503);
    assert_eq!(get(cfg.port, 0, 512).0, 503);
    assert_eq!(disk.contents(), before, "a standby never touches the disk");

    fake.clear_rc("primary");
    let st = wait_role(&cfg, &_server, Role::Serving);
    assert!(st.epoch > 0);
    assert_eq!(head(cfg.port), 200);
}

/// (4) `secondary` fails: `secondary --force` follows and the server stays
/// up; both fail: the process exits non-zero (escalation) and says why.
#[test]
fn failed_demotion_forces_then_escalates() {
    let disk = TempDisk::zeroed(SIZE);
    let fake = FakeDrbd::new(&disk);
    fake.set_rc("secondary", 11);
    fake.append(&dump("Secondary", true, "Secondary"));
    let (mut server, cfg) = start(&disk, &fake, &[]);
    wait_role(&cfg, &server, Role::Serving);

    fake.append(&device_line("change", "UpToDate", false));
    fake.wait_call("secondary --force r0", 1, &server);
    let calls = fake.calls();
    let plain = calls.iter().position(|c| c == "secondary r0").unwrap();
    let forced = calls
        .iter()
        .position(|c| c == "secondary --force r0")
        .unwrap();
    assert!(plain < forced, "secondary before --force: {calls:?}");
    wait_reason(&cfg, &server, "quorum");
    assert!(
        server.try_exit_status().is_none(),
        "a forced demotion that worked is no reason to exit"
    );

    // Promoted again, then both demotions fail.
    fake.set_rc("secondary-force", 11);
    fake.append(&device_line("change", "UpToDate", true));
    fake.append(&resource_line("change", "Secondary", true));
    wait_role(&cfg, &server, Role::Serving);
    fake.append(&device_line("change", "UpToDate", false));
    let exit = server
        .wait_exit(WAIT)
        .unwrap_or_else(|| panic!("no escalation exit; log:\n{}", server.log()));
    assert!(!exit.success(), "escalation must exit non-zero: {exit:?}");
    assert_eq!(fake.count("secondary --force r0"), 2, "{:?}", fake.calls());
    let log = server.log();
    assert!(
        log.contains("could not demote DRBD resource r0"),
        "the log names the resource: {log}"
    );
}

/// (5a) `status --json` shows a peer Primary: standby naming the peer, with
/// the hint from `--peer-url`, and no promotion attempt.
#[test]
fn peer_primary_at_start_keeps_standby_with_a_hint() {
    let disk = TempDisk::zeroed(SIZE);
    let fake = FakeDrbd::new(&disk);
    fake.set_status(&status_json("Secondary", "Primary"));
    fake.append(&dump("Secondary", false, "Primary"));
    let (_server, cfg) = start(&disk, &fake, &["--peer-url", "node-b=http://127.0.0.1:9/"]);
    let st = wait_reason(&cfg, &_server, "peer node node-b is Primary");
    assert_eq!(st.role, Role::Standby);
    assert_eq!(st.serving_url.as_deref(), Some("http://127.0.0.1:9/"));
    assert_eq!(head(cfg.port), 503);
    fake.wait_started("events2 --full r0", 1, &_server);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(fake.count("primary r0"), 0, "{:?}", fake.calls());
    assert_eq!(
        status(&cfg).unwrap().role,
        Role::Standby,
        "still standby behind the peer"
    );
}

/// (5b) `status --json` shows this host Primary (daemon restart): adopt it
/// and serve at once, without running `primary`.
#[test]
fn local_primary_at_start_is_adopted() {
    let disk = TempDisk::random(SIZE, 5);
    let fake = FakeDrbd::new(&disk);
    fake.set_status(&status_json("Primary", "Secondary"));
    fake.append(&dump("Primary", false, "Secondary"));
    let (mut server, cfg) = start(&disk, &fake, &[]);
    let st = wait_role(&cfg, &server, Role::Serving);
    assert!(st.epoch > 0);
    assert_eq!(get(cfg.port, 512, 512), (206, disk.read(512, 512)));
    assert_eq!(fake.count("primary r0"), 0, "{:?}", fake.calls());
    sigterm_and_expect_clean_exit(&mut server);
    assert_eq!(fake.count("secondary r0"), 1, "{:?}", fake.calls());
}

/// (6) auto-promote: the arbiter's own read-write open is the promotion; on
/// a regular file it succeeds, so the server serves; no `primary` and no
/// `secondary` are ever run.
#[test]
fn auto_promote_open_serves_without_drbdsetup_primary() {
    let disk = TempDisk::zeroed(SIZE);
    let fake = FakeDrbd::new(&disk);
    fake.append(&dump("Secondary", true, "Secondary"));
    let (mut server, cfg) = start(&disk, &fake, &["--drbd-promote", "auto"]);
    let st = wait_role(&cfg, &server, Role::Serving);
    assert!(st.epoch > 0);
    let data = pseudo_random_bytes(1024, 6);
    assert_eq!(put(cfg.port, 0, &data), 200);
    assert_eq!(get(cfg.port, 0, 1024), (206, data));

    // Quorum lost: standby (closing is the demotion: still no drbdsetup).
    fake.append(&device_line("change", "UpToDate", false));
    wait_reason(&cfg, &server, "quorum");
    assert_eq!(head(cfg.port), 503);
    sigterm_and_expect_clean_exit(&mut server);
    let calls = fake.calls();
    assert!(
        calls
            .iter()
            .all(|c| !c.starts_with("primary") && !c.starts_with("secondary")),
        "{calls:?}"
    );
}

/// A worse local disk waits before promoting, and says so: Outdated is 2 s
/// times the sleep factor (here 2, so 4 s); then it promotes.
#[test]
fn outdated_disk_waits_and_says_why_before_promoting() {
    let disk = TempDisk::zeroed(SIZE);
    let fake = FakeDrbd::new(&disk);
    let dump_outdated = [
        resource_line("exists", "Secondary", true),
        device_line("exists", "Outdated", true),
        connection_line("exists", "Secondary"),
        peer_device_line("exists"),
        "exists -".to_owned(),
    ]
    .join("\n");
    fake.append(&dump_outdated);
    let (server, cfg) = start(&disk, &fake, &["--drbd-sleep-factor", "2"]);
    let st = wait_reason(&cfg, &server, "(disk Outdated) before promoting");
    assert!(
        st.standby_reason.as_deref().unwrap().contains("waiting"),
        "{st:?}"
    );
    fake.wait_call("primary r0", 1, &server);
    wait_role(&cfg, &server, Role::Serving);
}

/// (4b) `--debug-no-fence`: both demotions fail, yet nothing destructive
/// happens: no `secondary --force` is run, the process does not exit, and
/// the log and the status say what would have been done.
#[test]
fn debug_mode_logs_instead_of_forcing_and_escalating() {
    let disk = TempDisk::zeroed(SIZE);
    let fake = FakeDrbd::new(&disk);
    fake.set_rc("secondary", 11);
    fake.set_rc("secondary-force", 11);
    fake.append(&dump("Secondary", true, "Secondary"));
    let (mut server, cfg) = start(&disk, &fake, &["--debug-no-fence"]);
    let st = wait_role(&cfg, &server, Role::Serving);
    assert!(st.debug_no_fence, "the status shows debug mode: {st:?}");

    fake.append(&device_line("change", "UpToDate", false));
    fake.wait_call("secondary r0", 1, &server);
    let st = wait_reason(&cfg, &server, "DEBUG MODE");
    assert!(st.debug_no_fence);
    let log = poll_until(WAIT, || {
        let log = server.log();
        log.contains("DEBUG MODE: would escalate").then_some(log)
    })
    .unwrap_or_else(|| panic!("no would-be escalation logged:\n{}", server.log()));
    assert!(
        log.contains("DEBUG MODE: would run `drbdsetup secondary --force r0`"),
        "{log}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        server.try_exit_status().is_none(),
        "debug mode must not exit; log:\n{}",
        server.log()
    );
    assert_eq!(fake.count("secondary --force r0"), 0, "{:?}", fake.calls());
    sigterm_and_expect_clean_exit(&mut server);
}
