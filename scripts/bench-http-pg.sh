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

ADMIN_URL=$(./scripts/pg.sh start)
PSQL=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)/psql
RUN_ID=$$
KF_DB=kf_bench_kf_$RUN_ID
BASE_DB=kf_bench_base_$RUN_ID
db_url() { echo "${ADMIN_URL%/*}/$1"; }

cargo build --release --quiet --bin keyfloat --example baseline_server
KF=target/release/keyfloat
BASE=target/release/examples/baseline_server

BENCH=bench-http-pg
source scripts/bench-lib.sh
install_wrk
bench_on_exit() {
    for d in "$KF_DB" "$BASE_DB"; do "$PSQL" -q "$ADMIN_URL" -c "DROP DATABASE IF EXISTS $d WITH (FORCE)" || true; done
}
for d in "$KF_DB" "$BASE_DB"; do "$PSQL" -q "$ADMIN_URL" -c "CREATE DATABASE $d"; done

start_keyfloat --store "$(db_url "$KF_DB")"
start baseline $BASE --listen 127.0.0.1:0 --data-dir "$TMP/base" --pg "$(db_url "$BASE_DB")"
BASE_ADDR=$ADDR

SEATS=$(add seats "")
METER=$(add meter "&maxConsumptions=1&allowUnlimitedConsumptions=true")
for v in SEATS METER; do
    [ -n "${!v}" ] || { echo "addProduct failed for $v" >&2; exit 1; }
done

print_header
B="http://$BASE_ADDR" K="http://$KF_ADDR/api/v4"
run "baseline POST /json (no write)" "$B/json" post seats "$SEATS" fixed
run "baseline POST /json_pg #1" "$B/json_pg" post seats "$SEATS" unique
run "keyfloat add_consumption (PG)" "$K/add_consumption" consume meter "$METER"
run "keyfloat register new seat (PG)" "$K/register" post seats "$SEATS" unique
run "baseline POST /json_pg #2 (drift check)" "$B/json_pg" post seats "$SEATS" unique

kill -0 "$KF_PID" 2>/dev/null || { echo "keyfloat serve died during the run" >&2; exit 1; }

PG=$(((${RPS["baseline POST /json_pg #1"]} + ${RPS["baseline POST /json_pg #2 (drift check)"]}) / 2))
echo
echo "ratios (baseline POST /json_pg = mean of its two runs, $PG req/s):"
echo "  add_consumption (PG) / baseline json_pg      $(ratio "${RPS["keyfloat add_consumption (PG)"]}" "$PG")%   (target >= 50%)"
echo "  register new seat (PG) / baseline json_pg    $(ratio "${RPS["keyfloat register new seat (PG)"]}" "$PG")%   (target >= 50%)"
echo "  baseline json_pg / baseline json             $(ratio "$PG" "${RPS["baseline POST /json (no write)"]}")%   (reference)"
