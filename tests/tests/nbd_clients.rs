//! Real NBD clients (nbdinfo, qemu-io, fio, nbdcopy, raw sockets) against the
//! real `nbd-http-server` in front of the real `http-disk-server`, on loopback.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Duration;

use heartbeat_tests::*;
use heartbeat_wire::nbd::{self, InfoRequest, OptionReplyHeader, RequestHeader, SimpleReplyHeader};

struct Chain {
    disk: TempDisk,
    nbd: NbdServerConfig,
    _servers: Vec<Daemon>,
}

fn chain(disk: TempDisk) -> Chain {
    chain_with_nbd_flags(disk, &[])
}

fn chain_with_nbd_flags(disk: TempDisk, nbd_flags: &[&str]) -> Chain {
    let http = DiskServerConfig::new(&disk.path);
    let logs = disk.dir.path().to_path_buf();
    let disk_server = start_disk_server(&http, &logs).expect("start http-disk-server");
    let mut nbd = NbdServerConfig::new(disk.file("nbd.sock"), vec![http.url()]);
    nbd.extra = nbd_flags.iter().map(|f| f.to_string()).collect();
    let nbd_server = start_nbd_server(&nbd, &logs).expect("start nbd-http-server");
    Chain {
        disk,
        nbd,
        _servers: vec![nbd_server, disk_server],
    }
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let (status, out, err) = run_with_timeout(cmd, Duration::from_secs(120)).expect("run tool");
    (status.success(), out, err)
}

#[test]
fn nbdinfo_reports_size_and_minimum_block_size() {
    require_tool("nbdinfo");
    let c = chain(TempDisk::zeroed(4 << 20));
    let (ok, out, err) = run(Command::new("nbdinfo").args(["--json", &c.nbd.uri()]));
    assert!(ok, "nbdinfo failed: {err}");
    let json: serde_json::Value = serde_json::from_str(&out).expect("nbdinfo JSON");
    let export = &json["exports"][0];
    assert_eq!(export["export-size"], 4 << 20);
    assert_eq!(export["block_size_minimum"], 512);
    assert_eq!(export["can_flush"], true);
    assert_eq!(export["can_fua"], true);
    // The default (empty) export name reaches the same export.
    let default_uri = format!("nbd+unix:///?socket={}", c.nbd.socket.display());
    let (ok, out, err) = run(Command::new("nbdinfo").args(["--size", &default_uri]));
    assert!(ok, "nbdinfo on the default export failed: {err}");
    assert_eq!(out.trim(), (4u64 << 20).to_string());
}

#[test]
fn wrong_export_name_fails_clearly_and_server_keeps_serving() {
    require_tool("nbdinfo");
    let c = chain(TempDisk::zeroed(1 << 20));
    let bad = format!(
        "nbd+unix:///no-such-volume?socket={}",
        c.nbd.socket.display()
    );
    let (ok, _, err) = run(Command::new("nbdinfo").arg(&bad));
    assert!(!ok, "nbdinfo accepted a wrong export name");
    assert!(
        err.contains("no-such-volume") || err.to_lowercase().contains("unknown"),
        "unclear error: {err}"
    );
    let (ok, _, err) = run(Command::new("nbdinfo").arg(c.nbd.uri()));
    assert!(ok, "server stopped serving after a bad client: {err}");
}

