"""Before anything is submitted: does the cluster offer what this run asks of it?

Each kind of job asks for a partition, an account, a time limit, memory, CPUs and GPUs
(the profile's resources for shard jobs; ``train:`` for training). One ``sinfo`` and one
``sacctmgr`` call tell what the cluster has and what this user may use; every mismatch is
one line naming the setting and the fix. ``meldflow check`` runs it (with the staged models
and the MELD layout), and so does the workflow's start under the SLURM executor, where a
problem stops the run before any job is queued.
"""

from __future__ import annotations

import dataclasses
import getpass
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from meldflow import MeldflowError
from meldflow.slurm.accounting import run_command
from meldflow.slurm.ask import Ask
from meldflow.slurm.site_limits import SiteLimits, SubmitPlan, limit_problems, minutes_of, test_only


@dataclass
class Partition:
    name: str
    default: bool
    max_minutes: float | None  # None: no limit
    nodes: list[tuple[int, float, int]] = field(default_factory=list)  # (GPUs, MB, CPUs)


GRES_GPU = re.compile(r"gpu(?::[^:,(]+)?:(\d+)")


def cluster_partitions() -> dict[str, Partition]:
    """Every partition with its MaxTime and its nodes' GPUs, memory and CPUs (one sinfo)."""
    out = run_command(["sinfo", "-h", "-N", "-o", "%P|%l|%G|%m|%c"])
    parts: dict[str, Partition] = {}
    for line in out.splitlines():
        name, limit, gres, mem, cpus = (line.split("|") + [""] * 5)[:5]
        default = name.endswith("*")
        name = name.rstrip("*")
        p = parts.setdefault(name, Partition(name, default, minutes_of(limit)))
        gpus = sum(int(n) for n in GRES_GPU.findall(gres))
        p.nodes.append((gpus, float(mem.rstrip("+") or 0), int(cpus.rstrip("+") or 0)))
    return parts


def problems(asks: list[Ask], partitions: dict[str, Partition],
             accounts: set[str] | None) -> list[str]:
    """One line per thing a job asks that the cluster does not offer."""
    lines, told = [], set()  # a missing partition or account is said once
    default = next((p.name for p in partitions.values() if p.default), None)
    for ask in asks:
        name = ask.partition or default
        part = partitions.get(name or "")
        if part is None and ("partition", name) not in told:
            told.add(("partition", name))
            lines.append(f"{ask.who}: partition {name!r} ({ask.where_of('partition')}) "
                         f"does not exist "
                         f"here; partitions: {', '.join(sorted(partitions)) or 'none'} "
                         f"(sinfo)")
        if ask.account and accounts is not None and ask.account not in accounts \
                and ("account", ask.account) not in told:
            told.add(("account", ask.account))
            lines.append(f"{ask.who}: account {ask.account!r} ({ask.where_of('account')}) is "
                         f"not one this "
                         f"user may use: {', '.join(sorted(accounts)) or 'none'} "
                         f"(sacctmgr show assoc user={getpass.getuser()})")
        if part is None:
            continue
        if ask.minutes and part.max_minutes is not None and ask.minutes > part.max_minutes \
                and _once(told, ask, "minutes", part):
            lines.append(f"{ask.who}: a time limit of {ask.minutes:.0f} min "
                         f"({ask.where_of('minutes')}) is "
                         f"over partition {part.name}'s MaxTime of {part.max_minutes:.0f} min")
        for label, key, index, unit in (("GPUs per node", "gpus_per_node", 0, ""),
                                        ("memory per node", "mem_mb", 1, " MB"),
                                        ("CPUs per node", "cpus_per_node", 2, "")):
            best = max((node[index] for node in part.nodes), default=0)
            asked = getattr(ask, key)
            if asked and asked > best and _once(told, ask, key, part):
                lines.append(f"{ask.who}: {label} {asked:g}{unit} ({ask.where_of(key)}) is "
                             f"more than "
                             f"any node of partition {part.name} has ({best:g}{unit})")
    return lines


