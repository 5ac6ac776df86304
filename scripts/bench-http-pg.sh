#!/usr/bin/env bash
# Durable writes in PostgreSQL mode: `keyfloat serve --store postgres://…` (release, simulated
# provisioned key) next to the axum baseline's `/json_pg` (benches/http/baseline_server.rs: the
# same single-row write through the same client, the sync `postgres` crate, group-committed
# by one writer connection), both on loopback, on the private cluster of scripts/pg.sh, driven
# by wrk in ONE run so the figures are comparable as ratios. Not run in CI.
#
#   ./scripts/bench-http-pg.sh               # 5 s per scenario, 2 wrk threads, 32 connections
#   DURATION=10 CONNS=64 ./scripts/bench-http-pg.sh
#
# Each server gets a fresh database, dropped on exit with everything else it started.
set -euo pipefail

cd "$(dirname "$0")/.."
DURATION=${DURATION:-5}
THREADS=${THREADS:-2}
CONNS=${CONNS:-32}
LUA=benches/http/request.lua

if ! command -v wrk >/dev/null; then
    echo "installing wrk (Debian package)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y wrk >/dev/null ||
        { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y wrk >/dev/null; }
fi

ADMIN_URL=$(./scripts/pg.sh start)
PSQL=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)/psql
RUN_ID=$$
KF_DB=kf_bench_kf_$RUN_ID
BASE_DB=kf_bench_base_$RUN_ID
db_url() { echo "${ADMIN_URL%/*}/$1"; }

cargo build --release --quiet --bin keyfloat --example baseline_server
KF=target/release/keyfloat
BASE=target/release/examples/baseline_server

TMP=$(mktemp -d /tmp/keyfloat-bench-http-pg.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    for d in "$KF_DB" "$BASE_DB"; do "$PSQL" -q "$ADMIN_URL" -c "DROP DATABASE IF EXISTS $d WITH (FORCE)" || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT
for d in "$KF_DB" "$BASE_DB"; do "$PSQL" -q "$ADMIN_URL" -c "CREATE DATABASE $d"; done

# Starts "$@" with stdout in $TMP/$name.out; sets ADDR to the printed listen address.
start() {
    local name=$1
    shift
    "$@" >"$TMP/$name.out" 2>"$TMP/$name.err" &
    PIDS+=($!)
    LAST_PID=$!
    for _ in $(seq 100); do
        ADDR=$(sed -n 's|^listening on http://||p' "$TMP/$name.out")
        [ -n "$ADDR" ] && return 0
        sleep 0.1
    done
    echo "$name did not start:" >&2
    cat "$TMP/$name.err" >&2
    exit 1
}

$KF vendor keygen --out "$TMP/vendor.pem" --public-out "$TMP/vendor.pub.pem" >/dev/null
start keyfloat env RUST_LOG=warn $KF serve --listen 127.0.0.1:0 --data-dir "$TMP/kf" \
    --key-backend sim --sim-vendor-key "$TMP/vendor.pem" --store "$(db_url "$KF_DB")"
KF_ADDR=$ADDR
KF_PID=$LAST_PID
start baseline $BASE --listen 127.0.0.1:0 --data-dir "$TMP/base" --pg "$(db_url "$BASE_DB")"
BASE_ADDR=$ADDR

add() { # product, extra query -> license id
    curl -fsS "http://$KF_ADDR/api/v4/addProduct?product=$1&licenseKey=BENCH-$1&floatingUsers=1000000$2" |
        sed -n 's/.*"license_id":\([0-9]*\).*/\1/p'
}
SEATS=$(add seats "")
METER=$(add meter "&maxConsumptions=1&allowUnlimitedConsumptions=true")
for v in SEATS METER; do
    [ -n "${!v}" ] || { echo "addProduct failed for $v" >&2; exit 1; }
done

printf '%-44s %10s %9s %9s %7s\n' scenario "req/s" "p50 µs" "p99 µs" errors
declare -A RPS
run() { # name, url, lua args...
    local name=$1 url=$2
    shift 2
    local line
    line=$(wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --timeout 5s -s "$LUA" "$url" -- "$@" | grep '^RESULT')
    local rps p50 p99 non2xx sock
    rps=$(sed -n 's/.* rps=\([0-9]*\).*/\1/p' <<<"$line")
    p50=$(sed -n 's/.* p50_us=\([0-9]*\).*/\1/p' <<<"$line")
    p99=$(sed -n 's/.* p99_us=\([0-9]*\).*/\1/p' <<<"$line")
    non2xx=$(sed -n 's/.* non2xx=\([0-9]*\).*/\1/p' <<<"$line")
    sock=$(sed -n 's/.* socket_errors=\([0-9]*\).*/\1/p' <<<"$line")
    printf '%-44s %10s %9s %9s %7s\n' "$name" "$rps" "$p50" "$p99" "$((non2xx + sock))"
    if [ "$((non2xx + sock))" -ne 0 ]; then
        echo "  ^ $non2xx non-2xx answers, $sock socket errors: this figure is not valid" >&2
        RPS[$name]=0
    else
        RPS[$name]=$rps
    fi
}

B="http://$BASE_ADDR" K="http://$KF_ADDR/api/v4"
run "baseline POST /json (no write)" "$B/json" post seats "$SEATS" fixed
run "baseline POST /json_pg #1" "$B/json_pg" post seats "$SEATS" unique
run "keyfloat add_consumption (PG)" "$K/add_consumption" consume meter "$METER"
run "keyfloat register new seat (PG)" "$K/register" post seats "$SEATS" unique
run "baseline POST /json_pg #2 (drift check)" "$B/json_pg" post seats "$SEATS" unique

kill -0 "$KF_PID" 2>/dev/null || { echo "keyfloat serve died during the run" >&2; exit 1; }

ratio() { # a b -> a/b in percent
    awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.1f", 100 * a / b; else print "n/a" }'
}
PG=$(((${RPS["baseline POST /json_pg #1"]} + ${RPS["baseline POST /json_pg #2 (drift check)"]}) / 2))
echo
echo "ratios (baseline POST /json_pg = mean of its two runs, $PG req/s):"
echo "  add_consumption (PG) / baseline json_pg      $(ratio "${RPS["keyfloat add_consumption (PG)"]}" "$PG")%   (target >= 50%)"
echo "  register new seat (PG) / baseline json_pg    $(ratio "${RPS["keyfloat register new seat (PG)"]}" "$PG")%   (target >= 50%)"
echo "  baseline json_pg / baseline json             $(ratio "$PG" "${RPS["baseline POST /json (no write)"]}")%   (reference)"
