"""Pascal VOC layout (ImageSets/Main/<split>.txt, Annotations/<id>.xml, JPEGImages/<id>.jpg), e.g. BCCD.

Shapes and names: M boxes per image, K classes; boxes x1, y1, x2, y2 float32 in absolute 0-based continuous pixels.
VOC files store 1-based inclusive pixel indices, so a file's (xmin, ymin, xmax, ymax) becomes
(xmin - 1, ymin - 1, xmax, ymax). Labels are 1..K in ``classes`` order (background = 0); category ids equal labels.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from detkit.data.base import DetectionDataset, ImageRecord, Transform, warn_dropped_boxes
from detkit.errors import DetkitError


def read_split(root: Path, split: str) -> list[str]:
    """Image ids listed in ImageSets/Main/<split>.txt; ``split`` may join several with '+', e.g. 'trainval+test'."""
    ids: list[str] = []
    for name in split.split("+"):
        path = root / "ImageSets" / "Main" / f"{name}.txt"
        if not path.is_file():
            raise DetkitError(f"VOC split file {path} does not exist.")
        ids += [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise DetkitError(f"VOC split '{split}' under {root} lists image {duplicate} more than once.")
    return ids


def _number(path: Path, text: str | None, field: str) -> float:
    """A finite number from an XML field's text, else a DetkitError naming the file and the field."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value):
        raise DetkitError(f"VOC annotation file {path}: {field} is {text!r}, not a finite number.")
    return value


def _parse_xml(path: Path) -> tuple[int, int, list[tuple[str, list[float], bool]]]:
    """Return (height, width, [(class name, [xmin, ymin, xmax, ymax] as in the file, difficult)])."""
    if not path.is_file():
        raise DetkitError(f"VOC annotation file {path} does not exist.")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as error:
        raise DetkitError(f"VOC annotation file {path} is malformed ({error}).") from error
    size = [_number(path, root.findtext(f"size/{key}"), f"<size><{key}>") for key in ("height", "width")]
    if any(v <= 0 or v != int(v) for v in size):
        raise DetkitError(f"VOC annotation file {path} has no positive whole <size><width>/<height> "
                          f"(height {size[0]}, width {size[1]}).")
    objects = []
    for index, obj in enumerate(root.findall("object")):
        name = (obj.findtext("name") or "").strip()
        if not name or obj.find("bndbox") is None:
            raise DetkitError(f"VOC annotation file {path}: object {index} needs a <name> and a <bndbox>.")
        coords = [_number(path, obj.findtext(f"bndbox/{key}"), f"object {index} ({name}) <{key}>")
                  for key in ("xmin", "ymin", "xmax", "ymax")]
        difficult = (obj.findtext("difficult") or "0").strip() == "1"
        objects.append((name, coords, difficult))
    return int(size[0]), int(size[1]), objects


class VOCDataset(DetectionDataset):
    """Pascal VOC detection split; see ``DetectionDataset`` for what ``ds[i]`` returns."""

    def __init__(self, root: str | Path, split: str = "trainval", classes: list[str] | None = None,
                 skip_corrupt: bool = False, transforms: Transform | None = None) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DetkitError(f"VOC root {root} is not a directory.")
        ids = read_split(root, split)
        parsed = [_parse_xml(root / "Annotations" / f"{image_id}.xml") for image_id in ids]
        if classes is None:
            classes = sorted({name for _, _, objects in parsed for name, _, _ in objects})
        label_of = {name: k + 1 for k, name in enumerate(classes)}
        records, dropped = [], {}
        for n, (image_id, (height, width, objects)) in enumerate(zip(ids, parsed)):
            boxes, labels, ignore = [], [], []
            for name, (xmin, ymin, xmax, ymax), difficult in objects:
                if name not in label_of:
                    raise DetkitError(f"VOC annotation file {root / 'Annotations' / image_id}.xml has class "
                                      f"'{name}', which is not in classes {list(classes)}.")
                # A box with xmax <= xmin is an annotation slip (a click, not a drag), not a 1-pixel object.
                if xmax <= xmin or ymax <= ymin:
                    dropped[f"{image_id}.xml"] = dropped.get(f"{image_id}.xml", 0) + 1
                    continue
                boxes.append([xmin - 1.0, ymin - 1.0, xmax, ymax])
                labels.append(label_of[name])
                ignore.append(difficult)
            records.append(ImageRecord(
                path=root / "JPEGImages" / f"{image_id}.jpg", file_name=f"{image_id}.jpg", image_id=n + 1,
                height=height, width=width,
                boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                labels=np.asarray(labels, dtype=np.int64), ignore=np.asarray(ignore, dtype=bool)))
        warn_dropped_boxes(root / "Annotations", dropped)
        self.root, self.split, self.names = root, split, ids
        super().__init__(records, list(classes), {k: k for k in range(1, len(classes) + 1)},
                         skip_corrupt=skip_corrupt, transforms=transforms)
