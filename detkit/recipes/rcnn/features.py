"""R-CNN's feature cache: fc7 and pool5 of every training region, once, on disk (Girshick et al. 2014, §2.3).

Per image id, in the cache folder: ``<id>.fc7.npy`` (R, D) and ``<id>.pool5.npy`` (R, D5) float16, read back
memory-mapped, and ``<id>.boxes.npz`` with ``boxes`` (R, 4) float32 x1, y1, x2, y2 in stored-image pixels (the
image's ground-truth boxes first, then its proposals), ``gt_labels`` (G,) int64 (1..K) and ``gt_ignore`` (G,) bool
(G = ``len(gt_labels)``). The boxes file is written last, atomically, so an image counts as cached only when all
three exist: a killed run resumes at the first image without it. Every file is validated when it is read.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from detkit.progress import progress_bar

from detkit.atomic import atomic_write
from detkit.errors import DetkitError
from detkit.recipes.rcnn.shares import share_missing, wait_for


@dataclass(frozen=True)
class CachedImage:
    """One image's cached regions (fc7 and pool5 memory-mapped)."""

    fc7: np.ndarray  # (R, D) float16
    pool5: np.ndarray  # (R, D5) float16
    boxes: np.ndarray  # (R, 4) float32, ground truth first
    gt_labels: np.ndarray  # (G,) int64
    gt_ignore: np.ndarray  # (G,) bool

    @property
    def num_gt(self) -> int:
        """G, the ground-truth rows at the top."""
        return len(self.gt_labels)


class FeatureCache:
    """A folder of per-image region features (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def has(self, image_id: int) -> bool:
        """Whether image ``image_id`` is fully cached."""
        return (self.root / f"{int(image_id)}.boxes.npz").is_file()

    def save(self, image_id: int, fc7: np.ndarray, pool5: np.ndarray, boxes: np.ndarray, gt_labels: np.ndarray,
             gt_ignore: np.ndarray) -> None:
        """Writes one image's regions, each file atomically, the boxes file last."""
        stem = self.root / str(int(image_id))
        for suffix, array in ((".fc7.npy", fc7.astype(np.float16)), (".pool5.npy", pool5.astype(np.float16))):
            _atomic_save(Path(f"{stem}{suffix}"), lambda f, a=array: np.save(f, a, allow_pickle=False))
        _atomic_save(Path(f"{stem}.boxes.npz"), lambda f: np.savez(
            f, boxes=boxes.astype(np.float32), gt_labels=gt_labels.astype(np.int64), gt_ignore=gt_ignore.astype(bool)))

    def load(self, image_id: int) -> CachedImage:
        """One image's regions, features memory-mapped; each file validated (see check_cached_image).

        Raises DetkitError naming the file when one is missing, unreadable (truncated, not .npy / .npz) or holds
        other shapes, dtypes or row counts than the module docstring states, or boxes that are not finite.
        """
        stem = self.root / str(int(image_id))
        paths = {name: Path(f"{stem}.{name}.{ext}") for name, ext in (("boxes", "npz"), ("fc7", "npy"), ("pool5", "npy"))}
        arrays: dict[str, np.ndarray] = {}
        for name, path in paths.items():
            try:
                _check_magic(path)
                if name == "boxes":
                    with np.load(path, allow_pickle=False) as meta:
                        arrays.update({key: meta[key] for key in ("boxes", "gt_labels", "gt_ignore")})
                else:
                    arrays[name] = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError, EOFError, KeyError, AttributeError, zipfile.BadZipFile) as error:
                reason = " ".join(str(error).split()) or type(error).__name__
                raise DetkitError(f"feature cache file {path} is unreadable ({reason}); "
                                  f"{self._refill(stem)}") from error
        try:
            check_cached_image(arrays)
        except DetkitError as error:
            path = paths.get(str(error).split(" ", 1)[0], paths["boxes"])  # the message starts with the array's name
            raise DetkitError(f"feature cache file {path}: {error}; {self._refill(stem)}") from None
        return CachedImage(arrays["fc7"], arrays["pool5"], arrays["boxes"], arrays["gt_labels"], arrays["gt_ignore"])

    def _refill(self, stem: Path) -> str:
        return (f"delete this image's files ({stem}.*) and the features stage's {self.root.parent / 'stage_done.json'}"
                f", then rerun train.py with --resume to compute them again")


