"""Bbox-aware augmentation for training: horizontal flip and colour jitter (images are resized by the model).

Shapes and names: image HWC uint8 RGB; boxes float32 (M, 4) x1, y1, x2, y2 in absolute 0-based continuous pixels;
labels int64 (M,); ignore bool (M,); proposals float32 (P, 4) like boxes (Fast R-CNN / R-CNN). Every call takes a
``seed`` so one (sample, seed) pair always gives the same output, whichever process runs it. Resizing lives in one
place, the model's preprocessor (detkit.modeling.preprocess), for training and test alike.
"""

from __future__ import annotations

import albumentations as A
import numpy as np

from detkit.errors import DetkitError


def hflip_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
    """Boxes (K, 4) mirrored in an image ``width`` pixels wide: x1' = W - x2, x2' = W - x1."""
    flipped = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    flipped[:, [0, 2]] = width - flipped[:, [2, 0]]
    return flipped


class DetectionTransform:
    """Callable ``(image, boxes, labels, ignore, seed=int[, proposals=P]) -> (image, boxes, labels, ignore[, P])``.

    Proposals, when given, are flipped with the same draw as the boxes and come back as a fifth item.
    """

    def __init__(self, *, flip_prob: float = 0.0, color_jitter: float = 0.0, min_visibility: float = 0.0) -> None:
        self.flip_prob = flip_prob
        steps = []
        if color_jitter > 0:
            steps.append(A.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter,
                                       hue=min(color_jitter, 0.5) / 4, p=1.0))
        bbox_params = A.BboxParams(format="pascal_voc", label_fields=["labels", "ignore"],
                                   min_visibility=min_visibility, clip=True, filter_invalid_bboxes=True)
        # NoOp is a spatial (dual) transform: with it the bbox processor clips and filters the boxes on every call.
        self.augment = A.Compose([*steps, A.NoOp()], bbox_params=bbox_params, seed=0)

    def __call__(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, ignore: np.ndarray, *,
                 seed: int, proposals: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        """Flip / jitter with randomness drawn only from ``seed``; boxes leaving the image are clipped (or dropped
        when nothing, or less than min_visibility of them, is left)."""
        rng = np.random.default_rng(seed)
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        if rng.random() < self.flip_prob:
            width = image.shape[1]
            image = np.ascontiguousarray(image[:, ::-1])
            boxes = hflip_boxes(boxes, width)
            proposals = None if proposals is None else hflip_boxes(proposals, width)
        self.augment.set_random_seed(int(rng.integers(2**31)))
        out = self.augment(image=image, bboxes=boxes, labels=np.asarray(labels, dtype=np.int64),
                           ignore=np.asarray(ignore, dtype=bool))
        result = (out["image"], np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4),
                  np.asarray(out["labels"], dtype=np.int64), np.asarray(out["ignore"], dtype=bool))
        return result if proposals is None else (*result, np.asarray(proposals, dtype=np.float32).reshape(-1, 4))


def build_transforms(train: bool, flip_prob: float = 0.5, color_jitter: float = 0.0,
                     min_visibility: float = 0.0) -> DetectionTransform:
    """Training (flip, jitter) or test (no randomness: boxes only clipped) transforms."""
    if not 0.0 <= flip_prob <= 1.0:
        raise DetkitError(f"flip_prob must be in [0, 1], got {flip_prob}.")
    if color_jitter < 0:
        raise DetkitError(f"color_jitter must be >= 0, got {color_jitter}.")
    return DetectionTransform(flip_prob=flip_prob if train else 0.0, color_jitter=color_jitter if train else 0.0,
                              min_visibility=min_visibility)
