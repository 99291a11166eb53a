"""Where the Python API's targets and proposals enter a detector: each field checked, one DetkitError naming the image.

N images; per image M target boxes and P proposals; K foreground classes with labels 1..K (0 is background, so
never a target label). Boxes and proposals are (M, 4) / (P, 4) float x1, y1, x2, y2 in input pixels (torchvision's
contract, ``torchvision.models.detection.generalized_rcnn``); labels are (M,) integers. A target with M = 0 (an image
with no objects) is valid: it trains as background only.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from detkit.box_ops import clip_boxes_to_image
from detkit.errors import DetkitError


def check_finite_images(images: Sequence[Tensor]) -> None:
    """DetkitError naming the first image holding a NaN or infinite pixel (they would make every loss and score NaN);
    skipped while tracing for export, where the graph takes no data-dependent branch."""
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return
    for i, image in enumerate(images):
        if not bool(torch.isfinite(image).all()):
            raise DetkitError(f"image {i} has {int((~torch.isfinite(image)).sum())} NaN or infinite pixel value(s)")


def check_targets(images: Sequence[Tensor], targets: Sequence[dict[str, Tensor]] | None,
                  num_classes: int | None = None) -> list[dict[str, Tensor]]:
    """Targets with boxes clipped to their image and labels as int64.

    Raises DetkitError naming the target index and the field when targets are not one dict per image, when boxes
    are not a float (M, 4) tensor of finite values with area inside the image, when labels are not an integer (M,)
    tensor (one per box) in 1..num_classes (K, when given), or when proposals in a target are malformed.
    """
    if targets is None or isinstance(targets, dict) or len(targets) != len(images):
        count = 0 if targets is None else "a dict, not a list of" if isinstance(targets, dict) else len(targets)
        raise DetkitError(f"training needs one target dict per image: got {len(images)} images and {count} targets")
    checked = []
    for i, (image, target) in enumerate(zip(images, targets)):
        if not isinstance(target, dict):
            raise DetkitError(f"target {i} must be a dict with 'boxes' and 'labels', got {type(target).__name__}")
        for key in ("boxes", "labels"):
            if key not in target:
                raise DetkitError(f"target {i} has no '{key}' (it needs 'boxes' (M, 4) and 'labels' (M,))")
        boxes = check_box_tensor(target["boxes"], f"target {i}: boxes", "M")
        labels = _checked_labels(target["labels"], i, len(boxes), num_classes)
        height, width = int(image.shape[-2]), int(image.shape[-1])
        clipped = clip_boxes_to_image(boxes, (height, width))
        bad = torch.nonzero((clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1])).flatten()
        if bad.numel():
            j = bad[0].item()
            raise DetkitError(f"target {i}: box {j} {boxes[j].tolist()} has no area inside the image "
                              f"({width}x{height}, W x H)")
        out = {**target, "boxes": clipped, "labels": labels}
        if "proposals" in target:
            out["proposals"] = check_box_tensor(target["proposals"], f"target {i}: proposals", "P")
        checked.append(out)
    return checked


def check_proposals(proposals: Sequence[Tensor] | None, num_images: int, where: str) -> list[Tensor]:
    """The per-image proposals (P_i, 4); DetkitError naming the image when one is missing or malformed."""
    if proposals is None or torch.is_tensor(proposals) or len(proposals) != num_images \
            or any(p is None for p in proposals):
        raise DetkitError(f"this detector has no proposal generator: pass (P, 4) proposals for each of the "
                          f"{num_images} images in {where}")
    return [check_box_tensor(p, f"image {i}: proposals", "P") for i, p in enumerate(proposals)]


def check_box_tensor(boxes: object, what: str, count: str) -> Tensor:
    """`boxes` when it is a float (count, 4) tensor of finite values; DetkitError starting with `what` otherwise."""
    if not torch.is_tensor(boxes):
        raise DetkitError(f"{what} must be a float ({count}, 4) tensor, got a {type(boxes).__name__} "
                          f"(convert with torch.as_tensor(..., dtype=torch.float32).reshape(-1, 4))")
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise DetkitError(f"{what} must have shape ({count}, 4), got {tuple(boxes.shape)}")
    if not boxes.is_floating_point():
        raise DetkitError(f"{what} have dtype {boxes.dtype}; they must be float pixels x1, y1, x2, y2")
    finite = torch.isfinite(boxes).all(dim=1)
    if not bool(finite.all()):
        j = int(torch.nonzero(~finite)[0])
        raise DetkitError(f"{what}: row {j} {boxes[j].tolist()} is not finite")
    return boxes


def _checked_labels(labels: object, index: int, num_boxes: int, num_classes: int | None) -> Tensor:
    what = f"target {index}: labels"
    if not torch.is_tensor(labels):
        raise DetkitError(f"{what} must be an int64 (M,) tensor, got a {type(labels).__name__}")
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise DetkitError(f"{what} have dtype {labels.dtype}; they must be integer class indices (int64) in 1..K")
    if labels.dim() != 1 or len(labels) != num_boxes:
        raise DetkitError(f"{what} have shape {tuple(labels.shape)} but there are {num_boxes} boxes: "
                          f"one label per box, shape ({num_boxes},)")
    outside = (labels < 1) if num_classes is None else (labels < 1) | (labels > num_classes)
    if bool(outside.any()):
        j = int(torch.nonzero(outside)[0])
        allowed = "1..K" if num_classes is None else f"1..{num_classes} (the model has K = {num_classes} classes)"
        raise DetkitError(f"{what}: label {int(labels[j])} of box {j} is outside {allowed}; 0 is background, "
                          f"never a target label")
    return labels.to(torch.int64)
