import json
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from meldflow import MeldflowError
from meldflow.monitor import patch_slurm_plugin
from meldflow.training.options import EXPERIMENT_NAME, experiment_runs

# sacct reports a job cancelled from outside as "CANCELLED by <uid>", which the SLURM
# plugin (2.8.0) takes for a running job, so the workflow would wait forever. This makes
# it see the bare state word (README: "Running on a SLURM cluster").
patch_slurm_plugin()

# Every run's training options (the train: block with each experiment's overrides) are
# checked here, before any work, by the one check `meldflow train` applies too.
try:
    RUNS = experiment_runs(config.get("train", {}), config.get("experiments"),
                           config.get("seeds"))
except MeldflowError as exc:
    raise WorkflowError(str(exc)) from None

validate(config, schema="../schemas/config.schema.yaml")

# Rules call `meldflow`: found on PATH (an activated venv, a conda env of the rule), else
# beside the Python that runs Snakemake, so `.venv/bin/snakemake` works unactivated.
shell.prefix(f'set -euo pipefail; export PATH="$PATH:{Path(sys.executable).parent}"; ')

SPLITS = config["splits"]
# Training needs the train split; dev picks the best epoch, test is reported if present.
TRAIN = "train" in SPLITS
EVAL_SPLITS = [s for s in ("dev", "test") if s in SPLITS]
HF_HOME = config["hf_home"]
SHARD = "{shard,[0-9]{4}}"
TINY_FLORENCE = "meldflow/florence2-tiny-random"


def annotation_csv(wildcards):
    """The split's annotation CSV, so that editing it reruns ingest."""
    for name in (f"{wildcards.split}_sent_emo.csv", f"{wildcards.split}_sent_emo_dya.csv"):
        path = Path(config["meld_dir"]) / name
        if path.is_file():
            return str(path)
    raise ValueError(f"no annotation CSV for split {wildcards.split} in {config['meld_dir']}")


def clip_fingerprint(wildcards):
    """Digest of the split's clip folder (names, sizes, mtimes): a clip added, repaired or
    replaced since the last run changes it, and with it ingest's parameters."""
    from meldflow.ingest import clip_inventory

    return clip_inventory(config["meld_dir"], wildcards.split)


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
    return expand("results/aligned/{split}/shard-{shard}.parquet", split=split,
                  shard=shards_of(split))


def aligned_shards(wildcards):
    return aligned_of(wildcards.split)


def all_aligned(wildcards):
    return [path for split in SPLITS for path in aligned_of(split)]


# Every (experiment, seed) training run (RUNS, above) has its folder.
RUN_DIRS = [f"results/train/{name}/seed-{seed}" for name, seed in RUNS]


def train_threads():
    """Threads of a training run's rule: every core when training runs on this machine, so
    that local runs go one after another; one with executor slurm (the rule only waits)."""
    if config.get("train", {}).get("executor") == "slurm":
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
    options |= {"hf_home": HF_HOME, "model_repo": config["florence_repo"],
                "revision": config.get("florence_revision", "main")}
    options |= {split: aligned_of(split) for split in SPLITS}
    return options


onstart:
    # SLURM jobs of an earlier run that was killed would write the same outputs as this
    # run's: cancel them before anything is submitted (README: "Faults").
    from meldflow.monitor import cancel_orphaned_jobs

    cancel_orphaned_jobs(Path.cwd())


onerror:
    # Snakemake only says "check log file(s)": show the end of each failed job's log.
    from meldflow.monitor import failed_log_tails

    print(failed_log_tails(log), file=sys.stderr)


onsuccess:
    summary = Path("results/manifest/summary.txt")
    if summary.is_file():
        print("\nmeldflow: rows per status (details in results/manifest/{split}.parquet)")
        print(summary.read_text(), end="")
    summary = Path("results/evaluate/summary.txt")
    if summary.is_file():
        print("\nmeldflow: Florence-2 results, mean ± sd over seeds (results/evaluate/)")
        print(summary.read_text(), end="")
