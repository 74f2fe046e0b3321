#!/usr/bin/env bash
# The benchmark of record: N nodes started together against real coordination services in
# local containers, in three topologies, our defaults side by side with the
# ConstructR-compatible mode (`--compat constructr`: no watch, fixed retry-delay waits,
# ConstructR's defaults) in the same run:
#
# - processes: N separate `constructr node` processes (one client and one chitchat gossip
#   socket each), as an operator starts them (scripts/processes.py): time from the first
#   spawn until every process is registered and until every process sees all N members,
#   the spawning alone, wire requests per node (the nodes' own count and the server's),
#   peak RSS per process;
# - per-node: N nodes in one process, each with its own client (`demo --client-per-node`):
#   the protocol's cost as deployed, without process start-up;
# - shared: N nodes in one process sharing one client (`demo`): what many nodes of one
#   process cost (shared reads, watches, lock requests, grouped registrations).
#
# Per topology, backend, N and mode: the median of ROUNDS rounds and min–max; per backend
# at STEADY_NODES nodes (shared), the steady-state requests per node per refresh.
#
# It writes the tables into README.md (between the `bench:begin`/`bench:end` markers) and
# the plot docs/benchmark.png (time against N, log–log, one panel per topology; Debian's
# python3-matplotlib, installed if missing), and prints the tables.
#
#   scripts/bench.sh [ROUNDS]          (default 3 rounds per topology, backend, N and mode)
#   TOPOLOGIES="processes per-node shared"
#   PROCESS_NODES="20 100 300"         processes
#   CLIENT_NODES="20 100 1000"         nodes with a client each, in one process (5000: README)
#   NODES="20 100 1000 5000"           nodes sharing one client
#   BACKENDS="etcd etcd3 consul zookeeper"
#   ZOOKEEPER_MAX_NODES=1000           ZooKeeper, shared: registrations of one process share multis
#   ZOOKEEPER_MAX_CLIENTS=100          ZooKeeper, processes and per-node: registrations of different
#                                      sessions contend on the epoch's version (README)
#   STEADY_NODES=1000 HOLD=5           steady state: nodes, refresh intervals held
#   WRITE=0                            print only; leave README.md and the plot alone
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
topologies=${TOPOLOGIES:-processes per-node shared}
process_nodes=${PROCESS_NODES:-20 100 300}
client_nodes=${CLIENT_NODES:-20 100 1000}
nodes_list=${NODES:-20 100 1000 5000}
backends_wanted=${BACKENDS:-etcd etcd3 consul zookeeper}
zk_max=${ZOOKEEPER_MAX_NODES:-1000}
zk_max_clients=${ZOOKEEPER_MAX_CLIENTS:-100}
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

# The containers' own addresses, not ports published through docker-proxy: the proxy is no
# part of a deployment, adds a hop, and dies at a few thousand connections (seen with 5000
# clients of their own).
ip_of() { docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}' "$1" | awk '{print $1}'; }
wanted() { [[ " $backends_wanted " == *" $1 "* ]]; }
wait_etcd() {
    for _ in $(seq 100); do "$bin" nodes --backend etcd --endpoints "$1" >/dev/null 2>&1 && return; sleep 0.2; done
    echo "etcd at $1 did not come up" >&2; exit 1
}

