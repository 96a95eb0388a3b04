#!/usr/bin/env bash
# Start a real one-node SLURM cluster with accounting on this machine, for tests and demos:
# munge, MariaDB, slurmdbd, slurmctld and slurmd from Debian's packages, run as root.
# Idempotent: a cluster that already answers is left as it is. Stop it with down.sh.
set -euo pipefail

CLUSTER=meldflow
ACCOUNT=meldflow
STATE=${MELDFLOW_SLURM_STATE:-/var/lib/meldflow-slurm}
ETC=/etc/slurm
PACKAGES="munge mariadb-server slurmdbd slurmctld slurmd slurm-client"
CONF_VERSION="meldflow local-slurm configuration v3"  # bump when slurm.conf changes

log() { echo "[local-slurm] $*"; }
die() { echo "[local-slurm] error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (it installs packages and starts daemons)"

if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)' \
   && sacct -n -X -S now-1minutes >/dev/null 2>&1 \
   && grep -qF "# $CONF_VERSION" "$ETC/slurm.conf" 2>/dev/null; then
  log "already up: $(sinfo -h -o '%P %D %T')"
  exit 0
fi

missing=""
for p in $PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  log "installing:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq $missing >/dev/null 2>&1 || \
    { apt-get update -qq && apt-get install -y -qq $missing >/dev/null; }
fi

mkdir -p "$STATE"/{spool-ctld,spool-d,log,run} "$ETC"
HOST=$(hostname -s)

# --- munge -------------------------------------------------------------------------
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
  chown munge:munge /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
fi
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  runuser -u munge -- /usr/sbin/munged --force
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
fi
munge -n | unmunge >/dev/null || die "munge does not work"

# --- MariaDB -------------------------------------------------------------------------
mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
if ! mysqladmin ping >/dev/null 2>&1; then
  [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql >/dev/null
  (mariadbd-safe --user=mysql >/dev/null 2>&1 &)
  for _ in $(seq 300); do mysqladmin ping >/dev/null 2>&1 && break; sleep 0.2; done
fi
mysqladmin ping >/dev/null 2>&1 || die "MariaDB did not start"
mysql -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
          CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'meldflow';
          GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"

# --- configuration -------------------------------------------------------------------
cat > "$ETC/slurmdbd.conf" <<CONF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=meldflow
StorageLoc=slurm_acct_db
LogFile=$STATE/log/slurmdbd.log
PidFile=$STATE/run/slurmdbd.pid
CONF
chmod 600 "$ETC/slurmdbd.conf"

NODE=$(slurmd -C | head -n 1)
old_conf=$(cat "$ETC/slurm.conf" 2>/dev/null || true)
cat > "$ETC/slurm.conf" <<CONF
# $CONF_VERSION
# Written by cluster/local-slurm/up.sh: one node, accounting through slurmdbd.
ClusterName=$CLUSTER
SlurmctldHost=$HOST
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=2
# Keep the job comment (Snakemake puts rule and wildcards there) for meldflow status.
AccountingStoreFlags=job_comment
JobCompType=jobcomp/none
ReturnToService=2
MinJobAge=300
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
StateSaveLocation=$STATE/spool-ctld
SlurmdSpoolDir=$STATE/spool-d
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
$NODE State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF

# --- daemons -------------------------------------------------------------------------
pgrep -x slurmdbd >/dev/null || slurmdbd
for _ in $(seq 200); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.2; done
sacctmgr -n list cluster >/dev/null 2>&1 || die "slurmdbd did not answer ($STATE/log/slurmdbd.log)"
sacctmgr -n list cluster format=cluster%30 | grep -qw "$CLUSTER" \
  || sacctmgr -i add cluster "$CLUSTER" >/dev/null
sacctmgr -n list account format=account%30 | grep -qw "$ACCOUNT" \
  || sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" Description=meldflow Organization=meldflow >/dev/null
sacctmgr -n list user root format=user,defaultaccount%30 | grep -qw "$ACCOUNT" \
  || sacctmgr -i add user root Account="$ACCOUNT" DefaultAccount="$ACCOUNT" >/dev/null

# Running daemons re-read a changed configuration instead of keeping the old one.
if pgrep -x slurmctld >/dev/null && [ "$old_conf" != "$(cat "$ETC/slurm.conf")" ]; then
  scontrol reconfigure || die "scontrol reconfigure failed ($STATE/log/)"
fi
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 300); do
  state=$(sinfo -h -o %T 2>/dev/null | head -n 1 || true)
  case "$state" in idle|mixed|allocated) break ;; down*|drain*) scontrol update nodename="$HOST" state=resume 2>/dev/null || true ;; esac
  sleep 0.2
done
sinfo -h -o %T | grep -qE '^(idle|mixed|allocated)' || die "node not ready: $(sinfo -h 2>&1) ($STATE/log/)"
log "up: cluster $CLUSTER, node $HOST ($(sinfo -h -o '%c CPUs, %m MB')), account $ACCOUNT"
