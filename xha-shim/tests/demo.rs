//! `xha-shim demo` and `xha-shim status` against the real daemons, built
//! here and taken from target/debug beside the xha-shim binary under test.
//! No timing assertions: the emulator's own verdicts, with shortened but
//! generous XHA timeouts, decide.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{bin_dir, build_daemons, processes_mentioning};

fn xha_shim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xha-shim"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run xha-shim")
}

/// `xha-shim status` with a per-server timeout far above the 800 ms
/// default, so that a live server slow to answer on a loaded machine is not
/// shown as unreachable (a killed one is refused at once either way).
fn status(args: &[&str]) -> Output {
    let mut all = vec!["status", "--timeout-ms", "5000"];
    all.extend_from_slice(args);
    xha_shim(&all)
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(out)))
}

#[test]
fn demo_survives_kills_of_the_serving_server() {
    build_daemons();
    let out = xha_shim(&[
        "demo",
        "--duration",
        "12",
        "--kill-every",
        "4",
        "--timeout-base",
        "10",
        "--interval-ms",
        "500",
        "--json",
    ]);
    let r = json(&out);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(r["mode"], "failover");
    assert_eq!(r["servers"].as_array().unwrap().len(), 3);
    assert!(!r["kills"].as_array().unwrap().is_empty(), "{r}");
    assert!(r["takeover_count"].as_u64().unwrap() >= 1, "{r}");
    assert_eq!(r["any_hurt"], false);
    let hosts = r["emulation"]["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 3);
    for h in hosts {
        assert_eq!(h["verdict"], "ok", "{h}");
        assert!(h["successful_cycles"].as_u64().unwrap() >= 5, "{h}");
    }
    // Every takeover went to another server with a higher epoch.
    let kills = r["kills"].as_array().unwrap();
    for t in r["takeovers"].as_array().unwrap() {
        assert_eq!(t["same_server"], false, "{t}");
        assert!(t["epoch"].as_u64().unwrap() >= 2, "{t}");
    }
    assert_ne!(kills[0]["url"], r["takeovers"][0]["url"]);
}

#[test]
fn demo_without_failover_names_the_hurt_hosts() {
    build_daemons();
    // T2 = 3 s; the only server is down from 2 s to the end (outage T2 + 5 s).
    let out = xha_shim(&[
        "demo",
        "--no-failover",
        "--duration",
        "10",
        "--kill-every",
        "2",
        "--timeout-base",
        "10",
        "--interval-ms",
        "500",
        "--sf-timeout-ms",
        "3000",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Not a terminal: compact progress lines, not ANSI redraws.
    assert!(!stdout.contains('\x1b'), "{stdout}");
    // A line at the start, one a second in between and one at the end.
    // Each prints the elapsed time when it was printed, which a loaded
    // machine can push past the round second (t=1.1s): count the lines,
    // do not match a time. Without the in-between ones there would be 2.
    let progress = stdout.lines().filter(|l| l.starts_with("t=")).count();
    assert!(progress >= 3, "{progress} progress lines: {stdout}");
    let verdict = stdout
        .lines()
        .find(|l| l.starts_with("VERDICT:"))
        .unwrap_or_else(|| panic!("no verdict: {stdout}"));
    assert!(
        verdict.contains("LOST THE STATEFILE") || verdict.contains("FENCED"),
        "{verdict}"
    );
    for h in 0..3 {
        assert!(verdict.contains(&h.to_string()), "host {h}: {verdict}");
        assert!(
            stdout.contains(&format!("host {h}: lost statefile access"))
                || stdout.contains(&format!("host {h}: fenced")),
            "host {h}: {stdout}"
        );
    }
    assert!(stdout.contains("mode: no-failover"), "{stdout}");
}

#[test]
fn demo_names_a_missing_daemon_and_the_build_command() {
    let empty = tempfile::tempdir().unwrap();
    let out = xha_shim(&["demo", "--bin-dir", empty.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("http-disk-server not found"), "{err}");
    assert!(err.contains("cargo build --bins"), "{err}");
}

#[test]
fn an_interrupted_demo_leaves_no_daemon_behind() {
    build_daemons();
    let mut child = Command::new(env!("CARGO_BIN_EXE_xha-shim"))
        .args(["demo", "--duration", "60", "--timeout-base", "10"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let dir = first
        .strip_prefix("demo: work directory ")
        .and_then(|r| r.split(' ').next())
        .unwrap_or_else(|| panic!("first line: {first}"))
        .to_owned();
    for line in lines.by_ref() {
        if line.unwrap().starts_with("t=") {
            break;
        }
    }
    assert!(
        processes_mentioning(&dir).len() >= 6,
        "{:?}",
        processes_mentioning(&dir)
    );
    // SAFETY: plain kill(2) of our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{rest:?}");
    assert!(rest.iter().any(|l| l.contains("INTERRUPTED")), "{rest:?}");
    assert!(
        processes_mentioning(&dir).is_empty(),
        "{:?}",
        processes_mentioning(&dir)
    );
    assert!(!Path::new(&dir).exists(), "work dir {dir} left behind");
}

/// One http-disk-server on a shared disk (file arbiter), killed on drop.
struct DiskServer {
    child: Child,
    url: String,
}

impl DiskServer {
    fn start(disk: &Path, log: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new(bin_dir().join("http-disk-server"))
            .arg("--disk")
            .arg(disk)
            .args(["--ip", "127.0.0.1", "--port", &port.to_string()])
            .args(["--arbiter", "file"])
            // Only /v1/status is asked here, which needs no pool key.
            .arg("--allow-unauthenticated")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = lines.any(|l| l.is_ok_and(|l| l == "Server ready!"));
        assert!(ready, "http-disk-server on port {port} never ready");
        // Keep draining stdout.
        std::thread::spawn(move || lines.for_each(drop));
        DiskServer {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for DiskServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn roles(r: &serde_json::Value) -> Vec<String> {
    r["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            s["status"]["role"]
                .as_str()
                .unwrap_or("unreachable")
                .to_owned()
        })
        .collect()
}

#[test]
fn status_shows_who_serves_before_and_after_a_takeover() {
    build_daemons();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    let mut servers: Vec<Option<DiskServer>> = (0..3)
        .map(|i| {
            Some(DiskServer::start(
                &disk,
                &dir.path().join(format!("server-{i}.log")),
            ))
        })
        .collect();
    let urls: Vec<String> = servers
        .iter()
        .map(|s| s.as_ref().unwrap().url.clone())
        .collect();
    let list = urls.join(",");

    // The first one started holds the lock.
    let out = status(&["--urls", &list, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let r = json(&out);
    assert_eq!(roles(&r), ["serving", "standby", "standby"], "{r}");
    assert_eq!(r["serving"]["state"], "one");
    assert_eq!(r["serving"]["url"], urls[0].as_str());

    let out = status(&["--urls", &list]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    let row = |url: &str| -> String {
        table
            .lines()
            .find(|l| l.starts_with(url))
            .unwrap_or_else(|| panic!("no row for {url}: {table}"))
            .to_owned()
    };
    assert!(row(&urls[0]).contains("serving"), "{table}");
    assert!(row(&urls[1]).contains("standby"), "{table}");
    assert!(row(&urls[2]).contains("standby"), "{table}");
    assert!(
        table.contains(&format!("{} serves (epoch", urls[0])),
        "{table}"
    );

    // Only standbys asked: nobody serves, exit 1, said plainly.
    let out = status(&["--urls", &urls[1..].join(",")]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("NO server serves"),
        "{}",
        text(&out)
    );

    // SIGKILL the serving one; a standby takes over.
    servers[0] = None;
    let start = Instant::now();
    let r = loop {
        let out = status(&["--urls", &list, "--json"]);
        let r = json(&out);
        if out.status.code() == Some(0) {
            break r;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no takeover: {r}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let new = r["serving"]["url"].as_str().unwrap().to_owned();
    assert_ne!(new, urls[0]);
    assert!(r["serving"]["epoch"].as_u64().unwrap() >= 2, "{r}");
    assert_eq!(roles(&r)[0], "unreachable");

    let out = status(&["--urls", &list]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    let killed = table.lines().find(|l| l.starts_with(&urls[0])).unwrap();
    assert!(killed.contains("UNREACHABLE"), "{table}");
    let serving = table.lines().find(|l| l.starts_with(&new)).unwrap();
    assert!(serving.contains("serving"), "{table}");
    assert!(table.contains(&format!("{new} serves (epoch")), "{table}");
}

#[test]
fn linstor_cli_is_mounted() {
    let out = xha_shim(&["linstor", "urls", "--help"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--volume"));
    // A controller nobody listens on: LINSTOR's exit code 1 and a message.
    let out = xha_shim(&[
        "linstor",
        "urls",
        "--controller",
        "http://127.0.0.1:1",
        "--volume",
        "xcp-persistent-ha-statefile",
        "--port",
        "8076",
        "--timeout",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(!out.stderr.is_empty(), "{}", text(&out));
}
