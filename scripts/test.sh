#!/usr/bin/env bash
# Runs every test of the workspace on a fresh machine of this kind:
# installs protoc & co, builds the offline test images (etcd, Consul, Serf) if missing,
# then runs all unit, simulation, conformance and Docker integration tests.
# Set CONSTRUCTR_SKIP_DOCKER=1 to skip the Docker-based tests (they say so when skipped).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
if [[ "${CONSTRUCTR_SKIP_DOCKER:-0}" != 1 ]]; then
    # Prints `export CONSTRUCTR_*_IMAGE=...` lines for the locally built images.
    eval "$(bash scripts/images.sh)"
fi

command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest
cargo nextest run --workspace --all-features --no-fail-fast "$@"
cargo test --workspace --all-features --doc
