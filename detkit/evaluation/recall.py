"""COCO-style average recall of region proposals.

Glossary:
    N        images; `proposals[i]` and `gt_boxes[i]` describe the same image
    P / G    proposals / ground-truth boxes in one image
    boxes    x1, y1, x2, y2 in absolute pixels, float32; proposals sorted by score, best first
    AR@n     recall averaged over IoU thresholds 0.50:0.95, keeping the top n proposals per image
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from detkit.box_ops import box_iou
from detkit.errors import DetkitError

COCO_IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
AR_LIMITS = (100, 300, 1000)  # COCO's proposal-evaluation budgets (AR@100, AR@300, AR@1000)


def proposal_recall(
    proposals: Sequence[torch.Tensor],
    gt_boxes: Sequence[torch.Tensor],
    limits: Sequence[int] = (100, 300, 1000),
    iou_thresholds: Sequence[float] = COCO_IOU_THRESHOLDS,
) -> dict[str, float]:
    """AR {"AR@<n>": value} of the top-n proposals per image, matched one-to-one; 0.0 when no image has ground truth."""
    if len(proposals) != len(gt_boxes):
        raise DetkitError(
            f"proposal_recall got proposals for {len(proposals)} images but gt_boxes for {len(gt_boxes)}."
        )
    for limit in limits:
        if limit < 0:
            raise DetkitError(f"proposal_recall limits must be non-negative, got {limit}.")
    top = max(limits, default=0)
    # Proposals come best first, so the top-n of every limit are the first n rows of one (top, G) IoU matrix.
    ious = [
        box_iou(_boxes(p, i, "proposals")[:top], _boxes(g, i, "gt_boxes"))
        for i, (p, g) in enumerate(zip(proposals, gt_boxes))
    ]
    thresholds = torch.as_tensor(list(iou_thresholds), dtype=torch.float64)
    results = {}
    for limit in limits:
        per_image = [_matched_overlaps(iou[:limit]) for iou in ious]
        overlaps = torch.cat(per_image) if per_image else torch.zeros(0, dtype=torch.float64)
        if overlaps.numel() == 0:
            results[f"AR@{limit}"] = 0.0
            continue
        recalls = (overlaps[None, :] >= thresholds[:, None]).double().mean(dim=1)
        results[f"AR@{limit}"] = float(recalls.mean())
    return results


def _matched_overlaps(iou: torch.Tensor) -> torch.Tensor:
    """(G,) IoU of each ground-truth box with the proposal it is greedily matched to (0 when none is left)."""
    covered = torch.zeros(iou.shape[1], dtype=torch.float64)
    iou = iou.clone()
    # Greedy, as in detectron2's proposal evaluation: repeatedly take the best remaining (proposal, gt) pair.
    for _ in range(min(iou.shape)):
        best_per_gt, proposal_index = iou.max(dim=0)
        best_iou, gt_index = best_per_gt.max(dim=0)
        covered[gt_index] = best_iou
        iou[proposal_index[gt_index], :] = -1
        iou[:, gt_index] = -1
    return covered


def _boxes(boxes: torch.Tensor, index: int, name: str) -> torch.Tensor:
    boxes = torch.as_tensor(boxes).detach().to("cpu", torch.float64)
    if boxes.numel() == 0:
        return boxes.reshape(0, 4)
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise DetkitError(f"{name}[{index}] must have shape (n, 4), got {tuple(boxes.shape)}.")
    return boxes


def rpn_recall_metrics(proposals: Sequence[torch.Tensor], gt_boxes: Sequence[torch.Tensor],
                       limits: Sequence[int] = AR_LIMITS) -> dict[str, float]:
    """{"rpn/AR@<n>": value} of an RPN's proposals (proposal_recall, IoU 0.50:0.95); NaN when there is no ground truth.

    An RPN keeps at most post_nms_top_n["testing"] proposals per image (model.rpn.post_nms_top_n_test: 1000 by
    default, 300 in the paper's VGG16 recipe, 100 in configs/demo.yaml), so AR@n for n above that equals AR at
    that count: AR@1000 is bounded by the proposals the RPN keeps, not by the metric.
    """
    if not any(len(g) for g in gt_boxes):
        return {f"rpn/AR@{n}": float("nan") for n in limits}
    return {f"rpn/{key}": value for key, value in proposal_recall(proposals, gt_boxes, limits=limits).items()}
