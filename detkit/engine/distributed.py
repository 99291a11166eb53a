"""Data-parallel training under torchrun: process-group set-up from the launcher's environment, rank helpers, and
evaluation sharded across ranks and gathered on rank 0.

torchrun sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT (and TORCHELASTIC_RESTART_COUNT after an
elastic restart); without them the process runs alone and nothing here needs a process group. The backend is
NCCL for CUDA devices and gloo for the CPU, as torch.distributed recommends.
"""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

from detkit.errors import DetkitError
from detkit.ranks import (barrier, gather_sharded, get_rank, get_world_size, global_mean_count,  # noqa: F401
                          is_initialized, is_main_process, mean_over_ranks, shard_indices)

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
    # torchrun's agent keeps one TCP store for every restart of the group (torch's TCPStore sharing), with the keys
    # of the group before a restart still in it (each rank's address): a restarted rank that reads them before its
    # peer has replaced them connects to a process that is gone and waits for TIMEOUT. A prefix per restart keeps
    # the groups apart.
    store, rank, world_size = next(dist.rendezvous("env://", timeout=TIMEOUT))
    dist.init_process_group(backend, store=dist.PrefixStore(f"detkit/restart_{restart_count()}", store), rank=rank,
                            world_size=world_size, timeout=TIMEOUT)
    return device


def restart_count() -> int:
    """How many times torchrun restarted the worker group (0 on the first start or without torchrun)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
