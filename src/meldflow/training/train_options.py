"""Every training option, defined once: name, default, help, checks (the pattern of the
transformers examples' argument dataclasses, with ``meldflow.settings``'s helpers).

``meldflow train``'s flags are generated from these dataclasses, the workflow hands them
over as one YAML file (``--options``), the config schema's ``train:`` block is generated
from them (``train_block_schema``), and one check (``check_options``) validates the
``train:`` block, every experiment, an options file and the command line.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from meldflow import MeldflowError
from meldflow.options import check, default_of, option, option_fields, option_schema
from meldflow.row_status import FLAGS
from meldflow.settings import setting_default

# Earlier names of fields, read in old options files and model folders.
RENAMED = {"model_repo": "florence_repo", "revision": "florence_revision"}


def setting_field(name: str, **metadata):
    """A TrainConfig field that is one of the workflow's settings (those whose ``steps``
    include ``train``): its default and meaning are that definition's."""
    return field(default=setting_default(name), metadata={"setting": name, **metadata})


SEED_MAX = 2**32 - 1  # numpy's generators take no larger seed


@dataclass
class TrainConfig:
    """What is trained, on what, and how. Paths first (set by the workflow or by hand)."""

    # Paths are not part of a run's identity (what they hold is: run.json's data checksums).
    out: str = field(metadata={"identity": False})
    train: list[str] = field(default_factory=list, metadata={"identity": False})  # shards
    dev: list[str] = field(default_factory=list, metadata={"identity": False})
    test: list[str] = field(default_factory=list, metadata={"identity": False})
    # text-only runs straight from annotation CSVs
    train_csv: str | None = field(default=None, metadata={"identity": False})
    dev_csv: str | None = field(default=None, metadata={"identity": False})
    test_csv: str | None = field(default=None, metadata={"identity": False})
    # the model and its cache: the workflow's settings (meldflow.settings) read by `train`
    hf_home: str = setting_field("hf_home", identity=False)
    florence_repo: str = setting_field("florence_repo")
    florence_revision: str = setting_field("florence_revision")
    # --- options (config `train:` block, `meldflow train --<name>`) ---
    modalities: str = option("text+vision", "what the model reads",
                             choices=["text", "vision", "text+vision"])
    text_source: str = option("gold", "the text in the prompt: the gold utterance or "
                              "Whisper's transcript", choices=["gold", "whisper"])
    context_turns: int = option(0, "earlier utterances of the dialogue (with speakers) put "
                                "in the prompt before the current one", minimum=0)
    epochs: int = option(8, "passes over the training data", minimum=1)
    global_batch: int = option(8, "samples per optimizer step, over all ranks", minimum=1)
    grad_accum: int = option(1, "micro-batches per step on each rank (same result, less "
                             "memory)", minimum=1)
    lr: float = option(1e-3, "peak learning rate (AdamW): 1e-3 suits the tiny random "
                       "model; about 1e-5 for Florence-2-base", exclusive_minimum=0)
    weight_decay: float = option(0.01, "AdamW weight decay", minimum=0)
    warmup_ratio: float = option(0.1, "share of the steps with a linear warm-up, then "
                                 "linear decay", minimum=0, maximum=1)
    class_weighting: bool = option(True, "weight the emotion loss by inverse class "
                                   "frequency (MELD is imbalanced)")
    augment: bool = option(False, "re-draw frames (order kept) and jitter brightness")
    freeze_vision: bool = option(False, "keep the vision tower's weights fixed")
    grad_checkpointing: bool = option(False, "recompute activations in the backward pass "
                                      "(less memory, same result)")
    bf16: bool = option(True, "bf16 autocast (on GPUs only)")
    seed: int = option(0, "seed of the initial heads, data order and augmentation",
                      minimum=0, maximum=SEED_MAX)
    checkpoint_every: int = option(20, "optimizer steps between checkpoints (also at "
                                   "every epoch end)", minimum=1,
                                   identity=False)  # tested to leave the weights unchanged
    streams: int = option(0, "data streams: 0 = one per rank; fix it to train the same "
                          "batches on any number of GPUs", minimum=0)
    max_steps: int = option(0, "stop after this many steps (0: whole epochs)", minimum=0)
    eval_batch: int = option(16, "samples per evaluation batch", minimum=1)
    loader_workers: int = option(-1, "reader processes per rank; -1: up to 4 on a GPU "
                                 "(from its CPUs), none on the CPU, where they would "
                                 "compete with the step", minimum=-1,
                                 identity=False)  # tested to leave the weights unchanged
    exclude_flags: list[str] = option([], "leave training rows with any of these flags out "
                                      "(see results/manifest/audit.tsv); dev and test stay "
                                      "whole", choices=list(FLAGS))
    exclude_max_wer: float | None = option(None, "also leave out training rows whose "
                                           "transcript WER exceeds this", type=float,
                                           minimum=0)

    def __post_init__(self) -> None:
        """Checked once, where the options enter: an invalid TrainConfig never exists."""
        check_options({f.name: getattr(self, f.name) for f in option_fields(TrainConfig)},
                      "training options")
        if not (self.train or self.train_csv):
            raise MeldflowError("no training data: give aligned shards (the preprocess target, "
                                "with 'train' in splits) or a train CSV (--train-csv)")
        if (self.exclude_flags or self.exclude_max_wer is not None) and self.train_csv:
            raise MeldflowError("exclude_flags/exclude_max_wer need aligned shards (a CSV "
                                "source has no flags or transcripts)")

    def exclusions(self):
        from meldflow.training.dataset import Exclude

        if not self.exclude_flags and self.exclude_max_wer is None:
            return None
        return Exclude(frozenset(self.exclude_flags), self.exclude_max_wer)

    @classmethod
    def from_json(cls, path: str | Path) -> TrainConfig:
        data = {RENAMED.get(k, k): v for k, v in json.loads(Path(path).read_text()).items()}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise MeldflowError(f"{path}: unknown training option(s) {', '.join(sorted(unknown))}")
        return cls(**data)


