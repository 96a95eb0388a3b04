"""Every training option defined once (meldflow.training.train_options): the config's train:
block, flags, options files and the workflow's settings."""
import dataclasses
import subprocess

import pytest
import yaml
from helpers import (
    BIN,
    REPO,
    SAMPLE,
    env_with_venv,
)

from meldflow.options import default_of, option_fields
from meldflow.training.launch import submitit_parameters
from meldflow.training.runs import read_options_file
from meldflow.training.train_options import LaunchConfig, TrainConfig


def train_block_defaults() -> dict:
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


def test_config_train_block_holds_the_defaults():
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    assert config["train"] == train_block_defaults()


def test_every_option_has_a_flag_and_files_and_flags_combine(tmp_path):
    from meldflow.cli import build_parser, train_configs_of

    help_text = subprocess.run([str(BIN / "meldflow"), "train", "--help"], capture_output=True,
                               text=True, check=True).stdout
    for cls in (TrainConfig, LaunchConfig):
        for f in option_fields(cls):
            assert "--" + f.name.replace("_", "-") in help_text, f.name
    options = tmp_path / "options.yaml"
    options.write_text(yaml.safe_dump({
        "hf_home": str(tmp_path), "train_csv": str(SAMPLE / "train_sent_emo.csv"),
        "modalities": "text", "lr": 0.01, "augment": True, "executor": "debug",
        "slurm": {"partition": "gpu", "sbatch": {"qos": "high"}}}))
    args = build_parser().parse_args(["train", "--out", str(tmp_path / "run"), "--options",
                                      str(options), "--lr", "0.5", "--no-augment",
                                      "--seed", "3"])
    cfg, how = train_configs_of(args)
    assert (cfg.lr, cfg.augment, cfg.seed, cfg.modalities) == (0.5, False, 3, "text")
    assert cfg.epochs == default_of(next(f for f in option_fields(TrainConfig)
                                         if f.name == "epochs"))
    assert how.executor == "debug" and how.partition == "gpu" and how.sbatch == {"qos": "high"}
    slurm = submitit_parameters(dataclasses.replace(how, executor="slurm"))
    assert slurm == {"timeout_min": 60, "tasks_per_node": 2, "nodes": 1,
                     "slurm_partition": "gpu", "slurm_additional_parameters": {"qos": "high"}}
    options.write_text(yaml.safe_dump({"learning_rate": 1}))
    with pytest.raises(Exception, match="unknown training option.*learning_rate"):
        read_options_file(options)


def test_the_command_line_is_checked_the_same_way(tmp_path):
    proc = subprocess.run([str(BIN / "meldflow"), "train", "--out", str(tmp_path / "run"),
                           "--hf-home", str(tmp_path), "--train-csv",
                           str(SAMPLE / "train_sent_emo.csv"), "--lr", "-1"],
                          capture_output=True, text=True, env=env_with_venv())
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "training options: lr: -1.0 is less than or equal to the minimum of 0" in proc.stderr


def test_the_training_settings_are_the_workflows_own():
    """TrainConfig's model and cache fields are exactly the settings `train` reads, with
    their defaults (one definition: meldflow.settings)."""
    import dataclasses

    from meldflow.settings import setting_default, step_fields
    from meldflow.training.train_options import TrainConfig

    taken = {f.metadata["setting"]: f for f in dataclasses.fields(TrainConfig)
             if "setting" in f.metadata}
    assert set(taken) == {f.name for f in step_fields("train")}
    for name, f in taken.items():
        assert f.name == name and f.default == setting_default(name)
