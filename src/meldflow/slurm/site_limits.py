"""A site's limits on one user, before any job: the QOS and association limits that
``sacctmgr`` shows, compared with what a run will ask, and ``sbatch --test-only`` for what
SLURM confirms itself.

Real sites cap the jobs a user may have submitted (``MaxSubmitJobsPU``: sbatch refuses
the next one, and Snakemake takes that for a failed job), a job's wall time (``MaxWall``:
the job waits forever) and the GPUs a user may hold (``MaxTRESPU gres/gpu``: a job asking
more waits forever). Snakemake counts only its own jobs against the profile's ``jobs:``;
each training run submits one more (through submitit), up to ``local-cores`` at once.
"""

from __future__ import annotations

import getpass
import math
import re
import subprocess
from dataclasses import dataclass, field

from meldflow import MeldflowError
from meldflow.slurm.accounting import run_command
from meldflow.slurm.ask import Ask

_FAILED = (MeldflowError, subprocess.TimeoutExpired, FileNotFoundError)


@dataclass(frozen=True)
class Limit:
    value: float
    source: str  # "QOS site's MaxSubmitJobsPU", "association meldflow's MaxWall"


@dataclass
class Limits:
    """What one (account, QOS) may ask; ``None``: no such limit."""

    qos: str | None = None
    max_submit: Limit | None = None
    max_wall_min: Limit | None = None
    max_gpus_user: Limit | None = None
    max_gpus_job: Limit | None = None


@dataclass(frozen=True)
class SubmitPlan:
    """How many jobs a run may have submitted at once, and where each number is set."""

    shard_jobs: int
    shard_where: str  # "cluster/slurm/config.yaml jobs"
    trainings: int
    training_where: str  # "local-cores (one per training run) in ..."


def minutes_of(limit: str) -> float | None:
    """A SLURM time limit (``4:00:00``, ``1-00:00:00``, ``30``, ``infinite``) in minutes."""
    if limit.strip().lower() in ("infinite", "unlimited", "", "n/a"):
        return None
    days, _, rest = limit.rpartition("-")
    parts = [float(p) for p in rest.split(":")]
    if days:  # days-hours[:minutes[:seconds]]
        parts += [0.0] * (3 - len(parts))
        return float(days) * 1440 + parts[0] * 60 + parts[1] + parts[2] / 60
    if len(parts) == 3:
        return parts[0] * 60 + parts[1] + parts[2] / 60
    return parts[0] + (parts[1] / 60 if len(parts) == 2 else 0.0)


def _gpus(tres: str) -> int | None:
    found = re.search(r"gres/gpu(?::[^=,]+)?=(\d+)", tres or "")
    return int(found.group(1)) if found else None


def _smaller(a: Limit | None, b: Limit | None) -> Limit | None:
    return min((x for x in (a, b) if x is not None), key=lambda x: x.value, default=None)


@dataclass
class SiteLimits:
    """The user's associations (account -> its QOS, default QOS and limits), the cluster's
    QOS (name -> limits) and the user's default account, as sacctmgr shows them."""

    assoc: dict[str, dict] = field(default_factory=dict)
    qos: dict[str, dict] = field(default_factory=dict)
    default_account: str | None = None

    @classmethod
    def read(cls) -> SiteLimits:
        """Three sacctmgr calls; without accounting, no limits."""
        user, site = getpass.getuser(), cls()
        try:
            for line in run_command(["sacctmgr", "-n", "-P", "show", "assoc", "where",
                                     f"user={user}", "format=account,partition,qos,"
                                     "defaultqos,maxsubmit,maxwall,maxtres"]).splitlines():
                account, _, allowed, default_qos, submit, wall, tres = \
                    (line.split("|") + [""] * 7)[:7]
                if account and account not in site.assoc:
                    site.assoc[account] = {"qos": set(filter(None, allowed.split(","))),
                                           "default_qos": default_qos, "submit": submit,
                                           "wall": wall, "tres": tres}
            for line in run_command(["sacctmgr", "-n", "-P", "show", "qos", "format=name,"
                                     "maxsubmitpu,maxwall,maxtrespu,maxtres"]).splitlines():
                name, submit, wall, tres_user, tres_job = (line.split("|") + [""] * 5)[:5]
                site.qos[name] = {"submit": submit, "wall": wall, "tres_user": tres_user,
                                  "tres_job": tres_job}
            out = run_command(["sacctmgr", "-n", "-P", "show", "user", user,
                               "format=defaultaccount"]).split()
            site.default_account = out[0] if out else None
        except _FAILED:
            return cls()
        return site

    def for_ask(self, ask: Ask) -> Limits:
        """The limits ``ask`` runs under: its account's association, and its QOS (the one it
        names, else the association's default)."""
        # an account the user has no association with is a problem of its own; its
        # limits are taken as the default account's
        account = ask.account if ask.account in self.assoc else self.default_account
        assoc = self.assoc.get(account or "", {})
        qos_name = ask.qos or assoc.get("default_qos") or None
        qos = self.qos.get(qos_name or "", {})
        a, q = f"association {account}'s", f"QOS {qos_name}'s"

        def num(text: str, source: str, parse=float) -> Limit | None:
            value = parse(text) if text else None
            return None if value is None else Limit(value, source)

        return Limits(
            qos=qos_name,
            max_submit=_smaller(num(assoc.get("submit", ""), f"{a} MaxSubmitJobs"),
                                num(qos.get("submit", ""), f"{q} MaxSubmitJobsPU")),
            max_wall_min=_smaller(num(assoc.get("wall", ""), f"{a} MaxWall", minutes_of),
                                  num(qos.get("wall", ""), f"{q} MaxWall", minutes_of)),
            max_gpus_user=num(qos.get("tres_user", ""), f"{q} MaxTRESPU gres/gpu", _gpus),
            max_gpus_job=_smaller(num(assoc.get("tres", ""), f"{a} MaxTRES gres/gpu", _gpus),
                                  num(qos.get("tres_job", ""), f"{q} MaxTRES gres/gpu",
                                      _gpus)))


