"""Every setting defined once: the schema, the config, flags and checks derive from it."""
import dataclasses
import re
import subprocess

import pytest
import yaml
from helpers import (
    BIN,
    REPO,
    SAMPLE,
    env_with_venv,
    make_workdir,
)

from meldflow import MeldflowError
from meldflow.options import default_of, option_fields
from meldflow.training.launch import submitit_parameters
from meldflow.training.runs import read_options_file
from meldflow.training.train_options import LaunchConfig, TrainConfig

SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())


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
    from meldflow.training.runs import experiment_runs

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


def test_schema_file_is_what_the_definitions_generate():
    """workflow/schemas/config.schema.yaml is `meldflow schema`: every key, type, range,
    default and help comes from meldflow.settings and meldflow.training.train_options."""
    from meldflow.config import config_schema

    assert SCHEMA == config_schema()


def test_config_holds_every_setting_at_its_default():
    """config/config.yaml lists every setting with the definition's default, but the
    sample's shard_size (small, so that every split has more than one job)."""
    from meldflow.settings import Settings

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    defaults = {f.name: default_of(f) for f in option_fields(Settings)}
    assert {k: v for k, v in config.items() if k in defaults} == defaults | {"shard_size": 24}
    assert set(config) - set(defaults) == {"train"}


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


def test_the_configuration_reference_is_generated():
    """docs/configuration.md holds the tables `meldflow schema --table` prints."""
    table = subprocess.run([str(BIN / "meldflow"), "schema", "--table"], capture_output=True,
                           text=True, check=True, env=env_with_venv()).stdout
    assert table in (REPO / "docs" / "configuration.md").read_text()


def test_a_bad_setting_is_refused_where_it_enters(tmp_path):
    """The config (before any job) and a command line get the same check and message."""
    from meldflow import MeldflowError
    from meldflow.settings import Settings

    with pytest.raises(MeldflowError, match="config: frame_size: 8 is less than the minimum "
                                            "of 16"):
        Settings.from_config({"frame_size": 8})
    proc = subprocess.run([str(BIN / "meldflow"), "frames", "--rows", "x", "--shard", "0",
                           "--out", str(tmp_path / "f.parquet"), "--frame-size", "8"],
                          capture_output=True, text=True, env=env_with_venv())
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "settings: frame_size: 8 is less than the minimum of 16" in proc.stderr


def test_training_follows_the_workflows_executor_unless_a_config_says_otherwise():
    """`auto` (the default) is a SLURM job under the SLURM executor and local processes
    otherwise; an explicit local is kept (and named, for the warning at the start)."""
    from meldflow.training.runs import experiment_runs, off_cluster_runs, resolve_executor

    assert default_of(next(f for f in option_fields(LaunchConfig)
                           if f.name == "executor")) == "auto"
    assert resolve_executor("auto", "slurm") == "slurm"
    assert resolve_executor("auto", "local") == "local"
    assert resolve_executor("auto", "dryrun") == "auto"  # a dry run cannot know
    assert resolve_executor("local", "slurm") == "local"
    assert resolve_executor("slurm", "local") == "slurm"
    runs = experiment_runs({"executor": "auto"}, {"a": {}, "b": {"executor": "local"}}, [0, 1])
    assert off_cluster_runs(runs) == ["results/train/b/seed-0", "results/train/b/seed-1"]


@pytest.mark.parametrize("config, message", [
    ({"max_clip_seconds": float("nan")}, "config: max_clip_seconds: nan is not a number"),
    ({"audit_max_wer": float("nan")}, "config: audit_max_wer: nan is not a number"),
    ({"max_clip_seconds": float("inf")}, "config: max_clip_seconds: inf is not a number"),
    ({"frames_per_utterance": 8.0}, "frames_per_utterance: 8.0 is a float, and "
                                    "frames_per_utterance takes a whole number (write 8)"),
    ({"frame_size": 1e2}, "frame_size: 100.0 is a float"),
    ({"train": {"lr": float("nan")}}, "config train: lr: nan is not a number"),
    ({"train": {"lr": float("inf")}}, "config train: lr: inf is not a number"),
    ({"train": {"warmup_ratio": float("nan")}}, "config train: warmup_ratio: nan"),
    ({"train": {"epochs": 2.0}}, "config train: epochs: 2.0 is a float"),
    ({"experiments": {"a": {"exclude_max_wer": float("nan")}}},
     "config experiment a: exclude_max_wer: nan is not a number"),
    ({"train": {"seed": 2**32}}, "config train: seed: 4294967296 is greater than the maximum "
                                 "of 4294967295"),  # numpy's limit: failed in the job
    ({"experiments": {"a": {"seed": -1}}}, "config experiment a: seed: -1 is less than"),
    ({"splits": []}, "config: splits: [] should be non-empty"),
    ({"splits": ["dev", "dev"]}, "config: splits: ['dev', 'dev'] has non-unique elements"),
])
def test_values_no_code_can_use_are_refused_where_they_enter(config, message):
    """NaN passes every range check (each comparison is false), and jsonschema counts 8.0
    as an integer that argparse then refused in every job: both are refused at once."""
    from meldflow.settings import Settings
    from meldflow.training.runs import experiment_runs

    with pytest.raises(MeldflowError, match=re.escape(message)):
        Settings.from_config({k: v for k, v in config.items() if k not in ("train",
                                                                           "experiments")})
        experiment_runs(config.get("train", {}), config.get("experiments"), None)


