"""Every training option, defined once: name, default, help (the pattern of the
transformers examples' argument dataclasses).

``meldflow train``'s flags are generated from these dataclasses, the workflow hands them
over as one YAML file (``--options``), and ``tests/test_options.py`` checks that the
config schema's ``train:`` block has exactly these keys with the same defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meldflow import MeldflowError
from meldflow.row_status import FLAGS
from meldflow.stage import FLORENCE_TINY_REPO


def option(default: Any, help: str, **meta: Any):
    """A dataclass field that is a user-facing option (``meta``: choices, type, flag)."""
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default),
                     metadata={"help": help, **meta})
    return field(default=default, metadata={"help": help, **meta})


@dataclass
class TrainConfig:
    """What is trained, on what, and how. Paths first (set by the workflow or by hand)."""

    out: str
    hf_home: str
    train: list[str] = field(default_factory=list)  # aligned shards
    dev: list[str] = field(default_factory=list)
    test: list[str] = field(default_factory=list)
    train_csv: str | None = None  # text-only runs straight from annotation CSVs
    dev_csv: str | None = None
    test_csv: str | None = None
    model_repo: str = FLORENCE_TINY_REPO
    revision: str = "main"
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
                      minimum=0)
    checkpoint_every: int = option(20, "optimizer steps between checkpoints (also at "
                                   "every epoch end)", minimum=1)
    streams: int = option(0, "data streams: 0 = one per rank; fix it to train the same "
                          "batches on any number of GPUs", minimum=0)
    max_steps: int = option(0, "stop after this many steps (0: whole epochs)", minimum=0)
    eval_batch: int = option(16, "samples per evaluation batch", minimum=1)
    loader_workers: int = option(-1, "reader processes per rank; -1: up to 4 on a GPU "
                                 "(from its CPUs), none on the CPU, where they would "
                                 "compete with the step", minimum=-1)
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
        from meldflow.dataset import Exclude

        if not self.exclude_flags and self.exclude_max_wer is None:
            return None
        return Exclude(frozenset(self.exclude_flags), self.exclude_max_wer)

    @classmethod
    def from_json(cls, path: str | Path) -> TrainConfig:
        data = json.loads(Path(path).read_text())
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise MeldflowError(f"{path}: unknown training option(s) {', '.join(sorted(unknown))}")
        return cls(**data)


@dataclass
class LaunchConfig:
    """Where and on how many processes training runs (not part of a run's identity)."""

    executor: str = option("local", "local: processes on this machine; slurm: one SLURM "
                           "job; debug: in this process", choices=["local", "slurm", "debug"])
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

    def slurm_parameters(self) -> dict:
        """submitit's names for the SLURM settings that are set."""
        names = {"partition": "slurm_partition", "account": "slurm_account",
                 "gpus_per_node": "gpus_per_node", "cpus_per_task": "cpus_per_task",
                 "mem_gb": "mem_gb"}
        out = {names[k]: getattr(self, k) for k in names if getattr(self, k) is not None}
        if self.sbatch:
            out["slurm_additional_parameters"] = dict(self.sbatch)
        return out


def default_of(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def option_fields(cls) -> list[dataclasses.Field]:
    """The user-facing options of ``cls`` (fields with help), in definition order."""
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def add_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """One flag per option of ``cls``; unset flags stay None, so a file's values count."""
    for f in option_fields(cls):
        flag = "--" + f.name.replace("_", "-")
        default = default_of(f)
        shown = f"(default {default})" if default not in (None, [], {}) else ""
        help_text = f"{f.metadata['help']} {shown}".strip()
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
        elif isinstance(default, list):
            parser.add_argument(flag, nargs="*", default=None, metavar="VALUE",
                                choices=f.metadata.get("choices"), help=help_text)
        elif isinstance(default, dict):
            parser.add_argument(flag, nargs="*", default=None, metavar="KEY=VALUE",
                                help=help_text)
        else:
            kind = f.metadata.get("type") or type(default)
            parser.add_argument(flag, type=kind, default=None,
                                choices=f.metadata.get("choices"), help=help_text)


def given(args: argparse.Namespace, cls) -> dict:
    """The options of ``cls`` set on the command line."""
    out = {}
    for f in option_fields(cls):
        value = getattr(args, f.name, None)
        if value is None:
            continue
        if isinstance(default_of(f), dict):
            value = dict(kv.split("=", 1) for kv in value)
        out[f.name] = value
    return out


def read_options_file(path: str | Path) -> tuple[dict, dict]:
    """(training fields, launch fields) from a YAML options file (what the workflow
    writes): training options, paths (hf_home, model_repo, train/dev/test), launch
    options, and SLURM settings under ``slurm:``."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise MeldflowError(f"cannot read training options {path}: {exc}") from None
    data = dict(data)
    data |= data.pop("slurm", None) or {}
    train_names = {f.name for f in dataclasses.fields(TrainConfig)} - {"out"}
    launch_names = {f.name for f in dataclasses.fields(LaunchConfig)}
    unknown = set(data) - train_names - launch_names
    if unknown:
        raise MeldflowError(f"{path}: unknown training option(s) {', '.join(sorted(unknown))}")
    return ({k: v for k, v in data.items() if k in train_names},
            {k: v for k, v in data.items() if k in launch_names})


def write_options_file(options: dict, path: str | Path, log: str | Path | None = None) -> None:
    """The workflow's options file for ``meldflow train --options`` (checked on reading)."""
    import yaml

    from meldflow.storage import write_text

    write_text(yaml.safe_dump(dict(options), sort_keys=False), path)
    read_options_file(path)
    if log:
        write_text(f"wrote {path}: {len(options)} keys\n", log)


_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string",
               list: "array", dict: "object"}
_RANGES = {"minimum": "minimum", "maximum": "maximum", "exclusive_minimum": "exclusiveMinimum"}


def option_schema(f: dataclasses.Field) -> dict:
    """The JSON-schema property of one option: type, choices, range and default."""
    default = default_of(f)
    kind = _JSON_TYPES[f.metadata.get("type") or type(default)]
    prop: dict = {"type": [kind, "null"] if default is None else kind}
    choices = f.metadata.get("choices")
    if choices and isinstance(default, list):
        prop["items"] = {"type": "string", "enum": list(choices)}
    elif choices:
        prop["enum"] = list(choices)
    prop |= {_RANGES[k]: v for k, v in f.metadata.items() if k in _RANGES}
    prop["default"] = default
    return prop


def train_block_schema() -> dict:
    """The config's ``train:`` block as JSON schema, from the dataclasses: the schema file
    holds exactly this (tests/test_options.py), and :func:`check_options` applies it."""
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
    import jsonschema

    validator = jsonschema.Draft202012Validator(train_block_schema())
    errors = sorted(validator.iter_errors(options), key=lambda e: list(e.path))
    if errors:
        e = errors[0]
        key = ".".join(str(k) for k in e.path)
        hint = (" (the options are the keys of the train: block; `meldflow train --help` "
                "lists them)" if e.validator == "additionalProperties" else "")
        raise MeldflowError(f"{where}: {key + ': ' if key else ''}{e.message}{hint}")


def schema_defaults() -> dict:
    """The config's ``train:`` block as these dataclasses define it (keys and defaults)."""
    out: dict = {}
    for cls in (LaunchConfig, TrainConfig):
        for f in option_fields(cls):
            default = default_of(f)
            if f.metadata.get("group") == "slurm":
                out.setdefault("slurm", {})[f.name] = default
            else:
                out[f.name] = default
    return out


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

    check_options(train, "config train")
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
