#!/usr/bin/env bash
# A/B of two keyfloat builds on the durable SQLite writes: the builds take turns (a fresh
# server each time, simulated key), ROUNDS times, under wrk (2 threads, 32 connections, 4 s)
# registering new seats and, unless SEAT_ONLY=1, adding consumptions. Per run: req/s, CPU
# per request in µs of the store writer thread ("writer"), of the server's other threads
# ("request"), and of the whole machine ("machine", wrk and the kernel included, from
# /proc/stat), and the machine's idle share. Then the medians per build. On these shared
# 2-core machines req/s swings ±15 % between runs of one build: only alternating runs and
# medians tell two builds apart, and CPU per request says where a change moved the cost.
#
#   ./scripts/bench-ab.sh A/keyfloat B/keyfloat
#   ROUNDS=8 SEAT_ONLY=1 ./scripts/bench-ab.sh A/keyfloat B/keyfloat
#
# Not run in CI. Talks to 127.0.0.1 only; stops what it starts.
set -euo pipefail

cd "$(dirname "$0")/.."
[ $# -eq 2 ] || { echo "usage: $0 KEYFLOAT_A KEYFLOAT_B" >&2; exit 2; }
A=$(realpath "$1")
B=$(realpath "$2")
ROUNDS=${ROUNDS:-4}
LUA=benches/http/request.lua
RESULTS=$(mktemp /tmp/keyfloat-bench-ab.XXXXXX)
trap 'rm -f "$RESULTS"' EXIT

# One server of build $1 (labelled $2): prints "label scenario req/s writer request machine idle%".
one_run() (
    KF=$1
    BENCH=bench-ab
    source scripts/bench-lib.sh
    install_wrk
    start_keyfloat
    for _ in $(seq 100); do
        curl -fsS "http://$KF_ADDR/api/v4/health" | grep -q '"state":"valid"' && break
        sleep 0.1
    done
    SEATS=$(add seats "")
    METER=$(add meter "&maxConsumptions=1&allowUnlimitedConsumptions=true")
    # CPU ticks of the writer thread and of the server's other threads.
    threads() {
        local w=0 o=0 t c
        for t in /proc/"$KF_PID"/task/*; do
            c=$(awk '{ print $14 + $15 }' "$t/stat")
            if [ "$(cat "$t/comm")" = keyfloat-store ]; then w=$((w + c)); else o=$((o + c)); fi
        done
        echo "$w $o"
    }
    # Busy and idle ticks of the whole machine.
    machine() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $5 + $6 }' /proc/stat; }
    measure() {
        local scenario=$1 url=$2 w0 o0 b0 i0 w1 o1 b1 i1 line
        shift 2
        read -r w0 o0 < <(threads)
        read -r b0 i0 < <(machine)
        line=$(wrk -t2 -c32 -d4s --timeout 5s -s "$LUA" "$url" -- "$@" | grep '^RESULT')
        read -r w1 o1 < <(threads)
        read -r b1 i1 < <(machine)
        awk -v label="$LABEL" -v s="$scenario" -v line="$line" -v w=$((w1 - w0)) -v o=$((o1 - o0)) \
            -v b=$((b1 - b0)) -v i=$((i1 - i0)) -v hz="$(getconf CLK_TCK)" 'BEGIN {
                match(line, /requests=[0-9]+/); n = substr(line, RSTART + 9, RLENGTH - 9)
                match(line, / rps=[0-9]+/); rps = substr(line, RSTART + 5, RLENGTH - 5)
                match(line, /non2xx=[0-9]+/); bad = substr(line, RSTART + 7, RLENGTH - 7)
                if (bad > 0 || n == 0) { print label, s, "invalid", bad, "non-2xx"; exit }
                us = 1e6 / hz / n
                printf "%s %s %d %.1f %.1f %.1f %d\n", label, s, rps, w * us, o * us, b * us, 100 * i / (b + i)
            }'
    }
    K="http://$KF_ADDR/api/v4"
    measure new_seat "$K/register" post seats "$SEATS" unique
    [ -n "${SEAT_ONLY:-}" ] || measure add_consumption "$K/add_consumption" consume meter "$METER"
)

printf '%-5s %-4s %-16s %8s %8s %8s %8s %5s\n' round ab scenario "req/s" writer request machine idle
for r in $(seq "$ROUNDS"); do
    for ab in A B; do
        bin=$A
        [ "$ab" = B ] && bin=$B
        LABEL=$ab one_run "$bin" | tee -a "$RESULTS" |
            awk -v r="$r" '{ printf "%-5s %-4s %-16s %8s %8s %8s %8s %4s%%\n", r, $1, $2, $3, $4, $5, $6, $7 }'
    done
done
echo
echo "medians over $ROUNDS rounds (A = $A, B = $B):"
python3 - "$RESULTS" <<'EOF'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    f = line.split()
    if len(f) == 7:
        runs.setdefault((f[1], f[0]), []).append([float(x) for x in f[2:]])
for (scenario, ab), rows in sorted(runs.items()):
    med = [statistics.median(col) for col in zip(*rows)]
    print(f"  {scenario:16} {ab}  {med[0]:8.0f} req/s   writer {med[1]:5.1f}  request {med[2]:5.1f}"
          f"  machine {med[3]:5.1f} µs/req   idle {med[4]:3.0f} %")
EOF
