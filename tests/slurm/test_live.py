"""Live state from squeue joined with accounting (meldflow.slurm.live)."""
from meldflow.slurm.status_report import job_rows


def test_running_and_pending_jobs_get_their_rule_from_squeue(tmp_path):
    """Mid-run, accounting has no comment for running or pending jobs (it stores one when a
    job ends): their rule and wildcards come from squeue, tries are counted per rule and
    wildcards, and a cancelled try is linked to its queued resubmission at once."""
    import json

    from meldflow.slurm.live import join_queue, pending_reasons, progress, progress_text
    from meldflow.slurm.status_report import format_table

    def acct(job, state, comment=""):
        return {"JobIDRaw": job, "JobID": job, "JobName": "uuid", "Comment": comment,
                "State": state, "ExitCode": "0:0", "ElapsedRaw": "5", "TotalCPU": "00:01",
                "AllocCPUS": "2", "ReqMem": "4000M", "MaxRSS": "", "Submit": f"T{job}",
                "NodeList": "n1", "AllocTRES": "", "Timelimit": "00:30:00"}

    def queued(job, state, comment, name="uuid", reason="None"):
        return {"JobIDRaw": job, "JobName": name, "State": state, "NodeList": "n2",
                "Reason": reason, "Gres": "", "Submit": f"T{job}", "Comment": comment}

    t, f = "rule_transcribe_wildcards_test_0000", "rule_frames_wildcards_test_000"
    records = [acct("11", "COMPLETED", "rule_ingest_wildcards_test"),
               acct("12", "CANCELLED by 0"),  # ended a moment ago: no comment stored yet
               acct("13", "RUNNING")] + [acct(str(j), "PENDING") for j in range(15, 20)]
    queue = {"13": queued("13", "RUNNING", f + "0"),
             "14": queued("14", "PENDING", t, reason="Priority"),  # not in accounting yet
             **{str(j): queued(str(j), "PENDING", f"{f}{j - 14}") for j in range(15, 20)},
             "99": queued("99", "RUNNING", "rule_x", name="another-run")}
    queue_12 = {"12": queued("12", "CANCELLED", t)}  # squeue still lists it as it ends
    rows = job_rows(join_queue(records, queue | queue_12, "uuid", []), None,
                    pending_reasons(queue))
    got = {r.job_id: (r.rule, r.wildcards, r.attempt, r.state) for r in rows}
    assert got["12"] == ("transcribe", "test_0000", 1, "CANCELLED")
    assert got["14"] == ("transcribe", "test_0000", 2, "PENDING")
    assert got["13"] == ("frames", "test_0000", 1, "RUNNING")
    assert [got[str(j)][:3] for j in range(15, 20)] == [
        ("frames", f"test_000{j - 14}", 1) for j in range(15, 20)]
    assert "99" not in got
    cancelled = next(r for r in rows if r.job_id == "12")
    assert cancelled.explanation.endswith("resubmitted as try 2 → job 14, PENDING")
    ingest = tmp_path / "results" / "ingest"
    ingest.mkdir(parents=True)
    (ingest / "test.shards.json").write_text(json.dumps({"num_shards": 8}))
    run = tmp_path / "results" / "train" / "text" / "seed-0"
    (run / "submitit").mkdir(parents=True)
    (run / "job.json").write_text(json.dumps({"job_id": "31", "executor": "slurm"}))
    (run / "submitit" / "31_0_log.err").write_text(
        "step 4/88 (epoch 1) loss 1.9 lr 1e-3 | 1.0 steps/s, 8.0 samples/s | 1m24s left\n"
        "step 12/88 (epoch 1) loss 1.7 lr 1e-3 | 1.0 steps/s, 8.0 samples/s | 1m16s left\n")
    numbers = progress(rows, tmp_path)
    header = progress_text(numbers).splitlines()
    assert header[0].split() == ["progress", "done", "running", "pending", "failed", "of",
                                 "left"]
    by_rule = {line.split()[0]: line.split()[1:] for line in header[1:4]}
    assert by_rule["frames"] == ["0", "1", "5", "0", "8", "-"]  # none finished: no pace yet
    assert by_rule["transcribe"] == ["0", "0", "1", "0", "8", "-"]
    assert by_rule["ingest"] == ["1", "0", "0", "0", "1", "-"]
    assert header[-1] == "train text/seed-0 (job 31): step 12/88, 1m16s left"
    # the same in numbers, for --json
    assert numbers["rules"]["frames"] == {"done": 0, "running": 1, "pending": 5, "failed": 0,
                                          "total": 8, "fraction_done": 0.0, "eta_s": None}
    assert numbers["rules"]["ingest"]["fraction_done"] == 1.0
    assert numbers["training"] == [{"run": "text/seed-0", "job_id": "31", "finished": False,
                                    "step": 12, "steps": 88, "left_s": 76}]
    table = format_table("uuid", rows, progress="\n".join(header))
    assert "→ job 14, PENDING" in table and table.index("progress") < table.index("rule ")
