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
# Park the configuration: every SLURM client (Snakemake's SLURM plugin asks `scontrol show
# config` each time Snakemake starts, even for a local run) would wait ~9 s for the stopped
# controller; with a 1 s message timeout it gives up at once. up.sh writes it anew.
CONF=/etc/slurm/slurm.conf
if grep -q '^# meldflow local-slurm configuration' "$CONF" 2>/dev/null \
   && ! grep -q '^MessageTimeout=1 ' "$CONF"; then
  sed -i '/^MessageTimeout=/d' "$CONF"
  echo "MessageTimeout=1  # parked by down.sh: the cluster is down" >> "$CONF"
fi
if [ -f "$STATE/run/started-mariadb" ]; then
  mysqladmin shutdown >/dev/null 2>&1 || true
  rm -f "$STATE/run/started-mariadb"
fi
if [ -f "$STATE/run/started-munged" ]; then
  stop_daemon /run/munge/munged.pid
  rm -f "$STATE/run/started-munged"
fi
echo "[local-slurm] down"
