#!/usr/bin/env bash
# The benchmark of record: N nodes started together in one process (`constructr demo`)
# against real coordination services in local containers, our defaults side by side with
# the ConstructR-compatible mode (`--compat constructr`: no watch, fixed retry-delay waits,
# ConstructR's defaults) in the same run. Per backend, N and mode: the median formation
# time of ROUNDS rounds, min–max, clusters formed, nodes registered, coordination requests
# per node (requests on the wire for etcd and Consul), node entries read per node and peak
# RSS; per backend at STEADY_NODES nodes, the steady-state requests per node per refresh.
#
# It writes the table into README.md (between the `bench:begin`/`bench:end` markers) and
# the plot docs/benchmark.png (formation time against N, log–log, both modes, per backend;
# Debian's python3-matplotlib, installed if missing), and prints both tables.
#
#   scripts/bench.sh [ROUNDS]          (default 5 rounds per backend, N and mode)
#   NODES="20 100 1000 5000"           node counts
#   BACKENDS="etcd etcd3 consul zookeeper"
#   ZOOKEEPER_MAX_NODES=100            ZooKeeper's registrations contend on one version (README)
#   STEADY_NODES=1000 HOLD=5           steady state: nodes, refresh intervals held
#   WRITE=0                            print only; leave README.md and the plot alone
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
nodes_list=${NODES:-20 100 1000 5000}
backends_wanted=${BACKENDS:-etcd etcd3 consul zookeeper}
zk_max=${ZOOKEEPER_MAX_NODES:-100}
steady_nodes=${STEADY_NODES:-1000}
hold=${HOLD:-5}
write=${WRITE:-1}

bash scripts/install-deps.sh >/dev/null 2>&1
if ! /usr/bin/python3 -c 'import matplotlib' 2>/dev/null; then
    echo "[bench] installing python3-matplotlib (Debian) for the plot" >&2
    SUDO=""; [[ $(id -u) == 0 ]] || SUDO=sudo
    $SUDO apt-get -o APT::Sandbox::User=root -y -q install --no-install-recommends python3-matplotlib >/dev/null 2>&1 \
        || { $SUDO apt-get -o APT::Sandbox::User=root -q update >/dev/null \
             && $SUDO apt-get -o APT::Sandbox::User=root -y -q install --no-install-recommends python3-matplotlib >/dev/null; }
fi
eval "$(bash scripts/images.sh 2>/dev/null)"
cargo build --quiet --release -p constructr-cli
bin=target/release/constructr

containers=()
network=""
cleanup() {
    for c in "${containers[@]}"; do docker rm -f "$c" >/dev/null 2>&1 || true; done
    [[ -z $network ]] || docker network rm "$network" >/dev/null 2>&1 || true
}
trap cleanup EXIT

port_of() { docker port "$1" "$2" | head -n1 | sed 's/.*://'; }
wanted() { [[ " $backends_wanted " == *" $1 "* ]]; }
wait_etcd() {
    for _ in $(seq 100); do "$bin" nodes --backend etcd --endpoints "$1" >/dev/null 2>&1 && return; sleep 0.2; done
    echo "etcd at $1 did not come up" >&2; exit 1
}

