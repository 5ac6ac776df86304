#!/usr/bin/env bash
# Memory benchmark: RSS of `keyfloat serve` (release, simulated provisioned key) holding
# USERS (default 10,000) active floating registrations. Not run in CI.
#
#   ./scripts/bench-memory.sh            # 10,000 users
#   USERS=2000 ./scripts/bench-memory.sh
#   KF=/tmp/other/keyfloat ./scripts/bench-memory.sh
#
# Registers USERS distinct users on one license with enough seats (16 keep-alive client
# threads on loopback, so the store group-commits), then reads VmRSS / VmHWM from
# /proc/PID/status: right after start, after the registrations, and after listing every
# registration (every page of the paginated listing) and license once. Targets: RSS <= 64
# MiB at 10,000 active registrations (DESIGN.md §9); <= 20 MiB after listing them (issue 12).
set -euo pipefail

cd "$(dirname "$0")/.."
USERS=${USERS:-10000}

# KF=path/to/keyfloat measures that binary instead of building this checkout's.
if [ -z "${KF:-}" ]; then
    cargo build --release --quiet --bin keyfloat
    KF=target/release/keyfloat
fi
BENCH=bench-memory
source scripts/bench-lib.sh

start_keyfloat
PID=$KF_PID
ADDR=$KF_ADDR

mem() { # label
    awk -v label="$1" '/^VmRSS|^VmHWM|^RssAnon|^RssFile/ { v[$1] = $2 }
        END { printf "%-40s VmRSS %7.1f MiB   VmHWM %7.1f MiB   (anonymous %5.1f, file %5.1f)\n", label,
            v["VmRSS:"] / 1024, v["VmHWM:"] / 1024, v["RssAnon:"] / 1024, v["RssFile:"] / 1024 }' \
        "/proc/$PID/status"
}

ID=$(curl -fsS "http://$ADDR/api/v4/addProduct?product=mem&licenseKey=MEM&floatingUsers=$((USERS * 2))&floatingTimeout=600" |
    sed -n 's/.*"license_id":\([0-9]*\).*/\1/p')
[ -n "$ID" ] || { echo "addProduct failed" >&2; exit 1; }
mem "started, one license"

START=$(date +%s.%N)
python3 - "$ADDR" "$ID" "$USERS" <<'EOF'
import http.client, json, sys, threading

addr, license_id, users = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
host, port = addr.rsplit(":", 1)
THREADS = 16
failures = []

def worker(k):
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    for i in range(k, users, THREADS):
        body = json.dumps({
            "product": "mem", "license_id": license_id, "user": f"user-{i:06d}",
            "os_hostname": f"host-{i:06d}.example.internal", "ip_local": "192.168.100.200",
            "user_info": "keyfloat memory benchmark",
        })
        conn.request("POST", "/api/v4/register", body, {"Content-Type": "application/json"})
        r = conn.getresponse()
        data = r.read()
        if r.status != 200:
            failures.append((i, r.status, data[:200]))
            return

ts = [threading.Thread(target=worker, args=(k,)) for k in range(THREADS)]
for t in ts: t.start()
for t in ts: t.join()
if failures:
    sys.exit(f"registration failed: {failures[:3]}")
EOF
END=$(date +%s.%N)
ACTIVE=$(curl -fsS "http://$ADDR/api/v4/license?license_id=$ID" | grep -o '"floating_in_use_devices":[0-9]*' | head -1 | cut -d: -f2)
mem "after $USERS registrations"
# The listing is paginated (limit + cursor): walk every page, as the web page would.
PAGES=$(python3 - "$ADDR" <<'EOF'
import http.client, json, sys, urllib.parse
host, port = sys.argv[1].rsplit(":", 1)
conn = http.client.HTTPConnection(host, int(port), timeout=30)
cursor, pages, seats = None, 0, 0
while True:
    q = "/api/v4/registrations?limit=1000" + ("&cursor=" + urllib.parse.quote(cursor) if cursor else "")
    conn.request("GET", q)
    r = conn.getresponse()
    page = json.loads(r.read())
    if r.status != 200:
        sys.exit(f"listing failed: {page}")
    pages += 1
    seats += len(page["registrations"])
    cursor = page.get("next_cursor")
    if not cursor:
        break
print(f"{pages} pages, {seats} seats")
EOF
)
curl -fsS "http://$ADDR/api/v4/license" -o /dev/null
mem "after listing registrations + licenses"
echo "registrations listing: $PAGES"
awk -v n="$USERS" -v a="$START" -v b="$END" 'BEGIN { printf "registered %d users in %.1f s (%.0f/s)\n", n, b - a, n / (b - a) }'
echo "active seats reported by /license: ${ACTIVE:-unknown}"
du -sh "$TMP/kf" | awk '{ print "data dir on disk: " $1 }'
