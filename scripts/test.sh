#!/usr/bin/env bash
# The project's test command: installs what the tests need, then checks
# formatting and lints, runs every test (unit, end-to-end with real NBD
# clients and real processes, QEMU VMs), verifies the systemd units, and
# gives every fuzz target a short smoke run.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace --bins
cargo test --workspace -- --test-threads=2
bash deploy/check-units.sh
bash fuzz/run.sh "${FUZZ_SMOKE_SECONDS:-10}"