# Each backend runs alone: its containers start before its runs and stop after them, so
# that no other service shares the two cores while it is measured.
options=""
start_backend() { # name → sets $options, the demo's backend options
    case $1 in
    etcd)
        c=$(docker run -d -p 127.0.0.1::2379 "$CONSTRUCTR_ETCD_IMAGE" --name bench \
            --data-dir /tmp/etcd --listen-client-urls http://0.0.0.0:2379 \
            --advertise-client-urls http://127.0.0.1:2379)
        containers+=("$c")
        url="http://127.0.0.1:$(port_of "$c" 2379/tcp)"
        wait_etcd "$url"
        options="--backend etcd --endpoints $url"
        ;;
    etcd3)
        network="constructr-bench-$$"
        docker network create "$network" >/dev/null
        cluster=""
        for i in 1 2 3; do cluster+="${cluster:+,}m$i=http://bench-m$i-$$:2380"; done
        urls=""
        for i in 1 2 3; do
            c=$(docker run -d --network "$network" --name "bench-m$i-$$" -p 127.0.0.1::2379 \
                "$CONSTRUCTR_ETCD_IMAGE" --name "m$i" --data-dir /tmp/etcd \
                --listen-client-urls http://0.0.0.0:2379 --advertise-client-urls "http://bench-m$i-$$:2379" \
                --listen-peer-urls http://0.0.0.0:2380 --initial-advertise-peer-urls "http://bench-m$i-$$:2380" \
                --initial-cluster "$cluster" --initial-cluster-token "bench-$$" --initial-cluster-state new)
            containers+=("$c")
            urls+="${urls:+,}http://127.0.0.1:$(port_of "$c" 2379/tcp)"
        done
        wait_etcd "$urls"
        options="--backend etcd --endpoints $urls"
        ;;
    consul)
        c=$(docker run -d -p 127.0.0.1::8500 "$CONSTRUCTR_CONSUL_IMAGE" agent -dev -client 0.0.0.0)
        containers+=("$c")
        url="http://127.0.0.1:$(port_of "$c" 8500/tcp)"
        for _ in $(seq 100); do curl -sf "$url/v1/status/leader" | grep -q ':' && break; sleep 0.2; done
        options="--backend consul --consul-address $url"
        ;;
    zookeeper)
        c=$(docker run -d -p 127.0.0.1::2181 "$CONSTRUCTR_ZOOKEEPER_IMAGE")
        containers+=("$c")
        port=$(port_of "$c" 2181/tcp)
        for _ in $(seq 150); do
            [[ $( (exec 3<>/dev/tcp/127.0.0.1/"$port" && printf ruok >&3 && cat <&3) 2>/dev/null) == imok ]] && break
            sleep 0.2
        done
        options="--backend zookeeper --zookeeper 127.0.0.1:$port"
        ;;
    esac
}
stop_backend() {
    cleanup
    containers=()
    network=""
}

results=$(mktemp)
steady=$(mktemp)
run=0
record() { # backend mode nodes json...
    python3 -c '
import sys, json
b, m, n = sys.argv[1:4]
d = json.load(sys.stdin)
print(json.dumps({"backend": b, "mode": m, "n": int(n), **{k: d.get(k) for k in (
    "formation_ms", "clusters", "registered", "requests_per_node", "entries_read_per_node",
    "peak_rss_kib", "requests_per_node_per_refresh", "requests_counted_on")}}))' "$@"
}
for b in etcd etcd3 consul zookeeper; do
    wanted "$b" || continue
    start_backend "$b"
    for n in $nodes_list; do
        if [[ $b == zookeeper ]] && ((n > zk_max)); then continue; fi
        for r in $(seq "$rounds"); do
            for mode in default constructr; do
                compat=()
                [[ $mode == constructr ]] && compat=(--compat constructr)
                run=$((run + 1))
                echo "[bench] $b n=$n $mode round $r" >&2
                # shellcheck disable=SC2086
                "$bin" demo $options --nodes "$n" --json --cluster "bench-$$-$run" "${compat[@]}" 2>/dev/null \
                    | record "$b" "$mode" "$n" >> "$results" || echo "[bench] run failed" >&2
            done
        done
    done
    # Steady state: refresh every 2 s (ttl-factor 6: Consul's session TTL of 12 s), held
    # for HOLD refresh intervals after formation.
    cfg=$(mktemp)
    printf 'refresh-interval = "2s"\nttl-factor = 6.0\n' > "$cfg"
    n=$steady_nodes
    if [[ $b == zookeeper ]] && ((n > zk_max)); then n=$zk_max; fi
    echo "[bench] $b steady state, $n nodes, $hold refreshes" >&2
    # shellcheck disable=SC2086
    "$bin" demo $options --nodes "$n" --json --cluster "bench-$$-steady-$b" \
        --config "$cfg" --hold-refreshes "$hold" 2>/dev/null \
        | record "$b" steady "$n" >> "$steady" || echo "[bench] steady run failed" >&2
    stop_backend
