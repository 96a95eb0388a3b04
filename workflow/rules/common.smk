import json
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from meldflow import MeldflowError
from meldflow.config import check_config_file, typed_config
from meldflow.settings import Settings, flags, step_fields, step_flags
from meldflow.shard_schema import METHOD_VERSIONS, SHARD_INDEX, SHARD_RULES
from meldflow.slurm.plugin import patch_slurm_plugin
from meldflow.slurm.run_record import stale_lock
from meldflow.annotations import find_csv
from meldflow.preprocess.layout import check_clip_folder
from meldflow.training.runs import (EXPERIMENT_NAME, experiment_runs, launch_config,
                                    needs_clips, off_cluster_runs, options_digest,
                                    resolve_executor)

# Before any work, with the checks `meldflow` applies to its own flags: the settings, and
# every run's training options (train: with each experiment's overrides). sacct reports a
# job cancelled from outside as "CANCELLED by <uid>", which the SLURM plugin (2.8.0) takes
# for a running job, and it fails in three more ways (docs/slurm-faults.md): the patch
# fixes them, for that version only.
try:
    patch_slurm_plugin()
    for _path in [*workflow.configfiles, *(workflow.overwrite_configfiles or [])]:
        check_config_file(_path)  # a key given twice in a map: YAML keeps the last silently
    config.update(typed_config(config))  # --config's nested values arrive as text
    SETTINGS = Settings.from_config(config)
    RUNS = experiment_runs(config.get("train", {}), config.get("experiments"),
                           config.get("seeds"))
    # A wrong meld_dir or a missing clip folder stops the run here, before any job; clips
    # are needed unless every run trains on the gold lines alone (a warning then).
    # Such a split (CLIPLESS) gets no transcribe or frames job: training reads its CSV.
    CLIPS_NEEDED = "train" not in SETTINGS.splits or any(map(needs_clips, RUNS.values()))
    CLIPLESS = set()
    for _split in SETTINGS.splits:
        _warning = check_clip_folder(SETTINGS.meld_dir, _split, CLIPS_NEEDED)
        if _warning:
            CLIPLESS.add(_split)
            if workflow.is_main_process:  # not again in each SLURM job
                print(f"meldflow: WARNING: {_warning.rstrip('.')}; no transcribe or frames job for "
                      f"{_split}", file=sys.stderr)
except MeldflowError as exc:
    raise WorkflowError(str(exc)) from None

# A Snakemake killed in this folder (kill -9, a dropped login session) leaves its lock: when
# its run record shows it dead (heartbeats missed), the lock is removed and the run goes on.
if workflow.is_main_process:
    _locks, _holder = stale_lock(Path.cwd())
    if _holder == "dead":
        for _lock in _locks:
            _lock.unlink(missing_ok=True)
        print("meldflow: removed the lock of an earlier Snakemake in this folder that was "
              "killed (its run record missed its heartbeats)", file=sys.stderr)
    elif _holder == "unknown":
        print("meldflow: .snakemake/locks holds a lock that no run record explains (a run "
              "without the SLURM profile's logger). If no Snakemake runs in this folder now "
              "(`ps -ef | grep snakemake`, on every login node), `snakemake --unlock` is safe; "
              "then run the same command again", file=sys.stderr)

# The schema is generated from the same definitions (`meldflow schema`).
validate(config, schema="../schemas/config.schema.yaml")

# Rules call `meldflow`: found on PATH (an activated venv, a conda env of the rule), else
# beside the Python that runs Snakemake, so `.venv/bin/snakemake` works unactivated.
shell.prefix(f'set -euo pipefail; export PATH="$PATH:{Path(sys.executable).parent}"; ')

SPLITS = SETTINGS.splits
# Training needs the train split; dev picks the best epoch, test is reported if present.
TRAIN = "train" in SPLITS
EVAL_SPLITS = [s for s in ("dev", "test") if s in SPLITS]
SHARD = "{shard,[0-9]{4}}"
# The folders under results/ that hold one shard per job, per split.
SHARD_DIRS = ("transcripts", "frames", "aligned")


