"""Resources sized from what a run's jobs used: ``meldflow status --resources``.

sacct keeps each job's peak memory (MaxRSS, sampled every ``JobAcctGatherFrequency``
seconds: a job of a few seconds may show less than it used) and its elapsed time. For
each rule that ran as SLURM jobs this prints the profile's ``set-resources`` block that
fits the peaks of its finished jobs with a stated headroom and a floor, keeps the
``attempt`` scaling, and says how much of each current request went unused (what a
cluster user otherwise reads off ``seff`` or reportseff, job by job).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from meldflow.slurm.accounting import run_command
from meldflow.slurm.site_limits import minutes_of
from meldflow.slurm.status_report import JobRow, collect

# Memory: the measured peak x MEM_HEADROOM, rounded up to 100 MB, at least MEM_FLOOR_MB;
# time: the longest elapsed x TIME_HEADROOM, at least TIME_FLOOR_MIN. Both x attempt.
MEM_HEADROOM, MEM_FLOOR_MB = 1.5, 1000
TIME_HEADROOM, TIME_FLOOR_MIN = 2.0, 10


@dataclass
class RuleUse:
    """What one rule's finished jobs asked for and used."""

    rule: str
    jobs: int
    cpus: int
    mem_asked_mb: float | None
    mem_peak_mb: float | None
    minutes_asked: float | None
    minutes_peak: float
    cpu_efficiency: float | None

    def mem_mb(self) -> int:
        peak = self.mem_peak_mb or 0.0
        return max(MEM_FLOOR_MB, int(math.ceil(peak * MEM_HEADROOM / 100.0)) * 100)

    def runtime(self) -> int:
        return max(TIME_FLOOR_MIN, int(math.ceil(self.minutes_peak * TIME_HEADROOM)))


def _minutes(limit: str) -> float | None:
    try:
        return minutes_of(limit) if limit else None
    except ValueError:
        return None


def rule_use(rows: list[JobRow]) -> list[RuleUse]:
    """Per rule, from its first tries' requests and its finished jobs' peaks. Training
    (submitit) jobs are sized in ``train.slurm``, not here."""
    out = []
    for rule in sorted({r.rule for r in rows if r.rule and not r.rule.startswith("train")}):
        done = [r for r in rows if r.rule == rule and r.state == "COMPLETED"]
        if not done:
            continue
        first = [r for r in rows if r.rule == rule and r.attempt == 1] or done
        peaks = [r.max_rss_mb for r in done if r.max_rss_mb is not None]
        effs = [r.cpu_efficiency for r in done if r.cpu_efficiency is not None]
        out.append(RuleUse(
            rule=rule, jobs=len(done), cpus=max(r.cpus for r in first),
            mem_asked_mb=max((r.req_mem_mb for r in first if r.req_mem_mb), default=None),
            mem_peak_mb=max(peaks) if peaks else None,
            minutes_asked=max((m for r in first if (m := _minutes(r.time_limit))),
                              default=None),
            minutes_peak=max(r.elapsed_s for r in done) / 60,
            cpu_efficiency=sum(effs) / len(effs) if effs else None))
    return out


def _unused(asked: float | None, used: float | None) -> str:
    if not asked or used is None:
        return "-"
    return f"{max(0.0, 1 - used / asked):.0%}"


def set_resources_block(uses: list[RuleUse]) -> str:
    """The profile's ``set-resources:`` for these rules, as YAML to paste."""
    block = {u.rule: {"cpus_per_task": u.cpus, "mem_mb": f"{u.mem_mb()} * attempt",
                      "runtime": f"{u.runtime()} * attempt"} for u in uses}
    return yaml.safe_dump({"set-resources": block}, sort_keys=False)


def shard_sizes(workdir: Path) -> tuple[set[int], int | None]:
    """(the shard sizes the run's shards were made with, the config's shard_size now)."""
    made = set()
    for info in sorted((workdir / "results" / "ingest").glob("*.shards.json")):
        try:
            made.add(int(json.loads(info.read_text())["shard_size"]))
        except (OSError, ValueError, KeyError):
            continue
    try:
        config = yaml.safe_load((workdir / "config" / "config.yaml").read_text()) or {}
        now = int(config.get("shard_size")) if config.get("shard_size") else None
    except (OSError, ValueError, yaml.YAMLError):
        now = None
    return made, now


def gather_seconds() -> str:
    """The cluster's JobAcctGatherFrequency, as scontrol says it ("task=30", "30")."""
    try:
        for line in run_command(["scontrol", "show", "config"]).splitlines():
            if line.startswith("JobAcctGatherFrequency"):
                return line.split("=", 1)[1].strip()
    except Exception:  # noqa: BLE001 (the note is a courtesy; sizing goes on without it)
        pass
    return "?"


def resources_report(workdir: str | Path, run_id: str | None) -> str:
    """The text of ``meldflow status --resources``."""
    workdir = Path(workdir)
    snap = collect(workdir, run_id, 0)
    uses = rule_use(snap.rows)
    if not uses:
        return (f"no finished SLURM job of run {snap.run_id} to size from" if snap.run_id
                else "no SLURM run found here to size from")
    made, now = shard_sizes(workdir)
    sizes = ", ".join(map(str, sorted(made))) or "unknown"
    lines = [f"Resources used by run {snap.run_id}: {sum(u.jobs for u in uses)} finished "
             f"job(s), shard size {sizes}. sacct samples memory every "
             f"{gather_seconds()} s (JobAcctGatherFrequency): a job of a few seconds may "
             f"show less than it used.",
             f"Sized as: memory = peak x {MEM_HEADROOM:g}, at least {MEM_FLOOR_MB} MB; "
             f"runtime = longest x {TIME_HEADROOM:g}, at least {TIME_FLOOR_MIN} min; both "
             f"x attempt when a job is resubmitted."]
    if now is not None and made and made != {now}:
        lines.append(f"WARNING: config/config.yaml now has shard_size {now}, but these figures "
                     f"come from shards of {sizes}: memory and time grow with the shard; "
                     f"size again after a run with shard_size {now}.")
    head = ["rule", "jobs", "mem asked", "mem peak", "unused", "time asked", "time peak",
            "unused", "cpu eff"]
    table = [head] + [[
        u.rule, str(u.jobs), f"{u.mem_asked_mb:.0f} MB" if u.mem_asked_mb else "-",
        f"{u.mem_peak_mb:.0f} MB" if u.mem_peak_mb is not None else "-",
        _unused(u.mem_asked_mb, u.mem_peak_mb),
        f"{u.minutes_asked:.0f} min" if u.minutes_asked else "-",
        f"{u.minutes_peak:.1f} min", _unused(u.minutes_asked, u.minutes_peak),
        f"{u.cpu_efficiency:.0%}" if u.cpu_efficiency is not None else "-"] for u in uses]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    lines += ["", *("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                    for row in table)]
    lines += ["", "Paste into cluster/slurm/config.yaml (it replaces set-resources; "
                  "default-resources stays for rules not listed):", "",
              set_resources_block(uses).rstrip()]
    return "\n".join(lines)