done

mkdir -p docs
/usr/bin/python3 - "$results" "$steady" "$rounds" "$write" "$hold" <<'PY'
import sys, json, statistics, collections, re
results, steady_file, rounds, write, hold = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1", sys.argv[5]
names = {"etcd": "etcd", "etcd3": "etcd, 3 members", "consul": "Consul", "zookeeper": "ZooKeeper"}
order = ["etcd", "etcd3", "consul", "zookeeper"]
rows = collections.defaultdict(list)
for line in open(results):
    d = json.loads(line)
    rows[(d["backend"], d["n"], d["mode"])].append(d)
med = lambda xs: statistics.median(xs) if xs else float("nan")
out = []
out.append(f"| backend | nodes | mode | median formation ms | min–max ms | × faster | clusters | registered | requests / node | entries read / node | peak RSS MiB | RSS KiB / node |")
out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
series = collections.defaultdict(list)
for b in order:
    for n in sorted({k[1] for k in rows if k[0] == b}):
        for mode in ("default", "constructr"):
            v = rows.get((b, n, mode))
            if not v:
                continue
            ms = [x["formation_ms"] for x in v]
            other = rows.get((b, n, "constructr"))
            ratio = ""
            if mode == "default" and other:
                ratio = f"{med([x['formation_ms'] for x in other]) / med(ms):.1f}×"
            rss = med([x["peak_rss_kib"] for x in v])
            out.append(
                f"| {names[b]} | {n} | {'default' if mode == 'default' else '`--compat constructr`'} "
                f"| {med(ms):.1f} | {min(ms):.1f}–{max(ms):.1f} | {ratio} "
                f"| {','.join(str(c) for c in sorted({x['clusters'] for x in v}))} "
                f"| {min(x['registered'] for x in v)}–{max(x['registered'] for x in v)} "
                f"| {med([x['requests_per_node'] for x in v]):.2f} "
                f"| {med([x['entries_read_per_node'] for x in v]):.2f} "
                f"| {rss / 1024:.1f} | {rss / n:.1f} |")
            series[(b, mode)].append((n, med(ms)))
steady_rows = ["| backend | nodes | refresh interval | refreshes held | requests / node / refresh |", "|---|---|---|---|---|"]
for line in open(steady_file):
    d = json.loads(line)
    steady_rows.append(f"| {names[d['backend']]} | {d['n']} | 2 s | {hold} | {d['requests_per_node_per_refresh']} |")
table = "\n".join(out)
steady_table = "\n".join(steady_rows)
print(table)
print()
print(steady_table)

if write:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    colours = {"etcd": "tab:blue", "etcd3": "tab:green", "consul": "tab:red", "zookeeper": "tab:purple"}
    for (b, mode), pts in sorted(series.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1])):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts],
                marker="o" if mode == "default" else "s",
                linestyle="-" if mode == "default" else "--",
                color=colours[b], label=f"{names[b]}, {'default' if mode == 'default' else 'ConstructR mode'}")
    ax.set_xscale("log"); ax.set_yscale("log")
    ax.set_xlabel("nodes started together (one process)")
    ax.set_ylabel(f"formation time, ms (median of {rounds})")
    ax.set_title("constructr: cluster formation time (scripts/bench.sh)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig("docs/benchmark.png")
    readme = open("README.md").read()
    block = ("<!-- bench:begin (written by scripts/bench.sh) -->\n" + table + "\n\nSteady state "
             f"(the formed cluster held for {hold} refresh intervals; requests on the wire for etcd "
             "and Consul, `Coordination` calls for ZooKeeper):\n\n" + steady_table +
             "\n<!-- bench:end -->")
    new, k = re.subn(r"<!-- bench:begin.*?<!-- bench:end -->", lambda m: block, readme, flags=re.S)
    if k != 1:
        sys.exit("README.md has no bench:begin/bench:end markers")
    open("README.md", "w").write(new)
    print("\nwrote README.md and docs/benchmark.png", file=sys.stderr)
PY
