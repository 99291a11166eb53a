"""`tools/train.py --check-data`: decode every image and check every annotation of both splits, listing all problems.

Checks per image: the file decodes (within data.max_image_pixels), its decoded size equals the annotated size,
and every box is finite, non-degenerate (x1 < x2, y1 < y2) and inside the image (1 px of slack, as VOC's
1-based corners map to 0-based continuous pixels), with a label in 1..K. An annotation file that cannot be parsed
at all is still reported by the dataset itself, in one line, when the split is built.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from detkit.progress import progress_bar

from detkit.data.base import DetectionDataset, ImageRecord
from detkit.data.image_io import read_image, set_max_image_pixels
from detkit.errors import DetkitError

BOX_SLACK = 1.0  # pixels a box may extend past the image border before it counts as a problem


def check_record(record: ImageRecord, num_classes: int) -> list[str]:
    """The problems of one image and its annotations, each a sentence naming the file (empty when it is fine)."""
    problems = []
    if record.height <= 0 or record.width <= 0:
        problems.append(f"{record.path}: annotated size {record.height}x{record.width} (HxW) is not positive")
    try:
        image = read_image(record.path)
    except DetkitError as error:
        problems.append(str(error))
    else:
        if image.shape[:2] != (record.height, record.width):
            problems.append(f"{record.path}: decoded size {image.shape[0]}x{image.shape[1]} (HxW) differs from the "
                            f"annotated {record.height}x{record.width}")
    boxes = np.asarray(record.boxes, dtype=np.float64).reshape(-1, 4)
    for index, (box, label) in enumerate(zip(boxes, np.asarray(record.labels).reshape(-1))):
        where = f"{record.path}: box {index} {np.round(box, 2).tolist()}"
        if not np.isfinite(box).all():
            problems.append(f"{where} is not finite")
        elif box[2] <= box[0] or box[3] <= box[1]:
            problems.append(f"{where} has no area (x2 <= x1 or y2 <= y1)")
        elif (box[:2] < -BOX_SLACK).any() or box[2] > record.width + BOX_SLACK or box[3] > record.height + BOX_SLACK:
            problems.append(f"{where} lies outside the {record.width}x{record.height} (WxH) image")
        if not 1 <= int(label) <= num_classes:
            problems.append(f"{where} has label {int(label)}, outside 1..{num_classes}")
    return problems


def check_datasets(datasets: dict[str, DetectionDataset], workers: int = 2, progress: bool = True) -> list[str]:
    """Every problem of every image of the named datasets, in order, each prefixed with the dataset's name."""
    jobs = [(name, record, len(ds.classes)) for name, ds in datasets.items() for record in ds.records]
    problems: list[str] = []
    with ThreadPoolExecutor(max(1, workers)) as pool:  # cv2 decodes without the GIL
        found = pool.map(lambda job: check_record(job[1], job[2]), jobs)
        for (name, _, _), items in progress_bar(zip(jobs, found), total=len(jobs), desc="check data", disable=not progress):
            problems += [f"[{name}] {item}" for item in items]
    return problems


def check_config_data(cfg: Any) -> int:
    """Check both splits of a config; print every problem and a summary; return 0 when clean, else 1."""
    from detkit.engine.workflow import build_split

    set_max_image_pixels(cfg.data.max_image_pixels)
    datasets = {split: build_split(cfg, split) for split in ("train", "test")}
    problems = check_datasets(datasets, workers=max(1, cfg.data.num_workers))
    for problem in problems:
        print(problem)
    total = sum(len(ds) for ds in datasets.values())
    print(f"check data: {len(problems)} problem(s) among {total} images" if problems
          else f"check data: all {total} images decode and their annotations are valid")
    return 1 if problems else 0
