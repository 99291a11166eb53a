"""Two runs on the same test split side by side: AP per class, and the TIDE errors that changed (compare.html).

Both runs' detections are scored against the first run's ground truth; the two must hold the same images and
categories (ids and names), or the comparison is refused (a DetkitError naming the difference).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from detkit.errors import DetkitError
from detkit.evaluation.errors import ERROR_NAMES, ERROR_TYPES, tide_errors
from detkit.evaluation.per_class import TABLE_COLUMNS, class_report
from detkit.report import plots
from detkit.report.html import Page
from detkit.report.report import FIGURES_DIR


def write_comparison(run_a: Any, run_b: Any, out_dir: str | Path, labels: tuple[str, str] | None = None) -> Path:
    """Write <out_dir>/compare.html (figures in report_figures/) for two ReportInputs (detkit.report.run.load_run)."""
    _check_same_split(run_a.ground_truth, run_b.ground_truth)
    labels = labels or (run_a.title.split(": ")[-1], run_b.title.split(": ")[-1])
    if labels[0] == labels[1]:
        labels = (f"A: {labels[0]}", f"B: {labels[1]}")
    gt = run_a.ground_truth
    page = Page(Path(out_dir), f"detkit comparison: {labels[0]} vs {labels[1]}", figures_dir=Path(out_dir) / FIGURES_DIR)
    reports = [class_report(gt, run.results) for run in (run_a, run_b)]
    page.heading("AP per class", "ap")
    page.note(f"COCO AP (IoU 0.50:0.95) and AP50 per class in percent; delta = {labels[1]} - {labels[0]}.")
    rows = []
    for k, name in enumerate(reports[0].names):
        a, b = (r.table["AP"][k] for r in reports)
        a50, b50 = (r.table["AP50"][k] for r in reports)
        rows.append([name, int(reports[0].num_gt[k]), 100 * a, 100 * b, 100 * (b - a), 100 * a50, 100 * b50,
                     100 * (b50 - a50)])
    page.table(["class", "boxes", f"AP {labels[0]}", f"AP {labels[1]}", "delta", f"AP50 {labels[0]}",
                f"AP50 {labels[1]}", "delta"], rows)
    page.figure(plots.compare_ap(reports[0].names, reports[0].table["AP"], reports[1].table["AP"], labels),
                "compare_ap_per_class", "AP per class of the two runs", "no class has ground truth")
    page.heading("Errors that changed (TIDE)", "errors")
    breakdowns = [tide_errors(gt, run.results) for run in (run_a, run_b)]
    page.table(["error type", f"count {labels[0]}", f"count {labels[1]}", "change", f"dAP50 {labels[0]}",
                f"dAP50 {labels[1]}", "change"],
               [[ERROR_NAMES[t], breakdowns[0].counts[t], breakdowns[1].counts[t],
                 f"{breakdowns[1].counts[t] - breakdowns[0].counts[t]:+d}", 100 * breakdowns[0].dap[t],
                 100 * breakdowns[1].dap[t], 100 * (breakdowns[1].dap[t] - breakdowns[0].dap[t])]
                for t in ERROR_TYPES])
    page.figure(plots.compare_errors(breakdowns[0].dap, breakdowns[1].dap, labels), "compare_errors",
                "dAP50 per error type of the two runs", "")
    page.heading("Summary", "summary")
    page.table(["run", *TABLE_COLUMNS[:3], "TIDE AP50"],
               [[label, *(100 * _mean(r.table[c]) for c in TABLE_COLUMNS[:3]), 100 * b.ap50]
                for label, r, b in zip(labels, reports, breakdowns)])
    return page.save("compare.html")


def _mean(values: Any) -> float:
    import numpy as np

    valid = values[~np.isnan(values)]
    return float(valid.mean()) if valid.size else float("nan")


def _check_same_split(gt_a: dict, gt_b: dict) -> None:
    images_a, images_b = ({int(i["id"]) for i in gt["images"]} for gt in (gt_a, gt_b))
    if images_a != images_b:
        raise DetkitError(f"the two runs were tested on different images ({len(images_a)} and {len(images_b)}, "
                          f"{len(images_a ^ images_b)} not in both): compare runs on the same test split.")
    cats_a, cats_b = ({int(c["id"]): c.get("name") for c in gt["categories"]} for gt in (gt_a, gt_b))
    if cats_a != cats_b:
        raise DetkitError(f"the two runs have different classes ({sorted(cats_a.values())} and "
                          f"{sorted(cats_b.values())}): compare runs with the same class list.")
