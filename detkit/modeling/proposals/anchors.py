"""Anchors: reference boxes laid on every feature-map cell.

L feature levels, A anchors per cell (sizes x aspect ratios at a level), a level of H x W cells gives H*W*A anchors,
ordered cell by cell (row-major) and, within a cell, aspect-ratio-major. Boxes are x1, y1, x2, y2 in pixels of the
padded batch image.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class AnchorGenerator(nn.Module):
    """Anchors for each feature level: one (sizes, aspect_ratios) set per level."""

    def __init__(self, sizes: Sequence[Sequence[float]] = ((32,), (64,), (128,), (256,), (512,)),
                 aspect_ratios: Sequence[float] | Sequence[Sequence[float]] = (0.5, 1.0, 2.0)) -> None:
        super().__init__()
        if not isinstance(aspect_ratios[0], (list, tuple)):
            aspect_ratios = [aspect_ratios] * len(sizes)
        if len(aspect_ratios) != len(sizes):
            raise ValueError(f"{len(sizes)} anchor size sets but {len(aspect_ratios)} aspect-ratio sets")
        self.sizes = [tuple(float(s) for s in level) for level in sizes]
        self.aspect_ratios = [tuple(float(r) for r in level) for level in aspect_ratios]
        self.cell_anchors = [self._cell_anchors(s, r) for s, r in zip(self.sizes, self.aspect_ratios)]

    @staticmethod
    def _cell_anchors(sizes: tuple[float, ...], aspect_ratios: tuple[float, ...]) -> Tensor:
        """(A, 4) anchors centred on (0, 0): area size**2, height / width = aspect ratio, rounded to pixels."""
        scales = torch.tensor(sizes)
        h_ratios = torch.sqrt(torch.tensor(aspect_ratios))
        w_ratios = 1.0 / h_ratios
        ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
        hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
        return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()

    def num_anchors_per_location(self) -> list[int]:
        """A for each level."""
        return [len(s) * len(r) for s, r in zip(self.sizes, self.aspect_ratios)]

    def forward(self, image_size: tuple[int, int], feature_sizes: Sequence[tuple[int, int]],
                device: torch.device | str = "cpu") -> list[Tensor]:
        """Anchors (H*W*A, 4) per level for a padded batch of image_size (H, W); the same for every image."""
        if len(feature_sizes) != len(self.cell_anchors):
            raise ValueError(f"anchor generator has {len(self.cell_anchors)} levels, got {len(feature_sizes)} "
                             "feature maps")
        anchors = []
        for (h, w), base in zip(feature_sizes, self.cell_anchors):
            stride_h, stride_w = image_size[0] // h, image_size[1] // w
            shift_x = torch.arange(w, dtype=torch.int32, device=device).float() * stride_w
            shift_y = torch.arange(h, dtype=torch.int32, device=device).float() * stride_h
            sy, sx = torch.meshgrid(shift_y, shift_x, indexing="ij")
            shifts = torch.stack((sx, sy, sx, sy), dim=-1).reshape(-1, 1, 4)
            anchors.append((shifts + base.to(device).view(1, -1, 4)).reshape(-1, 4))
        return anchors
