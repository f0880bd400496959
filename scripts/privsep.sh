#!/usr/bin/env bash
# Privilege separation: FerroHSM behind `p11-kit server`, run as a service user that alone
# can reach the token files; clients load p11-kit-client.so and talk over a Unix socket
# that only the members of one group may connect to.  Run as root (it makes users).
#   scripts/privsep.sh start DIR -> prints the P11_KIT_SERVER_ADDRESS (unix:path=DIR/run/pkcs11.sock)
#   scripts/privsep.sh stop DIR  -> SIGTERM the server and its per-connection children
#                                   (SIGKILL after 5 s), then removes everything it made in DIR
#                                   (the token too: this is a throw-away deployment; README.md's
#                                   "Deployment: privilege separation" shows a lasting one)
# Idempotent (a second start prints the same address), no stdin, Unix sockets only.
#
# What it makes (users and group only if missing; they stay after stop):
#   ferrohsm-svc      system user, runs p11-kit server and so the module; owns DIR/service
#   ferrohsm-clients  system group admitted to the socket
#   ferrohsm-client   system user in ferrohsm-clients (FERRO_PRIVSEP_CLIENTS: a space-separated
#                     list of users to create if missing and add to the group; "" for none)
#   DIR               o+x, so both users can reach their parts (its parents must be searchable
#                     by them: a directory under /tmp is)
#   DIR/service       0700 ferrohsm-svc: ferrohsm.conf, tokens/ (0700), ferrohsm.log
#   DIR/run           0750 ferrohsm-svc:ferrohsm-clients: pkcs11.sock, 0660 ferrohsm-svc:ferrohsm-clients
#   DIR/server.pid, DIR/server.log (p11-kit's stderr)  root's, 0600
#
# The socket's mode is set here, not by p11-kit: p11-kit server 0.24 binds it under umask 066
# (srwx--x--x, owner = the server's user: only that user may connect, and a Unix socket needs
# write permission to connect).  Its -u USER -g GROUP chown the socket to them, which fails
# (EPERM) once -a/-z or runuser dropped root, and also make the server refuse every peer whose
# uid is not USER or whose *primary* gid (SO_PEERCRED) is not GROUP: a user who is in the
# group only as a supplementary group gets CKR_DEVICE_ERROR.  So the server runs with neither,
# and root chgrps and chmods the socket once p11-kit has bound it.  Before that, and again if
# the server is restarted by other means, the socket is 0711: it fails closed.
#
# The token: FERRO_PRIVSEP_LABEL (default "Privsep Token"), user PIN FERRO_PRIVSEP_PIN, SO PIN
# FERRO_PRIVSEP_SO_PIN (defaults below, for tests only), initialised by ferrohsm-svc with
# pkcs11-tool (PINs through the environment, never on a command line).  The module:
# FERRO_PRIVSEP_MODULE, else the one installed in the repository's .venv.  ferrohsm-svc
# must be able to read it and the Python it embeds: every directory from / down to the
# module must be searchable by others (a clone under /root is not); this is checked first.
set -euo pipefail
cmd=${1:?start|stop}; D=${2:?dir}
[ "$cmd" != stop ] || [ -d "$D" ] || exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "privsep.sh: run as root (it creates the service and client users)" >&2; exit 1
fi
mkdir -p "$D"; D=$(cd "$D" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd); REPO=$(dirname "$HERE")
. "$HERE/peers/sweep.sh"
SVC=ferrohsm-svc; GROUP=ferrohsm-clients; CLIENTS=${FERRO_PRIVSEP_CLIENTS-ferrohsm-client}
LABEL=${FERRO_PRIVSEP_LABEL:-Privsep Token}
export FERRO_PRIVSEP_PIN=${FERRO_PRIVSEP_PIN:-privsep-user-1234}
export FERRO_PRIVSEP_SO_PIN=${FERRO_PRIVSEP_SO_PIN:-privsep-so-12345678}
SRV=$D/service; TOK=$SRV/tokens; CONF=$SRV/ferrohsm.conf; RUN=$D/run; SOCK=$RUN/pkcs11.sock
PIDF=$D/server.pid; LOGF=$D/server.log
CLIENT_LIB=/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so
umask 077