def _check_magic(path: Path) -> None:
    """ValueError when the file does not start as an .npy or .npz (zip) file does (else numpy's message is about
    pickled data); OSError when it cannot be opened."""
    with open(path, "rb") as f:
        head = f.read(6)
    magic = b"PK" if path.suffix == ".npz" else b"\x93NUMPY"
    if not head.startswith(magic):
        raise ValueError(f"not {'an' if path.suffix == '.npz' else 'a'} {path.suffix} file: overwritten or not "
                         f"written by detkit")


def check_cached_image(arrays: dict[str, np.ndarray]) -> None:
    """Raises DetkitError, starting with the array's name (fc7, pool5, boxes, gt_labels, gt_ignore), when one
    image's cached arrays break the module docstring's shapes, dtypes, row counts or finite boxes."""
    fc7, pool5, boxes = arrays["fc7"], arrays["pool5"], arrays["boxes"]
    labels, ignore = arrays["gt_labels"], arrays["gt_ignore"]
    for name, array in (("fc7", fc7), ("pool5", pool5)):
        if array.ndim != 2 or array.dtype.kind != "f":
            raise DetkitError(f"{name} holds {array.dtype} shape {tuple(array.shape)}, not (R, D) floats")
    if boxes.ndim != 2 or boxes.shape[1:] != (4,) or boxes.dtype.kind != "f":
        raise DetkitError(f"boxes holds {boxes.dtype} shape {tuple(boxes.shape)}, not (R, 4) float32")
    if not np.isfinite(boxes).all():
        raise DetkitError(f"boxes holds {int((~np.isfinite(boxes)).any(axis=1).sum())} boxes that are not finite")
    for name, array in (("fc7", fc7), ("pool5", pool5)):
        if len(array) != len(boxes):
            raise DetkitError(f"{name} holds {len(array)} rows for the {len(boxes)} regions of the boxes file")
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or ignore.shape != labels.shape or ignore.dtype != bool:
        raise DetkitError(f"boxes holds gt_labels {labels.dtype} {tuple(labels.shape)} and gt_ignore {ignore.dtype} "
                          f"{tuple(ignore.shape)}, not (G,) int64 and (G,) bool")
    if len(labels) > len(boxes) or (len(labels) and labels.min() < 1):
        raise DetkitError(f"boxes holds {len(labels)} ground-truth labels (min {labels.min() if len(labels) else '-'})"
                          f" for {len(boxes)} regions; want at most one per region, each 1..K")


def _atomic_save(path: Path, write: Any) -> None:
    atomic_write(path, write, durable=False)


@torch.no_grad()
def cache_features(model: nn.Module, dataset: Any, cache: FeatureCache, device: torch.device, *,
                   max_proposals: int, progress: bool = True) -> dict[str, int]:
    """Fills the cache for every image of an un-augmented dataset with proposals; counts computed and reused.

    Under torchrun the images not yet cached are shared among the ranks (rank r takes every W-th, detkit.recipes.rcnn
    .shares), each writing its own images' files; a rank returns once every image is cached. An image's features do
    not depend on which rank computes it (one image per forward), so the cache is the one of one process. Every rank
    returns the same counts (all ranks' images).
    """
    model.eval()
    ids = [rec.image_id for rec in dataset.records]
    todo, mine = share_missing(range(len(ids)), lambda index: cache.has(ids[index]), cache.root)
    for index in progress_bar(mine, desc="features", disable=not progress):
        image, target = dataset[index]
        boxes = torch.cat([target["boxes"], target["proposals"][:max_proposals]]).float()
        fc7, pool5 = model.region_features([image.to(device)], [boxes.to(device)])
        cache.save(ids[index], fc7.cpu().numpy(), pool5.cpu().numpy(), boxes.numpy(), target["labels"].numpy(),
                   target["ignore"].numpy())
    wait_for(todo, lambda index: cache.has(ids[index]))
    return {"features/computed_images": len(todo), "features/reused_images": len(ids) - len(todo)}
