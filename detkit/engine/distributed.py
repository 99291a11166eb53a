"""Data-parallel training under torchrun: process-group set-up from the launcher's environment, rank helpers, and
evaluation sharded across ranks and gathered on rank 0.

torchrun sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT (and TORCHELASTIC_RESTART_COUNT after an
elastic restart); without them the process runs alone and nothing here needs a process group. The backend is
NCCL for CUDA devices and gloo for the CPU, as torch.distributed recommends.
"""
from __future__ import annotations

import datetime
import os
from typing import Any, Sequence

import torch
import torch.distributed as dist

from detkit.errors import DetkitError

# How long a collective waits for a missing rank before failing (torch's default is 30 minutes for gloo).
TIMEOUT = datetime.timedelta(minutes=10)


def launched_by_torchrun() -> bool:
    """Whether the launcher's environment (WORLD_SIZE and RANK) is present."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def init_from_env(device: torch.device) -> torch.device:
    """Join the process group torchrun describes (NCCL on CUDA, gloo on CPU); return this rank's device.

    A process not started by torchrun (or one with WORLD_SIZE=1) runs alone: nothing is initialised and `device`
    comes back unchanged. On CUDA each rank takes the GPU numbered LOCAL_RANK.
    """
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) <= 1 or is_initialized():
        return device
    if device.type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if local_rank >= torch.cuda.device_count():
            raise DetkitError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA device(s) are "
                              "visible; lower --nproc_per_node.")
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=TIMEOUT)
    return device


def is_initialized() -> bool:
    """Whether a process group exists."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's rank (0 when alone)."""
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    """Number of processes in the group (1 when alone)."""
    return dist.get_world_size() if is_initialized() else 1


def is_main_process() -> bool:
    """Whether this process writes files (rank 0, or no process group)."""
    return get_rank() == 0


def restart_count() -> int:
    """How many times torchrun restarted the worker group (0 on the first start or without torchrun)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def barrier() -> None:
    """Wait for every rank (nothing when alone)."""
    if get_world_size() > 1:
        dist.barrier()


def shard_indices(num_items: int, rank: int | None = None, world_size: int | None = None) -> list[int]:
    """The items rank r evaluates: r, r + W, r + 2W, ... (every item exactly once over all ranks)."""
    rank = get_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    return list(range(rank, num_items, world_size))


def gather_sharded(items: Sequence[Any], num_items: int) -> list[Any] | None:
    """Put each rank's `items` (for shard_indices(num_items)) back in index order on rank 0; None on other ranks."""
    world_size = get_world_size()
    if world_size == 1:
        return list(items)
    gathered: list[Any] = [None] * world_size if is_main_process() else None  # type: ignore[assignment]
    dist.gather_object(list(items), gathered, dst=0)
    if not is_main_process():
        return None
    ordered: list[Any] = [None] * num_items
    for rank, part in enumerate(gathered):
        for index, item in zip(shard_indices(num_items, rank, world_size), part):
            ordered[index] = item
    return ordered


def mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """The element-wise mean of a tensor over ranks (the tensor itself when alone)."""
    if get_world_size() == 1:
        return values
    values = values.clone()
    dist.all_reduce(values)
    return values / get_world_size()


def global_mean_count(count: torch.Tensor) -> torch.Tensor:
    """The divisor of a rank's summed per-sample loss that makes DDP train the global batch's per-sample mean.

    `count` is this rank's number of samples n_r (a 0-d integer tensor, no gradient). Returns D = max(N, 1) / W,
    N = sum of n_r over the W ranks (all_reduce; the mean count per rank, as mmdetection's reduce_mean(num_pos)).
    Why: rank r's loss is L_r = S_r / D, S_r the sum of its per-sample losses. DDP averages gradients over ranks,
    so the step follows (1 / W) sum_r grad L_r = grad (sum_r S_r) / max(N, 1): the gradient of one process that
    divides the whole global batch's summed loss by its N samples, whatever the split of the samples over ranks
    (dividing by n_r instead weights a rank's samples by 1 / n_r, equal only when every n_r is the same). The mean
    over ranks of the L_r (the logged loss) is that global per-sample mean too.
    Alone (no process group, or W = 1) it returns count.clamp(min=1) and calls nothing. A collective: every rank
    must call it at the same point of the forward, a rank with n_r = 0 included.
    """
    world_size = get_world_size()
    if world_size == 1:
        return count.clamp(min=1)
    total = count.detach().to(torch.int64).clone()
    dist.all_reduce(total)
    return total.clamp(min=1) / world_size
