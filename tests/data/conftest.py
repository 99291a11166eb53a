"""Tiny hand-written VOC and COCO folders for the data tests."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

BCCD = Path(os.environ.get("DETKIT_BCCD", Path(__file__).resolve().parents[3] / "shared" / "data" / "BCCD"))


# A VOC object: (name, (xmin, ymin, xmax, ymax) 1-based inclusive, difficult).
VocObject = tuple[str, tuple[int, int, int, int], int]


def pattern_image(height: int, width: int, value: int = 0) -> np.ndarray:
    """A small (height, width, 3) uint8 image whose pixels encode ``value`` so tests can tell images apart."""
    image = np.full((height, width, 3), value, np.uint8)
    image[: height // 2, : width // 3] = 255 - value  # asymmetric, so a flip is visible
    return image


def write_image(path: Path, height: int, width: int, value: int = 0) -> None:
    """Write pattern_image(height, width, value) to ``path`` as a JPEG of quality 100."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), pattern_image(height, width, value), [cv2.IMWRITE_JPEG_QUALITY, 100])


def voc_xml(height: int, width: int, objects: list[VocObject]) -> str:
    """A VOC annotation with (name, (xmin, ymin, xmax, ymax) 1-based inclusive, difficult) objects."""
    body = "".join(
        f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{b[0]}</xmin>"
        f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for name, b, difficult in objects)
    size = f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"
    return f"<annotation>{size}{body}</annotation>"


def write_voc(root: Path, samples: dict[str, tuple[np.ndarray, list[VocObject]]], splits: tuple[str, ...] = ("train",),
              jpeg_quality: int = 95) -> Path:
    """Write a VOC folder at ``root`` and return it: for each name, JPEGImages/<name>.jpg from its (H, W, 3) uint8 BGR
    image (JPEG quality 95 is cv2's default) and Annotations/<name>.xml with the image's size and its objects; each
    split's ImageSets/Main/<split>.txt lists every name in order."""
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for name, (image, objects) in samples.items():
        cv2.imwrite(str(root / "JPEGImages" / f"{name}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        (root / "Annotations" / f"{name}.xml").write_text(voc_xml(image.shape[0], image.shape[1], objects))
    for split in splits:
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(samples) + "\n")
    return root


def noisy_rectangles(count: int, height: int, width: int, objects: tuple[tuple[str, tuple[int, int, int] | None], ...],
                     sides: tuple[int, int], corners: tuple[int, int], seed: int = 0
                     ) -> dict[str, tuple[np.ndarray, list[VocObject]]]:
    """``count`` samples for write_voc, named im00, im01, ...: a noisy grey (height, width) image with one filled
    rectangle per entry of ``objects`` (label, BGR colour; None draws a random colour), its sides drawn in
    [sides[0], sides[1]) and its top-left corner in [0, corners[0]) x [0, corners[1]) pixels, boxes clipped to the
    image."""
    rng = np.random.default_rng(seed)
    samples = {}
    for n in range(count):
        image = rng.integers(0, 40, (height, width, 3), dtype=np.uint8) + np.uint8(rng.integers(60, 160))
        boxes = []
        for label, colour in objects:
            x, y = rng.integers(0, corners[0]), rng.integers(0, corners[1])
            w, h = rng.integers(sides[0], sides[1], 2)
            image[y:y + h, x:x + w] = rng.integers(0, 255, 3) if colour is None else colour
            boxes.append((label, (int(x) + 1, int(y) + 1, int(min(x + w, width)), int(min(y + h, height))), 0))
        samples[f"im{n:02d}"] = (image, boxes)
    return samples


@pytest.fixture
def tiny_voc(tmp_path: Path) -> Path:
    """VOC folder: a (landscape, 1 dog + difficult cat), b (portrait, 1 cat), split 'train' = a, b."""
    samples = {
        "a": (pattern_image(24, 32, 10), [("dog", (1, 2, 10, 12), 0), ("cat", (5, 5, 20, 20), 1)]),
        "b": (pattern_image(32, 24, 200), [("cat", (3, 4, 24, 32), 0)]),
    }
    return write_voc(tmp_path / "voc", samples, jpeg_quality=100)


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
