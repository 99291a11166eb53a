"""The images with the most errors, drawn with their ground truth and detections colour-coded by TIDE error type.

Boxes are COCO x, y, w, h in absolute pixels of the original image. Detections below `score_thresh` are neither
drawn nor counted (they would bury the picture); a missed box counts and is drawn in the "missed" colour.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from torchvision.utils import draw_bounding_boxes

from detkit.data.image_io import read_image
from detkit.errors import DetkitError
from detkit.evaluation.errors import ERROR_NAMES, ErrorBreakdown
from detkit.report.plots import ERROR_COLORS

WORST_COUNT = 8


def worst_images(breakdown: ErrorBreakdown, ground_truth: Mapping[str, Any], score_thresh: float = 0.3,
                 count: int = WORST_COUNT) -> list[tuple[int, Counter]]:
    """(image id, Counter of error types) of the `count` images with the most errors, most first (ties: by id)."""
    per_image: dict[int, Counter] = {int(image["id"]): Counter() for image in ground_truth["images"]}
    for det in breakdown.detections:
        if det["outcome"] != "tp" and float(det["score"]) >= score_thresh:
            per_image[int(det["image_id"])][det["outcome"]] += 1
    for index in breakdown.missed:
        per_image[int(ground_truth["annotations"][index]["image_id"])]["miss"] += 1
    ranked = sorted(((i, c) for i, c in per_image.items() if sum(c.values())), key=lambda t: (-sum(t[1].values()), t[0]))
    return ranked[:count]


def draw_error_image(image: np.ndarray, image_id: int, breakdown: ErrorBreakdown, ground_truth: Mapping[str, Any],
                     names: Mapping[int, str], score_thresh: float = 0.3) -> np.ndarray:
    """(H', W', 3) uint8: ground truth in white (missed in the "missed" colour), detections at or above
    score_thresh in their outcome's colour, captioned "<class> <score> <type>"; images under 384 px are enlarged."""
    zoom = max(1, math.ceil(384 / max(image.shape[:2])))
    canvas = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    if zoom > 1:
        canvas = canvas.repeat_interleave(zoom, 1).repeat_interleave(zoom, 2)
    missed = set(breakdown.missed)
    boxes, colors, captions = [], [], []
    for index, ann in enumerate(ground_truth["annotations"]):
        if int(ann["image_id"]) == image_id:
            boxes.append(ann["bbox"])
            colors.append(ERROR_COLORS["miss" if index in missed else "gt"])
            captions.append(names.get(int(ann["category_id"]), str(ann["category_id"])))
    for det in breakdown.detections:
        if int(det["image_id"]) == image_id and float(det["score"]) >= score_thresh:
            boxes.append(det["bbox"])
            colors.append(ERROR_COLORS[det["outcome"]])
            kind = "" if det["outcome"] == "tp" else f" {det['outcome']}"
            captions.append(f"{names.get(det['category_id'], det['category_id'])} {float(det['score']):.2f}{kind}")
    if boxes:
        xywh = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4) * zoom
        xyxy = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
        side = max(canvas.shape[1:])
        canvas = draw_bounding_boxes(canvas, xyxy, labels=captions, colors=colors, width=max(2, side // 200),
                                     font=caption_font(), font_size=max(10, side // 40), fill_labels=True,
                                     label_colors="black", label_background_colors=colors)
    return canvas.permute(1, 2, 0).numpy()


def caption_font() -> str:
    """A TrueType font for box captions: matplotlib's bundled DejaVu Sans (torchvision's default is tiny)."""
    from matplotlib import font_manager

    return font_manager.findfont("DejaVu Sans")


def worst_images_figure(breakdown: ErrorBreakdown, ground_truth: Mapping[str, Any], image_paths: Mapping[int, Path],
                        names: Mapping[int, str], score_thresh: float = 0.3,
                        count: int = WORST_COUNT) -> tuple[Figure | None, str]:
    """The worst images tiled with a colour legend, and a line saying what was drawn (or why nothing was)."""
    import matplotlib.pyplot as plt

    ranked = worst_images(breakdown, ground_truth, score_thresh, count)
    if not ranked:
        return None, "no image has an error at this score threshold"
    drawn, unreadable = [], []
    for image_id, counts in ranked:
        path = image_paths.get(image_id)
        try:
            if path is None:
                raise DetkitError(f"no file for image id {image_id}")
            drawn.append((image_id, counts, draw_error_image(read_image(path), image_id, breakdown, ground_truth,
                                                             names, score_thresh)))
        except DetkitError as error:
            unreadable.append(str(error))
    if not drawn:
        return None, f"the images could not be read ({unreadable[0]})"
    cols = min(4, len(drawn))
    rows = math.ceil(len(drawn) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(8, 4 * cols), 4 * rows + 0.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (image_id, counts, picture) in zip(axes.flat, drawn):
        ax.imshow(picture)
        summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        ax.set_title(f"image {image_id}: {summary}", fontsize=8)
    legend = [Patch(facecolor=ERROR_COLORS["gt"], edgecolor="black", label="ground truth"),
              Patch(color=ERROR_COLORS["tp"], label="true positive")]
    legend += [Patch(color=ERROR_COLORS[k], label=ERROR_NAMES[k]) for k in ("cls", "loc", "both", "dupe", "bkg", "miss")]
    fig.legend(handles=legend, loc="lower center", ncol=4, fontsize=8)
    fig.tight_layout(rect=(0, 0.6 / (4 * rows + 0.6) + 0.04, 1, 1))
    note = f"{len(drawn)} images with the most errors (detections with score >= {score_thresh})"
    if unreadable:
        note += f"; {len(unreadable)} could not be read (first: {unreadable[0]})"
    return fig, note
