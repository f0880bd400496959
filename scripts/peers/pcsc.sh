#!/usr/bin/env bash
# A private pcscd (socket-activated, its own socket and config dir) with the vpcd reader
# driver and a jcecard PIV card joined to it by tests/peers/vpcd_bridge.py, all in DIR.
#   pcsc.sh start DIR         -> prints PCSCLITE_CSOCK_NAME=... and READER=...
#   pcsc.sh stop DIR          -> stops the card bridge and pcscd (by pid, bounded waits)
#   pcsc.sh pcscd-restart DIR -> stops and restarts pcscd only (the card keeps its keys)
#   pcsc.sh card-out|card-in DIR -> pull the card out of the reader / put it back
#   pcsc.sh card-stop|card-start DIR -> stop / start the card emulator (keys are lost)
# vpcd listens on all addresses (no bind option in Debian's build); the card side
# connects from 127.0.0.1 only.  Pids: DIR/pcscd.pid, DIR/bridge.pid.
set -euo pipefail
cmd=${1:?start|stop|pcscd-restart|card-out|card-in|card-stop|card-start}; D=${2:?dir}
mkdir -p "$D"; D=$(cd "$D" && pwd)
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
export PCSCLITE_CSOCK_NAME=$D/pcscd.comm
READER='Virtual PCD 00 00'
. "$ROOT/scripts/peers/sweep.sh"

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
stop_pid() {   # stop_pid PIDFILE: SIGTERM, wait <= 5 s, then SIGKILL
  alive "$1" || { rm -f "$1"; return 0; }
  local p; p=$(cat "$1"); kill -TERM "$p" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || { rm -f "$1"; return 0; }; sleep 0.05; done
  kill -KILL "$p" 2>/dev/null || true; sleep 0.1; rm -f "$1"
}
free_port() {  # an even port P with P and P+1 free (vpcd uses both)
  "$PY" - <<'PY'
import random, socket
for _ in range(200):
    p = random.randrange(35000, 45000, 2)
    try:
        for q in (p, p + 1):
            s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", q)); s.close()
        print(p); break
    except OSError:
        pass
PY
}
start_pcscd() {
  rm -f "$PCSCLITE_CSOCK_NAME"
  # setsid: a terminal's Ctrl-C aimed at the tests must not reach the peer first
  setsid systemd-socket-activate -l "$PCSCLITE_CSOCK_NAME" \
    pcscd --foreground --config "$D/conf" >>"$D/pcscd.log" 2>&1 &
  echo $! > "$D/pcscd.pid"        # socket-activate execs pcscd: this pid becomes pcscd
  for _ in $(seq 200); do [ -S "$PCSCLITE_CSOCK_NAME" ] && break; sleep 0.025; done
  [ -S "$PCSCLITE_CSOCK_NAME" ] || { echo "pcsc.sh: no pcscd socket" >&2; return 1; }
  # pcscd starts on the first client and then loads vpcd
  timeout 10 "$PY" -c "from smartcard.scard import *; SCardEstablishContext(SCARD_SCOPE_USER)" \
    || { echo "pcsc.sh: pcscd did not start, see $D/pcscd.log" >&2; return 1; }
}
start_card() {
  setsid "$PY" "$ROOT/tests/peers/vpcd_bridge.py" --port "$(cat "$D/port")" --state "$D/card" \
    >>"$D/card.log" 2>&1 &
  echo $! > "$D/bridge.pid"
}
wait_card() {  # until the reader has a card that answers (bounded: 15 s)
  for _ in $(seq 300); do
    timeout 3 opensc-tool -r 0 -a >/dev/null 2>&1 && return 0; sleep 0.05
  done
  echo "pcsc.sh: card not ready, see $D/pcscd.log $D/card.log" >&2; return 1
}
signal_card() { alive "$D/bridge.pid" && kill "-$1" "$(cat "$D/bridge.pid")"; }

case $cmd in
start)
  if ! alive "$D/pcscd.pid"; then
    mkdir -p "$D/conf" "$D/card"; port=$(free_port); echo "$port" > "$D/port"
    printf 'FRIENDLYNAME "Virtual PCD"\nDEVICENAME /dev/null:%d\nLIBPATH %s\nCHANNELID %d\n' \
      "$port" /usr/lib/pcsc/drivers/serial/libifdvpcd.so "$port" > "$D/conf/vpcd"
    start_pcscd
  fi
  alive "$D/bridge.pid" || start_card
  wait_card
  echo "PCSCLITE_CSOCK_NAME=$PCSCLITE_CSOCK_NAME"; echo "READER=$READER"
  ;;
stop) stop_pid "$D/bridge.pid"; stop_pid "$D/pcscd.pid"; sweep "$D"; rm -f "$PCSCLITE_CSOCK_NAME" ;;
pcscd-restart) stop_pid "$D/pcscd.pid"; start_pcscd; wait_card ;;
card-out)   # until pcscd has seen the card go (bounded: 5 s)
  signal_card USR1
  for _ in $(seq 100); do timeout 3 opensc-tool -r 0 -a >/dev/null 2>&1 || exit 0; sleep 0.05; done
  echo "pcsc.sh: card still present" >&2; exit 1 ;;
card-in) signal_card USR2; wait_card ;;
card-stop) stop_pid "$D/bridge.pid" ;;
card-start) alive "$D/bridge.pid" || start_card; wait_card ;;
*) echo "usage: $0 start|stop|pcscd-restart|card-out|card-in|card-stop|card-start DIR" >&2; exit 2 ;;
esac
