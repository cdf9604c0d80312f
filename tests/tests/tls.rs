//! Issue 7, optional TLS: http-disk-server with `--tls-cert/--tls-key`
//! serves TLS only; nbd-http-server reaches `https://` URLs verified against
//! `--tls-ca`. Real NBD clients write through the TLS chain; a client that
//! trusts another CA writes nothing; plain HTTP to the TLS port gets no
//! service; bad certificate files are refused at start with a clear error.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use heartbeat_tests::{
    binary, require_tool, run_with_timeout, start_disk_server, start_nbd_server, Daemon,
    DiskServerConfig, NbdServerConfig, Profile, TempDisk,
};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};

const SIZE: u64 = 4 << 20;

/// PEM files of a throwaway CA and a server certificate for 127.0.0.1
/// (IP SAN) and localhost signed by it.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn make_pki(dir: &Path, tag: &str) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("heartbeat test CA {tag}"));
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let pki = Pki {
        ca: dir.join(format!("ca-{tag}.pem")),
        cert: dir.join(format!("server-{tag}.pem")),
        key: dir.join(format!("server-{tag}.key")),
    };
    std::fs::write(&pki.ca, ca.pem()).unwrap();
    std::fs::write(&pki.cert, cert.pem()).unwrap();
    std::fs::write(&pki.key, key.serialize_pem()).unwrap();
    pki
}

fn tls_server(disk: &TempDisk, pki: &Pki) -> (Daemon, DiskServerConfig) {
    let mut cfg = DiskServerConfig::new(&disk.path);
    cfg.arbiter = Some("none".into());
    cfg.extra = vec![
        "--tls-cert".into(),
        pki.cert.display().to_string(),
        "--tls-key".into(),
        pki.key.display().to_string(),
    ];
    let d = start_disk_server(&cfg, disk.dir.path()).expect("start http-disk-server with TLS");
    (d, cfg)
}

fn https_url(cfg: &DiskServerConfig) -> String {
    format!("https://{}:{}", cfg.ip, cfg.port)
}

fn qemu_io(socket: &Path, export: &str, cmds: &[&str]) -> (bool, String) {
    let mut args = vec![
        "--image-opts".to_string(),
        format!(
            "driver=nbd,server.type=unix,server.path={},export={export}",
            socket.display()
        ),
    ];
    for c in cmds {
        args.extend(["-c".to_string(), c.to_string()]);
    }
    let (st, out, err) =
        run_with_timeout(Command::new("qemu-io").args(&args), Duration::from_secs(30)).unwrap();
    let text = format!("{out}{err}");
    (
        st.success() && !text.contains("fail") && !text.contains("error"),
        text,
    )
}

