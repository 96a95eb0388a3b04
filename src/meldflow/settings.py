"""Every workflow setting, defined once: name, type, default, help and checks.

``Settings`` holds the top-level keys of ``config/config.yaml`` (the ``train:`` block is
``meldflow.training.options``). From these definitions come: the flags of each
``meldflow`` subcommand (``--frames-per-utterance`` for ``frames_per_utterance``: one name
along the whole path), the config schema (``workflow/schemas/config.schema.yaml`` holds
exactly what ``config_schema()`` gives; a test keeps it so), the flags each Snakemake rule
passes (``step_flags``), and the README's configuration table (``docs/configuration.md``).
A value is checked once, where it enters (the config, or a command line), and then
travels as one typed ``Settings`` object.

Why not transformers' ``HfArgumentParser``: importing it imports torch (3.5-5 s measured
here, against 0.3 s for ``meldflow --help``), on every shard job and in the launcher that
waits on login nodes; the flags below are plain argparse, generated from the same fields.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meldflow import MeldflowError

SAMPLE = "src/meldflow/data/sample"
TINY_FLORENCE = "meldflow/florence2-tiny-random"  # built offline by `meldflow stage`


def option(default: Any, help: str, **meta: Any):
    """A dataclass field that is a user-facing setting. ``meta``: ``choices``, ``type``
    (when the default is None), ``minimum``, ``maximum``, ``exclusive_minimum``, ``steps``
    (the subcommands that take it as a flag), ``group``."""
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default),
                     metadata={"help": help, **meta})
    return field(default=default, metadata={"help": help, **meta})


def option_fields(cls) -> list[dataclasses.Field]:
    """The user-facing options of ``cls`` (fields with help), in definition order."""
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def default_of(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string",
               list: "array", dict: "object"}
_RANGES = {"minimum": "minimum", "maximum": "maximum", "exclusive_minimum": "exclusiveMinimum"}


def option_schema(f: dataclasses.Field) -> dict:
    """The JSON-schema property of one option: type, choices, range, help and default."""
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


def _unusable(schema: dict, value, key: str) -> str | None:
    """What JSON schema lets through and no code can use: NaN and infinities (every range
    check is false for NaN), and a float where a whole number is wanted (``8.0``, ``1e2``:
    jsonschema counts them as integers, argparse then refuses them in every job)."""
    import math

    if isinstance(value, dict):
        props = schema.get("properties", {})
        for k, v in value.items():
            found = _unusable(props.get(k, {}), v, f"{key}.{k}" if key else str(k))
            if found:
                return found
        return None
    if isinstance(value, list):
        items = schema.get("items", {})
        return next((m for v in value if (m := _unusable(items, v, key))), None)
    if isinstance(value, float) and not math.isfinite(value):
        return f"{key}: {value} is not a number this setting can use (NaN and infinities " \
               f"are refused)"
    kinds = schema.get("type", [])
    kinds = [kinds] if isinstance(kinds, str) else kinds
    if isinstance(value, float) and "integer" in kinds:
        fix = f"write {int(value)}" if value.is_integer() else "give a whole number"
        return f"{key}: {value!r} is a float, and {key} takes a whole number ({fix})"
    return None


def from_text(value, schema: dict):
    """``value`` with text that spells a number or true/false read as the type ``schema``
    asks for: Snakemake's ``--config 'train={epochs: 2}'`` hands nested values over as text
    ('2'). The one conversion, the same from a file or a command line; anything else is
    left for :func:`check` to refuse."""
    import re

    if isinstance(value, dict):
        props = schema.get("properties", {})
        return {k: from_text(v, props.get(k, {})) for k, v in value.items()}
    if isinstance(value, list):
        return [from_text(v, schema.get("items", {})) for v in value]
    if not isinstance(value, str):
        return value
    kinds = schema.get("type", [])
    kinds = [kinds] if isinstance(kinds, str) else kinds
    text = value.strip()
    if "integer" in kinds and re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    if "number" in kinds and re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", text):
        return float(text)
    if "boolean" in kinds and text.lower() in ("true", "false"):
        return text.lower() == "true"
    if "null" in kinds and text.lower() in ("null", "none", "~"):
        return None
    return value


def check(schema: dict, values: dict, where: str) -> None:
    """Raise a MeldflowError naming ``where`` and the key if ``values`` break ``schema``,
    or hold a value no code can use (``_unusable``)."""
    import jsonschema

    found = _unusable(schema, values, "")
    if found:
        raise MeldflowError(f"{where}: {found}")
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(values),
                    key=lambda e: list(e.path))
    if errors:
        e = errors[0]
        key = ".".join(str(k) for k in e.path)
        hint = (" (every option, with its help: `meldflow <command> --help`, or "
                "docs/configuration.md)" if e.validator == "additionalProperties" else "")
        raise MeldflowError(f"{where}: {key + ': ' if key else ''}{e.message}{hint}")


@dataclass(frozen=True)
class Settings:
    """The workflow's settings (config/config.yaml's top-level keys but train:)."""

    # --- input
    meld_dir: str = option(SAMPLE, "extracted MELD.Raw folder ({split}_sent_emo.csv beside "
                           "train_splits/, dev_splits_complete/, output_repeated_splits_test/);"
                           " the default is meldflow's own small sample",
                           steps=("ingest", "stage"))
    splits: list = option(["train", "dev", "test"], "the splits to process (any subset)",
                          choices=("train", "dev", "test"))
    shard_size: int = option(1000, "utterances per shard job; dialogues are never split",
                             minimum=1, steps=("ingest",))
    # --- frames
    frames_per_utterance: int = option(8, "frames kept per clip, spread evenly over it",
                                       minimum=1, maximum=64, steps=("frames",))
    frame_size: int = option(256, "longer side of each JPEG frame in pixels (aspect kept)",
                             minimum=16, maximum=2048, steps=("frames",))
    max_clip_seconds: float = option(30.0, "only this much of a (mis-cut) clip is decoded "
                                     "and transcribed", exclusive_minimum=0,
                                     steps=("frames", "transcribe"))
    # --- transcription
    whisper_model: str = option("tiny.en", "faster-whisper model name (small.en, large-v3) "
                                "or Hub repo id", steps=("transcribe", "stage"))
    whisper_device: str = option("auto", "auto: CUDA if a probe in a subprocess works, else "
                                 "the CPU (int8)", choices=("auto", "cpu", "cuda"),
                                 steps=("transcribe",))
    whisper_beam_size: int = option(5, "beam width; 1 (greedy) is faster but clearly less "
                                    "accurate on these clips", minimum=1,
                                    steps=("transcribe",))
    whisper_pack_seconds: float = option(28.0, "short clips share Whisper windows of up to "
                                         "this many seconds (one encoder pass); 0: one clip "
                                         "per call", minimum=0, maximum=30,
                                         steps=("transcribe",))
    whisper_batch_size: int = option(16, "on a GPU, clips decoded together, one clip per "
                                     "chunk (faster-whisper's batched pipeline); 0: packed "
                                     "windows, as on the CPU (where this is not used)",
                                     minimum=0, steps=("transcribe",))
    whisper_max_empty_fraction: float = option(
        0.5, "a shard in which more than this share of the clips with audio come back "
        "without a word fails: what a damaged model produces", minimum=0, maximum=1,
        steps=("transcribe",))
    # --- audit
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
        import difflib

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


def check_config_file(path: str | Path) -> None:
    """A config file names no key twice in one map: YAML keeps the last silently
    (``frame_size: 128`` then ``frame_size: 300``), so it is an error naming both lines."""
    import yaml

    class Strict(yaml.SafeLoader):
        pass

    def mapping(loader, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise MeldflowError(f"{path}:{line}: {key!r} is given twice in one map (also "
                                    f"on line {seen[key]}); YAML would keep the last "
                                    f"silently: keep one")
            seen[key] = line
        return loader.construct_mapping(node, deep=deep)

    Strict.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    try:
        yaml.load(Path(path).read_text(), Loader=Strict)  # noqa: S506 (a safe loader)
    except yaml.YAMLError as exc:
        raise MeldflowError(f"{path}: not valid YAML ({exc})") from None


def settings_schema() -> dict:
    return {"type": "object",
            "properties": {f.name: option_schema(f) for f in option_fields(Settings)}}


def config_schema(train_block: dict) -> dict:
    """The whole config's JSON schema: Settings, the ``train:`` block (``train_block``,
    from meldflow.training.options), ``experiments:`` and ``seeds:``."""
    from meldflow.training.options import EXPERIMENT_NAME

    props = settings_schema()["properties"]
    for f in option_fields(Settings):
        props[f.name]["description"] = f.metadata["help"]
    props["splits"] |= {"minItems": 1, "uniqueItems": True}
    props["train"] = train_block | {"description": "training options: see "
                                    "meldflow.training.options (`meldflow train --help`)"}
    props["experiments"] = {
        "type": "object", "default": {"default": {}},
        "description": "named sets of overrides of train:, each trained once per seed "
                       "under results/train/{experiment}/seed-{n}/ and compared",
        "propertyNames": {"pattern": f"^{EXPERIMENT_NAME}$"},
        "additionalProperties": {"type": ["object", "null"]}}
    props["seeds"] = {
        "type": ["array", "null"], "default": None, "minItems": 1, "uniqueItems": True,
        "description": "every experiment runs once with each of these seeds (default "
                       "train.seed); digits as strings are accepted (--config seeds=[0,1])",
        "items": {"type": ["integer", "string"], "minimum": 0, "pattern": "^[0-9]+$"}}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "description": "meldflow workflow configuration: generated from "
                           "meldflow.settings and meldflow.training.options (`meldflow "
                           "schema`); tests/test_settings.py keeps this file equal to it",
            "type": "object", "properties": props, "additionalProperties": False}


def step_fields(step: str) -> list[dataclasses.Field]:
    """The settings one subcommand takes as flags."""
    return [f for f in option_fields(Settings) if step in f.metadata.get("steps", ())]


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser, fields: list[dataclasses.Field]) -> None:
    """One flag per field, named after it; unset flags stay None (so that a value from a
    file, or the definition's default, counts)."""
    for f in fields:
        default = default_of(f)
        shown = f"(default {default})" if default not in (None, [], {}) else ""
        help_text = f"{f.metadata['help']} {shown}".strip()
        if isinstance(default, bool):
            parser.add_argument(flag(f.name), action=argparse.BooleanOptionalAction,
                                default=None, help=help_text)
        elif isinstance(default, list):
            parser.add_argument(flag(f.name), nargs="*", default=None, metavar="VALUE",
                                choices=f.metadata.get("choices"), help=help_text)
        elif isinstance(default, dict):
            parser.add_argument(flag(f.name), nargs="*", default=None, metavar="KEY=VALUE",
                                help=help_text)
        else:
            kind = f.metadata.get("type") or type(default)
            parser.add_argument(flag(f.name), type=kind, default=None,
                                choices=f.metadata.get("choices"), help=help_text)


def given(args: argparse.Namespace, fields: list[dataclasses.Field]) -> dict:
    """The values of ``fields`` set on the command line."""
    out = {}
    for f in fields:
        value = getattr(args, f.name, None)
        if value is None:
            continue
        if isinstance(default_of(f), dict):
            bad = [kv for kv in value if "=" not in kv]
            if bad:
                raise MeldflowError(f"{flag(f.name)}: {bad[0]!r} is not KEY=VALUE (for "
                                    f"example {flag(f.name)} qos=high)")
            value = dict(kv.split("=", 1) for kv in value)
        out[f.name] = value
    return out


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


def options_table(fields: list[dataclasses.Field], prefix: str = "") -> str:
    """Options as a Markdown table (docs/configuration.md is made of these)."""
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for f in fields:
        checks = [f"{k.replace('_', ' ')} {v}" for k, v in f.metadata.items() if k in _RANGES]
        if f.metadata.get("choices"):
            checks.append("one of " + ", ".join(map(str, f.metadata["choices"])))
        extra = f" ({'; '.join(checks)})" if checks else ""
        lines.append(f"| `{prefix}{f.name}` | `{default_of(f)}` | {f.metadata['help']}{extra} |")
    return "\n".join(lines) + "\n"
