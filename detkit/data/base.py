"""The dataset contract shared by VOC, COCO and the demo set: parsed annotations in memory, images decoded lazily.

Shapes and names:
    N       images in the dataset, M boxes in one image, K classes (labels 1..K, background = 0)
    boxes   float32 (M, 4) x1, y1, x2, y2 in absolute, 0-based, continuous pixels of the stored image
    labels  int64 (M,) in 1..K; ``classes[k - 1]`` names label k
    ignore  bool (M,): VOC ``difficult`` / COCO ``iscrowd``; the trainer drops these, the evaluator ignores them
    seed    per-sample int handed to the transforms so a sample's augmentation does not depend on the process
    proposals float32 (P, 4) like boxes, from the dataset's proposal store (Fast R-CNN / R-CNN), flipped by the
            transforms with the boxes and resized by the model with them
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from detkit.data.image_io import read_image, to_tensor
from detkit.errors import DetkitError

# (image HWC uint8, boxes (M, 4), labels (M,), ignore (M,), seed=int) -> the same four, transformed
Transform = Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]


class ProposalSource(Protocol):
    """Per-image proposals by image id (detkit.data.proposals.ProposalStore): (P, 4) float32 stored-image pixels,
    validated against the image's (H, W)."""

    def load(self, image_id: int, image_size: tuple[int, int]) -> np.ndarray: ...


@dataclass(frozen=True)
class ImageRecord:
    """One image's file and its parsed boxes; ``areas`` keeps a file's own COCO areas when it has them."""

    path: Path
    file_name: str
    image_id: int
    height: int
    width: int
    boxes: np.ndarray
    labels: np.ndarray
    ignore: np.ndarray
    areas: np.ndarray | None = None


def warn_dropped_boxes(source: str | Path, dropped: dict[str, int]) -> None:
    """Warn once about degenerate (zero-area or inverted) boxes that were dropped, naming the files and count."""
    if not dropped:
        return
    total = sum(dropped.values())
    names = ", ".join(sorted(dropped))
    warnings.warn(f"{source}: dropped {total} zero-area or inverted box(es) in {len(dropped)} file(s): {names}.",
                  stacklevel=3)


class DetectionDataset(Dataset):
    """Map-style detection dataset over parsed ImageRecords; ``ds[i] -> (image CHW float32 in [0, 1], target)``."""

    # True when the annotation file numbers its categories itself (COCO); False when ids are the labels (VOC)
    category_ids_in_file: bool = False

    def __init__(self, records: list[ImageRecord], classes: list[str], label_to_category_id: dict[int, int], *,
                 skip_corrupt: bool = False, transforms: Transform | None = None,
                 proposals: ProposalSource | None = None) -> None:
        self.records = records
        self.proposals = proposals  # when set, every target carries "proposals" (P, 4)
        self.classes = list(classes)
        self.label_to_category_id = dict(label_to_category_id)
        self.image_ids = [r.image_id for r in records]
        self.skip_corrupt = skip_corrupt
        self.transforms = transforms
        self._unreadable: set[str] = set()

    @property
    def num_skipped(self) -> int:
        """Distinct unreadable image files skipped so far by this process (workers keep their own count)."""
        return len(self._unreadable)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        return self.get(index)

    def image_path(self, index: int) -> Path:
        """Path of image ``index``'s file."""
        return self.records[index].path

    def aspect_ratios(self) -> list[float]:
        """Width / height of every image, from the annotations (no decoding)."""
        return [r.width / r.height for r in self.records]

    def target(self, index: int) -> dict[str, Any]:
        """Annotations of image ``index`` as stored (no decoding, no transforms), in the ``ds[i]`` target format."""
        record = self.records[index]
        return self._make_target(record, record.boxes, record.labels, record.ignore)

    @staticmethod
    def _make_target(record: ImageRecord, boxes: np.ndarray, labels: np.ndarray,
                     ignore: np.ndarray) -> dict[str, Any]:
        # Copies, so a consumer editing a target in place cannot change the parsed annotations.
        return {
            "boxes": torch.tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)),
            "labels": torch.tensor(np.asarray(labels, dtype=np.int64)),
            "image_id": record.image_id,
            "ignore": torch.tensor(np.asarray(ignore, dtype=bool)),
            "orig_size": (record.height, record.width),
        }

    def get(self, index: int, seed: int | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        """Load sample ``index``, augmenting with ``seed`` (default: the index) when transforms are set."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"Dataset index {index} is out of range for {len(self)} images.")
        index %= len(self)
        index, image = self._read_first_readable(index)
        record = self.records[index]
        if image.shape[:2] != (record.height, record.width):
            raise DetkitError(f"Image file {record.path} is {image.shape[0]}x{image.shape[1]} (HxW) but its "
                              f"annotation says {record.height}x{record.width}.")
        boxes, labels, ignore = record.boxes, record.labels, record.ignore
        proposals = None if self.proposals is None else self.proposals.load(record.image_id, (record.height, record.width))
        seed = index if seed is None else seed
        if self.transforms is not None and proposals is not None:
            image, boxes, labels, ignore, proposals = self.transforms(image, boxes, labels, ignore, seed=seed,
                                                                      proposals=proposals)
        elif self.transforms is not None:
            image, boxes, labels, ignore = self.transforms(image, boxes, labels, ignore, seed=seed)
        target = self._make_target(record, boxes, labels, ignore)
        if proposals is not None:
            target["proposals"] = torch.tensor(np.asarray(proposals, dtype=np.float32).reshape(-1, 4))
        return to_tensor(image), target

    def _read_first_readable(self, index: int) -> tuple[int, np.ndarray]:
        """Decode image ``index``, or with skip_corrupt the next readable one after it (wrapping around)."""
        for step in range(len(self)):
            candidate = (index + step) % len(self)
            path = self.records[candidate].path
            if str(path) in self._unreadable:
                continue
            try:
                return candidate, read_image(path)
            except DetkitError as error:
                if not self.skip_corrupt:
                    raise
                self._unreadable.add(str(path))
                warnings.warn(f"{error} Skipping it (skip_corrupt=True).", stacklevel=3)
        raise DetkitError(f"No image of the {len(self)} in this dataset could be read "
                          f"(first: {self.records[0].path}).")

    def coco_gt(self) -> dict[str, Any]:
        """Ground truth as a COCO dict (bbox xywh, area, iscrowd = ignore) with the file's category ids."""
        images, annotations = [], []
        for record in self.records:
            images.append({"id": record.image_id, "file_name": record.file_name,
                           "width": record.width, "height": record.height})
            wh = record.boxes[:, 2:] - record.boxes[:, :2]
            areas = record.areas if record.areas is not None else wh[:, 0] * wh[:, 1]
            for box, size, label, ign, area in zip(record.boxes.tolist(), wh.tolist(), record.labels.tolist(),
                                                   record.ignore.tolist(), areas.tolist()):
                annotations.append({"id": len(annotations) + 1, "image_id": record.image_id,
                                    "category_id": self.label_to_category_id[label],
                                    "bbox": [box[0], box[1], size[0], size[1]], "area": float(area),
                                    "iscrowd": int(ign)})
        categories = [{"id": self.label_to_category_id[k + 1], "name": name} for k, name in enumerate(self.classes)]
        return {"images": images, "annotations": annotations, "categories": categories}
