"""`tools/train.py --check-data`: decode every image and check every annotation of both splits, listing all problems.

Checks per image: the file decodes (within data.max_image_pixels), its decoded size equals the annotated size,
and every box is finite, non-degenerate (x1 < x2, y1 < y2) and inside the image (1 px of slack, as VOC's
1-based corners map to 0-based continuous pixels), with a label in 1..K. An annotation file that cannot be parsed
at all is still reported by the dataset itself, in one line, when the split is built.

A split with a proposal store (data.<split>.proposals) has its store checked too, reading only what is there:
meta.json is whole and records the config's proposals.* settings and the split's file names, every image has a
proposal file, and every file holds valid boxes (detkit.data.proposal_store.validate_boxes). A missing store or
missing images are reported (tools/propose.py fills them), never filled here.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from detkit.progress import progress_bar

from detkit.data.base import DetectionDataset, ImageRecord
from detkit.data.image_io import read_image
from detkit.data.proposal_store import ProposalStore, settings_mismatch
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


def check_store(store: ProposalStore, dataset: DetectionDataset, settings: dict[str, Any] | None,
                max_listed: int = 3) -> list[str]:
    """The problems of a proposal store for a dataset (each a sentence naming the store or file), reading only what
    is there; ``settings`` are the ones the config asks for (None: not compared)."""
    where = f"proposal store {store.root}"
    if not store.root.is_dir():
        return [f"{where} does not exist; tools/propose.py CONFIG fills it"]
    try:
        meta = store.read_meta()
    except DetkitError as error:
        return [str(error)]
    problems = []
    if meta is None:
        if store.stored_ids():
            problems.append(f"{where} holds proposal files but no meta.json, so the settings they were made with are "
                            f"unknown; rebuild it with tools/propose.py --rebuild")
        else:
            return [f"{where} is empty; tools/propose.py CONFIG fills it"]
    else:
        mismatch = settings and settings_mismatch(meta["settings"], settings)
        if mismatch:
            problems.append(f"{where} was made with {mismatch} (the config's proposals.* settings); training refuses "
                            f"it: use another folder or rebuild it with tools/propose.py --rebuild")
        for record in dataset.records:
            known = meta["images"].get(str(record.image_id), record.file_name)
            if known != record.file_name:
                problems.append(f"{where} holds image id {record.image_id} for {known!r}, but the dataset's image "
                                f"{record.image_id} is {record.file_name!r}")
    missing = [r for r in dataset.records if not store.has(r.image_id)]
    if missing:
        listed = ", ".join(f"{r.image_id} ({r.file_name})" for r in missing[:max_listed])
        more = f" and {len(missing) - max_listed} more" if len(missing) > max_listed else ""
        problems.append(f"{where} lacks {len(missing)} of {len(dataset.records)} images: image id {listed}{more}; "
                        f"tools/propose.py CONFIG fills them")
    for record in dataset.records:
        if store.has(record.image_id):
            try:
                store.load(record.image_id, (record.height, record.width))
            except DetkitError as error:
                problems.append(str(error))
    return problems
