#!/usr/bin/env bash
# Start a real SLURM cluster with accounting on this machine, for tests and demos: munge,
# MariaDB, slurmdbd, slurmctld and N slurmd daemons (nodes n1..nN, default 2) from Debian's
# packages, run as root. This Debian build has MULTIPLE_SLURMD, so each node is its own
# `slurmd -N nI` with its own port; the node names resolve to 127.0.0.1 (/etc/hosts) for
# torch's rendezvous. Memory is a consumable, enforced resource: with the cgroup v1 memory
# controller (present on these machines) a job over its request is killed by the kernel
# and ends OUT_OF_MEMORY; without it, slurmstepd's OverMemoryKill kills it and the job
# ends FAILED. Each node offers all of the machine's CPUs (they are shared) and 1/N of
# its memory. Like a real site: two partitions, cpu (the default, 4 h) and gpu (1 day);
# accounting enforced (an unknown account or partition makes sbatch fail; root's
# association with account meldflow is made here, under QOS site: at most 20 jobs submitted
# per user, 12 h per job, 4 GPUs per user; and account meldflow-tight, QOS tight: 1 job);
# and 2 GPUs per node as generic
# resources, backed by device files that exist without a GPU (/dev/tty0, /dev/tty1), so
# SLURM schedules, counts (AllocTRES gres/gpu) and binds them and sets each job's
# CUDA_VISIBLE_DEVICES.
#   MELDFLOW_SLURM_NODES=1 bash cluster/local-slurm/up.sh   # one node
# Idempotent: a cluster that already answers with this configuration is left as it is.
# Stop it with down.sh. It only ever stops or restarts the daemons it started itself (by
# the pid files under $STATE/run), and refuses to run where SLURM daemons it did not start
# are running (a machine that is part of a real cluster).
set -euo pipefail

CLUSTER=meldflow
ACCOUNT=meldflow
NODES=${MELDFLOW_SLURM_NODES:-2}
STATE=${MELDFLOW_SLURM_STATE:-/var/lib/meldflow-slurm}
ETC=/etc/slurm
PACKAGES="munge mariadb-server slurmdbd slurmctld slurmd slurm-client"
if grep -qE '^[^ ]+ /sys/fs/cgroup/memory cgroup ' /proc/mounts; then
  LIMITS=cgroup
  PROCTRACK=proctrack/cgroup TASK=task/cgroup GATHER_PARAMS=NoOverMemoryKill
else
  LIMITS=overmemorykill
  PROCTRACK=proctrack/linuxproc TASK=task/none GATHER_PARAMS=OverMemoryKill
fi
CONF_VERSION="meldflow local-slurm configuration v8, $NODES node(s), memory limits by $LIMITS"
GPUS_PER_NODE=2
QOS=site                # the test account's QOS and its limits
QOS_MAX_SUBMIT=${MELDFLOW_SLURM_MAX_SUBMIT:-20}
QOS_MAX_WALL=12:00:00
QOS_MAX_GPUS=4
GPU_FILES="/dev/tty[0-1]"  # stand-ins: SLURM only needs device files that exist

