#!/usr/bin/env bash
# A/B formation time of two `constructr` binaries in one run: the same local etcd and
# Consul containers, the same N, rounds alternating A and B (the machine is noisy: the
# ratio of medians is the figure, not either time alone).
#
#   scripts/ab.sh A_BIN B_BIN [ROUNDS]     (default 5 rounds per binary, backend and N)
#   NODES="20 1000"  BACKENDS="etcd consul"
#
# Prints per backend and N: the median formation time (ms) of A and of B, their min–max,
# B/A, and the coordination requests per node of each. Every round must form one cluster
# with every node registered, or the script says so. Build A from an older commit with e.g.
#   git worktree add --detach /tmp/old <commit> && (cd /tmp/old && cargo build --release -p constructr-cli)
set -euo pipefail
cd "$(dirname "$0")/.."
a_bin=${1:?usage: scripts/ab.sh A_BIN B_BIN [ROUNDS]}
b_bin=${2:?usage: scripts/ab.sh A_BIN B_BIN [ROUNDS]}
rounds=${3:-5}
nodes_list=${NODES:-20 1000}
backends=${BACKENDS:-etcd consul}

eval "$(bash scripts/images.sh 2>/dev/null)"
containers=()
cleanup() { for c in "${containers[@]}"; do docker rm -f "$c" >/dev/null 2>&1 || true; done; }
trap cleanup EXIT
port_of() { docker port "$1" "$2" | head -n1 | sed 's/.*://'; }

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

for backend in $backends; do
    case $backend in
    etcd)
        c=$(docker run -d -p 127.0.0.1::2379 "$CONSTRUCTR_ETCD_IMAGE" --name ab \
            --data-dir /tmp/etcd --listen-client-urls http://0.0.0.0:2379 \
            --advertise-client-urls http://127.0.0.1:2379)
        containers+=("$c")
        url="http://127.0.0.1:$(port_of "$c" 2379/tcp)"
        for _ in $(seq 100); do "$b_bin" nodes --backend etcd --endpoints "$url" >/dev/null 2>&1 && break; sleep 0.2; done
        options="--backend etcd --endpoints $url"
        ;;
    consul)
        c=$(docker run -d -p 127.0.0.1::8500 "$CONSTRUCTR_CONSUL_IMAGE" agent -dev -client 0.0.0.0)
        containers+=("$c")
        url="http://127.0.0.1:$(port_of "$c" 8500/tcp)"
        for _ in $(seq 100); do curl -sf "$url/v1/status/leader" | grep -q ':' && break; sleep 0.2; done
        options="--backend consul --consul-address $url"
        ;;
    *) echo "unknown backend $backend" >&2; exit 2 ;;
    esac
    for n in $nodes_list; do
        : >/tmp/ab.a; : >/tmp/ab.b; : >/tmp/ab.ra; : >/tmp/ab.rb
        for r in $(seq "$rounds"); do
            for side in a b; do
                bin=$a_bin; [[ $side == b ]] && bin=$b_bin
                # shellcheck disable=SC2086
                out=$("$bin" demo $options --nodes "$n" --json 2>/dev/null || true)
                ok=$(jq -r '.clusters == 1 and .registered == .nodes' <<<"$out" 2>/dev/null || echo false)
                if [[ $ok != true ]]; then
                    echo "$backend N=$n round $r ($side): not one cluster of all: $out" >&2
                    continue
                fi
                jq -r '.formation_ms' <<<"$out" >>"/tmp/ab.$side"
                jq -r '.requests_per_node' <<<"$out" >>"/tmp/ab.r$side"
            done
        done
        ma=$(median </tmp/ab.a); mb=$(median </tmp/ab.b)
        printf '%-7s N=%-5s A %8.1f ms (%s–%s)  B %8.1f ms (%s–%s)  B/A %.2f  req/node A %s B %s\n' \
            "$backend" "$n" "$ma" "$(sort -n /tmp/ab.a | head -1)" "$(sort -n /tmp/ab.a | tail -1)" \
            "$mb" "$(sort -n /tmp/ab.b | head -1)" "$(sort -n /tmp/ab.b | tail -1)" \
            "$(awk -v a="$ma" -v b="$mb" 'BEGIN {print b / a}')" "$(median </tmp/ab.ra)" "$(median </tmp/ab.rb)"
    done
    cleanup
    containers=()
done
