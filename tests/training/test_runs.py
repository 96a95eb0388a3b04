"""The workflow's training runs (meldflow.training.runs): experiments x seeds, each checked
like the train: block, and where each trains."""
import pytest
import yaml
from helpers import (
    REPO,
)

from meldflow import MeldflowError
from meldflow.options import default_of, option_fields
from meldflow.training.train_options import LaunchConfig


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
