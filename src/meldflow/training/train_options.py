"""Every training option, defined once: name, default, help, checks (the pattern of the
transformers examples' argument dataclasses, with ``meldflow.options``'s helpers).

``meldflow train``'s flags are generated from these dataclasses, the config schema's
``train:`` block is generated from them (``train_block_schema``), and one check
(``check_options``) validates the ``train:`` block, every experiment, an options file and
the command line. The workflow's runs are planned in ``meldflow.training.runs``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from meldflow import MeldflowError
from meldflow.options import check, option, option_fields, option_schema
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
        from meldflow.training.dataset import Exclude  # pyarrow: not for `meldflow schema`

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


    def world_size(self) -> int:
        """Processes that train (DDP ranks): one in this process with ``debug``."""
        return 1 if self.executor == "debug" else self.tasks * self.nodes


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


def train_block_schema() -> dict:
    """The config's ``train:`` block as JSON schema, from the dataclasses: the schema file
    holds exactly this (tests/test_config.py), and :func:`check_options` applies it."""
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
