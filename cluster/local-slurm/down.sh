#!/usr/bin/env bash
# Stop the cluster started by up.sh (its jobs are cancelled; the accounting database is
# kept). Only the daemons up.sh started are stopped, by their pid files; munge and MariaDB
# only if up.sh started them.
set -u
STATE=${MELDFLOW_SLURM_STATE:-/var/lib/meldflow-slurm}
# shellcheck source=cluster/local-slurm/daemons.sh
. "$(dirname "$0")/daemons.sh"
if ! daemon_running "$STATE/run/slurmctld.pid" && [ -n "$(foreign_daemons "$STATE")" ]; then
  echo "[local-slurm] the SLURM running here was not started by up.sh: left alone" >&2
  exit 1
fi
daemon_running "$STATE/run/slurmctld.pid" && scancel --user=root >/dev/null 2>&1
for f in "$STATE"/run/slurmd-*.pid "$STATE/run/slurmctld.pid" "$STATE/run/slurmdbd.pid"; do
  stop_daemon "$f"
done
if [ -f "$STATE/run/started-mariadb" ]; then
  mysqladmin shutdown >/dev/null 2>&1 || true
  rm -f "$STATE/run/started-mariadb"
fi
if [ -f "$STATE/run/started-munged" ]; then
  stop_daemon /run/munge/munged.pid
  rm -f "$STATE/run/started-munged"
fi
echo "[local-slurm] down"
