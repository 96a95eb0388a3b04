"""Fixes to snakemake-executor-plugin-slurm, applied where the workflow starts.

The plugin (2.8.0) fails in four ways real clusters trigger (docs/slurm-faults.md); two of
its module functions are wrapped to fix them (``patch_slurm_plugin`` lists the four). The
fixes are written against one version: a newer plugin stops the workflow with a message,
rather than being patched blindly.
"""

from __future__ import annotations

import inspect
import time
from importlib import metadata

from meldflow import MeldflowError
from meldflow.slurm.states import plugin_state, real_nodes

PLUGIN = "snakemake-executor-plugin-slurm"
PATCHED_FOR = "2.8.0"  # the version these fixes were written and tested against


def check_plugin(plugin) -> None:
    """Refuse a plugin these fixes were not written for: its functions may have changed
    shape, or the defects may be fixed (then delete the patch). Fails loudly, never quietly
    patches a version nobody tested."""
    version = metadata.version(PLUGIN)
    wanted = {"query_job_status": ["command", "logger"],
              "get_submit_command": ["job", "params", "settings", "failed_nodes", "array_job"]}
    shapes = {name: list(inspect.signature(getattr(plugin, name)).parameters)
              if hasattr(plugin, name) else None for name in wanted}
    if version != PATCHED_FOR or shapes != wanted:
        raise MeldflowError(
            f"meldflow fixes four defects of {PLUGIN} {PATCHED_FOR} (docs/slurm-faults.md) by "
            f"wrapping query_job_status and get_submit_command; installed is {version}"
            + ("" if shapes == wanted else f", whose functions differ ({shapes})")
            + f". Check whether {version} still has them, then update "
            f"meldflow/slurm/plugin.py (PATCHED_FOR), or pin {PLUGIN}=={PATCHED_FOR}")


def patch_slurm_plugin() -> bool:
    """Make snakemake-executor-plugin-slurm (2.8.0) survive four things real clusters do.

    1. ``check_active_jobs`` tests ``status in fail_stati`` on sacct's raw state, so
       ``CANCELLED by 0`` (a job scancel'ed from outside) counts as still running and the
       workflow waits forever: states are cut to their bare word.
    2. A preempted job that SLURM does not requeue is a failed try, to be resubmitted
       (``plugin_state``).
    3. When ``sacct`` fails (slurmdbd stopped or overloaded), ``query_job_status`` returns
       None and ``check_active_jobs`` then yields none of the active jobs: Snakemake
       forgets them, and a run whose jobs all finish during the outage waits forever.
       An empty answer instead keeps every job active (the plugin yields jobs that sacct
       does not list) until accounting answers again.

    4. After a NODE_FAIL the plugin asks sacct for the job's node and adds the answer to
       ``--exclude`` for every later submission; right after the failure sacct answers
       ``None assigned``, and ``--exclude=None assigned`` makes every later ``sbatch``
       fail ("Unable to open file assigned"). Only real node names are passed on (SLURM
       itself never schedules onto a node that is down).

    The plugin looks ``query_job_status`` and ``get_submit_command`` up in its module at
    each call, so wrapping those two functions fixes all four at their source. Idempotent;
    returns False where the plugin is not installed; a version other than PATCHED_FOR is
    an error (``check_plugin``).
    """
    try:
        import snakemake_executor_plugin_slurm as plugin
    except ImportError:
        return False
    original = plugin.query_job_status
    if getattr(original, "meldflow_normalised", False):
        return True
    check_plugin(plugin)
    outage = {"since": None}

    async def query_job_status(command, logger):
        states, duration = await original(command, logger)
        if states is None:
            if outage["since"] is None:
                outage["since"] = time.monotonic()
                logger.warning("meldflow: the job status query failed (is slurmdbd down?); "
                               "every submitted job is kept as running until SLURM "
                               "accounting answers again")
            return {}, 0.0
        if outage["since"] is not None:
            logger.warning(f"meldflow: SLURM accounting answers again after "
                           f"{time.monotonic() - outage['since']:.0f} s")
            outage["since"] = None
        return {job: plugin_state(state) for job, state in states.items()}, duration

    query_job_status.meldflow_normalised = True
    plugin.query_job_status = query_job_status

    submit_command = plugin.get_submit_command

    def get_submit_command(job, params, settings=None, failed_nodes=None, array_job=False):
        return submit_command(job, params, settings=settings,
                              failed_nodes=real_nodes(failed_nodes), array_job=array_job)

    get_submit_command.meldflow_wrapped = True
    plugin.get_submit_command = get_submit_command
    return True
