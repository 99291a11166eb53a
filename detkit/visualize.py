"""Draw detections on images and write them to disk.

Glossary:
    image    (C, H, W) tensor, C in {1, 3}: float in [0, 1] or uint8 in [0, 255]
    D        detections; boxes (D, 4) are x1, y1, x2, y2 in absolute pixels, float32
    labels   (D,) int64 in 1..K (background = 0); `class_names[label - 1]` names a label
"""

from __future__ import annotations

import colorsys
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import torch
import torch.nn.functional as F
from torchvision.utils import draw_bounding_boxes, make_grid

from detkit.errors import DetkitError


def class_color(label: int) -> tuple[int, int, int]:
    """A fixed, well-separated RGB colour for a class label (the same in every image and run)."""
    # Golden-ratio steps around the hue circle keep neighbouring labels far apart.
    hue = (label * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """A (C, H, W) uint8 copy of a float [0, 1] or uint8 image on the CPU."""
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise DetkitError(f"Expected an image of shape (C, H, W) with C 1 or 3, got {tuple(image.shape)}.")
    image = image.detach().cpu()
    if image.dtype == torch.uint8:
        return image.clone()
    if not image.is_floating_point():
        raise DetkitError(f"Expected a float [0, 1] or uint8 image, got dtype {image.dtype}.")
    return (image.float() * 255).round().clamp(0, 255).to(torch.uint8)


def draw_detections(
    image: torch.Tensor,
    boxes: torch.Tensor,
    labels: torch.Tensor,
    scores: torch.Tensor | None = None,
    class_names: Sequence[str] | None = None,
    score_thresh: float = 0.0,
    width: int = 2,
) -> torch.Tensor:
    """The image as (3, H, W) uint8 with each box drawn in its class colour and captioned "<name> <score>"."""
    canvas = to_uint8(image)
    if canvas.shape[0] == 1:
        canvas = canvas.expand(3, -1, -1).contiguous()
    boxes = torch.as_tensor(boxes).detach().to("cpu", torch.float32).reshape(-1, 4)
    labels = torch.as_tensor(labels).detach().cpu().reshape(-1).long()
    if len(labels) != len(boxes):
        raise DetkitError(f"draw_detections got {len(boxes)} boxes but {len(labels)} labels.")
    if scores is not None:
        scores = torch.as_tensor(scores).detach().cpu().reshape(-1).float()
        if len(scores) != len(boxes):
            raise DetkitError(f"draw_detections got {len(boxes)} boxes but {len(scores)} scores.")
        keep = scores >= score_thresh
        boxes, labels, scores = boxes[keep], labels[keep], scores[keep]
    if len(boxes) == 0:
        return canvas
    captions = []
    for i, label in enumerate(labels.tolist()):
        name = _label_name(label, class_names)
        captions.append(name if scores is None else f"{name} {scores[i]:.2f}")
    colors = [class_color(label) for label in labels.tolist()]
    return draw_bounding_boxes(canvas, boxes, labels=captions, colors=colors, width=width)


def save_image(image: torch.Tensor, path: str | os.PathLike, quality: int = 95) -> None:
    """Write a (C, H, W) image to a .png, .jpg or .jpeg file, creating its folder."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".png", ".jpg", ".jpeg"):
        raise DetkitError(f"Cannot write image {path}: use a .png, .jpg or .jpeg file name.")
    pixels = to_uint8(image).permute(1, 2, 0).numpy()
    bgr = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR) if pixels.shape[2] == 3 else pixels
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if suffix != ".png" else []
    ok, encoded = cv2.imencode(suffix, bgr, params)
    if not ok:
        raise DetkitError(f"OpenCV could not encode image {path}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encoded.tobytes())


def draw_grid(images: Sequence[torch.Tensor], nrow: int = 4, padding: int = 4) -> torch.Tensor:
    """Tile images of any sizes into one (3, H, W) uint8 picture, `nrow` per row, smaller ones padded at the end."""
    if len(images) == 0:
        raise DetkitError("draw_grid needs at least one image.")
    tiles = []
    for image in images:
        tile = to_uint8(image)
        tiles.append(tile.expand(3, -1, -1) if tile.shape[0] == 1 else tile)
    height = max(t.shape[1] for t in tiles)
    width = max(t.shape[2] for t in tiles)
    padded = [F.pad(t, (0, width - t.shape[2], 0, height - t.shape[1])) for t in tiles]
    return make_grid(torch.stack(padded), nrow=nrow, padding=padding, pad_value=255)


def _label_name(label: int, class_names: Sequence[str] | None) -> str:
    if class_names is None:
        return str(label)
    if not 1 <= label <= len(class_names):
        raise DetkitError(f"Label {label} has no name: class_names holds {len(class_names)} names for labels 1..K.")
    return str(class_names[label - 1])
