"""Non-maximum suppression, plain and per class.

N boxes; boxes are x1, y1, x2, y2 in absolute pixels (any float dtype; x1 <= x2, y1 <= y2); scores [N];
idxs [N] int64 class (or image) of each box. Kept indices come back sorted by decreasing score, ties in
index order, exactly as torchvision.ops.nms / batched_nms return them.

Every path computes IoU in float32 (float64 for float64 input): torchvision's CPU kernel has no float16 /
bfloat16, and in float16 the area of a box 256 px or more on a side overflows (65504 is float16's largest value),
so half-precision boxes keep exactly the indices their float32 values keep, on every device and backend.
"""
from __future__ import annotations

import torch
import torchvision
from torch import Tensor

from detkit.errors import DetkitError
from detkit.ops.dispatch import use_triton


def _check(op: str, boxes: Tensor, scores: Tensor, idxs: Tensor | None = None) -> None:
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise DetkitError(f"{op}: boxes must be a Tensor[N, 4], got shape {tuple(boxes.shape)}.")
    if not boxes.is_floating_point() or not scores.is_floating_point():
        raise DetkitError(f"{op}: boxes and scores must be floating point, got {boxes.dtype} and {scores.dtype}.")
    if scores.dim() != 1 or scores.shape[0] != boxes.shape[0]:
        raise DetkitError(f"{op}: scores must be a Tensor[{boxes.shape[0]}], got shape {tuple(scores.shape)}.")
    if idxs is not None and (idxs.dim() != 1 or idxs.shape[0] != boxes.shape[0]):
        raise DetkitError(f"{op}: idxs must be a Tensor[{boxes.shape[0]}], got shape {tuple(idxs.shape)}.")


def _same_dtype(boxes: Tensor, scores: Tensor) -> tuple[Tensor, Tensor]:
    """Return boxes and scores in one dtype of at least float32 precision, as torchvision's kernels require."""
    common = torch.promote_types(torch.promote_types(boxes.dtype, scores.dtype), torch.float32)
    return boxes.to(common), scores.to(common)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Return int64 indices of the boxes kept by greedy NMS (IoU > iou_threshold suppresses), by decreasing score."""
    _check("nms", boxes, scores)
    if use_triton("nms", boxes):
        from detkit.ops.kernels.nms import nms_triton

        return nms_triton(boxes, scores, iou_threshold)
    boxes, scores = _same_dtype(boxes, scores)
    return torchvision.ops.nms(boxes, scores, iou_threshold)


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Return int64 indices kept by NMS run independently per value of idxs, by decreasing score."""
    _check("batched_nms", boxes, scores, idxs)
    if use_triton("batched_nms", boxes):
        from detkit.ops.kernels.nms import batched_nms_triton

        return batched_nms_triton(boxes, scores, idxs, iou_threshold)
    boxes, scores = _same_dtype(boxes, scores)
    return torchvision.ops.batched_nms(boxes, scores, idxs, iou_threshold)

