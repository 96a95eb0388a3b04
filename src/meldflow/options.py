"""The option machinery: a setting is a dataclass field defined once (name, type,
default, help, checks), and from that one definition come its JSON schema, its command-line
flag, its row in docs/configuration.md, and the one check and conversion of a value where
it enters.

``meldflow.settings`` (preprocessing) and ``meldflow.training.train_options`` (training) define
their settings with it; ``meldflow.config`` puts their schemas together.

Why not transformers' ``HfArgumentParser``: importing it imports torch (3.5-5 s measured
here, against 0.3 s for ``meldflow --help``), on every shard job and in the launcher that
waits on login nodes; the flags here are plain argparse, generated from the same fields.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
from dataclasses import field
from typing import Any

from meldflow import MeldflowError


def option(default: Any, help: str, **meta: Any):
    """A dataclass field that is a user-facing setting. ``meta``: ``choices``, ``type``
    (when the default is None), ``minimum``, ``maximum``, ``exclusive_minimum``,
    ``min_items``, ``unique_items`` (lists), ``steps``
    (the subcommands that take it as a flag), ``recorded`` (the steps whose output records
    its value, and which ``meldflow predict`` repeats), ``identity`` (False: not part of a
    training run's identity), ``group``."""
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
_RANGES = {"minimum": "minimum", "maximum": "maximum", "exclusive_minimum": "exclusiveMinimum",
           "min_items": "minItems", "unique_items": "uniqueItems"}


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
    if isinstance(value, float) and kinds == ["string"]:
        return f"{key}: {value!r} is a number; this setting takes text: quote it " \
               f"(--config '{key}=\"…\"', or in YAML {key}: \"…\")"
    if isinstance(value, float) and "integer" in kinds:
        fix = f"write {int(value)}" if value.is_integer() else "give a whole number"
        return f"{key}: {value!r} is a float, and {key} takes a whole number ({fix})"
    return None


def from_text(value, schema: dict):
    """``value`` with text that spells a number or true/false read as the type ``schema``
    asks for: Snakemake's ``--config 'train={epochs: 2}'`` hands nested values over as text
    ('2'). The one conversion, the same from a file or a command line; anything else is
    left for :func:`check` to refuse."""
    if isinstance(value, dict):
        props = schema.get("properties", {})
        return {k: from_text(v, props.get(k, {})) for k, v in value.items()}
    if isinstance(value, list):
        return [from_text(v, schema.get("items", {})) for v in value]
    kinds = schema.get("type", [])
    kinds = [kinds] if isinstance(kinds, str) else kinds
    if kinds == ["string"] and isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # a commit or tag of digits, which YAML reads as a number
    if not isinstance(value, str):
        return value
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


def options_table(fields: list[dataclasses.Field], prefix: str = "",
                  facts: tuple[str, ...] = ()) -> str:
    """Options as a Markdown table (docs/configuration.md is made of these). ``facts``:
    columns of what a definition says of itself: ``steps`` (the commands that take it),
    ``recorded`` (the outputs whose metadata record it), ``identity`` (whether it counts
    toward a training run's identity)."""
    heads = {"steps": "read by", "recorded": "recorded in", "identity": "in run identity"}
    lines = ["| key | default | " + "".join(f"{heads[c]} | " for c in facts) + "meaning |",
             "|---|---|" + "---|" * len(facts) + "---|"]
    for f in fields:
        said = {"min_items": "at least {} item(s)", "unique_items": "no item twice"}
        checks = [said[k].format(v) if k in said else f"{k.replace('_', ' ')} {v}"
                  for k, v in f.metadata.items() if k in _RANGES]
        if f.metadata.get("choices"):
            checks.append("one of " + ", ".join(map(str, f.metadata["choices"])))
        extra = f" ({'; '.join(checks)})" if checks else ""
        cells = "".join(f"{_fact(f, c)} | " for c in facts)
        lines.append(f"| `{prefix}{f.name}` | `{default_of(f)}` | {cells}"
                     f"{f.metadata['help']}{extra} |")
    return "\n".join(lines) + "\n"


def _fact(f: dataclasses.Field, column: str) -> str:
    if column == "identity":
        return "yes" if f.metadata.get("identity", True) else "no"
    return ", ".join(f.metadata.get(column, ())) or ("the workflow" if column == "steps" else "-")
