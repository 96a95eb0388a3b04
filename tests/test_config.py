"""The whole config (meldflow.config): its schema, its reference table, and values refused
in one line where they enter."""
import re
import subprocess

import pytest
import yaml
from helpers import (
    BIN,
    REPO,
    env_with_venv,
    make_workdir,
)

from meldflow import MeldflowError
from meldflow.options import default_of, option_fields

SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())


def test_a_bad_experiment_stops_the_workflow_before_any_job(tmp_path, hf_home):
    work = make_workdir(tmp_path / "work", hf_home, experiments={"text": {"epochs": 0}})
    proc = subprocess.run([str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "-d",
                           str(work), "--cores", "1"], capture_output=True, text=True,
                          env=env_with_venv(), cwd=work)
    assert proc.returncode != 0
    assert "config experiment text: epochs: 0 is less than the minimum of 1" in proc.stderr
    assert not (work / "results").exists()


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


def test_the_configuration_reference_is_generated():
    """docs/configuration.md holds the tables `meldflow schema --table` prints."""
    table = subprocess.run([str(BIN / "meldflow"), "schema", "--table"], capture_output=True,
                           text=True, check=True, env=env_with_venv()).stdout
    assert table in (REPO / "docs" / "configuration.md").read_text()


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
