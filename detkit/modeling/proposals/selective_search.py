"""Selective search proposals (Uijlings et al. 2013) through OpenCV's contrib module cv2.ximgproc.

Input: an RGB image (H, W, 3) uint8 array. Output: boxes (P, 4) float32 x1, y1, x2, y2 in pixels, in the order
OpenCV ranks them (most object-like hierarchy levels first).

OpenCV ranks regions as the paper does, by hierarchy level times a random number, drawn from the C library's
``rand()``; the search reseeds it (``srand(RANK_SEED)``) before every image, so an image's proposals do not depend
on which images the same process searched before (a resumed or multi-process run gives the same store).
"""
from __future__ import annotations

import ctypes

from typing import TYPE_CHECKING

import numpy as np

from detkit.errors import DetkitError

if TYPE_CHECKING:  # torch is imported where a Tensor is made: propose_image runs without it (detkit.deploy)
    from torch import Tensor

INSTALL_FIX = ("pip install --no-deps --force-reinstall opencv-contrib-python-headless "
               "(albumentations' opencv-python-headless shares the cv2 folder and hides the contrib modules)")
RANK_SEED = 0  # any fixed value: it only has to be the same for every image and every run


def _seed_c_rand(seed: int) -> None:
    """Seeds the C library's rand(), which OpenCV's selective search uses to rank regions."""
    ctypes.CDLL(None).srand(ctypes.c_uint(seed))


def require_ximgproc():
    """cv2.ximgproc, or a DetkitError that says how to get it."""
    import cv2

    if not hasattr(cv2, "ximgproc"):
        raise DetkitError(f"selective search needs cv2.ximgproc (OpenCV contrib), which this cv2 "
                          f"{cv2.__version__} lacks; fix: {INSTALL_FIX}")
    return cv2.ximgproc


def selective_search(image: np.ndarray, mode: str = "fast", max_proposals: int = 2000,
                     min_size: float = 1.0) -> Tensor:
    """Proposals for one RGB image; mode 'fast' or 'quality' as in the paper's two settings."""
    import torch

    return torch.as_tensor(search_boxes(image, mode, max_proposals, min_size))


def search_boxes(image: np.ndarray, mode: str = "fast", max_proposals: int = 2000,
                 min_size: float = 1.0) -> np.ndarray:
    """selective_search as a float32 numpy array (no PyTorch needed)."""
    if mode not in ("fast", "quality"):
        raise DetkitError(f"selective search mode must be 'fast' or 'quality', got {mode!r}")
    ximgproc = require_ximgproc()
    search = ximgproc.segmentation.createSelectiveSearchSegmentation()
    search.setBaseImage(np.ascontiguousarray(image[..., ::-1]))  # OpenCV expects BGR
    if mode == "fast":
        search.switchToSelectiveSearchFast()
    else:
        search.switchToSelectiveSearchQuality()
    _seed_c_rand(RANK_SEED)
    rects = search.process()  # (P, 4) x, y, w, h
    if len(rects) == 0:
        return np.zeros((0, 4), dtype=np.float32)
    boxes = np.asarray(rects, dtype=np.float32).reshape(-1, 4).copy()
    boxes[:, 2:] += boxes[:, :2]
    keep = ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)
    return boxes[keep][:max_proposals]


def finish_boxes(boxes: np.ndarray, height: int, width: int, min_size: float, top_k: int) -> np.ndarray:
    """Clips to the image, drops boxes under min_size pixels or with no area and exact duplicates (first kept),
    keeps top_k."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    wide = (w >= min_size) & (h >= min_size) & (w > 0) & (h > 0)  # with min_size 0 too: a store holds no empty box
    boxes = boxes[wide]
    _, first = np.unique(boxes, axis=0, return_index=True)
    return boxes[np.sort(first)][:top_k]


def propose_image(image: np.ndarray, *, mode: str = "fast", max_side: int = 500, min_size: float = 1.0,
                  top_k: int = 2000) -> np.ndarray:
    """Selective-search boxes (P, 4) float32 in the pixels of ``image`` (HWC uint8 RGB), searched at most max_side."""
    import cv2

    height, width = image.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    small = image
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))  # cv2 sizes are (w, h)
        small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    boxes = search_boxes(small, mode=mode, max_proposals=np.iinfo(np.int32).max, min_size=0.0)
    # Per-axis factors: rounding makes the two sides' scales differ slightly.
    sx, sy = width / small.shape[1], height / small.shape[0]
    boxes = boxes * np.array([sx, sy, sx, sy], dtype=np.float32)
    return finish_boxes(boxes, height, width, min_size, top_k)
