"""R-CNN's feature cache: fc7 and pool5 of every training region, once, on disk (Girshick et al. 2014, §2.3).

Per image id, in the cache folder: ``<id>.fc7.npy`` (R, D) and ``<id>.pool5.npy`` (R, D5) float16, read back
memory-mapped, and ``<id>.boxes.npz`` with ``boxes`` (R, 4) float32 x1, y1, x2, y2 in stored-image pixels (the
image's ground-truth boxes first, then its proposals), ``gt_labels`` (G,) int64 (1..K), ``gt_ignore`` (G,) bool and
``num_gt``. The boxes file is written last, atomically, so an image counts as cached only when all three exist:
a killed run resumes at the first image without it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from detkit.progress import progress_bar


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
        """One image's regions, features memory-mapped."""
        stem = self.root / str(int(image_id))
        with np.load(f"{stem}.boxes.npz") as meta:
            boxes, labels, ignore = meta["boxes"], meta["gt_labels"], meta["gt_ignore"]
        return CachedImage(np.load(f"{stem}.fc7.npy", mmap_mode="r"), np.load(f"{stem}.pool5.npy", mmap_mode="r"),
                           boxes, labels, ignore)


def _atomic_save(path: Path, write: Any) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)


@torch.no_grad()
def cache_features(model: nn.Module, dataset: Any, cache: FeatureCache, device: torch.device, *,
                   max_proposals: int, progress: bool = True) -> dict[str, int]:
    """Fills the cache for every image of an un-augmented dataset with proposals; counts computed and reused."""
    model.eval()
    computed = reused = 0
    for index in progress_bar(range(len(dataset)), desc="features", disable=not progress):
        image_id = dataset.records[index].image_id
        if cache.has(image_id):
            reused += 1
            continue
        image, target = dataset[index]
        boxes = torch.cat([target["boxes"], target["proposals"][:max_proposals]]).float()
        fc7, pool5 = region_features(model, image.to(device), boxes.to(device))
        cache.save(image_id, fc7.cpu().numpy(), pool5.cpu().numpy(), boxes.numpy(), target["labels"].numpy(),
                   target["ignore"].numpy())
        computed += 1
    return {"features/computed_images": computed, "features/reused_images": reused}


def region_features(model: nn.Module, image: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fc7 (R, D) and pool5 (R, D5) of an R-CNN for boxes (R, 4) in the pixels of one (3, H, W) image."""
    batch, _, scaled = model.preprocessor([image], None, [boxes])
    features = model.backbone(batch.tensors)
    return model.roi_heads.region_features([features[n] for n in model.box_feature_names], scaled)
