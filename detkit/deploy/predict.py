"""Detections of an exported detector (detkit.deploy.OnnxDetector) over a detkit dataset, as the eager predict loop
gives them: one dict per image, in dataset order, of boxes (D, 4) float32 x1, y1, x2, y2 in input pixels, labels
(D,) int64 in 1..K and scores (D,), as torch tensors for the COCO / VOC scoring."""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from detkit.progress import progress_bar

from detkit.data.classes import ClassList
from detkit.deploy.runtime import OnnxDetector


def onnx_class_list(detector: OnnxDetector) -> ClassList:
    """The class list stored in an export's metadata."""
    return ClassList.make(detector.class_names, detector.category_ids)


def to_pixels(image: torch.Tensor) -> np.ndarray:
    """A dataset's (3, H, W) float image in [0, 1] (uint8 / 255) back to its (H, W, 3) uint8 pixels, exactly."""
    return (image * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def predict_onnx(detector: OnnxDetector, dataset: Any, progress: bool = True) -> tuple[list[dict], float]:
    """Detections for every image of a dataset (a Fast R-CNN export gets the dataset's stored proposals) and the
    images per second."""
    outputs: list[dict] = []
    start = time.perf_counter()
    for i in progress_bar(range(len(dataset)), desc="eval (onnx)", leave=False, disable=not progress):
        image, target = dataset[i]
        proposals = target["proposals"].numpy() if detector.needs_proposals else None
        boxes, labels, scores = detector(to_pixels(image), proposals)
        outputs.append({"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels),
                        "scores": torch.from_numpy(scores)})
    return outputs, len(dataset) / max(time.perf_counter() - start, 1e-9)
