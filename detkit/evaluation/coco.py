"""COCO-style box evaluation with faster-coco-eval or pycocotools.

Glossary:
    D          detections in one image
    K          foreground classes; detector labels are 1..K, background = 0
    category   a COCO category id (any int), mapped from a label by `label_to_category_id`
    boxes      detector boxes are x1, y1, x2, y2 in absolute pixels, float32; COCO results are x, y, w, h
    metrics    floats in [0, 1]; a stat with no ground truth in its range (e.g. APs without small objects) is nan
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from detkit.errors import DetkitError

BACKENDS = ("auto", "faster_coco_eval", "pycocotools")

# Order of COCOeval.stats[:12]; the names are the keys evaluate_coco returns.
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
# The COCOeval area range (Params.areaRngLbl) each of those stats is taken over.
STAT_AREAS = ("all", "all", "all", "small", "medium", "large", "all", "all", "all", "small", "medium", "large")
SUMMARY_KEYS = tuple(f"bbox/{name}" for name in STAT_NAMES[:9])


def detections_to_coco(
    outputs: Sequence[Mapping[str, torch.Tensor]],
    image_ids: Sequence[int],
    label_to_category_id: Mapping[int, int],
) -> list[dict]:
    """Turn per-image detections (boxes x1,y1,x2,y2 absolute pixels, labels 1..K, scores) into COCO results."""
    if len(outputs) != len(image_ids):
        raise DetkitError(f"detections_to_coco got {len(outputs)} outputs but {len(image_ids)} image ids.")
    results = []
    for index, (output, image_id) in enumerate(zip(outputs, image_ids)):
        for key in ("boxes", "labels", "scores"):
            if key not in output:
                raise DetkitError(f"Detections for image index {index} have no '{key}' key.")
        boxes = torch.as_tensor(output["boxes"]).detach().to("cpu", torch.float64).reshape(-1, 4)
        labels = torch.as_tensor(output["labels"]).detach().cpu().reshape(-1).tolist()
        scores = torch.as_tensor(output["scores"]).detach().cpu().reshape(-1).tolist()
        if not len(boxes) == len(labels) == len(scores):
            raise DetkitError(
                f"Detections for image index {index} have {len(boxes)} boxes, {len(labels)} labels "
                f"and {len(scores)} scores; they must be equal."
            )
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        for box, label, score in zip(xywh, labels, scores):
            if label not in label_to_category_id:
                raise DetkitError(
                    f"Detection label {label} in image index {index} has no COCO category "
                    f"(known labels: {sorted(label_to_category_id)})."
                )
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(label_to_category_id[label]),
                    "bbox": [float(v) for v in box],
                    "score": float(score),
                }
            )
    return results


def evaluate_coco(
    coco_gt: Mapping[str, Any],
    results: Sequence[Mapping[str, Any]],
    backend: str = "auto",
    class_names: Sequence[str] | None = None,
) -> dict[str, float]:
    """COCO box AP/AR of `results` (xywh) against `coco_gt`, plus AP per class as "bbox/AP-<name>"."""
    gt = _checked_ground_truth(coco_gt)
    category_ids = sorted(int(c["id"]) for c in gt["categories"])
    names = _category_names(gt, category_ids, class_names)
    _check_results(results, gt)
    backend = _resolve_backend(backend)
    if len(results) == 0:
        return _empty_results_metrics(gt, category_ids, names)
    stats, precision = _run_cocoeval(gt, [dict(r) for r in results], backend)
    metrics = {key: _nan_if_missing(stats[i]) for i, key in enumerate(SUMMARY_KEYS)}
    for k, name in enumerate(names):
        # precision: [IoU thresholds, recall points, categories, area ranges, max dets]; area "all", 100 dets.
        valid = precision[:, :, k, 0, -1]
        valid = valid[valid > -1]
        metrics[f"bbox/AP-{name}"] = float(valid.mean()) if valid.size else math.nan
    return metrics


def coco_stats(coco_gt: Mapping[str, Any], results: Sequence[Mapping[str, Any]], backend: str = "auto") -> list[float]:
    """The 12 raw COCOeval.stats of a non-empty results list (-1 where a range has no ground truth)."""
    gt = _checked_ground_truth(coco_gt)
    _check_results(results, gt)
    if len(results) == 0:
        raise DetkitError("coco_stats needs at least one detection result.")
    stats, _ = _run_cocoeval(gt, [dict(r) for r in results], _resolve_backend(backend))
    return [float(s) for s in stats[:12]]


def format_coco_table(metrics: Mapping[str, float]) -> str:
    """A small fixed-width table of the summary metrics and the per-class AP, values in percent."""
    lines = [" ".join(f"{name:>6}" for name in STAT_NAMES[:9])]
    lines.append(" ".join(f"{_percent(metrics.get(key, math.nan)):>6}" for key in SUMMARY_KEYS))
    per_class = [(key[len("bbox/AP-"):], value) for key, value in metrics.items() if key.startswith("bbox/AP-")]
    if per_class:
        width = max(len("class"), *(len(name) for name, _ in per_class))
        lines.append("")
        lines.append(f"{'class':<{width}}  {'AP':>6}")
        lines.extend(f"{name:<{width}}  {_percent(value):>6}" for name, value in per_class)
    return "\n".join(lines)


def _resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise DetkitError(f"Unknown COCO evaluation backend '{backend}'; choose one of {', '.join(BACKENDS)}.")
    if backend != "auto":
        return backend
    try:
        import faster_coco_eval  # noqa: F401
    except ImportError:
        return "pycocotools"
    return "faster_coco_eval"


def coco_accumulated(coco_gt: Mapping[str, Any], results: Sequence[Mapping[str, Any]],
                     backend: str = "auto") -> dict[str, np.ndarray]:
    """The evaluator's accumulated arrays of non-empty results: "precision" and "scores" [T, R, K, A, M] (-1 where a
    class has no ground truth; T = IoU 0.50:0.95, R = 101 recall points, K = sorted category ids, A = all / small /
    medium / large, M = maxDets 1 / 10 / 100), "stats" (12), "iou_thresholds", "recall_thresholds", "category_ids"."""
    gt = _checked_ground_truth(coco_gt)
    _check_results(results, gt)
    if len(results) == 0:
        raise DetkitError("coco_accumulated needs at least one detection result.")
    evaluator = _cocoeval(gt, [dict(r) for r in results], _resolve_backend(backend))
    return {"precision": np.asarray(evaluator.eval["precision"]), "scores": np.asarray(evaluator.eval["scores"]),
            "stats": np.asarray(evaluator.stats, dtype=np.float64),
            "iou_thresholds": np.asarray(evaluator.params.iouThrs), "recall_thresholds": np.asarray(
                evaluator.params.recThrs), "category_ids": np.asarray(sorted(int(c["id"]) for c in gt["categories"]))}


def _run_cocoeval(gt: dict, results: list[dict], backend: str) -> tuple[np.ndarray, np.ndarray]:
    """Run the chosen library quietly on `gt` and `results`, which it mutates; return its stats and precision."""
    evaluator = _cocoeval(gt, results, backend)
    return np.asarray(evaluator.stats, dtype=np.float64), np.asarray(evaluator.eval["precision"])


def _cocoeval(gt: dict, results: list[dict], backend: str) -> Any:
    """The chosen library's evaluator, run quietly (evaluate, accumulate, summarize) on `gt` and `results`."""
    with contextlib.redirect_stdout(io.StringIO()):
        if backend == "faster_coco_eval":
            from faster_coco_eval import COCO, COCOeval_faster

            coco = COCO(gt)
            evaluator = COCOeval_faster(coco, coco.loadRes(results), iouType="bbox", print_function=_silent)
        else:
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval

            coco = COCO()
            coco.dataset = gt
            coco.createIndex()
            evaluator = COCOeval(coco, coco.loadRes(results), iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def _checked_ground_truth(coco_gt: Mapping[str, Any]) -> dict:
    """Check the ground truth's keys; return one deep copy (the libraries mutate it), 'id', 'area', 'iscrowd' filled."""
    for key in ("images", "annotations", "categories"):
        if key not in coco_gt:
            raise DetkitError(f"COCO ground truth has no '{key}' key.")
    for index, ann in enumerate(coco_gt["annotations"]):
        for key in ("image_id", "category_id", "bbox"):
            if key not in ann:
                raise DetkitError(f"COCO ground-truth annotation index {index} has no '{key}' key.")
    gt = copy.deepcopy(dict(coco_gt))
    for index, ann in enumerate(gt["annotations"]):
        ann.setdefault("id", index + 1)
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", float(ann["bbox"][2]) * float(ann["bbox"][3]))
    return gt


def _empty_results_metrics(gt: dict, category_ids: list[int], names: list[str]) -> dict[str, float]:
    """evaluate_coco's metrics for no detections: 0.0 where a stat's area range or class has ground truth, else nan."""
    from pycocotools.cocoeval import Params

    params = Params(iouType="bbox")
    area_ranges = dict(zip(params.areaRngLbl, params.areaRng))
    # As COCOeval: only annotations of listed images and categories count, and a crowd box is never a positive.
    image_ids = {image["id"] for image in gt["images"]}
    known_categories = {c["id"] for c in gt["categories"]}
    positives = [
        ann for ann in gt["annotations"]
        if ann["image_id"] in image_ids and ann["category_id"] in known_categories and not ann["iscrowd"]
    ]

    metrics = {key: _zero_or_nan(positives, area_ranges[area]) for key, area in zip(SUMMARY_KEYS, STAT_AREAS)}
    for category_id, name in zip(category_ids, names):
        of_class = [ann for ann in positives if int(ann["category_id"]) == category_id]
        metrics[f"bbox/AP-{name}"] = _zero_or_nan(of_class, area_ranges["all"])
    return metrics


def _zero_or_nan(annotations: list[dict], area_range: Sequence[float]) -> float:
    """0.0 when some annotation's 'area' lies in the range, bounds included as in COCOeval, else nan."""
    low, high = area_range
    return 0.0 if any(low <= ann["area"] <= high for ann in annotations) else math.nan


def _check_results(results: Sequence[Mapping[str, Any]], gt: dict) -> None:
    image_ids = {int(image["id"]) for image in gt["images"]}
    category_ids = {int(c["id"]) for c in gt["categories"]}
    for index, result in enumerate(results):
        for key in ("image_id", "category_id", "bbox", "score"):
            if key not in result:
                raise DetkitError(f"COCO result index {index} has no '{key}' key.")
        if int(result["image_id"]) not in image_ids:
            raise DetkitError(f"COCO result index {index} has image_id {result['image_id']}, not in the ground truth.")
        if int(result["category_id"]) not in category_ids:
            raise DetkitError(
                f"COCO result index {index} has category_id {result['category_id']}, not in the ground truth."
            )


def _category_names(gt: dict, category_ids: list[int], class_names: Sequence[str] | None) -> list[str]:
    """Names in sorted category-id order: `class_names` when given, else the ground truth's category names."""
    if class_names is None:
        by_id = {int(c["id"]): str(c.get("name", c["id"])) for c in gt["categories"]}
        return [by_id[i] for i in category_ids]
    if len(class_names) != len(category_ids):
        raise DetkitError(
            f"class_names has {len(class_names)} names but the COCO ground truth has {len(category_ids)} "
            "categories; pass one name per category, in category-id order, without background."
        )
    return [str(name) for name in class_names]


def _nan_if_missing(value: float) -> float:
    return float(value) if value >= 0 else math.nan


def _percent(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:.1f}"


def _silent(*args: Any, **kwargs: Any) -> None:
    return None
