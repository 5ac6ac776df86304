#!/usr/bin/env bash
# Where the time goes: runs the HTTP scenarios of scripts/bench-http.sh one by one under wrk
# while `perf record -e cpu-clock` samples the server for 4 s, then prints the CPU cost per
# request and its split (store writer / reader threads, allocation, JSON, kernel, HTTP stack...).
# Software sampling (cpu-clock) because this VM exposes no hardware counters. Not run in CI.
#
#   ./scripts/bench-profile.sh
#
# Needs perf (Debian: linux-perf) and python3; talks to 127.0.0.1 only; stops what it starts.
set -euo pipefail

cd "$(dirname "$0")/.."
LUA=benches/http/request.lua
command -v perf >/dev/null || { echo "perf is required (apt-get install linux-perf)" >&2; exit 1; }
command -v wrk >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y wrk >/dev/null

cargo build --release --quiet --bin keyfloat --example baseline_server
KF=target/release/keyfloat
BENCH=bench-profile
source scripts/bench-lib.sh

start_keyfloat
start baseline target/release/examples/baseline_server --listen 127.0.0.1:0 --data-dir "$TMP/base"
BASE_PID=$LAST_PID
K="http://$KF_ADDR/api/v4"
B="http://$ADDR"

add() { # product -> license id
    curl -fsS "$K/addProduct?product=$1&licenseKey=P-$1&floatingUsers=1000000$2" |
        sed -n 's/.*"license_id":\([0-9]*\).*/\1/p'
}
PLAIN=$(add plain "")
SEATS=$(add seats "")
METER=$(add meter "&maxConsumptions=1&allowUnlimitedConsumptions=true")
curl -fsS -H 'Content-Type: application/json' \
    -d "{\"product\":\"plain\",\"license_id\":$PLAIN,\"user\":\"bench-user\"}" "$K/register" >/dev/null

profile() { # name, pid, url, lua args...
    local name=$1 pid=$2 url=$3
    local slug=${name//[ \/]/_}
    shift 3
    wrk -t2 -c32 -d6s -s "$LUA" "$url" -- "$@" >"$TMP/$slug.wrk" &
    local w=$!
    sleep 0.5
    perf record -q -e cpu-clock -F 999 -p "$pid" -o "$TMP/$slug.data" -- sleep 4 >/dev/null 2>&1
    wait "$w"
    echo "$name RESULT $(grep '^RESULT' "$TMP/$slug.wrk" | sed 's/^RESULT //')" >>"$TMP/results"
}
profile "baseline POST /json" "$BASE_PID" "$B/json" post plain "$PLAIN" fixed
profile "keyfloat GET /license" "$KF_PID" "$K/license" get
profile "keyfloat re-register" "$KF_PID" "$K/register" post plain "$PLAIN" fixed
profile "keyfloat add_consumption" "$KF_PID" "$K/add_consumption" consume meter "$METER"
profile "keyfloat register new seat" "$KF_PID" "$K/register" post seats "$SEATS" unique

python3 - "$TMP" <<'EOF'
import re, subprocess, sys
tmp = sys.argv[1]
BUCKETS = [  # first match wins; the store thread is counted whole
    ("malloc/free/memcpy", r"malloc|free|realloc|memmove|memcpy|memcmp|memset|_int_|unlink_chunk|consolidate"),
    ("JSON (serde_json)", r"serde|btree|BTree|json|Value|itoa|ryu|format_escaped"),
    ("hyper/axum/http", r"hyper|axum|tower|http::|httparse|matchit|bytes::"),
    ("tokio/sync", r"tokio|mio|parking|std::sync|mpsc"),
    ("keyfloat code", r"keyfloat"),
]
order = ["store writer thread", "store reader threads", "kernel", *[b for b, _ in BUCKETS], "other"]
for line in open(f"{tmp}/results"):
    name, rest = line.split(" RESULT ")
    requests = int(re.search(r"requests=(\d+)", rest).group(1))
    seconds = float(re.search(r"seconds=([\d.]+)", rest).group(1))
    rps = requests / seconds
    data = f"{tmp}/{name.replace(' ', '_').replace('/', '_')}.data"
    out = subprocess.run(["perf", "report", "-i", data, "--stdio", "-n", "--no-children",
                          "--sort", "comm,sym", "-g", "none"], capture_output=True, text=True).stdout
    cost = dict.fromkeys(order, 0.0)
    total = 0
    for m in re.finditer(r"^\s+[\d.]+%\s+(\d+)\s+(\S+)\s+\[(.)\]\s+(.*)$", out, re.M):
        n, comm, kind, sym = int(m.group(1)), m.group(2), m.group(3), m.group(4)
        total += n
        if comm.startswith("keyfloat-store"):
            k = "store writer thread"
        elif comm.startswith("keyfloat-read"):
            k = "store reader threads"
        elif kind == "k":
            k = "kernel"
        else:
            k = next((b for b, rx in BUCKETS if re.search(rx, sym)), "other")
        cost[k] += n
    # samples are 1/999 s of CPU each over a 4 s window
    per_req = lambda n: n / 999 * 1e6 / (rps * 4)
    print(f"{name:30} {rps:8.0f} req/s  CPU {per_req(total):6.1f} µs/request: " +
          ", ".join(f"{k} {per_req(v):.1f}" for k, v in cost.items() if v))
EOF
