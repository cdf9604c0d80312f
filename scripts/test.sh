#!/usr/bin/env bash
# The project's test command: installs what the tests need, then checks
# formatting and lints, and runs every test (unit, end-to-end with real NBD
# clients and real processes).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace --bins
cargo test --workspace -- --test-threads=2
