# Sourced by the bench-*.sh scripts. Needs BENCH (names the temporary directory) and KF (the
# keyfloat binary). Everything written lives in $TMP; every server started with `start` is
# stopped, and $TMP removed, on exit.

TMP=$(mktemp -d "/tmp/keyfloat-$BENCH.XXXXXX")
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
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
# by a vendor key made now; sets KF_ADDR and KF_PID.
start_keyfloat() {
    $KF vendor keygen --out "$TMP/vendor.pem" --public-out "$TMP/vendor.pub.pem" >/dev/null
    start keyfloat env RUST_LOG=warn $KF serve --listen 127.0.0.1:0 --data-dir "$TMP/kf" \
        --key-backend sim --sim-vendor-key "$TMP/vendor.pem"
    KF_ADDR=$ADDR
    KF_PID=$LAST_PID
}
