#!/usr/bin/env bash
# HTTP benchmark: `keyfloat serve` (release, simulated provisioned key) next to a minimal
# axum baseline (benches/http/baseline_server.rs), both on loopback, driven by wrk in ONE run so
# the figures are comparable as ratios. Not run in CI.
#
#   ./scripts/bench-http.sh                 # 5 s per scenario, 2 wrk threads, 32 connections
#   DURATION=10 CONNS=64 ./scripts/bench-http.sh
#
# Prints one line per scenario and a summary of the ratios against the targets in
# DESIGN.md §9. Installs Debian's wrk on demand (root). Every server it starts is stopped on
# exit; everything it writes lives in a temporary directory.
set -euo pipefail

cd "$(dirname "$0")/.."

cargo build --release --quiet --bin keyfloat --example baseline_server
KF=target/release/keyfloat
BASE=target/release/examples/baseline_server

BENCH=bench-http
source scripts/bench-lib.sh
install_wrk

start_keyfloat
start baseline $BASE --listen 127.0.0.1:0 --data-dir "$TMP/base"
BASE_ADDR=$ADDR

# The simulated key must be validated before a key-bound license can be added.
for _ in $(seq 100); do
    curl -fsS "http://$KF_ADDR/api/v4/health" | grep -q '"state":"valid"' && break
    sleep 0.1
done
curl -fsS "http://$KF_ADDR/api/v4/health" | grep -q '"state":"valid"' ||
    { echo "simulated key never became valid" >&2; exit 1; }

BOUND=$(add bound "&isHWKeyReq=true")
PLAIN=$(add plain "")
SEATS=$(add seats "")
METER=$(add meter "&maxConsumptions=1&allowUnlimitedConsumptions=true")
for v in BOUND PLAIN SEATS METER; do
    [ -n "${!v}" ] || { echo "addProduct failed for $v" >&2; exit 1; }
done

print_header
# One fixed user holds a seat on each license, so "re-register" only extends it.
for pair in "bound:$BOUND" "plain:$PLAIN"; do
    curl -fsS -H 'Content-Type: application/json' \
        -d "{\"product\":\"${pair%%:*}\",\"license_id\":${pair#*:},\"user\":\"bench-user\"}" \
        "http://$KF_ADDR/api/v4/register" >/dev/null
done

B="http://$BASE_ADDR" K="http://$KF_ADDR/api/v4"
run "baseline GET /static" "$B/static" get
run "baseline POST /json" "$B/json" post plain "$PLAIN" fixed
run "baseline POST /json_db (group commit, FULL)" "$B/json_db" post plain "$PLAIN" unique
run "keyfloat GET /health" "$K/health" get
run "keyfloat GET /license" "$K/license" get
# Gate overhead: the same request on a key-bound and a plain license, interleaved A B A B.
run "keyfloat re-register bound #1" "$K/register" post bound "$BOUND" fixed
run "keyfloat re-register plain #1" "$K/register" post plain "$PLAIN" fixed
run "keyfloat re-register bound #2" "$K/register" post bound "$BOUND" fixed
run "keyfloat re-register plain #2" "$K/register" post plain "$PLAIN" fixed
run "keyfloat add_consumption (FULL)" "$K/add_consumption" consume meter "$METER"
run "keyfloat register new seat (FULL)" "$K/register" post seats "$SEATS" unique
run "baseline POST /json (again, drift check)" "$B/json" post plain "$PLAIN" fixed

kill -0 "$KF_PID" 2>/dev/null || { echo "keyfloat serve died during the run" >&2; exit 1; }

bytes() { curl -fsS -o /dev/null -w '%{size_download}' "$@"; }
echo
echo "sizes: baseline /json answer $(bytes -H 'Content-Type: application/json' \
    -d "{\"product\":\"plain\",\"license_id\":$PLAIN,\"user\":\"bench-user\"}" "$B/json") B;" \
    "keyfloat register answer $(bytes -H 'Content-Type: application/json' \
        -d "{\"product\":\"plain\",\"license_id\":$PLAIN,\"user\":\"bench-user\"}" "$K/register") B;" \
    "/license answer $(bytes "$K/license") B"

JSON=$(((${RPS["baseline POST /json"]} + ${RPS["baseline POST /json (again, drift check)"]}) / 2))
BOUND_RPS=$(((${RPS["keyfloat re-register bound #1"]} + ${RPS["keyfloat re-register bound #2"]}) / 2))
PLAIN_RPS=$(((${RPS["keyfloat re-register plain #1"]} + ${RPS["keyfloat re-register plain #2"]}) / 2))
echo
echo "ratios (baseline POST /json = mean of its two runs, $JSON req/s):"
echo "  gate: key-bound / plain re-register          $(ratio "$BOUND_RPS" "$PLAIN_RPS")%   (target >= 97%)"
echo "  health / baseline json                       $(ratio "${RPS["keyfloat GET /health"]}" "$JSON")%   (target >= 70%)"
echo "  license list / baseline json                 $(ratio "${RPS["keyfloat GET /license"]}" "$JSON")%   (target >= 70%)"
echo "  re-register (plain) / baseline json          $(ratio "$PLAIN_RPS" "$JSON")%   (target >= 70%)"
echo "  add_consumption / baseline json              $(ratio "${RPS["keyfloat add_consumption (FULL)"]}" "$JSON")%   (target >= 50%)"
echo "  register new seat / baseline json            $(ratio "${RPS["keyfloat register new seat (FULL)"]}" "$JSON")%   (target >= 50%)"
echo "  baseline json_db / baseline json             $(ratio "${RPS["baseline POST /json_db (group commit, FULL)"]}" "$JSON")%   (reference)"
