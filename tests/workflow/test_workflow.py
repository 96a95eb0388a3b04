"""The `preprocess` target on the bundled sample: real Snakemake, ffmpeg and Whisper."""
import csv
import io
import json
import os
import re
import subprocess
import time

import pyarrow.parquet as pq
import pytest
import yaml
from helpers import (
    BIN,
    REPO,
    copy_preprocessed,
    csv_keys,
    env_with_venv,
    readme_recipe,
    run_snakemake,
    shard_fingerprint,
    tensorboard_events,
)
from PIL import Image

from meldflow.options import option_fields
from meldflow.training.runs import read_options_file
from meldflow.training.train_options import TrainConfig

pytestmark = pytest.mark.integration

REQUIRED = ["split", "dialogue_id", "utterance_id", "speaker", "utterance", "emotion",
            "sentiment", "transcript", "words", "wer", "frames", "frame_times", "frame_words",
            "status", "reason"]


def manifest(work, split):
    rows = pq.read_table(work / "results" / "manifest" / f"{split}.parquet").to_pylist()
    return {(r["dialogue_id"], r["utterance_id"]): r for r in rows}


def test_manifest_accounts_for_every_row(preprocessed):
    for split in ("train", "dev", "test"):
        m = manifest(preprocessed, split)
        assert sorted(m) == csv_keys(split)
        assert all(r["status"] and (r["status"] == "ok" or r["reason"]) for r in m.values())
    train, dev, test = (manifest(preprocessed, s) for s in ("train", "dev", "test"))
    assert train[(2, 1)]["status"] == "unreadable_video"
    assert "moov" in train[(2, 1)]["reason"]
    assert train[(4, 2)]["status"] == "empty_video"
    assert train[(6, 0)]["status"] == "ok" and train[(6, 0)]["flags"] == ["bad_timestamps"]
    assert dev[(1, 2)]["status"] == "missing_video"
    assert test[(2, 3)]["status"] == "no_audio" and test[(2, 3)]["n_frames"] == 8
    assert test[(3, 1)]["flags"] == ["duplicate_clip_used"] and test[(3, 1)]["transcript"]
    bad = {"unreadable_video", "empty_video", "missing_video", "no_audio"}
    n_ok = sum(r["status"] == "ok" for s in (train, dev, test) for r in s.values())
    n_bad = sum(r["status"] in bad for s in (train, dev, test) for r in s.values())
    assert n_bad == 4 and n_ok == sum(len(csv_keys(s)) for s in ("train", "dev", "test")) - 4


def test_summary_is_printed_and_saved(preprocessed):
    log = (preprocessed / "first_run.log").read_text()
    assert "rows per status" in log and "missing_video" in log
    tsv = (preprocessed / "results" / "manifest" / "summary.tsv").read_text().splitlines()
    assert "dev\tmissing_video\t1" in tsv and "test\tno_audio\t1" in tsv
    png = preprocessed / "results" / "manifest" / "summary.png"
    assert Image.open(png).format == "PNG"
    unused = (preprocessed / "results" / "ingest" / "dev.unused.tsv").read_text()
    assert "dia99_utt0.mp4\t99\t0\tunannotated" in unused


def test_aligned_shards_content(preprocessed):
    shards = sorted((preprocessed / "results" / "aligned" / "train").glob("shard-*.parquet"))
    assert len(shards) == 3  # 66 rows at shard_size 24, dialogues kept whole
    dialogue_shard, wers = {}, []
    for path in shards:
        t = pq.read_table(path)
        assert set(REQUIRED) <= set(t.schema.names)
        for r in t.to_pylist():
            assert dialogue_shard.setdefault(r["dialogue_id"], path.name) == path.name
            if r["status"] != "ok":
                continue
            assert len(r["frames"]) == len(r["frame_times"]) == len(r["frame_words"]) == 8
            img = Image.open(io.BytesIO(r["frames"][3]))
            assert img.format == "JPEG" and max(img.size) == 256
            assert r["words"] and r["transcript"]
            spoken = [w for w in r["frame_words"] if w]
            assert spoken and all(w in [x["word"] for x in r["words"]] for w in spoken)
            wers.append(r["wer"])
    # espeak speech through tiny.en: most lines come back nearly word for word
    assert sum(wers) / len(wers) < 0.35
    logs = list((preprocessed / "results" / "logs" / "transcribe" / "train").glob("*.log"))
    assert len(logs) == 3 and "transcribe: 100%" in logs[0].read_text()
    bench = list((preprocessed / "results" / "benchmarks" / "frames" / "train").glob("*.tsv"))
    assert len(bench) == 3


