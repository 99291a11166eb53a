"""The TIDE error breakdown (Bolya et al., "TIDE: A General Toolbox for Identifying Object Detection Errors",
ECCV 2020, §2): every false positive and false negative at IoU 0.5 gets one error type, and each type's dAP50 is
the AP50 gained by an oracle that fixes all errors of that type and nothing else.

Glossary:
    ground truth   a COCO dict (images, annotations with bbox x, y, w, h in absolute pixels, categories); a crowd
                   (iscrowd = 1, VOC "difficult") box is never a positive, and a detection on it is not an error
    results        COCO results: {"image_id", "category_id", "bbox" (x, y, w, h), "score"}; the 100 best per image
                   count, as COCO's maxDets
    t_f / t_b      foreground IoU 0.5 and background IoU 0.1, the paper's thresholds (§2.1)
    AP50           TIDE's own: per class, COCO's 101-point interpolated precision at IoU 0.5, averaged over the
                   classes that have ground truth (close to, not always equal to, COCOeval's AP50)

Error types (§2.2), tested in this order for a detection that is not a true positive:
    bkg    background: IoU < t_b with every ground-truth box
    loc    localisation: right class, t_b <= IoU < t_f with a box of its class
    cls    classification: IoU >= t_f with a box of another class
    dupe   duplicate: IoU >= t_f with a box of its class that a higher-scoring detection already matched
    both   classification and localisation: t_b <= IoU < t_f with a box of another class
    miss   missed: a ground-truth box no detection matched and no cls / loc error points at
The oracle fixes (§2.3): cls and loc become the true positive of their box when that box is still unmatched and
they are its best-scoring cls / loc error (else they are removed); both, dupe and bkg are removed; a missed box is taken out of the positives. "FP" and "FN" fix all
false positives / all false negatives at once (the paper's special errors, §2.4). The test order and the fixes are
those of the authors' tidecv (quantify.py, errors/main_errors.py); unlike tidecv, a negative dAP (a binning effect)
is reported as it is, not clamped to 0.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from detkit.errors import DetkitError
from detkit.evaluation.coco import _check_results, _checked_ground_truth

FOREGROUND_IOU = 0.5  # t_f (§2.1)
BACKGROUND_IOU = 0.1  # t_b (§2.1)
MAX_DETECTIONS = 100  # per image, as COCOeval's maxDets[-1]
ERROR_TYPES = ("cls", "loc", "both", "dupe", "bkg", "miss")
ERROR_NAMES = {"cls": "classification", "loc": "localisation", "both": "cls + loc", "dupe": "duplicate",
               "bkg": "background", "miss": "missed"}
# 0, 0.01, ..., 1 as k / 100, as tidecv's ap.py: COCOeval's np.linspace puts some points one ulp off (0.35 ->
# 0.35000000000000003), which moves a recall of exactly 0.35 to the next point; like with like against tidecv.
_RECALL_POINTS = np.arange(101) / 100


@dataclass
class ErrorBreakdown:
    """The result of tide_errors.

    ap50: TIDE's AP50 (module docstring), nan without ground truth; dap: {"cls", ..., "miss", "FP", "FN"} ->
    AP50 gained by fixing that type (same scale as ap50); counts: {type: number of errors}; detections: the
    results (best 100 per image) each with "outcome" = "tp" or an error type, and "gt_index" (the annotation
    index it matched or blamed, or -1); missed: the indices into ground_truth["annotations"] of the missed boxes;
    per_image: {image_id: Counter of error types}.
    """

    ap50: float
    dap: dict[str, float]
    counts: dict[str, int]
    detections: list[dict] = field(default_factory=list)
    missed: list[int] = field(default_factory=list)
    per_image: dict[int, Counter] = field(default_factory=dict)


def tide_errors(ground_truth: Mapping[str, Any], results: Sequence[Mapping[str, Any]],
                foreground_iou: float = FOREGROUND_IOU, background_iou: float = BACKGROUND_IOU) -> ErrorBreakdown:
    """Classify every detection and every missed box (module docstring) and compute each error type's dAP50.

    Raises DetkitError for ground truth without its keys and results whose keys, image ids or category ids do not
    fit the ground truth (detkit.evaluation.coco's checks).
    """
    if not 0 < background_iou <= foreground_iou <= 1:
        raise DetkitError(f"tide_errors needs 0 < background_iou <= foreground_iou <= 1, got {background_iou} "
                          f"and {foreground_iou}.")
    gt = _checked_ground_truth(ground_truth)
    _check_results(results, gt)
    image_ids = [int(image["id"]) for image in gt["images"]]
    category_ids = sorted(int(c["id"]) for c in gt["categories"])
    gt_by_image: dict[int, list[int]] = defaultdict(list)
    for index, ann in enumerate(gt["annotations"]):
        gt_by_image[int(ann["image_id"])].append(index)
    dets_by_image: dict[int, list[dict]] = defaultdict(list)
    for result in results:
        dets_by_image[int(result["image_id"])].append(dict(result))

    detections: list[dict] = []
    missed: list[int] = []
    per_image: dict[int, Counter] = {}
    for image_id in image_ids:
        anns = [gt["annotations"][i] | {"_index": i} for i in gt_by_image.get(image_id, [])]
        dets = sorted(dets_by_image.get(image_id, []), key=lambda d: -float(d["score"]))[:MAX_DETECTIONS]
        image_dets, image_missed = _classify_image(dets, anns, foreground_iou, background_iou)
        detections += image_dets
        missed += image_missed
        per_image[image_id] = Counter(d["outcome"] for d in image_dets if d["outcome"] != "tp")
        per_image[image_id]["miss"] += len(image_missed)

    # A box blamed by several cls / loc errors is given by the fix to the best-scoring of them, whichever type is
    # fixed (tidecv's BestGTMatch); the others are removed.
    best: dict[int, dict] = {}
    for det in detections:
        if det["outcome"] in ("cls", "loc") and det["gt_free"]:
            if det["gt_index"] not in best or float(det["score"]) > float(best[det["gt_index"]]["score"]):
                best[det["gt_index"]] = det
    for det in detections:
        det["gt_best"] = best.get(det["gt_index"]) is det
    positives = Counter(int(a["category_id"]) for a in gt["annotations"] if not a["iscrowd"])
    classes = [c for c in category_ids if positives[c] > 0]
    missed_per_class = Counter(int(gt["annotations"][i]["category_id"]) for i in missed)
    base = _mean_ap(_fixed(detections, ()), positives, classes)
    dap = {kind: _mean_ap(_fixed(detections, (kind,)), positives, classes) - base for kind in ERROR_TYPES[:-1]}
    dap["miss"] = _mean_ap(_fixed(detections, ()), positives - missed_per_class, classes) - base
    dap["FP"] = _mean_ap(_fixed(detections, ERROR_TYPES[:-1], drop_all=True), positives, classes) - base
    all_unmatched = positives - Counter(d["category_id"] for d in detections if d["outcome"] == "tp")
    dap["FN"] = _mean_ap(_fixed(detections, ()), positives - all_unmatched, classes) - base
    counts = {kind: sum(1 for d in detections if d["outcome"] == kind) for kind in ERROR_TYPES[:-1]}
    counts["miss"] = len(missed)
    return ErrorBreakdown(ap50=base, dap=dap, counts=counts, detections=detections, missed=missed,
                          per_image=per_image)


def box_iou_xywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(A, B) IoU of boxes x, y, w, h (absolute pixels); an empty side gives an empty matrix."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    inter_w = np.minimum(a[:, None, 0] + a[:, None, 2], b[None, :, 0] + b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    inter_h = np.minimum(a[:, None, 1] + a[:, None, 3], b[None, :, 1] + b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(inter_w, 0, None) * np.clip(inter_h, 0, None)
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def _crowd_overlap(dets: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """(D, C) intersection over the detection's area, COCO's overlap with a crowd box."""
    iou = box_iou_xywh(dets, crowd)
    if iou.size == 0:
        return iou
    area_d = (dets[:, 2] * dets[:, 3])[:, None]
    area_c = (crowd[:, 2] * crowd[:, 3])[None, :]
    inter = iou * (area_d + area_c) / (1 + iou)
    return inter / np.maximum(area_d, 1e-12)


def _classify_image(dets: list[dict], anns: list[dict], t_f: float, t_b: float) -> tuple[list[dict], list[int]]:
    """Outcomes of one image's detections (best first) and the annotation indices of its missed boxes."""
    real = [a for a in anns if not a["iscrowd"]]
    crowd = [a for a in anns if a["iscrowd"]]
    det_boxes = np.array([d["bbox"] for d in dets], dtype=np.float64).reshape(-1, 4)
    iou = box_iou_xywh(det_boxes, np.array([a["bbox"] for a in real]).reshape(-1, 4))
    crowd_overlap = _crowd_overlap(det_boxes, np.array([a["bbox"] for a in crowd]).reshape(-1, 4))
    same = np.array([[int(d["category_id"]) == int(a["category_id"]) for a in real] for d in dets],
                    dtype=bool).reshape(len(dets), len(real))
    taken = np.zeros(len(real), dtype=bool)
    outcomes = []
    # COCO matching at t_f: best first, each box at most once, the unmatched box of the class with the highest IoU.
    for i, det in enumerate(dets):
        candidates = np.where(same[i] & ~taken, iou[i], -1.0)
        j = int(candidates.argmax()) if len(real) else -1
        if j >= 0 and candidates[j] >= t_f:
            taken[j] = True
            outcomes.append(("tp", j))
        elif any(crowd_overlap[i, c] >= t_f and int(a["category_id"]) == int(det["category_id"])
                 for c, a in enumerate(crowd)):
            outcomes.append(("ignored", -1))
        else:
            outcomes.append((None, -1))
    blamed = np.zeros(len(real), dtype=bool)
    for i, (outcome, _) in enumerate(outcomes):
        if outcome is None:
            outcomes[i] = _error_type(iou[i], same[i], taken, t_f, t_b)
            if outcomes[i][0] in ("cls", "loc"):
                blamed[outcomes[i][1]] = True
    kept = []
    for det, (outcome, j) in zip(dets, outcomes):
        if outcome != "ignored":
            kept.append({**det, "category_id": int(det["category_id"]), "outcome": outcome,
                         "gt_index": real[j]["_index"] if j >= 0 else -1,
                         "gt_category_id": int(real[j]["category_id"]) if j >= 0 else -1,
                         "gt_free": bool(j >= 0 and not taken[j])})
    missed = [a["_index"] for j, a in enumerate(real) if not taken[j] and not blamed[j]]
    return kept, missed


def _error_type(iou: np.ndarray, same: np.ndarray, taken: np.ndarray, t_f: float, t_b: float) -> tuple[str, int]:
    """(type, box index) of one false positive from its IoU with the image's boxes (order of the module docstring)."""
    if iou.size == 0 or iou.max() < t_b:
        return "bkg", -1
    own = np.where(same, iou, -1.0)
    other = np.where(same, -1.0, iou)
    j_own, j_other = int(own.argmax()), int(other.argmax())
    if t_b <= own[j_own] < t_f:
        return "loc", j_own
    if other[j_other] >= t_f:
        return "cls", j_other
    if own[j_own] >= t_f:
        return "dupe", j_own
    return "both", j_other


def _fixed(detections: list[dict], kinds: tuple[str, ...], drop_all: bool = False) -> list[tuple[int, float, bool]]:
    """(category id, score, is true positive) of every detection after the oracle fixed the errors of `kinds`."""
    out = []
    for det in detections:
        outcome = det["outcome"]
        if outcome == "tp":
            out.append((det["category_id"], float(det["score"]), True))
        elif outcome not in kinds:
            out.append((det["category_id"], float(det["score"]), False))
        elif not drop_all and outcome in ("cls", "loc") and det["gt_free"] and det["gt_best"]:
            out.append((det["gt_category_id"], float(det["score"]), True))
    return out


def _mean_ap(scored: list[tuple[int, float, bool]], positives: Counter, classes: list[int]) -> float:
    """Mean over `classes` of the 101-point interpolated AP; a class left with no positives scores 0 (as TIDE)."""
    if not classes:
        return float("nan")
    by_class: dict[int, list[tuple[float, bool]]] = defaultdict(list)
    for category_id, score, tp in scored:
        by_class[category_id].append((score, tp))
    return float(np.mean([_ap(by_class[c], positives[c]) for c in classes]))


def _ap(scored: list[tuple[float, bool]], num_positives: int) -> float:
    """COCO's 101-point interpolated AP of (score, is true positive) pairs against num_positives boxes."""
    if num_positives <= 0 or not scored:
        return 0.0
    tp = np.array([t for _, t in sorted(scored, key=lambda s: -s[0])], dtype=np.float64)
    tp_sum, fp_sum = np.cumsum(tp), np.cumsum(1 - tp)
    recall = tp_sum / num_positives
    precision = np.maximum.accumulate((tp_sum / (tp_sum + fp_sum))[::-1])[::-1]  # the precision envelope
    indices = np.searchsorted(recall, _RECALL_POINTS, side="left")
    return float(np.where(indices < len(precision), precision[np.minimum(indices, len(precision) - 1)], 0).mean())
