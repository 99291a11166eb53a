"""Synthetic demo detection set: coloured shapes on textured backgrounds, generated once from a seed, COCO format.

Layout written under the cache: ``<cache>/<name>/{train,test}/*.jpg``, ``train.json``, ``test.json`` and
``manifest.json`` (written last; its presence marks a complete cache). Boxes are x1, y1, x2, y2 absolute 0-based
continuous pixels, tight around each shape's visible pixels (a pixel (x, y) spans [x, x + 1) x [y, y + 1)).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path

import cv2
import numpy as np

from detkit.errors import DetkitError

DEMO_CLASSES = ["circle", "square", "triangle", "cross"]
_GENERATOR_VERSION = 1  # bump when the drawing code changes, so old caches are not reused
_MIN_OBJECT, _MAX_OBJECT = 16, 80  # object side in pixels before rotation
_MAX_OCCLUDED = 0.2  # a new shape may hide at most this fraction of an earlier shape's visible pixels
_JPEG_QUALITY = 95


def default_cache_dir() -> Path:
    """``$DETKIT_CACHE/demo`` when DETKIT_CACHE is set, else ``~/.cache/detkit/demo``."""
    root = os.environ.get("DETKIT_CACHE")
    return Path(root) / "demo" if root else Path.home() / ".cache" / "detkit" / "demo"


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A muted textured background: noise, a gradient or stripes, float32 HWC in [0, 255]."""
    base = rng.uniform(60, 190, size=3).astype(np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    kind = rng.integers(3)
    if kind == 0:
        blur = float(rng.uniform(1.0, 3.0))
        field = cv2.GaussianBlur(rng.random((height, width, 3), dtype=np.float32), (0, 0), blur)
        image = base + (field - field.mean()) * np.float32(rng.uniform(8, 20) / (field.std() + 1e-6))
    elif kind == 1:
        angle = rng.uniform(0, 2 * np.pi)
        ramp = (np.cos(angle) * xx + np.sin(angle) * yy) / max(height, width)
        image = base + ramp[..., None] * rng.uniform(-60, 60, size=3).astype(np.float32)
    else:
        angle, period = rng.uniform(0, np.pi), rng.uniform(6, 24)
        phase = (np.cos(angle) * xx + np.sin(angle) * yy) * 2 * np.pi / period
        image = base + np.sin(phase)[..., None] * rng.uniform(5, 20, size=3).astype(np.float32)
    image += (rng.random((height, width, 3), dtype=np.float32) - np.float32(0.5)) * np.float32(14)
    return np.clip(image, 0, 255, out=image)


def _shape_mask(rng: np.random.Generator, label: int, height: int, width: int) -> np.ndarray | None:
    """Mask (H, W) uint8 of one shape of class ``label`` at a random place, size and small rotation."""
    side = float(np.exp(rng.uniform(np.log(_MIN_OBJECT), np.log(_MAX_OBJECT))))
    half = side / 2
    reach = half * 1.42  # a rotated square's corner reaches side / sqrt(2) from its centre
    if width <= 2 * reach or height <= 2 * reach:
        return None
    cx, cy = rng.uniform(reach, width - reach), rng.uniform(reach, height - reach)
    mask = np.zeros((height, width), np.uint8)
    name = DEMO_CLASSES[label - 1]
    if name == "circle":
        cv2.circle(mask, (round(cx), round(cy)), round(half), 1, thickness=-1)
        return mask
    if name == "square":
        points = [(-half, -half), (half, -half), (half, half), (-half, half)]
    elif name == "triangle":
        points = [(0.0, -half), (half, half * 0.8), (-half, half * 0.8)]
    else:
        arm = side / 6
        points = [(-arm, -half), (arm, -half), (arm, -arm), (half, -arm), (half, arm), (arm, arm), (arm, half),
                  (-arm, half), (-arm, arm), (-half, arm), (-half, -arm), (-arm, -arm)]
    theta = rng.uniform(-np.pi / 9, np.pi / 9)
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    polygon = np.asarray(points) @ rotation.T + (cx, cy)
    cv2.fillPoly(mask, [np.round(polygon).astype(np.int32)], 1)
    return mask


def _colour(rng: np.random.Generator, underneath: np.ndarray) -> np.ndarray:
    """A saturated RGB colour that stands out from the mean of the pixels it will cover, (P, 3)."""
    mean = underneath.mean(axis=0)
    for _ in range(20):
        hsv = np.uint8([[[rng.integers(180), rng.integers(150, 256), rng.integers(140, 256)]]])
        rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)
        if np.abs(rgb - mean).sum() > 150:
            break
    return rgb


