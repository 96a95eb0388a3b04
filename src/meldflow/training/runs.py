"""The workflow's training runs: every (experiment, seed) with its options, where each
trains, what it reads, and the options file the workflow hands to ``meldflow train``."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import yaml

from meldflow import MeldflowError
from meldflow.options import default_of, option_fields
from meldflow.storage import write_text
from meldflow.training.train_options import (
    SEED_MAX,
    LaunchConfig,
    TrainConfig,
    check_options,
    split_options,
)

EXPERIMENT_NAME = r"[A-Za-z0-9][A-Za-z0-9_.+-]*"



def experiment_runs(train: dict, experiments: dict | None,
                    seeds: list[int] | None) -> dict[tuple[str, int], dict]:
    """The options of every (experiment, seed) run: the config's ``train:`` block with the
    experiment's overrides on top (``slurm:`` merged key by key) and the seed set. Each is
    checked here, at parse time, before any work, exactly as the ``train:`` block is.

    ``seeds`` (every experiment runs once per seed) defaults to ``train.seed``; an
    experiment may not set ``seed`` itself when ``seeds`` is given.
    """
    if not isinstance(train or {}, dict):
        raise MeldflowError("config train: a map of option: value (see config/config.yaml)")
    check_options(train, "config train")
    if experiments is not None and not isinstance(experiments, dict):
        raise MeldflowError(f"config experiments: a map of name: overrides, e.g. "
                            f"'text: {{modalities: text}}' (got a {type(experiments).__name__})")
    if seeds is not None and (not isinstance(seeds, list) or not all(
            isinstance(x, int) and not isinstance(x, bool) for x in seeds)):
        raise MeldflowError(f"config seeds: a list of whole numbers, e.g. [0, 1, 2] "
                            f"(got {seeds!r})")
    if seeds and len(set(seeds)) != len(seeds):
        raise MeldflowError(f"config seeds: {seeds} names a seed twice")
    for seed in seeds or []:
        if not 0 <= seed <= SEED_MAX:
            raise MeldflowError(f"config seeds: {seed} is not a seed (0 to {SEED_MAX})")
    experiments = experiments or {"default": {}}
    runs: dict[tuple[str, int], dict] = {}
    for name, overrides in experiments.items():
        overrides = dict(overrides or {})
        if not re.fullmatch(EXPERIMENT_NAME, str(name)):
            raise MeldflowError(f"experiment name {name!r}: use letters, digits and _ . + - "
                                f"(it becomes the folder results/train/{name}/)")
        if seeds and "seed" in overrides:
            raise MeldflowError(f"experiment {name} sets seed, but seeds: {seeds} is given: "
                                f"leave seeds to the seeds: list")
        options = dict(train) | overrides
        options["slurm"] = dict(train.get("slurm") or {}) | dict(overrides.get("slurm") or {})
        check_options(options, f"config experiment {name}")
        for seed in seeds or [options.get("seed", 0)]:
            runs[(str(name), int(seed))] = options | {"seed": int(seed)}
    return runs


def launch_config(options: dict) -> LaunchConfig:
    """Where one run of the workflow trains (from its options)."""
    return LaunchConfig(**split_options(options, "training options")[1])


def resolve_executor(configured: str, workflow_executor: str | None) -> str:
    """Where a run trains: ``auto`` follows the executor Snakemake runs the workflow with
    (``slurm``: a SLURM job; anything else: processes on this machine). An explicit value
    is kept. ``workflow_executor`` None (outside a workflow) or a dry run's pseudo-executor
    leaves ``auto`` for ``launch`` to take as local."""
    if configured != "auto" or workflow_executor in (None, "dryrun", "touch"):
        return configured
    return "slurm" if workflow_executor == "slurm" else "local"


def needs_clips(options: dict) -> bool:
    """Whether a run reads anything made from the clips (frames, or Whisper's text)."""
    cfg = {f.name: default_of(f) for f in option_fields(TrainConfig)} | options
    return cfg["modalities"] != "text" or cfg["text_source"] == "whisper"


def off_cluster_runs(runs: dict[tuple[str, int], dict]) -> list[str]:
    """Runs a config explicitly trains on the host running Snakemake (executor local or
    debug): under the SLURM executor each deserves a warning (a login node's CPUs)."""
    return [f"results/train/{name}/seed-{seed}" for (name, seed), options in runs.items()
            if launch_config(options).executor in ("local", "debug")]


def options_digest(options: dict) -> str:
    """A short name of one run's options, which changes whenever any of them does."""
    text = json.dumps(options, sort_keys=True, default=str)
    return f"options sha256:{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def write_options_file(options: dict, path: str | Path, log: str | Path | None = None) -> None:
    """The workflow's options file for ``meldflow train --options`` (checked when the
    Snakefile was read, and again by ``meldflow train``, where it enters that process)."""
    write_text(yaml.safe_dump(dict(options), sort_keys=False), path)
    if log:
        write_text(f"wrote {path}: {len(options)} keys\n", log)


def read_options_file(path: str | Path) -> tuple[dict, dict]:
    """(training fields, launch fields) from a YAML options file (what the workflow
    writes): training options, paths (hf_home, florence_repo, train/dev/test), launch
    options, and SLURM settings under ``slurm:``."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise MeldflowError(f"cannot read training options {path}: {exc}") from None
    return split_options(data, str(path))
