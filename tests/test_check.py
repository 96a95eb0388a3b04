"""`meldflow check` (meldflow.check): the config files it reads and the asks it makes of
the cluster, without one (the cluster's side is tests/slurm/test_preflight.py)."""
import pytest
import yaml
from helpers import REPO

from meldflow import MeldflowError
from meldflow.check import gpu_problems, merged_config
from meldflow.settings import TINY_FLORENCE, Settings
from meldflow.training.runs import experiment_runs


def test_a_duplicate_key_in_a_config_file_is_refused(tmp_path, monkeypatch):
    """It passed `meldflow check`, while `snakemake -n` refused it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text((REPO / "config" / "config.yaml")
                                                     .read_text())
    extra = tmp_path / "mine.yaml"
    extra.write_text("frame_size: 128\nshard_size: 10\nframe_size: 300\n")
    with pytest.raises(MeldflowError, match=r"mine.yaml:3: 'frame_size' is given twice in one "
                                            r"map \(also on line 1\)"):
        merged_config([str(extra)])


def _runs(**slurm):
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    return experiment_runs(config["train"] | {"slurm": config["train"]["slurm"] | slurm},
                           None, None)


def test_training_florence_2_on_slurm_without_a_gpu_is_a_problem():
    """`train.slurm` left at null (the EDIT lines skipped) passed silently, and Florence-2
    trained on the CPU partition with no GPU."""
    real = Settings(florence_repo="florence-community/Florence-2-base")
    (line,) = gpu_problems(real, _runs())[0]
    assert line.startswith("training default/seed-0: no GPU asked (train.slurm.gpus_per_node "
                           "is null)")
    assert "EDIT" in line and "gpus_per_node: 0" in line
    assert gpu_problems(real, _runs(gpus_per_node=1, partition="gpu")) == ([], [])
    assert gpu_problems(real, _runs(gpus_per_node=0)) == ([], [])  # said on purpose
    problems, notes = gpu_problems(Settings(florence_repo=TINY_FLORENCE), _runs())
    assert problems == [] and "no GPU asked" in notes[0]  # the tiny model trains on CPUs
