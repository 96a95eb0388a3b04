"""SLURM's job states as sacct writes them (meldflow.slurm.states)."""
from meldflow.slurm.states import TERMINAL, plugin_state, real_nodes, slurm_state


def test_a_state_is_its_bare_word():
    assert slurm_state("CANCELLED by 0") == "CANCELLED"
    assert slurm_state("RUNNING") == "RUNNING" and slurm_state("COMPLETED+") == "COMPLETED"
    assert slurm_state("") == "UNKNOWN" and slurm_state(None) == "UNKNOWN"
    assert {"COMPLETED", "FAILED", "OUT_OF_MEMORY", "NODE_FAIL"} <= TERMINAL


def test_a_preempted_job_is_a_failed_try_for_the_plugin():
    """The profile submits with --no-requeue: a preempted job is over, and is resubmitted."""
    assert plugin_state("PREEMPTED") == "CANCELLED"
    assert plugin_state("CANCELLED by 1000") == "CANCELLED"
    assert plugin_state("RUNNING") == "RUNNING"


def test_only_real_node_names_are_kept():
    """Right after a NODE_FAIL sacct says `None assigned`: never an --exclude."""
    assert real_nodes(["n1", "None assigned", "None", "gpu[01-04]", ""]) == {"n1",
                                                                               "gpu[01-04]"}
    assert real_nodes(None) == set()
