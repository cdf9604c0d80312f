//! nbd-http-server's Prometheus page (`--metrics-listen`): scraped after real
//! NBD I/O (qemu-io) and after a failover between two http-disk-servers
//! (`file` arbiter), the counters must have moved. Both daemons' pages must
//! parse with the Prometheus project's own Python text parser
//! (`python3-prometheus-client`), not just with our greps.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use heartbeat_tests::cluster::DiskCluster;
use heartbeat_tests::*;

fn scrape(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect to the metrics listener");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("text/plain; version=0.0.4"), "{reply}");
    reply.split_once("\r\n\r\n").unwrap().1.to_owned()
}

/// The value of the sample whose name and labels start with `prefix`.
fn sample(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {prefix} in:\n{text}"))
}

/// Parse a metrics page with `prometheus_client.parser` and return the metric
/// family names it found; fails the test if the parser refuses the page.
fn prometheus_families(text: &str) -> Vec<String> {
    // A string continuation would strip Python's indentation: join lines.
    let script = [
        "import sys",
        "from prometheus_client.parser import text_string_to_metric_families",
        "for f in text_string_to_metric_families(sys.stdin.read()):",
        "    list(f.samples)",
        "    print(f.name)",
    ]
    .join("\n");
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", &script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run /usr/bin/python3 (python3-prometheus-client installed?)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus text parser refused the page: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Five 1 KiB writes, a read checking them, a flush (qemu-io).
fn nbd_io(uri: &str, round: u8) {
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "raw"]);
    for i in 0..5 {
        cmd.args(["-c", &format!("write -P {round} {} 1k", 4096 + i * 1024)]);
    }
    cmd.args([
        "-c",
        &format!("read -P {round} 4096 5k"),
        "-c",
        "flush",
        uri,
    ]);
    let (status, out, err) =
        run_with_timeout(&mut cmd, Duration::from_secs(60)).expect("run qemu-io");
    assert!(
        status.success() && !out.contains("Pattern verification failed"),
        "qemu-io failed: {out} {err}"
    );
}

#[test]
fn metrics_count_requests_latency_and_failover() {
    require_tool("qemu-io");
    let disk = TempDisk::zeroed(4 << 20);
    let dir = disk.dir.path().to_path_buf();
    let mut cluster = DiskCluster::start(&disk.path, 2, &dir, Profile::Debug, &[]).unwrap();
    let first = cluster.wait_for_serving(Duration::from_secs(10)).unwrap();
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let mut nbd = NbdServerConfig::new(dir.join("nbd.sock"), cluster.urls());
    nbd.extra = vec![
        "--no-attach".into(),
        "--metrics-listen".into(),
        metrics_addr.clone(),
    ];
    let _nbd = start_nbd_server(&nbd, &dir).unwrap();

    let before = scrape(&metrics_addr);
    let families = prometheus_families(&before);
    for family in [
        "nbd_http_requests",
        "nbd_http_request_duration_seconds",
        "nbd_http_upstream_failovers",
    ] {
        assert!(
            families.iter().any(|f| f == family),
            "{family} missing: {families:?}"
        );
    }
    assert_eq!(
        sample(
            &before,
            "nbd_http_requests_total{volume=\"statefile\",command=\"write\",result=\"ok\"}"
        ),
        0.0
    );

    nbd_io(&nbd.uri(), 1);
    let after = scrape(&metrics_addr);
    let writes = "nbd_http_requests_total{volume=\"statefile\",command=\"write\",result=\"ok\"}";
    let reads = "nbd_http_requests_total{volume=\"statefile\",command=\"read\",result=\"ok\"}";
    assert!(sample(&after, writes) >= 5.0, "{after}");
    assert!(sample(&after, reads) >= 1.0, "{after}");
    assert!(
        sample(
            &after,
            "nbd_http_requests_total{volume=\"statefile\",command=\"flush\",result=\"ok\"}"
        ) >= 1.0,
        "{after}"
    );
    assert!(
        sample(
            &after,
            "nbd_http_request_duration_seconds_count{volume=\"statefile\",command=\"write\"}"
        ) >= 5.0,
        "{after}"
    );
    assert_eq!(
        sample(&after, "nbd_http_requests_in_flight{volume=\"statefile\"}"),
        0.0
    );
    let first_url = &cluster.urls()[first];
    assert!(
        after.contains(&format!(
            "nbd_http_upstream_info{{volume=\"statefile\",url=\"{first_url}\""
        )),
        "{after}"
    );
    assert_eq!(
        sample(
            &after,
            "nbd_http_upstream_failovers_total{volume=\"statefile\"}"
        ),
        0.0
    );

    // Kill the serving server: the next requests fail over to the other one.
    cluster.servers[first].as_mut().unwrap().kill_now();
    let next = cluster.wait_for_serving(Duration::from_secs(10)).unwrap();
    assert_ne!(next, first);
    nbd_io(&nbd.uri(), 2);
    let failed_over = scrape(&metrics_addr);
    assert!(
        sample(
            &failed_over,
            "nbd_http_upstream_failovers_total{volume=\"statefile\"}"
        ) >= 1.0,
        "{failed_over}"
    );
    assert!(
        sample(
            &failed_over,
            "nbd_http_upstream_last_failover_seconds{volume=\"statefile\"}"
        ) > 0.0,
        "{failed_over}"
    );
    assert!(
        sample(
            &failed_over,
            "nbd_http_upstream_errors_total{volume=\"statefile\",kind=\"transport\"}"
        ) >= 1.0,
        "{failed_over}"
    );
    let next_url = &cluster.urls()[next];
    assert!(
        failed_over.contains(&format!(
            "nbd_http_upstream_info{{volume=\"statefile\",url=\"{next_url}\""
        )),
        "{failed_over}"
    );
    assert!(sample(&failed_over, writes) >= 10.0, "{failed_over}");
    assert!(!prometheus_families(&failed_over).is_empty());

    // The serving http-disk-server's page parses too, and counted the writes.
    let server_page = http_disk_server_metrics(&cluster.urls()[next]);
    assert!(
        !prometheus_families(&server_page).is_empty(),
        "http-disk-server metrics page is empty"
    );
    assert_eq!(
        sample(
            &failed_over,
            "nbd_http_kernel_reconnects_total{volume=\"statefile\"}"
        ),
        0.0
    );
}

/// `GET /metrics` from an http-disk-server (no auth needed for metrics).
fn http_disk_server_metrics(url: &str) -> String {
    let addr = url.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).expect("connect to http-disk-server");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    reply.split_once("\r\n\r\n").unwrap().1.to_owned()
}
