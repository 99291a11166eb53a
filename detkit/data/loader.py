"""Batching: a deterministic, infinite training stream (exactly resumable) and an in-order test loader.

Shapes and names: B images per batch; a batch is ``(list of B image tensors CHW float32, list of B target dicts)``
since images of different sizes stay separate (the model pads them). A sample key is ``(dataset index, seed)``;
the seed drives that sample's augmentation (and, as the target's ``sample_seed``, the trainer's per-image RoI
sampling), so batch k is a pure function of (seed, k), whatever num_workers is. Under data-parallel training the
batch size is the GLOBAL batch: global batch k is the same keys for any number of processes W, and rank r takes
its r-th slice of B / W keys, so every image keeps its seed and its augmentation whatever W is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import multiprocessing
import os
import random
import signal
from collections.abc import Iterator, Sequence
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from detkit.data.image_io import max_image_pixels, set_max_image_pixels
from detkit.errors import DetkitError

Batch = tuple[list[torch.Tensor], list[dict[str, Any]]]
SampleKey = tuple[int, int]
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def collate(batch: Sequence[tuple[torch.Tensor, dict[str, Any]]]) -> Batch:
    """Split a list of (image, target) samples into a list of images and a list of targets."""
    return [image for image, _ in batch], [target for _, target in batch]


class TrainStream:
    """Infinite deterministic stream of batches of (dataset index, per-sample seed) keys.

    Epoch e visits every index once in the order of a permutation drawn from (seed, e), and gives each visit a
    seed drawn from the same generator. With aspect-ratio grouping (groups: w >= h and w < h) indices queue per
    group and a batch is emitted as soon as one group holds ``batch_size``, as torchvision's GroupedBatchSampler.
    """

    def __init__(self, num_samples: int, batch_size: int, *, seed: int = 0, start_iter: int = 0,
                 group_ids: Sequence[int] | None = None, rank: int = 0, world_size: int = 1) -> None:
        if num_samples <= 0:
            raise DetkitError("The training dataset is empty.")
        if batch_size <= 0:
            raise DetkitError(f"batch_size must be positive, got {batch_size}.")
        if seed < 0:
            raise DetkitError(f"The data seed must be >= 0, got {seed}.")
        if start_iter < 0:
            raise DetkitError(f"start_iter must be >= 0, got {start_iter}.")
        if group_ids is not None and len(group_ids) != num_samples:
            raise DetkitError(f"group_ids has {len(group_ids)} entries for {num_samples} samples.")
        if world_size <= 0 or not 0 <= rank < world_size or batch_size % world_size:
            raise DetkitError(f"solver.batch_size {batch_size} is the global batch and must split evenly over "
                              f"{world_size} processes (rank {rank}); use a multiple of {world_size}.")
        self.num_samples, self.batch_size, self.seed, self.start_iter = num_samples, batch_size, seed, start_iter
        self.rank, self.world_size = rank, world_size
        self.group_ids = list(group_ids) if group_ids is not None else [0] * num_samples

    def _keys(self) -> Iterator[SampleKey]:
        """Every (index, seed) key of epochs 0, 1, 2, ... in order."""
        epoch = 0
        while True:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(self.num_samples).tolist()
            seeds = rng.integers(0, 2**31, size=self.num_samples).tolist()
            yield from zip(order, seeds)
            epoch += 1

    def _batches(self) -> Iterator[list[SampleKey]]:
        """All batches from batch 0 on."""
        queues: dict[int, list[SampleKey]] = {}
        for key in self._keys():
            queue = queues.setdefault(self.group_ids[key[0]], [])
            queue.append(key)
            if len(queue) == self.batch_size:
                yield queue.copy()
                queue.clear()

    def __iter__(self) -> Iterator[list[SampleKey]]:
        batches = self._batches()
        for _ in range(self.start_iter):
            next(batches)
        per_rank = self.batch_size // self.world_size
        for batch in batches:
            yield batch[self.rank * per_rank:(self.rank + 1) * per_rank]


class _KeyedDataset(Dataset):
    """View that loads sample (index, seed) through the dataset's ``get(index, seed=...)``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __getitem__(self, key: SampleKey) -> tuple[torch.Tensor, dict[str, Any]]:
        index, seed = key
        image, target = self.dataset.get(index, seed=seed)
        return image, {**target, "sample_seed": seed}


def _exit_quietly(signum: int, frame: Any) -> None:
    """A loader worker's SIGTERM handler: exit with status 0, which the parent's DataLoader does not report."""
    os._exit(0)


