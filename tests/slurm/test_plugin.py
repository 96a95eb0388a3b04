"""The SLURM plugin's fixes (meldflow.slurm.plugin) and the job states they rest on (no
cluster needed)."""
import asyncio
import logging
import sys

from meldflow.slurm.plugin import patch_slurm_plugin
from meldflow.slurm.states import real_nodes, slurm_state


def test_state_words():
    assert slurm_state("CANCELLED by 0") == "CANCELLED"
    assert slurm_state("COMPLETED") == "COMPLETED"
    assert slurm_state("") == "UNKNOWN"


def test_plugin_sees_bare_states_after_the_patch():
    """The plugin's poll loop calls the module-level query_job_status: after the patch,
    a job sacct reports as `CANCELLED by 0` reaches it as CANCELLED (a failure state)."""
    import snakemake_executor_plugin_slurm as plugin

    assert patch_slurm_plugin()
    assert patch_slurm_plugin()  # idempotent: wrapped once
    poll = plugin.Executor.check_active_jobs
    query = poll.__globals__["query_job_status"]
    assert getattr(query, "meldflow_normalised", False)
    cmd = f"{sys.executable} -c \"print('41|CANCELLED by 0'); print('42|COMPLETED')\""
    states, _ = asyncio.run(query(cmd, logging.getLogger("test")))
    assert states == {"41": "CANCELLED", "42": "COMPLETED"}


def test_a_failed_status_query_keeps_every_job_active():
    """sacct failing (slurmdbd down) made the plugin forget its active jobs; now the query
    answers "nothing known", and the plugin yields every job as still running."""
    import snakemake_executor_plugin_slurm as plugin

    patch_slurm_plugin()
    query = plugin.Executor.check_active_jobs.__globals__["query_job_status"]
    failing = f"{sys.executable} -c \"import sys; sys.exit('slurmdbd: connection refused')\""
    assert asyncio.run(query(failing, logging.getLogger("test"))) == ({}, 0.0)


def test_a_node_named_none_assigned_is_not_excluded():
    """After a NODE_FAIL the plugin put sacct's `None assigned` into --exclude, and every
    later sbatch failed; only real node names reach the submit command now."""
    import snakemake_executor_plugin_slurm as plugin

    patch_slurm_plugin()
    assert getattr(plugin.get_submit_command, "meldflow_wrapped", False)
    assert real_nodes({"None assigned", "n2", "gpu[1-3]", "None", ""}) == {"n2", "gpu[1-3]"}


def test_another_plugin_version_stops_the_workflow_with_a_message(monkeypatch):
    """The plugin fixes were written for one version: a newer one is refused, loudly,
    rather than patched blindly (its functions may have changed, or the defects gone)."""
    import pytest
    import snakemake_executor_plugin_slurm as plugin

    from meldflow import MeldflowError
    from meldflow.slurm import plugin as fixes

    fixes.check_plugin(plugin)  # the pinned version passes
    monkeypatch.setattr(fixes.metadata, "version", lambda name: "2.9.0")
    with pytest.raises(MeldflowError, match=r"snakemake-executor-plugin-slurm 2\.8\.0 .*"
                                            r"installed is 2\.9\.0.*PATCHED_FOR"):
        fixes.check_plugin(plugin)