@pytest.mark.parametrize("flags, message", [
    (["--max-clip-seconds", "nan"], "max_clip_seconds: nan is not a number"),
    (["--max-clip-seconds", "inf"], "max_clip_seconds: inf is not a number"),
])
def test_flags_no_code_can_use_are_refused_without_a_traceback(tmp_path, flags, message):
    proc = subprocess.run([str(BIN / "meldflow"), "frames", "--rows", "x", "--shard", "0",
                           "--out", str(tmp_path / "f.parquet"), *flags],
                          capture_output=True, text=True, env=env_with_venv())
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and message in proc.stderr


@pytest.mark.integration  # runs Snakemake
@pytest.mark.parametrize("config, message", [
    ({"shard_sise": 10}, "config: unknown setting 'shard_sise' (did you mean shard_size?)"),
    ({"experiments": ["text", "vision"]}, "config experiments: a map of name: overrides"),
    ({"seeds": ["0", "00"]}, "config seeds: [0, 0] names a seed twice"),  # were one run
    ({"seeds": ["zero"]}, "config seeds: a list of whole numbers"),
    ({"seeds": [0, 1, 0]}, "config seeds: [0, 1, 0] names a seed twice"),
    ({"seeds": [0, 2**32]}, "config seeds: 4294967296 is not a seed (0 to 4294967295)"),
    ({"splits": ["dev", "dev"]}, "config: splits: ['dev', 'dev'] has non-unique elements"),
])
def test_a_config_of_the_wrong_shape_gets_one_line(tmp_path, hf_home, config, message):
    """Before: a misspelt key printed the whole schema (352 lines), a list of experiments
    an AttributeError, and seeds '0' and '00' became one run."""
    work = make_workdir(tmp_path, hf_home, **config)
    proc = subprocess.run([str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "-d",
                           str(work), "-n"], capture_output=True, text=True, cwd=work,
                          env=env_with_venv())
    out = proc.stdout + proc.stderr  # Snakemake prints a parse error on stdout
    assert proc.returncode != 0 and message in out, out[-2000:]
    assert "Traceback" not in out and len(out.splitlines()) < 15, out


def test_a_key_value_flag_without_a_value_is_one_line(tmp_path):
    proc = subprocess.run([str(BIN / "meldflow"), "train", "--out", str(tmp_path / "run"),
                           "--train-csv", str(SAMPLE / "train_sent_emo.csv"), "--sbatch", "qos"],
                          capture_output=True, text=True, env=env_with_venv())
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--sbatch: 'qos' is not KEY=VALUE (for example --sbatch qos=high)" in proc.stderr


def test_status_into_a_closed_pipe_ends_quietly(tmp_path):
    """`meldflow status --json | head -1` ended in a BrokenPipeError traceback."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("sacct", "squeue"):
        (bin_dir / name).write_text("#!/bin/sh\n")
        (bin_dir / name).chmod(0o755)
    env = env_with_venv() | {"PATH": f"{bin_dir}:{env_with_venv()['PATH']}"}
    proc = subprocess.run(f"{BIN / 'meldflow'} status --dir {tmp_path} --json | head -1",
                          shell=True, capture_output=True, text=True, env=env)
    assert proc.stdout.strip() == "{" and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.integration  # runs Snakemake
def test_the_documented_config_form_sets_numeric_train_options(tmp_path, hf_home):
    """`--config 'train={epochs: 2}'` gave "epochs: '2' is not of type 'integer'" (Snakemake
    hands nested values over as text): text that spells a number or true/false is read as
    the option's type, and anything else still gets one line."""
    work = make_workdir(tmp_path, hf_home)

    def dry(*config):
        return subprocess.run([str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "-d",
                               str(work), "-n", "--config", *config], capture_output=True,
                              text=True, cwd=work, env=env_with_venv())

    ok = dry("train={epochs: 2, lr: 1e-4, augment: true, exclude_max_wer: 0.5}",
             "experiments={a: {context_turns: 2}}", "seeds=[0,1]")
    assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-2000:]
    assert (ok.stdout + ok.stderr).count("rule train:") == 2
    bad = dry("train={epochs: two}")
    assert bad.returncode != 0 and "config train: epochs: 'two' is not of type 'integer'" in \
        bad.stdout + bad.stderr
    twice = dry("seeds=[0,00]")
    assert "config seeds: [0, 0] names a seed twice" in twice.stdout + twice.stderr


@pytest.mark.integration  # runs Snakemake
def test_a_key_given_twice_in_a_config_file_is_named(tmp_path, hf_home):
    """`frame_size: 128` then `frame_size: 300` passed silently (YAML keeps the last)."""
    work = make_workdir(tmp_path, hf_home)
    extra = work / "config" / "mine.yaml"
    extra.write_text("train:\n  lr: 0.01\nframe_size: 128\nframe_size: 300\n")
    proc = subprocess.run([str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "-d",
                           str(work), "-n", "--configfile", str(extra)], capture_output=True,
                          text=True, cwd=work, env=env_with_venv())
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "mine.yaml:4: 'frame_size' is given twice in one map (also on line 3)" in out, out


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


def test_a_number_given_for_a_text_setting_is_read_as_text():
    """`--config florence_revision=1234567` (a commit) said "not of type 'string'":
    Snakemake reads it as a number."""
    from meldflow.config import typed_config
    from meldflow.settings import Settings

    read = Settings.from_config(typed_config({"florence_revision": 1234567}))
    assert read.florence_revision == "1234567"
    with pytest.raises(MeldflowError, match=r"florence_revision: 1e-05 is a number; this "
                                            r"setting takes text: quote it"):
        Settings.from_config(typed_config({"florence_revision": 1e-5}))
