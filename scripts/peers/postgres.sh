#!/usr/bin/env bash
# A private PostgreSQL 15 server (Debian's binaries) for the postgres token store's tests.
#   scripts/peers/postgres.sh start DIR -> prints the DSN: host=127.0.0.1 port=N dbname=ferrohsm user=ferrohsm
#   scripts/peers/postgres.sh stop DIR  -> pg_ctl stop -m fast (bounded), then SIGKILL what is left
# The cluster is in DIR/pg/data, owned by the unprivileged system user ferrohsm-pg (made
# here if missing; PostgreSQL refuses to run as root), or by the caller when not root.
# DIR's parents must be searchable by that user (a directory under /tmp is: the tests make
# theirs with tempfile.mkdtemp); DIR itself gets o+x, DIR/pg is 0700 ferrohsm-pg.
# Network: TCP on 127.0.0.1 only, no unix socket; pg_hba admits loopback only, trust, or
# scram-sha-256 if FERRO_PG_PASSWORD is set (the DSN then carries it).  Port: FERRO_PG_PORT,
# else the one of the last start in DIR if it is free again, else a free one.
# Role ferrohsm (LOGIN CREATEDB, no superuser) owns database ferrohsm.
# Bounded waits everywhere; the postmaster's pid is the first line of DIR/pg/data/postmaster.pid.
set -euo pipefail
cmd=${1:?start|stop}; D=${2:?dir}
[ "$cmd" != stop ] || [ -d "$D" ] || exit 0
mkdir -p "$D"; D=$(cd "$D" && pwd)
. "$(dirname "$0")/sweep.sh"
BIN=/usr/lib/postgresql/15/bin
PG=$D/pg; DATA=$PG/data; LOGF=$PG/postgres.log
OWNER=ferrohsm-pg; [ "$(id -u)" -eq 0 ] || OWNER=$(id -un)

as_owner() { if [ "$(id -u)" -eq 0 ]; then runuser -u "$OWNER" -- "$@"; else "$@"; fi; }
postmaster() { [ -f "$DATA/postmaster.pid" ] && head -1 "$DATA/postmaster.pid"; }
alive() { local p; p=$(postmaster 2>/dev/null) && [ -n "$p" ] && kill -0 "$p" 2>/dev/null; }
port() { cat "$PG/port"; }
dsn() {
  local extra="" pw
  if [ -n "${FERRO_PG_PASSWORD:-}" ]; then     # a libpq value: quoted, \ and ' escaped
    pw=${FERRO_PG_PASSWORD//\\/\\\\}; pw=${pw//\'/\\\'}; extra=" password='$pw'"
  fi
  echo "host=127.0.0.1 port=$(port) dbname=ferrohsm user=ferrohsm$extra"
}
psql_admin() {   # psql_admin SQL: run as the cluster's superuser over loopback
  as_owner env PGPASSWORD="${FERRO_PG_PASSWORD:-}" "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -tA \
    -h 127.0.0.1 -p "$(port)" -U "$OWNER" -d postgres -c "$1"
}
free_port() {
  python3 - <<'PY'
import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()
PY
}
children() {   # children PID: the postmaster's children (backends, workers; each setsid()s itself)
  local p stat fields
  for p in /proc/[0-9]*; do
    stat=$(cat "$p/stat" 2>/dev/null) || continue
    read -r -a fields <<< "${stat##*) }"         # after "(comm) ": state ppid ...
    [ "${fields[1]:-}" = "$1" ] && echo "${p#/proc/}"
  done
  return 0
}

ensure_user() {
  [ "$(id -u)" -eq 0 ] || return 0
  id -u "$OWNER" >/dev/null 2>&1 ||
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$OWNER"
}

init_cluster() {
  mkdir -p "$PG"; chmod o+x "$D"; chmod 0700 "$PG"; chown "$OWNER": "$PG"
  if ! as_owner test -x "$PG"; then
    echo "postgres.sh: $OWNER cannot reach $PG (a parent of $D is not searchable); use a DIR under /tmp" >&2
    exit 1
  fi
  [ -f "$DATA/PG_VERSION" ] && return 0
  local auth=trust pwfile=""
  if [ -n "${FERRO_PG_PASSWORD:-}" ]; then
    auth=scram-sha-256; pwfile=$PG/pwfile
    (umask 077; printf '%s\n' "$FERRO_PG_PASSWORD" > "$pwfile"); chown "$OWNER": "$pwfile"
  fi
  as_owner "$BIN/initdb" -D "$DATA" -U "$OWNER" -E UTF8 --locale=C.UTF-8 --auth="$auth" \
    ${pwfile:+--pwfile="$pwfile"} >"$PG/initdb.log" 2>&1 ||
    { echo "postgres.sh: initdb failed, see $PG/initdb.log" >&2; rm -f "$pwfile"; exit 1; }
  rm -f "$pwfile"
  # loopback TCP only: no unix socket, no other address, no other client in pg_hba
  printf "listen_addresses = '127.0.0.1'\nunix_socket_directories = ''\n" >> "$DATA/postgresql.conf"
  printf "host all all 127.0.0.1/32 %s\n" "$auth" > "$DATA/pg_hba.conf"
}

start_server() {
  local try port=${FERRO_PG_PORT:-}
  [ -n "$port" ] || [ ! -f "$PG/port" ] || port=$(cat "$PG/port")   # a restart keeps its DSN if it can
  for try in 1 2 3; do
    echo "${port:-$(free_port)}" > "$PG/port"; [ -n "${FERRO_PG_PORT:-}" ] || port=""
    # pg_ctl setsid()s the postmaster: a terminal's Ctrl-C aimed at the tests does not reach it
    if as_owner "$BIN/pg_ctl" -D "$DATA" -l "$LOGF" -w -t 30 -s -o "-p $(port)" start >/dev/null 2>&1; then
      return 0
    fi
    alive && return 0
    [ -n "${FERRO_PG_PORT:-}" ] && break        # a fixed port: no point in another try
  done
  echo "postgres.sh: server did not start, see $LOGF" >&2; exit 1
}

case $cmd in
start)
  ensure_user
  if ! alive; then init_cluster; start_server; fi
  pw=""; [ -z "${FERRO_PG_PASSWORD:-}" ] || pw=" PASSWORD '${FERRO_PG_PASSWORD//\'/\'\'}'"
  [ "$(psql_admin "SELECT 1 FROM pg_roles WHERE rolname = 'ferrohsm'")" = 1 ] ||
    psql_admin "CREATE ROLE ferrohsm LOGIN CREATEDB$pw"
  [ "$(psql_admin "SELECT 1 FROM pg_database WHERE datname = 'ferrohsm'")" = 1 ] ||
    psql_admin "CREATE DATABASE ferrohsm OWNER ferrohsm"
  dsn
  ;;
stop)
  if alive; then
    p=$(postmaster); kids=$(children "$p")
    as_owner "$BIN/pg_ctl" -D "$DATA" -m fast -w -t 10 -s stop >/dev/null 2>&1 ||
      echo "postgres.sh: pg_ctl stop failed, killing $p" >&2
    for q in $p $kids; do kill -KILL "$q" 2>/dev/null || true; done   # the backstop: gone already if the stop worked
  fi
  sweep "$D"
  ;;
*) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
