"""A detection confusion matrix over the classes plus background (false positives) and missed (false negatives).

Glossary:
    K        foreground classes, in sorted category-id order of the ground truth
    matrix   (K + 1, K + 1) int64; row = ground truth (K classes, then "background"), column = detection (K
             classes, then "missed"); matrix[K, K] is always 0
    boxes    COCO x, y, w, h in absolute pixels; crowd (iscrowd = 1) boxes and detections on them are left out

The defaults are mmdetection's tools/analysis_tools/confusion_matrix.py (IoU 0.5, score 0.3). Unlike that script,
the matching is one-to-one, so each ground-truth box and each detection is counted exactly once (row sums are the
ground-truth counts, a duplicate is a background false positive): detections above the score threshold, best
first, take the unmatched box of their own class with the highest IoU >= iou_thresh, else the unmatched box of
another class with the highest IoU >= iou_thresh, else count as background.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from detkit.errors import DetkitError
from detkit.evaluation.coco import _check_results, _checked_ground_truth
from detkit.evaluation.errors import _crowd_overlap, box_iou_xywh

IOU_THRESH = 0.5  # mmdetection confusion_matrix.py --tp-iou-thr default
SCORE_THRESH = 0.3  # mmdetection confusion_matrix.py --score-thr default


@dataclass
class ConfusionMatrix:
    """matrix (K + 1, K + 1) as the module docstring; names: the K class names; the thresholds it was made at."""

    matrix: np.ndarray
    names: list[str]
    iou_thresh: float
    score_thresh: float


def confusion_matrix(ground_truth: Mapping[str, Any], results: Sequence[Mapping[str, Any]],
                     iou_thresh: float = IOU_THRESH, score_thresh: float = SCORE_THRESH) -> ConfusionMatrix:
    """The confusion matrix of COCO `results` against `ground_truth` (module docstring).

    Raises DetkitError for thresholds outside [0, 1] and for results that do not fit the ground truth.
    """
    if not (0 < iou_thresh <= 1 and 0 <= score_thresh <= 1):
        raise DetkitError(f"confusion_matrix needs 0 < iou_thresh <= 1 and 0 <= score_thresh <= 1, got "
                          f"{iou_thresh} and {score_thresh}.")
    gt = _checked_ground_truth(ground_truth)
    _check_results(results, gt)
    categories = sorted(gt["categories"], key=lambda c: int(c["id"]))
    column = {int(c["id"]): k for k, c in enumerate(categories)}
    k = len(categories)
    matrix = np.zeros((k + 1, k + 1), dtype=np.int64)
    anns_by_image: dict[int, list[dict]] = defaultdict(list)
    for ann in gt["annotations"]:
        anns_by_image[int(ann["image_id"])].append(ann)
    dets_by_image: dict[int, list[Mapping]] = defaultdict(list)
    for result in results:
        if float(result["score"]) >= score_thresh:
            dets_by_image[int(result["image_id"])].append(result)
    for image in gt["images"]:
        image_id = int(image["id"])
        anns = anns_by_image.get(image_id, [])
        real = [a for a in anns if not a["iscrowd"]]
        crowd = np.array([a["bbox"] for a in anns if a["iscrowd"]], dtype=np.float64).reshape(-1, 4)
        dets = sorted(dets_by_image.get(image_id, []), key=lambda d: -float(d["score"]))
        boxes = np.array([d["bbox"] for d in dets], dtype=np.float64).reshape(-1, 4)
        iou = box_iou_xywh(boxes, np.array([a["bbox"] for a in real]).reshape(-1, 4))
        on_crowd = _crowd_overlap(boxes, crowd).max(axis=1, initial=0.0) >= iou_thresh
        gt_labels = np.array([column[int(a["category_id"])] for a in real], dtype=np.int64)
        taken = np.zeros(len(real), dtype=bool)
        for i, det in enumerate(dets):
            label = column[int(det["category_id"])]
            free = ~taken & (iou[i] >= iou_thresh) if len(real) else np.zeros(0, dtype=bool)
            own, other = free & (gt_labels == label), free & (gt_labels != label)
            pick = own if own.any() else other
            if pick.any():
                j = int(np.where(pick, iou[i], -1.0).argmax())
                taken[j] = True
                matrix[gt_labels[j], label] += 1
            elif not on_crowd[i]:
                matrix[k, label] += 1
        for j in np.where(~taken)[0]:
            matrix[gt_labels[j], k] += 1
    names = [str(c.get("name", c["id"])) for c in categories]
    return ConfusionMatrix(matrix=matrix, names=names, iou_thresh=iou_thresh, score_thresh=score_thresh)
