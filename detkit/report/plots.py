"""The report's figures, drawn with matplotlib (Agg, no display): each function returns a Figure, or None when it
has nothing to draw (the caller then writes a marked empty section).

Units: AP and precision / recall in percent on the axes; box sizes in input pixels after the model's resize
(sqrt(w * h), the unit of anchor sizes); aspect ratio = height / width, as detkit's anchors.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from detkit.evaluation.confusion import ConfusionMatrix  # noqa: E402
from detkit.evaluation.errors import ERROR_NAMES, ERROR_TYPES, ErrorBreakdown  # noqa: E402
from detkit.evaluation.per_class import ClassReport  # noqa: E402

ERROR_COLORS = {"tp": "#2ca02c", "cls": "#d62728", "loc": "#ff7f0e", "both": "#9467bd", "dupe": "#e377c2",
                "bkg": "#8c564b", "miss": "#1f77b4", "gt": "#ffffff"}
_LOSS_SKIP = ("lr", "time", "data_time", "img_per_s", "iter", "eta")


def training_curves(stages: Sequence[tuple[str, list[dict]]]) -> Figure | None:
    """One row per stage: its losses, its learning rate, and (when it evaluated) its AP, against the iteration."""
    stages = [(name, records) for name, records in stages if any("total_loss" in r or "lr" in r for r in records)]
    if not stages:
        return None
    has_eval = any(any("bbox/AP" in r for r in records) for _, records in stages)
    columns = 3 if has_eval else 2
    fig, axes = plt.subplots(len(stages), columns, figsize=(4.2 * columns, 2.8 * len(stages)), squeeze=False)
    for row, (name, records) in zip(axes, stages):
        train = [r for r in records if "lr" in r]
        keys = sorted({k for r in train for k, v in r.items() if k.startswith(("loss", "total_loss"))
                       and isinstance(v, (int, float))})
        for key in keys:
            points = [(r["iter"], r[key]) for r in train if key in r and _finite(r[key])]
            if points:
                row[0].plot(*zip(*points), label=key, linewidth=2.0 if key == "total_loss" else 1.0)
        row[0].set(title=f"{name}: losses", xlabel="iteration", ylabel="loss")
        if keys:
            row[0].legend(fontsize=7)
        lr = [(r["iter"], r["lr"]) for r in train if _finite(r.get("lr"))]
        if lr:
            row[1].plot(*zip(*lr), color="#444")
        row[1].set(title=f"{name}: learning rate", xlabel="iteration", ylabel="learning rate")
        if has_eval:
            evals = [(r["iter"], 100 * r["bbox/AP"], 100 * r.get("bbox/AP50", math.nan)) for r in records
                     if _finite(r.get("bbox/AP"))]
            if evals:
                its, ap, ap50 = zip(*evals)
                row[2].plot(its, ap, "o-", label="AP")
                row[2].plot(its, ap50, "s--", label="AP50")
                row[2].legend(fontsize=7)
            else:
                row[2].text(0.5, 0.5, "no evaluation in this stage", ha="center", va="center",
                            transform=row[2].transAxes)
            row[2].set(title=f"{name}: evaluation on data.test", xlabel="iteration", ylabel="AP (%)")
    fig.tight_layout()
    return fig


def ap_per_class(report: ClassReport) -> Figure | None:
    """Horizontal bars of AP and AP50 per class (worst at the top), classes without ground truth left out."""
    keep = [k for k in range(len(report.names)) if report.num_gt[k] > 0]
    if not keep:
        return None
    keep.sort(key=lambda k: report.table["AP"][k], reverse=True)
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.22 * len(keep)))
    y = np.arange(len(keep))
    ax.barh(y + 0.2, [100 * report.table["AP50"][k] for k in keep], height=0.4, label="AP50", color="#9ecae1")
    ax.barh(y - 0.2, [100 * report.table["AP"][k] for k in keep], height=0.4, label="AP (0.50:0.95)", color="#3182bd")
    ax.set_yticks(y, [report.names[k] for k in keep], fontsize=8 if len(keep) < 40 else 6)
    ax.set(xlabel="AP (%)", xlim=(0, 100), title="AP per class (COCO evaluation)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def pr_curves(report: ClassReport) -> Figure | None:
    """A small precision-recall plot per class with ground truth, at IoU 0.5 and 0.75 (the COCO evaluator's)."""
    keep = [k for k in range(len(report.names)) if report.num_gt[k] > 0]
    if not keep:
        return None
    cols = min(len(keep), 5 if len(keep) <= 20 else 10)
    rows = math.ceil(len(keep) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 2.2 * rows), squeeze=False, sharex=True, sharey=True)
    for ax in axes.flat[len(keep):]:
        ax.axis("off")
    for ax, k in zip(axes.flat, keep):
        for iou, style in ((0.5, "-"), (0.75, "--")):
            ax.plot(100 * report.recall, 100 * np.nan_to_num(report.curves[iou][k]), style, label=f"IoU {iou}")
        ax.set_title(f"{report.names[k]} (AP50 {100 * report.table['AP50'][k]:.0f})", fontsize=8)
        ax.set(xlim=(0, 100), ylim=(0, 102))
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("recall (%)", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("precision (%)", fontsize=8)
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def confusion(cm: ConfusionMatrix) -> Figure | None:
    """The confusion matrix, each row normalised by its count (the share of a class's boxes that went where)."""
    k = len(cm.names)
    if cm.matrix.sum() == 0:
        return None
    rows = cm.matrix.astype(np.float64)
    share = rows / np.maximum(rows.sum(axis=1, keepdims=True), 1)
    side = max(4.5, 0.22 * (k + 1) + 2.5)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    image = ax.imshow(100 * share, cmap="Blues", vmin=0, vmax=100)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="% of the row")
    font = 8 if k <= 20 else 5
    ax.set_xticks(range(k + 1), [*cm.names, "missed"], rotation=90, fontsize=font)
    ax.set_yticks(range(k + 1), [*cm.names, "background"], fontsize=font)
    ax.set(xlabel="detected as", ylabel="ground truth",
           title=f"Confusion at IoU {cm.iou_thresh}, score >= {cm.score_thresh}" + (" (counts in cells)" if k <= 30 else ""))
    if k <= 30:
        for i in range(k + 1):
            for j in range(k + 1):
                if cm.matrix[i, j]:
                    ax.text(j, i, str(cm.matrix[i, j]), ha="center", va="center", fontsize=font,
                            color="white" if share[i, j] > 0.5 else "black")
    fig.tight_layout()
    return fig


