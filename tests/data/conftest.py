"""Tiny hand-written VOC and COCO folders for the data tests."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

BCCD = Path(os.environ.get("DETKIT_BCCD", Path(__file__).resolve().parents[3] / "shared" / "data" / "BCCD"))


def write_image(path: Path, height: int, width: int, value: int = 0) -> None:
    """Write a small image whose pixels encode ``value`` so tests can tell images apart."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.full((height, width, 3), value, np.uint8)
    image[: height // 2, : width // 3] = 255 - value  # asymmetric, so a flip is visible
    cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 100])


def voc_xml(height: int, width: int, objects: list[tuple[str, tuple[int, int, int, int], int]]) -> str:
    """A VOC annotation with (name, (xmin, ymin, xmax, ymax) 1-based inclusive, difficult) objects."""
    body = "".join(
        f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{b[0]}</xmin>"
        f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for name, b, difficult in objects)
    size = f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"
    return f"<annotation>{size}{body}</annotation>"


@pytest.fixture
def tiny_voc(tmp_path: Path) -> Path:
    """VOC folder: a (landscape, 1 dog + difficult cat), b (portrait, 1 cat), split 'train' = a, b."""
    root = tmp_path / "voc"
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    write_image(root / "JPEGImages" / "a.jpg", 24, 32, 10)
    write_image(root / "JPEGImages" / "b.jpg", 32, 24, 200)
    objects = [("dog", (1, 2, 10, 12), 0), ("cat", (5, 5, 20, 20), 1)]
    (root / "Annotations" / "a.xml").write_text(voc_xml(24, 32, objects))
    (root / "Annotations" / "b.xml").write_text(voc_xml(32, 24, [("cat", (3, 4, 24, 32), 0)]))
    (root / "ImageSets" / "Main" / "train.txt").write_text("a\nb\n")
    return root


@pytest.fixture
def tiny_coco(tmp_path: Path) -> tuple[Path, Path]:
    """COCO folder with category ids 7 and 3, a crowd box, a degenerate box and an image without annotations."""
    image_dir = tmp_path / "images"
    write_image(image_dir / "x.jpg", 24, 32, 30)
    write_image(image_dir / "y.jpg", 20, 20, 90)
    data = {
        "images": [{"id": 11, "file_name": "x.jpg", "height": 24, "width": 32},
                   {"id": 5, "file_name": "y.jpg", "height": 20, "width": 20}],
        "categories": [{"id": 7, "name": "kite"}, {"id": 3, "name": "car"}],
        "annotations": [
            {"id": 1, "image_id": 11, "category_id": 7, "bbox": [1, 2, 10, 5], "area": 40.0, "iscrowd": 0},
            {"id": 2, "image_id": 11, "category_id": 3, "bbox": [0, 0, 32, 24], "area": 700.0, "iscrowd": 1},
            {"id": 3, "image_id": 11, "category_id": 3, "bbox": [4, 4, 0, 6], "area": 0.0, "iscrowd": 0},
        ],
    }
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(json.dumps(data))
    return image_dir, ann_file
