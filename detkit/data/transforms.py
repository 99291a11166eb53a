"""Bbox-aware augmentation: resize (shorter side to min_size, longer side capped at max_size), flip, colour jitter.

Shapes and names: image HWC uint8 RGB; boxes float32 (M, 4) x1, y1, x2, y2 in absolute 0-based continuous pixels;
labels int64 (M,); ignore bool (M,). Every call takes a ``seed`` so one (sample, seed) pair always gives the same
output, whichever process runs it.
"""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np

from detkit.errors import DetkitError


def resized_shape(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """Output (height, width) for scale = min(min_size / shorter side, max_size / longer side), as torchvision."""
    scale = min(min_size / min(height, width), max_size / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


class DetectionTransform:
    """Callable ``(image, boxes, labels, ignore, seed=int) -> (image, boxes, labels, ignore)``."""

    def __init__(self, *, min_sizes: list[int], max_size: int, random_size: bool = False, flip_prob: float = 0.0,
                 color_jitter: float = 0.0, min_visibility: float = 0.0) -> None:
        self.min_sizes = list(min_sizes)
        self.max_size = max_size
        self.random_size = random_size
        steps = []
        if flip_prob > 0:
            steps.append(A.HorizontalFlip(p=flip_prob))
        if color_jitter > 0:
            steps.append(A.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter,
                                       hue=min(color_jitter, 0.5) / 4, p=1.0))
        bbox_params = A.BboxParams(format="pascal_voc", label_fields=["labels", "ignore"],
                                   min_visibility=min_visibility, clip=True, filter_invalid_bboxes=True)
        self.augment = A.Compose(steps or [A.NoOp()], bbox_params=bbox_params, seed=0)

    def __call__(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, ignore: np.ndarray, *,
                 seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Resize, then flip / jitter with randomness drawn only from ``seed``; boxes leaving the image are clipped
        (or dropped when nothing, or less than min_visibility of them, is left)."""
        rng = np.random.default_rng(seed)
        min_size = self.min_sizes[rng.integers(len(self.min_sizes))] if self.random_size else self.min_sizes[-1]
        height, width = image.shape[:2]
        new_h, new_w = resized_shape(height, width, min_size, self.max_size)
        if (new_h, new_w) != (height, width):
            image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) * np.float32(
            [new_w / width, new_h / height, new_w / width, new_h / height])
        self.augment.set_random_seed(int(rng.integers(2**31)))
        out = self.augment(image=image, bboxes=boxes, labels=np.asarray(labels, dtype=np.int64),
                           ignore=np.asarray(ignore, dtype=bool))
        return (out["image"], np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4),
                np.asarray(out["labels"], dtype=np.int64), np.asarray(out["ignore"], dtype=bool))


def build_transforms(train: bool, min_size: int | list[int], max_size: int, flip_prob: float = 0.5,
                     color_jitter: float = 0.0, min_visibility: float = 0.0) -> DetectionTransform:
    """Training (random min_size from a list, flip, jitter) or test (last min_size, no randomness) transforms."""
    min_sizes = [min_size] if isinstance(min_size, int) else list(min_size)
    if not min_sizes or any(int(s) <= 0 for s in min_sizes) or max_size <= 0:
        raise DetkitError(f"Transform sizes must be positive, got min_size={min_size} and max_size={max_size}.")
    if not 0.0 <= flip_prob <= 1.0:
        raise DetkitError(f"flip_prob must be in [0, 1], got {flip_prob}.")
    if color_jitter < 0:
        raise DetkitError(f"color_jitter must be >= 0, got {color_jitter}.")
    return DetectionTransform(min_sizes=[int(s) for s in min_sizes], max_size=int(max_size), random_size=train,
                              flip_prob=flip_prob if train else 0.0, color_jitter=color_jitter if train else 0.0,
                              min_visibility=min_visibility)
