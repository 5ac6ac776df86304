#!/usr/bin/env bash
# CPU per durable write in PostgreSQL mode: the server process and every `postgres`
# process of the private cluster (scripts/pg.sh), from /proc/<pid>/stat over 5 s of wrk
# (2 threads, 32 connections), divided by the rows the run wrote. Ratios of req/s swing
# with whatever else runs on the machine; CPU per write is what a change moves.
#
#   ./scripts/bench-cpu-pg.sh                    # keyfloat: register a new seat
#   ./scripts/bench-cpu-pg.sh baseline           # the axum baseline's POST /json_pg
#   KF=/path/to/other/keyfloat ./scripts/bench-cpu-pg.sh   # A/B against another build
#
# Not run in CI. Fresh database, dropped on exit with everything else it started.
set -euo pipefail

cd "$(dirname "$0")/.."
WHO=${1:-keyfloat}
ADMIN_URL=$(./scripts/pg.sh start)
PSQL=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)/psql
DB=kf_bench_cpu_$$
DB_URL="${ADMIN_URL%/*}/$DB"

[ -n "${KF:-}" ] || cargo build --release --quiet --bin keyfloat --example baseline_server
KF=${KF:-target/release/keyfloat}
BENCH=bench-cpu-pg
source scripts/bench-lib.sh
install_wrk
bench_on_exit() { "$PSQL" -q "$ADMIN_URL" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" || true; }
"$PSQL" -q "$ADMIN_URL" -c "CREATE DATABASE $DB"

if [ "$WHO" = baseline ]; then
    start baseline target/release/examples/baseline_server --listen 127.0.0.1:0 --data-dir "$TMP/base" --pg "$DB_URL"
    PID=$LAST_PID URL="http://$ADDR/json_pg" LICENSE=1 TABLE=rows
else
    start_keyfloat --store "$DB_URL"
    PID=$KF_PID URL="http://$KF_ADDR/api/v4/register" LICENSE=$(add seats "") TABLE=registrations
fi

ticks() { # utime + stime of the given pids, in clock ticks
    local t=0 p
    for p in "$@"; do [ -r "/proc/$p/stat" ] && t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
    echo "$t"
}
rows() { "$PSQL" -Atc "SELECT COUNT(*) FROM $TABLE" "$DB_URL"; }
wrk -t2 -c32 -d7s -s benches/http/request.lua "$URL" -- post seats "$LICENSE" unique >"$TMP/wrk" &
WRK=$!
sleep 1
PG_PIDS=$(pgrep -u postgres -d ' ' postgres)
# shellcheck disable=SC2086
s0=$(ticks "$PID") p0=$(ticks $PG_PIDS) n0=$(rows)
sleep 5
# shellcheck disable=SC2086
s1=$(ticks "$PID") p1=$(ticks $PG_PIDS) n1=$(rows)
wait "$WRK"
n=$((n1 - n0))
hz=$(getconf CLK_TCK)
echo "$WHO: $((n / 5)) writes/s; server $(((s1 - s0) * 1000000 / hz / n)) µs/write," \
    "PostgreSQL $(((p1 - p0) * 1000000 / hz / n)) µs/write; load $(cut -d' ' -f1 /proc/loadavg)"
