"""Resources sized from what jobs used (meldflow.slurm.sizing): `meldflow status
--resources`; on the local cluster in tests/slurm/test_slurm_workflow.py."""
import json

import yaml

from meldflow.slurm.sizing import rule_use, set_resources_block, shard_sizes
from meldflow.slurm.status_report import JobRow


def row(rule, attempt, state, rss, req, elapsed, cpus=2, limit="00:30:00", eff=0.5):
    return JobRow(job_id=f"{rule}{attempt}{elapsed}", rule=rule, wildcards="train_0000",
                  attempt=attempt, state=state, exit_code="0:0", elapsed_s=elapsed,
                  cpu_efficiency=eff, max_rss_mb=rss, req_mem_mb=req, time_limit=limit,
                  cpus=cpus)


def test_each_rule_is_sized_from_its_finished_jobs_peaks():
    rows = [row("transcribe", 1, "OUT_OF_MEMORY", 1990, 2000, 50),
            row("transcribe", 2, "COMPLETED", 2480, 4000, 300),
            row("transcribe", 1, "COMPLETED", 1700, 2000, 240),
            row("frames", 1, "COMPLETED", 364, 2000, 6, eff=0.4),
            row("frames", 1, "COMPLETED", None, 2000, 4, eff=0.6),  # too short to sample
            row("align", 1, "FAILED", 100, 2000, 3),  # never finished: not sized
            row("train", 1, "COMPLETED", 9000, 16000, 900)]  # train.slurm's, not the profile's
    uses = {u.rule: u for u in rule_use(rows)}
    assert set(uses) == {"transcribe", "frames"}
    t, f = uses["transcribe"], uses["frames"]
    assert (t.jobs, t.mem_peak_mb, t.mem_asked_mb, t.minutes_asked) == (2, 2480, 2000, 30)
    assert (t.mem_mb(), t.runtime()) == (3800, 10)  # 2480 x 1.5 rounded up; the floor
    assert (f.mem_mb(), f.cpu_efficiency) == (1000, 0.5)  # the floor
    block = yaml.safe_load(set_resources_block([t, f]))
    assert block == {"set-resources": {
        "transcribe": {"cpus_per_task": 2, "mem_mb": "3800 * attempt", "runtime": "10 * attempt"},
        "frames": {"cpus_per_task": 2, "mem_mb": "1000 * attempt", "runtime": "10 * attempt"}}}
    long = rule_use([row("align", 1, "COMPLETED", 100, 2000, 3600)])[0]
    assert long.runtime() == 120  # an hour, doubled


def test_the_shard_size_the_figures_come_from_is_read_with_the_configs(tmp_path):
    (tmp_path / "results" / "ingest").mkdir(parents=True)
    for split in ("train", "dev"):
        (tmp_path / "results" / "ingest" / f"{split}.shards.json").write_text(
            json.dumps({"split": split, "shard_size": 1000}))
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text("shard_size: 4000\n")
    assert shard_sizes(tmp_path) == ({1000}, 4000)
