#!/usr/bin/env bash
# The model checks of the README's table, release build, on this machine: the ones every
# test run repeats (breadth first, as the tests run them) and the deep ones that do not
# (depth first with symmetry reduction). Writes their figures (states, depth, time, peak
# memory) into README.md between the `deep-check:begin` and `deep-check:end` markers, and
# fails if a property is violated or a check does not complete within LIMIT (default
# 600 s, the bound the model-checking issue set).
#
#   scripts/deep-check.sh              run every configuration, write README.md
#   WRITE=0 scripts/deep-check.sh      print only
#   LIMIT=900s scripts/deep-check.sh   another time limit per check
set -euo pipefail
cd "$(dirname "$0")/.."
limit=${LIMIT:-600s}
cargo build --release -q -p constructr-cli
bin=target/release/constructr
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# nodes | faults | in the test run | arguments
configs=(
    "2|≤ 1|as mutation base|--nodes 2 --max-faults 1"
    "2|≤ 2|yes|--nodes 2 --max-faults 2"
    "3|0|yes|--nodes 3 --max-faults 0"
    "3|≤ 1|yes|--nodes 3 --max-faults 1"
    "2, one starting late|≤ 2 outages|yes|--nodes 2 --late 1 --max-faults 2 --faults outage"
    "2, one starting late|≤ 2 outages or freezes, 10 s fault window|yes|--nodes 2 --late 1 --max-faults 2 --faults outage,pause --fault-window 10s --horizon 24s"
    "2, one starting late|≤ 3 outages, slow or timed-out requests, 10 s fault window|no|--nodes 2 --late 1 --max-faults 3 --faults outage,slow,timeout --fault-window 10s --horizon 24s"
    "3, one starting late|≤ 1 outage|no|--nodes 3 --late 1 --max-faults 1 --faults outage"
    "4|0|no|--nodes 4 --max-faults 0"
    "4|≤ 1|no (symmetry)|--nodes 4 --max-faults 1 --symmetry"
    "3|≤ 2|no (symmetry)|--nodes 3 --max-faults 2 --symmetry"
)
status=0
for i in "${!configs[@]}"; do
    args=${configs[$i]##*|}
    echo "constructr check $args --timeout $limit" >&2
    set +e
    # shellcheck disable=SC2086
    /usr/bin/time -f '%M' -o "$out/$i.rss" "$bin" check $args --timeout "$limit" --json \
        >"$out/$i.json"
    code=$?
    set -e
    if [ "$code" -ne 0 ]; then
        echo "  exit $code (1: a property is violated, 3: not complete within $limit)" >&2
        status=1
    fi
done

python3 - "$out" "${configs[@]}" <<'EOF'
import json, os, re, sys
out, configs = sys.argv[1], sys.argv[2:]
rows = []
for i, c in enumerate(configs):
    nodes, faults, in_tests, args = c.split("|", 3)
    r = json.load(open(os.path.join(out, f"{i}.json")))
    rss_mib = int(open(os.path.join(out, f"{i}.rss")).read().split()[-1]) / 1024
    held = all(p["verdict"] != "violated" for p in r["properties"])
    verdict = ("holds" if held else "VIOLATED") + ("" if r["complete"] else ", NOT COMPLETE")
    rows.append(f"| {nodes} | {faults} | {r['states']:,} ({r['unique_states']:,}) | {r['max_depth']} "
                f"| {r['seconds']:.1f} s | {rss_mib:,.0f} MiB | {verdict} | {in_tests} |")
    print(f"{nodes}, {faults}: {r['unique_states']:,} unique states, {r['seconds']:.1f} s, "
          f"{rss_mib:,.0f} MiB, {verdict}", file=sys.stderr)
table = ("| nodes | faults (all kinds unless named; freezes up to 2.56 s) | states (unique) | depth "
         "| time | peak RSS | verdict | in the test run |\n|---|---|---|---|---|---|---|---|\n"
         + "\n".join(rows))
if os.environ.get("WRITE", "1") == "1":
    readme = open("README.md").read()
    block = ("<!-- deep-check:begin (written by scripts/deep-check.sh) -->\n" + table
             + "\n<!-- deep-check:end -->")
    new, k = re.subn(r"<!-- deep-check:begin.*?<!-- deep-check:end -->", lambda m: block, readme, flags=re.S)
    if k != 1:
        sys.exit("README.md has no deep-check:begin/deep-check:end markers")
    open("README.md", "w").write(new)
    print("wrote README.md", file=sys.stderr)
else:
    print(table)
EOF
exit $status