#[test]
fn tls_chain_works_with_real_nbd_clients() {
    require_tool("qemu-io");
    require_tool("nbdinfo");
    let disk = TempDisk::zeroed(SIZE);
    let pki = make_pki(disk.dir.path(), "good");
    let (server, http) = tls_server(&disk, &pki);
    assert!(
        server.log().contains(&format!("url={}", https_url(&http))),
        "the default advertise URL is https: {}",
        server.log()
    );
    let mut nbd = NbdServerConfig::new(disk.file("nbd.sock"), vec![https_url(&http)]);
    nbd.extra = vec!["--tls-ca".into(), pki.ca.display().to_string()];
    let _n = start_nbd_server(&nbd, disk.dir.path()).unwrap();
    let (st, out, err) = run_with_timeout(
        Command::new("nbdinfo").args(["--size", &nbd.uri()]),
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(st.success(), "{err}");
    assert_eq!(out.trim(), SIZE.to_string());
    let (ok, text) = qemu_io(
        &nbd.socket,
        "statefile",
        &[
            "write -P 0xab 4096 1024",
            "read -P 0xab 4096 1024",
            "write -P 0x5c 1048576 65536",
            "read -P 0x5c 1048576 65536",
        ],
    );
    assert!(ok, "{text}");
    assert_eq!(disk.read(4096, 1024), vec![0xab; 1024]);
    assert_eq!(disk.read(1 << 20, 65536), vec![0x5c; 65536]);

    // Status is served on the same listener, over TLS.
    let status_url = format!("{}/v1/status", https_url(&http));
    let (st, out, err) = run_with_timeout(
        Command::new("curl").args([
            "-sS",
            "-m",
            "10",
            "--cacert",
            &pki.ca.display().to_string(),
            &status_url,
        ]),
        Duration::from_secs(20),
    )
    .unwrap();
    assert!(st.success() && out.contains("role"), "{out}{err}");
}

#[test]
fn plain_http_to_the_tls_listener_gets_no_service() {
    let disk = TempDisk::zeroed(SIZE);
    let pki = make_pki(disk.dir.path(), "good");
    let (_server, http) = tls_server(&disk, &pki);
    let (st, out, _err) = run_with_timeout(
        Command::new("curl").args([
            "-sS",
            "-m",
            "10",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            &format!("{}/v1/status", http.url()),
        ]),
        Duration::from_secs(20),
    )
    .unwrap();
    assert!(
        !st.success() && !out.contains("role"),
        "plain HTTP was served: {out}"
    );
    // A plain-HTTP chain cannot write either.
    let mut nbd = NbdServerConfig::new(disk.file("nbd.sock"), vec![http.url()]);
    nbd.device_size = Some(SIZE);
    nbd.extra = vec!["--request-deadline-ms".into(), "1500".into()];
    let _n = start_nbd_server(&nbd, disk.dir.path()).unwrap();
    let (ok, text) = qemu_io(&nbd.socket, "statefile", &["write -P 0xcd 0 4096"]);
    assert!(!ok, "a plain-HTTP write succeeded: {text}");
    assert_eq!(disk.read(0, 4096), vec![0; 4096]);
}

#[test]
fn a_client_trusting_another_ca_writes_nothing() {
    require_tool("qemu-io");
    let disk = TempDisk::zeroed(SIZE);
    let pki = make_pki(disk.dir.path(), "good");
    let other = make_pki(disk.dir.path(), "other");
    let (_server, http) = tls_server(&disk, &pki);
    let mut nbd = NbdServerConfig::new(disk.file("nbd.sock"), vec![https_url(&http)]);
    nbd.device_size = Some(SIZE);
    nbd.extra = vec![
        "--tls-ca".into(),
        other.ca.display().to_string(),
        "--request-deadline-ms".into(),
        "1500".into(),
    ];
    let n = start_nbd_server(&nbd, disk.dir.path()).unwrap();
    let (ok, text) = qemu_io(&nbd.socket, "statefile", &["write -P 0xcd 0 4096"]);
    assert!(
        !ok,
        "a write with an untrusted server certificate succeeded: {text}"
    );
    assert_eq!(disk.read(0, 4096), vec![0; 4096]);
    assert!(
        n.log().to_ascii_lowercase().contains("certificate"),
        "the log names the certificate problem: {}",
        n.log()
    );
}

#[test]
fn bad_tls_files_are_refused_at_start() {
    let disk = TempDisk::zeroed(SIZE);
    let pki = make_pki(disk.dir.path(), "good");
    let other = make_pki(disk.dir.path(), "other");
    let bin = binary("http-disk-server", Profile::Debug);
    let start = |cert: &Path, key: &Path| {
        let mut cfg = DiskServerConfig::new(&disk.path);
        cfg.arbiter = Some("none".into());
        cfg.extra = vec![
            "--tls-cert".into(),
            cert.display().to_string(),
            "--tls-key".into(),
            key.display().to_string(),
        ];
        let (st, out, err) =
            run_with_timeout(Command::new(&bin).args(cfg.args()), Duration::from_secs(20)).unwrap();
        assert!(!st.success(), "started with bad TLS files: {out}{err}");
        err
    };
    let err = start(&pki.cert, &other.key);
    assert!(err.contains("does not fit"), "{err}");
    let err = start(&disk.file("missing.pem"), &pki.key);
    assert!(err.contains("cannot read the TLS certificate"), "{err}");
    let err = start(&pki.cert, &pki.cert);
    assert!(err.contains("no usable private key"), "{err}");

    // The client: an https URL needs --tls-ca.
    let nbd = NbdServerConfig::new(
        disk.file("nbd.sock"),
        vec!["https://127.0.0.1:1".to_string()],
    );
    let (st, out, err) = run_with_timeout(
        Command::new(binary("nbd-http-server", Profile::Debug)).args(nbd.args()),
        Duration::from_secs(20),
    )
    .unwrap();
    assert!(!st.success() && err.contains("--tls-ca"), "{out}{err}");
}

#[test]
fn failover_between_tls_servers() {
    require_tool("qemu-io");
    let disk = TempDisk::zeroed(SIZE);
    let pki = make_pki(disk.dir.path(), "good");
    // Two servers on one file with the `file` arbiter: the first one started
    // holds the role, the second is a standby that hints at it (https://).
    let start = || {
        let mut cfg = DiskServerConfig::new(&disk.path);
        cfg.arbiter = Some("file".into());
        cfg.extra = vec![
            "--tls-cert".into(),
            pki.cert.display().to_string(),
            "--tls-key".into(),
            pki.key.display().to_string(),
        ];
        let d = start_disk_server(&cfg, disk.dir.path()).expect("start http-disk-server");
        (d, cfg)
    };
    let (mut first, a) = start();
    let (_second, b) = start();
    let mut nbd = NbdServerConfig::new(disk.file("nbd.sock"), vec![https_url(&b), https_url(&a)]);
    nbd.device_size = Some(SIZE);
    nbd.extra = vec!["--tls-ca".into(), pki.ca.display().to_string()];
    let n = start_nbd_server(&nbd, disk.dir.path()).unwrap();
    let (ok, text) = qemu_io(&nbd.socket, "statefile", &["write -P 0x11 0 4096"]);
    assert!(ok, "{text}");
    assert_eq!(disk.read(0, 4096), vec![0x11; 4096]);

    first.kill_now();
    let started = std::time::Instant::now();
    loop {
        let (ok, text) = qemu_io(
            &nbd.socket,
            "statefile",
            &["write -P 0x22 0 4096", "read -P 0x22 0 4096"],
        );
        if ok {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no write after the serving TLS server died: {text}\n{}",
            n.log()
        );
    }
    assert_eq!(disk.read(0, 4096), vec![0x22; 4096]);
    let log = n.log();
    assert!(
        log.contains(&format!("upstream selected: {}", https_url(&a)))
            && log.contains(&format!("failover: now serving from {}", https_url(&b))),
        "the client started on the first server and moved to the second: {log}"
    );
}
