#!/usr/bin/env bash
# Formation time of 20 nodes started together against real coordination services (etcd,
# Consul, ZooKeeper), our
# defaults side by side with the ConstructR-compatible mode (`--compat constructr`: no watch,
# fixed retry-delay waits, ConstructR's defaults). Prints a table of medians.
#   scripts/bench.sh [ROUNDS]   (default 7 rounds per mode; NODES=N, BACKENDS="etcd ...")
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-7}
nodes=${NODES:-20}
bash scripts/install-deps.sh >/dev/null 2>&1
eval "$(bash scripts/images.sh 2>/dev/null)"
cargo build --quiet --release -p constructr-cli
bin=target/release/constructr

containers=()
cleanup() { for c in "${containers[@]}"; do docker rm -f "$c" >/dev/null 2>&1 || true; done; }
trap cleanup EXIT

port_of() { docker port "$1" "$2" | head -n1 | sed 's/.*://'; }

etcd=$(docker run -d -p 127.0.0.1::2379 "$CONSTRUCTR_ETCD_IMAGE" --name bench \
    --data-dir /tmp/etcd --listen-client-urls http://0.0.0.0:2379 \
    --advertise-client-urls http://127.0.0.1:2379)
containers+=("$etcd")
etcd_url="http://127.0.0.1:$(port_of "$etcd" 2379/tcp)"
for _ in $(seq 50); do "$bin" nodes --backend etcd --endpoints "$etcd_url" >/dev/null 2>&1 && break; sleep 0.2; done

backends=("etcd --endpoints $etcd_url")
if "$bin" demo --help | grep -q -- '--consul-address'; then
    consul=$(docker run -d -p 127.0.0.1::8500 "$CONSTRUCTR_CONSUL_IMAGE" agent -dev -client 0.0.0.0)
    containers+=("$consul")
    consul_url="http://127.0.0.1:$(port_of "$consul" 8500/tcp)"
    for _ in $(seq 100); do curl -sf "$consul_url/v1/status/leader" | grep -q ':' && break; sleep 0.2; done
    backends+=("consul --consul-address $consul_url")
fi

if "$bin" demo --help | grep -q -- '--zookeeper'; then
    zk=$(docker run -d -p 127.0.0.1::2181 "$CONSTRUCTR_ZOOKEEPER_IMAGE")
    containers+=("$zk")
    zk_port=$(port_of "$zk" 2181/tcp)
    for _ in $(seq 150); do
        [[ $( (exec 3<>/dev/tcp/127.0.0.1/"$zk_port" && printf ruok >&3 && cat <&3) 2>/dev/null) == imok ]] && break
        sleep 0.2
    done
    backends+=("zookeeper --zookeeper 127.0.0.1:$zk_port")
fi

# BACKENDS="zookeeper etcd" keeps only those (default: every backend started above).
if [[ -n ${BACKENDS:-} ]]; then
    kept=()
    for b in "${backends[@]}"; do
        [[ " $BACKENDS " == *" ${b%% *} "* ]] && kept+=("$b")
    done
    backends=("${kept[@]}")
fi

results=$(mktemp)
for b in "${backends[@]}"; do
    for mode in default constructr; do
        compat=()
        [[ $mode == constructr ]] && compat=(--compat constructr)
        for r in $(seq "$rounds"); do
            # shellcheck disable=SC2086
            "$bin" demo --backend $b --nodes "$nodes" --json "${compat[@]}" \
                | python3 -c "import sys,json; d=json.load(sys.stdin); print('${b%% *}', '$mode', d['formation_ms'], d['clusters'], d['coordination_requests'])" >> "$results"
        done
    done
done

python3 - "$results" "$nodes" <<'PY'
import sys, statistics, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    backend, mode, ms, clusters, reqs = line.split()
    rows[(backend, mode)].append((float(ms), int(clusters), int(reqs)))
print(f"| backend | mode | nodes | median formation ms | min–max ms | clusters per run | median requests |")
print("|---|---|---|---|---|---|---|")
for (backend, mode), v in sorted(rows.items()):
    ms = [x[0] for x in v]
    print(f"| {backend} | {mode} | {sys.argv[2]} | {statistics.median(ms):.1f} | {min(ms):.1f}–{max(ms):.1f} | {sorted(set(x[1] for x in v))} | {statistics.median([x[2] for x in v]):.0f} |")
for backend in sorted({b for b, _ in rows}):
    if (backend, 'default') in rows and (backend, 'constructr') in rows:
        d = statistics.median(x[0] for x in rows[(backend, 'default')])
        c = statistics.median(x[0] for x in rows[(backend, 'constructr')])
        print(f"{backend}: default is {c / d:.1f}x faster than the ConstructR mode (median)")
PY