def limit_problems(asks: list[Ask], site: SiteLimits, plan: SubmitPlan | None
                   ) -> tuple[list[str], list[str]]:
    """(problems, notes): asks over a wall-clock or GPU limit, and a run that may have more
    jobs submitted at once than the submit limit allows."""
    found, notes, told = [], [], set()
    for ask in asks:
        lim = site.for_ask(ask)
        wall = lim.max_wall_min
        if ask.minutes and wall and ask.minutes > wall.value and \
                ("wall", ask.where_of("minutes"), ask.minutes) not in told:
            told.add(("wall", ask.where_of("minutes"), ask.minutes))
            found.append(f"{ask.who}: a time limit of {ask.minutes:.0f} min "
                         f"({ask.where_of('minutes')}) is over {wall.source} of "
                         f"{wall.value:.0f} min: the job would wait forever "
                         f"(QOSMaxWallDurationPerJobLimit)")
        gpus = (ask.gpus_per_node or 0) * ask.nodes
        for cap in (lim.max_gpus_job, lim.max_gpus_user):
            if gpus and cap and gpus > cap.value:
                found.append(f"{ask.who}: {gpus} GPUs ({ask.nodes} node(s) x "
                             f"{ask.gpus_per_node}, {ask.where_of('gpus_per_node')}) is more "
                             f"than {cap.source} of {cap.value:g}: the job would wait forever")
                break
    if plan is None:
        return found, notes
    shard = next((a for a in asks if not a.who.startswith("training")), None)
    training = next((a for a in asks if a.who.startswith("training")), None)
    groups: dict[str, list] = {}
    for ask, count, where in ((shard, plan.shard_jobs, plan.shard_where),
                              (training, plan.trainings, plan.training_where)):
        limit = site.for_ask(ask).max_submit if ask and count else None
        if limit:
            groups.setdefault(limit.source, [limit, []])[1].append((count, where))
    for limit, parts in groups.values():
        total = sum(c for c, _ in parts)
        if total > limit.value:
            said = " and ".join(f"{c} ({w})" for c, w in parts)
            cap = int(limit.value)
            trainings = sum(c for c, w in parts if w == plan.training_where)
            if cap - trainings >= 1 or not trainings:
                fix = f"set jobs: {max(cap - trainings, 1)} or fewer in the profile"
            else:  # the training jobs alone are over: fewer at once, and room for shards
                cores = max(1, cap // 2)
                fix = (f"set local-cores: {cores} (training runs submitted at once) and jobs: "
                       f"{cap - cores} or fewer in the profile")
            found.append(f"this run may have {said} jobs submitted at once: {total} is over "
                         f"{limit.source} of {limit.value:g}, and SLURM refuses the rest "
                         f"(Snakemake takes that for a failed job): {fix}")
    gpu_user = site.for_ask(training).max_gpus_user if training else None
    per_job = (training.gpus_per_node or 0) * training.nodes if training else 0
    if gpu_user and per_job and plan.trainings * per_job > gpu_user.value >= per_job:
        notes.append(f"{plan.trainings} training runs of {per_job} GPU(s) each are over "
                     f"{gpu_user.source} of {gpu_user.value:g}: they run "
                     f"{int(gpu_user.value // per_job)} at a time")
    return found, notes


def test_only(ask: Ask) -> str | None:
    """What ``sbatch --test-only`` says against ``ask`` (partition, account, QOS, time,
    GPUs, memory, CPUs), or ``None`` when it would be accepted."""
    cmd = ["sbatch", "--test-only", "--wrap=true", "-N", str(ask.nodes)]
    for flag, value in (("-p", ask.partition), ("-A", ask.account), ("-q", ask.qos)):
        if value:
            cmd += [flag, str(value)]
    if ask.minutes:
        cmd += ["-t", str(math.ceil(ask.minutes))]
    if ask.gpus_per_node:
        cmd += [f"--gres=gpu:{ask.gpus_per_node}"]
    if ask.mem_mb:
        cmd += [f"--mem={math.ceil(ask.mem_mb)}M"]
    if ask.cpus_per_node:
        cmd += ["-c", str(ask.cpus_per_node)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (subprocess.TimeoutExpired, FileNotFoundError) as exc:
        return f"sbatch --test-only did not answer ({exc})"
    if proc.returncode == 0:
        return None
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    return lines[-1].strip() if lines else f"exit code {proc.returncode}"

