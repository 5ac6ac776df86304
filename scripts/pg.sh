#!/usr/bin/env bash
# A private PostgreSQL cluster for the tests: its own data dir and port, run as the
# `postgres` user (Debian's `postgresql` package), never the system's cluster.
#   ./scripts/pg.sh start   # init (once) and start; prints the URL
#   ./scripts/pg.sh stop
#   ./scripts/pg.sh url
# track_commit_timestamp: tests/ha_failover.rs checks that no fenced batch committed after
# its epoch was superseded by comparing commit times (takes effect at the next start).
# Tests read the URL from KEYFLOAT_PG_URL (scripts/dev.sh test exports it) and create
# their own databases in it.
set -euo pipefail
PORT=${KEYFLOAT_PG_PORT:-55432}
DIR=${KEYFLOAT_PG_DIR:-/tmp/keyfloat-pg-$PORT}
URL="postgres://postgres@127.0.0.1:$PORT/postgres"

as_pg() { if [ "$(id -un)" = postgres ]; then "$@"; else runuser -u postgres -- "$@"; fi; }

bindir() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -n "$d" ] || { echo "PostgreSQL server binaries not found (apt-get install postgresql)" >&2; exit 1; }
  echo "$d"
}

cmd_start() {
  local bin; bin=$(bindir)
  if [ ! -f "$DIR/data/PG_VERSION" ]; then
    mkdir -p "$DIR"
    chown postgres:postgres "$DIR"
    as_pg "$bin/initdb" -D "$DIR/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$DIR/initdb.log" 2>&1 \
      || { cat "$DIR/initdb.log" >&2; exit 1; }
  fi
  if as_pg "$bin/pg_ctl" -D "$DIR/data" status >/dev/null 2>&1; then
    # A cluster started by an older pg.sh may lack a setting the tests need: restart it.
    if [ "$(as_pg "$bin/psql" -h "$DIR" -p "$PORT" -U postgres -Atc 'SHOW track_commit_timestamp')" = on ]; then
      echo "$URL"; return 0
    fi
    echo "restarting the private cluster with track_commit_timestamp=on" >&2
    as_pg "$bin/pg_ctl" -D "$DIR/data" -m fast -w stop >/dev/null
  fi
  # fsync stays on: the durability tests mean it.
  as_pg "$bin/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 start \
    -o "-p $PORT -k $DIR -c listen_addresses=127.0.0.1 -c max_connections=300 -c shared_buffers=128MB -c track_commit_timestamp=on" >/dev/null \
    || { tail -30 "$DIR/server.log" >&2; exit 1; }
  echo "$URL"
}

cmd_stop() {
  local bin; bin=$(bindir)
  as_pg "$bin/pg_ctl" -D "$DIR/data" -m fast -w stop >/dev/null 2>&1 || true
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  url) echo "$URL" ;;
  *) echo "usage: $0 start|stop|url" >&2; exit 2 ;;
esac
