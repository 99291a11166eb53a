"""Per-class figures of one COCO evaluation: the AP table, precision-recall curves and the best-F1 score threshold.

Everything here is read from the COCO evaluator's accumulated arrays (detkit.evaluation.coco.coco_accumulated:
faster-coco-eval, else pycocotools), so the curves and the table come from the same evaluation as metrics.json;
VOC AP comes from detkit.evaluation.voc.

Glossary:
    K          classes, in sorted category-id order of the ground truth
    curve      precision at COCO's 101 recall points 0, 0.01, ..., 1 (interpolated: the precision envelope), area
               "all", 100 detections per image; nan where a class has no ground truth
    values     floats in [0, 1]; nan where a class has no ground truth (in that area range)
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from detkit.evaluation.coco import _checked_ground_truth, coco_accumulated
from detkit.evaluation.voc import evaluate_voc

TABLE_COLUMNS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "VOC AP")
CURVE_IOUS = (0.5, 0.75)


@dataclass
class ClassReport:
    """names (K); category_ids (K); num_gt (K) non-crowd boxes; table {column: (K,) array} over TABLE_COLUMNS;
    curves {IoU: (K, 101) precision}; recall (101,) points; best_f1 / best_f1_score / best_f1_threshold (K,): the
    highest F1 at IoU 0.5 on the curve and the detection score where it is reached (nan without ground truth)."""

    names: list[str]
    category_ids: list[int]
    num_gt: np.ndarray
    table: dict[str, np.ndarray] = field(default_factory=dict)
    curves: dict[float, np.ndarray] = field(default_factory=dict)
    recall: np.ndarray = field(default_factory=lambda: np.linspace(0.0, 1.0, 101))
    best_f1: np.ndarray = field(default_factory=lambda: np.zeros(0))
    best_f1_threshold: np.ndarray = field(default_factory=lambda: np.zeros(0))


def class_report(ground_truth: Mapping[str, Any], results: Sequence[Mapping[str, Any]],
                 backend: str = "auto") -> ClassReport:
    """Per-class AP table, PR curves at IoU 0.5 / 0.75 and best-F1 thresholds of COCO `results`.

    An empty `results` gives AP 0 for every class with ground truth (nan without) and curves of zeros. Raises
    DetkitError for ground truth or results that do not fit each other (detkit.evaluation.coco's checks).
    """
    gt = _checked_ground_truth(ground_truth)
    categories = sorted(gt["categories"], key=lambda c: int(c["id"]))
    ids = [int(c["id"]) for c in categories]
    names = [str(c.get("name", c["id"])) for c in categories]
    num_gt = np.array([sum(1 for a in gt["annotations"] if int(a["category_id"]) == i and not a["iscrowd"])
                       for i in ids])
    report = ClassReport(names=names, category_ids=ids, num_gt=num_gt)
    has_gt = num_gt > 0
    if len(results) == 0:
        zeros = np.where(has_gt, 0.0, np.nan)
        report.table = {column: zeros.copy() for column in TABLE_COLUMNS}
        report.curves = {iou: np.where(has_gt[:, None], 0.0, np.nan) * np.ones((len(ids), 101)) for iou in CURVE_IOUS}
        report.best_f1, report.best_f1_threshold = zeros.copy(), np.full(len(ids), np.nan)
        return report
    arrays = coco_accumulated(gt, results, backend)
    precision, scores = arrays["precision"], arrays["scores"]
    report.recall = arrays["recall_thresholds"]
    ious = [round(float(t), 2) for t in arrays["iou_thresholds"]]
    for column, area, iou in (("AP", 0, None), ("AP50", 0, 0.5), ("AP75", 0, 0.75), ("APs", 1, None),
                              ("APm", 2, None), ("APl", 3, None)):
        block = precision[:, :, :, area, -1] if iou is None else precision[ious.index(iou):ious.index(iou) + 1, :, :, area, -1]
        report.table[column] = np.array([_mean_valid(block[:, :, k]) for k in range(len(ids))])
    report.table["VOC AP"] = _voc_ap(gt, results, ids, names)
    for iou in CURVE_IOUS:
        curve = precision[ious.index(iou), :, :, 0, -1].T.astype(np.float64)  # (K, 101)
        report.curves[iou] = np.where(curve < 0, np.nan, curve)
    p50 = report.curves[0.5]
    s50 = scores[ious.index(0.5), :, :, 0, -1].T.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(p50 > 0, 2 * p50 * report.recall[None, :] / (p50 + report.recall[None, :]), 0.0)
    report.best_f1 = np.where(has_gt, f1.max(axis=1), np.nan)
    best = f1.argmax(axis=1)
    report.best_f1_threshold = np.array([s50[k, best[k]] if has_gt[k] and report.best_f1[k] > 0 else np.nan
                                         for k in range(len(ids))])
    return report


def _mean_valid(values: np.ndarray) -> float:
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else math.nan


def _voc_ap(gt: dict, results: Sequence[Mapping[str, Any]], ids: list[int], names: list[str]) -> np.ndarray:
    """(K,) Pascal VOC AP at IoU 0.5 (area under the precision envelope), crowd boxes as VOC's "difficult"."""
    label = {category_id: k + 1 for k, category_id in enumerate(ids)}
    dets: dict[int, list] = defaultdict(list)
    for r in results:
        dets[int(r["image_id"])].append(r)
    anns: dict[int, list] = defaultdict(list)
    for a in gt["annotations"]:
        anns[int(a["image_id"])].append(a)
    outputs, targets = [], []
    for image in gt["images"]:
        image_dets, image_anns = dets.get(int(image["id"]), []), anns.get(int(image["id"]), [])
        outputs.append({"boxes": _xyxy([d["bbox"] for d in image_dets]),
                        "labels": torch.tensor([label[int(d["category_id"])] for d in image_dets], dtype=torch.int64),
                        "scores": torch.tensor([float(d["score"]) for d in image_dets], dtype=torch.float64)})
        targets.append({"boxes": _xyxy([a["bbox"] for a in image_anns]),
                        "labels": torch.tensor([label[int(a["category_id"])] for a in image_anns], dtype=torch.int64),
                        "ignore": torch.tensor([bool(a["iscrowd"]) for a in image_anns], dtype=torch.bool)})
    metrics = evaluate_voc(outputs, targets, num_classes=len(ids), class_names=[str(k) for k in range(len(ids))])
    return np.array([metrics[f"voc/AP-{k}"] for k in range(len(ids))], dtype=np.float64)


def _xyxy(boxes: list) -> torch.Tensor:
    b = torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    return torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], dim=1)