def _once(told: set, ask: Ask, key: str, part: Partition) -> bool:
    """Whether a value set in one place is told for the first time (a default that every
    rule inherits is one problem, said once)."""
    seen = (key, ask.where_of(key), getattr(ask, key), part.name)
    if seen in told:
        return False
    told.add(seen)
    return True


def check_cluster(asks: list[Ask], plan: SubmitPlan | None = None
                  ) -> tuple[list[str], list[str]]:
    """(problems, notes) of ``asks`` on the cluster this host submits to: partitions,
    accounts and nodes (sinfo, sacctmgr), the site's QOS and association limits (with
    ``plan``: how many jobs the run may have submitted at once), then ``sbatch
    --test-only`` once for each distinct ask that has no problem yet."""
    try:
        partitions = cluster_partitions()
    except (MeldflowError, subprocess.TimeoutExpired, FileNotFoundError) as exc:
        return [f"the cluster does not answer (sinfo: {str(exc)[:200]}): is this a login "
                f"node of a SLURM cluster?"], []
    site = SiteLimits.read()
    found = problems(asks, partitions, set(site.assoc) or None)
    over, notes = limit_problems(asks, site, plan)
    found += over
    tried = set()
    for ask in asks:
        key = dataclasses.replace(ask, who="", where="", elsewhere=())
        if key in tried or any(line.startswith(f"{ask.who}:") for line in found):
            continue
        tried.add(key)
        refused = test_only(ask)
        if refused:
            found.append(f"{ask.who}: sbatch --test-only refuses what it asks ({ask.where}): "
                         f"{refused}")
    return found, notes


def _value(expr, attempt: int):
    """A profile resource: a number, a name, or an expression of ``attempt``."""
    if not isinstance(expr, str):
        return expr
    try:
        return eval(expr, {"__builtins__": {}}, {"attempt": attempt})  # noqa: S307
    except Exception:  # a plain name such as a partition, or "2h"
        return expr


# The Ask field each profile resource sets.
_FIELDS = {"slurm_partition": "partition", "slurm_account": "account", "runtime": "minutes",
           "mem_mb": "mem_mb", "mem_mib": "mem_mb", "mem_gb": "mem_mb", "mem_gib": "mem_mb",
           "mem": "mem_mb", "cpus_per_task": "cpus_per_node", "qos": "qos"}

# Snakemake's size resources in MB (``mem`` is a size with its unit, or MB).
_MEM_MB = {"mem_mb": 1.0, "mem_mib": 1.048576, "mem_gb": 1000.0, "mem_gib": 1073.741824}


def _human(value, where: str, key: str, kind: str):
    """A time (minutes) or size (MB) as Snakemake reads it: a number as is, text such as
    "2h" or "16GB" through humanfriendly, as Snakemake parses it."""
    import humanfriendly

    if not isinstance(value, str):
        return value
    text = value.strip().strip("'\"")
    if text.replace(".", "", 1).isdigit():
        return float(text)
    try:
        if kind == "time":
            return max(round(humanfriendly.parse_timespan(text)) / 60, 1)
        return max(humanfriendly.parse_size(text) / 1e6, 1)
    except (humanfriendly.InvalidTimespan, humanfriendly.InvalidSize):
        example = '"2h"' if kind == "time" else '"16GB"'
        what = "a time (minutes, or e.g. " if kind == "time" else "a size (e.g. "
        raise MeldflowError(f"{where}: {key} {value!r} is not {what}{example})") from None


def _ask(who: str, where: str, resources: dict, attempt: int = 1) -> Ask:
    v = {k: _value(x, attempt) for k, x in resources.items()}
    mem_mb = next((_human(v[k], where, k, "size") * f for k, f in _MEM_MB.items() if k in v),
                  None)
    if mem_mb is None and "mem" in v:
        mem_mb = _human(v["mem"], where, "mem", "size")
    runtime = _human(v["runtime"], where, "runtime", "time") if "runtime" in v else None
    return Ask(who, where, partition=v.get("slurm_partition"), account=v.get("slurm_account"),
               minutes=runtime, mem_mb=mem_mb, cpus_per_node=v.get("cpus_per_task"),
               qos=v.get("qos"))


