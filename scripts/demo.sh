#!/usr/bin/env bash
# The project's main job on one machine: builds in release and runs
# `xha-shim demo` (a local three-host cluster under a heartbeat load, the
# serving process killed partway, and XHA's verdict). Extra arguments go to
# the demo, e.g. `bash scripts/demo.sh --duration 30 --json`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release --quiet --bins
exec target/release/xha-shim demo "$@"
