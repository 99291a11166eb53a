"""Small typed structures that flow between detector stages."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class ImageList:
    """A padded batch (N, 3, H, W) and each image's size (h, w) inside it before padding."""

    tensors: Tensor
    image_sizes: list[tuple[int, int]]

    @classmethod
    def from_tensors(cls, images: list[Tensor], size_divisible: int = 32, pad_value: float = 0.0) -> "ImageList":
        """Pads images (C, h, w) to a common size divisible by size_divisible, top-left aligned."""
        if torch.jit.is_tracing():
            return cls._from_traced(images, size_divisible, pad_value)
        max_h = max(int(im.shape[-2]) for im in images)
        max_w = max(int(im.shape[-1]) for im in images)
        max_h = (max_h + size_divisible - 1) // size_divisible * size_divisible
        max_w = (max_w + size_divisible - 1) // size_divisible * size_divisible
        batch = images[0].new_full((len(images), images[0].shape[0], max_h, max_w), pad_value)
        for i, im in enumerate(images):  # indexing, not unbind: a view autograd lets copy_ write (images may need grad)
            batch[i, :, : im.shape[-2], : im.shape[-1]].copy_(im)
        return cls(batch, [(int(im.shape[-2]), int(im.shape[-1])) for im in images])

    @classmethod
    def _from_traced(cls, images: list[Tensor], size_divisible: int, pad_value: float) -> "ImageList":
        """from_tensors for ONNX export: the padding from the images' traced shapes (image_sizes hold 0-dim
        tensors), so the graph pads every image size as eager mode does."""
        sizes = [torch._shape_as_tensor(im)[-2:] for im in images]  # (h, w) of each image, int64
        padded = (torch.stack(sizes).max(0).values + size_divisible - 1) // size_divisible * size_divisible
        batch = torch.stack([F.pad(im, (0, padded[1] - s[1], 0, padded[0] - s[0]), value=pad_value)
                             for im, s in zip(images, sizes)])
        return cls(batch, [(s[0], s[1]) for s in sizes])

    def to(self, device: torch.device | str) -> "ImageList":
        """The same batch on another device."""
        return ImageList(self.tensors.to(device), self.image_sizes)
