#!/usr/bin/env bash
# swtpm on a unix socket in DIR, for tests.  Loopback only: no TCP port at all.
#   scripts/peers/tpm.sh start DIR   -> prints the TCTI string (swtpm:path=DIR/swtpm.sock)
#   scripts/peers/tpm.sh stop DIR    -> TPM2_Shutdown(CLEAR), SIGTERM, wait (SIGKILL after 8 s)
# A fresh state dir gets relaxed dictionary-attack settings (no 1000 s lockout) unless
# FERRO_TPM_DA=strict; a test that is about lockout sets its own parameters.
# Bounded waits everywhere; the pid is in DIR/swtpm.pid.
set -euo pipefail
cmd=${1:?start|stop}; D=${2:?state dir}
mkdir -p "$D"; D=$(cd "$D" && pwd)
. "$(dirname "$0")/sweep.sh"
S=$D/swtpm.sock; T="swtpm:path=$S"; PIDF=$D/swtpm.pid

alive() { [ -f "$PIDF" ] && kill -0 "$(cat "$PIDF")" 2>/dev/null; }

wait_gone() {   # swtpm holds its state-dir lock until it has exited (1-2 s)
  local p=$1
  for _ in $(seq 160); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.05; done
  kill -KILL "$p" 2>/dev/null || true
  for _ in $(seq 40); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.05; done
  echo "tpm.sh: swtpm $p did not exit" >&2; return 1
}

case $cmd in
start)
  if alive; then echo "$T"; exit 0; fi
  fresh=0; [ -e "$D/tpm2-00.permall" ] || fresh=1
  rm -f "$S" "$S.ctrl"
  swtpm socket --tpm2 --tpmstate dir="$D" \
    --server type=unixio,path="$S" --ctrl type=unixio,path="$S.ctrl" \
    --flags not-need-init,startup-clear --pid file="$PIDF" --log file="$D/swtpm.log" -d
  ok=0
  for _ in $(seq 250); do   # ~5 s at most; usually ready in 30-150 ms
    if timeout 2 tpm2_getcap -T "$T" properties-fixed >/dev/null 2>&1; then ok=1; break; fi
    sleep 0.02
  done
  if [ $ok = 0 ]; then echo "tpm.sh: swtpm not ready, see $D/swtpm.log" >&2; exit 1; fi
  if [ $fresh = 1 ] && [ "${FERRO_TPM_DA:-relaxed}" = relaxed ]; then
    timeout 5 tpm2_dictionarylockout -T "$T" --setup-parameters --max-tries=4294967295 \
      --recovery-time=0 --lockout-recovery-time=0 >/dev/null
  fi
  echo "$T"
  ;;
stop)
  alive || { rm -f "$PIDF"; sweep "$D"; exit 0; }
  p=$(cat "$PIDF")
  # Shutdown(CLEAR) first: an unorderly stop counts as a dictionary-attack failure.
  timeout 5 tpm2_shutdown -T "$T" -c >/dev/null 2>&1 || echo "tpm.sh: tpm2_shutdown failed" >&2
  kill -TERM "$p" 2>/dev/null || true
  wait_gone "$p"
  rm -f "$PIDF"; sweep "$D"
  ;;
*) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