#[test]
fn qemu_io_patterns_land_in_the_backing_file() {
    require_tool("qemu-io");
    let c = chain(TempDisk::zeroed(8 << 20));
    let cases: [(u64, u64, u8); 8] = [
        (0, 512, 0x11),
        (4096, 1024, 0x22),
        (8192, 4096, 0x33),
        (1 << 20, 1 << 20, 0x44),
        (3 * 512 + 7, 512, 0x55), // unaligned offset
        (5 << 20 | 100, 1024, 0x66),
        (6 << 20 | 1, 4096, 0x77),
        (7 << 20 | 3, (1 << 20) - 3, 0x88),
    ];
    for (offset, len, pattern) in cases {
        let (ok, out, err) = run(Command::new("qemu-io").args([
            "-f",
            "raw",
            &c.nbd.uri(),
            "-c",
            &format!("write -P {pattern:#x} {offset} {len}"),
            "-c",
            &format!("read -P {pattern:#x} {offset} {len}"),
        ]));
        assert!(
            ok && !out.contains("Pattern verification failed"),
            "qemu-io {offset}+{len}: {out} {err}"
        );
        let bytes = c.disk.read(offset, len as usize);
        assert!(
            bytes.iter().all(|&b| b == pattern),
            "backing file at {offset}+{len} does not hold {pattern:#x}"
        );
    }
}

/// fio random read/write with `verify=crc32c` at `iodepth` against `c`.
fn fio_verify(c: &Chain, iodepth: u32) {
    require_tool("fio");
    let (ok, out, err) = run(Command::new("fio").args([
        "--name=verify",
        "--ioengine=nbd",
        &format!("--uri={}", c.nbd.uri()),
        "--rw=randrw",
        "--bs=4k",
        &format!("--iodepth={iodepth}"),
        "--size=16M",
        "--verify=crc32c",
        "--do_verify=1",
        "--verify_fatal=1",
    ]));
    assert!(ok, "fio failed: {out}\n{err}");
    assert!(!out.contains("verify: bad"), "{out}");
}

#[test]
fn fio_random_read_write_with_crc32c_verify() {
    fio_verify(&chain(TempDisk::zeroed(16 << 20)), 8);
}

/// Upstream polling (on by default) reads answers through its own
/// non-blocking path, and only at queue depth 1; with it on (the default)
/// and off, every verified block at that depth must come back whole.
#[test]
fn fio_verify_at_queue_depth_1_with_upstream_polling_on_and_off() {
    fio_verify(&chain(TempDisk::zeroed(16 << 20)), 1);
    let c = chain_with_nbd_flags(TempDisk::zeroed(16 << 20), &["--upstream-poll-us", "0"]);
    fio_verify(&c, 1);
}

#[test]
fn nbdcopy_64mib_in_and_out_is_identical() {
    require_tool("nbdcopy");
    let c = chain(TempDisk::zeroed(64 << 20));
    let source = c.disk.file("source.img");
    let image = pseudo_random_bytes(64 << 20, 42);
    std::fs::write(&source, &image).unwrap();
    let (ok, _, err) = run(Command::new("nbdcopy").args([source.to_str().unwrap(), &c.nbd.uri()]));
    assert!(ok, "nbdcopy in failed: {err}");
    assert!(
        c.disk.contents() == image,
        "backing file differs from the image copied in"
    );
    let back = c.disk.file("back.img");
    let (ok, _, err) = run(Command::new("nbdcopy").args([&c.nbd.uri(), back.to_str().unwrap()]));
    assert!(ok, "nbdcopy out failed: {err}");
    assert!(
        std::fs::read(&back).unwrap() == image,
        "image copied out differs"
    );
}

#[test]
fn nbdsh_out_of_range_requests_get_errors() {
    let c = chain(TempDisk::zeroed(1 << 20));
    let script = format!(
        r#"
import nbd
h = nbd.NBD()
h.connect_uri("{uri}")
size = h.get_size()
for name, op in [("read", lambda: h.pread(512, size)), ("write", lambda: h.pwrite(b"x" * 512, size))]:
    try:
        op()
        raise SystemExit(name + " past the end succeeded")
    except nbd.Error as e:
        print(name, "error", e.errnum)
h.pwrite(b"y" * 512, 0)
assert h.pread(512, 0) == b"y" * 512
h.flush()
h.shutdown()
"#,
        uri = c.nbd.uri()
    );
    let (ok, out, err) = run(Command::new("/usr/bin/python3").args(["-c", &script]));
    assert!(ok, "nbdsh script failed: {out}\n{err}");
    assert!(
        out.contains("read error") && out.contains("write error"),
        "{out}"
    );
    assert_eq!(c.disk.read(0, 512), vec![b'y'; 512]);
}

