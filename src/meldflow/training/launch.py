"""Training through submitit: local processes, SLURM, or in this process (debug).

The job id is kept in ``{out}/job.json`` so that a restarted workflow reattaches to a job
that is still queued or running instead of submitting a second one.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from meldflow import MeldflowError
from meldflow.provenance import claim_run_dir, read_run
from meldflow.training.identity import identity_of
from meldflow.training.options import TrainConfig

log = logging.getLogger("meldflow.training")

ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "UNKNOWN",
         "FINISHED", "INTERRUPTED", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE")


class TrainJob:
    """What submitit runs on every task; requeued on timeout or preemption (the
    ``checkpoint`` method, as submitit's ``helpers.Checkpointable`` has it)."""

    def __init__(self, cfg: TrainConfig, identity: dict | None = None):
        self.cfg, self.identity = cfg, identity

    def __call__(self) -> dict:
        import submitit

        try:  # outside a submitit job (debug executor, plain call) there is one process
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        except RuntimeError:
            pass
        os.environ["HF_HOME"] = str(Path(self.cfg.hf_home).resolve())
        os.environ["HF_HUB_OFFLINE"] = "1"
        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        from meldflow.training.loop import train  # torch: only where training runs

        return train(self.cfg, self.identity)

    def checkpoint(self, *args, **kwargs):
        # Training saves its own checkpoints; requeueing only has to start it again.
        import submitit

        return submitit.helpers.DelayedSubmission(TrainJob(self.cfg, self.identity))


def _recorded_job(out: Path, executor: str, tasks: int):
    """The submitit job that ``{out}/job.json`` names, if it is still queued or running."""
    import submitit

    job_file = out / "job.json"
    if executor == "debug" or not job_file.is_file():
        return None
    info = json.loads(job_file.read_text())
    if info.get("executor") != executor:
        return None
    job = (submitit.SlurmJob if executor == "slurm" else submitit.local.local.LocalJob)(
        out / "submitit", info["job_id"], tasks=tuple(range(info.get("tasks", tasks))))
    return None if job.state.split()[0] in ENDED else job


def launch(cfg: TrainConfig, executor: str = "local", tasks: int = 2, nodes: int = 1,
           timeout_min: int = 60, slurm: dict | None = None, wait: bool = True):
    """Submit training through submitit and (by default) wait; records the job id.

    A finished run of the same identity returns its metrics, a running one is reattached,
    an interrupted one resumes; a run folder holding another identity is archived first.
    """
    import submitit

    from meldflow.storage import write_text

    cfg.validate()
    out = Path(cfg.out)
    identity = identity_of(cfg, 1 if executor == "debug" else tasks * nodes)
    old = read_run(out)
    if old is None or old["digest"] != identity["digest"]:
        running = _recorded_job(out, executor, tasks)
        if running is not None:
            raise MeldflowError(
                f"training job {running.job_id} of the previous configuration of {out} is "
                f"still running; wait for it or cancel it"
                + (f" (`scancel {running.job_id}`)" if executor == "slurm" else "")
                + ", then run again")
    claim_run_dir(out, identity)
    if (out / "metrics.json").is_file():
        return json.loads((out / "metrics.json").read_text())
    job = _recorded_job(out, executor, tasks)  # a restarted workflow reattaches
    if job is None:
        ex = submitit.AutoExecutor(folder=out / "submitit", cluster=executor)
        params: dict = {"timeout_min": timeout_min}
        if executor != "debug":
            params.update(tasks_per_node=tasks, nodes=nodes)
        if executor == "slurm":
            params.update({k: v for k, v in (slurm or {}).items() if v is not None})
        ex.update_parameters(**params)
        job = ex.submit(TrainJob(cfg, identity))
        write_text(json.dumps({"job_id": job.job_id, "executor": executor, "tasks": tasks,
                               "identity": identity["digest"]}), out / "job.json")
        log.info("submitted training job %s (%s, %d task(s)), run %s", job.job_id, executor,
                 1 if executor == "debug" else tasks * nodes, identity["digest"][:12])
    if not wait:
        return job
    results = job.results() if executor != "debug" else [job.result()]
    return results[0]
