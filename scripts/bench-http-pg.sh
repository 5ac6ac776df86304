#!/usr/bin/env bash
# Durable writes in PostgreSQL mode: `keyfloat serve --store postgres://…` (release, simulated
# provisioned key) next to the axum baseline's `/json_pg` (benches/http/baseline_server.rs: the
# same single-row write through the same client, the sync `postgres` crate, group-committed
# by one writer connection), both on loopback, on the private cluster of scripts/pg.sh, driven
# by wrk in ONE run so the figures are comparable as ratios. Not run in CI.
#
#   ./scripts/bench-http-pg.sh               # 3 rounds, 5 s per scenario, 2 wrk threads, 32 connections
#   ROUNDS=5 DURATION=10 CONNS=64 ./scripts/bench-http-pg.sh
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
ROUNDS=${ROUNDS:-3}
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
# ROUNDS rounds, each bracketed by two baseline runs: a ratio is taken against its own
# round's baseline (the mean of the two), and the verdict is the median over the rounds.
for r in $(seq "$ROUNDS"); do
    run "r$r baseline POST /json_pg" "$B/json_pg" post seats "$SEATS" unique
    run "r$r keyfloat add_consumption (PG)" "$K/add_consumption" consume meter "$METER"
    run "r$r keyfloat register new seat (PG)" "$K/register" post seats "$SEATS" unique
    run "r$r baseline POST /json_pg (again)" "$B/json_pg" post seats "$SEATS" unique
done

kill -0 "$KF_PID" 2>/dev/null || { echo "keyfloat serve died during the run" >&2; exit 1; }

for name in "${!RPS[@]}"; do echo "$name=${RPS[$name]}"; done >"$TMP/rps"
python3 - "$TMP/rps" "$ROUNDS" <<'PY'
import statistics, sys
rps = {k: int(v) for k, v in (l.rstrip("\n").rsplit("=", 1) for l in open(sys.argv[1]))}
rounds = range(1, int(sys.argv[2]) + 1)
base = {r: (rps[f"r{r} baseline POST /json_pg"] + rps[f"r{r} baseline POST /json_pg (again)"]) / 2 for r in rounds}
print()
print("ratios per round (each against its own round's baseline POST /json_pg, the mean of the")
print("runs before and after it) and their median, which is the verdict:")
print(f"  {'baseline POST /json_pg req/s':44} " + "  ".join(f"{base[r]:8.0f}" for r in rounds))
missed = 0
for label, name in [("add_consumption (PG) / baseline json_pg", "add_consumption (PG)"),
                    ("register new seat (PG) / baseline json_pg", "register new seat (PG)")]:
    per = [100 * rps[f"r{r} keyfloat {name}"] / base[r] if base[r] else 0.0 for r in rounds]
    med = statistics.median(per)
    missed += med < 50
    print(f"  {label:44} " + "  ".join(f"{p:7.1f}%" for p in per)
          + f"   median {med:5.1f}%  (target >= 50%) {'met' if med >= 50 else 'MISSED'}")
plain = rps["baseline POST /json (no write)"]
print(f"  {'round 1 baseline json_pg / baseline json':44} {100 * base[1] / plain:7.1f}%   (reference)")
print(f"\n{missed} target(s) missed")
PY