def _worker_init(worker_id: int, max_pixels: int | None = None) -> None:
    """Seed a worker's stray RNGs, keep it to one thread, apply the pixel cap, and leave SIGINT/SIGTERM to the parent.

    A job scheduler (Slurm, systemd, docker stop, `timeout`) signals the whole process group; a worker killed by
    the signal made the parent raise "DataLoader worker ... killed by signal" in the middle of an iteration, before
    the trainer could save. Here a worker ignores SIGINT and exits with status 0 on SIGTERM, so the parent notices
    at most an empty queue (which the trainer treats as the stop it asked for) and still exits cleanly when
    multiprocessing terminates leftover workers at interpreter exit.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_quietly)
    _die_with_parent()
    set_max_image_pixels(max_pixels)
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)
    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def _die_with_parent() -> None:
    """Have the kernel send this worker SIGTERM (so _exit_quietly) when its parent dies, even by SIGKILL (Linux
    prctl PR_SET_PDEATHSIG); without it an orphan ran on until torch's 5-second parent check, or for as long as a
    slow __getitem__ took. Elsewhere torch's own check remains."""
    parent = multiprocessing.parent_process()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux
        return
    if parent is not None and os.getppid() != parent.pid:  # the parent died before prctl took effect
        os._exit(0)


def _before_forking_workers(num_workers: int) -> None:
    """Drop OpenCV to one thread in this process before DataLoader forks its workers.

    A forked child inherits OpenCV's thread-pool state but not its threads; once the parent's pool has run (a
    cv2.resize, a selective search), the child's cv2.setNumThreads waits on those absent threads forever. Shrinking
    the pool here, where its threads exist, leaves the children nothing to wait for.
    """
    if num_workers > 0:
        cv2.setNumThreads(1)


def _group_ids(dataset: Dataset) -> list[int]:
    """0 for landscape/square images (w >= h), 1 for portrait ones, from ``dataset.aspect_ratios()``."""
    return [0 if ratio >= 1.0 else 1 for ratio in dataset.aspect_ratios()]


def build_train_loader(dataset: Dataset, batch_size: int, *, num_workers: int = 2, seed: int = 0,
                       start_iter: int = 0, aspect_ratio_grouping: bool = True,
                       pin_memory: bool = False, rank: int = 0, world_size: int = 1) -> Iterator[Batch]:
    """Infinite iterator of training batches; batch k depends only on (seed, k), so start_iter=k resumes exactly.

    With world_size W, `batch_size` is the global batch and this rank gets its slice of batch_size / W samples.

    ``dataset`` needs ``get(index, seed=...)``, ``len`` and, for grouping, ``aspect_ratios()``. Skipping to
    start_iter advances only the index stream; no image is decoded for skipped batches.
    """
    group_ids = _group_ids(dataset) if aspect_ratio_grouping else None
    stream = TrainStream(len(dataset), batch_size, seed=seed, start_iter=start_iter, group_ids=group_ids,
                         rank=rank, world_size=world_size)
    # DataLoader draws its worker base seed from this generator, never from the global torch RNG.
    generator = torch.Generator().manual_seed(seed)
    _before_forking_workers(num_workers)
    loader = DataLoader(_KeyedDataset(dataset), batch_sampler=stream, num_workers=num_workers,
                        collate_fn=collate, pin_memory=pin_memory,
                        worker_init_fn=functools.partial(_worker_init, max_pixels=max_image_pixels()),
                        generator=generator, persistent_workers=False)
    return _reporting_worker_deaths(iter(loader))


def _reporting_worker_deaths(batches: Iterator[Batch]) -> Iterator[Batch]:
    """Yield the loader's batches; a worker killed from outside becomes one DetkitError instead of a traceback."""
    try:
        yield from batches
    except RuntimeError as error:
        if "DataLoader worker (pid" not in str(error):  # not "Caught ... in DataLoader worker process"
            raise
        raise DetkitError(f"{str(error).splitlines()[0]}: a signal to the workers alone, or the out-of-memory "
                          "killer, stopped them (lower data.num_workers if memory is short).") from error


def build_test_loader(dataset: Dataset, batch_size: int = 1, num_workers: int = 2,
                      pin_memory: bool = False) -> DataLoader:
    """Finite loader over the dataset in index order (no shuffling), yielding (images, targets) batches."""
    if batch_size <= 0:
        raise DetkitError(f"batch_size must be positive, got {batch_size}.")
    init = functools.partial(_worker_init, max_pixels=max_image_pixels())
    _before_forking_workers(num_workers)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate,
                      pin_memory=pin_memory, worker_init_fn=init, generator=torch.Generator().manual_seed(0))
