"""Every training option defined once (meldflow/training/options.py), and the workflow handing it
over as one file; rules that work without an activated venv and show why they failed."""

import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import BIN, REPO, SAMPLE, env_with_venv, make_workdir, need_tool

from meldflow.training.options import (
    LaunchConfig,
    TrainConfig,
    default_of,
    option_fields,
    read_options_file,
    schema_defaults,
    train_block_schema,
)

SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())


def test_schema_train_block_is_the_option_definitions():
    """The schema's train: block is what the dataclasses generate: keys, types, choices,
    ranges and defaults (one definition; the same check validates every experiment)."""
    block = dict(SCHEMA["properties"]["train"])
    block.pop("description")
    assert block == train_block_schema()
    fields = {f.name for cls in (TrainConfig, LaunchConfig) for f in option_fields(cls)}
    assert set(block["properties"]) | set(block["properties"]["slurm"]["properties"]) == \
        fields | {"slurm"}


def test_config_train_block_holds_the_defaults():
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    assert config["train"] == schema_defaults()


def test_every_option_has_a_flag_and_files_and_flags_combine(tmp_path):
    from meldflow.cli import _train_configs, build_parser

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
    cfg, how = _train_configs(args)
    assert (cfg.lr, cfg.augment, cfg.seed, cfg.modalities) == (0.5, False, 3, "text")
    assert cfg.epochs == default_of(next(f for f in option_fields(TrainConfig)
                                         if f.name == "epochs"))
    assert how.executor == "debug" and how.slurm_parameters() == {
        "slurm_partition": "gpu", "slurm_additional_parameters": {"qos": "high"}}
    options.write_text(yaml.safe_dump({"learning_rate": 1}))
    with pytest.raises(Exception, match="unknown training option.*learning_rate"):
        read_options_file(options)


def test_workflow_hands_training_one_options_file(preprocessed):
    """`train_options` writes every option, the model and the shards named one by one."""
    proc = subprocess.run(
        [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "-d", str(preprocessed),
         "--cores", "1", "results/train/default/seed-0.yaml"],
        capture_output=True, text=True, env=env_with_venv(), cwd=preprocessed)
    assert proc.returncode == 0, proc.stderr[-3000:]
    train_kw, launch_kw = read_options_file(preprocessed / "results" / "train" / "default" /
                                            "seed-0.yaml")
    shards = sorted(str(p.relative_to(preprocessed)) for p in
                    (preprocessed / "results" / "aligned" / "train").glob("*.parquet"))
    assert train_kw["train"] == shards and train_kw["model_repo"]
    assert {f.name for f in option_fields(TrainConfig)} <= set(train_kw)
    assert launch_kw["executor"] == "local"


def test_unactivated_snakemake_finds_meldflow_and_shows_failed_logs(tmp_path, hf_home):
    """`.venv/bin/snakemake` with the venv not on PATH: rules still find `meldflow`; a rule
    that fails prints the end of its log, not only "check log file(s)"."""
    need_tool("ffmpeg")
    meld = tmp_path / "meld"
    meld.mkdir()
    (meld / "dev_sent_emo.csv").write_text((SAMPLE / "dev_sent_emo.csv").read_text()
                                           .replace("neutral", "bored", 1))
    work = make_workdir(tmp_path / "work", hf_home, meld_dir=str(meld), splits=["dev"])
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if p != str(BIN) and p)
    proc = subprocess.run([str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "-d",
                           str(work), "--cores", "1", "results/ingest/dev.parquet"],
                          capture_output=True, text=True, env=env, cwd=work)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "127" not in text.split("Error in rule")[-1][:400]  # meldflow was found
    assert "last lines of results/logs/ingest/dev.log" in text
    assert "Emotion 'bored' is not one of" in text


def test_aligned_shards_load_with_pandas(preprocessed):
    """The README's recipe: one shard or all of them, without meldflow."""
    import pandas as pd

    folder = preprocessed / "results" / "aligned" / "train"
    shards = sorted(folder.glob("*.parquet"))
    frame = pd.concat([pd.read_parquet(p) for p in shards])
    assert len(frame) == sum(pq.read_metadata(p).num_rows for p in shards) == 66
    assert {"utterance", "emotion", "frames", "transcript"} <= set(frame.columns)
    assert frame.query("status == 'ok'")["frames"].map(len).eq(8).all()


def test_the_waiting_launcher_does_not_load_torch():
    """`meldflow train` only submits and waits (one per experiment and seed on a login
    node): it must not hold PyTorch in memory."""
    code = ("import sys, meldflow.cli, meldflow.training.launch; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env_with_venv()).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("override, message", [
    ({"epochs": 0}, "epochs: 0 is less than the minimum of 1"),
    ({"lr": -1}, "lr: -1 is less than or equal to the minimum of 0"),
    ({"modalities": "audio"}, "modalities: 'audio' is not one of ['text', 'vision', "
                              "'text+vision']"),
    ({"slurm": {"mem_gb": 0}}, "slurm.mem_gb: 0 is less than the minimum of 1"),
])
def test_experiments_are_checked_like_the_train_block(override, message):
    """An experiment's overrides ran (epochs 0: an untrained model's figures, exit 0) or
    failed after preprocessing; now one check refuses them, with the train: block's words."""
    from meldflow import MeldflowError
    from meldflow.training.options import experiment_runs

    train = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["train"]
    with pytest.raises(MeldflowError) as bad_experiment:
        experiment_runs(train, {"ok": {}, "bad": override}, None)
    assert str(bad_experiment.value) == f"config experiment bad: {message}"
    slurm = train["slurm"] | override.get("slurm", {})
    with pytest.raises(MeldflowError) as bad_block:
        experiment_runs(train | override | {"slurm": slurm}, None, None)
    assert str(bad_block.value) == f"config train: {message}"


def test_a_bad_experiment_stops_the_workflow_before_any_job(tmp_path, hf_home):
    work = make_workdir(tmp_path / "work", hf_home, experiments={"text": {"epochs": 0}})
    proc = subprocess.run([str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "-d",
                           str(work), "--cores", "1"], capture_output=True, text=True,
                          env=env_with_venv(), cwd=work)
    assert proc.returncode != 0
    assert "config experiment text: epochs: 0 is less than the minimum of 1" in proc.stderr
    assert not (work / "results").exists()


def test_the_command_line_is_checked_the_same_way(tmp_path):
    proc = subprocess.run([str(BIN / "meldflow"), "train", "--out", str(tmp_path / "run"),
                           "--hf-home", str(tmp_path), "--train-csv",
                           str(SAMPLE / "train_sent_emo.csv"), "--lr", "-1"],
                          capture_output=True, text=True, env=env_with_venv())
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "training options: lr: -1.0 is less than or equal to the minimum of 0" in proc.stderr
