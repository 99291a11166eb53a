"""COCO-format detection data: an image folder plus an instances json (bbox x, y, w, h in absolute pixels).

Shapes and names: M boxes per image, K categories; boxes become x1, y1, x2, y2 float32 in absolute 0-based
continuous pixels. Category ids (any integers, e.g. COCO's 1..90 with gaps) map to contiguous labels 1..K in
ascending id order (background = 0); ``label_to_category_id`` maps back for evaluation and export.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from detkit.data.base import DetectionDataset, ImageRecord, Transform, warn_dropped_boxes
from detkit.errors import DetkitError


def check_ann_file_exists(ann_file: Path) -> None:
    """Raise DetkitError naming ann_file when it is not a file."""
    if not ann_file.is_file():
        raise DetkitError(f"COCO annotation file {ann_file} does not exist.")


def _load_json(ann_file: Path) -> dict[str, Any]:
    """Read the annotation json and check it has the three lists COCO detection needs."""
    check_ann_file_exists(ann_file)
    try:
        data = json.loads(ann_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DetkitError(f"COCO annotation file {ann_file} is not valid json ({error}).") from error
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key) if isinstance(data, dict) else None, list):
            raise DetkitError(f"COCO annotation file {ann_file} has no '{key}' list.")
    return data


def _finite(values: list[float]) -> bool:
    return all(math.isfinite(v) for v in values)


def _categories(ann_file: Path, data: dict[str, Any]) -> tuple[list[int], list[str]]:
    """Category ids in ascending order and their names; ids and names must be unique."""
    try:
        categories = sorted(data["categories"], key=lambda c: int(c["id"]))
        category_ids = [int(c["id"]) for c in categories]
        classes = [str(c["name"]) for c in categories]
    except (KeyError, TypeError, ValueError) as error:
        raise DetkitError(f"COCO annotation file {ann_file} has a category without an integer 'id' and a "
                          f"'name' ({error}).") from error
    if len(set(category_ids)) != len(category_ids):
        repeated = next(i for i in category_ids if category_ids.count(i) > 1)
        raise DetkitError(f"COCO annotation file {ann_file} repeats category id {repeated} in 'categories'.")
    if len(set(classes)) != len(classes):
        name = next(n for n in classes if classes.count(n) > 1)
        ids = [i for i, n in zip(category_ids, classes) if n == name]
        raise DetkitError(f"COCO annotation file {ann_file}: categories {ids} share the 'name' {name!r}; "
                          "class names must be unique.")
    return category_ids, classes


def _image_entry(ann_file: Path, index: int, img: Any, seen: dict[int, int]) -> tuple[int, str, int, int]:
    """(id, file_name, height, width) of images[index], checked: integer id used once, positive size."""
    try:
        image_id, file_name = int(img["id"]), str(img["file_name"])
        height, width = int(img["height"]), int(img["width"])
    except (KeyError, TypeError, ValueError, OverflowError) as error:
        raise DetkitError(f"COCO annotation file {ann_file}: images[{index}] needs integer 'id', 'height', "
                          f"'width' and a 'file_name' ({error!r}).") from error
    if image_id in seen:
        raise DetkitError(f"COCO annotation file {ann_file}: image id {image_id} appears twice in 'images' "
                          f"(images[{seen[image_id]}] and images[{index}], field 'id'); image ids must be unique.")
    seen[image_id] = index
    for field, value in (("height", height), ("width", width)):
        if value <= 0:
            raise DetkitError(f"COCO annotation file {ann_file}: image id {image_id} ({file_name}) has '{field}' "
                              f"{value}; it must be a positive number of pixels.")
    return image_id, file_name, height, width


def _box(ann_file: Path, ann: dict[str, Any], label_of: dict[int, int]) -> tuple[list[float], int, float]:
    """([x, y, w, h], label, area) of one annotation, checked: four finite numbers, a known category."""
    try:
        x, y, w, h = (float(v) for v in ann["bbox"])
        label = label_of[int(ann["category_id"])]
        area = float(ann.get("area", w * h))
    except (KeyError, TypeError, ValueError, OverflowError) as error:
        raise DetkitError(f"COCO annotation file {ann_file}: annotation id {ann.get('id')} needs a "
                          f"4-number 'bbox', a known 'category_id' and a numeric 'area' ({error!r}).") from error
    if not _finite([x, y, w, h]):
        raise DetkitError(f"COCO annotation file {ann_file}: annotation id {ann.get('id')} has a non-finite "
                          f"'bbox' {[x, y, w, h]}.")
    if not math.isfinite(area):
        raise DetkitError(f"COCO annotation file {ann_file}: annotation id {ann.get('id')} has a non-finite "
                          f"'area' {area}.")
    return [x, y, w, h], label, area


class COCODataset(DetectionDataset):
    """COCO-format detection set; images without annotations are kept as background-only samples.

    Raises DetkitError naming the file, the id and the field for: a repeated image or category id, repeated
    category names, an image with a non-positive height or width, a bbox or area that is not a finite number.
    """

    category_ids_in_file = True

    def __init__(self, image_dir: str | Path, ann_file: str | Path, skip_corrupt: bool = False,
                 transforms: Transform | None = None) -> None:
        image_dir, ann_file = Path(image_dir), Path(ann_file)
        if not image_dir.is_dir():
            raise DetkitError(f"COCO image folder {image_dir} is not a directory.")
        data = _load_json(ann_file)
        category_ids, classes = _categories(ann_file, data)
        label_of = {cid: k + 1 for k, cid in enumerate(category_ids)}

        per_image: dict[Any, list[dict[str, Any]]] = {}
        for index, ann in enumerate(data["annotations"]):
            if not isinstance(ann, dict) or "image_id" not in ann:
                raise DetkitError(f"COCO annotation file {ann_file}: annotations[{index}] has no 'image_id'.")
            per_image.setdefault(ann["image_id"], []).append(ann)
        image_ids = {img.get("id") for img in data["images"] if isinstance(img, dict)}
        orphan = next((i for i in per_image if i not in image_ids), None)
        if orphan is not None:
            raise DetkitError(f"COCO annotation file {ann_file} has annotations for image_id {orphan}, "
                              f"which is not in 'images'.")

        records, dropped, seen = [], {}, {}
        for index, img in enumerate(data["images"]):
            image_id, file_name, height, width = _image_entry(ann_file, index, img, seen)
            boxes, labels, ignore, areas = [], [], [], []
            for ann in per_image.get(img["id"], []):
                (x, y, w, h), label, area = _box(ann_file, ann, label_of)
                if w <= 0 or h <= 0:
                    dropped[file_name] = dropped.get(file_name, 0) + 1
                    continue
                boxes.append([x, y, x + w, y + h])
                labels.append(label)
                ignore.append(bool(ann.get("iscrowd", 0)))
                areas.append(area)
            records.append(ImageRecord(
                path=image_dir / file_name, file_name=file_name, image_id=image_id, height=height, width=width,
                boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4), labels=np.asarray(labels, dtype=np.int64),
                ignore=np.asarray(ignore, dtype=bool), areas=np.asarray(areas, dtype=np.float64)))
        warn_dropped_boxes(ann_file, dropped)
        self.image_dir, self.ann_file = image_dir, ann_file
        super().__init__(records, classes, {k: cid for cid, k in label_of.items()},
                         skip_corrupt=skip_corrupt, transforms=transforms)
