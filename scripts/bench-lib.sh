# Sourced by the bench-*.sh scripts. Needs BENCH (names the temporary directory) and KF (the
# keyfloat binary). Everything written lives in $TMP; every server started with `start` is
# stopped, and $TMP removed, on exit (after `bench_on_exit`, when the script defines one).

TMP=$(mktemp -d "/tmp/keyfloat-$BENCH.XXXXXX")
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    if declare -F bench_on_exit >/dev/null; then bench_on_exit; fi
    rm -rf "$TMP"
}
trap cleanup EXIT

# Starts "$@" with stdout in $TMP/$name.out; sets ADDR to the printed listen address and
# LAST_PID to its process.
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

# `keyfloat serve` on a free loopback port, data in $TMP/kf, with a simulated key provisioned
# by a vendor key made now, and the extra flags "$@"; sets KF_ADDR and KF_PID.
start_keyfloat() {
    $KF vendor keygen --out "$TMP/vendor.pem" --public-out "$TMP/vendor.pub.pem" >/dev/null
    start keyfloat env RUST_LOG=warn $KF serve --listen 127.0.0.1:0 --data-dir "$TMP/kf" \
        --key-backend sim --sim-vendor-key "$TMP/vendor.pem" "$@"
    KF_ADDR=$ADDR
    KF_PID=$LAST_PID
}

# Debian's wrk, installed on demand (root).
install_wrk() {
    command -v wrk >/dev/null && return 0
    echo "installing wrk (Debian package)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y wrk >/dev/null ||
        { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y wrk >/dev/null; }
}

# addProduct on the keyfloat server: product, extra query -> license id.
add() {
    curl -fsS "http://$KF_ADDR/api/v4/addProduct?product=$1&licenseKey=BENCH-$1&floatingUsers=1000000$2" |
        sed -n 's/.*"license_id":\([0-9]*\).*/\1/p'
}

# One wrk scenario: name, url, lua args... Prints its line under `print_header` and keeps
# its req/s in RPS[name] (0 when any request failed). DURATION (s), THREADS and CONNS come
# from the environment.
DURATION=${DURATION:-5}
THREADS=${THREADS:-2}
CONNS=${CONNS:-32}
LUA=benches/http/request.lua
declare -A RPS
print_header() {
    printf '%-44s %10s %9s %9s %7s\n' scenario "req/s" "p50 µs" "p99 µs" errors
}
run() {
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

# a b -> a/b in percent.
ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.1f", 100 * a / b; else print "n/a" }'
}