def annotation_csv(wildcards):
    """The split's annotation CSV, so that editing it reruns ingest (its absence stopped
    the run at the start, naming the files looked for)."""
    return str(find_csv(SETTINGS.meld_dir, wildcards.split))


def clip_fingerprint(wildcards):
    """Digest of the split's clip folder (names, sizes, mtimes): a clip added, repaired or
    replaced since the last run changes it, and with it ingest's parameters."""
    from meldflow.preprocess.ingest import clip_inventory

    return clip_inventory(SETTINGS.meld_dir, wildcards.split)


def shard_digest(wildcards):
    """Digest of one shard's rows and clips, from the ingest checkpoint. The shard jobs read
    the ingest table as ancient(), so only the shards whose digest changed are redone."""
    info = Path(f"results/ingest/{wildcards.split}.shards.json")
    if not info.is_file():
        return ""
    return json.loads(info.read_text()).get("shard_digests", {}).get(wildcards.shard, "")


def shards_of(split):
    """Shard ids of a split, known once its ingest checkpoint has run."""
    info = checkpoints.ingest.get(split=split).output.shards
    n = json.loads(Path(info).read_text())["num_shards"]
    return [f"{i:04d}" for i in range(n)]


def aligned_of(split):
    """A split's aligned shards; none for a split preprocessed without its clips."""
    if split in CLIPLESS:
        return []
    return expand("results/aligned/{split}/shard-{shard}.parquet", split=split,
                  shard=shards_of(split))


def manifest_source(wildcards):
    """The manifest's source: the aligned shards, or ingest alone for a CLIPLESS split."""
    from shlex import quote

    shards = aligned_of(wildcards.split)
    return "--aligned " + " ".join(map(quote, shards)) if shards else "--without-clips"


def clipless_csvs(wildcards):
    """The annotation CSVs training reads for the CLIPLESS splits (gold lines only)."""
    return {f"{split}_csv": str(find_csv(SETTINGS.meld_dir, split)) for split in CLIPLESS}


def aligned_shards(wildcards):
    return aligned_of(wildcards.split)


def all_aligned(wildcards):
    return [path for split in SPLITS for path in aligned_of(split)]


# Every (experiment, seed) training run (RUNS, above) has its folder.
RUN_DIRS = [f"results/train/{name}/seed-{seed}" for name, seed in RUNS]


def workflow_executor():
    """The executor Snakemake runs this workflow with (``slurm`` with the SLURM profile),
    known once the DAG is built (a dry run's is ``dryrun``); None before that."""
    plugin = workflow.executor_plugin
    return plugin.name if plugin is not None else None


def train_executor(wildcards):
    """Where one run trains: ``train.executor`` with ``auto`` (the default) resolved to the
    workflow's own executor, so that under the SLURM profile every run is a SLURM job
    whatever config files are given. A resource, not a param: the same run trained by
    either executor is the same result, and a rerun with the other one redoes nothing."""
    configured = launch_config(RUNS[(wildcards.experiment, int(wildcards.seed))]).executor
    return resolve_executor(configured, workflow_executor())


def train_threads(wildcards):
    """Threads of a training run's rule: every core when it trains on this machine, so that
    local runs go one after another; one with executor slurm (the rule only waits)."""
    if train_executor(wildcards) == "slurm":
        return 1
    try:
        return workflow.cores
    except WorkflowError:  # no --cores given (--unlock, --list, a dry run)
        return 1


def train_options(wildcards):
    """Everything `meldflow train` needs for one run, for its options file: the `train:`
    block with the experiment's overrides and the seed, the model, and the shards one by
    one (never whatever an earlier shard_size left on disk)."""
    options = dict(RUNS[(wildcards.experiment, int(wildcards.seed))])
    options |= {f.name: getattr(SETTINGS, f.name) for f in step_fields("train")}
    options |= {split: aligned_of(split) for split in SPLITS}
    return options | clipless_csvs(wildcards)


