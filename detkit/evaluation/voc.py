"""Pascal VOC average precision, following the MATLAB VOC devkit (VOCdevkit 2012, VOCevaldet.m and VOCap.m).

The reference is the devkit because the papers' VOC figures (R-CNN, Fast and Faster R-CNN) come from it:
- a detection matches its highest-IoU ground-truth box of its class when that IoU is >= iou_thresh (the devkit's
  ``ovmax >= VOCopts.minoverlap``, as mmdetection; py-faster-rcnn's voc_eval.py and detectron2 use > and so count a
  detection at exactly IoU 0.5 as a false positive);
- box areas: the devkit adds 1 pixel to widths and heights of its 1-based inclusive pixel indices; detkit's VOC
  loader turns a file's (xmin, ymin, xmax, ymax) into continuous (xmin - 1, ymin - 1, xmax, ymax), on which plain
  areas and intersections (no +1) are exactly the devkit's (xmin = 1, xmax = 10 is 10 pixels wide in both);
- each ground-truth box is matched once, best score first (stable for ties); a detection on a "difficult" box is
  neither a true nor a false positive; a duplicate is a false positive;
- 11-point AP (VOC2007) averages the best precision at recall >= t for t = 0, 0.1, ..., 1 taken as k / 10 (the
  devkit's 0:0.1:1, and np.arange(0, 1.1, 0.1), make 0.30000000000000004, which a recall of exactly 3/10 misses),
  summed then divided by 11, so a perfect detector scores exactly 1.0; area AP (VOC2010+) is VOCap.m.

Glossary:
    N        images; `outputs[i]` and `targets[i]` describe the same image
    D / G    detections / ground-truth boxes in one image
    K        foreground classes, labels 1..K; background = 0
    boxes    x1, y1, x2, y2 in absolute pixels, float32, 0-based continuous coordinates: IoU uses no "+1"
    ignore   (G,) bool; an ignored ("difficult") box is neither a true nor a false positive when matched
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from detkit.box_ops import box_iou
from detkit.errors import DetkitError


def voc_ap(recall: np.ndarray | Sequence[float], precision: np.ndarray | Sequence[float], use_07_metric: bool) -> float:
    """VOC AP of a precision/recall curve: 11-point interpolated (VOC2007) or area under it (VOC2010+, VOCap.m)."""
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    if use_07_metric:
        best = [precision[recall >= k / 10].max(initial=0.0) for k in range(11)]
        return float(sum(best) / 11.0)
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    # Precision envelope: each point takes the best precision at any higher recall.
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def evaluate_voc(
    outputs: Sequence[Mapping[str, torch.Tensor]],
    targets: Sequence[Mapping[str, torch.Tensor]],
    num_classes: int,
    iou_thresh: float = 0.5,
    use_07_metric: bool = False,
    class_names: Sequence[str] | None = None,
) -> dict[str, float]:
    """Per-class VOC AP ("voc/AP-<name>") and their mean ("voc/mAP"); a class without ground truth is nan.

    A detection is a true positive at IoU >= iou_thresh with an unmatched box of its class, as the MATLAB devkit
    (see the module docstring). Raises DetkitError when outputs and targets differ in length, a key is missing or
    an image's fields differ in length.
    """
    if len(outputs) != len(targets):
        raise DetkitError(f"evaluate_voc got {len(outputs)} outputs but {len(targets)} targets.")
    if class_names is not None and len(class_names) != num_classes:
        raise DetkitError(
            f"class_names has {len(class_names)} names but num_classes is {num_classes}; "
            "pass one name per label 1..K, without background."
        )
    names = [str(n) for n in class_names] if class_names is not None else [str(k) for k in range(1, num_classes + 1)]
    detections = [_checked(o, i, "Detections", ("boxes", "labels", "scores")) for i, o in enumerate(outputs)]
    truths = [_checked(t, i, "Target", ("boxes", "labels")) for i, t in enumerate(targets)]

    metrics: dict[str, float] = {}
    for label, name in zip(range(1, num_classes + 1), names):
        recall, precision = _class_pr_curve(detections, truths, label, iou_thresh)
        metrics[f"voc/AP-{name}"] = voc_ap(recall, precision, use_07_metric) if recall is not None else math.nan
    present = [v for v in metrics.values() if not math.isnan(v)]
    return {"voc/mAP": float(np.mean(present)) if present else math.nan, **metrics}


def _class_pr_curve(
    detections: list[dict[str, torch.Tensor]], truths: list[dict[str, torch.Tensor]], label: int, iou_thresh: float
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Recall and precision after each detection of `label`, best score first; (None, None) without ground truth."""
    gt_boxes, gt_ignore, gt_taken = [], [], []
    num_positives = 0
    for truth in truths:
        keep = truth["labels"] == label
        gt_boxes.append(truth["boxes"][keep])
        gt_ignore.append(truth["ignore"][keep].tolist())
        gt_taken.append([False] * int(keep.sum()))
        num_positives += int((~truth["ignore"][keep]).sum())
    if num_positives == 0:
        return None, None

    # IoU once per image: each detection of `label` against that image's ground truth of `label`. The devkit matches
    # a detection to its best ground-truth box whether or not that box is taken, so only the row max is needed.
    image_index, scores, best_ious, best_gts = [], [], [], []
    for i, det in enumerate(detections):
        keep = det["labels"] == label
        boxes = det["boxes"][keep]
        scores.append(det["scores"][keep])
        image_index.extend([i] * len(boxes))
        if len(boxes) and len(gt_boxes[i]):
            best_iou, best_gt = box_iou(boxes, gt_boxes[i]).max(dim=1)
            best_ious.extend(best_iou.tolist())
            best_gts.extend(best_gt.tolist())
        else:
            best_ious.extend([math.nan] * len(boxes))
            best_gts.extend([-1] * len(boxes))
    order = torch.argsort(torch.cat(scores), descending=True, stable=True).tolist()

    tp = np.zeros(len(order))
    fp = np.zeros(len(order))
    for rank, d in enumerate(order):
        i, best = image_index[d], best_gts[d]
        if len(gt_boxes[i]) == 0 or not best_ious[d] >= iou_thresh:  # the devkit's ovmax >= minoverlap
            fp[rank] = 1
        elif gt_ignore[i][best]:
            continue
        elif not gt_taken[i][best]:
            tp[rank] = 1
            gt_taken[i][best] = True
        else:
            fp[rank] = 1
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    recall = tp / num_positives
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return recall, precision


def _checked(item: Mapping[str, torch.Tensor], index: int, kind: str, keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """CPU float64 copies of one image's boxes/labels/scores (and ignore flags for a target), shapes checked."""
    for key in keys:
        if key not in item:
            raise DetkitError(f"{kind} for image index {index} has no '{key}' key.")
    out = {
        "boxes": torch.as_tensor(item["boxes"]).detach().to("cpu", torch.float64).reshape(-1, 4),
        "labels": torch.as_tensor(item["labels"]).detach().cpu().reshape(-1).long(),
    }
    if "scores" in keys:
        out["scores"] = torch.as_tensor(item["scores"]).detach().to("cpu", torch.float64).reshape(-1)
    else:
        ignore = item.get("ignore")
        flags = torch.zeros(len(out["labels"]), dtype=torch.bool) if ignore is None else torch.as_tensor(ignore)
        out["ignore"] = flags.detach().cpu().reshape(-1).bool()
    lengths = {key: len(value) for key, value in out.items()}
    if len(set(lengths.values())) > 1:
        raise DetkitError(f"{kind} for image index {index} has mismatched lengths {lengths}.")
    return out
