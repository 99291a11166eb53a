"""Selective search proposals (Uijlings et al. 2013) through OpenCV's contrib module cv2.ximgproc.

Input: an RGB image (H, W, 3) uint8 array. Output: boxes (P, 4) float32 x1, y1, x2, y2 in pixels, in the order
OpenCV ranks them (most object-like hierarchy levels first).

OpenCV ranks regions as the paper does, by hierarchy level times a random number, drawn from the C library's
``rand()``; the search reseeds it (``srand(RANK_SEED)``) before every image, so an image's proposals do not depend
on which images the same process searched before (a resumed or multi-process run gives the same store).
"""
from __future__ import annotations

import ctypes

import numpy as np
import torch
from torch import Tensor

from detkit.errors import DetkitError

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
        return torch.zeros((0, 4), dtype=torch.float32)
    boxes = torch.as_tensor(np.asarray(rects, dtype=np.float32))
    boxes[:, 2:] += boxes[:, :2]
    keep = ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)
    return boxes[keep][:max_proposals]
