"""Input side of every detector: normalise, resize, batch; and map detections back to the input images.

Images come in as a list of (3, H, W) float tensors in [0, 1] of any size (torchvision's contract); targets hold
boxes (M, 4) x1, y1, x2, y2 in input pixels and labels (M,). Detections go out in input pixels.
"""
from __future__ import annotations

import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detkit.structures import ImageList


class ImagePreprocessor(nn.Module):
    """Normalises, resizes the shorter side to min_size (longer side at most max_size) and pads into a batch."""

    def __init__(self, min_size: int | Sequence[int], max_size: int, *, pixel_mean: Sequence[float],
                 pixel_std: Sequence[float], size_divisible: int = 32, test_min_size: int | None = None) -> None:
        super().__init__()
        self.min_sizes = (min_size,) if isinstance(min_size, int) else tuple(min_size)
        self.max_size = max_size
        self.test_min_size = test_min_size or self.min_sizes[-1]
        self.size_divisible = size_divisible
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
                ) -> tuple[ImageList, list[dict[str, Tensor]] | None]:
        """The padded batch and targets with boxes in batch pixels."""
        for i, im in enumerate(images):
            if im.dim() != 3 or im.shape[0] != 3:
                raise ValueError(f"image {i} must be a (3, H, W) tensor, got shape {tuple(im.shape)}")
        out_images, out_targets = [], []
        for i, im in enumerate(images):
            im = (im - self.pixel_mean.to(im.dtype)) / self.pixel_std.to(im.dtype)
            im, scale = self.resize(im)
            out_images.append(im)
            if targets is not None:
                target = dict(targets[i])
                if scale != (1.0, 1.0):
                    sy, sx = scale
                    target["boxes"] = target["boxes"] * torch.tensor([sx, sy, sx, sy], device=im.device)
                out_targets.append(target)
        return ImageList.from_tensors(out_images, self.size_divisible), out_targets if targets is not None else None

    def _target_min_size(self) -> int:
        if not self.training:
            return self.test_min_size
        return self.min_sizes[0] if len(self.min_sizes) == 1 else random.choice(self.min_sizes)

    def resize(self, image: Tensor) -> tuple[Tensor, tuple[float, float]]:
        """The resized image and the (y, x) scale factors; an image already at a target size is left as it is."""
        h, w = image.shape[-2:]
        short, long = min(h, w), max(h, w)
        if self.training and (short in self.min_sizes and long <= self.max_size or long == self.max_size):
            return image, (1.0, 1.0)  # the data pipeline resized it already
        scale = min(self._target_min_size() / short, self.max_size / long)
        resized = F.interpolate(image[None], scale_factor=scale, mode="bilinear", recompute_scale_factor=True,
                                align_corners=False)[0]
        return resized, (resized.shape[-2] / h, resized.shape[-1] / w)

    @staticmethod
    def postprocess(detections: list[dict[str, Tensor]], image_sizes: list[tuple[int, int]],
                    original_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """Detections with boxes scaled from resized-image pixels back to input pixels."""
        for det, (h, w), (oh, ow) in zip(detections, image_sizes, original_sizes):
            ratio = torch.tensor([ow / w, oh / h, ow / w, oh / h], device=det["boxes"].device)
            det["boxes"] = det["boxes"] * ratio
        return detections
