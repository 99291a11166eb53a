"""Image decoding: one door from a file on disk to an RGB uint8 array.

Shapes: H, W image height and width; images are HWC uint8 RGB numpy arrays, or CHW float32 tensors in [0, 1].
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from detkit.errors import DetkitError

# EXIF orientation is ignored so pixels match the annotations, which (as in COCO and VOC) refer to the stored
# pixel grid; this is also what PIL-based pipelines such as torchvision's references see.
_IMREAD_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file into an HWC uint8 RGB array; raise DetkitError if it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise DetkitError(f"Image file {path} does not exist.")
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, _IMREAD_FLAGS) if data.size else None
    if image is None:
        raise DetkitError(f"Image file {path} is corrupt or not an image cv2 can decode.")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """Convert an HWC uint8 RGB array into a CHW float32 tensor in [0, 1]."""
    return torch.from_numpy(image).permute(2, 0, 1).to(torch.float32, memory_format=torch.contiguous_format).div_(255.0)


def collect_images(inputs: list[str]) -> list[Path]:
    """Image files named directly or found (not recursively) in the named folders, in sorted order."""
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.exists():
            paths.append(item)
        else:
            raise DetkitError(f"input {item} does not exist")
    if not paths:
        raise DetkitError(f"no images found in {', '.join(inputs)}")
    return paths
