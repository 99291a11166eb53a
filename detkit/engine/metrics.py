"""Training metrics: a throughput meter and the metrics.jsonl (+ TensorBoard) writer.

A record is one JSON line {"iter": k, ...} for the k-th completed iteration; img/s counts images over wall time.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detkit.atomic import atomic_write_text


class ThroughputMeter:
    """Images and seconds, over the run (after `skip` warm-up iterations) and over the current log window."""

    def __init__(self, skip: int) -> None:
        self.skip, self.seen_iters, self.images, self.total_time = skip, 0, 0, 0.0
        self.window = (0, 0, 0.0)  # iterations, images, seconds

    def add(self, num_images: int, seconds: float) -> None:
        """Count one iteration."""
        self.seen_iters += 1
        if self.seen_iters > self.skip:
            self.images += num_images
            self.total_time += seconds
        iters, images, window_seconds = self.window
        self.window = (iters + 1, images + num_images, window_seconds + seconds)

    def pop_window(self) -> tuple[int, float, float]:
        """Return the window's (iterations, img/s, seconds per iteration) and start a new window."""
        iters, images, seconds = self.window
        self.window = (0, 0, 0.0)
        return iters, images / max(seconds, 1e-9), seconds / max(iters, 1)

    def img_per_s(self) -> float:
        """Images per second over the run, warm-up iterations excluded."""
        return self.images / max(self.total_time, 1e-9)


class MetricsWriter:
    """Append records to metrics.jsonl and, when tensorboard is installed, to TensorBoard."""

    def __init__(self, output_dir: Path, start_iter: int) -> None:
        self.path = output_dir / "metrics.jsonl"
        _drop_records_after(self.path, start_iter)
        self.file = self.path.open("a")
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.tensorboard = None
        else:
            self.tensorboard = SummaryWriter(str(output_dir), purge_step=start_iter + 1 if start_iter else None)

    def write(self, iteration: int, record: dict[str, Any]) -> None:
        """Write one record for `iteration`."""
        self.file.write(json.dumps({"iter": iteration, **record}, default=to_json) + "\n")
        self.file.flush()
        if self.tensorboard is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.tensorboard.add_scalar(key, value, iteration)

    def close(self) -> None:
        """Close the files."""
        self.file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def _drop_records_after(path: Path, iteration: int) -> None:
    """Keep the records up to `iteration` (none when starting from 0), so a resumed run logs no duplicates."""
    if not path.is_file():
        return
    kept = []
    if iteration > 0:
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError, TypeError, KeyError):
                if json.loads(line)["iter"] <= iteration:
                    kept.append(line + "\n")
    atomic_write_text(path, "".join(kept))


def to_json(value: Any) -> Any:
    """Convert tensors and numpy scalars for json.dumps."""
    if torch.is_tensor(value) or isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    return str(value)

