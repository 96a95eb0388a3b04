"""Training through submitit: local processes, SLURM, or in this process (debug).

The job id is kept in ``{out}/job.json`` so that a restarted workflow reattaches to a job
that is still queued or running instead of submitting a second one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import time
from pathlib import Path

from meldflow import MeldflowError
from meldflow.model_cache.snapshots import use_offline_cache
from meldflow.preprocess.align import read_shard_index
from meldflow.provenance import claim_run_dir, read_run
from meldflow.slurm.states import TERMINAL
from meldflow.storage import write_text
from meldflow.training.checkpoint import CHECKPOINT_DIR, check_writable
from meldflow.training.dataset import open_parquet
from meldflow.training.identity import identity_of
from meldflow.training.runs import read_options_file, resolve_executor
from meldflow.training.train_options import LaunchConfig, TrainConfig

log = logging.getLogger("meldflow.training")
RUN_LOG = "train.log"  # in the run folder: what `meldflow train` said at every try

# submitit's states that mean nothing runs any more, beside SLURM's own (states.TERMINAL):
# its local executor says FINISHED, INTERRUPTED, or, for a job it did not start itself,
# "NO PROCESS AND NO RESULT" (the first word is what counts; a live local job is then
# recognised by its controller's pid, see _local_job_alive).
ENDED = TERMINAL | {"FINISHED", "INTERRUPTED", "UNKNOWN", "NO"}

def train_configs(out: str, options_file: str | None, aligned_dir: str | None,
                  shards: dict[str, list[str] | None], csvs: dict[str, str | None],
                  train_flags: dict, launch_flags: dict) -> tuple[TrainConfig, LaunchConfig]:
    """`meldflow train`'s (TrainConfig, LaunchConfig): the definitions' defaults < the
    options file < the flags given (``shards`` and ``csvs`` by split, None where not given;
    ``aligned_dir`` stands for every split's shards). Shards are checked readable here,
    before anything is submitted."""
    train_kw, launch_kw = read_options_file(options_file) if options_file else ({}, {})
    train_kw |= {name: path for name, path in csvs.items() if path is not None}
    for split, paths in shards.items():
        if paths is not None:
            train_kw[split] = list(paths)
        elif aligned_dir and (Path(aligned_dir) / split).is_dir():
            train_kw[split] = read_shard_index(Path(aligned_dir) / split)
    cfg = TrainConfig(out=out, **(train_kw | train_flags))
    cfg.hf_home = str(Path(cfg.hf_home).resolve())
    for p in cfg.train + cfg.dev + cfg.test:  # a damaged shard fails here, named, early
        if not Path(p).is_file():
            raise MeldflowError(f"aligned shard not found: {p}; run the preprocess target")
        open_parquet(p)
    return cfg, LaunchConfig(**(launch_kw | launch_flags))


def submitit_parameters(how: LaunchConfig) -> dict:
    """A launch's settings in submitit's names (``time_min`` is its ``timeout_min``; SLURM
    settings that are not set are left to the cluster's defaults)."""
    params: dict = {"timeout_min": how.time_min}
    if how.executor != "debug":
        params |= {"tasks_per_node": how.tasks, "nodes": how.nodes}
    if how.executor == "slurm":
        names = {"partition": "slurm_partition", "account": "slurm_account",
                 "gpus_per_node": "gpus_per_node", "cpus_per_task": "cpus_per_task",
                 "mem_gb": "mem_gb"}
        params |= {names[k]: getattr(how, k) for k in names
                   if getattr(how, k) is not None}
        if how.sbatch:
            params["slurm_additional_parameters"] = dict(how.sbatch)
    return params


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
        use_offline_cache(self.cfg.hf_home)
        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        from meldflow.training.loop import train  # torch: only where training runs

        return train(self.cfg, self.identity)

    def checkpoint(self, *args, **kwargs):
        # Training saves its own checkpoints; requeueing only has to start it again.
        import submitit

        return submitit.helpers.DelayedSubmission(TrainJob(self.cfg, self.identity))


def _local_job_alive(job_id: str, folder: Path) -> bool:
    """Whether submitit's local controller for ``folder`` (its pid is the job id) runs."""
    try:
        cmdline = Path(f"/proc/{job_id}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{job_id}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return (state not in ("Z", "X") and b"submitit.local._local" in cmdline
            and any(Path(os.fsdecode(a)).resolve() == folder.resolve()
                    for a in cmdline if a.startswith(b"/")))


def running_job(out: Path, executor: str, tasks: int):
    """The submitit job that ``{out}/job.json`` names if it is still queued or running,
    else ``None`` (every state that means no process, however the job ended)."""
    import submitit

    job_file = out / "job.json"
    if executor == "debug" or not job_file.is_file():
        return None
    info = json.loads(job_file.read_text())
    if info.get("executor") != executor:
        return None
    folder = out / "submitit"
    if executor == "local":
        host = info.get("host", socket.gethostname())
        if host != socket.gethostname():
            raise MeldflowError(
                f"{job_file} names local training job {info['job_id']} on {host}, and this "
                f"is {socket.gethostname()}: check there whether it still runs; if not, "
                f"delete {job_file} and run again")
        if not _local_job_alive(info["job_id"], folder):
            return None
        return submitit.local.local.LocalJob(folder, info["job_id"],
                                             tasks=tuple(range(info.get("tasks", tasks))))
    job = submitit.SlurmJob(folder, info["job_id"], tasks=tuple(range(info.get("tasks", tasks))))
    return None if job.state.split()[0] in ENDED else job


_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b.*)$")


# torch prefixes every line a rank writes after the process group exists ("[rank0]: ").
_RANK_PREFIX = re.compile(r"^\[rank\d+\]:[ ]?", re.M)


def task_error(log_text: str) -> str | None:
    """The exception a task's log ends with ("Type: message"), else ``None``; lines may
    carry torch's rank prefix."""
    log_text = _RANK_PREFIX.sub("", log_text)
    last = log_text.rfind("Traceback (most recent call last)")
    if last < 0:
        return None
    found = None
    for line in log_text[last:].splitlines():
        m = _EXCEPTION_LINE.match(line)
        if m:
            found = m.group(1)
    if found is None:
        return None
    name, _, message = found.partition(":")
    return f"{name.rsplit('.', 1)[-1]}:{message}" if message else name.rsplit(".", 1)[-1]


# A task that died of these dies again on a rerun until the user makes room.
_WRITE_FAILURE = re.compile(r"cannot write |No space left|Disk quota exceeded|Read-only file "
                            r"system|Permission denied|Errno (28|30|122|13)\b|unexpected pos "
                            r"\d+ vs \d+")


def failure_message(job, executor: str) -> str:
    """What a failed training job says in the terminal: each task's own error (never the
    warnings its log is full of), where the logs are, and what to do."""
    tasks = list(job._sub_jobs) or [job]
    lines = [f"training job {job.job_id} ({executor}) ended without a result "
             f"(state {job.state}):"]
    disk = False
    for sub in tasks:
        err = sub.paths.stderr
        text = err.read_text(errors="replace") if err.is_file() else ""
        why = task_error(text) or ("no error written: the process was killed (by the "
                                   "out-of-memory killer, `kill -9`, or a lost node)")
        disk |= bool(_WRITE_FAILURE.search(why))
        lines.append(f"  task {sub.task_id}: {why}  [log {err}]")
    if disk:  # torch reports a full disk while saving as "unexpected pos N vs M"
        lines.append("The run could not write its files: free space where it writes "
                     "(df -h; du -sh), or make the folder writable, then run the same "
                     "command again: training resumes from its last checkpoint that verifies.")
    else:
        lines.append("Run the same command again: training resumes from its last checkpoint "
                     "that verifies.")
    return "\n".join(lines)


def wait_for(job, executor: str) -> dict:
    """Rank 0's result of a submitted training job; a failure is a MeldflowError that
    gives each task's own error."""
    from submitit.core.utils import FailedJobError, UncompletedJobError

    if executor == "debug":
        return job.result()
    if executor == "local" and getattr(job, "_process", None) is None:
        # reattached from another process: submitit can only poll the jobs it started
        while _local_job_alive(job.job_id, job.paths.folder):
            time.sleep(2)
    try:
        return job.results()[0]
    except (FailedJobError, UncompletedJobError):
        raise MeldflowError(failure_message(job, executor)) from None


def finished_metrics(out: Path) -> dict | None:
    """The metrics of a run of ``out``'s identity that has finished, else None. Snakemake
    deletes metrics.json before it reruns training, also when the run's inputs came out
    byte for byte the same (an upstream job forced): then it is restored from run.json,
    and no job is submitted."""
    metrics = out / "metrics.json"
    if metrics.is_file():
        return json.loads(metrics.read_text())
    run = read_run(out) or {}
    if not run.get("finished") or "config" not in run.get("metrics", {}):
        return None
    write_text(json.dumps(run["metrics"], indent=2), metrics)
    log.info("this run finished on %s with the same identity (options, model and data): "
             "nothing new to learn, no job submitted; its metrics.json is restored from %s",
             run["finished"], out / "run.json")
    return run["metrics"]


def launch(cfg: TrainConfig, how: LaunchConfig | None = None, wait: bool = True):
    """Submit training through submitit (``how``: where, on how many processes) and, by
    default, wait; records the job id.

    A finished run of the same identity returns its metrics (restored if Snakemake deleted
    them) without a job, a running one is reattached, an interrupted one resumes; a run
    folder holding another identity is archived first.
    """
    how = how or LaunchConfig()
    # auto outside a workflow run on SLURM: processes on this machine
    out, executor = Path(cfg.out), resolve_executor(how.executor, "local")
    identity = identity_of(cfg, how.world_size())
    old = read_run(out)
    if old is None or old["digest"] != identity["digest"]:
        running = running_job(out, executor, how.tasks)
        if running is not None:
            raise MeldflowError(
                f"training job {running.job_id} of the previous configuration of {out} is "
                f"still running; wait for it or cancel it"
                + (f" (`scancel {running.job_id}`)" if executor == "slurm" else "")
                + ", then run again")
    claim_run_dir(out, identity)
    with run_log(out):
        log.info("training run %s of %s", identity["digest"][:12], out)
        return _submit_or_restore(cfg, how, out, executor, identity, wait)


@contextlib.contextmanager
def run_log(out: Path):
    """Every line meldflow logs, also appended to ``{out}/train.log``: the workflow's own log
    of the rule is emptied by Snakemake before each try; this one keeps them all (and goes
    with the run when it is archived)."""
    handler = logging.FileHandler(out / RUN_LOG, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("meldflow")
    root.addHandler(handler)
    try:
        yield
    except MeldflowError as exc:  # what the command line will say, here too
        handler.handle(logging.makeLogRecord({"name": "meldflow", "levelname": "ERROR",
                                              "levelno": logging.ERROR, "msg": str(exc)}))
        raise
    finally:
        root.removeHandler(handler)
        handler.close()


def record_job(out: Path, job_id: str, executor: str, tasks: int, digest: str) -> None:
    """``{out}/job.json``: the job now training the run (a restarted workflow reattaches
    to it) and, appended, every job submitted for the run, so a cancelled or failed try
    stays in ``meldflow status``'s history beside the one that followed it."""
    path = out / "job.json"
    try:
        tries = json.loads(path.read_text()).get("tries", []) if path.is_file() else []
    except ValueError:
        tries = []
    now = {"job_id": job_id, "executor": executor, "submitted": time.time()}
    write_text(json.dumps({"job_id": job_id, "executor": executor, "tasks": tasks,
                           "host": socket.gethostname(), "identity": digest,
                           "tries": [*tries, now]}), path)


def _submit_or_restore(cfg: TrainConfig, how: LaunchConfig, out: Path, executor: str,
                       identity: dict, wait: bool):
    import submitit

    finished = finished_metrics(out)
    if finished is not None:
        return finished
    check_writable(out / CHECKPOINT_DIR, out / "best")  # found before a job is queued
    job = running_job(out, executor, how.tasks)  # a restarted workflow reattaches
    if job is None:
        ex = submitit.AutoExecutor(folder=out / "submitit", cluster=executor)
        ex.update_parameters(**submitit_parameters(how))
        job = ex.submit(TrainJob(cfg, identity))
        record_job(out, job.job_id, executor, how.tasks, identity["digest"])
        log.info("submitted training job %s (%s, %d task(s)), run %s", job.job_id, executor,
                 how.world_size(), identity["digest"][:12])
    else:
        log.info("reattached to training job %s, still running", job.job_id)
    return wait_for(job, executor) if wait else job