def test_whole_workflow_trains_evaluates_and_reports(trained):
    """Default target: stage Florence-2, train through submitit (2 gloo tasks), evaluate."""
    preprocessed, text = trained
    assert "rule frames" not in text  # preprocessing was already done
    res = preprocessed / "results"
    run = res / "train" / "default" / "seed-0"
    job = json.loads((run / "job.json").read_text())
    assert job["executor"] == "local" and job["tasks"] == 2
    logs = "".join(p.read_text() for p in (run / "submitit").glob("*_1_log.err"))
    assert "rank 1:" in logs
    table = (res / "evaluate" / "metrics.tsv").read_text().splitlines()
    assert table[0].startswith("split\ttask\texperiment\tseeds\tweighted_f1_mean")
    test_emotion = next(r.split("\t") for r in table if r.startswith("test\temotion"))
    assert test_emotion[2:4] == ["default", "1"]
    assert float(test_emotion[4]) > float(test_emotion[10])  # beats the majority class
    assert "Florence-2 results" in text
    readme = (REPO / "README.md").read_text()
    demo = re.search(r"ends with:\n\n```\n(.*?)```", readme, re.S).group(1).splitlines()
    for line in demo:  # the README's demo output: its headers are what the run prints
        if line.startswith(("meldflow: ", "split ", "audit: ")):
            assert line in text, line
    # live curves: TensorBoard event files, and progress lines in the log
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    err = "".join(p.read_text() for p in (run / "submitit").glob("*_0_log.err"))
    assert re.search(r"step \d+/\d+ .* steps/s, .* samples/s \| .* left", err), err[-2000:]
    for name in ("confusion_test.png", "curves.png", "experiments_test.png"):
        assert Image.open(res / "evaluate" / name).format == "PNG"
    report = res / "report.html"
    run_snakemake(preprocessed, "--report", str(report))
    assert report.stat().st_size > 100_000
    again = run_snakemake(preprocessed)
    assert "Nothing to be done" in again.stdout + again.stderr


