//! The `xha-shim` binary end to end on a plain temp file.

use std::process::Command;

fn xha_shim(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_xha-shim"))
        .args(args)
        .output()
        .expect("run xha-shim")
}

fn statefile(dir: &tempfile::TempDir) -> String {
    let p = dir.path().join("statefile");
    std::fs::write(&p, vec![0u8; 4 << 20]).unwrap();
    p.to_str().unwrap().to_string()
}

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: stdout {} stderr {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn init_inspect_heartbeat_inspect() {
    let dir = tempfile::tempdir().unwrap();
    let sf = statefile(&dir);
    let gen = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
    let out = xha_shim(&["init", &sf, "--hosts", "3", "--gen-uuid", gen]);
    assert!(out.status.success(), "{out:?}");

    let out = xha_shim(&["inspect", &sf]);
    assert!(out.status.success(), "{out:?}");
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("pool state      init"), "{table}");
    assert!(
        table.contains("generation uuid 0f1e2d3c4b5a69788796a5b4c3d2e1f0"),
        "{table}"
    );
    assert!(table.contains("all sections valid"), "{table}");

    // Short test timings: a cycle every 200 ms, T2 = 10 s. "ok" means no
    // call took, and no host's section stood still, over T2/2 = 5 s; with
    // T2 = 2 s one 1 s stall of a loaded machine would have spoilt it.
    let out = xha_shim(&[
        "heartbeat",
        "--target",
        &sf,
        "--duration",
        "3",
        "--interval-ms",
        "200",
        "--sf-timeout-ms",
        "10000",
        "--jitter-ms",
        "50",
        "--json",
    ]);
    assert!(out.status.success(), "{out:?}");
    let report = json(&out);
    let hosts = report["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 3, "host count taken from the statefile");
    for h in hosts {
        assert_eq!(h["verdict"], "ok", "{h}");
        assert!(h["cycles"].as_u64().unwrap() >= 8, "{h}");
        assert_eq!(h["errors"]["read_errors"], 0);
    }

    let out = xha_shim(&["inspect", &sf, "--json"]);
    assert!(out.status.success(), "{out:?}");
    let ins = json(&out);
    assert_eq!(ins["all_checksums_ok"], true);
    for h in ins["hosts"].as_array().unwrap() {
        let seq = h["section"]["Ok"]["sequence"].as_u64().unwrap();
        assert!(seq >= 7, "{h}");
        assert_eq!(h["section"]["Ok"]["sfdomain"], serde_json::json!([0, 1, 2]));
    }
}

#[test]
fn heartbeat_with_a_short_timeout_base() {
    // t = 10 s: t2 = 2 s, T2 = 10 s, Ws = 25 s. Five seconds: 3 cycles each.
    let dir = tempfile::tempdir().unwrap();
    let sf = statefile(&dir);
    assert!(xha_shim(&["init", &sf, "--hosts", "2"]).status.success());
    let out = xha_shim(&[
        "heartbeat",
        "--target",
        &sf,
        "--target",
        &sf,
        "--hosts",
        "2",
        "--duration",
        "5",
        "--timeout-base",
        "10",
    ]);
    assert!(out.status.success(), "{out:?}");
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        table.contains("t2 2000 ms, T2 10000 ms, Ws 25000 ms"),
        "{table}"
    );
    assert!(table.contains("no host hurt"), "{table}");
}

#[test]
fn corrupt_statefile_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let sf = statefile(&dir);
    assert!(xha_shim(&["init", &sf, "--hosts", "2"]).status.success());
    let mut bytes = std::fs::read(&sf).unwrap();
    bytes[2 * 4096 + 12] ^= 1; // host 1's sequence, checksum not updated
    std::fs::write(&sf, &bytes).unwrap();

    let out = xha_shim(&["inspect", &sf]);
    assert_eq!(out.status.code(), Some(1));
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("host section 1: checksum"), "{table}");

    let out = xha_shim(&[
        "heartbeat",
        "--target",
        &sf,
        "--hosts",
        "2",
        "--duration",
        "1",
        "--interval-ms",
        "200",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("sf-access-lost"), "{table}");
}

#[test]
fn bad_arguments_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sf = statefile(&dir);
    let out = xha_shim(&["init", &sf, "--hosts", "65"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 to 64"));
    let out = xha_shim(&[
        "heartbeat",
        "--target",
        &sf,
        "--hosts",
        "2",
        "--timeout-base",
        "5",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let small = dir.path().join("small");
    std::fs::write(&small, vec![0u8; 4096]).unwrap();
    // A regular file grows on write; the image still ends up whole.
    assert!(xha_shim(&["init", small.to_str().unwrap(), "--hosts", "1"])
        .status
        .success());
    assert_eq!(std::fs::metadata(&small).unwrap().len(), 266_240);
}