# Each backend runs alone: its containers start before its runs and stop after them, so
# that no other service shares the two cores while it is measured.
options=""
counters=""
start_backend() { # name → sets $options, the demo's backend options
    case $1 in
    etcd)
        c=$(docker run -d "$CONSTRUCTR_ETCD_IMAGE" --name bench \
            --data-dir /tmp/etcd --listen-client-urls http://0.0.0.0:2379 \
            --advertise-client-urls http://127.0.0.1:2379)
        containers+=("$c")
        url="http://$(ip_of "$c"):2379"
        wait_etcd "$url"
        options="--backend etcd --endpoints $url"
        counters="--etcd-metrics $url"
        ;;
    etcd3)
        network="constructr-bench-$$"
        docker network create "$network" >/dev/null
        cluster=""
        for i in 1 2 3; do cluster+="${cluster:+,}m$i=http://bench-m$i-$$:2380"; done
        urls=""
        for i in 1 2 3; do
            c=$(docker run -d --network "$network" --name "bench-m$i-$$" \
                "$CONSTRUCTR_ETCD_IMAGE" --name "m$i" --data-dir /tmp/etcd \
                --listen-client-urls http://0.0.0.0:2379 --advertise-client-urls "http://bench-m$i-$$:2379" \
                --listen-peer-urls http://0.0.0.0:2380 --initial-advertise-peer-urls "http://bench-m$i-$$:2380" \
                --initial-cluster "$cluster" --initial-cluster-token "bench-$$" --initial-cluster-state new)
            containers+=("$c")
            urls+="${urls:+,}http://$(ip_of "$c"):2379"
        done
        wait_etcd "$urls"
        options="--backend etcd --endpoints $urls"
        counters="--etcd-metrics $urls"
        ;;
    consul)
        c=$(docker run -d "$CONSTRUCTR_CONSUL_IMAGE" agent -dev -client 0.0.0.0)
        containers+=("$c")
        url="http://$(ip_of "$c"):8500"
        for _ in $(seq 100); do curl -sf "$url/v1/status/leader" | grep -q ':' && break; sleep 0.2; done
        options="--backend consul --consul-address $url"
        counters=""
        ;;
    zookeeper)
        c=$(docker run -d "$CONSTRUCTR_ZOOKEEPER_IMAGE")
        containers+=("$c")
        zk=$(ip_of "$c")
        for _ in $(seq 150); do
            [[ $( (exec 3<>/dev/tcp/"$zk"/2181 && printf ruok >&3 && cat <&3) 2>/dev/null) == imok ]] && break
            sleep 0.2
        done
        options="--backend zookeeper --zookeeper $zk:2181"
        counters="--zookeeper-mntr $zk:2181"
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
record() { # topology backend mode nodes, the run's JSON on stdin
    python3 -c '
import sys, json
t, b, m, n = sys.argv[1:5]
d = json.load(sys.stdin)
print(json.dumps({"topology": t, "backend": b, "mode": m, "n": int(n), **d}))' "$@"
}
nodes_of() { # topology
    case $1 in
    processes) echo "$process_nodes" ;;
    per-node) echo "$client_nodes" ;;
    shared) echo "$nodes_list" ;;
    esac
}
for b in etcd etcd3 consul zookeeper; do
    wanted "$b" || continue
    start_backend "$b"
    for topology in $topologies; do
        for n in $(nodes_of "$topology"); do
            if [[ $b == zookeeper ]]; then
                limit=$zk_max
                [[ $topology == shared ]] || limit=$zk_max_clients
                ((n > limit)) && continue
            fi
            for r in $(seq "$rounds"); do
                for mode in default constructr; do
                    compat=()
                    [[ $mode == constructr ]] && compat=(--compat constructr)
                    run=$((run + 1))
                    echo "[bench] $b $topology n=$n $mode round $r" >&2
                    case $topology in
                    processes)
                        # shellcheck disable=SC2086
                        python3 scripts/processes.py "$bin" "$n" --cluster "bench-$$-$run" $counters \
                            ${compat:+--extra=--compat=constructr} -- $options
                        ;;
                    per-node)
                        # shellcheck disable=SC2086
                        "$bin" demo $options --nodes "$n" --json --cluster "bench-$$-$run" \
                            --client-per-node "${compat[@]}" 2>/dev/null
                        ;;
                    shared)
                        # shellcheck disable=SC2086
                        "$bin" demo $options --nodes "$n" --json --cluster "bench-$$-$run" \
                            "${compat[@]}" 2>/dev/null
                        ;;
                    esac | record "$topology" "$b" "$mode" "$n" >> "$results" \
                        || echo "[bench] run failed" >&2
                done
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
        | record shared "$b" steady "$n" >> "$steady" || echo "[bench] steady run failed" >&2
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
    rows[(d["topology"], d["backend"], d["n"], d["mode"])].append(d)
med = lambda xs: statistics.median(xs) if xs else None
def num(x, fmt="{:.1f}"):
    return "–" if x is None else fmt.format(x)
def values(v, k):
    return [x[k] for x in v if x.get(k) is not None]
mode_name = lambda m: "default" if m == "default" else "`--compat constructr`"
series = collections.defaultdict(list)
tables = {}

# processes: what an operator sees.
out = ["| backend | processes | mode | all registered, ms after the last spawn (median) | min–max | × faster | from the first spawn | spawning alone | all see N members, from the first spawn | registered / N | wire requests / node (node; server) | RSS MiB / process |",
       "|---|---|---|---|---|---|---|---|---|---|---|---|"]
for b in order:
    for n in sorted({k[2] for k in rows if k[0] == "processes" and k[1] == b}):
        for mode in ("default", "constructr"):
            v = rows.get(("processes", b, n, mode))
            if not v:
                continue
            after = values(v, "registered_after_last_spawn_ms")
            other = rows.get(("processes", b, n, "constructr"))
            ratio = ""
            if mode == "default" and other and after and values(other, "registered_after_last_spawn_ms"):
                ratio = f"{med(values(other, 'registered_after_last_spawn_ms')) / med(after):.1f}×"
            seen = values(v, "members_ms")
            rss = med(values(v, "rss_kib"))
            out.append(
                f"| {names[b]} | {n} | {mode_name(mode)} | {num(med(after))} "
                f"| {num(min(after) if after else None)}–{num(max(after) if after else None)} | {ratio} "
                f"| {num(med(values(v, 'registered_ms')))} | {num(med(values(v, 'spawn_ms')))} "
                f"| {num(med(seen))}{'' if len(seen) == len(v) else f' ({len(v) - len(seen)} of {len(v)} rounds: not all)'} "
                f"| {min(x['registered'] for x in v)}–{max(x['registered'] for x in v)} / {n} "
                f"| {num(med(values(v, 'requests_per_node')), '{:.2f}')}; {num(med(values(v, 'server_requests_per_node')), '{:.2f}')} "
                f"| {num(rss / 1024 if rss else None)} |")
            if after:
                series[("processes", b, mode)].append((n, med(values(v, "registered_ms"))))
