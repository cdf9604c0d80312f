//! Helpers shared by the tests that run the real daemons: building them
//! beside the xha-shim under test and finding leftover processes.
#![allow(dead_code)] // each test crate uses its own subset

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xha-shim sits in the workspace")
        .to_path_buf()
}

/// target/debug (or wherever cargo put the xha-shim under test).
pub fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_xha-shim"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Builds the daemons once per test process (a no-op when fresh), so
/// xha-shim finds current ones beside itself.
pub fn build_daemons() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(workspace_root())
            .args([
                "build",
                "--quiet",
                "--bin",
                "http-disk-server",
                "--bin",
                "nbd-http-server",
                "--bin",
                "xha-shim",
            ])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build of the daemons failed");
        for d in ["http-disk-server", "nbd-http-server"] {
            assert!(
                bin_dir().join(d).is_file(),
                "{d} not in {}",
                bin_dir().display()
            );
        }
    });
}

/// Processes whose command line mentions `needle` (to find leftovers).
/// Zombies (empty command line) do not count.
pub fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if !e
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                found.push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
            }
        }
    }
    found
}
