"""DDP set-up from the variables torchrun or submitit export; gloo on the CPU, NCCL on GPUs."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def init_distributed() -> tuple[int, int, int]:
    """(rank, world, local_rank); joins the process group when there is more than one."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        else:
            torch.set_num_threads(cpu_threads_per_rank())
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    log.info("%s", device_line(rank, world, local, torch.cuda.is_available()))
    return rank, world, local


def device_line(rank: int, world: int, local: int, cuda: bool) -> str:
    """Which device a rank trains on, and what SLURM gave it (its GPUs, by
    CUDA_VISIBLE_DEVICES): said once per rank, so that a job that asked for GPUs and
    runs on the CPU says so."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    where = f"rank {rank} of {world}"
    if cuda:
        return f"{where}: GPU {local} of CUDA_VISIBLE_DEVICES={visible} (NCCL)"
    if visible:
        return (f"{where}: CUDA_VISIBLE_DEVICES={visible}, its GPU would be index {local}, "
                f"but torch finds no CUDA here: training on the CPU with gloo")
    return f"{where}: no GPU; training on the CPU" + (" with gloo" if world > 1 else "")


def cpu_threads_per_rank() -> int:
    """Compute threads for one CPU rank: its share of the cores it can run on.

    Each rank would otherwise start one thread per core, and ranks on one node would then
    run cores x ranks spinning threads (measured, 2 gloo ranks on 2 cores: 0.06x the
    samples/s of one rank). Under SLURM a task has its own ``cpus_per_task`` cores; the
    local executor's tasks share the machine's, split by ``LOCAL_WORLD_SIZE``.
    """
    cores = len(os.sched_getaffinity(0))
    if os.environ.get("SLURM_CPUS_PER_TASK", "").isdigit():
        return max(1, min(cores, int(os.environ["SLURM_CPUS_PER_TASK"])))
    return max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def device_of(local_rank: int):
    """This rank's GPU, or the CPU."""
    import torch

    return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")


def barrier() -> None:
    d = _dist()
    if d:
        d.barrier()


def broadcast_from_rank0(value):
    """Rank 0's ``value`` on every rank (a picklable object; itself with one process)."""
    d = _dist()
    if d is None:
        return value
    box = [value]
    d.broadcast_object_list(box, src=0)
    return box[0]


def sum_over_ranks(value: float, device) -> float:
    """``value`` summed over every rank (itself when there is one process)."""
    d = _dist()
    if d is None:
        return value
    import torch

    t = torch.tensor([value], device=device)
    d.all_reduce(t)
    return float(t)
