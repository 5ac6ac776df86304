#!/usr/bin/env bash
# keyfloat developer entry point. On a fresh Debian 12 machine with Rust, as root:
#   ./scripts/dev.sh demo   # install what is needed, build, run the demo (simulated key)
#   ./scripts/dev.sh test   # install everything the tests need, start pcscd, run every test
# Tests that need pcscd, the Python SDK, Chromium or PostgreSQL are #[ignore = "needs …"]: a plain
# `cargo test` reports them as ignored; `test` here runs them (--include-ignored), and they
# fail when what they need is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ARTIFACTS=${KEYFLOAT_ARTIFACTS:-$ROOT/artifacts}
VENV=${KEYFLOAT_VENV:-$ROOT/target/venv}

# Debian packages: build deps of the pcsc crate, the PC/SC stack the tests run against,
# the third-party tools that check our virtual card, and the browser for the UI test.
DEB_BUILD=(pkgconf libpcsclite-dev)
DEB_TEST=(pcscd vsmartcard-vpcd yubico-piv-tool opensc python3-venv chromium chromium-driver procps psmisc sqlite3
  postgresql haproxy)
PY_TEST=(licensespring==4.0.0 yubikey-manager==5.9.2)

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

install_debs() {
  local missing=()
  for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "== apt-get install ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

install_python() {
  if [ ! -x "$VENV/bin/python" ]; then python3 -m venv "$VENV"; fi
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${PY_TEST[@]}"
}

# pcscd for the CLI and third-party tools (foreground, own log). Tests that need to stop,
# restart or isolate pcscd start private ones in their own mount namespace.
start_pcscd() {
  mkdir -p "$ARTIFACTS" /run/pcscd
  if [ -S /run/pcscd/pcscd.comm ] && [ -f /run/pcscd/pcscd.pid ] && kill -0 "$(cat /run/pcscd/pcscd.pid)" 2>/dev/null; then
    echo "== pcscd already running (pid $(cat /run/pcscd/pcscd.pid))"
    return 0
  fi
  rm -f /run/pcscd/pcscd.comm /run/pcscd/pcscd.pid
  echo "== starting pcscd (log: $ARTIFACTS/pcscd.log)"
  nohup pcscd --foreground --debug --apdu >"$ARTIFACTS/pcscd.log" 2>&1 &
  for _ in $(seq 1 50); do [ -S /run/pcscd/pcscd.comm ] && return 0; sleep 0.1; done
  echo "pcscd did not come up; see $ARTIFACTS/pcscd.log" >&2
  return 1
}

# The private PostgreSQL cluster of the store and HA tests (scripts/pg.sh: own data dir
# and port); the tests create and drop their own databases in it. Fails, never skips.
start_pg() {
  echo "== starting the private PostgreSQL cluster"
  KEYFLOAT_PG_URL=$(./scripts/pg.sh start) || { echo "PostgreSQL did not start" >&2; return 1; }
  export KEYFLOAT_PG_URL
  echo "   $KEYFLOAT_PG_URL"
}

cmd_demo() {
  install_debs "${DEB_BUILD[@]}"
  cargo run --release -- demo "$@"
}

cmd_test() {
  install_debs "${DEB_BUILD[@]}" "${DEB_TEST[@]}"
  install_python
  start_pcscd
  start_pg
  export KEYFLOAT_PYTHON="$VENV/bin/python"
  export KEYFLOAT_YKMAN="$VENV/bin/ykman"
  export KEYFLOAT_ARTIFACTS="$ARTIFACTS"
  echo "== cargo fmt --check"
  cargo fmt --all -- --check
  # rust-version (Cargo.toml) is checked by clippy's incompatible_msrv lint: only one
  # toolchain can be installed here, so an API newer than the declared version fails here.
  echo "== cargo clippy -D warnings (all targets, all features; MSRV-aware)"
  cargo clippy --workspace --all-targets --all-features -- -D warnings
  cargo clippy -p keyfloat-hal --no-default-features -- -D warnings
  echo "== cargo test (workspace, all features, including the tests that need pcscd / SDK / Chromium)"
  # (--skip soak_: the 10-minute wedged-card soak is run by hand, see tests/pcsc_faults.rs)
  cargo test --workspace --all-features --no-fail-fast -- --include-ignored --skip soak_
  echo "== cargo test --benches (each benchmark once, untimed)"
  cargo test --benches
  echo "== all tests passed"
}

case "${1:-}" in
  demo) shift; cmd_demo "$@" ;;
  test) shift; cmd_test "$@" ;;
  install) shift; install_debs "${DEB_BUILD[@]}" "${DEB_TEST[@]}"; install_python ;;
  pcscd) start_pcscd ;;
  pg) start_pg ;;
  *) echo "usage: $0 demo|test|install|pcscd|pg" >&2; exit 2 ;;
esac