tables["processes"] = "\n".join(out)

# per-node and shared: nodes of one process.
for topology in ("per-node", "shared"):
    out = ["| backend | nodes | mode | median formation ms | min–max | × faster | clusters | registered | requests / node | entries read / node | peak RSS MiB | RSS KiB / node |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for b in order:
        for n in sorted({k[2] for k in rows if k[0] == topology and k[1] == b}):
            for mode in ("default", "constructr"):
                v = rows.get((topology, b, n, mode))
                if not v:
                    continue
                ms = values(v, "formation_ms")
                other = rows.get((topology, b, n, "constructr"))
                ratio = ""
                if mode == "default" and other:
                    ratio = f"{med(values(other, 'formation_ms')) / med(ms):.1f}×"
                rss = med(values(v, "peak_rss_kib"))
                out.append(
                    f"| {names[b]} | {n} | {mode_name(mode)} "
                    f"| {med(ms):.1f} | {min(ms):.1f}–{max(ms):.1f} | {ratio} "
                    f"| {','.join(str(c) for c in sorted({x['clusters'] for x in v}))} "
                    f"| {min(x['registered'] for x in v)}–{max(x['registered'] for x in v)} "
                    f"| {med(values(v, 'requests_per_node')):.2f} "
                    f"| {med(values(v, 'entries_read_per_node')):.2f} "
                    f"| {rss / 1024:.1f} | {rss / n:.1f} |")
                series[(topology, b, mode)].append((n, med(ms)))
    tables[topology] = "\n".join(out)

steady_rows = ["| backend | nodes | refresh interval | refreshes held | requests / node / refresh |", "|---|---|---|---|---|"]
for line in open(steady_file):
    d = json.loads(line)
    steady_rows.append(f"| {names[d['backend']]} | {d['n']} | 2 s | {hold} | {d['requests_per_node_per_refresh']} |")
steady_table = "\n".join(steady_rows)
titles = {
    "processes": "**Processes** (what an operator sees): N `constructr node` processes, one client and one gossip socket each; times from the first spawn, registration also from the last spawn (subtract the spawning); requests until registered, as the nodes count them and as the server does (etcd's gRPC counters, ZooKeeper's packets; Consul: nodes only).",
    "per-node": "**One client per node** (`demo --client-per-node`): N nodes in one process, each with its own client; the protocol as deployed, without process start-up.",
    "shared": "**Shared** (`demo`): N nodes in one process sharing one client (shared reads, watches, lock requests, grouped registrations).",
}
blocks = [f"{titles[t]}\n\n{tables[t]}" for t in ("processes", "per-node", "shared") if t in tables and len(tables[t].splitlines()) > 2]
text = "\n\n".join(blocks)
print(text)
print()
print(steady_table)

if write:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [t for t in ("processes", "per-node", "shared") if any(k[0] == t for k in series)]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.5), dpi=110, squeeze=False)
    colours = {"etcd": "tab:blue", "etcd3": "tab:green", "consul": "tab:red", "zookeeper": "tab:purple"}
    labels = {"processes": "processes started together", "per-node": "nodes, one client each (one process)", "shared": "nodes sharing one client (one process)"}
    for ax, t in zip(axes[0], panels):
        for (tt, b, mode), pts in sorted(series.items(), key=lambda kv: (order.index(kv[0][1]), kv[0][2])):
            if tt != t:
                continue
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts],
                    marker="o" if mode == "default" else "s",
                    linestyle="-" if mode == "default" else "--",
                    color=colours[b], label=f"{names[b]}, {'default' if mode == 'default' else 'ConstructR mode'}")
        ax.set_xscale("log"); ax.set_yscale("log")
        ax.set_xlabel(labels[t])
        ax.set_ylabel(f"all registered, ms (median of {rounds})")
        ax.set_title(t)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("constructr: time until every node is registered (scripts/bench.sh)")
    fig.tight_layout()
    fig.savefig("docs/benchmark.png")
    readme = open("README.md").read()
    block = ("<!-- bench:begin (written by scripts/bench.sh) -->\n" + text + "\n\nSteady state "
             f"(shared; the formed cluster held for {hold} refresh intervals; requests on the wire for etcd "
             "and Consul, `Coordination` calls for ZooKeeper):\n\n" + steady_table +
             "\n<!-- bench:end -->")
    new, k = re.subn(r"<!-- bench:begin.*?<!-- bench:end -->", lambda m: block, readme, flags=re.S)
    if k != 1:
        sys.exit("README.md has no bench:begin/bench:end markers")
    open("README.md", "w").write(new)
    print("\nwrote README.md and docs/benchmark.png", file=sys.stderr)
PY