say() { echo "privsep.sh: $*" >&2; }
address() { echo "unix:path=$SOCK"; }
pid_alive() {   # pid_alive PID: running (a zombie is not) and it is our server
  local st
  st=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  st=${st##*) }; [ "${st%% *}" != Z ] || return 1
  tr '\0' ' ' < "/proc/$1/cmdline" 2>/dev/null | grep -qF -- "$SOCK"
}
alive() { [ -f "$PIDF" ] && pid_alive "$(cat "$PIDF")"; }
children() {   # children PID: the server's per-connection p11-kit-remote processes
  local p stat fields
  for p in /proc/[0-9]*; do
    stat=$(cat "$p/stat" 2>/dev/null) || continue
    read -r -a fields <<< "${stat##*) }"
    [ "${fields[1]:-}" = "$1" ] && echo "${p#/proc/}"
  done
  return 0
}
as_svc() {   # as_svc CMD...: as the service user, with a minimal environment
  runuser -u "$SVC" -- env -i PATH=/usr/bin:/bin LANG=C.UTF-8 HOME="$SRV" FERROHSM_CONF="$CONF" \
    FERRO_PRIVSEP_PIN="$FERRO_PRIVSEP_PIN" FERRO_PRIVSEP_SO_PIN="$FERRO_PRIVSEP_SO_PIN" "$@" </dev/null
}

module_path() {
  if [ -n "${FERRO_PRIVSEP_MODULE:-}" ]; then echo "$FERRO_PRIVSEP_MODULE"; return; fi
  [ -x "$REPO/.venv/bin/python" ] || { say "no $REPO/.venv: run scripts/setup.sh first"; exit 1; }
  (cd / && "$REPO/.venv/bin/python" -c 'import pkcs11_shim; print(pkcs11_shim.module_path())')
}

ensure_users() {
  getent group "$GROUP" >/dev/null || groupadd --system "$GROUP"
  id -u "$SVC" >/dev/null 2>&1 ||
    useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$SVC"
  local u
  for u in $CLIENTS; do
    id -u "$u" >/dev/null 2>&1 ||
      useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$u"
    id -nG "$u" | tr ' ' '\n' | grep -qx "$GROUP" || usermod -aG "$GROUP" "$u"
  done
  if id -nG "$SVC" | tr ' ' '\n' | grep -qx "$GROUP"; then   # not needed, and it would not matter
    say "note: $SVC is in $GROUP"
  fi
}

check_module() {   # the service user must load the module: explain the path if it cannot
  local lib=$1
  [ -f "$lib" ] || { say "module $lib missing: run scripts/setup.sh (pip install .)"; exit 1; }
  if ! runuser -u "$SVC" -- test -r "$lib"; then
    say "$SVC cannot read $lib: every directory down to it must be searchable (o+x) and"
    say "the file readable by others; clone under a path such as /opt or /srv, not /root:"
    namei -l "$lib" >&2 || true
    exit 1
  fi
  if ! as_svc pkcs11-tool --module "$lib" --list-slots >"$D/module-check.log" 2>&1; then
    say "$SVC can read $lib but not load it (the Python it embeds must be readable too):"
    cat "$D/module-check.log" >&2; exit 1
  fi
  rm -f "$D/module-check.log"
}

make_dirs() {
  chmod o+x "$D"
  mkdir -p "$TOK" "$RUN"
  chown "$SVC:" "$SRV" "$TOK"; chmod 0700 "$SRV" "$TOK"
  chown "$SVC:$GROUP" "$RUN"; chmod 0750 "$RUN"
  if ! runuser -u "$SVC" -- test -w "$TOK"; then
    say "$SVC cannot reach $TOK (a parent of $D is not searchable); use a DIR under /tmp"
    namei -l "$TOK" >&2 || true; exit 1
  fi
  if [ ! -f "$CONF" ]; then
    printf '[tokens]\ndirectory = "%s"\n\n[log]\nlevel = "WARNING"\nfile = "%s"\n' \
      "$TOK" "$SRV/ferrohsm.log" > "$CONF"
    chown "$SVC:" "$CONF"; chmod 0600 "$CONF"
  fi
}

init_token() {   # once: a token labelled $LABEL, initialised by the service user
  local lib=$1
  if as_svc pkcs11-tool --module "$lib" --list-token-slots 2>/dev/null |
      sed -n 's/^ *token label *: //p' | grep -qxF -- "$LABEL"; then
    return 0
  fi
  as_svc pkcs11-tool --module "$lib" --init-token --slot-index 0 --label "$LABEL" \
    --so-pin env:FERRO_PRIVSEP_SO_PIN >"$D/init.log" 2>&1 &&
  as_svc pkcs11-tool --module "$lib" --token-label "$LABEL" --login --login-type so \
    --so-pin env:FERRO_PRIVSEP_SO_PIN --init-pin --new-pin env:FERRO_PRIVSEP_PIN >>"$D/init.log" 2>&1 ||
    { say "token initialisation failed:"; cat "$D/init.log" >&2; exit 1; }
  rm -f "$D/init.log"
}

start_server() {
  local lib=$1 uri out pid
  [ ${#SOCK} -lt 108 ] || { say "socket path $SOCK is too long for a Unix socket (108 bytes)"; exit 1; }
  uri="pkcs11:token=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$LABEL")"
  rm -f "$SOCK"
  # p11-kit server daemonises (setsid) once the socket is bound, and prints its pid
  out=$(as_svc p11-kit server --sh --name "$SOCK" --provider "$lib" "$uri" 2>>"$LOGF") ||
    { say "p11-kit server did not start, see $LOGF"; exit 1; }
  pid=$(sed -n 's/^P11_KIT_SERVER_PID=\([0-9]*\);.*/\1/p' <<< "$out")
  [ -n "$pid" ] || { say "p11-kit server printed no pid: $out"; exit 1; }
  echo "$pid" > "$PIDF"
  for _ in $(seq 100); do [ -S "$SOCK" ] && break; sleep 0.05; done
  if ! [ -S "$SOCK" ] || ! pid_alive "$pid"; then
    say "p11-kit server is not listening on $SOCK, see $LOGF"; exit 1
  fi
  chgrp "$GROUP" "$SOCK"; chmod 0660 "$SOCK"
}

stop_server() {
  local p kids q
  if alive; then
    p=$(cat "$PIDF"); kids=$(children "$p")
    for q in $p $kids; do kill -TERM "$q" 2>/dev/null || true; done
    for _ in $(seq 100); do pid_alive "$p" || break; sleep 0.05; done
    for q in $p $kids; do kill -KILL "$q" 2>/dev/null || true; done   # gone already if TERM worked
  fi
  sweep "$D"
}

case $cmd in
start)
  if alive && [ -S "$SOCK" ]; then address; exit 0; fi
  stop_server      # a server without its socket, or a stale pid file
  ensure_users
  lib=$(module_path)
  make_dirs
  check_module "$lib"
  init_token "$lib"
  start_server "$lib"
  address
  ;;
stop)
  stop_server
  rm -rf "$SRV" "$RUN" "$PIDF" "$LOGF" "$D/init.log" "$D/module-check.log"
  ;;
*) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
