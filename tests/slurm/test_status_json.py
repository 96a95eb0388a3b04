"""meldflow status --json (meldflow.slurm.status_json): numbers under their schema."""
from slurm_helpers import fake_slurm, job, run_record, status_cli


def test_status_json_gives_numbers_under_its_schema(tmp_path):
    """Issue 34: `status --json`'s progress was pre-formatted text. It is numbers now, per
    rule (done, running, pending, failed, total, fraction done, seconds left), checked
    against the schema docs/cluster.md documents."""
    import json
    import time

    import jsonschema

    from meldflow.slurm.status_json import STATUS_SCHEMA

    run_record(tmp_path, "uuid-a", time.time() - 600, jobs=["frames"] * 3)
    ingest = tmp_path / "results" / "ingest"
    ingest.mkdir(parents=True)
    (ingest / "train.shards.json").write_text(json.dumps({"num_shards": 4}))
    env = fake_slurm(tmp_path, [job("401", "rule_frames_wildcards_train_0000", "COMPLETED",
                                    elapsed=40),
                                job("402", "rule_frames_wildcards_train_0001", "COMPLETED",
                                    elapsed=20),
                                job("403", "rule_frames_wildcards_train_0002", "RUNNING")], [])
    doc = json.loads(status_cli(tmp_path, env, "--json").stdout)
    jsonschema.validate(doc, STATUS_SCHEMA)
    frames = doc["progress"]["rules"]["frames"]
    assert frames == {"done": 2, "running": 1, "pending": 0, "failed": 0, "total": 4,
                      "fraction_done": 0.5, "eta_s": 60}  # 2 left at 30 s, one at a time
    assert doc["progress"]["fraction_done"] == 0.5 and doc["progress"]["eta_s"] == 60