log() { echo "[local-slurm] $*"; }
die() { echo "[local-slurm] error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (it installs packages and starts daemons)"

# Daemons of a SLURM this script did not start (by its pid files) are not ours to touch.
# shellcheck source=cluster/local-slurm/daemons.sh
. "$(dirname "$0")/daemons.sh"
foreign=$(foreign_daemons "$STATE")
[ -z "$foreign" ] || die "SLURM daemons that this script did not start are running:$foreign.
  This machine runs a SLURM of its own: the local test cluster would reconfigure and
  restart it. Use a machine without SLURM (or a container) for the tests."

nodes_up() {  # how many nodes answer (idle, mixed or allocated); a node is in two partitions
  sinfo -h -N -o '%N %T' 2>/dev/null | sort -u | grep -cE ' (idle|mixed|allocated)$' || true
}
if [ "$(nodes_up)" = "$NODES" ] \
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
  touch "$STATE/run/started-munged"  # down.sh stops only what up.sh started
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
fi
munge -n | unmunge >/dev/null || die "munge does not work"

# --- MariaDB -------------------------------------------------------------------------
mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
if ! mysqladmin ping >/dev/null 2>&1; then
  [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql >/dev/null
  (mariadbd-safe --user=mysql >/dev/null 2>&1 &)
  touch "$STATE/run/started-mariadb"
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

# The machine's CPUs and memory, from slurmd's own view of it.
HW=$(slurmd -C | head -n 1)
CPUS=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$HW")
MEM=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$HW")
NODE_MEM=$(( MEM * 9 / 10 / NODES ))
for f in /dev/tty0 /dev/tty1; do
  [ -e "$f" ] || die "$f does not exist: the stand-in GPU devices (GPU_FILES) need it"
done
NODE_LINES=""
for i in $(seq "$NODES"); do
  NODE_LINES+="NodeName=n$i NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$((17000 + i)) CPUs=$CPUS RealMemory=$NODE_MEM Gres=gpu:$GPUS_PER_NODE State=UNKNOWN"$'\n'
done
# Node names must resolve (torch's rendezvous takes the first host of the job's node list).
for i in $(seq "$NODES"); do
  grep -qE "^127\.0\.0\.1([[:space:]].*)?[[:space:]]n$i([[:space:]]|\$)" /etc/hosts \
    || echo "127.0.0.1 n$i" >> /etc/hosts
done
old_conf=$(cat "$ETC/slurm.conf" 2>/dev/null || true)
cat > "$ETC/slurm.conf" <<CONF
# $CONF_VERSION
# Written by cluster/local-slurm/up.sh: $NODES node(s) on one machine, accounting through
# slurmdbd, memory consumable and enforced (over-limit jobs end OUT_OF_MEMORY).
ClusterName=$CLUSTER
SlurmctldHost=$HOST
SlurmUser=root
AuthType=auth/munge
ProctrackType=$PROCTRACK
TaskPlugin=$TASK
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=3000
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageEnforce=associations,limits,qos
AccountingStorageTRES=gres/gpu
GresTypes=gpu
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=2
JobAcctGatherParams=$GATHER_PARAMS
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
SlurmdSpoolDir=$STATE/spool-d/%n
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd-%n.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd-%n.log
${NODE_LINES}PartitionName=cpu Nodes=n[1-$NODES] Default=YES MaxTime=04:00:00 State=UP
PartitionName=gpu Nodes=n[1-$NODES] MaxTime=1-00:00:00 State=UP
CONF
cat > "$ETC/gres.conf" <<CONF
# Written by cluster/local-slurm/up.sh: $GPUS_PER_NODE stand-in GPUs per node.
NodeName=n[1-$NODES] Name=gpu File=$GPU_FILES
CONF

# --- daemons -------------------------------------------------------------------------
daemon_running "$STATE/run/slurmdbd.pid" || slurmdbd
for _ in $(seq 200); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.2; done
sacctmgr -n list cluster >/dev/null 2>&1 || die "slurmdbd did not answer ($STATE/log/slurmdbd.log)"
sacctmgr -n list cluster format=cluster%30 | grep -qw "$CLUSTER" \
  || sacctmgr -i add cluster "$CLUSTER" >/dev/null
sacctmgr -n list account format=account%30 | grep -qw "$ACCOUNT" \
  || sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" Description=meldflow Organization=meldflow >/dev/null
sacctmgr -n list user root format=user,defaultaccount%30 | grep -qw "$ACCOUNT" \
  || sacctmgr -i add user root Account="$ACCOUNT" DefaultAccount="$ACCOUNT" >/dev/null
# A site's QOS on the test account: a submit limit, a wall-clock limit and a GPU limit per
# user, as real sites set them (sbatch refuses a job over the first two; one over the GPU
# limit waits with reason QOSMaxGRESPerUser).
sacctmgr -n -P show qos format=name | grep -qx "$QOS" || sacctmgr -i add qos "$QOS" >/dev/null
sacctmgr -i modify qos "$QOS" set MaxSubmitJobsPerUser="$QOS_MAX_SUBMIT" \
  MaxWall="$QOS_MAX_WALL" MaxTRESPerUser=gres/gpu="$QOS_MAX_GPUS" >/dev/null || true
sacctmgr -i modify user root where account="$ACCOUNT" set qos="$QOS" defaultqos="$QOS" \
  >/dev/null || true
# A small allocation: account meldflow-tight, whose QOS tight allows 1 submitted job.
sacctmgr -n -P show qos format=name | grep -qx tight || sacctmgr -i add qos tight >/dev/null
sacctmgr -i modify qos tight set MaxSubmitJobsPerUser=1 MaxWall="$QOS_MAX_WALL" >/dev/null || true
sacctmgr -n list account format=account%30 | grep -qw meldflow-tight \
  || sacctmgr -i add account meldflow-tight Cluster="$CLUSTER" Description=tight Organization=meldflow >/dev/null
sacctmgr -n -P show assoc where user=root account=meldflow-tight format=account | grep -q . \
  || sacctmgr -i add user root Account=meldflow-tight >/dev/null
sacctmgr -i modify user root where account=meldflow-tight set qos=tight defaultqos=tight \
  >/dev/null || true

cat > "$ETC/cgroup.conf" <<CONF
# Written by cluster/local-slurm/up.sh: jobs are held to the memory they ask for.
CgroupPlugin=cgroup/v1
ConstrainRAMSpace=yes
ConstrainSwapSpace=no
CONF

# A changed configuration (other nodes, other limits) is applied by restarting the
# controller and the node daemons: reconfigure cannot add or remove nodes.
if [ "$old_conf" != "$(cat "$ETC/slurm.conf")" ]; then
  for f in "$STATE"/run/slurmd-*.pid "$STATE/run/slurmctld.pid"; do stop_daemon "$f"; done
fi
for i in $(seq "$NODES"); do mkdir -p "$STATE/spool-d/n$i"; done
daemon_running "$STATE/run/slurmctld.pid" || slurmctld
for i in $(seq "$NODES"); do
  daemon_running "$STATE/run/slurmd-n$i.pid" || slurmd -N "n$i"
done
for _ in $(seq 300); do
  [ "$(nodes_up)" = "$NODES" ] && break
  for n in $(sinfo -h -N -o '%N %T' 2>/dev/null | awk '$2 ~ /^(down|drain)/ {print $1}' | sort -u); do
    scontrol update nodename="$n" state=resume 2>/dev/null || true
  done
  sleep 0.2
done
[ "$(nodes_up)" = "$NODES" ] || die "nodes not ready: $(sinfo -h -N 2>&1) ($STATE/log/)"
log "up: cluster $CLUSTER, $NODES node(s) n[1-$NODES] on $HOST ($CPUS CPUs, $NODE_MEM MB and $GPUS_PER_NODE stand-in GPUs each, memory limits by $LIMITS), partitions cpu (default) and gpu, account $ACCOUNT enforced, QOS $QOS (MaxSubmitJobsPU $QOS_MAX_SUBMIT, MaxWall $QOS_MAX_WALL, MaxTRESPU gres/gpu=$QOS_MAX_GPUS)"
