# Sourced by the peer scripts.  sweep DIR: SIGKILL every process left whose command line
# names a path under DIR (the peer's private directory, unique per test run), except this
# script and its caller.  A backstop after the pid-file stop: it also catches a
# systemd-socket-activate that never exec'd pcscd, or a child a peer spawned.
sweep() {
  local d=$1/ p cmd
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    [ "$p" = $$ ] || [ "$p" = "$PPID" ] || [ "$p" = "${BASHPID:-$$}" ] && continue
    cmd=$(tr '\0' ' ' 2>/dev/null < "/proc/$p/cmdline") || continue
    case $cmd in *"$d"*) kill -KILL "$p" 2>/dev/null || true ;; esac
  done
}
