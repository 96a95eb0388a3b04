"""`meldflow check`: what would stop a cluster run, found before anything is submitted.

The cluster (partitions, account, time limits, GPUs, memory and CPUs that the profile and
``train:`` ask for, ``meldflow.slurm.preflight``), the staged models in ``hf_home`` and the
MELD layout in ``meld_dir``; each problem one line naming the setting and the fix.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from meldflow import MeldflowError
from meldflow.config import check_config_file, typed_config
from meldflow.model_cache.stage import PACKAGED_WHISPER, hub_unreachable, whisper_repo_id
from meldflow.model_cache.whisper import model_dir
from meldflow.preprocess.layout import check_clip_folder
from meldflow.settings import TINY_FLORENCE, Settings
from meldflow.slurm.preflight import (
    asks_from_profile,
    check_cluster,
    profile_plan,
    training_ask,
)
from meldflow.training.identity import florence_snapshot
from meldflow.training.runs import experiment_runs, launch_config, needs_clips, resolve_executor


def merged_config(configfiles: list[str]) -> dict:
    """config/config.yaml with each file over it (nested keys merged), as Snakemake does."""
    import yaml

    def merge(base: dict, over: dict) -> dict:
        out = dict(base)
        for key, value in over.items():
            out[key] = merge(out[key], value) if isinstance(value, dict) and \
                isinstance(out.get(key), dict) else value
        return out

    config: dict = {}
    for path in ["config/config.yaml", *configfiles]:
        check_config_file(path)  # a key given twice: Snakemake refuses it too
        try:
            config = merge(config, yaml.safe_load(Path(path).read_text()) or {})
        except (OSError, yaml.YAMLError) as exc:
            raise MeldflowError(f"cannot read config file {path}: {exc}") from None
    return config


def slurm_runs(runs: dict, workflow_executor: str = "slurm") -> dict[tuple[str, int], object]:
    """{(experiment, seed): its LaunchConfig} of the runs that train as SLURM jobs."""
    launches = {run: launch_config(options) for run, options in runs.items()}
    return {run: how for run, how in launches.items()
            if resolve_executor(how.executor, workflow_executor) == "slurm"}


def training_asks(runs: dict, workflow_executor: str = "slurm") -> list:
    """What each distinct training launch of the runs asks of the cluster."""
    asks, seen = [], set()
    for (name, seed), how in slurm_runs(runs, workflow_executor).items():
        ask = training_ask(how, f"training {name}/seed-{seed}")
        if dataclasses.replace(ask, who="") not in seen:
            seen.add(dataclasses.replace(ask, who=""))
            asks.append(ask)
    return asks


def gpu_problems(settings, runs: dict,
                 workflow_executor: str = "slurm") -> tuple[list[str], list[str]]:
    """(problems, notes): training runs on SLURM that ask no GPU. Florence-2 would train for
    days on CPUs: a problem; the tiny model trains on CPUs: a note. ``gpus_per_node: 0`` says
    it on purpose."""
    found = []
    for (name, seed), how in slurm_runs(runs, workflow_executor).items():
        if how.gpus_per_node is None:
            found.append(f"training {name}/seed-{seed}: no GPU asked (train.slurm."
                         f"gpus_per_node is null): it would train on the partition's CPUs; "
                         f"set train.slurm's EDIT lines in config/config.yaml (partition, "
                         f"gpus_per_node), or gpus_per_node: 0 to train on CPUs on purpose")
    found = found[:1] + ([f"(and {len(found) - 1} more run(s) the same)"] if found[1:] else [])
    tiny = settings.florence_repo == TINY_FLORENCE
    return ([], found) if tiny else (found, [])


def model_problems(settings, stageable_ok: bool = False) -> list[str]:
    """The configured Whisper and Florence-2, staged and verified in hf_home. With
    ``stageable_ok`` (the workflow's start: its stage rules run on this host), a model
    this host can still stage is no problem: the tiny ones offline, any from a Hub that
    answers."""
    lines = []
    for offline, verify in (
            (whisper_repo_id(settings.whisper_model) == PACKAGED_WHISPER,
             lambda: model_dir(settings.whisper_model, settings.hf_home)),
            (settings.florence_repo == TINY_FLORENCE, lambda: florence_snapshot(settings))):
        try:
            verify()
        except MeldflowError as exc:
            if not (stageable_ok and (offline or not hub_unreachable())):
                lines.append(f"hf_home: {exc}" + ("; this host cannot reach the Hub to "
                                                  "stage it" if stageable_ok else ""))
    return lines


def data_problems(settings, runs: dict) -> list[str]:
    """meld_dir: every split's annotation CSV and clip folder."""
    needed = "train" not in settings.splits or any(map(needs_clips, runs.values()))
    lines = []
    for split in settings.splits:
        try:
            check_clip_folder(settings.meld_dir, split, needed)
        except MeldflowError as exc:
            lines.append(f"meld_dir: {exc}")
    return lines


def run_check(profile: str, configfiles: list[str]) -> tuple[list[str], list[str]]:
    """(problems, notes): every problem a run with ``profile`` and these config files
    would meet; notes for what only a job's last try (more memory and time) would meet."""
    config = typed_config(merged_config(configfiles))
    settings = Settings.from_config(config)
    runs = experiment_runs(config.get("train", {}), config.get("experiments"),
                           config.get("seeds"))
    trainings = training_asks(runs)
    plan = profile_plan(profile, len(slurm_runs(runs)))
    found, notes = check_cluster(asks_from_profile(profile) + trainings, plan)
    notes = [f"note: {line}" for line in notes] + [
        f"on its last try: {line}" for line in
        check_cluster(asks_from_profile(profile, last_try=True))[0] if line not in found]
    gpu, gpu_notes = gpu_problems(settings, runs)
    return (found + gpu + model_problems(settings) + data_problems(settings, runs),
            notes + [f"note: {line}" for line in gpu_notes])


def check_and_say(profile: str, configfiles: list[str]) -> None:
    """``meldflow check``: every problem one line (notes after), or that all fits; a
    MeldflowError when anything would stop the run."""
    found, notes = run_check(profile, configfiles)
    print("\n".join(found + notes) if found or notes else "meldflow check: the cluster, the "
          "staged models and meld_dir fit this config")
    if found:
        raise MeldflowError(f"{len(found)} problem(s): fix them before submitting")