onstart:
    # Under the SLURM executor only (a local run makes no SLURM call: a client whose
    # controller is gone waits ~9 s a call). Training on the submit host happens only when
    # a config asks for it, and is said. SLURM jobs of an earlier run that was killed would
    # write the same outputs as this run's: they are cancelled before anything is
    # submitted (docs/slurm-faults.md).
    if workflow_executor() == "slurm":
        from meldflow.check import gpu_problems, model_problems, training_asks
        from meldflow.slurm.orphans import cancel_orphaned_jobs
        from meldflow.slurm.preflight import asks_from_jobs, check_cluster
        from meldflow.slurm.site_limits import SubmitPlan

        # The preflight (`meldflow check`, less what the stage rules will stage here): a
        # partition, account, time limit or GPU count the cluster does not offer, or a
        # model nobody can stage, stops the run before any job (meld_dir: at parse time).
        # A shard rule's jobs exist only once ingest (a checkpoint) has run: its ask is
        # read from the rule while any split still needs ingest or its manifest.
        jobs = list(workflow.dag.needrun_jobs())
        later = [workflow.get_rule(name) for name in SHARD_RULES] if any(
            job.rule.name in ("ingest", "manifest") for job in jobs) else []
        # Against the site's submit limit: Snakemake's own jobs (at most --jobs), and one
        # training job per train rule that runs (at most --local-cores at once).
        settings = workflow.resource_settings
        trainings = sum(job.rule.name == "train" for job in jobs)
        plan = SubmitPlan(settings.nodes or 1, "the profile's jobs",
                          min(trainings, settings.local_cores or trainings),
                          "training runs, at most local-cores at once")
        found, limit_notes = check_cluster(asks_from_jobs(jobs, later) + training_asks(RUNS),
                                           plan)
        gpu, gpu_notes = gpu_problems(SETTINGS, RUNS)
        found += gpu + model_problems(SETTINGS, stageable_ok=True)
        for note in limit_notes + gpu_notes:
            print(f"meldflow: note: {note}", file=sys.stderr)
        if found:
            raise WorkflowError("meldflow: this run asks the cluster for what it does not "
                                "offer; nothing was submitted:\n  " + "\n  ".join(found))
        for run in off_cluster_runs(RUNS):
            print(f"meldflow: WARNING: {run} trains on this host, not as a SLURM job: its "
                  f"config sets train.executor local (or debug); remove it (or set auto) to "
                  f"train on the cluster", file=sys.stderr)
        cancel_orphaned_jobs(Path.cwd())


onerror:
    # Snakemake only says "check log file(s)": show the end of each failed job's log.
    from meldflow.logs import failed_log_tails

    print(failed_log_tails(log), file=sys.stderr)


onsuccess:
    summary = Path("results/manifest/summary.txt")
    if summary.is_file():
        print("\nmeldflow: rows per status (details in results/manifest/{split}.parquet)")
        print(summary.read_text(), end="")
    # Only an evaluation of exactly this config's runs is printed (the evaluate job was in
    # this run's DAG, done or up to date for these runs); run folders an earlier config
    # left are named, never mixed in.
    from meldflow.training.evaluate import runs_outside

    summary = Path("results/evaluate/summary.txt")
    evaluated = any(job.rule.name == "evaluate" for job in workflow.dag.jobs)
    if TRAIN and summary.is_file() and evaluated:
        print("\nmeldflow: Florence-2 results, mean ± sd over seeds (results/evaluate/)")
        print(summary.read_text(), end="")
    elif summary.is_file():
        print("\nmeldflow: results/evaluate/ was not checked against this config's runs by "
              "this run's target: not shown (the default target compares them)")
    others = runs_outside("results/train", set(RUNS)) if TRAIN else []
    if others:
        print(f"meldflow: {len(others)} run folder(s) in results/train/ belong to no run of "
              f"this config and are left out: {', '.join(others)} (`make clean` starts over)")
