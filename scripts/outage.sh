#!/usr/bin/env bash
# Measures "outage length -> outcome" for the README: for each backend and outage length,
# NODES `constructr node` processes form one cluster, the coordination service is killed for
# that many seconds and started again, and the run reports how many processes exited or left
# the cluster and how long the slowest took to be registered again. One JSON line per run
# (`integration-tests/tests/outages.rs`, test `measure_outage_outcome`), then a markdown table.
#
#   scripts/outage.sh
#   BACKENDS="etcd consul" OUTAGES="1 5 20" NODES=5 scripts/outage.sh
#   SETTINGS_EXTRA='ignore-refresh-failures = true' scripts/outage.sh   # extra settings lines
#
# Backends: etcd (one member), etcd-cluster (three members, all killed), consul (dev agent:
# loses its data on restart), consul-persistent (single server with a data dir).
# Not part of CI and not fast: every run forms a cluster and waits out its outage.
set -euo pipefail
cd "$(dirname "$0")/.."

BACKENDS=${BACKENDS:-"etcd etcd-cluster consul consul-persistent"}
OUTAGES=${OUTAGES:-"1 3 10 30"}
NODES=${NODES:-3}
SETTINGS_EXTRA=${SETTINGS_EXTRA:-}

log() { echo "[outage] $*" >&2; }

bash scripts/install-deps.sh
eval "$(bash scripts/images.sh)"
command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest

log "building the test and the constructr binary"
cargo build -p constructr-cli --bin constructr >&2
cargo nextest run -p integration-tests --test outages --no-run >&2

work=$(mktemp -d /tmp/constructr-outage.XXXXXX)
trap 'rm -rf "$work"' EXIT
rows=()
for backend in $BACKENDS; do
    for seconds in $OUTAGES; do
        log "$backend: $NODES nodes, outage ${seconds}s"
        run_log="$work/$backend-$seconds.log"
        if ! CONSTRUCTR_OUTAGE_BACKEND=$backend CONSTRUCTR_OUTAGE_SECONDS=$seconds \
            CONSTRUCTR_OUTAGE_NODES=$NODES CONSTRUCTR_OUTAGE_SETTINGS_EXTRA=$SETTINGS_EXTRA \
            cargo nextest run -p integration-tests --test outages --run-ignored only \
            --no-capture -E 'test(=measure_outage_outcome)' >"$run_log" 2>&1; then
            log "$backend ${seconds}s: the run failed; its last lines:"
            tail -n 30 "$run_log" >&2
            rows+=("| $backend | $seconds | | $NODES | run failed | | | |")
            continue
        fi
        sed -n 's/^OUTAGE_RESULT //p' "$run_log"
        row=$(sed -n 's/^OUTAGE_ROW //p' "$run_log")
        rows+=("$row")
    done
done

echo
echo "| backend | outage (s) | down (s) | nodes | exited | left the cluster | max time to re-register (ms) | same epoch |"
echo "|---|---:|---:|---:|---:|---:|---:|---|"
printf '%s\n' "${rows[@]}"