/// A raw client: handshake by hand with the shared wire format.
fn raw_client(socket: &std::path::Path) -> UnixStream {
    let mut s = UnixStream::connect(socket).expect("connect to NBD socket");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut greeting = [0u8; nbd::SERVER_GREETING_LEN];
    s.read_exact(&mut greeting).unwrap();
    let flags = nbd::decode_server_greeting(&greeting).unwrap();
    assert!(flags & nbd::FLAG_FIXED_NEWSTYLE != 0);
    s.write_all(&nbd::encode_client_flags(nbd::FLAG_C_FIXED_NEWSTYLE))
        .unwrap();
    s
}

fn option_replies(s: &mut UnixStream) -> Vec<(u32, Vec<u8>)> {
    let mut v = Vec::new();
    loop {
        let mut h = [0u8; nbd::OPTION_REPLY_HEADER_LEN];
        s.read_exact(&mut h).unwrap();
        let h = OptionReplyHeader::decode(&h).unwrap();
        let mut data = vec![0u8; h.length as usize];
        s.read_exact(&mut data).unwrap();
        let last = h.reply_type == nbd::REP_ACK || h.is_error();
        v.push((h.reply_type, data));
        if last {
            return v;
        }
    }
}

fn request(s: &mut UnixStream, command: u16, handle: u64, offset: u64, length: u32) {
    let h = RequestHeader {
        flags: 0,
        command,
        handle,
        offset,
        length,
    };
    s.write_all(&h.encode()).unwrap();
}

fn reply(s: &mut UnixStream) -> SimpleReplyHeader {
    let mut h = [0u8; nbd::SIMPLE_REPLY_HEADER_LEN];
    s.read_exact(&mut h).unwrap();
    SimpleReplyHeader::decode(&h).unwrap()
}

