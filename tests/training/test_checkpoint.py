"""Checkpoints are verified, not trusted, and a dead training job is taken for dead."""
import json
import logging
import os
import random
import signal
import struct
import time
import zipfile
from pathlib import Path

import pytest
from helpers import max_diff, tensorboard_events, train_config, weights, without_key_biases

from meldflow import MeldflowError
from meldflow.training.train_options import LaunchConfig

KW = dict(epochs=3, checkpoint_every=5)  # 27 steps, checkpoints at 5, 9, 10, 15, 18, ...


class Killed(Exception):
    """Stands for kill -9 of the training process, in-process."""


def _train_until(monkeypatch, cfg, step: int) -> None:
    """Train ``cfg`` in this process and stop dead after ``step`` (checkpoints on disk)."""
    from meldflow.training.loop import Recipe, train

    real = Recipe.train_step

    def train_step(self, s, batches):
        loss = real(self, s, batches)
        if self.state["step"] == step:
            self.progress.close()
            raise Killed
        return loss

    with monkeypatch.context() as m:
        m.setattr(Recipe, "train_step", train_step)
        with pytest.raises(Killed):
            train(cfg)


def _damage_largest_tensor(pt: Path) -> None:
    """Overwrite 4 KB in the middle of the largest tensor's bytes; the size stays."""
    with zipfile.ZipFile(pt) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename),
                   key=lambda i: i.file_size)
    assert info.file_size > 3 * 4096
    with open(pt, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", f.read(4))
        f.seek(info.header_offset + 30 + name_len + extra_len + info.file_size // 2)
        f.write(random.Random(0).randbytes(4096))


@pytest.fixture(scope="module")
def reference(florence_home, tmp_path_factory):
    """The uninterrupted run every resumed run must end at."""
    from meldflow.training.loop import train

    out = tmp_path_factory.mktemp("reference") / "run"
    metrics = train(train_config(florence_home, out, **KW))
    return out, metrics


def _same_as_reference(out: Path, metrics: dict, reference) -> None:
    ref_out, ref_metrics = reference
    assert metrics["steps"] == ref_metrics["steps"]
    assert metrics["run"]["identity"] == ref_metrics["run"]["identity"]
    assert max_diff(without_key_biases(weights(out / "best")),
                    without_key_biases(weights(ref_out / "best"))) < 1e-4
    assert metrics["dev"]["emotion"]["weighted_f1"] == pytest.approx(
        ref_metrics["dev"]["emotion"]["weighted_f1"])


def test_damaged_checkpoint_is_not_resumed_the_previous_one_is(florence_home, reference,
                                                               tmp_path, monkeypatch, caplog):
    import torch

    from meldflow.training.loop import train

    cfg = train_config(florence_home, tmp_path / "run", **KW)
    _train_until(monkeypatch, cfg, 10)
    state = tmp_path / "run" / "checkpoint" / "state.pt"
    size = state.stat().st_size
    _damage_largest_tensor(state)
    assert state.stat().st_size == size
    torch.load(state, weights_only=False)  # what made this dangerous: it loads without a word
    with caplog.at_level(logging.WARNING, logger="meldflow.training"):
        metrics = train(cfg)
    assert "checkpoint/state.pt is not resumed: its SHA-256 does not match" in caplog.text
    assert "resuming from the previous checkpoint" in caplog.text
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["resumes"][-1]["from"] == "checkpoint/previous.pt"
    assert run["resumes"][-1]["step"] == 9
    assert run["resumes"][-1]["rejected"][0]["file"] == "checkpoint/state.pt"
    assert metrics["resumes"] == run["resumes"]
    _same_as_reference(tmp_path / "run", metrics, reference)


def test_truncated_checkpoints_fall_back_then_start_fresh(florence_home, reference, tmp_path,
                                                         monkeypatch, caplog):
    from meldflow.training.loop import train

    # the newest cut short: the previous one is resumed
    cfg = train_config(florence_home, tmp_path / "a", **KW)
    _train_until(monkeypatch, cfg, 10)
    state = tmp_path / "a" / "checkpoint" / "state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    metrics = train(cfg)  # torch.load raised "failed finding central directory" here
    assert metrics["resumes"][-1]["from"] == "checkpoint/previous.pt"
    assert "truncated" in metrics["resumes"][-1]["rejected"][0]["why"]
    _same_as_reference(tmp_path / "a", metrics, reference)
    # both damaged: a fresh start, said in the log and in run.json
    cfg = train_config(florence_home, tmp_path / "b", **KW)
    _train_until(monkeypatch, cfg, 10)
    ckpt = tmp_path / "b" / "checkpoint"
    (ckpt / "state.pt").write_bytes((ckpt / "state.pt").read_bytes()[:1000])
    _damage_largest_tensor(ckpt / "previous.pt")
    with caplog.at_level(logging.WARNING, logger="meldflow.training"):
        metrics = train(cfg)
    assert "no checkpoint of this run verifies: training starts fresh" in caplog.text
    last = metrics["resumes"][-1]
    assert last["from"] is None and [r["file"] for r in last["rejected"]] == [
        "checkpoint/state.pt", "checkpoint/previous.pt"]
    _same_as_reference(tmp_path / "b", metrics, reference)
    # the fresh start's TensorBoard curve replaces the killed try's: one loss per step
    steps = [e.step for e in tensorboard_events(tmp_path / "b").Scalars("train/loss")]
    assert steps == list(range(1, metrics["steps"] + 1))


def test_a_checkpoint_without_its_record_is_not_trusted(florence_home, tmp_path, monkeypatch):
    from meldflow.training.checkpoint import find_resumable

    cfg = train_config(florence_home, tmp_path / "run", **KW)
    _train_until(monkeypatch, cfg, 10)
    ckpt = tmp_path / "run" / "checkpoint"
    (ckpt / "state.json").unlink()  # a crash between the rename and the record
    identity = json.loads((tmp_path / "run" / "run.json").read_text())["digest"]
    found = find_resumable(ckpt, identity)
    assert found.path == ckpt / "previous.pt" and found.step == 9
    assert "cannot be verified" in found.rejected[0]["why"]


def test_a_checkpoint_is_never_resumed_into_another_run(florence_home, tmp_path):
    import shutil

    from meldflow.training.loop import train

    train(train_config(florence_home, tmp_path / "a", max_steps=3))
    other = tmp_path / "b"
    train(train_config(florence_home, other, lr=0.5, max_steps=1))
    (other / "metrics.json").unlink()
    for name in ("state.pt", "state.json"):  # a whole, verified checkpoint of run a
        shutil.copy(tmp_path / "a" / "checkpoint" / name, other / "checkpoint" / name)
    # never resumed, and no hard error (it ended in a debugger prompt with --executor
    # debug): passed over for this run's previous checkpoint, said in the log and run.json
    train(train_config(florence_home, other, lr=0.5, max_steps=1))
    resume = json.loads((other / "run.json").read_text())["resumes"][-1]
    assert "belongs to another run" in resume["rejected"][0]["why"]
    # a record copied from another run is named as such, not as "truncated"
    (other / "metrics.json").unlink()
    shutil.copy(tmp_path / "a" / "checkpoint" / "state.json", other / "checkpoint" / "state.json")
    train(train_config(florence_home, other, lr=0.5, max_steps=1))
    resume = json.loads((other / "run.json").read_text())["resumes"][-1]
    assert "belongs to another run" in resume["rejected"][0]["why"], resume


def test_checkpoint_edges_are_said_in_the_log_and_run_json(florence_home, tmp_path):
    """state.pt missing: resumed from previous.pt with a `resumes` entry (it had only an
    INFO line); a temporary file a killed write left is removed and recorded."""
    from meldflow.training.loop import train

    out = tmp_path / "run"
    train(train_config(florence_home, out, max_steps=4, checkpoint_every=1))
    (out / "metrics.json").unlink()
    (out / "checkpoint" / "state.pt").unlink()
    stale = out / "checkpoint" / ".state.pt.k1ll3d.tmp"
    stale.write_bytes(b"\0" * 4096)
    train(train_config(florence_home, out, max_steps=4, checkpoint_every=1))
    resume = json.loads((out / "run.json").read_text())["resumes"][-1]
    whys = {r["file"]: r["why"] for r in resume["rejected"]}
    assert "missing" in whys["checkpoint/state.pt"]
    assert "killed" in whys["checkpoint/.state.pt.k1ll3d.tmp"] and not stale.exists()
    assert resume["from"] == "checkpoint/previous.pt"


def test_an_unwritable_checkpoint_folder_is_found_before_any_job(florence_home, tmp_path):
    """It was found only at the first save, after training (a raw PermissionError). Root
    may write anywhere but in /proc: this run's checkpoint folder points there."""
    from meldflow.provenance import claim_run_dir
    from meldflow.training.identity import identity_of
    from meldflow.training.launch import launch

    out, cfg = tmp_path / "run", train_config(florence_home, tmp_path / "run")
    claim_run_dir(out, identity_of(cfg, 1))  # this run's folder, before its first save
    (out / "checkpoint").symlink_to("/proc/1")
    with pytest.raises(MeldflowError, match=r"cannot write in .*checkpoint .*nothing was "
                                            r"trained"):
        launch(cfg, LaunchConfig(executor="local", tasks=1))
    assert not (out / "job.json").exists()  # nothing was submitted


# --- a dead job is a dead job --------------------------------------------------------------

def _task_pids(controller: int) -> dict[int, int]:
    """{global rank: pid} of a submitit local job's tasks."""
    kids = Path(f"/proc/{controller}/task/{controller}/children").read_text().split()
    out = {}
    for pid in map(int, kids):
        env = dict(kv.split(b"=", 1) for kv in
                   Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in kv)
        out[int(env[b"SUBMITIT_LOCAL_GLOBALID"])] = pid
    return out


def _wait(condition, what: str, limit_s: float = 180) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.integration
def test_killed_worker_is_a_dead_job_and_the_rerun_resumes(florence_home, tmp_path):
    """kill -9 of rank 0 (what the OOM killer does) mid-run: the error names each task's
    own fault, and the rerun resumes instead of waiting on a job that no longer exists."""
    from meldflow.training.launch import launch, running_job, wait_for

    out = tmp_path / "run"
    cfg = train_config(florence_home, out, epochs=12, streams=2, checkpoint_every=5,
                       dev_csv=None)  # 108 steps: a kill after step 10 is mid-run
    job = launch(cfg, LaunchConfig(executor="local", tasks=2, time_min=10), wait=False)
    record = out / "checkpoint" / "state.json"
    _wait(lambda: record.is_file() and json.loads(record.read_text())["step"] >= 10,
          "a checkpoint at step 10")
    os.kill(_task_pids(job._process.pid)[0], signal.SIGKILL)
    with pytest.raises(MeldflowError) as failed:
        wait_for(job, "local")
    message = str(failed.value)
    assert "task 0: no error written: the process was killed" in message
    assert "task 1: " in message and "Warning" not in message
    assert "resumes from its last checkpoint" in message
    # every rerun used to find the job "still running" (NO PROCESS AND NO RESULT)
    assert running_job(out, "local", 2) is None
    step = json.loads(record.read_text())["step"]
    metrics = launch(cfg, LaunchConfig(executor="local", tasks=2, time_min=10))
    history = json.loads((out / "history.json").read_text())
    assert [h["step"] for h in history if "loss" in h] == list(range(1, metrics["steps"] + 1))
    assert metrics["steps"] > step
    logs = "".join(p.read_text() for p in (out / "submitit").glob("*_0_log.err"))
    assert f"at step {step} (its SHA-256 verified)" in logs


def test_a_full_disk_at_a_checkpoint_is_named_and_the_last_one_kept(small_disk):
    """torch's zip writer reported a full disk as "RuntimeError: [enforce fail at
    inline_container.cc:672] . unexpected pos …"."""
    import torch
    from helpers import fill_disk

    from meldflow.training import checkpoint

    checkpoint.save({"w": torch.ones(1000)}, small_disk, "run-a", 1)
    before = (small_disk / "state.pt").read_bytes()
    fill_disk(small_disk)
    with pytest.raises(MeldflowError, match=rf"cannot write {small_disk}/state.pt: the disk "
                                            r"is full; free space there"):
        checkpoint.save({"w": torch.zeros(200_000)}, small_disk, "run-a", 2)
    assert (small_disk / "state.pt").read_bytes() == before
    assert checkpoint.check(small_disk, checkpoint.NEWEST, "run-a") is None
