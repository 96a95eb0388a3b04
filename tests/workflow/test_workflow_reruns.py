"""Reruns of the workflow: nothing to do when nothing changed; what a change redoes, moves
aside or restores (the shards of an older method or layout, a finished training run)."""
import base64
import json
import re

from helpers import copy_preprocessed, readme_recipe, run_snakemake


def test_rerun_executes_nothing(preprocessed):
    outputs = sorted((preprocessed / "results").rglob("*.parquet"))
    before = {p: p.stat().st_mtime_ns for p in outputs}
    proc = run_snakemake(preprocessed, "preprocess")
    text = proc.stdout + proc.stderr
    assert "Nothing to be done" in text
    assert {p: p.stat().st_mtime_ns for p in outputs} == before


def test_shards_made_by_an_older_method_are_redone(preprocessed, tmp_path):
    """A transcript made by an older meldflow (its rule had no method version) is redone
    when the way transcripts are made has changed; nothing else is. Before, such shards
    were kept until `make clean`."""
    from meldflow.shard_schema import METHOD_VERSIONS

    work = copy_preprocessed(preprocessed, tmp_path / "work")
    target = "results/transcripts/dev/shard-0000.parquet"
    record = work / ".snakemake" / "metadata" / base64.urlsafe_b64encode(
        target.encode()).decode()
    meta = json.loads(record.read_text())
    method = repr(METHOD_VERSIONS["transcribe"])  # how Snakemake records a param
    assert method in meta["params"]
    meta["params"].remove(method)
    record.write_text(json.dumps(meta))
    proc = run_snakemake(work, "-n", "preprocess")
    out = proc.stdout + proc.stderr
    jobs = re.findall(r"^rule (\w+):\n(?:.*\n)*?    output: (\S+)", out, re.M)
    assert ("transcribe", target) in jobs, out
    assert not any(rule in ("transcribe", "frames") and path != target for rule, path in jobs)
    assert "Params have changed" in out


def test_a_new_shard_size_leaves_one_layout_in_each_folder(preprocessed, tmp_path):
    """Issue 34: preprocessing with shard_size 24 then 100 into the same results left the
    old layout's shards beside the new ones, and the README's recipe and `meldflow train
    --aligned-dir` read both (108 rows for 66 utterances, "step 1/14" instead of "1/9").
    The old layout's shards are now moved to results/stale/, and readers go by the folder's
    list of its shards. (Here dev's 20 rows go from one shard to four.)"""
    from meldflow.preprocess.align import read_shard_index
    from meldflow.training.dataset import Source

    work = copy_preprocessed(preprocessed, tmp_path / "work")
    before = sorted(p.name for p in (work / "results" / "aligned" / "dev").iterdir())
    assert before == ["shard-0000.parquet", "shards.json"]
    run_snakemake(work, "preprocess", "--config", "shard_size=8", "splits=[dev]")
    for step in ("transcripts", "frames", "aligned"):
        left = sorted(p.name for p in (work / "results" / step / "dev").iterdir())
        assert left == [f"shard-000{k}.parquet" for k in range(4)] + (
            ["shards.json"] if step == "aligned" else [])
        (moved,) = (work / "results" / "stale").glob(f"*/{step}/dev")
        assert [p.name for p in moved.iterdir()] == ["shard-0000.parquet"]  # other rows
    shards = read_shard_index(work / "results" / "aligned" / "dev")
    assert len(shards) == 4 and len(Source(shards, None, "text").labels()) == 20
    assert len(readme_recipe(work)["train"]) == 66  # train's layout is untouched


def test_a_forced_rerun_that_changes_nothing_submits_no_training_job(trained, tmp_path):
    """Issue 34: `--forcerun frames`, whose frames come out byte for byte the same, queued a
    submitit training job that "resumed" at its last step and scored again: on a site, a
    queued GPU job with nothing to learn. Snakemake still reruns the rule (it compares
    times, not content), but a run whose identity is the finished run's in its folder now
    restores that run's metrics.json and submits nothing; evaluation is a local rule; the
    run's own log keeps the earlier try's lines (Snakemake empties the rule's log)."""
    preprocessed, _ = trained
    work = copy_preprocessed(preprocessed, tmp_path / "work", training=True)
    run = work / "results" / "train" / "default" / "seed-0"
    job, metrics = (run / "job.json").read_text(), (run / "metrics.json").read_bytes()
    submitit_logs = sorted(p.name for p in (run / "submitit").iterdir())
    train_log = run / "train.log"
    before = train_log.read_text()
    assert "submitted training job" in before
    out = run_snakemake(work, "--forcerun", "results/frames/dev/shard-0000.parquet").stderr
    assert re.search(r"^localrule train:", out, re.M), out[-3000:]  # rerun by Snakemake...
    assert (run / "job.json").read_text() == job  # ...without submitting a job
    assert sorted(p.name for p in (run / "submitit").iterdir()) == submitit_logs
    assert (run / "metrics.json").read_bytes() == metrics
    text = train_log.read_text()
    assert text.startswith(before) and "no job submitted" in text[len(before):], text
    assert "no job submitted" in (work / "results" / "logs" / "train" / "default" /
                                  "seed-0.log").read_text()
    assert re.search(r"^localrule evaluate:", out, re.M)  # never a queued job either