#[test]
fn raw_protocol_errors_do_not_drop_the_connection_or_the_server() {
    let c = chain(TempDisk::zeroed(1 << 20));
    let size = 1u64 << 20;

    // A client that vanishes mid-request (write header, half its payload).
    {
        let mut s = raw_client(&c.nbd.socket);
        let go = InfoRequest {
            name: c.nbd.name.clone().into_bytes(),
            requests: vec![],
        };
        s.write_all(&nbd::encode_option_request(nbd::OPT_GO, &go.encode()))
            .unwrap();
        option_replies(&mut s);
        request(&mut s, nbd::CMD_WRITE, 1, 0, 4096);
        s.write_all(&[0xee; 2048]).unwrap();
    }

    let mut s = raw_client(&c.nbd.socket);
    // Unknown option: NBD_REP_ERR_UNSUP, the handshake goes on.
    s.write_all(&nbd::encode_option_request(0x4242, b"whatever"))
        .unwrap();
    assert_eq!(option_replies(&mut s)[0].0, nbd::REP_ERR_UNSUP);
    s.write_all(&nbd::encode_option_request(nbd::OPT_STRUCTURED_REPLY, b""))
        .unwrap();
    assert_eq!(option_replies(&mut s)[0].0, nbd::REP_ERR_UNSUP);
    // Wrong name with GO: NBD_REP_ERR_UNKNOWN, then the right one works.
    let wrong = InfoRequest {
        name: b"wrong".to_vec(),
        requests: vec![],
    };
    s.write_all(&nbd::encode_option_request(nbd::OPT_GO, &wrong.encode()))
        .unwrap();
    assert_eq!(option_replies(&mut s)[0].0, nbd::REP_ERR_UNKNOWN);
    let go = InfoRequest {
        name: c.nbd.name.clone().into_bytes(),
        requests: vec![nbd::INFO_BLOCK_SIZE],
    };
    s.write_all(&nbd::encode_option_request(nbd::OPT_GO, &go.encode()))
        .unwrap();
    assert_eq!(option_replies(&mut s).last().unwrap().0, nbd::REP_ACK);

    request(&mut s, nbd::CMD_READ, 10, size - 512, 1024);
    assert_eq!(
        reply(&mut s),
        SimpleReplyHeader {
            error: nbd::EINVAL,
            handle: 10
        }
    );
    request(&mut s, nbd::CMD_WRITE, 11, size, 512);
    s.write_all(&[1; 512]).unwrap();
    assert_eq!(
        reply(&mut s),
        SimpleReplyHeader {
            error: nbd::ENOSPC,
            handle: 11
        }
    );
    request(&mut s, nbd::CMD_TRIM, 12, 0, 512);
    assert_eq!(reply(&mut s).error, nbd::EINVAL);
    request(&mut s, nbd::CMD_READ, 13, 0, 64 << 20);
    assert_eq!(reply(&mut s).error, nbd::EINVAL);
    // Still serving on this connection.
    request(&mut s, nbd::CMD_WRITE, 14, 512, 4);
    s.write_all(b"live").unwrap();
    assert_eq!(
        reply(&mut s),
        SimpleReplyHeader {
            error: 0,
            handle: 14
        }
    );
    request(&mut s, nbd::CMD_READ, 15, 512, 4);
    assert_eq!(
        reply(&mut s),
        SimpleReplyHeader {
            error: 0,
            handle: 15
        }
    );
    let mut data = [0u8; 4];
    s.read_exact(&mut data).unwrap();
    assert_eq!(&data, b"live");
    request(&mut s, nbd::CMD_DISC, 16, 0, 0);
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert_eq!(&c.disk.read(512, 4), b"live");
    // The half-sent write never reached the disk.
    assert_eq!(c.disk.read(0, 4), vec![0; 4]);

    // And other clients still get served.
    require_tool("nbdinfo");
    let (ok, _, err) = run(Command::new("nbdinfo").arg(c.nbd.uri()));
    assert!(ok, "{err}");
}

#[test]
fn sigterm_exits_cleanly() {
    let disk = TempDisk::zeroed(1 << 20);
    let http = DiskServerConfig::new(&disk.path);
    let logs = disk.dir.path().to_path_buf();
    let _disk_server = start_disk_server(&http, &logs).expect("start http-disk-server");
    let mut nbd = NbdServerConfig::new(disk.file("nbd.sock"), vec![http.url()]);
    nbd.device_size = Some(1 << 20);
    let mut server = start_nbd_server(&nbd, &logs).expect("start nbd-http-server");
    server.signal(nix::sys::signal::Signal::SIGTERM);
    let status = server
        .wait_exit(Duration::from_secs(20))
        .expect("exit after SIGTERM");
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        server.log()
    );
    assert!(!nbd.socket.exists(), "socket left behind");
}

#[test]
fn device_size_serves_without_any_upstream_and_fails_with_eio() {
    let disk = TempDisk::zeroed(4096);
    let dead = format!("http://127.0.0.1:{}", free_port());
    let mut nbd = NbdServerConfig::new(disk.file("nbd.sock"), vec![dead]);
    nbd.device_size = Some(1 << 20);
    nbd.extra = vec!["--request-deadline-ms".into(), "500".into()];
    let _server = start_nbd_server(&nbd, disk.dir.path()).expect("start without upstream");
    let mut s = raw_client(&nbd.socket);
    let go = InfoRequest {
        name: vec![],
        requests: vec![],
    };
    s.write_all(&nbd::encode_option_request(nbd::OPT_GO, &go.encode()))
        .unwrap();
    let replies = option_replies(&mut s);
    assert_eq!(replies.last().unwrap().0, nbd::REP_ACK);
    request(&mut s, nbd::CMD_READ, 1, 0, 512);
    assert_eq!(
        reply(&mut s),
        SimpleReplyHeader {
            error: nbd::EIO,
            handle: 1
        }
    );
}
