#!/usr/bin/env bash
# Builds the CLI and starts a demo cluster: N nodes at once (default 5) on the in-memory
# backend, printing a timeline of state changes and a summary. Extra arguments go to
# `constructr demo` (e.g. `--nodes 100 --json`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh >/dev/null 2>&1 || bash scripts/install-deps.sh
cargo run --quiet --release -p constructr-cli -- demo "$@"
