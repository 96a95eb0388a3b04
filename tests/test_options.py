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
)

SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
         dict: "object"}


def test_schema_train_block_is_the_option_definitions():
    block = SCHEMA["properties"]["train"]["properties"]
    fields = {f.name: f for cls in (TrainConfig, LaunchConfig) for f in option_fields(cls)}
    slurm = {n for n, f in fields.items() if f.metadata.get("group") == "slurm"}
    assert set(block) == set(fields) - slurm | {"slurm"}
    assert set(block["slurm"]["properties"]) == slurm
    for name, f in fields.items():
        prop = block["slurm"]["properties"][name] if name in slurm else block[name]
        default = default_of(f)
        assert prop["default"] == default, name
        kind = f.metadata.get("type") or type(default)
        types = prop["type"] if isinstance(prop["type"], list) else [prop["type"]]
        assert TYPES[kind] in types, name
        if default is None:
            assert "null" in types, name
        choices = f.metadata.get("choices")
        enum = prop.get("enum") or prop.get("items", {}).get("enum")
        assert enum == choices, name


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
