//! http-disk-server against the reference protocol, with curl and with raw
//! sockets: every answer, every refusal leaves the file unchanged, the file
//! arbiter's standby/takeover, and signals.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use heartbeat_tests::{
    poll_until, pseudo_random_bytes, require_tool, start_disk_server, Daemon, DiskServerConfig,
    TempDisk,
};
use nix::sys::signal::Signal;

const SIZE: u64 = 1 << 20;
const WAIT: Duration = Duration::from_secs(20);

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Send raw bytes with `Connection: close` semantics and parse one response.
fn raw(port: u16, request: &[u8]) -> Reply {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(request).unwrap();
    read_reply_to(&mut s, request.starts_with(b"HEAD "))
}

fn read_reply(s: &mut TcpStream) -> Reply {
    read_reply_to(s, false)
}

fn read_reply_to(s: &mut TcpStream, is_head: bool) -> Reply {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = s.read(&mut chunk).expect("read response");
        assert!(
            n > 0,
            "connection closed before a full response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse().unwrap())
        .filter(|_| !is_head)
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = s.read(&mut chunk).expect("read body");
        assert!(n > 0, "connection closed mid-body");
        body.extend_from_slice(&chunk[..n]);
    }
    Reply {
        status,
        headers,
        body,
    }
}

fn put_request(content_range: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "PUT / HTTP/1.1\r\nHost: t\r\nContent-Range: {content_range}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

fn chunked_put(content_range: &str, chunks: &[&[u8]]) -> Vec<u8> {
    let mut r = format!(
        "PUT / HTTP/1.1\r\nHost: t\r\nContent-Range: {content_range}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for c in chunks {
        r.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        r.extend_from_slice(c);
        r.extend_from_slice(b"\r\n");
    }
    r.extend_from_slice(b"0\r\n\r\n");
    r
}

fn curl(args: &[&str]) -> (String, Vec<u8>) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (String::from_utf8_lossy(&out.stderr).to_string(), out.stdout)
}

fn start(disk: &TempDisk, arbiter: &str, extra: &[&str]) -> (Daemon, DiskServerConfig) {
    let mut cfg = DiskServerConfig::new(&disk.path);
    cfg.arbiter = Some(arbiter.into());
    // curl and raw sockets speak the reference protocol: compatibility mode.
    cfg.auth = heartbeat_tests::ServerAuth::Unauthenticated;
    cfg.extra = extra.iter().map(|s| s.to_string()).collect();
    let d = start_disk_server(&cfg, disk.dir.path()).expect("start http-disk-server");
    (d, cfg)
}

