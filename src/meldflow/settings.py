"""The preprocessing settings, each defined once: name, type, default, help and checks.

``Settings`` holds the top-level keys of ``config/config.yaml`` (the ``train:`` block is
``meldflow.training.train_options``; the whole config's schema is ``meldflow.config``). From
these definitions (``meldflow.options``) come the flags of each ``meldflow`` subcommand
(``--frames-per-utterance`` for ``frames_per_utterance``: one name along the whole path),
their part of the config schema, the flags each Snakemake rule passes (``step_flags``),
and their table in ``docs/configuration.md``. A value is checked once, where it enters
(the config, or a command line), and then travels as one typed ``Settings`` object.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import shlex
from dataclasses import dataclass
from pathlib import Path

from meldflow import MeldflowError
from meldflow.options import (
    check,
    default_of,
    flag,
    given,
    option,
    option_fields,
    option_schema,
)

SAMPLE = "src/meldflow/data/sample"  # the default meld_dir, as a user in the repo sees it
SAMPLE_DIR = Path(__file__).parent / "data" / "sample"  # the same folder, from anywhere
TINY_FLORENCE = "meldflow/florence2-tiny-random"  # built offline by `meldflow stage`
WINDOW_SECONDS = 30  # what Whisper hears at once: the most clips can be packed into


@dataclass(frozen=True)
class Settings:
    """The workflow's settings (config/config.yaml's top-level keys but train:)."""

    # --- input
    meld_dir: str = option(SAMPLE, "extracted MELD.Raw folder ({split}_sent_emo.csv beside "
                           "train_splits/, dev_splits_complete/, output_repeated_splits_test/);"
                           " the default is meldflow's own small sample",
                           steps=("ingest", "stage"))
    splits: list = option(["train", "dev", "test"], "the splits to process (any subset)",
                          choices=("train", "dev", "test"), min_items=1, unique_items=True)
    shard_size: int = option(1000, "utterances per shard job; dialogues are never split",
                             minimum=1, steps=("ingest",))
    # --- frames
    frames_per_utterance: int = option(8, "frames kept per clip, spread evenly over it",
                                       minimum=1, maximum=64, steps=("frames",),
                                       recorded=("frames",))
    frame_size: int = option(256, "longer side of each JPEG frame in pixels (aspect kept)",
                             minimum=16, maximum=2048, steps=("frames",), recorded=("frames",))
    max_clip_seconds: float = option(30.0, "only this much of a (mis-cut) clip is decoded "
                                     "and transcribed", exclusive_minimum=0,
                                     steps=("frames", "transcribe"),
                                     recorded=("frames", "transcribe"))
    # --- transcription
    whisper_model: str = option("tiny.en", "faster-whisper model name (small.en, large-v3) "
                                "or Hub repo id", steps=("transcribe", "stage"),
                                recorded=("transcribe",))
    whisper_device: str = option("auto", "auto: CUDA if a probe in a subprocess works, else "
                                 "the CPU (int8)", choices=("auto", "cpu", "cuda"),
                                 steps=("transcribe",))
    whisper_beam_size: int = option(5, "beam width; 1 (greedy) is faster but clearly less "
                                    "accurate on these clips", minimum=1,
                                    steps=("transcribe",), recorded=("transcribe",))
    whisper_pack_seconds: float = option(28.0, "short clips share Whisper windows of up to "
                                         "this many seconds (one encoder pass); 0: one clip "
                                         "per call", minimum=0, maximum=WINDOW_SECONDS,
                                         steps=("transcribe",), recorded=("transcribe",))
    whisper_batch_size: int = option(16, "on a GPU, clips decoded together, one clip per "
                                     "chunk (faster-whisper's batched pipeline); 0: packed "
                                     "windows, as on the CPU (where this is not used)",
                                     minimum=0, steps=("transcribe",))
    whisper_max_empty_fraction: float = option(
        0.5, "a shard in which more than this share of the clips with audio come back "
        "without a word fails: what a damaged model produces", minimum=0, maximum=1,
        steps=("transcribe",))
    # --- audit: Whisper disagreeing with most of the gold line is a mis-cut clip, another
    # speaker's line or noise (on real MELD whisper-small's median WER is about 0.17)
    audit_max_wer: float = option(0.75, "the audit lists rows whose transcript's WER against "
                                  "the gold text exceeds this", minimum=0,
                                  steps=("summary",))
    # --- models
    hf_home: str = option("resources/hf_home", "offline Hugging Face cache that compute jobs "
                          "read (never download); stage models into it on a login node",
                          steps=("stage", "transcribe", "train"))
    florence_repo: str = option(TINY_FLORENCE, "Florence-2 checkpoint (native transformers), "
                                "e.g. florence-community/Florence-2-base; the default is a "
                                "tiny random one built offline", steps=("stage", "train"))
    florence_revision: str = option("main", "its revision (branch, tag or commit)",
                                    steps=("stage", "train"))

    def __post_init__(self) -> None:
        check(settings_schema(), dataclasses.asdict(self), "settings")

    @classmethod
    def from_config(cls, config: dict) -> Settings:
        """The settings of a workflow config (its top-level keys but train:, experiments:
        and seeds:), checked; absent keys take their defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        for key in set(config) - names - set(WORKFLOW_ONLY):
            near = difflib.get_close_matches(str(key), sorted(names | set(WORKFLOW_ONLY)), 1)
            raise MeldflowError(f"config: unknown setting {key!r}"
                                + (f" (did you mean {near[0]}?)" if near else "")
                                + "; every setting: docs/configuration.md")
        values = {k: v for k, v in config.items() if k in names}
        check(settings_schema(), values, "config")
        return cls(**values)


WORKFLOW_ONLY = ("train", "experiments", "seeds")  # config keys that are not Settings


def settings_schema() -> dict:
    return {"type": "object",
            "properties": {f.name: option_schema(f) for f in option_fields(Settings)}}


def setting_default(name: str):
    """The default of one setting, from its definition (for a library signature)."""
    return default_of(next(f for f in option_fields(Settings) if f.name == name))


def recorded_settings(step: str) -> tuple[str, ...]:
    """The settings whose values ``step``'s output records (the shards' metadata), by name:
    what decides that output, and what ``meldflow predict`` repeats for new clips."""
    return tuple(f.name for f in option_fields(Settings)
                 if step in f.metadata.get("recorded", ()))


def step_fields(step: str) -> list[dataclasses.Field]:
    """The settings one subcommand takes as flags."""
    return [f for f in option_fields(Settings) if step in f.metadata.get("steps", ())]


def settings_from_args(args: argparse.Namespace, step: str) -> Settings:
    """The command line's settings for ``step`` (the rest at their defaults), checked."""
    return Settings(**given(args, step_fields(step)))


def flags(config: dict, names: list[str] | tuple[str, ...]) -> str:
    """``--name value`` for each setting named, with the config's value (its default if the
    config leaves it out), quoted for the shell: what a rule passes to ``meldflow``."""
    settings = Settings.from_config(config)
    return " ".join(f"{flag(name)} {shlex.quote(str(getattr(settings, name)))}"
                    for name in names)


def step_flags(config: dict, step: str) -> str:
    """The flags of every setting ``meldflow <step>`` takes."""
    return flags(config, [f.name for f in step_fields(step)])
