#!/usr/bin/env bash
# A throw-away PostgreSQL server for the tests that need one (RDDN_TEST_POSTGRES_URL).
#
#   eval "$(.ci/postgres.sh)"        # start (installing Debian's postgresql if absent); prints the export line
#   .ci/postgres.sh stop             # stop it (data dir kept; `start` again reuses it)
#   .ci/postgres.sh status | url     # is it running? / print the URL
#
# Idempotent: starting a running server only prints the URL. Everything lives in $RDDN_PG_DIR (default
# /tmp/rddn-ci-postgres) and listens on 127.0.0.1:$RDDN_PG_PORT (default 55432) only, trust auth (loopback,
# test data). As root the server runs as the `postgres` user (initdb refuses root). Logs go to stderr and
# $RDDN_PG_DIR/server.log; stdout carries only the export line so `eval` is safe.
set -euo pipefail

PGDIR=${RDDN_PG_DIR:-${TMPDIR:-/tmp}/rddn-ci-postgres}
PORT=${RDDN_PG_PORT:-55432}
DB=${RDDN_PG_DB:-rddn_test}
DATA="$PGDIR/data"
SOCKDIR="$PGDIR/run"

say() { echo "postgres.sh: $*" >&2; }

find_bindir() {
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [ -x "$d/initdb" ] && { echo "$d"; return 0; }
  done
  if command -v initdb >/dev/null 2>&1; then dirname "$(readlink -f "$(command -v initdb)")"; return 0; fi
  return 1
}

ensure_installed() {
  if ! BIN=$(find_bindir); then
    say "PostgreSQL not found; installing Debian's package"
    if [ "$(id -u)" -ne 0 ]; then say "need root to apt-get install postgresql"; exit 1; fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 && apt-get install -y -qq postgresql >&2
    BIN=$(find_bindir) || { say "postgresql installed but initdb not found"; exit 1; }
  fi
}

# Run a command as the server's owner (postgres when we are root).
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

url() { echo "postgresql+psycopg://postgres@127.0.0.1:$PORT/$DB"; }

running() { [ -n "${BIN:-}" ] && as_owner "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; }

start() {
  ensure_installed
  mkdir -p "$PGDIR" "$SOCKDIR"
  [ "$(id -u)" -eq 0 ] && { id postgres >/dev/null 2>&1 || as_owner true; chown postgres: "$PGDIR" "$SOCKDIR"; }
  if [ ! -f "$DATA/PG_VERSION" ]; then
    say "initdb $DATA"
    as_owner "$BIN/initdb" -D "$DATA" -U postgres --auth=trust --encoding=UTF8 --no-locale >"$PGDIR/initdb.log" 2>&1 \
      || { cat "$PGDIR/initdb.log" >&2; exit 1; }
  fi
  if running; then
    say "already running on 127.0.0.1:$PORT"
  else
    say "starting on 127.0.0.1:$PORT"
    as_owner "$BIN/pg_ctl" -D "$DATA" -l "$PGDIR/server.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $PORT -k $SOCKDIR -c fsync=off -c max_connections=100" start >&2 \
      || { tail -20 "$PGDIR/server.log" >&2; exit 1; }
  fi
  if ! as_owner "$BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -Atqc "SELECT 1 FROM pg_database WHERE datname='$DB'" postgres | grep -q 1; then
    as_owner "$BIN/createdb" -h 127.0.0.1 -p "$PORT" -U postgres "$DB"
  fi
  echo "export RDDN_TEST_POSTGRES_URL=$(url)" | tee "$PGDIR/env"
}

stop() {
  BIN=$(find_bindir) || { say "no PostgreSQL installed; nothing to stop"; return 0; }
  if running; then
    as_owner "$BIN/pg_ctl" -D "$DATA" -m fast -w stop >&2
  else
    say "not running"
  fi
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  status) BIN=$(find_bindir) || exit 3; if running; then say "running: $(url)"; else say "stopped"; exit 3; fi ;;
  url) url ;;
  *) say "usage: $0 [start|stop|status|url]"; exit 2 ;;
esac