@dataclass
class LaunchConfig:
    """Where and on how many processes training runs (not part of a run's identity)."""

    executor: str = option("auto", "auto: the workflow's own executor (a SLURM job under "
                           "`snakemake --executor slurm` or the SLURM profile, else "
                           "processes on this machine); local: processes on this machine "
                           "(under the SLURM profile: on the host running Snakemake, with a "
                           "warning); slurm: one SLURM job; debug: in this process",
                           choices=["auto", "local", "slurm", "debug"])
    tasks: int = option(2, "tasks (one per GPU) per node; gloo on the CPU, NCCL on GPUs",
                       minimum=1)
    nodes: int = option(1, "nodes", minimum=1)
    time_min: int = option(60, "time limit in minutes (SLURM signals 90 s before; the job "
                           "is requeued and resumes)", minimum=1)
    partition: str | None = option(None, "SLURM partition", type=str, group="slurm")
    account: str | None = option(None, "SLURM account", type=str, group="slurm")
    gpus_per_node: int | None = option(None, "GPUs per node (set tasks to the same)",
                                       type=int, group="slurm", minimum=0)
    cpus_per_task: int | None = option(None, "CPUs per task (loader workers take up to 4)",
                                       type=int, group="slurm", minimum=1)
    mem_gb: int | None = option(None, "memory per node in GB", type=int, group="slurm",
                                minimum=1)
    sbatch: dict = option({}, "extra sbatch options, KEY=VALUE", group="slurm")

    def __post_init__(self) -> None:
        check_options({f.name: getattr(self, f.name) for f in option_fields(LaunchConfig)
                       if f.metadata.get("group") != "slurm"}
                      | {"slurm": {f.name: getattr(self, f.name)
                                   for f in option_fields(LaunchConfig)
                                   if f.metadata.get("group") == "slurm"}},
                      "launch options")

    def cluster_ask(self, who: str):
        """What this launch asks of a SLURM cluster (for the preflight check)."""
        from meldflow.slurm.ask import Ask

        return Ask(who, "train.slurm", elsewhere=(("minutes", "train.time_min"),),
                   partition=self.partition, qos=self.sbatch.get("qos"), nodes=self.nodes,
                   account=self.account, minutes=self.time_min,
                   gpus_per_node=self.gpus_per_node,
                   mem_mb=self.mem_gb * 1024 if self.mem_gb else None,
                   cpus_per_node=self.cpus_per_task * self.tasks if self.cpus_per_task
                   else None)

    def world_size(self) -> int:
        """Processes that train (DDP ranks): one in this process with ``debug``."""
        return 1 if self.executor == "debug" else self.tasks * self.nodes

    def submitit_parameters(self) -> dict:
        """These settings in submitit's names (``time_min`` is its ``timeout_min``; SLURM
        settings that are not set are left to the cluster's defaults)."""
        params: dict = {"timeout_min": self.time_min}
        if self.executor != "debug":
            params |= {"tasks_per_node": self.tasks, "nodes": self.nodes}
        if self.executor == "slurm":
            names = {"partition": "slurm_partition", "account": "slurm_account",
                     "gpus_per_node": "gpus_per_node", "cpus_per_task": "cpus_per_task",
                     "mem_gb": "mem_gb"}
            params |= {names[k]: getattr(self, k) for k in names
                       if getattr(self, k) is not None}
            if self.sbatch:
                params["slurm_additional_parameters"] = dict(self.sbatch)
        return params