def render_image(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one image; return (RGB uint8 HWC, boxes float32 (M, 4) tight around visible pixels, labels (M,))."""
    image = _background(rng, height, width)
    owner = np.zeros((height, width), np.int32)  # which object (1-based) shows at each pixel, 0 = background
    labels: list[int] = []
    target = int(rng.integers(2, 9))
    for _ in range(target * 10):
        if len(labels) == target:
            break
        label = int(rng.integers(1, len(DEMO_CLASSES) + 1))
        mask = _shape_mask(rng, label, height, width)
        if mask is None:
            continue
        covered = np.bincount(owner[mask > 0], minlength=len(labels) + 1)[1:]
        visible = np.bincount(owner.ravel(), minlength=len(labels) + 1)[1:]
        if np.any(covered > _MAX_OCCLUDED * visible):
            continue
        image[mask > 0] = _colour(rng, image[mask > 0])
        labels.append(label)
        owner[mask > 0] = len(labels)
    boxes = []
    for index in range(1, len(labels) + 1):
        ys, xs = np.nonzero(owner == index)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    rgb = np.clip(image, 0, 255).astype(np.uint8)
    return rgb, np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64)


def _write_split(folder: Path, split: str, count: int, seed: int, height: int, width: int) -> None:
    """Render ``count`` images of one split into ``folder/split`` and write ``folder/split.json``."""
    (folder / split).mkdir()
    images, annotations = [], []
    for index in range(count):
        rng = np.random.default_rng([seed, 0 if split == "train" else 1, index])
        rgb, boxes, labels = render_image(rng, height, width)
        file_name = f"{index:05d}.jpg"
        cv2.imwrite(str(folder / split / file_name), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
        images.append({"id": index + 1, "file_name": file_name, "width": width, "height": height})
        for (x1, y1, x2, y2), label in zip(boxes.tolist(), labels.tolist()):
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, "category_id": label,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(DEMO_CLASSES)]
    (folder / f"{split}.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": categories}))


def _read_manifest(path: Path) -> dict | None:
    """The parameters a finished cache was made with, or None if there is no readable manifest."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def ensure_demo(cache_dir: str | Path | None = None, seed: int = 0, num_train: int = 600, num_test: int = 100,
                image_size: int | tuple[int, int] = 192) -> Path:
    """Generate the demo set once (atomically) and return its folder; later calls with equal arguments are instant.

    ``image_size`` is a side or (height, width). The folder holds train/, test/, train.json, test.json.
    """
    height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if min(height, width) < 2 * _MAX_OBJECT or num_train < 0 or num_test < 0:
        raise DetkitError(f"Demo set needs image sides >= {2 * _MAX_OBJECT} and non-negative counts, got "
                          f"image_size={image_size}, num_train={num_train}, num_test={num_test}.")
    params = {"version": _GENERATOR_VERSION, "seed": seed, "num_train": num_train, "num_test": num_test,
              "height": height, "width": width}
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = cache_dir / f"v{_GENERATOR_VERSION}-seed{seed}-{num_train}-{num_test}-{height}x{width}"
    manifest = final / "manifest.json"
    if _read_manifest(manifest) == params:
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    for stale in cache_dir.glob(".tmp-*"):  # left by a killed run; an hour is far longer than a generation
        if time.time() - stale.stat().st_mtime > 3600:
            shutil.rmtree(stale, ignore_errors=True)
    staging = cache_dir / f".tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        _write_split(staging, "train", num_train, seed, height, width)
        _write_split(staging, "test", num_test, seed, height, width)
        (staging / "manifest.json").write_text(json.dumps(params))
        if _read_manifest(manifest) == params:
            return final  # a concurrent run finished the same set first
        if final.exists():
            shutil.rmtree(final)  # a folder under our name without a valid manifest: not a finished cache
        try:
            os.rename(staging, final)
        except OSError:
            if _read_manifest(manifest) != params:  # not a concurrent run that finished first: a real error
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final
