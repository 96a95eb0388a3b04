"""The whole workflow config: its schema (the preprocessing settings, the ``train:`` block,
``experiments:`` and ``seeds:``), the one typing of its values, and the check of its file.

It sits above ``meldflow.settings`` and ``meldflow.training.train_options``, which define the
settings it puts together; ``workflow/schemas/config.schema.yaml`` is exactly what
``config_schema()`` gives (`meldflow schema`; a test keeps it so).
"""

from __future__ import annotations

from pathlib import Path

from meldflow import MeldflowError
from meldflow.options import from_text, option_fields, options_table
from meldflow.settings import Settings, settings_schema
from meldflow.training.runs import EXPERIMENT_NAME
from meldflow.training.train_options import (
    SEED_MAX,
    LaunchConfig,
    TrainConfig,
    train_block_schema,
)


def config_schema() -> dict:
    """The whole config's JSON schema: Settings, the ``train:`` block
    (meldflow.training.train_options), ``experiments:`` and ``seeds:``."""
    props = settings_schema()["properties"]
    for f in option_fields(Settings):
        props[f.name]["description"] = f.metadata["help"]
    props["train"] = train_block_schema() | {"description": "training options: see "
                                    "meldflow.training.train_options (`meldflow train --help`)"}
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
        "items": {"type": ["integer", "string"], "minimum": 0, "maximum": SEED_MAX,
                  "pattern": "^[0-9]+$"}}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "description": "meldflow workflow configuration: generated from "
                           "meldflow.settings and meldflow.training.train_options (`meldflow "
                           "schema`); tests/test_config.py keeps this file equal to it",
            "type": "object", "properties": props, "additionalProperties": False}


def typed_config(config: dict) -> dict:
    """The whole config with text that spells a number or true/false read as the type its
    setting has (``meldflow.options.from_text``): where the config enters, before any check.
    ``--config 'train={epochs: 2}'`` and ``seeds=[0,1]`` reach the workflow as text."""
    typed = from_text(dict(config), config_schema())
    if isinstance(typed.get("experiments"), dict):  # each one overrides train:
        typed["experiments"] = {name: from_text(over, train_block_schema())
                                for name, over in typed["experiments"].items()}
    return typed


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


def config_tables() -> str:
    """Every setting and option as Markdown tables (`meldflow schema --table`): the
    reference in docs/configuration.md."""
    launch = option_fields(LaunchConfig)
    return ("## Settings\n\n" + options_table(option_fields(Settings), "",
                                              ("steps", "recorded")) + "\n"
            + "## Training (`train:`)\n\n"
            + options_table(option_fields(TrainConfig), "", ("identity",)) + "\n"
            + "## Where training runs (`train:`)\n\n"
            + options_table([f for f in launch if f.metadata.get("group") != "slurm"]) + "\n"
            + "## SLURM (`train: slurm:`)\n\n"
            + options_table([f for f in launch if f.metadata.get("group") == "slurm"]))
