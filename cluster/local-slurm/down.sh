#!/usr/bin/env bash
# Stop the cluster started by up.sh (jobs are cancelled; the accounting database is kept).
set -u
scancel --user=root >/dev/null 2>&1 || true
for d in slurmd slurmctld slurmdbd; do pkill -x "$d" 2>/dev/null || true; done
mysqladmin shutdown >/dev/null 2>&1 || true
pkill -x munged 2>/dev/null || true
echo "[local-slurm] down"