def asks_from_profile(profile: str, last_try: bool = False) -> list[Ask]:
    """What a Snakemake SLURM profile's jobs ask at their first try, or at their last
    (``retries`` + 1: the most memory and time)."""
    import yaml

    path = Path(profile) / "config.yaml" if Path(profile).is_dir() else Path(profile)
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise MeldflowError(f"cannot read the profile {path}: {exc}") from None

    def mapping(res) -> dict:  # a mapping, or Snakemake's list of "key=value"
        return dict(r.split("=", 1) for r in res) if isinstance(res, list) else dict(res or {})

    attempt = int(cfg.get("retries", 0)) + 1 if last_try else 1
    base = mapping(cfg.get("default-resources"))
    if cfg.get("slurm-qos") and "qos" not in base:  # the plugin's setting for every job
        base["qos"] = repr(str(cfg["slurm-qos"]))
    default_where = f"{path} default-resources"
    asks = [_ask("shard jobs", default_where, base, attempt)]
    for rule, res in (cfg.get("set-resources") or {}).items():
        own = mapping(res)
        inherited = {_FIELDS[k] for k in base if k in _FIELDS} - {
            _FIELDS[k] for k in own if k in _FIELDS}
        ask = _ask(f"rule {rule}", f"{path} set-resources: {rule}", base | own, attempt)
        asks.append(dataclasses.replace(
            ask, elsewhere=tuple((f, default_where) for f in sorted(inherited))))
    return asks


def training_ask(how, who: str) -> Ask:
    """What one training launch (a ``LaunchConfig``) asks of the cluster; its time limit is
    ``train.time_min``, the rest ``train.slurm``."""
    return Ask(who, "train.slurm", elsewhere=(("minutes", "train.time_min"),),
               partition=how.partition, account=how.account, qos=how.sbatch.get("qos"),
               nodes=how.nodes, minutes=how.time_min, gpus_per_node=how.gpus_per_node,
               mem_mb=how.mem_gb * 1024 if how.mem_gb else None,
               cpus_per_node=how.cpus_per_task * how.tasks if how.cpus_per_task else None)


def asks_from_jobs(jobs, later_rules=()) -> list[Ask]:
    """What the workflow's SLURM jobs ask (one per rule), from Snakemake's jobs, and from
    ``later_rules``: rules whose jobs are not known yet (they follow a checkpoint), at a
    first try."""
    asks: dict[str, Ask] = {}

    def add(name: str, resources) -> None:
        res = {k: resources.get(k) for k in ("slurm_partition", "slurm_account", "runtime",
                                             "mem_mb", "cpus_per_task", "qos")}
        asks[name] = _ask(f"rule {name}", "the profile's resources",
                          {k: v for k, v in res.items() if v is not None})

    for job in jobs:
        if not job.is_local and job.rule.name not in asks:
            add(job.rule.name, job.resources)
    for rule in later_rules:
        if rule.name not in asks:  # resources of no wildcard or input (the profile's)
            add(rule.name, rule.expand_resources(dict.fromkeys(rule.wildcard_names, "0"),
                                                 None, 1))
    return list(asks.values())


def profile_plan(profile: str, trainings: int) -> SubmitPlan:
    """How many jobs a run with ``profile`` may have submitted at once: ``jobs`` shard jobs,
    and one per training run on SLURM up to ``local-cores`` (each waits in a local rule)."""
    import yaml

    path = Path(profile) / "config.yaml" if Path(profile).is_dir() else Path(profile)
    cfg = yaml.safe_load(path.read_text()) or {}
    cores = int(cfg.get("local-cores", 10**6))
    return SubmitPlan(int(cfg.get("jobs", 1)), f"{path} jobs", min(trainings, cores),
                      f"training runs, at most local-cores {cores} at once")