def error_breakdown(breakdown: ErrorBreakdown) -> Figure:
    """Two bar charts: dAP50 gained by fixing each error type (TIDE), and how many errors of each type."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4))
    labels = [ERROR_NAMES[t] for t in ERROR_TYPES]
    colors = [ERROR_COLORS[t] for t in ERROR_TYPES]
    left.bar(labels, [100 * breakdown.dap[t] for t in ERROR_TYPES], color=colors)
    left.set(ylabel="dAP50 (points)", title=f"AP50 gained by fixing each error type (AP50 {100 * breakdown.ap50:.1f})")
    right.bar(labels, [breakdown.counts[t] for t in ERROR_TYPES], color=colors)
    right.set(ylabel="errors", title="Errors of each type (IoU fg 0.5, bg 0.1)")
    for ax in (left, right):
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    fig.tight_layout()
    return fig


def box_statistics(sizes: np.ndarray, ratios: np.ndarray, anchor_sizes: Sequence[float],
                   anchor_ratios: Sequence[float]) -> Figure | None:
    """Histograms of ground-truth box size and aspect ratio (log axes), with the anchors' as vertical lines."""
    if len(sizes) == 0:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.2))
    low = min(sizes.min(), *(anchor_sizes or [sizes.min()])) * 0.8
    high = max(sizes.max(), *(anchor_sizes or [sizes.max()])) * 1.25
    left.hist(sizes, bins=np.geomspace(max(low, 0.5), high, 40), color="#6baed6")
    left.set_xscale("log")
    for size in anchor_sizes:
        left.axvline(size, color="#d62728", linestyle="--", linewidth=1)
    left.set(xlabel="box size sqrt(w * h), input pixels", ylabel="ground-truth boxes",
             title="Box sizes (red: anchor sizes)" if anchor_sizes else "Box sizes (no anchors: proposals from a store)")
    r_low = min(ratios.min(), *(anchor_ratios or [ratios.min()])) * 0.8
    r_high = max(ratios.max(), *(anchor_ratios or [ratios.max()])) * 1.25
    right.hist(ratios, bins=np.geomspace(max(r_low, 1e-3), r_high, 40), color="#74c476")
    right.set_xscale("log")
    for ratio in anchor_ratios:
        right.axvline(ratio, color="#d62728", linestyle="--", linewidth=1)
    right.set(xlabel="aspect ratio h / w", ylabel="ground-truth boxes", title="Aspect ratios (red: anchor ratios)")
    fig.tight_layout()
    return fig


def compare_ap(names: Sequence[str], ap_a: np.ndarray, ap_b: np.ndarray, labels: tuple[str, str]) -> Figure | None:
    """AP per class of two runs side by side (horizontal bars), classes where both are nan left out."""
    keep = [k for k in range(len(names)) if not (math.isnan(ap_a[k]) and math.isnan(ap_b[k]))]
    if not keep:
        return None
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.25 * len(keep)))
    y = np.arange(len(keep))
    ax.barh(y - 0.2, [100 * np.nan_to_num(ap_a[k]) for k in keep], height=0.4, label=labels[0], color="#3182bd")
    ax.barh(y + 0.2, [100 * np.nan_to_num(ap_b[k]) for k in keep], height=0.4, label=labels[1], color="#fd8d3c")
    ax.set_yticks(y, [names[k] for k in keep], fontsize=8)
    ax.set(xlabel="AP (%)", xlim=(0, 100), title="AP per class")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def compare_errors(dap_a: dict[str, float], dap_b: dict[str, float], labels: tuple[str, str]) -> Figure:
    """dAP50 per error type of two runs side by side."""
    fig, ax = plt.subplots(figsize=(8, 3.2))
    x = np.arange(len(ERROR_TYPES))
    ax.bar(x - 0.2, [100 * dap_a[t] for t in ERROR_TYPES], width=0.4, label=labels[0], color="#3182bd")
    ax.bar(x + 0.2, [100 * dap_b[t] for t in ERROR_TYPES], width=0.4, label=labels[1], color="#fd8d3c")
    ax.set_xticks(x, [ERROR_NAMES[t] for t in ERROR_TYPES], fontsize=8)
    ax.set(ylabel="dAP50 (points)", title="AP50 gained by fixing each error type")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
