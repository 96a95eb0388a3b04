#!/usr/bin/env bash
# The local test cluster's daemons, known by the pid files they write under $STATE/run
# (slurmdbd.pid, slurmctld.pid, slurmd-nI.pid): sourced by up.sh and down.sh, and run by
# the tests to stop or start one daemon. Nothing here touches a daemon it did not start.
#   bash cluster/local-slurm/daemons.sh stop slurmdbd      # (or slurmctld, slurmd-n2)
#   bash cluster/local-slurm/daemons.sh kill slurmd-n2     # SIGKILL: a node losing power
#   bash cluster/local-slurm/daemons.sh start slurmdbd

# The pid in a pid file, if that process runs and is the daemon the file is named after.
daemon_pid() {
  local file=$1 pid name
  [ -s "$file" ] || return 1
  pid=$(tr -dc '0-9' <"$file")
  name=$(basename "$file" .pid)
  name=${name%%-*}  # slurmd-n1 -> slurmd
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ] || return 1
  echo "$pid"
}

daemon_running() { daemon_pid "$1" >/dev/null; }

# Stop the daemon of a pid file (SIGTERM, or the signal given) and wait until it is gone.
stop_daemon() {
  local file=$1 signal=${2:-TERM} pid
  pid=$(daemon_pid "$file") || return 0
  kill "-$signal" "$pid" 2>/dev/null || true
  for _ in $(seq 1800); do [ -d "/proc/$pid" ] || return 0; sleep 0.1; done
  echo "[local-slurm] $(basename "$file" .pid) ($pid) did not stop" >&2
  return 1
}

# SLURM daemons running on this machine that no pid file under $1/run names.
foreign_daemons() {
  local state=$1 d pid f ours out=""
  for d in slurmdbd slurmctld slurmd; do
    for pid in $(pgrep -x "$d" || true); do
      ours=no
      for f in "$state/run/$d.pid" "$state"/run/"$d"-*.pid; do
        [ -f "$f" ] && [ "$(tr -dc '0-9' <"$f")" = "$pid" ] && ours=yes
      done
      [ "$ours" = yes ] || out+=" $d (pid $pid)"
    done
  done
  echo "$out"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then  # run, not sourced
  set -euo pipefail
  STATE=${MELDFLOW_SLURM_STATE:-/var/lib/meldflow-slurm}
  action=${1:?usage: daemons.sh stop|kill|start DAEMON}
  daemon=${2:?usage: daemons.sh stop|kill|start DAEMON (slurmdbd, slurmctld, slurmd-nI)}
  file="$STATE/run/$daemon.pid"
  case $action in
    stop) stop_daemon "$file" TERM ;;
    kill) stop_daemon "$file" KILL ;;
    start)
      daemon_running "$file" && exit 0
      case $daemon in
        slurmd-*) slurmd -N "${daemon#slurmd-}" ;;
        slurmdbd | slurmctld) "$daemon" ;;
        *) echo "unknown daemon $daemon" >&2; exit 2 ;;
      esac ;;
    *) echo "unknown action $action" >&2; exit 2 ;;
  esac
fi