def test_experiments_times_seeds_give_one_comparison_table(preprocessed, tmp_path):
    """Two experiments x two seeds: four runs of their own, one table of mean ± sd."""
    import statistics

    import yaml

    work = copy_preprocessed(preprocessed, tmp_path / "work")
    cfg_path = work / "config" / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["train"] |= {"executor": "debug", "modalities": "text", "epochs": 2}
    cfg["experiments"] = {"text": None, "text+context": {"context_turns": 2}}
    cfg["seeds"] = [0, 1]
    cfg_path.write_text(yaml.safe_dump(cfg))
    (work / "results" / "train" / "default" / "seed-0").mkdir(parents=True)  # another config's
    proc = run_snakemake(work)
    out = proc.stdout + proc.stderr
    assert ("1 run folder(s) in results/train/ belong to no run of this config and are left "
            "out: results/train/default/seed-0") in out
    assert "rule frames" not in out and "rule transcribe" not in out
    res = work / "results"
    runs = {(e, s): json.loads((res / "train" / e / f"seed-{s}" / "metrics.json").read_text())
            for e in ("text", "text+context") for s in (0, 1)}
    assert {(e, m["config"]["seed"], m["config"]["context_turns"])
            for (e, _), m in runs.items()} == {("text", 0, 0), ("text", 1, 0),
                                               ("text+context", 0, 2), ("text+context", 1, 2)}
    assert len({m["run"]["identity"] for m in runs.values()}) == 4  # four distinct runs
    table = list(csv.DictReader(io.StringIO((res / "evaluate" / "metrics.tsv").read_text()),
                                delimiter="\t"))
    assert {(r["split"], r["task"], r["experiment"]) for r in table} == {
        (sp, t, e) for sp in ("dev", "test") for t in ("emotion", "sentiment")
        for e in ("text", "text+context")}
    for r in table:
        vals = [runs[(r["experiment"], s)][r["split"]][r["task"]]["weighted_f1"]
                for s in (0, 1)]
        assert r["seeds"] == "2"
        assert float(r["weighted_f1_mean"]) == pytest.approx(statistics.fmean(vals), abs=1e-4)
        assert float(r["weighted_f1_sd"]) == pytest.approx(statistics.stdev(vals), abs=1e-4)
    per_class = (res / "evaluate" / "per_class.tsv").read_text().splitlines()
    assert len(per_class) == 1 + 2 * 2 * (7 + 3)
    assert len((res / "evaluate" / "runs.tsv").read_text().splitlines()) == 1 + 4 * 2 * 2
    assert "±" in out and "text+context" in out  # the summary, printed at the end
    assert "default" not in (res / "evaluate" / "summary.txt").read_text()
    # a config of other runs does not print this comparison as its own
    other = run_snakemake(work, "--forcerun", "summary", "--config", "seeds=[5]", "--",
                          "results/manifest/summary.txt")
    other = other.stdout + other.stderr
    assert "was not checked against this config's runs" in other and "±" not in other
    for name in ("experiments_dev.png", "experiments_test.png", "confusion_test.png",
                 "curves.png"):
        assert Image.open(res / "evaluate" / name).format == "PNG"
    assert run_snakemake(work, "-n").stdout.count("rule train:") == 0
    # locally the runs went one after another (each took every core)
    spans = []
    for log in (res / "logs" / "train" / e / f"seed-{n}.log" for e, n in runs):
        first = re.search(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", log.read_text(), re.M)
        start = time.mktime(time.strptime(first.group(1), "%Y-%m-%d %H:%M:%S"))
        spans.append((start, log.stat().st_mtime))
    spans.sort()
    assert len(spans) == 4
    assert all(a[1] <= b[0] + 1 for a, b in zip(spans, spans[1:], strict=False)), spans
    # a third seed trains only the two new runs; the four finished ones are kept
    more = run_snakemake(work, "-n", "--config", "seeds=[0,1,2]").stdout
    assert more.count("rule train:") == 2 and more.count("seed-2/metrics.json") >= 2
    # a changed option retrains every run, and says so in a line (it dumped the whole
    # options dict, several KB, for each run)
    changed = run_snakemake(work, "-n", "--config", "train={lr: 0.00123}").stdout
    reasons = [ln for ln in changed.splitlines() if "Params have changed" in ln]
    assert len(reasons) == 4 and max(map(len, reasons)) < 300, reasons[:1]
    # every run's TensorBoard events: loss per step, dev metrics per epoch, confusion images
    events = tensorboard_events(res / "train" / "text+context" / "seed-1")
    assert len(events.Scalars("train/loss")) == runs[("text+context", 1)]["steps"]
    assert [e.value for e in events.Scalars("dev/emotion_weighted_f1")] == pytest.approx(
        [h["dev_weighted_f1"] for h in json.loads(
            (res / "train" / "text+context" / "seed-1" / "history.json").read_text())
         if "dev_weighted_f1" in h])
    assert {"dev/confusion_emotion", "test/confusion_emotion"} <= set(events.Tags()["images"])


def test_workflow_hands_training_one_options_file(preprocessed):
    """`train_options` writes every option, the model and the shards named one by one."""
    proc = subprocess.run(
        [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "-d", str(preprocessed),
         "--cores", "1", "results/train/default/seed-0.yaml"],
        capture_output=True, text=True, env=env_with_venv(), cwd=preprocessed)
    assert proc.returncode == 0, proc.stderr[-3000:]
    train_kw, launch_kw = read_options_file(preprocessed / "results" / "train" / "default" /
                                            "seed-0.yaml")
    shards = sorted(str(p.relative_to(preprocessed)) for p in
                    (preprocessed / "results" / "aligned" / "train").glob("*.parquet"))
    assert train_kw["train"] == shards and train_kw["florence_repo"]
    assert {f.name for f in option_fields(TrainConfig)} <= set(train_kw)
    assert launch_kw["executor"] == "auto"  # resolved per run by the workflow executor


def test_aligned_shards_load_with_pandas(preprocessed):
    """The README's recipe, run as it is written, in the results' folder."""
    frame = readme_recipe(preprocessed)["train"]
    assert len(frame) == 66 and not frame.duplicated(["dialogue_id", "utterance_id"]).any()
    assert {"utterance", "emotion", "frames", "transcript"} <= set(frame.columns)
    assert frame.query("status == 'ok'")["frames"].map(len).eq(8).all()


@pytest.mark.integration
def test_any_subset_of_splits_runs_to_the_end(preprocessed, tmp_path):
    """train only: training and evaluation without dev or test (failed with "filesystem
    latency" because evaluate promised a test confusion matrix)."""
    work = copy_preprocessed(preprocessed, tmp_path / "train-only")
    cfg_path = work / "config" / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["splits"] = ["train"]
    cfg["train"] |= {"epochs": 1}
    cfg_path.write_text(yaml.safe_dump(cfg))
    proc = run_snakemake(work)
    assert "rule transcribe" not in proc.stdout + proc.stderr  # preprocessing is kept
    res = work / "results"
    assert (res / "evaluate" / "metrics.tsv").is_file()
    assert not (res / "evaluate" / "confusion_test.png").exists()
    assert "Florence-2 results" in proc.stdout + proc.stderr


def test_aligned_shards_name_what_made_them(preprocessed, hf_home):
    from meldflow.model_cache.whisper import model_dir
    from meldflow.storage import read_metadata

    shard = sorted((preprocessed / "results" / "aligned" / "dev").glob("*.parquet"))[0]
    meta = read_metadata(shard)
    assert meta["meldflow_transcribe"]["model_files"] == model_dir("tiny.en", hf_home)[1]
    assert meta["meldflow_transcribe"]["whisper_beam_size"] == 5
    assert meta["meldflow_transcribe"]["margin_frames"] == [5, 5]  # how packed clips were decoded
    assert meta["meldflow_transcribe"]["align_context_frames"] == 25  # and their words timed
    assert meta["meldflow_frames"]["frames_per_utterance"] == 8
    assert meta["meldflow_frames"]["ffmpeg"].startswith("ffmpeg version")
    info = json.loads((preprocessed / "results" / "ingest" / "dev.shards.json").read_text())
    assert set(info["shard_digests"]) == {"0000"} and info["warning"] is None


ALIGNED_REFERENCE = REPO / "tests" / "data" / "aligned_reference.json"


def test_sample_shards_unchanged_by_refactoring(preprocessed):
    """The sample's aligned shards, column by column, are what the code before the layout
    of meldflow/preprocess/ wrote (tests/data/aligned_reference.json). The frames depend on
    the ffmpeg build and Whisper's words on the CPU's vector instructions (the reference
    records both), so with another of either only those columns may differ."""
    got = shard_fingerprint(preprocessed / "results" / "aligned")
    if os.environ.get("MELDFLOW_WRITE_REFERENCE") == "1":
        ALIGNED_REFERENCE.write_text(json.dumps(got, indent=1))
        return
    want = json.loads(ALIGNED_REFERENCE.read_text())
    assert got.keys() == want.keys()
    for split, ref in want.items():
        assert got[split]["shards"] == ref["shards"], split
        differ = {c for c, d in ref["columns"].items() if got[split]["columns"].get(c) != d}
        if got[split]["ffmpeg"] != ref["ffmpeg"]:
            differ -= {"frames", "frame_times", "frame_words"}
        if got[split]["whisper_kernels"] != ref.get("whisper_kernels"):
            differ -= {"transcript", "words", "wer", "frame_words"}
        assert not differ, (split, sorted(differ))