#[test]
fn head_get_and_put_with_curl_and_raw_sockets() {
    require_tool("curl");
    let disk = TempDisk::random(SIZE, 1);
    let (_d, cfg) = start(&disk, "none", &[]);
    let url = format!("{}/", cfg.url());

    let r = raw(cfg.port, b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    assert_eq!(r.header("content-length"), Some(&*SIZE.to_string()));
    assert_eq!(r.header("x-heartbeat-role"), Some("serving"));
    assert_eq!(r.header("x-heartbeat-epoch"), Some("1"));

    let r = raw(
        cfg.port,
        b"GET / HTTP/1.1\r\nHost: t\r\nRange: bytes=1000-2023\r\n\r\n",
    );
    assert_eq!(r.status, 206);
    assert_eq!(
        r.header("content-range"),
        Some(&*format!("bytes 1000-2023/{SIZE}"))
    );
    assert_eq!(r.body, disk.read(1000, 1024));

    let (_, body) = curl(&["-r", "4096-8191", &url]);
    assert_eq!(body, disk.read(4096, 4096));

    // Plain PUT over a raw socket, then a chunked one in three pieces.
    let data = pseudo_random_bytes(1024, 7);
    let r = raw(cfg.port, &put_request("bytes 512-1535/*", &data));
    assert_eq!((r.status, &r.body[..]), (200, &b"Ok.\n"[..]));
    assert_eq!(disk.read(512, 1024), data);
    let data = pseudo_random_bytes(3000, 8);
    let r = raw(
        cfg.port,
        &chunked_put(
            &format!("bytes 10000-12999/{SIZE}"),
            &[&data[..1], &data[1..2000], &data[2000..]],
        ),
    );
    assert_eq!(r.status, 200);
    assert_eq!(disk.read(10000, 3000), data);

    // libcurl-based clients send Expect: 100-continue (curl's own threshold
    // varies by version, so ask explicitly); the server must answer it, or
    // the client stalls a second per write.
    let file = disk.file("put.bin");
    let data = pseudo_random_bytes(65536, 9);
    std::fs::write(&file, &data).unwrap();
    let (verbose, body) = curl(&[
        "-v",
        "-H",
        "Expect: 100-continue",
        "-X",
        "PUT",
        "--data-binary",
        &format!("@{}", file.display()),
        "-H",
        "Content-Range: bytes 65536-131071/*",
        &url,
    ]);
    assert!(
        verbose.contains("Expect: 100-continue"),
        "curl did not send Expect: {verbose}"
    );
    assert!(
        verbose.contains("100 Continue"),
        "server did not send 100 Continue: {verbose}"
    );
    assert_eq!(body, b"Ok.\n");
    assert_eq!(disk.read(65536, 65536), data);
    // curl chunked.
    let (_, body) = curl(&[
        "-X",
        "PUT",
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &format!("@{}", file.display()),
        "-H",
        "Content-Range: bytes 0-65535/*",
        &url,
    ]);
    assert_eq!(body, b"Ok.\n");
    assert_eq!(disk.read(0, 65536), data);

    // Keep-alive: several requests on one connection.
    let mut s = TcpStream::connect(("127.0.0.1", cfg.port)).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    for i in 0..5u64 {
        s.write_all(
            format!(
                "GET / HTTP/1.1\r\nHost: t\r\nRange: bytes={}-{}\r\n\r\n",
                i * 512,
                i * 512 + 511
            )
            .as_bytes(),
        )
        .unwrap();
        let r = read_reply(&mut s);
        assert_eq!(r.status, 206);
        assert_eq!(r.body, disk.read(i * 512, 512));
    }

    // Status and metrics.
    let (_, body) = curl(&[&format!("{}/v1/status", cfg.url())]);
    let st: heartbeat_wire::ServerStatus = serde_json::from_slice(&body).unwrap();
    assert_eq!(st.size, SIZE);
    assert_eq!(st.role, heartbeat_wire::Role::Serving);
    assert_eq!(st.arbiter, "none");
    assert!(st.counters.writes >= 4 && st.counters.reads >= 7, "{st:?}");
    let (_, body) = curl(&[&format!("{}/metrics", cfg.url())]);
    let text = String::from_utf8(body).unwrap();
    assert!(
        text.contains("http_disk_requests_total{op=\"write\",status=\"200\"}"),
        "{text}"
    );
    assert!(text.contains("http_disk_epoch 1"), "{text}");
}

#[test]
fn every_refusal_leaves_the_file_unchanged() {
    let disk = TempDisk::random(SIZE, 2);
    let (_d, cfg) = start(&disk, "none", &["--max-request-bytes", "65536"]);
    let before = disk.contents();
    let port = cfg.port;
    let d = pseudo_random_bytes(1024, 3);
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("malformed Content-Range", put_request("bytes 0-x/*", &d), 400),
        ("reversed Content-Range", put_request("bytes 9-1/*", &d), 400),
        ("missing Content-Range", b"PUT / HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nabcd".to_vec(), 400),
        ("Content-Length mismatch", put_request("bytes 0-1022/*", &d), 400),
        ("wrong device size", put_request("bytes 0-1023/12345", &d), 400),
        ("no length", b"PUT / HTTP/1.1\r\nHost: t\r\nContent-Range: bytes 0-9/*\r\n\r\n".to_vec(), 411),
        (
            "over the cap",
            b"PUT / HTTP/1.1\r\nHost: t\r\nContent-Range: bytes 0-65536/*\r\nContent-Length: 65537\r\n\r\n".to_vec(),
            413,
        ),
        ("past the end", put_request(&format!("bytes {}-{}/*", SIZE - 512, SIZE + 511), &d), 416),
        ("chunked longer", chunked_put("bytes 0-1022/*", &[&d]), 400),
        ("chunked shorter", chunked_put("bytes 0-1024/*", &[&d]), 400),
        ("GET malformed Range", b"GET / HTTP/1.1\r\nHost: t\r\nRange: bytes=a-b\r\n\r\n".to_vec(), 400),
        ("GET over the cap", b"GET / HTTP/1.1\r\nHost: t\r\nRange: bytes=0-65536\r\n\r\n".to_vec(), 413),
        ("GET whole device over the cap", b"GET / HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(), 413),
        ("GET past the end", format!("GET / HTTP/1.1\r\nHost: t\r\nRange: bytes={SIZE}-{}\r\n\r\n", SIZE + 10).into_bytes(), 416),
        ("DELETE", b"DELETE / HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(), 405),
        ("POST", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n".to_vec(), 405),
    ];
    for (what, req, want) in cases {
        let r = raw(port, &req);
        assert_eq!(
            r.status,
            want,
            "{what}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(!r.body.is_empty(), "{what}: an error says what was wrong");
        assert_eq!(
            r.header("content-type"),
            Some("text/plain; charset=utf-8"),
            "{what}"
        );
        assert!(r.header("x-heartbeat-role").is_some(), "{what}");
        if want == 416 {
            assert_eq!(
                r.header("content-range"),
                Some(&*format!("bytes */{SIZE}")),
                "{what}"
            );
        }
        assert!(disk.contents() == before, "{what} changed the file");
    }
}

#[test]
fn client_disconnecting_mid_body_changes_nothing() {
    let disk = TempDisk::random(SIZE, 4);
    let (_d, cfg) = start(&disk, "none", &[]);
    let before = disk.contents();
    for _ in 0..3 {
        let mut s = TcpStream::connect(("127.0.0.1", cfg.port)).unwrap();
        s.write_all(b"PUT / HTTP/1.1\r\nHost: t\r\nContent-Range: bytes 0-4095/*\r\nContent-Length: 4096\r\n\r\n")
            .unwrap();
        s.write_all(&[0xAA; 1000]).unwrap();
        drop(s);
        let mut s = TcpStream::connect(("127.0.0.1", cfg.port)).unwrap();
        s.write_all(b"PUT / HTTP/1.1\r\nHost: t\r\nContent-Range: bytes 0-4095/*\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n")
            .unwrap();
        s.write_all(&[0xBB; 1000]).unwrap();
        drop(s);
    }
    // The server keeps serving others.
    let r = raw(
        cfg.port,
        b"GET / HTTP/1.1\r\nHost: t\r\nRange: bytes=0-4095\r\n\r\n",
    );
    assert_eq!(r.status, 206);
    assert_eq!(r.body, before[..4096]);
    std::thread::sleep(Duration::from_millis(200));
    assert!(disk.contents() == before, "an aborted PUT reached the disk");
}

fn status_of(port: u16) -> Option<heartbeat_wire::ServerStatus> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /v1/status HTTP/1.1\r\nHost: t\r\n\r\n")
        .ok()?;
    let r = read_reply(&mut s);
    serde_json::from_slice(&r.body).ok()
}

/// A lone server must already serve when it says `Server ready!`: the
/// storage driver starts using it on that line (drop-in compatibility).
#[test]
fn a_lone_file_arbiter_server_serves_as_soon_as_it_is_ready() {
    for seed in 0..5 {
        let disk = TempDisk::random(SIZE, 40 + seed);
        let (_d, cfg) = start(&disk, "file", &[]);
        let r = raw(cfg.port, b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(
            r.status, 200,
            "round {seed}: first request after `Server ready!`"
        );
        assert_eq!(r.header("x-heartbeat-role"), Some("serving"));
    }
}

#[test]
fn file_arbiter_standby_then_takeover_after_sigkill() {
    let disk = TempDisk::random(SIZE, 5);
    let (a, acfg) = start(&disk, "file", &[]);
    poll_until(WAIT, || {
        status_of(acfg.port).filter(|s| s.role == heartbeat_wire::Role::Serving)
    })
    .expect("first server serves");
    // The standby also prints `Server ready!` (start() waited for it).
    let (_b, bcfg) = start(&disk, "file", &[]);
    let r = poll_until(WAIT, || {
        let r = raw(bcfg.port, b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n");
        (r.status == 503 && r.header("x-heartbeat-serving-url").is_some()).then_some(r)
    })
    .expect("standby answers 503 with a hint");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.header("x-heartbeat-serving-url"), Some(&*acfg.url()));
    assert_eq!(r.header("x-heartbeat-role"), Some("standby"));
    let r = raw(
        bcfg.port,
        b"GET / HTTP/1.1\r\nHost: t\r\nRange: bytes=0-511\r\n\r\n",
    );
    assert_eq!(r.status, 503);
    let r = raw(bcfg.port, &put_request("bytes 0-3/*", b"abcd"));
    assert_eq!(r.status, 503);
    assert_eq!(
        disk.read(0, 4),
        pseudo_random_bytes(4, 5),
        "a standby wrote"
    );
    let sb = status_of(bcfg.port).expect("standby answers status");
    assert_eq!(sb.role, heartbeat_wire::Role::Standby);
    let ea = status_of(acfg.port).unwrap().epoch;

    a.signal(Signal::SIGKILL);
    let sb = poll_until(WAIT, || {
        status_of(bcfg.port).filter(|s| s.role == heartbeat_wire::Role::Serving)
    })
    .expect("standby takes over after SIGKILL of the holder");
    assert!(sb.epoch > ea, "epoch must grow: {} -> {}", ea, sb.epoch);
    let r = raw(bcfg.port, &put_request("bytes 0-3/*", b"abcd"));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-heartbeat-epoch"), Some(&*sb.epoch.to_string()));
    assert_eq!(disk.read(0, 4), b"abcd");
}

#[test]
fn sigterm_exits_zero_and_releases_the_role() {
    let disk = TempDisk::random(SIZE, 6);
    let (mut a, acfg) = start(&disk, "file", &[]);
    poll_until(WAIT, || {
        status_of(acfg.port).filter(|s| s.role == heartbeat_wire::Role::Serving)
    })
    .expect("serves");
    let (_b, bcfg) = start(&disk, "file", &[]);
    a.signal(Signal::SIGTERM);
    let status = a.wait_exit(WAIT).expect("exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "log:\n{}", a.log());
    poll_until(WAIT, || {
        status_of(bcfg.port).filter(|s| s.role == heartbeat_wire::Role::Serving)
    })
    .expect("the standby takes over after an orderly release");
}

#[test]
fn a_resumed_frozen_holder_steps_down_and_the_standby_serves() {
    let disk = TempDisk::random(SIZE, 7);
    let (a, acfg) = start(&disk, "file", &["--freeze-threshold-ms", "1000"]);
    poll_until(WAIT, || {
        status_of(acfg.port).filter(|s| s.role == heartbeat_wire::Role::Serving)
    })
    .expect("first server serves");
    let ea = status_of(acfg.port).unwrap().epoch;
    let (_b, bcfg) = start(&disk, "file", &[]);
    a.signal(Signal::SIGSTOP);
    std::thread::sleep(Duration::from_millis(2500));
    a.signal(Signal::SIGCONT);
    // The resumed server must not serve under its old epoch: it steps down,
    // releases the lock, and the standby takes over with a higher epoch.
    let sb = poll_until(WAIT, || {
        status_of(bcfg.port).filter(|s| s.role == heartbeat_wire::Role::Serving)
    })
    .expect("standby takes over after the holder was frozen");
    assert!(sb.epoch > ea);
    let sa = status_of(acfg.port).expect("resumed server answers status");
    assert_ne!(sa.role, heartbeat_wire::Role::Serving, "{sa:?}");
    // Once it has re-read the sidecar, its 503 points at the new holder.
    let r = poll_until(WAIT, || {
        let r = raw(
            acfg.port,
            b"GET / HTTP/1.1\r\nHost: t\r\nRange: bytes=0-511\r\n\r\n",
        );
        assert_eq!(r.status, 503);
        (r.header("x-heartbeat-serving-url").is_some()).then_some(r)
    })
    .expect("the resumed server learns the new holder's URL");
    assert_eq!(r.header("x-heartbeat-serving-url"), Some(&*bcfg.url()));
}
