"""Image decoding: one door from a file on disk to an RGB uint8 array.

Shapes: H, W image height and width; images are HWC uint8 RGB numpy arrays, or CHW float32 tensors in [0, 1].
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from detkit.errors import DetkitError

# Largest image (width x height) decoded, checked from the file's header before decoding, against decompression
# bombs (a 96-megapixel PNG of a few hundred KB decodes to 288 MB per copy). The default is PIL's own
# Image.MAX_IMAGE_PIXELS (1024 * 1024 * 1024 // 4 // 3: about 0.25 GiB as 24-bit RGB), far above any detection
# dataset (COCO and VOC images are under 1 megapixel); `data.max_image_pixels` sets it, None removes the cap.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
_max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS

# Datasets ignore EXIF orientation so pixels match the annotations, which (as in COCO and VOC) refer to the stored
# pixel grid; this is also what PIL-based pipelines such as torchvision's references see. infer.py applies it
# (read_image(..., exif_orientation=True)): its boxes are in the orientation a viewer shows.
# IMREAD_COLOR gives 3 channels from any decodable file: grayscale is repeated, alpha dropped, 16-bit scaled to 8.
_IMREAD_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
_EXIF_ORIENTATION = 0x0112
# EXIF orientation 1..8 -> the array operation that shows the image upright (as PIL.ImageOps.exif_transpose).
_UPRIGHT = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
            5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1),
            7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1], 8: lambda a: np.rot90(a, 1)}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def set_max_image_pixels(limit: int | None) -> None:
    """Set the pixel cap read_image enforces in this process (None: no cap); loader workers inherit it."""
    global _max_image_pixels
    if limit is not None and limit <= 0:
        raise DetkitError(f"config key 'data.max_image_pixels' must be positive or null, got {limit}.")
    _max_image_pixels = limit


def max_image_pixels() -> int | None:
    """The pixel cap read_image enforces in this process."""
    return _max_image_pixels


def image_size(path: str | Path) -> tuple[int, int] | None:
    """(height, width) from the image file's header without decoding it, or None when PIL cannot tell."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # PIL's own bomb check would raise here; the caller applies detkit's cap
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None  # not a format PIL parses (or a damaged header): cv2 decides below
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def orientation_tag(path: str | Path) -> int:
    """The file's EXIF orientation tag (1..8; 1, upright, when absent or unreadable)."""
    try:
        with Image.open(path) as image:
            value = image.getexif().get(_EXIF_ORIENTATION, 1)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return 1
    return value if value in _UPRIGHT else 1


def read_image(path: str | Path, *, exif_orientation: bool = False) -> np.ndarray:
    """Decode an image file into an HWC uint8 RGB array; raise DetkitError if it is missing, unreadable, or larger
    than the pixel cap (checked from the header, before decoding). Any decodable file gives 3 channels (grayscale,
    RGBA, palette, 16-bit). exif_orientation=True turns the pixels upright as a viewer shows them (EXIF tag 0x0112);
    datasets keep the stored grid their annotations refer to."""
    path = Path(path)
    if not path.is_file():
        raise DetkitError(f"Image file {path} does not exist.")
    size = image_size(path) if _max_image_pixels is not None else None
    if size is not None and size[0] * size[1] > _max_image_pixels:
        raise DetkitError(f"Image file {path} is {size[1]}x{size[0]} = {size[0] * size[1]:,} pixels, over the cap of "
                          f"{_max_image_pixels:,} (data.max_image_pixels); not decoded.")
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
        image = cv2.imdecode(data, _IMREAD_FLAGS) if data.size else None
    except OSError as error:
        raise DetkitError(f"Image file {path} cannot be read: {error.strerror or error}.") from None
    except cv2.error as error:  # e.g. out of memory, or over OpenCV's own size limit
        raise DetkitError(f"Image file {path} cannot be decoded: {_cv2_reason(error)}.") from None
    if image is None:
        raise DetkitError(f"Image file {path} is corrupt or not an image cv2 can decode.")
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if exif_orientation:
        turn = _UPRIGHT.get(orientation_tag(path))
        image = np.ascontiguousarray(turn(image)) if turn is not None else image
    return image


def _cv2_reason(error: Exception) -> str:
    """The informative line of a cv2.error (its text spans several lines)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """Convert an HWC uint8 RGB array into a CHW float32 tensor in [0, 1]."""
    return torch.from_numpy(image).permute(2, 0, 1).to(torch.float32, memory_format=torch.contiguous_format).div_(255.0)


def collect_images(inputs: list[str]) -> list[Path]:
    """Image files named directly or found (not recursively) in the named folders, in sorted order, each once."""
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif item.exists():
            paths.append(item)
        else:
            raise DetkitError(f"input {item} does not exist")
    if not paths:
        raise DetkitError(f"no images found in {', '.join(inputs)}")
    unique = {p.resolve(): p for p in reversed(paths)}  # the first mention of a file wins
    return [p for p in paths if unique[p.resolve()] is p]


def output_paths(images: list[Path], out: Path, writable: tuple[str, ...] = (".jpg", ".jpeg", ".png")) -> list[Path]:
    """One distinct file under `out` per input image, at the input's path relative to the inputs' common folder.

    The name is kept when its suffix is in `writable`, else ".png" is appended (a.bmp -> a.bmp.png). Raises a
    DetkitError when an output would be an input file (e.g. `out` is the input folder) or two outputs collide.
    """
    resolved = [p.resolve() for p in images]
    root = Path(os.path.commonpath([p.parent for p in resolved]))
    outputs = []
    for path in resolved:
        relative = path.relative_to(root)
        outputs.append(out / (relative if relative.suffix.lower() in writable else f"{relative}.png"))
    inputs = set(resolved)
    seen: dict[Path, Path] = {}
    for image, target in zip(images, outputs):
        if target.resolve() in inputs:
            raise DetkitError(f"--out {out} would write over the input image {target}; choose another folder")
        if target.resolve() in seen:
            raise DetkitError(f"inputs {seen[target.resolve()]} and {image} would both be drawn to {target}")
        seen[target.resolve()] = image
    return outputs
