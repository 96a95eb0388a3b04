"""Training across the local cluster's nodes and GPUs."""
import json
import re
import subprocess
import time

import pytest
from helpers import (
    max_diff,
    train_config,
    weights,
    without_key_biases,
)
from slurm_helpers import (
    sacct,
    settled_history,
    start_requeued_now,
    wait_until,
)

from meldflow.training.train_options import LaunchConfig

pytestmark = [pytest.mark.integration, pytest.mark.slurm]


def test_two_nodes_train_like_one_process_and_resume_across_nodes(slurm_cluster, tmp_path):
    """DDP over two SLURM nodes (one gloo task each, rendezvous on n1) trains to the weights
    of one process with two data streams, also when preempted mid-run and resumed."""

    from meldflow.model_cache.stage import stage_florence
    from meldflow.training.launch import launch
    from meldflow.training.loop import train

    nodes = subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True,
                           text=True).stdout.split()
    if len(set(nodes)) < 2:
        pytest.fail(f"the local cluster has one node ({nodes}): up.sh starts two by default")
    home = tmp_path / "hf"
    stage_florence(home)
    kw = dict(epochs=20, global_batch=8, streams=2, checkpoint_every=25)  # 160 steps
    train(train_config(home, tmp_path / "one", **kw))
    cfg = train_config(home, tmp_path / "two", **kw)
    job = launch(cfg, LaunchConfig(executor="slurm", tasks=1, nodes=2, time_min=30,
                                      partition="cpu", mem_gb=3, cpus_per_task=1),
                 wait=False)
    ckpt = tmp_path / "two" / "checkpoint" / "state.pt"
    deadline = time.monotonic() + 600
    while not ckpt.is_file() and time.monotonic() < deadline and not job.done():
        time.sleep(0.5)
    assert ckpt.is_file(), job.stderr()
    subprocess.run(["scancel", "--signal=USR2", job.job_id], check=True)  # preemption
    start_requeued_now(job.job_id)
    job.results()
    history = settled_history(job.job_id)
    assert history[0] == "REQUEUED" and history[-1] == "COMPLETED", history
    alloc = sacct("-j", job.job_id, "-o", "JobID,NNodes,NodeList")
    assert alloc[-1][1] == "2", alloc
    logs = {p.name: p.read_text() for p in (tmp_path / "two" / "submitit").glob("*_log.err")}
    rank1 = "".join(t for n, t in logs.items() if n.endswith("_1_log.err"))
    assert "rank 1:" in rank1 and "resumed from" in "".join(logs.values())
    assert "epoch 1: dev" not in rank1  # only rank 0 evaluates and writes
    # The key projections' biases drift with the process count (test_train's
    # without_key_biases): over 340 steps by ~5e-4; everything else agrees.
    one_w, two_w = weights(tmp_path / "one" / "best"), weights(tmp_path / "two" / "best")
    assert max_diff(without_key_biases(one_w), without_key_biases(two_w)) < 1e-4
    assert max_diff(one_w, two_w) < 2e-3
    m1 = json.loads((tmp_path / "one" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert m2["steps"] == m1["steps"] and m2["hardware"]["world_size"] == 2
    assert m2["run"]["identity"] == m1["run"]["identity"]
    assert m2["hardware"]["slurm"]["SLURM_NNODES"] == "2"


def test_a_gpu_request_is_allocated_bound_and_said(slurm_cluster, tmp_path):
    """The GPU request path on a cluster configured like a site (up.sh: partition gpu, two
    GPUs per node as generic resources): a job asking 2 GPUs for 2 tasks is allocated
    gres/gpu=2, each rank names its own device index of what SLURM bound, and with no CUDA
    it trains on gloo and says so."""
    from meldflow.model_cache.stage import stage_florence
    from meldflow.training.launch import launch

    home = tmp_path / "hf"
    stage_florence(home)
    cfg = train_config(home, tmp_path / "run", max_steps=2, checkpoint_every=1, streams=2)
    how = LaunchConfig(executor="slurm", tasks=2, nodes=1, time_min=10, partition="gpu",
                       gpus_per_node=2, cpus_per_task=1, mem_gb=3)
    job = launch(cfg, how, wait=False)
    job.results()
    alloc = []

    def settled():
        alloc[:] = sacct("-j", job.job_id, "-o", "JobID,Partition,AllocTRES%200,State")
        return alloc and alloc[0][3] not in ("RUNNING", "PENDING", "COMPLETING")
    wait_until(settled, 60, "accounting to record the job's end")
    assert alloc[0][1] == "gpu" and "gres/gpu=2" in alloc[0][2] and alloc[0][3] == \
        "COMPLETED", alloc
    logs = {n: (tmp_path / "run" / "submitit" / f"{job.job_id}_{n}_log.err").read_text()
            for n in (0, 1)}
    for rank, text in logs.items():
        m = re.search(rf"rank {rank} of 2: CUDA_VISIBLE_DEVICES=(\S+), its GPU would be index "
                      rf"{rank}, but torch finds no CUDA here: training on the CPU with gloo",
                      text)
        assert m, text[-2000:]
        assert len(m.group(1).split(",")) == 2  # both of the node's GPUs, bound to the job
