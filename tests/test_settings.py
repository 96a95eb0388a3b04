"""Every setting defined once: the schema, the config, flags and checks derive from it."""
import re
import subprocess

import pytest
from helpers import (
    BIN,
    REPO,
    env_with_venv,
)

from meldflow import MeldflowError


def test_every_subcommand_takes_its_settings_by_their_config_names():
    from meldflow.cli import COMMANDS
    from meldflow.options import flag
    from meldflow.settings import step_fields

    for step in COMMANDS:
        help_text = subprocess.run([str(BIN / "meldflow"), step, "--help"], capture_output=True,
                                   text=True, check=True, env=env_with_venv()).stdout
        for f in step_fields(step):
            assert flag(f.name) in help_text, (step, f.name)
    frames = subprocess.run([str(BIN / "meldflow"), "frames", "--help"], capture_output=True,
                            text=True, check=True, env=env_with_venv()).stdout
    assert "--frames-per-utterance" in frames and "--size " not in frames


def test_rules_hold_no_setting_of_their_own():
    """Rules pass settings through step_flags/flags (meldflow.settings): no rule reads a
    setting from the config by hand, and none holds a fallback default."""
    rules = "".join(p.read_text() for p in (REPO / "workflow" / "rules").glob("*.smk"))
    read = set(re.findall(r"config(?:\.get\(|\[)\"(\w+)\"", rules))
    assert read <= {"train", "experiments", "seeds"}, read
    assert "config.get(\"" not in rules.replace("config.get(\"train\"", "").replace(
        "config.get(\"experiments\"", "").replace("config.get(\"seeds\"", "")


def test_a_bad_setting_is_refused_where_it_enters(tmp_path):
    """The config (before any job) and a command line get the same check and message."""
    from meldflow.settings import Settings

    with pytest.raises(MeldflowError, match="config: frame_size: 8 is less than the minimum "
                                            "of 16"):
        Settings.from_config({"frame_size": 8})
    proc = subprocess.run([str(BIN / "meldflow"), "frames", "--rows", "x", "--shard", "0",
                           "--out", str(tmp_path / "f.parquet"), "--frame-size", "8"],
                          capture_output=True, text=True, env=env_with_venv())
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "settings: frame_size: 8 is less than the minimum of 16" in proc.stderr