def read_options_file(path: str | Path) -> tuple[dict, dict]:
    """(training fields, launch fields) from a YAML options file (what the workflow
    writes): training options, paths (hf_home, florence_repo, train/dev/test), launch
    options, and SLURM settings under ``slurm:``."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise MeldflowError(f"cannot read training options {path}: {exc}") from None
    return split_options(data, str(path))


def split_options(options: dict, where: str) -> tuple[dict, dict]:
    """(TrainConfig fields, LaunchConfig fields) of a run's options (the train: block's
    keys, SLURM settings under ``slurm:``, paths); unknown keys are an error."""
    data = {RENAMED.get(k, k): v for k, v in options.items()}
    data |= data.pop("slurm", None) or {}
    train_names = {f.name for f in dataclasses.fields(TrainConfig)} - {"out"}
    launch_names = {f.name for f in dataclasses.fields(LaunchConfig)}
    unknown = set(data) - train_names - launch_names
    if unknown:
        raise MeldflowError(f"{where}: unknown training option(s) {', '.join(sorted(unknown))}")
    return ({k: v for k, v in data.items() if k in train_names},
            {k: v for k, v in data.items() if k in launch_names})


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
    import hashlib

    text = json.dumps(options, sort_keys=True, default=str)
    return f"options sha256:{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def write_options_file(options: dict, path: str | Path, log: str | Path | None = None) -> None:
    """The workflow's options file for ``meldflow train --options`` (checked when the
    Snakefile was read, and again by ``meldflow train``, where it enters that process)."""
    import yaml

    from meldflow.storage import write_text

    write_text(yaml.safe_dump(dict(options), sort_keys=False), path)
    if log:
        write_text(f"wrote {path}: {len(options)} keys\n", log)


def train_configs(out: str, options_file: str | None, aligned_dir: str | None,
                  shards: dict[str, list[str] | None], csvs: dict[str, str | None],
                  train_flags: dict, launch_flags: dict) -> tuple[TrainConfig, LaunchConfig]:
    """`meldflow train`'s (TrainConfig, LaunchConfig): the definitions' defaults < the
    options file < the flags given (``shards`` and ``csvs`` by split, None where not given;
    ``aligned_dir`` stands for every split's shards). Shards are checked readable here,
    before anything is submitted."""
    from meldflow.preprocess.align import read_shard_index
    from meldflow.training.dataset import open_parquet

    train_kw, launch_kw = read_options_file(options_file) if options_file else ({}, {})
    train_kw |= {name: path for name, path in csvs.items() if path is not None}
    for split, paths in shards.items():
        if paths is not None:
            train_kw[split] = list(paths)
        elif aligned_dir and (Path(aligned_dir) / split).is_dir():
            train_kw[split] = read_shard_index(Path(aligned_dir) / split)
    cfg = TrainConfig(out=out, **(train_kw | train_flags))
    cfg.hf_home = str(Path(cfg.hf_home).resolve())
    for p in cfg.train + cfg.dev + cfg.test:  # a damaged shard fails here, named, early
        if not Path(p).is_file():
            raise MeldflowError(f"aligned shard not found: {p}; run the preprocess target")
        open_parquet(p)
    return cfg, LaunchConfig(**(launch_kw | launch_flags))


def train_block_schema() -> dict:
    """The config's ``train:`` block as JSON schema, from the dataclasses: the schema file
    holds exactly this (tests/test_settings.py), and :func:`check_options` applies it."""
    props: dict = {}
    slurm: dict = {}
    for cls in (LaunchConfig, TrainConfig):
        for f in option_fields(cls):
            (slurm if f.metadata.get("group") == "slurm" else props)[f.name] = option_schema(f)
    props["slurm"] = {"type": "object", "additionalProperties": False, "properties": slurm}
    return {"type": "object", "additionalProperties": False, "properties": props}


def check_options(options: dict, where: str) -> None:
    """Raise a MeldflowError naming ``where`` and the option if ``options`` (keys of the
    ``train:`` block, any subset) break a definition. The one check behind the config's
    ``train:`` block, every experiment, the options file and the command line."""
    check(train_block_schema(), options, where)


EXPERIMENT_NAME = r"[A-Za-z0-9][A-Za-z0-9_.+-]*"


def experiment_runs(train: dict, experiments: dict | None,
                    seeds: list[int] | None) -> dict[tuple[str, int], dict]:
    """The options of every (experiment, seed) run: the config's ``train:`` block with the
    experiment's overrides on top (``slurm:`` merged key by key) and the seed set. Each is
    checked here, at parse time, before any work, exactly as the ``train:`` block is.

    ``seeds`` (every experiment runs once per seed) defaults to ``train.seed``; an
    experiment may not set ``seed`` itself when ``seeds`` is given.
    """
    import re

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
