"""The error-analysis report of one evaluation: report.html (self-contained) and its figures as PNG.

Sections: summary and proposal recall, training curves, per-class table (COCO AP, AP50, AP75, APs/m/l, VOC AP,
best-F1 threshold), AP per class, PR curves (IoU 0.5 / 0.75), confusion matrix, TIDE error breakdown, box sizes and
aspect ratios against the anchors, the worst images. A section with nothing to show says so and why.

Boxes: COCO x, y, w, h in absolute pixels of the original images; anchor sizes in input pixels after the resize.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detkit.evaluation.coco import _check_results, _checked_ground_truth
from detkit.evaluation.confusion import IOU_THRESH, SCORE_THRESH, confusion_matrix
from detkit.evaluation.errors import ERROR_NAMES, ERROR_TYPES, tide_errors
from detkit.evaluation.per_class import TABLE_COLUMNS, class_report
from detkit.report import plots
from detkit.report.html import Page
from detkit.report.images import worst_images_figure

FIGURES_DIR = "report_figures"


@dataclass
class ReportInputs:
    """What a report is made from.

    ground_truth / results: COCO dicts (results may be empty); stages: (stage name, metrics.jsonl records) per
    stage, None when there is no run folder; metrics: metrics.json's (for proposal recall); image_paths: image id
    -> file, for the worst images; anchor_sizes / anchor_ratios: the RPN's (empty without an RPN); resize: (test
    min_size, max_size) of the model's preprocessor, None to measure boxes in original pixels; notes: lines shown
    at the top (e.g. what was missing).
    """

    ground_truth: Mapping[str, Any]
    results: Sequence[Mapping[str, Any]]
    title: str = "detkit error analysis"
    stages: list[tuple[str, list[dict]]] | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    image_paths: Mapping[int, Path] = field(default_factory=dict)
    anchor_sizes: Sequence[float] = ()
    anchor_ratios: Sequence[float] = ()
    resize: tuple[int, int] | None = None
    notes: list[str] = field(default_factory=list)


def write_report(inputs: ReportInputs, out_dir: str | Path, html_name: str = "report.html") -> Path:
    """Write <out_dir>/report.html and its PNGs in <out_dir>/report_figures/; return the page's path.

    Raises DetkitError when the results do not fit the ground truth (an image or category id it lacks).
    """
    gt = _checked_ground_truth(inputs.ground_truth)
    _check_results(inputs.results, gt)
    results = [dict(r) for r in inputs.results]
    page = Page(Path(out_dir), inputs.title, figures_dir=Path(out_dir) / FIGURES_DIR)
    report = class_report(gt, results)
    names = {cid: name for cid, name in zip(report.category_ids, report.names)}
    _summary(page, inputs, gt, results, report)
    _training(page, inputs.stages)
    _per_class(page, report, bool(results))
    page.heading("Confusion matrix", "confusion")
    if results:
        cm = confusion_matrix(gt, results, IOU_THRESH, SCORE_THRESH)
        page.figure(plots.confusion(cm), "confusion_matrix",
                    f"Rows: ground truth (and background: false positives); columns: detections (and missed: false "
                    f"negatives). One-to-one matching at IoU {IOU_THRESH}, detections with score >= {SCORE_THRESH} "
                    "(mmdetection's defaults).", "no detection and no ground truth at this threshold")
    else:
        page.empty("the detections file holds no detections")
    breakdown = tide_errors(gt, results)
    page.heading("Error breakdown (TIDE)", "errors")
    page.note("Bolya et al., ECCV 2020: each false positive and missed box gets one error type (foreground IoU 0.5, "
              "background IoU 0.1); dAP50 is the AP50 an oracle gains by fixing all errors of that type alone. "
              "AP50 here is TIDE's own (101-point, per class at IoU 0.5), close to the COCO table's.")
    if any(report.num_gt > 0):
        page.figure(plots.error_breakdown(breakdown), "error_breakdown", "dAP50 and count per error type", "")
        page.table(["error type", "count", "dAP50"],
                   [[ERROR_NAMES[t], breakdown.counts[t], 100 * breakdown.dap[t]] for t in ERROR_TYPES] +
                   [["all false positives", sum(breakdown.counts[t] for t in ERROR_TYPES[:-1]),
                     100 * breakdown.dap["FP"]],
                    ["all false negatives", "", 100 * breakdown.dap["FN"]]])
    else:
        page.empty("the split has no ground-truth boxes")
    _box_statistics(page, gt, inputs)
    page.heading("Images with the most errors", "worst")
    if not inputs.image_paths:
        page.empty("no image files were given (analyze.py --images DIR)")
    else:
        fig, note = worst_images_figure(breakdown, gt, inputs.image_paths, names, SCORE_THRESH)
        page.figure(fig, "worst_images", note, note)
    return page.save(html_name)


def _summary(page: Page, inputs: ReportInputs, gt: dict, results: list[dict], report: Any) -> None:
    page.heading("Summary", "summary")
    for line in inputs.notes:
        page.note(line)
    num_images, num_boxes = len(gt["images"]), int(report.num_gt.sum())
    page.note(f"{num_images} images, {num_boxes} ground-truth boxes in {len(report.names)} classes, "
              f"{len(results)} detections.")
    if not results:
        page.empty("the detections file holds no detections: every ground-truth box is missed")
    summary = [(k.split("/", 1)[1], 100 * v) for k, v in inputs.metrics.items()
               if k.startswith("bbox/") and "-" not in k and isinstance(v, (int, float))]
    if summary:
        page.table([name for name, _ in summary], [[v for _, v in summary]])
    for prefix, what in (("rpn/", "the RPN's proposals on data.test"),
                         ("store/", "the proposal store of data.test, tools/propose.py's recall.json")):
        recall = [(k, 100 * v) for k, v in inputs.metrics.items() if k.startswith(prefix) and isinstance(v, float)
                  and k[len(prefix):].startswith(("AR@", "recall@"))]
        if recall:
            page.note(f"Proposal recall in percent (AR: IoU 0.50:0.95; recall@t: at IoU t), {what}:")
            page.table([k[len(prefix):] for k, _ in recall], [[v for _, v in recall]])
    absent = [report.names[k] for k in range(len(report.names)) if report.num_gt[k] == 0]
    if absent:
        page.empty(f"no ground truth in this split for {len(absent)} class(es): {', '.join(absent[:20])}"
                   f"{' ...' if len(absent) > 20 else ''} (shown as '-' in the table, left out of the figures)")


def _training(page: Page, stages: list[tuple[str, list[dict]]] | None) -> None:
    page.heading("Training curves", "training")
    if stages is None:
        page.empty("no training run folder: this report comes from an evaluation (tools/eval.py, or analyze.py "
                   "--detections --gt)")
        return
    if not stages:
        page.empty("the run folder and its stage folders hold no metrics.jsonl")
        return
    page.figure(plots.training_curves(stages), "training_curves",
                "Losses, learning rate and (train.eval_period) evaluation points, one row per stage's metrics.jsonl",
                "the metrics.jsonl files hold no loss or learning-rate records")


def _per_class(page: Page, report: Any, has_results: bool) -> None:
    page.heading("Per-class AP", "per-class")
    page.note("COCO AP (IoU 0.50:0.95), AP50, AP75, AP small / medium / large and Pascal VOC AP (IoU 0.5, area), in "
              "percent; best F1 at IoU 0.5 and the detection score that reaches it (a per-class score threshold).")
    rows = []
    for k, name in enumerate(report.names):
        rows.append([name, int(report.num_gt[k]), *[100 * report.table[c][k] for c in TABLE_COLUMNS],
                     100 * report.best_f1[k], _threshold(report.best_f1_threshold[k])])
    page.table(["class", "boxes", *TABLE_COLUMNS, "best F1", "at score"], rows)
    page.heading("AP per class and precision-recall curves", "pr")
    if not has_results:
        page.empty("the detections file holds no detections (AP 0 for every class with ground truth)")
        return
    page.figure(plots.ap_per_class(report), "ap_per_class", "AP per class, best first", "no class has ground truth")
    page.figure(plots.pr_curves(report), "pr_curves",
                "Precision-recall per class at IoU 0.5 (solid) and 0.75 (dashed): the COCO evaluator's precision "
                "array (area all, 100 detections per image)", "no class has ground truth")


def _box_statistics(page: Page, gt: dict, inputs: ReportInputs) -> None:
    from detkit.modeling.preprocess import resized_size

    page.heading("Box sizes and aspect ratios against the anchors", "boxes")
    sizes = {int(image["id"]): (int(image["height"]), int(image["width"])) for image in gt["images"]
             if "height" in image and "width" in image}
    wh = []
    for ann in gt["annotations"]:
        if ann["iscrowd"] or float(ann["bbox"][2]) <= 0 or float(ann["bbox"][3]) <= 0:
            continue
        scale = 1.0
        if inputs.resize is not None and int(ann["image_id"]) in sizes:
            scale = resized_size(*sizes[int(ann["image_id"])], *inputs.resize)[0]
        wh.append((float(ann["bbox"][2]) * scale, float(ann["bbox"][3]) * scale))
    if not wh:
        page.empty("the split has no ground-truth boxes")
        return
    wh_array = np.array(wh)
    box_sizes, ratios = np.sqrt(wh_array[:, 0] * wh_array[:, 1]), wh_array[:, 1] / wh_array[:, 0]
    unit = "input pixels (after the model's resize)" if inputs.resize else "original image pixels"
    page.figure(plots.box_statistics(box_sizes, ratios, list(inputs.anchor_sizes), list(inputs.anchor_ratios)),
                "box_statistics", f"Ground-truth boxes of the split, in {unit}", "no boxes")
    if inputs.anchor_sizes:
        best = _best_anchor_iou(wh_array, inputs.anchor_sizes, inputs.anchor_ratios)
        page.note(f"Centred on a box, the best anchor shape has IoU < 0.7 (the RPN's positive threshold, Ren et al. "
                  f"2015 §3.1.2) for {100 * np.mean(best < 0.7):.1f}% of the boxes and < 0.5 for "
                  f"{100 * np.mean(best < 0.5):.1f}%: those rely on the RPN's best-anchor rule and on regression.")


def _best_anchor_iou(wh: np.ndarray, sizes: Sequence[float], ratios: Sequence[float]) -> np.ndarray:
    """(N,) best IoU of each box shape (w, h) with an anchor shape, both centred (size**2 area, h / w = ratio)."""
    anchors = np.array([(s / math.sqrt(r), s * math.sqrt(r)) for s in sizes for r in ratios])
    inter = np.minimum(wh[:, None, 0], anchors[None, :, 0]) * np.minimum(wh[:, None, 1], anchors[None, :, 1])
    union = (wh[:, 0] * wh[:, 1])[:, None] + (anchors[:, 0] * anchors[:, 1])[None, :] - inter
    return (inter / union).max(axis=1)


def _threshold(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"
