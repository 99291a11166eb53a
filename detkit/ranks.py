"""Rank helpers: which process this is and the collectives a loss needs; alone (no process group) they call nothing.

The bottom of detkit: modeling (the losses' normaliser), evaluation and the engine import these; the process-group
set-up itself (torchrun's environment) is detkit.engine.distributed.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


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


def barrier() -> None:
    """Wait for every rank (nothing when alone)."""
    if get_world_size() > 1:
        dist.barrier()


def share_todo(items: Sequence[T], done: Callable[[T], bool]) -> tuple[list[T], list[T]]:
    """(the items not done, in order, as rank 0 sees them; this rank's share of them: every W-th from the r-th).

    Work split over ranks by item, each item written to a file of its own (the proposal stores, R-CNN's feature
    cache, its per-class SVMs and regressors). A collective: rank 0 lists and broadcasts, so every rank gets the same
    list and the shares cover each item exactly once, even when a rank or another run writes items while the
    others look. `items` must be picklable. Alone it returns the items not done twice and calls nothing."""
    todo = [item for item in items if not done(item)] if is_main_process() else None
    if get_world_size() > 1:
        box = [todo]
        dist.broadcast_object_list(box, src=0)
        todo = box[0]
    return todo, todo[get_rank()::get_world_size()]


def wait_until_done(items: Sequence[T], done: Callable[[T], bool], poll_s: float) -> None:
    """Returns once done(item) holds for every item (the other ranks' shares of share_todo), however long they take,
    looking every `poll_s` seconds: a collective would time out after detkit.engine.distributed.TIMEOUT, and a rank
    that fails ends the whole group through its launcher."""
    for item in items:
        while not done(item):
            time.sleep(poll_s)


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
